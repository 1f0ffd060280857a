"""Free-energy comparison of CG protein runs with a reference on TICA coordinates.

The CGSchNet paper's protein protocol (section IV.B, Fig. 7): TICA is fitted to pairwise
C-alpha (bead) distances of the *reference* only; the reference and the CG run are projected on
its first two components and compared as 2D free-energy surfaces. We add the same numbers the
alanine protocol has: KL and MSE of bin energies (eqs. 14-15) on a shared grid, and a
noise-equivalent sigma from the reference with Gaussian noise on its Cartesian coordinates,
projected through the same TICA model.
"""
from __future__ import annotations

import dataclasses
import numpy as np

from .free_energy import NoiseCurve, kl_divergence, mse_bin_energies
from .tica import TICA, ca_distance_features

__all__ = ["TICAFreeEnergy", "tica_free_energy", "tica_noise_curve", "compare"]


@dataclasses.dataclass(frozen=True)
class TICAFreeEnergy:
    """A TICA model of the reference and the histogram grid every run is compared on.

    Attributes
    ----------
    tica : TICA
        Fitted to the reference's bead distances (lag in reference frames), ``dim=2``.
    pairs : numpy.ndarray (k, 2)
        Bead pairs whose distances are the features.
    edges : tuple of two numpy.ndarray (bins + 1,)
        Histogram edges on TIC 1 and TIC 2: the reference's range padded by ``margin``.
    reference_counts : numpy.ndarray (bins, bins)
    """

    tica: TICA
    pairs: np.ndarray
    edges: tuple
    reference_counts: np.ndarray

    def project(self, positions) -> np.ndarray:
        """(frames, beads, 3) nm -> (frames, 2) TICA coordinates (in chunks, to bound memory)."""
        x = np.asarray(positions, dtype=np.float64)
        if x.ndim != 3 or x.shape[2] != 3:
            raise ValueError(f"positions must be (frames, beads, 3), got {x.shape}")
        if len(x) and self.pairs.size and x.shape[1] <= self.pairs.max():
            raise ValueError(f"positions have {x.shape[1]} beads; the TICA model was fitted to "
                             f"{self.pairs.max() + 1} or more")
        step = max(1, 2_000_000 // max(len(self.pairs), 1))
        chunks = [self.tica.transform(ca_distance_features(x[i:i + step], self.pairs))
                  for i in range(0, len(x), step)]
        return np.concatenate(chunks) if chunks else np.zeros((0, 2))

    def histogram(self, projection: np.ndarray) -> tuple[np.ndarray, float]:
        """Counts on the shared grid and the fraction of frames outside it."""
        counts, _, _ = np.histogram2d(projection[:, 0], projection[:, 1], bins=self.edges)
        outside = 1.0 - counts.sum() / max(len(projection), 1)
        return counts, float(outside)


def _pairs(n_beads: int, max_pairs: int, min_separation: int) -> np.ndarray:
    i, j = np.triu_indices(n_beads, k=min_separation)
    pairs = np.stack([i, j], axis=1)
    if len(pairs) > max_pairs:  # evenly thinned, deterministic
        pairs = pairs[np.linspace(0, len(pairs) - 1, max_pairs).astype(int)]
    return pairs


def tica_free_energy(reference, *, lagtime: int = 10, bins: int = 60, margin: float = 0.1,
                     max_frames: int = 50_000, max_pairs: int = 2000,
                     min_separation: int = 3) -> TICAFreeEnergy:
    """Fit the comparison frame to a reference trajectory.

    Parameters
    ----------
    reference : array_like (M, n, 3)
        Reference bead coordinates (nm), one trajectory in time order.
    lagtime : int, default 10
        TICA lag in frames of the (strided) reference.
    bins : int, default 60
        Bins per TIC axis (the alanine protocol's 60).
    margin : float, default 0.1
        The grid spans the reference's TIC range widened by this fraction on each side, so
        a CG run slightly outside is still histogrammed.
    max_frames : int, default 50,000
        The reference is strided to at most this many frames (memory of the features).
    max_pairs, min_separation : int
        Features: distances of bead pairs ``j - i >= min_separation`` (neighbours along the
        chain carry bonds, not conformations), evenly thinned to ``max_pairs``.
    """
    x = np.asarray(reference, dtype=np.float64)
    if x.ndim != 3 or x.shape[2] != 3:
        raise ValueError(f"reference must be (frames, beads, 3), got {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("reference positions contain NaN or infinite values")
    if x.shape[1] < min_separation + 2:
        raise ValueError(f"TICA on bead distances needs at least {min_separation + 2} beads, "
                         f"got {x.shape[1]}")
    stride = max(1, -(-len(x) // max_frames))
    x = x[::stride]
    if len(x) <= 2 * lagtime:
        raise ValueError(f"the reference has {len(x)} frames (stride {stride}); TICA with lag "
                         f"{lagtime} needs more")
    pairs = _pairs(x.shape[1], max_pairs, min_separation)
    features = ca_distance_features(x, pairs)
    tica = TICA(lagtime=lagtime, dim=2).fit(features)
    if tica.output_dim < 2:
        raise ValueError("the reference's bead distances have fewer than 2 independent "
                         "components")
    y = tica.transform(features)
    lo, hi = y.min(axis=0), y.max(axis=0)
    pad = margin * np.maximum(hi - lo, 1e-12)
    edges = tuple(np.linspace(lo[d] - pad[d], hi[d] + pad[d], bins + 1) for d in range(2))
    frame = TICAFreeEnergy(tica, pairs, edges, np.zeros((bins, bins)))
    counts, _ = frame.histogram(y)
    return dataclasses.replace(frame, reference_counts=counts)


def tica_noise_curve(frame: TICAFreeEnergy, reference, *, kT: float,
                     sigmas_angstrom=np.arange(0.0, 0.301, 0.025), seeds: int = 5,
                     rng_seed: int = 0, max_frames: int = 20_000, empty: str = "omit"
                     ) -> NoiseCurve:
    """KL/MSE of the reference against itself with N(0, sigma^2) Cartesian noise, on TICA.

    The same calibration as :func:`~openmm_geom.analysis.noise_curve` (Fig. 5), with the
    reference's TIC histogram in place of phi/psi; the reference is strided to ``max_frames``
    for the noisy copies (the clean histogram is the frame's full one).
    """
    x = np.asarray(reference, dtype=np.float64)
    x = x[::max(1, -(-len(x) // max_frames))]
    sigmas = np.asarray(sigmas_angstrom, dtype=np.float64)
    kl = np.zeros((seeds, len(sigmas)))
    mse = np.zeros_like(kl)
    dropped = np.zeros_like(kl)
    for s, sequence in enumerate(np.random.SeedSequence(rng_seed).spawn(seeds)):
        rng = np.random.default_rng(sequence)
        for k, sigma in enumerate(sigmas):
            noisy = x + rng.normal(0.0, sigma / 10.0, x.shape)  # Angstrom -> nm
            counts, _ = frame.histogram(frame.project(noisy))
            result = kl_divergence(frame.reference_counts, counts, empty=empty)
            kl[s, k] = result.value
            dropped[s, k] = result.dropped_reference_mass
            mse[s, k] = mse_bin_energies(frame.reference_counts, counts, kT)["value"]
    return NoiseCurve(sigmas, kl, mse, dropped, len(frame.edges[0]) - 1, float(kT), empty,
                      int(len(x)), int(rng_seed))


def compare(frame: TICAFreeEnergy, positions, *, kT: float) -> dict:
    """KL, MSE and out-of-grid fraction of a run (frames, beads, 3) against the reference."""
    projection = frame.project(positions)
    counts, outside = frame.histogram(projection)
    if counts.sum() == 0:
        return {"projection": projection, "counts": counts, "outside_fraction": outside,
                "kl": None, "mse": None}
    return {"projection": projection, "counts": counts, "outside_fraction": outside,
            "kl": kl_divergence(frame.reference_counts, counts),
            "mse": mse_bin_energies(frame.reference_counts, counts, kT)["value"]}
