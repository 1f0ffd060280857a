"""Path-classification datasets: graphs whose node coordinates evolve in time, one label each.

The file format (a NumPy ``.npz``) is the contract shared by the generators
(:mod:`openmm_geom.data.gene_regulatory`, :mod:`openmm_geom.data.md_classification`) and the
training code:

============= ===================== ======== ===================================================
key           shape                 dtype    meaning
============= ===================== ======== ===================================================
paths         (n_traj, T, N, C)     float32  node coordinates over time (gene: C=1, MD: C=3 nm)
labels        (n_traj,)             int64    class of each trajectory, 0 .. n_classes-1
label_names   (n_classes,)          str      name of each class
adjacency     (n_traj, N, N)        float32  symmetric 0/1 graph, zero diagonal
is_test       (n_traj,)             bool     independent test trajectories (own seeds)
time_step     ()                    float64  time between frames, in ``time_unit``
time_unit     ()                    str      "s" (gene) or "ps" (MD)
channel_unit  ()                    str      "a.u." (gene) or "nm" (MD)
provenance    ()                    str      JSON: generator, parameters, seed, version
descriptors   (n_traj, T, n_desc)   float32  optional per-frame features (MD: phi/psi, rad)
============= ===================== ======== ===================================================

Temporal cross-validation (Deep Signature, section 3.4) is :func:`temporal_cv_windows` and
:meth:`PathDataset.fold`: every trajectory is cut into ``groups`` equal time groups and every
group into ``folds`` equal contiguous windows; fold ``k`` validates on window ``k`` of every group
of every cross-validation trajectory and trains on the others; the test set is every window of
the ``is_test`` trajectories. Windows do not overlap, so no frame is shared between the training
and the validation windows of a fold.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import numbers
import os
import zipfile
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch

from .. import arguments as check
from ..io import atomic_open, npy_member, read_npz

__all__ = [
    "PathDataset",
    "WindowSet",
    "REQUIRED_KEYS",
    "OPTIONAL_KEYS",
    "temporal_cv_windows",
    "save_path_dataset",
    "validate_path_arrays",
    "coarse_path",
]

REQUIRED_KEYS = ("paths", "labels", "label_names", "adjacency", "is_test", "time_step",
                 "time_unit", "channel_unit", "provenance")
OPTIONAL_KEYS = ("descriptors",)
_STRING_SCALARS = ("time_unit", "channel_unit", "provenance")
MIN_WINDOW_FRAMES = 2  # a path needs two points to have an increment (and a signature)


# --- windows --------------------------------------------------------------------------------

def temporal_cv_windows(n_frames: int, groups: int = 5, folds: int = 5) -> tuple:
    """Windows of the temporal cross-validation of one trajectory of ``n_frames`` frames.

    The trajectory is cut into ``groups * folds`` contiguous, non-overlapping windows of
    ``window_length = n_frames // (groups * folds)`` frames: group ``g`` is windows
    ``g*folds .. g*folds + folds - 1`` and window ``j`` of a group belongs to fold ``j``. The
    last ``n_frames - groups * folds * window_length`` frames are dropped (fewer than
    ``groups * folds``).

    Parameters
    ----------
    n_frames : int
        Frames per trajectory.
    groups, folds : int
        Time groups, and windows (= folds) per group.

    Returns
    -------
    starts : numpy.ndarray of int64, shape (groups * folds,)
        First frame of each window, in time order; window ``w`` is frames
        ``starts[w] : starts[w] + window_length``.
    fold_of_window : numpy.ndarray of int64, shape (groups * folds,)
        The fold each window validates (``w % folds``).
    window_length : int
        Frames per window.

    Raises
    ------
    ValueError
        Non-positive arguments, or fewer than two frames per window.
    """
    n_frames = check.count("n_frames", n_frames)
    groups = check.count("groups", groups)
    folds = check.count("folds", folds)
    n_windows = groups * folds
    window_length = n_frames // n_windows
    if window_length < MIN_WINDOW_FRAMES:
        raise ValueError(
            f"trajectories of {n_frames} frames are too short for {groups} groups x {folds} folds "
            f"= {n_windows} windows of at least {MIN_WINDOW_FRAMES} frames (need at least "
            f"{n_windows * MIN_WINDOW_FRAMES} frames); use fewer groups/folds or longer "
            f"trajectories"
        )
    windows = np.arange(n_windows, dtype=np.int64)
    return windows * window_length, windows % folds, window_length


# --- validation -----------------------------------------------------------------------------

def _scalar_string(arrays: dict, key: str, source: str) -> str:
    value = np.asarray(arrays[key])
    if value.shape != () or value.dtype.kind not in "US":
        raise ValueError(f"{source}: {key} must be a single string, got shape {value.shape} "
                         f"and dtype {value.dtype}")
    return str(value.item())


def _first_bad(array: np.ndarray) -> str:
    index = np.argwhere(~np.isfinite(array))[0]
    return f"first at index {tuple(int(i) for i in index)}"


def validate_path_arrays(arrays: dict, source: str = "dataset") -> dict:
    """Check arrays against the path-dataset contract and return them in the contract dtypes.

    Parameters
    ----------
    arrays : dict
        The arrays of the module docstring table (extra keys are ignored and not returned).
    source : str
        What to call the data in error messages (e.g. the file name).

    Returns
    -------
    dict
        The contract keys as numpy arrays with the contract dtypes (``paths`` float32,
        ``labels`` int64, ...), string scalars as 0-d str arrays.

    Raises
    ------
    ValueError
        A required key is missing, a shape or dtype does not fit, values are not finite, labels
        are out of range, the graph is not symmetric 0/1 with a zero diagonal, the
        cross-validation trajectories do not hold at least two classes, or ``provenance`` is not
        JSON.
    """
    missing = [key for key in REQUIRED_KEYS if key not in arrays]
    if missing:
        raise ValueError(f"{source} is missing required arrays {missing} (it has "
                         f"{sorted(arrays)}; required: {list(REQUIRED_KEYS)})")
    out = {}

    paths = np.asarray(arrays["paths"])
    if paths.ndim != 4 or 0 in paths.shape:
        raise ValueError(f"{source}: paths must have shape (n_traj, T, N, C) with no empty axis, "
                         f"got {paths.shape}")
    if paths.dtype.kind not in "fiu":
        raise ValueError(f"{source}: paths must be numbers, got dtype {paths.dtype}")
    paths = paths.astype(np.float32, copy=False)
    if not np.isfinite(paths).all():
        raise ValueError(f"{source}: paths contain NaN or infinite values ({_first_bad(paths)}, "
                         f"as (trajectory, frame, node, channel))")
    n_traj, n_frames, n_nodes, _ = paths.shape
    out["paths"] = paths

    names = np.asarray(arrays["label_names"])
    if names.ndim != 1 or names.dtype.kind not in "US" or len(names) < 2:
        raise ValueError(f"{source}: label_names must be a 1-d array of at least two strings "
                         f"(one per class), got shape {names.shape} and dtype {names.dtype}")
    out["label_names"] = names.astype(str)
    n_classes = len(names)

    labels = np.asarray(arrays["labels"])
    if labels.shape != (n_traj,):
        raise ValueError(f"{source}: labels must have shape ({n_traj},), one per trajectory of "
                         f"paths, got {labels.shape}")
    if labels.dtype.kind not in "iu":
        raise ValueError(f"{source}: labels must be integers, got dtype {labels.dtype}")
    bad = (labels < 0) | (labels >= n_classes)
    if bad.any():
        raise ValueError(f"{source}: labels must be in 0..{n_classes - 1} (there are {n_classes} "
                         f"label_names); trajectory {int(np.flatnonzero(bad)[0])} has label "
                         f"{int(labels[bad][0])}")
    out["labels"] = labels.astype(np.int64)

    is_test = np.asarray(arrays["is_test"])
    if is_test.shape != (n_traj,) or is_test.dtype != np.bool_:
        raise ValueError(f"{source}: is_test must be a bool array of shape ({n_traj},), got "
                         f"shape {is_test.shape} and dtype {is_test.dtype}")
    out["is_test"] = is_test
    pool = out["labels"][~is_test]
    if len(np.unique(pool)) < 2:
        raise ValueError(f"{source}: the cross-validation trajectories (is_test == False) must "
                         f"hold at least two classes to classify, found "
                         f"{sorted(set(pool.tolist()))} in {len(pool)} trajectories")

    adjacency = np.asarray(arrays["adjacency"])
    if adjacency.shape != (n_traj, n_nodes, n_nodes):
        raise ValueError(f"{source}: adjacency must have shape ({n_traj}, {n_nodes}, {n_nodes}) "
                         f"to match paths {paths.shape}, got {adjacency.shape}")
    if adjacency.dtype.kind not in "fiub":
        raise ValueError(f"{source}: adjacency must be numbers, got dtype {adjacency.dtype}")
    adjacency = adjacency.astype(np.float32, copy=False)
    if not np.isin(adjacency, (0.0, 1.0)).all():
        raise ValueError(f"{source}: adjacency must hold only 0 and 1")
    if not (adjacency == adjacency.transpose(0, 2, 1)).all():
        raise ValueError(f"{source}: adjacency must be symmetric (undirected graphs)")
    if adjacency[:, np.arange(n_nodes), np.arange(n_nodes)].any():
        raise ValueError(f"{source}: adjacency must have a zero diagonal (no self-loops)")
    out["adjacency"] = adjacency

    time_step = np.asarray(arrays["time_step"])
    if time_step.shape != () or time_step.dtype.kind not in "fiu" \
            or not (math.isfinite(float(time_step)) and float(time_step) > 0):
        raise ValueError(f"{source}: time_step must be a positive finite number, got "
                         f"{arrays['time_step']!r}")
    out["time_step"] = np.float64(time_step)
    for key in _STRING_SCALARS:
        out[key] = np.asarray(_scalar_string(arrays, key, source))
    try:
        json.loads(str(out["provenance"]))
    except ValueError as error:
        raise ValueError(f"{source}: provenance is not valid JSON ({error})") from None

    if arrays.get("descriptors") is not None:
        descriptors = np.asarray(arrays["descriptors"])
        if descriptors.ndim != 3 or descriptors.shape[:2] != (n_traj, n_frames) \
                or descriptors.shape[2] == 0:
            raise ValueError(f"{source}: descriptors must have shape ({n_traj}, {n_frames}, "
                             f"n_desc > 0) to match paths {paths.shape}, got {descriptors.shape}")
        if descriptors.dtype.kind not in "fiu":
            raise ValueError(f"{source}: descriptors must be numbers, got {descriptors.dtype}")
        descriptors = descriptors.astype(np.float32, copy=False)
        if not np.isfinite(descriptors).all():
            raise ValueError(f"{source}: descriptors contain NaN or infinite values "
                             f"({_first_bad(descriptors)})")
        out["descriptors"] = descriptors
    return out


def save_path_dataset(out: Union[str, os.PathLike], **arrays) -> Path:
    """Validate arrays (see :func:`validate_path_arrays`) and write them as a path dataset.

    The file is written atomically (a temporary file in the same directory, then
    ``os.replace``) and byte-reproducibly (fixed zip member dates, uncompressed), so the same
    arrays always give the same bytes.

    Parameters
    ----------
    out : path
        The ``.npz`` to write.
    **arrays
        The contract arrays; keys outside the contract are refused (a typo would otherwise
        silently lose data).

    Returns
    -------
    pathlib.Path
        ``out``.
    """
    out = Path(out)
    unknown = sorted(set(arrays) - set(REQUIRED_KEYS) - set(OPTIONAL_KEYS))
    if unknown:
        raise ValueError(f"unknown path-dataset arrays {unknown}; allowed: "
                         f"{list(REQUIRED_KEYS + OPTIONAL_KEYS)}")
    if out.is_dir():
        raise ValueError(f"out must be a file path, but {out} is a directory")
    checked = validate_path_arrays(arrays, source=str(out))
    with atomic_open(out) as handle, \
            zipfile.ZipFile(handle, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for key in REQUIRED_KEYS + OPTIONAL_KEYS:
            if key in checked:
                value = np.asarray(checked[key])
                npy_member(archive, key, value.shape, value.dtype, [value])
    return out


# --- reading and cutting into windows -------------------------------------------------------

@dataclasses.dataclass
class WindowSet:
    """Windows cut from trajectories, as torch tensors.

    Adjacency is not repeated per window (a 100-node gene graph is 40 kB, times 20 windows times
    100 trajectories would be 80 MB): ``adjacency`` holds one graph per trajectory of the whole
    dataset (the same tensor object in every WindowSet of a dataset) and ``trajectory`` indexes
    it, so the graph of window ``i`` is ``adjacency[trajectory[i]]`` (see :meth:`graphs`).

    Attributes
    ----------
    paths : torch.Tensor, float32, (n, W, N, C)
        The windows' node coordinates.
    labels : torch.Tensor, int64, (n,)
        The label of each window's trajectory.
    trajectory : torch.Tensor, int64, (n,)
        Index of each window's trajectory in the dataset.
    window : torch.Tensor, int64, (n,)
        Index of each window within its trajectory (``0 .. groups*folds - 1``, time order).
    start : torch.Tensor, int64, (n,)
        First frame of each window in its trajectory.
    adjacency : torch.Tensor, float32, (n_traj, N, N)
        Graphs of all trajectories of the dataset (index with ``trajectory``).
    descriptors : torch.Tensor or None, float32, (n, W, n_desc)
        Per-frame descriptors of the windows, if the dataset has them.
    window_length : int
        Frames per window.
    dropped_frames : int
        Frames at the end of every trajectory that belong to no window.
    """

    paths: torch.Tensor
    labels: torch.Tensor
    trajectory: torch.Tensor
    window: torch.Tensor
    start: torch.Tensor
    adjacency: torch.Tensor
    descriptors: Optional[torch.Tensor]
    window_length: int
    dropped_frames: int

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def graphs(self, index=None) -> torch.Tensor:
        """Adjacency of each window (or of ``index``'s windows), ``(n, N, N)``."""
        trajectory = self.trajectory if index is None else self.trajectory[index]
        return self.adjacency[trajectory]


class PathDataset:
    """A validated path-classification dataset (see the module docstring for the format).

    Parameters
    ----------
    path : path
        The ``.npz`` file.

    Attributes
    ----------
    paths, labels, label_names, adjacency, is_test, descriptors : numpy.ndarray
        The arrays in the contract dtypes (``descriptors`` is None if absent).
    time_step : float
    time_unit, channel_unit : str
    provenance : dict
    source : str
        The file name (or ``"<arrays>"``).

    Raises
    ------
    FileNotFoundError
        No such file.
    ValueError
        Not an npz file, corrupt, or not fitting the contract (see
        :func:`validate_path_arrays`).
    """

    def __init__(self, path: Union[str, os.PathLike]):
        path = Path(path)
        self._set(validate_path_arrays(read_npz(path, "path dataset"), source=str(path)), str(path))

    @classmethod
    def from_arrays(cls, source: str = "<arrays>", **arrays) -> "PathDataset":
        """A dataset from in-memory arrays (validated like a file)."""
        dataset = cls.__new__(cls)
        dataset._set(validate_path_arrays(arrays, source=source), source)
        return dataset

    def _set(self, data: dict, source: str) -> None:
        self.source = source
        self.paths = data["paths"]
        self.labels = data["labels"]
        self.label_names = [str(name) for name in data["label_names"]]
        self.adjacency = data["adjacency"]
        self.is_test = data["is_test"]
        self.descriptors = data.get("descriptors")
        self.time_step = float(data["time_step"])
        self.time_unit = str(data["time_unit"])
        self.channel_unit = str(data["channel_unit"])
        self.provenance = json.loads(str(data["provenance"]))
        self._adjacency_tensor = None

    # shape -----------------------------------------------------------------------------------
    @property
    def n_trajectories(self) -> int:
        return self.paths.shape[0]

    @property
    def n_frames(self) -> int:
        return self.paths.shape[1]

    @property
    def n_nodes(self) -> int:
        return self.paths.shape[2]

    @property
    def n_channels(self) -> int:
        return self.paths.shape[3]

    @property
    def n_classes(self) -> int:
        return len(self.label_names)

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the arrays that define the task (paths, labels, graphs, test flags)."""
        if getattr(self, "_fingerprint", None) is None:
            digest = hashlib.sha256()
            for array in (self.paths, self.labels, self.adjacency, self.is_test):
                digest.update(np.ascontiguousarray(array).tobytes())
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    @property
    def cv_trajectories(self) -> np.ndarray:
        """Indices of the cross-validation pool (``is_test == False``)."""
        return np.flatnonzero(~self.is_test)

    @property
    def test_trajectories(self) -> np.ndarray:
        """Indices of the independent test trajectories."""
        return np.flatnonzero(self.is_test)

    def __repr__(self) -> str:
        return (f"PathDataset({self.source!r}: {self.n_trajectories} trajectories "
                f"({int(self.is_test.sum())} test) x {self.n_frames} frames x {self.n_nodes} "
                f"nodes x {self.n_channels} channels, classes {self.label_names})")

    # windows ---------------------------------------------------------------------------------
    def _windows(self, trajectories: np.ndarray, windows: np.ndarray, starts: np.ndarray,
                 window_length: int) -> WindowSet:
        """The WindowSet of every (trajectory, window) pair of the two index lists."""
        traj = np.repeat(trajectories, len(windows))
        win = np.tile(windows, len(trajectories))
        start = starts[win]
        frames = start[:, None] + np.arange(window_length)  # (n, W)
        if self._adjacency_tensor is None:
            self._adjacency_tensor = torch.from_numpy(self.adjacency)
        descriptors = None
        if self.descriptors is not None:
            descriptors = torch.from_numpy(self.descriptors[traj[:, None], frames])
        return WindowSet(
            paths=torch.from_numpy(self.paths[traj[:, None], frames]),
            labels=torch.from_numpy(self.labels[traj]),
            trajectory=torch.from_numpy(traj.astype(np.int64)),
            window=torch.from_numpy(win.astype(np.int64)),
            start=torch.from_numpy(start.astype(np.int64)),
            adjacency=self._adjacency_tensor,
            descriptors=descriptors,
            window_length=int(window_length),
            dropped_frames=int(self.n_frames - len(starts) * window_length),
        )

    def fold(self, k: int, groups: int = 5, folds: int = 5) -> dict:
        """Training, validation and test windows of fold ``k`` (paper section 3.4).

        Parameters
        ----------
        k : int
            The fold, ``0 <= k < folds``.
        groups, folds : int
            See :func:`temporal_cv_windows`.

        Returns
        -------
        dict
            ``train``: the windows ``j != k`` of every group of every cross-validation
            trajectory; ``validation``: window ``k`` of every group of them; ``test``: every
            window of the ``is_test`` trajectories (the same for every ``k``; empty if there
            are none). Each a :class:`WindowSet`, ordered by trajectory then time.
        """
        starts, fold_of_window, window_length = temporal_cv_windows(self.n_frames, groups,
                                                                    folds)
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 0 <= k < folds:
            raise ValueError(f"fold k must be an integer in 0..{folds - 1}, got {k!r}")
        windows = np.arange(len(starts))
        pool = self.cv_trajectories
        return {
            "train": self._windows(pool, windows[fold_of_window != k], starts, window_length),
            "validation": self._windows(pool, windows[fold_of_window == k], starts,
                                        window_length),
            "test": self._windows(self.test_trajectories, windows, starts, window_length),
        }


def coarse_path(positions: np.ndarray, atoms: Optional[Sequence[int]] = None,
                mapping: Optional[np.ndarray] = None) -> np.ndarray:
    """Flatten frames of chosen coordinates to a path: (frames, N, 3) -> (frames, K*3).

    ``atoms`` picks atoms; ``mapping`` (K, N) maps atoms to beads (rows are weights, e.g.
    centres of mass); neither: all atoms.
    """
    positions = np.asarray(positions, dtype=np.float64)
    if positions.ndim != 3 or positions.shape[2] != 3:
        raise ValueError(f"positions must be (frames, atoms, 3), got {positions.shape}")
    if atoms is not None and mapping is not None:
        raise ValueError("give atoms or a mapping, not both")
    if atoms is not None:
        atoms = np.asarray(atoms, dtype=np.int64)
        if atoms.size == 0 or atoms.min() < 0 or atoms.max() >= positions.shape[1]:
            raise ValueError(f"atom indices must lie in 0..{positions.shape[1] - 1}")
        positions = positions[:, atoms]
    elif mapping is not None:
        mapping = np.asarray(mapping, dtype=np.float64)
        if mapping.ndim != 2 or mapping.shape[1] != positions.shape[1]:
            raise ValueError(f"mapping must be (beads, {positions.shape[1]}), got {mapping.shape}")
        positions = np.einsum("kn,fnd->fkd", mapping, positions)
    return positions.reshape(positions.shape[0], -1)
