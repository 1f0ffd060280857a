"""Loads ``libOpenMMGeomOps.so``, which registers the ``torch.ops.openmm_geom`` operators.

Exported TorchScript models that call these operators need the library in the process that
runs them: ``import openmm_geom`` loads it (OpenMM scripts do this anyway to get the forces).
"""
import importlib.util
from pathlib import Path

import torch

__all__ = ["ops_library_path", "load_ops_library"]

_LIBRARY = "libOpenMMGeomOps.so"


def ops_library_path() -> Path:
    """Where the compiled operator library lives (next to the ``_native`` extension)."""
    spec = importlib.util.find_spec("openmm_geom._native")
    if spec is None or spec.origin is None:
        raise ImportError("openmm_geom's native extension is not built: run `make native` "
                          "(or pip install --no-build-isolation -e .)")
    path = Path(spec.origin).parent / _LIBRARY
    if not path.is_file():
        raise ImportError(f"{_LIBRARY} is missing next to {spec.origin}: rebuild (`make native`)")
    return path


def load_ops_library() -> Path:
    path = ops_library_path()
    torch.ops.load_library(str(path))  # idempotent for the same path
    return path
