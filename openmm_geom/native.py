"""The compiled parts: the TorchCVForce OpenMM plugin and the native extension's build facts.

Importing :mod:`openmm_geom` loads the plugin (registering TorchCVForce's kernels with the
platforms); if it is not built, everything but TorchCVForce still works and
:func:`plugin_error` says why. The native pieces and their files:

- ``pair_geometry`` torch op: kernel ``cpp/ops/pair_geometry.cpp``, Python wrapper
  :mod:`openmm_geom.ops.pair_geometry`, library loader :mod:`openmm_geom.ops._library`,
  tests ``tests/ops/test_pair_geometry.py``, benchmark ``benchmarks/bench_neighbors.py``;
- ``TorchCVForce`` plugin: ``cpp/plugin/`` (force, kernels, serialization), SWIG interface
  ``cpp/python/torchcv_plugin.i``, Python class :mod:`openmm_geom.openmm.cvforce`, tests
  ``tests/openmm/test_torchcv_force.py``, benchmark ``benchmarks/bench_torchcv.py``;
- ``openmm_geom._native`` (build facts and a self-test): ``cpp/native_module.cpp``.
"""
from __future__ import annotations

from typing import Optional

__all__ = ["plugin_error", "native_build_info"]


def _load_plugin() -> Optional[BaseException]:
    """Import the OpenMM plugin so TorchCVForce's kernels are registered with the platforms."""
    # openmm first: its import loads the platform plugins (CPU, ...), and the kernels can only
    # be registered with platforms that exist.
    try:
        import openmm  # noqa: F401

        from . import torchcv_plugin  # noqa: F401
    except ImportError as error:  # not built (or no openmm): everything but TorchCVForce works
        return error
    return None


_PLUGIN_ERROR = _load_plugin()


def plugin_error() -> Optional[BaseException]:
    """Why the TorchCVForce plugin could not be loaded, or None if it is loaded."""
    return _PLUGIN_ERROR


def native_build_info() -> dict:
    """What the compiled extension ``openmm_geom._native`` was built against (raises if absent)."""
    from . import _native

    return dict(_native.build_info())
