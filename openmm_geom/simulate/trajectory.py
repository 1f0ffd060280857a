"""Streaming HDF5 trajectories of batched coarse-grained simulations.

A trajectory file holds the frames of ``B`` replicas of ``n`` beads saved every few steps:

=============  ===================  ========  ==========================================
dataset        shape                dtype     unit
=============  ===================  ========  ==========================================
``positions``  (frames, B, n, 3)    float32   nm
``time``       (frames,)            float64   ps
``step``       (frames,)            int64     integration steps since the start
``energies``   (frames, B)          float64   kJ/mol (potential energy of each replica)
``spread``     (frames, B)          float64   ``spread_unit`` (optional; ensemble spread)
=============  ===================  ========  ==========================================

Each dataset carries a ``unit`` attribute; the file's root attributes hold the format name and
version, ``n_replicas``, ``n_beads``, ``n_frames`` (the number of complete frames; datasets
are never read past it) and whatever the simulation records (integrator, temperatures, ...).

:class:`TrajectoryWriter` streams frames to disk in chunks of about 1 MiB: it never holds more
than one chunk of frames in memory. It is resume-safe: opened with ``mode="a"`` it continues an
existing file, and :meth:`TrajectoryWriter.truncate` drops frames written after a checkpoint so
that a resumed simulation produces the same file as an uninterrupted one.
:func:`read_trajectory` reads a file back into numpy arrays.

Limitation: HDF5 has no journal. A process killed *while* frames are being flushed can leave
the file unreadable (:func:`read_trajectory` then raises :class:`FileFormatError`); a process
killed between flushes leaves a consistent file whose ``n_frames`` counts every flushed frame.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np
import openmm.unit as unit

from ..errors import FileFormatError
from ..io import check_format, format_tag
from ..units import has_units, to_openmm_units

__all__ = [
    "Trajectory",
    "TrajectoryWriter",
    "read_trajectory",
]

FORMAT_KIND, FORMAT_VERSION = "trajectory", 1
_CHUNK_BYTES = 1 << 20  # target size of one positions chunk (HDF5's default chunk cache: 1 MiB)
_MAX_CHUNK_FRAMES = 1024
_UNITS = {"positions": "nm", "time": "ps", "step": "", "energies": "kJ/mol"}


def _h5py():
    try:
        import h5py
    except ImportError as error:  # pragma: no cover - h5py is a dependency of simulate/
        raise ImportError("openmm_geom.simulate trajectories need h5py: pip install h5py") \
            from error
    return h5py


def _check_format(f, path) -> None:
    """Refuse an HDF5 file that is not an openmm-geom trajectory of a version we read."""
    tag = f.attrs.get("format")
    tag = tag.decode() if isinstance(tag, bytes) else (str(tag) if tag is not None else None)
    check_format(tag, FORMAT_KIND, (FORMAT_VERSION,), source=path,
                 version=f.attrs.get("format_version"))


@dataclasses.dataclass
class Trajectory:
    """A trajectory read back by :func:`read_trajectory` (numpy arrays, OpenMM units).

    Attributes
    ----------
    positions : numpy.ndarray, shape (frames, B, n, 3), float32
        Bead positions in nm.
    time : numpy.ndarray, shape (frames,), float64
        Simulated time of each frame in ps.
    step : numpy.ndarray, shape (frames,), int64
        Integration step of each frame.
    energies : numpy.ndarray, shape (frames, B), float64
        Potential energy of each replica in kJ/mol.
    spread : numpy.ndarray, shape (frames, B), or None
        Ensemble spread of each replica (unit in ``units["spread"]``), if the file stores it.
    attributes : dict
        The file's root attributes (format, ``n_replicas``, ``n_beads``, simulation settings).
    units : dict
        Unit of each dataset, e.g. ``{"positions": "nm", "time": "ps", ...}``.
    """

    positions: np.ndarray
    time: np.ndarray
    step: np.ndarray
    energies: np.ndarray
    spread: Optional[np.ndarray]
    attributes: dict
    units: dict

    @property
    def n_frames(self) -> int:
        """Number of frames."""
        return int(self.positions.shape[0])


def _positive_int(value, name: str) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a positive integer, got {value!r}") from None
    if number != value or number < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return number


def _attribute_value(value: Any):
    """An HDF5-storable version of ``value`` (numbers, strings, arrays; tensors become arrays)."""
    if value is None:
        return "None"
    if hasattr(value, "detach"):  # a torch tensor, without importing torch here
        value = value.detach().cpu().numpy()
    if isinstance(value, (str, bytes, bool, int, float, np.generic, np.ndarray)):
        return value
    if isinstance(value, (list, tuple)):
        return np.asarray(value)
    raise TypeError(f"cannot store attribute value {value!r} of type {type(value).__name__}")


class TrajectoryWriter:
    """Append frames of a batched simulation to an HDF5 file, streaming.

    Parameters
    ----------
    path : str or os.PathLike
        The HDF5 file.
    n_replicas, n_beads : int
        Shape of a frame: ``n_replicas`` replicas of ``n_beads`` beads.
    spread : bool, default False
        Whether the file has a ``spread`` dataset (ensemble spread per replica). When it has one,
        every frame must provide a spread.
    mode : {"w", "a"}, default "w"
        ``"w"`` creates the file, replacing an existing one. ``"a"`` continues an existing file
        (used to resume a simulation from a checkpoint) after checking that it is an openmm-geom
        trajectory of the same shape, or creates it if it does not exist.
    chunk_frames : int, optional
        Frames per HDF5 chunk, which is also how many frames are buffered in memory before they
        are written. Default: as many frames as fit in about 1 MiB of positions (at least 1).
    compression : {None, "gzip", "lzf"}, default None
        HDF5 compression filter for the positions.
    spread_unit : str, default "kJ/mol/nm"
        Unit recorded for the spread (e.g. the standard deviation of the members' forces).
    attributes : mapping, optional
        Extra root attributes to record (see :meth:`set_attributes`).

    Raises
    ------
    FileFormatError
        ``mode="a"`` on a file that is not a readable openmm-geom trajectory or whose shape or
        ``spread`` dataset differs from this writer's.

    Notes
    -----
    Frames are checked before they are buffered: non-finite positions, times or energies, and
    steps that do not increase, are refused with :class:`ValueError`. Use the writer as a context
    manager, or call :meth:`close`, so that the buffered frames reach the file.
    """

    def __init__(self, path: os.PathLike, n_replicas: int, n_beads: int, *, spread: bool = False,
                 mode: str = "w", chunk_frames: Optional[int] = None,
                 compression: Optional[str] = None, spread_unit: str = "kJ/mol/nm",
                 attributes: Optional[Mapping[str, Any]] = None):
        h5py = _h5py()
        self.path = Path(path)
        self.n_replicas = _positive_int(n_replicas, "n_replicas")
        self.n_beads = _positive_int(n_beads, "n_beads")
        self.has_spread = bool(spread)
        if mode not in ("w", "a"):
            raise ValueError(f"mode must be 'w' (create/replace) or 'a' (continue), got {mode!r}")
        if compression not in (None, "gzip", "lzf"):
            raise ValueError(f"compression must be None, 'gzip' or 'lzf', got {compression!r}")
        frame_bytes = self.n_replicas * self.n_beads * 3 * 4
        if chunk_frames is None:
            chunk_frames = min(_MAX_CHUNK_FRAMES, max(1, _CHUNK_BYTES // frame_bytes))
        self.chunk_frames = _positive_int(chunk_frames, "chunk_frames")
        cache = max(_CHUNK_BYTES, 4 * self.chunk_frames * frame_bytes)
        self._file = None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if mode == "a" and self.path.exists():
            try:
                self._file = h5py.File(self.path, "r+", rdcc_nbytes=cache)
            except OSError as error:
                raise FileFormatError(
                    f"{self.path} cannot be opened as HDF5 to continue it (truncated, or another "
                    f"format?): {error}") from error
            try:
                self._open_existing()
            except BaseException:
                self._file.close()
                self._file = None
                raise
        else:
            self._file = h5py.File(self.path, "w", rdcc_nbytes=cache)
            self._create(compression, spread_unit)
        # the in-memory buffer: at most one chunk of frames
        b, n, c = self.n_replicas, self.n_beads, self.chunk_frames
        self._buffer = {
            "positions": np.empty((c, b, n, 3), np.float32),
            "time": np.empty(c, np.float64),
            "step": np.empty(c, np.int64),
            "energies": np.empty((c, b), np.float64),
        }
        if self.has_spread:
            self._buffer["spread"] = np.empty((c, b), np.float64)
        self._buffered = 0
        if attributes:
            self.set_attributes(attributes)

    # -- file layout -------------------------------------------------------------------------
    def _create(self, compression, spread_unit: str) -> None:
        b, n, c = self.n_replicas, self.n_beads, self.chunk_frames
        f = self._file
        f.attrs["format"] = format_tag(FORMAT_KIND, FORMAT_VERSION)
        f.attrs["n_replicas"] = b
        f.attrs["n_beads"] = n
        f.attrs["n_frames"] = 0
        layout = {
            "positions": ((b, n, 3), np.float32, compression),
            "time": ((), np.float64, None),
            "step": ((), np.int64, None),
            "energies": ((b,), np.float64, None),
        }
        units = dict(_UNITS)
        if self.has_spread:
            layout["spread"] = ((b,), np.float64, None)
            units["spread"] = spread_unit
        for name, (tail, dtype, filt) in layout.items():
            ds = f.create_dataset(name, shape=(0, *tail), maxshape=(None, *tail), dtype=dtype,
                                  chunks=(c, *tail), compression=filt, track_times=False)
            ds.attrs["unit"] = units[name]
        f.flush()

    def _open_existing(self) -> None:
        f = self._file
        _check_format(f, self.path)
        _require_attributes(f, self.path)
        shape = (int(f.attrs["n_replicas"]), int(f.attrs["n_beads"]))
        if shape != (self.n_replicas, self.n_beads):
            raise FileFormatError(
                f"{self.path} holds {shape[0]} replicas of {shape[1]} beads; this writer was "
                f"opened for {self.n_replicas} replicas of {self.n_beads} beads")
        if ("spread" in f) != self.has_spread:
            has = "has" if "spread" in f else "has no"
            raise FileFormatError(f"{self.path} {has} spread dataset but the writer was "
                                      f"opened with spread={self.has_spread}")
        missing = [name for name in self._dataset_names() if name not in f]
        if missing:
            raise FileFormatError(f"{self.path} lacks the dataset(s) {missing}")
        chunks = f["positions"].chunks
        self.chunk_frames = int(chunks[0]) if chunks else self.chunk_frames
        # frames beyond n_frames were being written when the previous process stopped: drop them
        n_frames = int(f.attrs["n_frames"])
        lengths = {name: f[name].shape[0] for name in self._dataset_names()}
        if any(length < n_frames for length in lengths.values()):
            raise FileFormatError(
                f"{self.path} is inconsistent: n_frames = {n_frames} but datasets have {lengths}")
        self._resize(n_frames)

    def _dataset_names(self):
        return ("positions", "time", "step", "energies") + (("spread",) if self.has_spread else ())

    def _resize(self, n_frames: int) -> None:
        for name in self._dataset_names():
            self._file[name].resize(n_frames, axis=0)
        self._file.attrs["n_frames"] = n_frames
        self._file.flush()

    def _require_open(self) -> None:
        if self._file is None:
            raise ValueError(f"the trajectory writer for {self.path} is closed")

    # -- public API --------------------------------------------------------------------------
    @property
    def n_frames(self) -> int:
        """Frames appended so far (on disk and buffered)."""
        self._require_open()
        return int(self._file.attrs["n_frames"]) + self._buffered

    @property
    def last_step(self) -> Optional[int]:
        """Step of the last frame appended, or None if there is none."""
        self._require_open()
        if self._buffered:
            return int(self._buffer["step"][self._buffered - 1])
        n = int(self._file.attrs["n_frames"])
        return int(self._file["step"][n - 1]) if n else None

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        """Record root attributes (numbers, strings, arrays or CPU tensors; None is stored as
        the string ``"None"``). Format attributes (``format``, ``n_frames``, ...) are reserved."""
        self._require_open()
        reserved = {"format", "format_version", "n_replicas", "n_beads", "n_frames"}
        for key, value in attributes.items():
            if key in reserved:
                raise ValueError(f"attribute {key!r} is reserved by the trajectory format")
            self._file.attrs[key] = _attribute_value(value)

    def append(self, step: int, time: float, positions, energies, spread=None) -> None:
        """Append one frame.

        Parameters
        ----------
        step : int
            Integration step of the frame; must exceed the previous frame's.
        time : float or Quantity
            Simulated time: a plain number in ps, or a Quantity.
        positions : array-like or Quantity, shape (n_replicas, n_beads, 3)
            Positions: plain numbers in nm (numpy array or CPU tensor), or a Quantity array;
            stored as float32 nm.
        energies : array-like or Quantity, shape (n_replicas,)
            Potential energies: plain numbers in kJ/mol, or a Quantity array.
        spread : array-like, shape (n_replicas,), optional
            Required when the file has a spread dataset, ignored otherwise.

        Raises
        ------
        ValueError
            Wrong shapes, non-finite values, a missing spread, or a step that does not increase.
        """
        self._require_open()
        if has_units(time) or has_units(positions) or has_units(energies):
            time = to_openmm_units(time, "time", unit.picosecond, finite=False)
            positions = to_openmm_units(positions, "positions", unit.nanometer, finite=False)
            energies = to_openmm_units(energies, "energies", unit.kilojoule_per_mole,
                                       finite=False)
        step = int(step)
        last = self.last_step
        if last is not None and step <= last:
            raise ValueError(f"frame step {step} does not follow the last frame's step {last}")
        positions = np.asarray(positions)
        energies = np.asarray(energies)
        b, n = self.n_replicas, self.n_beads
        if positions.shape != (b, n, 3):
            raise ValueError(f"positions must have shape {(b, n, 3)}, got {positions.shape}")
        if energies.shape != (b,):
            raise ValueError(f"energies must have shape {(b,)}, got {energies.shape}")
        if not (np.isfinite(positions).all() and np.isfinite(energies).all()
                and np.isfinite(time)):
            raise ValueError(f"refusing to write a non-finite frame (step {step})")
        if self.has_spread:
            if spread is None:
                raise ValueError("this trajectory stores a spread per replica but none was given")
            spread = np.asarray(spread)
            if spread.shape != (b,):
                raise ValueError(f"spread must have shape {(b,)}, got {spread.shape}")
        i = self._buffered
        buf = self._buffer
        buf["positions"][i] = positions
        buf["time"][i] = time
        buf["step"][i] = step
        buf["energies"][i] = energies
        if self.has_spread:
            buf["spread"][i] = spread
        self._buffered += 1
        if self._buffered == self.chunk_frames:
            self.flush()

    def flush(self, durable: bool = False) -> None:
        """Write the buffered frames and flush the HDF5 file.

        Parameters
        ----------
        durable : bool, default False
            Also ``fsync`` the file, so the frames survive a crash of the machine (used before a
            checkpoint is written).
        """
        self._require_open()
        k = self._buffered
        if k:
            start = int(self._file.attrs["n_frames"])
            for name in self._dataset_names():
                ds = self._file[name]
                ds.resize(start + k, axis=0)
                ds[start:start + k] = self._buffer[name][:k]
            # n_frames last: a file cut short while writing still says how many frames are whole
            self._file.attrs["n_frames"] = start + k
            self._buffered = 0
        self._file.flush()
        if durable:
            fd = os.open(self.path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def truncate(self, step: int) -> int:
        """Drop every frame whose step exceeds ``step``; return the number of frames kept.

        Used when a simulation resumes from a checkpoint taken at ``step``: frames written
        after the checkpoint (before the interruption) are written again by the resumed run.
        """
        self.flush()
        n = int(self._file.attrs["n_frames"])
        steps = self._file["step"][:n]
        keep = int(np.searchsorted(steps, int(step), side="right"))
        if keep != n:
            self._resize(keep)
        return keep

    def close(self) -> None:
        """Write buffered frames and close the file (idempotent)."""
        if self._file is None:
            return
        try:
            self.flush()
        finally:
            self._file.close()
            self._file = None

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._file is None

    def __enter__(self) -> "TrajectoryWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{self.n_frames} frames"
        return (f"TrajectoryWriter({str(self.path)!r}, n_replicas={self.n_replicas}, "
                f"n_beads={self.n_beads}, {state})")


def read_trajectory(path: os.PathLike, frames: Optional[slice] = None) -> Trajectory:
    """Read a trajectory written by :class:`TrajectoryWriter`.

    Parameters
    ----------
    path : str or os.PathLike
        The HDF5 file.
    frames : slice, optional
        Which frames to read (e.g. ``slice(100, None, 10)``); default all.

    Returns
    -------
    Trajectory
        Numpy arrays, their units, and the file's root attributes.

    Raises
    ------
    FileNotFoundError
        The file does not exist.
    FileFormatError
        The file is not HDF5 (or is truncated), not an openmm-geom trajectory, or inconsistent.
    """
    h5py = _h5py()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"trajectory file not found: {path}")
    if frames is not None and not isinstance(frames, slice):
        raise TypeError(f"frames must be a slice, got {frames!r}")
    try:
        handle = h5py.File(path, "r")
    except BlockingIOError as error:
        raise FileFormatError(
            f"{path} is locked by a process writing it (a simulation still running?); read it "
            "when the run has finished or stopped"
        ) from error
    except OSError as error:
        raise FileFormatError(
            f"{path} is not a readable HDF5 file (truncated, or another format?): {error}"
        ) from error
    with handle as f:
        _check_format(f, path)
        _require_attributes(f, path)
        names = ["positions", "time", "step", "energies"] + (["spread"] if "spread" in f else [])
        missing = [name for name in names[:4] if name not in f]
        if missing:
            raise FileFormatError(f"{path} lacks the dataset(s) {missing}")
        n = int(f.attrs["n_frames"])
        if any(f[name].shape[0] < n for name in names):
            raise FileFormatError(f"{path} is inconsistent: n_frames = {n} exceeds the "
                                      "length of a dataset")
        index = slice(*(frames or slice(None)).indices(n))
        try:
            data = {name: _read(f[name], index, n) for name in names}
        except OSError as error:
            raise FileFormatError(f"{path}: a dataset could not be read (corrupt?): {error}") \
                from error
        attributes = {key: _plain(value) for key, value in f.attrs.items()}
        units = {name: str(f[name].attrs.get("unit", "")) for name in names}
    return Trajectory(positions=data["positions"], time=data["time"], step=data["step"],
                      energies=data["energies"], spread=data.get("spread"),
                      attributes=attributes, units=units)


def _require_attributes(f, path) -> None:
    missing = [key for key in ("n_replicas", "n_beads", "n_frames") if key not in f.attrs]
    if missing:
        raise FileFormatError(f"{path} lacks the attribute(s) {missing}")


def _read(dataset, index: slice, n: int) -> np.ndarray:
    """``dataset[:n][index]``, reading only the selected frames when the step is positive
    (``index`` comes from ``slice.indices(n)``)."""
    if index.step < 0:  # h5py reads only increasing selections
        return dataset[:n][list(range(index.start, index.stop, index.step))]
    return dataset[index]


def _plain(value):
    """Numpy scalars become Python scalars; strings stay strings; arrays stay arrays."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value
