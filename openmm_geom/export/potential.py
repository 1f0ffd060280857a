"""Export a trained all-atom potential for one concrete system (atom order and box)."""
from __future__ import annotations

import os
from typing import Optional, Sequence

from ..modelfile import ExportedModel
from ..models.atomistic import AtomisticPotential
from ..units import as_nm_array
from .torchscript import export_model

__all__ = ["export_potential"]


def export_potential(model: AtomisticPotential, path: os.PathLike, *, positions, box=None,
                     atomic_numbers: Optional[Sequence[int]] = None, masses=None,
                     training_data_hash: Optional[str] = None,
                     extra: Optional[dict] = None) -> ExportedModel:
    """Write ``model`` as an OpenMM-ready TorchScript potential (nm, kJ/mol).

    Parameters
    ----------
    model : AtomisticPotential
        A trained attention or TorchMD-Net potential.
    path : path-like
        Output file (atomic write).
    positions : (N, 3) nm or Quantity
        A configuration of the target system (checks the export and is stored in the file).
    box : (3, 3) nm or Quantity, optional
        Periodic box vectors (rows a, b, c); the exported force is periodic when given.
    atomic_numbers : sequence of int (N,), optional
        The target system's atoms, when they differ from the model's training system (e.g. a
        larger water box): the model is re-targeted with ``for_atoms`` first; an element it
        was not trained on is an error.
    masses : (N,) amu (plain numbers) or Quantities, optional
        Recorded so that :func:`openmm_geom.openmm.create_system` can build a System.
    """
    if atomic_numbers is not None:
        model = model.for_atoms(atomic_numbers)
    positions = as_nm_array(positions, "positions")
    n_atoms = int(model.species.numel())
    if positions.shape[0] != n_atoms:
        raise ValueError(f"positions have {positions.shape[0]} atoms, the model {n_atoms}; "
                         "pass atomic_numbers to export the model for another system")
    return export_model(
        model, path, length_unit="nm", energy_unit="kJ/mol", periodic=box is not None,
        example_positions=positions, example_box=box, cutoff=model.cutoff,
        atom_types=[int(z) for z in model.atomic_numbers.tolist()], masses=masses,
        hyperparameters=dict(model.hyperparameters), training_data_hash=training_data_hash,
        extra=dict(extra or {}, potential=True))
