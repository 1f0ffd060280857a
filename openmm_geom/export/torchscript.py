"""TorchScript export: the bridge from a model to openmm-torch's ``TorchForce``."""
from __future__ import annotations

import copy
import os
from typing import Optional

import torch

from ..contract import boundary_for, describe
from ..errors import ExportError
from ..modelfile import BACKENDS, ExportedModel, ModelMetadata, save_model
from .aoti import package_cv_model

__all__ = ["export_model"]


def export_model(
    module: torch.nn.Module,
    path: os.PathLike,
    *,
    length_unit,
    energy_unit=None,
    periodic: bool,
    example_positions,
    example_box=None,
    kind: str = "potential",
    cutoff: Optional[float] = None,
    atom_types=None,
    masses=None,
    cv_names=None,
    cv_periods=None,
    hyperparameters: Optional[dict] = None,
    mapping: Optional[dict] = None,
    training_data_hash: Optional[str] = None,
    extra: Optional[dict] = None,
    dtype: Optional[torch.dtype] = None,
    format: str = "torchscript",
) -> ExportedModel:
    """Export ``module`` as a self-describing TorchScript file that OpenMM can run.

    With ``format="aoti"``, a CV module is compiled instead into an AOTInductor package for
    the native :class:`openmm_geom.openmm.TorchCVForce` (see docs/aotinductor.md).

    Parameters
    ----------
    module : torch.nn.Module
        A scriptable model. A potential maps ``positions[N,3]`` (and ``box[3,3]`` if periodic)
        in its own length unit to a scalar energy in its own energy unit; a CV module
        (``kind="cv"``) maps them to a ``(k,)`` tensor.
    path : path-like
        Where to write the TorchScript file (written atomically).
    length_unit, energy_unit : str or openmm.unit.Unit
        Units the model works in, e.g. ``"angstrom"``, ``"eV"``. Never guessed.
        ``energy_unit`` must be ``None`` for a CV module.
    periodic : bool
        Whether the model takes the box (rows a, b, c). The exported module then requires it.
    example_positions : array (N, 3) in nm or an OpenMM Quantity
        A valid configuration. It fixes the atom count, is evaluated to check the export, and
        is stored so that ``openmm-geom check-export`` can validate the file on its own.
    example_box : array (3, 3) in nm or Quantity, periodic models only
    cutoff : float, optional
        The model's interaction cutoff in its own length unit; the exported module refuses
        boxes that cannot hold it under the minimum-image convention.
    atom_types, masses, cv_names, hyperparameters, mapping, training_data_hash, extra
        Recorded in the file's metadata (masses in amu).
    cv_periods : sequence of (float or None), optional
        CV modules: per output, its period in the output's unit (``2 * math.pi`` for an angle
        in radians) or None if it is not periodic. Default: the module's own ``cv_periods``
        attribute (:class:`openmm_geom.models.Dihedrals` declares ``2 pi``), else unknown.
        ``check_export`` compares periodic outputs on the circle.
    dtype : torch.dtype, optional
        The model's dtype (inferred from its parameters; float64 when it has none).
    format : {"torchscript", "aoti"}
        ``"torchscript"`` (default): a TorchScript file, run by every OpenMM-side function.
        ``"aoti"``: CV modules only, an AOTInductor package (``.pt2``) of the CVs and of
        their vector-Jacobian product compiled to machine code for the example's atom count,
        which only ``TorchCVForce`` runs (per step much cheaper than TorchScript for small
        CVs). Compiling takes about a minute and needs a C++ compiler; the module's
        ``forward`` must not branch on tensor values.

    Returns
    -------
    ExportedModel
        The file as loaded: ``.module`` is the exported ScriptModule, ``forward(positions
        nm[, box nm]) -> kJ/mol`` (or ``cv[k]``), with its metadata in the
        ``openmm_geom_metadata`` attribute; ``.metadata`` the parsed metadata. Pass it to
        :func:`openmm_geom.openmm.create_system` & co. without reading the file again.

    Raises
    ------
    ExportError
        The model cannot be scripted (or packaged), or its script (package) disagrees with it
        on the example.
    """
    if format not in BACKENDS:
        raise ValueError(f"format must be one of {BACKENDS}, got {format!r}")
    if format == "aoti" and kind != "cv":
        raise ValueError("format='aoti' packages CV modules (kind='cv') for TorchCVForce; a "
                         "potential runs in openmm-torch's TorchForce, which needs TorchScript")
    metadata = describe(
        module, kind=kind, length_unit=length_unit, energy_unit=energy_unit, periodic=periodic,
        example_positions=example_positions, example_box=example_box, cutoff=cutoff,
        atom_types=atom_types, masses=masses, cv_names=cv_names, cv_periods=cv_periods,
        hyperparameters=hyperparameters, mapping=mapping,
        training_data_hash=training_data_hash, extra=extra, dtype=dtype,
    )
    eager = boundary_for(_inference_copy(module), metadata)
    if format == "aoti":
        return package_cv_model(eager, metadata, path)
    try:
        scripted = torch.jit.script(eager)
    except Exception as error:
        raise ExportError(
            f"{type(module).__name__} cannot be compiled with torch.jit.script: "
            f"{str(error).strip().splitlines()[0]}\nMake it scriptable, or run it through "
            "openmm_geom.openmm.python_force (the openmm.PythonForce bridge)."
        ) from error
    _verify_script(eager, scripted, metadata)
    return save_model(scripted, path)


def _inference_copy(module: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``module`` whose parameters do not require gradients (``module`` is untouched).

    openmm-torch's CPU and Reference kernels take forces from ``energy.backward()``, which
    also computes, every step, the gradient of every parameter that requires one: about a
    quarter of a step's time for a message-passing potential at 3,000 atoms, and ``.grad``
    buffers that nobody reads. An exported model only needs gradients with respect to its
    inputs.
    """
    copied = copy.deepcopy(module)
    for parameter in copied.parameters():
        if parameter.is_leaf:  # some libraries' modules hold computed (non-leaf) tensors
            parameter.requires_grad_(False)
    return copied


def _verify_script(eager: torch.nn.Module, scripted: torch.jit.ScriptModule,
                   metadata: ModelMetadata) -> None:
    """The scripted module must reproduce the eager one (outputs and gradients) on the example."""
    positions = torch.tensor(metadata.example_positions_nm, dtype=torch.float64)
    box = (None if metadata.example_box_nm is None
           else torch.tensor(metadata.example_box_nm, dtype=torch.float64))
    results = []
    for module in (eager, scripted):
        x = positions.clone().requires_grad_(True)
        out = module(x, box)
        (grad,) = torch.autograd.grad(out.sum(), x)
        results.append((out.detach(), grad))
    (out_e, grad_e), (out_s, grad_s) = results
    tolerance = 1e-10 if metadata.dtype == "float64" else 1e-5
    for name, a, b in (("output", out_e, out_s), ("gradient", grad_e, grad_s)):
        scale = max(float(a.abs().max()), 1e-12)
        error = float((a - b).abs().max()) / scale
        if error > tolerance:
            raise ExportError(
                f"the scripted model's {name} differs from the eager model's by {error:.3g} "
                f"(relative, tolerance {tolerance:g}) on the example configuration"
            )
