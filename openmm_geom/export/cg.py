"""Export a trained coarse-grained model for OpenMM."""
from __future__ import annotations

import os
from typing import Optional

import numpy as np
import openmm.unit as unit

from ..modelfile import ExportedModel
from ..models.cgschnet import CGSchNet, ReplicaBatch
from ..units import as_nm_array, to_openmm_units
from .torchscript import export_model

__all__ = ["export_cg_model"]


def export_cg_model(model: CGSchNet, path: os.PathLike, *, example_positions, masses,
                    mapping: Optional[dict] = None, native_priors: bool = True,
                    replicas: int = 1, training_data_hash: Optional[str] = None,
                    extra: Optional[dict] = None) -> ExportedModel:
    """Export a CGSchNet (ensemble mean) as an OpenMM-ready TorchScript potential.

    Parameters
    ----------
    model : the trained (ensemble) CGSchNet, positions in nm, energies in kJ/mol
    example_positions : (n_beads, 3) nm or a Quantity, a valid CG configuration
    masses : (n_beads,) amu (plain numbers) or Quantities
    mapping : the CG mapping's ``to_dict()`` (recorded in the file)
    native_priors : export the learned correction only and record the priors in the metadata,
        so :func:`openmm_geom.openmm.create_system` adds them as native OpenMM forces;
        False keeps the priors inside the TorchScript module
    replicas : R > 1 exports R disjoint copies evaluated in one call (replica-batched OpenMM)
    """
    x0 = as_nm_array(example_positions, "example_positions")
    if x0.shape != (model.n_beads, 3):
        raise ValueError(f"example_positions must be ({model.n_beads}, 3), got {x0.shape}")
    masses = np.atleast_1d(to_openmm_units(masses, "masses", unit.dalton, positive=True))
    module = model.without_priors() if native_priors else model
    module = ReplicaBatch(module, replicas)
    extra = dict(extra or {})
    extra.update(cg={"n_beads": model.n_beads, "replicas": int(replicas),
                     "native_priors": bool(native_priors),
                     "priors": model.priors.to_config() if (native_priors and model.use_priors) else None})
    return export_model(
        module, path, length_unit="nm", energy_unit="kJ/mol", periodic=False,
        example_positions=np.tile(x0, (replicas, 1)),
        atom_types=list(model.bead_types.tolist()) * replicas,
        masses=masses.tolist() * replicas, mapping=mapping,
        hyperparameters=dict(model.hyperparameters), training_data_hash=training_data_hash,
        extra=extra)
