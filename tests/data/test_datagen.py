"""Reference-data generation: real OpenMM runs of capped alanine (vacuum) and a water box (PME)."""
import hashlib
import json
from pathlib import Path

import numpy as np
import openmm
import openmm.app as app
import openmm.unit as unit
import pytest

from openmm_geom.data import bundled
from openmm_geom.data.datagen import (
    SimulationBlowUp,
    generate_reference,
    load_reference,
    reference_topology,
)

ALANINE = bundled("alanine-dipeptide.pdb")
# 6 frames 5 steps apart after 50 steps of equilibration, in chunks of 2 frames
SHORT = dict(n_frames=6, save_interval_ps=0.005, equilibration_ps=0.05, checkpoint_every=2,
             progress=False)
WATER = dict(forcefield="amber14/tip3p.xml", rigid_water=False, nonbonded_cutoff_nm=0.7,
             n_frames=3, save_interval_ps=0.005, equilibration_ps=0.01, progress=False)
SHARED = Path(__file__).resolve().parents[3] / "shared" / "data" / "ala2_vacuum_300K_s1.npz"


def sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def alanine_run(tmp_path_factory):
    return generate_reference(ALANINE, tmp_path_factory.mktemp("alanine") / "ala.npz", **SHORT)


@pytest.fixture(scope="module")
def water_pdb(tmp_path_factory):
    """102 TIP3P waters in a 1.5 nm cubic box."""
    modeller = app.Modeller(app.Topology(), [])
    modeller.addSolvent(app.ForceField("amber14/tip3p.xml"),
                        boxSize=openmm.Vec3(1.5, 1.5, 1.5) * unit.nanometer)
    path = tmp_path_factory.mktemp("water") / "water.pdb"
    with open(path, "w") as handle:
        app.PDBFile.writeFile(modeller.topology, modeller.positions, handle)
    return path


def fresh_forces(data, system):
    """Forces (kJ/mol/nm) and energies (kJ/mol) of a new Context at the saved frames."""
    context = openmm.Context(system, openmm.VerletIntegrator(0.001),
                             openmm.Platform.getPlatformByName("Reference"))
    forces, energies = [], []
    for i, positions in enumerate(data["positions"]):
        if "box_vectors" in data:
            context.setPeriodicBoxVectors(*data["box_vectors"][i])
        context.setPositions(positions.astype(np.float64))
        state = context.getState(getForces=True, getEnergy=True)
        forces.append(state.getForces(asNumpy=True).value_in_unit(
            unit.kilojoule_per_mole / unit.nanometer))
        energies.append(state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole))
    return np.array(forces), np.array(energies)


def assert_forces_match(data, system):
    forces, energies = fresh_forces(data, system)
    scale = np.abs(forces).max()
    np.testing.assert_allclose(data["forces"], forces, rtol=1e-4, atol=1e-4 * scale)
    np.testing.assert_allclose(data["potential_energies"], energies, rtol=1e-4,
                               atol=1e-4 * np.abs(energies).max())


# --- capped alanine in vacuum ----------------------------------------------------------------

def test_alanine_file_layout_and_units(alanine_run):
    data = load_reference(alanine_run)
    assert data["positions"].shape == data["forces"].shape == (6, 22, 3)
    assert data["positions"].dtype == data["forces"].dtype == np.float32
    assert data["potential_energies"].shape == (6,)
    assert "box_vectors" not in data
    topology = app.PDBFile(str(ALANINE)).topology
    assert data["atomic_numbers"].tolist() == [a.element.atomic_number for a in topology.atoms()]
    # the masses the dynamics used: amber14's (H 1.008), not the elements' (H 1.007947)
    system = app.ForceField("amber14-all.xml").createSystem(topology)
    assert data["masses"].tolist() == [system.getParticleMass(i).value_in_unit(unit.dalton)
                                       for i in range(22)]
    assert (data["temperature_K"], data["save_interval_ps"], data["timestep_fs"], data["seed"]) \
        == (300.0, 0.005, 1.0, 1)
    assert data["forcefield"] == ["amber14-all.xml"]
    assert data["openmm_version"] == openmm.__version__
    assert data["units"]["positions"] == "nm" and data["units"]["forces"] == "kJ/mol/nm"
    generation = data["generation"]
    assert generation["nonbonded_method"] == "NoCutoff" and generation["n_constraints"] == 0
    assert generation["steps_per_frame"] == 5
    # nm: the ACE methyl C-H bond (atoms 1-0) is ~0.109 nm in every frame
    bond = np.linalg.norm(data["positions"][:, 1] - data["positions"][:, 0], axis=-1)
    assert np.all((bond > 0.09) & (bond < 0.13))
    # interchangeable with the shared files: plain np.load, same array layout, no pickles
    with np.load(alanine_run) as raw:
        assert raw["positions"].shape == (6, 22, 3) and raw["masses"].shape == (22,)
    assert reference_topology(data).getNumBonds() == topology.getNumBonds()


def test_saved_forces_are_the_systems_forces_at_the_saved_positions(alanine_run):
    data = load_reference(alanine_run)
    system = app.ForceField(*data["forcefield"]).createSystem(
        reference_topology(data), nonbondedMethod=app.NoCutoff, constraints=None)
    assert_forces_match(data, system)
    assert np.abs(data["forces"]).max() > 100  # thermal forces, not zeros


def test_same_seed_gives_the_same_bytes_another_seed_another_trajectory(alanine_run, tmp_path):
    again = generate_reference(ALANINE, tmp_path / "again.npz", **SHORT)
    assert sha256(again) == sha256(alanine_run)
    other = generate_reference(ALANINE, tmp_path / "other.npz", **dict(SHORT, seed=2))
    assert not np.array_equal(load_reference(other)["positions"],
                              load_reference(alanine_run)["positions"])


def test_resume_after_interruption_gives_the_uninterrupted_file(alanine_run, tmp_path):
    out, work = tmp_path / "ala.npz", tmp_path / "ala.npz.partial"

    class Interrupted(Exception):
        pass

    def stop_after_two_chunks(frames_done):
        if frames_done == 4:
            raise Interrupted

    with pytest.raises(Interrupted):
        generate_reference(ALANINE, out, **SHORT, on_checkpoint=stop_after_two_chunks)
    assert not out.exists()
    assert json.loads((work / "state.json").read_text())["chunks"] == [2, 2]

    with pytest.raises(ValueError, match=r"different settings.*seed: recorded 1, now 2"):
        generate_reference(ALANINE, out, **dict(SHORT, seed=2))
    with pytest.raises(ValueError, match=r"n_frames: recorded 6, now 8"):
        generate_reference(ALANINE, out, **dict(SHORT, n_frames=8))

    # resumes from frame 4 (with smaller chunks, which do not change the trajectory)
    frames_saved = []
    generate_reference(ALANINE, out, **dict(SHORT, checkpoint_every=1),
                       on_checkpoint=frames_saved.append)
    assert frames_saved == [5, 6]
    assert sha256(out) == sha256(alanine_run)
    assert not work.exists()


def test_finished_output_is_kept_and_not_overwritten(alanine_run):
    before = (sha256(alanine_run), alanine_run.stat().st_mtime_ns)
    assert generate_reference(ALANINE, alanine_run, **SHORT) == alanine_run
    assert (sha256(alanine_run), alanine_run.stat().st_mtime_ns) == before
    with pytest.raises(FileExistsError, match="not made with these settings"):
        generate_reference(ALANINE, alanine_run, **dict(SHORT, temperature_K=310.0))


def test_constraints_warn_that_forces_lack_constraint_forces(tmp_path):
    with pytest.warns(UserWarning, match="do not include constraint forces"):
        out = generate_reference(ALANINE, tmp_path / "hbonds.npz", constraints="HBonds",
                                 n_frames=1, save_interval_ps=0.002, timestep_fs=2.0,
                                 equilibration_ps=0.0, progress=False)
    assert load_reference(out)["generation"]["n_constraints"] == 12


# --- periodic water box (PME) -------------------------------------------------------------

def test_periodic_water_box_saves_box_vectors_and_consistent_forces(water_pdb, tmp_path):
    data = load_reference(generate_reference(water_pdb, tmp_path / "water.npz", **WATER))
    assert data["positions"].shape == (3, 306, 3)
    assert data["box_vectors"].shape == (3, 3, 3)
    np.testing.assert_allclose(data["box_vectors"], np.broadcast_to(np.eye(3) * 1.5, (3, 3, 3)))
    assert data["generation"]["nonbonded_method"] == "PME"
    assert data["generation"]["n_constraints"] == 0
    topology = reference_topology(data)
    assert topology.getPeriodicBoxVectors() is not None
    system = app.ForceField(*data["forcefield"]).createSystem(
        topology, nonbondedMethod=app.PME, nonbondedCutoff=0.7 * unit.nanometer,
        constraints=None, rigidWater=False)
    assert_forces_match(data, system)


def test_cutoff_longer_than_half_the_box_is_refused(water_pdb, tmp_path):
    with pytest.raises(ValueError, match=r"more than half the periodic box.*at most 0.75 nm"):
        generate_reference(water_pdb, tmp_path / "w.npz", **dict(WATER, nonbonded_cutoff_nm=1.0))


# --- bad input ----------------------------------------------------------------------------

@pytest.mark.parametrize("change, error, message", [
    (dict(n_frames=0), ValueError, "n_frames must be a positive integer"),
    (dict(n_frames=2.5), ValueError, "n_frames must be a positive integer"),
    (dict(save_interval_ps=-1.0), ValueError, "save_interval_ps must be a finite positive"),
    (dict(timestep_fs=0), ValueError, "timestep_fs must be a finite positive"),
    (dict(temperature_K=float("nan")), ValueError, "temperature_K must be a finite positive"),
    (dict(save_interval_ps=0.0015), ValueError,
     r"save_interval_ps = 0.0015 ps is not a whole number of 1.0 fs time steps"),
    (dict(equilibration_ps=0.0025, save_interval_ps=0.01, timestep_fs=2.0), ValueError,
     r"equilibration_ps = 0.0025 ps is not a whole number of 2.0 fs"),
    (dict(seed=0), ValueError, "seed must be a positive integer"),
    (dict(checkpoint_every=0), ValueError, "checkpoint_every must be a positive integer"),
    (dict(constraints="bonds"), ValueError, "constraints must be None, 'HBonds'"),
    (dict(platform="Nope"), ValueError, "unknown OpenMM platform 'Nope'"),
    (dict(platform="Reference", threads=2), ValueError, "threads applies to the CPU platform"),
    (dict(forcefield="nope.xml"), FileNotFoundError, "force field file not found.*nope.xml"),
    (dict(forcefield=()), ValueError, "give at least one OpenMM force-field XML file"),
    (dict(forcefield="amber14/tip3p.xml"), ValueError,
     r"\['amber14/tip3p.xml'\] cannot parametrise .*alanine-dipeptide.pdb"),
])
def test_bad_arguments_are_named(tmp_path, change, error, message):
    with pytest.raises(error, match=message):
        generate_reference(ALANINE, tmp_path / "out.npz", **dict(SHORT, **change))
    assert list(tmp_path.iterdir()) == []  # refused before anything was written


@pytest.mark.parametrize("content, message", [
    (None, "PDB file not found"),
    ("", "could not be read as a PDB file"),
    ("this is not\na PDB file\n", "could not be read as a PDB file"),
    (ALANINE.read_text().replace("  1.", "  x."), "could not be read as a PDB file"),
])
def test_missing_or_corrupt_pdb(tmp_path, content, message):
    pdb = tmp_path / "input.pdb"
    if content is not None:
        pdb.write_text(content)
    with pytest.raises(FileNotFoundError if content is None else ValueError, match=message):
        generate_reference(pdb, tmp_path / "out.npz", **SHORT)


def test_clashing_atoms_are_named(tmp_path):
    lines = ALANINE.read_text().splitlines()
    atoms = [i for i, line in enumerate(lines) if line.startswith(("ATOM", "HETATM"))]
    first, last = lines[atoms[0]], lines[atoms[-1]]
    lines[atoms[-1]] = last[:30] + first[30:54] + last[54:]  # last H onto the first H
    pdb = tmp_path / "clash.pdb"
    pdb.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"input structure cannot be simulated.*"
                                         r"0 \(ACE1:H1\), 21 \(NME3:H3\)"):
        generate_reference(pdb, tmp_path / "out.npz", **SHORT)


def test_blow_up_stops_with_a_diagnosis(tmp_path):
    out = tmp_path / "out.npz"
    with pytest.raises(SimulationBlowUp,
                       match=r"unstable at MD step \d+: .*last finite state, the largest "
                             r"forces: atom \d+ \(\w+\d:\w+\)") as info:
        generate_reference(ALANINE, out, n_frames=10, timestep_fs=5.0, save_interval_ps=0.05,
                           equilibration_ps=0.0, progress=False)
    assert "time step too large" in str(info.value)
    assert not out.exists()


# --- load_reference ------------------------------------------------------------------------

def _valid_arrays():
    rng = np.random.default_rng(0)
    return dict(positions=rng.normal(size=(4, 5, 3)).astype(np.float32),
                forces=rng.normal(size=(4, 5, 3)).astype(np.float32),
                masses=np.full(5, 12.0), save_interval_ps=np.float64(1.0))


def _bad_forces(arrays):
    arrays["forces"][2, 1, 0] = np.nan


@pytest.mark.parametrize("spoil, message", [
    (lambda a: a.pop("forces"), "has no 'forces' array"),
    (lambda a: a.update(forces=a["forces"][:, :4]), r"forces have shape \(4, 4, 3\) but positions"),
    (_bad_forces, r"forces has non-finite values \(first in frame 2\)"),
    (lambda a: a.update(positions=a["positions"][:0], forces=a["forces"][:0]), "frames > 0"),
    (lambda a: a.update(positions=a["positions"][0], forces=a["forces"][0]), "frames > 0"),
    (lambda a: a.update(masses=np.ones(4)), r"masses has shape \(4,\)"),
    (lambda a: a.update(save_interval_ps=np.float64(0.0)), "save_interval_ps must be positive"),
    (lambda a: a.update(box_vectors=np.ones((3, 3, 3))), r"box_vectors has shape \(3, 3, 3\)"),
    (lambda a: a.update(units=np.asarray(json.dumps({"positions": "angstrom"}))),
     "positions are in 'angstrom'"),
])
def test_load_reference_rejects_inconsistent_files(tmp_path, spoil, message):
    arrays = _valid_arrays()
    spoil(arrays)
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match=message):
        load_reference(tmp_path / "bad.npz")


def test_load_reference_rejects_missing_and_corrupt_files(alanine_run, tmp_path):
    with pytest.raises(FileNotFoundError, match="reference file not found"):
        load_reference(tmp_path / "missing.npz")
    (tmp_path / "text.npz").write_text("positions, forces")
    with pytest.raises(ValueError, match="is not an npz file"):
        load_reference(tmp_path / "text.npz")
    content = alanine_run.read_bytes()
    (tmp_path / "truncated.npz").write_bytes(content[: len(content) // 2])
    with pytest.raises(ValueError, match="is not an npz file"):
        load_reference(tmp_path / "truncated.npz")
    flipped = bytearray(content)
    flipped[200:210] = bytes(10)  # inside the positions array: the zip CRC no longer matches
    (tmp_path / "flipped.npz").write_bytes(bytes(flipped))
    with pytest.raises(ValueError, match="is corrupt"):
        load_reference(tmp_path / "flipped.npz")


def test_reference_topology_needs_topology_pdb():
    with pytest.raises(ValueError, match="no 'topology_pdb'"):
        reference_topology(_valid_arrays())


@pytest.mark.skipif(not SHARED.is_file(), reason="shared reference data not present")
def test_load_shared_reference_file():
    data = load_reference(SHARED)
    assert data["positions"].shape[1:] == (22, 3) and data["temperature_K"] == 300.0
