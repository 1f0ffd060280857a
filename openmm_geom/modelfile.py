"""The openmm-geom model-file format: a TorchScript file that describes itself.

An exported model is a TorchScript module that follows the export contract
(``forward(positions[N,3] nm[, box[3,3] nm]) -> energy kJ/mol`` or ``-> cv[k]``) and carries
its metadata as a JSON string attribute, ``openmm_geom_metadata``. Because the metadata is part
of the module, it survives everything that copies the module: ``torch.jit.save``/``load``,
openmm-torch's ``TorchForce`` and its XML serialization, Simulation checkpoints.

This module sits below both :mod:`openmm_geom.export` (which writes files) and
:mod:`openmm_geom.openmm` (which reads them), so neither imports the other.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

__all__ = [
    "FORMAT_VERSION",
    "METADATA_ATTRIBUTE",
    "ModelMetadata",
    "ModelFileError",
    "TopologyMismatchError",
    "load_model",
    "save_model",
    "read_metadata",
    "metadata_of",
    "atomic_write_bytes",
    "atomic_torch_save",
    "sha256_of_arrays",
]

FORMAT_VERSION = 1
METADATA_ATTRIBUTE = "openmm_geom_metadata"
KINDS = ("potential", "cv")


class ModelFileError(RuntimeError):
    """A file that is missing, corrupt, or not an openmm-geom model."""


class TopologyMismatchError(ValueError):
    """A model used with a system it was not made for (atom count, types, periodicity)."""


@dataclasses.dataclass
class ModelMetadata:
    """Everything needed to use an exported model correctly, stored inside the model file.

    Lengths are in nm and energies in kJ/mol at the file's interface; ``model_length_unit`` and
    ``model_energy_unit`` record what the wrapped model uses internally.
    """

    kind: str
    n_atoms: int
    periodic: bool
    output_dim: int
    model_length_unit: str
    model_energy_unit: Optional[str]
    nm_per_model_length: float
    kj_per_mol_per_model_energy: Optional[float]
    dtype: str
    cutoff_nm: Optional[float] = None
    atom_types: Optional[list] = None
    masses_amu: Optional[list] = None
    cv_names: Optional[list] = None
    hyperparameters: dict = dataclasses.field(default_factory=dict)
    mapping: Optional[dict] = None
    training_data_hash: Optional[str] = None
    example_positions_nm: Optional[list] = None
    example_box_nm: Optional[list] = None
    extra: dict = dataclasses.field(default_factory=dict)
    package_version: str = ""
    torch_version: str = ""
    format_version: int = FORMAT_VERSION

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.n_atoms <= 0:
            raise ValueError(f"n_atoms must be positive, got {self.n_atoms}")
        if self.kind == "potential" and self.output_dim != 1:
            raise ValueError("a potential has a single (scalar) output")
        if self.cv_names is not None and len(self.cv_names) != self.output_dim:
            raise ValueError(
                f"{len(self.cv_names)} cv_names given for {self.output_dim} CV outputs"
            )
        if self.atom_types is not None and len(self.atom_types) != self.n_atoms:
            raise ValueError(f"{len(self.atom_types)} atom_types for {self.n_atoms} atoms")
        if self.masses_amu is not None and len(self.masses_amu) != self.n_atoms:
            raise ValueError(f"{len(self.masses_amu)} masses for {self.n_atoms} atoms")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ModelMetadata":
        data = json.loads(text)
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise ModelFileError(
                f"model file format version {version}, this openmm-geom reads {FORMAT_VERSION}"
            )
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def check_topology(self, n_atoms: int, atom_types: Optional[Sequence] = None,
                       periodic: Optional[bool] = None) -> None:
        """Raise :class:`TopologyMismatchError` unless the model fits this system."""
        if n_atoms != self.n_atoms:
            raise TopologyMismatchError(
                f"the model was exported for {self.n_atoms} atoms but the system has {n_atoms}"
            )
        if atom_types is not None and self.atom_types is not None:
            given = [str(t) for t in atom_types]
            stored = [str(t) for t in self.atom_types]
            if given != stored:
                first = next(i for i, (a, b) in enumerate(zip(given, stored)) if a != b)
                raise TopologyMismatchError(
                    f"atom types differ from the model's, first at atom {first}: "
                    f"system {given[first]!r}, model {stored[first]!r}"
                )
        if periodic is not None and periodic != self.periodic:
            want = "periodic" if self.periodic else "non-periodic"
            have = "periodic" if periodic else "non-periodic"
            raise TopologyMismatchError(f"the model is {want} but the system is {have}")


def metadata_of(module: torch.nn.Module) -> ModelMetadata:
    """Metadata carried by an exported (scripted or eager) module."""
    text = getattr(module, METADATA_ATTRIBUTE, None)
    if not isinstance(text, str):
        raise ModelFileError(
            "this module carries no openmm-geom metadata; export it with "
            "openmm_geom.export.export_model first"
        )
    return ModelMetadata.from_json(text)


def atomic_write_bytes(path: os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual permissions
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_torch_save(path: os.PathLike, payload) -> None:
    """``torch.save`` of plain data (tensors, dicts, numbers) through :func:`atomic_write_bytes`.

    Checkpoints written this way load with ``torch.load(..., weights_only=True)``.
    """
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def save_model(module: torch.jit.ScriptModule, path: os.PathLike) -> Path:
    """Save an exported module atomically; its metadata must already be attached."""
    metadata_of(module)  # refuse to write a file that cannot be read back
    buffer = io.BytesIO()
    torch.jit.save(module, buffer)
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)


def _register_torchscript_classes() -> None:
    """Load the libraries whose TorchScript classes and ops our models may contain.

    A scripted model that calls vesin's neighbour list (or our native ops) can only be
    deserialised once those are registered with torch, whoever imports what first.
    """
    import vesin_torch  # noqa: F401  (registers torch.classes.vesin)

    from . import ops  # noqa: F401  (registers the openmm_geom native ops)


def load_model(path: os.PathLike, map_location: str = "cpu"):
    """Load an exported model file.

    Returns
    -------
    (torch.jit.ScriptModule, ModelMetadata)

    Raises
    ------
    ModelFileError
        The file is missing, truncated/corrupt, not TorchScript, or not an openmm-geom model.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file not found: {path}")
    if not zipfile.is_zipfile(path):
        raise ModelFileError(
            f"{path} is not a TorchScript model file (not a zip archive; truncated or another format?)"
        )
    _register_torchscript_classes()
    try:
        module = torch.jit.load(str(path), map_location=map_location)
    except Exception as error:  # torch raises bare RuntimeErrors with C++ traces
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        raise ModelFileError(f"{path} could not be loaded as TorchScript: {first_line}") from error
    try:
        metadata = metadata_of(module)
    except ModelFileError as error:
        raise ModelFileError(f"{path}: {error}") from None
    return module, metadata


def read_metadata(path: os.PathLike) -> ModelMetadata:
    """Metadata of a model file."""
    return load_model(path)[1]


def sha256_of_arrays(*arrays: Any) -> str:
    """A short content hash of training data, recorded in model files (``training_data_hash``)."""
    import numpy as np

    digest = hashlib.sha256()
    for array in arrays:
        a = np.ascontiguousarray(np.asarray(array))
        digest.update(str(a.dtype).encode() + str(a.shape).encode())
        digest.update(a.tobytes())
    return digest.hexdigest()[:16]
