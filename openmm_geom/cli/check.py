"""``openmm-geom doctor`` and ``openmm-geom check-export``: is the installation, and is an
exported model, fit for OpenMM? Both exit 1 when a check fails."""
from __future__ import annotations

from .common import add_standard, emit

__all__ = ["add_commands", "available_platforms", "check_platforms", "read_configuration"]


def available_platforms() -> list:
    """Names of the OpenMM platforms this installation has, e.g. ``["Reference", "CPU"]``."""
    import openmm

    return [openmm.Platform.getPlatform(i).getName()
            for i in range(openmm.Platform.getNumPlatforms())]


def check_platforms(names, option: str = "--platforms") -> list:
    """``names`` if every one is an available OpenMM platform, else a ValueError listing them."""
    available = available_platforms()
    missing = [name for name in names if name not in available]
    if missing:
        raise ValueError(f"{option}: OpenMM platform {', '.join(map(repr, missing))} is not "
                         f"available here; available: {', '.join(available)}")
    return list(names)


def read_configuration(path: str):
    """Positions (nm) and box (nm or None) from a PDB/any mdtraj file (first frame) or npz."""
    from pathlib import Path

    import numpy as np

    from ..errors import FileFormatError
    from ..io import read_npz

    if not Path(path).is_file():
        raise FileNotFoundError(f"--positions: no such file: {path}")
    if path.endswith(".npz"):
        data = read_npz(path, "configuration file")
        if "positions" not in data:
            raise FileFormatError(f"{path} has no 'positions' array (it has: {sorted(data)})")
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


def run_doctor(args) -> int:
    from ..doctor import format_doctor, run_doctor as doctor

    report = doctor()
    emit(args, report, format_doctor(report))
    return 0 if report["ok"] else 1


def run_check_export(args) -> int:
    from ..openmm import check_export

    platforms = check_platforms(args.platforms)
    positions = box = None
    if args.positions:
        positions, box = read_configuration(args.positions)
    report = check_export(args.model, positions=positions, box=box, platforms=platforms,
                          nve_steps=args.nve_steps, seed=args.seed, tolerance=args.tolerance)
    emit(args, report.to_dict(), report.format())
    return 0 if report.passed else 1


def add_commands(sub) -> None:
    """Register ``doctor`` and ``check-export``."""
    p = sub.add_parser("doctor", help="check versions, the native module and OpenMM contexts "
                                      "(exit 1 if something is wrong)",
                       description="Versions, the native module, and TorchForce / TorchCVForce "
                                   "Contexts per platform, each in a child process.")
    add_standard(p, run_doctor, threads=False, progress=False)

    p = sub.add_parser("check-export", help="validate an exported model inside OpenMM (exit 1 "
                                            "if a check fails)",
                       description="Energy and forces in OpenMM Contexts vs the model, finite "
                                   "differences, translation/rotation, a short NVE run.")
    p.add_argument("model", help="model file written by export_model or an `export` command")
    p.add_argument("--positions", metavar="FILE",
                   help="configuration to test: PDB/mdtraj file or npz with 'positions' (nm) "
                        "(default: the example stored in the model file)")
    p.add_argument("--platforms", nargs="+", default=["Reference", "CPU"], metavar="NAME",
                   help="OpenMM platforms to run the model on (default: Reference CPU)")
    p.add_argument("--nve-steps", type=int, default=400, metavar="N",
                   help="steps of the NVE energy-conservation run (default: 400)")
    p.add_argument("--tolerance", type=float, default=None, metavar="X",
                   help="relative tolerance of the comparisons (default: 1e-6 for float64 "
                        "models, 1e-4 for float32)")
    add_standard(p, run_check_export, seed=0, threads=False, progress=False)
    p.set_defaults(json_error={"passed": False})
