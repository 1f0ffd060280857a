"""Random, smooth CV modules for TorchCVForce tests (scriptable, periodic or not)."""
from typing import Optional

import openmm
import openmm.unit as unit
import torch

from openmm_geom.ops import neighbor_pairs


class RandomPairCVs(torch.nn.Module):
    """k smooth CVs of the pair distances: radial features under a smooth cutoff, a tanh layer
    and a linear read-out with random weights (nm in, arbitrary units out)."""

    def __init__(self, k: int, seed: int, cutoff: float = 0.6, features: int = 8):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.cutoff = cutoff
        self.register_buffer("centers", torch.linspace(0.1, cutoff, features, dtype=torch.float64))
        self.hidden = torch.nn.Parameter(torch.randn(features, 16, generator=g, dtype=torch.float64) * 0.3)
        self.readout = torch.nn.Parameter(torch.randn(16, k, generator=g, dtype=torch.float64))

    def forward(self, positions: torch.Tensor, box: Optional[torch.Tensor] = None) -> torch.Tensor:
        _, _, d = neighbor_pairs(positions, self.cutoff, box)
        envelope = (1.0 - d / self.cutoff) ** 3
        radial = torch.exp(-((d[:, None] - self.centers[None, :]) / 0.08) ** 2) * envelope[:, None]
        return torch.tanh(radial.sum(0) @ self.hidden) @ self.readout


class CountingCVs(torch.nn.Module):
    """CV 0: sum of squared coordinates; CV 1: how many times forward has run."""

    def __init__(self):
        super().__init__()
        self.register_buffer("calls", torch.zeros((), dtype=torch.float64))

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        self.calls += 1.0
        return torch.stack([(positions ** 2).sum(), self.calls.clone()])


class NaNCV(torch.nn.Module):
    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(-(positions ** 2).sum()).reshape(1)


class Coordinates(torch.nn.Module):
    """CVs = the x, y, z coordinates of atom 0 (nm)."""

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        return positions[0]


def particle_context(forces, n, box, platform="Reference"):
    """A Context of ``n`` 12-amu particles holding ``forces`` (periodic when ``box`` is given)."""
    system = openmm.System()
    for _ in range(n):
        system.addParticle(12.0)
    if box is not None:
        system.setDefaultPeriodicBoxVectors(*[openmm.Vec3(*row) for row in box])
    for force in forces:
        system.addForce(force)
    return openmm.Context(system, openmm.VerletIntegrator(0.001),
                          openmm.Platform.getPlatformByName(platform))


class DensePairCVs(torch.nn.Module):
    """k smooth CVs of all pair distances (minimum image in a triclinic box when given): no
    neighbour list, no branch on values, so it can be traced for an AOTInductor package."""

    def __init__(self, k: int, seed: int, features: int = 8):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("centers", torch.linspace(0.1, 0.6, features, dtype=torch.float64))
        self.hidden = torch.nn.Parameter(torch.randn(features, 16, generator=g, dtype=torch.float64) * 0.3)
        self.readout = torch.nn.Parameter(torch.randn(16, k, generator=g, dtype=torch.float64))

    def forward(self, positions: torch.Tensor, box: Optional[torch.Tensor] = None) -> torch.Tensor:
        n = positions.size(0)
        pairs = torch.triu_indices(n, n, 1)
        i, j = pairs[0], pairs[1]
        delta = positions[j] - positions[i]
        if box is not None:
            fractional = delta @ torch.linalg.inv(box)
            delta = (fractional - torch.round(fractional)) @ box
        d = torch.sqrt((delta ** 2).sum(-1))
        radial = torch.exp(-((d[:, None] - self.centers[None, :]) / 0.08) ** 2) * torch.exp(-d)[:, None]
        return torch.tanh(radial.sum(0) @ self.hidden) @ self.readout


def context_state(context, positions):
    """Set ``positions`` (nm); (energy kJ/mol, forces (N, 3) kJ/mol/nm, parameter derivatives)."""
    context.setPositions(positions)
    state = context.getState(getEnergy=True, getForces=True, getParameterDerivatives=True)
    kj = unit.kilojoule_per_mole
    return (state.getPotentialEnergy().value_in_unit(kj),
            state.getForces(asNumpy=True).value_in_unit(kj / unit.nanometer),
            dict(state.getEnergyParameterDerivatives()))


def central_difference_forces(context, positions, components, h=1e-6):
    """-dE/dx by central differences of the Context's energy, one per (atom, axis) component."""
    forces = []
    for atom, axis in components:
        energies = []
        for sign in (1, -1):
            p = positions.copy()
            p[atom, axis] += sign * h
            energies.append(context_state(context, p)[0])
        forces.append(-(energies[0] - energies[1]) / (2 * h))
    return forces
