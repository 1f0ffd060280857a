"""Energy+force training on real OpenMM data: loss, schedule, offsets, learning, resume."""
import dataclasses
import math
from types import SimpleNamespace

import numpy as np
import openmm
import openmm.unit as unit
import pytest
import torch

from openmm_geom.models.atomistic import fit_energy_offsets
from openmm_geom.models.attention import AttentionPotential
from openmm_geom.models.potentials import build_potential
from openmm_geom.training.checkpoints import load_potential, save_potential
from openmm_geom.errors import ModelFileError
from openmm_geom.training.energy_force import (EnergyForceConfig, energy_force_loss,
                                               evaluate_potential, one_cycle_lambda,
                                               train_potential)


def lennard_jones_frames(n_frames=48, n_atoms=27, box_nm=1.2, seed=0):
    """A periodic two-element Lennard-Jones liquid run with OpenMM (positions, energies, forces)."""
    system = openmm.System()
    nb = openmm.NonbondedForce()
    nb.setNonbondedMethod(openmm.NonbondedForce.CutoffPeriodic)
    nb.setCutoffDistance(0.45)
    numbers = []
    for i in range(n_atoms):
        heavy = i % 3 == 0
        system.addParticle(40.0 if heavy else 20.0)
        nb.addParticle(0.0, 0.34 if heavy else 0.30, 0.9 if heavy else 0.6)
        numbers.append(18 if heavy else 10)
    system.addForce(nb)
    system.setDefaultPeriodicBoxVectors(*[openmm.Vec3(*row) for row in np.eye(3) * box_nm])
    integrator = openmm.LangevinMiddleIntegrator(300, 5, 0.004)
    integrator.setRandomNumberSeed(seed + 1)
    context = openmm.Context(system, integrator, openmm.Platform.getPlatformByName("Reference"))
    grid = np.stack(np.meshgrid(*[np.arange(3)] * 3, indexing="ij"), -1).reshape(-1, 3)
    context.setPositions(grid[:n_atoms] * box_nm / 3 + 0.05)
    openmm.LocalEnergyMinimizer.minimize(context)
    context.setVelocitiesToTemperature(300, seed + 1)
    integrator.step(200)
    positions, energies, forces = [], [], []
    for _ in range(n_frames):
        integrator.step(25)
        state = context.getState(getPositions=True, getEnergy=True, getForces=True)
        positions.append(state.getPositions(asNumpy=True).value_in_unit(unit.nanometer))
        energies.append(state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole))
        forces.append(state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer))
    boxes = np.tile(np.eye(3) * box_nm, (n_frames, 1, 1))
    return SimpleNamespace(positions=np.asarray(positions), energies=np.asarray(energies),
                           forces=np.asarray(forces), boxes=boxes, atomic_numbers=numbers)


@pytest.fixture(scope="module")
def liquid():
    return lennard_jones_frames()


def subset(data, index):
    return SimpleNamespace(positions=data.positions[index], energies=data.energies[index],
                           forces=data.forces[index], boxes=data.boxes[index])


def test_logcosh_is_quadratic_small_and_linear_large():
    config = EnergyForceConfig(loss="logcosh", logcosh_alpha=1.0, rho=0.0)
    zeros = torch.zeros(1)
    small = energy_force_loss(zeros, zeros, torch.full((1, 1, 3), 1e-3), torch.zeros(1, 1, 3), 1.0, 1.0, config)
    large = energy_force_loss(zeros, zeros, torch.full((1, 1, 3), 50.0), torch.zeros(1, 1, 3), 1.0, 1.0, config)
    assert float(small) == pytest.approx(0.5e-6, rel=1e-3)  # log cosh x ~ x^2 / 2
    assert float(large) == pytest.approx(50.0 - math.log(2.0), rel=1e-6)  # ~ |x| - log 2
    huge = energy_force_loss(zeros, zeros, torch.full((1, 1, 3), 1e5), torch.zeros(1, 1, 3), 1.0, 1.0, config)
    assert math.isfinite(float(huge))


def test_rho_weights_energy_against_forces():
    e_err = energy_force_loss(torch.ones(2), torch.zeros(2), torch.zeros(2, 1, 3), torch.zeros(2, 1, 3),
                              1.0, 1.0, EnergyForceConfig(loss="mse", rho=0.25))
    assert float(e_err) == pytest.approx(0.25)


def test_one_cycle_schedule_shape():
    factor = one_cycle_lambda(100, 1e-4, 1e-3, 1e-6)
    lr = np.array([factor(s) * 1e-3 for s in range(100)])
    assert lr[0] == pytest.approx(1e-4) and lr.max() == pytest.approx(1e-3)
    assert int(np.argmax(lr)) == 45
    assert lr[-1] < 2e-5 and np.all(np.diff(lr[45:]) <= 1e-18)


def test_energy_offsets_by_least_squares():
    rng = np.random.default_rng(0)
    counts = rng.integers(1, 6, size=(40, 3))
    truth = np.array([-10.0, -2.5, 4.0])
    energies = counts @ truth + rng.normal(0, 1e-6, 40)
    assert np.allclose(fit_energy_offsets(energies, counts), truth, atol=1e-5)


def test_training_learns_real_forces_and_resumes(liquid, tmp_path):
    train_set, val_set = subset(liquid, slice(0, 36)), subset(liquid, slice(40, 48))
    config = EnergyForceConfig(epochs=8, batch_size=4, lr_min=3e-3, lr_max=1e-2, lr_final=1e-3,
                               rho=0.01, patience=10, seed=0)
    model = AttentionPotential(liquid.atomic_numbers, cutoff=0.45, features=16, layers=2,
                               heads=2, seed=0)
    baseline = float(np.abs(val_set.forces).mean())  # predicting zero force
    checkpoint = tmp_path / "checkpoint.pt"
    result = train_potential(model, train_set, val_set, config, checkpoint=checkpoint,
                             progress=False, data_hash="lj")
    assert result.best_validation["force_mae"] < 0.7 * baseline
    assert len(result.history["epoch"]) == 8
    # the restored state is the best epoch's, not the last one's
    again = evaluate_potential(model, val_set.positions.astype(np.float32), val_set.energies,
                               val_set.forces, val_set.boxes)
    assert again["force_mae"] == pytest.approx(result.best_validation["force_mae"], rel=1e-5)
    # a finished checkpoint resumes to the same best state without training
    fresh = AttentionPotential(liquid.atomic_numbers, cutoff=0.45, features=16, layers=2,
                               heads=2, seed=5)
    resumed = train_potential(fresh, train_set, val_set, config, checkpoint=checkpoint,
                              progress=False, data_hash="lj")
    assert resumed.best_epoch == result.best_epoch
    for key, value in model.state_dict().items():
        assert torch.equal(value, fresh.state_dict()[key]), key
    # other settings or data: refused, nothing overwritten
    with pytest.raises(ValueError, match="another training run"):
        train_potential(fresh, train_set, val_set, dataclasses.replace(config, rho=0.5),
                        checkpoint=checkpoint, progress=False, data_hash="lj")
    with pytest.raises(ValueError, match="another training run"):
        train_potential(fresh, train_set, val_set, config, checkpoint=checkpoint,
                        progress=False, data_hash="other")


def test_interrupted_training_resumes_bit_identically(liquid, tmp_path):
    train_set, val_set = subset(liquid, slice(0, 24)), subset(liquid, slice(40, 44))
    config = EnergyForceConfig(epochs=3, batch_size=6, patience=10, seed=1)

    def make():
        return AttentionPotential(liquid.atomic_numbers, cutoff=0.45, features=8, layers=1,
                                  heads=2, n_rbf=6, seed=2)

    straight = make()
    train_potential(straight, train_set, val_set, config, progress=False)

    class Stop(Exception):
        pass

    def stop_after_first(epoch, history):
        if epoch == 0:
            raise Stop

    interrupted = make()
    with pytest.raises(Stop):
        train_potential(interrupted, train_set, val_set, config, checkpoint=tmp_path / "c.pt",
                        progress=False, callback=stop_after_first)
    resumed = make()
    train_potential(resumed, train_set, val_set, config, checkpoint=tmp_path / "c.pt", progress=False)
    for key, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key


def test_potential_checkpoint_round_trip_and_bad_files(liquid, tmp_path):
    model = build_potential("attention", liquid.atomic_numbers, cutoff=0.45, features=8,
                            layers=1, heads=2, n_rbf=6)
    model.set_energy_offsets({18: -1.5, 10: -0.5})
    path = save_potential(model, tmp_path / "model.pt", note="x")
    loaded, extra = load_potential(path)
    x = torch.as_tensor(liquid.positions[:2], dtype=torch.float32)
    b = torch.as_tensor(liquid.boxes[:2], dtype=torch.float32)
    assert torch.equal(model.energies(x, b), loaded.energies(x, b)) and extra == {"note": "x"}
    with pytest.raises(FileNotFoundError):
        load_potential(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelFileError, match="junk.pt is not a potential checkpoint"):
        load_potential(tmp_path / "junk.pt")
    torch.save({"format": "something else"}, tmp_path / "other.pt")
    with pytest.raises(ModelFileError, match="not an openmm-geom 'potential' file"):
        load_potential(tmp_path / "other.pt")
    with pytest.raises(ValueError, match="unknown architecture"):
        build_potential("mace", liquid.atomic_numbers)
