"""OPES (on-the-fly probability enhanced sampling) on any number of CVs of a ``TorchCVForce``.

The algorithm is PLUMED's ``OPES_METAD`` and ``OPES_METAD_EXPLORE`` (Invernizzi and
Parrinello, J. Phys. Chem. Lett. 11, 2731 (2020); Invernizzi, Piaggi and Parrinello, Phys. Rev.
X 10, 041034 (2020); Invernizzi and Parrinello, J. Chem. Theory Comput. 18, 3988 (2022)):
a kernel density estimate of the CV distribution, compressed on the fly, defines the bias

    V(s) = a log(P(s)/Z + epsilon),   a = (1 - 1/gamma) kT  (explore: (gamma - 1) kT).

The kernels live in the C++ force as Gaussian hills with their own widths; the force's log
transform ``a log(S/N + eps)`` with ``N = Z * (sum of weights)`` makes them the OPES bias,
evaluated in O(kernels * CVs) per step with dE/ds in the model's single backward pass. Kernel
bookkeeping (weights, adaptive sigma, compression, Z) is numpy, at each deposition only.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import openmm
import openmm.unit as unit

from ..errors import CheckpointMismatchError, SimulationBlowUp
from ..io import atomic_savez, format_tag, read_versioned_npz, sha256_of_bytes
from ..modelfile import ExportedModel
from ..units import CV_UNITS, MOLAR_GAS_CONSTANT_KJ, to_openmm_units
from ._biascommon import (BiasedCVs, BiasLog, gaussian_sum, recorded_periods, same_setting,
                          whole_steps)
from .cvforce import TorchCVForce

__all__ = ["OPES"]

STATE_KIND = "opes-state"
STATE_VERSION = 1
_DEFAULT_POINTS = {1: 200, 2: 100, 3: 40}


class OPES(BiasedCVs):
    """OPES (``explore=False``: PLUMED's ``OPES_METAD``; ``True``: ``OPES_METAD_EXPLORE``) on
    any number of CVs of one exported CV module, as one ``TorchCVForce``.

    Parameters
    ----------
    system : openmm.System
        The force is added to it (after every argument has been checked).
    model : path, ScriptModule or ExportedModel of an exported CV module
    temperature : Quantity or float
        The simulation's temperature (a plain number is in K); > 0.
    barrier : Quantity or float
        The highest free-energy barrier to cross (a plain number is in kJ/mol); > 0. It sets
        the bias factor ``gamma = barrier/kT`` (unless ``bias_factor`` is given) and
        ``epsilon = exp(-barrier/a')`` with ``a' = (1 - 1/gamma) kT`` (explore:
        ``(gamma - 1) kT``), which caps the bias at about ``barrier``.
    pace : int
        Steps between kernel depositions.
    sigma : None, ``"adaptive"`` or sequence of float/Quantity, one per biased CV
        The kernels' initial widths in the CVs' OpenMM units (nm, rad). None or
        ``"adaptive"``: measured from the CVs' running variance over the first
        ``adaptive_sigma_stride`` steps (no kernel is deposited before), and kept updated.
        With ``explore=True`` a fixed sigma is multiplied by ``sqrt(gamma)`` as in PLUMED
        (the target is broader). Unless ``fixed_sigma``, sigma shrinks as the effective sample
        size ``n`` grows, by ``(n (k + 2)/4)^(-1/(k + 4))`` (Silverman), and the height is
        divided by the same factor to the power k.
    explore : bool
        OPES-explore: the kernels estimate the sampled (well-tempered) distribution, unweighted;
        faster exploration, slower-converging reweighting.
    compression_threshold : float >= 0
        A new kernel is merged into the nearest one closer than this, in units of that
        kernel's sigma (recursively, as PLUMED); 0 never merges.
    cvs : sequence of str, optional
        The biased CVs (default: all of the module's).
    log : path of the CSV time series for reweighting (see :meth:`step`), optional
    log_interval : steps between log rows (default: ``pace``)
    bias_factor : float > 1, optional
        Default ``barrier/kT``. ``float("inf")`` (not with ``explore``; needs a fixed sigma):
        a flat target, ``a = kT``.
    epsilon : float > 0, optional
        Default from the barrier (above).
    adaptive_sigma_stride : int, optional
        Steps over which adaptive sigma is measured before the first kernel (default
        ``10*pace``, as PLUMED's ``ADAPTIVE_SIGMA_STRIDE``), and the decay time of the
        running mean.
    variance_interval : int, optional
        Steps between the CV samples of the running variance (adaptive sigma only). PLUMED
        samples every step; here each sample costs an extra CV evaluation (the Context holds
        the CVs of the previous force evaluation), so the default is ``max(1, pace // 10)``.
        The sample variance estimates the same variance; only its noise differs.
    sigma_min : sequence of float/Quantity, optional
        Never shrink sigma below these (PLUMED's ``SIGMA_MIN``).
    fixed_sigma : bool
        Do not shrink sigma with the sample size (PLUMED's ``FIXED_SIGMA``).
    periodic : sequence of CV names, optional
        The CVs taken on the circle. Default: those the model file records as periodic
        (``cv_periods``, e.g. dihedrals), with their period; a name given here without a
        recorded period gets 2 pi. ``()``: none.
    extra_energy : optional expression of the CVs added to the force (walls...); not part of
        V in :meth:`bias_at` or the log
    force_options : passed to :class:`TorchCVForce` (``cv_names``, ``particles``, ...)

    Notes
    -----
    Kernels are untruncated Gaussians (PLUMED cuts them at ``KERNEL_CUTOFF`` sigmas, where
    they are below epsilon by construction). Z is the mean of ``P`` over the compressed
    kernels' centres, updated incrementally at each deposition as in PLUMED (no neighbour
    list). Everything else follows PLUMED's ``OPESmetad.cpp``: the initial pseudo-sample of
    weight ``epsilon^(a'/kT)``, the weights ``exp(V/kT)`` (explore: 1), the effective sample
    size ``(1 + sum w)^2/(1 + sum w^2)`` (explore: the number of depositions), the first
    adaptive sigma corrected for the unbiased start, and the merge of centres and variances.

    The free energy is ``F(s) = -V(s)/(1 - 1/gamma)`` up to a constant (OPES: ``-kT log(P/Z
    + eps)``; explore: ``-gamma kT log(p_WT/Z + eps)``), see :meth:`getFreeEnergy`; the
    preferred estimate is reweighting the sampled frames with ``exp(V(s,t)/kT)`` (the log's
    ``bias_kJmol`` column).
    """

    def __init__(self, system: openmm.System, model, temperature, barrier, pace: int,
                 sigma=None, explore: bool = False, compression_threshold: float = 1.0,
                 cvs: Optional[Sequence[str]] = None,
                 log: Union[str, os.PathLike, None] = None, *,
                 log_interval: Optional[int] = None, bias_factor=None, epsilon=None,
                 adaptive_sigma_stride: Optional[int] = None,
                 variance_interval: Optional[int] = None, sigma_min=None,
                 fixed_sigma: bool = False, periodic: Optional[Sequence[str]] = None,
                 extra_energy: str = "", **force_options):
        # -- every argument is checked before the force is built or added ---------------------
        temperature = to_openmm_units(temperature, "temperature", unit.kelvin, positive=True)
        barrier = to_openmm_units(barrier, "barrier", unit.kilojoule_per_mole, positive=True)
        pace = whole_steps(pace, "pace")
        if log_interval is not None:
            log_interval = whole_steps(log_interval, "log_interval")
        explore = bool(explore)
        kT = MOLAR_GAS_CONSTANT_KJ * temperature
        if bias_factor is None:
            bias_factor = barrier / kT
            if not bias_factor > 1:
                raise ValueError(f"barrier ({barrier:g} kJ/mol) must exceed kT ({kT:g} kJ/mol) "
                                 "for the default bias factor barrier/kT > 1; pass bias_factor")
        else:
            bias_factor = float(to_openmm_units(bias_factor, "bias_factor", unit.dimensionless,
                                              finite=False))
            if not bias_factor > 1:
                raise ValueError(f"bias_factor must be > 1, got {bias_factor:g}")
        if math.isinf(bias_factor):
            if explore:
                raise ValueError("bias_factor=inf is not compatible with explore=True")
            prefactor = 1.0
        else:
            prefactor = (bias_factor - 1.0) if explore else (1.0 - 1.0 / bias_factor)
        threshold = float(compression_threshold)
        if not (math.isfinite(threshold) and threshold >= 0):
            raise ValueError(f"compression_threshold must be >= 0 (in sigmas; 0 = never merge), "
                             f"got {compression_threshold!r}")

        model = ExportedModel.load(model, allow_bare=True, allow_package=True)
        module_names = model.cv_names(force_options.get("cv_names"))
        names = list(module_names) if cvs is None else ([cvs] if isinstance(cvs, str) else [str(c) for c in cvs])
        if not names:
            raise ValueError("no CVs to bias (cvs is empty)")
        missing = sorted(set(names) - set(module_names))
        if missing:
            raise ValueError(f"no CVs named {missing}; the module's CVs are {list(module_names)}")
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"CVs {repeated} are listed more than once in cvs")
        k = len(names)
        periods = recorded_periods(model, module_names, periodic)
        adaptive = sigma is None or (isinstance(sigma, str) and sigma.lower() == "adaptive")
        if adaptive:
            if math.isinf(bias_factor):
                raise ValueError("bias_factor=inf needs a fixed sigma (adaptive sigma assumes a "
                                 "well-tempered target)")
            sigma0 = None
            stride = (10 * pace if adaptive_sigma_stride is None
                      else whole_steps(adaptive_sigma_stride, "adaptive_sigma_stride"))
            if stride < pace:
                raise ValueError(f"adaptive_sigma_stride ({stride}) must be >= pace ({pace})")
            interval = (max(1, pace // 10) if variance_interval is None
                        else whole_steps(variance_interval, "variance_interval"))
        else:
            if isinstance(sigma, str):
                raise ValueError(f"sigma must be 'adaptive', None or one width per CV, got {sigma!r}")
            if adaptive_sigma_stride is not None or variance_interval is not None:
                raise ValueError("adaptive_sigma_stride and variance_interval are for adaptive "
                                 "sigma only (sigma=None)")
            sigma0 = self._per_cv(sigma, "sigma", names)
            stride = interval = 0
        sigma_min = None if sigma_min is None else self._per_cv(sigma_min, "sigma_min", names)
        if epsilon is None:
            epsilon = math.exp(-barrier / (prefactor * kT))
        else:
            epsilon = float(to_openmm_units(epsilon, "epsilon", unit.dimensionless, positive=True))
        if not epsilon > 0:
            raise ValueError(f"epsilon = exp(-barrier/({prefactor:g} kT)) underflows to 0: the "
                             f"barrier {barrier:g} kJ/mol is too high; pass epsilon")

        # -- settings ---------------------------------------------------------------------------
        self.explore = explore
        self.temperature = temperature
        self.barrier = barrier
        self.pace = pace
        self.kT = kT
        self.bias_factor = bias_factor
        self.prefactor = prefactor * kT  # a, kJ/mol
        self.epsilon = epsilon
        self.compression_threshold = threshold
        self.adaptive_sigma_stride = stride
        self.variance_interval = interval
        self.fixed_sigma = bool(fixed_sigma)
        self.log_interval = log_interval if log_interval is not None else pace
        self._adaptive = adaptive
        self._sigma0 = None if sigma0 is None else np.array(sigma0) * (
            math.sqrt(bias_factor) if explore else 1.0)
        self._sigma_min = None if sigma_min is None else np.array(sigma_min)
        self._biased_names = names
        self._periods = np.array([periods[name] or 0.0 for name in names], dtype=float)
        self._adaptive_samples = -(-stride // interval) if adaptive else 0  # ceil

        # -- the running state (PLUMED's names) -------------------------------------------------
        self.counter = 1
        self.sum_weights = epsilon ** prefactor  # the initial pseudo-sample, exp(V0/kT)
        self.sum_weights2 = self.sum_weights ** 2
        self.zed = 1.0
        self.adaptive_counter = 0
        self._av_cv = np.zeros(k)
        self._av_m2 = np.zeros(k)
        self._centers = np.zeros((0, k))
        self._sigmas = np.zeros((0, k))
        self._heights = np.zeros(0)
        self._step = 0
        self._log = BiasLog(log, self.log_columns, "OPES")
        #: None: depositions are applied at once; a list: appended to it as rows of
        #: :meth:`deposition_at` instead (multiple walkers, :mod:`openmm_geom.openmm.walkers`)
        self.outbox: Optional[list] = None

        # -- the force --------------------------------------------------------------------------
        self.force = TorchCVForce(model, extra_energy or "0", **force_options)
        self._biased = [self.force.cv_names.index(name) for name in names]
        widths = self._sigma0 if self._sigma0 is not None else np.ones(k)
        self.force.setHillsVariables(self._biased, [float(w) for w in widths],
                                     self._periods.tolist())
        self._push_transform()
        self.model_sha256 = sha256_of_bytes(self.force.getSerializedModule())
        self.model_name = model.name
        system.addForce(self.force)
        self._system = system  # the System owns the force: it lives as long as this object

    @staticmethod
    def _per_cv(values, what: str, names: list) -> list:
        if isinstance(values, (str, bytes)) or not hasattr(values, "__len__") or unit.is_quantity(values):
            values = [values]
        values = list(values)
        if len(values) != len(names):
            raise ValueError(f"{len(values)} {what} value{'s' if len(values) != 1 else ''} given "
                             f"for {len(names)} biased CVs {names}")
        return [float(to_openmm_units(v, f"{what}[{name!r}]", CV_UNITS, positive=True))
                for v, name in zip(values, names)]

    # -- the bias -----------------------------------------------------------------------------
    @property
    def kde_norm(self) -> float:
        """The KDE's normalisation: the sum of weights (explore: the number of samples)."""
        return float(self.counter) if self.explore else self.sum_weights

    @property
    def neff(self) -> float:
        """The effective sample size ``(1 + sum w)^2 / (1 + sum w^2)``."""
        return (1.0 + self.sum_weights) ** 2 / (1.0 + self.sum_weights2)

    @property
    def rct(self) -> float:
        """``kT log(sum w / counter)``, PLUMED's ``rct``: the c(t) analogue, kJ/mol (should
        become flat; not needed for reweighting)."""
        return self.kT * math.log(self.sum_weights / self.counter)

    @property
    def kernels(self) -> tuple:
        """Copies of the compressed kernels: ``(centers (n, k), sigmas (n, k), heights (n,))``."""
        return self._centers.copy(), self._sigmas.copy(), self._heights.copy()

    @property
    def n_kernels(self) -> int:
        return len(self._heights)

    def _probability(self, points: np.ndarray) -> np.ndarray:
        return gaussian_sum(points, self._centers, self._heights, self._sigmas, self._periods) \
            / self.kde_norm

    def _bias(self, points: np.ndarray) -> np.ndarray:
        return self.prefactor * np.log(self._probability(points) / self.zed + self.epsilon)

    def bias_at(self, points):
        """The OPES bias V at ``points`` (one point: k values, or (m, k)), kJ/mol: what the
        Context applies (without ``extra_energy``). One point gives a float."""
        array = self._as_points(points)
        values = self._bias(array)
        return float(values[0]) if np.ndim(points) == 1 else values

    def getBias(self, simulation):
        """The bias acting now on a Simulation (or Context), a Quantity in kJ/mol."""
        context = simulation if isinstance(simulation, openmm.Context) else simulation.context
        return self.bias_at(self.current_values(context)) * unit.kilojoule_per_mole

    def free_energy_at(self, points) -> np.ndarray:
        """``F = -V/(1 - 1/gamma)`` at ``points`` (m, k), kJ/mol (up to a constant)."""
        scale = 1.0 if math.isinf(self.bias_factor) else 1.0 - 1.0 / self.bias_factor
        return -self._bias(self._as_points(points)) / scale

    def free_energy_grid(self, ranges=None, points=None) -> tuple:
        """The free energy on a grid (k <= 3): ``(axes, F)`` with ``axes`` a list of k 1D grids
        and ``F[i, j, ...]`` at ``(axes[0][i], axes[1][j], ...)``, kJ/mol floats.

        ``ranges``: one ``(minimum, maximum)`` per biased CV (OpenMM units); default: one period
        ``[-p/2, p/2]`` for a periodic CV, else the kernels' centres +- 3 of their largest sigma.
        ``points``: per dimension (default 200, 100, 40 for 1, 2, 3 CVs).
        """
        k = len(self._biased)
        if k > 3:
            raise ValueError(f"a free-energy grid needs 1 to 3 CVs, this bias has {k}; use "
                             "free_energy_at(points)")
        if ranges is None:
            if self.n_kernels == 0:
                raise ValueError("no kernels yet: give ranges for the grid")
            reach = 3.0 * self._sigmas.max(0)
            ranges = [(-p / 2, p / 2) if p > 0 else (lo - r, hi + r) for p, lo, hi, r in
                      zip(self._periods, self._centers.min(0), self._centers.max(0), reach)]
        ranges = list(ranges)
        if len(ranges) != k:
            raise ValueError(f"{len(ranges)} ranges for {k} biased CVs")
        points = _DEFAULT_POINTS[k] if points is None else whole_steps(points, "points", minimum=2)
        axes = [np.linspace(float(lo), float(hi), points) for lo, hi in ranges]
        mesh = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, k)
        return axes, self.free_energy_at(mesh).reshape([points] * k)

    def getFreeEnergy(self, ranges=None, points=None):
        """The free energy on a grid as ``app.Metadynamics.getFreeEnergy()``: a numpy array
        Quantity in kJ/mol with the CVs in *reverse* order (``fe[j, i]`` at ``(axes[0][i],
        axes[1][j])``); the grid is that of :meth:`free_energy_grid`."""
        _, fe = self.free_energy_grid(ranges, points)
        return np.ascontiguousarray(fe.transpose()) * unit.kilojoule_per_mole

    # -- kernels --------------------------------------------------------------------------------
    def _difference(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """``b - a``, the shortest one on the circle for periodic CVs."""
        d = np.asarray(b, dtype=float) - np.asarray(a, dtype=float)
        p = np.where(self._periods > 0, self._periods, 1.0)
        return np.where(self._periods > 0, d - p * np.floor(d / p + 0.5), d)

    def _mergeable(self, center: np.ndarray, giver: Optional[int]) -> Optional[int]:
        """The kernel nearest to ``center`` within the threshold (in its sigmas), or None."""
        if self.n_kernels == 0:
            return None
        norm2 = ((self._difference(center[None, :], self._centers) / self._sigmas) ** 2).sum(1)
        if giver is not None:
            norm2[giver] = np.inf
        best = int(np.argmin(norm2))
        return best if norm2[best] < self.compression_threshold ** 2 else None

    def _merge(self, taker: int, height: float, center: np.ndarray, sigma: np.ndarray) -> None:
        """Merge a kernel into kernel ``taker`` (PLUMED's ``mergeKernels``)."""
        h1, c1, s1 = self._heights[taker], self._centers[taker].copy(), self._sigmas[taker]
        periodic = self._periods > 0
        c1 = np.where(periodic, center + self._difference(center, c1), c1)
        h = h1 + height
        c = (h1 * c1 + height * center) / h
        ss = (h1 * (s1 ** 2 + c1 ** 2) + height * (sigma ** 2 + center ** 2)) / h - c ** 2
        p = np.where(periodic, self._periods, 1.0)
        self._centers[taker] = np.where(periodic, c - p * np.floor(c / p + 0.5), c)
        self._sigmas[taker] = np.sqrt(ss)
        self._heights[taker] = h

    def _add_kernel(self, height: float, center: np.ndarray, sigma: np.ndarray) -> tuple:
        """Add (or merge) one kernel; returns the delta kernels (signed heights, centres,
        sigmas) and whether the list changed other than by an append."""
        delta = []
        taker = self._mergeable(center, None) if self.compression_threshold > 0 else None
        if taker is None:
            self._centers = np.vstack([self._centers, center[None, :]])
            self._sigmas = np.vstack([self._sigmas, sigma[None, :]])
            self._heights = np.append(self._heights, height)
            delta.append((height, center.copy(), sigma.copy()))
            return delta, False
        delta.append((-self._heights[taker], self._centers[taker].copy(), self._sigmas[taker].copy()))
        self._merge(taker, height, center, sigma)
        delta.append((self._heights[taker], self._centers[taker].copy(), self._sigmas[taker].copy()))
        giver = taker
        taker = self._mergeable(self._centers[giver], giver)
        while taker is not None:
            delta.pop()
            delta.append((-self._heights[taker], self._centers[taker].copy(),
                          self._sigmas[taker].copy()))
            if taker > giver:
                taker, giver = giver, taker
            self._merge(taker, self._heights[giver], self._centers[giver].copy(),
                        self._sigmas[giver].copy())
            delta.append((self._heights[taker], self._centers[taker].copy(),
                          self._sigmas[taker].copy()))
            keep = np.arange(self.n_kernels) != giver
            self._centers, self._sigmas = self._centers[keep], self._sigmas[keep]
            self._heights = self._heights[keep]
            giver = taker
            taker = self._mergeable(self._centers[giver], giver)
        return delta, True

    def _update_zed(self, delta: list, old_kde_norm: float, old_n: int) -> None:
        """Z = mean of P over the kernels' centres, updated from the delta kernels (PLUMED)."""
        n, nd = self.n_kernels, len(delta)
        c, s, h, p = self._centers, self._sigmas, self._heights, self._periods
        if n * n < 3 * n * nd + 2 * nd * nd + 100:
            total = float(gaussian_sum(c, c, h, s, p).sum())
        else:
            dh = np.array([d[0] for d in delta])
            dc = np.array([d[1] for d in delta])
            ds = np.array([d[2] for d in delta])
            sign = np.where(dh < 0, -1.0, 1.0)
            change = float(gaussian_sum(c, dc, dh, ds, p).sum())
            change += float((sign * gaussian_sum(dc, c, h, s, p)).sum())
            change -= float((sign * gaussian_sum(dc, dc, dh, ds, p)).sum())
            total = self.zed * old_kde_norm * old_n + change
        self.zed = total / self.kde_norm / n

    def _push_transform(self) -> None:
        self.force.setHillsLogTransform(self.prefactor, self.zed * self.kde_norm, self.epsilon)

    def _push_kernels(self, rebuilt: bool) -> None:
        if rebuilt:
            self.force.clearHills()
            for c, h, s in zip(self._centers, self._heights, self._sigmas):
                self.force.addHill(c.tolist(), float(h), s.tolist())
        else:
            self.force.addHill(self._centers[-1].tolist(), float(self._heights[-1]),
                               self._sigmas[-1].tolist())
        self._push_transform()

    def _sample_variance(self, point: np.ndarray) -> None:
        """Welford's running variance with an exponentially decaying mean (PLUMED)."""
        self.adaptive_counter += 1
        tau = min(self.adaptive_counter, self._adaptive_samples)
        diff = self._difference(self._av_cv, point)
        self._av_cv = self._av_cv + diff / tau
        self._av_m2 = self._av_m2 + diff * self._difference(self._av_cv, point)

    def update_at(self, point, step: int) -> bool:
        """What :meth:`step` does at ``step`` with the biased CVs at ``point``: a running-variance
        sample (adaptive sigma, every ``variance_interval`` steps), then a kernel if ``step`` is
        a multiple of ``pace`` and the adaptive-sigma stride is over (PLUMED's ``update()``).
        Changes the numpy state and the force; returns whether a kernel was added (then
        push it to a Context with ``force.updateParametersInContext``; with an ``outbox`` the
        kernel goes there as a row and nothing changes). Public for replays of
        a CV time series and for tests."""
        point = self._as_points(point)[0]
        if self._adaptive:
            if step % self.variance_interval == 0:
                self._sample_variance(point)
            if self.adaptive_counter < self._adaptive_samples and self.counter == 1:
                return False  # no bias before sigma has been measured
        if step % self.pace != 0:
            return False
        return self._deposit(point)

    # -- depositions: applied at once, or rows shared with other walkers ------------------------
    @property
    def adaptive_sigma(self) -> bool:
        """Whether the kernels' initial widths come from the CVs' running variance."""
        return self._adaptive

    @property
    def depositions(self) -> int:
        """Kernels deposited so far, before compression (this walker's and, with multiple
        walkers, the others' it has applied)."""
        return self.counter - 1

    @property
    def deposition_width(self) -> int:
        """Numbers per deposition row of :meth:`deposition_at`: ``2 k + 2``."""
        return 2 * len(self._biased) + 2

    def deposition_at(self, point) -> np.ndarray:
        """The kernel this bias deposits at ``point`` (the biased CVs, OpenMM units), as a row
        ``(centre_1..k, sigma_1..k, weight, height)`` with ``weight = exp(V(point)/kT)``; the
        state is not changed. :meth:`add_depositions` applies rows (any walker's, in one order
        for all walkers)."""
        point = self._as_points(point)[0].copy()
        current_bias = float(self._bias(point[None, :])[0])
        weight = math.exp(current_bias / self.kT)
        counter = self.counter + 1
        sum_weights = self.sum_weights + weight
        sum_weights2 = self.sum_weights2 + weight * weight
        height = 1.0 if self.explore else weight
        k = len(point)
        if self._adaptive:
            if self.explore:
                sigma = np.sqrt(self._av_m2 / self.adaptive_counter)
            else:
                m2 = self._first_variance() if counter == 2 else self._av_m2
                sigma = np.sqrt(m2 / self.adaptive_counter * (1.0 - self.prefactor / self.kT))
        else:
            sigma = self._sigma0.copy()
        if not self.fixed_sigma:
            size = float(counter) if self.explore else (
                (1.0 + sum_weights) ** 2 / (1.0 + sum_weights2))
            rescaling = (size * (k + 2.0) / 4.0) ** (-1.0 / (4 + k))
            if self._sigma_min is None:
                sigma = sigma * rescaling
                height /= rescaling ** k
            else:
                factors = np.maximum(rescaling, self._sigma_min / sigma)
                sigma = sigma * factors
                height /= float(np.prod(factors))
        if not np.all(np.isfinite(sigma) & (sigma > 0)):
            raise ValueError(f"OPES: kernel width {sigma.tolist()} is not positive (a CV that "
                             "did not move during the adaptive-sigma stride?); pass sigma")
        return np.concatenate([point, sigma, [weight, height]])

    def _first_variance(self) -> np.ndarray:
        """The running variance at the first kernel, corrected for the unbiased start."""
        return self._av_m2 / (1.0 - self.prefactor / self.kT)

    def add_depositions(self, rows, context: Optional[openmm.Context] = None) -> None:
        """Apply deposition rows of :meth:`deposition_at` in order (the sums of weights, the
        kernels with compression, Z) and update ``context`` (optional) once."""
        rows = np.asarray(rows, dtype=float).reshape(-1, self.deposition_width)
        k = len(self._biased)
        for row in rows:
            old_kde_norm, old_n = self.kde_norm, self.n_kernels
            weight, height = float(row[2 * k]), float(row[2 * k + 1])
            self.counter += 1
            self.sum_weights += weight
            self.sum_weights2 += weight * weight
            delta, rebuilt = self._add_kernel(height, row[:k].copy(), row[k:2 * k].copy())
            self._update_zed(delta, old_kde_norm, old_n)
            self._push_kernels(rebuilt)
        if context is not None and len(rows):
            self.force.updateParametersInContext(context)

    def _deposit(self, point: np.ndarray) -> bool:
        """Deposit at ``point``: applied now, or (``outbox`` a list) appended to it as a row
        for a shared bias. Returns whether the force changed."""
        row = self.deposition_at(point)
        if self._adaptive and not self.explore and self.counter == 1:
            self._av_m2 = self._first_variance()  # the first estimate is from the unbiased run
        if self.outbox is not None:
            self.outbox.append(row)
            return False
        self.add_depositions(row[None, :])
        return True

    # -- stepping -------------------------------------------------------------------------------
    def _blow_up(self, what: str, step: int) -> SimulationBlowUp:
        last = self._log.last_logged_step
        return SimulationBlowUp(
            f"OPES: {what} at step {step}; the bias, its state and the log were not updated "
            f"from this step on (last log row: step {last})", step=step,
            last_good_step=last if last >= 0 else None)

    def _checked_values(self, context: openmm.Context, step: int) -> np.ndarray:
        values = np.asarray(self.force.getCollectiveVariableValues(context), dtype=float)
        if not np.all(np.isfinite(values)):
            bad = {name: float(v) for name, v in zip(self.force.cv_names, values)
                   if not math.isfinite(v)}
            raise self._blow_up(f"non-finite CV values {bad}", step)
        return values

    def step(self, simulation, steps: int, log: Union[str, os.PathLike, None] = None) -> None:
        """Advance ``simulation`` by ``steps``: a kernel every ``pace`` steps (after the
        adaptive-sigma stride), a running-variance sample every ``variance_interval`` steps,
        a log row every ``log_interval`` steps.

        Log rows (CSV, header first): ``step, time_ps, <every CV of the module>, bias_kJmol,
        rct_kJmol, log_zed, n_kernels, neff``. ``bias_kJmol`` is V(s(t), t), the bias acting
        on that frame (before a kernel deposited at the same step); the reweighting weight of
        the frame is ``exp(bias_kJmol / kT)`` (for OPES and OPES-explore; normalise over the
        frames used). ``rct_kJmol`` = kT log(sum w / n) and ``log_zed`` = log Z belong to the
        same bias (PLUMED's ``rct``, ``zed``); ``n_kernels`` is the compressed kernel count and
        ``neff`` the effective sample size. A non-finite CV stops the run with
        :class:`~openmm_geom.errors.SimulationBlowUp` naming the step, before anything is
        written for it.
        """
        self._log.redirect(log)
        remaining = whole_steps(steps, "steps", minimum=0)
        context = simulation.context
        handle = None
        try:
            while remaining > 0:
                current = simulation.currentStep
                chunk = min(self.pace - current % self.pace, remaining)
                if self._log.path is not None:
                    chunk = min(chunk, self.log_interval - current % self.log_interval)
                if self._adaptive:
                    chunk = min(chunk, self.variance_interval - current % self.variance_interval)
                try:
                    simulation.step(chunk)
                except openmm.OpenMMException as error:
                    raise self._blow_up(str(error), context.getStepCount()) from error
                remaining -= chunk
                current = simulation.currentStep
                self._step = current
                logging = self._log.due(current, self.log_interval)
                sampling = self._adaptive and current % self.variance_interval == 0
                depositing = current % self.pace == 0
                if not (logging or sampling or depositing):
                    continue
                try:
                    values = self._checked_values(context, current)
                except openmm.OpenMMException as error:
                    raise self._blow_up(str(error), current) from error
                point = values[self._biased]
                if logging:
                    if handle is None:
                        handle = self._log.open()
                    self._log.write(handle, current, self._log_row(context, current, values, point))
                if (sampling or depositing) and self.update_at(point, current):
                    self.force.updateParametersInContext(context)
        finally:
            if handle is not None:
                handle.close()

    # -- the reweighting log ------------------------------------------------------------------
    def log_columns(self) -> list:
        return ["step", "time_ps", *self.force.cv_names, "bias_kJmol", "rct_kJmol", "log_zed",
                "n_kernels", "neff"]

    def _log_row(self, context, step: int, values: np.ndarray, point: np.ndarray) -> list:
        fields = [str(step), repr(context.getTime().value_in_unit(unit.picosecond))]
        fields += [repr(float(v)) for v in values]
        fields += [repr(float(self._bias(point[None, :])[0])), repr(self.rct),
                   repr(math.log(self.zed)), str(self.n_kernels), repr(self.neff)]
        return fields

    # -- checkpoint / restore -----------------------------------------------------------------
    def _description(self) -> dict:
        return {
            "explore": self.explore,
            "cv_names": list(self._biased_names),
            "module_cv_names": self.force.cv_names,
            "model_sha256": self.model_sha256,
            "periods": self._periods.tolist(),
            "temperature_K": self.temperature,
            "barrier_kJmol": self.barrier,
            "bias_factor": self.bias_factor if math.isfinite(self.bias_factor) else "inf",
            "epsilon": self.epsilon,
            "pace": self.pace,
            "sigma": None if self._sigma0 is None else self._sigma0.tolist(),
            "adaptive_sigma_stride": self.adaptive_sigma_stride,
            "variance_interval": self.variance_interval,
            "sigma_min": None if self._sigma_min is None else self._sigma_min.tolist(),
            "fixed_sigma": self.fixed_sigma,
            "compression_threshold": self.compression_threshold,
        }

    def save_state(self, path: Union[str, os.PathLike],
                   context: Optional[openmm.Context] = None) -> Path:
        """Write the OPES state (kernels, weights, Z, running variance, step, settings, CV
        model hash) to an npz file, atomically. Save it with ``simulation.saveCheckpoint`` at
        the same step; ``context`` (optional) supplies the step count."""
        step = context.getStepCount() if context is not None else self._step
        meta = {"format": format_tag(STATE_KIND, STATE_VERSION), "model_name": self.model_name,
                "step": int(step), "counter": int(self.counter),
                "adaptive_counter": int(self.adaptive_counter),
                "last_logged_step": int(self._log.last_logged_step), **self._description()}
        scalars = np.array([self.sum_weights, self.sum_weights2, self.zed])
        return atomic_savez(path, meta=np.array(json.dumps(meta)), centers=self._centers,
                            sigmas=self._sigmas, heights=self._heights, scalars=scalars,
                            av_cv=self._av_cv, av_m2=self._av_m2)

    def load_state(self, path: Union[str, os.PathLike], context: openmm.Context, *,
                   check_step: bool = True) -> None:
        """Restore a state written by :meth:`save_state` into this object and ``context``.

        Raises :class:`~openmm_geom.errors.CheckpointMismatchError` (a ``ValueError``) for a
        state of another CV model or other settings (nothing is changed), and ``ValueError``
        (``check_step``) if the Context's step differs from the saved one (load the simulation
        checkpoint first). The log is cut back to the saved step.
        """
        data, meta = read_versioned_npz(path, STATE_KIND, (STATE_VERSION,),
                                        required=("centers", "sigmas", "heights", "scalars",
                                                  "av_cv", "av_m2"),
                                        what="OPES state file")
        if meta["model_sha256"] != self.model_sha256:
            raise CheckpointMismatchError(
                f"{path} was written for another CV model ({meta['model_name']}, sha256 "
                f"{meta['model_sha256'][:12]}...); this force's model is {self.model_name} "
                f"(sha256 {self.model_sha256[:12]}...)")
        mine = self._description()
        different = [key for key in mine
                     if key != "model_sha256" and not same_setting(mine[key], meta.get(key))]
        if different:
            detail = "; ".join(f"{key}: saved {meta.get(key)!r}, here {mine[key]!r}"
                               for key in different)
            raise CheckpointMismatchError(f"{path} does not match this OPES: {detail}")
        if check_step and context.getStepCount() != meta["step"]:
            raise ValueError(f"{path} was saved at step {meta['step']} but the Context is at step "
                             f"{context.getStepCount()}; load the simulation checkpoint first "
                             "(or pass check_step=False to start a new run from this bias)")
        k = len(self._biased)
        self._centers = np.array(data["centers"], dtype=float).reshape(-1, k)
        self._sigmas = np.array(data["sigmas"], dtype=float).reshape(-1, k)
        self._heights = np.array(data["heights"], dtype=float)
        self.sum_weights, self.sum_weights2, self.zed = (float(v) for v in data["scalars"])
        self._av_cv = np.array(data["av_cv"], dtype=float)
        self._av_m2 = np.array(data["av_m2"], dtype=float)
        self.counter = int(meta["counter"])
        self.adaptive_counter = int(meta["adaptive_counter"])
        self._push_kernels(rebuilt=True)
        self.force.updateParametersInContext(context)
        self._step = int(meta["step"])
        if self._log.path is not None:
            self._log.truncate(min(int(meta["step"]), int(meta.get("last_logged_step", meta["step"]))))
