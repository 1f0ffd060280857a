"""The ML-potential job: periodic energy+force data -> attention or TorchMD-Net potential ->
held-out errors -> export -> OpenMM NVT (RDF vs the reference) and NVE (energy drift).

Each step writes into one output directory and runs on its own (``openmm-geom potential
train | export | simulate | evaluate``) or all together (``openmm-geom potential reproduce``).
"""
from __future__ import annotations

import dataclasses
import io
import math
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from ..arguments import openmm_seed
from ..errors import SimulationBlowUp
from ..threads import set_threads
from ..analysis.liquid import (nve_drift, plot_force_parity, plot_rdfs, radial_distribution,
                               rdf_error)
from ..data.potential_data import PotentialData, load_potential_data, time_block_split
from ..export import export_potential
from ..io import atomic_write_bytes, write_json
from ..models.potentials import build_potential
from ..training.checkpoints import load_potential, save_potential
from ..training.energy_force import evaluate_potential, train_potential
from ..settings import check_settings
from .. import arguments as check
from .config import PotentialSettings, budget

__all__ = ["PotentialSettings", "budget", "train", "export", "read_structure",
           "export_for_structure", "simulate", "simulate_structure", "evaluate",
           "evaluate_checkpoint", "reproduce", "rdf_goal", "RDF_GOAL"]


def _split(data: PotentialData, settings: PotentialSettings):
    train_idx, val_idx, test_idx = time_block_split(
        len(data.energies), validation_fraction=settings.validation_fraction,
        test_fraction=settings.test_fraction, gap=settings.gap_frames)
    return data.subset(train_idx), data.subset(val_idx), data.subset(test_idx)


def _strip(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if not k.startswith("predicted")}


def train(data: PotentialData, out: Path, settings: PotentialSettings, *, seed: int = 0,
          progress: bool = True) -> dict:
    """Train one potential; writes ``model.pt``, ``training.json``, ``learning_curves.png``,
    ``force_parity.png`` and ``metrics.json`` (test-block errors) into ``out``."""
    from ..analysis.plots import plot_potential_learning_curves

    check_settings(settings)
    seed = check.count("seed", seed, minimum=0)
    train_set, val_set, test_set = _split(data, settings)  # too few frames: refuse here
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = build_potential(settings.architecture, data.atomic_numbers, **settings.model_options(seed))
    started = time.perf_counter()
    result = train_potential(model, train_set, val_set,
                             dataclasses.replace(settings.training, seed=seed),
                             checkpoint=out / "checkpoint.pt", progress=progress,
                             data_hash=data.sha256)
    seconds = time.perf_counter() - started
    test = evaluate_potential(model, test_set.positions.astype(np.float32 if settings.dtype == "float32"
                                                               else np.float64),
                              test_set.energies, test_set.forces, test_set.boxes)
    save_potential(model, out / "model.pt", data_sha256=data.sha256, seed=seed,
                   statistics=result.statistics, settings=dataclasses.asdict(settings))
    plot_potential_learning_curves(result.history, out / "learning_curves.png")
    plot_force_parity(test_set.forces, test["predicted_forces"], out / "force_parity.png",
                      atomic_numbers=data.atomic_numbers)
    metrics = {"architecture": settings.architecture, "seed": seed,
               "parameters": int(sum(p.numel() for p in model.parameters())),
               "train_frames": len(train_set.energies), "validation_frames": len(val_set.energies),
               "test_frames": len(test_set.energies), "best_epoch": result.best_epoch,
               "epochs_run": len(result.history["epoch"]), "training_seconds": seconds,
               "validation": result.best_validation, "test": _strip(test)}
    write_json(out / "training.json", {"history": result.history, "statistics": result.statistics})
    write_json(out / "metrics.json", metrics)
    return metrics


def export(model_path: Path, out: Path, *, positions, box=None, atomic_numbers=None,
           masses=None) -> Path:
    """Export a trained ``model.pt`` for a system (its atoms, a configuration and the box)."""
    model, extra = load_potential(model_path)
    export_potential(model, out, positions=positions, box=box,
                     atomic_numbers=atomic_numbers, masses=masses,
                     training_data_hash=extra.get("data_sha256"))
    return Path(out)


def read_structure(path) -> tuple:
    """Read a PDB or PDBx/mmCIF file with errors that name it.

    Parameters
    ----------
    path : path
        ``.pdb``, or ``.cif``/``.pdbx``/``.mmcif``.

    Returns
    -------
    tuple
        ``(openmm.app.Topology, positions (N, 3) nm, box (3, 3) nm or None)``.

    Raises
    ------
    FileNotFoundError
        No such file.
    ValueError
        Unreadable, or no atoms.
    """
    import openmm.app as app
    import openmm.unit as unit

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"structure file not found: {path}")
    reader = app.PDBxFile if path.suffix.lower() in (".cif", ".pdbx", ".mmcif") else app.PDBFile
    try:
        structure = reader(str(path))
    except Exception as error:  # OpenMM's readers raise IndexError, ValueError, KeyError...
        raise ValueError(f"{path} could not be read as a structure file "
                         f"({type(error).__name__}: {error})") from error
    if structure.topology.getNumAtoms() == 0:
        raise ValueError(f"{path} contains no atoms (is it a PDB file?)")
    positions = np.asarray(structure.getPositions(asNumpy=True).value_in_unit(unit.nanometer))
    box = structure.topology.getPeriodicBoxVectors()
    box = None if box is None else np.asarray(box.value_in_unit(unit.nanometer))
    return structure.topology, positions, box


def _elements(topology) -> tuple:
    atoms = list(topology.atoms())
    missing = [a.index for a in atoms if a.element is None]
    if missing:
        raise ValueError(f"atoms {missing[:10]} of the structure have no element; an ML "
                         "potential needs every atom's element")
    return ([a.element.atomic_number for a in atoms],
            [a.element.mass.value_in_unit(a.element.mass.unit) for a in atoms])


def export_for_structure(model_path, pdb, out) -> dict:
    """``openmm-geom potential export``: export a trained model for the system in a PDB.

    Parameters
    ----------
    model_path : path
        ``model.pt`` from :func:`train`.
    pdb : path
        The target system: its atoms, configuration and (``CRYST1``) periodic box.
    out : path
        The exported TorchScript file.

    Returns
    -------
    dict
        ``out``, ``atoms`` and ``periodic``.
    """
    topology, positions, box = read_structure(pdb)
    numbers, masses = _elements(topology)
    export(Path(model_path), Path(out), positions=positions, box=box, atomic_numbers=numbers,
           masses=masses)
    return {"out": str(out), "atoms": len(numbers), "periodic": box is not None}


def simulate_structure(pdb, out, settings: PotentialSettings, *, exported=None, checkpoint=None,
                       seed: int = 1, ensemble: str = "nvt", spread_models: Sequence = (),
                       spread_threshold: Optional[float] = None, threads: Optional[int] = None,
                       progress: bool = True) -> dict:
    """``openmm-geom potential simulate``: an OpenMM run of a potential from a PDB.

    Parameters
    ----------
    pdb : path
        Start structure and box.
    out : path
        Output directory (``<ensemble>.npz``, ``<ensemble>.csv``, ...).
    settings : PotentialSettings
        The simulation fields (``timestep_fs``, ``temperature_K``, ``friction_per_ps``,
        ``nvt_ps``, ...).
    exported, checkpoint : path
        Exactly one: an exported model file, or a ``model.pt`` that is exported for the PDB
        into ``out/model_openmm.pt`` first.
    seed, ensemble, spread_models, spread_threshold, threads, progress
        As :func:`simulate`.

    Returns
    -------
    dict
        The run summary without the arrays, with ``final_potential_energy`` (kJ/mol) and
        ``out``. Every input is read and checked before ``out`` is created.
    """
    check_settings(settings)
    if (exported is None) == (checkpoint is None):
        raise ValueError("give exported (a file from `potential export`) or checkpoint "
                         "(a model.pt), not both")
    topology, positions, box = read_structure(pdb)
    _check_run_inputs(settings, ensemble, seed, spread_models, spread_threshold)
    out = Path(out)
    if exported is None:
        numbers, masses = _elements(topology)
        load_potential(checkpoint)  # the right kind of file, before anything is written
        exported = out / "model_openmm.pt"
        export(Path(checkpoint), exported, positions=positions, box=box,
               atomic_numbers=numbers, masses=masses)
    run = simulate(Path(exported), topology, positions, out, settings, seed=seed,
                   ensemble=ensemble, box=box, spread_models=spread_models,
                   spread_threshold=spread_threshold, threads=threads, progress=progress)
    result = {k: v for k, v in run.items() if not hasattr(v, "shape")}
    result["final_potential_energy"] = float(run["potential_energies"][-1])
    result["out"] = str(out)
    return result


def evaluate_checkpoint(model_path, data_path, out) -> dict:
    """``openmm-geom potential evaluate``: a trained model's errors on a data file.

    Parameters
    ----------
    model_path : path
        ``model.pt`` from :func:`train` (retargeted to the file's atoms if they differ).
    data_path : path
        Energy+force npz (see :func:`~openmm_geom.data.potential_data.load_potential_data`).
    out : path
        Output directory for ``force_parity.png``.

    Returns
    -------
    dict
        Energy and force errors (kJ/mol, kJ/mol/nm) of :func:`~openmm_geom.training.
        energy_force.evaluate_potential`, without the predictions.
    """
    data = load_potential_data(data_path)
    model, _ = load_potential(model_path)
    if list(data.atomic_numbers) != model.atomic_numbers.tolist():
        model = model.for_atoms(data.atomic_numbers)
    dtype = next(model.parameters()).dtype
    metrics = evaluate_potential(model, data.positions.astype(
        np.float32 if dtype == torch.float32 else np.float64),
        data.energies, data.forces, data.boxes)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plot_force_parity(data.forces, metrics["predicted_forces"], out / "force_parity.png",
                      atomic_numbers=data.atomic_numbers)
    return _strip(metrics)


def _check_run_inputs(settings, ensemble, seed, spread_models, spread_threshold) -> None:
    if ensemble not in ("nvt", "nve"):
        raise ValueError(f"ensemble must be 'nvt' or 'nve', got {ensemble!r}")
    check.count("seed", seed, minimum=0)
    for path in spread_models or ():
        if not Path(path).is_file():
            raise FileNotFoundError(f"spread model not found: {path}")
    if spread_threshold is not None:
        check.number("spread_threshold", spread_threshold)


def _topology(data: PotentialData):
    """The data's OpenMM topology (from its PDB text), or one residue per atom from elements."""
    import openmm.app as app
    import openmm.unit as unit

    if data.topology_pdb:
        topology = app.PDBFile(io.StringIO(data.topology_pdb)).topology
    else:
        topology = app.Topology()
        chain = topology.addChain()
        for z in data.atomic_numbers:
            element = app.Element.getByAtomicNumber(int(z))
            topology.addAtom(element.symbol, element, topology.addResidue(element.symbol, chain))
    if data.boxes is not None:
        topology.setPeriodicBoxVectors([tuple(v) for v in data.boxes[-1]] * unit.nanometer)
    else:
        topology.setPeriodicBoxVectors(None)
    return topology


COLLAPSE_NM = 0.05  # no two atoms of any chemistry come this close (H2: 0.074 nm)


def _check_no_collapse(positions, box, step: int, ensemble: str) -> None:
    """Raise when two atoms sit closer than ``COLLAPSE_NM``: a potential with a hole.

    A network knows nothing about distances its data never reached; its liquid can collapse
    (atoms on top of each other) while energies stay finite, which no energy check notices.
    """
    from ..ops.neighbors import neighbor_pairs

    x = torch.as_tensor(np.asarray(positions), dtype=torch.float64)
    b = None if box is None else torch.as_tensor(np.asarray(box), dtype=torch.float64)
    pairs, _, r = neighbor_pairs(x, COLLAPSE_NM, b)
    if r.numel():
        k = int(torch.argmin(r))
        raise SimulationBlowUp(
            f"{ensemble} run collapsed at step {step}: atoms {int(pairs[0, k])} and "
            f"{int(pairs[1, k])} are {float(r[k]):.4f} nm apart. The potential has a hole at "
            "distances its training data never reached; train with core_repulsion (the "
            "default) or add such configurations to the data.")


def simulate(exported: Path, topology, positions: np.ndarray, out: Path,
             settings: PotentialSettings, *, seed: int = 1, ensemble: str = "nvt",
             box: Optional[np.ndarray] = None, spread_models: Sequence[Path] = (),
             spread_threshold: Optional[float] = None, threads: Optional[int] = None,
             progress: bool = True) -> dict:
    """Run the exported potential in OpenMM; returns times, energies and the saved frames.

    NVT uses a ``LangevinMiddleIntegrator`` for ``equilibration_ps + nvt_ps``; NVE a
    ``VerletIntegrator`` for ``nve_ps`` after velocities are drawn at the temperature. Frames
    (positions, boxes) and energies are saved every ``report_interval`` steps to
    ``<ensemble>.npz`` and ``<ensemble>.csv``; a non-finite or exploding energy stops the run
    with :class:`SimulationBlowUp`, and so do two atoms closer than 0.05 nm (a
    collapse that energies alone do not reveal).
    """
    import openmm
    import openmm.app as app
    import openmm.unit as unit

    from ..threads import cpu_platform_properties
    from ..openmm import EnsembleSpreadReporter, create_system
    from ..progress import ProgressReporter

    check_settings(settings)
    _check_run_inputs(settings, ensemble, seed, spread_models, spread_threshold)
    system = create_system(exported, topology)  # a wrong model file: refused before writing
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dt = settings.timestep_fs * 1e-3 * unit.picosecond
    temperature = settings.temperature_K * unit.kelvin
    if ensemble == "nvt":
        integrator = openmm.LangevinMiddleIntegrator(temperature, settings.friction_per_ps / unit.picosecond, dt)
        integrator.setRandomNumberSeed(openmm_seed(seed))
        equilibration = int(round(settings.equilibration_ps * 1000 / settings.timestep_fs))
        production = int(round(settings.nvt_ps * 1000 / settings.timestep_fs))
    elif ensemble == "nve":
        integrator = openmm.VerletIntegrator(dt)
        equilibration = 0
        production = int(round(settings.nve_ps * 1000 / settings.timestep_fs))
    else:
        raise ValueError(f"ensemble must be 'nvt' or 'nve', got {ensemble!r}")
    platform = openmm.Platform.getPlatformByName("CPU")
    simulation = app.Simulation(topology, system, integrator, platform,
                                cpu_platform_properties(threads))
    if box is not None:
        simulation.context.setPeriodicBoxVectors(*[openmm.Vec3(*map(float, v)) for v in box])
    simulation.context.setPositions(np.asarray(positions, dtype=np.float64))
    simulation.context.setVelocitiesToTemperature(temperature, openmm_seed(seed))
    if progress:
        simulation.reporters.append(ProgressReporter(equilibration + production, f"{ensemble} MD"))
    if equilibration:
        simulation.step(equilibration)
    spread = None
    if spread_models:
        spread = EnsembleSpreadReporter(str(out / f"{ensemble}_spread.csv"), settings.report_interval,
                                        list(spread_models), threshold=spread_threshold)
        simulation.reporters.append(spread)
    n_atoms = system.getNumParticles()
    frames, boxes, times, potential, kinetic = [], [], [], [], []
    started = time.perf_counter()
    advice = ("The model probably met configurations outside its training data (check the "
              f"ensemble spread), or the time step ({settings.timestep_fs} fs) is too long.")
    for _ in range(max(production // settings.report_interval, 1)):
        try:
            simulation.step(settings.report_interval)
        except openmm.OpenMMException as error:  # e.g. the model refused NaN coordinates
            raise SimulationBlowUp(
                f"{ensemble} run unstable near step {simulation.currentStep}: "
                f"{str(error).strip().splitlines()[-1]}. {advice}") from error
        state = simulation.context.getState(getPositions=True, getEnergy=True)
        e_pot = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
        e_kin = state.getKineticEnergy().value_in_unit(unit.kilojoule_per_mole)
        # Kinetic energy above 100 kT per atom means the integration has blown up.
        runaway = e_kin > 100 * 0.0083144626 * settings.temperature_K * n_atoms
        if not (math.isfinite(e_pot) and math.isfinite(e_kin)) or runaway:
            raise SimulationBlowUp(
                f"{ensemble} run unstable at step {simulation.currentStep}: potential {e_pot:.6g} "
                f"kJ/mol, kinetic {e_kin:.6g} kJ/mol. {advice}")
        frame = state.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
        frame_box = state.getPeriodicBoxVectors(asNumpy=True).value_in_unit(unit.nanometer)
        _check_no_collapse(frame, frame_box if box is not None else None, simulation.currentStep,
                           ensemble)
        frames.append(frame)
        boxes.append(frame_box)
        times.append(state.getTime().value_in_unit(unit.picosecond))
        potential.append(e_pot)
        kinetic.append(e_kin)
    seconds = time.perf_counter() - started
    arrays = {"positions": np.asarray(frames, np.float32), "box_vectors": np.asarray(boxes),
              "time_ps": np.asarray(times), "potential_energies": np.asarray(potential),
              "kinetic_energies": np.asarray(kinetic)}
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(out / f"{ensemble}.npz", buffer.getvalue())
    lines = ["time_ps,potential_kj_mol,kinetic_kj_mol"] + [
        f"{t!r},{p!r},{k!r}" for t, p, k in zip(times, potential, kinetic)]
    atomic_write_bytes(out / f"{ensemble}.csv", ("\n".join(lines) + "\n").encode())
    steps = production
    result = dict(arrays, steps=steps, seconds=seconds, steps_per_second=steps / seconds,
                  ns_per_day=steps * settings.timestep_fs * 1e-6 / seconds * 86400)
    if spread is not None:
        result["max_force_spread"] = spread.largest_spread
        spread.close()
    return result


def evaluate(reference: PotentialData, nvt: dict, nve: Optional[dict], out: Path,
             settings: PotentialSettings, label: str) -> dict:
    """O-O (and O-H, H-H if present) RDFs of the ML run vs the reference frames, NVE drift.

    RDFs are between molecules when the data carry a topology (pairs within a molecule,
    e.g. the O-H bonds of water, are left out), else over all pairs of the elements.
    """
    out = Path(out)
    numbers = np.asarray(reference.atomic_numbers)
    atoms = _topology(reference) if reference.topology_pdb else numbers
    pairs = [("O", "O"), ("O", "H"), ("H", "H")] if {1, 8} <= set(numbers.tolist()) else []
    rdfs, curves = {}, {}
    for pair in pairs:
        r, g_ref = radial_distribution(reference.positions, reference.boxes, atoms, pair=pair,
                                       bins=settings.rdf_bins)
        _, g_ml = radial_distribution(nvt["positions"], nvt["box_vectors"], atoms, pair=pair,
                                      bins=settings.rdf_bins)
        name = "-".join(pair)
        rdfs[name] = rdf_error(r, g_ml, g_ref)
        curves[f"{name} reference"] = (r, g_ref)
        curves[f"{name} {label}"] = (r, g_ml)
    if curves:
        plot_rdfs(curves, out / "rdf.png")
    result = {"rdf": rdfs}
    if "O-O" in rdfs:
        result["rdf_error"] = rdfs["O-O"]["rdf_mae"]
        result["rdf_goal"] = rdf_goal(rdfs, bin_nm=float(r[1] - r[0]))
    if nve is not None:
        drift = nve_drift(nve["time_ps"], nve["potential_energies"] + nve["kinetic_energies"],
                          n_atoms=len(numbers), kinetic_energies=nve["kinetic_energies"])
        result["nve"] = drift
        result["nve_drift"] = drift["drift_kj_mol_per_ns_per_atom"]
    return result


#: A liquid "matches" its reference (issue 18): for every pair type, mean |g_ML - g_ref| at
#: most 0.05, the first peak within 0.005 nm and 5% of its height, and no pair closer than the
#: reference's closest by more than one bin.
RDF_GOAL = {"rdf_mae": 0.05, "peak_position_nm": 0.005, "peak_height_relative": 0.05}


def rdf_goal(rdfs: dict, bin_nm: float) -> dict:
    """Which pair types meet :data:`RDF_GOAL` (``rdfs``: pair -> :func:`rdf_error` result)."""
    pairs = {}
    for name, e in rdfs.items():
        checks = {
            "rdf_mae": e["rdf_mae"] <= RDF_GOAL["rdf_mae"],
            "peak_position": abs(e["first_peak_position_error_nm"]) <= RDF_GOAL["peak_position_nm"],
            "peak_height": abs(e["first_peak_height_error"])
            <= RDF_GOAL["peak_height_relative"] * e["first_peak_height_reference"],
            "no_unseen_contact": e["unseen_contact_nm"] <= bin_nm + 1e-9}
        pairs[name] = dict(checks, met=all(checks.values()))
    return {"thresholds": dict(RDF_GOAL, unseen_contact_nm=bin_nm), "pairs": pairs,
            "met": all(p["met"] for p in pairs.values())}


def reproduce(data_path, out, *, architecture: str = "attention", seed: int = 0,
              settings: Optional[PotentialSettings] = None, threads: Optional[int] = None,
              progress: bool = True, size: str = "medium") -> dict:
    """Train, evaluate on the held-out time block, export, and run NVT + NVE in OpenMM.

    ``settings`` default to the production budget of ``architecture`` at ``size``
    (:data:`~openmm_geom.workflows.config.SIZES`); given settings are used as they are and
    ``size`` only labels the result.

    Returns (and writes to ``out/reproduce.json``) at least ``force_mae``, ``force_rmse``,
    ``energy_mae_per_atom`` (kJ/mol/nm, kJ/mol), ``nve_drift`` (kJ/mol/ns/atom),
    ``rdf_error`` (mean |g_ML - g_ref| of the O-O RDF, for water-containing data),
    ``parameters`` and ``steps_per_second_openmm`` (the NVT run's).
    """
    started = time.perf_counter()
    settings = settings or budget("production", architecture, size)
    if settings.architecture != architecture:
        settings = dataclasses.replace(settings, architecture=architecture)
    check_settings(settings)
    data = load_potential_data(data_path)
    _split(data, settings)  # too few frames: refuse before writing
    set_threads(threads)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    metrics = train(data, out, settings, seed=seed, progress=progress)
    _, _, test_set = _split(data, settings)
    start_positions, start_box = test_set.positions[0], None
    if test_set.boxes is not None:
        start_box = test_set.boxes[0]
    exported = export(out / "model.pt", out / "model_openmm.pt", positions=start_positions,
                      box=start_box, masses=data.masses)
    topology = _topology(data)
    nvt = simulate(exported, topology, start_positions, out, settings, seed=seed + 1,
                   ensemble="nvt", box=start_box, threads=threads, progress=progress)
    last = nvt["positions"][-1]
    nve = simulate(exported, topology, last, out, settings, seed=seed + 2, ensemble="nve",
                   box=nvt["box_vectors"][-1], threads=threads, progress=progress)
    analysis = evaluate(data, nvt, nve, out, settings, architecture)
    result = {
        "architecture": architecture, "size": size, "seed": seed, "data": str(data_path),
        "parameters": metrics["parameters"],
        "steps_per_second_openmm": nvt["steps_per_second"],
        "data_sha256": data.sha256, "atoms": int(len(data.atomic_numbers)),
        "force_mae": metrics["test"]["force_mae"], "force_rmse": metrics["test"]["force_rmse"],
        "energy_mae_per_atom": metrics["test"]["energy_mae_per_atom"],
        "units": {"force": "kJ/mol/nm", "energy": "kJ/mol", "nve_drift": "kJ/mol/ns/atom",
                  "rdf_error": "mean |g_ML - g_ref| over the O-O RDF range"},
        "nve_drift": analysis.get("nve_drift"), "rdf_error": analysis.get("rdf_error"),
        "rdf_goal": analysis.get("rdf_goal"),
        "rdf": analysis.get("rdf"), "nve": analysis.get("nve"),
        "training": {k: metrics[k] for k in ("parameters", "train_frames", "validation_frames",
                                             "test_frames", "best_epoch", "epochs_run",
                                             "training_seconds")},
        "openmm": {"nvt_steps_per_second": nvt["steps_per_second"],
                   "nvt_ns_per_day": nvt["ns_per_day"], "nvt_ps": settings.nvt_ps,
                   "nve_ps": settings.nve_ps, "timestep_fs": settings.timestep_fs},
        "settings": dataclasses.asdict(settings), "wall_seconds": time.perf_counter() - started,
    }
    write_json(out / "reproduce.json", result)
    return result
