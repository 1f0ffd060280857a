"""Cost per step of OPES against our metadynamics on the same TorchCVForce (phi, psi of capped
alanine in vacuum, amber14-all.xml, NoCutoff, HBonds, 2 fs, 300 K, CPU platform).

Setups, each its own Simulation, stepped in turn (interleaved) in chunks of 1000 steps after
20000 steps of deposition each (so that the bias holds its kernels/hills):

* ``unbiased``: the TorchCVForce with energy 0 (the CV model's cost, no bias);
* ``metad-grid``: ``Metadynamics`` (2 CVs, tabulated grid, pace 100);
* ``metad-hills``: ``Metadynamics(method="hills")`` (native Gaussian hills, pace 100);
* ``opes``, ``opes-explore``: ``OPES`` (barrier 40 kJ/mol, pace 100, adaptive sigma).

Reports the median microseconds per step of each, its ratio to ``metad-grid`` and the
kernels/hills it holds. Check: every biased setup deposited (kernels/hills > 0). A measurement
during which other processes took > 10% of the CPUs is retried and its "other_load" recorded.

    .venv/bin/python benchmarks/bench_opes.py                 # results/opes.json, ~3 minutes
    .venv/bin/python benchmarks/bench_opes.py --quick --out /tmp/opes.json
"""
from __future__ import annotations

import sys
from pathlib import Path

import openmm
import openmm.app as app
import openmm.unit as unit

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import (LoadMonitor, environment, measure_clean, parse, parser, report,  # noqa: E402
                     thread_counts, timed_interleaved, write_json)

from openmm_geom.data import bundled  # noqa: E402
from openmm_geom.export import export_model  # noqa: E402
from openmm_geom.models import Dihedrals, backbone_quadruplets  # noqa: E402
from openmm_geom.openmm import OPES, GridAxis, Metadynamics, TorchCVForce  # noqa: E402

KINDS = ["unbiased", "metad-grid", "metad-hills", "opes", "opes-explore"]


def build(kind, pdb, forcefield, model, threads: int, warm: int):
    degree = unit.degree
    system = forcefield.createSystem(pdb.topology, constraints=app.HBonds)
    if kind == "unbiased":
        bias = TorchCVForce(model, "0")
        system.addForce(bias)
    elif kind.startswith("metad"):
        axes = [GridAxis(cv, -180 * degree, 180 * degree, 20 * degree, periodic=True)
                for cv in ("phi", "psi")]
        bias = Metadynamics(system, model, axes, 300, 8.0, 1.2, 100,
                            method="grid" if kind == "metad-grid" else "hills")
    else:
        bias = OPES(system, model, 300, 40.0, 100, explore=kind == "opes-explore")
    integrator = openmm.LangevinMiddleIntegrator(300, 1.0, 0.002)
    integrator.setRandomNumberSeed(1)
    simulation = app.Simulation(pdb.topology, system, integrator,
                                openmm.Platform.getPlatformByName("CPU"),
                                {"Threads": str(threads)})
    simulation.context.setPositions(pdb.positions)
    if kind == "unbiased":
        def run(n):
            simulation.step(n)
    else:
        def run(n):
            bias.step(simulation, n)
    run(warm)
    held = (bias.n_kernels if isinstance(bias, OPES) else
            len(bias.hills) if isinstance(bias, Metadynamics) else None)
    return run, held


def main(argv=None) -> int:
    args = parse(parser(__doc__, "opes.json", "2000 warm-up steps, chunks of 200"), argv)
    warm, chunk, repeats = (2000, 200, 2) if args.quick else (20000, 1000, 5)
    env, monitor = environment(), LoadMonitor()
    pdb = app.PDBFile(str(bundled("alanine-dipeptide.pdb")))
    forcefield = app.ForceField("amber14-all.xml")
    out = Path(args.out)
    model = export_model(Dihedrals(backbone_quadruplets(pdb.topology)),
                         out.parent / "opes_bench_phipsi.pt", kind="cv", length_unit="nm",
                         periodic=False, example_positions=pdb.positions,
                         cv_names=["phi", "psi"])
    rows, checks = [], []
    for threads in thread_counts(args.threads):
        setups = {kind: build(kind, pdb, forcefield, model.source, threads, warm) for kind in KINDS}
        for kind, (_, held) in setups.items():
            if held is not None:
                checks.append({"check": f"{kind} deposited ({threads} threads)", "ok": held > 0})

        def measure():
            return timed_interleaved([lambda r=run: r(chunk) for run, _ in setups.values()],
                                     warmup=1, repeats=repeats)

        timings, load = measure_clean(measure)
        grid = timings[1][0]
        for kind, (median, fastest, _) in zip(KINDS, timings):
            rows.append({"threads": threads, "setup": kind, "us_per_step": 1e6 * median / chunk,
                         "us_per_step_min": 1e6 * fastest / chunk,
                         "over_metad_grid": median / grid, "kernels_or_hills": setups[kind][1],
                         "other_load": load})
    ok = all(c["ok"] for c in checks)
    lines = [f"{'threads':>7s} {'setup':14s} {'us/step':>9s} {'/metad-grid':>12s} {'kernels/hills':>14s}"]
    for r in rows:
        lines.append(f"{r['threads']:7d} {r['setup']:14s} {r['us_per_step']:9.1f} "
                     f"{r['over_metad_grid']:12.2f} {str(r['kernels_or_hills']):>14s}"
                     + (f"  (other load {r['other_load']:.0%})" if r["other_load"] > 0.1 else ""))
    write_json(out, {"benchmark": "opes", "quick": args.quick, "environment": env,
                     "load": monitor.result(), "rows": rows, "checks": checks, "ok": ok})
    return report("\n".join(lines), rows, checks, ok, out)


if __name__ == "__main__":
    sys.exit(main())
