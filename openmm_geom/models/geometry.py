"""Geometric collective variables written as scriptable torch modules."""
import math
from typing import List, Sequence

import torch

__all__ = ["Dihedrals", "dihedral_angles", "bond_lengths", "bond_angles", "backbone_quadruplets"]


def _gather(positions: torch.Tensor, index: torch.Tensor, k: int) -> torch.Tensor:
    """positions (..., n, 3), index (m, k) -> (..., m, k, 3)."""
    shape = positions.shape[:-2] + (index.size(0), k, 3)
    return positions.index_select(-2, index.reshape(-1)).reshape(shape)


def bond_lengths(positions: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    """Distances of atom pairs: positions (..., n, 3), pairs (m, 2) -> (..., m)."""
    p = _gather(positions, pairs, 2)
    return torch.linalg.vector_norm(p[..., 1, :] - p[..., 0, :], dim=-1)


def bond_angles(positions: torch.Tensor, triplets: torch.Tensor) -> torch.Tensor:
    """Angles i-j-k in radians: positions (..., n, 3), triplets (m, 3) -> (..., m)."""
    p = _gather(positions, triplets, 3)
    u = p[..., 0, :] - p[..., 1, :]
    v = p[..., 2, :] - p[..., 1, :]
    # atan2(|u x v|, u.v) is accurate near 0 and pi, unlike acos.
    return torch.atan2(torch.linalg.vector_norm(torch.linalg.cross(u, v), dim=-1), (u * v).sum(-1))


def dihedral_angles(positions: torch.Tensor, quadruplets: torch.Tensor) -> torch.Tensor:
    """Dihedral angles (radians, in (-pi, pi]) of atom quadruplets, IUPAC sign convention.

    Parameters
    ----------
    positions : Tensor (..., N, 3)
    quadruplets : Tensor (k, 4) int64, atom indices i-j-k-l

    Returns
    -------
    Tensor (..., k), smooth except where three consecutive atoms are collinear.
    """
    p = _gather(positions, quadruplets, 4)
    b1 = p[..., 1, :] - p[..., 0, :]
    b2 = p[..., 2, :] - p[..., 1, :]
    b3 = p[..., 3, :] - p[..., 2, :]
    n2 = torch.linalg.cross(b2, b3)
    # atan2(|b2| b1.(b2 x b3), (b1 x b2).(b2 x b3)): well conditioned at every angle.
    y = torch.linalg.vector_norm(b2, dim=-1) * (b1 * n2).sum(-1)
    x = (torch.linalg.cross(b1, b2) * n2).sum(-1)
    return torch.atan2(y, x)


class Dihedrals(torch.nn.Module):
    """CV module: positions (N, 3) -> the (k,) dihedral angles of fixed quadruplets, radians.

    Lengths do not matter to angles, so the module works in any length unit.
    """

    def __init__(self, quadruplets: Sequence[Sequence[int]]):
        super().__init__()
        quads = torch.as_tensor(quadruplets, dtype=torch.int64).reshape(-1, 4)
        if quads.numel() == 0:
            raise ValueError("at least one quadruplet is needed")
        if bool((quads < 0).any()):
            raise ValueError("atom indices must be non-negative")
        self.register_buffer("quadruplets", quads)
        # checked against the atom count in forward without reading the buffer's values, so
        # that the check is no data-dependent branch (torch.export / AOTInductor trace it)
        self.max_atom = int(quads.max())
        self.hyperparameters = {"quadruplets": quads.tolist()}
        # angles in [-pi, pi): export_model records the period, check_export compares on it
        self.cv_periods: List[float] = [2.0 * math.pi] * int(quads.shape[0])

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        if self.max_atom >= positions.size(0):
            raise ValueError("a dihedral quadruplet indexes atom "
                             + str(self.max_atom) + " but there are only "
                             + str(positions.size(0)) + " atoms")
        return dihedral_angles(positions, self.quadruplets)


def backbone_quadruplets(topology) -> List[List[int]]:
    """(phi, psi) quadruplets of every residue of an OpenMM topology that has both."""
    atoms = {(a.residue.index, a.name): a.index for a in topology.atoms()}
    quads = []
    for res in topology.residues():
        r = res.index
        phi = [(r - 1, "C"), (r, "N"), (r, "CA"), (r, "C")]
        psi = [(r, "N"), (r, "CA"), (r, "C"), (r + 1, "N")]
        if all(k in atoms for k in phi + psi):
            quads.append([atoms[k] for k in phi])
            quads.append([atoms[k] for k in psi])
    return quads
