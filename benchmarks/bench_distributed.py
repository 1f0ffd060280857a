"""Distributed benchmark: wall time of independent-task workloads, serial vs a Dask
LocalCluster of two worker processes (``--cluster local:2``), on the same machine.

(1) ``openmm-geom datagen PDB --trajectories 4`` (capped alanine, amber14, vacuum), serial
    with one thread against ``local:2`` with one thread per worker; the trajectory files must
    be identical (sha256 in the manifests).
(2) ``openmm-geom cg train`` with 5 folds on the first trajectory: serial with 1 thread, serial
    with 2 threads (the default use of both cores), and ``local:2`` with 1 thread per worker;
    the serial 1-thread and ``local:2`` trainings must agree (training.json).

Each command runs in its own process, as a user would run it (cluster start-up included);
the rows alternate between the settings, ``--repeats`` times, and the median is reported.

    .venv/bin/python benchmarks/bench_distributed.py --out benchmarks/results/distributed.json
"""
from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
from _common import LoadMonitor, environment, measure_clean, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PDB = ROOT / "openmm_geom" / "data" / "alanine-dipeptide.pdb"
CLI = [sys.executable, "-m", "openmm_geom.cli"]


def _run(args: list) -> float:
    started = time.perf_counter()
    done = subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, args))} failed:\n{done.stderr[-3000:]}")
    return seconds


def bench(frames: int, epochs: int, repeats: int) -> tuple:
    root = Path(tempfile.mkdtemp(prefix="bench_distributed_"))
    datagen = ["datagen", PDB, "--trajectories", "4", "--frames", frames, "--interval-ps",
               "0.1", "--equilibration-ps", "1", "--no-progress"]
    settings = {"datagen serial, 1 thread": [*datagen, "--threads", "1"],
                "datagen local:2, 1 thread per worker": [*datagen, "--threads", "1",
                                                         "--cluster", "local:2"]}
    times: dict = {name: [] for name in settings}
    try:
        for rep in range(repeats):
            for name, args in settings.items():
                out = root / f"{name.split(',')[0].replace(' ', '_')}_{rep}"
                times[name].append(_run([*args, "--out", out]))
        manifests = [json.loads((root / f"datagen_{kind}_0" / "manifest.json").read_text())
                     for kind in ("serial", "local:2")]
        same_files = ([t["sha256"] for t in manifests[0]["trajectories"]]
                      == [t["sha256"] for t in manifests[1]["trajectories"]])
        data = root / "datagen_serial_0" / "trajectory-000.npz"
        train = ["cg", "train", "--data", data, "--quick", "--folds", "5", "--epochs", epochs,
                 "--no-progress"]
        cg = {"cg train serial, 1 thread": [*train, "--threads", "1"],
              "cg train serial, 2 threads": [*train, "--threads", "2"],
              "cg train local:2, 1 thread per worker": [*train, "--threads", "1",
                                                        "--cluster", "local:2"]}
        for name in cg:
            times[name] = []
        for rep in range(repeats):
            for k, (name, args) in enumerate(cg.items()):
                times[name].append(_run([*args, "--out", root / f"cg{k}_{rep}"]))
        # serial 1 thread (setting 0) against local:2 (setting 2), first repeat
        histories = [json.loads((root / f"cg{k}_0" / "training.json").read_text())
                     for k in (0, 2)]
        same_training = histories[0] == histories[1]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return times, same_files, same_training


def main(argv=None) -> int:
    options = _common.parser(__doc__, "distributed.json", "short runs, about a minute")
    options.add_argument("--repeats", type=int, default=3, help="alternating runs (default 3)")
    args = _common.parse(options, argv)
    frames, epochs = (120, 1) if args.quick else (1000, 4)
    repeats = 1 if args.quick else args.repeats
    env, monitor = environment(), LoadMonitor()
    (times, same_files, same_training), load = measure_clean(
        lambda: bench(frames, epochs, repeats), retries=0 if args.quick else None)
    rows = [{"setting": name, "seconds": statistics.median(values), "runs": values}
            for name, values in times.items()]
    by_name = {r["setting"]: r["seconds"] for r in rows}
    speedups = {
        "datagen": by_name["datagen serial, 1 thread"]
        / by_name["datagen local:2, 1 thread per worker"],
        "cg_train_vs_serial_1_thread": by_name["cg train serial, 1 thread"]
        / by_name["cg train local:2, 1 thread per worker"],
        "cg_train_vs_serial_2_threads": by_name["cg train serial, 2 threads"]
        / by_name["cg train local:2, 1 thread per worker"],
    }
    checks = [{"check": "datagen files identical serial vs local:2", "ok": bool(same_files)},
              {"check": "cg training identical serial (1 thread) vs local:2",
               "ok": bool(same_training)}]
    for row in rows:
        row["other_load"] = load
    ok = all(c["ok"] for c in checks)
    write_json(args.out, {"benchmark": "distributed", "quick": args.quick,
                          "config": {"datagen_frames": frames, "interval_ps": 0.1,
                                     "trajectories": 4, "cg_folds": 5, "cg_epochs": epochs,
                                     "cg_settings": "--quick", "repeats": repeats},
                          "environment": env, "load": monitor.result(), "rows": rows,
                          "speedups": speedups, "checks": checks, "ok": ok})
    lines = ["wall time per command (median), cluster start-up included"]
    lines += [f"  {r['setting']:42s} {r['seconds']:8.1f} s" for r in rows]
    lines += [f"  speed-up {k}: {v:.2f}x" for k, v in speedups.items()]
    return _common.report("\n".join(lines), rows, checks, ok, args.out)


if __name__ == "__main__":
    sys.exit(main())
