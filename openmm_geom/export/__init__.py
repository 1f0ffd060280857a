"""Export: trained models -> self-describing TorchScript files that follow the OpenMM contract
(or, for CV modules and the native TorchCVForce, AOTInductor packages: ``format="aoti"``).

Each function writes one file and returns its :class:`~openmm_geom.openmm.ExportedModel`, which
every OpenMM-side function takes as it is. Validate a file inside OpenMM with
:func:`openmm_geom.openmm.check_export`; this package never imports :mod:`openmm_geom.openmm`.
"""
from .cg import export_cg_model
from .plumed import export_plumed
from .potential import export_potential
from .torchscript import export_model

__all__ = ["export_model", "export_cg_model", "export_potential", "export_plumed"]
