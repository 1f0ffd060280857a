"""`cv bias --method metad|opes|app-metad` on capped alanine's phi/psi: a killed and resumed run
equals an uninterrupted one, frames are weighted by their method, bad input is refused first."""
import json
import subprocess
import sys

import numpy as np
import pytest

from openmm_geom.data import bundled
from openmm_geom.units import MOLAR_GAS_CONSTANT_KJ
from openmm_geom.workflows.config import BiasSettings
from openmm_geom.workflows.cv_bias import (STATE_FILES, compare_runs, pooled_delta_f,
                                          run_biased, run_weights)

PDB = str(bundled("alanine-dipeptide.pdb"))
KT = MOLAR_GAS_CONSTANT_KJ * 300.0
# short runs: a hill (metad) or kernel (OPES) every 0.1 ps; OPES measures its adaptive sigma
# over the first 10 paces (1 ps) and deposits from then on
FAST = {"metad": {"deposit_ps": 0.1}, "app-metad": {"deposit_ps": 0.1},
        "opes": {"opes_pace_ps": 0.1}}


def _run(out, method, picoseconds):
    settings = BiasSettings(picoseconds=picoseconds, checkpoint_ps=1.0, method=method,
                            **FAST[method])
    return run_biased(PDB, out, mode="phipsi", settings=settings, seed=3, threads=1,
                      progress=False)


def _log(path):
    return np.loadtxt(path / "bias_log.csv", delimiter=",", skiprows=1, ndmin=2)


@pytest.mark.parametrize("method", ["metad", "opes", "app-metad"])
def test_a_resumed_run_equals_an_uninterrupted_one(method, tmp_path):
    straight = _run(tmp_path / "straight", method, 3.0)
    first = _run(tmp_path / "resumed", method, 1.0)
    resumed = _run(tmp_path / "resumed", method, 3.0)
    assert not first["resumed"] and resumed["resumed"] and not straight["resumed"]
    assert resumed["method"] == straight["method"] == method
    assert (tmp_path / "resumed" / STATE_FILES[method]).exists()
    assert resumed["frames"] == straight["frames"] == 30
    assert resumed["hills"] == straight["hills"] > 0
    for name in ("step", "phi_psi"):
        a = np.load(tmp_path / "straight" / "dihedrals.npz")[name]
        b = np.load(tmp_path / "resumed" / "dihedrals.npz")[name]
        np.testing.assert_array_equal(a, b)  # 1 thread, CPU platform: bit-reproducible
    a, b = _log(tmp_path / "straight"), _log(tmp_path / "resumed")
    assert a.shape == b.shape and a.shape[0] == 30 and np.all(np.diff(b[:, 0]) > 0)
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-9)
    for key in ("delta_f_phi_positive_minus_negative_kJmol", "effective_sample_size",
                "phi_transitions"):
        assert resumed[key] == straight[key]
    # the frames' weights follow the method: OPES exp(V/kT), metadynamics exp((V - c)/kT)
    steps, angles, weights = run_weights(tmp_path / "resumed", 300.0, method)
    header = (tmp_path / "resumed" / "bias_log.csv").read_text().splitlines()[0].split(",")
    bias = b[:, header.index("bias_kJmol")]
    if method == "opes":
        assert "c_t_kJmol" not in header and "log_zed" in header
        expected = np.exp((bias - bias.max()) / KT)
    else:
        expected = np.exp((bias - b[:, header.index("c_t_kJmol")]) / KT)
    np.testing.assert_allclose(weights, expected / expected.sum(), rtol=1e-10)
    assert np.ptp(bias) > 0  # the bias did act
    assert steps.tolist() == b[:, 0].astype(int).tolist() and angles.shape == (30, 2)
    summary = json.loads((tmp_path / "resumed" / "summary.json").read_text())
    assert summary["method"] == method and summary["ns_per_day"] > 0
    # the comparison of runs: the same rows for equal runs, one PNG
    rows = compare_runs({"a": tmp_path / "straight", "b": tmp_path / "resumed"},
                        tmp_path / "convergence.png", reference=(9.0, 1.0))
    assert rows["a"]["method"] == method and rows["a"]["simulated_ns"] == pytest.approx(0.003)
    for key in ("phi_transitions", "delta_f_kJmol", "time_to_converge_ns"):
        assert rows["a"][key] == rows["b"][key] or (rows["a"][key] != rows["a"][key])
    assert rows["a"]["ns_per_day"] == straight["ns_per_day"]
    assert (tmp_path / "convergence.png").stat().st_size > 1000
    later = compare_runs({"a": tmp_path / "straight"}, tmp_path / "later.png", discard_ns=0.001)
    assert later["a"]["convergence"]["time_ns"][0] > 0.001
    assert later["a"]["phi_transitions"] == rows["a"]["phi_transitions"]
    with pytest.raises(ValueError, match="discard_ns must be >= 0 and below"):
        compare_runs({"a": tmp_path / "straight"}, tmp_path / "x.png", discard_ns=0.003)


def test_pooled_delta_f_is_the_inverse_variance_mean():
    mean, error, chi2 = pooled_delta_f([8.0, 10.0], [1.0, 2.0])
    assert mean == pytest.approx((8.0 / 1 + 10.0 / 4) / (1 + 1 / 4))
    assert error == pytest.approx((1 + 1 / 4) ** -0.5)
    assert chi2 == pytest.approx(((8 - mean) ** 2 / 1 + (10 - mean) ** 2 / 4) / 1)
    with pytest.raises(ValueError, match="positive errors"):
        pooled_delta_f([1.0], [0.0])


def test_bad_bias_input_is_refused_before_anything_is_written(tmp_path):
    for field in ("opes_barrier_kJmol", "opes_pace_ps", "opes_compression_threshold"):
        for value in (0.0, -1.0):
            with pytest.raises(ValueError, match=f"{field} must be a finite number > 0"):
                BiasSettings(**{field: value})
    with pytest.raises(ValueError, match="method must be one of"):
        BiasSettings(method="plumed")
    with pytest.raises(ValueError, match="runs in mode 'phipsi' only"):
        run_biased(PDB, tmp_path / "a", mode="cv", cv_model=tmp_path / "cv.pt",
                   settings=BiasSettings(method="app-metad"), threads=1, progress=False)
    assert not (tmp_path / "a").exists()
    # a directory holding another method's checkpoint is not resumed with this one
    _run(tmp_path / "b", "app-metad", 0.2)
    before = sorted(p.name for p in (tmp_path / "b").iterdir())
    with pytest.raises(ValueError, match=r"another run \(app_metad_state.npz\).*--restart"):
        _run(tmp_path / "b", "opes", 0.4)
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == before
    # the command line: one error line, exit 2, no output directory
    done = subprocess.run([sys.executable, "-m", "openmm_geom.cli", "cv", "bias", "--pdb", PDB,
                           "--model", str(tmp_path / "cv.pt"), "--method", "app-metad",
                           "--out", str(tmp_path / "c"), "--no-progress"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "error:" in done.stderr and "phipsi" in done.stderr
    assert not (tmp_path / "c").exists()


def test_app_metad_delta_f_from_a_known_bias_grid(tmp_path):
    """A bias grid V = -(1 - 1/gamma) F(phi, psi) (OpenMM's layout: psi rows, phi columns,
    periodic end points duplicated) gives back the dF of F over the two phi basins."""
    from openmm_geom.workflows.cv_bias import app_metad_delta_f

    gamma = 10.0
    grid = np.linspace(-np.pi, np.pi, 61)
    psi, phi = np.meshgrid(grid, grid, indexing="ij")
    free = 12.0 * (1 + np.cos(phi + 1.3)) + 4.0 * np.sin(phi) ** 2 + 6.0 * np.cos(psi)
    np.savez(tmp_path / STATE_FILES["app-metad"], bias=-(1 - 1 / gamma) * free)
    p = np.exp(-free[:-1, :-1] / KT).sum(axis=0)
    x = grid[:-1]
    x = np.where(x > 2.2, x - 2 * np.pi, x)
    positive = (x >= 0) & (x < 2.2)
    expected = -KT * np.log(p[positive].sum() / p[~positive].sum())
    assert app_metad_delta_f(tmp_path, 300.0, gamma) == pytest.approx(expected, rel=1e-10)
    # the psi term must not enter: swapping the axes changes the answer (the test has teeth)
    np.savez(tmp_path / STATE_FILES["app-metad"], bias=-(1 - 1 / gamma) * free.T)
    assert abs(app_metad_delta_f(tmp_path, 300.0, gamma) - expected) > 1.0


def _walkers(out, method, picoseconds, **changes):
    settings = BiasSettings(picoseconds=picoseconds, checkpoint_ps=0.5, method=method, walkers=2,
                            exchange_ps=0.2, opes_adaptive_sigma=False, **FAST[method],
                            **changes)
    return run_biased(PDB, out, mode="phipsi", settings=settings, seed=3, threads=1,
                      progress=False)


@pytest.mark.parametrize("method", ["metad", "opes"])
def test_walkers_share_one_bias_and_a_resumed_group_equals_an_uninterrupted_one(method, tmp_path):
    from openmm_geom.openmm.walkers import DepositionLedger

    straight = _walkers(tmp_path / "straight", method, 2.0)
    _walkers(tmp_path / "resumed", method, 1.0)
    resumed = _walkers(tmp_path / "resumed", method, 2.0)
    assert straight["walkers"] == resumed["walkers"] == 2
    assert [w["resumed"] for w in resumed["per_walker"]] == [True, True]
    width = 3 if method == "metad" else 6  # phi, psi (+ sigmas), height (+ weight)
    ledgers = [DepositionLedger(width, tmp_path / run / "ledger.npz")
               for run in ("straight", "resumed")]
    assert np.array_equal(ledgers[0].rows(), ledgers[1].rows())
    # one row per walker and deposition (every 0.1 ps = 50 steps for 1000 steps)
    assert sorted(map(tuple, ledgers[0].origins())) == sorted(
        (w, s) for w in (0, 1) for s in range(50, 1001, 50))
    for i in (0, 1):
        for name in ("bias_log.csv", "exchanges.csv"):
            assert (tmp_path / "straight" / f"walker-{i}" / name).read_text() == \
                (tmp_path / "resumed" / f"walker-{i}" / name).read_text(), (i, name)
        exchanges = np.loadtxt(tmp_path / "straight" / f"walker-{i}" / "exchanges.csv",
                               delimiter=",", skiprows=1)
        # each walker applies its own rows and the other's; walker 0 exchanges last before
        # walker 1's last two hills or kernels
        assert exchanges[:, 2].sum() == len(ledgers[0]) - (2 if i == 0 else 0)
        assert exchanges[:, 1].sum() == 20
    assert straight["delta_f_phi_positive_minus_negative_kJmol"] == \
        resumed["delta_f_phi_positive_minus_negative_kJmol"]
    assert (tmp_path / "straight" / "phi_profile.png").stat().st_size > 0


def test_walker_settings_are_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ValueError, match="no-opes-adaptive-sigma"):
        run_biased(PDB, tmp_path / "a", mode="phipsi", threads=1, progress=False,
                   settings=BiasSettings(method="opes", walkers=2))
    with pytest.raises(ValueError, match="multiple of the deposition time"):
        run_biased(PDB, tmp_path / "a", mode="phipsi", threads=1, progress=False,
                   settings=BiasSettings(method="metad", walkers=2, deposit_ps=0.5,
                                         exchange_ps=0.7))
    with pytest.raises(ValueError, match="'metad' or 'opes'"):
        run_biased(PDB, tmp_path / "a", mode="unbiased", threads=1, progress=False,
                   settings=BiasSettings(walkers=2))
    assert not (tmp_path / "a").exists()
    done = subprocess.run([sys.executable, "-m", "openmm_geom.cli", "cv", "bias", "--pdb", PDB,
                           "--model", str(tmp_path / "cv.pt"), "--walkers", "2", "--compare",
                           "--out", str(tmp_path / "c"), "--no-progress"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "--compare" in done.stderr
    assert not (tmp_path / "c").exists()
