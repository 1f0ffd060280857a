"""geom2vec CV: metadynamics ns/day (ours vs OpenMM's), featurization frames/s, VAMPnet epochs.

Issue: "ns/day of a CV-biased OpenMM run of capped alanine with the exported geom2vec CV (k = 2):
TorchCVForce + our metadynamics vs OpenMM Metadynamics over CustomCVForce with one TorchForce
per CV. Goal >= 1.7x. Featurization frames/s for capped alanine and for T4 lysozyme; VAMPnet
epoch time vs deeptime VAMPNet with the same lobe and data."

CV (random weights, fixed seeds: speed does not depend on the weights): the production geom2vec
layout, ``Geom2VecFeaturizer`` (torchmd-net ET, 64 features, 3 layers, 32 RBFs, 8 heads, cutoff
0.5 nm, vesin pairs) on the 10 heavy atoms of capped alanine, one token per atom
(``TokenMap.from_topology(pdb, "heavy", "atom")``), a SubFormer mixer and a ``VAMPHead`` (128
hidden, k = 2), exported float32 with ``export_model(..., kind="cv", cv_names=["vamp0",
"vamp1"])`` (positions (22, 3) nm -> cv[2]).

1. **Metadynamics** (section "md"). Capped alanine in vacuum, amber14-all.xml, NoCutoff, HBonds,
   LangevinMiddleIntegrator 300 K, 1/ps, 2 fs, CPU platform; torch and OpenMM both at T threads
   (``openmm_geom.set_threads(T)``, ``cpu_platform_properties(T)``), T = 1 and the core count.
   Well-tempered metadynamics on both CVs, bias factor 5, height 1 kJ/mol, a hill every 250
   steps, a grid of P x P points on mean +- 5 std of each CV (from a short unbiased run), hill
   width 0.2 std, the same grid and hills on both sides:

   * ours: ``openmm_geom.openmm.Metadynamics(system, path, [GridAxis, GridAxis], ...)`` and
     ``meta.step(simulation, n)``: one ``TorchCVForce``, one model pass per step for both CVs;
   * peer: ``openmm.app.Metadynamics(system, bias_variables(path, ...), ...)`` and
     ``meta.step(simulation, n)``: ``CustomCVForce`` over one openmm-torch ``TorchForce`` per
     CV, so the model runs twice per step;
   * zero: ``TorchCVForce(path, "0")`` with plain ``simulation.step``: one model pass per step,
     no metadynamics (what ours costs without hills);
   * amber: the same System without a CV (plain MD);
   * floor: the exported module in a Python loop, ``autograd.grad(module(x), x, ones(2))``.

   Blocks are timed interleaved (floor, amber, zero, ours, peer, floor, ...) after a warm-up
   (one deposition for the metadynamics runs); metadynamics blocks are whole multiples of the
   deposition interval, so every block pays its share of hill updates. The median block rate
   is reported; ns/day = steps/s * 2 fs * 86400 s/day. The speedup ours/peer is compared with
   the goal 1.7 (reported, not enforced).

2. **Featurization** (section "featurize"): ``featurizer(z, positions)`` under ``no_grad``,
   frames/s, for the alanine heavy atoms (10 atoms, batches of 128 frames) and the heavy atoms
   of T4 lysozyme L99A (1,290 atoms, batches of 32 frames: a 1,290-atom ET frame costs ~0.5 s
   on one core), frames = the PDB structure plus 0.01 nm Gaussian displacements.

3. **VAMPnet epoch** (section "vampnet"): one epoch, lag 2, batch 5,000, learning rate 5e-4,
   the same initial lobe (``copy.deepcopy``) and data on both sides:
   ``fit_lobe(VAMPNetTrainer(max_epochs=1), lobe, TimeLaggedPairs(data, 2))`` vs deeptime 0.4.5
   ``VAMPNet(lobe, learning_rate=5e-4).fit(DataLoader(TrajectoryDataset(2, data),
   batch_size=5000, shuffle=True, drop_last=True), n_epochs=1)``; both take the same number of
   optimizer steps (deeptime: Adam; ours: AdamW with weight_decay 0, the same update). Lobes:
   "mlp" = ``VAMPHead(45, 128, 2)`` on the 45 heavy-atom distances of capped alanine (50,000
   frames: the PDB structure plus an AR(1) displacement process, phi 0.95, 0.02 nm); "tokencv"
   = the CV's own ``TokenCV`` (SubFormer + VAMPHead) on packed tokens (10 x 4 x 64 = 2,560
   features, 10,000 frames of an AR(1) process). Our timing is the whole ``fit`` call,
   including its final score over all pairs; deeptime's is ``fit`` alone.

Checks (the script exits 1 if one fails): the exported module equals the eager CV; at the
start, TorchCVForce's CVs, ``app.Metadynamics.getCollectiveVariables`` and the module agree;
after one deposition at the same configuration the two biases have the same energy (same grid,
height and widths); every timed run stays finite and deposited one hill per interval; our
``vamp2_score`` equals deeptime's ``vamp_score`` on the same lobe outputs; both trainers took
the same number of steps. Measurements during which other processes used > 10% of the CPUs are
retried and their remaining "other_load" recorded.

    .venv/bin/python benchmarks/bench_cv.py [--out benchmarks/results/cv.json]   # ~10 minutes
    .venv/bin/python benchmarks/bench_cv.py --quick     # tiny blocks and data, < 60 s
"""
from __future__ import annotations

import copy
import statistics
import sys
import tempfile
import time
import warnings
from importlib import metadata
from pathlib import Path

import numpy as np
import openmm
import openmm.app as app
import openmm.unit as unit
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
from _common import (LoadMonitor, environment, fmt, measure_clean,  # noqa: E402
                     thread_counts, write_json)

import openmm_geom  # noqa: E402
from openmm_geom.threads import cpu_platform_properties  # noqa: E402
from openmm_geom.data import bundled  # noqa: E402
from openmm_geom.data.timelagged import TimeLaggedPairs  # noqa: E402
from openmm_geom.export import export_model  # noqa: E402
from openmm_geom.openmm import ExportedModel  # noqa: E402
from openmm_geom.models.geom2vec import (Geom2VecCV, Geom2VecFeaturizer, TokenCV,  # noqa: E402
                                         TokenMap)
from openmm_geom.models.heads import VAMPHead  # noqa: E402
from openmm_geom.models.mixers import build_mixer  # noqa: E402
from openmm_geom.openmm import GridAxis, Metadynamics, TorchCVForce  # noqa: E402
from openmm_geom.openmm import bias_variables  # noqa: E402
from openmm_geom.training.vamp import VAMPNetTrainer, fit_lobe, vamp2_of, vamp2_score  # noqa: E402

ALANINE = "alanine-dipeptide.pdb"
T4 = "t4-lysozyme-l99a.pdb"
FORCEFIELD = "amber14-all.xml"
TEMPERATURE = 300.0  # K
FRICTION = 1.0  # 1/ps
TIMESTEP_FS = 2.0
SEED = 7
FEATURIZER = {"architecture": "et", "cutoff": 0.5, "hidden_channels": 64, "num_layers": 3,
              "num_rbf": 32, "num_heads": 8, "seed": SEED}
MIXER = "subformer"
HEAD_HIDDEN = 128
K = 2
CV_NAMES = ["vamp0", "vamp1"]
BIAS_FACTOR = 5.0
HEIGHT = 1.0  # kJ/mol
RANGE_STDS = 5.0  # grid: mean +- RANGE_STDS * std of each CV
WIDTH_STDS = 0.2  # hill width: WIDTH_STDS * std
OURS_GROUP = 1
GOAL = 1.7
MODES = {
    "full": {"frequency": 250, "sample_steps": 2000, "sample_every": 10,
             # seconds per timed block (metadynamics, others), blocks
             "block_seconds": (10.0, 4.0), "blocks": 3, "warmup": 50,
             "featurize": {"alanine": (128, 5), "t4": (32, 2)},  # (batch frames, repeats)
             "vampnet": {"mlp": 50_000, "tokencv": 30_000}, "vampnet_repeats": 3},
    "quick": {"frequency": 5, "sample_steps": 200, "sample_every": 10,
              "block_seconds": (0.3, 0.2), "blocks": 1, "warmup": 5,
              "featurize": {"alanine": (16, 1), "t4": (1, 1)},
              "vampnet": {"mlp": 2_000, "tokencv": 1_200}, "vampnet_repeats": 1},
}
VAMP_LAG = 2
VAMP_BATCH = {"full": 5000, "quick": 500}
VAMP_LR = 5e-4
EXPORT_TOLERANCE = 1e-5  # relative, exported vs eager (float32, same graph)
CV_TOLERANCE = 1e-5  # relative + same absolute, CV values from the forces vs the module
BIAS_TOLERANCE = 1e-3  # kJ/mol, one hill of 1 kJ/mol on the same grid on both sides
SCORE_TOLERANCE = 1e-5  # relative, vamp2_score vs deeptime vamp_score


# -- the CV -----------------------------------------------------------------------------------
def build_cv(pdb_path: str) -> tuple:
    """(Geom2VecCV float32 with random weights, TokenMap)."""
    featurizer = Geom2VecFeaturizer(**FEATURIZER)
    token_map = TokenMap.from_topology(pdb_path, "heavy", "atom")
    token_cv = make_token_cv(token_map.n_tokens, seed=SEED)
    return Geom2VecCV(featurizer, token_map, token_cv).eval(), token_map


def make_token_cv(n_tokens: int, seed: int) -> TokenCV:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mixer = build_mixer(MIXER, FEATURIZER["hidden_channels"], n_tokens, 0)
        head = VAMPHead(mixer.out_dim, hidden=HEAD_HIDDEN, k=K)
        return TokenCV(n_tokens, FEATURIZER["hidden_channels"], 0, mixer, head)


def relative_error(a, b) -> float:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


# -- metadynamics -----------------------------------------------------------------------------
def base_system(pdb) -> openmm.System:
    return app.ForceField(FORCEFIELD).createSystem(pdb.topology, nonbondedMethod=app.NoCutoff,
                                                   constraints=app.HBonds)


def simulation(pdb, system, threads: int) -> app.Simulation:
    integrator = openmm.LangevinMiddleIntegrator(TEMPERATURE * unit.kelvin,
                                                 FRICTION / unit.picosecond,
                                                 TIMESTEP_FS * unit.femtoseconds)
    integrator.setRandomNumberSeed(SEED)
    sim = app.Simulation(pdb.topology, system, integrator,
                         openmm.Platform.getPlatformByName("CPU"),
                         cpu_platform_properties(threads))
    sim.context.setPositions(pdb.positions)
    sim.context.setVelocitiesToTemperature(TEMPERATURE * unit.kelvin, SEED)
    return sim


def sample_cvs(pdb, module, threads: int, steps: int, every: int) -> np.ndarray:
    """CVs (frames, k) along a short unbiased run: the grid ranges and hill widths."""
    sim = simulation(pdb, base_system(pdb), threads)
    values = []
    for _ in range(steps // every):
        sim.step(every)
        x = sim.context.getState(getPositions=True).getPositions(asNumpy=True)
        with torch.no_grad():
            values.append(module(torch.tensor(x.value_in_unit(unit.nanometer),
                                              dtype=torch.float32)).numpy())
    return np.array(values, dtype=float)


def grid_settings(samples: np.ndarray) -> list:
    """One dict(min, max, width, points) per CV."""
    out = []
    for mean, std in zip(samples.mean(0), samples.std(0)):
        if not std > 0:
            raise RuntimeError("a CV did not move during the sampling run")
        width = WIDTH_STDS * std
        points = int(np.ceil(2 * RANGE_STDS * std / width)) + 1
        out.append({"min": float(mean - RANGE_STDS * std), "max": float(mean + RANGE_STDS * std),
                    "width": float(width), "points": points})
    return out


def ours_metadynamics(system, path, grid, frequency: int) -> Metadynamics:
    axes = [GridAxis(name, g["min"], g["max"], g["width"], points=g["points"])
            for name, g in zip(CV_NAMES, grid)]
    return Metadynamics(system, str(path), axes, TEMPERATURE * unit.kelvin, BIAS_FACTOR,
                        HEIGHT * unit.kilojoule_per_mole, frequency, method="grid",
                        force_group=OURS_GROUP)


def peer_metadynamics(system, path, grid, frequency: int) -> app.Metadynamics:
    variables = bias_variables(str(path), {
        name: dict(min=g["min"], max=g["max"], width=g["width"], gridWidth=g["points"])
        for name, g in zip(CV_NAMES, grid)})
    return app.Metadynamics(system, variables, TEMPERATURE * unit.kelvin, BIAS_FACTOR,
                            HEIGHT * unit.kilojoule_per_mole, frequency)


def make_runs(pdb, path, grid, frequency: int, threads: int,
              names=("amber", "zero", "ours", "peer")) -> dict:
    """name -> (Simulation, metadynamics or None, bias force group or None)."""
    runs = {}
    for name in names:
        system, meta, group = base_system(pdb), None, None
        if name == "zero":
            system.addForce(TorchCVForce(str(path), "0", force_group=OURS_GROUP))
        elif name == "ours":
            meta, group = ours_metadynamics(system, path, grid, frequency), OURS_GROUP
        elif name == "peer":
            meta = peer_metadynamics(system, path, grid, frequency)
            group = system.getForce(system.getNumForces() - 1).getForceGroup()
        runs[name] = (simulation(pdb, system, threads), meta, group)
    return runs


def bias_energy(sim, group: int) -> float:
    return sim.context.getState(getEnergy=True, groups={group}).getPotentialEnergy() \
        .value_in_unit(unit.kilojoule_per_mole)


def start_checks(pdb, path, module, grid, positions, frequency: int) -> tuple[list, dict]:
    """CVs at the start and the bias after one deposition: ours == peer (== module)."""
    runs = make_runs(pdb, path, grid, frequency, 1, ("ours", "peer"))
    (ours, ours_meta, ours_group), (peer, peer_meta, peer_group) = runs["ours"], runs["peer"]
    with torch.no_grad():
        direct = module(torch.tensor(positions, dtype=torch.float32)).numpy().astype(float)
    cv_ours = np.array(ours_meta.current_values(ours.context))
    cv_peer = np.array(peer_meta.getCollectiveVariables(peer))
    checks = []
    for name, values in (("TorchCVForce", cv_ours), ("app.Metadynamics CustomCVForce", cv_peer)):
        error = float(np.abs(values - direct).max())
        checks.append({"check": f"start CVs: {name} == module", "ok": bool(
            error <= CV_TOLERANCE * (1 + np.abs(direct).max())), "max_abs_error": error,
            "cvs": values.tolist()})
    # one deposition at the end of an interval, then both at ours' positions
    for sim, meta in ((ours, ours_meta), (peer, peer_meta)):
        sim.currentStep = frequency - 1
        meta.step(sim, 1)
    state = ours.context.getState(getPositions=True)
    peer.context.setPositions(state.getPositions())
    energies = [bias_energy(ours, ours_group), bias_energy(peer, peer_group)]
    difference = abs(energies[0] - energies[1])
    checks.append({"check": "one hill: ours bias energy == app.Metadynamics", "ok": bool(
        difference <= BIAS_TOLERANCE and energies[0] > 0.1 * HEIGHT),
        "energies_kj_per_mol": energies, "abs_difference": difference,
        "tolerance": BIAS_TOLERANCE})
    start = {"cv_module": direct.tolist(), "cv_ours": cv_ours.tolist(),
             "cv_peer": cv_peer.tolist(), "one_hill_bias_kj_per_mol": energies}
    return checks, start


def block_rates(chunks: list, blocks: int) -> list:
    """Units/s of each ``(chunk, warmup, probe, multiple, seconds)`` in every block; blocks
    interleaved (a, b, c, a, b, c, ...). Block sizes are whole multiples of ``multiple``."""
    sizes = []
    for chunk, warmup, probe, multiple, seconds in chunks:
        chunk(warmup)
        start = time.perf_counter()
        chunk(probe)
        per_unit = (time.perf_counter() - start) / probe
        sizes.append(max(multiple, int(round(seconds / per_unit / multiple)) * multiple))
    samples = [[] for _ in chunks]
    for _ in range(blocks):
        for (chunk, *_), size, sample in zip(chunks, sizes, samples):
            start = time.perf_counter()
            chunk(size)
            sample.append(size / (time.perf_counter() - start))
    return samples


def ns_per_day(steps_per_s: float) -> float:
    return steps_per_s * TIMESTEP_FS * 1e-6 * 86400


def run_md(threads: int, pdb, path, module, grid, positions, settings) -> tuple[dict, list]:
    openmm_geom.set_threads(threads)
    frequency, warmup = settings["frequency"], settings["warmup"]
    meta_seconds, other_seconds = settings["block_seconds"]
    x = torch.tensor(positions, dtype=torch.float32, requires_grad=True)
    weights = torch.ones(K, dtype=torch.float32)

    def floor_chunk(n: int) -> None:
        for _ in range(n):
            torch.autograd.grad([module(x)], [x], [weights])

    def measure():
        runs = make_runs(pdb, path, grid, frequency, threads)

        def plain(name):
            return runs[name][0].step

        def biased(name):
            sim, meta, _ = runs[name]
            return lambda n: meta.step(sim, n)

        chunks = [(floor_chunk, warmup, max(1, warmup // 2), 1, other_seconds),
                  (plain("amber"), 10 * warmup, 10 * warmup, 1, other_seconds),
                  (plain("zero"), warmup, warmup, 1, other_seconds),
                  (biased("ours"), frequency, frequency, frequency, meta_seconds),
                  (biased("peer"), frequency, frequency, frequency, meta_seconds)]
        return block_rates(chunks, settings["blocks"]), runs

    (samples, runs), load = measure_clean(measure)
    floor, amber, zero, ours, peer = (statistics.median(s) for s in samples)
    checks = []
    for name, (sim, meta, group) in runs.items():
        energy = sim.context.getState(getEnergy=True).getPotentialEnergy()
        ok = bool(np.isfinite(energy.value_in_unit(unit.kilojoule_per_mole)))
        record = {"threads": threads, "check": f"{name}: finite energy after the timed steps",
                  "ok": ok}
        if meta is not None:
            expected = sim.currentStep // frequency
            hills = len(meta.hills) if isinstance(meta, Metadynamics) else None
            record["steps"] = sim.currentStep
            if hills is not None:
                record.update(hills=hills, expected_hills=expected)
                record["ok"] = ok and hills == expected
            record["bias_kj_per_mol"] = bias_energy(sim, group)
        checks.append(record)
    speedup = ours / peer
    row = {"threads": threads, "other_load": load,
           "floor_calls_per_s": floor, "amber_steps_per_s": amber, "zero_steps_per_s": zero,
           "ours_steps_per_s": ours, "peer_steps_per_s": peer,
           "amber_ns_per_day": ns_per_day(amber), "zero_ns_per_day": ns_per_day(zero),
           "ours_ns_per_day": ns_per_day(ours), "peer_ns_per_day": ns_per_day(peer),
           "speedup_ours_over_peer": speedup, "goal": GOAL, "goal_met": speedup >= GOAL,
           "ours_over_zero": ours / zero, "zero_over_floor": zero / floor,
           "peer_over_zero": peer / zero,
           "model_share_of_amber_plus_floor": (1 / floor) / (1 / floor + 1 / amber),
           "block_rates": dict(zip(("floor", "amber", "zero", "ours", "peer"),
                                   ([round(r, 2) for r in s] for s in samples)))}
    del runs
    return row, checks


# -- featurization ----------------------------------------------------------------------------
def featurize_systems() -> dict:
    """name -> (atomic numbers (S,), heavy-atom positions (S, 3) nm)."""
    out = {}
    for name, file in (("alanine", ALANINE), ("t4", T4)):
        path = str(bundled(file))
        token_map = TokenMap.from_topology(path, "heavy", "atom")
        positions = np.array(app.PDBFile(path).positions.value_in_unit(unit.nanometer))
        out[name] = (torch.as_tensor(token_map.atomic_numbers),
                     positions[token_map.atom_indices])
    return out


def run_featurize(threads: int, featurizer, systems: dict, settings) -> list:
    openmm_geom.set_threads(threads)
    rng = np.random.default_rng(SEED)
    rows = []
    for name, (z, reference) in systems.items():
        batch, repeats = settings["featurize"][name]
        frames = torch.tensor(reference[None] + rng.normal(0.0, 0.01, (batch, *reference.shape)),
                              dtype=torch.float32)

        def measure():
            with torch.no_grad():
                featurizer(z, frames[:min(2, batch)])  # warm-up
                times = []
                for _ in range(repeats):
                    start = time.perf_counter()
                    out = featurizer(z, frames)
                    times.append(time.perf_counter() - start)
            return statistics.median(times), tuple(out.shape), bool(torch.isfinite(out).all())

        (seconds, shape, finite), load = measure_clean(measure)
        rows.append({"threads": threads, "system": name, "n_atoms": len(z), "batch": batch,
                     "repeats": repeats, "seconds_per_batch": seconds,
                     "frames_per_s": batch / seconds,
                     "atom_frames_per_s": batch * len(z) / seconds,
                     "output_shape": list(shape), "finite": finite, "other_load": load})
    return rows


# -- VAMPnet ----------------------------------------------------------------------------------
def ar1(frames: int, dim: int, rng, phi: float = 0.95) -> np.ndarray:
    """A stationary AR(1) process (frames, dim), unit variance, float32."""
    noise = rng.normal(size=(frames, dim)) * np.sqrt(1 - phi * phi)
    x = np.empty((frames, dim))
    x[0] = rng.normal(size=dim)
    for t in range(1, frames):
        x[t] = phi * x[t - 1] + noise[t]
    return x.astype(np.float32)


def vampnet_data(name: str, frames: int, token_map: TokenMap, positions: np.ndarray):
    """(data (frames, F) float32, lobe factory) for the lobe ``name``."""
    rng = np.random.default_rng(SEED)
    if name == "mlp":
        heavy = positions[token_map.atom_indices]
        i, j = np.triu_indices(len(heavy), 1)
        displacement = ar1(frames, heavy.size, rng).reshape(frames, *heavy.shape) * 0.02
        x = heavy[None] + displacement
        data = np.linalg.norm(x[:, j] - x[:, i], axis=-1).astype(np.float32)

        def lobe():
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(SEED)
                return VAMPHead(data.shape[1], hidden=HEAD_HIDDEN, k=K)
        return data, lobe
    n_tokens = token_map.n_tokens
    data = ar1(frames, n_tokens * 4 * FEATURIZER["hidden_channels"], rng)
    return data, lambda: make_token_cv(n_tokens, seed=SEED)


def run_vampnet(threads: int, token_map, positions, settings, mode: str) -> tuple[list, list]:
    from deeptime.decomposition.deep import VAMPNet, vamp_score
    from deeptime.util.data import TrajectoryDataset

    openmm_geom.set_threads(threads)
    batch = VAMP_BATCH[mode]
    rows, checks = [], []
    for name, frames in settings["vampnet"].items():
        data, factory = vampnet_data(name, frames, token_map, positions)
        initial = factory()
        pairs = TimeLaggedPairs(data, VAMP_LAG)
        with torch.no_grad():  # the scores of the same outputs agree
            x0, x1 = (initial(torch.from_numpy(data[:batch])),
                      initial(torch.from_numpy(data[VAMP_LAG:batch + VAMP_LAG])))
            ours_score = float(vamp2_score(x0, x1))
            peer_score = float(vamp_score(x0, x1, method="VAMP2", mode="regularize",
                                          epsilon=1e-6))
        checks.append({"threads": threads, "lobe": name,
                       "check": "vamp2_score == deeptime vamp_score (VAMP2)",
                       "ok": abs(ours_score - peer_score) <= SCORE_TOLERANCE * abs(peer_score),
                       "ours": ours_score, "deeptime": peer_score})
        initial_score = vamp2_of(initial, pairs)

        def ours():
            lobe = copy.deepcopy(initial)
            trainer = VAMPNetTrainer(lr=VAMP_LR, batch_size=batch, max_epochs=1,
                                     train_patience=10 ** 9, seed=SEED)
            start = time.perf_counter()
            result = fit_lobe(trainer, lobe, pairs)
            return time.perf_counter() - start, len(result.history["train_step"]), lobe

        def peer():
            lobe = copy.deepcopy(initial)
            generator = torch.Generator().manual_seed(SEED)
            loader = torch.utils.data.DataLoader(TrajectoryDataset(VAMP_LAG, data),
                                                 batch_size=batch, shuffle=True,
                                                 drop_last=True, generator=generator)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                vampnet = VAMPNet(lobe=lobe, learning_rate=VAMP_LR)
                start = time.perf_counter()
                vampnet.fit(loader, n_epochs=1)
                seconds = time.perf_counter() - start
            return seconds, len(vampnet.train_scores), lobe

        def measure():
            ours(), peer()  # warm-up
            times = {"ours": [], "peer": []}
            for _ in range(settings["vampnet_repeats"]):
                for key, fn in (("ours", ours), ("peer", peer)):
                    seconds, steps, lobe = fn()
                    times[key].append(seconds)
                    result[key] = (steps, lobe)
            return times

        result = {}
        times, load = measure_clean(measure)
        ours_s, peer_s = statistics.median(times["ours"]), statistics.median(times["peer"])
        steps = {key: value[0] for key, value in result.items()}
        scores = {key: vamp2_of(value[1], pairs) for key, value in result.items()}
        checks.append({"threads": threads, "lobe": name,
                       "check": "same optimizer steps per epoch",
                       "ok": steps["ours"] == steps["peer"] == len(pairs) // batch, **steps})
        rows.append({"threads": threads, "lobe": name, "frames": frames,
                     "features": data.shape[1], "batch": batch, "lag": VAMP_LAG,
                     "steps_per_epoch": steps["ours"], "other_load": load,
                     "ours_seconds_per_epoch": ours_s, "deeptime_seconds_per_epoch": peer_s,
                     "speedup_ours_over_deeptime": peer_s / ours_s,
                     "vamp2_initial": initial_score,
                     "vamp2_after_epoch_ours": scores["ours"],
                     "vamp2_after_epoch_deeptime": scores["peer"],
                     "epoch_seconds": {key: [round(t, 4) for t in value]
                                       for key, value in times.items()}})
    return rows, checks


_T0 = time.perf_counter()


def progress(message: str) -> None:
    print(f"[bench_cv {time.perf_counter() - _T0:6.1f} s] {message}", file=sys.stderr,
          flush=True)


# -- report -----------------------------------------------------------------------------------
def load(row: dict) -> str:
    return f"  (other load {row['other_load']:.0%})" if row["other_load"] > 0.1 else ""


def table(md: list, featurize: list, vampnet: list) -> str:
    lines = ["geom2vec CV metadynamics, capped alanine (k=2, ET 64x3, SubFormer, f32): "
             "steps/s unless noted",
             f"{'thr':>3} {'floor/s':>8} {'amber':>7} {'zero':>7} {'ours':>7} {'peer':>7} "
             f"{'ours ns/d':>9} {'peer ns/d':>9} {'speedup':>7} {'goal':>4} {'met':>4} "
             f"{'ours/zero':>9}"]
    for r in md:
        lines.append(
            f"{r['threads']:>3} {fmt(r['floor_calls_per_s'], '.1f'):>8} "
            f"{fmt(r['amber_steps_per_s'], '.0f'):>7} {fmt(r['zero_steps_per_s'], '.1f'):>7} "
            f"{fmt(r['ours_steps_per_s'], '.1f'):>7} {fmt(r['peer_steps_per_s'], '.1f'):>7} "
            f"{fmt(r['ours_ns_per_day'], '.2f'):>9} {fmt(r['peer_ns_per_day'], '.2f'):>9} "
            f"{fmt(r['speedup_ours_over_peer'], '.3f'):>7} {fmt(r['goal'], '.1f'):>4} "
            f"{'yes' if r['goal_met'] else 'NO':>4} {fmt(r['ours_over_zero'], '.3f'):>9}"
            + load(r))
    lines += ["", "geom2vec featurization (ET 64x3, heavy atoms, no grad)",
              f"{'thr':>3} {'system':>8} {'atoms':>6} {'batch':>5} {'frames/s':>9} "
              f"{'atom-frames/s':>13}"]
    for r in featurize:
        lines.append(f"{r['threads']:>3} {r['system']:>8} {r['n_atoms']:>6} {r['batch']:>5} "
                     f"{fmt(r['frames_per_s'], '.1f'):>9} "
                     f"{fmt(r['atom_frames_per_s'], '.0f'):>13}" + load(r))
    lines += ["", "VAMPnet: seconds per epoch, same lobe and data",
              f"{'thr':>3} {'lobe':>8} {'frames':>7} {'feat':>5} {'steps':>5} {'ours s':>8} "
              f"{'deeptime s':>10} {'speedup':>7}"]
    for r in vampnet:
        lines.append(f"{r['threads']:>3} {r['lobe']:>8} {r['frames']:>7} {r['features']:>5} "
                     f"{r['steps_per_epoch']:>5} {fmt(r['ours_seconds_per_epoch'], '.3f'):>8} "
                     f"{fmt(r['deeptime_seconds_per_epoch'], '.3f'):>10} "
                     f"{fmt(r['speedup_ours_over_deeptime'], '.3f'):>7}" + load(r))
    return "\n".join(lines)


def main(argv=None) -> int:
    args = _common.parse(_common.parser(__doc__, "cv.json", "tiny blocks and data (< 60 s)"),
                         argv)
    mode = "quick" if args.quick else "full"
    settings = MODES[mode]
    env, monitor = environment(), LoadMonitor()
    try:
        env["deeptime"] = metadata.version("deeptime")
    except metadata.PackageNotFoundError:
        env["deeptime"] = None
    threads_list = thread_counts(args.threads)
    pdb_path = str(bundled(ALANINE))
    pdb = app.PDBFile(pdb_path)
    positions = np.array(pdb.positions.value_in_unit(unit.nanometer))
    openmm_geom.set_threads(threads_list[0])
    cv, token_map = build_cv(pdb_path)
    checks, md, featurize, vampnet = [], [], [], []
    with tempfile.TemporaryDirectory() as workdir:
        path = Path(workdir) / "geom2vec_cv.pt"
        export_model(cv, path, length_unit="nanometer", periodic=False,
                     example_positions=positions, kind="cv", cv_names=CV_NAMES,
                     dtype=torch.float32)
        module = ExportedModel.load(path).module
        x = torch.tensor(positions, dtype=torch.float32)
        with torch.no_grad():
            error = relative_error(module(x).numpy(), cv(x).numpy())
        checks.append({"check": "exported module == eager Geom2VecCV",
                       "ok": error <= EXPORT_TOLERANCE,
                       "rel_error": error, "tolerance": EXPORT_TOLERANCE})
        progress("exported; sampling CV ranges")
        samples = sample_cvs(pdb, module, threads_list[0], settings["sample_steps"],
                             settings["sample_every"])
        grid = grid_settings(samples)
        progress("start checks")
        start_check_list, start = start_checks(pdb, path, module, grid, positions,
                                               settings["frequency"])
        checks += start_check_list
        if all(c["ok"] for c in checks):  # a benchmark of different physics is worthless
            for threads in threads_list:
                progress(f"metadynamics, {threads} thread(s)")
                row, md_checks = run_md(threads, pdb, path, module, grid, positions, settings)
                md.append(row)
                checks += md_checks
    systems = featurize_systems()
    for threads in threads_list:
        progress(f"featurization, {threads} thread(s)")
        featurize += run_featurize(threads, cv.featurizer, systems, settings)
    checks.append({"check": "featurizer output finite",
                   "ok": all(r["finite"] for r in featurize)})
    for threads in threads_list:
        progress(f"VAMPnet, {threads} thread(s)")
        rows, vamp_checks = run_vampnet(threads, token_map, positions, settings, mode)
        vampnet += rows
        checks += vamp_checks
    ok = all(c["ok"] for c in checks)
    machine_load = monitor.result()
    write_json(args.out, {
        "benchmark": "cv",
        "quick": args.quick,
        "config": {
            "system": f"capped alanine ({ALANINE}, {len(positions)} atoms), {FORCEFIELD}, "
                      "NoCutoff, HBonds constraints, vacuum",
            "integrator": "LangevinMiddleIntegrator", "temperature_k": TEMPERATURE,
            "friction_per_ps": FRICTION, "timestep_fs": TIMESTEP_FS, "platform": "CPU",
            "cv_model": "Geom2VecCV: Geom2VecFeaturizer (random weights) on heavy atoms, one "
                        f"token per atom ({token_map.n_tokens} tokens), {MIXER} mixer, "
                        f"VAMPHead(hidden={HEAD_HIDDEN}, k={K}); float32, exported kind='cv'",
            "featurizer": FEATURIZER, "cv_names": CV_NAMES,
            "metadynamics": {"bias_factor": BIAS_FACTOR, "height_kj_per_mol": HEIGHT,
                             "frequency_steps": settings["frequency"],
                             "grid": dict(zip(CV_NAMES, grid)),
                             "grid_from": f"mean +- {RANGE_STDS} std, width {WIDTH_STDS} std "
                                          f"of {len(samples)} CV samples of an unbiased run"},
            "ours": "openmm_geom.openmm.Metadynamics (TorchCVForce, grid) + meta.step",
            "peer": "openmm.app.Metadynamics over bias_variables(path): CustomCVForce with one "
                    "openmm-torch TorchForce per CV; meta.step",
            "zero": "TorchCVForce(path, '0'), plain simulation.step (no metadynamics)",
            "amber": "the same System without a CV",
            "floor": "exported module: torch.autograd.grad(module(x), x, ones(k)), Python loop",
            "goal": f"speedup ours/peer >= {GOAL}",
            "timing": {"block_seconds_metadynamics": settings["block_seconds"][0],
                       "block_seconds_others": settings["block_seconds"][1],
                       "blocks": settings["blocks"], "warmup": settings["warmup"],
                       "statistic": "median rate over interleaved blocks"},
            "featurize": {name: {"batch": b, "repeats": r}
                          for name, (b, r) in settings["featurize"].items()},
            "vampnet": {"lag": VAMP_LAG, "batch": VAMP_BATCH[mode], "lr": VAMP_LR,
                        "frames": settings["vampnet"], "repeats": settings["vampnet_repeats"],
                        "ours": "fit_lobe(VAMPNetTrainer(max_epochs=1), lobe, TimeLaggedPairs)",
                        "deeptime": "VAMPNet(lobe, learning_rate).fit(DataLoader("
                                    "TrajectoryDataset(lag, data), batch, shuffle, "
                                    "drop_last), n_epochs=1)"},
        },
        "environment": env,
        "load": machine_load,
        "start": start,
        "md": md,
        "featurize": featurize,
        "vampnet": vampnet,
        "checks": checks,
        "ok": ok,
    })
    return _common.report(table(md, featurize, vampnet), md + featurize + vampnet, checks, ok,
                          args.out)


if __name__ == "__main__":
    sys.exit(main())
