"""Reweighting biased samples: known distributions, known biases, known answers."""
import math

import numpy as np
import pytest

from openmm_geom.analysis.reweight import (
    count_transitions,
    effective_sample_size,
    free_energy_difference,
    load_bias_log,
    metad_weights,
    plot_profile,
    reweighted_profile,
    umbrella_weights,
)
from openmm_geom.units import MOLAR_GAS_CONSTANT_KJ

T = 300.0
KT = MOLAR_GAS_CONSTANT_KJ * T


def U(x):
    """Tilted double well, kJ/mol: barrier ~5 kT, right basin higher by ~1.2 kT."""
    return 12.0 * (x ** 2 - 1.0) ** 2 + 1.5 * x


def V(x):
    """A static bias added to U: it flattens most of the barrier (U + V = 3 (x^2-1)^2 + 1.5 x)."""
    return -9.0 * (x ** 2 - 1.0) ** 2


GRID = np.linspace(-2.0, 2.0, 40_001)


def _sample(energy, n, seed):
    """Draw from p(x) ∝ exp(-energy(x)/kT) on [-2, 2] by inverse CDF on a fine grid."""
    density = np.exp(-(energy(GRID) - energy(GRID).min()) / KT)
    cdf = np.cumsum(density)
    cdf /= cdf[-1]
    return np.interp(np.random.default_rng(seed).random(n), cdf, GRID)


def _exact_bin_free_energy(edges):
    """-kT ln of the exact probability of each bin under exp(-U/kT), min 0."""
    p = np.exp(-(U(GRID) - U(GRID).min()) / KT)
    idx = np.clip(np.digitize(GRID, edges) - 1, 0, len(edges) - 2)
    mass = np.bincount(idx, weights=p, minlength=len(edges) - 1)
    free = -KT * np.log(mass)
    return free - free.min()


@pytest.fixture(scope="module")
def biased_samples():
    x = _sample(lambda g: U(g) + V(g), 200_000, seed=11)  # sampled under U + V
    return x, V(x)


def test_weights_against_numpy():
    rng = np.random.default_rng(0)
    bias, c_t = rng.normal(0, 5, 500), np.cumsum(rng.random(500)) * 0.05
    expected = np.exp((bias - c_t) / KT)
    np.testing.assert_allclose(metad_weights(bias, c_t, T), expected / expected.sum(), rtol=1e-12)
    expected = np.exp(bias / KT)
    np.testing.assert_allclose(umbrella_weights(bias, T), expected / expected.sum(), rtol=1e-12)
    # c(t) constant: metadynamics weights are umbrella weights
    np.testing.assert_allclose(metad_weights(bias, np.full(500, 37.0), T),
                               umbrella_weights(bias, T), rtol=1e-12)
    np.testing.assert_allclose(metad_weights(bias, 37.0, T), umbrella_weights(bias, T), rtol=1e-12)
    # stable for biases of thousands of kT, where exp() overflows
    huge = np.array([1.0e5, 1.0e5 - KT * math.log(3.0), 0.0])
    w = umbrella_weights(huge, T)
    assert np.all(np.isfinite(w)) and w.sum() == pytest.approx(1.0)
    assert w[0] / w[1] == pytest.approx(3.0, rel=1e-9) and w[2] == 0.0
    assert effective_sample_size(np.ones(40)) == pytest.approx(40.0)
    assert effective_sample_size([1.0, 0.0, 0.0]) == pytest.approx(1.0)


def test_weight_errors():
    with pytest.raises(ValueError, match="not finite at frame 1"):
        umbrella_weights([0.0, np.nan], T)
    with pytest.raises(ValueError, match="positive number of kelvin"):
        umbrella_weights([0.0, 1.0], -3.0)
    with pytest.raises(ValueError, match="one-dimensional"):
        metad_weights(np.zeros((3, 2)), 0.0, T)
    with pytest.raises(ValueError):
        metad_weights(np.zeros(3), np.zeros(4), T)


def test_static_bias_reweights_to_the_unbiased_profile(biased_samples):
    x, bias = biased_samples
    w = umbrella_weights(bias, T)
    profile = reweighted_profile(x, w, bins=40, range=(-1.6, 1.6), temperature=T)
    exact = _exact_bin_free_energy(profile.edges[0])
    populated = profile.counts >= 500
    assert populated.sum() >= 30
    error = profile.free_energy[populated] - exact[populated]
    error -= error.mean()
    assert np.abs(error).max() < 0.15 * KT, np.round(error / KT, 2)  # measured 0.04 kT
    # without reweighting the biased histogram is far from U: the test has teeth
    raw = reweighted_profile(x, None, bins=40, range=(-1.6, 1.6), temperature=T)
    raw_error = raw.free_energy[populated] - exact[populated]
    assert np.abs(raw_error - raw_error.mean()).max() > 2 * KT
    assert profile.free_energy.min() == 0.0 and profile.probability.sum() == pytest.approx(1.0)
    assert profile.counts.sum() < len(x) and 0 < profile.weight_outside < 0.01
    assert 0.2 * len(x) < profile.effective_sample_size < len(x)
    assert profile.centres[0].shape == (40,) and profile.edges[0].shape == (41,)


def test_free_energy_difference_known_answer(biased_samples):
    x, bias = biased_samples
    w = umbrella_weights(bias, T)
    p = np.exp(-(U(GRID) - U(GRID).min()) / KT)
    exact = -KT * math.log(p[GRID > 0].sum() / p[GRID < 0].sum())
    result = free_energy_difference(x, w, T, (-2.0, 0.0), (0.0, 2.0), n_bootstrap=300, seed=4)
    assert 0.0 < result.error < 0.3
    assert result.delta_f == pytest.approx(exact, abs=max(4 * result.error, 0.05))
    assert result.n_a + result.n_b == len(x) and result.n_failed == 0
    assert result.p_a + result.p_b == pytest.approx(1.0)
    # a callable region gives the same estimate; the same seed gives the same error
    again = free_energy_difference(x, w, T, lambda s: s <= 0.0, lambda s: s >= 0.0,
                                   n_bootstrap=300, seed=4)
    assert again.delta_f == pytest.approx(result.delta_f, abs=1e-12)
    assert again.error == result.error
    with pytest.raises(ValueError, match="region B holds no frame"):
        free_energy_difference(x, w, T, (-2.0, 0.0), (5.0, 6.0))


def test_block_bootstrap_sees_time_correlation():
    """A slow series (long residence in each basin) has a larger error than its shuffle."""
    rng = np.random.default_rng(2)
    state = np.repeat(rng.random(40) < 0.5, 500)  # 40 residences of 500 frames
    x = np.where(state, 1.0, -1.0) + 0.1 * rng.normal(size=state.size)
    slow = free_energy_difference(x, None, T, (-2, 0), (0, 2), n_blocks=20, seed=1)
    fast = free_energy_difference(rng.permutation(x), None, T, (-2, 0), (0, 2), n_blocks=20, seed=1)
    assert slow.delta_f == pytest.approx(fast.delta_f)
    assert slow.error > 4 * fast.error


def test_count_transitions_with_hysteresis():
    s = [-2.0, -1.5, 0.0, 1.5, 0.1, -0.2, 1.2, 2.0, -0.1, -1.2, 0.5, -1.1, 1.1]
    count, frames = count_transitions(s, -1.0, 1.0, return_frames=True)
    assert count == 3 and frames.tolist() == [3, 9, 12]
    assert count_transitions(s, -1.0, 1.0) == 3
    # a plain dividing line counts every recrossing
    assert count_transitions(s, 0.0, 0.0) == 7
    assert count_transitions([0.0, 0.5, -0.5], -1.0, 1.0) == 0  # never reaches a core
    with pytest.raises(ValueError, match="must not exceed"):
        count_transitions(s, 1.0, -1.0)


def test_periodic_binning_of_angles():
    rng = np.random.default_rng(5)
    angles = np.concatenate([rng.normal(math.pi, 0.2, 20_000), rng.normal(0.0, 0.3, 20_000)])
    wrapped = np.mod(angles + math.pi, 2 * math.pi) - math.pi
    shifted = wrapped + 2 * math.pi * rng.integers(-2, 3, size=wrapped.size)
    a = reweighted_profile(angles, None, bins=36, temperature=T, periodic=True)
    b = reweighted_profile(shifted, None, bins=36, temperature=T, periodic=True)
    assert a.edges[0][0] == pytest.approx(-math.pi) and a.edges[0][-1] == pytest.approx(math.pi)
    np.testing.assert_array_equal(a.counts, b.counts)
    assert a.counts.sum() == angles.size and a.weight_outside == 0.0
    # the basin at +-pi is one basin split across the boundary: both end bins are populated
    assert a.counts[0] > 1000 and a.counts[-1] > 1000
    assert abs(a.free_energy[0] - a.free_energy[-1]) < 0.2 * KT
    # without periodicity, values beyond the range are dropped and reported
    c = reweighted_profile(angles, None, bins=36, range=(-math.pi, math.pi), temperature=T)
    assert c.counts.sum() < angles.size and 0.2 < c.weight_outside < 0.3


def test_two_dimensional_profile(biased_samples):
    x, bias = biased_samples
    y = np.random.default_rng(3).normal(0.0, 0.3, x.size)  # independent harmonic CV
    w = umbrella_weights(bias, T)
    profile = reweighted_profile(np.column_stack([x, y]), w, bins=(32, 20),
                                 range=[(-1.6, 1.6), (-1.0, 1.0)], temperature=T,
                                 periodic=[False, False])
    assert profile.free_energy.shape == profile.counts.shape == (32, 20)
    assert profile.ndim == 2 and profile.free_energy.min() == 0.0
    # the x-marginal of the 2D probability is the 1D profile
    marginal = profile.probability.sum(axis=1)
    one_d = reweighted_profile(x, w, bins=32, range=(-1.6, 1.6), temperature=T)
    np.testing.assert_allclose(marginal, one_d.probability, atol=2e-3)
    # along y, F is harmonic: 0.5 kT (y/0.3)^2 near the centre of the x=-1 basin
    row = profile.free_energy[np.argmin(np.abs(profile.centres[0] + 1.0))]
    yc = profile.centres[1]
    central = np.abs(yc) < 0.5
    expected = 0.5 * KT * (yc / 0.3) ** 2
    diff = row[central] - expected[central]
    assert np.abs(diff - diff.mean()).max() < 0.5 * KT
    with pytest.raises(ValueError, match="1D or 2D"):
        reweighted_profile(np.zeros((10, 3)), None, temperature=T)
    with pytest.raises(ValueError, match="range"):
        reweighted_profile(np.column_stack([x, y]), w, range=(-1, 1), temperature=T)


def _write_log(path, rows, header="#step,time_ps,phi,psi,bias_kJmol,c_t_kJmol"):
    path.write_text(header + "\n" + "".join(",".join(str(v) for v in r) + "\n" for r in rows))
    return path


def test_load_bias_log_round_trip(tmp_path):
    rows = [(i * 100, i * 0.2, 0.1 * i, -0.1 * i, 0.5 * i, 0.05 * i) for i in range(1, 8)]
    log = load_bias_log(_write_log(tmp_path / "bias.csv", rows))
    assert log.cv_names == ["phi", "psi"] and len(log) == 7
    assert log.step.dtype == np.int64 and log.step.tolist() == [r[0] for r in rows]
    np.testing.assert_allclose(log.values, np.array(rows)[:, 2:4])
    np.testing.assert_allclose(log.weights(T), metad_weights(log.bias_kJmol, log.c_t_kJmol, T))
    np.testing.assert_allclose(log.weights(T, "umbrella"), umbrella_weights(log.bias_kJmol, T))
    # quoted header without '#', comment lines and blank lines are fine
    quoted = _write_log(tmp_path / "quoted.csv", rows,
                        header='"step","time_ps","phi","psi","bias_kJmol","c_t_kJmol"\n# note\n')
    np.testing.assert_allclose(load_bias_log(quoted).cvs["psi"], log.cvs["psi"])


def test_load_bias_log_errors(tmp_path):
    good = [(100, 0.2, 0.1, 0.2, 1.0, 0.1), (200, 0.4, 0.1, 0.2, 1.0, 0.1)]
    with pytest.raises(FileNotFoundError):
        load_bias_log(tmp_path / "absent.csv")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ValueError, match="empty"):
        load_bias_log(tmp_path / "empty.csv")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['bias_kJmol'\]"):
        load_bias_log(_write_log(tmp_path / "a.csv", [r[:5] for r in good],
                                 header="#step,time_ps,phi,psi,c_t_kJmol"))
    with pytest.raises(ValueError, match="header but no data"):
        load_bias_log(_write_log(tmp_path / "b.csv", []))
    corrupt = _write_log(tmp_path / "c.csv", good)
    corrupt.write_text(corrupt.read_text() + "300,0.6,0.1,abc,1.0,0.2\n")
    with pytest.raises(ValueError, match="line 4: non-numeric"):
        load_bias_log(corrupt)
    truncated = _write_log(tmp_path / "d.csv", good)
    truncated.write_text(truncated.read_text() + "300,0.6,0.1")
    with pytest.raises(ValueError, match="line 4: 3 fields, the header has 6"):
        load_bias_log(truncated)
    assert len(load_bias_log(truncated, partial_last_line="drop")) == 2
    middle = _write_log(tmp_path / "e.csv", [good[0], (150, 0.3, 0.1), good[1]])
    with pytest.raises(ValueError, match="line 3: 3 fields"):
        load_bias_log(middle, partial_last_line="drop")
    with pytest.raises(ValueError, match="steps must increase"):
        load_bias_log(_write_log(tmp_path / "f.csv", [good[1], good[0]]))
    (tmp_path / "g.csv").write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe")
    with pytest.raises(ValueError):
        load_bias_log(tmp_path / "g.csv")


def test_plot_profile(biased_samples, tmp_path):
    x, bias = biased_samples
    w = umbrella_weights(bias, T)
    one = reweighted_profile(x, w, bins=40, range=(-1.6, 1.6), temperature=T)
    path = plot_profile(one, tmp_path / "plots" / "f1.png", labels=["x (nm)"],
                        reference=_exact_bin_free_energy(one.edges[0]))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    two = reweighted_profile(np.column_stack([x, x ** 2]), w, bins=20, temperature=T)
    path = plot_profile(two, tmp_path / "f2.png", labels=["x", "x^2"], fmax=20.0)
    assert path.stat().st_size > 1000
