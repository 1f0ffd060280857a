"""Time-lagged frame pairs for VAMPnets and SPIB, and leak-free train/validation splits.

Frames are arbitrary per-frame feature tensors: a trajectory is an array of shape
``(T_i, *feature_shape)`` (for example geom2vec token features ``(T, M, 4, d)`` or flat
features ``(T, F)``). :class:`TimeLaggedPairs` concatenates the trajectories once and holds the
pairs ``(t, t + lag)`` as global frame indices; no pair ever crosses a trajectory boundary.

Splits follow the blueprint: by time block (:func:`split_by_time`, the geom2vec paper's
section IV.D: first part of each trajectory for training, last part for validation, with a gap
so that the two blocks are not lag-correlated) or by whole trajectory
(:func:`split_by_trajectory`). There is deliberately no random-frame split: successive MD
frames are strongly correlated, so a random split leaks the training data into validation.
"""
from __future__ import annotations

import dataclasses
from typing import Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

__all__ = ["TimeLaggedPairs", "TrajectorySplit", "split_by_time", "split_by_trajectory",
           "as_trajectory_list"]

ArrayLike = Union[np.ndarray, torch.Tensor]


def as_trajectory_list(trajectories) -> List[ArrayLike]:
    """Accept one array ``(T, ...)`` or a sequence of them; return a list of arrays."""
    if isinstance(trajectories, (np.ndarray, torch.Tensor)):
        return [trajectories]
    trajectories = list(trajectories)
    if not trajectories:
        raise ValueError("no trajectories given")
    return trajectories


def _to_tensor(array: ArrayLike, dtype: Optional[torch.dtype]) -> torch.Tensor:
    # torch.as_tensor shares memory with a numpy array when it can (no copy of big features)
    tensor = torch.as_tensor(array)
    if dtype is not None:
        tensor = tensor.to(dtype)
    elif not tensor.is_floating_point():
        tensor = tensor.to(torch.get_default_dtype())
    return tensor


class TimeLaggedPairs:
    """All frame pairs ``(t, t + lag)`` inside each trajectory.

    Parameters
    ----------
    trajectories : array ``(T, *feature_shape)`` or list of arrays ``(T_i, *feature_shape)``
        Per-frame features (numpy or torch). All trajectories must share ``feature_shape``.
    lag : int
        Lag time in frames of the given arrays (>= 1).
    stride : int, default 1
        Spacing of the time origins ``t`` in frames (``t = 0, stride, 2 stride, ...``). To coarsen
        the time step itself (the paper's "trajectory stride"), subsample the arrays before
        building the pairs; ``lag`` is always counted in frames of the arrays given here.
    dtype : torch.dtype, optional
        Cast the features (default: keep floating dtypes, integers become the default dtype).
    check_finite : bool, default True
        Refuse NaN/inf features, naming the trajectory and frame.

    Attributes
    ----------
    features : torch.Tensor ``(N, *feature_shape)``
        All frames of all trajectories, concatenated (``N = sum T_i``).
    pairs : torch.LongTensor ``(P, 2)``
        Global frame indices ``(t, t + lag)`` into :attr:`features`.
    offsets : torch.LongTensor ``(n_trajectories + 1,)``
        Start of each trajectory in :attr:`features`.

    Raises
    ------
    ValueError
        Lag not shorter than every trajectory, non-finite features, mismatched feature shapes.
    """

    def __init__(self, trajectories, lag: int, stride: int = 1, *,
                 dtype: Optional[torch.dtype] = None, check_finite: bool = True):
        trajectories = as_trajectory_list(trajectories)
        if int(lag) != lag or lag < 1:
            raise ValueError(f"lag must be a positive integer number of frames, got {lag!r}")
        if int(stride) != stride or stride < 1:
            raise ValueError(f"stride must be a positive integer, got {stride!r}")
        self.lag = int(lag)
        self.stride = int(stride)

        tensors = [_to_tensor(t, dtype) for t in trajectories]
        shapes = [tuple(t.shape[1:]) for t in tensors]
        for i, t in enumerate(tensors):
            if t.dim() < 1:
                raise ValueError(f"trajectory {i} is a scalar; expected an array (frames, ...)")
        if len(set(shapes)) > 1:
            listing = ", ".join(f"trajectory {i}: {s}" for i, s in enumerate(shapes))
            raise ValueError(f"trajectories have different per-frame feature shapes ({listing})")
        if len({t.dtype for t in tensors}) > 1:
            # promote rather than fail: mixing float32 and float64 inputs is harmless
            common = tensors[0].dtype
            for t in tensors[1:]:
                common = torch.promote_types(common, t.dtype)
            tensors = [t.to(common) for t in tensors]
        if check_finite:
            for i, t in enumerate(tensors):
                finite = torch.isfinite(t.reshape(t.shape[0], -1)).all(dim=1)
                if not bool(finite.all()):
                    frame = int(torch.nonzero(~finite)[0, 0])
                    bad = t[frame].reshape(-1)
                    kind = "nan" if bool(torch.isnan(bad).any()) else "inf"
                    raise ValueError(f"trajectory {i}, frame {frame}: non-finite features ({kind})")

        lengths = [int(t.shape[0]) for t in tensors]
        longest = max(lengths)
        if self.lag > longest:
            raise ValueError(f"lag {self.lag} frames is longer than every trajectory "
                             f"(longest {longest} frames)")
        if self.lag == longest:
            raise ValueError(f"lag {self.lag} frames leaves no pairs: no trajectory is longer "
                             f"than {longest} frames")

        self.feature_shape: Tuple[int, ...] = shapes[0]
        self.lengths: List[int] = lengths
        self.features = tensors[0] if len(tensors) == 1 else torch.cat(tensors, dim=0)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        self.offsets = torch.as_tensor(offsets)
        starts = []
        for i, n in enumerate(lengths):
            t = np.arange(0, max(n - self.lag, 0), self.stride, dtype=np.int64)
            starts.append(offsets[i] + t)
        start = torch.as_tensor(np.concatenate(starts))
        self.pairs = torch.stack([start, start + self.lag], dim=1)

    # -- sizes -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.pairs.shape[0])

    @property
    def n_frames(self) -> int:
        """Total number of frames ``N`` over all trajectories."""
        return int(self.features.shape[0])

    @property
    def n_trajectories(self) -> int:
        return len(self.lengths)

    @property
    def dtype(self) -> torch.dtype:
        return self.features.dtype

    def trajectory_of(self, frames: torch.Tensor) -> torch.Tensor:
        """Trajectory index of global frame indices ``frames`` (any shape)."""
        return torch.searchsorted(self.offsets, torch.as_tensor(frames).contiguous(), right=True) - 1

    def split_frames(self, values) -> List[np.ndarray]:
        """Cut a per-frame array ``(N, ...)`` back into per-trajectory arrays ``(T_i, ...)``."""
        values = np.asarray(values)
        if values.shape[0] != self.n_frames:
            raise ValueError(f"expected {self.n_frames} per-frame values, got {values.shape[0]}")
        o = self.offsets.tolist()
        return [values[o[i]:o[i + 1]] for i in range(self.n_trajectories)]

    # -- data access --------------------------------------------------------------------------
    def __getitem__(self, index) -> Tuple[torch.Tensor, torch.Tensor]:
        """Features ``(x_t, x_{t+lag})`` of pair(s) ``index``."""
        pair = self.pairs[index]
        return self.features[pair[..., 0]], self.features[pair[..., 1]]

    def batch(self, indices: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Features of pairs ``indices`` (LongTensor ``(B,)``): two tensors ``(B, *feature_shape)``."""
        return self[indices]

    def batch_indices(self, batch_size: int, *, generator: Optional[torch.Generator] = None,
                      seed: Optional[int] = None, shuffle: bool = True,
                      drop_last: bool = False) -> List[torch.Tensor]:
        """One epoch of pair indices, split into batches.

        Parameters
        ----------
        batch_size : int
        generator, seed
            Shuffle with ``generator`` (advanced in place: successive epochs differ) or a fresh
            generator seeded with ``seed``. One of them is required when ``shuffle``.
        shuffle : bool, default True
        drop_last : bool, default False
            Drop a final batch smaller than ``batch_size`` -- but never drop everything: with
            fewer pairs than ``batch_size`` one short batch is kept.

        Returns
        -------
        list of torch.LongTensor ``(B,)``
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        n = len(self)
        if shuffle:
            if generator is None:
                if seed is None:
                    raise ValueError("shuffling needs a seed or a torch.Generator (reproducibility)")
                generator = torch.Generator().manual_seed(int(seed))
            order = torch.randperm(n, generator=generator)
        else:
            order = torch.arange(n)
        batches = list(torch.split(order, batch_size))
        if drop_last and len(batches) > 1 and len(batches[-1]) < batch_size:
            batches.pop()
        return batches

    def batches(self, batch_size: int, *, generator: Optional[torch.Generator] = None,
                seed: Optional[int] = None, shuffle: bool = True,
                drop_last: bool = False) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        """Iterate over one epoch of ``(x_t, x_{t+lag})`` batches (see :meth:`batch_indices`)."""
        for idx in self.batch_indices(batch_size, generator=generator, seed=seed,
                                      shuffle=shuffle, drop_last=drop_last):
            yield self.batch(idx)

    def __repr__(self) -> str:
        return (f"TimeLaggedPairs({len(self)} pairs, lag={self.lag}, stride={self.stride}, "
                f"{self.n_trajectories} trajectories, {self.n_frames} frames, "
                f"feature_shape={self.feature_shape})")


@dataclasses.dataclass
class TrajectorySplit:
    """Training and validation parts of a set of trajectories.

    Unpacks as ``train, validation = split``. ``train_slices`` and ``validation_slices`` hold
    ``(trajectory, start, stop)`` so that aligned per-frame data (labels, weights, CVs) can be
    cut identically with :meth:`apply`.
    """

    train: List[ArrayLike]
    validation: List[ArrayLike]
    train_slices: List[Tuple[int, int, int]]
    validation_slices: List[Tuple[int, int, int]]

    def __iter__(self):
        return iter((self.train, self.validation))

    def apply(self, per_frame) -> Tuple[List[ArrayLike], List[ArrayLike]]:
        """Split arrays aligned with the original trajectories the same way."""
        per_frame = as_trajectory_list(per_frame)
        cut = lambda slices: [per_frame[i][a:b] for i, a, b in slices]  # noqa: E731
        return cut(self.train_slices), cut(self.validation_slices)


def split_by_time(trajectories, validation_fraction: float = 0.5, *, gap: int) -> TrajectorySplit:
    """Last block of every trajectory for validation, the first block for training.

    Parameters
    ----------
    trajectories : array ``(T, ...)`` or list of arrays ``(T_i, ...)``
    validation_fraction : float in (0, 1), default 0.5
        Fraction of each trajectory's frames in its validation block (the paper: 0.5).
    gap : int
        Frames dropped between the training and validation block of each trajectory. Use the
        lag time: then no training frame is within one lag of a validation frame, so the
        two sets share no lag-correlated pair.

    Returns
    -------
    TrajectorySplit
        Trajectories too short to yield a training block contribute only validation frames.

    Raises
    ------
    ValueError
        Bad fraction or gap, or no training (validation) frames at all.
    """
    trajectories = as_trajectory_list(trajectories)
    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in (0, 1), got {validation_fraction}")
    if int(gap) != gap or gap < 0:
        raise ValueError(f"gap must be a non-negative integer number of frames, got {gap!r}")
    train, validation, train_slices, validation_slices = [], [], [], []
    for i, traj in enumerate(trajectories):
        n = int(traj.shape[0])
        n_val = int(round(n * validation_fraction))
        val_start = n - n_val
        train_stop = max(val_start - int(gap), 0)
        if n_val > 0:
            validation.append(traj[val_start:])
            validation_slices.append((i, val_start, n))
        if train_stop > 0:
            train.append(traj[:train_stop])
            train_slices.append((i, 0, train_stop))
    if not train:
        raise ValueError(f"split_by_time left no training frames (validation_fraction="
                         f"{validation_fraction}, gap={gap}, longest trajectory "
                         f"{max(int(t.shape[0]) for t in trajectories)} frames)")
    if not validation:
        raise ValueError("split_by_time left no validation frames; the trajectories are too short")
    return TrajectorySplit(train, validation, train_slices, validation_slices)


def split_by_trajectory(trajectories, validation: Sequence[int]) -> TrajectorySplit:
    """Whole trajectories for validation (indices ``validation``), the rest for training.

    Raises
    ------
    ValueError
        Index out of range, duplicates, or an empty training/validation set.
    """
    trajectories = as_trajectory_list(trajectories)
    n = len(trajectories)
    chosen = [int(v) for v in np.atleast_1d(np.asarray(validation, dtype=np.int64))]
    if len(set(chosen)) != len(chosen):
        raise ValueError(f"duplicate validation trajectory indices: {chosen}")
    bad = [v for v in chosen if not 0 <= v < n]
    if bad:
        raise ValueError(f"validation trajectory indices {bad} out of range 0..{n - 1}")
    if not chosen:
        raise ValueError("no validation trajectories chosen")
    if len(chosen) == n:
        raise ValueError("every trajectory is in validation; none left for training")
    val = sorted(chosen)
    tr = [i for i in range(n) if i not in set(val)]
    whole = lambda i: (i, 0, int(trajectories[i].shape[0]))  # noqa: E731
    return TrajectorySplit([trajectories[i] for i in tr], [trajectories[i] for i in val],
                           [whole(i) for i in tr], [whole(i) for i in val])
