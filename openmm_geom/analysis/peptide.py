"""Backbone dihedrals of a dipeptide (capped alanine): which atoms, their values, the basins.

The one place for the phi/psi conventions that the CV workflows, the biased runs and their
analysis share: the quadruplets from a topology, phi/psi of trajectories, the shift that makes
the beta basin contiguous and the cores of the two phi basins used to count transitions.
Angles in radians in ``[-pi, pi)`` (before :func:`shifted_phi`); positions in nm.
"""
from __future__ import annotations

import math

import numpy as np

from ..data.trajectories import as_mdtraj_topology
from ..models.geometry import backbone_quadruplets
from .free_energy import dihedrals

__all__ = ["PHI_NEGATIVE_CORE", "PHI_POSITIVE_CORE", "PHI_SHIFT_ABOVE", "phi_psi_quadruplets",
           "backbone_dihedrals", "shifted_phi"]

# Core regions of the two phi basins of capped alanine (radians, after shifting phi > 2.2 by
# -2 pi so that the beta basin near +-pi is contiguous): C7eq/beta/PII and C7ax/alpha_L.
PHI_NEGATIVE_CORE = -1.0
PHI_POSITIVE_CORE = 0.4
PHI_SHIFT_ABOVE = 2.2


def phi_psi_quadruplets(topology) -> np.ndarray:
    """(2, 4) atom indices of phi and psi of a dipeptide (one residue with both), e.g. capped
    alanine; ``topology`` is a PDB path, an mdtraj or an OpenMM topology."""
    quads = np.asarray(backbone_quadruplets(as_mdtraj_topology(topology).to_openmm()))
    quads = quads.reshape(-1, 4)
    if len(quads) != 2:
        raise ValueError("the phi/psi analysis needs exactly one residue with phi and psi "
                         f"(capped alanine); found {len(quads) // 2}")
    return quads


def backbone_dihedrals(positions: np.ndarray, topology) -> np.ndarray:
    """(T, 2) phi, psi (radians) of a dipeptide's central residue; positions (T, N, 3)."""
    return dihedrals(positions, phi_psi_quadruplets(topology))


def shifted_phi(phi: np.ndarray) -> np.ndarray:
    """phi with the beta basin made contiguous: values above 2.2 rad move down by 2 pi."""
    phi = np.asarray(phi, dtype=np.float64)
    return np.where(phi > PHI_SHIFT_ABOVE, phi - 2 * math.pi, phi)
