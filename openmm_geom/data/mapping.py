"""Coarse-grained mappings: which beads, where they sit, which forces they feel.

A mapping is a pair of linear maps from N atoms to n beads: the coordinate map Xi (rows sum
to 1: a slice keeps one atom per bead, a centre-of-mass/geometry map averages a group) and
the force map Xi_F that gives the mapped forces used in force matching (eq. 3 of the
CGSchNet paper). For non-overlapping groups the force map sums the atomic forces of each
group, which is the consistent choice for slices and for centre-of-mass/geometry maps alike.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np

__all__ = ["CGMapping", "slice_mapping", "group_mapping", "alanine_backbone_cb_mapping",
           "ca_mapping", "optimized_force_map", "AMINO_ACIDS"]

AMINO_ACIDS = ("ALA", "ARG", "ASN", "ASP", "CYS", "GLN", "GLU", "GLY", "HIS", "ILE", "LEU",
               "LYS", "MET", "PHE", "PRO", "SER", "THR", "TRP", "TYR", "VAL")


@dataclasses.dataclass
class CGMapping:
    """Coordinate map, force map and bead types of a coarse-grained representation.

    Attributes
    ----------
    coordinate_map : (n_beads, n_atoms) array, rows sum to 1
    force_map : (n_beads, n_atoms) array
    bead_types : list of int, one per bead (embedding indices of the model)
    bead_names : list of str
    groups : list of lists of atom indices, one per bead
    """

    coordinate_map: np.ndarray
    force_map: np.ndarray
    bead_types: list
    bead_names: list
    groups: list

    def __post_init__(self):
        n_beads, n_atoms = self.coordinate_map.shape
        if self.force_map.shape != (n_beads, n_atoms):
            raise ValueError("coordinate and force maps must have the same shape")
        if len(self.bead_types) != n_beads or len(self.bead_names) != n_beads:
            raise ValueError(f"{n_beads} beads but {len(self.bead_types)} types and "
                             f"{len(self.bead_names)} names")
        if not np.allclose(self.coordinate_map.sum(axis=1), 1.0):
            raise ValueError("each row of the coordinate map must sum to 1")

    @property
    def n_beads(self) -> int:
        return self.coordinate_map.shape[0]

    @property
    def n_atoms(self) -> int:
        return self.coordinate_map.shape[1]

    def _check_atoms(self, array, what: str) -> np.ndarray:
        array = np.asarray(array)
        if array.ndim != 3 or array.shape[-1] != 3:
            raise ValueError(f"{what} must have shape (frames, atoms, 3), got {array.shape}")
        if array.shape[1] != self.n_atoms:
            raise ValueError(f"{what} have {array.shape[1]} atoms but the mapping expects "
                             f"{self.n_atoms}")
        return array

    def map_positions(self, positions) -> np.ndarray:
        """(frames, atoms, 3) -> (frames, beads, 3), same units."""
        x = self._check_atoms(positions, "positions")
        return np.einsum("ba,fac->fbc", self.coordinate_map, x).astype(x.dtype)

    def map_forces(self, forces) -> np.ndarray:
        """(frames, atoms, 3) -> (frames, beads, 3) mapped forces, same units."""
        f = self._check_atoms(forces, "forces")
        return np.einsum("ba,fac->fbc", self.force_map, f).astype(f.dtype)

    def to_dict(self) -> dict:
        """JSON-friendly description (stored in model files)."""
        return {"n_atoms": self.n_atoms, "groups": [list(map(int, g)) for g in self.groups],
                "weights": [self.coordinate_map[b, g].tolist() for b, g in enumerate(self.groups)],
                "force_map": self.force_map.tolist(),
                "bead_types": [int(t) for t in self.bead_types],
                "bead_names": list(self.bead_names)}

    @classmethod
    def from_dict(cls, data: dict) -> "CGMapping":
        n_beads, n_atoms = len(data["groups"]), int(data["n_atoms"])
        xi = np.zeros((n_beads, n_atoms))
        xi_f = np.zeros((n_beads, n_atoms))
        for b, (group, weights) in enumerate(zip(data["groups"], data["weights"])):
            xi[b, group] = weights
            xi_f[b, group] = 1.0
        if "force_map" in data:
            xi_f = np.asarray(data["force_map"], dtype=float)
        return cls(xi, xi_f, list(data["bead_types"]), list(data["bead_names"]),
                   [list(g) for g in data["groups"]])


def group_mapping(n_atoms: int, groups: Sequence[Sequence[int]], *, bead_types: Sequence[int],
                  bead_names: Optional[Sequence[str]] = None, masses=None) -> CGMapping:
    """Beads at the centre of mass (``masses`` given) or geometry of non-overlapping groups."""
    groups = [list(map(int, g)) for g in groups]
    seen = set()
    for b, group in enumerate(groups):
        if not group:
            raise ValueError(f"bead {b} has no atoms")
        for atom in group:
            if not 0 <= atom < n_atoms:
                raise IndexError(f"bead {b}: atom index {atom} out of range for {n_atoms} atoms")
            if atom in seen:
                raise ValueError(f"atom {atom} belongs to more than one bead")
            seen.add(atom)
    xi = np.zeros((len(groups), n_atoms))
    xi_f = np.zeros((len(groups), n_atoms))
    for b, group in enumerate(groups):
        w = np.ones(len(group)) if masses is None else np.asarray(masses, float)[group]
        if not np.all(w > 0):
            raise ValueError(f"bead {b}: masses must be positive")
        xi[b, group] = w / w.sum()
        xi_f[b, group] = 1.0
    names = list(bead_names) if bead_names is not None else [f"B{b}" for b in range(len(groups))]
    return CGMapping(xi, xi_f, [int(t) for t in bead_types], names, groups)


def slice_mapping(n_atoms: int, atom_indices: Sequence[int], *, bead_types: Sequence[int],
                  bead_names: Optional[Sequence[str]] = None) -> CGMapping:
    """Keep the listed atoms as beads (the CGSchNet paper's mapping)."""
    return group_mapping(n_atoms, [[int(a)] for a in atom_indices], bead_types=bead_types,
                         bead_names=bead_names)


def _find(topology, residue_index: int, name: str) -> int:
    for atom in topology.atoms():
        if atom.residue.index == residue_index and atom.name == name:
            return atom.index
    raise ValueError(f"no atom {name!r} in residue {residue_index} of the topology")


def alanine_backbone_cb_mapping(topology) -> CGMapping:
    """Capped alanine's six beads C-[N-CA-C]-N + CB (ACE C; ALA N, CA, C; NME N; ALA CB).

    Bead types are atomic numbers, as in the paper. phi = beads (0,1,2,3), psi = (1,2,3,4).
    """
    residues = list(topology.residues())
    ala = next((r.index for r in residues if r.name == "ALA"), None)
    if ala is None or ala == 0 or ala + 1 >= len(residues):
        raise ValueError("expected a capped alanine (ACE-ALA-NME) topology")
    picks = [(ala - 1, "C"), (ala, "N"), (ala, "CA"), (ala, "C"), (ala + 1, "N"), (ala, "CB")]
    indices = [_find(topology, r, n) for r, n in picks]
    atoms = list(topology.atoms())
    return slice_mapping(topology.getNumAtoms(), indices,
                         bead_types=[atoms[i].element.atomic_number for i in indices],
                         bead_names=["C(ACE)", "N", "CA", "C", "N(NME)", "CB"])


def ca_mapping(topology) -> CGMapping:
    """One bead per residue at its CA; bead type = amino-acid index in ``AMINO_ACIDS``."""
    indices, types, names = [], [], []
    for residue in topology.residues():
        ca = [a.index for a in residue.atoms() if a.name == "CA"]
        if not ca:
            continue
        if residue.name not in AMINO_ACIDS:
            raise ValueError(f"residue {residue.name}{residue.index} is not a standard amino acid")
        indices.append(ca[0])
        types.append(AMINO_ACIDS.index(residue.name))
        names.append(f"{residue.name}{residue.index + 1}")
    if not indices:
        raise ValueError("the topology has no CA atoms")
    return slice_mapping(topology.getNumAtoms(), indices, bead_types=types, bead_names=names)


def optimized_force_map(mapping: CGMapping, forces, ridge: float = 1e-8) -> CGMapping:
    """The constant force map of minimal variance that still gives the exact mean force.

    For a linear coordinate map D (beads x atoms), any constant force map B with
    ``B D^T = I`` yields mapped forces whose conditional mean is the CG mean force (the
    potential of mean force's negative gradient), so force matching converges to the same
    model; the variance, however, differs enormously: the plain slice map keeps the stiff
    bond forces between a kept heavy atom and its hydrogens, which cancel when the hydrogens'
    forces are aggregated too. Minimising the second moment ``E|sum_i b_Ii f_i|^2`` under the
    constraint gives, per bead, ``B = (C^-1 D^T (D C^-1 D^T)^-1)^T`` with ``C`` the atomic
    force covariance (Kramer et al., JCTC 2023, "statistically optimal force aggregation").

    Parameters
    ----------
    mapping : the coordinate map to keep
    forces : (frames, atoms, 3) all-atom forces of the training data
    ridge : relative Tikhonov regularisation of ``C``
    """
    f = np.asarray(forces, dtype=np.float64)
    if f.ndim != 3 or f.shape[1:] != (mapping.n_atoms, 3):
        raise ValueError(f"forces must have shape (frames, {mapping.n_atoms}, 3), got {f.shape}")
    if not np.isfinite(f).all():
        raise ValueError("forces contain NaN or infinite values")
    covariance = np.einsum("mac,mbc->ab", f, f) / (3 * len(f))
    covariance += ridge * np.trace(covariance) / len(covariance) * np.eye(len(covariance))
    d = mapping.coordinate_map
    c_inv_dt = np.linalg.solve(covariance, d.T)
    force_map = (c_inv_dt @ np.linalg.inv(d @ c_inv_dt)).T
    if not np.allclose(force_map @ d.T, np.eye(mapping.n_beads), atol=1e-8):
        raise ValueError("could not satisfy the force-map consistency condition B D^T = I")
    return dataclasses.replace(mapping, force_map=force_map)
