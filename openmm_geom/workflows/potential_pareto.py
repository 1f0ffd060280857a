"""``openmm-geom potential pareto``: test force error against OpenMM speed, for each
architecture at several sizes and seeds, on one data file.

Every model of the grid is trained with :func:`~openmm_geom.workflows.potential.train` (same
data, same split, same training budget; resumable, one directory per model and seed under
``out/runs/``), then exported for boxes of the data's composition at about 300 and 3,000 atoms
and timed in OpenMM (CPU platform, one and two threads), each model, box and thread count in a
fresh process (a process that dies, e.g. out of memory, is recorded as such and the others go
on). ``pareto.png`` plots the test force MAE (mean over seeds, bars: min to max) against
OpenMM steps per second; ``learning_curves.png`` plots the validation force MAE against
optimiser steps and training wall time; ``pareto.json`` holds every number.
"""
from __future__ import annotations

import concurrent.futures
import math
import multiprocessing
import statistics
import time
from pathlib import Path
from typing import Optional, Sequence, Tuple

import numpy as np

from .. import arguments as check
from ..threads import (cpu_platform_properties, memory_status_bytes, release_freed_memory,
                       retain_freed_memory, set_threads)
from ..data.potential_data import load_potential_data, time_block_split
from ..parallel import Task, TaskRunner
from ..progress import progress_bar
from .config import MODEL_SIZES, PARETO_GRID, SIZES, budget
from ..io import write_json
from .potential import export_for_structure, read_structure, train

__all__ = ["PARETO_GRID", "composition", "speed_boxes", "openmm_steps_per_second",
           "in_fresh_process", "pareto"]

_ELEMENTS = {1: "H", 8: "O", 11: "Na", 17: "Cl"}
_TIMESTEP_FS = 0.5
_TEMPERATURE_K = 300.0


def composition(atomic_numbers: Sequence[int]) -> dict:
    """Water molecules and Na+/Cl- pairs of a water (or salt water) system.

    Raises ValueError for other elements or counts that are not whole waters and ion pairs:
    the speed boxes of :func:`speed_boxes` are built from this composition.
    """
    z = np.asarray(list(atomic_numbers))
    other = sorted(set(z.tolist()) - set(_ELEMENTS))
    if other:
        raise ValueError("pareto times the models on water or NaCl-in-water boxes like the "
                         f"data's; the data have other elements too (atomic numbers {other})")
    n_h, n_o, n_na, n_cl = (int((z == k).sum()) for k in (1, 8, 11, 17))
    if n_o == 0 or n_h != 2 * n_o or n_na != n_cl:
        raise ValueError(f"the data are not whole waters and Na+/Cl- pairs ({n_o} O, {n_h} H, "
                         f"{n_na} Na, {n_cl} Cl)")
    return {"waters": n_o, "ion_pairs": n_na, "atoms": len(z)}


def speed_boxes(atomic_numbers: Sequence[int], directory, atoms: Sequence[int] = (300, 3000),
                seed: int = 1) -> list:
    """PDB boxes of the data's composition (water, salt fraction) with about ``atoms`` atoms.

    Returns a list of dicts ``target``, ``atoms``, ``ion_pairs``, ``pdb`` (written into
    ``directory``; the same arguments give the same files).
    """
    from ..data.water import water_box_pdb

    boxes = _plan_boxes(atomic_numbers, atoms)
    for box in boxes:
        path = Path(directory) / f"box{box['target']}.pdb"
        water_box_pdb(box.pop("sites"), path, seed=seed, ion_pairs=box["ion_pairs"])
        box["pdb"] = str(path)
    return boxes


def _plan_boxes(atomic_numbers: Sequence[int], atoms: Sequence[int]) -> list:
    """Sites (waters + ions), ion pairs, atoms and edge (nm) of each speed box."""
    from ..data.water import water_box_edge_nm

    parts = composition(atomic_numbers)
    sites_data = parts["waters"] + 2 * parts["ion_pairs"]
    boxes = []
    for target in atoms:
        target = check.count("atoms", target, minimum=24)
        sites = max(int(round(target * sites_data / parts["atoms"])), 8)
        pairs = int(round(sites * parts["ion_pairs"] / sites_data))
        boxes.append({"target": target, "sites": sites, "atoms": 3 * (sites - 2 * pairs) + 2 * pairs,
                      "ion_pairs": pairs, "edge_nm": water_box_edge_nm(sites)})
    return boxes


def _relaxed(topology, positions, box) -> np.ndarray:
    """The box minimised with the reference force field (flexible TIP3P, its ions): a start
    without the close contacts of a freshly built box, for every model alike."""
    import openmm
    import openmm.app as app
    import openmm.unit as unit

    from ..data.water import WATER_FORCEFIELD, default_cutoff_nm

    forcefield = app.ForceField(*WATER_FORCEFIELD)
    system = forcefield.createSystem(topology, nonbondedMethod=app.PME, rigidWater=False,
                                     constraints=None,
                                     nonbondedCutoff=default_cutoff_nm(float(box[0, 0])))
    context = openmm.Context(system, openmm.VerletIntegrator(0.001),
                             openmm.Platform.getPlatformByName("CPU"),
                             cpu_platform_properties(None))
    context.setPositions(positions * unit.nanometer)
    openmm.LocalEnergyMinimizer.minimize(context, 10.0, 500)
    return context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(
        unit.nanometer)


def openmm_steps_per_second(exported, topology, positions, box, *, threads: int,
                            seconds: float = 4.0, blocks: int = 3, seed: int = 1) -> dict:
    """OpenMM steps per second of an exported potential (LangevinMiddle, 0.5 fs, 300 K, CPU
    platform with ``threads`` threads).

    Two warm-up steps (TorchScript optimises on its first calls), then ``blocks`` blocks of
    about ``seconds / blocks`` each, every block started from the same positions and
    velocities; the median block rate is returned with the rates of all blocks.
    """
    import openmm
    import openmm.unit as unit

    from ..arguments import openmm_seed
    from ..openmm import create_system

    system = create_system(exported, topology)
    integrator = openmm.LangevinMiddleIntegrator(_TEMPERATURE_K * unit.kelvin, 1.0 / unit.picosecond,
                                                 _TIMESTEP_FS * unit.femtosecond)
    integrator.setRandomNumberSeed(openmm_seed(seed))
    context = openmm.Context(system, integrator, openmm.Platform.getPlatformByName("CPU"),
                             cpu_platform_properties(threads))
    context.setPeriodicBoxVectors(*[openmm.Vec3(*map(float, v)) for v in box])
    context.setPositions(positions * unit.nanometer)
    context.setVelocitiesToTemperature(_TEMPERATURE_K * unit.kelvin, openmm_seed(seed))
    start = context.getState(getPositions=True, getVelocities=True)
    started = time.perf_counter()
    integrator.step(2)
    per_step = (time.perf_counter() - started) / 2
    steps = max(1, int(math.ceil(seconds / blocks / max(per_step, 1e-6))))
    rates = []
    for _ in range(blocks):
        context.setState(start)
        started = time.perf_counter()
        integrator.step(steps)
        rates.append(steps / (time.perf_counter() - started))
    return {"steps_per_second": statistics.median(rates), "block_rates": rates,
            "steps_per_block": steps, "threads": threads}


def _time_model(model_path: str, pdb: str, positions: np.ndarray, exported: str, threads: int,
                seconds: float, export: bool) -> dict:
    """With ``export``, export ``model_path`` for the box ``pdb`` to ``exported`` (a file left
    by an earlier run may hold another model); time it with ``threads`` threads from
    ``positions`` (the relaxed box, nm). Run in a fresh process by :func:`pareto`. Returns
    steps/s and the peak RSS."""
    retain_freed_memory()  # no per-call page faults (the potential commands' setting)
    topology, _, box = read_structure(pdb)
    if export:
        export_for_structure(model_path, pdb, exported)
    rate = openmm_steps_per_second(exported, topology, positions, box, threads=threads,
                                   seconds=seconds)["steps_per_second"]
    return {"steps_per_second": rate, "peak_rss_bytes": memory_status_bytes("VmHWM")}


def in_fresh_process(function, *arguments) -> dict:
    """``function(*arguments)`` (a dict) in a spawned process: no allocator history from the
    models timed before. If the process dies (the kernel's out-of-memory killer, a crash),
    ``{"failed": reason}`` is returned
    instead of waiting for it forever; an exception it raises is raised here."""
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
        try:
            return pool.submit(function, *arguments).result()
        except concurrent.futures.process.BrokenProcessPool:
            return {"failed": "the process died (killed by the kernel, most likely out of "
                              "memory)"}


def _train_task(data_path: str, run_dir: str, settings, seed: int) -> dict:
    """One (model, seed) training of :func:`pareto` (a task on a cluster worker)."""
    return train(load_potential_data(data_path), run_dir, settings, seed=seed, progress=False)


def _run_name(architecture: str, size: str, seed: int) -> str:
    return f"{architecture}-{size}-s{seed}"


def _check_grid(models, seeds, atoms, threads) -> tuple:
    models = tuple((str(a), str(s)) for a, s in models)
    for architecture, size in models:
        if architecture not in MODEL_SIZES or size not in SIZES:
            raise ValueError(f"unknown model {architecture}:{size}: architectures "
                             f"{', '.join(MODEL_SIZES)}, sizes {', '.join(SIZES)}")
    if not models or len(set(models)) != len(models):
        raise ValueError("models must be distinct (architecture, size) pairs, at least one")
    seeds = tuple(check.count("seed", s, minimum=0) for s in seeds)
    atoms = tuple(check.count("atoms", a, minimum=24) for a in atoms)
    threads = tuple(check.count("threads", t) for t in threads)
    for name, values in (("seeds", seeds), ("atoms", atoms), ("threads", threads)):
        if not values or len(set(values)) != len(values):
            raise ValueError(f"{name} must be distinct values, at least one")
    return models, seeds, atoms, threads


def pareto(data_path, out, *, models: Sequence[Tuple[str, str]] = PARETO_GRID,
           seeds: Sequence[int] = (0, 1), atoms: Sequence[int] = (300, 3000),
           threads: Sequence[int] = (1, 2), budget_name: str = "production",
           training_threads: Optional[int] = None, speed_seconds: float = 4.0,
           progress: bool = True, runner=None) -> dict:
    """Train every (architecture, size) of ``models`` with each seed, time each in OpenMM at
    each box size and thread count, and plot accuracy against speed.

    Parameters
    ----------
    data_path : path
        Energy+force npz of water or NaCl in water (:func:`composition`).
    out : path
        Output directory: ``runs/<architecture>-<size>-s<seed>/`` (each a ``potential train``
        directory, resumed if present), ``boxes/``, ``exported/``, ``pareto.json``,
        ``pareto.png``, ``learning_curves.png``.
    models : sequence of (architecture, size)
        Default :data:`PARETO_GRID`.
    seeds, atoms, threads : sequences of int
        Training seeds; target atom counts of the speed boxes; OpenMM CPU threads.
    budget_name : str
        ``"production"`` or ``"quick"`` (tests): see :func:`~openmm_geom.workflows.config.
        budget`.
    training_threads : int, optional
        torch threads for training (default: all cores).
    speed_seconds : float
        Timed seconds per model, box and thread count (in 3 blocks).
    runner : TaskRunner, optional
        A :class:`~openmm_geom.parallel.TaskRunner` on a cluster trains every (model, seed)
        as a task (each resumable from its run directory); the OpenMM timings always run
        here, one after the other, since they measure this machine.

    Returns
    -------
    dict
        ``models`` (one entry per architecture and size: parameters, test force MAE per seed
        and their mean, steps per second per box and thread count), ``runs``, ``boxes``,
        ``comparison`` (each attention model against each ET model at the largest box: MAE
        ratio and speed ratio), ``goal`` (MAE <= 1.1 x and speed >= 2 x the medium ET's).
    """
    from ..analysis.plots import plot_learning_curve_comparison, plot_pareto

    models, seeds, atoms, threads = _check_grid(models, seeds, atoms, threads)
    speed_seconds = check.number("speed_seconds", speed_seconds)
    settings = {m: budget(budget_name, *m) for m in models}  # refuses unknown budgets
    data = load_potential_data(data_path)
    # refuse other systems, and boxes too small for a model's cutoff, before writing anything
    cutoff = max(s.cutoff_nm for s in settings.values())
    for box in _plan_boxes(data.atomic_numbers, atoms):
        if box["edge_nm"] < 2 * cutoff:
            raise ValueError(f"the speed box of ~{box['target']} atoms is {box['edge_nm']:.3f} nm "
                             f"wide, less than twice the cutoff ({cutoff} nm): ask for more "
                             "atoms (--atoms)")
    for s in settings.values():  # too few frames for the split: refused here, not in train
        time_block_split(len(data.energies), validation_fraction=s.validation_fraction,
                         test_fraction=s.test_fraction, gap=s.gap_frames)
    out = Path(out)
    with (runner if runner is not None else TaskRunner(None)) as active:
        out.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        grid = [(architecture, size, seed) for (architecture, size) in models for seed in seeds]
        if active.spec is not None:
            tasks = [Task(_run_name(*run), (str(data_path), str(out / "runs" / _run_name(*run)),
                                            settings[run[:2]], run[2]))
                     for run in grid]
            all_metrics = active.run(_train_task, tasks, log_dir=out / "logs",
                                     progress=progress, description="training")
        else:
            all_metrics = []
            bar = progress_bar(len(grid), "training", enabled=progress, unit="model")
            for architecture, size, seed in grid:
                set_threads(training_threads)
                all_metrics.append(train(data, out / "runs" / _run_name(architecture, size, seed),
                                         settings[architecture, size], seed=seed,
                                         progress=False))
                bar.update(1)
            bar.close()
    boxes = speed_boxes(data.atomic_numbers, out / "boxes", atoms)
    # every model starts from the same box, minimised once here
    relaxed = {box["target"]: _relaxed(*read_structure(box["pdb"])) for box in boxes}

    runs, curves = [], {}
    for (architecture, size, seed), metrics in zip(grid, all_metrics):
        name = _run_name(architecture, size, seed)
        history = _history(out / "runs" / name)
        curves[name] = history
        runs.append({"name": name, "architecture": architecture, "size": size,
                     "seed": seed, "parameters": metrics["parameters"],
                     "force_mae": metrics["test"]["force_mae"],
                     "force_rmse": metrics["test"]["force_rmse"],
                     "energy_mae_per_atom": metrics["test"]["energy_mae_per_atom"],
                     "optimizer_steps": history["steps"][-1] if history.get("steps") else None,
                     "training_seconds": (history["training_seconds"][-1]
                                          if history.get("training_seconds") else None)})

    speed_bar = progress_bar(len(models) * len(boxes) * len(threads), "OpenMM speed",
                             enabled=progress, unit="run")
    release_freed_memory()  # what training and evaluation kept: the timing processes need it
    summary = []
    for (architecture, size) in models:
        mine = [r for r in runs if r["architecture"] == architecture and r["size"] == size]
        maes = [r["force_mae"] for r in mine]
        entry = {"architecture": architecture, "size": size, "parameters": mine[0]["parameters"],
                 "force_mae": float(np.mean(maes)), "force_mae_seeds": maes,
                 "model_options": {k: v for k, v in settings[architecture, size].model_options(
                     0).items() if k not in ("dtype", "seed")},
                 "steps_per_second_openmm": {}, "peak_rss_bytes": {}, "failed": {}}
        model_path = out / "runs" / _run_name(architecture, size, seeds[0]) / "model.pt"
        for box in boxes:
            exported = out / "exported" / f"{architecture}-{size}-{box['target']}.pt"
            exported.parent.mkdir(exist_ok=True)
            target = str(box["target"])
            entry["steps_per_second_openmm"][target], entry["peak_rss_bytes"][target] = {}, {}
            for t in threads:
                # a fresh process per model, box and thread count: freed memory retained
                # within it (fast), all of it returned when it ends
                timing = in_fresh_process(_time_model, str(model_path), box["pdb"],
                                          relaxed[box["target"]], str(exported), t,
                                          speed_seconds, t == threads[0])
                entry["steps_per_second_openmm"][target][str(t)] = timing.get("steps_per_second")
                entry["peak_rss_bytes"][target][str(t)] = timing.get("peak_rss_bytes")
                if "failed" in timing:
                    entry["failed"][f"{target} atoms, {t} threads"] = timing["failed"]
                speed_bar.update(1)
        summary.append(entry)
    speed_bar.close()

    comparison, goal = _compare(summary, boxes[-1]["target"], threads)
    result = {"data": str(data_path), "data_sha256": data.sha256, "atoms": len(data.atomic_numbers),
              "composition": composition(data.atomic_numbers), "budget": budget_name,
              "seeds": list(seeds), "threads": list(threads), "boxes": boxes, "models": summary,
              "speed_runs": "each model, box and thread count in a fresh process with "
                            "retain_freed_memory()",
              "runs": runs, "comparison": comparison, "goal": goal,
              "units": {"force_mae": "kJ/mol/nm", "steps_per_second_openmm":
                        f"OpenMM steps/s, LangevinMiddle {_TIMESTEP_FS} fs, CPU platform"},
              "wall_seconds": time.perf_counter() - started}
    plot_pareto(summary, out / "pareto.png")
    plot_learning_curve_comparison(curves, out / "learning_curves.png")
    write_json(out / "pareto.json", result)
    return result


def _history(run_dir: Path) -> dict:
    import json

    return json.loads((run_dir / "training.json").read_text())["history"]


def _compare(summary: list, target: int, threads: Sequence[int]) -> tuple:
    """Each attention model against each ET model at the box ``target``: MAE ratio and speed
    ratio (per thread count); the goal against the medium ET."""
    def ratio(x, y):
        return None if x is None or y is None else x / y

    rows = []
    for a in (m for m in summary if m["architecture"] == "attention"):
        for e in (m for m in summary if m["architecture"] == "et"):
            speed = {t: ratio(a["steps_per_second_openmm"][str(target)][str(t)],
                              e["steps_per_second_openmm"][str(target)][str(t)])
                     for t in map(str, threads)}
            rows.append({"attention": a["size"], "et": e["size"],
                         "force_mae_ratio": a["force_mae"] / e["force_mae"],
                         "speed_ratio": speed})
    reference = [r for r in rows if r["et"] == "medium"]
    met = [r for r in reference if r["force_mae_ratio"] <= 1.1
           and None not in r["speed_ratio"].values() and min(r["speed_ratio"].values()) >= 2.0]
    goal = {"criterion": "attention force MAE <= 1.1 x ET (medium) and OpenMM speed >= 2 x at "
                         f"{target} atoms, every thread count",
            "met": bool(met), "by": [r["attention"] for r in met]} if reference else None
    return rows, goal
