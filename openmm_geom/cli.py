"""``openmm-geom``: command-line interface. Every command that computes metrics has ``--json``."""
from __future__ import annotations

import argparse
import json
import sys

__all__ = ["main"]


def _emit(args, payload: dict, text: str) -> None:
    print(json.dumps(payload, indent=2) if args.json else text)


def _cmd_doctor(args) -> int:
    from .doctor import format_doctor, run_doctor

    report = run_doctor()
    _emit(args, report, format_doctor(report))
    return 0 if report["ok"] else 1


def _cmd_check_export(args) -> int:
    from .modelfile import ModelFileError
    from .openmm.validation import check_export

    positions = box = None
    if args.positions:
        positions, box = _read_configuration(args.positions)
    try:
        report = check_export(args.model, positions=positions, box=box,
                              platforms=args.platforms, nve_steps=args.nve_steps,
                              seed=args.seed, tolerance=args.tolerance)
    except (ModelFileError, ValueError, TypeError) as error:
        _emit(args, {"passed": False, "error": str(error)}, f"error: {error}")
        return 2
    _emit(args, report.to_dict(), report.format())
    return 0 if report.passed else 1


def _read_configuration(path: str):
    """Positions (nm) and box (nm or None) from a PDB/any mdtraj file (first frame) or npz."""
    import numpy as np

    if path.endswith(".npz"):
        with np.load(path) as data:
            if "positions" not in data:
                raise SystemExit(f"{path} has no 'positions' array")
            positions = data["positions"]
            positions = positions[0] if positions.ndim == 3 else positions
            box = None
            for key in ("box", "box_vectors"):
                if key in data:
                    box = data[key][0] if data[key].ndim == 3 else data[key]
        return positions, box
    import mdtraj

    frame = mdtraj.load_frame(path, 0)
    box = None if frame.unitcell_vectors is None else frame.unitcell_vectors[0]
    return frame.xyz[0].astype(np.float64), box


def _cmd_demo(args) -> int:
    from .demo import run_demo

    summary = run_demo(args.out, steps=args.steps, seed=args.seed, threads=args.threads,
                       progress=not args.no_progress)
    text = "\n".join(f"{k}: {v}" for k, v in summary.items())
    _emit(args, summary, text + f"\nwrote {args.out}/")
    return 0 if summary["check_export_passed"] else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="openmm-geom",
        description="Geometric deep-learning potentials and CVs inside OpenMM.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("doctor", help="check versions, the native module and OpenMM contexts")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_doctor)

    p = sub.add_parser("check-export", help="validate an exported model inside OpenMM")
    p.add_argument("model", help="model file written by export_model")
    p.add_argument("--positions", help="configuration to test (PDB/mdtraj file or npz, nm); "
                                       "default: the example stored in the model file")
    p.add_argument("--platforms", nargs="+", default=["Reference", "CPU"])
    p.add_argument("--nve-steps", type=int, default=400)
    p.add_argument("--tolerance", type=float, default=None,
                   help="relative tolerance (default 1e-6 float64 models, 1e-4 float32)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_check_export)

    p = sub.add_parser("demo", help="export + validate + metadynamics on bundled capped alanine")
    p.add_argument("--out", default="demo-out", help="output directory")
    p.add_argument("--steps", type=int, default=100_000, help="MD steps of 2 fs")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
