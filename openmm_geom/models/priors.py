"""Physical prior energies of coarse-grained models, fitted from data, in OpenMM units.

Terms (all energies kJ/mol, lengths nm, angles radians):

- bonds ``U = 1/2 k (r - r0)^2`` and angles ``U = 1/2 k (theta - theta0)^2``: the ½k
  convention of OpenMM's HarmonicBondForce/HarmonicAngleForce, so CGnet's prior (eq. 6a of the
  CGSchNet paper, ``kT / (2 Var[f]) (f - E[f])^2``) is ``k = kT / Var[f]``, ``r0 = E[f]``;
- dihedrals, a Fourier series ``U = sum_h a_h cos(h phi) + b_h sin(h phi)``;
- repulsion ``U = (sigma / r)^c`` on non-bonded pairs (eq. 6b).

:func:`fit_priors` estimates them from mapped coordinates either by CGnet's moment rule or by
Boltzmann inversion with the Jacobian (``p(r) / r^2`` for distances, ``p(theta) / sin(theta)``
for angles). Degenerate data (zero variance, no curvature) raise instead of producing NaNs.
The same energies as native OpenMM forces come from
:func:`openmm_geom.openmm.priors.prior_forces` (which reads :meth:`CGPriors.to_config`), so inside
OpenMM only the neural correction runs in torch.
"""
from __future__ import annotations

import itertools
from typing import List, Sequence

import numpy as np
import torch

from ..units import MOLAR_GAS_CONSTANT_KJ
from .geometry import bond_angles, bond_lengths, dihedral_angles

__all__ = ["CGPriors", "fit_priors", "chain_topology"]


class CGPriors(torch.nn.Module):
    """Sum of prior terms; ``forward(positions (..., n, 3) nm) -> (...)`` kJ/mol."""

    def __init__(self, n_beads: int, *, bonds=None, bond_k=None, bond_r0=None, angles=None,
                 angle_k=None, angle_theta0=None, dihedrals=None, dihedral_cos=None,
                 dihedral_sin=None, repulsions=None, repulsion_sigma=None,
                 repulsion_exponent: float = 6.0):
        super().__init__()
        self.n_beads = int(n_beads)
        self.repulsion_exponent = float(repulsion_exponent)

        def index(values, width):
            t = torch.as_tensor(values if values is not None else np.zeros((0, width)),
                                dtype=torch.int64).reshape(-1, width)
            if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.n_beads):
                raise IndexError(f"prior term indexes a bead outside 0..{self.n_beads - 1}")
            return t

        def values(v, n, cols=None):
            shape = (n,) if cols is None else (n, cols)
            t = torch.as_tensor(np.asarray(v, dtype=np.float64) if v is not None else np.zeros(shape),
                                dtype=torch.float64)
            t = t.reshape(shape)
            if not bool(torch.isfinite(t).all()):
                raise ValueError("prior parameters must be finite")
            return t

        self.register_buffer("bonds", index(bonds, 2))
        self.register_buffer("bond_k", values(bond_k, len(self.bonds)))
        self.register_buffer("bond_r0", values(bond_r0, len(self.bonds)))
        self.register_buffer("angles", index(angles, 3))
        self.register_buffer("angle_k", values(angle_k, len(self.angles)))
        self.register_buffer("angle_theta0", values(angle_theta0, len(self.angles)))
        self.register_buffer("dihedrals", index(dihedrals, 4))
        harmonics = 0 if dihedral_cos is None else np.asarray(dihedral_cos).reshape(len(self.dihedrals), -1).shape[1]
        self.register_buffer("dihedral_cos", values(dihedral_cos, len(self.dihedrals), harmonics))
        self.register_buffer("dihedral_sin", values(dihedral_sin, len(self.dihedrals), harmonics))
        self.register_buffer("harmonic_orders", torch.arange(1, harmonics + 1, dtype=torch.float64))
        self.register_buffer("repulsions", index(repulsions, 2))
        self.register_buffer("repulsion_sigma", values(repulsion_sigma, len(self.repulsions)))
        if bool((self.bond_k < 0).any()) or bool((self.angle_k < 0).any()):
            raise ValueError("force constants must be non-negative")

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        x = positions
        energy = torch.zeros(x.shape[:-2], dtype=x.dtype, device=x.device)
        if self.bonds.size(0) > 0:
            r = bond_lengths(x, self.bonds)
            energy = energy + (0.5 * self.bond_k.to(x.dtype) * (r - self.bond_r0.to(x.dtype)) ** 2).sum(-1)
        if self.angles.size(0) > 0:
            theta = bond_angles(x, self.angles)
            energy = energy + (0.5 * self.angle_k.to(x.dtype)
                               * (theta - self.angle_theta0.to(x.dtype)) ** 2).sum(-1)
        if self.dihedrals.size(0) > 0 and self.harmonic_orders.size(0) > 0:
            phi = dihedral_angles(x, self.dihedrals).unsqueeze(-1) * self.harmonic_orders.to(x.dtype)
            energy = energy + (self.dihedral_cos.to(x.dtype) * torch.cos(phi)
                               + self.dihedral_sin.to(x.dtype) * torch.sin(phi)).sum([-1, -2])
        if self.repulsions.size(0) > 0:
            r = bond_lengths(x, self.repulsions)
            energy = energy + ((self.repulsion_sigma.to(x.dtype) / r) ** self.repulsion_exponent).sum(-1)
        return energy

    def to_config(self) -> dict:
        """JSON-friendly constructor arguments: ``CGPriors.from_config(p.to_config())`` == p."""
        names = ("bonds", "bond_k", "bond_r0", "angles", "angle_k", "angle_theta0", "dihedrals",
                 "dihedral_cos", "dihedral_sin", "repulsions", "repulsion_sigma")
        return {"n_beads": self.n_beads, "repulsion_exponent": self.repulsion_exponent,
                **{name: getattr(self, name).tolist() for name in names}}

    @classmethod
    def from_config(cls, config: dict) -> "CGPriors":
        config = dict(config)
        n_beads = config.pop("n_beads")
        harmonics = len(config["dihedral_cos"][0]) if config.get("dihedral_cos") else 0
        for key, value in list(config.items()):
            if isinstance(value, list) and len(value) == 0:
                config[key] = None
        if harmonics == 0:
            config["dihedral_cos"] = config["dihedral_sin"] = None
            config["dihedrals"] = None
        return cls(n_beads, **config)


def chain_topology(n_beads: int, bonds: Sequence[Sequence[int]]):
    """Angles, dihedrals and non-bonded pairs (3+ bonds apart) implied by a bond list."""
    neighbours: List[set] = [set() for _ in range(n_beads)]
    for i, j in bonds:
        neighbours[i].add(j)
        neighbours[j].add(i)
    angles = sorted({(i, j, k) if i < k else (k, j, i)
                     for j in range(n_beads) for i, k in itertools.combinations(sorted(neighbours[j]), 2)})
    dihedrals = set()
    for j, k in bonds:
        for i in neighbours[j] - {k}:
            for m in neighbours[k] - {j}:
                if i != m:
                    quad = (i, j, k, m)
                    dihedrals.add(min(quad, quad[::-1]))
    # graph distances by breadth-first search
    far = []
    for a in range(n_beads):
        depth = {a: 0}
        frontier = [a]
        while frontier:
            nxt = []
            for u in frontier:
                for v in neighbours[u]:
                    if v not in depth:
                        depth[v] = depth[u] + 1
                        nxt.append(v)
            frontier = nxt
        far.extend((a, b) for b in range(a + 1, n_beads) if depth.get(b, 10 ** 9) >= 3)
    return angles, sorted(dihedrals), far


def _harmonic_from_histogram(values: np.ndarray, kT: float, jacobian, what: str):
    """Boltzmann inversion U = -kT ln(p / J), least-squares parabola around the minimum."""
    counts, edges = np.histogram(values, bins=60)
    centers = 0.5 * (edges[1:] + edges[:-1])
    keep = counts > 0
    u = -kT * np.log(counts[keep] / jacobian(centers[keep]))
    a, b, _ = np.polyfit(centers[keep], u, 2, w=np.sqrt(counts[keep]))
    if not a > 0:
        raise ValueError(f"Boltzmann inversion of {what} gives no positive curvature; "
                         "use method='cgnet' or check the data")
    return 2 * a, -b / (2 * a)


def fit_priors(positions, temperature_K: float, *, bonds: Sequence[Sequence[int]],
               angles=None, dihedrals=None, repulsions=None, method: str = "cgnet",
               dihedral_harmonics: int = 0, repulsion_exponent: float = 6.0,
               repulsion_scale: float = 0.9) -> CGPriors:
    """Fit priors to mapped coordinates.

    Parameters
    ----------
    positions : (frames, n_beads, 3) nm
    temperature_K : the temperature of the reference data
    bonds : bead pairs with harmonic bond priors
    angles, dihedrals, repulsions : default to those implied by ``bonds``
        (:func:`chain_topology`); pass ``[]`` to switch a term off
    method : ``"cgnet"`` (k = kT/Var, centre = mean) or ``"boltzmann"`` (inversion with the
        r^2 / sin(theta) Jacobian and a parabola fit)
    dihedral_harmonics : Fourier orders of the dihedral prior (0 = no dihedral prior), fitted
        by unweighted least squares to -kT ln p(phi) on 60 bins, an empty bin counting as half
        a sample (so angles the data never visit get a high prior energy)
    repulsion_exponent, repulsion_scale : c, and sigma = scale x the smallest distance of each
        pair in the data
    """
    x = np.asarray(positions, dtype=np.float64)
    if x.ndim != 3 or x.shape[-1] != 3 or len(x) < 2:
        raise ValueError(f"positions must have shape (frames >= 2, beads, 3), got {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("positions contain NaN or infinite values")
    if method not in ("cgnet", "boltzmann"):
        raise ValueError(f"method must be 'cgnet' or 'boltzmann', got {method!r}")
    n = x.shape[1]
    kT = MOLAR_GAS_CONSTANT_KJ * float(temperature_K)
    bonds = [tuple(map(int, b)) for b in bonds]
    implied_angles, implied_dihedrals, implied_far = chain_topology(n, bonds)
    angles = implied_angles if angles is None else [tuple(a) for a in angles]
    dihedrals = (implied_dihedrals if dihedral_harmonics else []) if dihedrals is None else [tuple(d) for d in dihedrals]
    repulsions = implied_far if repulsions is None else [tuple(r) for r in repulsions]
    t = torch.from_numpy(x)

    def harmonic(features: np.ndarray, jacobian, what: str):
        ks, centers = [], []
        for column, name in zip(features.T, what):
            variance = column.var()
            if not variance > 1e-12:
                raise ValueError(f"{name}: the data show no fluctuation, cannot fit a prior")
            if method == "cgnet":
                ks.append(kT / variance)
                centers.append(column.mean())
            else:
                k, c = _harmonic_from_histogram(column, kT, jacobian, name)
                ks.append(k)
                centers.append(c)
        return ks, centers

    bond_k = bond_r0 = angle_k = angle_theta0 = None
    if bonds:
        r = bond_lengths(t, torch.tensor(bonds)).numpy()
        bond_k, bond_r0 = harmonic(r, lambda c: c ** 2, [f"bond {b}" for b in bonds])
    if angles:
        theta = bond_angles(t, torch.tensor(angles)).numpy()
        angle_k, angle_theta0 = harmonic(theta, np.sin, [f"angle {a}" for a in angles])
    dihedral_cos = dihedral_sin = None
    if dihedrals and dihedral_harmonics:
        phi = dihedral_angles(t, torch.tensor(dihedrals)).numpy()
        dihedral_cos, dihedral_sin = [], []
        orders = np.arange(1, dihedral_harmonics + 1)
        for column in phi.T:
            counts, edges = np.histogram(column, bins=60, range=(-np.pi, np.pi))
            centers = 0.5 * (edges[1:] + edges[:-1])
            # Every bin enters with equal weight, an empty one as half a sample: fitting only
            # the visited bins (weighted by counts) leaves the series free where the data never
            # go, and on capped alanine it dug a 260 kJ/mol well at phi = +1 rad that the CG
            # simulation then found (the network cannot correct where it has no data).
            u = -kT * np.log(np.maximum(counts, 0.5) / counts.sum())
            basis = np.concatenate([np.ones((len(centers), 1)), np.cos(np.outer(centers, orders)),
                                    np.sin(np.outer(centers, orders))], axis=1)
            coef, *_ = np.linalg.lstsq(basis, u, rcond=None)
            dihedral_cos.append(coef[1:1 + dihedral_harmonics])
            dihedral_sin.append(coef[1 + dihedral_harmonics:])
    repulsion_sigma = None
    if repulsions:
        d = bond_lengths(t, torch.tensor(repulsions)).numpy()
        repulsion_sigma = repulsion_scale * d.min(axis=0)
    return CGPriors(n, bonds=bonds, bond_k=bond_k, bond_r0=bond_r0, angles=angles or None,
                    angle_k=angle_k, angle_theta0=angle_theta0, dihedrals=dihedrals or None,
                    dihedral_cos=dihedral_cos, dihedral_sin=dihedral_sin,
                    repulsions=repulsions or None, repulsion_sigma=repulsion_sigma,
                    repulsion_exponent=repulsion_exponent)
