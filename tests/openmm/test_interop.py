"""OpenMM's own CustomCVForce / app.Metadynamics over exported CV modules, against TorchCVForce."""
import numpy as np
import openmm
import openmm.app as app
import openmm.unit as unit
import pytest
import torch
from analytic import jittered_lattice
from cv_models import Coordinates, CountingCVs, RandomPairCVs
from cv_models import particle_context as _context

from openmm_geom.export import export_model
from openmm_geom.openmm import ExportedModel, TorchCVForce, bias_variables, custom_cv_force
from openmm_geom.openmm.forces import selected_output

KJ = unit.kilojoule_per_mole
KJ_NM = KJ / unit.nanometer
ENERGY = "0.5*kk*(a-s0)^2 + sin(b)*a"
PARAMETERS = {"kk": 3.0, "s0": 0.2}


def _export(tmp_path, periodic, rng, n_side=3, name="cvs.pt"):
    positions = jittered_lattice(n_side, 0.3, rng, jitter_nm=0.04)
    box = (np.diag([0.9, 0.9, 0.9]) + np.array([[0, 0, 0], [0.1, 0, 0], [-0.05, 0.08, 0]])
           if periodic else None)
    path = tmp_path / name
    export_model(RandomPairCVs(2, seed=7, cutoff=0.4), path, kind="cv", length_unit="nm",
                 periodic=periodic, example_positions=positions, example_box=box, cutoff=0.4,
                 cv_names=["a", "b"])
    return path, positions, box


def _state(context, positions):
    context.setPositions(positions)
    state = context.getState(getEnergy=True, getForces=True)
    return (state.getPotentialEnergy().value_in_unit(KJ),
            state.getForces(asNumpy=True).value_in_unit(KJ_NM))


@pytest.mark.parametrize("platform", ["Reference", "CPU"])
@pytest.mark.parametrize("periodic", [False, True], ids=["no-box", "box"])
def test_custom_cv_force_equals_torch_cv_force(periodic, platform, rng, tmp_path):
    path, positions, box = _export(tmp_path, periodic, rng)
    ours = TorchCVForce(path, ENERGY, global_parameters=PARAMETERS)
    peer = custom_cv_force(path, ENERGY, global_parameters=PARAMETERS)
    assert peer.getNumCollectiveVariables() == 2
    assert [peer.getCollectiveVariableName(i) for i in range(2)] == ["a", "b"]
    assert peer.usesPeriodicBoundaryConditions() == periodic
    ctx_ours, ctx_peer = _context([ours], 27, box, platform), _context([peer], 27, box, platform)
    e1, f1 = _state(ctx_ours, positions)
    e2, f2 = _state(ctx_peer, positions)
    assert np.abs(f2).max() > 1e-2  # the CVs really depend on the positions
    assert e2 == pytest.approx(e1, abs=1e-6)
    np.testing.assert_allclose(f2, f1, atol=1e-6)

    module = torch.jit.load(str(path))
    box_t = torch.as_tensor(box) if periodic else None
    eager = module(torch.as_tensor(positions, dtype=torch.float64), box_t).detach().numpy()
    np.testing.assert_allclose(peer.getCollectiveVariableValues(ctx_peer), eager, atol=1e-9)
    np.testing.assert_allclose(ours.getCollectiveVariableValues(ctx_ours), eager, atol=1e-9)


def test_particle_subset_and_include(rng, tmp_path):
    """The module sees 27 of 30 particles, in a permuted order; 3 decoys carry no force."""
    path, positions, _ = _export(tmp_path, False, rng)
    order = rng.permutation(30)[:27]
    full = np.zeros((30, 3))
    full[order] = positions
    full[np.setdiff1d(np.arange(30), order)] = [[5.0, 5.0, 5.0], [6.0, 5.0, 5.0], [5.0, 6.0, 5.0]]
    ours = TorchCVForce(path, ENERGY, particles=order, global_parameters=PARAMETERS)
    peer = custom_cv_force(path, ENERGY, particles=order, global_parameters=PARAMETERS)
    e1, f1 = _state(_context([ours], 30, None), full)
    ctx = _context([peer], 30, None)
    e2, f2 = _state(ctx, full)
    assert e2 == pytest.approx(e1, abs=1e-6)
    np.testing.assert_allclose(f2, f1, atol=1e-6)
    decoys = np.setdiff1d(np.arange(30), order)
    assert np.abs(f2[decoys]).max() == 0.0
    # plain OpenMM objects: an XML round trip keeps the modules and the particle selection
    copy = openmm.XmlSerializer.deserialize(openmm.XmlSerializer.serialize(peer))
    e3, f3 = _state(_context([copy], 30, None), full)
    assert e3 == pytest.approx(e2, abs=1e-12)
    np.testing.assert_allclose(f3, f2, atol=1e-12)

    # only CV "a": one model evaluation per step instead of two
    only_a = custom_cv_force(path, "a", particles=order, include=["a"])
    assert only_a.getNumCollectiveVariables() == 1
    ctx_a = _context([only_a], 30, None)
    ctx_a.setPositions(full)
    assert only_a.getCollectiveVariableValues(ctx_a)[0] == pytest.approx(
        peer.getCollectiveVariableValues(ctx)[0], abs=1e-12)


def test_selected_output(rng, tmp_path):
    """The scalar module each TorchForce of the interop runs: one CV, optionally of a subset."""
    path, positions, box = _export(tmp_path, True, rng)
    model = ExportedModel.load(path)
    x, b = torch.as_tensor(positions), torch.as_tensor(box)
    both = model(x, b)
    assert selected_output(model, 1, None, True)(x, b).shape == ()
    assert selected_output(model, model.cv_index("b", model.cv_names()), None, True)(x, b).item() \
        == pytest.approx(both[1].item(), abs=1e-12)
    # a periodic export refuses to run without its box: the wrapper passes it through
    with pytest.raises(torch.jit.Error):
        selected_output(model, 0, None, True)(x)
    # particles: the module sees the listed System particles, in that order
    order = list(range(len(positions)))[::-1]
    padded = torch.cat([x[order], torch.zeros(2, 3, dtype=x.dtype)])
    picked = selected_output(model, 0, [order.index(i) for i in range(len(positions))], True)
    assert picked(padded, b).item() == pytest.approx(both[0].item(), abs=1e-12)
    # a metadata-less scripted module whose forward takes positions only
    bare = ExportedModel.load(torch.jit.script(CountingCVs()), allow_bare=True)
    assert selected_output(bare, 0, None, False)(x).item() == pytest.approx(float((x ** 2).sum()))
    assert selected_output(bare, 1, None, False)(x).item() == 2.0


def test_errors(rng, tmp_path):
    path, _, _ = _export(tmp_path, False, rng)
    with pytest.raises(ValueError, match=r"no CV named 'c'"):
        bias_variables(path, {"c": (-1, 1, 0.1)})
    with pytest.raises(IndexError, match="out of range"):
        bias_variables(path, {2: (-1, 1, 0.1)})
    with pytest.raises(ValueError, match="3 cv_names given for a module with 2"):
        custom_cv_force(path, "x+y+z", cv_names=["x", "y", "z"])
    with pytest.raises(ValueError, match=r"no CVs named \['c'\]"):
        custom_cv_force(path, "c", include=["c"])
    with pytest.raises(ValueError, match="exported for 27 atoms but particles lists 5"):
        custom_cv_force(path, "a", particles=range(5))
    with pytest.raises(ValueError, match="contradicts"):
        custom_cv_force(path, "a", periodic=True)
    with pytest.raises(ValueError, match=r"no CV named 'c'"):
        bias_variables(path, {"c": dict(min=-1, max=1, width=0.1)})
    with pytest.raises(ValueError, match="min .* must be below max"):
        bias_variables(path, {"a": dict(min=1, max=-1, width=0.1)})
    with pytest.raises(ValueError, match="unknown bias-variable setting 'sigma'"):
        bias_variables(path, {"a": dict(min=-1, max=1, sigma=0.1)})
    with pytest.raises(ValueError, match="missing"):
        bias_variables(path, {"a": dict(min=-1, max=1)})
    with pytest.raises(TypeError, match="eager module"):
        custom_cv_force(RandomPairCVs(2, seed=1), "a")
    with pytest.raises(ValueError, match="pass cv_names"):
        custom_cv_force(torch.jit.script(CountingCVs()), "cv0")

    from openmm_geom.errors import ModelFileError

    junk = tmp_path / "junk.pt"
    junk.write_text("not a model")
    with pytest.raises(ModelFileError):
        custom_cv_force(junk, "a")


def test_potential_where_a_cv_is_expected(tmp_path):
    class Harmonic(torch.nn.Module):
        def forward(self, positions: torch.Tensor) -> torch.Tensor:
            return (positions ** 2).sum()

    path = tmp_path / "potential.pt"
    export_model(Harmonic(), path, kind="potential", length_unit="nm", energy_unit="kJ/mol",
                 periodic=False, example_positions=[[0.1, 0.2, 0.3]])
    for call in (lambda: custom_cv_force(path, "a"), lambda: TorchCVForce(path, "cv0"),
                 lambda: bias_variables(path, {0: (-1, 1, 0.1)})):
        with pytest.raises(ValueError, match="potential .*needs a CV module"):
            call()


def test_openmm_metadynamics_on_two_bias_variables(tmp_path):
    """One particle in a 2D well; app.Metadynamics biases its x and y through two TorchForces."""
    path = tmp_path / "xyz.pt"
    export_model(Coordinates(), path, kind="cv", length_unit="nm", periodic=False,
                 example_positions=[[0.1, 0.2, 0.3]], cv_names=["x", "y", "z"])
    variables = bias_variables(path, {"x": dict(min=-1.5, max=1.5, width=0.15, gridWidth=31),
                                      "y": (-1.0, 1.0, 0.15, False, 21)})
    assert [v.cv_name for v in variables] == ["x", "y"]
    assert [v.gridWidth for v in variables] == [31, 21]
    system = openmm.System()
    system.addParticle(1.0)
    well = openmm.CustomExternalForce("4*(x^2-1)^2 + 5*y^2 + 5*z^2")
    well.addParticle(0, [])
    system.addForce(well)
    meta = app.Metadynamics(system, variables, 300 * unit.kelvin, biasFactor=5.0,
                            height=1.0 * KJ, frequency=20, saveFrequency=100,
                            biasDir=str(tmp_path))
    integrator = openmm.LangevinMiddleIntegrator(300, 5.0, 0.004)
    integrator.setRandomNumberSeed(3)
    simulation = app.Simulation(app.Topology(), system, integrator,
                                openmm.Platform.getPlatformByName("Reference"))
    simulation.context.setPositions([[-1.0, 0.1, 0.0]])
    meta.step(simulation, 300)
    free_energy = meta.getFreeEnergy().value_in_unit(KJ)
    assert free_energy.shape == (21, 31)  # OpenMM's layout: last variable first
    assert free_energy.min() < -1.0  # 15 hills were deposited
    x, y = meta.getCollectiveVariables(simulation)
    position = simulation.context.getState(getPositions=True).getPositions(asNumpy=True)
    np.testing.assert_allclose([x, y], position.value_in_unit(unit.nanometer)[0, :2], atol=1e-12)
    bias = simulation.context.getState(getEnergy=True, groups={31}).getPotentialEnergy()
    assert bias.value_in_unit(KJ) > 0.0
    assert list(tmp_path.glob("bias_*.npy"))
