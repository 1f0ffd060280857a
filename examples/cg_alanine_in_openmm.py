"""Train a small coarse-grained CGSchNet for capped alanine and run it in a plain OpenMM
Simulation: priors as native OpenMM forces, the network as one TorchForce.

All data are made here with OpenMM (a short all-atom run with forces), so the script runs
anywhere; `openmm-geom cg reproduce` is the full-size version of the same pipeline.

    python examples/cg_alanine_in_openmm.py --steps 5000 --out out/cg_openmm
"""
import argparse
from pathlib import Path

import openmm
import openmm.app as app
import openmm.unit as unit

from openmm_geom.data import bundled
from openmm_geom.data.datagen import generate_reference
from openmm_geom.export import export_model
from openmm_geom.models import Dihedrals
from openmm_geom.openmm import CVReporter, ExportedModel, create_system
from openmm_geom.settings import override
from openmm_geom.workflows import coarse_grain as cg


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20000)
    parser.add_argument("--out", type=Path, default=Path("out/cg_openmm"))
    args = parser.parse_args()

    # 1. All-atom reference data with forces (tiny here; use `openmm-geom datagen` for real).
    data_file = generate_reference(bundled("alanine-dipeptide.pdb"), args.out / "aa.npz",
                                   n_frames=2000, save_interval_ps=0.1, equilibration_ps=2.0,
                                   platform="Reference", progress=False)
    # 2. Map to 6 beads, fit priors, train a 2-fold ensemble (QUICK settings).
    data = cg.load_cg_data(data_file)
    settings = override(cg.QUICK, folds=2, epochs=2)
    trained = cg.train(data, args.out, settings, progress=False)

    # 3. The exported model in OpenMM: native priors (force group 0) + TorchForce (group 1).
    model = ExportedModel.load(trained["openmm_model"])
    print(model)
    topology = app.Topology()
    chain = topology.addChain()
    for name in data.mapping.bead_names:
        residue = topology.addResidue("CG", chain)
        topology.addAtom(name, app.Element.getByAtomicNumber(6), residue)
    system = create_system(model, topology)  # bead masses from the file
    integrator = openmm.LangevinMiddleIntegrator(300 * unit.kelvin, 1 / unit.picosecond,
                                                 2 * unit.femtosecond)
    integrator.setRandomNumberSeed(1)
    simulation = app.Simulation(topology, system, integrator,
                                openmm.Platform.getPlatformByName("CPU"))
    simulation.context.setPositions(data.positions[0].astype(float))
    simulation.context.setVelocitiesToTemperature(300 * unit.kelvin, 1)

    # phi/psi of the CG beads, logged on the fly (beads 0-3 and 1-4).
    phi_psi = export_model(Dihedrals([[0, 1, 2, 3], [1, 2, 3, 4]]), args.out / "cg_phi_psi.pt",
                           kind="cv", length_unit="nm", periodic=False,
                           example_positions=data.positions[0], cv_names=["phi", "psi"])
    simulation.reporters.append(CVReporter(str(args.out / "cg_cvs.csv"), 100, phi_psi))
    simulation.reporters.append(app.StateDataReporter(str(args.out / "cg_energies.csv"), 500,
                                                      step=True, potentialEnergy=True,
                                                      temperature=True))
    simulation.step(args.steps)
    state = simulation.context.getState(getEnergy=True)
    print(f"{args.steps} CG steps in OpenMM; potential energy {state.getPotentialEnergy()}")


if __name__ == "__main__":
    main()
