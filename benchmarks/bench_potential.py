"""ML-potential inference: attention model vs TorchMD-Net ET and TensorNet, in torch and in OpenMM.

Systems: cubic periodic boxes of 100, 1,000 and 10,000 TIP3P waters (300, 3,000 and 30,000
atoms) at 0.997 g/cm^3 from ``openmm_geom.data.water_box_pdb`` (seed 1; cached in the temp
directory), i.e. ~100 atoms/nm^3 and ~52 neighbours per atom within the 0.5 nm cutoff.

Models, untrained (random weights, fixed seed 0: speed does not depend on the weights), float32,
at the project's production sizes (``PotentialSettings``, parameter counts recorded):

* ``attention``: ``AttentionPotential`` (features 48, 4 layers, 4 heads, 32 RBFs, 8 vector
  channels since issue 18; the recorded results predate them: 52k parameters, now 64k), pairs from ``openmm_geom.ops.NeighborPairs`` (vesin cell lists, O(N));
* ``et-vesin`` / ``tensornet-vesin``: torchmd-net 2.6.2's ET (~41k parameters) and TensorNet
  (~52k) with 32 channels, 2 layers, 32 RBFs (``TorchMDNetPotential``), fed the same vesin pairs;
* ``et-torchmdnet`` / ``tensornet-torchmdnet``: the same networks (same weights) with
  torchmd-net's own pair search (``OptimizedDistance``), which on CPU (and always under
  TorchScript) is a pure-torch brute force over all N^2 ordered pairs plus an argsort:
  O(N^2 log N) time and O(N^2) memory. ``max_num_neighbors`` 128 (water needs ~60).

Measured, at the core count (``--threads`` to choose; ``openmm_geom.set_threads(T)``, CPU
platform ``{"Threads": T}``):

* torch: the model compiled with ``torch.jit.script``, float32 positions (nm) and box, one call
  = energy + forces (``torch.autograd.grad`` of the energy w.r.t. the positions); the models of
  one size are timed interleaved (a, b, c, a, b, c, ...), median over the repeats;
  also, untimed by the interleaving, the pair search alone and the forward pass alone (where
  the time goes) and the peak anonymous resident memory added by one energy+force call (RssAnon
  sampled from /proc every 2 ms, after ``malloc_trim``);
* OpenMM: ``export_potential`` -> ``create_system`` (one TorchForce, CPU platform),
  ``VerletIntegrator`` 0.5 fs, velocities at 300 K; blocks of ``integrator.step(k)``, the
  models' blocks interleaved, each block started from the same positions and velocities (so
  every block sees liquid-water geometry; untrained forces are weak, so the atoms otherwise
  drift as a gas), median rate over the blocks.

Throughput is atoms * steps / s = N / (seconds per energy+force evaluation); the ratios
``attention / X`` divide the attention model's throughput by model X's in the same run
(> 1: the attention model is faster). The scaling exponent is the least-squares slope of
log(seconds per call) vs log(N) over the sizes measured (1 = linear). Goal (issue): attention
>= 2x ET's throughput at equal or better force MAE (force MAEs are read from
``openmm-geom potential reproduce`` results with ``--accuracy``; this script times untrained
models).

Budgets: before a model runs at a size, its seconds per call and its peak memory are estimated
from the smaller size (O(N) for the network and the vesin search; the torchmd-net search's own
time and memory, measured separately, times (N/N_prev)^2); a model estimated above 60 s per
call or 8 GB is not run there and the reason, with the estimate, is recorded instead of a
number (``--call-budget``, ``--memory-budget`` to change them). Memory binds first: the
activations kept for the forces' backward pass are per-edge tensors (attention 48 channels, ET
32 x 3, TensorNet 32 x 3 x 3 per edge), ~1.5-3 GB per call at 3,000 atoms, so at 30,000 atoms
(1.6M directed edges) all three networks are estimated at 15-28 GB and are not run with the
default 8 GB; torchmd-net's own search alone would take ~50 s and >100 GB there (9e8 ordered
pairs).

Where the time goes besides the network: glibc returns the large per-edge tensors to the kernel
after every call and faults fresh pages in on the next, so a large share of the CPU time is
kernel time (recorded per size as ``process_times``: user/sys seconds, minor page faults). It
grows with N (at 3,000 atoms ~30% in torch and ~50% in OpenMM here, where ET and TensorNet lose
most) and makes the numbers depend on the allocator's state; timings are therefore interleaved
and each model's ratio is taken within one run.

Checks (exit status 1 if one fails): at every size, each model's OpenMM energy and forces equal
the scripted model's (energy to 1e-4 relative, forces to 1e-3 of the largest), and the vesin and
torchmd-net modes of ET and TensorNet give the same energy and forces, wherever both run.

    .venv/bin/python benchmarks/bench_potential.py [--out benchmarks/results/potential.json]
    .venv/bin/python benchmarks/bench_potential.py --quick      # 100 and 200 waters, ~40 s
    .venv/bin/python benchmarks/bench_potential.py \
        --accuracy runs/attention/reproduce.json,runs/et/reproduce.json  # force MAEs too
"""
from __future__ import annotations

import ctypes
import hashlib
import json
import os
import resource
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import openmm
import openmm.app as app
import openmm.unit as unit
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
from _common import (LoadMonitor, cores, environment, fmt, measure_clean,  # noqa: E402
                     timed, timed_interleaved, write_json)

import openmm_geom  # noqa: E402
from openmm_geom.threads import cpu_platform_properties  # noqa: E402
from openmm_geom.data.water import water_box_pdb  # noqa: E402
from openmm_geom.export import export_potential  # noqa: E402
from openmm_geom.models.potentials import build_potential  # noqa: E402
from openmm_geom.openmm import create_system  # noqa: E402
from openmm_geom.ops import neighbor_pairs  # noqa: E402
from openmm_geom.workflows.potential import PotentialSettings  # noqa: E402

SEED = 0  # weights
WATER_SEED = 1  # which surplus waters water_box_pdb removes
CUTOFF = 0.5  # nm (PotentialSettings' default)
TIMESTEP_FS = 0.5
TEMPERATURE = 300.0  # K
MAX_NUM_NEIGHBORS = 128
# (name, architecture, neighbour mode); the first is the model whose ratios are reported
MODELS = [("attention", "attention", "vesin"),
          ("et-vesin", "et", "vesin"),
          ("tensornet-vesin", "tensornet", "vesin"),
          ("et-torchmdnet", "et", "torchmdnet"),
          ("tensornet-torchmdnet", "tensornet", "torchmdnet")]
# waters -> (torch warm-up calls, timed calls, OpenMM seconds per block, blocks)
FULL = {100: (3, 15, 1.0, 7), 1000: (2, 7, 2.0, 5), 10000: (1, 3, 0.0, 3)}
QUICK = {100: (1, 3, 0.2, 3), 200: (1, 3, 0.2, 3)}
CALL_BUDGET_S = 60.0  # skip a model at a size when one energy+force call would take longer
MEMORY_BUDGET_GB = 8.0  # ... or when it would need more memory than this
ENERGY_TOLERANCE = 1e-4  # relative (float32 models)
FORCE_TOLERANCE = 1e-3  # max |dF| / max |F|
GOAL_RATIO = 2.0  # attention >= 2x ET's throughput


# -- systems -----------------------------------------------------------------------------------

def water_system(n_waters: int, cache: Path) -> dict:
    """Positions (nm, float64), box, topology, atomic numbers of a cached water box PDB."""
    path = cache / f"water{n_waters}_seed{WATER_SEED}.pdb"
    if not path.is_file():
        water_box_pdb(n_waters, path, seed=WATER_SEED)
    pdb = app.PDBFile(str(path))
    positions = np.asarray(pdb.getPositions(asNumpy=True).value_in_unit(unit.nanometer))
    box = np.asarray([v.value_in_unit(unit.nanometer)
                      for v in pdb.topology.getPeriodicBoxVectors()])
    numbers = [a.element.atomic_number for a in pdb.topology.atoms()]
    masses = [a.element.mass.value_in_unit(unit.dalton) for a in pdb.topology.atoms()]
    pairs = int(neighbor_pairs(torch.tensor(positions), CUTOFF, torch.tensor(box))[0].shape[1])
    return {"n_waters": n_waters, "n_atoms": len(numbers), "positions": positions, "box": box,
            "topology": pdb.topology, "numbers": numbers, "masses": masses, "pairs": pairs,
            "pdb_sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def build(architecture: str, neighbors: str, numbers: list):
    options = PotentialSettings(architecture=architecture).model_options(SEED)
    if architecture != "attention":
        options.update(neighbors=neighbors, max_num_neighbors=MAX_NUM_NEIGHBORS)
    return build_potential(architecture, numbers, **options)


def search_module(model):
    """The model's pair search and how to call it on (positions nm, box nm)."""
    if model.hyperparameters["architecture"] == "attention":
        return lambda x, box: model.neighbors(x, box)
    distance = torch.jit.script(model.representation.distance)
    scale = float(model.angstrom_per_nm)
    batch = torch.zeros(0, dtype=torch.int64)

    def call(x, box):
        return distance(x * scale, batch.new_zeros(x.shape[0]), (box * scale).unsqueeze(0))
    return call


# -- measurement helpers -----------------------------------------------------------------------

def _rss_bytes() -> int:
    """Anonymous resident memory (heap, tensors; not the pages of mapped libraries)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return 0


def _malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def peak_added_memory(fn):
    """(result of fn(), peak anonymous resident bytes above the start, sampled every 2 ms)."""
    _malloc_trim()
    base = peak = _rss_bytes()
    done = threading.Event()

    def sample():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _rss_bytes())
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        result = fn()
    finally:
        done.set()
        sampler.join()
    peak = max(peak, _rss_bytes())
    return result, peak - base


class ProcessTimes:
    """User and system CPU seconds and minor page faults of this process over a ``with`` block.

    A large system share with millions of minor faults means glibc hands the big per-edge
    tensors back to the kernel after each call and faults fresh pages in on the next.
    """

    def __enter__(self):
        self._start = resource.getrusage(resource.RUSAGE_SELF)
        self._wall = time.perf_counter()
        return self

    def __exit__(self, *exc):
        end = resource.getrusage(resource.RUSAGE_SELF)
        user, system = end.ru_utime - self._start.ru_utime, end.ru_stime - self._start.ru_stime
        self.result = {"wall_s": round(time.perf_counter() - self._wall, 3),
                       "user_s": round(user, 3), "sys_s": round(system, 3),
                       "sys_fraction": round(system / max(user + system, 1e-9), 3),
                       "minor_faults": end.ru_minflt - self._start.ru_minflt}


def energy_forces(scripted, x, box):
    """One evaluation: (energy, forces) of the scripted model; x requires grad."""
    energy = scripted(x, box)
    (gradient,) = torch.autograd.grad(energy, x)
    return energy.detach(), -gradient


def slope(ns, seconds) -> float | None:
    """Least-squares slope of log(seconds) vs log(N); None with fewer than two sizes."""
    points = [(n, s) for n, s in zip(ns, seconds) if s is not None]
    if len(points) < 2:
        return None
    return float(np.polyfit(np.log([p[0] for p in points]), np.log([p[1] for p in points]), 1)[0])


def agreement(name: str, n: int, threads: int, a, b) -> dict:
    """Check energies (relative) and forces (relative to the largest) of two evaluations."""
    (energy_a, forces_a), (energy_b, forces_b) = a, b
    de = abs(energy_a - energy_b) / max(abs(energy_a), 1.0)
    df = float(np.abs(forces_a - forces_b).max() / max(np.abs(forces_a).max(), 1e-12))
    return {"n_atoms": n, "threads": threads, "check": name,
            "ok": de <= ENERGY_TOLERANCE and df <= FORCE_TOLERANCE,
            "energies": [energy_a, energy_b], "energy_rel_error": de, "force_rel_error": df}


# -- budgets -----------------------------------------------------------------------------------

def directed_edges(architecture: str, system: dict) -> int:
    """Both directions of every pair, plus a self-loop per atom for torchmd-net's networks."""
    return 2 * system["pairs"] + (0 if architecture == "attention" else system["n_atoms"])


def estimate(architecture: str, name: str, neighbors: str, system: dict,
             previous: dict) -> dict | None:
    """Seconds per call and bytes expected at this size from the smaller sizes' measurements
    (None without one): the network and the vesin search grow as N (memory as the edge count,
    the activations that the force's backward pass keeps); torchmd-net's search, measured on
    its own, as N^2."""
    n, edges = system["n_atoms"], directed_edges(architecture, system)
    base = previous.get(name if neighbors == "vesin" else f"{architecture}-vesin")
    if base is None:
        return None
    guess = {"network_seconds": base["seconds"] * n / base["n_atoms"],
             "network_bytes": base["bytes"] * edges / base["edges"],
             "search_seconds": 0.0, "search_bytes": 0.0, "from_n_atoms": base["n_atoms"]}
    if neighbors == "torchmdnet":
        search = previous.get(f"{name}:search")
        if search is None:
            return None
        grow = (n / search["n_atoms"]) ** 2
        guess.update(search_seconds=search["seconds"] * grow, search_bytes=search["bytes"] * grow)
    guess["seconds"] = guess["network_seconds"] + guess["search_seconds"]
    guess["bytes"] = guess["network_bytes"] + guess["search_bytes"]
    return guess


def skip_reason(neighbors: str, system: dict, guess: dict | None, budgets: dict) -> str | None:
    if guess is None:
        return None
    if guess["seconds"] <= budgets["seconds"] and guess["bytes"] <= budgets["gb"] * 1e9:
        return None
    n = system["n_atoms"]
    text = (f"estimated {guess['seconds']:.3g} s and {guess['bytes'] / 1e9:.3g} GB per "
            f"energy+force call (scaled from {guess['from_n_atoms']} atoms; budget "
            f"{budgets['seconds']:g} s, {budgets['gb']:g} GB)")
    if neighbors == "torchmdnet":
        return (text + f": torchmd-net's own CPU pair search, a brute force over all {n * n:.2g} "
                f"ordered pairs plus an argsort, alone ~{guess['search_seconds']:.3g} s and "
                f"~{guess['search_bytes'] / 1e9:.3g} GB; the network itself fed vesin pairs "
                f"~{guess['network_seconds']:.3g} s, ~{guess['network_bytes'] / 1e9:.3g} GB "
                "(the '-vesin' row)")
    return text + ": the activations kept for the forces' backward pass grow with the edges"


# -- one size ----------------------------------------------------------------------------------

def openmm_rates(contexts: list, state, block_seconds: float, blocks: int, warmup: int):
    """Median and per-block steps/s of each context; blocks interleaved, each from ``state``."""
    sizes = []
    for context, integrator in contexts:
        context.setState(state)
        integrator.step(warmup)
        start = time.perf_counter()
        integrator.step(1)
        sizes.append(max(1, int(round(block_seconds / (time.perf_counter() - start)))))
    samples = [[] for _ in contexts]
    for _ in range(blocks):
        for (context, integrator), k, sample in zip(contexts, sizes, samples):
            context.setState(state)
            start = time.perf_counter()
            integrator.step(k)
            sample.append(k / (time.perf_counter() - start))
    for context, _ in contexts:  # the runs must have stayed finite
        positions = context.getState(getPositions=True).getPositions(asNumpy=True)
        if not np.isfinite(positions.value_in_unit(unit.nanometer)).all():
            raise RuntimeError("an OpenMM run produced non-finite positions")
    return samples, sizes


def run_size(system: dict, threads: int, timing, previous: dict, workdir: Path,
             budgets: dict) -> tuple[list, list]:
    """Measure every model that fits the budget on one water box; return (rows, checks)."""
    warmup, repeats, block_seconds, blocks = timing
    n = system["n_atoms"]
    x = torch.tensor(system["positions"], dtype=torch.float32)
    box = torch.tensor(system["box"], dtype=torch.float32)
    rows, checks, live = [], [], []
    for name, architecture, neighbors in MODELS:
        row = {"n_atoms": n, "n_waters": system["n_waters"], "threads": threads, "model": name,
               "architecture": architecture, "neighbors": neighbors}
        rows.append(row)
        guess = estimate(architecture, name, neighbors, system, previous)
        if guess is not None:
            row["estimate"] = guess
        reason = skip_reason(neighbors, system, guess, budgets)
        if reason:
            row["skipped"] = reason
            print(f"  {n} atoms, {name}: skipped ({reason})", flush=True)
            continue
        model = build(architecture, neighbors, system["numbers"])
        row["parameters"] = sum(p.numel() for p in model.parameters())
        row["edges"] = directed_edges(architecture, system)
        scripted = torch.jit.script(model)
        xg = x.clone().requires_grad_(True)
        # Two untimed calls: the first profiles the TorchScript graph (and allocates what
        # persists, e.g. vesin's buffers), the second's peak memory is recorded.
        started = time.perf_counter()
        energy_forces(scripted, xg, box)
        row["first_call_s"] = time.perf_counter() - started
        (energy, forces), added = peak_added_memory(lambda: energy_forces(scripted, xg, box))
        row["peak_added_mb"] = added / 1e6
        row["energy_kj_per_mol"] = float(energy)
        search = search_module(model)
        search_s, _, _ = timed(lambda: search(x, box), 1, 3 if n < 10000 else 1)
        if neighbors == "torchmdnet":
            _, search_bytes = peak_added_memory(lambda: search(x, box))
            previous[f"{name}:search"] = {"n_atoms": n, "seconds": search_s,
                                          "bytes": search_bytes}
            row["search_peak_added_mb"] = search_bytes / 1e6
        forward_s, _, _ = timed(lambda: scripted(xg, box), 1, 3 if n < 10000 else 1)
        row["search_ms"], row["forward_ms"] = 1e3 * search_s, 1e3 * forward_s
        live.append((name, row, model, scripted, xg, (energy.numpy().item(),
                                                       forces.numpy().astype(np.float64))))
        print(f"  {n} atoms, {name}: first call {row['first_call_s']:.2f} s, "
              f"+{row['peak_added_mb']:.0f} MB", flush=True)

    # vesin vs torchmd-net pairs: same weights, so the same energy and forces
    reference = {entry[0]: entry[5] for entry in live}
    for architecture in ("et", "tensornet"):
        a, b = reference.get(f"{architecture}-vesin"), reference.get(f"{architecture}-torchmdnet")
        if a is not None and b is not None:
            checks.append(agreement(f"{architecture}: vesin pairs == torchmd-net pairs", n,
                                    threads, a, b))

    # torch: all models of this size interleaved
    with ProcessTimes() as torch_times:
        results, load = measure_clean(lambda: timed_interleaved(
            [lambda s=scripted, xg=xg: energy_forces(s, xg, box) for _, _, _, scripted, xg, _
             in live], warmup, repeats))
    for (name, row, *_), (median, best, _) in zip(live, results):
        row.update(torch_ms=1e3 * median, torch_min_ms=1e3 * best, torch_other_load=load,
                   torch_atom_steps_per_s=n / median, repeats=repeats)
        previous[name] = {"n_atoms": n, "seconds": median, "bytes": row["peak_added_mb"] * 1e6,
                          "edges": row["edges"]}

    # OpenMM: export, check against the scripted model, time interleaved blocks
    contexts = []
    for name, row, model, _, _, reference_ef in live:
        path = workdir / f"{name}_{n}.pt"
        export_potential(model, path, positions=system["positions"], box=system["box"],
                         masses=system["masses"])
        omm_system = create_system(path, system["topology"], remove_cm_motion=False)
        integrator = openmm.VerletIntegrator(TIMESTEP_FS * unit.femtoseconds)
        context = openmm.Context(omm_system, integrator, openmm.Platform.getPlatformByName("CPU"),
                                 cpu_platform_properties(threads))
        context.setPeriodicBoxVectors(*(openmm.Vec3(*row_) for row_ in system["box"]))
        context.setPositions(system["positions"])
        state = context.getState(getEnergy=True, getForces=True)
        omm_ef = (state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole),
                  np.asarray(state.getForces(asNumpy=True).value_in_unit(
                      unit.kilojoule_per_mole / unit.nanometer)))
        checks.append(agreement(f"{name}: OpenMM == scripted model", n, threads,
                                reference_ef, omm_ef))
        contexts.append((context, integrator))
    if contexts:
        # The same start for every model's blocks (setVelocitiesToTemperature evaluates the
        # forces, so it is called once).
        contexts[0][0].setVelocitiesToTemperature(TEMPERATURE * unit.kelvin, SEED + 1)
        start_state = contexts[0][0].getState(getPositions=True, getVelocities=True)
        with ProcessTimes() as openmm_times:
            (samples, steps), omm_load = measure_clean(
                lambda: openmm_rates(contexts, start_state, block_seconds, blocks, warmup))
        for (name, row, *_), sample, k in zip(live, samples, steps):
            rate = statistics.median(sample)
            row.update(openmm_ms_per_step=1e3 / rate, openmm_atom_steps_per_s=n * rate,
                       openmm_steps_per_block=k, openmm_blocks=len(sample),
                       openmm_block_rates=[round(r, 3) for r in sample],
                       openmm_other_load=omm_load,
                       openmm_over_torch=(n * rate) / row["torch_atom_steps_per_s"])
    for row in rows:
        if "skipped" not in row:
            row["other_load"] = max(row["torch_other_load"], row["openmm_other_load"])
            # shared by the models of this size (their calls were interleaved)
            row["process_times"] = {"torch": torch_times.result, "openmm": openmm_times.result}
    return rows, checks


# -- summary -----------------------------------------------------------------------------------

def ratios(rows: list) -> list:
    """attention / X throughput, per size, in torch and in OpenMM."""
    out = []
    for n in sorted({r["n_atoms"] for r in rows}):
        at = {r["model"]: r for r in rows if r["n_atoms"] == n}
        mine = at.get(MODELS[0][0], {})
        entry = {"n_atoms": n}
        for name, _, _ in MODELS[1:]:
            other = at.get(name, {})
            for where in ("torch", "openmm"):
                key = f"{where}_atom_steps_per_s"
                a, b = mine.get(key), other.get(key)
                entry[f"{where}_attention_over_{name}"] = None if a is None or b is None else a / b
        out.append(entry)
    return out


def exponents(rows: list) -> dict:
    result = {}
    for name, _, _ in MODELS:
        mine = sorted((r for r in rows if r["model"] == name and "skipped" not in r),
                      key=lambda r: r["n_atoms"])
        ns = [r["n_atoms"] for r in mine]
        result[name] = {
            "torch": slope(ns, [r["torch_ms"] for r in mine]),
            "openmm": slope(ns, [r.get("openmm_ms_per_step") for r in mine]),
            "sizes": ns}
    return result


def goal(block: dict, accuracy: dict) -> dict:
    """attention >= 2x ET's OpenMM throughput (ET in its faster neighbour mode) at every size
    measured, and force MAE <= ET's when known."""
    per_size = []
    for entry in block["ratios"]:
        candidates = [entry.get(f"openmm_attention_over_et-{mode}")
                      for mode in ("vesin", "torchmdnet")]
        candidates = [c for c in candidates if c is not None]
        per_size.append({"n_atoms": entry["n_atoms"],
                         "attention_over_fastest_et": min(candidates) if candidates else None})
    speed_met = all(s["attention_over_fastest_et"] is not None
                    and s["attention_over_fastest_et"] >= GOAL_RATIO for s in per_size)
    mae = {arch: accuracy.get(arch, {}).get("force_mae") for arch in ("attention", "et")}
    mae_met = None if None in mae.values() else mae["attention"] <= mae["et"]
    return {"throughput_ratio_goal": GOAL_RATIO, "per_size": per_size,
            "throughput_met": speed_met, "force_mae": mae, "force_mae_met": mae_met,
            "met": None if mae_met is None else (speed_met and mae_met)}


def read_accuracy(text: str | None) -> dict:
    """{architecture: {force_mae, ...}} from ``openmm-geom potential reproduce`` JSON files."""
    found = {}
    for path in (text.split(",") if text else []):
        data = json.loads(Path(path).read_text())
        found[data["architecture"]] = {
            "force_mae": data.get("force_mae"), "force_rmse": data.get("force_rmse"),
            "energy_mae_per_atom": data.get("energy_mae_per_atom"),
            "parameters": data.get("training", {}).get("parameters"),
            "data": data.get("data"), "seed": data.get("seed"), "file": str(path)}
    return found


def table(runs: list) -> str:
    lines = []
    for block in runs:
        lines.append(f"potential inference, water boxes, cutoff {CUTOFF} nm, float32, "
                     f"{block['threads']} thread(s); energy+forces; throughput in atoms*steps/s")
        lines.append(f"{'N':>6} {'model':<21} {'params':>6} {'torch ms':>9} {'torch at*st/s':>13} "
                     f"{'OpenMM ms':>10} {'OpenMM at*st/s':>14} {'omm/torch':>9} "
                     f"{'search ms':>9} {'fwd ms':>8} {'+MB':>6}")
        for r in block["rows"]:
            head = f"{r['n_atoms']:>6} {r['model']:<21}"
            if "skipped" in r:
                g = r["estimate"]
                lines.append(f"{head} skipped: est. {g['seconds']:.3g} s/call, "
                             f"{g['bytes'] / 1e9:.3g} GB"
                             + (f" (its search alone {g['search_seconds']:.3g} s, "
                                f"{g['search_bytes'] / 1e9:.3g} GB)" if g["search_bytes"] else ""))
                continue
            lines.append(
                f"{head} {r['parameters']:>6} {fmt(r['torch_ms'], '.1f'):>9} "
                f"{fmt(r['torch_atom_steps_per_s'], '.4g'):>13} "
                f"{fmt(r.get('openmm_ms_per_step'), '.1f'):>10} "
                f"{fmt(r.get('openmm_atom_steps_per_s'), '.4g'):>14} "
                f"{fmt(r.get('openmm_over_torch')):>9} {fmt(r['search_ms'], '.1f'):>9} "
                f"{fmt(r['forward_ms'], '.1f'):>8} {fmt(r['peak_added_mb'], '.0f'):>6}"
                + (f"  (other load {r['other_load']:.0%})" if r["other_load"] > 0.1 else ""))
        shares = {r["n_atoms"]: r["process_times"] for r in block["rows"]
                  if "process_times" in r}
        lines.append("kernel (sys) share of this process's CPU time while timing (torch | "
                     "OpenMM): " + ", ".join(
                         f"{n}: {t['torch']['sys_fraction']:.0%} | "
                         f"{t['openmm']['sys_fraction']:.0%}" for n, t in shares.items()))
        lines.append("attention / X throughput (torch | OpenMM):")
        for entry in block["ratios"]:
            parts = [f"{name}: {fmt(entry[f'torch_attention_over_{name}'])} | "
                     f"{fmt(entry[f'openmm_attention_over_{name}'])}" for name, _, _ in MODELS[1:]]
            lines.append(f"{entry['n_atoms']:>6}  " + ";  ".join(parts))
        lines.append("scaling exponent d log t / d log N (torch | OpenMM):")
        lines.append("        " + ";  ".join(
            f"{name}: {fmt(e['torch'])} | {fmt(e['openmm'])}"
            for name, e in block["scaling_exponent"].items()))
        g = block["goal"]
        lines.append(f"goal attention >= {GOAL_RATIO:g}x fastest ET in OpenMM: "
                     + ", ".join(f"{s['n_atoms']}: {fmt(s['attention_over_fastest_et'])}"
                                 for s in g["per_size"])
                     + f" -> {'met' if g['throughput_met'] else 'not met'}; force MAE "
                     f"attention {fmt(g['force_mae']['attention'], '.3g')} vs ET "
                     f"{fmt(g['force_mae']['et'], '.3g')} kJ/mol/nm")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    options = _common.parser(__doc__, "potential.json",
                             "100 and 200 waters, few repeats (smoke run)")
    options.add_argument("--accuracy", metavar="JSON[,JSON]",
                         help="reproduce.json files of 'openmm-geom potential reproduce' runs "
                         "(attention, et, ...): their force MAE enters the goal")
    options.add_argument("--call-budget", type=float, default=CALL_BUDGET_S, metavar="SECONDS",
                         help="skip a model at a size whose energy+force call is estimated "
                         f"to take longer (default {CALL_BUDGET_S:g})")
    options.add_argument("--memory-budget", type=float, default=MEMORY_BUDGET_GB, metavar="GB",
                         help="... or to need more memory (default "
                         f"{MEMORY_BUDGET_GB:g})")
    args = _common.parse(options, argv)
    budgets = {"seconds": args.call_budget, "gb": args.memory_budget}
    thread_list = [int(t) for t in args.threads.split(",")] if args.threads else [cores()]
    sizes = QUICK if args.quick else FULL
    accuracy = read_accuracy(args.accuracy)

    env, monitor = environment(), LoadMonitor()
    cache = Path(tempfile.gettempdir()) / "openmm-geom-bench-potential"
    cache.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    systems = {w: water_system(w, cache) for w in sizes}
    runs, checks = [], []
    with tempfile.TemporaryDirectory() as workdir:
        for threads in thread_list:
            openmm_geom.set_threads(threads)
            rows, previous = [], {}
            for waters, timing in sizes.items():
                print(f"== {systems[waters]['n_atoms']} atoms, {threads} thread(s)", flush=True)
                size_rows, size_checks = run_size(systems[waters], threads, timing, previous,
                                                  Path(workdir), budgets)
                rows += size_rows
                checks += size_checks
            block = {"threads": threads, "rows": rows, "ratios": ratios(rows),
                     "scaling_exponent": exponents(rows)}
            block["goal"] = goal(block, accuracy)
            runs.append(block)
    ok = all(c["ok"] for c in checks)
    load = monitor.result()
    write_json(args.out, {
        "benchmark": "potential",
        "quick": args.quick,
        "config": {
            "systems": {str(w): {"n_atoms": s["n_atoms"], "box_nm": float(s["box"][0, 0]),
                                 "pairs_within_cutoff": s["pairs"],
                                 "pdb_sha256": s["pdb_sha256"]} for w, s in systems.items()},
            "water": "TIP3P geometry from water_box_pdb, 0.997 g/cm^3, seed 1",
            "cutoff_nm": CUTOFF, "dtype": "float32", "weights": f"untrained, seed {SEED}",
            "models": {name: {"architecture": a, "neighbors": m,
                              "options": {k: str(v) for k, v in PotentialSettings(
                                  architecture=a).model_options(SEED).items()}}
                       for name, a, m in MODELS},
            "max_num_neighbors": MAX_NUM_NEIGHBORS,
            "torch": "torch.jit.script(model); energy + autograd forces per call",
            "openmm": {"integrator": "VerletIntegrator", "timestep_fs": TIMESTEP_FS,
                       "temperature_k": TEMPERATURE, "platform": "CPU"},
            "timing": {str(w): dict(zip(("warmup", "repeats", "openmm_block_seconds",
                                         "openmm_blocks"), t)) for w, t in sizes.items()},
            "budgets": {"seconds_per_call": budgets["seconds"], "memory_gb": budgets["gb"]},
            "malloc_env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")},
            "tolerances": {"energy_relative": ENERGY_TOLERANCE, "force": FORCE_TOLERANCE},
        },
        "environment": env,
        "accuracy": accuracy,
        "load": load,
        "seconds": time.perf_counter() - started,
        "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3,
        "runs": runs,
        "checks": checks,
        "ok": ok,
    })
    measured = [r for block in runs for r in block["rows"] if "skipped" not in r]
    return _common.report(table(runs), measured, checks, ok, args.out)


if __name__ == "__main__":
    sys.exit(main())
