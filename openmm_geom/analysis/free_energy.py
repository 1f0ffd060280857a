"""Dihedral histograms, free energies and the CGSchNet accuracy metrics.

Implements the comparison of a coarse-grained (CG) run with its all-atom reference used in
Husic et al., "Coarse graining molecular dynamics with graph neural networks" (J. Chem. Phys.
153, 194101, 2020), section IV.A:

* :func:`ramachandran_histogram` -- 60x60 periodic (phi, psi) histograms;
* :func:`kl_divergence` -- eq. 14, reference distribution first;
* :func:`mse_bin_energies` -- eq. 15, bin energies ``kT ln p`` over bins visited by both runs;
* :func:`noise_curve` and :func:`noise_equivalent_sigma` -- the calibration of Fig. 5: the
  metrics between the reference and the reference with Gaussian noise on the Cartesian
  coordinates of the CG beads, and the noise level that matches a given CG run;
* :func:`unreliable_reasons` -- why such a sigma cannot be trusted for a given run (a run that
  misses reference states, a negative KL), or an empty list.

Conventions: numpy in and out, lengths in nm (noise levels in Angstrom, as in the paper, and
converted to nm internally), energies in kJ/mol, angles in radians in ``[-pi, pi)``.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from ..units import kT_kj_per_mol

__all__ = [
    "ALANINE_CG_PHI_PSI",
    "KT_300K",
    "KLResult",
    "NoiseCurve",
    "NoiseEquivalentSigma",
    "bin_edges",
    "dihedrals",
    "ramachandran_histogram",
    "kl_divergence",
    "mse_bin_energies",
    "free_energy_surface",
    "noise_curve",
    "noise_equivalent_sigma",
    "MAX_DROPPED_REFERENCE_MASS",
    "unreliable_reasons",
]

#: (phi, psi) bead quadruplets of the 6-bead capped-alanine CG mapping of the paper, beads in
#: the order C(ACE), N, CA, C (ALA), N(NME), CB(ALA).
ALANINE_CG_PHI_PSI = ((0, 1, 2, 3), (1, 2, 3, 4))

#: kT at 300 K in kJ/mol, the temperature of the shared capped-alanine reference data.
KT_300K = kT_kj_per_mol(300.0)

_ANGSTROM_TO_NM = 0.1
_TWO_PI = 2.0 * math.pi


# --------------------------------------------------------------------------------------------
# geometry and histograms


def _check_quadruplets(quadruplets, n_beads: int) -> np.ndarray:
    quads = np.asarray(quadruplets)
    if quads.ndim != 2 or quads.shape[1] != 4:
        raise ValueError(f"quadruplets must have shape (k, 4), got {quads.shape}")
    if quads.size and not np.issubdtype(quads.dtype, np.integer):
        raise TypeError(f"quadruplets must be integer indices, got dtype {quads.dtype}")
    quads = quads.astype(np.intp)
    if quads.size and (quads.min() < 0 or quads.max() >= n_beads):
        raise ValueError(
            f"quadruplets index bead {quads.max() if quads.max() >= n_beads else quads.min()} "
            f"but positions have {n_beads} beads"
        )
    return quads


def _check_positions(positions) -> np.ndarray:
    pos = np.asarray(positions, dtype=np.float64)
    if pos.ndim == 2 and pos.shape[-1] == 3:
        pos = pos[None]
    if pos.ndim != 3 or pos.shape[-1] != 3:
        raise ValueError(f"positions must have shape (frames, beads, 3), got {pos.shape}")
    return pos


def _dihedrals_unchecked(pos: np.ndarray, quads: np.ndarray) -> np.ndarray:
    """Dihedral angles (M, k) in [-pi, pi) of validated positions and quadruplets."""
    x = pos[:, quads]  # (M, k, 4, 3)
    b1 = x[:, :, 1] - x[:, :, 0]
    b2 = x[:, :, 2] - x[:, :, 1]
    b3 = x[:, :, 3] - x[:, :, 2]
    c1 = np.cross(b2, b3)
    c2 = np.cross(b1, b2)
    # IUPAC/IUB sign convention, same formula as mdtraj.compute_dihedrals:
    # atan2(|b2| b1 . (b2 x b3), (b1 x b2) . (b2 x b3)).
    y = np.einsum("mki,mki->mk", b1, c1) * np.sqrt(np.einsum("mki,mki->mk", b2, b2))
    angle = np.arctan2(y, np.einsum("mki,mki->mk", c1, c2))
    angle[angle >= math.pi] -= _TWO_PI  # atan2 may return +pi exactly
    return angle


def dihedrals(positions, quadruplets) -> np.ndarray:
    """Dihedral (torsion) angles of bead quadruplets.

    Parameters
    ----------
    positions : array_like, shape (M, n, 3) or (n, 3)
        Coordinates of M frames of n beads (any length unit; angles do not depend on it).
    quadruplets : array_like of int, shape (k, 4)
        Bead indices ``(i, j, k, l)``; the angle is the rotation about the ``j-k`` bond.

    Returns
    -------
    numpy.ndarray, shape (M, k)
        Angles in radians in ``[-pi, pi)`` with the IUPAC sign convention (positive for a
        clockwise rotation of the front bond seen along ``j -> k``), identical to
        :func:`mdtraj.compute_dihedrals`. Computed in float64 whatever the input dtype.

    Notes
    -----
    A collinear triple makes the angle undefined; ``arctan2(0, 0)`` then returns 0.
    """
    pos = _check_positions(positions)
    quads = _check_quadruplets(quadruplets, pos.shape[1])
    return _dihedrals_unchecked(pos, quads)


def _angle_bins(angle: np.ndarray, bins: int) -> np.ndarray:
    """Periodic bin index in [0, bins) of angles on [-pi, pi) (any real angle is wrapped)."""
    index = np.floor((angle + math.pi) * (bins / _TWO_PI)).astype(np.intp)
    return np.mod(index, bins)


def _check_bins(bins) -> int:
    if isinstance(bins, (bool, np.bool_)) or not isinstance(bins, (int, np.integer)) or bins < 1:
        raise ValueError(f"bins must be a positive integer, got {bins!r}")
    return int(bins)


def _histogram2d_unchecked(phi: np.ndarray, psi: np.ndarray, bins: int) -> np.ndarray:
    flat = _angle_bins(phi, bins) * bins + _angle_bins(psi, bins)
    return np.bincount(flat.ravel(), minlength=bins * bins).reshape(bins, bins)


def ramachandran_histogram(phi, psi, bins: int = 60) -> np.ndarray:
    """Periodic 2D histogram of (phi, psi) on ``[-pi, pi) x [-pi, pi)``.

    Parameters
    ----------
    phi, psi : array_like
        Angles in radians, same shape (any, e.g. (M,)). Angles outside ``[-pi, pi)`` are
        wrapped periodically, so ``pi`` falls into the first bin, like ``-pi``.
    bins : int, default 60
        Number of equal bins per angle (the paper uses 60, i.e. 6 degrees).

    Returns
    -------
    numpy.ndarray of int64, shape (bins, bins)
        ``counts[i, j]`` counts samples with phi in bin ``i`` and psi in bin ``j``; bin ``i``
        covers ``[-pi + i w, -pi + (i + 1) w)`` with ``w = 2 pi / bins``.
    """
    bins = _check_bins(bins)
    phi = np.asarray(phi, dtype=np.float64)
    psi = np.asarray(psi, dtype=np.float64)
    if phi.shape != psi.shape:
        raise ValueError(f"phi and psi must have the same shape, got {phi.shape} and {psi.shape}")
    if not (np.isfinite(phi).all() and np.isfinite(psi).all()):
        raise ValueError("phi and psi must be finite")
    return _histogram2d_unchecked(phi, psi, bins)


def bin_edges(bins: int = 60) -> np.ndarray:
    """Edges (bins + 1,) of the periodic angle bins used by :func:`ramachandran_histogram`."""
    bins = _check_bins(bins)
    return np.linspace(-math.pi, math.pi, bins + 1)


# --------------------------------------------------------------------------------------------
# metrics


def _check_counts(p_counts, q_counts) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(p_counts, dtype=np.float64)
    q = np.asarray(q_counts, dtype=np.float64)
    if p.shape != q.shape:
        raise ValueError(f"histograms must have the same shape, got {p.shape} and {q.shape}")
    for name, h in (("reference (p)", p), ("trial (q)", q)):
        if not np.isfinite(h).all() or (h < 0).any():
            raise ValueError(f"{name} counts must be finite and non-negative")
        if h.sum() <= 0:
            raise ValueError(f"{name} histogram is empty")
    return p, q


@dataclass(frozen=True)
class KLResult:
    """Kullback-Leibler divergence KL(p || q) with diagnostics (see :func:`kl_divergence`).

    Attributes
    ----------
    value : float
        The divergence (nats). ``inf`` if the two histograms share no bin (``"drop"``,
        ``"omit"``).
    bins_kept : int
        Bins entering the sum: both counts non-zero (``"drop"``) or all bins (``"epsilon"``).
    bins_total : int
        Number of bins of the histograms.
    dropped_reference_mass : float
        Fraction of the reference samples in bins where the trial has no sample: the reference
        probability that ``"drop"`` discards. A CG run that misses a reference state shows up
        here, not in ``value``. Reported in both modes.
    dropped_trial_mass : float
        Fraction of the trial samples in bins where the reference has no sample.
    empty : str
        The empty-bin policy used.
    """

    value: float
    bins_kept: int
    bins_total: int
    dropped_reference_mass: float
    dropped_trial_mass: float
    empty: str

    def __float__(self) -> float:
        return float(self.value)

    def as_dict(self) -> dict:
        """Plain dict (JSON-serialisable) of the fields."""
        return asdict(self)


_EMPTY_MODES = ("drop", "omit", "epsilon")


def _kl_from_counts(p: np.ndarray, q: np.ndarray, empty: str, pseudocount: float) -> KLResult:
    """KL(p || q) of validated float histograms (see :func:`kl_divergence`)."""
    p_total, q_total = p.sum(), q.sum()
    p_only = (p > 0) & (q == 0)
    q_only = (q > 0) & (p == 0)
    diagnostics = dict(
        bins_total=int(p.size),
        dropped_reference_mass=float(p[p_only].sum() / p_total),
        dropped_trial_mass=float(q[q_only].sum() / q_total),
        empty=empty,
    )
    if empty in ("drop", "omit"):
        keep = (p > 0) & (q > 0)
        if not keep.any():
            return KLResult(value=math.inf, bins_kept=0, **diagnostics)
        pk, qk = p[keep], q[keep]
        if empty == "drop":  # renormalise over the kept bins: a true KL, >= 0
            pk, qk = pk / pk.sum(), qk / qk.sum()
            value = max(float(np.sum(pk * np.log(pk / qk))), 0.0)
        else:  # normalised over all bins, empty-bin terms left out of the sum
            pk, qk = pk / p_total, qk / q_total
            value = float(np.sum(pk * np.log(pk / qk)))
        return KLResult(value=value, bins_kept=int(keep.sum()), **diagnostics)
    if empty == "epsilon":
        if not (pseudocount > 0 and math.isfinite(pseudocount)):
            raise ValueError(f"pseudocount must be positive, got {pseudocount}")
        pe = (p + pseudocount) / (p_total + pseudocount * p.size)
        qe = (q + pseudocount) / (q_total + pseudocount * q.size)
        value = max(float(np.sum(pe * np.log(pe / qe))), 0.0)
        return KLResult(value=value, bins_kept=int(p.size), **diagnostics)
    raise ValueError(f"empty must be one of {_EMPTY_MODES}, got {empty!r}")


def kl_divergence(p_counts, q_counts, empty: str = "omit", pseudocount: float = 0.5) -> KLResult:
    r"""Kullback-Leibler divergence of eq. 14, :math:`\sum_i p_i \ln(p_i / q_i)`.

    Parameters
    ----------
    p_counts : array_like
        Reference histogram (bin counts or weights, any shape), e.g. the all-atom run.
    q_counts : array_like
        Trial histogram of the same shape, e.g. the CG run or the noisy reference.
    empty : {"drop", "omit", "epsilon"}, default "omit"
        Empty-bin policy.

        ``"drop"``
            Bins where ``p`` or ``q`` has no count are removed and both distributions are
            renormalised over the kept bins, ``p_i = P_i / sum_kept P`` and
            ``q_i = Q_i / sum_kept Q`` for counts ``P``, ``Q``: the KL divergence of the two
            distributions conditioned on the shared support (always >= 0). Mass outside it is
            reported in the diagnostics, not in the value.
        ``"omit"``
            Eq. 14 read literally: ``p`` and ``q`` are normalised over *all* their bins and the
            terms of bins empty in either histogram are left out of the sum. Trial mass
            spilling into bins the reference never visits raises the value (by up to
            ``-ln`` of the trial's kept mass); reference mass the trial misses lowers it, and
            the value can be negative. This is the convention that reproduces the shared
            data's noise calibration (KL(s1 || s1 + noise) = 0.18 at 0.10 Angstrom, where
            ``"drop"`` gives 0.16).

            Why it can be negative: with ``P`` and ``Q`` the reference and trial mass in the
            kept bins, the log-sum inequality gives ``value >= P ln(P / Q)``, which is >= 0
            when ``P = 1`` (no reference mass dropped) and can be < 0 only when ``P < Q``,
            i.e. when the trial misses reference mass. A negative value is therefore an
            artefact of the dropped reference mass, never a better-than-perfect match; see
            :func:`unreliable_reasons`.
        ``"epsilon"``
            ``pseudocount`` is added to every bin of both histograms before normalising over
            all bins; reference bins the trial never visits are penalised, not ignored.

        ``"drop"`` and ``"omit"`` agree when both histograms visit the same bins.
    pseudocount : float, default 0.5
        Count added per bin with ``empty="epsilon"`` (0.5 is the Krichevsky-Trofimov /
        Jeffreys choice); ignored otherwise.

    Returns
    -------
    KLResult
        ``value`` plus the bins kept and the probability mass of each distribution (each
        normalised over all of its bins) that lies in bins the other one left empty.
    """
    p, q = _check_counts(p_counts, q_counts)
    return _kl_from_counts(p, q, empty, pseudocount)


def mse_bin_energies(p_counts, q_counts, kT: float) -> dict:
    r"""Mean squared difference of bin energies, eq. 15.

    Each histogram is normalised over *all* of its own bins, ``p_i = P_i / sum_j P_j`` and
    ``q_i = Q_i / sum_j Q_j`` (no renormalisation over the shared bins, unlike
    :func:`kl_divergence` with ``empty="drop"``); bin energies are ``kT ln p_i`` and
    ``kT ln q_i``; the mean of their squared difference is taken over the ``m'`` bins with
    ``p_i q_i > 0``:

    .. math:: \mathrm{MSE} = \frac{1}{m'} \sum_{i: p_i q_i > 0} (k_B T \ln p_i - k_B T \ln q_i)^2

    Parameters
    ----------
    p_counts, q_counts : array_like
        Reference and trial histograms (counts or weights), same shape.
    kT : float
        Thermal energy in kJ/mol (e.g. :data:`KT_300K`).

    Returns
    -------
    dict
        ``value`` ((kJ/mol)^2; ``nan`` if no bin is shared), ``bins_used`` (m'),
        ``bins_total`` and ``kT``.
    """
    if not (kT > 0 and math.isfinite(kT)):
        raise ValueError(f"kT must be positive (kJ/mol), got {kT}")
    p, q = _check_counts(p_counts, q_counts)
    keep = (p > 0) & (q > 0)
    used = int(keep.sum())
    if used == 0:
        value = math.nan
    else:
        diff = kT * (np.log(p[keep] / p.sum()) - np.log(q[keep] / q.sum()))
        value = float(np.mean(diff * diff))
    return {"value": value, "bins_used": used, "bins_total": int(p.size), "kT": float(kT)}


def free_energy_surface(counts, kT: float) -> np.ndarray:
    """Free energy ``F = -kT ln p`` of a histogram, shifted to a minimum of 0.

    Parameters
    ----------
    counts : array_like
        Histogram counts or weights (any shape), not all zero.
    kT : float
        Thermal energy in kJ/mol.

    Returns
    -------
    numpy.ndarray
        Same shape as ``counts``, kJ/mol; ``inf`` in empty bins.
    """
    if not (kT > 0 and math.isfinite(kT)):
        raise ValueError(f"kT must be positive (kJ/mol), got {kT}")
    c = np.asarray(counts, dtype=np.float64)
    if not np.isfinite(c).all() or (c < 0).any() or c.sum() <= 0:
        raise ValueError("counts must be finite, non-negative and not all zero")
    free = np.full(c.shape, math.inf)
    visited = c > 0
    free[visited] = -kT * np.log(c[visited] / c.sum())
    free[visited] -= free[visited].min()
    return free


# --------------------------------------------------------------------------------------------
# noise calibration (Fig. 5)


@dataclass(frozen=True)
class NoiseCurve:
    """Metrics between a reference and the reference with Gaussian noise (see :func:`noise_curve`).

    Attributes
    ----------
    sigmas_angstrom : numpy.ndarray, shape (S,)
        Noise standard deviations per Cartesian coordinate, Angstrom.
    kl : numpy.ndarray, shape (seeds, S)
        KL(reference || reference + noise) per seed and sigma.
    mse : numpy.ndarray, shape (seeds, S)
        Eq. 15 MSE per seed and sigma, (kJ/mol)^2.
    dropped_reference_mass : numpy.ndarray, shape (seeds, S)
        Reference mass in bins the noisy histogram left empty.
    bins : int
        Bins per angle.
    kT : float
        kJ/mol used for the MSE.
    empty : str
        Empty-bin policy of the KL values (see :func:`kl_divergence`).
    n_frames : int
        Frames of the reference.
    rng_seed : int
        Root seed of the noise.
    """

    sigmas_angstrom: np.ndarray
    kl: np.ndarray
    mse: np.ndarray
    dropped_reference_mass: np.ndarray
    bins: int
    kT: float
    empty: str
    n_frames: int
    rng_seed: int

    @property
    def kl_mean(self) -> np.ndarray:
        """Mean KL over seeds, shape (S,)."""
        return self.kl.mean(axis=0)

    @property
    def kl_std(self) -> np.ndarray:
        """Standard deviation (ddof=0) of KL over seeds, shape (S,)."""
        return self.kl.std(axis=0)

    @property
    def mse_mean(self) -> np.ndarray:
        """Mean MSE over seeds, shape (S,)."""
        return self.mse.mean(axis=0)

    @property
    def mse_std(self) -> np.ndarray:
        """Standard deviation (ddof=0) of the MSE over seeds, shape (S,)."""
        return self.mse.std(axis=0)

    @property
    def seeds(self) -> int:
        """Number of noise realisations per sigma."""
        return int(self.kl.shape[0])

    def as_dict(self) -> dict:
        """JSON-serialisable summary: per-sigma means and standard deviations."""
        return {
            "sigmas_angstrom": self.sigmas_angstrom.tolist(),
            "kl_mean": self.kl_mean.tolist(),
            "kl_std": self.kl_std.tolist(),
            "mse_mean": self.mse_mean.tolist(),
            "mse_std": self.mse_std.tolist(),
            "seeds": self.seeds,
            "bins": self.bins,
            "kT": self.kT,
            "empty": self.empty,
            "n_frames": self.n_frames,
            "rng_seed": self.rng_seed,
        }


class _TorsionKernel:
    """Dihedrals from bond vectors, sharing bonds and cross products between quadruplets.

    Works on component-major arrays (``(beads or bonds, 3, frames)``) so that every operation
    runs on contiguous rows of frames. For phi/psi of capped alanine the two torsions share two
    of their three bonds and one of their two cross products.
    """

    def __init__(self, quads: np.ndarray):
        bonds: dict[tuple[int, int], int] = {}
        crosses: dict[tuple[int, int], int] = {}

        def index(table, key):
            return table.setdefault(key, len(table))

        self.terms = []
        for a, b, c, d in quads.tolist():
            b1, b2, b3 = index(bonds, (a, b)), index(bonds, (b, c)), index(bonds, (c, d))
            c1 = index(crosses, (b2, b3))
            c2 = index(crosses, (b1, b2))
            self.terms.append((b1, b2, c1, c2))
        self.bonds = np.array(list(bonds), dtype=np.intp).reshape(-1, 2)
        self.crosses = list(crosses)
        self.n_beads = int(quads.max()) + 1

    def bond_vectors(self, x: np.ndarray) -> np.ndarray:
        """Bond vectors ``(n_bonds, 3, M)`` of component-major bead arrays ``(n, 3, M)``."""
        return x[self.bonds[:, 1]] - x[self.bonds[:, 0]]

    def angles(self, b: np.ndarray) -> np.ndarray:
        """Dihedrals ``(k, M)`` in [-pi, pi) from bond vectors ``(n_bonds, 3, M)``."""
        cross = []
        for u, v in self.crosses:
            (ux, uy, uz), (vx, vy, vz) = b[u], b[v]
            cross.append((uy * vz - uz * vy, uz * vx - ux * vz, ux * vy - uy * vx))
        out = np.empty((len(self.terms), b.shape[-1]))
        for t, (b1, b2, c1, c2) in enumerate(self.terms):
            p, m, n, r = b[b1], b[b2], cross[c1], cross[c2]
            y = (p[0] * n[0] + p[1] * n[1] + p[2] * n[2]) * np.sqrt(
                m[0] * m[0] + m[1] * m[1] + m[2] * m[2])
            np.arctan2(y, n[0] * r[0] + n[1] * r[1] + n[2] * r[2], out=out[t])
        out[out >= math.pi] -= _TWO_PI
        return out


def _noise_trial(kernel, ref_bonds, sigmas_nm, p_counts, bins, kT, empty, seed_seq, chunk):
    """Metrics for every sigma from one noise realisation (common random numbers)."""
    rng = np.random.default_rng(seed_seq)
    n_frames = ref_bonds.shape[-1]
    # Per-bead noise, component-major like ref_bonds; bond noise is its difference.
    noise_bonds = kernel.bond_vectors(rng.standard_normal((kernel.n_beads, 3, n_frames)))
    n_sigmas, n_cells = len(sigmas_nm), bins * bins
    offsets = (np.arange(n_sigmas) * n_cells)[:, None]
    counts = np.zeros(n_sigmas * n_cells, dtype=np.int64)
    for start in range(0, n_frames, chunk):  # cache-sized blocks; all sigmas per block
        ref = ref_bonds[..., start:start + chunk]
        dz = noise_bonds[..., start:start + chunk]
        flat = np.empty((n_sigmas, ref.shape[-1]), dtype=np.intp)
        for s, sigma in enumerate(sigmas_nm):
            angle = kernel.angles(ref + sigma * dz)
            flat[s] = _angle_bins(angle[0], bins) * bins + _angle_bins(angle[1], bins)
        counts += np.bincount((flat + offsets).ravel(), minlength=n_sigmas * n_cells)
    counts = counts.reshape(n_sigmas, bins, bins).astype(np.float64)
    kl = np.empty(n_sigmas)
    mse = np.empty(n_sigmas)
    dropped = np.empty(n_sigmas)
    for s in range(n_sigmas):
        result = _kl_from_counts(p_counts, counts[s], empty, 0.5)
        kl[s], dropped[s] = result.value, result.dropped_reference_mass
        mse[s] = mse_bin_energies(p_counts, counts[s], kT)["value"]
    return kl, mse, dropped


def noise_curve(
    reference_positions,
    quadruplets_phi_psi=ALANINE_CG_PHI_PSI,
    sigmas_angstrom=np.arange(0.0, 0.301, 0.01),
    seeds: int = 50,
    rng_seed: int = 0,
    bins: int = 60,
    kT: float = KT_300K,
    empty: str = "omit",
    chunk_frames: int = 16384,
) -> NoiseCurve:
    """KL and MSE between a reference and the reference with Cartesian Gaussian noise (Fig. 5).

    For each realisation (seed) and each sigma, ``N(0, sigma^2)`` noise is added independently
    to every Cartesian coordinate of every CG bead of every frame; phi and psi are recomputed
    and histogrammed, and compared with the noiseless reference histogram by
    :func:`kl_divergence` (reference first) and :func:`mse_bin_energies`.

    Parameters
    ----------
    reference_positions : array_like, shape (M, n, 3)
        CG bead coordinates of the reference, **nm**.
    quadruplets_phi_psi : array_like of int, shape (2, 4)
        Bead quadruplets of the two histogrammed dihedrals (default: capped alanine's 6-bead
        mapping, :data:`ALANINE_CG_PHI_PSI`).
    sigmas_angstrom : array_like, shape (S,)
        Noise standard deviations in **Angstrom**, non-negative and strictly increasing
        (default 0, 0.01, ..., 0.30 as in the paper). Converted to nm internally.
    seeds : int, default 50
        Noise realisations per sigma (the paper uses 50; a few suffice for quick checks).
    rng_seed : int, default 0
        Root seed. Realisation ``i`` draws from ``numpy.random.SeedSequence(rng_seed).spawn(
        seeds)[i]``, which does not depend on ``seeds``: results are bit-identical for a
        given ``rng_seed``.
    bins : int, default 60
        Bins per angle.
    kT : float, default :data:`KT_300K`
        Thermal energy (kJ/mol) for the MSE bin energies; pass the reference's temperature.
    empty : {"drop", "omit", "epsilon"}, default "omit"
        Empty-bin policy of :func:`kl_divergence`. Calibrate a CG run with the same policy
        (``"omit"`` reproduces the shared data's README calibration numbers).
    chunk_frames : int, default 16384
        Frames per block (keeps the temporaries in cache).

    Returns
    -------
    NoiseCurve

    Notes
    -----
    *Only the beads in the quadruplets receive noise*: noise on other beads cannot change the
    dihedrals, so the metrics have exactly the distribution of the paper's noise on all CG
    beads, at a fraction of the cost. The noisy bond vectors are formed directly as
    ``b_ref + sigma (z_j - z_i)``.

    *Common random numbers*: within one realisation the same standard-normal draw ``z`` is
    scaled to every sigma. Each sigma's noise is exactly ``N(0, sigma^2)`` per coordinate, so
    the per-sigma mean and spread over realisations are those of independent draws, while
    each realisation's curve is smooth in sigma and the random numbers are drawn once per
    realisation instead of once per (realisation, sigma).
    """
    pos = _check_positions(reference_positions)
    quads = _check_quadruplets(quadruplets_phi_psi, pos.shape[1])
    if quads.shape[0] != 2:
        raise ValueError(f"need exactly two quadruplets (phi, psi), got {quads.shape[0]}")
    sigmas = np.asarray(sigmas_angstrom, dtype=np.float64).reshape(-1)
    if sigmas.size == 0 or not np.isfinite(sigmas).all() or (sigmas < 0).any():
        raise ValueError("sigmas_angstrom must be non-empty, finite and non-negative")
    if (np.diff(sigmas) <= 0).any():
        raise ValueError("sigmas_angstrom must be strictly increasing")
    for name, value in (("seeds", seeds), ("chunk_frames", chunk_frames)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if not (kT > 0 and math.isfinite(kT)):
        raise ValueError(f"kT must be positive (kJ/mol), got {kT}")
    if empty not in _EMPTY_MODES:
        raise ValueError(f"empty must be one of {_EMPTY_MODES}, got {empty!r}")
    bins = _check_bins(bins)

    used, local = np.unique(quads, return_inverse=True)
    kernel = _TorsionKernel(local.reshape(quads.shape))
    beads = np.ascontiguousarray(np.transpose(pos[:, used], (1, 2, 0)))
    if not np.isfinite(beads).all():
        raise ValueError("reference_positions must be finite")
    ref_bonds = kernel.bond_vectors(beads)  # (n_bonds, 3, M)
    ref_angles = kernel.angles(ref_bonds)
    p_counts = _histogram2d_unchecked(ref_angles[0], ref_angles[1], bins).astype(np.float64)

    sigmas_nm = sigmas * _ANGSTROM_TO_NM
    children = np.random.SeedSequence(rng_seed).spawn(int(seeds))

    results = [
        _noise_trial(kernel, ref_bonds, sigmas_nm, p_counts, bins, kT, empty, child,
                     int(chunk_frames))
        for child in children
    ]
    kl, mse, dropped = (np.array([r[i] for r in results]) for i in range(3))
    return NoiseCurve(
        sigmas_angstrom=sigmas, kl=kl, mse=mse, dropped_reference_mass=dropped, bins=bins,
        kT=float(kT), empty=empty, n_frames=int(pos.shape[0]), rng_seed=int(rng_seed),
    )


@dataclass(frozen=True)
class NoiseEquivalentSigma:
    """The noise level whose mean metric equals a given value (see :func:`noise_equivalent_sigma`).

    Attributes
    ----------
    sigma_angstrom : float
        Noise-equivalent sigma, Angstrom (the largest sigma of the curve if ``beyond_range``).
    beyond_range : bool
        The value exceeds the curve's largest mean; ``sigma_angstrom`` is then a lower bound.
    value : float
        The metric value that was matched.
    metric : str
        ``"kl"`` or ``"mse"``.
    """

    sigma_angstrom: float
    beyond_range: bool
    value: float
    metric: str

    def __float__(self) -> float:
        return float(self.sigma_angstrom)

    def as_dict(self) -> dict:
        """Plain dict (JSON-serialisable) of the fields."""
        return asdict(self)


def noise_equivalent_sigma(kl_value, curve: NoiseCurve, metric: str = "kl") -> NoiseEquivalentSigma:
    """The sigma (Angstrom) at which the curve's mean metric equals ``kl_value``.

    The mean curve is made monotone (running maximum over increasing sigma, which removes
    sampling wiggles at small sigma) and inverted by linear interpolation; on a flat stretch
    the smallest sigma reaching the value is returned.

    Parameters
    ----------
    kl_value : float or KLResult or dict
        The metric of the run to calibrate, e.g. ``kl_divergence(reference, cg)``; a
        :class:`KLResult` is checked to use the curve's empty-bin policy. For
        ``metric="mse"`` pass the MSE (a :func:`mse_bin_energies` dict is accepted).
    curve : NoiseCurve
        From :func:`noise_curve` on the same reference, with the same bins and kT.
    metric : {"kl", "mse"}, default "kl"
        Which mean curve to invert.

    Returns
    -------
    NoiseEquivalentSigma
        ``sigma_angstrom`` is 0 if the value is at or below the curve at its first sigma;
        ``beyond_range`` is set (and the largest sigma returned) if it is above the whole curve.
    """
    if metric not in ("kl", "mse"):
        raise ValueError(f'metric must be "kl" or "mse", got {metric!r}')
    if isinstance(kl_value, KLResult):
        if metric != "kl":
            raise ValueError("a KLResult was given for metric='mse'")
        if kl_value.empty != curve.empty:
            raise ValueError(
                f"the KL value uses empty={kl_value.empty!r} but the noise curve "
                f"empty={curve.empty!r}; compute both with the same policy"
            )
    elif isinstance(kl_value, dict):
        kl_value = kl_value["value"]
    value = float(kl_value)
    if not math.isfinite(value):
        raise ValueError(f"cannot calibrate a non-finite metric value ({value})")
    mean = curve.kl_mean if metric == "kl" else curve.mse_mean
    sigmas = np.asarray(curve.sigmas_angstrom, dtype=np.float64)
    y = np.maximum.accumulate(np.asarray(mean, dtype=np.float64))
    if value <= y[0]:
        return NoiseEquivalentSigma(0.0, False, value, metric)
    if value > y[-1]:
        return NoiseEquivalentSigma(float(sigmas[-1]), True, value, metric)
    j = int(np.argmax(y >= value))  # first sigma reaching the value; j >= 1 here
    fraction = (value - y[j - 1]) / (y[j] - y[j - 1])
    sigma = sigmas[j - 1] + fraction * (sigmas[j] - sigmas[j - 1])
    return NoiseEquivalentSigma(float(sigma), False, value, metric)


#: Above this fraction of the reference probability in bins the trial run never visits, KL and
#: MSE (which sum over shared bins) cannot see what the run misses: sigma is unreliable.
MAX_DROPPED_REFERENCE_MASS = 0.05


def unreliable_reasons(kl, max_dropped_reference_mass: float = MAX_DROPPED_REFERENCE_MASS) -> list:
    """Why a noise-equivalent sigma calibrated from ``kl`` cannot be trusted; ``[]`` if it can.

    KL (eq. 14 with empty bins left out) and MSE (eq. 15) only sum over bins both runs visit,
    so a CG run that never reaches a reference state is not penalised for it: its metrics and
    sigma can look perfect. Reported:

    - the reference probability in bins the run never visits
      (``kl.dropped_reference_mass``) exceeds ``max_dropped_reference_mass``;
    - KL < 0, which a divergence cannot be: with ``empty="omit"`` it happens only when the run
      misses reference mass (see :func:`kl_divergence`), so the value is an artefact;
    - KL is not finite (the two histograms share no bin).

    Parameters
    ----------
    kl : KLResult
        From :func:`kl_divergence` of the reference (first) and the run.
    max_dropped_reference_mass : float, default :data:`MAX_DROPPED_REFERENCE_MASS` (0.05)
        Largest acceptable fraction of the reference probability in bins the run never visits.

    Returns
    -------
    list of str
        One sentence per problem, e.g. ``"the CG run misses 64% of the reference probability
        mass (limit 5%) ..."``; empty when the sigma is reliable.
    """
    if not isinstance(kl, KLResult):
        raise TypeError(f"kl must be a KLResult (from kl_divergence), got {type(kl).__name__}")
    limit = float(max_dropped_reference_mass)
    if not 0.0 <= limit <= 1.0:
        raise ValueError(f"max_dropped_reference_mass must be in [0, 1], got {limit}")
    reasons = []
    if not math.isfinite(kl.value):
        reasons.append(f"KL is {kl.value}: the CG run and the reference share no histogram bin")
    if kl.dropped_reference_mass > limit:
        reasons.append(
            f"the CG run misses {kl.dropped_reference_mass:.0%} of the reference probability "
            f"mass (limit {limit:.0%}): it never visits bins that hold it, and KL and MSE sum "
            "only over bins both runs visit, so they cannot see the states it misses")
    if kl.value < 0:
        reasons.append(
            f"KL = {kl.value:.3g} < 0, which a divergence cannot be: eq. 14 with empty bins "
            "left out goes negative only when the CG run misses reference mass "
            f"({kl.dropped_reference_mass:.1%} here), so the value is that artefact, not a "
            "better-than-perfect match")
    return reasons
