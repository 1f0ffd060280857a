"""openmm_geom.analysis against independent computations, mdtraj and deeptime (synthetic data)."""
import dataclasses
import math

import mdtraj
import numpy as np
import pytest

from openmm_geom import analysis as A
from openmm_geom.analysis.free_energy import NoiseCurve, noise_equivalent_sigma

KT = A.KT_300K


# ---------------------------------------------------------------------------- helpers


def _place(a, b, c, length, angle, torsion):
    """Natural-extension reference frame: the point d with |cd| = length, angle bcd = angle
    and dihedral abcd = torsion (per frame; arrays broadcast over frames)."""
    bc = c - b
    bc /= np.linalg.norm(bc, axis=-1, keepdims=True)
    n = np.cross(b - a, bc)
    n /= np.linalg.norm(n, axis=-1, keepdims=True)
    m = np.cross(n, bc)
    local = np.stack([-np.cos(angle), np.sin(angle) * np.cos(torsion),
                      np.sin(angle) * np.sin(torsion)], axis=-1) * length[..., None]
    return c + local[..., :1] * bc + local[..., 1:2] * m + local[..., 2:] * n


def alanine_like(n_frames, rng, weights=(0.6, 0.37, 0.03)):
    """6-bead capped-alanine-like CG frames (nm): C, N, CA, C, N, CB with (phi, psi) drawn
    from three von Mises basins (C7eq/beta, alpha_R, and a rare alpha_L) with ``weights``."""
    centres = np.array([[-1.4, 2.6], [-1.3, -0.7], [1.1, 0.6]])
    basin = rng.choice(3, size=n_frames, p=weights)
    phi = rng.vonmises(centres[basin, 0], 6.0)
    psi = rng.vonmises(centres[basin, 1], 6.0)

    def jitter(value, width):
        return value + width * rng.standard_normal(n_frames)

    x = np.zeros((n_frames, 6, 3))
    x[:, 1] = [0.133, 0.0, 0.0]
    x[:, 2] = x[:, 1] + 0.146 * np.array([math.cos(1.1), math.sin(1.1), 0.0])
    x[:, 0] += 0.003 * rng.standard_normal((n_frames, 3))
    x[:, 3] = _place(x[:, 0], x[:, 1], x[:, 2], jitter(0.152, 0.003), jitter(1.94, 0.05), phi)
    x[:, 4] = _place(x[:, 1], x[:, 2], x[:, 3], jitter(0.133, 0.003), jitter(2.03, 0.05), psi)
    x[:, 5] = _place(x[:, 3], x[:, 1], x[:, 2], jitter(0.153, 0.003), jitter(1.93, 0.05),
                     jitter(-2.1, 0.05))
    return x, phi, psi


def _wrapped(a):
    return np.angle(np.exp(1j * a))


@pytest.fixture(scope="module")
def alanine_data():
    return alanine_like(20_000, np.random.default_rng(7))


@pytest.fixture(scope="module")
def curve(alanine_data):
    return A.noise_curve(alanine_data[0], A.ALANINE_CG_PHI_PSI, seeds=4, rng_seed=11)


# ---------------------------------------------------------------------------- dihedrals


def test_dihedrals_match_mdtraj(rng):
    xyz = rng.normal(scale=0.2, size=(64, 6, 3)).astype(np.float32)
    quads = np.array([*A.ALANINE_CG_PHI_PSI, (5, 2, 1, 0), (3, 0, 4, 5)])
    top = mdtraj.Topology()
    residue = top.add_residue("UNK", top.add_chain())
    for i in range(6):
        top.add_atom(f"B{i}", mdtraj.element.carbon, residue)
    expected = mdtraj.compute_dihedrals(mdtraj.Trajectory(xyz, top), quads, periodic=False)
    ours = A.dihedrals(xyz.astype(np.float64), quads)
    assert ours.shape == (64, 4)
    assert np.abs(_wrapped(ours - expected)).max() < 1e-5  # mdtraj works in float32
    assert (ours >= -math.pi).all() and (ours < math.pi).all()


def test_dihedral_conventions(alanine_data):
    x, phi, psi = alanine_data
    angles = A.dihedrals(x[:500], A.ALANINE_CG_PHI_PSI)
    np.testing.assert_allclose(_wrapped(angles - np.c_[phi[:500], psi[:500]]), 0, atol=1e-10)
    mirrored = x[:500] * np.array([-1.0, 1.0, 1.0])
    np.testing.assert_allclose(_wrapped(A.dihedrals(mirrored, A.ALANINE_CG_PHI_PSI) + angles),
                               0, atol=1e-10)
    trans = np.array([[0.0, 1, 0], [0, 0, 0], [1, 0, 0], [1, -1, 0]])  # exactly 180 degrees
    assert A.dihedrals(trans, [(0, 1, 2, 3)])[0, 0] == -math.pi
    with pytest.raises(ValueError, match="beads"):
        A.dihedrals(trans, [(0, 1, 2, 4)])
    with pytest.raises(ValueError, match=r"\(k, 4\)"):
        A.dihedrals(trans, [(0, 1, 2)])


# ---------------------------------------------------------------------------- histograms


def test_histogram_matches_numpy_inside_and_folds_at_the_edges(rng):
    phi = rng.uniform(-3.1, 3.1, 5000)
    psi = rng.uniform(-3.1, 3.1, 5000)
    expected, _, _ = np.histogram2d(phi, psi, bins=60, range=[[-math.pi, math.pi]] * 2)
    counts = A.ramachandran_histogram(phi, psi)
    assert counts.shape == (60, 60) and counts.sum() == 5000
    np.testing.assert_array_equal(counts, expected)

    width = 2 * math.pi / 60
    edge = np.array([-math.pi, math.pi, 3 * math.pi, math.pi - 0.5 * width, -math.pi + 1e-9,
                     math.pi + 0.5 * width])
    counts = A.ramachandran_histogram(edge, np.zeros_like(edge))
    assert counts[0, 30] == 5  # -pi, pi, 3 pi, -pi + tiny, pi + half a bin
    assert counts[59, 30] == 1  # just below pi
    np.testing.assert_allclose(A.bin_edges(60)[[0, -1]], [-math.pi, math.pi])


# ---------------------------------------------------------------------------- KL and MSE


P = np.array([[4.0, 3.0], [2.0, 1.0], [0.0, 0.0]])  # bin (1, 1): only p; (2, 0): only q
Q = np.array([[1.0, 2.0], [3.0, 0.0], [4.0, 0.0]])


def test_kl_drop_omit_epsilon_against_direct_sums():
    p, q = P.ravel().tolist(), Q.ravel().tolist()
    shared = [i for i in range(len(p)) if p[i] > 0 and q[i] > 0]
    sp, sq = sum(p[i] for i in shared), sum(q[i] for i in shared)
    drop = sum(p[i] / sp * math.log((p[i] / sp) / (q[i] / sq)) for i in shared)
    omit = sum(p[i] / 10 * math.log((p[i] / 10) / (q[i] / 10)) for i in shared)
    eps = 0.25
    pe = [(v + eps) / (10 + eps * 6) for v in p]
    qe = [(v + eps) / (10 + eps * 6) for v in q]
    epsilon = sum(a * math.log(a / b) for a, b in zip(pe, qe))

    assert A.kl_divergence(P, Q).empty == "omit"  # the default: the README's convention
    result = A.kl_divergence(P, Q, empty="drop")
    assert result.empty == "drop" and result.bins_kept == 3 and result.bins_total == 6
    assert result.value == pytest.approx(drop, rel=1e-12)
    assert result.dropped_reference_mass == pytest.approx(0.1)  # bin (1, 1): 1 of 10
    assert result.dropped_trial_mass == pytest.approx(0.4)  # bin (2, 0): 4 of 10
    assert float(result) == result.value and result.as_dict()["bins_kept"] == 3
    assert A.kl_divergence(P, Q, empty="omit").value == pytest.approx(omit, rel=1e-12)
    result = A.kl_divergence(P, Q, empty="epsilon", pseudocount=eps)
    assert result.value == pytest.approx(epsilon, rel=1e-12) and result.bins_kept == 6
    assert result.dropped_reference_mass == pytest.approx(0.1)


@pytest.mark.parametrize("empty", ["drop", "omit", "epsilon"])
def test_kl_of_a_distribution_with_itself_is_zero(empty, rng):
    p = rng.poisson(3.0, size=(60, 60)).astype(float)
    assert A.kl_divergence(p, p, empty=empty).value == pytest.approx(0.0, abs=1e-14)
    if empty != "epsilon":  # a pseudocount weighs differently against 7x the counts
        assert A.kl_divergence(p, 7 * p, empty=empty).value == pytest.approx(0.0, abs=1e-14)


def test_kl_reports_a_missed_state_and_bad_input():
    reference = np.zeros((60, 60))
    reference[10, 40] = 900  # main basin
    reference[45, 30] = 100  # rare state
    trial = np.zeros((60, 60))
    trial[10, 40] = 500  # the CG run misses the rare state
    result = A.kl_divergence(reference, trial, empty="drop")
    assert result.value == pytest.approx(0.0)  # invisible in the value ...
    assert result.dropped_reference_mass == pytest.approx(0.1)  # ... visible here
    assert A.kl_divergence(reference, trial, empty="epsilon").value > 0.1
    assert A.kl_divergence(reference, trial).value < 0  # "omit" can even go negative ...
    assert A.kl_divergence(reference, trial).dropped_reference_mass == pytest.approx(0.1)
    assert math.isinf(A.kl_divergence(P, (P == 0).astype(float), empty="drop").value)
    with pytest.raises(ValueError, match="same shape"):
        A.kl_divergence(P, Q[:2])
    with pytest.raises(ValueError, match="non-negative"):
        A.kl_divergence(P, -Q)
    with pytest.raises(ValueError, match="empty"):
        A.kl_divergence(P, Q, empty="zero")


def test_negative_omit_kl_is_bounded_by_the_dropped_reference_mass(rng):
    """Why "omit" KL goes negative: value >= P ln(P/Q) for the kept masses P (reference) and
    Q (trial) (log-sum inequality), which is < 0 only if the trial misses reference mass."""
    for _ in range(20):
        p = rng.poisson(rng.uniform(0, 5, size=(20, 20)) ** 2).astype(float)
        q = rng.poisson(rng.uniform(0, 5, size=(20, 20)) ** 2).astype(float)
        result = A.kl_divergence(p, q)
        keep = (p > 0) & (q > 0)
        kept_p, kept_q = p[keep].sum() / p.sum(), q[keep].sum() / q.sum()
        assert kept_p == pytest.approx(1.0 - result.dropped_reference_mass)
        assert result.value >= kept_p * math.log(kept_p / kept_q) - 1e-12
        if result.dropped_reference_mass == 0.0:
            assert result.value >= -1e-12


def test_unreliable_reasons_of_a_run_that_misses_a_basin(alanine_data):
    """A CG run covering only the alpha_R basin (37% of the reference): KL < 0 and 63% of the
    reference mass unseen; before, that read as KL ~ 0 and sigma = 0."""
    reference = alanine_data[0]
    one_basin = alanine_like(8000, np.random.default_rng(3), weights=(0.0, 1.0, 0.0))[0]
    ref_hist = A.ramachandran_histogram(*A.dihedrals(reference, A.ALANINE_CG_PHI_PSI).T)
    run_hist = A.ramachandran_histogram(*A.dihedrals(one_basin, A.ALANINE_CG_PHI_PSI).T)
    kl = A.kl_divergence(ref_hist, run_hist)
    assert kl.value < 0 and kl.dropped_reference_mass > 0.6
    reasons = A.unreliable_reasons(kl)
    assert len(reasons) == 2
    assert reasons[0].startswith(f"the CG run misses {kl.dropped_reference_mass:.0%} of the "
                                 "reference probability mass (limit 5%)")
    assert "< 0, which a divergence cannot be" in reasons[1]
    assert A.unreliable_reasons(kl, max_dropped_reference_mass=0.9) == [reasons[1]]

    same = alanine_like(20_000, np.random.default_rng(4))[0]
    good = A.kl_divergence(ref_hist, A.ramachandran_histogram(
        *A.dihedrals(same, A.ALANINE_CG_PHI_PSI).T))
    assert good.dropped_reference_mass < A.MAX_DROPPED_REFERENCE_MASS and good.value > 0
    assert A.unreliable_reasons(good) == []
    disjoint = A.kl_divergence(np.eye(3), 1.0 - np.eye(3))
    assert "share no histogram bin" in A.unreliable_reasons(disjoint)[0]
    with pytest.raises(TypeError, match="KLResult"):
        A.unreliable_reasons(0.1)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        A.unreliable_reasons(good, max_dropped_reference_mass=5)


def _write_run(path, frames, replicas):
    from openmm_geom.simulate import TrajectoryWriter

    run = frames.reshape(-1, replicas, *frames.shape[1:])
    with TrajectoryWriter(path, replicas, frames.shape[1]) as writer:
        for step, x in enumerate(run):
            writer.append(step, step * 0.002, x, np.zeros(replicas))


def test_cg_evaluate_reports_sigma_as_unreliable_for_a_run_missing_a_basin(alanine_data,
                                                                         tmp_path):
    from openmm_geom.workflows import coarse_grain as cg

    reference = alanine_data[0][:8000]
    settings = dataclasses.replace(cg.QUICK, noise_seeds=2)
    one_basin = alanine_like(4 * 2000, np.random.default_rng(5), weights=(0.0, 1.0, 0.0))[0]
    _write_run(tmp_path / "one.h5", one_basin, 4)
    metrics = cg.evaluate(reference, tmp_path / "one.h5", tmp_path / "one", temperature_K=300.0,
                          settings=settings, kind="alanine")
    assert metrics["noise_equivalent_sigma_angstrom"] is None
    assert metrics["noise_equivalent_sigma_mse_angstrom"] is None
    assert metrics["kl"] < 0 and metrics["kl_details"]["dropped_reference_mass"] > 0.6
    reasons = metrics["unreliable_reasons"]
    assert len(reasons) == 2 and "of the reference probability mass (limit 5%)" in reasons[0]
    assert metrics["warnings"] == reasons

    both = alanine_like(4 * 2000, np.random.default_rng(6))[0]
    _write_run(tmp_path / "both.h5", both, 4)
    metrics = cg.evaluate(reference, tmp_path / "both.h5", tmp_path / "both",
                          temperature_K=300.0, settings=settings, kind="alanine")
    assert metrics["unreliable_reasons"] == []
    assert 0.0 <= metrics["noise_equivalent_sigma_angstrom"] < 0.1


def test_mse_of_bin_energies_against_direct_sum():
    p, q = P.ravel().tolist(), Q.ravel().tolist()
    shared = [i for i in range(len(p)) if p[i] * q[i] > 0]
    expected = sum((KT * math.log(p[i] / 10) - KT * math.log(q[i] / 10)) ** 2
                   for i in shared) / len(shared)
    result = A.mse_bin_energies(P, Q, KT)
    assert result["value"] == pytest.approx(expected, rel=1e-12)
    assert result["bins_used"] == 3 and result["bins_total"] == 6 and result["kT"] == KT
    assert A.mse_bin_energies(P, 3 * P, KT)["value"] == pytest.approx(0.0, abs=1e-20)
    with pytest.raises(ValueError, match="kT"):
        A.mse_bin_energies(P, Q, -1.0)


def test_free_energy_surface():
    free = A.free_energy_surface(P, KT)
    assert np.isinf(free[2]).all() and free.min() == 0.0
    np.testing.assert_allclose(free[:2], -KT * np.log(P[:2] / 4.0))
    np.testing.assert_allclose(A.free_energy_surface(Q.ravel(), 2 * KT)[[0, 1]],
                               [2 * KT * math.log(4.0), 2 * KT * math.log(2.0)])


# ---------------------------------------------------------------------------- noise curve


def test_noise_curve_is_monotone_and_reproducible(alanine_data, curve):
    assert curve.kl.shape == (4, 31) and curve.mse.shape == (4, 31)
    np.testing.assert_allclose(curve.sigmas_angstrom, np.arange(31) * 0.01, atol=1e-12)
    assert curve.kl_mean[0] == 0.0 and curve.mse_mean[0] == 0.0
    assert (np.diff(curve.kl_mean[1:]) > 0).all() and (np.diff(curve.mse_mean[1:]) > 0).all()
    assert 0.05 < curve.kl_mean[10] < curve.kl_mean[30] < 2.0  # 0.1 A and 0.3 A
    assert curve.as_dict()["seeds"] == 4 and curve.n_frames == 20_000
    # Realisation i does not depend on how many realisations are drawn.
    fewer = A.noise_curve(alanine_data[0], sigmas_angstrom=curve.sigmas_angstrom, seeds=2,
                          rng_seed=11)
    np.testing.assert_array_equal(fewer.kl, curve.kl[:2])
    # Beads outside the quadruplets (CB) cannot matter.
    no_cb = A.noise_curve(alanine_data[0][:, :5], sigmas_angstrom=curve.sigmas_angstrom, seeds=2,
                          rng_seed=11)
    np.testing.assert_array_equal(no_cb.kl, curve.kl[:2])


@pytest.mark.parametrize("empty", ["drop", "omit"])
def test_noise_equivalent_sigma_recovers_a_known_sigma(alanine_data, curve, empty):
    x = alanine_data[0]
    if empty != curve.empty:
        curve = A.noise_curve(x, seeds=4, rng_seed=11, empty=empty)
    reference = A.ramachandran_histogram(*A.dihedrals(x, A.ALANINE_CG_PHI_PSI).T)
    noisy = x + np.random.default_rng(2024).normal(0.0, 0.012, size=x.shape)  # 0.12 A in nm
    trial = A.ramachandran_histogram(*A.dihedrals(noisy, A.ALANINE_CG_PHI_PSI).T)
    kl = A.kl_divergence(reference, trial, empty=empty)
    match = A.noise_equivalent_sigma(kl, curve)
    assert not match.beyond_range and match.sigma_angstrom == pytest.approx(0.12, abs=0.02)
    mse = A.mse_bin_energies(reference, trial, KT)
    by_mse = A.noise_equivalent_sigma(mse, curve, metric="mse")
    assert by_mse.sigma_angstrom == pytest.approx(0.12, abs=0.02)


def test_noise_equivalent_sigma_interpolation_and_range():
    sigmas = np.array([0.0, 0.1, 0.2, 0.3])
    kl = np.array([[0.01, 0.2, 0.15, 1.0], [0.01, 0.2, 0.25, 1.0]])  # mean 0.01, .2, .2, 1
    curve = NoiseCurve(sigmas, kl, kl, np.zeros_like(kl), 60, KT, "drop", 100, 0)
    assert A.noise_equivalent_sigma(0.005, curve).sigma_angstrom == 0.0
    assert A.noise_equivalent_sigma(0.105, curve).sigma_angstrom == pytest.approx(0.05)
    assert A.noise_equivalent_sigma(0.2, curve).sigma_angstrom == pytest.approx(0.1)
    assert A.noise_equivalent_sigma(0.6, curve).sigma_angstrom == pytest.approx(0.25)
    beyond = A.noise_equivalent_sigma(1.5, curve)
    assert beyond.beyond_range and beyond.sigma_angstrom == 0.3
    other_policy = A.kl_divergence(P, Q, empty="omit")
    with pytest.raises(ValueError, match="same policy"):
        A.noise_equivalent_sigma(other_policy, curve)


def test_noise_curve_rejects_bad_input(alanine_data):
    x = alanine_data[0][:100]
    with pytest.raises(ValueError, match="increasing"):
        A.noise_curve(x, sigmas_angstrom=[0.1, 0.0], seeds=1)
    with pytest.raises(ValueError, match="two quadruplets"):
        A.noise_curve(x, [(0, 1, 2, 3)], seeds=1)
    with pytest.raises(ValueError, match="seeds"):
        A.noise_curve(x, seeds=0)


# ---------------------------------------------------------------------------- TICA


def _ou_features(n_frames, rng, mixing, rates=(0.01, 0.05, 0.3, 1.0)):
    """Linearly mixed Ornstein-Uhlenbeck processes (known slow modes) plus white noise."""
    decay = np.exp(-np.asarray(rates))
    z = np.zeros((n_frames, len(rates)))
    kicks = np.sqrt(1 - decay**2) * rng.standard_normal((n_frames, len(rates)))
    for t in range(1, n_frames):
        z[t] = decay * z[t - 1] + kicks[t]
    return z @ mixing + 0.1 * rng.standard_normal((n_frames, mixing.shape[1])) + 2.0


@pytest.mark.parametrize("as_list", [False, True])
def test_tica_matches_deeptime(rng, as_list):
    DeeptimeTICA = pytest.importorskip("deeptime.decomposition").TICA  # requirements-bench.txt
    from scipy.linalg import subspace_angles

    mixing = rng.normal(size=(4, 6))
    data = [_ou_features(n, rng, mixing) for n in (3000, 2000, 1500)]
    data = data if as_list else data[0]
    ours = A.TICA(lagtime=5, dim=3).fit(data)
    theirs = DeeptimeTICA(lagtime=5, dim=3).fit(data).fetch_model()
    np.testing.assert_allclose(ours.eigenvalues_, theirs.singular_values, rtol=1e-8, atol=1e-10)
    assert ours.eigenvalues_[0] == pytest.approx(math.exp(-0.05), abs=0.03)  # slowest mode
    assert np.max(subspace_angles(ours.eigenvectors_[:, :3],
                                  theirs.instantaneous_coefficients[:, :3])) < 1e-8
    frames = data if as_list else [data]
    ours_projection = np.concatenate(ours.transform(frames))
    theirs_projection = np.concatenate([theirs.transform(x) for x in frames])
    signs = np.sign(np.sum(ours_projection * theirs_projection, axis=0))
    np.testing.assert_allclose(ours_projection, theirs_projection * signs, atol=1e-10)
    assert ours.timescales()[0] == pytest.approx(-5 / math.log(ours.eigenvalues_[0]))


def test_tica_never_pairs_frames_across_trajectories(rng):
    mixing = rng.normal(size=(4, 3))
    trajectories = [_ou_features(500, rng, mixing) + shift for shift in (0.0, 5.0)]
    tau = 3
    fitted = A.TICA(lagtime=tau).fit(trajectories)
    x0 = np.concatenate([x[:-tau] for x in trajectories])
    xt = np.concatenate([x[tau:] for x in trajectories])
    mean = (x0.mean(axis=0) + xt.mean(axis=0)) / 2
    c0t = (x0 - mean).T @ (xt - mean) / len(x0)
    np.testing.assert_allclose(fitted.mean_, mean, rtol=1e-12)
    np.testing.assert_allclose(fitted.cov_0t_, (c0t + c0t.T) / 2, rtol=1e-10, atol=1e-12)
    assert fitted.n_pairs_ == 2 * (500 - tau)
    concatenated = A.TICA(lagtime=tau).fit(np.concatenate(trajectories))
    assert not np.allclose(concatenated.cov_0t_, fitted.cov_0t_)
    assert isinstance(fitted.transform(trajectories), list)


def test_tica_regularises_dependent_features(rng):
    x = _ou_features(2000, rng, rng.normal(size=(4, 3)))
    redundant = np.c_[x, x[:, 0] + x[:, 1], np.full(len(x), 1.5)]  # dependent + constant column
    fitted = A.TICA(lagtime=2, dim=10).fit(redundant)
    assert fitted.rank_ == 3 and fitted.output_dim == 3
    np.testing.assert_allclose(fitted.eigenvalues_, A.TICA(lagtime=2).fit(x).eigenvalues_,
                               rtol=1e-6)
    assert fitted.transform(redundant).shape == (2000, 3)
    with pytest.raises(ValueError, match="longer than the lag"):
        A.TICA(lagtime=50).fit(x[:20])
    with pytest.raises(RuntimeError, match="not fitted"):
        A.TICA(lagtime=1).transform(x)


def test_distance_features(rng):
    x = rng.normal(size=(5, 4, 3))
    features = A.ca_distance_features(x)
    expected = [[np.linalg.norm(f[j] - f[i]) for i in range(4) for j in range(i + 1, 4)]
                for f in x]
    np.testing.assert_allclose(features, expected, rtol=1e-12)
    np.testing.assert_allclose(A.ca_distance_features(x, [(3, 1)])[:, 0],
                               np.linalg.norm(x[:, 1] - x[:, 3], axis=-1))
    with pytest.raises(ValueError, match="outside"):
        A.ca_distance_features(x, [(0, 4)])


# ---------------------------------------------------------------------------- plots


def _is_png(path):
    data = path.read_bytes()
    return data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_plots_write_pngs(tmp_path, alanine_data, curve, rng):
    x = alanine_data[0]
    angles = A.dihedrals(x, A.ALANINE_CG_PHI_PSI)
    noisy = A.dihedrals(x + rng.normal(0, 0.01, size=x.shape), A.ALANINE_CG_PHI_PSI)
    histograms = {"reference": A.ramachandran_histogram(*angles.T),
                  "sigma = 0.1 A": A.ramachandran_histogram(*noisy.T)}
    out = A.plot_free_energy_surfaces(histograms, tmp_path / "fig4" / "fes.png", KT)
    assert out == tmp_path / "fig4" / "fes.png" and _is_png(out)

    kl = A.kl_divergence(histograms["reference"], histograms["sigma = 0.1 A"])
    mse = A.mse_bin_energies(histograms["reference"], histograms["sigma = 0.1 A"], KT)
    assert _is_png(A.plot_noise_curve(curve, tmp_path / "noise.png", cg_kl=kl, cg_mse=mse))

    features = A.ca_distance_features(x[:5000])
    tica = A.TICA(lagtime=1, dim=2).fit(features)
    out = A.plot_tica_free_energy({"reference": tica.transform(features),
                                   "noisy": tica.transform(features + 0.01)},
                                  str(tmp_path / "tica.png"), KT, bins=40)
    assert _is_png(out)


# --- proteins: TICA free-energy comparison ----------------------------------------------------

def _two_state_chain(rng, frames, p_switch=0.02, noise_nm=0.02, only_state=None):
    """A 12-bead chain hopping between an extended and a bent conformation (Markov chain in
    time), with Gaussian jitter: the slow process TICA must find."""
    n = 12
    extended = np.stack([np.arange(n) * 0.38, np.zeros(n), np.zeros(n)], axis=1)
    bent = extended.copy()
    angle = np.deg2rad(100)
    hinge = bent[6]
    rel = bent[6:] - hinge
    bent[6:] = hinge + rel @ np.array([[np.cos(angle), np.sin(angle), 0],
                                       [-np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    states = np.zeros(frames, dtype=int)
    for t in range(1, frames):
        states[t] = 1 - states[t - 1] if rng.random() < p_switch else states[t - 1]
    if only_state is not None:
        states[:] = only_state
    templates = np.stack([extended, bent])
    return templates[states] + rng.normal(0, noise_nm, (frames, n, 3))


def test_tica_comparison_calibrates_a_known_noise_and_sees_a_missing_state(rng):
    from openmm_geom.analysis.protein import compare, tica_free_energy, tica_noise_curve

    kT = 2.494
    reference = _two_state_chain(rng, 20000)
    frame = tica_free_energy(reference, lagtime=5)
    assert frame.reference_counts.sum() == len(reference)
    curve = tica_noise_curve(frame, reference, kT=kT, seeds=2,
                             sigmas_angstrom=np.arange(0, 0.61, 0.05))
    assert np.all(np.diff(curve.kl_mean[2:]) > 0)  # more noise, larger divergence
    same = compare(frame, _two_state_chain(rng, 20000), kT=kT)
    noisy_copy = reference + rng.normal(0, 0.04, reference.shape)  # 0.4 Å
    noisy = compare(frame, noisy_copy, kT=kT)
    one_state = compare(frame, _two_state_chain(rng, 20000, only_state=0), kT=kT)
    assert same["kl"].value < noisy["kl"].value
    assert noise_equivalent_sigma(same["kl"], curve).sigma_angstrom < 0.2
    assert noise_equivalent_sigma(noisy["kl"], curve).sigma_angstrom == pytest.approx(0.4,
                                                                                       abs=0.06)
    assert one_state["kl"].dropped_reference_mass > 0.3  # the missed state shows up here
    assert same["kl"].dropped_reference_mass < 0.05
    with pytest.raises(ValueError, match="at least 5 beads"):
        tica_free_energy(reference[:, :4])
    with pytest.raises(ValueError, match="NaN"):
        tica_free_energy(np.where(reference > 100, 0, np.nan))
    with pytest.raises(ValueError, match="beads"):
        frame.project(reference[:, :8])


def test_cg_evaluate_protein_kind(rng, tmp_path):
    from openmm_geom.simulate import TrajectoryWriter
    from openmm_geom.workflows import coarse_grain as cg

    reference = _two_state_chain(rng, 6000)
    run = _two_state_chain(rng, 4 * 500).reshape(500, 4, 12, 3)  # 500 frames x 4 replicas
    with TrajectoryWriter(tmp_path / "t.h5", 4, 12) as writer:
        for step, x in enumerate(run):
            writer.append(step, step * 0.002, x, np.zeros(4))
    settings = dataclasses.replace(cg.QUICK, noise_seeds=2, tica_lag_frames=5)
    metrics = cg.evaluate(reference, tmp_path / "t.h5", tmp_path, temperature_K=300.0,
                          settings=settings)
    assert metrics["kind"] == "protein"
    assert metrics["unreliable_reasons"] == []
    assert np.isfinite(metrics["kl"]) and np.isfinite(metrics["noise_equivalent_sigma_angstrom"])
    assert metrics["cg_frames"] == int(0.9 * 500) * 4
    for name in metrics["figures"]:
        assert (tmp_path / name).stat().st_size > 0
