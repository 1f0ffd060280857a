"""Page faults per energy+force call: glibc's default malloc vs ``retain_freed_memory()``.

A 3,000-atom water box (1,000 TIP3P waters from ``water_box_pdb``, seed 1; 100 waters with
``--quick``), the production-size attention model (``PotentialSettings`` defaults: 48 features,
4 layers, 4 heads, 8 vector channels) and TorchMD-Net ET (32 channels, 2 layers), untrained
(seed 0), float32, compiled with ``torch.jit.script``; one call = energy + forces
(``torch.autograd.grad``). Each allocator mode runs in its own process (the setting is
process-wide), the modes alternate (default, retained, default, retained, ...) for
``--rounds`` rounds, and within a process the models alternate call by call after two warm-up
calls each. Recorded per model and mode: median milliseconds per call, minor page faults per
call, the kernel's share of the CPU time (system / (user + system), from ``getrusage`` over the
timed calls), peak resident memory of the process. Ratios: default time / retained time
(> 1: retaining is faster).

Check (exit status 1 if it fails): glibc accepted the setting, and retained memory has at most
as many page faults per call as the default for every model (with 5% + 1,000 faults of slack
for the few pages a call touches for the first time either way).

    .venv/bin/python benchmarks/bench_memory.py [--out benchmarks/results/memory.json]
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import LoadMonitor, cores, environment, thread_counts, write_json  # noqa: E402

MODELS = ("attention", "et")


def child(mode: str, waters: int, threads: int, calls: int) -> dict:
    """One process: set the allocator mode, time the models call by call."""
    import numpy as np
    import openmm.app as app
    import openmm.unit as unit
    import torch

    import openmm_geom
    from openmm_geom.data.water import water_box_pdb
    from openmm_geom.models.potentials import build_potential
    from openmm_geom.workflows.config import PotentialSettings

    retained = openmm_geom.retain_freed_memory() if mode == "retained" else False
    openmm_geom.set_threads(threads)
    pdb_path = Path(tempfile.gettempdir()) / f"openmm-geom-bench-water{waters}_seed1.pdb"
    if not pdb_path.is_file():
        water_box_pdb(waters, pdb_path, seed=1)
    pdb = app.PDBFile(str(pdb_path))
    x = np.asarray(pdb.getPositions(asNumpy=True).value_in_unit(unit.nanometer), np.float32)
    box = torch.tensor([v.value_in_unit(unit.nanometer)
                        for v in pdb.topology.getPeriodicBoxVectors()], dtype=torch.float32)
    numbers = [a.element.atomic_number for a in pdb.topology.atoms()]
    models = {}
    for name in MODELS:
        options = PotentialSettings(architecture=name).model_options(0)
        models[name] = torch.jit.script(build_potential(name, numbers, **options))

    def call(model):
        positions = torch.tensor(x, requires_grad=True)
        energy = model(positions, box)
        (grad,) = torch.autograd.grad(energy, positions)
        return float(energy)

    for model in models.values():
        for _ in range(2):
            call(model)
    times = {name: [] for name in models}
    usage = {name: [0.0, 0.0, 0] for name in models}  # user s, system s, minor faults
    for _ in range(calls):
        for name, model in models.items():
            before = resource.getrusage(resource.RUSAGE_SELF)
            start = time.perf_counter()
            call(model)
            times[name].append(time.perf_counter() - start)
            after = resource.getrusage(resource.RUSAGE_SELF)
            usage[name][0] += after.ru_utime - before.ru_utime
            usage[name][1] += after.ru_stime - before.ru_stime
            usage[name][2] += after.ru_minflt - before.ru_minflt
    return {"mode": mode, "retained": retained, "atoms": len(numbers),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "models": {name: {"ms_per_call": 1000 * statistics.median(times[name]),
                              "faults_per_call": usage[name][2] / calls,
                              "system_fraction": usage[name][1] / max(sum(usage[name][:2]), 1e-9)}
                       for name in models}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(HERE / "results" / "memory.json"))
    parser.add_argument("--quick", action="store_true", help="100 waters, 1 round, 2 calls")
    parser.add_argument("--threads", help="comma-separated thread counts (default: 1,cores)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", choices=("default", "retained"), help=argparse.SUPPRESS)
    parser.add_argument("--waters", type=int, default=1000, help=argparse.SUPPRESS)
    parser.add_argument("--calls", type=int, default=4, help=argparse.SUPPRESS)
    parser.add_argument("--one-thread-count", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.waters, args.one_thread_count, args.calls)))
        return 0

    waters, rounds, calls = (100, 1, 2) if args.quick else (1000, args.rounds, 4)
    monitor = LoadMonitor()  # children's CPU time counts as our own
    runs = []
    for threads in thread_counts(args.threads):
        samples = {"default": [], "retained": []}
        for _ in range(rounds):
            for mode in samples:
                done = subprocess.run(
                    [sys.executable, __file__, "--child", mode, "--waters", str(waters),
                     "--calls", str(calls), "--one-thread-count", str(threads)],
                    capture_output=True, text=True, check=True)
                samples[mode].append(json.loads(done.stdout.strip().splitlines()[-1]))
        rows = []
        for name in MODELS:
            row = {"model": name, "threads": threads}
            for mode, results in samples.items():
                values = [r["models"][name] for r in results]
                row[mode] = {key: statistics.median(v[key] for v in values)
                             for key in values[0]}
                row[mode]["peak_rss_mb"] = max(r["peak_rss_mb"] for r in results)
            row["default_over_retained_time"] = (row["default"]["ms_per_call"]
                                                 / row["retained"]["ms_per_call"])
            rows.append(row)
        runs.append({"threads": threads, "atoms": samples["default"][0]["atoms"],
                     "retained_accepted": all(r["retained"] for r in samples["retained"]),
                     "rows": rows})
    ok = all(run["retained_accepted"] for run in runs) and all(
        r["retained"]["faults_per_call"] <= 1.05 * r["default"]["faults_per_call"] + 1000
        for run in runs for r in run["rows"])
    write_json(Path(args.out), {"benchmark": "memory", "quick": args.quick, "rounds": rounds,
                                "calls_per_process": calls, "cores": cores(),
                                "environment": environment(), "load": monitor.result(),
                                "runs": runs, "check_no_more_faults_when_retained": ok,
                                "ok": ok})
    for run in runs:
        for r in run["rows"]:
            print(f"{run['threads']} thread(s), {run['atoms']} atoms, {r['model']:<10} "
                  f"default {r['default']['ms_per_call']:.0f} ms "
                  f"({r['default']['faults_per_call']:.0f} faults, "
                  f"{100 * r['default']['system_fraction']:.0f}% system), retained "
                  f"{r['retained']['ms_per_call']:.0f} ms "
                  f"({r['retained']['faults_per_call']:.0f} faults, "
                  f"{100 * r['retained']['system_fraction']:.0f}% system): "
                  f"x{r['default_over_retained_time']:.2f}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
