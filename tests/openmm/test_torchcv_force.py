"""TorchCVForce: one model pass for k CVs, against CustomCVForce + k TorchForces."""
import io
import subprocess
import sys

import numpy as np
import openmm
import openmm.unit as unit
import pytest
import torch
from analytic import jittered_lattice
from cv_models import CountingCVs, NaNCV, RandomPairCVs, central_difference_forces
from cv_models import context_state as _state
from cv_models import particle_context as _context

from openmm_geom.export import export_model
from openmm_geom.openmm import TorchCVForce
from openmm_geom.openmm.forces import torch_force

KJ = unit.kilojoule_per_mole
KJ_NM = KJ / unit.nanometer
EXPRESSIONS = {
    1: "0.5*kk*(cv0-s0)^2 + 0.1*cv0^3",
    2: "0.5*kk*(cv0-s0)^2 + sin(cv1)*cv0",
    3: "0.5*kk*(cv0-s0)^2 + cv1*cv2 + exp(-cv2^2)",
    4: "0.5*kk*(cv0-s0)^2 + cv1*cv2 - 0.3*cv3^2 + cv0*cv3",
}
PARAMETERS = {"kk": 3.0, "s0": 0.2}


def _case(k, periodic, rng, tmp_path):
    positions = jittered_lattice(3, 0.3, rng, jitter_nm=0.04)  # 27 atoms
    box = np.diag([0.9, 0.9, 0.9]) + np.array([[0, 0, 0], [0.1, 0, 0], [-0.05, 0.08, 0]]) if periodic else None
    path = tmp_path / f"cv{k}.pt"
    export_model(RandomPairCVs(k, seed=k, cutoff=0.4), path, kind="cv", length_unit="nm",
                 periodic=periodic, example_positions=positions, example_box=box, cutoff=0.4)
    return path, positions, box


def _ours(path, k):
    force = TorchCVForce(path, EXPRESSIONS[k], global_parameters=PARAMETERS)
    for name in PARAMETERS:
        force.addEnergyParameterDerivative(name)
    return force


def _peer(path, k):
    force = openmm.CustomCVForce(EXPRESSIONS[k])
    for name, value in PARAMETERS.items():
        force.addGlobalParameter(name, value)
    for i in range(k):
        force.addCollectiveVariable(f"cv{i}", torch_force(path, output_index=i))
    return force


@pytest.mark.parametrize("periodic", [False, True], ids=["no-box", "box"])
@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_equals_custom_cv_force_of_k_torch_forces(k, periodic, rng, tmp_path):
    path, positions, box = _case(k, periodic, rng, tmp_path)
    ours, peer = _ours(path, k), _peer(path, k)
    ctx_ours, ctx_peer = _context([ours], 27, box), _context([peer], 27, box)
    e1, f1, d1 = _state(ctx_ours, positions)
    e2, f2, _ = _state(ctx_peer, positions)
    assert np.abs(f2).max() > 1e-2  # the CVs really depend on the positions
    assert e1 == pytest.approx(e2, rel=1e-8, abs=1e-10)
    np.testing.assert_allclose(f1, f2, rtol=1e-8, atol=1e-8 * np.abs(f2).max())
    np.testing.assert_allclose(ours.getCollectiveVariableValues(ctx_ours),
                               peer.getCollectiveVariableValues(ctx_peer), rtol=1e-8, atol=1e-12)

    # forces against central differences of the energy
    components = [(0, 0), (5, 1), (13, 2), (26, 0)]
    for (atom, axis), fd in zip(components, central_difference_forces(ctx_ours, positions,
                                                                      components)):
        assert fd == pytest.approx(f1[atom, axis], rel=1e-5, abs=1e-6)
    # energy parameter derivatives against central differences
    for name, value in PARAMETERS.items():
        energies = []
        for sign in (1, -1):
            ctx_ours.setParameter(name, value + sign * 1e-5)
            energies.append(_state(ctx_ours, positions)[0])
        ctx_ours.setParameter(name, value)
        assert (energies[0] - energies[1]) / 2e-5 == pytest.approx(d1[name], rel=1e-6, abs=1e-9)


def test_cpu_platform_equals_reference(rng, tmp_path):
    path, positions, box = _case(3, True, rng, tmp_path)
    e_ref, f_ref, _ = _state(_context([_ours(path, 3)], 27, box, "Reference"), positions)
    e_cpu, f_cpu, _ = _state(_context([_ours(path, 3)], 27, box, "CPU"), positions)
    assert e_cpu == pytest.approx(e_ref, rel=1e-12)
    np.testing.assert_allclose(f_cpu, f_ref, rtol=1e-12, atol=1e-12)


def test_particle_subset_and_force_groups(rng, tmp_path):
    path, positions, _ = _case(2, False, rng, tmp_path)
    subset = list(range(30, 57))  # the module's 27 atoms live at the end of a larger system
    ours = TorchCVForce(path, EXPRESSIONS[2], global_parameters=PARAMETERS, particles=subset,
                        force_group=3)
    big = np.vstack([rng.normal(size=(30, 3)), positions])
    context = _context([ours], 57, None)
    context.setPositions(big)
    state = context.getState(getEnergy=True, getForces=True, groups={3})
    reference = _context([_ours(path, 2)], 27, None)
    e, f, _ = _state(reference, positions)
    assert state.getPotentialEnergy().value_in_unit(KJ) == pytest.approx(e, rel=1e-12)
    forces = state.getForces(asNumpy=True).value_in_unit(KJ_NM)
    np.testing.assert_allclose(forces[30:], f, rtol=1e-12, atol=1e-12)
    assert np.all(forces[:30] == 0)
    other = context.getState(getEnergy=True, groups={0})
    assert other.getPotentialEnergy().value_in_unit(KJ) == 0.0


def _scripted(module):
    """A ScriptModule without openmm-geom metadata, round-tripped through bytes."""
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(module), buffer)
    return torch.jit.load(io.BytesIO(buffer.getvalue()))


def test_cv_values_reuse_the_last_force_evaluation():
    force = TorchCVForce(_scripted(CountingCVs()), "x", cv_names=["x", "calls"])
    context = _context([force], 3, None)
    context.setPositions(np.eye(3))
    context.getState(getEnergy=True, getForces=True)  # one model pass
    assert force.getCollectiveVariableValues(context) == (3.0, 1.0)  # no second pass
    assert force.getCollectiveVariableValues(context)[1] == 1.0
    context.setPositions(2 * np.eye(3))  # new positions: the CVs must be recomputed
    assert force.getCollectiveVariableValues(context) == (12.0, 2.0)


def test_xml_round_trip_and_checkpoint_give_identical_energies(rng, tmp_path):
    path, positions, box = _case(2, True, rng, tmp_path)
    function = openmm.Continuous1DFunction(np.sin(np.linspace(-3, 3, 30)), -3.0, 3.0)
    force = TorchCVForce(path, EXPRESSIONS[2] + " + table(cv1)", global_parameters=PARAMETERS)
    force.addTabulatedFunction("table", function)
    force.setForceGroup(2)
    system = openmm.System()
    for _ in range(27):
        system.addParticle(12.0)
    system.setDefaultPeriodicBoxVectors(*[openmm.Vec3(*row) for row in box])
    system.addForce(force)
    copy = openmm.XmlSerializer.deserialize(openmm.XmlSerializer.serialize(system))
    restored = TorchCVForce.cast(copy.getForce(0))
    assert restored.getForceGroup() == 2 and restored.getNumTabulatedFunctions() == 1
    assert restored.usesPeriodicBoundaryConditions()

    def run(s):
        integrator = openmm.VerletIntegrator(0.0005)
        context = openmm.Context(s, integrator, openmm.Platform.getPlatformByName("Reference"))
        context.setPositions(positions)
        context.setVelocitiesToTemperature(300, 5)
        return context, integrator

    energies = []
    for s in (system, copy):
        context, integrator = run(s)
        integrator.step(20)
        energies.append(context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(KJ))
    assert energies[0] == energies[1]

    context, integrator = run(system)
    integrator.step(5)
    checkpoint = context.createCheckpoint()
    integrator.step(10)
    after = context.getState(getEnergy=True).getPotentialEnergy()
    context.loadCheckpoint(checkpoint)
    integrator.step(10)
    assert context.getState(getEnergy=True).getPotentialEnergy() == after


def test_xml_names_the_package_and_old_files_still_load(rng, tmp_path):
    """The XML type is ``openmm_geom.TorchCVForce``: OpenMM's error in an interpreter that did
    not import openmm_geom then names the package; files that say ``TorchCVForce`` (written
    before the rename) still load, and are written back under the new name."""
    path, positions, _ = _case(1, False, rng, tmp_path)
    system = openmm.System()
    for _ in range(27):
        system.addParticle(12.0)
    system.addForce(TorchCVForce(path, EXPRESSIONS[1], global_parameters=PARAMETERS))
    xml = openmm.XmlSerializer.serialize(system)
    assert 'type="openmm_geom.TorchCVForce"' in xml and 'type="TorchCVForce"' not in xml
    xml_path = tmp_path / "system.xml"
    xml_path.write_text(xml)
    script = (
        "import sys, openmm\n"
        f"xml = open({str(xml_path)!r}).read()\n"
        "try:\n"
        "    openmm.XmlSerializer.deserialize(xml)\n"
        "except Exception as error:\n"
        "    print(type(error).__name__, error)\n"
        "print('openmm_geom' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[-1] == "False"  # the fresh interpreter never imported openmm_geom
    assert lines[0] == ("OpenMMException There is no serialization proxy registered for type "
                        "'openmm_geom.TorchCVForce'")

    old = xml.replace('type="openmm_geom.TorchCVForce"', 'type="TorchCVForce"')
    assert old != xml
    energies = []
    for s in (system, openmm.XmlSerializer.deserialize(old)):
        context = openmm.Context(s, openmm.VerletIntegrator(0.001),
                                 openmm.Platform.getPlatformByName("Reference"))
        context.setPositions(positions)
        energies.append(context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(KJ))
    assert energies[0] == energies[1] and energies[0] != 0.0
    rewritten = openmm.XmlSerializer.serialize(openmm.XmlSerializer.deserialize(old))
    assert 'type="openmm_geom.TorchCVForce"' in rewritten


def test_update_parameters_in_context_changes_tables(rng, tmp_path):
    path, positions, _ = _case(1, False, rng, tmp_path)
    grid = np.linspace(-50, 50, 101)
    function = openmm.Continuous1DFunction(np.zeros_like(grid), -50.0, 50.0)
    force = TorchCVForce(path, "table(cv0)")
    force.addTabulatedFunction("table", function)
    context = _context([force], 27, None)
    context.setPositions(positions)
    assert context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(KJ) == 0.0
    function.setFunctionParameters(np.full_like(grid, 7.5), -50.0, 50.0)
    force.updateParametersInContext(context)
    assert context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(KJ) == pytest.approx(7.5)


# --- bad input: clear errors, never a segfault --------------------------------------------

def test_output_shape_differs_from_declared_cvs(rng, tmp_path):
    path, positions, _ = _case(2, False, rng, tmp_path)
    with pytest.raises(ValueError, match="3 cv_names given for a module with 2 CV outputs"):
        TorchCVForce(path, "a", cv_names=["a", "b", "c"])
    module = _scripted(RandomPairCVs(2, seed=1, cutoff=0.4))  # no metadata: checked at run time
    force = TorchCVForce(module, "a", cv_names=["a", "b", "c"])
    context = _context([force], 27, None)
    context.setPositions(positions)
    with pytest.raises(openmm.OpenMMException, match=r"returned shape \(2,\) but the force declares 3"):
        context.getState(getEnergy=True)


def test_nan_cv_values():
    force = TorchCVForce(_scripted(NaNCV()), "x", cv_names=["x"])
    context = _context([force], 3, None)
    context.setPositions(np.eye(3))
    with pytest.raises(openmm.OpenMMException, match="non-finite value for x"):
        context.getState(getEnergy=True)


def test_expression_with_unknown_cv(rng, tmp_path):
    path, _, _ = _case(2, False, rng, tmp_path)
    force = TorchCVForce(path, "cv0 + cv7")
    with pytest.raises(openmm.OpenMMException, match="uses 'cv7', which is neither a collective variable"):
        _context([force], 27, None)
    with pytest.raises(openmm.OpenMMException, match="cannot use the energy expression"):
        _context([TorchCVForce(path, "cv0 +* 2")], 27, None)


def test_particle_indices_out_of_range(rng, tmp_path):
    path, _, _ = _case(1, False, rng, tmp_path)
    force = TorchCVForce(path, "cv0", particles=list(range(20, 47)))
    with pytest.raises(openmm.OpenMMException, match="particle index 40 out of range for a System of 40"):
        _context([force], 40, None)
    # checked in Python before the force exists ...
    with pytest.raises(ValueError, match="particle indices must be >= 0"):
        TorchCVForce(path, "cv0", particles=[-1] + list(range(26)))
    with pytest.raises(ValueError, match="particle indices must be distinct"):
        TorchCVForce(path, "cv0", particles=[0] * 27)
    with pytest.raises(ValueError, match="exported for 27 atoms but particles lists 3"):
        TorchCVForce(path, "cv0", particles=[0, 1, 2])
    # ... and by the C++ force for callers of setParticles
    with pytest.raises(openmm.OpenMMException, match="is negative"):
        force.setParticles([-1] + list(range(26)))
    with pytest.raises(openmm.OpenMMException, match="listed twice"):
        force.setParticles([0] * 27)


def test_wrong_system_size_reaches_the_model(rng, tmp_path):
    path, _, _ = _case(1, False, rng, tmp_path)
    context = _context([TorchCVForce(path, "cv0")], 30, None)
    context.setPositions(rng.normal(size=(30, 3)))
    with pytest.raises(openmm.OpenMMException, match="wrong atom count: the model was exported for 27 atoms, got 30"):
        context.getState(getEnergy=True)


def test_unusable_models_are_refused(rng, tmp_path):
    with pytest.raises(TypeError, match="eager module"):
        TorchCVForce(RandomPairCVs(1, 0), "cv0")
    with pytest.raises(ValueError, match="pass cv_names"):
        TorchCVForce(_scripted(CountingCVs()), "x")
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(Exception, match="not a TorchScript model file"):
        TorchCVForce(tmp_path / "junk.pt", "x")
