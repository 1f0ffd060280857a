"""The all-atom potential architectures, registered in one place.

``build_potential("attention" | "et" | "tensornet", atomic_numbers, **sizes)`` makes a model;
``potential_class(architecture).from_hyperparameters(...)`` rebuilds a trained one (checkpoint
files are :mod:`openmm_geom.training.checkpoints`).
"""
from __future__ import annotations

from typing import Sequence

from .atomistic import AtomisticPotential
from .names import ARCHITECTURES

__all__ = ["ARCHITECTURES", "build_potential", "potential_class"]


def potential_class(architecture: str):
    """The class implementing ``architecture`` (``"attention"``, ``"et"``, ``"tensornet"``)."""
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
    cls = potential_class(architecture)
    if architecture in ("et", "tensornet"):
        options = dict(options, architecture=architecture)
    return cls(atomic_numbers, **options)
