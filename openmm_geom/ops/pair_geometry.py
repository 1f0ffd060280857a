"""Python face of the native ``torch.ops.openmm_geom.pair_geometry`` operator."""
from typing import Optional, Tuple

import torch

__all__ = ["pair_geometry"]


def pair_geometry(
    positions: torch.Tensor,
    box: Optional[torch.Tensor],
    pairs: torch.Tensor,
    shifts: torch.Tensor,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pair vectors and distances of a neighbour list in one native pass (CPU).

    Parameters
    ----------
    positions : Tensor (N, 3), float32/float64, any length unit
    box : Tensor (3, 3) or None
        Rows are the cell vectors a, b, c (same unit as positions); None if not periodic.
    pairs : Tensor (P, 2), int64
        Atom indices ``(i, j)`` per pair (rows contiguous), e.g. vesin's ``"P"``.
    shifts : Tensor (P, 3), int32
        Cell shifts per pair (vesin's ``"S"``); ignored (may be empty) when ``box`` is None.

    Returns
    -------
    pairs : Tensor (2, P), int64 (contiguous copy, ``pairs[0] = i``)
    vectors : Tensor (P, 3): ``x[j] - x[i] + shifts @ box``
    distances : Tensor (P,): ``|vectors|``

    Gradients flow to ``positions`` and ``box``; second derivatives are exact (the backward
    switches to differentiable torch ops when a gradient graph is requested).
    """
    return torch.ops.openmm_geom.pair_geometry(positions, box, pairs, shifts)
