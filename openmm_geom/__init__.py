"""openmm-geom: geometric deep-learning potentials and collective variables inside OpenMM.

Data flows down these layers, and imports point only down them (``tests/test_layering.py``
enforces it):

==========================  ======================================================================
``errors, units, io``       one error hierarchy; unit conversions; atomic writes, hashing,
                            versioned file formats, figures
``parallel``                independent tasks in this process or on a Dask cluster (``--cluster``)
``ops``                     neighbour pairs (vesin-torch), pair geometry, path signatures
``data``                    reference runs (positions + forces), trajectories, mappings, datasets
``models``                  plain scriptable torch modules (no file formats)
``modelfile, contract``     the self-describing model file (:class:`~openmm_geom.openmm.
                            ExportedModel`) and the OpenMM export contract
``training, simulate``      estimators and checkpoints; the batched Langevin simulator
``export``                  models -> model files (never imports ``openmm``)
``openmm``                  ``create_system``, ``TorchCVForce``, ``Metadynamics``, reporters,
                            ``check_export``
``analysis``                free energies, KL/sigma, reweighting, plots
``workflows``, ``cli``      the jobs behind ``openmm-geom ...`` and the command line
==========================  ======================================================================

The OpenMM entry points are :func:`openmm_geom.openmm.create_system` (a System from an exported
model, openmm-ml style), :func:`openmm_geom.openmm.add_to_system` and
:class:`openmm_geom.openmm.TorchCVForce`; models are exported by
:func:`openmm_geom.export.export_model` and validated by :func:`openmm_geom.openmm.check_export`.

Importing the package loads the TorchCVForce plugin (and so ``openmm`` and ``torch``), which
registers the plugin's kernels and XML serialization proxies. The one exception is a process
started as the command line (``openmm-geom ...`` or ``python -m openmm_geom.cli ...``): its
``main()`` loads the plugin once a command has been chosen, so that ``--help`` and argument
errors come back at once instead of after seconds of imports.
"""
import os as _os
import sys as _sys

from .version import __version__

__all__ = ["__version__", "set_threads", "retain_freed_memory", "release_freed_memory",
           "native_build_info", "plugin_error"]


def _started_as_command_line() -> bool:
    """True in a process started as ``openmm-geom ...`` or ``python -m openmm_geom.cli ...``."""
    if _sys.argv and _os.path.basename(_sys.argv[0]) == "openmm-geom":
        return True
    argv = list(getattr(_sys, "orig_argv", ()))
    return _sys.argv[:1] == ["-m"] and any(
        argv[i] == "-m" and argv[i + 1] == "openmm_geom.cli" for i in range(len(argv) - 1))


if _started_as_command_line():
    def __getattr__(name: str):  # the command line loads these once a command runs
        if name in ("native_build_info", "plugin_error"):
            from . import native

            return getattr(native, name)
        if name in ("set_threads", "retain_freed_memory", "release_freed_memory"):
            from . import threads

            return getattr(threads, name)
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
else:
    from .native import native_build_info, plugin_error
    from .threads import release_freed_memory, retain_freed_memory, set_threads
