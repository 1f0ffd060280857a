"""Child process of ``openmm-geom doctor``: does a force holding a TorchScript module create a
Context on a platform and give the right energy?

Run as ``python -m openmm_geom._context_probe PLATFORM KIND`` with KIND one of
``torchforce``, ``customcv`` (a TorchForce inside a CustomCVForce) or ``torchcv`` (our
TorchCVForce); prints ``ok``. A separate process because some version combinations segfault.
"""
import io
import sys

import openmm
import torch

from openmm_geom.openmm.forces import openmmtorch


class Quadratic(torch.nn.Module):
    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        return (positions ** 2).sum()


class TwoCVs(torch.nn.Module):
    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        return torch.stack([(positions ** 2).sum(), positions[:, 0].sum()])


def main(platform_name: str, kind: str) -> None:
    system = openmm.System()
    for _ in range(3):
        system.addParticle(1.0)
    expected = 3.0
    if kind == "torchcv":
        from openmm_geom.openmm import TorchCVForce

        buffer = io.BytesIO()
        torch.jit.save(torch.jit.script(TwoCVs()), buffer)
        force = TorchCVForce(torch.jit.load(io.BytesIO(buffer.getvalue())), "2*q + r",
                             cv_names=["q", "r"])
        expected = 2 * 3.0 + 1.0
    else:
        force = openmmtorch().TorchForce(torch.jit.script(Quadratic()))
    if kind == "customcv":
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
    main(sys.argv[1], sys.argv[2])
