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
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from ..units import MOLAR_GAS_CONSTANT_KJ

__all__ = [
    "BiasLog",
    "Profile",
    "FreeEnergyDifference",
    "load_bias_log",
    "metad_weights",
    "opes_weights",
    "umbrella_weights",
    "effective_sample_size",
    "reweighted_profile",
    "free_energy_difference",
    "count_transitions",
    "plot_profile",
    "BlockError",
    "BLOCK_METHODS",
    "block_error",
    "BlockedDifference",
    "free_energy_difference_blocked",
    "Convergence",
    "delta_f_convergence",
    "plot_convergence",
]

REQUIRED_COLUMNS = ("step", "time_ps", "bias_kJmol")
#: Columns of a bias log that are not CVs: the metadynamics offset and OPES's bookkeeping.
NON_CV_COLUMNS = ("c_t_kJmol", "rct_kJmol", "log_zed", "n_kernels", "neff", "log_z")

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
    c_t_kJmol : numpy.ndarray (T,) or None
        Metadynamics offset ``c(t)``, kJ/mol; None in an OPES log (no such column).
    extra : dict name -> numpy.ndarray (T,)
        The other columns that are not CVs (:data:`NON_CV_COLUMNS`, e.g. OPES's log Z).
    path : pathlib.Path or None
    """

    step: np.ndarray
    time_ps: np.ndarray
    cvs: Dict[str, np.ndarray]
    bias_kJmol: np.ndarray
    c_t_kJmol: Optional[np.ndarray]
    extra: Dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
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
        """Normalised frame weights: ``"metad"`` (uses c(t)), ``"opes"`` (exp(V/kT)) or
        ``"umbrella"`` (static bias)."""
        if kind == "metad":
            if self.c_t_kJmol is None:
                raise ValueError("this bias log has no c_t_kJmol column: not a metadynamics log")
            return metad_weights(self.bias_kJmol, self.c_t_kJmol, temperature)
        if kind == "opes":
            return opes_weights(self.bias_kJmol, temperature)
        if kind == "umbrella":
            return umbrella_weights(self.bias_kJmol, temperature)
        raise ValueError(f"kind must be 'metad', 'opes' or 'umbrella', got {kind!r}")


def _clean(name: str) -> str:
    return name.strip().strip('"').strip("'").strip()


def load_bias_log(path: Union[str, os.PathLike], *, partial_last_line: str = "error") -> BiasLog:
    """Read the bias CSV written by openmm-geom's metadynamics or OPES.

    The first non-empty line is the header (a leading ``#`` and quotes are ignored) with the
    columns ``step, time_ps, <cv names...>, bias_kJmol`` and, for metadynamics,
    ``c_t_kJmol``; every column that is neither one of these nor one of
    :data:`NON_CV_COLUMNS` (OPES's bookkeeping such as ``log_z``) is a CV. Further lines
    starting with ``#`` are comments.

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
                         f"log has columns step, time_ps, <cv names...>, bias_kJmol[, c_t_kJmol]")
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
    cvs = {name: column[name] for name in header
           if name not in REQUIRED_COLUMNS and name not in NON_CV_COLUMNS}
    extra = {name: column[name] for name in header
             if name in NON_CV_COLUMNS and name != "c_t_kJmol"}
    return BiasLog(step=step.astype(np.int64), time_ps=column["time_ps"], cvs=cvs,
                   bias_kJmol=column["bias_kJmol"], c_t_kJmol=column.get("c_t_kJmol"),
                   extra=extra, path=path)


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


# --------------------------------------------------------------------------- OPES


def opes_weights(bias_kJmol, temperature) -> np.ndarray:
    """OPES frame weights ``w ∝ exp(V(s_t, t) / kT)``, normalised.

    In OPES the bias carries its own normalisation (``V = (1 - 1/gamma) kT ln(P(s)/Z + eps)``
    with ``Z`` the running normalisation of the kernel estimate), so the bias of every time is
    on the same footing and, unlike metadynamics, no offset ``c(t)`` is needed (Invernizzi and
    Parrinello, J. Phys. Chem. Lett. 11, 2731, 2020). Computed in log space: biases of
    hundreds of kT neither overflow nor lose the small weights' relative precision.

    Parameters
    ----------
    bias_kJmol : array (T,)
        ``V(s_t, t)``, the bias acting on each frame when it was sampled, kJ/mol.
    temperature : float or Quantity
        Simulation temperature, K.

    Returns
    -------
    numpy.ndarray (T,)
        Weights summing to 1.
    """
    return _normalise_log(_series(bias_kJmol, "bias_kJmol") / _kT(temperature))


# --------------------------------------------------------------------------- block analysis


@dataclasses.dataclass
class BlockError:
    """The standard error of a time series' mean from block averages.

    Attributes
    ----------
    error : float
        Standard error of the mean at the chosen block size (units of the series).
    block_size : int
        Frames per block at the chosen level.
    n_blocks : int
        Blocks at the chosen level.
    method : str
        ``"flyvbjerg"`` or ``"fixed"``.
    plateau : bool
        Flyvbjerg-Petersen: whether a block size met the optimal-block criterion (if not, the
        largest blocks were used and the error is a lower bound: the series is shorter than a
        few correlation times). Always True for ``"fixed"``.
    block_sizes, errors : numpy.ndarray
        Every level's block size and error estimate (one entry for ``"fixed"``).
    """

    error: float
    block_size: int
    n_blocks: int
    method: str
    plateau: bool
    block_sizes: np.ndarray
    errors: np.ndarray


BLOCK_METHODS = ("flyvbjerg", "fixed")


def block_error(series, *, method: str = "flyvbjerg", n_blocks: int = 20,
                min_blocks: int = 8) -> BlockError:
    """Standard error of the mean of a correlated time series by block averaging.

    ``"flyvbjerg"`` (Flyvbjerg and Petersen, J. Chem. Phys. 91, 461, 1989): the series is
    halved repeatedly, averaging neighbouring pairs (an odd frame out is the earliest one),
    and at each level the naive error of the block means ``sqrt(var / (m - 1))`` is computed;
    the levels stop when fewer than ``min_blocks`` blocks remain. The block size used is the
    smallest ``B`` with ``B^3 > 2 N (e_B / e_1)^4`` (Lee, Kent, Holzmann and Needs, Phys. Rev. E
    83, 066706, 2011, as in pyblock): blocks a few correlation times long, where the errors
    plateau. If no level satisfies it the largest blocks are used and ``plateau`` is False.

    ``"fixed"``: ``n_blocks`` contiguous blocks of equal size (the first ``N mod n_blocks``
    frames left out), error = standard deviation of the block means / sqrt(n_blocks).

    Parameters
    ----------
    series : array (N,)
    method : {"flyvbjerg", "fixed"}
    n_blocks : int
        ``"fixed"`` only, at least 2.
    min_blocks : int
        ``"flyvbjerg"`` only: the fewest blocks a level may have (at least 2).

    Returns
    -------
    BlockError
    """
    x = _series(series, "series")
    n = x.size
    if method not in BLOCK_METHODS:
        raise ValueError(f"method must be one of {BLOCK_METHODS}, got {method!r}")
    if method == "fixed":
        if not 2 <= int(n_blocks) <= n:
            raise ValueError(f"n_blocks must be between 2 and the number of frames ({n}), "
                             f"got {n_blocks}")
        n_blocks = int(n_blocks)
        size = n // n_blocks
        means = x[n - size * n_blocks:].reshape(n_blocks, size).mean(axis=1)
        error = float(means.std(ddof=1) / math.sqrt(n_blocks))
        return BlockError(error=error, block_size=size, n_blocks=n_blocks, method=method,
                          plateau=True, block_sizes=np.array([size]), errors=np.array([error]))
    if int(min_blocks) < 2:
        raise ValueError(f"min_blocks must be >= 2, got {min_blocks}")
    if n < int(min_blocks):
        raise ValueError(f"{n} frames: block averaging needs at least min_blocks ({min_blocks})")
    sizes, errors, counts = [], [], []
    y, size = x, 1
    while y.size >= int(min_blocks):
        m = y.size
        sizes.append(size)
        errors.append(math.sqrt(y.var(ddof=1) / m))
        counts.append(m)
        if m % 2:
            y = y[1:]
        y = 0.5 * (y[0::2] + y[1::2])
        size *= 2
    sizes_, errors_ = np.array(sizes), np.array(errors)
    if errors_[0] == 0.0:
        level, plateau = 0, True
    else:
        ok = sizes_.astype(float) ** 3 > 2.0 * n * (errors_ / errors_[0]) ** 4
        plateau = bool(ok.any())
        level = int(np.argmax(ok)) if plateau else len(sizes) - 1
    return BlockError(error=float(errors_[level]), block_size=int(sizes_[level]),
                      n_blocks=int(counts[level]), method=method, plateau=plateau,
                      block_sizes=sizes_, errors=errors_)


@dataclasses.dataclass
class BlockedDifference:
    """``F_B - F_A`` of weighted frames with its block-averaged error.

    Attributes
    ----------
    delta_f, error : float
        kJ/mol. ``error`` is nan when a region holds no frame.
    block : BlockError or None
        The block analysis behind ``error``.
    n_a, n_b : int
        Frames in each region.
    """

    delta_f: float
    error: float
    block: Optional[BlockError]
    n_a: int
    n_b: int


def free_energy_difference_blocked(values, weights, temperature, region_a: Region,
                                   region_b: Region, *, method: str = "flyvbjerg",
                                   n_blocks: int = 20, min_blocks: int = 8) -> BlockedDifference:
    """``ΔF = F_B - F_A = -kT ln(P_B / P_A)`` with a block-averaged error (delta method).

    ``P_X`` is the weighted fraction of frames in region X. Its error follows from the
    linearisation ``δΔF = -kT (δP_B/P_B - δP_A/P_A)``: the per-frame series
    ``z_t = -kT T w_t (1_B(t)/P_B - 1_A(t)/P_A)`` (weights normalised to sum 1) has mean 0
    and the standard error of its mean is the error of ΔF; it is computed by
    :func:`block_error`, which accounts for the time correlation of the frames (and of the
    weights). A region without frames gives ``delta_f = nan`` (not an error: early prefixes
    of a run may not have reached a basin yet).

    Parameters
    ----------
    values, weights, temperature, region_a, region_b
        As in :func:`free_energy_difference`; frames in time order.
    method, n_blocks, min_blocks
        As in :func:`block_error`.

    Returns
    -------
    BlockedDifference
    """
    kT = _kT(temperature)
    x = _values(values)
    t = x.shape[0]
    w = _weights(weights, t)
    w = w / w.sum()
    in_a, in_b = _region_mask(region_a, x, "A"), _region_mask(region_b, x, "B")
    p_a, p_b = float(w[in_a].sum()), float(w[in_b].sum())
    n_a, n_b = int(in_a.sum()), int(in_b.sum())
    if p_a <= 0 or p_b <= 0:
        return BlockedDifference(delta_f=float("nan"), error=float("nan"), block=None,
                                 n_a=n_a, n_b=n_b)
    z = -kT * t * w * (in_b / p_b - in_a / p_a)
    block = block_error(z, method=method, n_blocks=n_blocks, min_blocks=min_blocks)
    return BlockedDifference(delta_f=float(-kT * math.log(p_b / p_a)), error=block.error,
                             block=block, n_a=n_a, n_b=n_b)


@dataclasses.dataclass
class Convergence:
    """ΔF on growing prefixes of a run, with block errors, and when it converged.

    Attributes
    ----------
    time_ns : numpy.ndarray (P,)
        Simulated time at the end of each prefix.
    delta_f, error : numpy.ndarray (P,)
        ΔF and its block error on each prefix, kJ/mol (nan before both regions are visited).
    final, final_error : float
        Those of the whole run.
    target : float
        What convergence is measured against: ``final`` unless a reference was given.
    time_to_converge_ns : float or None
        The first prefix time from which on every prefix has ``|ΔF - target| <= tolerance``
        and ``error <= error_threshold``; None if the last prefix fails either.
    tolerance_kJmol, error_threshold_kJmol : float
    block_method : str
    plateau : bool
        Whether the whole run's block analysis reached its plateau.
    """

    time_ns: np.ndarray
    delta_f: np.ndarray
    error: np.ndarray
    final: float
    final_error: float
    target: float
    time_to_converge_ns: Optional[float]
    tolerance_kJmol: float
    error_threshold_kJmol: float
    block_method: str
    plateau: bool

    def as_dict(self) -> dict:
        """JSON-ready (arrays as lists, nan as None)."""
        def clean(values):
            return [None if not math.isfinite(v) else float(v) for v in np.asarray(values)]

        return {"time_ns": clean(self.time_ns), "delta_f_kJmol": clean(self.delta_f),
                "error_kJmol": clean(self.error), "final_kJmol": self.final,
                "final_error_kJmol": self.final_error, "target_kJmol": self.target,
                "time_to_converge_ns": self.time_to_converge_ns,
                "tolerance_kJmol": self.tolerance_kJmol,
                "error_threshold_kJmol": self.error_threshold_kJmol,
                "block_method": self.block_method, "plateau": self.plateau}


def delta_f_convergence(values, weights, temperature, region_a: Region, region_b: Region,
                        time_ns, *, points: int = 20, tolerance_kJmol: float = 1.0,
                        error_threshold_kJmol: float = 1.0, target: Optional[float] = None,
                        method: str = "flyvbjerg", n_blocks: int = 20,
                        min_blocks: int = 8) -> Convergence:
    """ΔF(t) on growing prefixes of a run with block errors, and the time to converge.

    The run's frames up to ``t`` (for ``points`` times evenly spaced up to its end) are
    reweighted on their own (each prefix's weights renormalised; for metadynamics pass the
    c(t) weights, for OPES the exp(V/kT) weights: both are valid on a prefix) and
    :func:`free_energy_difference_blocked` gives ΔF and its block error.

    Converged at ``t_c``: the first prefix time from which on every prefix is within
    ``tolerance_kJmol`` of ``target`` (default: the whole run's ΔF) and has a block error at
    most ``error_threshold_kJmol``.

    Parameters
    ----------
    values : array (T,) or (T, d)
        CV values, in time order.
    weights : array (T,) or None
    temperature : float or Quantity
    region_a, region_b : as in :func:`free_energy_difference`
    time_ns : array (T,)
        Simulated time of each frame, ns (increasing).
    points : int
        Number of prefixes (at least 2).
    tolerance_kJmol, error_threshold_kJmol : float
        Convergence criteria, kJ/mol (positive).
    target : float, optional
        Converge towards this value (e.g. a reference) instead of the run's final ΔF.
    method, n_blocks, min_blocks : as in :func:`block_error`

    Returns
    -------
    Convergence
    """
    x = _values(values)
    t_ns = _series(time_ns, "time_ns")
    if t_ns.shape[0] != x.shape[0]:
        raise ValueError(f"{t_ns.shape[0]} times for {x.shape[0]} frames")
    if np.any(np.diff(t_ns) <= 0):
        raise ValueError("time_ns must increase")
    w = _weights(weights, x.shape[0])
    if int(points) < 2:
        raise ValueError(f"points must be >= 2, got {points}")
    for name, value in (("tolerance_kJmol", tolerance_kJmol),
                        ("error_threshold_kJmol", error_threshold_kJmol)):
        if not (value > 0 and math.isfinite(value)):
            raise ValueError(f"{name} must be a positive number, got {value}")
    ends = np.linspace(t_ns[0], t_ns[-1], int(points) + 1)[1:]
    times, deltas, errors = [], [], []
    plateau = False
    for end in ends:
        n = int(np.searchsorted(t_ns, end, side="right"))
        if n < max(int(min_blocks), 2) or (method == "fixed" and n < n_blocks):
            continue
        diff = free_energy_difference_blocked(x[:n], w[:n], temperature, region_a, region_b,
                                              method=method, n_blocks=n_blocks,
                                              min_blocks=min_blocks)
        times.append(float(t_ns[n - 1]))
        deltas.append(diff.delta_f)
        errors.append(diff.error)
        plateau = bool(diff.block.plateau) if diff.block is not None else False
    if not times:
        raise ValueError(f"{x.shape[0]} frames are too few for a convergence analysis")
    times_, deltas_, errors_ = np.array(times), np.array(deltas), np.array(errors)
    final, final_error = float(deltas_[-1]), float(errors_[-1])
    goal = final if target is None else float(target)
    good = (np.abs(deltas_ - goal) <= tolerance_kJmol) & (errors_ <= error_threshold_kJmol)
    converged = None
    if good[-1]:
        bad = np.flatnonzero(~good)
        first = 0 if bad.size == 0 else int(bad[-1]) + 1
        converged = float(times_[first])
    return Convergence(time_ns=times_, delta_f=deltas_, error=errors_, final=final,
                       final_error=final_error, target=goal, time_to_converge_ns=converged,
                       tolerance_kJmol=float(tolerance_kJmol),
                       error_threshold_kJmol=float(error_threshold_kJmol), block_method=method,
                       plateau=plateau)


def plot_convergence(runs: Mapping[str, Convergence], path, *,
                     reference: Optional[Tuple[float, float]] = None,
                     reference_label: str = "reference", title: Optional[str] = None,
                     ylabel: str = "ΔF (kJ/mol)", dpi: int = 120) -> Path:
    """``convergence.png``: ΔF against simulated time for every run of a comparison.

    Parameters
    ----------
    runs : mapping label -> Convergence
        One line with its block-error band per run (method x CV).
    path : str or Path
        Output PNG (written atomically).
    reference : (value, error), optional
        Drawn as a grey band ``value ± error`` (kJ/mol) across the plot.
    reference_label, title, ylabel : str
    dpi : int

    Returns
    -------
    pathlib.Path
    """
    from matplotlib.figure import Figure

    from ..io import save_figure

    if not runs:
        raise ValueError("plot_convergence needs at least one run")
    fig = Figure(figsize=(6.0, 4.0))
    ax = fig.add_subplot(1, 1, 1)
    if reference is not None:
        value, error = float(reference[0]), float(reference[1])
        ax.axhspan(value - error, value + error, color="0.8", alpha=0.7,
                   label=f"{reference_label}: {value:.1f} ± {error:.1f}")
        ax.axhline(value, color="0.4", lw=0.8)
    for label, run in runs.items():
        t, f, e = run.time_ns, run.delta_f, run.error
        line, = ax.plot(t, f, "-o", ms=3, lw=1.4, label=label)
        finite = np.isfinite(f) & np.isfinite(e)
        ax.fill_between(t[finite], (f - e)[finite], (f + e)[finite], color=line.get_color(),
                        alpha=0.2, lw=0)
    ax.set_xlabel("simulated time (ns)")
    ax.set_ylabel(ylabel)
    ax.set_title(title or "ΔF against simulated time (bands: block errors)")
    ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path, dpi)
