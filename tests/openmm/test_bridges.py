"""Exported models inside real OpenMM Contexts equal independent numpy evaluations.

Both bridges (TorchScript -> openmm-torch TorchForce, eager -> openmm.PythonForce), with and
without a periodic box, on the Reference and CPU platforms; CVs inside CustomCVForce and
OpenMM's own Metadynamics.
"""
import math

import numpy as np
import openmm
import openmm.app as app
import openmm.unit as unit
import pytest
import torch
from analytic import LJHarmonic, chain_bonds, jittered_lattice, lj_harmonic_oracle

from openmm_geom.export import export_model
from openmm_geom.models import Dihedrals, backbone_quadruplets
from openmm_geom.openmm import ExportedModel, python_force
from openmm_geom.openmm.forces import torch_force

KJ_NM = unit.kilojoule_per_mole / unit.nanometer


def _system(n, box=None, mass=39.9):
    system = openmm.System()
    for _ in range(n):
        system.addParticle(mass)
    if box is not None:
        system.setDefaultPeriodicBoxVectors(*[openmm.Vec3(*row) for row in box])
    return system


def _energy_forces(system, force, positions, platform):
    system.addForce(force)
    context = openmm.Context(system, openmm.VerletIntegrator(0.001),
                             openmm.Platform.getPlatformByName(platform))
    context.setPositions(positions)
    state = context.getState(getEnergy=True, getForces=True)
    return (state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole),
            state.getForces(asNumpy=True).value_in_unit(KJ_NM))


def _lj_case(periodic, rng):
    positions = jittered_lattice(4, 0.36, rng)  # 64 atoms, nm
    box = np.diag([4 * 0.36] * 3) if periodic else None
    if box is not None:
        box[1, 0] = 0.0  # rectangular: the model's bond minimum image assumes it
    model = LJHarmonic(chain_bonds(len(positions)), cutoff=6.0)
    return model, positions, box


@pytest.mark.parametrize("periodic", [False, True], ids=["no-box", "box"])
@pytest.mark.parametrize("bridge", ["torchscript", "python"])
@pytest.mark.parametrize("platform", ["Reference", "CPU"])
def test_analytic_potential_matches_numpy(periodic, bridge, platform, rng, tmp_path):
    model, positions, box = _lj_case(periodic, rng)
    kwargs = dict(length_unit="angstrom", energy_unit="eV", periodic=periodic,
                  example_positions=positions, example_box=box, cutoff=model.cutoff)
    if bridge == "torchscript":
        export_model(model, tmp_path / "lj.pt", **kwargs)
        force = torch_force(tmp_path / "lj.pt")
    else:
        force = python_force(model, **kwargs)
    assert force.usesPeriodicBoundaryConditions() == periodic
    energy, forces = _energy_forces(_system(len(positions), box), force, positions, platform)
    ref_energy, ref_forces = lj_harmonic_oracle(model, positions, box)
    assert abs(ref_energy) > 0.1 and np.abs(ref_forces).max() > 1.0  # a non-trivial case
    assert energy == pytest.approx(ref_energy, rel=1e-6)
    np.testing.assert_allclose(forces, ref_forces, rtol=1e-6, atol=1e-6 * np.abs(ref_forces).max())


def test_both_bridges_give_the_same_numbers(rng, tmp_path):
    model, positions, box = _lj_case(True, rng)
    kwargs = dict(length_unit="angstrom", energy_unit="eV", periodic=True,
                  example_positions=positions, example_box=box, cutoff=model.cutoff)
    export_model(model, tmp_path / "lj.pt", **kwargs)
    scripted = _energy_forces(_system(64, box), torch_force(tmp_path / "lj.pt"), positions, "Reference")
    eager = _energy_forces(_system(64, box), python_force(model, **kwargs), positions, "Reference")
    assert scripted[0] == pytest.approx(eager[0], rel=1e-12)
    np.testing.assert_allclose(scripted[1], eager[1], rtol=1e-12, atol=1e-10)


def test_openmm_quantities_are_converted(rng, tmp_path):
    """Example positions given as a Quantity in Å are the same configuration as in nm."""
    model, positions, box = _lj_case(False, rng)
    export_model(model, tmp_path / "a.pt", length_unit=unit.angstrom,
                 energy_unit=unit.kilocalorie_per_mole, periodic=False,
                 example_positions=positions * 10 * unit.angstrom)
    meta = ExportedModel.load(tmp_path / "a.pt").metadata
    np.testing.assert_allclose(meta.example_positions_nm, positions, rtol=1e-12)
    assert meta.model_energy_unit == "kcal/mol"
    energy, _ = _energy_forces(_system(64), torch_force(tmp_path / "a.pt"), positions, "Reference")
    eV_energy, _ = lj_harmonic_oracle(model, positions)
    # the same numbers read as kcal/mol instead of eV
    assert energy == pytest.approx(eV_energy / 96.48533212331002 * 4.184, rel=1e-9)


def test_metadata_is_self_describing(rng, tmp_path):
    model, positions, box = _lj_case(True, rng)
    export_model(model, tmp_path / "lj.pt", length_unit="Å", energy_unit="eV", periodic=True,
                 example_positions=positions, example_box=box, cutoff=6.0,
                 atom_types=["Ar"] * 64, masses=[39.9] * 64, training_data_hash="abc123",
                 hyperparameters={"sigma": 3.4})
    meta = ExportedModel.load(tmp_path / "lj.pt").metadata
    assert (meta.kind, meta.n_atoms, meta.periodic) == ("potential", 64, True)
    assert (meta.model_length_unit, meta.model_energy_unit) == ("angstrom", "eV")
    assert meta.cutoff_nm == pytest.approx(0.6)
    assert meta.atom_types == ["Ar"] * 64 and meta.training_data_hash == "abc123"
    assert meta.hyperparameters == {"sigma": 3.4} and meta.dtype == "float64"
    assert meta.package_version and meta.torch_version == torch.__version__


def _alanine_cv(alanine_pdb, tmp_path):
    path = tmp_path / "phi_psi.pt"
    quads = backbone_quadruplets(alanine_pdb.topology)
    export_model(Dihedrals(quads), path, kind="cv", length_unit="nm", periodic=False,
                 example_positions=alanine_pdb.positions, cv_names=["phi", "psi"])
    return path, quads


def _numpy_dihedral(x, quad):
    """Dihedral by the textbook projection formula (independent of the torch code)."""
    p0, p1, p2, p3 = (x[i] for i in quad)
    b0, b1, b2 = p0 - p1, p2 - p1, p3 - p2
    b1 = b1 / np.linalg.norm(b1)
    v = b0 - np.dot(b0, b1) * b1
    w = b2 - np.dot(b2, b1) * b1
    return math.atan2(np.dot(np.cross(b1, v), w), np.dot(v, w))


def test_cv_inside_custom_cv_force(alanine_pdb, tmp_path, rng):
    path, quads = _alanine_cv(alanine_pdb, tmp_path)
    positions = alanine_pdb.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
    positions = positions + rng.normal(0, 0.02, positions.shape)
    cv = openmm.CustomCVForce("0.5*k*(phi-phi0)^2 + 0.5*k*(psi-psi0)^2")
    for name, value in (("k", 30.0), ("phi0", -1.2), ("psi0", 2.0)):
        cv.addGlobalParameter(name, value)
    cv.addCollectiveVariable("phi", torch_force(path, output_index=0))
    cv.addCollectiveVariable("psi", torch_force(path, output_index=1))
    system = _system(22)
    system.addForce(cv)
    context = openmm.Context(system, openmm.VerletIntegrator(0.001),
                             openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(positions)
    phi, psi = cv.getCollectiveVariableValues(context)
    assert phi == pytest.approx(_numpy_dihedral(positions, quads[0]), abs=1e-10)
    assert psi == pytest.approx(_numpy_dihedral(positions, quads[1]), abs=1e-10)
    expected = 0.5 * 30 * ((phi + 1.2) ** 2 + (psi - 2.0) ** 2)
    state = context.getState(getEnergy=True, getForces=True)
    assert state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole) == pytest.approx(expected, rel=1e-10)
    # forces of the restrained CVs against central differences of the energy
    forces = state.getForces(asNumpy=True).value_in_unit(KJ_NM)
    h = 1e-6
    for atom in quads[0][:2] + quads[1][2:]:
        for axis in range(3):
            energies = []
            for sign in (1, -1):
                p = positions.copy()
                p[atom, axis] += sign * h
                context.setPositions(p)
                energies.append(context.getState(getEnergy=True).getPotentialEnergy()._value)
            assert -(energies[0] - energies[1]) / (2 * h) == pytest.approx(forces[atom, axis], rel=1e-5, abs=1e-4)


def test_openmm_metadynamics_on_exported_cv(alanine_pdb, tmp_path):
    path, _ = _alanine_cv(alanine_pdb, tmp_path)
    forcefield = app.ForceField("amber14-all.xml")
    system = forcefield.createSystem(alanine_pdb.topology, nonbondedMethod=app.NoCutoff,
                                     constraints=app.HBonds)
    phi = app.BiasVariable(torch_force(path, output_index=0), -math.pi, math.pi, 0.35,
                           periodic=True, gridWidth=36)
    meta = app.Metadynamics(system, [phi], 300 * unit.kelvin, biasFactor=5.0,
                            height=2.0 * unit.kilojoule_per_mole, frequency=20)
    integrator = openmm.LangevinMiddleIntegrator(300, 1.0, 0.002)
    integrator.setRandomNumberSeed(3)
    simulation = app.Simulation(alanine_pdb.topology, system, integrator,
                                openmm.Platform.getPlatformByName("CPU"))
    simulation.context.setPositions(alanine_pdb.positions)
    simulation.minimizeEnergy(maxIterations=50)
    meta.step(simulation, 200)
    (value,) = meta.getCollectiveVariables(simulation)
    free_energy = np.asarray(meta.getFreeEnergy().value_in_unit(unit.kilojoule_per_mole))
    assert -math.pi <= value <= math.pi
    assert np.ptp(free_energy) > 1.0  # ten hills were deposited along the exported CV
