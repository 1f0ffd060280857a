"""Reporters that evaluate exported modules on the fly, in OpenMM's ``app`` conventions."""
from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np
import openmm.unit as unit
import torch

from ..torchcv_plugin import TorchCVForce as TorchCVForceBase
from .forces import load_exported

__all__ = ["CVReporter"]


class CVReporter:
    """Evaluate an exported CV module (or potential) every N steps and write CSV.

    Behaves like ``openmm.app.StateDataReporter``: a header line starting with ``#``, quoted
    column names, ``Step`` and ``Time (ps)`` columns, one line per report, flushed as written.

    Parameters
    ----------
    file : str, path or file-like
        Where to write. A path is opened (and owned) by the reporter.
    reportInterval : int
        Steps between reports.
    model : path, exported ScriptModule, or a TorchCVForce in the simulated System
        A module written by :func:`openmm_geom.export.export_model` (a CV module or potential)
        is evaluated on the reported positions. A ``TorchCVForce`` is asked for its CVs
        (``getCollectiveVariableValues``), which reuses the values of its last force
        evaluation when the positions have not moved since.
    names : sequence of str, optional
        Column names; default the model's ``cv_names`` or ``cv0, cv1, ...``.
    atom_indices : sequence of int, optional
        The system atoms the module was exported for, in its order (e.g. the solute of a
        solvated system). Default: all atoms.
    step, time : bool
        Whether to write the ``Step`` and ``Time (ps)`` columns.
    append : bool
        Append to an existing file without writing the header.
    separator : str
        Column separator.
    """

    def __init__(self, file, reportInterval: int, model, *, names: Optional[Sequence[str]] = None,
                 atom_indices: Optional[Sequence[int]] = None, step: bool = True,
                 time: bool = True, append: bool = False, separator: str = ","):
        if reportInterval < 1:
            raise ValueError(f"reportInterval must be >= 1, got {reportInterval}")
        self._interval = int(reportInterval)
        self._force = model if isinstance(model, TorchCVForceBase) else None
        self._indices = None if atom_indices is None else np.asarray(atom_indices, dtype=np.int64)
        if self._force is not None:
            if atom_indices is not None:
                raise ValueError("atom_indices: the TorchCVForce already knows its particles")
            default = [self._force.getCollectiveVariableName(i)
                       for i in range(self._force.getNumCollectiveVariables())]
        else:
            self._module, self._meta = load_exported(model)
            if self._meta.kind == "potential":
                default = ["Model energy (kJ/mol)"]
            else:
                default = self._meta.cv_names or [f"cv{i}" for i in range(self._meta.output_dim)]
            n_used = self._meta.n_atoms if self._indices is None else len(self._indices)
            if n_used != self._meta.n_atoms:
                raise ValueError(f"{n_used} atom_indices for a model of {self._meta.n_atoms} atoms")
        names = default if names is None else list(names)
        if len(names) != len(default):
            raise ValueError(f"{len(names)} names for {len(default)} model outputs")
        self._columns = (["Step"] if step else []) + (["Time (ps)"] if time else []) + list(names)
        self._step, self._time, self._separator = step, time, separator
        self._own_file = isinstance(file, (str, os.PathLike))
        self._out = open(file, "a" if append else "w") if self._own_file else file
        self._checked = False
        if not append:
            print("#" + separator.join(f'"{c}"' for c in self._columns), file=self._out)
            self._out.flush()

    @property
    def columns(self) -> list:
        return list(self._columns)

    def describeNextReport(self, simulation):
        steps = self._interval - simulation.currentStep % self._interval
        # Unwrapped positions: exactly what the Context's forces see. A TorchCVForce reads
        # the Context itself and needs nothing from the State.
        include = [] if self._force is not None else ["positions"]
        return {"steps": steps, "periodic": False, "include": include}

    def _check(self, system) -> None:
        self._checked = True
        if self._force is not None:
            return
        n = system.getNumParticles()
        if self._indices is None:
            self._meta.check_topology(n)
        elif self._indices.min() < 0 or self._indices.max() >= n:
            raise IndexError(f"atom_indices out of range for a system of {n} particles")

    def values(self, state) -> np.ndarray:
        """Evaluate the module on a State (positions, and box when the model is periodic)."""
        positions = state.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
        positions = np.asarray(positions, dtype=np.float64)
        if self._indices is not None:
            positions = positions[self._indices]
        box = None
        if self._meta.periodic:
            box = torch.from_numpy(np.asarray(
                state.getPeriodicBoxVectors(asNumpy=True).value_in_unit(unit.nanometer),
                dtype=np.float64))
        with torch.no_grad():
            out = self._module(torch.from_numpy(positions), box)
        return out.reshape(-1).numpy()

    def report(self, simulation, state):
        if not self._checked:
            self._check(simulation.system)
        row = []
        if self._step:
            row.append(str(simulation.currentStep))
        if self._time:
            row.append(repr(state.getTime().value_in_unit(unit.picosecond)))
        values = (self._force.getCollectiveVariableValues(simulation.context)
                  if self._force is not None else self.values(state))
        row.extend(repr(float(v)) for v in values)
        print(self._separator.join(row), file=self._out)
        self._out.flush()

    def close(self) -> None:
        if self._own_file and not self._out.closed:
            self._out.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
