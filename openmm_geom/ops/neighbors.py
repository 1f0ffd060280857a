"""Neighbour pairs: the one entry point every model in openmm-geom uses.

The pair search is vesin-torch's (cell lists, O(N), triclinic boxes, positions outside the
cell); this wrapper adds the checks a simulation needs and recomputes the pair vectors with
plain torch ops so that they are differentiable with respect to positions *and* box, in any
dtype, inside TorchScript and inside an openmm-torch ``TorchForce``.
"""
from typing import List, Optional, Tuple

import torch
from vesin_torch import NeighborList

__all__ = ["neighbor_pairs", "check_box_holds_cutoff"]


def check_box_holds_cutoff(box: torch.Tensor, cutoff: float) -> None:
    """Raise unless ``box`` (rows a, b, c) holds ``cutoff`` under the minimum-image convention.

    Every model in openmm-geom counts each pair once (its nearest image), which is exact only
    when the cutoff is at most half of the smallest distance between opposite faces of the
    cell: ``width_a = V / |b x c|`` and cyclic.
    """
    if not (cutoff > 0.0 and cutoff < float("inf")):
        raise ValueError("cutoff must be positive and finite, got " + str(cutoff))
    if box.dim() != 2 or box.size(0) != 3 or box.size(1) != 3:
        raise ValueError("box must have shape (3, 3) (rows are the box vectors a, b, c), got "
                         + str(list(box.shape)))
    if not bool(torch.isfinite(box).all()):
        raise ValueError("box contains NaN or infinite values")
    b = box.detach().to(torch.float64)
    volume = torch.abs(torch.linalg.det(b))
    if not bool(volume > 0.0):
        rows: List[List[float]] = b.tolist()
        raise ValueError("box is singular (zero volume): " + str(rows))
    face_areas = torch.stack([
        torch.linalg.cross(b[1], b[2]).norm(),
        torch.linalg.cross(b[2], b[0]).norm(),
        torch.linalg.cross(b[0], b[1]).norm(),
    ])
    min_width = float((volume / face_areas).min())
    if 2.0 * cutoff > min_width:
        raise ValueError(
            "box too small for the cutoff: 2 x cutoff = " + str(2.0 * cutoff) + " exceeds the "
            "smallest box width " + str(min_width) + " (same length unit), so pairs would see "
            "more than one periodic image. Use a larger box or a smaller cutoff."
        )


def neighbor_pairs(
    positions: torch.Tensor,
    cutoff: float,
    box: Optional[torch.Tensor] = None,
    n_threads: int = 0,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All pairs closer than ``cutoff``, each listed once (half list).

    Parameters
    ----------
    positions : Tensor, shape (N, 3), float32 or float64
        Coordinates in any length unit (the same unit as ``cutoff`` and ``box``).
    cutoff : float
        Pair cutoff, > 0.
    box : Tensor, shape (3, 3), optional
        Periodic box, rows are the box vectors a, b, c (OpenMM's convention; triclinic allowed,
        positions may lie outside the cell). ``None`` for a non-periodic system.
        The box must hold the cutoff under the minimum-image convention.
    n_threads : int
        Threads for the pair search; 0 lets vesin decide (``OMP_NUM_THREADS`` if set, else all
        cores; :func:`openmm_geom.set_threads` sets it).

    Returns
    -------
    pairs : Tensor, shape (2, P), int64
        Atom indices ``i = pairs[0]``, ``j = pairs[1]``; every unordered pair appears once.
    vectors : Tensor, shape (P, 3), dtype of ``positions``
        ``r_j - r_i`` of the nearest image; differentiable w.r.t. positions and box.
    distances : Tensor, shape (P,), dtype of ``positions``
        ``|vectors|``; differentiable.
    """
    if positions.dim() != 2 or positions.size(1) != 3:
        raise ValueError("positions must have shape (N, 3), got " + str(list(positions.shape)))
    if positions.dtype != torch.float32 and positions.dtype != torch.float64:
        raise TypeError("positions must be float32 or float64, got " + str(positions.dtype))
    if not (cutoff > 0.0 and cutoff < float("inf")):
        raise ValueError("cutoff must be positive and finite, got " + str(cutoff))
    if not bool(torch.isfinite(positions).all()):
        bad: List[int] = torch.nonzero(~torch.isfinite(positions).all(dim=1)).flatten()[:10].tolist()
        raise ValueError("positions contain NaN or infinite values (first bad atoms: "
                         + str(bad) + ")")

    periodic = box is not None
    if box is None:
        cell = torch.zeros(3, 3, dtype=positions.dtype, device=positions.device)
    else:
        check_box_holds_cutoff(box, cutoff)
        cell = box.to(dtype=positions.dtype, device=positions.device)

    if positions.size(0) == 0:  # vesin refuses empty inputs; nothing to pair
        empty = positions.new_zeros((0, 3))
        return torch.zeros(2, 0, dtype=torch.int64, device=positions.device), empty, empty[:, 0]
    search = NeighborList(cutoff=cutoff, full_list=False, n_threads=n_threads)
    found = search.compute(points=positions.detach(), box=cell.detach(), periodic=periodic,
                           quantities="PS", copy=True)
    pairs = found[0].t().to(torch.int64)
    vectors = positions.index_select(0, pairs[1]) - positions.index_select(0, pairs[0])
    if periodic:
        vectors = vectors + found[1].to(positions.dtype) @ cell
    distances = torch.linalg.vector_norm(vectors, dim=1)
    return pairs, vectors, distances
