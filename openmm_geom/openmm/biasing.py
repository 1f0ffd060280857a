"""Biasing along the CVs of a ``TorchCVForce``: umbrella restraints and well-tempered
metadynamics on a tabulated grid.

Both put the bias into the energy expression of one ``TorchCVForce``, so the CV model runs
once per step however many CVs are biased. Metadynamics deposits Gaussian hills into a numpy
grid and pushes it to the Context with ``updateParametersInContext`` (no Context rebuild).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Mapping, Sequence

import numpy as np
import openmm
import openmm.unit as unit

from ..units import MOLAR_GAS_CONSTANT_KJ
from .cvforce import TorchCVForce

__all__ = ["restraint_force", "GridAxis", "Metadynamics"]


def _difference(name: str, center: str, periodic: bool) -> str:
    # The shortest signed difference on a circle of period 2*pi, smooth everywhere but at +-pi.
    if periodic:
        return f"atan2(sin({name}-{center}), cos({name}-{center}))"
    return f"({name}-{center})"


def restraint_force(model, restraints: Mapping[str, tuple], *, periodic: Sequence[str] = (),
                    **force_options) -> TorchCVForce:
    """Harmonic restraints ``0.5 k (cv - cv0)^2`` on any CVs of one module, as one force.

    Parameters
    ----------
    model : path or ScriptModule of an exported CV module
    restraints : mapping CV name -> (k in kJ/mol/unit^2, centre)
        Each CV gets two global parameters, ``k_<cv>`` and ``<cv>0``; move the umbrella during
        a simulation with ``context.setParameter("<cv>0", value)``.
    periodic : names of CVs that are angles in radians (difference taken on the circle)
    force_options : passed to :class:`TorchCVForce` (``particles``, ``force_group``, ...)
    """
    if not restraints:
        raise ValueError("no restraints given")
    terms, parameters = [], {}
    for name, (k, center) in restraints.items():
        diff = _difference(name, f"{name}0", name in periodic)
        terms.append(f"0.5*k_{name}*{diff}^2")
        parameters[f"k_{name}"], parameters[f"{name}0"] = float(k), float(center)
    force = TorchCVForce(model, " + ".join(terms), global_parameters=parameters, **force_options)
    unknown = set(restraints) - set(force.cv_names)
    if unknown:
        raise ValueError(f"no CVs named {sorted(unknown)}; the module's CVs are {force.cv_names}")
    return force


@dataclasses.dataclass
class GridAxis:
    """One biased CV of :class:`Metadynamics`.

    ``minimum``/``maximum`` bound the grid (for a periodic CV, one period, e.g. -pi..pi),
    ``width`` is the Gaussian hill's standard deviation, ``points`` the number of grid points
    (default: 5 per width, at least 20).
    """

    cv: str
    minimum: float
    maximum: float
    width: float
    periodic: bool = False
    points: int = 0

    def __post_init__(self):
        if not self.maximum > self.minimum:
            raise ValueError(f"{self.cv}: maximum must exceed minimum")
        if not self.width > 0:
            raise ValueError(f"{self.cv}: width must be positive")
        if self.points == 0:
            self.points = max(20, int(math.ceil(5 * (self.maximum - self.minimum) / self.width)) + 1)
        if self.points < 4:
            raise ValueError(f"{self.cv}: at least 4 grid points are needed for splines")

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


class Metadynamics:
    """Well-tempered metadynamics on one, two or three CVs of a ``TorchCVForce``.

    Parameters
    ----------
    system : openmm.System
        The force is added to it.
    model : path or ScriptModule of an exported CV module
    axes : sequence of :class:`GridAxis` (1 to 3)
    temperature : kelvin (float or Quantity)
    bias_factor : float > 1 (well-tempered gamma)
    height : initial hill height, kJ/mol (float or Quantity)
    frequency : steps between depositions
    extra_energy : optional further expression of the CVs added to the bias (e.g. walls)
    force_options : passed to :class:`TorchCVForce`

    The bias is ``metad_bias(cv...)``, a tabulated function of the biased CVs. Hill
    heights are scaled by ``exp(-V(s)/(k_B (gamma-1) T))``; :meth:`free_energy` is
    ``-(gamma/(gamma-1)) V`` on the grid. Each deposition is recorded in :attr:`hills`.
    """

    def __init__(self, system: openmm.System, model, axes: Sequence[GridAxis], temperature,
                 bias_factor: float, height, frequency: int, *, extra_energy: str = "",
                 **force_options):
        if not 1 <= len(axes) <= 3:
            raise ValueError(f"grid metadynamics supports 1 to 3 CVs, got {len(axes)}")
        if bias_factor <= 1:
            raise ValueError("bias_factor must be > 1")
        if frequency < 1:
            raise ValueError("frequency must be >= 1 step")
        self.axes = list(axes)
        self.temperature = _plain(temperature, unit.kelvin)
        self.height = _plain(height, unit.kilojoule_per_mole)
        self.bias_factor = float(bias_factor)
        self.frequency = int(frequency)
        self.delta_kT = MOLAR_GAS_CONSTANT_KJ * self.temperature * (self.bias_factor - 1)
        self.bias = np.zeros([axis.points for axis in self.axes])
        self.hills: list = []
        expression = f"metad_bias({', '.join(axis.cv for axis in self.axes)})"
        if extra_energy:
            expression += f" + {extra_energy}"
        self.force = TorchCVForce(model, expression, **force_options)
        missing = [axis.cv for axis in self.axes if axis.cv not in self.force.cv_names]
        if missing:
            raise ValueError(f"no CVs named {missing}; the module's CVs are {self.force.cv_names}")
        self._biased = [self.force.cv_names.index(axis.cv) for axis in self.axes]
        periodic = [axis.periodic for axis in self.axes]
        if any(periodic) and not all(periodic):
            raise ValueError("OpenMM's tabulated functions are periodic in all or no dimensions")
        self._function = _FUNCTIONS[len(self.axes)](*self._function_arguments(), all(periodic))
        self.force.addTabulatedFunction("metad_bias", self._function)
        system.addForce(self.force)

    def _function_arguments(self) -> list:
        """Arguments of setFunctionParameters (the constructor adds the periodic flag)."""
        sizes = [axis.points for axis in self.axes]
        bounds = [v for axis in self.axes for v in (axis.minimum, axis.maximum)]
        values = self.bias.ravel(order="F")  # x varies fastest, as OpenMM expects
        return [values, *bounds] if len(self.axes) == 1 else [*sizes, values, *bounds]

    def current_values(self, context: openmm.Context) -> np.ndarray:
        """Values of the biased CVs at the Context's positions."""
        values = self.force.getCollectiveVariableValues(context)
        return np.array([values[i] for i in self._biased])

    def bias_at(self, point: np.ndarray) -> float:
        """The grid bias at ``point`` (multilinear interpolation), kJ/mol."""
        value = self.bias
        for axis, x in zip(self.axes, point):
            grid = axis.grid
            if axis.periodic:
                x = axis.minimum + (x - axis.minimum) % (axis.maximum - axis.minimum)
            x = min(max(x, axis.minimum), axis.maximum)
            i = min(int((x - axis.minimum) / (grid[1] - grid[0])), axis.points - 2)
            t = (x - grid[i]) / (grid[1] - grid[0])
            value = (1 - t) * value[i] + t * value[i + 1]
        return float(value)

    def deposit(self, context: openmm.Context) -> float:
        """Add one hill at the current CVs and update the Context; returns its height."""
        point = self.current_values(context)
        height = self.height * math.exp(-self.bias_at(point) / self.delta_kT)
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
        self.hills.append((*point.tolist(), height))
        self._function.setFunctionParameters(*self._function_arguments())
        self.force.updateParametersInContext(context)
        return height

    def step(self, simulation, steps: int) -> None:
        """Advance ``simulation`` by ``steps``, depositing a hill every ``frequency`` steps."""
        remaining = int(steps)
        while remaining > 0:
            to_next = self.frequency - simulation.currentStep % self.frequency
            chunk = min(to_next, remaining)
            simulation.step(chunk)
            remaining -= chunk
            if simulation.currentStep % self.frequency == 0:
                self.deposit(simulation.context)

    def free_energy(self) -> np.ndarray:
        """Free-energy estimate on the grid, kJ/mol: ``-(gamma/(gamma-1)) V``."""
        return -self.bias_factor / (self.bias_factor - 1) * self.bias


def _plain(value, quantity_unit) -> float:
    if unit.is_quantity(value):
        return float(value.value_in_unit(quantity_unit))
    return float(value)
