"""Run a model that cannot be compiled with TorchScript through openmm.PythonForce.

Some models call numpy, scipy or other Python code inside forward and cannot be scripted.
``python_force`` applies the same unit/box contract as the TorchScript bridge, so the numbers
are the same; it is slower because Python runs at every step.

    python examples/python_force_bridge.py --steps 500
"""
import argparse

import numpy as np
import openmm
import openmm.unit as unit
import torch

from openmm_geom.openmm import python_force


class SpringsToCentroid(torch.nn.Module):
    """Harmonic springs (kcal/mol/A^2) from each atom to the centroid; the stiffness is chosen
    with numpy at run time, which TorchScript cannot compile."""

    def forward(self, positions):
        centred = positions - positions.mean(dim=0)
        stiffness = float(np.clip(np.sqrt(positions.shape[0]), 1.0, 10.0))  # not scriptable
        return 0.5 * stiffness * (centred ** 2).sum()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    positions = rng.normal(0.0, 0.02, size=(16, 3))  # nm
    force = python_force(SpringsToCentroid(), length_unit="angstrom", energy_unit="kcal/mol",
                         periodic=False, example_positions=positions)
    system = openmm.System()
    for _ in range(len(positions)):
        system.addParticle(12.0)
    system.addForce(force)
    integrator = openmm.LangevinMiddleIntegrator(300, 5.0, 0.001)
    integrator.setRandomNumberSeed(1)
    context = openmm.Context(system, integrator, openmm.Platform.getPlatformByName("CPU"))
    context.setPositions(positions)
    context.setVelocitiesToTemperature(300, 1)
    energies = []
    for _ in range(args.steps // 10):
        integrator.step(10)
        energy = context.getState(getEnergy=True).getPotentialEnergy()
        energies.append(energy.value_in_unit(unit.kilojoule_per_mole))
    # Equipartition: <E> = (3N - 3)/2 kT for the springs (the centroid mode is free).
    kT = (unit.MOLAR_GAS_CONSTANT_R * 300 * unit.kelvin).value_in_unit(unit.kilojoule_per_mole)
    expected = (3 * len(positions) - 3) / 2 * kT
    print(f"mean potential energy over the second half: {np.mean(energies[len(energies) // 2:]):.1f}"
          f" kJ/mol; equipartition: {expected:.1f} kJ/mol")


if __name__ == "__main__":
    main()
