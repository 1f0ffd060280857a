"""``openmm-geom datagen``: an all-atom OpenMM run that saves positions and forces."""
from __future__ import annotations

from .common import add_cluster, add_standard, emit, show_progress

__all__ = ["add_commands"]

# defaults (PDB input, --water-box): flexible water needs a short step for O-H
_DEFAULTS = {"interval_ps": (1.0, 0.1), "timestep_fs": (1.0, 0.5),
             "equilibration_ps": (100.0, 20.0)}


def run_datagen(args) -> int:
    from ..data.datagen import generate_reference, load_reference

    if (args.pdb is None) == (args.water_box is None):
        raise ValueError("datagen needs either a PDB file or --water-box N (not both)")
    if args.ion_pairs and args.water_box is None:
        raise ValueError("--ion-pairs needs --water-box N (the ions replace waters of the box)")
    water = args.water_box is not None
    values = {name: defaults[water] if getattr(args, name) is None else getattr(args, name)
              for name, defaults in _DEFAULTS.items()}
    options = dict(
        n_frames=args.frames, save_interval_ps=values["interval_ps"],
        timestep_fs=values["timestep_fs"], temperature_K=args.temperature,
        friction_per_ps=args.friction, equilibration_ps=values["equilibration_ps"],
        seed=args.seed, constraints=args.constraints, platform=args.platform,
        threads=args.threads, checkpoint_every=args.checkpoint_every,
        progress=show_progress(args))
    if args.forcefield is not None:
        options["forcefield"] = tuple(args.forcefield)
    if args.nonbonded_cutoff is not None:
        options["nonbonded_cutoff_nm"] = args.nonbonded_cutoff
    if args.trajectories is not None:
        return _run_ensemble(args, options, water)
    if args.cluster is not None or args.cluster_file is not None:
        raise ValueError("--cluster and --cluster-file need --trajectories N (independent "
                         "runs to spread over the workers)")
    if water:
        from ..data.water import generate_water_reference

        path = generate_water_reference(args.water_box, args.out, density=args.water_density,
                                        ion_pairs=args.ion_pairs, **options)
    else:
        path = generate_reference(args.pdb, args.out, rigid_water=not args.flexible_water,
                                  **options)
    data = load_reference(path)
    generation = data.get("generation", {})
    summary = {"out": str(path), "frames": int(data["positions"].shape[0]),
               "atoms": int(data["positions"].shape[1]),
               "periodic": data.get("box_vectors") is not None,
               "constraints": generation.get("n_constraints"),
               "nonbonded_cutoff_nm": generation.get("nonbonded_cutoff_nm"),
               "timestep_fs": data.get("timestep_fs")}
    emit(args, summary, f"wrote {path}: {summary['frames']} frames of {summary['atoms']} atoms")
    return 0


def _run_ensemble(args, options: dict, water: bool) -> int:
    from ..data.ensemble import generate_ensemble
    from ..parallel import TaskRunner, parse_cluster

    spec = parse_cluster(args.cluster, args.cluster_file, args.threads)
    progress = options.pop("progress")
    options.pop("threads")
    if water:
        options.update(density=args.water_density, ion_pairs=args.ion_pairs)
        source = args.water_box
    else:
        options["rigid_water"] = not args.flexible_water
        source = args.pdb
    runner = TaskRunner(spec, threads=args.threads or 1, timeout=args.cluster_timeout,
                        announce=True)
    manifest = generate_ensemble(source, args.out, args.trajectories, water=water,
                                 runner=runner, progress=progress, threads=args.threads or 1,
                                 **options)
    import json

    data = json.loads(manifest.read_text())
    summary = {"out": str(args.out), "manifest": str(manifest),
               "trajectories": len(data["trajectories"]),
               "frames": sum(m["frames"] for m in data["trajectories"]),
               "ran_on": data["ran_on"], "files": data["trajectories"]}
    emit(args, summary, f"wrote {summary['trajectories']} trajectories "
                        f"({summary['frames']} frames) into {args.out} ({data['ran_on']})")
    return 0


def add_commands(sub) -> None:
    """Register ``datagen``."""
    p = sub.add_parser(
        "datagen", help="all-atom OpenMM run saving positions + forces (resumable)",
        description="Langevin dynamics of a PDB (or a box of flexible TIP3P water) with an "
                    "OpenMM force field, saving positions, forces, energies and boxes. Work in "
                    "progress lives in OUT.partial/; the same command resumes it.")
    p.add_argument("pdb", nargs="?", default=None,
                   help="input structure, PDB or PDBx/mmCIF (default: none; give it or "
                        "--water-box)")
    p.add_argument("--water-box", type=int, default=None, metavar="N",
                   help="instead of a PDB: a cubic box of N flexible TIP3P waters with PME "
                        "(default: none)")
    p.add_argument("--water-density", type=float, default=0.997, metavar="G_PER_CM3",
                   help="density of the --water-box, g/cm^3 (default: 0.997)")
    p.add_argument("--ion-pairs", type=int, default=0, metavar="K",
                   help="--water-box: replace 2K of the waters by K Na+ and K Cl- "
                        "(amber14/tip3p.xml ions; 2 in 64 is 1.7 mol/L) (default: 0)")
    p.add_argument("--flexible-water", action="store_true",
                   help="rigidWater=False: no water constraints (always on for --water-box)")
    p.add_argument("--nonbonded-cutoff", type=float, default=None, metavar="NM",
                   help="PME direct-space cutoff, nm, at most half the box (default: 1.0; "
                        "--water-box: min(1.0, half the box edge))")
    p.add_argument("--forcefield", nargs="+", default=None, metavar="XML",
                   help="OpenMM force-field XML files (default: amber14-all.xml; "
                        "--water-box: amber14/tip3p.xml)")
    p.add_argument("--frames", type=int, required=True, metavar="N",
                   help="frames to save, >= 1 (required)")
    p.add_argument("--interval-ps", type=float, default=None, metavar="PS",
                   help="time between saved frames, ps, a whole number of steps (default: 1.0; "
                        "--water-box: 0.1)")
    p.add_argument("--timestep-fs", type=float, default=None, metavar="FS",
                   help="integration time step, fs (default: 1.0; --water-box: 0.5)")
    p.add_argument("--temperature-k", "--temperature", dest="temperature", type=float,
                   default=300.0, metavar="K", help="temperature, K (default: 300.0)")
    p.add_argument("--friction-per-ps", "--friction", dest="friction", type=float, default=1.0,
                   metavar="PER_PS", help="Langevin friction, 1/ps (default: 1.0)")
    p.add_argument("--equilibration-ps", type=float, default=None, metavar="PS",
                   help="equilibration before the first frame, ps (default: 100; "
                        "--water-box: 20)")
    p.add_argument("--constraints", default=None, metavar="NAME",
                   help="HBonds, AllBonds or HAngles (default: none; the saved forces lack "
                        "constraint forces)")
    p.add_argument("--platform", default="CPU", metavar="NAME",
                   help="OpenMM platform (default: CPU)")
    p.add_argument("--checkpoint-every", type=int, default=1000, metavar="N",
                   help="frames per checkpointed chunk: at most this many are lost when a run "
                        "is interrupted (default: 1000)")
    p.add_argument("--trajectories", type=int, default=None, metavar="N",
                   help="N independent runs with seeds SEED, SEED+1, ...: --out is then a "
                        "directory of trajectory-KKK.npz files and a manifest.json "
                        "(default: one run, --out is the file)")
    p.add_argument("--out", required=True, metavar="FILE.npz",
                   help="output file, or directory with --trajectories (required)")
    add_cluster(p)
    add_standard(p, run_datagen, seed=1, resumable=True,
                 threads="CPU platform threads (default: 1, which makes runs bit-reproducible)")
