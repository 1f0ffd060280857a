"""The openmm-geom model file: a TorchScript file that describes itself, and
:class:`ExportedModel`, the one way to read it.

An exported model is a TorchScript module that follows the export contract
(``forward(positions[N,3] nm[, box[3,3] nm]) -> energy kJ/mol`` or ``-> cv[k]``) and carries
its metadata (:class:`ModelMetadata`) as a JSON string attribute, ``openmm_geom_metadata``.
Because the metadata is part of the module, it survives everything that copies the module:
``torch.jit.save``/``load``, openmm-torch's ``TorchForce`` and its XML serialization,
Simulation checkpoints. The file also holds the same JSON as an extra archive member, so
:func:`read_metadata` reads it without deserialising the module.

A CV module may instead be exported as an AOTInductor package (``export_model(...,
format="aoti")``, a ``.pt2`` archive of compiled code with the same metadata as an archive
member): :class:`ExportedModel` reads it too (``backend == "aoti"``), for the native
``TorchCVForce`` only (docs/aotinductor.md).

Every OpenMM-side function takes a path *or* an :class:`ExportedModel`; loading a model once
(``ExportedModel.load(path)``) and passing the object around never reads or deserialises the
file again. Checks of a model against a System or Topology live here, with one set of messages.

This module sits below both :mod:`openmm_geom.export` (which writes files) and
:mod:`openmm_geom.openmm` (which reads them), so neither imports the other.
"""
from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import zipfile
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple, Union

import torch

from .errors import ModelFileError, TopologyMismatchError
from .io import atomic_write_bytes, check_format, format_tag
from .ops.neighbors import check_box_holds_cutoff

__all__ = [
    "FORMAT_VERSION",
    "METADATA_ATTRIBUTE",
    "ModelMetadata",
    "ExportedModel",
    "ModelLike",
    "BACKENDS",
    "AOTI_MODELS",
    "PackageModule",
    "package_entries",
    "save_model",
    "read_metadata",
    "metadata_of",
]

FORMAT_KIND = "model"
FORMAT_VERSION = 1
METADATA_ATTRIBUTE = "openmm_geom_metadata"
METADATA_MEMBER = "openmm_geom_metadata.json"  # the same JSON as an extra archive member
KINDS = ("potential", "cv")
#: What a model file holds: a TorchScript module, or an AOTInductor package (CV modules only).
BACKENDS = ("torchscript", "aoti")
#: The models of an AOTInductor package, by name (see :mod:`openmm_geom.export.aoti`).
AOTI_MODELS = ("cv", "vjp")


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
    #: Per CV output: its period (e.g. 2 pi for an angle in radians) or None (not periodic).
    #: None as a whole for files written before CV periods were recorded: periods unknown.
    cv_periods: Optional[list] = None
    hyperparameters: dict = dataclasses.field(default_factory=dict)
    mapping: Optional[dict] = None
    training_data_hash: Optional[str] = None
    example_positions_nm: Optional[list] = None
    example_box_nm: Optional[list] = None
    extra: dict = dataclasses.field(default_factory=dict)
    package_version: str = ""
    torch_version: str = ""

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
        if self.cv_names is not None and len(set(self.cv_names)) != len(self.cv_names):
            raise ValueError(f"cv_names must be unique, got {self.cv_names}")
        if self.cv_periods is not None:
            if self.kind != "cv":
                raise ValueError("cv_periods is only meaningful for a CV module")
            if len(self.cv_periods) != self.output_dim:
                raise ValueError(f"{len(self.cv_periods)} cv_periods given for "
                                 f"{self.output_dim} CV outputs")
            for period in self.cv_periods:
                if period is not None and not (isinstance(period, (int, float))
                                               and math.isfinite(period) and period > 0):
                    raise ValueError(f"cv_periods must be positive numbers or None (not "
                                     f"periodic), got {self.cv_periods}")
        if self.atom_types is not None and len(self.atom_types) != self.n_atoms:
            raise ValueError(f"{len(self.atom_types)} atom_types for {self.n_atoms} atoms")
        if self.masses_amu is not None and len(self.masses_amu) != self.n_atoms:
            raise ValueError(f"{len(self.masses_amu)} masses for {self.n_atoms} atoms")
        if self.cutoff_nm is not None and not self.cutoff_nm > 0:
            raise ValueError(f"cutoff must be positive, got {self.cutoff_nm} nm")

    @property
    def is_coarse_grained(self) -> bool:
        """Whether the file is a CG model export (:func:`openmm_geom.export.export_cg_model`)."""
        return self.kind == "potential" and "cg" in self.extra

    def cv_period(self, index: int) -> Optional[float]:
        """The period of CV output ``index`` (None: not periodic, or not recorded)."""
        if self.cv_periods is None or self.cv_periods[index] is None:
            return None
        return float(self.cv_periods[index])

    @property
    def names(self) -> list:
        """The outputs' names: ``cv_names`` or ``cv0 ... cv{k-1}`` (a potential: ``energy``)."""
        if self.kind == "potential":
            return ["energy"]
        return list(self.cv_names or [f"cv{i}" for i in range(self.output_dim)])

    def to_json(self) -> str:
        data = dataclasses.asdict(self)
        data["format"] = format_tag(FORMAT_KIND, FORMAT_VERSION)
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: Any = "this model") -> "ModelMetadata":
        try:
            data = json.loads(text)
        except ValueError as error:
            raise ModelFileError(f"{source}: its metadata is not valid JSON ({error})") from None
        if "format" in data:
            check_format(data.pop("format"), FORMAT_KIND, (FORMAT_VERSION,), source=source,
                         error=ModelFileError)
        elif data.get("format_version") != FORMAT_VERSION:  # files before the unified tags
            raise ModelFileError(f"{source}: model file format version "
                                 f"{data.get('format_version')}, this openmm-geom reads "
                                 f"{FORMAT_VERSION}")
        known = {f.name for f in dataclasses.fields(cls)}
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except (TypeError, ValueError) as error:
            raise ModelFileError(f"{source}: inconsistent metadata ({error})") from None


def metadata_of(module: torch.nn.Module) -> ModelMetadata:
    """Metadata carried by an exported (scripted or eager) module."""
    text = getattr(module, METADATA_ATTRIBUTE, None)
    if not isinstance(text, str):
        raise ModelFileError(
            "this module carries no openmm-geom metadata; export it with "
            "openmm_geom.export.export_model first"
        )
    return ModelMetadata.from_json(text)


def package_entries(metadata: ModelMetadata) -> dict:
    """The AOTInductor metadata entries (str -> str) the native TorchCVForce kernel reads."""
    return {"openmm_geom.n_atoms": str(metadata.n_atoms),
            "openmm_geom.num_cvs": str(metadata.output_dim),
            "openmm_geom.periodic": "1" if metadata.periodic else "0",
            "openmm_geom.dtype": metadata.dtype,
            "openmm_geom.metadata": metadata.to_json()}


class PackageModule:
    """The two compiled models of an AOTInductor CV package, run from Python.

    ``module(positions, box=None) -> cv[k]`` and ``module.vjp(positions, w, box=None) ->
    w . dcv/dpositions``, all float64 (what the native ``TorchCVForce`` runs per step).
    The compiled libraries are loaded on first use.
    """

    def __init__(self, data: bytes, source: str):
        self._data = data
        self.source = source
        self._runners = None

    def _runner(self, name: str):
        if self._runners is None:
            from torch._inductor.package import load_package

            try:
                self._runners = {m: load_package(io.BytesIO(self._data), m) for m in AOTI_MODELS}
            except Exception as error:  # torch raises bare RuntimeErrors with C++ traces
                first = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
                raise ModelFileError(f"{self.source} could not be loaded as an AOTInductor "
                                     f"package: {first}") from error
        return self._runners[name]

    @staticmethod
    def _inputs(positions, box):
        x = torch.as_tensor(positions, dtype=torch.float64).contiguous()
        return (x,) if box is None else (x, torch.as_tensor(box, dtype=torch.float64).contiguous())

    def __call__(self, positions: torch.Tensor, box: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self._runner("cv")(*self._inputs(positions, box))

    def vjp(self, positions: torch.Tensor, cotangent: torch.Tensor,
            box: Optional[torch.Tensor] = None) -> torch.Tensor:
        w = torch.as_tensor(cotangent, dtype=torch.float64).contiguous()
        return self._runner("vjp")(*self._inputs(positions, box), w)

    def __repr__(self) -> str:
        return f"PackageModule({self.source})"


def _register_torchscript_classes() -> None:
    """Load the libraries whose TorchScript classes and ops our models may contain.

    A scripted model that calls vesin's neighbour list (or our native ops) can only be
    deserialised once those are registered with torch, whoever imports what first.
    """
    import vesin_torch  # noqa: F401  (registers torch.classes.vesin)

    from . import ops  # noqa: F401  (registers the openmm_geom native ops)


def _serialize(module: torch.jit.ScriptModule, metadata: Optional[ModelMetadata]) -> bytes:
    buffer = io.BytesIO()
    extra = {} if metadata is None else {METADATA_MEMBER: metadata.to_json()}
    torch.jit.save(module, buffer, _extra_files=extra)
    return buffer.getvalue()


def save_model(module: torch.jit.ScriptModule, path: os.PathLike) -> "ExportedModel":
    """Save an exported module atomically; its metadata must already be attached."""
    metadata = metadata_of(module)  # refuse to write a file that cannot be read back
    data = _serialize(module, metadata)
    atomic_write_bytes(path, data)
    return ExportedModel(module, metadata, data=data, source=str(path), from_file=True)


def _metadata_member(archive: zipfile.ZipFile) -> Optional[str]:
    for name in archive.namelist():
        if name.endswith("/extra/" + METADATA_MEMBER):
            return name
    return None


def read_metadata(path: os.PathLike) -> ModelMetadata:
    """Metadata of a model file, read from the archive without deserialising the module.

    Files written before the metadata had its own archive member are loaded in full.
    """
    path = Path(path)
    _check_file(path)
    try:
        with zipfile.ZipFile(path) as archive:
            member = _metadata_member(archive)
            text = None if member is None else archive.read(member).decode()
    except (zipfile.BadZipFile, OSError, UnicodeDecodeError) as error:
        raise ModelFileError(f"{path} is not a readable model file: {error}") from None
    if text is None:
        return ExportedModel.load(path).metadata
    return ModelMetadata.from_json(text, source=path)


def _is_package(data: bytes) -> bool:
    """Whether ``data`` is a PT2 archive (an AOTInductor package) rather than TorchScript."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            return any(n.endswith("/archive_format") or n == "archive_format"
                       for n in archive.namelist())
    except zipfile.BadZipFile:
        return False


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise ModelFileError(f"model file not found: {path}")
    if not zipfile.is_zipfile(path):
        raise ModelFileError(
            f"{path} is not a TorchScript model file (not a zip archive; truncated or another "
            "format?)")


def _is_element_symbol(text: str) -> bool:
    from openmm.app import element

    try:
        element.get_by_symbol(text)
    except KeyError:
        return False
    return True


ModelLike = Union[str, os.PathLike, torch.jit.ScriptModule, "ExportedModel"]


class ExportedModel:
    """An exported model, read and deserialised once.

    Holds the TorchScript module, its parsed :class:`ModelMetadata` and its serialized bytes
    (what a ``TorchCVForce`` embeds), and checks the model against what it is used with, in
    one place. Calling it calls the module: ``model(positions_nm, box_nm)``.

    Use :meth:`load` (a path, an exported ScriptModule, or an ``ExportedModel``, which is
    returned as it is). :func:`openmm_geom.export.export_model` returns one.

    A CV module exported with ``format="aoti"`` is an AOTInductor package instead
    (``backend == "aoti"``, ``module`` a :class:`PackageModule`); only ``TorchCVForce`` runs it,
    so only ``load(..., allow_package=True)`` accepts it.

    Attributes
    ----------
    module : torch.jit.ScriptModule or PackageModule
    metadata : ModelMetadata or None
        None only for a bare scripted module loaded with ``allow_bare=True`` (a CV module
        without openmm-geom metadata, whose caller names the CVs).
    source : str
        The file it came from, or a description of the module.
    """

    def __init__(self, module: torch.jit.ScriptModule, metadata: Optional[ModelMetadata], *,
                 data: Optional[bytes] = None, source: str = "this module",
                 from_file: bool = False):
        self.module = module
        self.metadata = metadata
        self.source = source
        self.from_file = from_file
        self._data = data

    @property
    def backend(self) -> str:
        """``"torchscript"``, or ``"aoti"`` for an AOTInductor package (see ``BACKENDS``)."""
        return "aoti" if isinstance(self.module, PackageModule) else "torchscript"

    @classmethod
    def from_package(cls, data: bytes, metadata: ModelMetadata, *, source: str,
                     from_file: bool = False) -> "ExportedModel":
        """An AOTInductor package's bytes and metadata (written by ``export_model(...,
        format="aoti")``)."""
        return cls(PackageModule(data, source), metadata, data=data, source=source,
                   from_file=from_file)

    # -- loading ---------------------------------------------------------------------------
    @classmethod
    def load(cls, model: ModelLike, *, allow_bare: bool = False,
             allow_package: bool = False) -> "ExportedModel":
        """The exported model behind a path, a ScriptModule or an ``ExportedModel``.

        Parameters
        ----------
        model : path, torch.jit.ScriptModule or ExportedModel
            A file written by :func:`openmm_geom.export.export_model` or the module it holds.
        allow_bare : bool
            Accept a scripted module without openmm-geom metadata (``metadata`` is then None).
        allow_package : bool
            Accept an AOTInductor package (``export_model(..., format="aoti")``), which only
            the native ``TorchCVForce`` runs.

        Raises
        ------
        ModelFileError
            A missing, truncated or corrupt file, or one that is not an openmm-geom model.
        TypeError
            An eager (unscripted) module or another type.
        """
        if isinstance(model, ExportedModel):
            if model.metadata is None and not allow_bare:
                raise ModelFileError(f"{model.source} carries no openmm-geom metadata; export "
                                     "it with openmm_geom.export.export_model first")
        elif isinstance(model, (str, os.PathLike)):
            model = cls._from_file(Path(model))
        else:
            return cls._from_object(model, allow_bare)
        if model.backend == "aoti" and not allow_package:
            raise ModelFileError(
                f"{model.source} is an AOTInductor package (export_model(..., format='aoti')), "
                "which only openmm_geom.openmm.TorchCVForce runs; export the model as "
                "TorchScript (the default format) for anything else")
        return model

    @classmethod
    def _from_object(cls, model, allow_bare: bool) -> "ExportedModel":
        if isinstance(model, torch.jit.ScriptModule):
            name = f"ScriptModule {getattr(model, 'original_name', type(model).__name__)}"
            try:
                metadata = metadata_of(model)
            except ModelFileError:
                if not allow_bare:
                    raise
                metadata = None
            return cls(model, metadata, source=name)
        if isinstance(model, torch.nn.Module):
            raise TypeError(
                f"{type(model).__name__} is an eager module: export it first with "
                "openmm_geom.export.export_model(...) (it fixes units and periodicity), or use "
                "openmm_geom.openmm.python_force(...) for a model that cannot be scripted")
        raise TypeError("expected a model file path, an exported ScriptModule or an "
                        f"ExportedModel, got {type(model).__name__}")

    @classmethod
    def _from_file(cls, path: Path) -> "ExportedModel":
        _check_file(path)
        data = path.read_bytes()
        if _is_package(data):
            return cls._from_package_file(path, data)
        _register_torchscript_classes()
        try:
            module = torch.jit.load(io.BytesIO(data), map_location="cpu")
        except Exception as error:  # torch raises bare RuntimeErrors with C++ traces
            first = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
            raise ModelFileError(f"{path} could not be loaded as TorchScript: {first}") from error
        # files exported before parameters were frozen: forces need no parameter gradients
        for parameter in module.parameters():
            if parameter.is_leaf:
                parameter.requires_grad_(False)
        text = getattr(module, METADATA_ATTRIBUTE, None)
        if not isinstance(text, str):
            raise ModelFileError(f"{path}: this module carries no openmm-geom metadata; "
                                 "export it with openmm_geom.export.export_model first")
        return cls(module, ModelMetadata.from_json(text, source=path), data=data,
                   source=str(path), from_file=True)

    @classmethod
    def _from_package_file(cls, path: Path, data: bytes) -> "ExportedModel":
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            member = _metadata_member(archive)
            if member is None:
                raise ModelFileError(f"{path} is an AOTInductor package without openmm-geom "
                                     "metadata; write it with openmm_geom.export.export_model("
                                     "..., format='aoti')")
            text = archive.read(member).decode()
        return cls.from_package(data, ModelMetadata.from_json(text, source=path),
                                source=str(path), from_file=True)

    # -- what it is ------------------------------------------------------------------------
    @property
    def data(self) -> bytes:
        """The serialized TorchScript module (the file's bytes when loaded from a file)."""
        if self._data is None:
            self._data = _serialize(self.module, self.metadata)
        return self._data

    @property
    def name(self) -> str:
        """The file's name (without its directory), or the module's description."""
        return Path(self.source).name if self.from_file else self.source

    @property
    def kind(self) -> Optional[str]:
        return None if self.metadata is None else self.metadata.kind

    @property
    def n_atoms(self) -> Optional[int]:
        return None if self.metadata is None else self.metadata.n_atoms

    @property
    def periodic(self) -> bool:
        return bool(self.metadata is not None and self.metadata.periodic)

    def __call__(self, positions: torch.Tensor, box: Optional[torch.Tensor] = None):
        return self.module(positions, box)

    def __repr__(self) -> str:
        if self.metadata is None:
            return f"ExportedModel({self.source}, no metadata)"
        m = self.metadata
        what = "CG potential" if m.is_coarse_grained else m.kind
        return (f"ExportedModel({self.source}: {what}, {m.n_atoms} atoms, "
                f"{'periodic' if m.periodic else 'non-periodic'}"
                + (f", CVs {m.names}" if m.kind == "cv" else "") + ")")

    # -- checks, one set of messages -------------------------------------------------------
    def require_kind(self, kind: str, purpose: str) -> None:
        """Raise unless the model is of ``kind`` (``"potential"`` or ``"cv"``).

        ``purpose`` completes "... is needed for <purpose>". A bare module passes as a CV module.
        """
        found = self.kind or "cv"
        if found == kind:
            return
        if kind == "cv":
            raise ValueError(f"{self.source} is a potential (energy) model, but {purpose} needs a "
                             "CV module: export the CVs with export_model(..., kind='cv')")
        raise ValueError(f"{self.source} is a CV module, but {purpose} needs a potential: a CV "
                         "module is not an energy; bias it with openmm_geom.openmm.TorchCVForce "
                         "(or Metadynamics / restraint_force)")

    def cv_names(self, names: Optional[Sequence[str]] = None) -> List[str]:
        """The k names the outputs are known by: ``names`` (checked) or the model's own."""
        if names is not None:
            names = [str(n) for n in names]
            if self.metadata is not None and len(names) != self.metadata.output_dim:
                raise ValueError(f"{len(names)} cv_names given for a module with "
                                 f"{self.metadata.output_dim} CV outputs "
                                 f"({self.metadata.names})")
            if len(set(names)) != len(names):
                raise ValueError(f"cv_names must be unique, got {names}")
            if not names:
                raise ValueError("cv_names is empty")
            return names
        if self.metadata is None:
            raise ValueError("this module carries no openmm-geom metadata: pass cv_names "
                             "(one per output) so that the CVs can be counted and named")
        return self.metadata.names

    def cv_index(self, which, names: Sequence[str]) -> int:
        """Position of a CV given by name or index among ``names``."""
        names = list(names)
        if isinstance(which, str):
            if which not in names:
                raise ValueError(f"no CV named {which!r}; the module's CVs are {names}")
            return names.index(which)
        index = int(which)
        if not 0 <= index < len(names):
            raise IndexError(f"CV index {index} out of range for a module with {len(names)} CVs")
        return index

    def resolve_periodic(self, periodic: Optional[bool]) -> bool:
        """``periodic`` checked against the model's own (default: the model's; bare: False)."""
        if periodic is None:
            return self.periodic
        if self.metadata is not None and bool(periodic) != self.metadata.periodic:
            raise ValueError(f"periodic={periodic} contradicts the model, exported with "
                             f"periodic={self.metadata.periodic}")
        return bool(periodic)

    def scalar_output(self, output_index=None) -> Optional[int]:
        """Which output a one-number force (TorchForce, PythonForce) returns: None for a
        potential; for a CV module the index of ``output_index`` (a position or a CV name;
        needed unless the module has one CV)."""
        if self.kind == "potential":
            if output_index is not None:
                raise ValueError("output_index is only meaningful for a CV module")
            return None
        if self.metadata is None:  # a bare module: its outputs are known only at run time
            if output_index is None or int(output_index) < 0:
                raise IndexError(f"CV index {output_index} must be given and >= 0")
            return int(output_index)
        names = self.cv_names()
        if output_index is None:
            if len(names) != 1:
                raise ValueError(
                    f"{self.source} returns {len(names)} CVs; a force takes one: pass "
                    "output_index, or use TorchCVForce to evaluate all of them in one model pass")
            return 0
        return self.cv_index(output_index, names)

    def cv_setup(self, purpose: str, cv_names: Optional[Sequence[str]] = None,
                 periodic: Optional[bool] = None,
                 particles: Optional[Sequence[int]] = None) -> Tuple[List[str], bool,
                                                                     Optional[List[int]]]:
        """``(names, periodic, particles)`` of a CV module used for ``purpose``, all checked."""
        self.require_kind("cv", purpose)
        return (self.cv_names(cv_names), self.resolve_periodic(periodic),
                self.check_particles(particles))

    def check_particles(self, particles: Optional[Sequence[int]],
                        n_system: Optional[int] = None) -> Optional[List[int]]:
        """System particles passed to the model, checked (count, distinct, in range)."""
        if particles is None:
            if n_system is not None and self.metadata is not None:
                self.check_atom_count(n_system, "the system has")
            return None
        particles = [int(p) for p in particles]
        if any(p < 0 for p in particles):
            raise ValueError("particle indices must be >= 0")
        if len(set(particles)) != len(particles):
            raise ValueError("particle indices must be distinct")
        if self.metadata is not None:
            self.check_atom_count(len(particles), "particles lists")
        if n_system is not None and particles and max(particles) >= n_system:
            raise ValueError(f"particle index {max(particles)} out of range for a system of "
                             f"{n_system} particles")
        return particles

    def check_atom_count(self, n: int, what: str = "the system has") -> None:
        if self.metadata is not None and n != self.metadata.n_atoms:
            raise TopologyMismatchError(f"{self.source} was exported for "
                                        f"{self.metadata.n_atoms} atoms but {what} {n}")

    def check_elements(self, elements: Sequence) -> None:
        """Raise if the model's atom types name elements (atomic numbers or symbols) and
        ``elements`` (``openmm.app.Element`` or None per atom) differ from them.

        Atom types that are not elements (e.g. force-field types) are not compared.
        """
        stored = None if self.metadata is None else self.metadata.atom_types
        self.check_atom_count(len(elements), "the topology has")
        if stored is None:
            return
        for index, (element, kind) in enumerate(zip(elements, stored)):
            text = str(kind)
            if text.isdigit():
                expected, found = int(text), None if element is None else element.atomic_number
            elif _is_element_symbol(text):
                expected, found = text.lower(), None if element is None else element.symbol.lower()
            else:
                continue
            if found != expected:
                raise TopologyMismatchError(
                    f"atom {index} is {'an atom without element' if element is None else element.symbol} "
                    f"in the topology but {kind!r} in {self.source} (atoms must be in the model's "
                    "order)")

    def check_periodicity(self, periodic: bool) -> None:
        if self.metadata is not None and bool(periodic) != self.metadata.periodic:
            want = "periodic" if self.metadata.periodic else "non-periodic"
            have = "periodic" if periodic else "non-periodic"
            raise TopologyMismatchError(f"{self.source} is {want} but the system is {have}")

    def check_box(self, box_nm) -> None:
        """Raise if a periodic model's cutoff does not fit in ``box_nm`` (3x3, nm)."""
        if self.metadata is not None and self.metadata.periodic and self.metadata.cutoff_nm:
            check_box_holds_cutoff(torch.as_tensor(box_nm, dtype=torch.float64),
                                   self.metadata.cutoff_nm)

    def check_topology(self, topology) -> None:
        """Check an ``openmm.app.Topology`` (atoms, elements if recorded, periodic box)."""
        from .units import box_to_nm

        atoms = list(topology.atoms())
        self.check_atom_count(len(atoms), "the topology has")
        if not (self.metadata is not None and self.metadata.is_coarse_grained):
            self.check_elements([atom.element for atom in atoms])
        box = topology.getPeriodicBoxVectors()
        if not (self.metadata is not None and self.metadata.is_coarse_grained):
            self.check_periodicity(box is not None)
        if box is not None and self.periodic:
            self.check_box(box_to_nm(box))

    def check_system(self, system, particles: Optional[Sequence[int]] = None) -> Optional[list]:
        """Check an ``openmm.System`` (atom count or particle subset, box vs cutoff).

        Returns the checked particle list (None for all particles).
        """
        from .units import box_to_nm

        particles = self.check_particles(particles, system.getNumParticles())
        if self.periodic:
            self.check_box(box_to_nm(system.getDefaultPeriodicBoxVectors()))
        return particles
