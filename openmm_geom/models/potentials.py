"""The all-atom potential architectures, registered in one place, and their checkpoint files.

``build_potential("attention" | "et" | "tensornet", atomic_numbers, **sizes)`` makes a model;
:func:`save_potential` / :func:`load_potential` write and read a trained one as its
hyper-parameters plus a state dict (read with ``torch.load(..., weights_only=True)``), so that
a checkpoint never executes code when it is loaded.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence, Union

import torch

from ..modelfile import ModelFileError, atomic_torch_save
from .atomistic import AtomisticPotential

__all__ = ["ARCHITECTURES", "build_potential", "save_potential", "load_potential",
           "POTENTIAL_FORMAT"]

POTENTIAL_FORMAT = "openmm_geom.potential/1"
ARCHITECTURES = ("attention", "et", "tensornet")


def _class_for(architecture: str):
    if architecture == "attention":
        from .attention import AttentionPotential

        return AttentionPotential
    if architecture in ("et", "tensornet"):
        from .torchmdnet import TorchMDNetPotential

        return TorchMDNetPotential
    raise ValueError(f"unknown architecture {architecture!r}; choose one of {list(ARCHITECTURES)}")


def build_potential(architecture: str, atomic_numbers: Sequence[int], **options) -> AtomisticPotential:
    """A new, untrained potential of the named architecture for the given atoms.

    ``options`` are the architecture's constructor arguments (cutoff in nm, sizes, dtype,
    seed); see :class:`~openmm_geom.models.attention.AttentionPotential` and
    :class:`~openmm_geom.models.torchmdnet.TorchMDNetPotential`.
    """
    cls = _class_for(architecture)
    if architecture in ("et", "tensornet"):
        options = dict(options, architecture=architecture)
    return cls(atomic_numbers, **options)


def save_potential(model: AtomisticPotential, path: Union[str, os.PathLike], **extra) -> Path:
    """Write ``model`` (hyper-parameters, atoms, state dict and ``extra`` plain data) atomically."""
    payload = {"format": POTENTIAL_FORMAT, "hyperparameters": dict(model.hyperparameters),
               "atomic_numbers": [int(z) for z in model.atomic_numbers.tolist()],
               "state_dict": model.state_dict(), "extra": extra}
    path = Path(path)
    atomic_torch_save(path, payload)
    return path


def load_potential(path: Union[str, os.PathLike]) -> tuple:
    """``(model, extra)`` from a file written by :func:`save_potential`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"potential file not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ModelFileError(f"{path} is not a readable potential checkpoint ({error})") from error
    if not isinstance(payload, dict) or payload.get("format") != POTENTIAL_FORMAT:
        raise ModelFileError(
            f"{path} is not an openmm-geom potential checkpoint (format "
            f"{payload.get('format') if isinstance(payload, dict) else type(payload).__name__!r}); "
            "exported TorchScript files are read with openmm_geom.modelfile.load_model")
    hp = payload["hyperparameters"]
    model = _class_for(hp["architecture"]).from_hyperparameters(payload["atomic_numbers"], hp)
    model.load_state_dict(payload["state_dict"])
    return model, payload.get("extra", {})
