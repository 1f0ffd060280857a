"""Flexible-water data generation, the energy+force data loader, time-block splits and liquid
analysis (RDF against a brute-force oracle, NVE drift, figures)."""
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import openmm
import openmm.app as app
import pytest

from openmm_geom.analysis.liquid import (
    half_min_width,
    nve_drift,
    plot_force_parity,
    plot_rdfs,
    radial_distribution,
    rdf_error,
)
from openmm_geom.data.datagen import load_reference
from openmm_geom.data.potential_data import (
    PotentialData,
    load_potential_data,
    time_block_split,
)
from openmm_geom.data.water import (
    default_cutoff_nm,
    generate_water_reference,
    water_box_edge_nm,
    water_box_pdb,
)

# Only a guard against a hung subprocess, not a speed requirement (speed is benchmarked).
HANG_GUARD = 900

# 16 waters at 0.997 g/cm^3: a 0.78 nm box, so the PME cutoff must stay below 0.39 nm
TINY_WATER = dict(n_frames=4, save_interval_ps=0.005, equilibration_ps=0.01,
                  nonbonded_cutoff_nm=0.35, progress=False)
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def water_run(tmp_path_factory):
    return generate_water_reference(16, tmp_path_factory.mktemp("water") / "w16.npz",
                                     **TINY_WATER)


# --- the water box ----------------------------------------------------------------------------

@pytest.mark.parametrize("n", [8, 16, 17, 64])
def test_water_box_has_exactly_n_waters_and_a_box(tmp_path, n):
    path = water_box_pdb(n, tmp_path / "w.pdb", seed=2)
    text = path.read_text()
    assert text.startswith("CRYST1") and "CREATED WITH OPENMM" not in text
    pdb = app.PDBFile(str(path))
    residues = list(pdb.topology.residues())
    assert len(residues) == n and all(r.name == "HOH" for r in residues)
    assert pdb.topology.getNumAtoms() == 3 * n and pdb.topology.getNumBonds() == 2 * n
    edge = water_box_edge_nm(n)
    box = np.asarray(pdb.topology.getPeriodicBoxVectors()._value)
    np.testing.assert_allclose(box, np.eye(3) * edge, atol=1e-3)  # PDB keeps 0.001 nm
    # density: n * 18.015 g/mol in edge^3 nm^3 gives 0.997 g/cm^3
    assert n * 18.0153 / 6.02214076e23 / (edge ** 3 * 1e-21) == pytest.approx(0.997, rel=1e-4)
    # molecules are intact: O-H 0.0957 nm
    xyz = np.asarray(pdb.getPositions(asNumpy=True)._value).reshape(n, 3, 3)
    assert np.allclose(np.linalg.norm(xyz[:, 1:] - xyz[:, :1], axis=-1), 0.0957, atol=0.002)
    # reproducible bytes (the datagen run's settings include the PDB's hash)
    assert water_box_pdb(n, tmp_path / "again.pdb", seed=2).read_bytes() == path.read_bytes()


def test_salt_water_box_replaces_waters_by_separated_ions(tmp_path):
    from openmm_geom.data.water import salt_molarity

    path = water_box_pdb(64, tmp_path / "salt.pdb", seed=3, ion_pairs=2)
    pdb = app.PDBFile(str(path))
    names = [r.name for r in pdb.topology.residues()]
    assert names == ["HOH"] * 60 + ["NA", "NA", "CL", "CL"]
    assert pdb.topology.getNumAtoms() == 184 and pdb.topology.getNumBonds() == 120
    edge = water_box_edge_nm(64)  # the box of 64 sites: 1.73 mol/L
    assert salt_molarity(2, 64) == pytest.approx(2 / (6.02214076e23 * edge ** 3 * 1e-24))
    assert 1.7 < salt_molarity(2, 64) < 1.75
    xyz = np.asarray(pdb.getPositions(asNumpy=True)._value)
    ions = xyz[-4:]
    delta = ions[:, None] - ions[None]
    delta -= edge * np.round(delta / edge)
    apart = np.linalg.norm(delta, axis=-1)[np.triu_indices(4, 1)]
    assert apart.min() > 0.5  # the ions start far apart (the box is 1.24 nm)
    # the amber14 ions are parameterised: the system builds and has charge zero
    system = app.ForceField("amber14/tip3p.xml").createSystem(
        pdb.topology, nonbondedMethod=app.PME, nonbondedCutoff=0.6, rigidWater=False)
    nonbonded = next(f for f in system.getForces() if isinstance(f, openmm.NonbondedForce))
    charges = [nonbonded.getParticleParameters(i)[0]._value for i in range(184)]
    assert sum(charges) == pytest.approx(0.0, abs=1e-6) and sorted(charges)[0] == -1.0
    assert water_box_pdb(64, tmp_path / "again.pdb", seed=3, ion_pairs=2).read_bytes() \
        == path.read_bytes()
    with pytest.raises(ValueError, match="must leave some of the 8 waters"):
        water_box_pdb(8, tmp_path / "x.pdb", ion_pairs=4)
    with pytest.raises(ValueError, match="ion_pairs"):
        water_box_pdb(8, tmp_path / "x.pdb", ion_pairs=-1)
    assert not (tmp_path / "x.pdb").exists()


def test_default_cutoff_fits_the_box():
    assert default_cutoff_nm(water_box_edge_nm(64)) == 0.62
    assert default_cutoff_nm(water_box_edge_nm(1000)) == 1.0
    with pytest.raises(ValueError, match="n_molecules must be a positive integer"):
        water_box_edge_nm(0)


def test_flexible_water_run_is_unconstrained_and_loads(water_run):
    reference = load_reference(water_run)
    generation = reference["generation"]
    assert generation["n_constraints"] == 0 and generation["rigid_water"] is False
    assert generation["nonbonded_method"] == "PME" and generation["timestep_fs"] == 0.5
    assert reference["forcefield"] == ["amber14/tip3p.xml"]

    data = load_potential_data(water_run)
    assert isinstance(data, PotentialData) and data.source == Path(water_run)
    assert data.positions.shape == data.forces.shape == (4, 48, 3)
    assert data.positions.dtype == data.forces.dtype == np.float64
    assert data.energies.shape == (4,) and np.all(data.energies < 0)  # liquid water is bound
    np.testing.assert_allclose(data.boxes, np.broadcast_to(np.eye(3) * 0.783, (4, 3, 3)))
    assert data.atomic_numbers.tolist() == [8, 1, 1] * 16
    assert data.masses.shape == (48,) and "CRYST1" in data.topology_pdb
    assert np.abs(data.forces).max() > 100  # thermal forces, bonds included
    assert len(data.sha256) == 16 and load_potential_data(water_run).sha256 == data.sha256


def test_water_run_is_reproducible_and_resumes_to_the_same_trajectory(water_run, tmp_path):
    again = generate_water_reference(16, tmp_path / "again.npz", **TINY_WATER)
    assert again.read_bytes() == Path(water_run).read_bytes()  # one thread: bit-reproducible

    out = tmp_path / "resumed.npz"

    class Interrupted(Exception):
        pass

    def stop(frames_done):
        if frames_done == 2:
            raise Interrupted

    with pytest.raises(Interrupted):
        generate_water_reference(16, out, **TINY_WATER, checkpoint_every=1, on_checkpoint=stop)
    # the box is rebuilt byte for byte, so the run (whose settings include its hash) resumes
    generate_water_reference(16, out, **TINY_WATER, checkpoint_every=1)
    resumed, straight = load_reference(out), load_reference(water_run)
    np.testing.assert_array_equal(resumed["positions"], straight["positions"])
    # after loading a checkpoint OpenMM's PME reports forces that differ in the last bits
    np.testing.assert_allclose(resumed["forces"], straight["forces"], rtol=0, atol=1e-3)
    np.testing.assert_allclose(resumed["potential_energies"], straight["potential_energies"],
                               rtol=1e-7)


def test_datagen_cli_water_box(tmp_path):
    out = tmp_path / "cli.npz"
    done = subprocess.run(
        [sys.executable, "-m", "openmm_geom.cli", "datagen", "--water-box", "16", "--out",
         str(out), "--frames", "2", "--interval-ps", "0.005", "--equilibration-ps", "0.005",
         "--nonbonded-cutoff", "0.38", "--threads", "1", "--no-progress", "--json"],
        capture_output=True, text=True, timeout=HANG_GUARD)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["frames"] == 2 and summary["atoms"] == 48 and summary["periodic"]
    assert summary["constraints"] == 0 and summary["timestep_fs"] == 0.5
    assert summary["nonbonded_cutoff_nm"] == 0.38
    assert load_potential_data(out).boxes.shape == (2, 3, 3)

    both = subprocess.run([sys.executable, "-m", "openmm_geom.cli", "datagen", "x.pdb",
                           "--water-box", "16", "--out", str(tmp_path / "no.npz"),
                           "--frames", "1"], capture_output=True, text=True,
                          timeout=HANG_GUARD)
    assert both.returncode != 0 and "either a PDB file or --water-box" in both.stderr
    assert not (tmp_path / "no.npz").exists()

    salt = tmp_path / "salt.npz"
    done = subprocess.run(
        [sys.executable, "-m", "openmm_geom.cli", "datagen", "--water-box", "24", "--ion-pairs",
         "1", "--out", str(salt), "--frames", "2", "--interval-ps", "0.005",
         "--equilibration-ps", "0.005", "--nonbonded-cutoff", "0.4", "--threads", "1",
         "--no-progress", "--json"], capture_output=True, text=True, timeout=HANG_GUARD)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["atoms"] == 3 * 22 + 2
    assert sorted(set(load_potential_data(salt).atomic_numbers.tolist())) == [1, 8, 11, 17]
    bad = subprocess.run([sys.executable, "-m", "openmm_geom.cli", "datagen", "x.pdb",
                          "--ion-pairs", "1", "--out", str(tmp_path / "no.npz"), "--frames", "1"],
                         capture_output=True, text=True, timeout=HANG_GUARD)
    assert bad.returncode != 0 and "--ion-pairs needs --water-box" in bad.stderr
    assert not (tmp_path / "no.npz").exists()


# --- the loader -------------------------------------------------------------------------------

def _generic(frames=5, atoms=6, seed=0, box=True):
    rng = np.random.default_rng(seed)
    arrays = dict(positions=rng.uniform(0, 1.2, (frames, atoms, 3)),
                  forces=rng.normal(0, 300, (frames, atoms, 3)),
                  energies=rng.normal(-500, 10, frames),
                  atomic_numbers=np.array([8, 1, 1] * (atoms // 3)))
    if box:
        arrays["box_vectors"] = np.eye(3) * 1.2
    return arrays


def test_generic_format_with_one_box_for_all_frames(tmp_path):
    arrays = _generic()
    np.savez(tmp_path / "g.npz", **arrays)
    data = load_potential_data(tmp_path / "g.npz")
    assert data.boxes.shape == (5, 3, 3) and np.all(data.boxes == np.eye(3) * 1.2)
    np.testing.assert_array_equal(data.energies, arrays["energies"])
    assert data.masses is None and data.topology_pdb is None
    assert data.atomic_numbers.dtype == np.int64

    np.savez(tmp_path / "nobox.npz", **_generic(box=False))
    assert load_potential_data(tmp_path / "nobox.npz").boxes is None


def test_subset_keeps_per_atom_data_and_rehashes(tmp_path):
    np.savez(tmp_path / "g.npz", **_generic(frames=8))
    data = load_potential_data(tmp_path / "g.npz")
    part = data.subset([6, 1, 2])
    np.testing.assert_array_equal(part.positions, data.positions[[6, 1, 2]])
    np.testing.assert_array_equal(part.energies, data.energies[[6, 1, 2]])
    assert part.boxes.shape == (3, 3, 3) and part.n_frames == len(part) == 3
    assert part.atomic_numbers is data.atomic_numbers and part.sha256 != data.sha256
    assert data.subset(np.arange(8)).sha256 == data.sha256
    with pytest.raises(IndexError, match="frame index 8 is out of range for 8 frames"):
        data.subset([8])
    with pytest.raises(ValueError, match="1-D array of integers"):
        data.subset([0.5])


def _nan_force(arrays):
    arrays["forces"][3, 2, 1] = np.nan


def _inf_energy(arrays):
    arrays["energies"][2] = np.inf


@pytest.mark.parametrize("spoil, message", [
    (lambda a: a.pop("forces"), r"missing 'forces' \(it has: \['atomic_numbers', 'box_vectors'"),
    (lambda a: a.pop("energies"), r"missing 'energies \(or potential_energies\)'"),
    (lambda a: a.pop("atomic_numbers"), "missing 'atomic_numbers'"),
    (_nan_force, r"'forces' has NaN or infinite values in frame 3"),
    (_inf_energy, r"'energies' has NaN or infinite values in frame 2"),
    (lambda a: a.update(forces=a["forces"][:, :5]), r"'forces' has shape \(5, 5, 3\) but"),
    (lambda a: a.update(positions=a["positions"][0]), r"shape \(frames > 0, atoms > 0, 3\)"),
    (lambda a: a.update(energies=a["energies"][:4]), r"'energies' has shape \(4,\), expected"),
    (lambda a: a.update(box_vectors=np.ones((4, 3, 3))), r"'box_vectors' has shape \(4, 3, 3\)"),
    (lambda a: a.update(box_vectors=np.zeros((3, 3))), "has volume 0"),
    (lambda a: a.update(atomic_numbers=np.array([8, 1, 0, 8, 1, 1])),
     "atomic numbers must be 1-118 \\(atom 2: 0\\)"),
    (lambda a: a.update(atomic_numbers=np.array([8, 1, 1])), r"'atomic_numbers' has shape \(3,\)"),
    (lambda a: a.update(potential_energies=a["energies"]), "both 'energies' and"),
    (lambda a: a.update(masses=-np.ones(6)), "'masses' must be finite and positive"),
    (lambda a: a.update(units=np.asarray(json.dumps({"positions": "angstrom"}))),
     "positions are in 'angstrom'"),
])
def test_loader_names_the_problem(tmp_path, spoil, message):
    arrays = _generic()
    spoil(arrays)
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match=message):
        load_potential_data(tmp_path / "bad.npz")


def _npy_bytes(array):
    import io

    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def test_loader_rejects_missing_and_corrupt_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="potential data file not found"):
        load_potential_data(tmp_path / "missing.npz")
    (tmp_path / "text.npz").write_text("positions forces energies")
    with pytest.raises(ValueError, match="is not an npz file"):
        load_potential_data(tmp_path / "text.npz")
    np.savez(tmp_path / "good.npz", **_generic())
    content = (tmp_path / "good.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(content[: len(content) // 2])
    with pytest.raises(ValueError, match="is not an npz file"):
        load_potential_data(tmp_path / "cut.npz")
    with zipfile.ZipFile(tmp_path / "junk.npz", "w") as archive:
        for key, value in _generic().items():
            archive.writestr(f"{key}.npy", b"not an npy file" if key == "forces" else
                             _npy_bytes(value))
    with pytest.raises(ValueError, match="corrupt or not a NumPy npz file: member 'forces'"):
        load_potential_data(tmp_path / "junk.npz")


# --- time-block split -------------------------------------------------------------------------

@pytest.mark.parametrize("n, val, test, gap", [(100, 0.1, 0.1, 5), (1000, 0.15, 0.05, 20),
                                               (7, 0.1, 0.1, 1), (50, 0.0, 0.2, 3),
                                               (50, 0.2, 0.0, 3), (30, 0.1, 0.1, 0)])
def test_time_block_split_gives_ordered_disjoint_blocks_with_gaps(n, val, test, gap):
    train, validation, test_idx = time_block_split(n, val, test, gap=gap)
    blocks = [b for b in (train, validation, test_idx) if b.size]
    for block in blocks:
        assert block.dtype == np.int64 and np.all(np.diff(block) == 1)  # contiguous
    for before, after in zip(blocks, blocks[1:]):
        assert after[0] - before[-1] - 1 == gap  # exactly `gap` frames left out
    assert train[0] == 0 and blocks[-1][-1] == n - 1  # test is the last block
    assert len(validation) == (max(1, round(val * n)) if val else 0)
    assert len(test_idx) == (max(1, round(test * n)) if test else 0)
    assert sum(map(len, blocks)) == n - gap * (len(blocks) - 1)


def test_time_block_split_errors():
    with pytest.raises(ValueError, match=r"too few frames: 10 frames cannot hold .* \(need at "
                                         r"least 23\)"):
        time_block_split(10, 0.1, 0.1, gap=10)
    with pytest.raises(ValueError, match="validation_fraction must be in"):
        time_block_split(100, 1.0, 0.1)
    with pytest.raises(ValueError, match="gap must be a non-negative integer"):
        time_block_split(100, gap=-1)
    with pytest.raises(ValueError, match="n_frames must be a positive integer"):
        time_block_split(0)


# --- RDF --------------------------------------------------------------------------------------

def _brute_force_rdf(positions, boxes, first, second, same, r_max, bins):
    """Minimum image over the 27 neighbouring cells, histogram, ideal-gas normalisation."""
    edges = np.linspace(0.0, r_max, bins + 1)
    counts = np.zeros(bins)
    shifts = np.array(np.meshgrid([-1, 0, 1], [-1, 0, 1], [-1, 0, 1])).reshape(3, -1).T
    pairs = [(i, j) for i in first for j in second if (i < j if same else i != j)]
    for x, box in zip(positions, boxes):
        inverse = np.linalg.inv(box)
        for i, j in pairs:
            delta = x[j] - x[i]
            delta = delta - np.round(delta @ inverse) @ box  # into the central cell, roughly
            d = np.linalg.norm(delta + shifts @ box, axis=-1).min()
            counts += np.histogram([d], bins=edges)[0]
    shell = 4 / 3 * np.pi * (edges[1:] ** 3 - edges[:-1] ** 3)
    norm = len(pairs) * np.sum(1.0 / np.abs(np.linalg.det(boxes))) * shell
    return 0.5 * (edges[1:] + edges[:-1]), counts / norm, 1.0 / norm


@pytest.mark.parametrize("boxes", [
    np.diag([1.1, 1.3, 1.2]),
    np.array([[1.2, 0.0, 0.0], [0.3, 1.1, 0.0], [-0.4, 0.35, 1.0]]),  # triclinic, reduced form
])
def test_rdf_matches_a_brute_force_minimum_image_histogram(boxes):
    rng = np.random.default_rng(7)
    frames, n = 3, 45
    numbers = np.array([8, 1, 1] * (n // 3))
    boxes = np.broadcast_to(boxes, (frames, 3, 3)).copy()
    boxes[1] *= 1.05  # the normalisation sums 1/V over frames
    fractional = rng.uniform(-1.0, 2.0, (frames, n, 3))  # not wrapped
    positions = np.einsum("fnk,fkj->fnj", fractional, boxes)
    r_max = half_min_width(boxes)
    for pair in (("O", "O"), ("O", "H")):
        r, g = radial_distribution(positions, boxes, numbers, pair=pair, r_max=r_max, bins=20)
        first = np.flatnonzero(numbers == (8 if pair[0] == "O" else 1))
        second = np.flatnonzero(numbers == (8 if pair[1] == "O" else 1))
        r_ref, g_ref, one_count = _brute_force_rdf(positions, boxes, first, second,
                                                   pair[0] == pair[1], r_max, 20)
        np.testing.assert_allclose(r, r_ref, atol=1e-12)
        counts, counts_ref = g / one_count, g_ref / one_count
        np.testing.assert_allclose(counts, np.round(counts), atol=1e-6)
        assert counts_ref.sum() > 100  # enough distances for the comparison to mean much
        # mdtraj works in float32: a distance on a bin edge could land in the neighbouring bin
        assert np.abs(counts - counts_ref).sum() <= 2 + 1e-6


def test_rdf_of_uniform_random_points_is_one_at_large_r():
    rng = np.random.default_rng(3)
    frames, n, edge = 40, 150, 2.0
    positions = rng.uniform(0, edge, (frames, n, 3))
    r, g = radial_distribution(positions, np.eye(3) * edge, np.full(n, 18), pair=("Ar", "Ar"),
                               bins=25)
    assert r[-1] < 1.0 and r[-1] == pytest.approx(1.0 - 0.5 / 25 * 1.0)
    assert np.mean(g[r > 0.4]) == pytest.approx(1.0, abs=0.02)
    assert np.all(np.abs(g[r > 0.4] - 1) < 0.1)


def test_rdf_respects_half_the_box_and_topology_excludes_intramolecular_pairs(tmp_path):
    pdb = app.PDBFile(str(water_box_pdb(16, tmp_path / "w.pdb")))
    xyz = np.asarray(pdb.getPositions(asNumpy=True)._value)[None]
    box = np.asarray(pdb.topology.getPeriodicBoxVectors()._value)
    with pytest.raises(ValueError, match="at most half the smallest box width"):
        radial_distribution(xyz, box, pdb.topology, r_max=0.5)
    numbers = np.array([a.element.atomic_number for a in pdb.topology.atoms()])
    r, with_bonds = radial_distribution(xyz, box, numbers, pair=("O", "H"), bins=39)
    _, intermolecular = radial_distribution(xyz, box, pdb.topology, pair=("O", "H"), bins=39)
    assert r[-1] < box[0, 0] / 2
    assert with_bonds[r < 0.12].max() > 10 and intermolecular[r < 0.12].max() == 0
    with pytest.raises(ValueError, match="no atoms of element 'C'"):
        radial_distribution(xyz, box, numbers, pair=("C", "O"))
    with pytest.raises(ValueError, match="reduced form"):
        radial_distribution(xyz, np.array([[0.78, 0.1, 0], [0, 0.78, 0], [0, 0, 0.78]]), numbers)


def test_rdf_error_definitions():
    r = np.linspace(0.005, 0.995, 100)
    reference = np.where(r < 0.25, 0.0, 1.0 + 2.0 * np.exp(-((r - 0.28) / 0.02) ** 2))
    shifted = np.where(r < 0.25, 0.0, 1.0 + 2.5 * np.exp(-((r - 0.30) / 0.02) ** 2))
    same = rdf_error(r, reference, reference)
    assert same["rdf_mae"] == 0 and same["first_peak_height_error"] == 0
    error = rdf_error(r, shifted, reference)
    assert error["rdf_mae"] == pytest.approx(np.abs(shifted - reference).mean())
    assert error["first_peak_position_error_nm"] == pytest.approx(0.02, abs=1e-9)
    assert error["first_peak_height_error"] == pytest.approx(0.5, abs=0.05)
    assert error["first_peak_position_nm_reference"] == pytest.approx(0.275, abs=0.006)
    assert error["closest_nm_reference"] == error["closest_nm_model"] == pytest.approx(0.255)
    assert error["unseen_contact_nm"] == 0.0
    contact = shifted.copy()
    contact[(r > 0.17) & (r < 0.19)] = 0.5  # close contacts the reference never makes
    assert rdf_error(r, contact, reference)["unseen_contact_nm"] == pytest.approx(0.08)
    assert rdf_error(r, reference, contact)["unseen_contact_nm"] == 0.0
    with pytest.raises(ValueError, match="same r_max and bins"):
        rdf_error(r ** 2, reference, reference)


# --- NVE drift --------------------------------------------------------------------------------

def test_nve_drift_recovers_a_known_slope():
    rng = np.random.default_rng(0)
    t = np.arange(0, 50.0, 0.01)  # ps
    kinetic = 600 + 25 * rng.standard_normal(t.size)
    slope_per_ps = 0.0192  # kJ/mol/ps -> 19.2 kJ/mol/ns, 0.1 kJ/mol/ns/atom for 192 atoms
    total = -2500 + slope_per_ps * t + 0.5 * rng.standard_normal(t.size)
    result = nve_drift(t, total, 192, kinetic_energies=kinetic)
    assert result["drift_kj_mol_per_ns_per_atom"] == pytest.approx(0.1, abs=0.002)
    assert result["drift_kj_mol_per_ns"] == pytest.approx(19.2, abs=0.3)
    assert result["total_energy_detrended_std_kj_mol"] == pytest.approx(0.5, rel=0.05)
    assert result["fluctuation_ratio"] == pytest.approx(0.02, rel=0.1)
    simulated_ps = result["duration_ps"]  # simulated time of the series, not wall-clock time
    assert simulated_ps == pytest.approx(49.99) and result["samples"] == t.size
    with pytest.raises(ValueError, match="not finite .*sample 3"):
        nve_drift(t[:10], np.where(np.arange(10) == 3, np.nan, 1.0), 3)
    with pytest.raises(ValueError, match="strictly increasing"):
        nve_drift(t[::-1], total, 192)


# --- figures ----------------------------------------------------------------------------------

def test_plots_write_png_files(tmp_path):
    r = np.linspace(0.01, 0.6, 60)
    g = 1 + np.exp(-((r - 0.28) / 0.03) ** 2)
    path = plot_rdfs({"O-O reference": (r, g), "O-O model": (r, 0.9 * g)},
                     tmp_path / "a" / "rdf.png")
    assert path.read_bytes().startswith(PNG)
    grouped = plot_rdfs({"O-O": {"reference": (r, g), "model": (r, g)},
                         "O-H": {"reference": (r, g)}}, tmp_path / "rdf2.png", title="water")
    assert grouped.read_bytes().startswith(PNG)

    rng = np.random.default_rng(0)
    reference = rng.normal(0, 500, (30, 48, 3))
    predicted = reference + rng.normal(0, 40, reference.shape)
    numbers = np.array([8, 1, 1] * 16)
    for kwargs in ({}, {"atomic_numbers": numbers}, {"per_element": numbers}):
        out = plot_force_parity(reference, predicted, tmp_path / f"parity{len(kwargs)}.png",
                                max_points=2000, **kwargs)
        assert out.read_bytes().startswith(PNG)
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporaries
    with pytest.raises(ValueError, match="one shape"):
        plot_force_parity(reference, predicted[:, :5], tmp_path / "bad.png")
