"""How biasable a collective variable is: its resolution length.

A CV that a bias can push along must change on the scale of the slow motion, not of bond
vibrations. :func:`cv_resolution` measures that scale: the CV's standard deviation over a set
of frames divided by the median, over the frames, of its largest per-atom gradient norm. It is
a length (nm): roughly how far the most sensitive atom has to move to change the CV by one
standard deviation. For capped alanine at 700 K, phi gives about 0.05 nm and psi about 0.1 nm;
a CV far below that follows fast vibrations and a bias on it pushes hard on them
(``docs/results/cv-biasing.md``).

Positions in nm.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

__all__ = ["cv_resolution"]


def cv_resolution(cv: Callable[[torch.Tensor], torch.Tensor], positions: np.ndarray, *,
                  batch_size: int = 64, dtype: torch.dtype = torch.float64) -> np.ndarray:
    """Resolution length of each CV over ``positions``, nm.

    Parameters
    ----------
    cv : callable
        Maps a ``(B, N, 3)`` tensor of positions (nm) to ``(B, k)`` CVs, differentiably
        (e.g. ``Geom2VecCV.batch`` of a module in ``dtype``).
    positions : array (T, N, 3)
        Frames, nm; at least two.
    batch_size : int
        Frames per call.
    dtype : torch.dtype
        Dtype of the positions given to ``cv``.

    Returns
    -------
    ndarray (k,)
        ``std_t(s_i) / median_t(max_atoms |d s_i / d x_atom|)`` for each CV ``i``.
    """
    positions = np.asarray(positions)
    if positions.ndim != 3 or positions.shape[-1] != 3 or len(positions) < 2:
        raise ValueError(f"positions must be (frames >= 2, atoms, 3); got {positions.shape}")
    if not np.all(np.isfinite(positions)):
        raise ValueError("positions hold NaN or inf")
    values, steepest = [], []
    for start in range(0, len(positions), batch_size):
        x = torch.tensor(positions[start:start + batch_size], dtype=dtype, requires_grad=True)
        s = cv(x)
        if s.ndim != 2 or s.shape[0] != x.shape[0]:
            raise ValueError(f"the CV must return (frames, k); got {tuple(s.shape)}")
        per_cv = []
        for i in range(s.shape[1]):
            (grad,) = torch.autograd.grad(s[:, i].sum(), x, retain_graph=i + 1 < s.shape[1])
            per_cv.append(grad.norm(dim=-1).amax(dim=-1))
        values.append(s.detach().double().numpy())
        steepest.append(torch.stack(per_cv, dim=1).detach().double().numpy())
    values, steepest = np.concatenate(values), np.concatenate(steepest)
    return values.std(axis=0) / np.median(steepest, axis=0)
