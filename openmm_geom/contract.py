"""The export contract, as a module that wraps any model.

openmm-torch (and our own forces) call ``forward(positions[N,3] nm[, box[3,3] nm])`` and expect
an energy in kJ/mol (a potential) or a ``(k,)`` tensor (a CV module). Models are written in
whatever units they like; :class:`OpenMMBoundary` converts at the boundary, casts to the
model's dtype and back, checks the atom count, the box against the cutoff and the output, and
carries the model-file metadata. The same wrapper is scripted by the TorchScript bridge and
called eagerly by the ``PythonForce`` bridge, so both bridges give the same numbers.

The wrapper refuses positions (and a box) holding NaN or inf before the model runs: one
``torch.isfinite(...).all()`` per input and evaluation. The box is checked against the cutoff
where it enters: once when a model meets a System
(:meth:`openmm_geom.modelfile.ExportedModel.check_system`) and, during a run, by the pair
search of models that use :func:`openmm_geom.ops.neighbor_pairs`.
"""
from __future__ import annotations

from typing import List, Optional

import openmm.unit as openmm_unit
import torch

from .modelfile import METADATA_ATTRIBUTE, ModelMetadata
from .ops.neighbors import check_box_holds_cutoff
from .units import (as_nm_array, canonical_energy_unit, canonical_length_unit,
                    energy_to_kj_per_mol, has_units, length_to_nm, to_openmm_units)
from .version import __version__

__all__ = ["OpenMMBoundary", "PeriodicOpenMMBoundary", "boundary_for", "describe"]


class _BoundaryBase(torch.nn.Module):
    def __init__(self, model: torch.nn.Module, metadata: ModelMetadata):
        super().__init__()
        self.model = model
        self.nm_per_model_length = float(metadata.nm_per_model_length)
        self.kj_per_model_energy = float(metadata.kj_per_mol_per_model_energy or 1.0)
        self.is_potential = metadata.kind == "potential"
        self.n_atoms = int(metadata.n_atoms)
        self.output_dim = int(metadata.output_dim)
        self.model_dtype = getattr(torch, metadata.dtype)
        setattr(self, METADATA_ATTRIBUTE, metadata.to_json())

    def _to_model(self, positions: torch.Tensor) -> torch.Tensor:
        if positions.dim() != 2 or positions.size(1) != 3:
            raise ValueError("positions must have shape (N, 3), got " + str(list(positions.shape)))
        if positions.size(0) != self.n_atoms:
            raise ValueError("wrong atom count: the model was exported for "
                             + str(self.n_atoms) + " atoms, got " + str(positions.size(0)))
        return positions.to(self.model_dtype) / self.nm_per_model_length

    def _from_model(self, output: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        if self.is_potential:
            if output.numel() != 1:
                raise ValueError("a potential must return one energy, got shape "
                                 + str(list(output.shape)))
            output = output.reshape(()) * self.kj_per_model_energy
        elif output.dim() != 1 or output.size(0) != self.output_dim:
            raise ValueError("the CV module must return shape (" + str(self.output_dim)
                             + ",), got " + str(list(output.shape)))
        if not bool(torch.isfinite(output.detach()).all()):
            raise ValueError("the model returned NaN or infinite values (blown-up coordinates, "
                             "or a configuration outside what the model can handle)")
        return output.to(like.dtype)

    def call_unchecked(self, positions: torch.Tensor,
                       box: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``forward`` without its checks of values (NaN/inf inputs and outputs).

        The units and dtype conversions and the model call only, in eager Python (TorchScript
        does not compile it): what a tracer such as ``make_fx``/``torch.export`` can follow,
        since a check of values is a data-dependent branch. Whoever runs the traced program
        checks values itself (the native ``TorchCVForce`` kernel does). Shapes are still checked.
        """
        x = self._to_model(positions)
        if isinstance(self, PeriodicOpenMMBoundary):
            if box is None:
                raise ValueError("this model is periodic and needs the box vectors")
            output = self.model(x, box.to(self.model_dtype) / self.nm_per_model_length)
        else:
            output = self.model(x)
        if self.is_potential:
            output = output.reshape(()) * self.kj_per_model_energy
        elif output.dim() != 1 or output.size(0) != self.output_dim:
            raise ValueError("the CV module must return shape (" + str(self.output_dim)
                             + ",), got " + str(list(output.shape)))
        return output.to(positions.dtype)


def _bad_rows(values: torch.Tensor) -> str:
    """The first (up to 10) rows of ``values`` (N, 3) holding NaN or inf, as text."""
    bad: List[int] = torch.nonzero(~torch.isfinite(values.detach()).all(dim=1)).flatten()[:10].tolist()
    return str(bad)


def _non_finite_positions(positions: torch.Tensor) -> str:
    """The error message for positions holding NaN or inf (raised by the caller, in its frame)."""
    return ("positions contain NaN/inf values (first bad atoms: " + _bad_rows(positions)
            + "); the model was not run: the simulation blew up, or it was given bad coordinates")


class OpenMMBoundary(_BoundaryBase):
    """Contract wrapper of a non-periodic model: ``forward(positions nm) -> kJ/mol or cv[k]``.

    Positions holding NaN or inf are refused before the model runs.
    """

    def forward(self, positions: torch.Tensor, box: Optional[torch.Tensor] = None) -> torch.Tensor:
        # Raised in this frame on purpose: an exception raised two scripted calls deep inside
        # an openmm-torch TorchForce crashed libtorch (torch 2.12).
        if not bool(torch.isfinite(positions.detach()).all()):
            raise ValueError(_non_finite_positions(positions))
        output = self.model(self._to_model(positions))
        return self._from_model(output, positions)


class PeriodicOpenMMBoundary(_BoundaryBase):
    """Contract wrapper of a periodic model: ``forward(positions nm, box nm) -> ...``.

    The wrapped model is called as ``model(positions, box)`` in its own length unit, box rows
    being the vectors a, b, c. Positions or a box holding NaN or inf are refused before the
    model runs.
    """

    def forward(self, positions: torch.Tensor, box: Optional[torch.Tensor] = None) -> torch.Tensor:
        if box is None:
            raise ValueError("this model is periodic and needs the box vectors; use a TorchForce "
                             "with setUsesPeriodicBoundaryConditions(True) and a periodic System")
        # Raised in this frame on purpose (see OpenMMBoundary.forward).
        if not bool(torch.isfinite(positions.detach()).all()):
            raise ValueError(_non_finite_positions(positions))
        if not bool(torch.isfinite(box.detach()).all()):
            rows: List[List[float]] = box.detach().to(torch.float64).tolist()
            raise ValueError("the periodic box contains NaN/inf values (box vectors "
                             + str(rows) + " nm); the model was not run")
        model_box = box.to(self.model_dtype) / self.nm_per_model_length
        output = self.model(self._to_model(positions), model_box)
        return self._from_model(output, positions)


def boundary_for(model: torch.nn.Module, metadata: ModelMetadata) -> _BoundaryBase:
    """The contract wrapper matching ``metadata`` (periodic or not) around ``model``."""
    cls = PeriodicOpenMMBoundary if metadata.periodic else OpenMMBoundary
    return cls(model, metadata)


def _infer_dtype(module: torch.nn.Module) -> torch.dtype:
    for tensor in list(module.parameters()) + list(module.buffers()):
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.float64


#: Metadata fields recorded as the caller gives them.
RECORDED_FIELDS = ("atom_types", "masses", "cv_names", "cv_periods", "hyperparameters",
                   "mapping", "training_data_hash", "extra")


def describe(
    module: torch.nn.Module,
    *,
    kind: str,
    length_unit,
    energy_unit,
    periodic: bool,
    example_positions,
    example_box=None,
    cutoff: Optional[float] = None,
    dtype: Optional[torch.dtype] = None,
    **recorded,
) -> ModelMetadata:
    """Build the metadata of ``module`` for export, evaluating it once on the example.

    ``example_positions``/``example_box`` are in nm; ``cutoff`` is in the model's own length
    unit. ``recorded`` are the fields stored as given (see
    :func:`openmm_geom.export.export_model`): ``atom_types``, ``masses``, ``cv_names``,
    ``cv_periods`` (default: the module's ``cv_periods`` attribute, if any),
    ``hyperparameters``, ``mapping``, ``training_data_hash``, ``extra``.
    """
    unknown = sorted(set(recorded) - set(RECORDED_FIELDS))
    if unknown:
        raise TypeError(f"unknown metadata fields {unknown}; known: {list(RECORDED_FIELDS)}")
    (atom_types, masses, cv_names, cv_periods, hyperparameters, mapping, training_data_hash,
     extra) = (recorded.get(name) for name in RECORDED_FIELDS)
    if kind == "potential" and energy_unit is None:
        raise ValueError("energy_unit is required for a potential (e.g. 'kJ/mol', 'eV')")
    if kind == "cv" and energy_unit is not None:
        raise ValueError("a CV module returns CV values, not energies: leave energy_unit unset")
    if not isinstance(periodic, bool):
        raise TypeError("periodic must be True or False")
    positions = as_nm_array(example_positions, "example_positions", (3,))
    box = None
    if periodic:
        if example_box is None:
            raise ValueError("a periodic model needs example_box (3x3, nm)")
        box = as_nm_array(example_box, "example_box", (3,))
        if box.shape != (3, 3):
            raise ValueError(f"example_box must have shape (3, 3), got {box.shape}")
    elif example_box is not None:
        raise ValueError("example_box given for a non-periodic model (periodic=False)")
    dtype = dtype or _infer_dtype(module)
    nm_per_unit = length_to_nm(length_unit)
    cutoff_nm = None
    if cutoff is not None:
        # a Quantity in any length unit, or a plain number in the model's own length unit
        cutoff_nm = (to_openmm_units(cutoff, "cutoff", openmm_unit.nanometer) if has_units(cutoff)
                     else float(cutoff) * nm_per_unit)  # ModelMetadata refuses cutoff <= 0
        if box is not None:
            check_box_holds_cutoff(torch.as_tensor(box), cutoff_nm)

    output_dim = 1
    if kind == "cv":
        with torch.no_grad():
            x = torch.as_tensor(positions, dtype=dtype) / nm_per_unit
            args = (x,) if box is None else (x, torch.as_tensor(box, dtype=dtype) / nm_per_unit)
            out = module(*args)
        if out.dim() != 1:
            raise ValueError(f"a CV module must return a 1-D tensor (k,), got shape {tuple(out.shape)}")
        output_dim = int(out.shape[0])
    if kind == "cv" and cv_names is None:  # a CV module may name its outputs (DescriptorCV)
        found = getattr(module, "cv_names", None)
        cv_names = list(found) if isinstance(found, (list, tuple)) else None
    if kind == "cv" and cv_periods is None:  # a CV module may declare its own (Dihedrals)
        cv_periods = getattr(module, "cv_periods", None)
    if cv_periods is not None:
        cv_periods = [None if p is None else float(p) for p in cv_periods]
    if hyperparameters is None:
        found = getattr(module, "hyperparameters", None)
        hyperparameters = dict(found) if isinstance(found, dict) else {}

    return ModelMetadata(
        kind=kind,
        n_atoms=int(positions.shape[0]),
        periodic=periodic,
        output_dim=output_dim,
        model_length_unit=canonical_length_unit(length_unit),
        model_energy_unit=None if energy_unit is None else canonical_energy_unit(energy_unit),
        nm_per_model_length=nm_per_unit,
        kj_per_mol_per_model_energy=None if energy_unit is None else energy_to_kj_per_mol(energy_unit),
        dtype=str(dtype).replace("torch.", ""),
        cutoff_nm=cutoff_nm,
        atom_types=None if atom_types is None else [_plain(t) for t in atom_types],
        masses_amu=None if masses is None else torch.as_tensor(  # amu, or Quantities
            to_openmm_units(masses, "masses", openmm_unit.dalton, nonnegative=True),
            dtype=torch.float64).reshape(-1).tolist(),
        cv_names=None if cv_names is None else [str(n) for n in cv_names],
        cv_periods=cv_periods,
        hyperparameters=hyperparameters,
        mapping=mapping,
        training_data_hash=training_data_hash,
        example_positions_nm=positions.tolist(),
        example_box_nm=None if box is None else box.tolist(),
        extra=dict(extra or {}),
        package_version=__version__,
        torch_version=torch.__version__,
    )


def _plain(value):
    """JSON-friendly atom type (ints stay ints, anything else becomes its string)."""
    try:
        import numpy as np

        if isinstance(value, (int, np.integer)):
            return int(value)
    except ImportError:
        pass
    return str(value)
