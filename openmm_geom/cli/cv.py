"""``openmm-geom cv ...``: geom2vec CVs from corpus to biased OpenMM runs (every step ``--json``).

corpus -> pretrain -> featurize -> train-vamp / train-spib -> export -> bias; ``reproduce`` runs
the acceptance job on capped alanine end to end; ``explore`` runs it on hot OpenMM runs it makes
itself, for CVs of an event the data at the temperature of interest lack.
"""
from __future__ import annotations

import sys
from pathlib import Path

__all__ = ["add_cv_commands"]


def _cmd_cv(args) -> int:
    from ..errors import FileFormatError, ModelFileError, SimulationBlowUp

    try:
        return _run_cv(args)
    except (ValueError, TypeError, FileNotFoundError, ModelFileError, FileFormatError,
            FileFormatError, FileFormatError, SimulationBlowUp) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


def _slice(text):
    if not text:
        return slice(None)
    parts = [int(p) if p else None for p in text.split(":")]
    return slice(*parts)


def _settings(args, base):
    """``base`` (a settings instance) changed by its options given on the command line."""
    from ..settings import override, overrides_from

    return override(base, **overrides_from(args, type(base)))


def _run_cv(args) -> int:
    from ..threads import set_threads

    _emit = args.emit  # the running CLI's writer (the JSON stream may be redirected)
    set_threads(args.threads)
    progress = not args.no_progress
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
        import mdtraj
        import numpy as np

        from ..data.trajectories import read_positions
        from ..training.features import featurize
        from ..models.geom2vec import TokenMap
        from ..training.denoising import load_backbone

        featurizer, info = load_backbone(args.backbone)
        top = mdtraj.load_topology(args.topology)
        token_map = TokenMap.from_topology(top, args.selection, args.tokens, args.global_atoms)
        frames = _slice(args.frames)
        trajectories, timestep = [], args.timestep_ps
        for path in args.trajectories:
            positions, boxes, dt = read_positions(path, top, stride=args.stride,
                                                  n_atoms=top.n_atoms)
            if boxes is not None:
                raise ValueError(f"{path} is periodic: featurize periodic trajectories from "
                                 "Python (openmm_geom.training.features.featurize takes boxes)")
            trajectories.append(np.ascontiguousarray(positions[frames]))
            timestep = timestep or (dt / args.stride if dt else None)
        features = featurize(featurizer, token_map, trajectories, backbone_sha256=info["sha256"],
                             stride=1, timestep_ps=(timestep * args.stride if timestep else None),
                             batch_size=args.batch_size, mean_pooling=args.mean_pooling,
                             progress=progress)
        features.sources = list(args.trajectories)
        features.save(args.out)
        result = {"out": args.out, "frames": int(len(features.tokens)),
                  "trajectories": len(trajectories), "tokens": features.token_map.token_names,
                  "channels": features.channels, "timestep_ps": features.timestep_ps,
                  "backbone_sha256": info["sha256"]}
    elif command == "train-vamp":
        from ..training.features import FeatureSet
        from ..workflows.cv import VampSettings, train_vamp

        result = train_vamp(FeatureSet.load(args.train), FeatureSet.load(args.validate),
                            Path(args.out), _settings(args, VampSettings()), seed=args.seed,
                            progress=progress)
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

        frame = mdtraj.load_frame(args.topology, 0)
        box = None if frame.unitcell_vectors is None or not args.periodic \
            else frame.unitcell_vectors[0]
        result = export_cv(args.backbone, args.cv, args.out, frame.xyz[0], example_box=box,
                           dtype=torch.float64 if args.float64 else torch.float32)
        if args.check:
            from ..openmm import check_export

            report = check_export(args.out)
            result["check_export_passed"] = report.passed
            if not report.passed:
                _emit(args, result, report.format())
                return 1
    elif command == "bias":
        from ..workflows.cv_bias import BiasSettings, analyse_run, reference_phi, run_biased

        settings = _settings(args, BiasSettings())
        modes = ["cv", "unbiased", "phipsi"] if args.compare else [args.mode]
        if "cv" in modes and args.model is None:
            raise ValueError("--model (an exported CV file) is needed to bias along learned CVs")
        reference = (reference_phi(args.reference, args.pdb, stride=args.reference_stride)
                     if args.reference else None)
        result = {}
        for mode in modes:
            out = Path(args.out) / mode if args.compare else Path(args.out)
            run = run_biased(args.pdb, out, mode=mode, cv_model=args.model, settings=settings,
                             seed=args.seed, threads=args.threads, progress=progress,
                             resume=not args.restart)
            if reference is not None:
                run = analyse_run(out, settings.temperature_K, run=run, reference=reference)
            result[mode] = run
        if not args.compare:
            result = result[args.mode]
    elif command == "explore":
        from ..workflows.cv import QUICK_EXPLORE, ExploreSettings, explore

        settings = _settings(args, QUICK_EXPLORE if args.quick else ExploreSettings())
        result = explore(args.pdb, args.out, settings=settings, backbone=args.backbone,
                         seed=args.seed, threads=args.threads, progress=progress)
    else:  # reproduce
        from ..workflows.cv import QUICK_REPRODUCE, ReproduceSettings, reproduce

        settings = _settings(args, QUICK_REPRODUCE if args.quick else ReproduceSettings())
        result = reproduce(args.train, args.validate, args.topology, args.out,
                           settings=settings, backbone=args.backbone, seed=args.seed,
                           progress=progress)
    text = "\n".join(f"{k}: {v}" for k, v in result.items() if not isinstance(v, (dict, list)))
    _emit(args, result, text or str(result))
    return 0


def add_cv_commands(sub, emit) -> None:
    """Register ``cv`` and its sub-commands on an argparse sub-parser collection.

    ``emit(args, payload, text)`` writes a command's result (JSON with ``--json``). The
    options of settings (``BiasSettings``, ``ReproduceSettings``, ...) come from their fields
    (:func:`openmm_geom.settings.add_options`).
    """
    from ..settings import add_options
    from ..workflows import cv as cvw
    from ..workflows.cv_bias import BiasSettings

    cvp = sub.add_parser("cv", help="geom2vec CVs: corpus | pretrain | featurize | train-vamp | "
                                    "train-spib | export | bias | reproduce | explore")
    cvsub = cvp.add_subparsers(dest="cv_command", required=True)

    def common(q, out_help="output file"):
        q.add_argument("--out", required=True, help=out_help)
        q.add_argument("--seed", type=int, default=0)
        q.add_argument("--threads", type=int, default=None)
        q.add_argument("--no-progress", action="store_true")
        q.add_argument("--json", action="store_true", help="machine-readable output")
        q.set_defaults(func=_cmd_cv, emit=emit)

    q = cvsub.add_parser("corpus", help="pretraining corpus from ASE molecules, OpenMM's and "
                                        "our structures, short OpenMM runs, your PDBs")
    q.add_argument("--pdb", nargs="+", help="more structures (PDB) to include")
    q.add_argument("--md-pdb", nargs="*", help="structures to simulate with OpenMM (amber14, "
                                                "vacuum); default: alanine and villin")
    q.add_argument("--md-ps", type=float, help="ps of OpenMM MD per structure and temperature")
    q.add_argument("--ase", nargs="*", default=["g2", "s22"],
                   help="ASE molecule collections (none: --ase with no names)")
    q.add_argument("--no-bundled", action="store_true",
                   help="leave out the bundled alanine and T4 lysozyme")
    q.add_argument("--no-openmm-data", action="store_true",
                   help="leave out the structures shipped with OpenMM")
    common(q, "corpus file (.npz)")

    q = cvsub.add_parser("pretrain", help="denoising pretraining of an ET/TensorNet backbone")
    q.add_argument("--corpus", help="from `cv corpus` (default: build the default corpus)")
    q.add_argument("--architecture", default="et", choices=["et", "tensornet"])
    q.add_argument("--hidden-channels", type=int, default=64)
    q.add_argument("--num-layers", type=int, default=3)
    q.add_argument("--num-rbf", type=int, default=32)
    q.add_argument("--num-heads", type=int, default=8)
    q.add_argument("--cutoff-nm", type=float, default=0.5)
    q.add_argument("--noise-nm", type=float, default=0.02)
    q.add_argument("--epochs", type=int, default=10)
    q.add_argument("--batch-size", type=int, default=100)
    q.add_argument("--lr", type=float, default=5e-4)
    q.add_argument("--max-minutes", type=float, help="time budget; stops cleanly")
    common(q, "backbone file (.pt)")

    q = cvsub.add_parser("featurize", help="trajectories -> token features (self-describing npz)")
    q.add_argument("trajectories", nargs="+", help="mdtraj-readable files or npz (positions nm)")
    q.add_argument("--backbone", required=True)
    q.add_argument("--topology", required=True, help="PDB of the system")
    q.add_argument("--selection", default="heavy",
                   help="heavy | solute | all | any mdtraj selection")
    q.add_argument("--tokens", default="residue", choices=["residue", "atom"])
    q.add_argument("--global-atoms", help="mdtraj selection whose distances form a global token")
    q.add_argument("--stride", type=int, default=1)
    q.add_argument("--frames", help="python slice of frames to keep, e.g. 0:50000")
    q.add_argument("--timestep-ps", type=float, help="frame spacing (if the files lack it)")
    q.add_argument("--batch-size", type=int, default=128)
    q.add_argument("--mean-pooling", action="store_true")
    common(q, "feature file (.npz)")

    q = cvsub.add_parser("train-vamp", help="VAMPnet on token features (held-out VAMP-2)")
    q.add_argument("--train", required=True)
    q.add_argument("--validate", required=True)
    common(q, "output directory")
    add_options(q, cvw.VampSettings, required=["lag_ps"])

    q = cvsub.add_parser("train-spib", help="SPIB on token features, labels from a VAMPnet")
    q.add_argument("--train", required=True)
    q.add_argument("--validate", required=True)
    q.add_argument("--vamp", required=True, help="vamp_cv.pt from train-vamp")
    q.add_argument("--lag-ps", type=float, required=True)
    q.add_argument("--latent-dim", type=int, default=2)
    q.add_argument("--states", type=int, default=10, help="initial k-means states")
    q.add_argument("--beta", type=float, default=1e-3)
    q.add_argument("--epochs", type=int, default=20)
    q.add_argument("--refinements", type=int, default=5)
    common(q, "output directory")

    q = cvsub.add_parser("export", help="backbone + trained head -> one TorchScript CV for OpenMM")
    q.add_argument("--backbone", required=True)
    q.add_argument("--cv", required=True, help="vamp_cv.pt or spib_cv.pt")
    q.add_argument("--topology", required=True, help="PDB of the system (example configuration)")
    q.add_argument("--periodic", action="store_true", help="use the PDB's box")
    q.add_argument("--float64", action="store_true")
    q.add_argument("--check", action="store_true", help="run check-export on the file")
    common(q, "exported CV file (.pt)")

    q = cvsub.add_parser("bias", help="well-tempered metadynamics along exported CVs in OpenMM, "
                                      "checkpointed, reweighted to phi profiles")
    q.add_argument("--pdb", required=True)
    q.add_argument("--model", help="exported CV file (mode cv)")
    q.add_argument("--mode", default="cv", choices=["cv", "phipsi", "unbiased"])
    q.add_argument("--compare", action="store_true",
                   help="run cv, unbiased and phipsi of equal length into OUT/<mode>")
    q.add_argument("--reference", nargs="+", help="unbiased reference trajectories (npz)")
    q.add_argument("--reference-stride", type=int, default=1)
    q.add_argument("--restart", action="store_true", help="ignore existing checkpoints")
    common(q, "output directory")
    add_options(q, BiasSettings)

    def learning(q):
        q.add_argument("--backbone", help="reuse this pretrained backbone")
        q.add_argument("--quick", action="store_true", help="tiny settings for smoke tests")
        common(q, "output directory")

    q = cvsub.add_parser("reproduce", help="pretrain, featurize, VAMPnet vs deeptime baselines, "
                                           "export; one JSON")
    q.add_argument("--train", required=True)
    q.add_argument("--validate", required=True)
    q.add_argument("--topology", required=True)
    learning(q)
    add_options(q, cvw.ReproduceSettings, also={"--quick": cvw.QUICK_REPRODUCE})

    q = cvsub.add_parser("explore", help="hot unbiased OpenMM runs -> reproduce on them -> a CV "
                                         "that knows the rare event (default 700 K, 2 x 5 ns, "
                                         "lag 10 ps)")
    q.add_argument("--pdb", required=True)
    learning(q)
    add_options(q, cvw.ExploreSettings, also={"--quick": cvw.QUICK_EXPLORE})
