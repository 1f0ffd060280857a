"""OpenMM side of openmm-geom: forces from exported models, reporters and in-Context checks.

Reads model files (:mod:`openmm_geom.modelfile`); never imports training or export code.
"""
from .biasing import GridAxis, Metadynamics, restraint_force
from .cvforce import TorchCVForce
from .forces import CVComponent, check_system, load_exported, python_force, torch_force
from .potential import EnsembleSpreadReporter, OutOfDistributionWarning, potential_system
from .reporters import CVReporter, SignatureReporter
from .validation import CheckResult, ExportReport, check_export

__all__ = [
    "TorchCVForce",
    "restraint_force",
    "Metadynamics",
    "GridAxis",
    "torch_force",
    "python_force",
    "load_exported",
    "check_system",
    "CVComponent",
    "CVReporter",
    "SignatureReporter",
    "potential_system",
    "EnsembleSpreadReporter",
    "OutOfDistributionWarning",
    "check_export",
    "ExportReport",
    "CheckResult",
]
