"""``openmm-geom demo``: the main jobs on the bundled capped alanine, end to end."""
from __future__ import annotations

from .common import add_standard, emit, show_progress

__all__ = ["add_commands"]


def run_demo(args) -> int:
    from .. import arguments as check
    from ..demo import run_demo as demo

    steps = check.count("--steps", args.steps)
    frames = check.count("--frames", args.frames)
    seed = check.count("--seed", args.seed, minimum=0)
    summary = demo(args.out, part=args.part, steps=steps, frames=frames, seed=seed,
                   threads=args.threads, progress=show_progress(args))
    lines = []
    for part, values in summary.items():
        lines.append(f"[{part}]")
        lines.extend(f"  {k}: {v}" for k, v in values.items())
    emit(args, summary, "\n".join(lines) + f"\nwrote {args.out}/")
    return 0 if summary.get("cv", {}).get("check_export_passed", True) else 1


def add_commands(sub) -> None:
    """Register ``demo``."""
    p = sub.add_parser("demo", help="the main jobs on bundled capped alanine (cv and cg parts)")
    p.add_argument("--out", default="demo-out", metavar="DIR",
                   help="output directory (default: demo-out)")
    p.add_argument("--part", default="all", choices=["all", "cv", "cg"],
                   help="which part to run (default: all)")
    p.add_argument("--steps", type=int, default=100_000, metavar="N",
                   help="cv part: metadynamics steps of 2 fs (default: 100000)")
    p.add_argument("--frames", type=int, default=10_000, metavar="N",
                   help="cg part: all-atom frames per reference run (default: 10000)")
    add_standard(p, run_demo, seed=1)
