"""OPES weights, block errors and dF convergence against independent computations.

Tolerances were fixed before the first run: each names the statistical spread it allows for.
"""
import math

import numpy as np
import pytest
from scipy.signal import lfilter

from openmm_geom.analysis.reweight import (
    block_error,
    delta_f_convergence,
    free_energy_difference,
    free_energy_difference_blocked,
    load_bias_log,
    opes_weights,
    plot_convergence,
)
from openmm_geom.units import MOLAR_GAS_CONSTANT_KJ

T = 300.0
KT = MOLAR_GAS_CONSTANT_KJ * T
GRID = np.linspace(-2.0, 2.0, 40_001)


def U(x):
    """Tilted double well, kJ/mol (barrier ~ 8 kT)."""
    return 20.0 * (x ** 2 - 1.0) ** 2 + 3.0 * x


def _sample(energy, n, seed):
    """Draw from p(x) ∝ exp(-energy(x)/kT) on [-2, 2] by inverse CDF on a fine grid."""
    density = np.exp(-(energy(GRID) - energy(GRID).min()) / KT)
    cdf = np.cumsum(density)
    cdf /= cdf[-1]
    return np.interp(np.random.default_rng(seed).random(n), cdf, GRID)


def _exact_delta_f():
    p = np.exp(-(U(GRID) - U(GRID).min()) / KT)
    return -KT * math.log(p[GRID > 0].sum() / p[GRID < 0].sum())


def test_opes_weights_recover_the_unbiased_delta_f():
    """Samples of the OPES target p^(1/gamma) (bias V = -(1 - 1/gamma) U, shifted by 5000 kJ/mol
    to check the log-space normalisation) reweighted by exp(V/kT) give the exact dF."""
    gamma = 10.0

    def bias(x):
        return -(1.0 - 1.0 / gamma) * U(x) + 5000.0

    x = _sample(lambda g: U(g) + bias(g), 200_000, seed=3)
    w = opes_weights(bias(x), T)
    assert np.all(np.isfinite(w)) and w.sum() == pytest.approx(1.0)
    reweighted = free_energy_difference(x, w, T, (-2.0, 0.0), (0.0, 2.0), n_bootstrap=0)
    raw = free_energy_difference(x, None, T, (-2.0, 0.0), (0.0, 2.0), n_bootstrap=0)
    exact = _exact_delta_f()
    # 200k independent samples: the statistical error is ~0.02 kJ/mol
    assert reweighted.delta_f == pytest.approx(exact, abs=0.1)
    assert abs(raw.delta_f - exact) > 1.0  # the biased histogram alone is wrong: teeth
    # against numpy on moderate values
    v = np.random.default_rng(0).normal(0.0, 8.0, 300)
    np.testing.assert_allclose(opes_weights(v, T), np.exp(v / KT) / np.exp(v / KT).sum(),
                               rtol=1e-12)
    with pytest.raises(ValueError, match="not finite at frame 2"):
        opes_weights([0.0, 1.0, np.inf], T)
    with pytest.raises(ValueError, match="positive number of kelvin"):
        opes_weights([0.0, 1.0], 0.0)


def _ar1(rho, n, series, seed):
    """``series`` AR(1) sequences of unit variance: x_t = rho x_{t-1} + sqrt(1 - rho^2) e_t."""
    noise = np.random.default_rng(seed).normal(size=(series, n)) * math.sqrt(1.0 - rho ** 2)
    start = np.random.default_rng(seed + 1).normal(size=series)
    x = lfilter([1.0], [1.0, -rho], noise, axis=1)
    return x + start[:, None] * rho ** np.arange(1, n + 1)  # stationary from t = 0


def _ar1_standard_error(rho, n):
    """The exact standard error of the mean of n stationary AR(1) values of unit variance."""
    var = (1.0 + rho) / (1.0 - rho) - 2.0 * rho * (1.0 - rho ** n) / (n * (1.0 - rho) ** 2)
    return math.sqrt(var / n)


def test_block_errors_of_ar1_data_match_the_analytic_error_of_the_mean():
    rho, n = 0.9, 2 ** 16
    data = _ar1(rho, n, 40, seed=5)
    exact = _ar1_standard_error(rho, n)
    naive = math.sqrt(1.0 / n)
    fp = [block_error(x) for x in data]
    fixed = [block_error(x, method="fixed", n_blocks=20) for x in data]
    assert all(b.plateau for b in fp)
    # Flyvbjerg-Petersen at the optimal block (~512 frames, ~128 blocks): each estimate
    # scatters ~6%, the mean of 40 by ~1%, and blocks of 50 correlation times bias it by ~1%
    assert np.mean([b.error for b in fp]) / exact == pytest.approx(1.0, abs=0.05)
    assert 256 <= fp[0].block_size <= 2048
    # 20 fixed blocks: each estimate scatters ~16%, the mean of 40 by ~2.6%
    assert np.mean([b.error for b in fixed]) / exact == pytest.approx(1.0, abs=0.08)
    assert fixed[0].block_size == n // 20 and fixed[0].n_blocks == 20
    # the naive error (no blocking) is the first level, sqrt(19) = 4.4x too small
    assert np.mean([b.errors[0] for b in fp]) == pytest.approx(naive, rel=0.05)
    # white noise: the plateau is the naive error
    white = np.random.default_rng(9).normal(size=(40, 2 ** 14))
    assert np.mean([block_error(x).error for x in white]) == pytest.approx(2 ** -7, rel=0.05)
    # far too short for its correlation time: no plateau, flagged
    short = _ar1(0.995, 400, 1, seed=2)[0]
    assert not block_error(short).plateau
    assert block_error(np.ones(100)).error == 0.0


def test_block_error_bad_input():
    with pytest.raises(ValueError, match="method must be one of"):
        block_error(np.zeros(100), method="jackknife")
    with pytest.raises(ValueError, match="n_blocks must be between 2"):
        block_error(np.zeros(100), method="fixed", n_blocks=1)
    with pytest.raises(ValueError, match="at least min_blocks"):
        block_error(np.zeros(5))
    with pytest.raises(ValueError, match="not finite at frame 1"):
        block_error([0.0, np.nan, 1.0])


def _two_state_chains(chains, n, k_ab, k_ba, seed):
    """Markov chains on {A: False, B: True} with switching probabilities k_ab, k_ba per frame,
    started from the stationary distribution."""
    rng = np.random.default_rng(seed)
    state = np.empty((chains, n), dtype=bool)
    state[:, 0] = rng.random(chains) < k_ab / (k_ab + k_ba)
    uniform = rng.random((chains, n))
    for t in range(1, n):
        previous = state[:, t - 1]
        state[:, t] = np.where(previous, uniform[:, t] >= k_ba, uniform[:, t] < k_ab)
    return state


def test_blocked_delta_f_error_matches_the_spread_of_independent_biased_runs():
    """100 biased two-state chains (B lowered by 3 kJ/mol, ~80 frames of correlation):
    exp(V/kT) weights recover the unbiased dF = 5 kJ/mol, and the block error of one chain
    is the standard deviation of dF over the chains."""
    delta_f, bias_b = 5.0, -3.0
    ratio_biased = math.exp(-(delta_f + bias_b) / KT)  # pi'_B / pi'_A under the bias
    k_ab = 0.004
    states = _two_state_chains(100, 2 ** 14, k_ab, k_ab / ratio_biased, seed=7)
    estimates, errors, errors_fixed = [], [], []
    for s in states:
        x = np.where(s, 1.0, -1.0)
        v = np.where(s, bias_b, 0.0)
        result = free_energy_difference_blocked(x, opes_weights(v, T), T, (-2, 0), (0, 2))
        fixed = free_energy_difference_blocked(x, opes_weights(v, T), T, (-2, 0), (0, 2),
                                               method="fixed", n_blocks=20)
        assert fixed.delta_f == result.delta_f
        estimates.append(result.delta_f)
        errors.append(result.error)
        errors_fixed.append(fixed.error)
    spread = np.std(estimates, ddof=1)
    # the mean of 100 estimates is within 4 of its standard errors of the exact value
    assert np.mean(estimates) == pytest.approx(delta_f, abs=4 * spread / 10)
    # the std of 100 estimates is itself uncertain by ~7%; a block error is not a shuffle's
    assert 0.8 < np.mean(errors) / spread < 1.25, (np.mean(errors), spread)
    assert 0.75 < np.mean(errors_fixed) / spread < 1.3, (np.mean(errors_fixed), spread)
    # the same estimate as the bootstrap function; an empty region is nan, not an error
    w = opes_weights(np.where(states[0], bias_b, 0.0), T)
    x = np.where(states[0], 1.0, -1.0)
    boot = free_energy_difference(x, w, T, (-2, 0), (0, 2), n_bootstrap=0)
    assert boot.delta_f == pytest.approx(estimates[0], abs=1e-12)
    empty = free_energy_difference_blocked(x, w, T, (-2, 0), (5, 6))
    assert math.isnan(empty.delta_f) and empty.n_b == 0 and empty.block is None


def test_delta_f_convergence_against_a_direct_computation(tmp_path):
    """The prefix dF, the final value and the time to converge, recomputed by hand."""
    period = np.r_[np.ones(10), -np.ones(30)]
    x = np.r_[-np.ones(5000), np.tile(period, 375)]  # A only for 5 ns, then 25% in B
    time_ns = np.arange(1, x.size + 1) * 1e-3
    conv = delta_f_convergence(x, None, T, (-2, 0), (0, 2), time_ns, points=20,
                               tolerance_kJmol=1.0, error_threshold_kJmol=1e9)
    assert conv.time_ns.shape == (20,) and conv.time_ns[-1] == pytest.approx(20.0)
    direct = []
    for end in conv.time_ns:
        prefix = x[time_ns <= end + 1e-12]
        n_b, n_a = (prefix > 0).sum(), (prefix < 0).sum()
        direct.append(-KT * math.log(n_b / n_a) if n_b else np.nan)
    np.testing.assert_allclose(conv.delta_f, direct, rtol=1e-12)
    assert np.isnan(conv.delta_f[:5]).all() and conv.final == pytest.approx(direct[-1])
    good = np.abs(np.array(direct) - direct[-1]) <= 1.0
    first = int(np.flatnonzero(~good)[-1]) + 1
    assert conv.time_to_converge_ns == pytest.approx(conv.time_ns[first])
    assert 5.0 < conv.time_to_converge_ns < 20.0
    # the error threshold alone: from where every later block error is below it
    threshold = float(np.nanmax(conv.error[-5:])) * 1.001
    by_error = delta_f_convergence(x, None, T, (-2, 0), (0, 2), time_ns, points=20,
                                   tolerance_kJmol=1e9, error_threshold_kJmol=threshold)
    ok = conv.error <= threshold
    assert by_error.time_to_converge_ns == pytest.approx(
        conv.time_ns[int(np.flatnonzero(~ok)[-1]) + 1])
    # towards a target the run never reaches: not converged
    away = delta_f_convergence(x, None, T, (-2, 0), (0, 2), time_ns, target=conv.final + 5.0)
    assert away.time_to_converge_ns is None and away.target == pytest.approx(conv.final + 5.0)
    summary = conv.as_dict()
    assert summary["delta_f_kJmol"][0] is None and len(summary["time_ns"]) == 20
    # the plot: one line per run, the reference as a band
    path = plot_convergence({"run": conv, "again": away}, tmp_path / "c" / "convergence.png",
                            reference=(3.7, 0.3))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size < 200_000
    with pytest.raises(ValueError, match="at least one run"):
        plot_convergence({}, tmp_path / "none.png")


def test_delta_f_convergence_bad_input():
    x, t = np.r_[-np.ones(50), np.ones(50)], np.arange(1, 101) * 1e-3
    with pytest.raises(ValueError, match="points must be >= 2"):
        delta_f_convergence(x, None, T, (-2, 0), (0, 2), t, points=1)
    with pytest.raises(ValueError, match="99 times for 100 frames"):
        delta_f_convergence(x, None, T, (-2, 0), (0, 2), t[:-1])
    with pytest.raises(ValueError, match="time_ns must increase"):
        delta_f_convergence(x, None, T, (-2, 0), (0, 2), t[::-1])
    with pytest.raises(ValueError, match="tolerance_kJmol must be a positive number"):
        delta_f_convergence(x, None, T, (-2, 0), (0, 2), t, tolerance_kJmol=0.0)


def test_an_opes_log_without_c_t_loads(tmp_path):
    path = tmp_path / "opes.csv"
    path.write_text("step,time_ps,phi,psi,bias_kJmol,rct_kJmol,log_zed,n_kernels,neff\n"
                    "100,0.2,0.1,0.2,3.0,0.5,1.5,1,1.0\n200,0.4,0.3,0.4,4.0,0.6,1.6,2,2.0\n")
    log = load_bias_log(path)
    assert log.cv_names == ["phi", "psi"] and log.c_t_kJmol is None
    np.testing.assert_allclose(log.extra["log_zed"], [1.5, 1.6])
    assert sorted(log.extra) == ["log_zed", "n_kernels", "neff", "rct_kJmol"]
    np.testing.assert_allclose(log.weights(T, "opes"), opes_weights([3.0, 4.0], T))
    with pytest.raises(ValueError, match="no c_t_kJmol column"):
        log.weights(T, "metad")
