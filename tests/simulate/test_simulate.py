"""Batched Langevin simulator (openmm_geom.simulate): sampling, integrators, files, failures.

Statistical tests compare against exact results (equipartition, Boltzmann populations from a
numerically integrated exp(-U/kT)); integrator tests compare against straightforward reference
implementations written here from the formulas (CGSchNet paper, eqs. 12-13), drawing the same
random numbers from the same seeded generator. kT uses the gas constant written out, not the
package's constant.
"""
import inspect
import math
import signal
import subprocess
import sys

import h5py
import numpy as np
import openmm.unit as unit
import pytest
import torch

from openmm_geom.errors import (CheckpointError, CheckpointMismatchError, FileFormatError,
                                SimulationBlowUp)
from openmm_geom.simulate import (BatchedLangevin, TrajectoryWriter, benchmark_integrator,
                                  read_trajectory)

R_KJ = 8.31446261815324e-3  # kJ/(mol K): 1.380649e-23 J/K * 6.02214076e23 / 1000


# -- analytic force functions ---------------------------------------------------------------------
def harmonic(k):
    """U = k/2 |x|^2 per bead; ``k`` a number or a tensor broadcastable to (B, n, 1)."""
    def force_fn(x):
        return -k * x, 0.5 * (k * x * x).sum((1, 2)), None
    return force_fn


def double_well(a, b, c):
    """Separable tilted double well, U = sum over every coordinate of a (q^2 - b^2)^2 + c q."""
    def force_fn(x):
        d = x * x - b * b
        return (x * d).mul_(-4.0 * a).sub_(c), (d * d * a + c * x).sum((1, 2)), None
    return force_fn


def p_right_exact(a, b, c, temperature):
    """Boltzmann probability of q > 0 for one coordinate of :func:`double_well`."""
    q = np.linspace(-0.5, 0.5, 400001)
    w = np.exp(-(a * (q * q - b * b) ** 2 + c * q) / (R_KJ * temperature))
    return w[q > 0].sum() / w.sum()


def anharmonic_with_spread(x):
    """Harmonic + quartic trap; spread: a deterministic per-replica number (stands in for an
    ensemble's force spread)."""
    r2 = (x * x).sum(-1, keepdim=True)
    forces = -(300.0 + 4000.0 * r2) * x
    energies = (150.0 * r2 + 1000.0 * r2 * r2).sum((1, 2))
    return forces, energies, forces.abs().mean((1, 2))


# -- sampling -------------------------------------------------------------------------------------
def test_baoab_harmonic_equipartition_with_per_replica_temperatures():
    """<x^2> = kT/k and <v^2> = kT/m per replica temperature and bead mass, within 2%."""
    temperatures = np.array([150.0, 300.0, 600.0])
    b, k = 3000, 500.0
    masses = np.array([12.0, 40.0])
    t_rep = np.tile(temperatures, b // 3)  # replica i at temperatures[i % 3]
    rng = np.random.default_rng(7)
    # start from the exact Boltzmann distribution: every snapshot is an equilibrium sample
    x0 = rng.normal(size=(b, 2, 3)) * np.sqrt(R_KJ * t_rep / k)[:, None, None]
    sim = BatchedLangevin(harmonic(k), masses, torch.as_tensor(t_rep), friction=5.0,
                          timestep=0.002, seed=11)
    xs, vs = [], []
    x, v = x0, None
    for _ in range(50):  # 50 snapshots 0.4 ps apart (~2 relaxation times of x^2 and v^2)
        sim.run(x, 200, save_interval=200, velocities=v, progress=False)
        x, v = sim.positions, sim.velocities
        xs.append(x.numpy())
        vs.append(v.numpy())
    xs, vs = np.stack(xs), np.stack(vs)  # (snapshots, B, n, 3)
    for i, temperature in enumerate(temperatures):
        kT = R_KJ * temperature
        for bead, m in enumerate(masses):
            var_x = np.mean(xs[:, i::3, bead] ** 2)
            var_v = np.mean(vs[:, i::3, bead] ** 2)
            assert var_x / (kT / k) == pytest.approx(1.0, abs=0.02), (temperature, m)
            assert var_v / (kT / m) == pytest.approx(1.0, abs=0.02), (temperature, m)


def test_maxwell_boltzmann_initial_velocities():
    sim = BatchedLangevin(harmonic(100.0), [5.0, 50.0], torch.tensor([200.0, 800.0]).repeat(5000),
                          seed=2)
    sim.run(torch.zeros(10000, 2, 3), 0, save_interval=1, progress=False)
    v = sim.velocities.numpy()
    for i, temperature in enumerate((200.0, 800.0)):
        for bead, m in enumerate((5.0, 50.0)):
            assert np.mean(v[i::2, bead] ** 2) / (R_KJ * temperature / m) == pytest.approx(
                1.0, abs=0.03)
    assert abs(v.mean()) < 0.02 * v.std()


def test_baoab_double_well_populations_match_boltzmann(tmp_path):
    """All replicas start in the left well; after relaxing, the fraction of coordinates in the
    right well matches the Boltzmann ratio from numerical integration of exp(-U/kT)."""
    a, b, c, temperature = 5e4, 0.1, 12.5, 300.0  # barrier 2 kT, wells ~1 kT apart
    n_rep = 2000
    x0 = torch.full((n_rep, 1, 3), -b, dtype=torch.float64)
    sim = BatchedLangevin(double_well(a, b, c), [12.0], temperature, friction=5.0, seed=3)
    with TrajectoryWriter(tmp_path / "dw.h5", n_rep, 1) as writer:
        sim.run(x0, 15000, save_interval=250, writer=writer, progress=False)
    traj = read_trajectory(tmp_path / "dw.h5")
    assert traj.time[-1] == pytest.approx(30.0)
    right = (traj.positions[traj.time > 10.0] > 0).mean()  # discard the first 10 ps
    exact = p_right_exact(a, b, c, temperature)
    assert 0.25 < exact < 0.35  # a test that can fail: not 0 or 1/2
    assert right == pytest.approx(exact, abs=0.012)
    assert (traj.positions[0] > 0).mean() < 0.5 * exact  # it did start out of equilibrium


def test_overdamped_stationary_distribution_at_150_and_500_kelvin(tmp_path):
    """Overdamped dynamics at kT != 1 (150 K and 500 K replicas in one run): double-well
    populations and harmonic variance kT/k."""
    a, b, c = 3e4, 0.1, 10.0
    n_rep = 2000
    temperatures = torch.tensor([150.0, 500.0]).repeat_interleave(n_rep // 2)
    x0 = torch.full((n_rep, 1, 3), -b, dtype=torch.float64)
    sim = BatchedLangevin(double_well(a, b, c), [12.0], temperatures, friction=20.0,
                          timestep=0.002, integrator="overdamped", seed=4)
    with TrajectoryWriter(tmp_path / "od.h5", n_rep, 1) as writer:
        sim.run(x0, 17500, save_interval=250, writer=writer, progress=False)
    traj = read_trajectory(tmp_path / "od.h5")
    keep = traj.time > 15.0
    for half, temperature in enumerate((150.0, 500.0)):
        replicas = slice(half * n_rep // 2, (half + 1) * n_rep // 2)
        right = (traj.positions[keep][:, replicas] > 0).mean()
        assert right == pytest.approx(p_right_exact(a, b, c, temperature), abs=0.012), temperature

    k = 500.0
    x0 = np.random.default_rng(5).normal(size=(n_rep, 1, 3)) * 0.05
    sim = BatchedLangevin(harmonic(k), [12.0], temperatures, friction=20.0, timestep=0.002,
                          integrator="overdamped", seed=6)
    samples = []
    x = x0
    for _ in range(40):  # snapshots 0.6 ps apart; relaxation time m gamma / k = 0.48 ps
        sim.run(x, 300, save_interval=300, progress=False)
        x = sim.positions
        samples.append(x.numpy())
    samples = np.stack(samples[5:])
    for half, temperature in enumerate((150.0, 500.0)):
        var = np.mean(samples[:, half * n_rep // 2:(half + 1) * n_rep // 2] ** 2)
        assert var / (R_KJ * temperature / k) == pytest.approx(1.0, abs=0.02), temperature


# -- integrators against the formulas -------------------------------------------------------------
def _reference_run(force_fn, x0, masses, temperature, friction, dt, seed, n_steps, integrator):
    """Textbook BAOAB / Euler-Maruyama, out of place, with the simulator's random stream:
    Maxwell-Boltzmann velocities (float64) first, then one float32 Gaussian per coordinate and
    step."""
    gen = torch.Generator().manual_seed(seed)
    m = masses[None, :, None]
    kT = R_KJ * temperature[:, None, None]
    x = x0.clone()
    f = force_fn(x)[0]
    if integrator == "baoab":
        v = torch.empty(x.shape, dtype=torch.float64).normal_(generator=gen) * torch.sqrt(kT / m)
        c1 = math.exp(-friction * dt)
        for _ in range(n_steps):
            v = v + 0.5 * dt * f / m
            x = x + 0.5 * dt * v
            if friction > 0:
                xi = torch.empty(x.shape, dtype=torch.float32).normal_(generator=gen).double()
                v = c1 * v + torch.sqrt((1 - c1 * c1) * kT / m) * xi
            x = x + 0.5 * dt * v
            f = force_fn(x)[0]
            v = v + 0.5 * dt * f / m
        return x, v
    diffusion = kT / (m * friction)
    for _ in range(n_steps):
        xi = torch.empty(x.shape, dtype=torch.float32).normal_(generator=gen).double()
        x = x + f * diffusion / kT * dt + torch.sqrt(2 * diffusion * dt) * xi
        f = force_fn(x)[0]
    return x, None


@pytest.mark.parametrize("integrator,friction", [("baoab", 2.0), ("baoab", 0.0),
                                                 ("overdamped", 30.0)])
def test_integrators_match_reference_implementations(integrator, friction):
    masses = torch.tensor([12.0, 1.0, 100.0], dtype=torch.float64)
    temperature = torch.tensor([150.0, 300.0, 500.0, 1000.0], dtype=torch.float64)
    x0 = 0.05 * torch.randn(4, 3, 3, generator=torch.Generator().manual_seed(0),
                            dtype=torch.float64)
    sim = BatchedLangevin(anharmonic_with_spread, masses, temperature, friction=friction,
                          timestep=0.003, integrator=integrator, seed=9)
    sim.run(x0, 60, save_interval=7, progress=False)
    x_ref, v_ref = _reference_run(anharmonic_with_spread, x0, masses, temperature, friction,
                                  0.003, 9, 60, integrator)
    torch.testing.assert_close(sim.positions, x_ref, rtol=1e-11, atol=1e-13)
    if v_ref is not None:
        torch.testing.assert_close(sim.velocities, v_ref, rtol=1e-11, atol=1e-12)
    torch.testing.assert_close(sim.energies, anharmonic_with_spread(x_ref)[1], rtol=1e-11,
                               atol=1e-11)


def test_autograd_force_fn_matches_analytic_forces(tmp_path):
    """The usual model case: forces from autograd of an energy (outputs carrying a graph)."""
    def energy(x):
        r2 = (x * x).sum(-1)
        return (150.0 * r2 + 1000.0 * r2 * r2).sum(-1)

    def autograd_force_fn(x):
        x = x.detach().requires_grad_(True)
        e = energy(x)
        (grad,) = torch.autograd.grad(e.sum(), x)
        return -grad, e, None

    x0 = 0.05 * torch.randn(4, 3, 3, generator=torch.Generator().manual_seed(0),
                            dtype=torch.float64)
    results = []
    for fn in (autograd_force_fn, anharmonic_with_spread):
        sim = BatchedLangevin(fn, [12.0, 1.0, 100.0], 300.0, seed=9)
        with TrajectoryWriter(tmp_path / f"{fn.__name__}.h5", 4, 3) as writer:
            sim.run(x0, 200, save_interval=50, writer=writer, progress=False)
        assert not sim.energies.requires_grad
        results.append(sim.positions)
    torch.testing.assert_close(results[0], results[1], rtol=1e-10, atol=1e-12)


def test_zero_friction_conserves_energy_to_second_order():
    """friction = 0 is velocity Verlet: no drift, fluctuations of H shrinking as dt^2."""
    n_rep, n = 64, 4
    masses = torch.tensor([12.0, 14.0, 16.0, 30.0])
    x0 = -0.1 + 0.02 * torch.randn(n_rep, n, 3, generator=torch.Generator().manual_seed(0),
                                   dtype=torch.float64)
    kinetic_scale = 1.5 * n * R_KJ * 300.0
    deviation = {}
    for dt in (0.002, 0.004):
        sim = BatchedLangevin(double_well(5e4, 0.1, 12.5), masses, 300.0, friction=0.0,
                              timestep=dt, seed=1)
        chunk = int(round(10.0 / dt)) // 40
        x, v, totals = x0, None, []
        for _ in range(40):  # 10 ps
            sim.run(x, chunk, save_interval=chunk, velocities=v, progress=False)
            x, v = sim.positions, sim.velocities
            totals.append((sim.energies + sim.kinetic_energy()).numpy())
        totals = np.array(totals)
        deviation[dt] = np.abs(totals - totals[0]).max() / kinetic_scale
        drift = np.abs((totals[-1] - totals[0]).mean()) / kinetic_scale
        assert drift < 1e-4, dt
    assert deviation[0.002] < 2e-3
    assert 3.0 < deviation[0.004] / deviation[0.002] < 5.5  # second order: ~4


def test_zero_friction_uses_no_random_numbers():
    x0 = 0.05 * torch.randn(3, 2, 3, generator=torch.Generator().manual_seed(1),
                            dtype=torch.float64)
    v0 = torch.randn(3, 2, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    runs = []
    for seed in (1, 2):
        sim = BatchedLangevin(anharmonic_with_spread, [10.0, 20.0], 300.0, friction=0.0,
                              seed=seed)
        sim.run(x0, 100, save_interval=100, velocities=v0, progress=False)
        runs.append(sim.positions)
    assert torch.equal(runs[0], runs[1])


# -- reproducibility, checkpoints -----------------------------------------------------------------
@pytest.mark.parametrize("integrator,dtype", [("baoab", torch.float64), ("baoab", torch.float32),
                                              ("overdamped", torch.float64)])
def test_seeded_runs_are_bit_identical(integrator, dtype):
    x0 = 0.05 * torch.randn(16, 3, 3, generator=torch.Generator().manual_seed(0))

    def run(seed):
        sim = BatchedLangevin(anharmonic_with_spread, [12.0, 12.0, 30.0], 300.0, friction=5.0,
                              integrator=integrator, seed=seed, dtype=dtype)
        sim.run(x0, 300, save_interval=100, progress=False)
        return sim

    first, second, other = run(5), run(5), run(6)
    assert first.positions.dtype == dtype
    assert torch.equal(first.positions, second.positions)
    assert torch.equal(first.energies, second.energies)
    if integrator == "baoab":
        assert torch.equal(first.velocities, second.velocities)
    assert not torch.equal(first.positions, other.positions)


class Crash(Exception):
    pass


def crashing(force_fn, after_calls):
    calls = [0]

    def wrapped(x):
        calls[0] += 1
        if calls[0] > after_calls:
            raise Crash(f"simulated crash at force call {calls[0]}")
        return force_fn(x)
    return wrapped


def _file_contents(path):
    traj = read_trajectory(path)
    with h5py.File(path, "r") as f:
        dataset_attrs = {name: dict(f[name].attrs) for name in f}
    return traj, dataset_attrs


@pytest.mark.parametrize("integrator", ["baoab", "overdamped"])
def test_resume_from_checkpoint_is_bit_identical(tmp_path, integrator):
    x0 = 0.05 * torch.randn(6, 3, 3, generator=torch.Generator().manual_seed(3),
                            dtype=torch.float64)
    temperature = torch.tensor([200.0, 250.0, 300.0, 350.0, 400.0, 450.0])
    settings = dict(masses=[12.0, 14.0, 16.0], temperature=temperature, friction=10.0,
                    timestep=0.002, integrator=integrator, seed=21)
    run_args = dict(save_interval=50, checkpoint_interval=200, progress=False)

    # uninterrupted
    sim = BatchedLangevin(anharmonic_with_spread, **settings)
    with TrajectoryWriter(tmp_path / "full.h5", 6, 3, spread=True, chunk_frames=4) as writer:
        full = sim.run(x0, 1000, writer=writer, checkpoint=tmp_path / "full.ckpt", **run_args)
    assert full.steps == 1000 and full.frames_written == 20 and full.resumed_from_step is None

    # interrupted during step 730 (call 1 is the initial force evaluation)
    crashed = BatchedLangevin(crashing(anharmonic_with_spread, 731), **settings)
    with TrajectoryWriter(tmp_path / "part.h5", 6, 3, spread=True, chunk_frames=4) as writer:
        with pytest.raises(Crash):
            crashed.run(x0, 1000, writer=writer, checkpoint=tmp_path / "part.ckpt", **run_args)
    assert read_trajectory(tmp_path / "part.h5").step[-1] == 700  # frames past the checkpoint
    assert torch.load(tmp_path / "part.ckpt", weights_only=True)["step"] == 600

    # a new process resumes: same settings, the trajectory continued with mode="a"
    resumed = BatchedLangevin(anharmonic_with_spread, **settings)
    with TrajectoryWriter(tmp_path / "part.h5", 6, 3, spread=True, mode="a") as writer:
        summary = resumed.run(x0, 1000, writer=writer, checkpoint=tmp_path / "part.ckpt",
                              **run_args)
    assert summary.resumed_from_step == 600 and summary.steps == 400
    assert summary.frames_written == 8

    assert torch.equal(resumed.positions, sim.positions)
    assert torch.equal(resumed.forces, sim.forces)
    if integrator == "baoab":
        assert torch.equal(resumed.velocities, sim.velocities)
    (a, a_attrs), (b, b_attrs) = _file_contents(tmp_path / "full.h5"), \
        _file_contents(tmp_path / "part.h5")
    for name in ("positions", "time", "step", "energies", "spread"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert a.step.tolist() == list(range(50, 1001, 50))
    assert a_attrs == b_attrs and a.units == b.units
    assert a.attributes.keys() == b.attributes.keys()
    for key in a.attributes:
        assert np.array_equal(a.attributes[key], b.attributes[key]), key

    # running the finished job again does nothing; a longer n_steps extends it
    again = BatchedLangevin(anharmonic_with_spread, **settings)
    assert again.run(x0, 1000, checkpoint=tmp_path / "full.ckpt", **run_args).steps == 0
    assert torch.equal(again.positions, sim.positions)
    longer = BatchedLangevin(anharmonic_with_spread, **settings)
    longer.run(x0, 1100, checkpoint=tmp_path / "full.ckpt", **run_args)
    straight = BatchedLangevin(anharmonic_with_spread, **settings)
    straight.run(x0, 1100, save_interval=50, progress=False)
    assert torch.equal(longer.positions, straight.positions)


KILLED_RUN = """
import os, signal, torch
from openmm_geom.simulate import BatchedLangevin, TrajectoryWriter
torch.set_num_threads({threads})

{force_source}

calls = [0]


def dying(x):  # the process is killed (no cleanup at all) during step 990
    calls[0] += 1
    if calls[0] > 991:
        os.kill(os.getpid(), signal.SIGKILL)
    return anharmonic_with_spread(x)


x0 = 0.05 * torch.randn(6, 3, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
sim = BatchedLangevin(dying, [12.0, 14.0, 16.0], 300.0, friction=5.0, seed=8)
writer = TrajectoryWriter({traj!r}, 6, 3, spread=True, chunk_frames=4)
sim.run(x0, 1000, save_interval=50, writer=writer, checkpoint={ckpt!r}, checkpoint_interval=350,
        progress=False)
"""


def test_resume_after_sigkill(tmp_path):
    """A process killed with SIGKILL (buffered frames lost, file never closed) resumes from its
    last checkpoint (step 700) although the file holds frames up to step 900."""
    traj, ckpt = tmp_path / "k.h5", tmp_path / "k.ckpt"
    script = tmp_path / "killed.py"
    script.write_text(KILLED_RUN.format(threads=torch.get_num_threads(), traj=str(traj),
                                        ckpt=str(ckpt),
                                        force_source=inspect.getsource(anharmonic_with_spread)))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    assert read_trajectory(traj).step[-1] == 900
    assert torch.load(ckpt, weights_only=True)["step"] == 700

    x0 = 0.05 * torch.randn(6, 3, 3, generator=torch.Generator().manual_seed(3),
                            dtype=torch.float64)
    settings = dict(masses=[12.0, 14.0, 16.0], temperature=300.0, friction=5.0, seed=8)
    resumed = BatchedLangevin(anharmonic_with_spread, **settings)
    with TrajectoryWriter(traj, 6, 3, spread=True, mode="a") as writer:
        summary = resumed.run(x0, 1000, save_interval=50, writer=writer, checkpoint=ckpt,
                              checkpoint_interval=350, progress=False)
    assert summary.resumed_from_step == 700
    reference = BatchedLangevin(anharmonic_with_spread, **settings)
    with TrajectoryWriter(tmp_path / "ref.h5", 6, 3, spread=True) as writer:
        reference.run(x0, 1000, save_interval=50, writer=writer, progress=False)
    assert torch.equal(resumed.positions, reference.positions)
    a, b = read_trajectory(tmp_path / "ref.h5"), read_trajectory(traj)
    for name in ("positions", "time", "step", "energies", "spread"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name


def test_mismatched_or_corrupt_checkpoints_are_refused(tmp_path):
    x0 = 0.05 * torch.randn(4, 2, 3, generator=torch.Generator().manual_seed(3),
                            dtype=torch.float64)
    ckpt = tmp_path / "run.ckpt"
    BatchedLangevin(anharmonic_with_spread, [12.0, 12.0], 300.0, seed=1).run(
        x0, 100, save_interval=50, checkpoint=ckpt, progress=False)

    with pytest.raises(CheckpointMismatchError, match="temperature"):
        BatchedLangevin(anharmonic_with_spread, [12.0, 12.0], 310.0, seed=1).run(
            x0, 200, save_interval=50, checkpoint=ckpt, progress=False)
    with pytest.raises(CheckpointMismatchError, match="timestep"):
        BatchedLangevin(anharmonic_with_spread, [12.0, 12.0], 300.0, timestep=0.001,
                        seed=1).run(x0, 200, save_interval=50, checkpoint=ckpt, progress=False)
    with pytest.raises(CheckpointMismatchError, match="x0"):
        BatchedLangevin(anharmonic_with_spread, [12.0, 12.0], 300.0, seed=1).run(
            x0 + 0.01, 200, save_interval=50, checkpoint=ckpt, progress=False)
    with pytest.raises(CheckpointMismatchError, match="save_interval"):
        BatchedLangevin(anharmonic_with_spread, [12.0, 12.0], 300.0, seed=1).run(
            x0, 200, save_interval=25, checkpoint=ckpt, progress=False)
    with pytest.raises(ValueError, match="beyond n_steps"):
        BatchedLangevin(anharmonic_with_spread, [12.0, 12.0], 300.0, seed=1).run(
            x0, 50, save_interval=50, checkpoint=ckpt, progress=False)

    # a trajectory that does not hold the checkpoint's frames (opened with mode="w")
    with TrajectoryWriter(tmp_path / "t.h5", 4, 2) as writer:
        with pytest.raises(ValueError, match="mode='a'"):
            BatchedLangevin(anharmonic_with_spread, [12.0, 12.0], 300.0, seed=1).run(
                x0, 200, save_interval=50, writer=writer, checkpoint=ckpt, progress=False)
    # a fresh run refuses to mix its frames with old ones
    with TrajectoryWriter(tmp_path / "t.h5", 4, 2, mode="a") as writer:
        writer.append(10, 0.02, x0, torch.zeros(4))
        with pytest.raises(ValueError, match="already holds 1 frames"):
            BatchedLangevin(anharmonic_with_spread, [12.0, 12.0], 300.0, seed=1).run(
                x0, 200, save_interval=50, writer=writer, progress=False)

    ckpt.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="is not a simulation checkpoint .*delete it"):
        BatchedLangevin(anharmonic_with_spread, [12.0, 12.0], 300.0, seed=1).run(
            x0, 200, save_interval=50, checkpoint=ckpt, progress=False)
    torch.save({"format": "something else"}, ckpt)
    with pytest.raises(CheckpointError, match="not an openmm-geom 'langevin-checkpoint' file"):
        BatchedLangevin(anharmonic_with_spread, [12.0, 12.0], 300.0, seed=1).run(
            x0, 200, save_interval=50, checkpoint=ckpt, progress=False)


# -- blow-ups -------------------------------------------------------------------------------------
def test_blowup_is_diagnosed_and_only_finite_frames_are_written(tmp_path):
    calls = [0]

    def breaking(x):  # replica 3 bead 1 gets a huge force, replica 5 bead 2 NaN, from step 131
        calls[0] += 1
        f, e, s = harmonic(200.0)(x)
        if calls[0] > 131:
            f = f.clone()
            f[3, 1] *= 1e9
            f[5, 2] = float("nan")
        return f, e, s

    x0 = 0.05 * torch.randn(8, 4, 3, generator=torch.Generator().manual_seed(1),
                            dtype=torch.float64)
    sim = BatchedLangevin(breaking, [12.0] * 4, 300.0, seed=1)
    ckpt = tmp_path / "b.ckpt"
    with TrajectoryWriter(tmp_path / "b.h5", 8, 4) as writer:
        with pytest.raises(SimulationBlowUp) as info:
            sim.run(x0, 1000, save_interval=50, writer=writer, checkpoint=ckpt,
                    checkpoint_interval=50, progress=False)
    error = info.value
    message = str(error)
    assert error.step == 150 and error.last_good_step == 100
    assert error.replicas == [3, 5] and error.beads == [1, 2]
    assert error.max_force > 1e5
    assert "step 150" in message and "[3, 5]" in message and "beads [1, 2]" in message
    assert "largest |F|" in message and "non-finite forces in replicas [5]" in message
    traj = read_trajectory(tmp_path / "b.h5")
    assert traj.step.tolist() == [50, 100]
    assert np.isfinite(traj.positions).all() and np.isfinite(traj.energies).all()
    assert torch.load(ckpt, weights_only=True)["step"] == 100  # no checkpoint of the bad state
    assert sim.step == 150  # the bad state stays available for inspection


def test_too_large_timestep_blows_up_cleanly(tmp_path):
    """A real instability: omega dt = 2.05 for a stiff harmonic trap (Verlet needs < 2), so
    tiny displacements grow by ~1.56 per step until the forces pass blowup_force."""
    k = (2.05 / 0.002) ** 2 * 12.0
    gen = torch.Generator().manual_seed(2)
    x0 = 1e-9 * torch.randn(5, 2, 3, generator=gen, dtype=torch.float64)
    v0 = 1e-6 * torch.randn(5, 2, 3, generator=gen, dtype=torch.float64)
    sim = BatchedLangevin(harmonic(k), [12.0, 12.0], 300.0, friction=0.0, seed=2)
    with TrajectoryWriter(tmp_path / "s.h5", 5, 2) as writer:
        with pytest.raises(SimulationBlowUp, match="timestep") as info:
            sim.run(x0, 10000, save_interval=3, writer=writer, velocities=v0, progress=False)
    traj = read_trajectory(tmp_path / "s.h5")
    assert traj.n_frames >= 3 and np.isfinite(traj.positions).all()
    assert info.value.last_good_step == traj.step[-1] < 100
    assert info.value.replicas and set(info.value.replicas) <= set(range(5))
    assert info.value.max_force > 1e5


def test_blowup_in_the_initial_configuration():
    with pytest.raises(SimulationBlowUp, match="step 0"):
        BatchedLangevin(harmonic(1e8), [12.0], 300.0).run(torch.ones(2, 1, 3), 10,
                                                          save_interval=5, progress=False)


# -- trajectory files -----------------------------------------------------------------------------
def test_trajectory_round_trip_streams_in_chunks(tmp_path):
    rng = np.random.default_rng(0)
    frames = [(10 * (i + 1), 0.02 * (i + 1), rng.normal(size=(3, 2, 3)), rng.normal(size=3),
               rng.random(3)) for i in range(10)]
    path = tmp_path / "t.h5"
    with TrajectoryWriter(path, 3, 2, spread=True, chunk_frames=3,
                          attributes={"note": "test", "temperature_K": [1.0, 2.0, 3.0]}) as w:
        for i, frame in enumerate(frames):
            w.append(*frame)
            assert w.n_frames == i + 1
            on_disk = read_trajectory(path).n_frames
            assert on_disk == 3 * ((i + 1) // 3)  # buffered until a chunk is full
        assert w.last_step == 100
    traj = read_trajectory(path)
    assert traj.positions.dtype == np.float32 and traj.positions.shape == (10, 3, 2, 3)
    np.testing.assert_array_equal(traj.positions, np.array([f[2] for f in frames], np.float32))
    np.testing.assert_array_equal(traj.energies, np.array([f[3] for f in frames]))
    np.testing.assert_array_equal(traj.spread, np.array([f[4] for f in frames]))
    np.testing.assert_array_equal(traj.step, np.arange(10, 101, 10))
    assert traj.units == {"positions": "nm", "time": "ps", "step": "", "energies": "kJ/mol",
                          "spread": "kJ/mol/nm"}
    assert traj.attributes["note"] == "test" and traj.attributes["n_frames"] == 10
    assert read_trajectory(path, frames=slice(2, 9, 3)).step.tolist() == [30, 60, 90]
    assert read_trajectory(path, frames=slice(None, None, -4)).step.tolist() == [100, 60, 20]

    with TrajectoryWriter(path, 3, 2, spread=True, mode="a") as w:
        assert w.truncate(45) == 4 and w.n_frames == 4
        w.append(50, 0.1, frames[0][2], frames[0][3], frames[0][4])
    assert read_trajectory(path).step.tolist() == [10, 20, 30, 40, 50]


def test_trajectory_writer_refuses_bad_frames_and_mismatched_files(tmp_path):
    path = tmp_path / "t.h5"
    with TrajectoryWriter(path, 2, 1) as w:
        w.append(5, 0.01, np.zeros((2, 1, 3)), np.zeros(2))
        with pytest.raises(ValueError, match="non-finite"):
            w.append(6, 0.012, np.full((2, 1, 3), np.nan), np.zeros(2))
        with pytest.raises(ValueError, match="does not follow"):
            w.append(5, 0.01, np.zeros((2, 1, 3)), np.zeros(2))
        with pytest.raises(ValueError, match="positions must have shape"):
            w.append(7, 0.014, np.zeros((2, 3)), np.zeros(2))
    assert read_trajectory(path).n_frames == 1
    with pytest.raises(FileFormatError, match="2 replicas of 1 beads"):
        TrajectoryWriter(path, 3, 1, mode="a")
    with pytest.raises(FileFormatError, match="spread"):
        TrajectoryWriter(path, 2, 1, mode="a", spread=True)
    with pytest.raises(ValueError, match="mode"):
        TrajectoryWriter(path, 2, 1, mode="r")


def test_read_trajectory_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        read_trajectory(tmp_path / "missing.h5")
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(b"\x00not hdf5" * 100)
    with pytest.raises(FileFormatError, match="not a readable HDF5"):
        read_trajectory(garbage)
    with pytest.raises(FileFormatError, match="cannot be opened"):
        TrajectoryWriter(garbage, 1, 1, mode="a")
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["positions"] = np.zeros((1, 1, 1, 3))
    with pytest.raises(FileFormatError, match="not an openmm-geom 'trajectory' file"):
        read_trajectory(other)
    good = tmp_path / "good.h5"
    with TrajectoryWriter(good, 50, 20, chunk_frames=1) as w:
        for i in range(20):
            w.append(i + 1, 0.002 * (i + 1), np.zeros((50, 20, 3)), np.zeros(50))
    cut = tmp_path / "cut.h5"
    cut.write_bytes(good.read_bytes()[:2000])
    with pytest.raises(FileFormatError):
        read_trajectory(cut)


def test_reading_a_trajectory_another_process_is_writing_says_so(tmp_path):
    path = tmp_path / "live.h5"
    child = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from openmm_geom.simulate import TrajectoryWriter\n"
         f"w = TrajectoryWriter({str(path)!r}, 2, 3)\n"
         "print('open', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "open"
        with pytest.raises(FileFormatError, match="locked by a process writing it"):
            read_trajectory(path)
    finally:
        child.kill()
        child.wait()


def test_spread_is_written_when_the_writer_stores_it(tmp_path):
    x0 = 0.05 * torch.randn(3, 2, 3, generator=torch.Generator().manual_seed(0),
                            dtype=torch.float64)
    sim = BatchedLangevin(anharmonic_with_spread, [12.0, 12.0], 300.0, seed=0)
    with TrajectoryWriter(tmp_path / "s.h5", 3, 2, spread=True) as writer:
        sim.run(x0, 40, save_interval=20, writer=writer, progress=True)
    traj = read_trajectory(tmp_path / "s.h5")
    np.testing.assert_allclose(traj.spread[-1], sim.spread.numpy())
    np.testing.assert_allclose(traj.energies[-1], sim.energies.numpy())
    np.testing.assert_allclose(traj.positions[-1], sim.positions.numpy(), rtol=1e-6)
    assert traj.attributes["integrator"] == "baoab" and traj.attributes["timestep_ps"] == 0.002
    np.testing.assert_array_equal(traj.attributes["temperature_K"], [300.0] * 3)

    with TrajectoryWriter(tmp_path / "s2.h5", 3, 2, spread=True) as writer:
        with pytest.raises(ValueError, match="spread=None"):
            BatchedLangevin(harmonic(1.0), [12.0, 12.0], 300.0).run(
                x0, 10, save_interval=5, writer=writer, progress=False)


# -- bad input -------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,error,match", [
    (dict(masses=[[12.0, 12.0]]), ValueError, "masses must have shape"),
    (dict(masses=[12.0, 0.0]), ValueError, "masses must be > 0 amu, got 0 amu at index 1"),
    (dict(masses=[12.0, -1.0]), ValueError, "masses must be > 0 amu, got -1 amu at index 1"),
    (dict(masses=[12.0, float("nan")]), ValueError, "masses must be finite, got nan amu"),
    (dict(timestep=0.0), ValueError, "timestep must be > 0 ps, got 0 ps"),
    (dict(timestep=-0.001), ValueError, "timestep must be > 0 ps"),
    (dict(timestep=-1 * unit.femtosecond), ValueError, "timestep must be > 0 ps, got -1 fs"),
    (dict(timestep=float("inf")), ValueError, "timestep must be finite"),
    (dict(timestep=2 * unit.kelvin), TypeError, r"timestep: expected a time \(ps\), got 2 K"),
    (dict(friction=-1.0), ValueError, "friction must be >= 0 1/ps"),
    (dict(friction=0.0, integrator="overdamped"), ValueError, "friction > 0"),
    (dict(temperature=-5.0), ValueError, "temperature must be > 0 K, got -5 K"),
    (dict(temperature=-300 * unit.kelvin), ValueError, "temperature must be > 0 K, got -300 K"),
    (dict(temperature=[300 * unit.kelvin, 3 * unit.nanometer]), TypeError,
     r"temperature: expected a temperature \(K\), got values in K, nm"),
    (dict(masses=[12.0, 12.0] * unit.kelvin), TypeError, r"masses: expected a mass \(amu\)"),
    (dict(temperature=torch.zeros(3, 1) + 300), ValueError, "shape \\(n_replicas,\\)"),
    (dict(integrator="verlet"), ValueError, "integrator must be one of"),
    (dict(dtype=torch.int64), TypeError, "dtype must be"),
    (dict(force_fn="not callable"), TypeError, "force_fn must be callable"),
    (dict(seed=1.5), TypeError, "seed must be an integer"),
])
def test_bad_constructor_arguments(kwargs, error, match):
    args = dict(force_fn=harmonic(1.0), masses=[12.0, 12.0], temperature=300.0)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        BatchedLangevin(**args)


def test_bad_run_arguments(tmp_path):
    x0 = torch.zeros(3, 2, 3)
    sim = BatchedLangevin(harmonic(1.0), [12.0, 12.0], 300.0)
    cases = [
        (dict(x0=torch.zeros(3, 4, 3)), ValueError, r"x0 must have shape \(n_replicas, 2, 3\)"),
        (dict(x0=torch.zeros(2, 3)), ValueError, "x0 must have shape"),
        (dict(x0=torch.full((3, 2, 3), float("nan"))), ValueError, "non-finite"),
        (dict(n_steps=-1), ValueError, "n_steps must be >= 0"),
        (dict(save_interval=0), ValueError, "save_interval must be >= 1"),
        (dict(velocities=torch.zeros(3, 2)), ValueError, "velocities must have the shape"),
        (dict(checkpoint_interval=10), ValueError, "needs a checkpoint path"),
        (dict(blowup_force=0.0), ValueError, "blowup_force must be > 0 kJ/mol/nm, got 0"),
        (dict(x0=torch.zeros(3, 2, 3).numpy() * unit.kelvin), TypeError, "x0: expected a length"),
    ]
    for overrides, error, match in cases:
        args = dict(x0=x0, n_steps=10, save_interval=5, progress=False)
        args.update(overrides)
        with pytest.raises(error, match=match):
            sim.run(args.pop("x0"), args.pop("n_steps"), **args)

    with pytest.raises(ValueError, match=r"temperature has shape \(4,\) but there are 3"):
        BatchedLangevin(harmonic(1.0), [12.0, 12.0], torch.full((4,), 300.0)).run(
            x0, 10, save_interval=5, progress=False)
    with pytest.raises(ValueError, match="overdamped dynamics have no velocities"):
        BatchedLangevin(harmonic(1.0), [12.0, 12.0], 300.0, integrator="overdamped").run(
            x0, 10, save_interval=5, velocities=torch.zeros(3, 2, 3), progress=False)
    with TrajectoryWriter(tmp_path / "w.h5", 4, 2) as writer:
        with pytest.raises(ValueError, match="the writer is for 4 replicas"):
            sim.run(x0, 10, save_interval=5, writer=writer, progress=False)

    def wrong_forces(x):
        return torch.zeros(x.shape[0], x.shape[1]), torch.zeros(x.shape[0]), None

    def wrong_energies(x):
        return torch.zeros_like(x), torch.zeros(x.shape[0], 1), None

    def two_outputs(x):
        return torch.zeros_like(x), torch.zeros(x.shape[0])

    for fn, error, match in [(wrong_forces, ValueError, "forces of shape"),
                             (wrong_energies, ValueError, "energies of shape"),
                             (two_outputs, TypeError, "must return a tuple")]:
        with pytest.raises(error, match=match):
            BatchedLangevin(fn, [12.0, 12.0], 300.0).run(x0, 10, save_interval=5,
                                                         progress=False)
    with pytest.raises(RuntimeError, match="call run"):
        BatchedLangevin(harmonic(1.0), [12.0], 300.0).positions


def test_benchmark_integrator_reports_rates():
    rows = benchmark_integrator(replicas=(1, 8), n_beads=4, n_steps=50, repeats=1)
    assert [r["n_replicas"] for r in rows] == [1, 8]
    assert all(r["replica_steps_per_s"] > 0 and r["us_per_step"] > 0 for r in rows)
