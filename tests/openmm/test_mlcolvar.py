"""mlcolvar CVs biased in OpenMM: descriptors front end + mlcolvar's TorchScript export ->
export_model(kind="cv") -> TorchCVForce in a Reference Context, forces against central finite
differences of the Context energy.

Tolerances, chosen before running: forces agree with central differences (h = 1e-5 nm) to
1e-6 of the largest force plus 1e-6 kJ/mol/nm (float64 model, O(h^2) truncation); CVs in the
Context equal the eager float64 model's to 1e-10; the float32 file mlcolvar wrote agrees with
them to 1e-4 (float32 rounding of 45 distances through a small network), and so does the file
export_plumed writes back from our descriptor CV.
"""
import numpy as np
import openmm
import openmm.app as app
import openmm.unit as unit
import pytest
import torch

from openmm_geom.data import bundled
from openmm_geom.export import export_model, export_plumed
from openmm_geom.models.descriptors import PairwiseDistances, descriptor_cv
from openmm_geom.openmm import TorchCVForce

KJ_NM = unit.kilojoule_per_mole / unit.nanometer


@pytest.fixture(scope="module")
def alanine_frames():
    """A short hot (600 K) OpenMM run of capped alanine in vacuum: 300 frames, 20 fs apart, nm."""
    pdb = app.PDBFile(str(bundled("alanine-dipeptide.pdb")))
    system = app.ForceField("amber14-all.xml").createSystem(pdb.topology, constraints=app.HBonds)
    integrator = openmm.LangevinMiddleIntegrator(600 * unit.kelvin, 5 / unit.picosecond,
                                                 2 * unit.femtosecond)
    integrator.setRandomNumberSeed(11)
    context = openmm.Context(system, integrator, openmm.Platform.getPlatformByName("CPU"),
                             {"Threads": "1"})
    context.setPositions(pdb.positions)
    context.setVelocitiesToTemperature(600 * unit.kelvin, 11)
    frames = []
    for _ in range(300):
        integrator.step(10)
        state = context.getState(getPositions=True)
        frames.append(state.getPositions(asNumpy=True).value_in_unit(unit.nanometer))
    heavy = [a.index for a in pdb.topology.atoms() if a.element.symbol != "H"]
    return np.array(frames), heavy


def _bias_context(exported, n_atoms, expression, parameters):
    force = TorchCVForce(exported, expression, global_parameters=parameters)
    system = openmm.System()
    for _ in range(n_atoms):
        system.addParticle(12.0)
    system.addForce(force)
    context = openmm.Context(system, openmm.VerletIntegrator(0.001),
                             openmm.Platform.getPlatformByName("Reference"))
    return context, force


def _check_forces(context, positions, atoms):
    """Context forces vs central differences of the Context energy on ``atoms``' coordinates."""
    def energy(x):
        context.setPositions(x)
        return context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(
            unit.kilojoule_per_mole)

    context.setPositions(positions)
    forces = context.getState(getForces=True).getForces(asNumpy=True).value_in_unit(KJ_NM)
    h = 1e-5
    numeric = np.zeros((len(atoms), 3))
    for n, atom in enumerate(atoms):
        for c in range(3):
            plus, minus = positions.copy(), positions.copy()
            plus[atom, c] += h
            minus[atom, c] -= h
            numeric[n, c] = -(energy(plus) - energy(minus)) / (2 * h)
    scale = np.abs(forces).max()
    assert scale > 1e-3  # the restraint pulls: a zero force would pass trivially
    np.testing.assert_allclose(forces[atoms], numeric, rtol=0, atol=1e-6 * scale + 1e-6)
    return forces


def _train_deeptica(features: torch.Tensor, tmp_path):
    mlcolvar = pytest.importorskip(
        "mlcolvar", reason="mlcolvar (requirements.txt pins 1.3.1) is not installed")
    import lightning
    from mlcolvar.cvs import DeepTICA
    from mlcolvar.data import DictModule
    from mlcolvar.utils.timelagged import create_timelagged_dataset

    assert mlcolvar.__version__.startswith("1.3")
    torch.manual_seed(0)
    dataset = create_timelagged_dataset(features, lag_time=5)
    datamodule = DictModule(dataset, lengths=[0.8, 0.2], batch_size=0, random_split=False)
    model = DeepTICA([features.shape[1], 16, 8], n_cvs=2)
    trainer = lightning.Trainer(max_epochs=20, accelerator="cpu", devices=1, logger=False,
                                enable_checkpointing=False, enable_progress_bar=False,
                                enable_model_summary=False, default_root_dir=str(tmp_path))
    trainer.fit(model, datamodule)
    model.eval()
    # mlcolvar's own export (its docs: model.to_torchscript(file_path, method="trace")),
    # the file PLUMED's PYTORCH_MODEL loads
    path = tmp_path / "deeptica.ptc"
    model.to_torchscript(file_path=str(path), method="trace")
    return model, path


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
def test_mlcolvar_deeptica_biased_in_openmm(alanine_frames, tmp_path):
    xyz, heavy = alanine_frames
    front = PairwiseDistances(heavy)                       # 10 heavy atoms -> 45 distances, nm
    features = torch.stack([front(torch.as_tensor(x)) for x in xyz]).float()
    model, path = _train_deeptica(features, tmp_path)

    loaded = torch.jit.load(str(path))                     # what a PLUMED user has
    cv = descriptor_cv(front, loaded, cv_names=["tica0", "tica1"], dtype=torch.float64)
    assert cv.batched and cv.n_outputs == 2
    positions = xyz[-1].astype(np.float64)
    exported = export_model(cv, tmp_path / "deeptica_cv.pt", kind="cv", length_unit="nm",
                            periodic=False, example_positions=positions)
    assert exported.metadata.cv_names == ["tica0", "tica1"]
    assert exported.metadata.dtype == "float64"

    # a harmonic restraint on both CVs, centred away from the current values
    context, force = _bias_context(exported, len(positions),
                                   "0.5*k*((tica0-s0)^2 + (tica1-s1)^2)",
                                   {"k": 50.0, "s0": 1.0, "s1": -1.0})
    forces = _check_forces(context, positions, heavy)
    hydrogens = [i for i in range(len(positions)) if i not in heavy]
    assert np.all(forces[hydrogens] == 0.0)   # the CV does not see them

    context.setPositions(positions)
    values = np.array(force.getCollectiveVariableValues(context))
    eager = model.double()(front(torch.as_tensor(positions))[None])[0].detach().numpy()
    np.testing.assert_allclose(values, eager, rtol=0, atol=1e-10)
    pristine = torch.jit.load(str(path))                   # descriptor_cv cast `loaded`
    features = front(torch.as_tensor(positions)).float()[None]
    as_plumed = pristine(features)[0].detach().numpy()     # float32, as PLUMED runs it
    np.testing.assert_allclose(values, as_plumed, rtol=0, atol=1e-4)

    # and back: our descriptor CV exported for PLUMED gives what mlcolvar's own file gives
    result = export_plumed(exported, tmp_path / "back.ptc")
    assert result.form == "descriptors" and len(result.arguments) == 45
    back = torch.jit.optimize_for_inference(torch.jit.freeze(
        torch.jit.load(str(result.path)).eval()))
    np.testing.assert_allclose(back(features)[0].detach().numpy(), as_plumed, rtol=0, atol=1e-4)


def test_plumed_style_file_biased_in_openmm(alanine_frames, tmp_path):
    """Without mlcolvar: a traced float32 (1, D) -> (1, k) file, as PLUMED users write them."""
    xyz, heavy = alanine_frames
    front = PairwiseDistances(heavy)
    torch.manual_seed(3)
    net = torch.nn.Sequential(torch.nn.Linear(front.n_features, 12), torch.nn.Tanh(),
                              torch.nn.Linear(12, 2))
    path = tmp_path / "model.ptc"
    torch.jit.trace(net, torch.zeros(1, front.n_features)).save(str(path))
    cv = descriptor_cv(front, torch.jit.load(str(path)), cv_names=["s", "t"],
                       dtype=torch.float64)
    positions = xyz[0].astype(np.float64)
    exported = export_model(cv, tmp_path / "cv.pt", kind="cv", length_unit="nm",
                            periodic=False, example_positions=positions)
    context, force = _bias_context(exported, len(positions), "0.5*k*(s-s0)^2 + 2*t^2",
                                   {"k": 80.0, "s0": 2.0})
    _check_forces(context, positions, heavy)
    context.setPositions(positions)
    expected = net.double()(front(torch.as_tensor(positions))[None])[0].detach().numpy()
    np.testing.assert_allclose(force.getCollectiveVariableValues(context), expected,
                               rtol=0, atol=1e-10)
