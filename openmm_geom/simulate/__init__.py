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
trajectory as an uninterrupted run. A blow-up raises :class:`openmm_geom.errors.SimulationBlowUp`;
unreadable checkpoints :class:`~openmm_geom.errors.CheckpointError`. See :mod:`openmm_geom.simulate.langevin` and
:mod:`openmm_geom.simulate.trajectory`.
"""
from .ensemble import EnsembleForces
from .langevin import BatchedLangevin, ForceFn, RunSummary, benchmark_integrator
from .trajectory import Trajectory, TrajectoryWriter, read_trajectory

__all__ = [
    "BatchedLangevin",
    "EnsembleForces",
    "ForceFn",
    "RunSummary",
    "Trajectory",
    "TrajectoryWriter",
    "benchmark_integrator",
    "read_trajectory",
]
