"""An ML potential running a periodic water box in OpenMM, in the openmm-ml style.

The OpenMM part is three lines::

    exported = export_potential(model, "water_ml.pt", positions=..., box=..., atomic_numbers=...)
    system = create_system(exported, pdb.topology)
    simulation = app.Simulation(pdb.topology, system, integrator)

Usage::

    python examples/water_ml_potential.py --model RUN/model.pt --steps 2000 --out water-ml
    python examples/water_ml_potential.py --steps 200 --out water-ml   # makes a tiny model first

``--model`` takes a ``model.pt`` written by ``openmm-geom potential train`` (or ``reproduce``) on
water data; the model is re-targeted to this box (any number of molecules: ``--molecules``).
Without it, the script generates a few picoseconds of flexible TIP3P data and trains a tiny
attention model for a few epochs: enough to show the plumbing, not a converged potential.
"""
import argparse
import sys
from pathlib import Path

import numpy as np
import openmm
import openmm.app as app
import openmm.unit as unit


def tiny_model(out: Path, molecules: int) -> Path:
    """A few seconds of data and training: a demonstration model, not a useful one."""
    from openmm_geom.data.potential_data import load_potential_data
    from openmm_geom.data.water import generate_water_reference
    from openmm_geom.workflows.potential import budget, train

    data = generate_water_reference(molecules, out / "tiny_water.npz", n_frames=24,
                                    save_interval_ps=0.05, equilibration_ps=0.5, progress=False)
    train(load_potential_data(data), out / "tiny_model", budget("quick", "attention"), seed=0,
          progress=False)
    return out / "tiny_model" / "model.pt"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model.pt from `openmm-geom potential train`")
    parser.add_argument("--molecules", type=int, default=48, help="water molecules in the box")
    parser.add_argument("--steps", type=int, default=2000, help="0.5 fs steps")
    parser.add_argument("--out", default="water-ml-example")
    args = parser.parse_args(argv)

    from openmm_geom import set_threads
    from openmm_geom.data.water import water_box_pdb
    from openmm_geom.export import export_potential
    from openmm_geom.training.checkpoints import load_potential
    from openmm_geom.openmm import create_system

    set_threads(None)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pdb = app.PDBFile(str(water_box_pdb(args.molecules, out / "water.pdb")))
    model_path = Path(args.model) if args.model else tiny_model(out, args.molecules)
    model, _ = load_potential(model_path)

    numbers = [atom.element.atomic_number for atom in pdb.topology.atoms()]
    box = np.asarray(pdb.topology.getPeriodicBoxVectors().value_in_unit(unit.nanometer))
    positions = np.asarray(pdb.getPositions(asNumpy=True).value_in_unit(unit.nanometer))
    exported = export_potential(model, out / "water_ml.pt", positions=positions, box=box,
                                atomic_numbers=numbers)
    system = create_system(exported, pdb.topology)

    integrator = openmm.LangevinMiddleIntegrator(300 * unit.kelvin, 1 / unit.picosecond,
                                                 0.5 * unit.femtosecond)
    integrator.setRandomNumberSeed(1)
    simulation = app.Simulation(pdb.topology, system, integrator,
                                openmm.Platform.getPlatformByName("CPU"))
    simulation.context.setPositions(pdb.positions)
    simulation.minimizeEnergy(maxIterations=100)
    simulation.context.setVelocitiesToTemperature(300 * unit.kelvin, 1)
    simulation.reporters.append(app.StateDataReporter(
        str(out / "state.csv"), max(args.steps // 20, 1), step=True, potentialEnergy=True,
        temperature=True, speed=True))
    simulation.reporters.append(app.DCDReporter(str(out / "water_ml.dcd"), max(args.steps // 20, 1)))
    simulation.step(args.steps)
    state = simulation.context.getState(getEnergy=True)
    energy = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    if not np.isfinite(energy):
        print(f"the simulation blew up (potential energy {energy})", file=sys.stderr)
        return 1
    print(f"{args.molecules} waters, {args.steps} steps of 0.5 fs with {model_path}: "
          f"potential energy {energy:.1f} kJ/mol; wrote {out}/state.csv and water_ml.dcd")
    return 0


if __name__ == "__main__":
    sys.exit(main())
