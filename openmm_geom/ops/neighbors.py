"""Neighbour pairs: the one entry point every model in openmm-geom uses.

The pair search is vesin-torch's (cell lists, O(N), triclinic boxes, positions outside the
cell); this wrapper adds the checks a simulation needs and computes the pair vectors and
distances with our native ``torch.ops.openmm_geom.pair_geometry`` so that they have exact first
*and second* derivatives with respect to positions and box (vesin's own vectors are wrong under
double backward, which force matching needs), in any dtype, inside TorchScript and inside an
openmm-torch ``TorchForce``.
"""
import math
from typing import List, Optional, Tuple

import torch
from vesin_torch import NeighborList

from .pair_geometry import pair_geometry

__all__ = ["neighbor_pairs", "NeighborPairs", "check_box_holds_cutoff", "check_cutoff",
           "box_problem", "cutoff_problem"]


def _cross(u: List[float], v: List[float]) -> List[float]:
    return [u[1] * v[2] - u[2] * v[1], u[2] * v[0] - u[0] * v[2], u[0] * v[1] - u[1] * v[0]]


def _norm(u: List[float]) -> float:
    return math.sqrt(u[0] * u[0] + u[1] * u[1] + u[2] * u[2])


def cutoff_problem(cutoff: float) -> str:
    """Why ``cutoff`` is unusable (not positive and finite), or "" if it is fine."""
    if not (cutoff > 0.0 and cutoff < float("inf")):
        return "cutoff must be positive and finite, got " + str(cutoff)
    return ""


def check_cutoff(cutoff: float) -> None:
    """Raise unless ``cutoff`` is positive and finite: the one check of a cutoff's value."""
    problem = cutoff_problem(cutoff)
    if problem:
        raise ValueError(problem)


def box_problem(box: torch.Tensor, cutoff: float) -> str:
    """Why ``box`` (rows a, b, c) cannot hold ``cutoff`` under the minimum-image convention, or
    "" if it can (see :func:`check_box_holds_cutoff`).

    A message rather than an exception, so that callers inside TorchScript raise it in their
    own frame: an exception raised two scripted function calls deep inside an openmm-torch
    ``TorchForce`` crashed libtorch while it assembled the TorchScript call stack (torch 2.12).
    """
    problem = cutoff_problem(cutoff)
    if problem:
        return problem
    if box.dim() != 2 or box.size(0) != 3 or box.size(1) != 3:
        return ("box must have shape (3, 3) (rows are the box vectors a, b, c), got "
                + str(list(box.shape)))
    # Nine numbers: one host transfer, then scalar arithmetic (cheaper than ~20 tiny tensor ops).
    rows: List[List[float]] = box.detach().to(torch.float64).tolist()
    for row in rows:
        for value in row:
            if not math.isfinite(value):
                return "box contains NaN or infinite values"
    a, b, c = rows[0], rows[1], rows[2]
    bc = _cross(b, c)
    volume = abs(a[0] * bc[0] + a[1] * bc[1] + a[2] * bc[2])
    if not volume > 0.0:
        return "box is singular (zero volume): " + str(rows)
    min_width = volume / max(_norm(bc), _norm(_cross(c, a)), _norm(_cross(a, b)))
    if 2.0 * cutoff > min_width:
        return ("box too small for the cutoff: 2 x cutoff = " + str(2.0 * cutoff) + " exceeds "
                "the smallest box width " + str(min_width) + " (same length unit: the box is "
                + str(int(100.0 * min_width / (2.0 * cutoff))) + " percent of what the cutoff "
                "needs), so pairs would see more than one periodic image. Use a larger box or "
                "a smaller cutoff.")
    return ""


def check_box_holds_cutoff(box: torch.Tensor, cutoff: float) -> None:
    """Raise unless ``box`` (rows a, b, c) holds ``cutoff`` under the minimum-image convention.

    Every model in openmm-geom counts each pair once (its nearest image), which is exact only
    when the cutoff is at most half of the smallest distance between opposite faces of the
    cell: ``width_a = V / |b x c|`` and cyclic.
    """
    problem = box_problem(box, cutoff)
    if problem:
        raise ValueError(problem)


def neighbor_pairs(
    positions: torch.Tensor,
    cutoff: float,
    box: Optional[torch.Tensor] = None,
    n_threads: int = 0,
    search: Optional[NeighborList] = None,
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
        Threads for the pair search; 0 means torch's intra-op thread count
        (:func:`openmm_geom.set_threads` sets it).
    search : vesin_torch.NeighborList, optional
        A persistent half-list searcher built with the same ``cutoff`` (what
        :class:`NeighborPairs` holds): vesin then reuses its buffers between calls, which
        saves 20-30% at 10k-100k atoms. Without it, each call builds its own.

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
    if not bool(torch.isfinite(positions).all()):
        bad: List[int] = torch.nonzero(~torch.isfinite(positions).all(dim=1)).flatten()[:10].tolist()
        raise ValueError("positions contain NaN or infinite values (first bad atoms: "
                         + str(bad) + ")")

    # The per-call check of the cutoff and the box of every model, raised in this frame.
    problem = cutoff_problem(cutoff) if box is None else box_problem(box, cutoff)
    if problem:
        raise ValueError(problem)
    periodic = box is not None
    if box is None:
        cell = torch.zeros(3, 3, dtype=positions.dtype, device=positions.device)
    else:
        cell = box.to(dtype=positions.dtype, device=positions.device)

    if positions.size(0) == 0:  # vesin refuses empty inputs; nothing to pair
        empty = positions.new_zeros((0, 3))
        return torch.zeros(2, 0, dtype=torch.int64, device=positions.device), empty, empty[:, 0]
    # With a caller-owned searcher, views into its buffers (copy=False) stay valid while
    # pair_geometry reads them. A searcher made here must copy: the TorchScript interpreter
    # drops it after its last use, freeing the buffers that views would point into.
    owned = search is None
    if search is None:
        search = NeighborList(cutoff=cutoff, full_list=False, n_threads=n_threads)
    found = search.compute(points=positions.detach(), box=cell.detach(), periodic=periodic,
                           quantities="PS" if periodic else "P", copy=owned)
    shifts = found[1] if periodic else torch.zeros(0, 3, dtype=torch.int32)
    # One native pass gives (2, P) pairs, the nearest-image vectors and the distances, with
    # exact first and second derivatives with respect to positions and box.
    pairs, vectors, distances = pair_geometry(positions, cell if periodic else None, found[0], shifts)
    return pairs, vectors, distances


class NeighborPairs(torch.nn.Module):
    """:func:`neighbor_pairs` with a persistent searcher: what models hold and call each step.

    ``NeighborPairs(cutoff)(positions, box=None) -> (pairs[2,P], vectors[P,3], distances[P])``,
    same units and conventions as :func:`neighbor_pairs`. Scriptable, and it survives
    ``torch.jit.save``/``load`` and openmm-torch's ``TorchForce``.
    """

    def __init__(self, cutoff: float, n_threads: int = 0):
        super().__init__()
        check_cutoff(cutoff)
        self.cutoff = float(cutoff)
        self.n_threads = int(n_threads)
        self.search = NeighborList(cutoff=self.cutoff, full_list=False, n_threads=self.n_threads)

    def forward(self, positions: torch.Tensor,
                box: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return neighbor_pairs(positions, self.cutoff, box, self.n_threads, self.search)
