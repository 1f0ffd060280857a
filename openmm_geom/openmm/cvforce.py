"""``TorchCVForce``: k neural CVs from one model pass, biased by any Lepton expression.

The force itself is C++ (``cpp/plugin``, an ``OpenMM::Force`` with Reference and CPU kernels
and XML serialization); this module gives it a Python constructor that takes an exported
model file or module, names the CVs from the model's metadata and checks what can be checked
before a Context exists.
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import torch

from .. import torchcv_plugin as _plugin
from ..modelfile import ModelFileError, ModelMetadata, load_model, metadata_of

__all__ = ["TorchCVForce"]


def _module_bytes(model) -> tuple:
    """(serialized TorchScript bytes, metadata or None) of a path or ScriptModule."""
    if isinstance(model, (str, os.PathLike)):
        _, metadata = load_model(model)  # validates the file before we embed it
        return Path(model).read_bytes(), metadata
    if isinstance(model, torch.jit.ScriptModule):
        buffer = io.BytesIO()
        torch.jit.save(model, buffer)
        try:
            metadata = metadata_of(model)
        except ModelFileError:
            metadata = None  # any scriptable module is allowed; the caller names its CVs
        return buffer.getvalue(), metadata
    if isinstance(model, torch.nn.Module):
        raise TypeError(f"{type(model).__name__} is an eager module: export it with "
                        "openmm_geom.export.export_model(..., kind='cv') or torch.jit.script it")
    raise TypeError(f"expected a model file path or a ScriptModule, got {type(model)}")


class TorchCVForce(_plugin.TorchCVForce):
    """An OpenMM force whose energy is an expression of the k CVs of one TorchScript module.

    The module maps ``positions[N,3]`` (nm) (and ``box[3,3]`` when periodic) to ``cv[k]``; it
    runs once per step and the forces come from one backward pass weighted by dE/dcv, whatever
    k is. The expression is parsed like ``CustomCVForce``'s: CVs by name, global parameters,
    tabulated functions (``Continuous1D/2D/3DFunction``...), energy parameter derivatives.

    Parameters
    ----------
    model : path or ScriptModule
        A CV module exported with ``export_model(..., kind="cv")`` (its metadata names the CVs
        and sets periodicity), or any scripted module together with ``cv_names``.
    energy : str
        Energy expression in kJ/mol, e.g. ``"0.5*k*(phi-phi0)^2"``.
    cv_names : sequence of str, optional
        Names of the k outputs as they appear in ``energy``. Default: the model's ``cv_names``
        or ``cv0 ... cv{k-1}``.
    particles : sequence of int, optional
        System particles passed to the module, in order (default: all).
    global_parameters : mapping name -> default value, optional
    periodic : bool, optional
        Whether the module takes the box; default from the model's metadata (else False).
    force_group : int, optional

    Notes
    -----
    Gaussian hills on any subset of the CVs (metadynamics beyond the 3 dimensions of
    tabulated functions): ``setHillsVariables(cv_indices, widths, periods)`` (period 0 = not
    periodic), ``addHill(center, height)``, ``getNumHills()``, ``getHill(i)`` -> ``(center,
    height)``, ``getHillCenters()``, ``getHillHeights()``, ``clearHills()``; the energy gains
    ``sum_h height_h exp(-0.5 sum_d (delta_d/width_d)^2)`` and its dE/dcv joins the single
    backward pass. New hills reach a Context with ``updateParametersInContext(context)``.

    ``getCollectiveVariableValues(context)`` returns the CVs at the Context's positions,
    reusing the values of the last force evaluation when the positions have not moved since.
    After ``XmlSerializer.deserialize`` or ``system.getForce(i)``, use
    ``TorchCVForce.cast(force)`` to reach these methods.
    """

    def __init__(self, model: Union[str, os.PathLike, torch.jit.ScriptModule], energy: str, *,
                 cv_names: Optional[Sequence[str]] = None,
                 particles: Optional[Sequence[int]] = None,
                 global_parameters: Optional[Mapping[str, float]] = None,
                 periodic: Optional[bool] = None, force_group: Optional[int] = None):
        _plugin.registerKernels()  # platforms loaded after import (e.g. plugins) get kernels too
        data, metadata = _module_bytes(model)
        names = self._names(metadata, cv_names)
        super().__init__(data, energy, names)
        self.metadata: Optional[ModelMetadata] = metadata
        if periodic is None:
            periodic = bool(metadata.periodic) if metadata else False
        elif metadata is not None and periodic != metadata.periodic:
            raise ValueError(f"periodic={periodic} contradicts the model, exported with "
                             f"periodic={metadata.periodic}")
        self.setUsesPeriodicBoundaryConditions(periodic)
        if particles is not None:
            particles = [int(p) for p in particles]
            if metadata is not None and len(particles) != metadata.n_atoms:
                raise ValueError(f"{len(particles)} particles given for a model exported for "
                                 f"{metadata.n_atoms} atoms")
            self.setParticles(particles)
        for name, value in (global_parameters or {}).items():
            self.addGlobalParameter(name, float(value))
        if force_group is not None:
            self.setForceGroup(force_group)
        self.setName("TorchCVForce")

    @staticmethod
    def _names(metadata: Optional[ModelMetadata], cv_names) -> list:
        if cv_names is not None:
            names = [str(n) for n in cv_names]
            if metadata is not None and len(names) != metadata.output_dim:
                raise ValueError(f"{len(names)} cv_names for a module with "
                                 f"{metadata.output_dim} CV outputs")
            return names
        if metadata is None:
            raise ValueError("this module carries no openmm-geom metadata: pass cv_names "
                             "(one per output) so the force knows how many CVs it returns")
        if metadata.kind != "cv":
            raise ValueError("the model is a potential; TorchCVForce takes a CV module "
                             "(export it with kind='cv')")
        return list(metadata.cv_names or [f"cv{i}" for i in range(metadata.output_dim)])

    @property
    def cv_names(self) -> list:
        return [self.getCollectiveVariableName(i) for i in range(self.getNumCollectiveVariables())]
