"""Checkpoints of trained models: architecture, atoms and weights, no code.

A checkpoint holds a model's hyper-parameters and state dict, tagged with its format
(``openmm-geom/potential/1``, ``openmm-geom/cgschnet/1``), and loads with
``torch.load(..., weights_only=True)``: reading one never executes code. Checkpoints are what
training writes and what export reads; the OpenMM side reads exported TorchScript files
(:class:`openmm_geom.openmm.ExportedModel`) instead.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch

from ..errors import ModelFileError
from ..io import PathLike, load_versioned, save_versioned
from ..models.atomistic import AtomisticPotential
from ..models.cgschnet import CGSchNet
from ..models.potentials import potential_class
from ..models.priors import CGPriors

__all__ = ["save_potential", "load_potential", "save_cgschnet", "load_cgschnet"]

POTENTIAL_KIND, POTENTIAL_VERSION = "potential", 1
CGSCHNET_KIND, CGSCHNET_VERSION = "cgschnet", 1


def save_potential(model: AtomisticPotential, path: PathLike, **extra) -> Path:
    """Write ``model`` (hyper-parameters, atoms, state dict and ``extra`` plain data) atomically."""
    return save_versioned(path, POTENTIAL_KIND, POTENTIAL_VERSION, {
        "hyperparameters": dict(model.hyperparameters),
        "atomic_numbers": [int(z) for z in model.atomic_numbers.tolist()],
        "state_dict": model.state_dict(), "extra": extra})


def load_potential(path: PathLike) -> tuple:
    """``(model, extra)`` from a file written by :func:`save_potential`.

    Raises
    ------
    FileNotFoundError
        No such file.
    ModelFileError
        Not a readable potential checkpoint (an exported TorchScript file is read with
        :meth:`openmm_geom.openmm.ExportedModel.load` instead).
    """
    payload = load_versioned(path, POTENTIAL_KIND, (POTENTIAL_VERSION,),
                             what="potential checkpoint", error=ModelFileError)
    hp = payload["hyperparameters"]
    model = potential_class(hp["architecture"]).from_hyperparameters(payload["atomic_numbers"], hp)
    model.load_state_dict(payload["state_dict"])
    return model, payload.get("extra", {})


def save_cgschnet(model: CGSchNet, path: PathLike, metadata: Optional[dict] = None) -> Path:
    """Write a CGSchNet (architecture, priors, weights, free-form metadata) atomically."""
    config = {"bead_types": model.bead_types.tolist(), "hyperparameters": model.hyperparameters,
              "dtype": str(model.embedding.dtype).replace("torch.", ""),
              "priors": model.priors.to_config() if model.use_priors else None,
              "metadata": metadata or {}}
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("priors.")}
    return save_versioned(path, CGSCHNET_KIND, CGSCHNET_VERSION,
                          {"config": json.dumps(config), "state": state})


def load_cgschnet(path: PathLike) -> tuple:
    """``(CGSchNet, metadata dict)`` from :func:`save_cgschnet`'s file.

    Raises
    ------
    FileNotFoundError
        No such file.
    ModelFileError
        Not a readable CG model file, or weights that do not fit the recorded architecture.
    """
    payload = load_versioned(path, CGSCHNET_KIND, (CGSCHNET_VERSION,), what="CG model file",
                             error=ModelFileError)
    config = json.loads(payload["config"])
    priors = CGPriors.from_config(config["priors"]) if config["priors"] else None
    model = CGSchNet(config["bead_types"], priors, **config["hyperparameters"],
                     dtype=getattr(torch, config["dtype"]))
    missing, unexpected = model.load_state_dict(payload["state"], strict=False)
    if unexpected or [k for k in missing if not k.startswith("priors.")]:
        raise ModelFileError(f"{path}: weights do not match the architecture "
                             f"(missing {missing}, unexpected {unexpected})")
    return model, config["metadata"]
