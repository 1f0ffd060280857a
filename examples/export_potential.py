"""Export a potential written in Angstrom and eV and run it in OpenMM with a periodic box.

The model is a Lennard-Jones argon liquid (any scriptable torch module works the same way):
it is exported to a self-describing TorchScript file, validated inside OpenMM Contexts, and
turned into an OpenMM System by ``create_system`` (one openmm-torch TorchForce) for Langevin
dynamics at 120 K.

    python examples/export_potential.py --steps 2000 --out out/argon
"""
import argparse
from pathlib import Path
from typing import Optional

import numpy as np
import openmm
import openmm.app as app
import openmm.unit as unit
import torch

from openmm_geom.export import export_model
from openmm_geom.openmm import check_export, create_system
from openmm_geom.ops import NeighborPairs


class LennardJones(torch.nn.Module):
    """Shifted Lennard-Jones pair potential; positions and box in Angstrom, energy in eV."""

    def __init__(self, epsilon: float = 0.0104, sigma: float = 3.40, cutoff: float = 8.0):
        super().__init__()
        self.epsilon, self.sigma, self.cutoff = epsilon, sigma, cutoff
        self.pairs = NeighborPairs(cutoff)  # a persistent neighbour search, called every step
        self.hyperparameters = {"epsilon_eV": epsilon, "sigma_A": sigma, "cutoff_A": cutoff}

    def forward(self, positions: torch.Tensor, box: Optional[torch.Tensor] = None) -> torch.Tensor:
        _, _, r = self.pairs(positions, box)
        lj = (self.sigma / r) ** 6
        shift = (self.sigma / self.cutoff) ** 6
        return 4 * self.epsilon * ((lj * lj - lj) - (shift * shift - shift)).sum()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--out", type=Path, default=Path("out/argon"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    # 216 argon atoms on a jittered lattice at liquid density (~21 atoms/nm^3).
    rng = np.random.default_rng(0)
    n_side, spacing = 6, 0.3615  # nm
    grid = np.stack(np.meshgrid(*[np.arange(n_side)] * 3, indexing="ij"), -1).reshape(-1, 3)
    positions = grid * spacing + rng.normal(0, 0.005, grid.shape)
    box = np.eye(3) * n_side * spacing

    model = LennardJones()
    exported = export_model(model, args.out / "argon_lj.pt", length_unit="angstrom",
                            energy_unit="eV", periodic=True, example_positions=positions,
                            example_box=box, cutoff=model.cutoff,
                            atom_types=["Ar"] * len(positions), masses=[39.948] * len(positions))
    report = check_export(exported, eager=model, nve_steps=200)
    print(report.format())
    if not report.passed:
        raise SystemExit("the export failed validation")

    topology = app.Topology()
    chain = topology.addChain()
    for _ in range(len(positions)):
        topology.addAtom("Ar", app.element.argon, topology.addResidue("AR", chain))
    topology.setPeriodicBoxVectors([openmm.Vec3(*row) for row in box] * unit.nanometer)
    system = create_system(exported, topology)  # checks atoms, elements, box vs cutoff
    integrator = openmm.LangevinMiddleIntegrator(120 * unit.kelvin, 1 / unit.picosecond,
                                                 5 * unit.femtosecond)
    simulation = app.Simulation(topology, system, integrator,
                                openmm.Platform.getPlatformByName("CPU"))
    simulation.context.setPositions(positions)
    simulation.minimizeEnergy(maxIterations=100)
    simulation.context.setVelocitiesToTemperature(120 * unit.kelvin, 1)
    simulation.reporters.append(app.StateDataReporter(
        str(args.out / "argon.csv"), max(args.steps // 20, 1), step=True, potentialEnergy=True,
        temperature=True, speed=True))
    simulation.step(args.steps)
    state = simulation.context.getState(getEnergy=True)
    print(f"potential energy after {args.steps} steps: {state.getPotentialEnergy()}")


if __name__ == "__main__":
    main()
