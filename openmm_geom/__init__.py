"""openmm-geom: geometric deep-learning potentials and collective variables inside OpenMM.

Data flows down these layers, and imports point only down them (``tests/test_layering.py``
enforces it):

==========================  ======================================================================
``errors, units, io``       one error hierarchy; unit conversions; atomic writes, hashing,
                            versioned file formats, figures
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
"""
from .native import native_build_info, plugin_error
from .threads import set_threads
from .version import __version__

__all__ = ["__version__", "set_threads", "native_build_info", "plugin_error"]
