"""Run every benchmark, each in its own process, and collect the results.

Writes DIR/neighbors.json (bench_neighbors.py), DIR/bridge.json (bench_bridge.py),
DIR/torchcv.json (bench_torchcv.py), DIR/cg.json (bench_cg.py), DIR/signature.json
(bench_signature.py), DIR/potential.json (bench_potential.py), DIR/cv.json (bench_cv.py) and
DIR/compile.json (bench_compile.py), DIR/opes.json (bench_opes.py), DIR/memory.json
(bench_memory.py), DIR/distributed.json (bench_distributed.py) and DIR/summary.json (headline numbers, pass/fail, machine load), and prints the tables. Exits
non-zero if a benchmark fails, including any of its correctness checks.

``--omp-passive`` also repeats every benchmark (torchmd-net neighbour lists left out) with
``OMP_WAIT_POLICY=PASSIVE`` into DIR/*_omp_passive.json: torch's OpenMP workers then sleep
instead of spinning, which matters when another process competes for the cores (it must be
set before torch starts, hence separate processes).

``--wait-idle S`` first waits up to S seconds for other processes to leave the CPUs; each
measurement is also retried when other processes took > 10% of the CPUs meanwhile, and the
remaining contamination is recorded ("other_load") and flagged in the tables.

    .venv/bin/python benchmarks/run_all.py --out benchmarks/results          # ~32 minutes
    .venv/bin/python benchmarks/run_all.py --out /tmp/bench --quick          # smoke, ~2 min
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import wait_for_idle, write_json  # noqa: E402





def run(script: str, out: Path, extra_args: list, extra_env: dict) -> dict:
    """Run one benchmark script; return its record for the summary."""
    command = [sys.executable, str(HERE / script), "--out", str(out), *extra_args]
    label = " ".join([*(f"{k}={v}" for k, v in extra_env.items()), script, *extra_args])
    print(f"== {label}", flush=True)
    out.unlink(missing_ok=True)  # never report a stale file
    start = time.perf_counter()
    process = subprocess.run(command, env={**os.environ, **extra_env})
    record = {"command": label, "json": out.name, "returncode": process.returncode,
              "seconds": round(time.perf_counter() - start, 1)}
    if out.exists():
        data = json.loads(out.read_text())
        record.update(ok=data["ok"] and process.returncode == 0, load=data["load"],
                      headline=headline(data))
    else:
        record.update(ok=False, error="the benchmark wrote no result file")
    print(flush=True)
    return record


def headline(data: dict) -> list:
    """The numbers worth reading first, one flat dict per row."""
    if data["benchmark"] == "neighbors":
        return [{"threads": run["threads"], "n_atoms": r["n_atoms"],
                 "ours_ms": round(r["ours_ms"], 3), "vesin_ms": round(r["vesin_ms"], 3),
                 "ours_over_vesin": round(r["overhead_ratio"], 3),
                 "functional_over_vesin": round(r["functional_over_vesin"], 3),
                 "torchmdnet_ms": None if r["torchmdnet_ms"] is None
                 else round(r["torchmdnet_ms"], 1),
                 "slope_ours": run["scaling_exponent"]["ours"],
                 "slope_vesin": run["scaling_exponent"]["vesin"]}
                for run in data["runs"] for r in run["rows"]]
    if data["benchmark"] == "torchcv":
        return [{"threads": r["threads"], "k": r["k"],
                 "floor_calls_per_s": round(r["floor_calls_per_s"], 1),
                 "amber_steps_per_s": round(r["amber_steps_per_s"], 0),
                 "ours_ns_per_day": round(r["ours_ns_per_day"], 2),
                 "peer_ns_per_day": round(r["peer_ns_per_day"], 2),
                 "speedup_ours_over_peer": round(r["speedup_ours_over_peer"], 3),
                 "goal": r["goal"], "goal_met": r["goal_met"],
                 "fused_ns_per_day": round(r["fused_ns_per_day"], 2),
                 "ours_over_fused": round(r["ours_over_fused"], 3)}
                for r in data["rows"]]
    if data["benchmark"] == "cv":
        return ([{"threads": r["threads"],
                  "amber_ns_per_day": round(r["amber_ns_per_day"], 1),
                  "zero_ns_per_day": round(r["zero_ns_per_day"], 2),
                  "ours_ns_per_day": round(r["ours_ns_per_day"], 2),
                  "peer_ns_per_day": round(r["peer_ns_per_day"], 2),
                  "speedup_ours_over_peer": round(r["speedup_ours_over_peer"], 3),
                  "goal": r["goal"], "goal_met": r["goal_met"]} for r in data["md"]]
                + [{"threads": r["threads"], "featurize": r["system"], "n_atoms": r["n_atoms"],
                    "frames_per_s": round(r["frames_per_s"], 1)} for r in data["featurize"]]
                + [{"threads": r["threads"], "vampnet_lobe": r["lobe"],
                    "ours_seconds_per_epoch": round(r["ours_seconds_per_epoch"], 3),
                    "deeptime_seconds_per_epoch": round(r["deeptime_seconds_per_epoch"], 3),
                    "speedup_ours_over_deeptime": round(r["speedup_ours_over_deeptime"], 3)}
                   for r in data["vampnet"]])
    if data["benchmark"] == "cg":
        def rounded(value, digits):
            return None if value is None else round(value, digits)

        return [{"system": r["system"], "replicas": r["replicas"], "threads": r["threads"],
                 **{f"{m}_replica_steps_per_s": rounded(r[f"{m}_replica_steps_per_s"], 0)
                    for m in ("ours", "torchmd", "omm_replica", "omm_batched", "floor")},
                 "ours_over_torchmd": rounded(r["ours_over_torchmd"], 3),
                 "ours_over_omm_replica": rounded(r.get("ours_over_omm_replica"), 3),
                 "goal": r["goal"], "goal_met": r["goal_met"],
                 "skipped": r["skipped"] or None}
                for r in data["rows"]]
    if data["benchmark"] == "signature":
        rows = [{"kind": r["kind"], "length": r["length"], "channels": r["channels"],
                 "depth": r["depth"], "skipped": r["skipped"]} if r["skipped"] else
                {"kind": r["kind"], "threads": r.get("threads"), "length": r["length"],
                 "channels": r["channels"], "depth": r["depth"],
                 "forward_ours_over_pysiglib": round(r["forward_ours_over_pysiglib"], 3),
                 "backward_ours_over_pysiglib": round(r["backward_ours_over_pysiglib"], 3),
                 "goal_met": r.get("goal_met")}
                for r in data["rows"]]
        memory = data.get("memory")
        extra = [] if memory is None else [
            {"memory_peak_added_MiB": round(memory["peak_added_bytes"] / 2 ** 20, 1),
             "goal_met": memory["goal_met"]}]
        return rows + extra + [{"reporter": r["setting"], "ns_per_day": round(r["ns_per_day"], 1),
                                "slowdown": round(r["slowdown"], 3)}
                               for r in data["reporter"]["rows"]]
    if data["benchmark"] == "compile":  # eager vs torch.compile, ratios (bench_compile.py)
        keys = ("threads", "cg_static_speedup", "cg_dynamic_speedup", "cg_static_compile_cold_s",
                "cg_static_compile_cached_s", "cg_static_break_even_steps_cached", "pf_speedup",
                "pf_compile_cold_s", "pf_compile_cached_s", "pf_break_even_steps_cached")
        return [{k: (round(r[k], 3) if isinstance(r.get(k), float) else r.get(k)) for k in keys}
                for r in data["rows"]]
    if data["benchmark"] == "potential":
        def rounded(value, digits=3):
            return None if value is None else round(value, digits)

        rows = []
        for block in data["runs"]:
            at = {(r["n_atoms"], r["model"]): r for r in block["rows"]}
            for entry in block["ratios"]:
                n = entry["n_atoms"]
                row = {"threads": block["threads"], "n_atoms": n,
                       "attention_openmm_atom_steps_per_s": rounded(
                           at[n, "attention"].get("openmm_atom_steps_per_s"), 0)}
                for key, value in entry.items():
                    if key != "n_atoms":
                        row[key.replace("attention_over_", "att_over_")] = rounded(value)
                row["skipped"] = sorted(name for (size, name), r in at.items()
                                        if size == n and "skipped" in r) or None
                rows.append(row)
            rows.append({"threads": block["threads"], "scaling_exponent": {
                name: {k: rounded(v) for k, v in e.items() if k != "sizes"}
                for name, e in block["scaling_exponent"].items()},
                "goal_throughput_met": block["goal"]["throughput_met"],
                "goal_force_mae_met": block["goal"]["force_mae_met"]})
        return rows
    if data["benchmark"] == "memory":
        return [{"threads": run["threads"], "n_atoms": run["atoms"], "model": r["model"],
                 "default_ms": round(r["default"]["ms_per_call"], 1),
                 "retained_ms": round(r["retained"]["ms_per_call"], 1),
                 "default_faults": round(r["default"]["faults_per_call"]),
                 "retained_faults": round(r["retained"]["faults_per_call"]),
                 "default_system_fraction": round(r["default"]["system_fraction"], 3),
                 "retained_system_fraction": round(r["retained"]["system_fraction"], 3),
                 "default_over_retained_time": round(r["default_over_retained_time"], 3)}
                for run in data["runs"] for r in run["rows"]]
    if data["benchmark"] == "distributed":
        return [{"setting": r["setting"], "seconds": round(r["seconds"], 1)} for r in data["rows"]] + [
            {f"speedup_{k}": round(v, 3) for k, v in data["speedups"].items()}]
    if data["benchmark"] == "opes":
        return [{"threads": r["threads"], "setup": r["setup"],
                 "us_per_step": round(r["us_per_step"], 1),
                 "over_metad_grid": round(r["over_metad_grid"], 3),
                 "kernels_or_hills": r["kernels_or_hills"]} for r in data["rows"]]
    return [{"threads": r["threads"], "n_atoms": s["n_atoms"],
             "floor_calls_per_s": round(r["floor_calls_per_s"], 1),
             "torchforce_steps_per_s": round(r["torchforce_steps_per_s"], 1),
             "torchforce_over_floor": round(r["ratio_torchforce_over_floor"], 3),
             "pythonforce_steps_per_s": round(r["pythonforce_steps_per_s"], 1)}
            for s in data["systems"] for r in s["by_threads"]]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(HERE / "results"), help="output directory")
    parser.add_argument("--quick", action="store_true", help="smoke run (small N, short)")
    parser.add_argument("--threads", help="comma-separated thread counts (default: 1,cores)")
    parser.add_argument("--omp-passive", action="store_true",
                        help="also run each with OMP_WAIT_POLICY=PASSIVE (*_omp_passive.json)")
    parser.add_argument("--wait-idle", type=float, default=0.0, metavar="SECONDS",
                        help="first wait up to SECONDS for other processes to leave the CPUs")
    parser.add_argument("--only", help="comma-separated benchmark names (neighbors, bridge, "
                        "torchcv, cg, signature, potential, cv, compile, opes, memory): run these and update their "
                        "entries in summary.json")
    args = parser.parse_args(argv)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    waited = wait_for_idle(args.wait_idle) if args.wait_idle > 0 else 0.0
    common = (["--quick"] if args.quick else []) + (["--threads", args.threads]
                                                     if args.threads else [])
    jobs = [("bench_neighbors.py", "neighbors.json", [], {}),
            ("bench_bridge.py", "bridge.json", [], {}),
            ("bench_torchcv.py", "torchcv.json", [], {}),
            ("bench_cg.py", "cg.json", [], {}),
            ("bench_signature.py", "signature.json", [], {}),
            ("bench_potential.py", "potential.json", [], {}),
            ("bench_cv.py", "cv.json", [], {}),
            ("bench_compile.py", "compile.json", [], {}),
            ("bench_opes.py", "opes.json", [], {}),
            ("bench_memory.py", "memory.json", [], {}),
            ("bench_distributed.py", "distributed.json", [], {})]
    if args.omp_passive:
        passive = {"OMP_WAIT_POLICY": "PASSIVE"}
        jobs += [("bench_neighbors.py", "neighbors_omp_passive.json", ["--no-torchmdnet"],
                  passive),
                 ("bench_bridge.py", "bridge_omp_passive.json", [], passive),
                 ("bench_torchcv.py", "torchcv_omp_passive.json", [], passive),
                 ("bench_cg.py", "cg_omp_passive.json", ["--no-profile"], passive),
                 ("bench_signature.py", "signature_omp_passive.json", [], passive),
                 ("bench_potential.py", "potential_omp_passive.json", [], passive),
                 ("bench_cv.py", "cv_omp_passive.json", [], passive)]
    kept = []
    if args.only:
        wanted = {f"{name.strip()}.json" for name in args.only.split(",")}
        unknown = wanted - {name for _, name, _, _ in jobs}
        if unknown:
            parser.error(f"unknown benchmark(s) {sorted(unknown)}")
        jobs = [job for job in jobs if job[1] in wanted]
        previous = out / "summary.json"
        if previous.is_file():  # keep the other benchmarks' latest records
            kept = [r for r in json.loads(previous.read_text())["benchmarks"]
                    if Path(r["json"]).name not in wanted]
    start = time.perf_counter()
    records = kept + [run(script, out / name, common + extra, env)
                      for script, name, extra, env in jobs]
    ok = all(r["ok"] for r in records)
    write_json(out / "summary.json", {"ok": ok, "quick": args.quick,
                                      "waited_for_idle_seconds": round(waited, 1),
                                      "seconds": round(time.perf_counter() - start, 1),
                                      "benchmarks": records})
    for r in records:
        status = "ok" if r["ok"] else f"FAILED (exit {r['returncode']})"
        load = r.get("load", {}).get("other_processes_cpu_fraction")
        print(f"{r['command']:<60} {status:<18} {r['seconds']:>6.1f} s  other load {load}")
    print(f"wrote {out / 'summary.json'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
