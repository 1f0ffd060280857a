"""Helpers shared by the benchmark scripts: timing, environment record, JSON output."""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from importlib import metadata
from pathlib import Path


def cores() -> int:
    """Usable CPU cores."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def thread_counts(text: str | None) -> list[int]:
    """``"1,2"`` -> ``[1, 2]``; ``None`` -> 1 and the core count."""
    if text:
        return [int(t) for t in text.split(",")]
    return sorted({1, cores()})


def timed(fn, warmup: int, repeats: int):
    """Call ``fn`` ``warmup`` times untimed, then ``repeats`` times timed (time.perf_counter).

    Returns (median seconds, min seconds, last result).
    """
    result = None
    for _ in range(warmup):
        result = fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times), result


def timed_interleaved(fns, warmup: int, repeats: int) -> list:
    """Like :func:`timed` for several functions, called in turn (a, b, a, b, ...) so that
    none of them is favoured by running first or by drifting machine state.

    Returns one (median seconds, min seconds, last result) per function.
    """
    results = [None] * len(fns)
    times = [[] for _ in fns]
    for rep in range(warmup + repeats):
        for k, fn in enumerate(fns):
            start = time.perf_counter()
            results[k] = fn()
            if rep >= warmup:
                times[k].append(time.perf_counter() - start)
    return [(statistics.median(t), min(t), r) for t, r in zip(times, results)]


def environment() -> dict:
    """Versions and machine state that the numbers depend on."""
    import numpy
    import torch

    env = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu": _cpu_model(),
        "cores": cores(),
        "loadavg_at_start": list(os.getloadavg()),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    for distribution in ("openmm", "acellera-openmmtorch-cpu", "vesin-torch", "torchmd-net",
                         "openmm-geom"):
        try:
            env[distribution] = metadata.version(distribution)
        except metadata.PackageNotFoundError:
            env[distribution] = None
    return env


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


class LoadMonitor:
    """Share of the machine's CPU time used by *other* processes since construction.

    Timings taken while other processes compete for the cores are unreliable (on 2 cores a
    second busy process can slow a multi-threaded step by 10x); every benchmark records this.
    """

    def __init__(self):
        self._start = (time.perf_counter(), self._busy_seconds(), self._own_seconds())

    @staticmethod
    def _busy_seconds() -> float:
        with open("/proc/stat") as f:
            fields = [float(v) for v in f.readline().split()[1:]]
        idle = fields[3] + fields[4]  # idle + iowait
        return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _own_seconds() -> float:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    def result(self) -> dict:
        wall = time.perf_counter() - self._start[0]
        other = (self._busy_seconds() - self._start[1]) - (self._own_seconds() - self._start[2])
        fraction = max(0.0, other) / (wall * cores())
        return {"wall_seconds": wall, "other_processes_cpu_fraction": round(fraction, 3)}


def wait_for_idle(limit_seconds: float, threshold: float = 0.1) -> float:
    """Wait (up to ``limit_seconds``) until other processes use < threshold of the CPUs."""
    start = time.perf_counter()
    while time.perf_counter() - start < limit_seconds:
        monitor = LoadMonitor()
        time.sleep(2.0)
        if monitor.result()["other_processes_cpu_fraction"] < threshold:
            break
    return time.perf_counter() - start


CLEAN_RETRIES = 2  # set to 0 for smoke runs, which must stay short


def measure_clean(measure, retries: int | None = None, limit: float = 0.1, wait: float = 30.0):
    """Run ``measure()``; while other processes took > ``limit`` of the CPUs meanwhile, wait
    for the machine to calm down and measure again (at most ``retries`` times, default
    ``CLEAN_RETRIES``).

    Returns (result of the last attempt, its other-process CPU fraction).
    """
    retries = CLEAN_RETRIES if retries is None else min(retries, CLEAN_RETRIES)
    for attempt in range(retries + 1):
        monitor = LoadMonitor()
        result = measure()
        fraction = monitor.result()["other_processes_cpu_fraction"]
        if fraction <= limit or attempt == retries:
            return result, fraction
        wait_for_idle(wait, limit)


def write_json(path, data: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def fmt(value, spec: str = ".2f") -> str:
    """Format a number for a table; ``-`` for None."""
    return "-" if value is None else format(value, spec)


def parser(doc: str, default_out: str, quick_help: str) -> argparse.ArgumentParser:
    """The options every benchmark script takes: --out, --quick, --threads."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / default_out))
    p.add_argument("--quick", action="store_true", help=quick_help)
    p.add_argument("--threads", help="comma-separated thread counts (default: 1,cores)")
    return p


def parse(p: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """Parse; smoke runs (--quick) must stay short, so they do not retry measurements."""
    global CLEAN_RETRIES
    args = p.parse_args(argv)
    if args.quick:
        CLEAN_RETRIES = 0
    return args


def report(table_text: str, measured_rows: list, checks: list, ok: bool, out) -> int:
    """Print the table, flag contaminated rows and failed checks; the script's exit status."""
    print(table_text)
    dirty = sum(r["other_load"] > 0.1 for r in measured_rows)
    if dirty:
        print(f"WARNING: {dirty} measurement(s) ran while other processes used > 10% of the "
              "CPUs (flagged above): rerun them on an idle machine")
    for c in checks:
        if not c["ok"]:
            print(f"CHECK FAILED: {c}", file=sys.stderr)
    print(f"checks: {'all passed' if ok else 'FAILED'} ({len(checks)}); wrote {out}")
    return 0 if ok else 1
