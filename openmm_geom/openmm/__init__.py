"""OpenMM side of openmm-geom: exported models as forces, biases, reporters and checks.

One door per job:

- :func:`create_system` / :func:`add_to_system`: an exported potential or CG model as a
  System (openmm-ml style), or added to your System (a potential on some particles, a bias on
  the CVs of a CV module);
- :class:`TorchCVForce`: k neural CVs from one model pass, biased by any expression;
  :func:`restraint_force`, :class:`Metadynamics` and :class:`OPES` build on it;
- :func:`custom_cv_force` / :func:`bias_variables`: the same CVs inside OpenMM's own
  ``CustomCVForce`` / ``app.Metadynamics`` (one ``TorchForce`` per CV);
- :func:`python_force`: an eager model that cannot be scripted, through ``openmm.PythonForce``;
- :class:`CVReporter`, :class:`SignatureReporter`, :class:`EnsembleSpreadReporter`;
- :func:`check_export`: a model file held to physics inside real Contexts.

Every function taking a model accepts a path, an exported ScriptModule or an
:class:`ExportedModel` (read once, never reloaded). Reads model files
(:mod:`openmm_geom.modelfile`); never imports training or export code.
"""
from ..modelfile import ExportedModel
from .biasing import GridAxis, Metadynamics, restraint_force
from .cvforce import TorchCVForce
from .forces import python_force
from .interop import bias_variables, custom_cv_force
from .opes import OPES
from .reporters import CVReporter, EnsembleSpreadReporter, SignatureReporter
from .system import add_to_system, create_system
from .validation import CheckResult, ExportReport, check_export

__all__ = [
    "ExportedModel",
    "create_system",
    "add_to_system",
    "TorchCVForce",
    "restraint_force",
    "Metadynamics",
    "GridAxis",
    "OPES",
    "custom_cv_force",
    "bias_variables",
    "python_force",
    "CVReporter",
    "SignatureReporter",
    "EnsembleSpreadReporter",
    "check_export",
    "ExportReport",
    "CheckResult",
]
