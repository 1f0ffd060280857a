"""Attach a streaming path-signature reporter to a running OpenMM simulation.

Capped alanine in vacuum (amber14); the path is the backbone heavy atoms' coordinates, sampled
every 10 steps; every window of 50 points (500 fs) its depth-2 log-signature is written to
CSV, extended point by point with Chen's identity (no recomputation over the window). A
DCDReporter saves the same frames, and `openmm-geom signature featurize` on that file
reproduces the reporter's rows: the on-the-fly and offline features are the same numbers.

    python examples/signature_reporter.py --steps 20000 --out out/signature
"""
import argparse
from pathlib import Path

import numpy as np
import openmm
import openmm.app as app
import openmm.unit as unit

from openmm_geom.data import bundled
from openmm_geom.openmm import SignatureReporter
from openmm_geom.workflows.signature import featurize


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20000)
    parser.add_argument("--out", type=Path, default=Path("out/signature"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    sample = 10
    window = max(2, min(50, args.steps // sample))   # short test runs get one shorter window

    pdb = app.PDBFile(str(bundled("alanine-dipeptide.pdb")))
    forcefield = app.ForceField("amber14-all.xml")
    system = forcefield.createSystem(pdb.topology, nonbondedMethod=app.NoCutoff, constraints=None)
    integrator = openmm.LangevinMiddleIntegrator(300 * unit.kelvin, 1 / unit.picosecond,
                                                 1 * unit.femtosecond)
    integrator.setRandomNumberSeed(7)
    simulation = app.Simulation(pdb.topology, system, integrator,
                                openmm.Platform.getPlatformByName("CPU"))
    simulation.context.setPositions(pdb.positions)
    simulation.minimizeEnergy()
    simulation.context.setVelocitiesToTemperature(300 * unit.kelvin, 7)

    backbone = [a.index for a in pdb.topology.atoms() if a.name in ("N", "CA", "C")]
    reporter = SignatureReporter(str(args.out / "signatures.csv"), sample, depth=2,
                                 atoms=backbone, window=window)
    simulation.reporters.append(reporter)
    simulation.reporters.append(app.DCDReporter(str(args.out / "trajectory.dcd"), sample))
    simulation.step(args.steps)
    reporter.close()

    online = np.loadtxt(args.out / "signatures.csv", delimiter=",", ndmin=2)[:, 3:]
    # DCD frames start after the first sample interval; the reporter's first point is the same.
    summary = featurize(args.out / "trajectory.dcd", args.out / "offline.npz",
                        topology=bundled("alanine-dipeptide.pdb"),
                        selection="name N or name CA or name C", depth=2, window=window)
    offline = np.load(args.out / "offline.npz")["features"][:len(online)]
    print(f"{len(online)} windows of {window} points written on the fly, "
          f"{online.shape[1] if online.size else 0} log-signature terms each; offline: "
          f"{summary['features']}")
    if len(online):
        error = np.abs(online - offline).max() / np.abs(offline).max()
        print(f"max relative difference on-the-fly vs featurize (DCD float32): {error:.2e}")
        assert error < 1e-4, "reporter and featurize disagree"


if __name__ == "__main__":
    main()
