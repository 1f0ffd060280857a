"""Our CVs for PLUMED: a TorchScript file with the ``PYTORCH_MODEL`` convention.

PLUMED's ``PYTORCH_MODEL`` (``src/pytorch/PytorchModel.cpp``, PLUMED 2.9/2.10) loads a
TorchScript file with ``torch::jit::load``, puts it in eval mode, freezes it
(``torch::jit::freeze``) and runs ``optimize_for_inference``. At every step it copies the values
of the ``ARG=`` actions into a ``std::vector<float>`` and calls ``forward`` on that tensor viewed
as ``(1, n_args)`` (float32, ``requires_grad``); it reads the output with ``data_ptr<float>``
(so it must be a float32 tensor; its ``numel()``, found once on a zero input, is the number of
outputs ``k``), names the outputs ``node-0 .. node-{k-1}`` and takes the derivative of each by
autograd on ``output[:, j:j+1]``. Lengths arrive in PLUMED's length unit, nm unless the input
sets ``UNITS``; angles in rad.

:func:`export_plumed` writes such a file from a CV of ours, in one of two forms:

- ``"descriptors"``: the inputs are the descriptors of a :func:`~openmm_geom.models.
  descriptors.descriptor_cv` (distances, angles, sin/cos of torsions, positions, which PLUMED
  computes with ``DISTANCE``, ``ANGLE``, ``TORSION`` + ``CUSTOM``, ``POSITION``), and the file
  holds the model after the front end;
- ``"positions"``: the inputs are the 3N coordinates of every atom the CV takes, in nm, from
  ``POSITION ATOM=i NOPBC`` (``.x``, ``.y``, ``.z``), and the file holds the whole CV. Any
  non-periodic CV file of ours works this way (geom2vec CVs included).

A *periodic* CV (one that takes the box) cannot be expressed through the ``ARG`` interface:
PLUMED passes no box to ``PYTORCH_MODEL``, and ``POSITION`` components jump when atoms are
wrapped. Such CVs are refused; export their descriptor-based form instead.

Inside the file the CV runs in its own dtype (float64 if exported so); only the float32 inputs
and outputs of PLUMED's interface are rounded. Given a float64 input the file returns float64
(not what PLUMED does, but how its arithmetic is tested to 1e-10).
"""
from __future__ import annotations

import dataclasses
import io
import json
import os
import re
from pathlib import Path
from typing import List, Optional

import torch

from ..errors import ExportError
from ..io import atomic_write_bytes
from ..modelfile import ExportedModel
from ..models.descriptors import DescriptorCV, descriptors_from_spec

__all__ = ["PlumedExport", "PlumedCV", "export_plumed"]

PLUMED_ATTRIBUTE = "openmm_geom_plumed"


class PlumedCV(torch.nn.Module):
    """``forward(x (B, n_inputs)) -> (B, k)`` in ``x``'s dtype: PLUMED's ``PYTORCH_MODEL`` layout.

    Parameters
    ----------
    model : the CV, taking one row of inputs: ``(n_inputs,)`` descriptors, or positions
        ``(n_inputs / 3, 3)`` when ``positions`` is True (then divided by ``nm_per_length``
        first); ``batched`` models take the whole ``(B, n_inputs)`` instead.
    """

    def __init__(self, model: torch.nn.Module, n_inputs: int, n_outputs: int, *,
                 positions: bool, batched: bool, dtype: torch.dtype, nm_per_length: float = 1.0,
                 info: str = "{}"):
        super().__init__()
        self.model = model
        self.n_inputs = int(n_inputs)
        self.n_outputs = int(n_outputs)
        self.positions = bool(positions)
        self.batched = bool(batched)
        self.nm_per_length = float(nm_per_length)
        self.register_buffer("model_dtype", torch.zeros(0, dtype=dtype))
        setattr(self, PLUMED_ATTRIBUTE, info)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.size(1) != self.n_inputs:
            raise ValueError("PYTORCH_MODEL input must have shape (1, " + str(self.n_inputs)
                             + ") (one value per ARG), got " + str(list(x.shape)))
        values = x.to(self.model_dtype.dtype)
        if self.batched:
            out = self.model(values)
        else:
            rows: List[torch.Tensor] = []
            for b in range(values.size(0)):
                row = values[b]
                if self.positions:
                    row = row.reshape(-1, 3) / self.nm_per_length
                rows.append(self.model(row).reshape(-1))
            out = torch.stack(rows)
        if out.dim() != 2 or out.size(1) != self.n_outputs:
            raise ValueError("the CV must return " + str(self.n_outputs) + " values per input "
                             "row, got shape " + str(list(out.shape)))
        return out.to(x.dtype).contiguous()


@dataclasses.dataclass
class PlumedExport:
    """What :func:`export_plumed` wrote.

    Attributes
    ----------
    path : the TorchScript file for ``PYTORCH_MODEL FILE=...``
    form : ``"descriptors"`` or ``"positions"``
    arguments : the ``ARG=`` labels, in input order
    cv_names : our names of the outputs ``node-0 .. node-{k-1}``
    plumed_input : PLUMED input lines computing the arguments and calling the model
    custom_ops : operator libraries (namespaces) the file needs besides libtorch; PLUMED must
        load them (e.g. ``vesin``, ``openmm_geom``) or it cannot run the file
    """

    path: Path
    form: str
    arguments: List[str]
    cv_names: List[str]
    plumed_input: str
    custom_ops: List[str]

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["path"] = str(self.path)
        return out


def _custom_ops(module: torch.jit.ScriptModule) -> List[str]:
    """Namespaces of non-libtorch operators and classes the module's ``forward`` calls."""
    graph = str(module.inlined_graph)
    found = set(re.findall(r"=\s*([A-Za-z_][A-Za-z0-9_]*)::[A-Za-z_]", graph))
    found |= set(re.findall(r"__torch__\.torch\.classes\.([A-Za-z_][A-Za-z0-9_]*)", graph))
    return sorted(found - {"aten", "prim", "profiler", "quantized"})


def _positions_lines(n_atoms: int, prefix: str):
    lines, args = [], []
    for i in range(n_atoms):
        label = f"{prefix}p{i}"
        lines.append(f"{label}: POSITION ATOM={i + 1} NOPBC")
        args.extend(f"{label}.{c}" for c in "xyz")
    return lines, args


def _plumed_text(lines, args, cv_names, file_name, label, form, custom_ops):
    head = [f"# openmm-geom CV for PLUMED's PYTORCH_MODEL ({form} form): nm and rad, as PLUMED's",
            "# defaults (no UNITS line). Atom numbers are 1-based, in the order of the atoms",
            "# the CV was exported for; molecules must be whole (NOPBC; see WHOLEMOLECULES)."]
    if custom_ops:
        head.append("# The file calls operators of " + ", ".join(custom_ops) + ": PLUMED's "
                    "libtorch must have their libraries loaded.")
    outputs = ", ".join(f"{label}.node-{j} = {name}" for j, name in enumerate(cv_names))
    head.append(f"# outputs: {outputs}")
    body = lines + [f"{label}: PYTORCH_MODEL FILE={file_name} ARG={','.join(args)}",
                    f"PRINT FILE=COLVAR STRIDE=100 ARG="
                    + ",".join(f"{label}.node-{j}" for j in range(len(cv_names)))]
    return "\n".join(head + body) + "\n"


def export_plumed(cv, path: os.PathLike, *, form: str = "auto", label: str = "cv",
                  input_path: Optional[os.PathLike] = None) -> PlumedExport:
    """Write ``cv`` as a TorchScript file for PLUMED's ``PYTORCH_MODEL``.

    Parameters
    ----------
    cv : DescriptorCV, ExportedModel or path
        A :func:`~openmm_geom.models.descriptors.descriptor_cv` module, or a CV file written by
        :func:`~openmm_geom.export.export_model` (``kind="cv"``, non-periodic).
    path : path-like
        The file to write (PLUMED's default name is ``model.ptc``); written atomically.
    form : {"auto", "descriptors", "positions"}
        ``"descriptors"``: the inputs are the descriptors of a descriptor CV (the default for
        one); ``"positions"``: the inputs are all atoms' x, y, z in nm (the default otherwise).
    label : str
        PLUMED label of the ``PYTORCH_MODEL`` action in the input lines.
    input_path : path-like, optional
        Also write the PLUMED input lines there.

    Returns
    -------
    PlumedExport
        The file, its ``ARG`` labels in order, the output names and the PLUMED input lines.

    Raises
    ------
    ExportError
        A periodic CV, a descriptors form asked of a CV without descriptors, or a module that
        does not script.
    """
    if form not in ("auto", "descriptors", "positions"):
        raise ValueError(f"form must be 'auto', 'descriptors' or 'positions', got {form!r}")
    if isinstance(cv, DescriptorCV):
        module, front, spec_model = cv, cv.descriptors, cv
        n_atoms, nm_per_length, cv_names = None, 1.0, list(cv.cv_names)
        if form == "positions":
            raise ExportError("the positions form needs an exported CV file (export_model "
                              "fixes the atom count); export this one first")
        form = "descriptors"
    else:
        exported = ExportedModel.load(cv)
        meta = exported.metadata
        if meta is None or meta.kind != "cv":
            raise ExportError(f"{exported.source} is not a CV file (kind "
                              f"{getattr(meta, 'kind', None)!r}); export it with kind='cv'")
        if meta.periodic:
            raise ExportError(
                f"{exported.source} is a periodic CV (it takes the box): PLUMED's PYTORCH_MODEL "
                "passes only ARG values, no box, and POSITION components jump when atoms are "
                "wrapped, so it cannot be expressed through the ARG interface. Export a "
                "descriptor-based CV (openmm_geom.models.descriptors.descriptor_cv) instead.")
        inner = exported.module.model
        hyper = meta.hyperparameters or {}
        is_descriptor_cv = "descriptors" in hyper and "batched" in hyper
        if form == "descriptors" and not is_descriptor_cv:
            raise ExportError(f"{exported.source} is not a descriptor CV; use form='positions'")
        if form == "auto":
            form = "descriptors" if is_descriptor_cv else "positions"
        front = descriptors_from_spec(hyper["descriptors"]) if form == "descriptors" else None
        module, spec_model = inner, inner
        n_atoms, nm_per_length = meta.n_atoms, float(meta.nm_per_model_length)
        cv_names = list(meta.cv_names or [f"cv{j}" for j in range(meta.output_dim)])
        model_dtype = getattr(torch, meta.dtype)

    if form == "descriptors":
        model, n_inputs = spec_model.model, int(spec_model.n_features)
        batched, dtype = bool(spec_model.batched), spec_model.model_dtype.dtype
        lines, args = front.plumed_lines("")
        if len(args) != n_inputs:
            raise ExportError(f"the front end lists {len(args)} PLUMED arguments for "
                              f"{n_inputs} features")
        positions = False
    else:
        model, n_inputs, batched, positions = module, 3 * int(n_atoms), False, True
        dtype = model_dtype
        lines, args = _positions_lines(int(n_atoms), "")
    path = Path(path)
    info = json.dumps({"form": form, "arguments": args, "cv_names": cv_names,
                       "length_unit": "nm", "angle_unit": "rad"})
    wrapper = PlumedCV(model, n_inputs, len(cv_names), positions=positions, batched=batched,
                       dtype=dtype, nm_per_length=nm_per_length, info=info).eval()
    try:
        scripted = torch.jit.script(wrapper)
    except Exception as error:
        raise ExportError(f"the CV cannot be scripted for PLUMED: "
                          f"{str(error).strip().splitlines()[0]}") from error
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    atomic_write_bytes(path, buffer.getvalue())
    custom = _custom_ops(scripted)
    text = _plumed_text(lines, args, cv_names, path.name, label, form, custom)
    if input_path is not None:
        atomic_write_bytes(input_path, text.encode())
    return PlumedExport(path=path, form=form, arguments=args, cv_names=cv_names,
                        plumed_input=text, custom_ops=custom)
