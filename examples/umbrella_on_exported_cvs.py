"""Drag capped alanine along two CVs of one exported module with a moving umbrella.

One CV module returns (phi, psi). A TorchCVForce evaluates it once per step and applies the
restraint 0.5*k*(phi-phi0)^2 + 0.5*k*(psi-psi0)^2 (differences taken on the circle); the
centre psi0 is a global parameter moved during the run, and CVReporter logs the CVs the force
computed.

    python examples/umbrella_on_exported_cvs.py --steps 5000 --out out/umbrella
"""
import argparse
import math
from pathlib import Path

import openmm
import openmm.app as app
import openmm.unit as unit

from openmm_geom.data import bundled
from openmm_geom.export import export_model
from openmm_geom.models import Dihedrals, backbone_quadruplets
from openmm_geom.openmm import CVReporter, restraint_force


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10000)
    parser.add_argument("--out", type=Path, default=Path("out/umbrella"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    pdb = app.PDBFile(str(bundled("alanine-dipeptide.pdb")))
    system = app.ForceField("amber14-all.xml").createSystem(
        pdb.topology, nonbondedMethod=app.NoCutoff, constraints=app.HBonds)

    # export_model writes the file and returns it loaded (an ExportedModel): pass it on as is.
    cv_model = export_model(Dihedrals(backbone_quadruplets(pdb.topology)), args.out / "phi_psi.pt",
                            kind="cv", length_unit="nm", periodic=False,
                            example_positions=pdb.positions, cv_names=["phi", "psi"])

    # Global parameters k_phi, phi0, k_psi, psi0 (kJ/mol/rad^2 and rad).
    umbrella = restraint_force(cv_model, {"phi": (200.0, -1.4), "psi": (200.0, 2.6)},
                               periodic=["phi", "psi"])
    system.addForce(umbrella)

    integrator = openmm.LangevinMiddleIntegrator(300 * unit.kelvin, 1 / unit.picosecond,
                                                 2 * unit.femtosecond)
    simulation = app.Simulation(pdb.topology, system, integrator,
                                openmm.Platform.getPlatformByName("CPU"))
    simulation.context.setPositions(pdb.positions)
    simulation.minimizeEnergy()
    simulation.reporters.append(CVReporter(str(args.out / "cvs.csv"), 50, umbrella))

    # Move the umbrella centre along psi from 2.6 to -0.7 rad in 10 stages.
    stages = 10
    for stage in range(stages):
        psi0 = 2.6 + (-0.7 - 2.6) * stage / (stages - 1)
        simulation.context.setParameter("psi0", psi0)
        simulation.step(args.steps // stages)
        phi, psi = umbrella.getCollectiveVariableValues(simulation.context)
        print(f"stage {stage}: psi0 {psi0:+.2f}  phi {phi:+.2f}  psi {psi:+.2f} rad")
    final_psi = umbrella.getCollectiveVariableValues(simulation.context)[1]
    print(f"psi is {abs(math.remainder(final_psi + 0.7, 2 * math.pi)):.2f} rad from the "
          "final umbrella centre")


if __name__ == "__main__":
    main()
