"""``openmm-geom potential``: all-atom ML potentials (train | export | simulate | evaluate |
reproduce | pareto).

The settings options are the fields of :class:`~openmm_geom.workflows.config.PotentialSettings`
(each step gets the fields of its stage); the work is :mod:`openmm_geom.workflows.potential`.
"""
from __future__ import annotations

from .common import add_cluster, add_standard, emit, show_progress, summary_text

__all__ = ["add_commands"]


def _settings(args):
    """The production (or --quick) budget for --model, changed by the options given."""
    from ..settings import override, overrides_from
    from ..workflows.config import PotentialSettings, budget

    architecture = getattr(args, "model", None) or "attention"
    base = budget("quick" if args.quick else "production", architecture,
                  getattr(args, "size", None) or "medium")
    return override(base, **overrides_from(args, PotentialSettings))


def run_potential(args) -> int:
    from ..threads import retain_freed_memory, set_threads
    from ..workflows import potential as wf

    retain_freed_memory()  # per-call page faults cost 20-60% of the CPU time at 3,000 atoms

    progress = show_progress(args)
    command = args.potential_command
    if command == "pareto":
        from ..parallel import TaskRunner, parse_cluster
        from ..workflows.potential_pareto import pareto

        runner = TaskRunner(parse_cluster(args.cluster, args.cluster_file, args.threads),
                            threads=args.threads, timeout=args.cluster_timeout, announce=True)
        result = pareto(args.data, args.out, models=[_model_size(m) for m in args.models],
                        seeds=args.seeds, atoms=args.atoms, threads=args.speed_threads,
                        budget_name="quick" if args.quick else "production",
                        training_threads=args.threads, speed_seconds=args.speed_seconds,
                        progress=progress, runner=runner)
        emit(args, result, _pareto_text(result))
        return 0
    settings = _settings(args)
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
                              settings=settings, threads=args.threads, progress=progress,
                              size=args.size)
    emit(args, result, summary_text(result))
    return 0


def _model_size(text: str) -> tuple:
    """``attention:small`` -> ("attention", "small")."""
    architecture, _, size = text.partition(":")
    if not size:
        raise ValueError(f"--models takes ARCHITECTURE:SIZE, e.g. attention:small; got {text!r}")
    return architecture, size


def _pareto_text(result: dict) -> str:
    target = str(result["boxes"][-1]["target"])
    lines = [f"{'model':<20} {'parameters':>10} {'force MAE':>10}  steps/s at ~{target} atoms "
             f"(threads {', '.join(map(str, result['threads']))})"]
    for m in result["models"]:
        rates = ", ".join(f"{v:.3g}" for v in m["steps_per_second_openmm"][target].values())
        lines.append(f"{m['architecture'] + ':' + m['size']:<20} {m['parameters']:>10} "
                     f"{m['force_mae']:>10.1f}  {rates}")
    goal = result["goal"]
    if goal is not None:
        lines.append(f"goal ({goal['criterion']}): {'met by ' + ', '.join(goal['by']) if goal['met'] else 'not met'}")
    return "\n".join(lines)


def add_commands(sub) -> None:
    """Register ``potential`` and its steps."""
    from ..models.names import ARCHITECTURES
    from ..settings import add_options
    from ..workflows.config import PARETO_GRID, SIZES, PotentialSettings, budget

    ptp = sub.add_parser("potential", help="all-atom ML potentials: train | export | simulate "
                                           "| evaluate | reproduce | pareto",
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
        q.add_argument("--size", default="medium", choices=list(SIZES),
                       help="model size: the architecture's preset channels and layers "
                            "(medium: the defaults below; options given change it) "
                            "(default: medium)")

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
    q = ptsub.add_parser("pareto", help="accuracy vs OpenMM speed: several architectures and "
                                        "sizes, two seeds; pareto.png (resumable: the training)")
    q.add_argument("--data", required=True, metavar="FILE",
                   help="npz of water or NaCl in water with forces and boxes (required)")
    q.add_argument("--models", nargs="+", metavar="ARCH:SIZE",
                   default=[f"{a}:{s}" for a, s in PARETO_GRID],
                   help="architectures and sizes (default: "
                        + " ".join(f"{a}:{s}" for a, s in PARETO_GRID) + ")")
    q.add_argument("--seeds", nargs="+", type=int, default=[0, 1], metavar="N",
                   help="training seeds (default: 0 1)")
    q.add_argument("--atoms", nargs="+", type=int, default=[300, 3000], metavar="N",
                   help="about this many atoms in each speed box, of the data's composition "
                        "(default: 300 3000)")
    q.add_argument("--speed-threads", nargs="+", type=int, default=[1, 2], metavar="N",
                   help="OpenMM CPU threads of the speed runs (default: 1 2)")
    q.add_argument("--speed-seconds", type=float, default=4.0, metavar="S",
                   help="timed seconds per model, box and thread count (default: 4)")
    q.add_argument("--quick", action="store_true",
                   help="tiny models and training, for smoke tests")
    add_standard(q, run_potential, out="output directory", resumable=True,
                 threads="torch threads for training (default: all cores)")
    add_cluster(q)
