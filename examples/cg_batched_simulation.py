"""Simulate many replicas of a trained coarse-grained ensemble at once from Python.

Trains a tiny model on data made here (see cg_alanine_in_openmm.py), then runs the batched
BAOAB simulator with per-replica temperatures, streaming HDF5 output, a checkpoint that makes
the run resumable, and the ensemble's force spread logged as an uncertainty; then checks that
the exported file of the same model (what OpenMM runs) gives the simulator's energies.

    python examples/cg_batched_simulation.py --steps 2000 --out out/cg_batched
"""
import argparse
from pathlib import Path

import numpy as np
import torch

from openmm_geom.data import bundled
from openmm_geom.data.datagen import generate_reference
from openmm_geom.openmm import ExportedModel
from openmm_geom.simulate import BatchedLangevin, EnsembleForces, TrajectoryWriter, read_trajectory
from openmm_geom.training.checkpoints import load_cgschnet
from openmm_geom.settings import override
from openmm_geom.workflows import coarse_grain as cg


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10000)
    parser.add_argument("--out", type=Path, default=Path("out/cg_batched"))
    args = parser.parse_args()

    data_file = generate_reference(bundled("alanine-dipeptide.pdb"), args.out / "aa.npz",
                                   n_frames=2000, save_interval_ps=0.1, equilibration_ps=2.0,
                                   platform="Reference", progress=False)
    data = cg.load_cg_data(data_file)
    trained = cg.train(data, args.out, override(cg.QUICK, folds=2, epochs=2),
                       progress=False)
    model, metadata = load_cgschnet(trained["model"])

    replicas = 32
    temperatures = torch.linspace(280.0, 400.0, replicas)  # one temperature per replica
    simulator = BatchedLangevin(EnsembleForces(model), metadata["masses_amu"], temperatures,
                                friction=1.0, timestep=0.002, seed=7)
    start = torch.as_tensor(cg.start_configurations(data.positions, replicas))
    with TrajectoryWriter(args.out / "replicas.h5", replicas, model.n_beads, spread=True,
                          mode="a") as writer:
        summary = simulator.run(start, args.steps, save_interval=100, writer=writer,
                                checkpoint=args.out / "replicas.ckpt",
                                checkpoint_interval=1000, progress=False)
    trajectory = read_trajectory(args.out / "replicas.h5")
    print(f"{summary.replica_steps_per_second:.0f} replica-steps/s; "
          f"{trajectory.positions.shape[0]} frames x {replicas} replicas; "
          f"mean ensemble force spread {np.mean(trajectory.spread):.1f} kJ/mol/nm")

    # The same trained ensemble as OpenMM runs it: the exported file holds the network (and the
    # priors, unless they were exported as native OpenMM forces).
    exported = ExportedModel.load(trained["openmm_model"])
    reference = model.without_priors() if exported.metadata.extra["cg"]["native_priors"] else model
    frame = torch.as_tensor(trajectory.positions[-1, 0], dtype=torch.float64)
    with torch.no_grad():
        in_file = float(exported(frame))
        in_simulator = float(reference(frame.to(model.embedding.dtype)))
    print(f"{exported}: energy of the last frame {in_file:.4f} kJ/mol "
          f"(the simulator's model: {in_simulator:.4f})")

if __name__ == "__main__":
    main()
