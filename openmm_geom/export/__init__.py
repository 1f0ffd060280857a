"""Export: trained models -> self-describing TorchScript files that follow the OpenMM contract.

``check_export`` runs the file inside real OpenMM Contexts; it lives on the OpenMM side
(:mod:`openmm_geom.openmm.validation`) and is re-exported here, where users look for it.
The dependency points one way only: ``openmm_geom.openmm`` never imports this package.
"""
from ..modelfile import ModelFileError, load_model, read_metadata
from ..openmm.validation import ExportReport, check_export
from .cg import export_cg_model
from .potential import export_potential
from .torchscript import ExportError, export_model

__all__ = [
    "export_model",
    "export_cg_model",
    "export_potential",
    "check_export",
    "ExportReport",
    "ExportError",
    "load_model",
    "read_metadata",
    "ModelFileError",
]
