"""``openmm-geom cg``: coarse graining (train | simulate | evaluate | reproduce).

The settings options are the fields of :class:`~openmm_geom.workflows.config.CGSettings`
(each step gets the fields of its stage); the work is :mod:`openmm_geom.workflows.coarse_grain`.
"""
from __future__ import annotations

import sys

from .common import add_cluster, add_standard, emit, show_progress, summary_text

__all__ = ["add_commands"]

_MAPPINGS = ["auto", "alanine", "ca"]


def _settings(args):
    """PRODUCTION (or QUICK with --quick) changed by the CGSettings options given."""
    from ..settings import override, overrides_from
    from ..workflows.config import PRODUCTION, QUICK, CGSettings

    return override(QUICK if args.quick else PRODUCTION, **overrides_from(args, CGSettings))


def run_cg(args) -> int:
    from ..threads import set_threads
    from ..workflows import coarse_grain as cg

    settings = _settings(args)
    progress = show_progress(args)
    command = args.cg_command
    if command == "train":
        from ..parallel import TaskRunner, parse_cluster

        spec = parse_cluster(args.cluster, args.cluster_file, args.threads)
        set_threads(args.threads)
        data = cg.load_cg_data(args.data, pdb=args.pdb, mapping=args.mapping,
                               force_map=settings.force_map)
        runner = TaskRunner(spec, threads=args.threads, timeout=args.cluster_timeout,
                            announce=True)
        result = cg.train(data, args.out, settings, seed=args.seed, progress=progress,
                          runner=runner)
    elif command == "simulate":
        from ..parallel import TaskRunner, parse_cluster

        spec = parse_cluster(args.cluster, args.cluster_file, args.threads)
        set_threads(args.threads)
        runner = TaskRunner(spec, threads=args.threads, timeout=args.cluster_timeout,
                            announce=True)
        result = cg.simulate_from(args.model, args.start, args.out, settings, pdb=args.pdb,
                                  seed=args.seed, progress=progress, runner=runner)
    elif command == "evaluate":
        set_threads(args.threads)
        result = cg.evaluate_files(args.reference, args.trajectory, args.out, settings=settings,
                                   pdb=args.pdb, mapping=args.mapping, seed=args.seed)
    else:  # reproduce
        result = cg.reproduce(args.train, args.reference, args.out, settings=settings,
                              seed=args.seed, threads=args.threads, pdb=args.pdb,
                              mapping=args.mapping, progress=progress)
    reasons = list(result.get("unreliable_reasons") or [])
    for warning in dict.fromkeys(reasons + list(result.get("warnings") or [])):
        print(f"warning: {warning}", file=sys.stderr)
    emit(args, result, summary_text(result))
    return 1 if getattr(args, "strict", False) and reasons else 0


def add_commands(sub) -> None:
    """Register ``cg`` and its steps."""
    from ..settings import add_options
    from ..workflows.config import PRODUCTION, QUICK, CGSettings

    cgp = sub.add_parser("cg", help="coarse graining: train | simulate | evaluate | reproduce",
                         description="Coarse-grained models of all-atom data: priors + CGSchNet "
                                     "ensembles by force matching, batched Langevin runs, "
                                     "free-energy comparison with a held-out reference.")
    cgsub = cgp.add_subparsers(dest="cg_command", required=True, metavar="STEP")

    def common(q, *, resumable):
        q.add_argument("--pdb", default=None, metavar="FILE",
                       help="topology, if the data file has none (default: the file's "
                            "topology_pdb, or bundled capped alanine for 22 atoms)")
        q.add_argument("--quick", action="store_true",
                       help="start from the few-minute QUICK settings instead of PRODUCTION")
        add_standard(q, run_cg, out="output directory", seed=0, resumable=resumable)

    def settings(q, stages=None):
        """The CGSettings fields of these stages (None: all), defaults of PRODUCTION."""
        add_options(q, CGSettings, defaults=PRODUCTION, stages=stages, also={"--quick": QUICK})

    def mapping(q, text="the all-atom -> bead mapping"):
        q.add_argument("--mapping", default="auto", choices=_MAPPINGS,
                       help=f"{text}; auto: alanine for capped alanine, else one bead per CA "
                            "(default: auto)")

    def strict(q):
        q.add_argument("--strict", action="store_true",
                       help="exit 1 when the metrics are unreliable (each reason is printed as "
                            "a warning either way)")

    q = cgsub.add_parser("train", help="priors + k-fold CGSchNet ensemble by force matching "
                                       "(resumable)")
    q.add_argument("--data", required=True, metavar="FILE",
                   help="all-atom npz with positions, forces and masses (required)")
    mapping(q)
    common(q, resumable=True)
    add_cluster(q)
    settings(q, ["train"])
    q = cgsub.add_parser("simulate", help="batched Langevin simulation of a trained model "
                                          "(resumable)")
    q.add_argument("--model", required=True, metavar="FILE",
                   help="cg_model.pt from `cg train` (required)")
    q.add_argument("--start", required=True, metavar="FILE",
                   help="all-atom npz whose mapped frames seed the replicas (required)")
    common(q, resumable=True)
    add_cluster(q)
    settings(q, ["simulate"])
    q = cgsub.add_parser("evaluate", help="KL, MSE, noise-equivalent sigma, figures")
    q.add_argument("--reference", required=True, metavar="FILE",
                   help="all-atom npz, held out from training (required)")
    q.add_argument("--trajectory", required=True, metavar="FILE",
                   help="cg_trajectory.h5 from `cg simulate` (required)")
    mapping(q, "the mapping the model was trained with")
    strict(q)
    common(q, resumable=False)
    settings(q, ["evaluate"])
    q = cgsub.add_parser("reproduce", help="the whole job on all-atom data; one JSON of metrics "
                                           "(resumable)")
    q.add_argument("--train", required=True, metavar="FILE",
                   help="all-atom npz to train on (required)")
    q.add_argument("--reference", required=True, metavar="FILE",
                   help="all-atom npz held out for the evaluation (required)")
    mapping(q)
    strict(q)
    common(q, resumable=True)
    settings(q)
