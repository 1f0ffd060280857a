"""All-atom ML potentials in OpenMM: a System in one call, and a reporter that watches an ensemble.

``potential_system(model_file, topology)`` is the openmm-ml style entry point: the System has
one particle per atom of the topology (masses from its elements), the topology's periodic box,
and the exported model as one ``TorchForce``. :class:`EnsembleSpreadReporter` evaluates several
exported models on the current configuration and writes how much their forces disagree; a
large disagreement means the simulation has left the region the models were trained on.
"""
from __future__ import annotations

import math
import os
import warnings
from typing import Optional, Sequence, Union

import numpy as np
import openmm
import openmm.app as app
import openmm.unit as unit
import torch

from .forces import load_exported, torch_force
from .reporters import _CsvFile

__all__ = ["potential_system", "EnsembleSpreadReporter", "OutOfDistributionWarning",
           "OutOfDistributionError"]


class OutOfDistributionWarning(UserWarning):
    """The ensemble's forces disagree more than the threshold."""


class OutOfDistributionError(RuntimeError):
    """Raised instead of the warning when the reporter was asked to stop the run."""


def _atomic_numbers(topology: app.Topology) -> list:
    numbers = []
    for atom in topology.atoms():
        if atom.element is None:
            raise ValueError(f"atom {atom.index} ({atom.name}) has no element: an all-atom "
                             "potential needs every particle's element")
        numbers.append(atom.element.atomic_number)
    return numbers


def potential_system(model: Union[str, os.PathLike, torch.jit.ScriptModule],
                     topology: app.Topology, *, force_group: Optional[int] = None,
                     remove_cm_motion: bool = True) -> openmm.System:
    """An OpenMM System whose only interaction is the exported potential.

    Parameters
    ----------
    model : path or ScriptModule
        Written by :func:`openmm_geom.export.export_potential` for this system.
    topology : openmm.app.Topology
        Atoms in the model's order; its periodic box vectors (if any) become the System's.
    force_group : int, optional
    remove_cm_motion : bool
        Add a ``CMMotionRemover`` (as ``ForceField.createSystem`` does by default).

    Raises
    ------
    TopologyMismatchError
        Wrong atom count, other elements or atom order, or periodicity different from the model's.
    ValueError
        A box too small for the model's cutoff.
    """
    module, metadata = load_exported(model)
    numbers = _atomic_numbers(topology)
    box = topology.getPeriodicBoxVectors()
    metadata.check_topology(len(numbers), atom_types=numbers if metadata.atom_types else None,
                            periodic=box is not None)
    system = openmm.System()
    for atom in topology.atoms():
        system.addParticle(atom.element.mass)
    if box is not None:
        system.setDefaultPeriodicBoxVectors(*box)
    system.addForce(torch_force(module, system=system, force_group=force_group))
    if remove_cm_motion:
        system.addForce(openmm.CMMotionRemover())
    return system


class EnsembleSpreadReporter(_CsvFile):
    """Write the force disagreement of an ensemble of exported potentials every N steps.

    Columns: ``Step``, ``Time (ps)``, ``Max force spread (kJ/mol/nm)`` (largest per-atom
    standard deviation of the force vectors across the models, i.e. ``sqrt(sum_c var_c)``),
    ``Mean force spread (kJ/mol/nm)`` and ``Energy spread (kJ/mol)`` (standard deviation of the
    models' energies).

    Parameters
    ----------
    file : path or file-like
    reportInterval : int
        Steps between evaluations.
    models : sequence of paths or ScriptModules (at least 2)
        Exported potentials for the simulated system (e.g. trained with different seeds).
    threshold : float, optional
        kJ/mol/nm. When the max spread exceeds it, an :class:`OutOfDistributionWarning` is
        issued (once per excursion), or :class:`OutOfDistributionError` raised with
        ``stop=True``.
    stop : bool
        Stop the simulation (raise) instead of warning.
    """

    def __init__(self, file, reportInterval: int, models: Sequence, *,
                 threshold: Optional[float] = None, stop: bool = False, append: bool = False):
        if reportInterval < 1:
            raise ValueError(f"reportInterval must be >= 1, got {reportInterval}")
        if len(models) < 2:
            raise ValueError("an ensemble needs at least two models")
        if threshold is not None and not threshold > 0:
            raise ValueError(f"threshold must be positive (kJ/mol/nm), got {threshold}")
        self._interval = int(reportInterval)
        loaded = [load_exported(m) for m in models]
        self._modules = [m for m, _ in loaded]
        self._metadata = [meta for _, meta in loaded]
        first = self._metadata[0]
        for meta in self._metadata[1:]:
            if meta.kind != "potential" or meta.n_atoms != first.n_atoms \
                    or meta.periodic != first.periodic:
                raise ValueError("all ensemble members must be potentials for the same system "
                                 "(atom count and periodicity)")
        self._threshold, self._stop = threshold, stop
        self._alarm = False
        self.largest_spread = 0.0
        self._open_output(file, append)
        if not append:
            print('#"Step","Time (ps)","Max force spread (kJ/mol/nm)",'
                  '"Mean force spread (kJ/mol/nm)","Energy spread (kJ/mol)"', file=self._out)
            self._out.flush()

    def describeNextReport(self, simulation):
        steps = self._interval - simulation.currentStep % self._interval
        return {"steps": steps, "periodic": False, "include": ["positions"]}

    def spread(self, positions_nm: np.ndarray, box_nm: Optional[np.ndarray]) -> tuple:
        """(max per-atom force spread, mean per-atom spread, energy spread) at one configuration."""
        energies, forces = [], []
        box = None if box_nm is None else torch.as_tensor(box_nm, dtype=torch.float64)
        for module in self._modules:
            x = torch.as_tensor(positions_nm, dtype=torch.float64).clone().requires_grad_(True)
            energy = module(x, box)
            (gradient,) = torch.autograd.grad(energy, x)
            energies.append(float(energy.detach()))
            forces.append(-gradient.numpy())
        per_atom = np.sqrt(np.stack(forces).var(axis=0).sum(axis=-1))
        return float(per_atom.max()), float(per_atom.mean()), float(np.std(energies))

    def report(self, simulation, state):
        positions = np.asarray(state.getPositions(asNumpy=True).value_in_unit(unit.nanometer))
        if positions.shape[0] != self._metadata[0].n_atoms:
            raise ValueError(f"the ensemble was exported for {self._metadata[0].n_atoms} atoms, "
                             f"the simulation has {positions.shape[0]}")
        box = None
        if self._metadata[0].periodic:
            box = np.asarray(state.getPeriodicBoxVectors(asNumpy=True).value_in_unit(unit.nanometer))
        largest, mean, energy = self.spread(positions, box)
        self.largest_spread = max(self.largest_spread, largest)
        time_ps = state.getTime().value_in_unit(unit.picosecond)
        print(f"{simulation.currentStep},{time_ps!r},{largest!r},{mean!r},{energy!r}", file=self._out)
        self._out.flush()
        exceeded = self._threshold is not None and (largest > self._threshold or not math.isfinite(largest))
        if exceeded and not self._alarm:
            message = (f"step {simulation.currentStep}: the ensemble's forces disagree by up to "
                       f"{largest:.4g} kJ/mol/nm (threshold {self._threshold:g}): the simulation "
                       "has probably left the configurations the models were trained on")
            if self._stop:
                raise OutOfDistributionError(message)
            warnings.warn(message, OutOfDistributionWarning, stacklevel=2)
        self._alarm = exceeded
