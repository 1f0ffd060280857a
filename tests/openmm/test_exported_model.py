"""ExportedModel and the one door into OpenMM: create_system / add_to_system.

A model file is read and deserialised once per call (counted with a patched loader), every
OpenMM-side function takes the loaded object without reading it again, and the System the door
builds gives the model's own energies and forces in a real Context.
"""
import numpy as np
import openmm
import openmm.app as app
import openmm.unit as unit
import pytest
import torch
from analytic import LJHarmonic, jittered_lattice, lj_harmonic_oracle

from openmm_geom.errors import ModelFileError, TopologyMismatchError
from openmm_geom.export import export_model
from openmm_geom.modelfile import METADATA_MEMBER, read_metadata
from openmm_geom.models import Dihedrals, backbone_quadruplets
from openmm_geom.openmm import (ExportedModel, GridAxis, Metadynamics, TorchCVForce, add_to_system,
                                check_export, create_system, custom_cv_force, restraint_force)

KJ_NM = unit.kilojoule_per_mole / unit.nanometer


@pytest.fixture
def load_counter(monkeypatch):
    """Counts every TorchScript deserialisation in this process (``torch.jit.load``)."""
    calls = []
    real = torch.jit.load

    def counting(*args, **kwargs):
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.jit, "load", counting)
    return calls


@pytest.fixture
def argon(rng, tmp_path):
    """A periodic 27-atom Lennard-Jones model file (Å, eV) and its topology."""
    positions = jittered_lattice(3, 0.36, rng)
    box = np.eye(3) * 1.08
    model = LJHarmonic([], cutoff=4.0)
    exported = export_model(model, tmp_path / "argon.pt", length_unit="angstrom",
                            energy_unit="eV", periodic=True, example_positions=positions,
                            example_box=box, cutoff=4.0, atom_types=["Ar"] * 27,
                            masses=[39.948] * 27)
    topology = app.Topology()
    chain = topology.addChain()
    for _ in range(27):
        topology.addAtom("Ar", app.element.argon, topology.addResidue("AR", chain))
    topology.setPeriodicBoxVectors([openmm.Vec3(*row) for row in box] * unit.nanometer)
    return model, exported, topology, positions, box


@pytest.fixture
def phi_psi(alanine_pdb, tmp_path):
    return export_model(Dihedrals(backbone_quadruplets(alanine_pdb.topology)),
                        tmp_path / "phi_psi.pt", kind="cv", length_unit="nm", periodic=False,
                        example_positions=alanine_pdb.positions, cv_names=["phi", "psi"])


def _energy_forces(system, positions, box=None):
    context = openmm.Context(system, openmm.VerletIntegrator(0.001),
                             openmm.Platform.getPlatformByName("Reference"))
    if box is not None:
        context.setPeriodicBoxVectors(*[openmm.Vec3(*row) for row in box])
    context.setPositions(positions)
    state = context.getState(getEnergy=True, getForces=True)
    return (state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole),
            state.getForces(asNumpy=True).value_in_unit(KJ_NM))


# --- read once ------------------------------------------------------------------------------

def test_each_call_deserialises_the_file_once(argon, phi_psi, alanine_pdb, load_counter):
    _, exported, topology, _, _ = argon
    path, cv_path = exported.source, phi_psi.source

    create_system(path, topology)
    assert len(load_counter) == 1, "create_system"
    system = app.ForceField("amber14-all.xml").createSystem(alanine_pdb.topology)
    calls = [
        ("TorchCVForce", lambda: TorchCVForce(cv_path, "phi + psi")),
        ("Metadynamics", lambda: Metadynamics(
            system, cv_path, [GridAxis("phi", -np.pi, np.pi, 0.3, periodic=True)], 300.0, 5.0,
            1.0, 100)),
        ("restraint_force", lambda: restraint_force(cv_path, {"phi": (10.0, -1.0)})),
        ("custom_cv_force (2 CVs)", lambda: custom_cv_force(cv_path, "phi + psi")),
        ("add_to_system with a bias", lambda: add_to_system(cv_path, system, energy="phi")),
    ]
    for name, call in calls:
        before = len(load_counter)
        call()
        assert len(load_counter) - before == 1, name

    # A loaded model is never read again, whatever takes it.
    before = len(load_counter)
    loaded = ExportedModel.load(cv_path)
    TorchCVForce(loaded, "phi")
    restraint_force(loaded, {"psi": (10.0, 0.5)})
    Metadynamics(system, loaded, [GridAxis("psi", -np.pi, np.pi, 0.3, periodic=True)], 300.0,
                 5.0, 1.0, 100)
    mine = create_system(exported, topology, remove_cm_motion=False)
    add_to_system(exported, mine)
    assert len(load_counter) - before == 1  # the ExportedModel.load above, nothing else


def test_metadata_is_read_without_deserialising(argon, load_counter, tmp_path):
    _, exported, _, _, _ = argon
    metadata = read_metadata(exported.source)
    assert load_counter == []
    assert metadata == exported.metadata
    # A file written before the metadata had an archive member of its own is loaded in full.
    legacy = tmp_path / "legacy.pt"
    torch.jit.save(exported.module, str(legacy))
    assert not any(name.endswith(METADATA_MEMBER) for name in
                   __import__("zipfile").ZipFile(legacy).namelist())
    assert read_metadata(legacy) == exported.metadata and len(load_counter) == 1


def test_exported_model_holds_the_file(argon):
    model, exported, _, positions, box = argon
    assert isinstance(exported, ExportedModel) and exported.from_file
    assert exported.data == open(exported.source, "rb").read()
    assert ExportedModel.load(exported) is exported
    assert (exported.kind, exported.n_atoms, exported.periodic) == ("potential", 27, True)
    assert exported.name == "argon.pt" and "27 atoms, periodic" in repr(exported)
    energy = exported(torch.as_tensor(positions), torch.as_tensor(box))
    assert float(energy) == pytest.approx(lj_harmonic_oracle(model, positions, box)[0], rel=1e-9)
    with pytest.raises(TypeError, match="eager module: export it first"):
        ExportedModel.load(model)
    with pytest.raises(ModelFileError, match="carries no openmm-geom metadata"):
        ExportedModel.load(torch.jit.script(model))


class _Scaled(torch.nn.Module):
    """A potential with a trainable parameter: 0.5 k |x|^2 (nm, kJ/mol)."""

    def __init__(self):
        super().__init__()
        self.k = torch.nn.Parameter(torch.tensor(2.0, dtype=torch.float64))

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        return 0.5 * self.k * (positions ** 2).sum()


def test_parameters_need_no_gradient_in_new_and_old_files(tmp_path):
    """openmm-torch takes forces from energy.backward(), which would also compute every
    parameter's gradient each step: exported files freeze them, and files written before
    that are frozen when loaded."""
    from openmm_geom.contract import boundary_for, describe
    from openmm_geom.modelfile import save_model

    model, x = _Scaled(), np.arange(6.0).reshape(2, 3) / 10
    exported = export_model(model, tmp_path / "new.pt", length_unit="nm", energy_unit="kJ/mol",
                            periodic=False, example_positions=x)
    assert not any(p.requires_grad for p in torch.jit.load(exported.source).parameters())
    assert model.k.requires_grad  # the caller's model is not touched
    # an old file: scripted without freezing
    metadata = describe(model, kind="potential", length_unit="nm", energy_unit="kJ/mol",
                        periodic=False, example_positions=x)
    old = save_model(torch.jit.script(boundary_for(model, metadata)), tmp_path / "old.pt")
    assert all(p.requires_grad for p in torch.jit.load(old.source).parameters())
    loaded = ExportedModel.load(tmp_path / "old.pt")
    assert not any(p.requires_grad for p in loaded.module.parameters())
    positions = torch.tensor(x).requires_grad_(True)
    (gradient,) = torch.autograd.grad(loaded(positions), positions)
    assert torch.allclose(gradient, 2.0 * positions)  # forces still flow


# --- create_system --------------------------------------------------------------------------

def test_create_system_for_a_potential_gives_the_models_numbers(argon):
    model, exported, topology, positions, box = argon
    system = create_system(exported, topology)
    assert system.getNumParticles() == 27 and system.usesPeriodicBoundaryConditions()
    assert system.getParticleMass(0) == app.element.argon.mass  # masses from the elements
    names = sorted(system.getForce(i).getName() for i in range(system.getNumForces()))
    assert names == ["CMMotionRemover", "TorchForce"]
    energy, forces = _energy_forces(system, positions, box)
    ref_energy, ref_forces = lj_harmonic_oracle(model, positions, box)
    assert energy == pytest.approx(ref_energy, rel=1e-9)
    np.testing.assert_allclose(forces, ref_forces, rtol=1e-8, atol=1e-8 * np.abs(ref_forces).max())
    assert create_system(exported, topology, remove_cm_motion=False).getNumForces() == 1


def test_create_system_refuses_what_does_not_fit(argon, phi_psi, alanine_pdb):
    _, exported, topology, _, _ = argon
    with pytest.raises(ValueError, match="is a CV module, not a potential.*TorchCVForce"):
        create_system(phi_psi, alanine_pdb.topology)
    with pytest.raises(ValueError, match="all-atom potential: create_system needs the topology"):
        create_system(exported)
    neon = app.Topology()
    chain = neon.addChain()
    for _ in range(27):
        neon.addAtom("Ne", app.element.neon, neon.addResidue("NE", chain))
    neon.setPeriodicBoxVectors(topology.getPeriodicBoxVectors())
    with pytest.raises(TopologyMismatchError, match="atom 0 is Ne in the topology but 'Ar'"):
        create_system(exported, neon)
    neon.setPeriodicBoxVectors(None)
    for atom in neon.atoms():
        atom.element = app.element.argon
    with pytest.raises(TopologyMismatchError, match="is periodic but the system is non-periodic"):
        create_system(exported, neon)
    with pytest.raises(ValueError, match="need 27 masses, got 3"):
        create_system(exported, topology, masses=[1.0, 2.0, 3.0])


# --- add_to_system --------------------------------------------------------------------------

def test_potential_on_a_subset_of_a_larger_system(rng, tmp_path):
    """ML/MM-style: the model acts on 27 of 35 particles; the rest keep their own forces."""
    positions = jittered_lattice(3, 0.36, rng)
    model = LJHarmonic([[0, 1], [4, 5]], cutoff=4.0)
    exported = export_model(model, tmp_path / "lj.pt", length_unit="angstrom", energy_unit="eV",
                            periodic=False, example_positions=positions, cutoff=4.0)
    n_other = 8
    order = rng.permutation(27 + n_other)  # the model's atoms scattered through the System
    particles = [int(i) for i in order[:27]]
    others = [int(i) for i in order[27:]]
    system = openmm.System()
    for _ in range(27 + n_other):
        system.addParticle(12.0)
    spring = openmm.HarmonicBondForce()
    spring.addBond(others[0], others[1], 0.2, 500.0)
    system.addForce(spring)
    added = add_to_system(exported, system, particles=particles)
    assert [f.getName() for f in added] == ["TorchForce"] and system.getNumForces() == 2

    everything = np.zeros((27 + n_other, 3))
    everything[particles] = positions
    everything[others] = rng.normal(5.0, 1.0, size=(n_other, 3))  # far from the model's atoms
    energy, forces = _energy_forces(system, everything)
    ref_energy, ref_forces = lj_harmonic_oracle(model, positions)
    r = np.linalg.norm(everything[others[0]] - everything[others[1]])
    assert energy == pytest.approx(ref_energy + 0.5 * 500.0 * (r - 0.2) ** 2, rel=1e-9)
    np.testing.assert_allclose(forces[particles], ref_forces, rtol=1e-8,
                               atol=1e-8 * np.abs(ref_forces).max())
    assert np.abs(forces[others[2:]]).max() == 0.0

    with pytest.raises(ValueError, match="particle index 40 out of range for a system of 35"):
        add_to_system(exported, system, particles=particles[:-1] + [40])
    with pytest.raises(TopologyMismatchError, match="exported for 27 atoms but the system has 35"):
        add_to_system(exported, system)
    assert system.getNumForces() == 2  # refused calls add nothing


def test_cv_module_as_a_bias(phi_psi, alanine_pdb):
    system = app.ForceField("amber14-all.xml").createSystem(alanine_pdb.topology)
    n = system.getNumForces()
    with pytest.raises(ValueError, match="not an energy: pass energy="):
        add_to_system(phi_psi, system)
    (force,) = add_to_system(phi_psi, system, energy="0.5*k*(phi-phi0)^2",
                             global_parameters={"k": 50.0, "phi0": -1.2}, force_group=3)
    assert isinstance(force, TorchCVForce) and system.getNumForces() == n + 1
    context = openmm.Context(system, openmm.VerletIntegrator(0.001),
                             openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(alanine_pdb.positions)
    phi, _ = force.getCollectiveVariableValues(context)
    bias = context.getState(getEnergy=True, groups={3}).getPotentialEnergy()
    assert bias.value_in_unit(unit.kilojoule_per_mole) == pytest.approx(
        0.5 * 50.0 * (phi + 1.2) ** 2, rel=1e-10)


def test_check_export_takes_the_loaded_model(argon, load_counter):
    model, exported, _, _, _ = argon
    report = check_export(exported, eager=model, checks=("in_context", "translation"),
                          platforms=("Reference",))
    assert report.passed and report.model == exported.source and load_counter == []
