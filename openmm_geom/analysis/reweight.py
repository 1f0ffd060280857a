"""Reweighting biased runs to unbiased free-energy profiles.

A frame sampled under a bias ``V`` carries the weight ``exp(V/kT)`` (a static umbrella) or, in
well-tempered metadynamics, ``exp((V(s,t) - c(t))/kT)`` (Tiwary and Parrinello, J. Phys. Chem. B
119, 736, 2015), where ``c(t)`` is the time-dependent offset that makes the weights of
different times comparable. From weighted frames follow profiles ``F(s) = -kT ln P(s)`` along any
CVs (biased or not), free-energy differences between regions with block-bootstrap errors, and
the effective sample size that says how much the reweighting costs.

Typical use on the CSV log of a metadynamics run::

    from openmm_geom.analysis import reweight as R

    log = R.load_bias_log("bias.csv")
    w = R.metad_weights(log.bias_kJmol, log.c_t_kJmol, 300.0)
    profile = R.reweighted_profile(log.cvs["phi"], w, bins=60, range=(-pi, pi),
                                   temperature=300.0, periodic=True)
    dF = R.free_energy_difference(log.cvs["phi"], w, 300.0, (-pi, 0), (0, pi))

Units: energies kJ/mol, temperatures K, ``k_B`` = :data:`openmm_geom.units.MOLAR_GAS_CONSTANT_KJ`.
Discard the first part of a metadynamics run (while ``c(t)`` is still changing fast) before
reweighting; these functions weight every frame they are given.
"""
from __future__ import annotations

import csv
import dataclasses
import math
import os
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..units import MOLAR_GAS_CONSTANT_KJ

__all__ = [
    "BiasLog",
    "Profile",
    "FreeEnergyDifference",
    "load_bias_log",
    "metad_weights",
    "umbrella_weights",
    "effective_sample_size",
    "reweighted_profile",
    "free_energy_difference",
    "count_transitions",
    "plot_profile",
]

REQUIRED_COLUMNS = ("step", "time_ps", "bias_kJmol", "c_t_kJmol")
Region = Union[Callable[[np.ndarray], np.ndarray], Tuple[float, float], Sequence[Tuple[float, float]]]


# --------------------------------------------------------------------------- bias log


@dataclasses.dataclass
class BiasLog:
    """The bias time series of a biased run.

    Attributes
    ----------
    step : numpy.ndarray (T,) int
    time_ps : numpy.ndarray (T,)
    cvs : dict name -> numpy.ndarray (T,)
        The CV columns, in file order.
    bias_kJmol : numpy.ndarray (T,)
        Bias potential at each frame, kJ/mol.
    c_t_kJmol : numpy.ndarray (T,)
        Metadynamics offset ``c(t)``, kJ/mol.
    path : pathlib.Path or None
    """

    step: np.ndarray
    time_ps: np.ndarray
    cvs: Dict[str, np.ndarray]
    bias_kJmol: np.ndarray
    c_t_kJmol: np.ndarray
    path: Optional[Path] = None

    @property
    def cv_names(self) -> List[str]:
        return list(self.cvs)

    @property
    def values(self) -> np.ndarray:
        """All CVs as one ``(T, d)`` array, columns in :attr:`cv_names` order."""
        if not self.cvs:
            return np.zeros((len(self.step), 0))
        return np.column_stack([self.cvs[name] for name in self.cvs])

    def __len__(self) -> int:
        return len(self.step)

    def weights(self, temperature: float, kind: str = "metad") -> np.ndarray:
        """Normalised frame weights: ``"metad"`` (uses c(t)) or ``"umbrella"`` (static bias)."""
        if kind == "metad":
            return metad_weights(self.bias_kJmol, self.c_t_kJmol, temperature)
        if kind == "umbrella":
            return umbrella_weights(self.bias_kJmol, temperature)
        raise ValueError(f"kind must be 'metad' or 'umbrella', got {kind!r}")


def _clean(name: str) -> str:
    return name.strip().strip('"').strip("'").strip()


def load_bias_log(path: Union[str, os.PathLike], *, partial_last_line: str = "error") -> BiasLog:
    """Read the bias CSV written by openmm-geom's metadynamics.

    The first non-empty line is the header (a leading ``#`` and quotes are ignored) with the
    columns ``step, time_ps, <cv names...>, bias_kJmol, c_t_kJmol``: every column that is not
    one of the four fixed ones is a CV. Further lines starting with ``#`` are comments.

    Parameters
    ----------
    path : path-like
    partial_last_line : {"error", "drop"}
        What to do with a last line that has too few fields (a run killed mid-write, or a
        file read while the run is still writing it).

    Returns
    -------
    BiasLog

    Raises
    ------
    FileNotFoundError
        No such file.
    ValueError
        Empty file, no data, missing or duplicated columns, a row with the wrong number of
        fields or a non-numeric value (the message names the line), non-increasing steps.
    """
    if partial_last_line not in ("error", "drop"):
        raise ValueError("partial_last_line must be 'error' or 'drop'")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"bias log not found: {path}")
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a text CSV file") from None
    lines = [(number, line) for number, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not lines:
        raise ValueError(f"{path}: empty bias log (no header)")
    header_number, header_line = lines[0]
    header = [_clean(c) for c in next(csv.reader([header_line.lstrip().lstrip("#")]))]
    if len(set(header)) != len(header):
        raise ValueError(f"{path}: duplicated column names in the header {header}")
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing} in the header {header}; a bias "
                         f"log has columns step, time_ps, <cv names...>, bias_kJmol, c_t_kJmol")
    rows = [(n, line) for n, line in lines[1:] if not line.lstrip().startswith("#")]
    data = np.empty((len(rows), len(header)))
    kept = 0
    for position, (number, line) in enumerate(rows):
        fields = line.split(",")
        if len(fields) != len(header):
            if position == len(rows) - 1 and len(fields) < len(header) and partial_last_line == "drop":
                break
            raise ValueError(f"{path}, line {number}: {len(fields)} fields, the header has "
                             f"{len(header)} (truncated or corrupt file?)")
        try:
            data[kept] = [float(f) for f in fields]
        except ValueError:
            raise ValueError(f"{path}, line {number}: non-numeric value in {line.strip()!r}") from None
        kept += 1
    data = data[:kept]
    if kept == 0:
        raise ValueError(f"{path}: the bias log has a header but no data rows")
    column = {name: data[:, i] for i, name in enumerate(header)}
    step = column["step"]
    if not np.all(np.isfinite(step)) or np.any(step != np.round(step)):
        raise ValueError(f"{path}: the step column must hold integers")
    if np.any(np.diff(step) <= 0):
        bad = int(np.argmax(np.diff(step) <= 0))
        raise ValueError(f"{path}: steps must increase (row {bad + 2} has step {int(step[bad + 1])} "
                         f"after {int(step[bad])}); concatenated or restarted runs?")
    cvs = {name: column[name] for name in header if name not in REQUIRED_COLUMNS}
    return BiasLog(step=step.astype(np.int64), time_ps=column["time_ps"], cvs=cvs,
                   bias_kJmol=column["bias_kJmol"], c_t_kJmol=column["c_t_kJmol"], path=path)


# --------------------------------------------------------------------------- weights


def _kT(temperature) -> float:
    try:
        import openmm.unit as unit

        if unit.is_quantity(temperature):
            temperature = temperature.value_in_unit(unit.kelvin)
    except ImportError:  # pragma: no cover - openmm is a dependency
        pass
    temperature = float(temperature)
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be a positive number of kelvin, got {temperature}")
    return MOLAR_GAS_CONSTANT_KJ * temperature


def _series(values, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional (one value per frame), got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.all(np.isfinite(array)):
        bad = int(np.argmin(np.isfinite(array)))
        raise ValueError(f"{name} is not finite at frame {bad} ({array[bad]})")
    return array


def _normalise_log(log_weights: np.ndarray) -> np.ndarray:
    """exp(log_w) / sum exp(log_w), without overflow (log-sum-exp)."""
    shifted = log_weights - log_weights.max()
    weights = np.exp(shifted)
    return weights / weights.sum()


def metad_weights(bias_kJmol, c_t_kJmol, temperature_K) -> np.ndarray:
    """Well-tempered metadynamics frame weights ``w ∝ exp((V(s_t, t) - c(t)) / kT)``.

    Parameters
    ----------
    bias_kJmol : array (T,)
        Bias at each frame's CVs when the frame was sampled, kJ/mol.
    c_t_kJmol : array (T,) or float
        The offset ``c(t)`` at each frame, kJ/mol.
    temperature_K : float or Quantity
        Simulation temperature (not the bias temperature).

    Returns
    -------
    numpy.ndarray (T,)
        Weights summing to 1, computed in log space (no overflow for biases of many kT).
    """
    bias = _series(bias_kJmol, "bias_kJmol")
    c_t = np.broadcast_to(np.asarray(c_t_kJmol, dtype=np.float64), bias.shape)
    c_t = _series(c_t, "c_t_kJmol")
    return _normalise_log((bias - c_t) / _kT(temperature_K))


def umbrella_weights(bias_kJmol, temperature) -> np.ndarray:
    """Frame weights ``w ∝ exp(V / kT)`` for a static bias ``V`` (umbrella, restraint).

    Returns
    -------
    numpy.ndarray (T,)
        Weights summing to 1.
    """
    return _normalise_log(_series(bias_kJmol, "bias_kJmol") / _kT(temperature))


def effective_sample_size(weights) -> float:
    """Kish's effective sample size ``(sum w)^2 / sum w^2`` (T for equal weights, 1 for one)."""
    w = _weights(weights, None)
    return float(w.sum() ** 2 / np.square(w).sum())


def _weights(weights, n: Optional[int]) -> np.ndarray:
    if weights is None:
        if n is None:
            raise ValueError("weights are required")
        return np.full(n, 1.0 / n)
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1:
        raise ValueError(f"weights must be one-dimensional, got shape {w.shape}")
    if n is not None and w.shape[0] != n:
        raise ValueError(f"{w.shape[0]} weights for {n} frames")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError("weights must be finite and non-negative")
    if w.sum() <= 0:
        raise ValueError("weights sum to zero")
    return w


# --------------------------------------------------------------------------- profiles


@dataclasses.dataclass
class Profile:
    """A reweighted free-energy profile on a regular grid (1D or 2D).

    Attributes
    ----------
    edges : tuple of numpy.ndarray
        Bin edges, one array (bins+1,) per dimension.
    centres : tuple of numpy.ndarray
        Bin centres, one array (bins,) per dimension.
    free_energy : numpy.ndarray (bins,) or (bins_x, bins_y)
        ``-kT ln P`` in kJ/mol, minimum 0; ``inf`` in bins no frame visited.
    probability : numpy.ndarray
        Reweighted probability per bin (sums to 1 over the grid).
    counts : numpy.ndarray of int
        Frames per bin (unweighted): how much data each free energy rests on.
    effective_sample_size : float
        Kish's ESS of the weights of the frames inside the grid.
    weight_outside : float
        Fraction of the total weight of frames outside ``range`` (non-periodic dimensions).
    kT : float
        kJ/mol.
    periodic : tuple of bool
    """

    edges: Tuple[np.ndarray, ...]
    centres: Tuple[np.ndarray, ...]
    free_energy: np.ndarray
    probability: np.ndarray
    counts: np.ndarray
    effective_sample_size: float
    weight_outside: float
    kT: float
    periodic: Tuple[bool, ...]

    @property
    def ndim(self) -> int:
        return len(self.edges)


def _values(values) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2 or array.shape[0] == 0:
        raise ValueError(f"values must have shape (T,) or (T, d) with T > 0, got {np.shape(values)}")
    if not np.all(np.isfinite(array)):
        bad = int(np.argmin(np.all(np.isfinite(array), axis=1)))
        raise ValueError(f"values are not finite at frame {bad}")
    return array


def _per_dim(option, d: int, name: str) -> list:
    if isinstance(option, (bool, int, np.integer, np.bool_)) or option is None:
        return [option] * d
    option = list(option)
    if len(option) != d:
        raise ValueError(f"{name}: {len(option)} entries for {d} dimensions")
    return option


def _ranges(range_, d: int) -> list:
    if range_ is None:
        return [None] * d
    range_ = np.asarray(range_, dtype=np.float64)
    if range_.shape == (2,) and d == 1:
        return [tuple(range_)]
    if range_.shape != (d, 2):
        raise ValueError(f"range must be (lo, hi) for 1D values or one (lo, hi) per dimension; "
                         f"got shape {range_.shape} for {d} dimension(s)")
    return [tuple(r) for r in range_]


def reweighted_profile(values, weights=None, bins=50, range=None, temperature=300.0,
                       periodic=False) -> Profile:
    """Free-energy profile ``F = -kT ln P`` of weighted frames, in 1D or 2D.

    Parameters
    ----------
    values : array (T,) or (T, d), d = 1 or 2
        CV values per frame.
    weights : array (T,), optional
        Frame weights (e.g. from :func:`metad_weights`); need not be normalised. Default equal.
    bins : int or sequence of int
        Bins per dimension.
    range : (lo, hi) or sequence of (lo, hi), optional
        Grid extent per dimension. Default: the data's min/max; ``(-pi, pi)`` for periodic
        dimensions.
    temperature : float or Quantity
        Kelvin, for ``kT``.
    periodic : bool or sequence of bool
        Periodic dimensions (angles): values are wrapped into ``[lo, hi)`` before binning.
        Frames outside a non-periodic range are left out (see ``weight_outside``).

    Returns
    -------
    Profile
    """
    kT = _kT(temperature)
    x = _values(values)
    t, d = x.shape
    if d not in (1, 2):
        raise ValueError(f"profiles are 1D or 2D, got {d} CV columns")
    w = _weights(weights, t)
    bins_ = [int(b) for b in _per_dim(bins, d, "bins")]
    if any(b < 1 for b in bins_):
        raise ValueError(f"bins must be >= 1, got {bins_}")
    periodic_ = tuple(bool(p) for p in _per_dim(periodic, d, "periodic"))
    edges = []
    x = x.copy()
    for dim, (r, p) in enumerate(zip(_ranges(range, d), periodic_)):
        if r is None:
            r = (-math.pi, math.pi) if p else (float(x[:, dim].min()), float(x[:, dim].max()))
            if r[1] <= r[0]:
                r = (r[0] - 0.5, r[1] + 0.5)
        lo, hi = float(r[0]), float(r[1])
        if not hi > lo:
            raise ValueError(f"range: lo ({lo}) must be below hi ({hi})")
        if p:
            x[:, dim] = lo + np.mod(x[:, dim] - lo, hi - lo)
        edges.append(np.linspace(lo, hi, bins_[dim] + 1))
    weighted, _ = np.histogramdd(x, bins=edges, weights=w)
    counts, _ = np.histogramdd(x, bins=edges)
    inside = np.ones(t, dtype=bool)
    for dim, e in enumerate(edges):
        inside &= (x[:, dim] >= e[0]) & (x[:, dim] <= e[-1])
    if not inside.any():
        raise ValueError("no frame falls inside the histogram range")
    total = w.sum()
    w_in = w[inside]
    if not weighted.sum() > 0:
        raise ValueError("all frames inside the histogram range have zero weight")
    probability = weighted / weighted.sum()
    with np.errstate(divide="ignore"):
        free = -kT * np.log(probability)
    free -= free[np.isfinite(free)].min()
    return Profile(
        edges=tuple(edges),
        centres=tuple(0.5 * (e[1:] + e[:-1]) for e in edges),
        free_energy=free,
        probability=probability,
        counts=counts.astype(np.int64),
        effective_sample_size=float(w_in.sum() ** 2 / np.square(w_in).sum()),
        weight_outside=float(1.0 - w_in.sum() / total),
        kT=kT,
        periodic=periodic_,
    )


# --------------------------------------------------------------------------- ΔF


@dataclasses.dataclass
class FreeEnergyDifference:
    """``F_B - F_A = -kT ln(P_B / P_A)`` with its block-bootstrap error.

    Attributes
    ----------
    delta_f : float
        kJ/mol.
    error : float
        Standard deviation of the bootstrap estimates, kJ/mol.
    p_a, p_b : float
        Reweighted probabilities of the regions.
    n_a, n_b : int
        Frames in each region.
    n_blocks, n_bootstrap : int
    n_failed : int
        Bootstrap resamples without frames in A or B (left out of ``error``; if many fail,
        the error is not trustworthy: the run has too few transitions).
    samples : numpy.ndarray
        The finite bootstrap estimates, kJ/mol.
    """

    delta_f: float
    error: float
    p_a: float
    p_b: float
    n_a: int
    n_b: int
    n_blocks: int
    n_bootstrap: int
    n_failed: int
    samples: np.ndarray


def _region_mask(region: Region, x: np.ndarray, name: str) -> np.ndarray:
    if callable(region):
        mask = np.asarray(region(x[:, 0] if x.shape[1] == 1 else x))
        if mask.shape != (x.shape[0],):
            raise ValueError(f"region {name}: the callable must return one bool per frame, "
                             f"got shape {mask.shape}")
        return mask.astype(bool)
    bounds = np.asarray(region, dtype=np.float64)
    if bounds.shape == (2,):
        bounds = bounds[None, :]
    if bounds.shape != (x.shape[1], 2):
        raise ValueError(f"region {name}: give (lo, hi) per CV dimension ({x.shape[1]}) or a "
                         f"callable, got {region!r}")
    if np.any(bounds[:, 1] <= bounds[:, 0]):
        raise ValueError(f"region {name}: lo must be below hi, got {region!r}")
    return np.all((x >= bounds[:, 0]) & (x <= bounds[:, 1]), axis=1)


def free_energy_difference(values, weights, temperature, region_a: Region, region_b: Region, *,
                           n_blocks: int = 20, n_bootstrap: int = 200,
                           seed: Optional[int] = 0) -> FreeEnergyDifference:
    """``ΔF = F_B - F_A = -kT ln(P_B / P_A)`` from weighted frames, with a block-bootstrap error.

    Parameters
    ----------
    values : array (T,) or (T, d)
        CV values per frame, in time order.
    weights : array (T,) or None
        Frame weights (need not be normalised); None for an unbiased run.
    temperature : float or Quantity
        Kelvin.
    region_a, region_b : (lo, hi), sequence of (lo, hi) per dimension, or callable
        A region is a box in CV space (bounds inclusive) or a function of ``values`` (the
        ``(T,)`` array for 1D values) returning one bool per frame.
    n_blocks : int
        The series is cut into this many contiguous blocks in time (correlated frames stay
        together); a bootstrap sample draws ``n_blocks`` blocks with replacement.
    n_bootstrap : int
        Number of bootstrap samples (0: no error estimate).
    seed : int, optional
        For the bootstrap's random numbers.

    Returns
    -------
    FreeEnergyDifference
    """
    kT = _kT(temperature)
    x = _values(values)
    t = x.shape[0]
    w = _weights(weights, t)
    in_a, in_b = _region_mask(region_a, x, "A"), _region_mask(region_b, x, "B")
    if not in_a.any() or not in_b.any():
        empty = "A" if not in_a.any() else "B"
        raise ValueError(f"region {empty} holds no frame: the free-energy difference is undefined")
    if not 1 <= n_blocks <= t:
        raise ValueError(f"n_blocks must be between 1 and the number of frames ({t}), got {n_blocks}")
    if n_bootstrap < 0:
        raise ValueError("n_bootstrap must be >= 0")
    p_a, p_b = w[in_a].sum() / w.sum(), w[in_b].sum() / w.sum()
    delta = float(-kT * math.log(p_b / p_a))
    # per-block sums: a bootstrap sample is a sum over drawn blocks
    starts = np.linspace(0, t, n_blocks + 1).astype(int)
    block_a = np.add.reduceat(w * in_a, starts[:-1])
    block_b = np.add.reduceat(w * in_b, starts[:-1])
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_blocks, size=(n_bootstrap, n_blocks))
    sum_a, sum_b = block_a[draws].sum(axis=1), block_b[draws].sum(axis=1)
    ok = (sum_a > 0) & (sum_b > 0)
    samples = -kT * np.log(sum_b[ok] / sum_a[ok])
    error = float(samples.std(ddof=1)) if samples.size > 1 else float("nan")
    return FreeEnergyDifference(delta_f=delta, error=error, p_a=float(p_a), p_b=float(p_b),
                                n_a=int(in_a.sum()), n_b=int(in_b.sum()), n_blocks=int(n_blocks),
                                n_bootstrap=int(n_bootstrap), n_failed=int((~ok).sum()),
                                samples=samples)


# --------------------------------------------------------------------------- transitions


def count_transitions(values, lower: float, upper: float, *, return_frames: bool = False):
    """Core-to-core transitions between the basins ``s < lower`` and ``s > upper``.

    The trajectory is assigned to a basin when it enters that basin's core and keeps that
    assignment while it is in between (hysteresis): a transition is counted only when it
    reaches the other core, so recrossings of a single dividing line do not count.

    Parameters
    ----------
    values : array (T,)
        A 1D CV time series.
    lower, upper : float
        Core boundaries, ``lower < upper`` (``lower == upper`` gives a plain dividing line).
    return_frames : bool
        Also return the frames at which each new core was entered.

    Returns
    -------
    int or (int, numpy.ndarray of int)
    """
    s = _series(values, "values")
    lower, upper = float(lower), float(upper)
    if lower > upper:
        raise ValueError(f"lower ({lower}) must not exceed upper ({upper})")
    state = np.zeros(s.shape, dtype=np.int8)
    state[s < lower] = -1
    state[s > upper] = 1
    frames = np.flatnonzero(state)
    if frames.size == 0:
        return (0, np.zeros(0, dtype=np.int64)) if return_frames else 0
    cores = state[frames]
    changes = frames[1:][cores[1:] != cores[:-1]]
    count = int(changes.size)
    return (count, changes.astype(np.int64)) if return_frames else count


# --------------------------------------------------------------------------- plot


def plot_profile(profile: Profile, path, *, labels: Optional[Sequence[str]] = None,
                 title: Optional[str] = None, fmax: Optional[float] = None,
                 reference=None, dpi: int = 120) -> Path:
    """PNG of a :class:`Profile`: a line for 1D, a filled map with colour bar for 2D.

    Parameters
    ----------
    profile : Profile
    path : str or Path
        Output PNG (written atomically, parent directories created).
    labels : sequence of str, optional
        Axis labels, one per dimension.
    title : str, optional
    fmax : float, optional
        Top of the energy axis / colour scale, kJ/mol (default: largest finite value).
    reference : array, optional
        1D only: a reference free energy on the same centres (e.g. the exact one), dashed.
    dpi : int

    Returns
    -------
    pathlib.Path
    """
    from matplotlib.figure import Figure

    from ..io import save_figure

    free = np.asarray(profile.free_energy, dtype=np.float64)
    finite = free[np.isfinite(free)]
    top = float(fmax) if fmax is not None else (float(finite.max()) if finite.size else 1.0)
    labels = list(labels) if labels is not None else [f"s{i}" for i in range(profile.ndim)]
    fig = Figure(figsize=(5.0, 4.0) if profile.ndim == 1 else (5.5, 4.5))
    ax = fig.add_subplot(1, 1, 1)
    if profile.ndim == 1:
        ax.plot(profile.centres[0], np.where(np.isfinite(free), free, np.nan), "-", lw=1.8,
                label="reweighted")
        if reference is not None:
            ax.plot(profile.centres[0], np.asarray(reference), "--", color="k", lw=1.0,
                    label="reference")
            ax.legend(frameon=False)
        ax.set_xlabel(labels[0])
        ax.set_ylabel("F (kJ/mol)")
        ax.set_ylim(-0.02 * top, 1.05 * top if top > 0 else 1.0)
    elif profile.ndim == 2:
        shown = np.ma.masked_invalid(np.where(free <= top, free, np.nan))
        mesh = ax.pcolormesh(profile.edges[0], profile.edges[1], shown.T, cmap="nipy_spectral",
                             vmin=0.0, vmax=top if top > 0 else 1.0, shading="flat")
        fig.colorbar(mesh, ax=ax, label="F (kJ/mol)")
        ax.set_xlabel(labels[0])
        ax.set_ylabel(labels[1])
    else:
        raise ValueError(f"plot_profile draws 1D and 2D profiles, got {profile.ndim}D")
    ax.set_title(title or f"ESS {profile.effective_sample_size:.0f}")
    fig.tight_layout()
    return save_figure(fig, path, dpi)
