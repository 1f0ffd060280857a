"""Time-lagged independent component analysis (TICA) and distance features, in numpy.

TICA finds the linear combinations of (mean-free) features that are maximally autocorrelated
at a lag time tau: the generalized eigenproblem ``C(tau) r = lambda C(0) r`` with the
symmetrised (reversible) covariance estimators. The estimator follows deeptime's
``deeptime.decomposition.TICA`` (reversible, no Bessel correction), which the tests use as an
oracle; the chignolin analysis of the CGSchNet paper (section IV.B) projects on the first two
TICs of C-alpha distances, see :func:`ca_distance_features`.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import numpy as np

__all__ = ["TICA", "ca_distance_features"]

ArrayOrList = Union[np.ndarray, Sequence[np.ndarray]]


def _as_trajectories(data: ArrayOrList) -> list[np.ndarray]:
    """A list of float64 (T_i, d) arrays from one array or a list of arrays."""
    if isinstance(data, np.ndarray):
        trajectories = [data]
    else:
        trajectories = list(data)
        if not trajectories:
            raise ValueError("no trajectories given")
    out = []
    for i, traj in enumerate(trajectories):
        x = np.asarray(traj, dtype=np.float64)
        if x.ndim == 1:
            x = x[:, None]
        if x.ndim != 2:
            raise ValueError(f"trajectory {i} must have shape (frames, features), got {x.shape}")
        if not np.isfinite(x).all():
            raise ValueError(f"trajectory {i} contains non-finite values")
        out.append(x)
    dims = {x.shape[1] for x in out}
    if len(dims) != 1:
        raise ValueError(f"trajectories have different numbers of features: {sorted(dims)}")
    return out


class TICA:
    """Time-lagged independent component analysis.

    Parameters
    ----------
    lagtime : int
        Lag time tau in frames (>= 1).
    dim : int or None, default None
        Number of components kept by :meth:`transform` (all available if None).
    epsilon : float, default 1e-10
        Regularisation: eigenvalues of C(0) below ``epsilon`` times its largest eigenvalue are
        discarded before whitening, so linearly dependent or constant features are handled
        (the number of independent components is then ``rank_``). Note deeptime's ``epsilon``
        is an absolute cutoff (1e-6 by default); this one is relative, hence unit-free.
    scaling : {"kinetic_map", None}, default "kinetic_map"
        ``"kinetic_map"`` multiplies each component by its eigenvalue (the default of deeptime
        and PyEMMA, which the paper used), so Euclidean distances in TIC space approximate
        kinetic distances; None leaves the components with unit variance under C(0).

    Attributes
    ----------
    mean_ : numpy.ndarray, shape (d,)
        Symmetrised mean: the average of the instantaneous and the time-lagged frames of all
        lagged pairs.
    cov_00_, cov_0t_ : numpy.ndarray, shape (d, d)
        Symmetrised covariance and time-lagged covariance of the mean-free features.
    eigenvalues_ : numpy.ndarray, shape (rank,)
        Generalized eigenvalues, sorted by decreasing absolute value.
    eigenvectors_ : numpy.ndarray, shape (d, rank)
        Generalized eigenvectors (columns), normalised to ``r^T C(0) r = 1``; the sign is
        chosen so that each vector's largest-magnitude entry is positive.
    rank_ : int
        Numerical rank of C(0) after regularisation.
    n_pairs_ : int
        Number of time-lagged pairs used (none crosses a trajectory boundary).
    """

    def __init__(self, lagtime: int, dim: Optional[int] = None, epsilon: float = 1e-10,
                 scaling: Optional[str] = "kinetic_map"):
        if isinstance(lagtime, bool) or not isinstance(lagtime, (int, np.integer)) or lagtime < 1:
            raise ValueError(f"lagtime must be a positive integer (frames), got {lagtime!r}")
        if dim is not None and (not isinstance(dim, (int, np.integer)) or dim < 1):
            raise ValueError(f"dim must be a positive integer or None, got {dim!r}")
        if scaling not in ("kinetic_map", None):
            raise ValueError(f'scaling must be "kinetic_map" or None, got {scaling!r}')
        if not (0 <= epsilon < 1):
            raise ValueError(f"epsilon must be in [0, 1), got {epsilon}")
        self.lagtime = int(lagtime)
        self.dim = None if dim is None else int(dim)
        self.epsilon = float(epsilon)
        self.scaling = scaling

    # ------------------------------------------------------------------ estimation

    def fit(self, data: ArrayOrList) -> "TICA":
        """Estimate covariances and solve the TICA eigenproblem.

        Parameters
        ----------
        data : numpy.ndarray (T, d) or list of them
            Feature time series. With a list, each trajectory contributes its own lagged pairs
            ``(x_t, x_{t+tau})``; no pair spans two trajectories. Trajectories not longer than
            the lag time contribute nothing.

        Returns
        -------
        TICA
            ``self``.
        """
        trajectories = _as_trajectories(data)
        tau = self.lagtime
        d = trajectories[0].shape[1]
        n_pairs = 0
        sum_0 = np.zeros(d)
        sum_t = np.zeros(d)
        for x in trajectories:
            if len(x) > tau:
                n_pairs += len(x) - tau
                sum_0 += x[:-tau].sum(axis=0)
                sum_t += x[tau:].sum(axis=0)
        if n_pairs == 0:
            raise ValueError(f"no trajectory is longer than the lag time ({tau} frames)")
        mean = (sum_0 + sum_t) / (2 * n_pairs)
        c00 = np.zeros((d, d))
        c0t = np.zeros((d, d))
        for x in trajectories:
            if len(x) > tau:
                x0 = x[:-tau] - mean
                xt = x[tau:] - mean
                c00 += x0.T @ x0 + xt.T @ xt
                c0t += x0.T @ xt
        c00 /= 2 * n_pairs
        c0t = (c0t + c0t.T) / (2 * n_pairs)
        self.mean_, self.cov_00_, self.cov_0t_, self.n_pairs_ = mean, c00, c0t, n_pairs
        self._solve()
        return self

    def _solve(self) -> None:
        """Whiten with the regularised C(0) and diagonalise the whitened C(tau)."""
        s, v = np.linalg.eigh(self.cov_00_)
        if s[-1] <= 0:
            raise ValueError("the features have zero variance")
        keep = s > self.epsilon * s[-1]
        whiten = v[:, keep] / np.sqrt(s[keep])  # L with L^T C0 L = I
        ct_white = whiten.T @ self.cov_0t_ @ whiten
        eigenvalues, r = np.linalg.eigh((ct_white + ct_white.T) / 2)
        order = np.argsort(-np.abs(eigenvalues), kind="stable")
        eigenvectors = whiten @ r[:, order]
        # Deterministic signs: the largest-magnitude entry of each vector is positive.
        pivot = np.abs(eigenvectors).argmax(axis=0)
        eigenvectors *= np.sign(eigenvectors[pivot, np.arange(eigenvectors.shape[1])])
        self.eigenvalues_ = eigenvalues[order]
        self.eigenvectors_ = eigenvectors
        self.rank_ = int(keep.sum())

    # ------------------------------------------------------------------ results

    def _check_fitted(self) -> None:
        if not hasattr(self, "eigenvectors_"):
            raise RuntimeError("TICA is not fitted; call fit() first")

    @property
    def output_dim(self) -> int:
        """Components returned by :meth:`transform`: ``min(dim, rank_)``."""
        self._check_fitted()
        return self.rank_ if self.dim is None else min(self.dim, self.rank_)

    def timescales(self) -> np.ndarray:
        """Implied timescales ``-tau / ln|lambda|`` in frames (inf for ``|lambda| >= 1``)."""
        self._check_fitted()
        magnitude = np.abs(self.eigenvalues_)
        with np.errstate(divide="ignore"):
            return np.where(magnitude < 1, -self.lagtime / np.log(magnitude), math.inf)

    def transform(self, data: ArrayOrList) -> Union[np.ndarray, list[np.ndarray]]:
        """Project features on the leading ``output_dim`` independent components.

        Parameters
        ----------
        data : numpy.ndarray (T, d) or list of them

        Returns
        -------
        numpy.ndarray (T, output_dim) or list of them
            Same container type as the input.
        """
        self._check_fitted()
        k = self.output_dim
        vectors = self.eigenvectors_[:, :k]
        if self.scaling == "kinetic_map":
            vectors = vectors * self.eigenvalues_[:k]
        trajectories = _as_trajectories(data)
        if trajectories[0].shape[1] != self.mean_.shape[0]:
            raise ValueError(
                f"fitted on {self.mean_.shape[0]} features, got {trajectories[0].shape[1]}"
            )
        out = [(x - self.mean_) @ vectors for x in trajectories]
        return out[0] if isinstance(data, np.ndarray) else out

    def fit_transform(self, data: ArrayOrList) -> Union[np.ndarray, list[np.ndarray]]:
        """:meth:`fit` then :meth:`transform` on the same data."""
        return self.fit(data).transform(data)


def ca_distance_features(positions, pairs=None) -> np.ndarray:
    """Pairwise bead distances as TICA features (e.g. the C-alpha beads of a CG protein).

    Parameters
    ----------
    positions : array_like, shape (M, n, 3) or (n, 3)
        Bead coordinates (nm).
    pairs : array_like of int, shape (k, 2), optional
        Bead pairs. Default: all ``n (n - 1) / 2`` pairs ``i < j`` in ``numpy.triu_indices``
        order, i.e. (0, 1), (0, 2), ..., (1, 2), ...

    Returns
    -------
    numpy.ndarray, shape (M, k)
        Distances in nm (float64).
    """
    pos = np.asarray(positions, dtype=np.float64)
    if pos.ndim == 2:
        pos = pos[None]
    if pos.ndim != 3 or pos.shape[-1] != 3:
        raise ValueError(f"positions must have shape (frames, beads, 3), got {pos.shape}")
    n = pos.shape[1]
    if pairs is None:
        i, j = np.triu_indices(n, k=1)
    else:
        index = np.asarray(pairs)
        if index.ndim != 2 or index.shape[1] != 2 or not np.issubdtype(index.dtype, np.integer):
            raise ValueError(f"pairs must be integers of shape (k, 2), got {index.shape}")
        if index.size and (index.min() < 0 or index.max() >= n):
            raise ValueError(f"pairs index beads outside 0..{n - 1}")
        i, j = index[:, 0], index[:, 1]
    return np.linalg.norm(pos[:, j] - pos[:, i], axis=-1)
