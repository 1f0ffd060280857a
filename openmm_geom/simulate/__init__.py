"""Batched coarse-grained simulation: Langevin (BAOAB) and overdamped Langevin dynamics of many
replicas at once, with streaming HDF5 trajectories, checkpoints and blow-up detection.

Typical use::

    from openmm_geom.simulate import BatchedLangevin, TrajectoryWriter

    sim = BatchedLangevin(force_fn, masses, temperature=300.0, friction=1.0, timestep=0.002,
                          seed=1)
    with TrajectoryWriter("cg.h5", n_replicas, n_beads, mode="a") as writer:
        sim.run(x0, 1_000_000, save_interval=250, writer=writer,
                checkpoint="cg.ckpt", checkpoint_interval=50_000)

Running the same script again after an interruption resumes from ``cg.ckpt`` and yields the same
trajectory as an uninterrupted run. See :mod:`openmm_geom.simulate.langevin` and
:mod:`openmm_geom.simulate.trajectory`.
"""
from .langevin import (
    BatchedLangevin,
    CheckpointError,
    CheckpointMismatchError,
    ForceFn,
    RunSummary,
    SimulationBlowUp,
    benchmark_integrator,
)
from .ensemble import EnsembleForces
from .trajectory import Trajectory, TrajectoryFileError, TrajectoryWriter, read_trajectory

__all__ = [
    "BatchedLangevin",
    "CheckpointError",
    "CheckpointMismatchError",
    "EnsembleForces",
    "ForceFn",
    "RunSummary",
    "SimulationBlowUp",
    "Trajectory",
    "TrajectoryFileError",
    "TrajectoryWriter",
    "benchmark_integrator",
    "read_trajectory",
]
