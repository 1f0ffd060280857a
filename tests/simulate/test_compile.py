"""Compiled models (torch.compile, inductor) give the eager numbers.

One compilation of a tiny model per test: 20 s to over a minute each on this loaded 2-core
machine when inductor's on-disk cache is cold (measured 161 s for both), so they are marked slow;
the non-slow test checks that a compiled PythonForce serializes without compiling anything. Tolerances were set before the first run: float32 rounding
(1e-5 relative to the largest force) for the CGSchNet ensemble, 1e-9 relative for the float64
PythonForce potential (inductor may reorder sums).
"""
import pickle

import numpy as np
import openmm
import openmm.unit as unit
import pytest
import torch

from openmm_geom.models.cgschnet import CGSchNet
from openmm_geom.openmm import python_force
from openmm_geom.openmm.forces import TorchComputation
from openmm_geom.simulate import BatchedLangevin, EnsembleForces

KJ_NM = unit.kilojoule_per_mole / unit.nanometer


class SoftPairs(torch.nn.Module):
    """A smooth pair potential in its own units (Angstrom, kcal/mol): sum of eps (s/r)^6 + a r^2."""

    def __init__(self):
        super().__init__()
        self.register_buffer("sigma", torch.tensor(3.0, dtype=torch.float64))
        self.register_buffer("epsilon", torch.tensor(0.5, dtype=torch.float64))

    def forward(self, positions, box=None):
        i, j = torch.triu_indices(positions.shape[0], positions.shape[0], 1)
        r = (positions[i] - positions[j]).norm(dim=-1)
        return (self.epsilon * (self.sigma / r) ** 6 + 0.01 * r ** 2).sum()


def _energy_forces(force, positions):
    system = openmm.System()
    for _ in range(len(positions)):
        system.addParticle(12.0)
    system.addForce(force)
    context = openmm.Context(system, openmm.VerletIntegrator(0.001),
                             openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(positions)
    state = context.getState(getEnergy=True, getForces=True)
    return (state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole),
            state.getForces(asNumpy=True).value_in_unit(KJ_NM))


def test_compiled_python_force_serializes_without_compiling():
    positions = np.array([[0.0, 0.0, 0.0], [0.35, 0.0, 0.0], [0.0, 0.4, 0.0]])
    force = python_force(SoftPairs(), compile=True, length_unit="angstrom",
                         energy_unit="kcal/mol", periodic=False, example_positions=positions)
    copy = openmm.XmlSerializer.deserialize(openmm.XmlSerializer.serialize(force))
    assert isinstance(copy, openmm.PythonForce)
    computation = pickle.loads(pickle.dumps(TorchComputation(SoftPairs(), False, None, compile=True)))
    assert computation.compile is True


@pytest.mark.slow
def test_compiled_python_force_equals_eager(capfd):
    rng = np.random.default_rng(3)
    positions = np.array([[0.0, 0.0, 0.0], [0.35, 0.0, 0.0], [0.0, 0.4, 0.0],
                          [0.3, 0.3, 0.3]]) + rng.normal(0, 0.02, (4, 3))
    kwargs = dict(length_unit="angstrom", energy_unit="kcal/mol", periodic=False,
                  example_positions=positions)
    eager = _energy_forces(python_force(SoftPairs(), **kwargs), positions)
    force = python_force(SoftPairs(), compile=True, **kwargs)
    compiled = _energy_forces(force, positions)
    assert "compiling the PythonForce model (first call)... done in" in capfd.readouterr().err
    assert np.abs(eager[1]).max() > 1.0  # forces that matter
    assert compiled[0] == pytest.approx(eager[0], rel=1e-9)
    np.testing.assert_allclose(compiled[1], eager[1], rtol=0, atol=1e-9 * np.abs(eager[1]).max())


def _tiny_ensemble():
    return CGSchNet([0, 1, 0, 1], None, n_types=2, features=8, filters=8, interactions=1,
                    n_rbf=8, output_hidden=8, cutoff=1.0, members=3, dtype=torch.float32)


@pytest.mark.slow
def test_compiled_ensemble_forces_equal_eager(capfd):
    model = _tiny_ensemble()
    generator = torch.Generator().manual_seed(0)
    x = torch.tensor([[0.0, 0.0, 0.0], [0.38, 0.0, 0.0], [0.5, 0.35, 0.0], [0.8, 0.4, 0.2]],
                     dtype=torch.float64) + 0.03 * torch.randn(5, 4, 3, generator=generator,
                                                               dtype=torch.float64)
    eager = EnsembleForces(model)(x)
    compiled_fn = EnsembleForces(model, compile=True)
    compiled = compiled_fn(x)
    assert "compiling the force function (first call)... done in" in capfd.readouterr().err
    scale = eager[0].abs().max().item()
    assert scale > 1e-3
    for got, want in zip(compiled, eager):
        assert got.dtype == want.dtype and got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5 * max(scale, want.abs().max().item()))
    # and the compiled function drives the simulator: a few steps, the same trajectory as eager
    masses = [12.0, 14.0, 12.0, 14.0]
    runs = []
    for force_fn in (EnsembleForces(model), compiled_fn):
        sim = BatchedLangevin(force_fn, masses, 300.0, friction=1.0, timestep=0.002, seed=4)
        sim.run(x, 3, save_interval=3)
        runs.append(sim.positions)
    torch.testing.assert_close(runs[1], runs[0], rtol=0, atol=1e-6)
