"""Child process of ``openmm-geom doctor``: can a TorchForce (optionally inside a
CustomCVForce) create a Context on a platform and give the right energy?

Run as ``python -m openmm_geom._context_probe PLATFORM INSIDE_CV(0|1)``; prints ``ok``.
Separate from the doctor because some version combinations segfault here.
"""
import sys

import openmm
import torch

from openmm_geom.openmm.forces import openmmtorch


class Quadratic(torch.nn.Module):
    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        return (positions ** 2).sum()


def main(platform_name: str, inside_cv: bool) -> None:
    system = openmm.System()
    for _ in range(3):
        system.addParticle(1.0)
    force = openmmtorch().TorchForce(torch.jit.script(Quadratic()))
    expected = 3.0
    if inside_cv:
        cv_force = openmm.CustomCVForce("2*q")
        cv_force.addCollectiveVariable("q", force)
        force, expected = cv_force, 2 * expected
    system.addForce(force)
    context = openmm.Context(system, openmm.VerletIntegrator(0.001),
                             openmm.Platform.getPlatformByName(platform_name))
    context.setPositions([[1, 0, 0], [0, 1, 0], [0, 0, 1]])
    energy = context.getState(getEnergy=True).getPotentialEnergy()._value
    if abs(energy - expected) > 1e-9:
        raise SystemExit(f"wrong energy {energy}, expected {expected}")
    print("ok")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] == "1")
