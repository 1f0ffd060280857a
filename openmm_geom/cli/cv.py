"""``openmm-geom cv ...``: geom2vec CVs from corpus to biased OpenMM runs (every step ``--json``).

corpus -> pretrain -> featurize -> train-vamp / train-spib -> export -> bias; ``reproduce`` runs
the acceptance job on capped alanine end to end; ``explore`` runs it on hot OpenMM runs it makes
itself, for CVs of an event the data at the temperature of interest lack.
"""
from __future__ import annotations

from pathlib import Path

from .common import add_cluster, add_standard, emit, show_progress, summary_text

__all__ = ["add_commands"]


def _slice(text):
    """``"a:b"`` (a Python slice of frames) as a slice; None for none given."""
    if not text:
        return None
    try:
        parts = [int(p) if p.strip() else None for p in text.split(":")]
        if not 1 <= len(parts) <= 3:
            raise ValueError(text)
        return slice(*parts)
    except ValueError:
        raise ValueError(f"--frames must be a Python slice such as 0:50000 or ::10, got "
                         f"{text!r}") from None


def _settings(args, base):
    """``base`` (a settings instance) changed by its options given on the command line."""
    from ..settings import override, overrides_from

    return override(base, **overrides_from(args, type(base)))


def run_cv(args) -> int:
    from ..threads import set_threads

    set_threads(args.threads)
    progress = show_progress(args)
    command = args.cv_command
    if command == "corpus":
        from ..data.corpus import build_corpus

        options = {"ase_collections": tuple(args.ase)}
        if args.md_ps is not None:
            options["md_picoseconds"] = args.md_ps
        if args.md_pdb is not None:
            options["md_pdbs"] = args.md_pdb
        result = build_corpus(args.out, pdbs=args.pdb or (), seed=args.seed, progress=progress,
                              include_openmm_data=not args.no_openmm_data,
                              include_bundled=not args.no_bundled, **options)
    elif command == "pretrain":
        from ..data.corpus import build_corpus
        from ..training.denoising import pretrain

        corpus = args.corpus
        if corpus is None:
            corpus = Path(args.out).with_suffix(".corpus.npz")
            if not corpus.exists():
                build_corpus(corpus, seed=args.seed, progress=progress)
        hp = {"architecture": args.architecture, "cutoff": args.cutoff_nm,
              "hidden_channels": args.hidden_channels, "num_layers": args.num_layers,
              "num_rbf": args.num_rbf, "num_heads": args.num_heads}
        result = pretrain(corpus, hp, out=args.out, noise_nm=args.noise_nm, epochs=args.epochs,
                          batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                          progress=progress, max_minutes=args.max_minutes)
        result = {k: v for k, v in result.items() if k != "history"}
    elif command == "featurize":
        from ..workflows.cv import featurize_trajectories

        result = featurize_trajectories(
            args.trajectories, args.backbone, args.topology, args.out, selection=args.selection,
            tokens=args.tokens, global_atoms=args.global_atoms, stride=args.stride,
            frames=_slice(args.frames), timestep_ps=args.timestep_ps,
            batch_size=args.batch_size, mean_pooling=args.mean_pooling, progress=progress)
    elif command == "train-vamp":
        from ..training.features import FeatureSet
        from ..workflows.config import VampSettings
        from ..workflows.cv import train_vamp

        settings = _settings(args, VampSettings())
        result = train_vamp(FeatureSet.load(args.train), FeatureSet.load(args.validate),
                            Path(args.out), settings, seed=args.seed, progress=progress)
    elif command == "train-spib":
        from ..training.features import FeatureSet
        from ..workflows.cv import train_spib

        result = train_spib(FeatureSet.load(args.train), FeatureSet.load(args.validate),
                            args.vamp, Path(args.out), lag_ps=args.lag_ps,
                            latent_dim=args.latent_dim, n_states=args.states, beta=args.beta,
                            max_epochs=args.epochs, refinements=args.refinements, seed=args.seed,
                            progress=progress)
    elif command == "export":
        import mdtraj
        import torch

        from ..workflows.cv import export_cv

        if args.format == "aoti" and args.check:
            raise ValueError("--check runs check-export on a TorchScript file; an AOTInductor "
                             "package is checked against the eager CV when it is written")
        frame = mdtraj.load_frame(args.topology, 0)
        box = None if frame.unitcell_vectors is None or not args.periodic \
            else frame.unitcell_vectors[0]
        result = export_cv(args.backbone, args.cv, args.out, frame.xyz[0], example_box=box,
                           dtype=torch.float64 if args.float64 else torch.float32,
                           format=args.format)
        if args.check:
            from ..openmm import check_export

            report = check_export(result.get("openmm_file", args.out))
            result["check_export_passed"] = report.passed
            if not report.passed:
                emit(args, result, report.format())
                return 1
    elif command == "bias":
        from ..workflows.config import BiasSettings
        from ..workflows.cv_bias import analyse_run, reference_phi, run_biased

        from ..parallel import TaskRunner, parse_cluster

        settings = _settings(args, BiasSettings())
        modes = ["cv", "unbiased", "phipsi"] if args.compare else [args.mode]
        if "cv" in modes and args.model is None:
            raise ValueError("--model (an exported CV file) is needed to bias along learned CVs")
        if args.compare and settings.walkers > 1:
            raise ValueError("--compare includes an unbiased run, which has no bias to share; "
                             "run --walkers without --compare")
        if args.reference and settings.walkers > 1:
            raise ValueError("--reference is compared with one run, not with --walkers")
        spec = parse_cluster(args.cluster, args.cluster_file, args.threads)
        if spec is not None and settings.walkers == 1:
            raise ValueError("--cluster runs multiple walkers (--walkers N) as tasks; one "
                             "biased run is one process")
        runner = TaskRunner(spec, threads=args.threads, timeout=args.cluster_timeout,
                            announce=True)
        reference = (reference_phi(args.reference, args.pdb, stride=args.reference_stride)
                     if args.reference else None)
        result = {}
        for mode in modes:
            out = Path(args.out) / mode if args.compare else Path(args.out)
            run = run_biased(args.pdb, out, mode=mode, cv_model=args.model, settings=settings,
                             seed=args.seed, threads=args.threads, progress=progress,
                             resume=not args.restart, runner=runner)
            if reference is not None:
                run = analyse_run(out, settings.temperature_K, run=run, reference=reference)
            result[mode] = run
        if not args.compare:
            result = result[args.mode]
    elif command == "explore":
        from ..workflows.config import QUICK_EXPLORE, ExploreSettings
        from ..workflows.cv import explore

        settings = _settings(args, QUICK_EXPLORE if args.quick else ExploreSettings())
        result = explore(args.pdb, args.out, settings=settings, backbone=args.backbone,
                         seed=args.seed, threads=args.threads, progress=progress)
    else:  # reproduce
        from ..workflows.config import QUICK_REPRODUCE, ReproduceSettings
        from ..workflows.cv import reproduce

        from ..parallel import TaskRunner, parse_cluster

        settings = _settings(args, QUICK_REPRODUCE if args.quick else ReproduceSettings())
        runner = TaskRunner(parse_cluster(args.cluster, args.cluster_file, args.threads),
                            threads=args.threads, timeout=args.cluster_timeout, announce=True)
        result = reproduce(args.train, args.validate, args.topology, args.out,
                           settings=settings, backbone=args.backbone, seed=args.seed,
                           progress=progress, runner=runner)
    emit(args, result, summary_text(result) or str(result))
    return 0


def add_commands(sub) -> None:
    """Register ``cv`` and its steps. The options of settings (``BiasSettings``,
    ``ReproduceSettings``, ...) come from their fields (:func:`openmm_geom.settings.add_options`)."""
    from ..settings import add_options
    from ..workflows import config as cfg

    cvp = sub.add_parser("cv", help="geom2vec CVs: corpus | pretrain | featurize | train-vamp | "
                                    "train-spib | export | bias | reproduce | explore",
                         description="Learned collective variables from geom2vec features "
                                     "(VAMPnet, SPIB), exported for OpenMM and biased along.")
    cvsub = cvp.add_subparsers(dest="cv_command", required=True, metavar="STEP")

    def common(q, out_help="output file", *, resumable=False):
        add_standard(q, run_cv, out=out_help, seed=0, resumable=resumable)

    q = cvsub.add_parser("corpus", help="pretraining corpus from ASE molecules, OpenMM's and "
                                        "our structures, short OpenMM runs, your PDBs")
    q.add_argument("--pdb", nargs="+", metavar="FILE",
                   help="more structures (PDB) to include (default: none)")
    q.add_argument("--md-pdb", nargs="*", metavar="FILE",
                   help="structures to simulate with OpenMM, amber14 in vacuum (default: "
                        "alanine and villin)")
    q.add_argument("--md-ps", type=float, metavar="PS",
                   help="OpenMM MD per structure and temperature, ps (default: the corpus "
                        "builder's)")
    q.add_argument("--ase", nargs="*", default=["g2", "s22"], metavar="NAME",
                   help="ASE molecule collections; --ase alone: none (default: g2 s22)")
    q.add_argument("--no-bundled", action="store_true",
                   help="leave out the bundled alanine and T4 lysozyme")
    q.add_argument("--no-openmm-data", action="store_true",
                   help="leave out the structures shipped with OpenMM")
    common(q, "corpus file (.npz)")

    q = cvsub.add_parser("pretrain", help="denoising pretraining of an ET/TensorNet backbone "
                                          "(resumable)")
    q.add_argument("--corpus", metavar="FILE",
                   help="from `cv corpus` (default: build the default corpus next to --out)")
    q.add_argument("--architecture", default="et", choices=["et", "tensornet"],
                   help="TorchMD-Net backbone (default: et)")
    q.add_argument("--hidden-channels", type=int, default=64, metavar="N",
                   help="hidden channels (default: 64)")
    q.add_argument("--num-layers", type=int, default=3, metavar="N",
                   help="interaction layers (default: 3)")
    q.add_argument("--num-rbf", type=int, default=32, metavar="N",
                   help="radial basis functions (default: 32)")
    q.add_argument("--num-heads", type=int, default=8, metavar="N",
                   help="attention heads (default: 8)")
    q.add_argument("--cutoff-nm", type=float, default=0.5, metavar="NM",
                   help="interaction cutoff, nm (default: 0.5)")
    q.add_argument("--noise-nm", type=float, default=0.02, metavar="NM",
                   help="standard deviation of the coordinate noise, nm (default: 0.02)")
    q.add_argument("--epochs", type=int, default=10, metavar="N",
                   help="passes over the corpus (default: 10)")
    q.add_argument("--batch-size", type=int, default=100, metavar="N",
                   help="structures per optimiser step (default: 100)")
    q.add_argument("--lr", type=float, default=5e-4, metavar="X",
                   help="learning rate (default: 0.0005)")
    q.add_argument("--max-minutes", type=float, metavar="MIN",
                   help="time budget, minutes; stops cleanly (default: no limit)")
    common(q, "backbone file (.pt)", resumable=True)

    q = cvsub.add_parser("featurize", help="trajectories -> token features (self-describing npz)")
    q.add_argument("trajectories", nargs="+", help="mdtraj-readable files or npz (positions nm)")
    q.add_argument("--backbone", required=True, metavar="FILE",
                   help="backbone file from `cv pretrain` (required)")
    q.add_argument("--topology", required=True, metavar="FILE",
                   help="PDB of the system (required)")
    q.add_argument("--selection", default="heavy", metavar="SEL",
                   help="heavy | solute | all | any mdtraj selection (default: heavy)")
    q.add_argument("--tokens", default="residue", choices=["residue", "atom"],
                   help="one token per residue or per selected atom (default: residue)")
    q.add_argument("--global-atoms", metavar="SEL",
                   help="mdtraj selection whose distances form a global token (default: none)")
    q.add_argument("--stride", type=int, default=1, metavar="N",
                   help="keep every N-th frame (default: 1)")
    q.add_argument("--frames", metavar="A:B",
                   help="Python slice of the frames to keep, e.g. 0:50000 (default: all)")
    q.add_argument("--timestep-ps", type=float, metavar="PS",
                   help="frame spacing, ps, if the files lack it (default: from the files)")
    q.add_argument("--batch-size", type=int, default=128, metavar="N",
                   help="frames per backbone call (default: 128)")
    q.add_argument("--mean-pooling", action="store_true",
                   help="tokens as atom means instead of sums")
    common(q, "feature file (.npz)")

    q = cvsub.add_parser("train-vamp", help="VAMPnet on token features (held-out VAMP-2)")
    q.add_argument("--train", required=True, metavar="FILE",
                   help="training features from `cv featurize` (required)")
    q.add_argument("--validate", required=True, metavar="FILE",
                   help="validation features, another trajectory (required)")
    common(q, "output directory")
    add_options(q, cfg.VampSettings, required=["lag_ps"])

    q = cvsub.add_parser("train-spib", help="SPIB on token features, labels from a VAMPnet")
    q.add_argument("--train", required=True, metavar="FILE",
                   help="training features (required)")
    q.add_argument("--validate", required=True, metavar="FILE",
                   help="validation features (required)")
    q.add_argument("--vamp", required=True, metavar="FILE",
                   help="vamp_cv.pt from train-vamp (required)")
    q.add_argument("--lag-ps", type=float, required=True, metavar="PS",
                   help="lag time, ps (required)")
    q.add_argument("--latent-dim", type=int, default=2, metavar="N",
                   help="dimension of the information bottleneck (default: 2)")
    q.add_argument("--states", type=int, default=10, metavar="N",
                   help="initial k-means states (default: 10)")
    q.add_argument("--beta", type=float, default=1e-3, metavar="X",
                   help="weight of the information bottleneck (default: 0.001)")
    q.add_argument("--epochs", type=int, default=20, metavar="N",
                   help="most epochs per refinement (default: 20)")
    q.add_argument("--refinements", type=int, default=5, metavar="N",
                   help="label refinements (default: 5)")
    common(q, "output directory")

    q = cvsub.add_parser("export", help="backbone + trained head -> one TorchScript CV for "
                                        "OpenMM")
    q.add_argument("--backbone", required=True, metavar="FILE",
                   help="backbone file (required)")
    q.add_argument("--cv", required=True, metavar="FILE",
                   help="vamp_cv.pt or spib_cv.pt (required)")
    q.add_argument("--topology", required=True, metavar="FILE",
                   help="PDB of the system, its example configuration (required)")
    q.add_argument("--periodic", action="store_true", help="use the PDB's box")
    q.add_argument("--float64", action="store_true",
                   help="export in float64 (default: float32)")
    q.add_argument("--check", action="store_true",
                   help="run check-export on the file (exit 1 if it fails)")
    q.add_argument("--format", default="openmm", choices=["openmm", "plumed", "aoti"],
                   help="openmm: TorchCVForce file; plumed: a PYTORCH_MODEL file of the atoms' "
                        "x, y, z (nm), its PLUMED input lines in OUT.dat and the OpenMM file "
                        "in OUT.openmm.pt; aoti: an AOTInductor package (.pt2) for the native "
                        "TorchCVForce, several times faster per step, compiled in about a "
                        "minute, checked against the eager CV when written (not with "
                        "--periodic or --check) (default: openmm)")
    common(q, "exported CV file (.pt; .ptc for --format plumed; .pt2 for --format aoti)")

    q = cvsub.add_parser("bias", help="well-tempered metadynamics (--method metad) or OPES "
                                      "(--method opes) along exported CVs in OpenMM, "
                                      "checkpointed (resumable), reweighted to phi profiles "
                                      "and dF convergence")
    q.add_argument("--pdb", required=True, metavar="FILE",
                   help="the peptide, e.g. capped alanine (required)")
    q.add_argument("--model", metavar="FILE",
                   help="exported CV file (default: none; required for --mode cv)")
    q.add_argument("--mode", default="cv", choices=["cv", "phipsi", "unbiased"],
                   help="bias along the learned CVs, along phi/psi, or none (default: cv)")
    q.add_argument("--compare", action="store_true",
                   help="run cv, unbiased and phipsi of equal length into OUT/<mode>")
    q.add_argument("--reference", nargs="+", metavar="NPZ",
                   help="unbiased reference trajectories (default: none)")
    q.add_argument("--reference-stride", type=int, default=1, metavar="N",
                   help="keep every N-th reference frame (default: 1)")
    q.add_argument("--restart", action="store_true",
                   help="ignore existing checkpoints and start afresh")
    common(q, "output directory", resumable=True)
    add_options(q, cfg.BiasSettings)
    add_cluster(q)

    def learning(q):
        q.add_argument("--backbone", metavar="FILE",
                       help="reuse this pretrained backbone (default: pretrain one)")
        q.add_argument("--quick", action="store_true",
                       help="start from tiny settings for smoke tests")
        common(q, "output directory", resumable=True)

    q = cvsub.add_parser("reproduce", help="pretrain, featurize, VAMPnet vs deeptime baselines, "
                                           "export; one JSON (resumable: the pretraining)")
    q.add_argument("--train", required=True, metavar="FILE",
                   help="training trajectory (required)")
    q.add_argument("--validate", required=True, metavar="FILE",
                   help="validation trajectory (required)")
    q.add_argument("--topology", required=True, metavar="FILE",
                   help="PDB of the system (required)")
    learning(q)
    add_options(q, cfg.ReproduceSettings, also={"--quick": cfg.QUICK_REPRODUCE})
    add_cluster(q)

    q = cvsub.add_parser("explore", help="hot unbiased OpenMM runs -> reproduce on them -> a CV "
                                         "that knows the rare event (default 700 K, 2 x 5 ns, "
                                         "lag 10 ps; resumable)")
    q.add_argument("--pdb", required=True, metavar="FILE",
                   help="the peptide (required)")
    learning(q)
    add_options(q, cfg.ExploreSettings, also={"--quick": cfg.QUICK_EXPLORE})
