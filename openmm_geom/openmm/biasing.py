"""Biasing along the CVs of a ``TorchCVForce``: umbrella restraints and well-tempered
metadynamics on any number of CVs.

Both put the bias into one ``TorchCVForce``, so the CV model runs once per step however many
CVs are biased. Metadynamics either deposits Gaussian hills into a numpy grid held by a
tabulated function of the energy expression (1 to 3 CVs, like ``openmm.app.Metadynamics``), or
keeps them as native Gaussian hills of the force (any number of CVs, cost O(hills * CVs) per
step). Both reach a running Context with ``updateParametersInContext`` (no Context rebuild).
The bias state (grid, hills, step) is saved and restored with :meth:`Metadynamics.save_state`
/ :meth:`Metadynamics.load_state`; a CSV time series of the CVs, the bias and the reweighting
offset c(t) is written for reweighting.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import numpy as np
import openmm
import openmm.unit as unit

from ..io import atomic_savez, format_tag, read_versioned_npz, sha256_of_bytes
from ..modelfile import ExportedModel
from ..units import CV_UNITS, MOLAR_GAS_CONSTANT_KJ, to_openmm_units
from ._biascommon import (BiasedCVs, BiasLog, gaussian_sum, logsumexp, recorded_periods,
                          same_setting, whole_steps)
from .cvforce import TorchCVForce

__all__ = ["restraint_force", "GridAxis", "Metadynamics"]


def _difference(name: str, center: str, period: Optional[float]) -> str:
    """The signed difference ``name - center``; on a circle of ``period`` (None: a line) the
    shortest one, smooth everywhere but half a period away."""
    if period is None:
        return f"({name}-{center})"
    if math.isclose(period, 2 * math.pi, rel_tol=1e-12):
        return f"atan2(sin({name}-{center}), cos({name}-{center}))"
    r = period / (2 * math.pi)  # the circle's radius in CV units
    return f"({r!r}*atan2(sin(({name}-{center})/{r!r}), cos(({name}-{center})/{r!r})))"


def _cv_unit(value):
    """The OpenMM unit of a CV value given as a Quantity (nm, rad, dimensionless), or None."""
    if not unit.is_quantity(value):
        return None
    return next((u for u in CV_UNITS if value.unit.is_compatible(u)), None)


#: A CV restraint's force constant: kJ/mol per (CV unit)^2, for nm, rad or plain-number CVs.
_FORCE_CONSTANTS = {None: (unit.kilojoule_per_mole / unit.nanometer ** 2,
                           unit.kilojoule_per_mole / unit.radian ** 2, unit.kilojoule_per_mole),
                    unit.nanometer: (unit.kilojoule_per_mole / unit.nanometer ** 2,),
                    unit.radian: (unit.kilojoule_per_mole / unit.radian ** 2,),
                    unit.dimensionless: (unit.kilojoule_per_mole,)}


def restraint_force(model, restraints: Mapping[str, tuple], *,
                    periodic: Optional[Sequence[str]] = None, **force_options) -> TorchCVForce:
    """Harmonic restraints ``0.5 k (cv - cv0)^2`` on any CVs of one module, as one force.

    Parameters
    ----------
    model : path, ScriptModule or ExportedModel of an exported CV module
    restraints : mapping CV name -> (k, centre)
        ``k``: the force constant, a Quantity such as ``500*kilojoule_per_mole/radian**2``
        or ``1000*kilocalorie_per_mole/angstrom**2``, or a plain number in kJ/mol per CV unit
        squared (kJ/mol/rad^2 for an angle, kJ/mol/nm^2 for a distance). ``centre``: the
        umbrella's centre, a Quantity (``-60*degree``, ``3*angstrom``) or a plain number in
        the CV's OpenMM unit (rad, nm). When the centre is a Quantity, ``k`` must be an energy
        per its unit squared. Each CV gets two global parameters, ``k_<cv>`` and ``<cv>0``
        (in OpenMM units); move the umbrella during a simulation with
        ``context.setParameter("<cv>0", value)``.
    periodic : sequence of CV names, optional
        The CVs whose difference is taken on the circle (shortest signed difference), with the
        period the model file records for them (``cv_periods``; 2 pi if none is recorded).
        Default: every CV the model file records as periodic (e.g. the dihedrals of
        ``Dihedrals``); pass ``()`` for plain differences everywhere.
    force_options : passed to :class:`TorchCVForce` (``particles``, ``force_group``, ...)

    Returns
    -------
    TorchCVForce

    Raises
    ------
    TypeError
        A ``k`` or centre of the wrong dimension (the message names the CV).
    ValueError
        No restraints, a negative or non-finite ``k``, a CV the module does not have.
    """
    if not restraints:
        raise ValueError("no restraints given")
    model = ExportedModel.load(model, allow_bare=True, allow_package=True)
    names = model.cv_names(force_options.get("cv_names"))
    unknown = sorted(set(restraints) - set(names))
    if unknown:
        raise ValueError(f"no CVs named {unknown}; the module's CVs are {names}")
    periods = recorded_periods(model, names, periodic)
    terms, parameters = [], {}
    for name, pair in restraints.items():
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise TypeError(f"restraints[{name!r}] must be a pair (k, centre), got {pair!r}")
        k, center = pair
        what = f"restraints[{name!r}]"
        center_value = to_openmm_units(center, f"{what} centre", CV_UNITS)
        k_value = to_openmm_units(k, f"{what} k", _FORCE_CONSTANTS[_cv_unit(center)],
                                  nonnegative=True)
        diff = _difference(name, f"{name}0", periods[name])
        terms.append(f"0.5*k_{name}*{diff}^2")
        parameters[f"k_{name}"], parameters[f"{name}0"] = k_value, center_value
    return TorchCVForce(model, " + ".join(terms), global_parameters=parameters, **force_options)


@dataclasses.dataclass
class GridAxis:
    """One biased CV of :class:`Metadynamics`.

    Parameters
    ----------
    cv : str
        The CV's name in the module.
    minimum, maximum : float or Quantity
        Bounds of the grid (for a periodic CV, one period, e.g. ``-pi..pi`` or
        ``-180*degree..180*degree``). Plain numbers are in the CV's OpenMM unit (rad for an
        angle, nm for a distance); Quantities are converted to it.
    width : float or Quantity
        The Gaussian hill's standard deviation, in the same unit (``20*degree``, ``0.35``).
    periodic : bool
        Whether the CV is periodic with period ``maximum - minimum``.
    points : int
        Number of grid points (default: 5 per width, at least 20).

    After construction ``minimum``, ``maximum`` and ``width`` are floats in OpenMM units. With
    native hills (``method="hills"``) no grid is allocated: only ``width``, ``periodic`` and,
    for a periodic CV, the period ``maximum - minimum`` matter.
    """

    cv: str
    minimum: float
    maximum: float
    width: float
    periodic: bool = False
    points: int = 0

    def __post_init__(self):
        given = {"minimum": self.minimum, "maximum": self.maximum, "width": self.width}
        dimensions = {key: _cv_unit(value) for key, value in given.items()
                      if unit.is_quantity(value)}
        for key, value in given.items():
            setattr(self, key, to_openmm_units(value, f"GridAxis {self.cv!r} {key}", CV_UNITS,
                                               positive=key == "width"))
        if len(set(dimensions.values())) > 1:
            raise TypeError(f"GridAxis {self.cv!r}: minimum, maximum and width must be of one "
                            f"dimension, got " + ", ".join(f"{k} {given[k]}" for k in dimensions))
        if not self.maximum > self.minimum:
            raise ValueError(f"GridAxis {self.cv!r}: maximum must exceed minimum, got minimum "
                             f"{given['minimum']}, maximum {given['maximum']}")
        self.points = int(self.points)
        if self.points == 0:
            self.points = max(20, int(math.ceil(5 * (self.maximum - self.minimum) / self.width)) + 1)
        if self.points < 4:
            raise ValueError(f"GridAxis {self.cv!r}: at least 4 grid points are needed for "
                             "splines")

    @property
    def period(self) -> float:
        """``maximum - minimum`` for a periodic CV, 0 otherwise."""
        return self.maximum - self.minimum if self.periodic else 0.0

    @property
    def grid(self) -> np.ndarray:
        return np.linspace(self.minimum, self.maximum, self.points)

    def distance(self, values: np.ndarray, center: float) -> np.ndarray:
        d = values - center
        if self.periodic:
            period = self.maximum - self.minimum
            d = d - period * np.round(d / period)
        return d


_FUNCTIONS = {1: openmm.Continuous1DFunction, 2: openmm.Continuous2DFunction,
              3: openmm.Continuous3DFunction}
STATE_KIND = "metadynamics-state"
STATE_VERSION = 1
_METHODS = ("auto", "grid", "hills")


class Metadynamics(BiasedCVs):
    """Well-tempered metadynamics on any number of CVs of a ``TorchCVForce``.

    Parameters
    ----------
    system : openmm.System
        The force is added to it.
    model : path, ScriptModule or ExportedModel of an exported CV module
    axes : sequence of :class:`GridAxis`, one per biased CV (each CV at most once)
    temperature : Quantity or float
        The simulation's temperature (``300*kelvin``; a plain number is in K); > 0.
    bias_factor : float > 1
        The well-tempered gamma: the CVs are sampled as if at ``temperature * bias_factor``.
    height : Quantity or float
        Initial hill height (``1.2*kilojoule_per_mole``, ``0.3*kilocalorie_per_mole``; a plain
        number is in kJ/mol); > 0.
    frequency : int
        Steps between depositions.
    extra_energy : optional further expression of the CVs added to the bias (e.g. walls); it is
        not part of ``V`` in :meth:`bias_at`, the log or the free energy
    method : ``"auto"`` (default: ``"grid"`` for 1 to 3 CVs, ``"hills"`` beyond), ``"grid"``
        or ``"hills"``
    log : path of a CSV time series for reweighting (see :meth:`step`), optional
    log_interval : steps between log rows (default: ``frequency``)
    force_options : passed to :class:`TorchCVForce`

    ``method="grid"``: the bias is ``metad_bias(cv...)``, a tabulated function (splines) of the
    biased CVs, refreshed from a numpy grid at each deposition. ``method="hills"``: the hills
    are native Gaussians of the force, ``sum_h h exp(-0.5 sum_d (delta_d/width_d)^2)``
    (``delta`` on the circle for periodic CVs), evaluated exactly at every step in
    O(hills * CVs), with no grid and no limit on the number of CVs.

    Hill heights are scaled by ``exp(-V(s)/(k_B (gamma-1) T))``; the free energy is
    ``-(gamma/(gamma-1)) V`` (:meth:`getFreeEnergy` on the grid, :meth:`free_energy_at` at any
    points). Each deposition is recorded in :attr:`hills` as ``(s_1, ..., s_k, height)``.

    The methods shared with ``openmm.app.Metadynamics`` have its names and meanings:
    :meth:`step`, :meth:`getFreeEnergy`, :meth:`getCollectiveVariables`. The numpy-first
    :meth:`free_energy` and :meth:`current_values` remain as aliases in axis order.
    """

    def __init__(self, system: openmm.System, model, axes: Sequence[GridAxis], temperature,
                 bias_factor: float, height, frequency: int, *, extra_energy: str = "",
                 method: str = "auto", log: Union[str, os.PathLike, None] = None,
                 log_interval: Optional[int] = None, **force_options):
        axes = list(axes)
        if not axes:
            raise ValueError("no axes given: metadynamics needs at least one CV")
        names = [axis.cv for axis in axes]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"CVs {repeated} are listed more than once; bias each CV once "
                             "(grid metadynamics supports 1 to 3 CVs, hills any number)")
        if method not in _METHODS:
            raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
        if method == "auto":
            method = "grid" if len(axes) <= 3 else "hills"
        if method == "grid" and not 1 <= len(axes) <= 3:
            raise ValueError(f"grid metadynamics supports 1 to 3 CVs, got {len(axes)}; "
                             "use method='hills' for more")
        temperature = to_openmm_units(temperature, "temperature", unit.kelvin, positive=True)
        height = to_openmm_units(height, "height", unit.kilojoule_per_mole, positive=True)
        bias_factor = to_openmm_units(bias_factor, "bias_factor", unit.dimensionless)
        if not bias_factor > 1:
            raise ValueError(f"bias_factor must be > 1, got {bias_factor:g}")
        frequency = whole_steps(frequency, "frequency")
        if log_interval is not None:
            log_interval = whole_steps(log_interval, "log_interval")
        self.method = method
        self.axes = axes
        self.temperature = temperature
        self.height = height
        self.bias_factor = bias_factor
        self.frequency = frequency
        self.kT = MOLAR_GAS_CONSTANT_KJ * self.temperature
        self.delta_kT = self.kT * (self.bias_factor - 1)
        self.hills: list = []
        self.log_interval = int(log_interval) if log_interval is not None else self.frequency
        self._log = BiasLog(log, self.log_columns, "metadynamics")
        self._step = 0  # the last step count seen (step(), deposit(), save/load_state)
        #: None: hills are applied at once; a list: appended to it as rows of
        #: :meth:`deposition_at` instead (multiple walkers, :mod:`openmm_geom.openmm.walkers`)
        self.outbox: Optional[list] = None
        k = len(axes)
        self._widths = np.array([axis.width for axis in axes], dtype=float)
        self._periods = np.array([axis.period for axis in axes], dtype=float)
        self._centers = np.zeros((0, k))
        self._heights = np.zeros(0)
        self._center_bias = np.zeros(0)  # V(s_j, t) at every hill centre (hills c(t))
        if method == "grid":
            self.bias = np.zeros([axis.points for axis in axes])
            expression = f"metad_bias({', '.join(names)})"
            if extra_energy:
                expression += f" + {extra_energy}"
        else:
            self.bias = None
            expression = extra_energy or "0"
        model = ExportedModel.load(model, allow_bare=True, allow_package=True)
        self.force = TorchCVForce(model, expression, **force_options)
        missing = [name for name in names if name not in self.force.cv_names]
        if missing:
            raise ValueError(f"no CVs named {missing}; the module's CVs are {self.force.cv_names}")
        self._biased = [self.force.cv_names.index(name) for name in names]
        self._biased_names = names
        if method == "grid":
            periodic = [axis.periodic for axis in axes]
            if any(periodic) and not all(periodic):
                raise ValueError("OpenMM's tabulated functions are periodic in all or no "
                                 "dimensions (use method='hills' to mix them)")
            self._function = _FUNCTIONS[k](*self._function_arguments(), all(periodic))
            self.force.addTabulatedFunction("metad_bias", self._function)
        else:
            self._function = None
            self.force.setHillsVariables(self._biased, self._widths.tolist(),
                                         self._periods.tolist())
        self.model_sha256 = sha256_of_bytes(self.force.getSerializedModule())
        self.model_name = model.name
        system.addForce(self.force)

    # -- the bias -----------------------------------------------------------------------------
    def _function_arguments(self) -> list:
        """Arguments of setFunctionParameters (the constructor adds the periodic flag)."""
        sizes = [axis.points for axis in self.axes]
        bounds = [v for axis in self.axes for v in (axis.minimum, axis.maximum)]
        values = self.bias.ravel(order="F")  # x varies fastest, as OpenMM expects
        return [values, *bounds] if len(self.axes) == 1 else [*sizes, values, *bounds]

    def _hills_sum(self, points: np.ndarray, centers: np.ndarray, heights: np.ndarray) -> np.ndarray:
        """sum_h height_h * gaussian(point - centre_h) at each of ``points`` (m, k)."""
        return gaussian_sum(points, centers, heights, self._widths, self._periods)

    def _grid_bias(self, points: np.ndarray) -> np.ndarray:
        """The bias the grid tabulates at ``points`` (m, k), kJ/mol.

        The grid holds the sum of the deposited Gaussians at its nodes, and the Context splines
        between them; so between nodes the exact sum is a closer account of the applied bias
        than any interpolation of the grid in numpy (multilinear was off by up to 0.45 kJ/mol
        on a 48^3 grid where the splines were within 0.005). Outside a non-periodic axis'
        range OpenMM's tabulated functions are zero, and so is this.
        """
        bias = self._hills_sum(points, self._centers, self._heights)
        inside = np.ones(len(points), dtype=bool)
        for dim, axis in enumerate(self.axes):
            if not axis.periodic:
                inside &= (points[:, dim] >= axis.minimum) & (points[:, dim] <= axis.maximum)
        return np.where(inside, bias, 0.0)

    def bias_at(self, point) -> float:
        """The metadynamics bias V at ``point`` (one value per axis), kJ/mol.

        Hills: the exact sum of Gaussians the Context applies. Grid: the same exact sum, which
        the grid tabulates at its nodes and the Context's splines follow between them (zero
        outside a non-periodic axis' range, as in the Context).
        """
        point = self._as_points(point)
        if len(point) != 1:
            raise ValueError("bias_at takes one point; use free_energy_at for many")
        if self.method == "grid":
            return float(self._grid_bias(point)[0])
        return float(self._hills_sum(point, self._centers, self._heights)[0])

    def free_energy_at(self, points) -> np.ndarray:
        """Free-energy estimate ``-(gamma/(gamma-1)) V`` at ``points`` (m, k), kJ/mol."""
        points = self._as_points(points)
        if self.method == "grid":
            bias = self._grid_bias(points)
        else:
            bias = self._hills_sum(points, self._centers, self._heights)
        return -self.bias_factor / (self.bias_factor - 1) * bias

    def free_energy(self) -> np.ndarray:
        """Free-energy estimate on the grid, kJ/mol floats, indexed in axis order.

        ``free_energy()[i, j]`` is at ``(axes[0].grid[i], axes[1].grid[j])``; the same values
        as :meth:`getFreeEnergy`, whose axes are in ``app.Metadynamics``' (reversed) order.
        """
        if self.method != "grid":
            raise ValueError("the free energy on the grid needs method='grid'; with "
                             "method='hills' use free_energy_at(points)")
        return -self.bias_factor / (self.bias_factor - 1) * self.bias

    def getFreeEnergy(self):
        """The free energy on the grid, as ``app.Metadynamics.getFreeEnergy()``.

        ``-(gamma/(gamma-1)) V`` at the grid points, a numpy array Quantity in kJ/mol. As in
        ``app.Metadynamics``, the array has one dimension per CV in *reverse* order (the first
        CV varies along the last dimension, so ``plt.imshow(fe)`` puts it on the x axis): for
        two CVs ``fe[j, i]`` is at ``(axes[0].grid[i], axes[1].grid[j])``. Grid point ``i`` of
        an axis is ``minimum + i*(maximum - minimum)/(points - 1)``. :meth:`free_energy` gives
        the same numbers as plain floats in axis order.

        Raises
        ------
        ValueError
            With ``method="hills"`` (no grid): use :meth:`free_energy_at`.
        """
        return np.ascontiguousarray(self.free_energy().transpose()) * unit.kilojoule_per_mole

    def reweighting_offset(self) -> float:
        """The Tiwary-Parrinello offset c(t) of the current bias, kJ/mol.

        ``c(t) = kT ln( int exp(gamma V/((gamma-1) kT)) ds / int exp(V/((gamma-1) kT)) ds )``.

        Grid: the integrals are trapezoidal sums over the grid (the domain of the axes; for
        periodic axes the duplicated end point is left out). Hills (no grid in k dimensions): the
        estimator ``c(t) = kT ln( (1/n) sum_j exp(V(s_j, t)/kT) )`` over the n deposited hill
        centres ``s_j``. It is the same ratio of integrals if the centres are distributed as
        the well-tempered biased ensemble, ``p(s) ~ exp(V(s,t)/((gamma-1) kT))`` (then
        ``int e^{gamma a V} / int e^{a V} = <e^{V/kT}>_p``), i.e. the bias is quasi-stationary;
        early in a run, when the centres were sampled under a smaller bias, it over-estimates
        c(t). Its domain is the explored region rather than the axes' box, so the grid and
        hills estimates differ by roughly a constant, which cancels in normalised weights.
        Cost O(hills * k) per deposition (V at the centres is updated incrementally).
        """
        if self.method == "grid":
            # trapezoidal rule on the grid (periodic axes: the duplicated end point left out)
            values, log_weights = self.bias, np.zeros(self.bias.shape)
            for dim, axis in enumerate(self.axes):
                if axis.periodic:
                    keep = np.arange(axis.points - 1)
                    values = np.take(values, keep, axis=dim)
                    log_weights = np.take(log_weights, keep, axis=dim)
                else:
                    ends = [slice(None)] * values.ndim
                    for end in (0, -1):
                        ends[dim] = end
                        log_weights[tuple(ends)] += math.log(0.5)
            values, log_weights = values.ravel(), log_weights.ravel()
            return float(self.kT * (logsumexp(self.bias_factor * values / self.delta_kT + log_weights)
                                    - logsumexp(values / self.delta_kT + log_weights)))
        n = len(self._center_bias)
        if n == 0:
            return 0.0
        return float(self.kT * (logsumexp(self._center_bias / self.kT) - math.log(n)))

    # -- depositing and stepping -------------------------------------------------------------
    def _add_hill(self, point: np.ndarray, height: float, bias_before: float) -> None:
        if self.method == "grid":
            hill = np.ones_like(self.bias)
            for dim, (axis, x) in enumerate(zip(self.axes, point)):
                profile = np.exp(-0.5 * (axis.distance(axis.grid, x) / axis.width) ** 2)
                shape = [1] * self.bias.ndim
                shape[dim] = axis.points
                hill = hill * profile.reshape(shape)
            self.bias += height * hill
            for dim, axis in enumerate(self.axes):
                if axis.periodic:  # both ends are the same point; OpenMM's splines require equality
                    last = [slice(None)] * self.bias.ndim
                    first = list(last)
                    last[dim], first[dim] = -1, 0
                    self.bias[tuple(last)] = self.bias[tuple(first)]
            self._function.setFunctionParameters(*self._function_arguments())
        else:
            self.force.addHill(point.tolist(), float(height))
            # V at the earlier centres grows by the new hill; at the new one it is V + height
            self._center_bias = self._center_bias + self._hills_sum(
                self._centers, point[None, :], np.array([height]))
            self._center_bias = np.append(self._center_bias, bias_before + height)
        self._centers = np.vstack([self._centers, point[None, :]])
        self._heights = np.append(self._heights, height)
        self.hills.append((*point.tolist(), height))

    @property
    def depositions(self) -> int:
        """Hills deposited so far (this walker's and, with multiple walkers, the others' it
        has applied)."""
        return len(self._heights)

    @property
    def deposition_width(self) -> int:
        """Numbers per deposition row of :meth:`deposition_at`: ``k + 1``."""
        return len(self.axes) + 1

    def deposition_at(self, point) -> np.ndarray:
        """The hill this bias deposits at ``point`` (one value per axis), as a row
        ``(s_1, ..., s_k, height)``; the state is not changed. :meth:`add_depositions` applies
        rows (any walker's, in one order for all walkers)."""
        point = self._as_points(point)[0].copy()
        height = self.height * math.exp(-self.bias_at(point) / self.delta_kT)
        return np.append(point, height)

    def add_depositions(self, rows, context: Optional[openmm.Context] = None) -> None:
        """Apply deposition rows of :meth:`deposition_at` in order and update ``context``
        (optional) once."""
        rows = np.asarray(rows, dtype=float).reshape(-1, self.deposition_width)
        for row in rows:
            point = row[:-1].copy()
            self._add_hill(point, float(row[-1]), self.bias_at(point))
        if context is not None and len(rows):
            self.force.updateParametersInContext(context)

    def deposit(self, context: openmm.Context) -> float:
        """Add one hill at the current CVs and update the Context; returns its height.

        With an ``outbox`` (a list; multiple walkers) the hill is appended to it as a row of
        :meth:`deposition_at` instead, and nothing changes here."""
        row = self.deposition_at(self.current_values(context))
        self._step = context.getStepCount()
        if self.outbox is not None:
            self.outbox.append(row)
        else:
            self.add_depositions(row[None, :], context)
        return float(row[-1])

    def step(self, simulation, steps: int, log: Union[str, os.PathLike, None] = None) -> None:
        """Advance ``simulation`` by ``steps``, depositing a hill every ``frequency`` steps
        (as ``app.Metadynamics.step``).

        If a log is configured (here or in the constructor), every ``log_interval`` steps a row
        ``step, time_ps, <the module's CVs...>, bias_kJmol, c_t_kJmol`` is appended to it:
        ``bias_kJmol`` is V(s(t), t), the bias acting on that frame (before a hill deposited
        at the same step), and ``c_t_kJmol`` the offset c(t) of :meth:`reweighting_offset`
        for that bias. Reweighting weights are ``w = exp((V - c)/kT)``.
        """
        self._log.redirect(log)
        logging = self._log.path is not None
        remaining = whole_steps(steps, "steps", minimum=0)
        handle = None
        try:
            while remaining > 0:
                current = simulation.currentStep
                chunk = min(self.frequency - current % self.frequency, remaining)
                if logging:
                    chunk = min(chunk, self.log_interval - current % self.log_interval)
                simulation.step(chunk)
                remaining -= chunk
                current = simulation.currentStep
                self._step = current
                if self._log.due(current, self.log_interval):
                    if handle is None:
                        handle = self._log.open()
                    self._log.write(handle, current, self._log_row(simulation.context, current))
                if current % self.frequency == 0:
                    self.deposit(simulation.context)
        finally:
            if handle is not None:
                handle.close()

    # -- the reweighting log -----------------------------------------------------------------
    def log_columns(self) -> list:
        return ["step", "time_ps", *self.force.cv_names, "bias_kJmol", "c_t_kJmol"]

    def _log_row(self, context: openmm.Context, step: int) -> str:
        values = self.force.getCollectiveVariableValues(context)
        point = np.array([values[i] for i in self._biased])
        fields = [str(step), repr(context.getTime().value_in_unit(unit.picosecond))]
        fields += [repr(float(v)) for v in values]
        fields += [repr(self.bias_at(point)), repr(self.reweighting_offset())]
        return fields

    # -- checkpoint / restore ----------------------------------------------------------------
    def _description(self) -> dict:
        return {
            "method": self.method,
            "cv_names": [axis.cv for axis in self.axes],
            "module_cv_names": self.force.cv_names,
            "model_sha256": self.model_sha256,
            "axes": [dataclasses.asdict(axis) for axis in self.axes],
            "temperature_K": self.temperature,
            "bias_factor": self.bias_factor,
            "height_kJmol": self.height,
            "frequency": self.frequency,
        }

    def save_state(self, path: Union[str, os.PathLike], context: Optional[openmm.Context] = None) -> Path:
        """Write the bias state (hills, grid, step, settings, CV model hash) to an npz file,
        atomically. Save it together with ``simulation.saveCheckpoint`` at the same step.

        ``context`` (optional) supplies the step count; otherwise the last step this object
        saw in :meth:`step`/:meth:`deposit` is recorded.
        """
        step = context.getStepCount() if context is not None else self._step
        meta = {"format": format_tag(STATE_KIND, STATE_VERSION), "model_name": self.model_name,
                "step": int(step), "n_hills": len(self._heights),
                "last_logged_step": int(self._log.last_logged_step), **self._description()}
        arrays = {"meta": np.array(json.dumps(meta)), "centers": self._centers,
                  "heights": self._heights, "center_bias": self._center_bias}
        if self.method == "grid":
            arrays["grid"] = self.bias
        return atomic_savez(path, **arrays)

    def load_state(self, path: Union[str, os.PathLike], context: openmm.Context, *,
                   check_step: bool = True) -> None:
        """Restore a bias state written by :meth:`save_state` into this object and ``context``.

        Raises ``ValueError`` if the state belongs to another CV model, other biased CVs,
        axes, method, temperature, bias factor, height or frequency, and (``check_step``) if
        the Context's step count differs from the saved one (load the simulation checkpoint
        first). The log, if any, is cut back to the saved step so that the resumed run appends
        without duplicating rows.
        """
        data, meta = read_versioned_npz(path, STATE_KIND, (STATE_VERSION,),
                                        required=("centers", "heights", "center_bias"),
                                        what="metadynamics state file")
        centers, heights, center_bias = data["centers"], data["heights"], data["center_bias"]
        grid = data.get("grid")
        if meta["model_sha256"] != self.model_sha256:
            raise ValueError(f"{path} was written for another CV model ({meta['model_name']}, "
                             f"sha256 {meta['model_sha256'][:12]}...); this force's model is "
                             f"{self.model_name} (sha256 {self.model_sha256[:12]}...)")
        mine = self._description()
        different = [key for key in mine
                     if key != "model_sha256" and not same_setting(mine[key], meta.get(key))]
        if different:
            detail = "; ".join(f"{key}: saved {meta.get(key)!r}, here {mine[key]!r}" for key in different)
            raise ValueError(f"{path} does not match this metadynamics: {detail}")
        if check_step and context.getStepCount() != meta["step"]:
            raise ValueError(f"{path} was saved at step {meta['step']} but the Context is at step "
                             f"{context.getStepCount()}; load the simulation checkpoint first "
                             "(or pass check_step=False to start a new run from this bias)")
        self._centers = np.array(centers, dtype=float).reshape(-1, len(self.axes))
        self._heights = np.array(heights, dtype=float)
        self._center_bias = np.array(center_bias, dtype=float)
        self.hills = [(*c.tolist(), float(h)) for c, h in zip(self._centers, self._heights)]
        if self.method == "grid":
            self.bias = np.array(grid, dtype=float)
            self._function.setFunctionParameters(*self._function_arguments())
        else:
            self.force.clearHills()
            for c, h in zip(self._centers, self._heights):
                self.force.addHill(c.tolist(), float(h))
        self.force.updateParametersInContext(context)
        self._step = int(meta["step"])
        if self._log.path is not None:
            self._log.truncate(min(int(meta["step"]), int(meta.get("last_logged_step", meta["step"]))))
