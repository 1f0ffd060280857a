"""AOTInductor export of CV modules: the second backend of the native ``TorchCVForce``.

:func:`~openmm_geom.export.export_model` with ``format="aoti"`` calls :func:`package_cv_model`.
The package (a ``.pt2`` archive) holds two models compiled to machine code by
``torch._inductor``, both float64 at their interface and specialised to the example's atom
count:

- ``cv``: ``positions[N,3] nm [, box[3,3] nm] -> cv[k]``;
- ``vjp``: ``(positions [, box], w[k]) -> w . dcv/dpositions`` (``[N,3]``): the forces' chain
  rule for the bias's ``dE/dcv``, traced to plain operations with ``make_fx`` (the backward
  pass becomes forward code, which is what ``torch.export`` and AOTInductor accept).

The model's openmm-geom metadata travels twice: as the archive member
``extra/openmm_geom_metadata.json`` (read by :func:`openmm_geom.modelfile.read_metadata` without
loading anything) and as AOTInductor metadata entries ``openmm_geom.*`` that the C++ kernel
reads (atom count, CV count, periodicity).
"""
from __future__ import annotations

import copy
import io
import os
from typing import Optional

import torch

from ..errors import ExportError
from ..io import atomic_write_bytes
from ..modelfile import (AOTI_MODELS, METADATA_MEMBER, ExportedModel, ModelMetadata,
                         package_entries)

__all__ = ["package_cv_model"]


def package_cv_model(boundary: torch.nn.Module, metadata: ModelMetadata,
                     path: os.PathLike) -> ExportedModel:
    """Compile the CV module behind ``boundary`` (its contract wrapper) into an AOTInductor package.

    Parameters
    ----------
    boundary : openmm_geom.contract.OpenMMBoundary or PeriodicOpenMMBoundary
        The eager contract wrapper (``call_unchecked`` is traced: a check of values is a
        data-dependent branch that ``torch.export`` refuses; the kernel checks values instead).
    metadata : ModelMetadata
        A CV module's metadata with its example configuration.
    path : path-like
        Where to write the package (atomically).

    Returns
    -------
    ExportedModel
        The package as loaded (``backend == "aoti"``), checked against the eager module on the
        example configuration.

    Raises
    ------
    ExportError
        Tracing, export or compilation failed, or the package disagrees with the eager module.
    """
    from torch._inductor import aot_compile
    from torch.export.pt2_archive._package import package_pt2
    from torch.fx.experimental.proxy_tensor import make_fx

    boundary = _fixed_shape_copy(boundary)
    positions = torch.tensor(metadata.example_positions_nm, dtype=torch.float64)
    box = (None if metadata.example_box_nm is None
           else torch.tensor(metadata.example_box_nm, dtype=torch.float64))
    cotangent = torch.ones(metadata.output_dim, dtype=torch.float64)
    inputs = (positions,) if box is None else (positions, box)

    def cv(*args):
        return boundary.call_unchecked(*args)

    def vjp(*args):
        x, rest, w = args[0], args[1:-1], args[-1]
        _, pull = torch.func.vjp(lambda y: boundary.call_unchecked(y, *rest), x)
        return pull(w)[0]

    # pattern_matcher off: inductor would rewrite a written-out softmax(q k^T / s) v (our
    # transformer mixers) into scaled_dot_product_attention, whose CPU flash-attention backward
    # then failed at run time in the VJP model (seen with the subformer mixer, float64).
    options = {"aot_inductor.package": True,
               "aot_inductor.metadata": package_entries(metadata),
               "pattern_matcher": False}
    files = {}
    for name, function, args in (("cv", cv, inputs), ("vjp", vjp, inputs + (cotangent,))):
        step = "tracing"
        try:
            graph = make_fx(function)(*args)
            step = "torch.export"
            exported = torch.export.export(graph, args)
            step = "AOTInductor compilation"
            files[name] = aot_compile(exported.module(), args, options=dict(options))
        except Exception as error:  # torch raises many types, with long traces
            first = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
            raise ExportError(
                f"the CV module's {name!r} model failed in {step}: {type(error).__name__}: "
                f"{first}\nA package needs a module without data-dependent Python branches "
                "in forward (checks of tensor values: move them to construction time, as "
                "Dihedrals does); or export it as TorchScript (format='torchscript')"
            ) from error
    assert tuple(files) == AOTI_MODELS
    buffer = io.BytesIO()
    package_pt2(buffer, aoti_files=files, extra_files={METADATA_MEMBER: metadata.to_json()})
    data = buffer.getvalue()
    atomic_write_bytes(path, data)
    model = ExportedModel.from_package(data, metadata, source=str(path), from_file=True)
    _verify_package(boundary, model, positions, box, metadata)
    return model


def _fixed_shape_copy(module: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``module`` in which every submodule that offers ``enable_fixed_shapes()``
    (e.g. :class:`~openmm_geom.models.torchmdnet.VesinEdges`: every pair instead of a
    neighbour search, so geom2vec CVs can be packaged) has had it called; the
    module itself is untouched."""
    module = copy.deepcopy(module)
    for part in module.modules():
        enable = getattr(part, "enable_fixed_shapes", None)
        if callable(enable):
            enable()
    return module


def _verify_package(boundary: torch.nn.Module, model: ExportedModel, positions: torch.Tensor,
                    box: Optional[torch.Tensor], metadata: ModelMetadata) -> None:
    """The package must reproduce the eager module (CVs and a VJP) on the example, and on the
    example moved by 0.01 nm: tracing with real tensors would bake in a value-dependent shape
    (e.g. a neighbour list's pair count) that the example alone cannot reveal."""
    moved = positions + 0.01 * torch.randn(positions.shape, dtype=torch.float64,
                                           generator=torch.Generator().manual_seed(0))
    for where, x in (("the example configuration", positions),
                     ("the example configuration moved by 0.01 nm", moved)):
        try:
            _compare(boundary, model, x, box, metadata, where)
        except ExportError:
            raise
        except Exception as error:  # the package's runner raises bare RuntimeErrors
            first = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
            raise ExportError(f"the AOTInductor package fails on {where}: {first}") from error


def _compare(boundary: torch.nn.Module, model: ExportedModel, positions: torch.Tensor,
             box: Optional[torch.Tensor], metadata: ModelMetadata, where: str) -> None:
    x = positions.clone().requires_grad_(True)
    eager = boundary(x, box)
    weights = torch.linspace(1.0, -0.5, metadata.output_dim, dtype=torch.float64)
    (grad,) = torch.autograd.grad(eager.to(torch.float64), x, weights)
    got_cv = model(positions, box)
    got_grad = model.module.vjp(positions, weights, box)
    # float32: inductor fuses and reorders the arithmetic; a 3-layer ET CV differed by 1.3e-5
    # (relative) from eager. A baked-in shape or a value branch gives errors of order one.
    tolerance = 1e-10 if metadata.dtype == "float64" else 1e-4
    for name, a, b in (("CVs", eager.detach().to(torch.float64), got_cv),
                       ("gradient", grad, got_grad)):
        scale = max(float(a.abs().max()), 1e-12)
        error = float((a - b).abs().max()) / scale
        if error > tolerance:
            raise ExportError(f"the AOTInductor package's {name} differ from the eager model's "
                              f"by {error:.3g} (relative, tolerance {tolerance:g}) on {where}; "
                              "does the module's forward branch on tensor values?")
