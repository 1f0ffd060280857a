"""``openmm-geom potential``: all-atom ML potentials (train | export | simulate | evaluate |
reproduce).

The settings options are the fields of :class:`~openmm_geom.workflows.config.PotentialSettings`
(each step gets the fields of its stage); the work is :mod:`openmm_geom.workflows.potential`.
"""
from __future__ import annotations

from .common import add_standard, emit, show_progress, summary_text

__all__ = ["add_commands"]


def _settings(args):
    """The production (or --quick) budget for --model, changed by the options given."""
    from ..settings import override, overrides_from
    from ..workflows.config import PotentialSettings, budget

    architecture = getattr(args, "model", None) or "attention"
    base = budget("quick" if args.quick else "production", architecture)
    return override(base, **overrides_from(args, PotentialSettings))


def run_potential(args) -> int:
    from ..threads import set_threads
    from ..workflows import potential as wf

    settings = _settings(args)
    progress = show_progress(args)
    command = args.potential_command
    if command != "reproduce":
        set_threads(args.threads)
    if command == "train":
        from ..data.potential_data import load_potential_data

        result = wf.train(load_potential_data(args.data), args.out, settings, seed=args.seed,
                          progress=progress)
    elif command == "export":
        result = wf.export_for_structure(args.checkpoint, args.pdb, args.out)
    elif command == "simulate":
        result = wf.simulate_structure(args.pdb, args.out, settings, exported=args.exported,
                                       checkpoint=args.checkpoint, seed=args.seed or 1,
                                       ensemble=args.ensemble,
                                       spread_models=args.spread_models or (),
                                       spread_threshold=args.spread_threshold,
                                       threads=args.threads, progress=progress)
    elif command == "evaluate":
        result = wf.evaluate_checkpoint(args.checkpoint, args.data, args.out)
    else:  # reproduce
        result = wf.reproduce(args.data, args.out, architecture=args.model, seed=args.seed,
                              settings=settings, threads=args.threads, progress=progress)
    emit(args, result, summary_text(result))
    return 0


def add_commands(sub) -> None:
    """Register ``potential`` and its steps."""
    from ..models.names import ARCHITECTURES
    from ..settings import add_options
    from ..workflows.config import PotentialSettings, budget

    ptp = sub.add_parser("potential", help="all-atom ML potentials: train | export | simulate "
                                           "| evaluate | reproduce",
                         description="Attention or TorchMD-Net potentials trained on energies "
                                     "and forces, exported for OpenMM, run in NVT and NVE.")
    ptsub = ptp.add_subparsers(dest="potential_command", required=True, metavar="STEP")

    def common(q, out_help="output directory", *, resumable=False):
        q.add_argument("--quick", action="store_true",
                       help="start from tiny settings for smoke tests instead of the "
                            "production budget")
        add_standard(q, run_potential, out=out_help, seed=0, resumable=resumable)

    def settings(q, stages=None):
        """The PotentialSettings fields of these stages (None: all)."""
        add_options(q, PotentialSettings, defaults=budget("production", "attention"),
                    stages=stages, also={"--quick": budget("quick", "attention")})

    def model_choice(q):
        q.add_argument("--model", default="attention", choices=list(ARCHITECTURES),
                       help="architecture (default: attention)")

    q = ptsub.add_parser("train", help="energy+force training; test-block errors, plots "
                                       "(resumable)")
    q.add_argument("--data", required=True, metavar="FILE",
                   help="npz: positions, forces, energies, box_vectors, atomic_numbers "
                        "(datagen files work as they are) (required)")
    model_choice(q)
    common(q, resumable=True)
    settings(q, ["train"])
    q = ptsub.add_parser("export", help="TorchScript file for OpenMM, for the system in a PDB")
    q.add_argument("--checkpoint", required=True, metavar="FILE",
                   help="model.pt from `potential train` (required)")
    q.add_argument("--pdb", required=True, metavar="FILE",
                   help="the target system; CRYST1 makes it periodic (required)")
    common(q, "output file (.pt)")
    q = ptsub.add_parser("simulate", help="NVT or NVE run in OpenMM with the ML potential")
    q.add_argument("--pdb", required=True, metavar="FILE",
                   help="start structure and box (required)")
    given = q.add_mutually_exclusive_group(required=True)
    given.add_argument("--exported", metavar="FILE",
                       help="file from `potential export` (this or --checkpoint is required)")
    given.add_argument("--checkpoint", metavar="FILE",
                       help="model.pt, exported for the PDB into OUT/model_openmm.pt first "
                            "(this or --exported is required)")
    q.add_argument("--ensemble", default="nvt", choices=["nvt", "nve"],
                   help="Langevin NVT or Verlet NVE (default: nvt)")
    q.add_argument("--spread-models", nargs="+", metavar="FILE",
                   help="exported ensemble members whose force spread is logged (default: "
                        "none)")
    q.add_argument("--spread-threshold", type=float, metavar="KJ_MOL_NM",
                   help="warn when the force spread exceeds this, kJ/mol/nm (default: no "
                        "warning)")
    common(q)
    settings(q, ["simulate"])
    q = ptsub.add_parser("evaluate", help="errors of a trained model on a data file")
    q.add_argument("--checkpoint", required=True, metavar="FILE",
                   help="model.pt from `potential train` (required)")
    q.add_argument("--data", required=True, metavar="FILE",
                   help="npz with positions, forces, energies (required)")
    common(q)
    q = ptsub.add_parser("reproduce", help="train, test, export, NVT + NVE in OpenMM; one JSON "
                                           "(resumable: the training)")
    q.add_argument("--data", required=True, metavar="FILE",
                   help="npz with positions, forces, energies, boxes (required)")
    model_choice(q)
    common(q, resumable=True)
    settings(q)
