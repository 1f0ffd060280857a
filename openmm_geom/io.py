"""Files, in one place: atomic writes, hashing, versioned formats and figures.

Every file openmm-geom writes goes through :func:`atomic_write_bytes` (or
:func:`atomic_open` for streams too large for memory): readers see the old file or the new
one, never half of one, and a refused or interrupted run leaves no partial file behind.

Every checkpoint and data format carries one tag, ``openmm-geom/<kind>/<version>``
(:func:`format_tag`), checked on reading by :func:`check_format`, which refuses another kind
or an unknown version with one message. Tags of files written before the tags were unified
(``openmm-geom-corpus``, ``openmm_geom.potential/1``, ...) are still read.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence, Tuple, Type, Union

import numpy as np

from .errors import FileFormatError

__all__ = [
    "PathLike",
    "format_tag",
    "parse_format",
    "check_format",
    "atomic_write_bytes",
    "atomic_open",
    "atomic_torch_save",
    "atomic_savez",
    "write_json",
    "save_figure",
    "save_versioned",
    "load_versioned",
    "load_torch",
    "read_npz",
    "read_versioned_npz",
    "npy_member",
    "sha256_of_arrays",
    "sha256_of_bytes",
]

PathLike = Union[str, os.PathLike]

_PREFIX = "openmm-geom"

# Tags written before openmm-geom used one spelling: tag -> kind. Their version is the file's
# own "version" field, or 1 where the old tag carried it.
_LEGACY = {
    "openmm-geom-metadynamics": "metadynamics-state",
    "openmm-geom-backbone": "backbone",
    "openmm-geom-denoising-checkpoint": "denoising-checkpoint",
    "openmm_geom.simulate.checkpoint": "langevin-checkpoint",
    "openmm_geom.trajectory": "trajectory",
    "openmm-geom-token-cv": "token-cv",
    "openmm_geom.potential/1": "potential",
    "openmm-geom-token-features": "token-features",
    "openmm_geom.reference/1": "reference",
    "openmm_geom.reference-work/1": "reference-work",
    "openmm-geom-corpus": "corpus",
    "openmm-geom CGSchNet 1": "cgschnet",
}


# --- format tags ---------------------------------------------------------------------------

def format_tag(kind: str, version: int) -> str:
    """The tag of a file format: ``openmm-geom/<kind>/<version>``."""
    if not kind or "/" in kind:
        raise ValueError(f"a format kind is a non-empty name without '/', got {kind!r}")
    return f"{_PREFIX}/{kind}/{int(version)}"


def parse_format(tag: Any, version: Any = None) -> Optional[Tuple[str, int]]:
    """``(kind, version)`` of a tag, or None if ``tag`` is not an openmm-geom tag.

    ``version`` is the file's separate version field, used for the legacy tags that lacked one.
    """
    if not isinstance(tag, str):
        return None
    parts = tag.split("/")
    if len(parts) == 3 and parts[0] == _PREFIX and parts[2].isdigit():
        return parts[1], int(parts[2])
    if tag in _LEGACY:
        try:
            return _LEGACY[tag], int(version) if version is not None else 1
        except (TypeError, ValueError):
            return None
    return None


def check_format(tag: Any, kind: str, versions: Sequence[int] = (1,), *, source: Any = "file",
                 version: Any = None, error: Type[Exception] = FileFormatError) -> int:
    """Check that ``tag`` names format ``kind`` at one of ``versions``; return the version.

    Parameters
    ----------
    tag : the tag read from the file (any type; a missing tag is ``None``)
    kind : the expected kind, e.g. ``"corpus"``
    versions : the versions this code reads
    source : the file, named in the message
    version : the file's separate version field (legacy tags only)
    error : the exception class raised (a :class:`~openmm_geom.errors.FileFormatError` subclass)
    """
    parsed = parse_format(tag, version)
    if parsed is None or parsed[0] != kind:
        found = "no openmm-geom format tag" if parsed is None else f"an openmm-geom {parsed[0]!r} file"
        raise error(f"{source} is not an openmm-geom {kind!r} file ({found}; expected "
                    f"{format_tag(kind, max(versions))})")
    if parsed[1] not in versions:
        raise error(f"{source} is an openmm-geom {kind!r} file of version {parsed[1]}; this "
                    f"openmm-geom reads version {', '.join(map(str, versions))} (made by "
                    f"{'a newer' if parsed[1] > max(versions) else 'an older'} openmm-geom?)")
    return parsed[1]


# --- atomic writes -------------------------------------------------------------------------

def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_open(path: PathLike):
    """A binary file handle whose contents replace ``path`` only if the block succeeds.

    Written to a temporary file in the same directory, flushed, synced and renamed; on an
    exception the temporary file is removed and ``path`` is untouched. The file gets the
    usual permissions (``0666 & ~umask``), not ``mkstemp``'s ``0600``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half."""
    with atomic_open(path) as handle:
        handle.write(data)
    return Path(path)


def atomic_torch_save(path: PathLike, payload) -> Path:
    """``torch.save`` of plain data (tensors, dicts, numbers), written atomically.

    Files written this way load with ``torch.load(..., weights_only=True)`` (no code runs).
    """
    import torch

    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def atomic_savez(path: PathLike, *, compressed: bool = False, **arrays) -> Path:
    """``numpy.savez`` (or ``savez_compressed``) of ``arrays``, written atomically."""
    buffer = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buffer, **arrays)
    return atomic_write_bytes(path, buffer.getvalue())


def write_json(path: PathLike, payload, *, indent: Optional[int] = 2) -> Path:
    """``payload`` as JSON (with a final newline), written atomically."""
    return atomic_write_bytes(path, (json.dumps(payload, indent=indent) + "\n").encode())


def save_figure(fig, path: PathLike, dpi: int = 120) -> Path:
    """Render a matplotlib ``Figure`` to PNG in memory, then write ``path`` atomically.

    Works on figures made without pyplot (no global backend state): an Agg canvas is attached
    if the figure has none.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=dpi, format="png")
    return atomic_write_bytes(path, buffer.getvalue())


# --- versioned torch files -------------------------------------------------------------------

def save_versioned(path: PathLike, kind: str, version: int, payload: dict) -> Path:
    """Write ``payload`` (plain data) tagged ``openmm-geom/<kind>/<version>``, atomically."""
    if "format" in payload:
        raise ValueError("'format' is reserved for the format tag")
    return atomic_torch_save(path, {"format": format_tag(kind, version), **payload})


def load_torch(path: PathLike, what: str, *, error: Type[Exception] = FileFormatError):
    """``torch.load(path, weights_only=True)`` with one clear error for every way it can fail.

    ``what`` names the kind of file in the messages ("potential checkpoint", ...). A missing
    file raises :class:`FileNotFoundError`; anything else that is not a readable torch file
    raises ``error``.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    if not zipfile.is_zipfile(path):
        raise error(f"{path} is not a {what} (not a torch.save zip archive; truncated, or "
                    "another format?)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises bare RuntimeErrors/UnpicklingErrors
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise error(f"{path} is not a readable {what}: {first}") from exc


def load_versioned(path: PathLike, kind: str, versions: Sequence[int] = (1,), *,
                   what: Optional[str] = None,
                   error: Type[Exception] = FileFormatError) -> dict:
    """Read a file written by :func:`save_versioned`; refuse other kinds and versions.

    Returns the payload dict (with its ``"format"`` entry). Raises ``error`` for a corrupt file,
    another kind or an unknown version, :class:`FileNotFoundError` for a missing one.
    """
    payload = load_torch(path, what or f"openmm-geom {kind} file", error=error)
    tag = payload.get("format") if isinstance(payload, dict) else None
    check_format(tag, kind, versions, source=path,
                 version=payload.get("version") if isinstance(payload, dict) else None,
                 error=error)
    return payload


# --- npz -----------------------------------------------------------------------------------

def read_npz(path: PathLike, what: str) -> dict:
    """All arrays of an npz file (no pickles), with errors that name the file and the problem.

    ``what`` names the kind of file in the not-found message ("reference file", ...).
    Raises :class:`FileNotFoundError` or :class:`~openmm_geom.errors.FileFormatError`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    if not zipfile.is_zipfile(path):
        raise FileFormatError(f"{path} is not an npz file (truncated, or another format?)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as error:
        raise FileFormatError(f"{path} is corrupt or not a NumPy npz file: {error}") from error


def read_versioned_npz(path: PathLike, kind: str, versions: Sequence[int] = (1,), *,
                       header: str = "meta", required: Sequence[str] = (),
                       what: Optional[str] = None) -> Tuple[dict, dict]:
    """``(arrays, header dict)`` of an npz file whose ``header`` array holds JSON with its
    format tag; refuses other kinds and versions, and files lacking ``required`` arrays.

    Raises :class:`FileNotFoundError` or :class:`~openmm_geom.errors.FileFormatError`.
    """
    what = what or f"openmm-geom {kind} file"
    arrays = read_npz(path, what)
    try:
        meta = json.loads(str(arrays[header]))
    except (KeyError, ValueError):
        meta = None
    if not isinstance(meta, dict):
        meta = {}
    check_format(meta.get("format"), kind, versions, source=path, version=meta.get("version"))
    missing = [key for key in required if key not in arrays]
    if missing:
        raise FileFormatError(f"{path} is not a complete {what}: missing arrays {missing} "
                              f"(has {sorted(arrays)})")
    return arrays, meta


def npy_member(archive: zipfile.ZipFile, name: str, shape: tuple, dtype,
               blocks: Iterable[np.ndarray]) -> None:
    """Stream ``blocks`` (stacked along axis 0) into ``archive`` as ``name.npy``.

    The member has a fixed date, so the same arrays always give the same bytes; use it inside
    ``zipfile.ZipFile(handle, "w", zipfile.ZIP_STORED, allowZip64=True)`` on an
    :func:`atomic_open` handle to write npz files larger than memory.
    """
    dtype = np.dtype(dtype)
    info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
    with archive.open(info, "w", force_zip64=True) as member:
        header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
                  "shape": tuple(shape)}
        np.lib.format.write_array_header_1_0(member, header)
        for block in blocks:
            member.write(np.ascontiguousarray(block, dtype=dtype).tobytes())


# --- hashing -------------------------------------------------------------------------------

def sha256_of_arrays(*arrays: Any) -> str:
    """A short content hash of arrays (dtype, shape and bytes), e.g. ``training_data_hash``."""
    digest = hashlib.sha256()
    for array in arrays:
        a = np.ascontiguousarray(np.asarray(array))
        digest.update(str(a.dtype).encode() + str(a.shape).encode())
        digest.update(a.tobytes())
    return digest.hexdigest()[:16]


def sha256_of_bytes(data: bytes) -> str:
    """The full hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()
