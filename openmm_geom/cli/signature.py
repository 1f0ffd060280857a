"""``openmm-geom signature``: path signatures (generate-gene | generate-md | train | evaluate |
featurize | reproduce); the work is :mod:`openmm_geom.workflows.signature`."""
from __future__ import annotations

from .common import add_cluster, add_standard, emit, show_progress, summary_text

__all__ = ["add_commands"]


def _base(command: str):
    from ..training.config import TrainingSettings
    from ..workflows.config import GENE_PRODUCTION

    return GENE_PRODUCTION if command == "reproduce" else TrainingSettings()


def _settings(args):
    from ..settings import override, overrides_from
    from ..training.config import TrainingSettings

    return override(_base(args.signature_command), **overrides_from(args, TrainingSettings))


def _runner(args):
    from ..parallel import TaskRunner, parse_cluster

    return TaskRunner(parse_cluster(args.cluster, args.cluster_file, args.threads),
                      threads=args.threads, timeout=args.cluster_timeout, announce=True)


def run_signature(args) -> int:
    from ..threads import set_threads
    from ..workflows import signature as workflow

    set_threads(args.threads)
    command = args.signature_command
    progress = show_progress(args)
    if command == "generate-gene":
        from ..data.gene_regulatory import generate_gene_dataset

        path = generate_gene_dataset(args.out, n_trajectories=args.trajectories, n_test=args.test,
                                     n_nodes=args.nodes, n_frames=args.frames, seed=args.seed,
                                     rate_spread=args.rate_spread, progress=progress)
        result = {"out": str(path), "trajectories": args.trajectories, "test": args.test}
    elif command == "generate-md":
        from ..data.md_classification import generate_md_dataset

        path = generate_md_dataset(args.out, n_trajectories=args.trajectories, n_test=args.test,
                                   n_frames=args.frames, temperatures=tuple(args.temperatures),
                                   seed=args.seed, threads=args.threads,
                                   align=not args.no_align, progress=progress)
        result = {"out": str(path), "trajectories": args.trajectories, "test": args.test}
    elif command == "train":
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
        result = workflow.train(args.data, args.out, methods, _settings(args), progress=progress,
                                runner=_runner(args))
    elif command == "evaluate":
        result = workflow.evaluate(args.model, args.data)
    elif command == "featurize":
        result = workflow.featurize(args.trajectory, args.out, topology=args.topology,
                                    selection=args.selection, depth=args.depth, window=args.window,
                                    time_augment=args.time_augment)
    else:  # reproduce
        settings = _settings(args)
        result = workflow.reproduce_gene(args.out, seed=settings.seed, settings=settings,
                                         rate_spread=args.rate_spread, progress=progress,
                                         runner=_runner(args))
    text = summary_text(result)
    if isinstance(result.get("accuracy"), dict):
        text += "\n" + "\n".join(f"{m}: test accuracy {100 * a:.2f}%, recall "
                                  f"{100 * result['recall'][m]:.2f}%"
                                  for m, a in result["accuracy"].items())
    emit(args, result, text)
    return 0


def add_commands(sub) -> None:
    """Register ``signature`` and its commands."""
    from ..settings import add_options
    from ..training.config import TrainingSettings

    sgp = sub.add_parser("signature", help="path signatures: generate-gene | generate-md | "
                                           "train | evaluate | featurize | reproduce",
                         description="Deep Signature and baselines: trajectory classification "
                                     "with path signatures of soft-clustered dynamics.")
    sgsub = sgp.add_subparsers(dest="signature_command", required=True, metavar="COMMAND")

    def training_options(q, command):
        """Every TrainingSettings field, defaults of the command's base settings."""
        add_options(q, TrainingSettings, defaults=_base(command))

    def sizes(q, trajectories, test, frames):
        q.add_argument("--trajectories", type=int, default=trajectories, metavar="N",
                       help=f"cross-validation trajectories (default: {trajectories})")
        q.add_argument("--test", type=int, default=test, metavar="N",
                       help=f"independent test trajectories (default: {test})")
        q.add_argument("--frames", type=int, default=frames, metavar="N",
                       help=f"frames per trajectory (default: {frames})")

    q = sgsub.add_parser("generate-gene", help="gene-regulatory dynamics dataset (Gao et al. "
                                               "2016)")
    sizes(q, 100, 40, 500)
    q.add_argument("--nodes", type=int, default=100, metavar="N",
                   help="genes per network (default: 100)")
    q.add_argument("--rate-spread", type=float, default=1.0, metavar="S",
                   help="per-trajectory log-uniform spread of B and R; 1: the paper's fixed "
                        "rates (default: 1.0)")
    add_standard(q, run_signature, out="output .npz", seed=0)
    q = sgsub.add_parser("generate-md", help="capped alanine at two temperatures, made with "
                                             "OpenMM (resumable)")
    sizes(q, 20, 8, 500)
    q.add_argument("--temperatures", type=float, nargs=2, default=(300.0, 450.0),
                   metavar="K", help="the two classes' temperatures, K (default: 300.0 450.0)")
    q.add_argument("--no-align", action="store_true",
                   help="keep lab-frame coordinates (default: superpose every frame on one "
                        "reference frame, heavy atoms)")
    add_standard(q, run_signature, out="output .npz", seed=0, resumable=True)
    q = sgsub.add_parser("train", help="temporal cross-validation + independent test of "
                                       "methods (resumable)")
    q.add_argument("--data", required=True, metavar="FILE", help="path dataset, .npz (required)")
    q.add_argument("--methods", default="deep-signature", metavar="LIST",
                   help="comma-separated: deep-signature, graph-lstm, graph-trans, head, tail, "
                        "head-tail, dihedral-svm (default: deep-signature)")
    add_standard(q, run_signature, out="output directory", resumable=True)
    add_cluster(q)
    training_options(q, "train")
    q = sgsub.add_parser("evaluate", help="a saved fold model on a dataset's test trajectories")
    q.add_argument("--model", required=True, metavar="FILE",
                   help="foldK.pt from `signature train` (required)")
    q.add_argument("--data", required=True, metavar="FILE", help="path dataset, .npz (required)")
    add_standard(q, run_signature)
    q = sgsub.add_parser("featurize", help="windowed log-signatures of a finished trajectory")
    q.add_argument("trajectory", help="any mdtraj-readable trajectory")
    q.add_argument("--topology", metavar="FILE",
                   help="PDB, needed for DCD/XTC (default: none)")
    q.add_argument("--selection", default="all", metavar="SEL",
                   help="mdtraj atom selection, e.g. 'name CA' (default: all)")
    q.add_argument("--depth", type=int, default=2, metavar="N",
                   help="signature depth (default: 2)")
    q.add_argument("--window", type=int, metavar="N",
                   help="frames per window; windows share end frames (default: one window of "
                        "the whole trajectory)")
    q.add_argument("--time-augment", action="store_true",
                   help="add time as a channel (whole-trajectory signatures only)")
    add_standard(q, run_signature, out="output .npz")
    q = sgsub.add_parser("reproduce", help="the paper's benchmark end to end; one JSON "
                                           "(resumable)")
    q.add_argument("--task", default="gene", choices=["gene"],
                   help="the benchmark (default: gene)")
    q.add_argument("--rate-spread", type=float, default=2.0, metavar="S",
                   help="per-trajectory log-uniform spread of B and R; 2: single frames do not "
                        "give the class away, as in the paper's Table 4; 1: fixed B = R = 1 "
                        "(default: 2.0)")
    add_standard(q, run_signature, out="output directory", resumable=True)
    add_cluster(q)
    training_options(q, "reproduce")
