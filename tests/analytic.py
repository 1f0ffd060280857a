"""Analytic test models written in Angstrom and eV, and independent numpy oracles for them.

The torch models use openmm_geom.ops.neighbor_pairs like every model in the project; the
oracles enumerate periodic images explicitly and differentiate by hand, sharing no code.
"""
import itertools
from typing import Optional

import numpy as np
import torch

from openmm_geom.ops import neighbor_pairs

EV_IN_KJ_PER_MOL = 96.48533212331002  # 1 eV * N_A, kJ/mol (CODATA 2018), written out on purpose


class LJHarmonic(torch.nn.Module):
    """Shifted Lennard-Jones over all pairs within the cutoff plus harmonic bonds (Å, eV)."""

    def __init__(self, bonds, eps=0.0104, sigma=3.4, cutoff=6.0, k_bond=2.0, r0=3.5):
        super().__init__()
        self.eps, self.sigma, self.cutoff, self.k_bond, self.r0 = eps, sigma, cutoff, k_bond, r0
        self.register_buffer("bonds", torch.as_tensor(bonds, dtype=torch.int64).reshape(-1, 2))

    def forward(self, positions: torch.Tensor, box: Optional[torch.Tensor] = None) -> torch.Tensor:
        _, _, d = neighbor_pairs(positions, self.cutoff, box)
        sr6 = (self.sigma / d) ** 6
        sc6 = (self.sigma / self.cutoff) ** 6
        energy = (4 * self.eps * ((sr6 * sr6 - sr6) - (sc6 * sc6 - sc6))).sum()
        v = positions[self.bonds[:, 1]] - positions[self.bonds[:, 0]]
        if box is not None:  # minimum image (rectangular boxes in these tests)
            v = v - torch.round(v @ torch.linalg.inv(box)) @ box
        r = torch.linalg.vector_norm(v, dim=1)
        return energy + (0.5 * self.k_bond * (r - self.r0) ** 2).sum()


class ExternalField(torch.nn.Module):
    """A deliberately translation-dependent potential (Å, eV), to make check_export fail."""

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        return 0.01 * (positions[:, 0] ** 2).sum()


def lj_harmonic_oracle(model: LJHarmonic, positions_nm, box_nm=None):
    """Energy (kJ/mol) and forces (kJ/mol/nm) of ``model`` by explicit image enumeration."""
    x = np.asarray(positions_nm, dtype=np.float64) * 10.0
    box = None if box_nm is None else np.asarray(box_nm, dtype=np.float64) * 10.0
    n = len(x)
    energy, grad = 0.0, np.zeros_like(x)
    images = [np.zeros(3)] if box is None else [
        np.array(s) @ box for s in itertools.product(range(-2, 3), repeat=3)]
    eps, sig, rc = model.eps, model.sigma, model.cutoff
    shift = 4 * eps * ((sig / rc) ** 12 - (sig / rc) ** 6)
    for i in range(n):
        for j in range(i + 1, n):
            for image in images:
                v = x[j] - x[i] + image
                r = np.linalg.norm(v)
                if r < rc:
                    energy += 4 * eps * ((sig / r) ** 12 - (sig / r) ** 6) - shift
                    dedr = 4 * eps * (-12 * sig ** 12 / r ** 13 + 6 * sig ** 6 / r ** 7)
                    grad[j] += dedr * v / r
                    grad[i] -= dedr * v / r
    for a, b in model.bonds.tolist():
        v = x[b] - x[a]
        if box is not None:
            v = v - np.round(v / np.diag(box)) * np.diag(box)
        r = np.linalg.norm(v)
        energy += 0.5 * model.k_bond * (r - model.r0) ** 2
        dedr = model.k_bond * (r - model.r0)
        grad[b] += dedr * v / r
        grad[a] -= dedr * v / r
    # eV -> kJ/mol; d/dÅ -> d/dnm is x10
    return energy * EV_IN_KJ_PER_MOL, -grad * EV_IN_KJ_PER_MOL * 10.0


def jittered_lattice(n_side: int, spacing_nm: float, rng, jitter_nm: float = 0.01):
    grid = np.stack(np.meshgrid(*[np.arange(n_side)] * 3, indexing="ij"), -1).reshape(-1, 3)
    return grid * spacing_nm + rng.normal(0.0, jitter_nm, size=grid.shape)


def chain_bonds(n_atoms: int, every: int = 2):
    """Bonds (i, i+1) for every ``every``-th atom: a few bonded pairs among LJ particles."""
    return [(i, i + 1) for i in range(0, n_atoms - 1, every)]


# -- the exactly solvable 2D double well of the biasing tests (OPES, metadynamics, walkers) ---
# One particle (1 amu) in U(x, y) = B (u^2 - 1)^2 + A u + 0.5 K0 (1 + 0.5 tanh u) y^2 with
# u = x / 0.1 nm, z restrained, in kJ/mol and nm: a 25 kJ/mol barrier in x, basins tilted by
# the linear term and by the y stiffness (entropy), which differs between them. F(x) is exact
# by integrating over y.
DW_B, DW_A, DW_LENGTH, DW_K0, DW_KZ = 25.0, 2.0, 0.1, 2800.0, 5000.0
DOUBLE_WELL = (f"{DW_B}*((x/{DW_LENGTH})^2-1)^2 + {DW_A}*x/{DW_LENGTH} + "
               f"0.5*{DW_K0}*(1+0.5*tanh(x/{DW_LENGTH}))*y^2 + 0.5*{DW_KZ}*z^2")
KT_300 = 0.00831446261815324 * 300.0  # kJ/mol


def double_well_density(x):
    """The double well's marginal Boltzmann density in x at 300 K (unnormalised), on ``x``
    (nm), integrated over y numerically."""
    y = np.linspace(-0.2, 0.2, 801)
    X, Y = np.meshgrid(np.asarray(x, dtype=float), y, indexing="ij")
    u = X / DW_LENGTH
    energy = DW_B * (u ** 2 - 1) ** 2 + DW_A * u + 0.5 * DW_K0 * (1 + 0.5 * np.tanh(u)) * Y ** 2
    return np.trapezoid(np.exp(-energy / KT_300), y, axis=1)


def double_well_delta_f() -> float:
    """Exact F(x > 0) - F(x < 0) of the double well at 300 K, kJ/mol."""
    import math

    x = np.linspace(-0.25, 0.25, 4001)
    p = double_well_density(x)
    return -KT_300 * math.log(np.trapezoid(np.where(x > 0, p, 0), x)
                              / np.trapezoid(np.where(x < 0, p, 0), x))
