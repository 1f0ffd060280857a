"""``openmm-geom demo``: the main jobs end to end on bundled capped alanine.

Part ``cv`` (the OpenMM bridge and TorchCVForce):

1. Export the backbone dihedrals (phi, psi) as a CV module, validate it in OpenMM Contexts.
2. Well-tempered metadynamics on (phi, psi) with one ``TorchCVForce``: the module runs once
   per step, the bias is a tabulated 2D grid inside the same force.
3. Log phi and psi on the fly with :class:`~openmm_geom.openmm.CVReporter` (reading the CVs
   the force computed).
4. Write the CSV, PNG figures (CV traces, free-energy surface) and a JSON summary.

Part ``cg`` (coarse graining): all-atom reference data made here with OpenMM (two seeds), the
6-bead mapping, priors, a CGSchNet ensemble by force matching, a batched CG simulation and the
paper's phi/psi free-energy comparison (KL, MSE, noise-equivalent sigma) with figures, at the
QUICK setting (``openmm-geom cg reproduce`` is the production-size job).
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np

__all__ = ["run_demo", "run_cv_demo", "run_cg_demo"]


def run_demo(out: Path, *, part: str = "all", steps: int = 100_000, frames: int = 10_000,
             seed: int = 1, threads: int | None = None, progress: bool = True) -> dict:
    """Run the demo parts (``"cv"``, ``"cg"`` or ``"all"``) into ``out/<part>/``."""
    if part not in ("all", "cv", "cg"):
        raise ValueError(f"part must be 'all', 'cv' or 'cg', got {part!r}")
    summary = {}
    if part in ("all", "cv"):
        summary["cv"] = run_cv_demo(Path(out) / "cv", steps=steps, seed=seed, threads=threads,
                                    progress=progress)
    if part in ("all", "cg"):
        summary["cg"] = run_cg_demo(Path(out) / "cg", frames=frames, seed=seed, threads=threads,
                                    progress=progress)
    (Path(out) / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    return summary


def run_cg_demo(out: Path, *, frames: int = 10_000, seed: int = 1, threads: int | None = None,
                progress: bool = True) -> dict:
    """Coarse-grain capped alanine from data generated here (QUICK settings)."""
    from .data import bundled
    from .data.datagen import generate_reference
    from .settings import override
    from .workflows import coarse_grain as cg

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = []
    for offset in (0, 1):  # training and held-out reference runs, independent seeds
        data.append(generate_reference(
            bundled("alanine-dipeptide.pdb"), out / f"alanine_aa_seed{seed + offset}.npz",
            n_frames=frames, save_interval_ps=0.1, equilibration_ps=10.0, seed=seed + offset,
            platform="Reference", progress=progress))
    settings = override(cg.QUICK, epochs=4, max_train_frames=8000, replicas=32, steps=6_000,
                        save_interval=50, noise_seeds=5)
    result = cg.reproduce(data[0], data[1], out, settings=settings, seed=seed, threads=threads,
                          progress=progress)
    return {key: result[key] for key in ("kl", "mse", "noise_equivalent_sigma_angstrom",
                                         "unreliable_reasons", "replicas",
                                         "simulated_ns_total", "timings", "figures")}


def run_cv_demo(out: Path, *, steps: int = 100_000, seed: int = 1, threads: int | None = None,
                progress: bool = True) -> dict:
    """Export phi/psi, validate, well-tempered metadynamics with TorchCVForce."""
    import openmm
    import openmm.app as app
    import openmm.unit as unit

    from .arguments import openmm_seed
    from .data import bundled
    from .export import export_model
    from .models import Dihedrals, backbone_quadruplets
    from .openmm import CVReporter, GridAxis, Metadynamics, check_export
    from .progress import ProgressReporter
    from .threads import cpu_platform_properties, set_threads

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    n_threads = set_threads(threads)
    pdb = app.PDBFile(str(bundled("alanine-dipeptide.pdb")))
    forcefield = app.ForceField("amber14-all.xml")
    system = forcefield.createSystem(pdb.topology, nonbondedMethod=app.NoCutoff,
                                     constraints=app.HBonds)

    cv_path = out / "phi_psi.pt"
    export_model(Dihedrals(backbone_quadruplets(pdb.topology)), cv_path, kind="cv",
                 length_unit="nm", periodic=False, example_positions=pdb.positions,
                 cv_names=["phi", "psi"], atom_types=[a.element.symbol for a in pdb.topology.atoms()])
    report = check_export(cv_path)
    (out / "check_export.json").write_text(report.to_json())

    temperature = 300 * unit.kelvin
    axes = [GridAxis(name, -math.pi, math.pi, width=0.35, periodic=True, points=61)
            for name in ("phi", "psi")]
    meta = Metadynamics(system, cv_path, axes, temperature, bias_factor=6.0, height=1.5,
                        frequency=250, force_group=5)
    integrator = openmm.LangevinMiddleIntegrator(temperature, 1 / unit.picosecond,
                                                 2 * unit.femtosecond)
    integrator.setRandomNumberSeed(openmm_seed(seed))
    simulation = app.Simulation(pdb.topology, system, integrator,
                                openmm.Platform.getPlatformByName("CPU"),
                                cpu_platform_properties(n_threads))
    simulation.context.setPositions(pdb.positions)
    simulation.minimizeEnergy()
    simulation.context.setVelocitiesToTemperature(temperature, openmm_seed(seed))
    cv_log = CVReporter(out / "cvs.csv", 50, meta.force)
    simulation.reporters.append(cv_log)
    if progress:
        simulation.reporters.append(ProgressReporter(steps, "metadynamics on phi, psi"))
    start = time.perf_counter()
    meta.step(simulation, steps)
    elapsed = time.perf_counter() - start
    cv_log.close()

    data = np.loadtxt(out / "cvs.csv", delimiter=",", comments="#")
    phi_series, psi_series = data[:, 2], data[:, 3]
    free_energy = meta.free_energy()
    free_energy -= free_energy.min()
    np.savez(out / "free_energy.npz", phi=axes[0].grid, psi=axes[1].grid,
             free_energy_kj_per_mol=free_energy)
    figures = _plot(out, data[:, 1], phi_series, psi_series, axes[0].grid, free_energy)
    summary = {
        "steps": steps,
        "simulated_ps": steps * 0.002,
        "steps_per_second": steps / elapsed,
        "threads": n_threads,
        "check_export_passed": report.passed,
        "frames_logged": int(len(phi_series)),
        "fraction_phi_positive": float(np.mean(phi_series > 0)),
        "phi_sign_changes": int(np.sum(np.diff(np.sign(phi_series)) != 0)),
        "hills": len(meta.hills),
        "free_energy_range_kj_per_mol": float(free_energy.max()),
        "files": sorted(str(p.name) for p in out.iterdir()),
        "figures": figures,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _plot(out: Path, time_ps, phi, psi, grid, free_energy) -> list:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    axes[0].plot(time_ps, np.degrees(phi), lw=0.6, label="phi")
    axes[0].plot(time_ps, np.degrees(psi), lw=0.6, label="psi")
    axes[0].set(xlabel="time (ps)", ylabel="angle (deg)", title="CVs logged by CVReporter")
    axes[0].legend()
    axes[1].scatter(np.degrees(phi), np.degrees(psi), s=2, c=time_ps, cmap="viridis")
    axes[1].set(xlim=(-180, 180), ylim=(-180, 180), xlabel="phi (deg)", ylabel="psi (deg)",
                title="Ramachandran (colour = time)")
    image = axes[2].contourf(np.degrees(grid), np.degrees(grid), free_energy.T, levels=25,
                             cmap="viridis")
    fig.colorbar(image, ax=axes[2], label="F (kJ/mol)")
    axes[2].set(xlabel="phi (deg)", ylabel="psi (deg)",
                title="well-tempered metadynamics F(phi, psi)")
    fig.tight_layout()
    path = out / "demo.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path.name]
