"""An ML potential running a periodic water box in OpenMM, in the openmm-ml style.

The OpenMM part is three lines::

    exported = export_potential(model, "water_ml.pt", positions=..., box=..., atomic_numbers=...)
    system = create_system(exported, pdb.topology)
    simulation = app.Simulation(pdb.topology, system, integrator)

Usage::

    python examples/water_ml_potential.py --model RUN/model.pt --steps 2000 --out water-ml
    python examples/water_ml_potential.py --steps 200 --out water-ml   # makes a tiny model first

``--model`` takes a ``model.pt`` written by ``openmm-geom potential train`` (or ``reproduce``) on
water data; the model is re-targeted to this box (``--molecules``, any number from a minimum).
Without it, the script generates a few picoseconds of flexible TIP3P data and trains a tiny
attention model for a few epochs: enough to show the plumbing, not a converged potential.

The box must be at least twice the model's cutoff wide (each pair is counted once, for its
nearest periodic image), so the number of molecules has a minimum: 34 for the 0.5 nm cutoff of
the demonstration model (a 1.006 nm box at 0.997 g/cm^3), and for ``--model`` the number that
fits its cutoff (18 at 0.4 nm, 58 at 0.6 nm). Smaller numbers are refused before anything is
written. The cutoff is not shrunk to fit the box: it is part of the trained potential, and the
same weights with another cutoff are another, untrained function.
"""
import argparse
import math
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


def minimum_molecules(cutoff_nm: float) -> int:
    """The fewest waters whose box (at the example's density) holds ``cutoff_nm``: an edge of
    at least twice the cutoff, plus 0.001 nm for the PDB's rounding of the box."""
    from openmm_geom.data.water import water_box_edge_nm

    n = max(1, math.floor((2 * cutoff_nm) ** 3 / water_box_edge_nm(1) ** 3))
    while water_box_edge_nm(n) < 2 * cutoff_nm + 1e-3:
        n += 1
    return n


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model.pt from `openmm-geom potential train` "
                        "(default: train a tiny demonstration model, cutoff 0.5 nm)")
    parser.add_argument("--molecules", type=int, default=48,
                        help="water molecules in the box (default 48; at least 34 for a "
                        "0.5 nm cutoff: the box edge must be twice the model's cutoff)")
    parser.add_argument("--steps", type=int, default=2000, help="0.5 fs steps (default 2000)")
    parser.add_argument("--out", default="water-ml-example",
                        help="output directory (default water-ml-example)")
    args = parser.parse_args(argv)

    from openmm_geom import set_threads
    from openmm_geom.data.water import water_box_edge_nm, water_box_pdb
    from openmm_geom.export import export_potential
    from openmm_geom.training.checkpoints import load_potential
    from openmm_geom.openmm import create_system
    from openmm_geom.workflows.potential import budget

    # everything is checked before the output directory is made
    if args.steps < 0:
        parser.error(f"--steps must be >= 0, got {args.steps}")
    if args.molecules < 1:
        parser.error(f"--molecules must be >= 1, got {args.molecules}")
    model = None
    if args.model:
        try:
            model, _ = load_potential(args.model)
        except (OSError, ValueError) as error:
            parser.error(f"--model {args.model}: {error}")
        cutoff, what = float(model.cutoff), f"{args.model}'s cutoff"
    else:
        cutoff, what = budget("quick", "attention").cutoff_nm, "the demonstration model's cutoff"
    smallest = minimum_molecules(cutoff)
    if args.molecules < smallest:
        parser.error(f"--molecules {args.molecules} makes a {water_box_edge_nm(args.molecules):.3f} "
                     f"nm box, too small for {what} of {cutoff:g} nm (the box edge must be at "
                     f"least twice the cutoff): use --molecules {smallest} or more")

    set_threads(None)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pdb = app.PDBFile(str(water_box_pdb(args.molecules, out / "water.pdb")))
    model_path = Path(args.model) if args.model else tiny_model(out, args.molecules)
    if model is None:
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
