"""Reporters that evaluate exported modules on the fly, in OpenMM's ``app`` conventions.

:class:`CVReporter` logs CVs (or a model's energy), :class:`SignatureReporter` the streaming
log-signature of a coordinate path, :class:`EnsembleSpreadReporter` how much an ensemble of
exported potentials disagrees (a sign that the run left the training data).
"""
from __future__ import annotations

import math
import os
import warnings
from typing import Optional, Sequence

import numpy as np
import openmm.unit as unit
import torch

from ..errors import OutOfDistributionError, OutOfDistributionWarning
from ..modelfile import ExportedModel
from ..torchcv_plugin import TorchCVForce as TorchCVForceBase
from ..units import to_openmm_units

__all__ = ["CVReporter", "SignatureReporter", "EnsembleSpreadReporter"]


class CsvReporterFile:
    """The output file of a CSV reporter: opened from a path (owned) or given open (borrowed)."""

    def _open_output(self, file, append: bool) -> None:
        self._own_file = isinstance(file, (str, os.PathLike))
        self._out = open(file, "a" if append else "w") if self._own_file else file

    def close(self) -> None:
        if self._own_file and not self._out.closed:
            self._out.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


class CVReporter(CsvReporterFile):
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
            self._model = ExportedModel.load(model)
            self._module, self._meta = self._model.module, self._model.metadata
            if self._meta.kind == "potential":
                default = ["Model energy (kJ/mol)"]
            else:
                default = self._meta.names
            n_used = self._meta.n_atoms if self._indices is None else len(self._indices)
            if n_used != self._meta.n_atoms:
                raise ValueError(f"{n_used} atom_indices for a model of {self._meta.n_atoms} atoms")
        names = default if names is None else list(names)
        if len(names) != len(default):
            raise ValueError(f"{len(names)} names for {len(default)} model outputs")
        self._columns = (["Step"] if step else []) + (["Time (ps)"] if time else []) + list(names)
        self._step, self._time, self._separator = step, time, separator
        self._open_output(file, append)
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
            self._model.check_atom_count(n)
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

class SignatureReporter(CsvReporterFile):
    """Streaming log-signature of a coordinate path, written during an OpenMM run.

    Every ``sampleInterval`` steps the chosen coordinates (selected atoms, or beads of a linear
    ``mapping``; nm) become the next point of a path whose signature is extended by Chen's
    identity (:class:`~openmm_geom.ops.signature.SignatureStream`): the cost per sample does
    not grow with the length of the run. With ``window`` the reporter writes the
    log-signature of each completed window of ``window`` points (consecutive windows share
    their boundary point) and restarts; these rows equal ``openmm-geom signature featurize
    --window`` on a trajectory saved at the same interval. Without ``window`` it writes the
    log-signature of the whole path so far every ``reportInterval`` steps.

    Output follows ``StateDataReporter``: a ``#`` header of quoted names, ``Step``,
    ``Time (ps)``, ``Points``, then the log-signature in Lyndon-word order, flushed per line.

    Parameters
    ----------
    file : str, path or file-like
    sampleInterval : int
        Steps between path points.
    depth : int
        Truncation depth of the log-signature.
    atoms : sequence of int, optional
        Atoms whose coordinates form the path (default all; ``mapping`` instead for beads).
    mapping : array (K, N), optional
        Bead = weighted sum of atom positions (rows e.g. mass fractions).
    window : int, optional
        Points per window (>= 2).
    reportInterval : int, optional
        Steps between reports without ``window`` (default ``100 * sampleInterval``); a
        multiple of ``sampleInterval``.
    """

    def __init__(self, file, sampleInterval: int, *, depth: int = 2,
                 atoms: Optional[Sequence[int]] = None, mapping=None, window: Optional[int] = None,
                 reportInterval: Optional[int] = None, append: bool = False, separator: str = ","):
        from ..ops.signature import SignatureStream

        if sampleInterval < 1:
            raise ValueError(f"sampleInterval must be >= 1, got {sampleInterval}")
        if window is not None and window < 2:
            raise ValueError(f"a window needs at least 2 points, got {window}")
        if window is not None and reportInterval is not None:
            raise ValueError("give window (one row per window) or reportInterval, not both")
        report = 100 * sampleInterval if reportInterval is None else int(reportInterval)
        if report % sampleInterval:
            raise ValueError(f"reportInterval ({report}) must be a multiple of sampleInterval "
                             f"({sampleInterval})")
        if atoms is not None and mapping is not None:
            raise ValueError("give atoms or a mapping, not both")
        self._atoms = None if atoms is None else np.asarray(atoms, dtype=np.int64)
        self._mapping = None if mapping is None else np.asarray(mapping, dtype=np.float64)
        if self._mapping is not None and self._mapping.ndim != 2:
            raise ValueError(f"mapping must be (beads, atoms), got shape {self._mapping.shape}")
        n_points = (len(self._atoms) if self._atoms is not None else
                    self._mapping.shape[0] if self._mapping is not None else None)
        self._sample, self._report, self._window = int(sampleInterval), report, window
        self._depth = int(depth)
        self._stream_class = SignatureStream
        self._stream = None if n_points is None else SignatureStream(3 * n_points, self._depth)
        self._separator, self._append = separator, append
        # Samples wait in a NumPy buffer and reach the stream in one call per window or
        # report: one kernel call instead of a handful of torch calls per sample.
        self._capacity = window if window is not None else report // self._sample + 1
        self._buffer: Optional[np.ndarray] = None
        self._buffered = 0
        self._checked_particles = -1
        self._open_output(file, append)
        self._header_written = append
        self.rows = 0

    def describeNextReport(self, simulation):
        steps = self._sample - simulation.currentStep % self._sample
        return {"steps": steps, "periodic": False, "include": ["positions"]}

    def _point(self, simulation, state) -> np.ndarray:
        positions = np.asarray(state.getPositions(asNumpy=True).value_in_unit(unit.nanometer),
                               dtype=np.float64)
        n = positions.shape[0]
        if n != self._checked_particles:  # the selection is checked once per system size
            if self._atoms is not None and (self._atoms.min() < 0 or self._atoms.max() >= n):
                raise IndexError(f"atoms out of range for a system of {n} particles")
            if self._mapping is not None and self._mapping.shape[1] != n:
                raise ValueError(f"mapping has {self._mapping.shape[1]} columns for a system of "
                                 f"{n} particles")
            self._checked_particles = n
        if self._atoms is not None:
            positions = positions[self._atoms]
        elif self._mapping is not None:
            positions = self._mapping @ positions
        if not np.isfinite(positions).all():
            raise ValueError(f"non-finite coordinates at step {simulation.currentStep}: the "
                             f"simulation has blown up; no signature written")
        return positions.reshape(-1)

    def _write(self, simulation, state) -> None:
        values = self._stream.logsignature().reshape(-1).numpy()
        if not self._header_written:
            columns = ["Step", "Time (ps)", "Points"] + [f"ls{i}" for i in range(len(values))]
            print("#" + self._separator.join(f'"{c}"' for c in columns), file=self._out)
            self._header_written = True
        time_ps = state.getTime().value_in_unit(unit.picosecond)
        fields = [str(simulation.currentStep), f"{time_ps:.6g}", str(self._stream.points_seen)]
        fields += [repr(float(v)) for v in values]
        print(self._separator.join(fields), file=self._out)
        self._out.flush()
        self.rows += 1

    def _flush(self) -> None:
        """Extend the stream by the buffered samples (Chen's identity, one call)."""
        if self._buffered:
            self._stream.update(torch.from_numpy(self._buffer[:self._buffered]))
            self._buffered = 0

    def report(self, simulation, state):
        point = self._point(simulation, state)
        if self._stream is None:
            self._stream = self._stream_class(point.size, self._depth)
        if self._buffer is None:
            self._buffer = np.empty((self._capacity, point.size), dtype=np.float64)
        if self._buffered == self._capacity:
            self._flush()
        self._buffer[self._buffered] = point
        self._buffered += 1
        if self._window is not None:
            if self._buffered == self._window:  # the window's signature, from a fresh stream
                self._stream.reset()
                self._flush()
                self._write(simulation, state)
                self._stream.reset()
                self._buffer[0] = point  # windows share this point
                self._buffered = 1
        elif simulation.currentStep % self._report == 0:
            self._flush()
            if self._stream.points_seen >= 2:
                self._write(simulation, state)


class EnsembleSpreadReporter(CsvReporterFile):
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
    threshold : float or Quantity, optional
        A force (``50*kilojoule_per_mole/nanometer``, ``12*kilocalorie_per_mole/angstrom``; a
        plain number is in kJ/mol/nm), > 0. When the max spread exceeds it, an :class:`OutOfDistributionWarning` is
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
        if threshold is not None:
            threshold = to_openmm_units(threshold, "threshold",
                                        unit.kilojoule_per_mole / unit.nanometer, positive=True)
        self._interval = int(reportInterval)
        loaded = [ExportedModel.load(m) for m in models]
        for model in loaded:
            model.require_kind("potential", "EnsembleSpreadReporter")
        self._modules = [m.module for m in loaded]
        self._metadata = [m.metadata for m in loaded]
        first = self._metadata[0]
        for meta in self._metadata[1:]:
            if meta.n_atoms != first.n_atoms or meta.periodic != first.periodic:
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
