"""Path-classification data (issue 7): gene-regulatory generator, the dataset file and its
temporal cross-validation windows, and the capped-alanine temperature task from real OpenMM runs."""
import hashlib
import json
import re
from pathlib import Path

import mdtraj
import numpy as np
import openmm.app as app
import pytest
import torch

from openmm_geom.data import bundled
from openmm_geom.data.gene_regulatory import (
    gene_rhs,
    generate_gene_dataset,
    power_law_network,
    simulate_gene_dynamics,
)
from openmm_geom.data.md_classification import generate_md_dataset
from openmm_geom.data.path_dataset import (
    PathDataset,
    save_path_dataset,
    temporal_cv_windows,
)

SMALL_GENE = dict(n_trajectories=6, n_test=4, n_nodes=30, n_frames=100, progress=False)


def sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def five_point_derivative(x: np.ndarray, dt: float) -> np.ndarray:
    """dx/dt at frames 2..T-3 (error O(dt^4), so it tests the solution, not the stencil)."""
    return (-x[4:] + 8 * x[3:-1] - 8 * x[1:-3] + x[:-4]) / (12 * dt)


@pytest.fixture(scope="module")
def gene_file(tmp_path_factory):
    return generate_gene_dataset(tmp_path_factory.mktemp("gene") / "gene.npz", seed=3,
                                 **SMALL_GENE)


@pytest.fixture(scope="module")
def md_file(tmp_path_factory):
    return generate_md_dataset(tmp_path_factory.mktemp("md") / "md.npz", n_trajectories=2,
                               n_test=2, n_frames=20, save_interval_ps=0.05,
                               equilibration_ps=0.5, seed=5, progress=False)


def contract_arrays(n_traj=6, n_frames=50, n_nodes=4, n_channels=2, seed=0):
    """Valid arrays of the contract: path graphs, half the trajectories of each class."""
    rng = np.random.default_rng(seed)
    adjacency = np.zeros((n_traj, n_nodes, n_nodes), np.float32)
    for i in range(n_nodes - 1):
        adjacency[:, i, i + 1] = adjacency[:, i + 1, i] = 1
    return dict(
        paths=rng.normal(size=(n_traj, n_frames, n_nodes, n_channels)).astype(np.float32),
        labels=np.arange(n_traj, dtype=np.int64) % 2,
        label_names=np.asarray(["a", "b"]),
        adjacency=adjacency,
        is_test=np.arange(n_traj) >= n_traj - 2,
        time_step=np.float64(0.5), time_unit=np.asarray("ps"), channel_unit=np.asarray("nm"),
        provenance=np.asarray(json.dumps({"generator": "test"})),
    )


# --- gene-regulatory dynamics ---------------------------------------------------------------

def test_power_law_network_is_simple_connected_and_heavy_tailed():
    rng = np.random.default_rng(7)
    for _ in range(5):
        a = power_law_network(100, rng)
        assert a.shape == (100, 100) and a.dtype == np.float32
        assert set(np.unique(a)) == {0.0, 1.0}
        assert (a == a.T).all() and not np.diag(a).any()
        # connected: breadth-first search reaches every node
        seen, frontier = {0}, [0]
        while frontier:
            frontier = [j for i in frontier for j in np.flatnonzero(a[i]) if j not in seen]
            seen.update(frontier)
        assert len(seen) == 100
        degree = a.sum(axis=1)
        assert a.sum() / 2 == 3 + 2 * 97  # complete seed on 3 nodes, then 2 edges per node
        assert degree.min() >= 2
        # a hub: Erdos-Renyi graphs of the same mean degree (4) have max/median about 2-3
        assert degree.max() >= 4 * np.median(degree), (degree.max(), np.median(degree))


def test_power_law_network_rejects_bad_arguments():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="n_nodes"):
        power_law_network(2, rng, m=2)
    with pytest.raises(ValueError, match="m must be"):
        power_law_network(10, rng, m=0)
    with pytest.raises(ValueError, match="rng"):
        power_law_network(10, 0)


@pytest.mark.parametrize("f", [1.0, 2.0])
def test_simulation_solves_the_equation(f):
    rng = np.random.default_rng(11)
    adjacency = power_law_network(60, rng)
    x0 = rng.uniform(0, 5, 60)
    dt = 2.0 / 500
    x = simulate_gene_dynamics(adjacency, f, x0=x0)
    assert x.shape == (500, 60)
    np.testing.assert_array_equal(x[0], x0)
    assert (x > 0).all()  # concentrations stay positive
    rhs = gene_rhs(x[2:-2], adjacency, f)
    error = np.abs(five_point_derivative(x, dt) - rhs)
    assert error.max() < 1e-4 * (1 + np.abs(rhs).max()), error.max()
    # the check can fail: the other class's equation does not fit this solution
    other = gene_rhs(x[2:-2], adjacency, 3.0 - f)
    assert np.abs(five_point_derivative(x, dt) - other).max() > 0.1


def test_simulation_rejects_bad_input():
    a = power_law_network(10, np.random.default_rng(0))
    with pytest.raises(ValueError, match="x0 must have shape"):
        simulate_gene_dynamics(a, 1, x0=np.ones(9))
    with pytest.raises(ValueError, match="non-negative"):
        simulate_gene_dynamics(a, 1, x0=-np.ones(10))
    with pytest.raises(ValueError, match="square"):
        simulate_gene_dynamics(a[:, :5], 1, x0=np.ones(10))
    with pytest.raises(RuntimeError, match="non-finite|failed"):
        # x' = +x^2 (B = -1) blows up at t = 1 / x0 = 0.1 s
        simulate_gene_dynamics(np.zeros((10, 10)), 2, B=-1, x0=np.full(10, 10.0))


def test_gene_dataset_layout_and_balance(gene_file):
    data = PathDataset(gene_file)
    assert data.paths.shape == (10, 100, 30, 1) and data.paths.dtype == np.float32
    assert data.adjacency.shape == (10, 30, 30)
    assert data.label_names == ["degradation", "dimerization"]
    assert data.time_unit == "s" and data.channel_unit == "a.u."
    assert data.time_step == pytest.approx(0.02)
    assert data.descriptors is None
    pool, test = data.labels[~data.is_test], data.labels[data.is_test]
    assert len(pool) == 6 and len(test) == 4
    assert np.bincount(pool).tolist() == [3, 3] and np.bincount(test).tolist() == [2, 2]
    # every trajectory has its own network
    assert len({data.adjacency[i].tobytes() for i in range(10)}) == 10
    provenance = data.provenance
    assert provenance["parameters"]["seed"] == 3 and "version" in provenance
    # the saved float32 trajectories satisfy the equation of their class
    for i in range(10):
        x = data.paths[i, :, :, 0].astype(np.float64)
        f = (1.0, 2.0)[data.labels[i]]
        rhs = gene_rhs(x[2:-2], data.adjacency[i].astype(np.float64), f)
        error = np.abs(five_point_derivative(x, 0.02) - rhs)
        assert error.max() < 2e-3 * (1 + np.abs(rhs).max()), (i, error.max())


def test_gene_dataset_is_deterministic_and_seeded(gene_file, tmp_path):
    again = generate_gene_dataset(tmp_path / "again.npz", seed=3, **SMALL_GENE)
    assert sha256(again) == sha256(gene_file)
    other = PathDataset(generate_gene_dataset(tmp_path / "other.npz", seed=4, **SMALL_GENE))
    assert not np.array_equal(other.paths, PathDataset(gene_file).paths)
    # the test set is its own stream: more pool trajectories leave it unchanged
    bigger = PathDataset(generate_gene_dataset(tmp_path / "bigger.npz", seed=3,
                                               **dict(SMALL_GENE, n_trajectories=8)))
    original = PathDataset(gene_file)
    np.testing.assert_array_equal(bigger.paths[bigger.is_test], original.paths[original.is_test])
    np.testing.assert_array_equal(bigger.paths[:6], original.paths[:6])


def test_degradation_and_dimerization_differ():
    """Same network and start: f=2 removes large levels faster and settles lower."""
    rng = np.random.default_rng(2)
    adjacency = power_law_network(100, rng)
    x0 = rng.uniform(0, 5, 100)
    x1 = simulate_gene_dynamics(adjacency, 1, x0=x0, n_frames=100)
    x2 = simulate_gene_dynamics(adjacency, 2, x0=x0, n_frames=100)
    assert np.abs(x1 - x2)[1:].min(axis=1).max() > 0  # differ from the first step on
    assert np.abs(x1[-1] - x2[-1]).mean() > 0.3
    hub = np.argmax(adjacency.sum(axis=1))
    assert x1[-1, hub] > 1.5 * x2[-1, hub]  # steady state ~degree vs ~sqrt(degree)


def test_gene_dataset_rejects_unbalanced_or_bad_settings(tmp_path):
    with pytest.raises(ValueError, match="n_trajectories must be even"):
        generate_gene_dataset(tmp_path / "x.npz", **dict(SMALL_GENE, n_trajectories=5))
    with pytest.raises(ValueError, match="n_test must be even"):
        generate_gene_dataset(tmp_path / "x.npz", **dict(SMALL_GENE, n_test=3))
    with pytest.raises(ValueError, match="initial_range"):
        generate_gene_dataset(tmp_path / "x.npz", initial_range=(-1.0, 1.0), **SMALL_GENE)
    # B = -1: dimerization becomes x' = +x^2 + ..., which blows up (trajectory 1 is f = 2)
    with pytest.raises(RuntimeError, match=r"cross-validation trajectory 1 \(seed 0"):
        generate_gene_dataset(tmp_path / "x.npz", B=-1.0, **SMALL_GENE)
    assert not (tmp_path / "x.npz").exists()


# --- temporal cross-validation windows ------------------------------------------------------

def test_windows_partition_the_trajectory():
    starts, fold_of_window, length = temporal_cv_windows(500, groups=5, folds=5)
    assert length == 20 and len(starts) == 25
    frames = np.concatenate([np.arange(s, s + length) for s in starts])
    np.testing.assert_array_equal(frames, np.arange(500))  # exact tiling, in time order
    np.testing.assert_array_equal(fold_of_window, np.tile(np.arange(5), 5))
    starts, _, length = temporal_cv_windows(103, groups=2, folds=5)  # 3 frames dropped
    assert length == 10 and starts[-1] + length == 100
    with pytest.raises(ValueError, match="too short"):
        temporal_cv_windows(49, groups=5, folds=5)
    with pytest.raises(ValueError, match="groups"):
        temporal_cv_windows(100, groups=0)


def test_fold_windows_follow_the_contract():
    arrays = contract_arrays(n_traj=6, n_frames=53)  # 3 frames dropped, windows of 2
    data = PathDataset.from_arrays(**arrays)
    starts, _, length = temporal_cv_windows(53)
    pool, test = np.flatnonzero(~arrays["is_test"]), np.flatnonzero(arrays["is_test"])
    for k in range(5):
        sets = data.fold(k)
        train, validation, test_set = sets["train"], sets["validation"], sets["test"]
        assert validation.window_length == length == 2 and validation.dropped_frames == 3
        # validation: window k of every group of every pool trajectory
        assert (validation.window % 5 == k).all()
        assert sorted(zip(validation.trajectory.tolist(), validation.window.tolist())) == \
            sorted((t, g * 5 + k) for t in pool for g in range(5))
        # training: every other window of the pool trajectories; disjoint frames
        assert (train.window % 5 != k).all() and len(train) == len(pool) * 20
        assert set(train.trajectory.tolist()) == set(pool.tolist())
        for t in pool:
            used_train = {f for w in train.window[train.trajectory == t].tolist()
                          for f in range(starts[w], starts[w] + length)}
            used_val = {f for w in validation.window[validation.trajectory == t].tolist()
                        for f in range(starts[w], starts[w] + length)}
            assert not used_train & used_val and len(used_train | used_val) == 50
        # test: every window of the is_test trajectories only, the same for every fold
        assert set(test_set.trajectory.tolist()) == set(test.tolist())
        assert len(test_set) == len(test) * 25
        # contents are the right frames of the right trajectory, with its label and graph
        for ws in (train, validation, test_set):
            i = len(ws) // 2
            t, s = int(ws.trajectory[i]), int(ws.start[i])
            assert ws.paths.dtype == torch.float32
            assert ws.paths.shape == (len(ws), length, 4, 2)
            np.testing.assert_array_equal(ws.paths[i].numpy(), arrays["paths"][t, s:s + length])
            assert int(ws.labels[i]) == arrays["labels"][t]
            np.testing.assert_array_equal(ws.graphs()[i].numpy(), arrays["adjacency"][t])
    with pytest.raises(ValueError, match="fold k"):
        data.fold(5)


def test_fold_windows_carry_descriptors():
    arrays = contract_arrays(n_frames=50)
    arrays["descriptors"] = np.arange(6 * 50 * 2, dtype=np.float32).reshape(6, 50, 2)
    sets = PathDataset.from_arrays(**arrays).fold(0)
    validation = sets["validation"]
    t, s = int(validation.trajectory[3]), int(validation.start[3])
    np.testing.assert_array_equal(validation.descriptors[3].numpy(),
                                  arrays["descriptors"][t, s:s + 2])


# --- the dataset file: bad input ------------------------------------------------------------

def bad(**changes):
    arrays = contract_arrays()
    for key, value in changes.items():
        if value is None:
            del arrays[key]
        else:
            arrays[key] = value
    return arrays


def with_nan(key):
    value = contract_arrays()[key].copy()
    value.reshape(-1)[7] = np.nan
    return value


BAD_INPUTS = [
    (dict(paths=None), r"missing required arrays \['paths'\]"),
    (dict(labels=None), r"missing required arrays \['labels'\]"),
    (dict(adjacency=None), r"missing required arrays \['adjacency'\]"),
    (dict(paths=with_nan("paths")), "paths contain NaN or infinite"),
    (dict(paths=np.full((6, 50, 4, 2), np.inf, np.float32)), "paths contain NaN or infinite"),
    (dict(paths=np.zeros((6, 50, 4), np.float32)), "paths must have shape"),
    (dict(labels=np.array([0, 1, 0, 1, 0, 2])), r"labels must be in 0\.\.1"),
    (dict(labels=np.array([0, 1, 0, 1, 0, -1])), r"labels must be in 0\.\.1"),
    (dict(labels=np.array([0, 1, 0, 1, 0])), r"labels must have shape \(6,\)"),
    (dict(labels=np.array([0.0, 1, 0, 1, 0, 1])), "labels must be integers"),
    (dict(labels=np.array([0, 0, 0, 0, 0, 1])), "at least two classes"),  # pool all class 0
    (dict(label_names=np.asarray(["only"])), "label_names"),
    (dict(adjacency=np.zeros((6, 5, 5), np.float32)), "adjacency must have shape"),
    (dict(adjacency=np.ones((6, 4, 4), np.float32)), "zero diagonal"),
    (dict(adjacency=np.triu(np.ones((6, 4, 4), np.float32), 1)), "symmetric"),
    (dict(adjacency=np.full((6, 4, 4), 0.5, np.float32)), "only 0 and 1"),
    (dict(is_test=np.zeros(6, np.int64)), "is_test must be a bool"),
    (dict(is_test=np.zeros(5, bool)), "is_test must be a bool"),
    (dict(time_step=np.float64(-1.0)), "time_step must be a positive"),
    (dict(time_unit=np.asarray(["s", "s"])), "time_unit must be a single string"),
    (dict(provenance=np.asarray("{not json")), "provenance is not valid JSON"),
    (dict(descriptors=np.zeros((6, 49, 2), np.float32)), "descriptors must have shape"),
    (dict(descriptors=np.full((6, 50, 2), np.nan, np.float32)), "descriptors contain NaN"),
]


@pytest.mark.parametrize("changes, message", BAD_INPUTS,
                         ids=[f"{next(iter(c))}-{i}" for i, (c, _) in enumerate(BAD_INPUTS)])
def test_bad_arrays_are_refused_on_save_and_load(tmp_path, changes, message):
    arrays = bad(**changes)
    with pytest.raises(ValueError, match=message):
        save_path_dataset(tmp_path / "bad.npz", **arrays)
    assert not (tmp_path / "bad.npz").exists()
    # a file written by someone else is checked when it is read, and the error names it
    np.savez(tmp_path / "foreign.npz", **arrays)
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "foreign.npz"))):
        PathDataset(tmp_path / "foreign.npz")


def test_too_short_for_the_windows(tmp_path):
    path = save_path_dataset(tmp_path / "short.npz", **contract_arrays(n_frames=30))
    data = PathDataset(path)  # valid as a file: fewer groups/folds would work
    with pytest.raises(ValueError, match="too short for 5 groups x 5 folds"):
        data.fold(0)
    assert len(data.fold(0, groups=3, folds=5)["validation"]) == 4 * 3


def test_save_refuses_unknown_keys(tmp_path):
    with pytest.raises(ValueError, match="unknown path-dataset arrays.*descriptor"):
        save_path_dataset(tmp_path / "x.npz", descriptor=np.zeros(3), **contract_arrays())


def test_missing_and_corrupt_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.npz"):
        PathDataset(tmp_path / "nowhere.npz")
    (tmp_path / "text.npz").write_text("not a zip file")
    with pytest.raises(ValueError, match="text.npz is not an npz file"):
        PathDataset(tmp_path / "text.npz")
    good = save_path_dataset(tmp_path / "good.npz", **contract_arrays())
    (tmp_path / "cut.npz").write_bytes(good.read_bytes()[:-200])  # truncated download
    with pytest.raises(ValueError, match="cut.npz"):
        PathDataset(tmp_path / "cut.npz")
    data = PathDataset(good)
    assert data.n_trajectories == 6 and data.n_classes == 2


def test_save_is_atomic_and_reproducible(tmp_path):
    first = save_path_dataset(tmp_path / "a.npz", **contract_arrays())
    second = save_path_dataset(tmp_path / "b.npz", **contract_arrays())
    assert sha256(first) == sha256(second)
    before = sha256(first)
    with pytest.raises(ValueError):
        save_path_dataset(first, **bad(labels=None))
    assert sha256(first) == before  # a refused write leaves the old file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npz", "b.npz"]  # no temp files


# --- MD temperature classification ----------------------------------------------------------

def test_md_dataset_layout(md_file):
    data = PathDataset(md_file)
    assert data.paths.shape == (4, 20, 10, 3)
    assert data.time_unit == "ps" and data.channel_unit == "nm"
    assert data.time_step == pytest.approx(0.05)
    assert data.label_names == ["300 K", "450 K"]
    assert data.labels.tolist() == [0, 1, 0, 1]
    assert data.is_test.tolist() == [False, False, True, True]
    assert data.descriptors.shape == (4, 20, 2)
    seeds = [entry["seed"] for entry in data.provenance["openmm_seeds"]]
    assert len(set(seeds)) == 4 and all(1 <= s < 2**31 for s in seeds)
    assert not md_file.with_name(md_file.name + ".work").exists()  # work files cleaned up
    # molecules move and stay whole: consecutive frames differ, bonds stay near 0.15 nm
    assert np.abs(np.diff(data.paths, axis=1)).max() > 1e-3
    i, j = np.nonzero(np.triu(data.adjacency[0]))
    lengths = np.linalg.norm(data.paths[:, :, i] - data.paths[:, :, j], axis=-1)
    assert 0.11 < lengths.min() and lengths.max() < 0.17


def test_md_adjacency_is_the_heavy_atom_bond_graph(md_file):
    data = PathDataset(md_file)
    # from the PDB text itself: heavy atoms are the ATOM records whose name is not a hydrogen
    records = [line for line in bundled("alanine-dipeptide.pdb").read_text().splitlines()
               if line.startswith("ATOM")]
    heavy = [line for line in records if not line[12:16].strip().lstrip("0123456789")
             .startswith("H")]
    assert len(records) == 22 and len(heavy) == 10
    assert data.n_nodes == 10
    # bonds independently of the topology: heavy-atom pairs closer than 0.17 nm in the PDB
    xyz = np.array([[float(line[30:38]), float(line[38:46]), float(line[46:54])]
                    for line in heavy]) / 10.0
    distance = np.linalg.norm(xyz[:, None] - xyz[None], axis=-1)
    expected = ((distance < 0.17) & (distance > 0)).astype(np.float32)
    assert expected.sum() / 2 == 9  # a tree: 10 atoms, 9 bonds
    for a in data.adjacency:
        np.testing.assert_array_equal(a, expected)
    # node order is PDB order: the first heavy atom of ALA is N, the fourth is CB
    assert data.provenance["nodes"][3:6] == ["ALA2:N", "ALA2:CA", "ALA2:CB"]


def test_md_dihedrals_match_mdtraj(md_file):
    data = PathDataset(md_file)
    # recompute phi/psi with mdtraj from the stored heavy-atom paths alone
    topology = app.PDBFile(str(bundled("alanine-dipeptide.pdb"))).topology
    md_top = mdtraj.Topology.from_openmm(topology)
    heavy = [atom.index for atom in md_top.atoms if atom.element.symbol != "H"]
    heavy_top = md_top.subset(heavy)
    for t in range(data.n_trajectories):
        trajectory = mdtraj.Trajectory(data.paths[t], heavy_top)
        _, phi = mdtraj.compute_phi(trajectory)
        _, psi = mdtraj.compute_psi(trajectory)
        expected = np.concatenate([phi, psi], axis=1)
        difference = np.angle(np.exp(1j * (data.descriptors[t] - expected)))
        assert np.abs(difference).max() < 1e-4
    # the hot and the cold runs do not share a trajectory
    assert not np.allclose(data.descriptors[0], data.descriptors[1])


def _optimal_rotation(frame, reference):
    """Kabsch rotation (numpy SVD) taking the centred frame onto the centred reference."""
    a, b = frame - frame.mean(0), reference - reference.mean(0)
    u, _, vt = np.linalg.svd(a.T @ b)
    d = np.sign(np.linalg.det(u @ vt))
    return u @ np.diag([1.0, 1.0, d]) @ vt


def test_md_frames_are_superposed_rigidly(md_file, tmp_path):
    data = PathDataset(md_file)
    reference = data.paths[0, 0].astype(np.float64)
    for frame in data.paths.reshape(-1, 10, 3).astype(np.float64):
        # already at the least-squares fit: the remaining best rotation is the identity
        np.testing.assert_allclose(_optimal_rotation(frame, reference), np.eye(3), atol=2e-4)
        np.testing.assert_allclose(frame.mean(0), reference.mean(0), atol=1e-5)
    raw = PathDataset(generate_md_dataset(
        tmp_path / "raw.npz", n_trajectories=2, n_test=2, n_frames=20, save_interval_ps=0.05,
        equilibration_ps=0.5, seed=5, align=False, progress=False))
    assert "none" in raw.provenance["alignment"]
    # the same runs: alignment moves whole frames only (pair distances unchanged)
    def distances(paths):
        return np.linalg.norm(paths[..., :, None, :] - paths[..., None, :, :], axis=-1)
    np.testing.assert_allclose(distances(raw.paths), distances(data.paths), atol=1e-5)
    assert np.abs(raw.paths - data.paths).max() > 0.01


def test_md_dataset_is_reused_or_refused(md_file, tmp_path):
    before = sha256(md_file)
    same = generate_md_dataset(md_file, n_trajectories=2, n_test=2, n_frames=20,
                               save_interval_ps=0.05, equilibration_ps=0.5, seed=5,
                               progress=False)
    assert same == md_file and sha256(md_file) == before
    with pytest.raises(FileExistsError, match="not made with these settings"):
        generate_md_dataset(md_file, n_trajectories=2, n_test=2, n_frames=20,
                            save_interval_ps=0.05, equilibration_ps=0.5, seed=6,
                            progress=False)
    with pytest.raises(ValueError, match="multiple of the 2 temperatures"):
        generate_md_dataset(tmp_path / "x.npz", n_trajectories=3, progress=False)
    with pytest.raises(ValueError, match="distinct"):
        generate_md_dataset(tmp_path / "x.npz", temperatures=(300.0, 300.0), progress=False)
