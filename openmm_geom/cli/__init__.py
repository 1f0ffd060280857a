"""``openmm-geom``: command-line interface. Every command that computes metrics has ``--json``."""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys

__all__ = ["main"]


_JSON_OUT = None  # the real stdout while a --json command runs with fd 1 sent to stderr


def _emit(args, payload: dict, text: str) -> None:
    if args.json and _JSON_OUT is not None:
        _JSON_OUT.write(json.dumps(payload, indent=2) + "\n")
        _JSON_OUT.flush()
    else:
        print(json.dumps(payload, indent=2) if args.json else text)


def _stdout_is_fd1() -> bool:
    try:
        return sys.stdout.fileno() == 1
    except (AttributeError, OSError, ValueError):  # captured (pytest, notebooks): leave it be
        return False


@contextlib.contextmanager
def _stdout_to_stderr():
    """Send file descriptor 1 to stderr, keeping the real stdout for the JSON document.

    Native libraries print to fd 1 behind Python's back (mdtraj's DCD plugin announces every
    file it opens), which would corrupt ``--json`` output meant for a pipe.
    """
    global _JSON_OUT
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        _JSON_OUT = os.fdopen(os.dup(saved), "w")
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
        if _JSON_OUT is not None:
            _JSON_OUT.close()
        _JSON_OUT = None


def _cmd_doctor(args) -> int:
    from ..doctor import format_doctor, run_doctor

    report = run_doctor()
    _emit(args, report, format_doctor(report))
    return 0 if report["ok"] else 1


def _cmd_check_export(args) -> int:
    from ..errors import ModelFileError
    from ..openmm import check_export

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
    from ..demo import run_demo

    summary = run_demo(args.out, part=args.part, steps=args.steps, frames=args.frames,
                       seed=args.seed, threads=args.threads, progress=not args.no_progress)
    lines = []
    for part, values in summary.items():
        lines.append(f"[{part}]")
        lines.extend(f"  {k}: {v}" for k, v in values.items())
    _emit(args, summary, "\n".join(lines) + f"\nwrote {args.out}/")
    return 0 if summary.get("cv", {}).get("check_export_passed", True) else 1


# datagen defaults: (PDB input, --water-box); flexible water needs a short step for O-H
_DATAGEN_DEFAULTS = {"interval_ps": (1.0, 0.1), "timestep_fs": (1.0, 0.5),
                     "equilibration_ps": (100.0, 20.0)}


def _cmd_datagen(args) -> int:
    from ..data.datagen import generate_reference, load_reference

    if (args.pdb is None) == (args.water_box is None):
        raise SystemExit("error: datagen needs either a PDB file or --water-box N (not both)")
    water = args.water_box is not None
    for name, defaults in _DATAGEN_DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, defaults[water])
    options = dict(
        n_frames=args.frames, save_interval_ps=args.interval_ps, timestep_fs=args.timestep_fs,
        temperature_K=args.temperature, friction_per_ps=args.friction,
        equilibration_ps=args.equilibration_ps, seed=args.seed, constraints=args.constraints,
        platform=args.platform, threads=args.threads, progress=not args.no_progress)
    if args.forcefield is not None:
        options["forcefield"] = tuple(args.forcefield)
    if args.nonbonded_cutoff is not None:
        options["nonbonded_cutoff_nm"] = args.nonbonded_cutoff
    if water:
        from ..data.water import generate_water_reference

        path = generate_water_reference(args.water_box, args.out, density=args.water_density,
                                        **options)
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
    _emit(args, summary, f"wrote {path}: {summary['frames']} frames of {summary['atoms']} atoms")
    return 0


def _cg_settings(args):
    """PRODUCTION (or QUICK with --quick) changed by the CGSettings options given."""
    from ..settings import override, overrides_from
    from ..workflows.coarse_grain import PRODUCTION, QUICK, CGSettings

    base = QUICK if getattr(args, "quick", False) else PRODUCTION
    return override(base, **overrides_from(args, CGSettings))


def _cmd_cg(args) -> int:
    from ..workflows import coarse_grain as cg

    settings = _cg_settings(args)
    from ..threads import set_threads

    set_threads(args.threads)
    if args.cg_command == "train":
        data = cg.load_cg_data(args.data, pdb=args.pdb, mapping=args.mapping,
                               force_map=settings.force_map)
        result = cg.train(data, args.out, settings, seed=args.seed, progress=not args.no_progress)
    elif args.cg_command == "simulate":
        from ..training.checkpoints import load_cgschnet

        from ..data.mapping import CGMapping

        model, metadata = load_cgschnet(args.model)
        mapping = (CGMapping.from_dict(metadata["mapping"]) if "mapping" in metadata
                   else "auto")
        start = cg.load_cg_data(args.start, pdb=args.pdb, need_forces=False, mapping=mapping)
        if start.mapping.n_beads != model.n_beads:
            raise SystemExit(f"error: {args.model} is a {model.n_beads}-bead model but "
                             f"{args.start} maps to {start.mapping.n_beads} beads")
        result = cg.simulate(args.model, cg.start_configurations(start.positions, settings.replicas),
                             args.out, settings, seed=args.seed, progress=not args.no_progress)
    elif args.cg_command == "evaluate":
        reference = cg.load_cg_data(args.reference, pdb=args.pdb, need_forces=False,
                                    mapping=args.mapping)
        result = cg.evaluate(reference.positions, args.trajectory, args.out,
                             temperature_K=reference.temperature_K, settings=settings,
                             seed=args.seed, kind=cg.evaluation_kind(reference.mapping))
    else:  # reproduce
        result = cg.reproduce(args.train, args.reference, args.out, settings=settings,
                              seed=args.seed, threads=args.threads, pdb=args.pdb,
                              mapping=args.mapping,
                              progress=not args.no_progress)
    text = "\n".join(f"{k}: {v}" for k, v in result.items()
                     if not isinstance(v, (dict, list)))
    for warning in result.get("warnings", []):
        print(f"warning: {warning}", file=sys.stderr)
    _emit(args, result, text)
    return 0


def _potential_settings(args):
    """The production (or --quick) budget for --model, changed by the options given."""
    from ..settings import override, overrides_from
    from ..workflows.potential import PotentialSettings, budget

    architecture = getattr(args, "model", None) or "attention"
    base = budget("quick" if getattr(args, "quick", False) else "production", architecture)
    return override(base, **overrides_from(args, PotentialSettings))


def _pdb_system(path):
    """(topology, positions nm, box nm or None) of a PDB/PDBx file."""
    import numpy as np
    import openmm.app as app
    import openmm.unit as unit

    reader = app.PDBxFile if str(path).lower().endswith((".cif", ".pdbx")) else app.PDBFile
    structure = reader(str(path))
    positions = np.asarray(structure.getPositions(asNumpy=True).value_in_unit(unit.nanometer))
    box = structure.topology.getPeriodicBoxVectors()
    box = None if box is None else np.asarray(box.value_in_unit(unit.nanometer))
    return structure.topology, positions, box


def _cmd_potential(args) -> int:
    from ..errors import ModelFileError
    from ..errors import SimulationBlowUp

    try:
        return _run_potential(args)
    except (ValueError, TypeError, FileNotFoundError, ModelFileError,
            SimulationBlowUp) as error:  # bad input: a message, not a traceback
        print(f"error: {error}", file=sys.stderr)
        return 1


def _run_potential(args) -> int:
    from pathlib import Path

    from ..threads import set_threads
    from ..workflows import potential as wf

    set_threads(args.threads)
    settings = _potential_settings(args)
    progress = not args.no_progress
    if args.potential_command == "train":
        from ..data.potential_data import load_potential_data

        result = wf.train(load_potential_data(args.data), Path(args.out), settings,
                          seed=args.seed, progress=progress)
    elif args.potential_command == "export":
        topology, positions, box = _pdb_system(args.pdb)
        numbers = [a.element.atomic_number for a in topology.atoms()]
        masses = [a.element.mass._value for a in topology.atoms()]
        wf.export(Path(args.checkpoint), Path(args.out), positions=positions, box=box,
                  atomic_numbers=numbers, masses=masses)
        result = {"out": args.out, "atoms": len(numbers), "periodic": box is not None}
    elif args.potential_command == "simulate":
        topology, positions, box = _pdb_system(args.pdb)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        exported = args.exported
        if exported is None:
            exported = out / "model_openmm.pt"
            wf.export(Path(args.checkpoint), exported, positions=positions, box=box,
                      atomic_numbers=[a.element.atomic_number for a in topology.atoms()],
                      masses=[a.element.mass._value for a in topology.atoms()])
        run = wf.simulate(Path(exported), topology, positions, out, settings, seed=args.seed or 1,
                          ensemble=args.ensemble, box=box, spread_models=args.spread_models or (),
                          spread_threshold=args.spread_threshold, threads=args.threads,
                          progress=progress)
        result = {k: v for k, v in run.items() if not hasattr(v, "shape")}
        result["final_potential_energy"] = float(run["potential_energies"][-1])
        result["out"] = str(out)
    elif args.potential_command == "evaluate":
        from ..data.potential_data import load_potential_data
        from ..training.checkpoints import load_potential
        from ..training.energy_force import evaluate_potential

        model, _ = load_potential(args.checkpoint)
        data = load_potential_data(args.data)
        if list(data.atomic_numbers) != model.atomic_numbers.tolist():
            model = model.for_atoms(data.atomic_numbers)
        dtype = next(model.parameters()).dtype
        metrics = evaluate_potential(model, data.positions.astype(
            "float32" if dtype.is_floating_point and dtype.itemsize == 4 else "float64"),
            data.energies, data.forces, data.boxes)
        from ..analysis.liquid import plot_force_parity

        Path(args.out).mkdir(parents=True, exist_ok=True)
        plot_force_parity(data.forces, metrics["predicted_forces"],
                          Path(args.out) / "force_parity.png", atomic_numbers=data.atomic_numbers)
        result = {k: v for k, v in metrics.items() if not k.startswith("predicted")}
    else:  # reproduce
        result = wf.reproduce(args.data, args.out, architecture=args.model, seed=args.seed,
                              settings=settings, threads=args.threads, progress=progress)
    text = "\n".join(f"{k}: {v}" for k, v in result.items() if not isinstance(v, (dict, list)))
    _emit(args, result, text)
    return 0


def _signature_base(command: str):
    from ..training.signature_classifier import TrainingSettings
    from ..workflows.signature import GENE_PRODUCTION

    return GENE_PRODUCTION if command == "reproduce" else TrainingSettings()


def _signature_settings(args):
    from ..settings import override, overrides_from
    from ..training.signature_classifier import TrainingSettings

    return override(_signature_base(args.signature_command),
                    **overrides_from(args, TrainingSettings))


def _cmd_signature(args) -> int:
    from ..threads import set_threads
    from ..workflows import signature as workflow

    set_threads(args.threads)
    command = args.signature_command
    progress = not args.no_progress
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
        result = workflow.train(args.data, args.out, methods, _signature_settings(args),
                                progress=progress)
    elif command == "evaluate":
        from ..data.path_dataset import PathDataset
        from ..training.signature_classifier import classification_metrics, load_classifier, predict

        model, info = load_classifier(args.model)
        data = PathDataset(args.data)
        windows = data.fold(0, groups=info.get("groups", 5), folds=info.get("folds", 5))["test"]
        if len(windows) == 0:
            raise SystemExit(f"error: {args.data} has no independent test trajectories")
        predicted = predict(model, info, windows)
        result = {"model": str(args.model), "data": str(args.data), "method": info["method"],
                  **classification_metrics(windows.labels.numpy(), predicted, data.n_classes)}
    elif command == "featurize":
        result = workflow.featurize(args.trajectory, args.out, topology=args.topology,
                                    selection=args.selection, depth=args.depth, window=args.window,
                                    time_augment=args.time_augment)
    else:  # reproduce
        if args.task != "gene":
            raise SystemExit("error: only --task gene has a reproduction recipe")
        settings = _signature_settings(args)
        result = workflow.reproduce_gene(args.out, seed=settings.seed, settings=settings,
                                         rate_spread=args.rate_spread, progress=progress)
    text = "\n".join(f"{k}: {v}" for k, v in result.items() if not isinstance(v, (dict, list)))
    if "accuracy" in result and isinstance(result["accuracy"], dict):
        text += "\n" + "\n".join(f"{m}: test accuracy {100 * a:.2f}%, recall "
                                  f"{100 * result['recall'][m]:.2f}%"
                                  for m, a in result["accuracy"].items())
    _emit(args, result, text)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from ..settings import add_options
    from ..training.signature_classifier import TrainingSettings
    from ..workflows import coarse_grain as cgw
    from ..workflows import potential as ptw

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

    p = sub.add_parser("demo", help="the main jobs on bundled capped alanine (cv and cg parts)")
    p.add_argument("--out", default="demo-out", help="output directory")
    p.add_argument("--part", default="all", choices=["all", "cv", "cg"])
    p.add_argument("--steps", type=int, default=100_000,
                   help="metadynamics steps of 2 fs (cv part)")
    p.add_argument("--frames", type=int, default=10_000,
                   help="all-atom frames per reference run (cg part)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("datagen", help="all-atom OpenMM run saving positions + forces")
    p.add_argument("pdb", nargs="?", default=None,
                   help="input structure (PDB); or use --water-box")
    p.add_argument("--water-box", type=int, default=None, metavar="N",
                   help="instead of a PDB: a cubic box of N flexible TIP3P waters (PME)")
    p.add_argument("--water-density", type=float, default=0.997, metavar="G_PER_CM3",
                   help="density of the --water-box (default 0.997)")
    p.add_argument("--flexible-water", action="store_true",
                   help="rigidWater=False (no water constraints; always on for --water-box)")
    p.add_argument("--nonbonded-cutoff", type=float, default=None, metavar="NM",
                   help="PME direct-space cutoff, at most half the box (default 1.0; "
                        "--water-box: min(1.0, half the box edge))")
    p.add_argument("--out", required=True, help="output .npz")
    p.add_argument("--forcefield", nargs="+", default=None,
                   help="OpenMM force-field XML files (default amber14-all.xml; "
                        "--water-box: amber14/tip3p.xml)")
    p.add_argument("--frames", type=int, required=True)
    p.add_argument("--interval-ps", type=float, default=None,
                   help="ps between saved frames (default 1.0; --water-box: 0.1)")
    p.add_argument("--timestep-fs", type=float, default=None,
                   help="default 1.0; --water-box: 0.5")
    p.add_argument("--temperature", type=float, default=300.0, help="K")
    p.add_argument("--friction", type=float, default=1.0, help="1/ps")
    p.add_argument("--equilibration-ps", type=float, default=None,
                   help="default 100; --water-box: 20")
    p.add_argument("--constraints", default=None, help="None (default), HBonds, AllBonds")
    p.add_argument("--platform", default="CPU")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_datagen)

    cgp = sub.add_parser("cg", help="coarse graining: train | simulate | evaluate | reproduce")
    cgsub = cgp.add_subparsers(dest="cg_command", required=True)

    def common(q):
        q.add_argument("--out", required=True, help="output directory")
        q.add_argument("--pdb", default=None, help="topology, if the data file has none")
        q.add_argument("--seed", type=int, default=0)
        q.add_argument("--threads", type=int, default=None)
        q.add_argument("--quick", action="store_true", help="the few-minute QUICK settings")
        q.add_argument("--no-progress", action="store_true")
        q.add_argument("--json", action="store_true")
        q.set_defaults(func=_cmd_cg)

    def cg_settings(q, stages=None):
        """The CGSettings fields of these stages (None: all), defaults of PRODUCTION."""
        add_options(q, cgw.CGSettings, defaults=cgw.PRODUCTION, stages=stages,
                    also={"--quick": cgw.QUICK})

    q = cgsub.add_parser("train", help="priors + k-fold CGSchNet ensemble by force matching")
    q.add_argument("--data", required=True, help="all-atom npz with positions and forces")
    q.add_argument("--mapping", default="auto", choices=["auto", "alanine", "ca"])
    common(q)
    cg_settings(q, ["train"])
    q = cgsub.add_parser("simulate", help="batched Langevin simulation of a trained model")
    q.add_argument("--model", required=True, help="cg_model.pt from `cg train`")
    q.add_argument("--start", required=True, help="npz whose mapped frames seed the replicas")
    common(q)
    cg_settings(q, ["simulate"])
    q = cgsub.add_parser("evaluate", help="KL, MSE, noise-equivalent sigma, figures")
    q.add_argument("--reference", required=True, help="all-atom npz (held out)")
    q.add_argument("--trajectory", required=True, help="cg_trajectory.h5 from `cg simulate`")
    q.add_argument("--mapping", default="auto", choices=["auto", "alanine", "ca"],
                   help="the mapping the model was trained with")
    common(q)
    cg_settings(q, ["evaluate"])
    q = cgsub.add_parser("reproduce", help="the whole job on all-atom data; one JSON of metrics")
    q.add_argument("--train", required=True)
    q.add_argument("--reference", required=True)
    q.add_argument("--mapping", default="auto", choices=["auto", "alanine", "ca"])
    common(q)
    cg_settings(q)
    ptp = sub.add_parser("potential", help="all-atom ML potentials: train | export | simulate | "
                                           "evaluate | reproduce")
    ptsub = ptp.add_subparsers(dest="potential_command", required=True)

    def common_pot(q):
        q.add_argument("--out", required=True, help="output directory (export: output file)")
        q.add_argument("--seed", type=int, default=0)
        q.add_argument("--threads", type=int, default=None)
        q.add_argument("--quick", action="store_true", help="tiny settings for smoke tests")
        q.add_argument("--no-progress", action="store_true")
        q.add_argument("--json", action="store_true", help="machine-readable output")
        q.set_defaults(func=_cmd_potential)

    def potential_settings(q, stages=None):
        """The PotentialSettings fields of these stages (None: all)."""
        add_options(q, ptw.PotentialSettings, defaults=ptw.budget("production", "attention"),
                    stages=stages, also={"--quick": ptw.budget("quick", "attention")})

    def model_choice(q):
        q.add_argument("--model", default="attention", choices=["attention", "et", "tensornet"],
                       help="architecture")

    q = ptsub.add_parser("train", help="energy+force training; test-block errors, plots")
    q.add_argument("--data", required=True, help="npz: positions, forces, energies, box_vectors, "
                                                 "atomic_numbers (datagen files work as they are)")
    model_choice(q)
    common_pot(q)
    potential_settings(q, ["train"])
    q = ptsub.add_parser("export", help="TorchScript file for OpenMM, for the system in a PDB")
    q.add_argument("--checkpoint", required=True, help="model.pt from `potential train`")
    q.add_argument("--pdb", required=True, help="the target system (CRYST1 makes it periodic)")
    common_pot(q)
    q = ptsub.add_parser("simulate", help="NVT or NVE run in OpenMM with the ML potential")
    q.add_argument("--pdb", required=True, help="start structure (and box)")
    given = q.add_mutually_exclusive_group(required=True)
    given.add_argument("--exported", help="file from `potential export`")
    given.add_argument("--checkpoint", help="model.pt (exported for the PDB first)")
    q.add_argument("--ensemble", default="nvt", choices=["nvt", "nve"])
    q.add_argument("--spread-models", nargs="+", help="exported ensemble members to watch")
    q.add_argument("--spread-threshold", type=float, help="kJ/mol/nm; warn above it")
    common_pot(q)
    potential_settings(q, ["simulate"])
    q = ptsub.add_parser("evaluate", help="errors of a trained model on a data file")
    q.add_argument("--checkpoint", required=True)
    q.add_argument("--data", required=True)
    common_pot(q)
    q = ptsub.add_parser("reproduce", help="train, test, export, NVT + NVE in OpenMM; one JSON")
    q.add_argument("--data", required=True)
    model_choice(q)
    common_pot(q)
    potential_settings(q)
    sgp = sub.add_parser("signature", help="path signatures: generate-gene | generate-md | train | "
                                           "evaluate | featurize | reproduce")
    sgsub = sgp.add_subparsers(dest="signature_command", required=True)

    def common_sig(q, out_help="output directory"):
        q.add_argument("--out", required=True, help=out_help)
        q.add_argument("--threads", type=int, default=None)
        q.add_argument("--no-progress", action="store_true")
        q.add_argument("--json", action="store_true", help="machine-readable output")
        q.set_defaults(func=_cmd_signature)

    def training_options(q, command):
        """Every TrainingSettings field, defaults of the command's base settings."""
        add_options(q, TrainingSettings, defaults=_signature_base(command))

    q = sgsub.add_parser("generate-gene", help="gene-regulatory dynamics dataset (Gao et al. 2016)")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--trajectories", type=int, default=100)
    q.add_argument("--test", type=int, default=40, help="independent test trajectories")
    q.add_argument("--nodes", type=int, default=100)
    q.add_argument("--frames", type=int, default=500)
    q.add_argument("--rate-spread", type=float, default=1.0,
                   help="per-trajectory log-uniform spread of B and R (1: the paper's fixed rates)")
    common_sig(q, "output .npz")
    q = sgsub.add_parser("generate-md", help="capped alanine at two temperatures, made with OpenMM")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--trajectories", type=int, default=20)
    q.add_argument("--test", type=int, default=8)
    q.add_argument("--frames", type=int, default=500)
    q.add_argument("--temperatures", type=float, nargs=2, default=(300.0, 450.0))
    q.add_argument("--no-align", action="store_true",
                   help="keep lab-frame coordinates (default: superpose every frame on one "
                        "reference frame, heavy atoms)")
    common_sig(q, "output .npz")
    q = sgsub.add_parser("train", help="temporal cross-validation + independent test of methods")
    q.add_argument("--data", required=True, help="path dataset (.npz)")
    q.add_argument("--methods", default="deep-signature",
                   help="comma-separated: deep-signature, graph-lstm, graph-trans, head, tail, "
                        "head-tail, dihedral-svm")
    training_options(q, "train")
    common_sig(q)
    q = sgsub.add_parser("evaluate", help="a saved fold model on a dataset's test trajectories")
    q.add_argument("--model", required=True, help="foldK.pt from `signature train`")
    q.add_argument("--data", required=True)
    q.add_argument("--threads", type=int, default=None)
    q.add_argument("--no-progress", action="store_true")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=_cmd_signature)
    q = sgsub.add_parser("featurize", help="windowed log-signatures of a finished trajectory")
    q.add_argument("trajectory", help="any mdtraj-readable trajectory")
    q.add_argument("--topology", help="PDB for DCD/XTC")
    q.add_argument("--selection", default="all", help="mdtraj atom selection, e.g. 'name CA'")
    q.add_argument("--depth", type=int, default=2)
    q.add_argument("--window", type=int, help="frames per window (windows share end frames)")
    q.add_argument("--time-augment", action="store_true")
    common_sig(q, "output .npz")
    q = sgsub.add_parser("reproduce", help="the paper's benchmark end to end; one JSON")
    q.add_argument("--task", default="gene", choices=["gene"])
    q.add_argument("--rate-spread", type=float, default=2.0,
                   help="per-trajectory log-uniform spread of B and R (default 2: single "
                        "frames then do not give the class away, as in the paper's Table 4; "
                        "1: fixed B = R = 1)")
    training_options(q, "reproduce")
    common_sig(q)
    from .cv import add_cv_commands

    add_cv_commands(sub, _emit)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "json", False) and _stdout_is_fd1():
        with _stdout_to_stderr():
            return args.func(args)
    return args.func(args)

