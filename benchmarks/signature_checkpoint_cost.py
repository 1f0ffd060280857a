"""Time and peak memory of one signature forward+backward, with and without checkpointing.

Measures the two numbers the README quotes for the op's activation checkpointing. Each mode
runs in its own process (peak RSS is per process):

    MALLOC_MMAP_THRESHOLD_=1048576 .venv/bin/python benchmarks/signature_checkpoint_cost.py
    .venv/bin/python benchmarks/signature_checkpoint_cost.py --length 2000   # RSS without it
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch


def one(mode: str, batch: int, length: int, channels: int, depth: int, threads: int) -> dict:
    from openmm_geom.ops import signature as sig

    torch.set_num_threads(threads)
    if mode == "recorded":
        sig._checkpoint_bytes = lambda: 1 << 50  # never checkpoint
    path = torch.randn(batch, length, channels, dtype=torch.float64,
                       generator=torch.Generator().manual_seed(0)).cumsum(1) / length ** 0.5
    weights = torch.randn(sig.signature_channels(channels, depth), dtype=torch.float64)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(3):
        leaf = path.clone().requires_grad_()
        start = time.perf_counter()
        (sig.signature(leaf, depth, max_bytes=1 << 50) @ weights).sum().backward()
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"mode": mode, "seconds_median": sorted(times)[1],
            "peak_rss_growth_GB": (peak - before) / 1e6,
            "estimated_GB": sig.signature_memory_bytes(batch, length, channels, depth, 8, True)
            / 1e9 if mode == "checkpointed" else sig._recorded_bytes(batch, length, channels,
                                                                      depth, 8) / 1e9}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--length", type=int, default=1000)
    p.add_argument("--channels", type=int, default=8)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--mode", choices=["checkpointed", "recorded"])
    args = p.parse_args()
    shape = [args.batch, args.length, args.channels, args.depth, args.threads]
    if args.mode:
        print(json.dumps(one(args.mode, *shape)))
        return 0
    for mode in ("checkpointed", "recorded"):
        done = subprocess.run([sys.executable, __file__, "--mode", mode,
                               *sum(([f"--{k}", str(v)] for k, v in zip(
                                   ("batch", "length", "channels", "depth", "threads"), shape)),
                                    [])], capture_output=True, text=True, check=True)
        print(done.stdout.strip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
