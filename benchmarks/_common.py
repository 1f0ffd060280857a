"""Helpers shared by the benchmark scripts: timing, environment record, JSON output."""
from __future__ import annotations

import json
import os
import platform
import statistics
import time
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
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    for name, module in (("openmm", "openmm"), ("openmm_torch", "openmmtorch"),
                         ("vesin_torch", "vesin_torch"), ("torchmd_net", "torchmdnet"),
                         ("openmm_geom", "openmm_geom")):
        try:
            env[name] = getattr(__import__(module), "__version__", "unknown")
        except ImportError:
            env[name] = None
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


def write_json(path, data: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def fmt(value, spec: str = ".2f") -> str:
    """Format a number for a table; ``-`` for None."""
    return "-" if value is None else format(value, spec)
