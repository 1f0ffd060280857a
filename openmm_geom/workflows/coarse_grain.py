"""The coarse-graining job: all-atom data -> mapping -> priors -> CGSchNet ensemble by force
matching -> batched CG simulation -> free-energy comparison with a held-out reference.

Every step writes its products into one output directory and can be run on its own
(``openmm-geom cg train|simulate|evaluate``) or all together (``openmm-geom cg reproduce``).
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..parallel import Task, TaskRunner
from ..threads import set_threads
from ..analysis import (ALANINE_CG_PHI_PSI, dihedrals, kl_divergence, mse_bin_energies,
                        noise_curve, noise_equivalent_sigma, ramachandran_histogram,
                        unreliable_reasons)
from ..data.datagen import load_reference, reference_topology
from ..data.mapping import (CGMapping, alanine_backbone_cb_mapping, ca_mapping,
                            optimized_force_map)
from ..export import export_cg_model
from ..io import atomic_write_bytes, sha256_of_arrays
from ..models.cgschnet import CGSchNet
from ..models.priors import fit_priors
from ..simulate import BatchedLangevin, EnsembleForces, TrajectoryWriter, read_trajectory
from ..training.checkpoints import load_cgschnet, save_cgschnet
from ..training.force_matching import time_block_folds, train_ensemble
from ..settings import check_settings
from .. import arguments as check
from .config import PRODUCTION, QUICK, CGSettings
from ..units import MOLAR_GAS_CONSTANT_KJ

__all__ = ["CGSettings", "PRODUCTION", "QUICK", "CGData", "load_cg_data", "train", "simulate",
           "simulate_from", "evaluate", "evaluate_files", "evaluation_kind", "reproduce"]

ALANINE_BONDS = [(0, 1), (1, 2), (2, 3), (3, 4), (2, 5)]  # C-N-CA-C-N backbone + CA-CB
# Dihedral priors on phi and psi only: the torsions through CB move rigidly with them, and a
# Boltzmann-inverted prior on each would count the same free-energy profile twice
# (measured: priors on all four torsions put 3.6% of the population in the C5/PII basin
# instead of the reference's 24%).
ALANINE_DIHEDRALS = [(0, 1, 2, 3), (1, 2, 3, 4)]


@dataclasses.dataclass
class CGData:
    """Mapped coordinates and forces of an all-atom dataset."""

    mapping: CGMapping
    positions: np.ndarray  # (frames, beads, 3) nm
    forces: Optional[np.ndarray]  # (frames, beads, 3) kJ/mol/nm
    temperature_K: float
    masses: np.ndarray  # (beads,) amu
    bonds: list
    dihedrals: list
    data_hash: str
    source: str


def _mapping(topology, kind) -> CGMapping:
    if isinstance(kind, CGMapping):  # e.g. the one stored in a trained model's file
        if kind.n_atoms != topology.getNumAtoms():
            raise ValueError(f"the mapping is for {kind.n_atoms} atoms but the topology has "
                             f"{topology.getNumAtoms()}")
        return kind
    if kind == "auto":
        names = [r.name for r in topology.residues()]
        kind = "alanine" if names == ["ACE", "ALA", "NME"] else "ca"
    if kind == "alanine":
        return alanine_backbone_cb_mapping(topology)
    if kind == "ca":
        return ca_mapping(topology)
    raise ValueError(f"unknown mapping {kind!r}: use 'auto', 'alanine' or 'ca'")


def load_cg_data(path, *, pdb=None, mapping="auto", need_forces: bool = True,
                 force_map: str = "optimized") -> CGData:
    """Load an all-atom npz (positions, forces; openmm-geom datagen or the shared layout) and
    map it. The topology comes from ``pdb``, the file's ``topology_pdb``, or, for 22-atom
    files, the bundled capped alanine. ``mapping`` is ``"auto"``, ``"alanine"``, ``"ca"`` or
    a :class:`CGMapping` (e.g. a trained model's). ``force_map`` is ``"optimized"`` (minimal-variance
    aggregation fitted to these forces, see :func:`optimized_force_map`) or ``"slice"``."""
    import openmm.app as app

    from ..data import bundled

    data = load_reference(path, require_forces=need_forces)
    if pdb is not None:
        topology = app.PDBFile(str(pdb)).topology
    elif data.get("topology_pdb") is not None:
        topology = reference_topology(data)
    elif data["positions"].shape[1] == 22:
        topology = app.PDBFile(str(bundled("alanine-dipeptide.pdb"))).topology
    else:
        raise ValueError(f"{path} carries no topology: pass the PDB it was made from")
    if topology.getNumAtoms() != data["positions"].shape[1]:
        raise ValueError(f"the topology has {topology.getNumAtoms()} atoms but {path} has "
                         f"{data['positions'].shape[1]}")
    cg = _mapping(topology, mapping)
    if force_map not in ("optimized", "slice"):
        raise ValueError(f"force_map must be 'optimized' or 'slice', got {force_map!r}")
    if need_forces and force_map == "optimized":
        constraints = (data.get("generation") or {}).get("constraints")
        if constraints:
            # instantaneous forces lack the constraint forces; aggregating them over
            # constrained atoms would bias the mean force (the slice map avoids those atoms
            # only if no kept atom is constrained, which the user must decide)
            raise ValueError(f"{path} was generated with constraints={constraints!r}; the "
                             "optimized force map needs unconstrained forces: regenerate "
                             "without constraints or use force_map='slice'")
        cg = optimized_force_map(cg, data["forces"])
    x = cg.map_positions(data["positions"])
    f = cg.map_forces(data["forces"]) if need_forces else None
    if "masses" not in data:
        raise ValueError(f"{path} has no 'masses' array (amu per atom); the CG beads' masses "
                         "come from it")
    masses = np.asarray(data["masses"], dtype=float)
    bead_masses = np.array([masses[g].sum() for g in cg.groups])
    if cg.bead_names[:2] == ["C(ACE)", "N"]:
        bonds, torsions = ALANINE_BONDS, ALANINE_DIHEDRALS
    else:  # a chain of beads: bonds i-(i+1), pseudo-torsions i..i+3
        bonds = [(i, i + 1) for i in range(cg.n_beads - 1)]
        torsions = [(i, i + 1, i + 2, i + 3) for i in range(cg.n_beads - 3)]
    digest = sha256_of_arrays(data["positions"], data["forces"]) if need_forces else ""
    return CGData(cg, x, f, float(data["temperature_K"]), bead_masses, bonds, torsions, digest,
                  str(path))


def _make_model_factory(data: CGData, priors, settings: CGSettings):
    def make(seed: int) -> CGSchNet:
        return CGSchNet(data.mapping.bead_types, priors, features=settings.features,
                        filters=settings.filters, interactions=settings.interactions,
                        n_rbf=settings.n_rbf, output_hidden=settings.output_hidden,
                        cutoff=settings.cutoff_nm, seed=seed, dtype=getattr(torch, settings.dtype))
    return make


def train(data: CGData, out: Path, settings: CGSettings = PRODUCTION, *, seed: int = 0,
          progress: bool = True, runner=None) -> dict:
    """Fit priors, train the k-fold ensemble, write cg_model.pt (+ OpenMM export, curves).

    ``runner``: a :class:`~openmm_geom.parallel.TaskRunner` that trains the folds as tasks
    (e.g. on a Dask cluster); it is started before ``out`` is created."""
    check_settings(settings)
    seed = check.count("seed", seed, minimum=0)
    if data.forces is None:
        raise ValueError(f"{data.source} has no forces: force matching needs them")
    time_block_folds(len(data.positions), settings.training.folds,
                     settings.training.gap_frames)  # too few frames: refuse before writing
    with (runner if runner is not None else TaskRunner(None)) as active:
        return _train(data, Path(out), settings, seed, progress, active)


def _train(data: CGData, out: Path, settings: CGSettings, seed: int, progress: bool,
           runner) -> dict:
    from ..analysis.plots import plot_learning_curves

    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    priors = fit_priors(data.positions, data.temperature_K, bonds=data.bonds,
                        dihedrals=data.dihedrals, method=settings.prior_method,
                        dihedral_harmonics=settings.dihedral_harmonics)
    atomic_write_bytes(out / "priors.json", json.dumps(priors.to_config(), indent=1).encode())
    dtype = getattr(torch, settings.dtype)
    x = torch.as_tensor(data.positions, dtype=dtype)
    f = torch.as_tensor(data.forces, dtype=dtype)
    ensemble, results = train_ensemble(_make_model_factory(data, priors, settings), x, f,
                                       dataclasses.replace(settings.training, seed=seed),
                                       out_dir=out, progress=progress, runner=runner)
    metadata = {"mapping": data.mapping.to_dict(), "masses_amu": data.masses.tolist(),
                "temperature_K": data.temperature_K, "training_data_hash": data.data_hash,
                "training_data": data.source, "settings": dataclasses.asdict(settings),
                "seed": seed}
    save_cgschnet(ensemble, out / "cg_model.pt", metadata)
    export_cg_model(ensemble, out / "cg_model_openmm.pt", example_positions=data.positions[0],
                    masses=data.masses, mapping=data.mapping.to_dict(),
                    training_data_hash=data.data_hash)
    plot_learning_curves([r.history for r in results], out / "learning_curves.png")
    return {"model": str(out / "cg_model.pt"), "openmm_model": str(out / "cg_model_openmm.pt"),
            "folds": [{"fold": r.fold, "best_epoch": r.best_epoch,
                       "best_validation_loss": r.best_validation} for r in results],
            "training_seconds": time.perf_counter() - start}


def start_configurations(positions: np.ndarray, replicas: int) -> np.ndarray:
    """Replicas start from frames spread evenly over the data (so over its basins)."""
    index = np.linspace(0, len(positions) - 1, replicas).astype(int)
    return np.asarray(positions[index], dtype=np.float64)


def simulate(model_path: Path, starts: np.ndarray, out: Path, settings: CGSettings = PRODUCTION,
             *, seed: int = 0, progress: bool = True, runner=None) -> dict:
    """Batched Langevin simulation of the ensemble from ``starts`` (replicas, beads, 3) nm.

    Writes ``cg_trajectory.h5`` and the checkpoint ``cg_simulation.ckpt`` into ``out``;
    calling again with the same arguments resumes from the checkpoint. Every argument is
    checked before ``out`` is touched.

    With ``settings.replica_chunks`` = K > 1 the replicas are split into K batches, batch
    ``k`` simulated with seed ``seed + k`` in ``out/chunks/chunkKKK/`` (each resumable), one
    task each on ``runner`` (a :class:`~openmm_geom.parallel.TaskRunner`; in turn here
    without one); ``out/cg_trajectory.h5`` then holds all replicas in the layout of an
    unsplit run. The same K gives the same files with or without a cluster.
    """
    check_settings(settings)
    if settings.replica_chunks > 1 or (runner is not None and runner.spec is not None):
        return _simulate_chunks(model_path, starts, Path(out), settings, seed, progress, runner)
    return _simulate_batch(model_path, starts, out, settings, seed, progress)


def _simulate_batch(model_path, starts, out, settings: CGSettings, seed: int,
                    progress: bool) -> dict:
    seed = check.count("seed", seed, minimum=0)
    model, metadata = load_cgschnet(model_path)
    model.eval()
    starts = _checked_starts(starts, model.n_beads)
    forces = EnsembleForces(model, compile=settings.compile)
    sim = BatchedLangevin(forces, metadata["masses_amu"], metadata["temperature_K"],
                          friction=settings.friction_per_ps, timestep=settings.timestep_fs / 1000,
                          integrator=settings.integrator, seed=seed, dtype=torch.float64)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out must be a directory, but {out} is a file")
    out.mkdir(parents=True, exist_ok=True)
    trajectory = out / "cg_trajectory.h5"
    with TrajectoryWriter(trajectory, len(starts), model.n_beads, spread=True, mode="a") as writer:
        summary = sim.run(torch.as_tensor(starts), settings.steps,
                          save_interval=settings.save_interval, writer=writer,
                          checkpoint=out / "cg_simulation.ckpt",
                          checkpoint_interval=max(settings.save_interval,
                                                  settings.steps // 20 // settings.save_interval
                                                  * settings.save_interval),
                          progress=progress)
    result = summary.as_dict()
    if forces.compiled:
        result["compile_seconds"] = forces.compile_seconds
    result.update(trajectory=str(trajectory), replicas=len(starts),
                  simulated_ns_total=len(starts) * settings.steps * (settings.timestep_fs / 1000)
                  / 1000)
    return result


def _checked_starts(starts, n_beads: int) -> np.ndarray:
    starts = np.asarray(starts, dtype=np.float64)
    if starts.ndim != 3 or starts.shape[1:] != (n_beads, 3):
        raise ValueError(f"start configurations must be (replicas, {n_beads}, 3), "
                         f"got {starts.shape}: a model file for a different bead count?")
    if not np.isfinite(starts).all():
        raise ValueError("start configurations contain NaN or infinite values")
    return starts


def _simulate_chunk(model_path: str, starts: np.ndarray, out: str, settings: CGSettings,
                    seed: int) -> dict:
    """One batch of replicas of a split :func:`simulate` (a task)."""
    return _simulate_batch(model_path, starts, out, settings, seed, False)


def _simulate_chunks(model_path, starts, out: Path, settings: CGSettings, seed: int,
                     progress: bool, runner) -> dict:
    chunks = settings.replica_chunks
    seed = check.count("seed", seed, minimum=0)
    starts = _checked_starts(starts, load_cgschnet(model_path)[0].n_beads)
    if chunks < 2:
        raise ValueError("a cluster run of `cg simulate` needs --replica-chunks K >= 2 (one "
                         "task per batch of replicas)")
    if starts.ndim != 3 or len(starts) < chunks:
        raise ValueError(f"{chunks} replica chunks need at least {chunks} replicas, got "
                         f"start configurations of shape {starts.shape}")
    if out.exists() and not out.is_dir():
        raise ValueError(f"out must be a directory, but {out} is a file")
    bounds = np.array_split(np.arange(len(starts)), chunks)
    tasks = [Task(f"chunk{k:03d}", (str(model_path), starts[index[0]:index[-1] + 1],
                                    str(out / "chunks" / f"chunk{k:03d}"), settings, seed + k))
             for k, index in enumerate(bounds)]
    started = time.perf_counter()
    with (runner if runner is not None else TaskRunner(None)) as active:
        out.mkdir(parents=True, exist_ok=True)
        summaries = active.run(_simulate_chunk, tasks, log_dir=out / "logs", progress=progress,
                               description="replica chunks")
    trajectory = out / "cg_trajectory.h5"
    _merge_trajectories([Path(summary["trajectory"]) for summary in summaries], trajectory,
                        seeds=[seed + k for k in range(chunks)])
    return {"trajectory": str(trajectory), "replicas": len(starts), "replica_chunks": chunks,
            "seeds": [seed + k for k in range(chunks)],
            "simulated_ns_total": sum(s["simulated_ns_total"] for s in summaries),
            "wall_seconds": time.perf_counter() - started, "chunks": summaries}


def _merge_trajectories(parts, path: Path, seeds) -> None:
    """The replica batches' trajectories as one file (replicas concatenated in order), in the
    layout of an unsplit run; written beside ``path`` and renamed into place."""
    pieces = [read_trajectory(part) for part in parts]
    steps = pieces[0].step
    for part, piece in zip(parts, pieces):
        if not np.array_equal(piece.step, steps):
            raise ValueError(f"{part} has other frames than {parts[0]}: not one run's chunks")
    attributes = {k: v for k, v in pieces[0].attributes.items()
                  if k not in ("format", "n_replicas", "n_beads", "n_frames")}
    attributes.update(seed=seeds[0], chunk_seeds=np.asarray(seeds),
                      temperature_K=np.concatenate([np.atleast_1d(p.attributes["temperature_K"])
                                                    for p in pieces]))
    replicas = sum(p.positions.shape[1] for p in pieces)
    temporary = path.with_name(path.name + ".merging")
    spread = all(p.spread is not None for p in pieces)
    with TrajectoryWriter(temporary, replicas, pieces[0].positions.shape[2], spread=spread,
                          mode="w", attributes=attributes) as writer:
        for frame in range(len(steps)):
            writer.append(int(steps[frame]), float(pieces[0].time[frame]),
                          np.concatenate([p.positions[frame] for p in pieces]),
                          np.concatenate([p.energies[frame] for p in pieces]),
                          np.concatenate([p.spread[frame] for p in pieces]) if spread else None)
    os.replace(temporary, path)


def simulate_from(model_path, start_path, out, settings: CGSettings = PRODUCTION, *,
                  pdb=None, seed: int = 0, progress: bool = True, runner=None) -> dict:
    """``openmm-geom cg simulate``: :func:`simulate` a trained model from all-atom frames.

    Parameters
    ----------
    model_path : path
        ``cg_model.pt`` from :func:`train`.
    start_path : path
        All-atom npz (positions nm); ``settings.replicas`` frames spread over it, mapped with
        the model's own mapping, start the replicas.
    out : path
        Output directory (``cg_trajectory.h5``, ``cg_simulation.ckpt``); a rerun resumes.
    settings : CGSettings
        ``replicas``, ``steps``, ``timestep_fs``, ``friction_per_ps``, ``save_interval``,
        ``integrator`` and ``compile`` (``EnsembleForces(model, compile=True)``) are used.
    pdb : path, optional
        Topology, if the npz carries none.
    seed : int
        Integrator seed, >= 0.
    progress : bool
        Progress bar on stderr.

    Returns
    -------
    dict
        The run summary (steps, replica-steps per second, ``trajectory``, ...).

    Everything is read and checked before ``out`` is touched.
    """
    check_settings(settings)
    model, metadata = load_cgschnet(model_path)
    mapping = CGMapping.from_dict(metadata["mapping"]) if "mapping" in metadata else "auto"
    start = load_cg_data(start_path, pdb=pdb, need_forces=False, mapping=mapping)
    if start.mapping.n_beads != model.n_beads:
        raise ValueError(f"{model_path} is a {model.n_beads}-bead model but {start_path} maps "
                         f"to {start.mapping.n_beads} beads")
    return simulate(model_path, start_configurations(start.positions, settings.replicas), out,
                    settings, seed=seed, progress=progress, runner=runner)


def evaluate_files(reference_path, trajectory, out, *, settings: CGSettings = PRODUCTION,
                   pdb=None, mapping="auto", seed: int = 0) -> dict:
    """``openmm-geom cg evaluate``: :func:`evaluate` a CG trajectory against a reference file.

    Parameters
    ----------
    reference_path : path
        All-atom npz held out from training (positions nm, masses, temperature).
    trajectory : path
        ``cg_trajectory.h5`` from :func:`simulate`.
    out : path
        Output directory for the figures.
    settings : CGSettings
        The evaluation fields (``noise_seeds``, ``equilibration_fraction``, ...).
    pdb : path, optional
        Topology, if the npz carries none.
    mapping : str or CGMapping
        The mapping the model was trained with (``"auto"``, ``"alanine"``, ``"ca"``).
    seed : int
        Seed of the noise calibration, >= 0.

    Returns
    -------
    dict
        As :func:`evaluate`. Both files are read and checked before ``out`` is touched.
    """
    check_settings(settings)
    seed = check.count("seed", seed, minimum=0)
    reference = load_cg_data(reference_path, pdb=pdb, need_forces=False, mapping=mapping)
    run = read_trajectory(trajectory, frames=slice(0, 1))
    if run.positions.shape[2] != reference.mapping.n_beads:
        raise ValueError(f"{trajectory} has {run.positions.shape[2]} beads but {reference_path} "
                         f"maps to {reference.mapping.n_beads} (use the mapping the model was "
                         "trained with)")
    return evaluate(reference.positions, trajectory, out, temperature_K=reference.temperature_K,
                    settings=settings, seed=seed, kind=evaluation_kind(reference.mapping))


def evaluation_kind(mapping: CGMapping) -> str:
    """``"alanine"`` (phi/psi protocol) for capped alanine's 6-bead map, else ``"protein"``."""
    return "alanine" if mapping.bead_names[:2] == ["C(ACE)", "N"] else "protein"


def evaluate(reference: np.ndarray, trajectory: Path, out: Path, *, temperature_K: float,
             settings: CGSettings = PRODUCTION, seed: int = 0, kind: str = "auto") -> dict:
    """Free energies of the CG run vs the reference: KL, MSE, noise-equivalent sigma, figures.

    ``kind="alanine"`` compares phi/psi histograms (60 x 60, the paper's Figs. 4-5);
    ``kind="protein"`` compares histograms on the first two TICA coordinates of the
    reference's bead distances (Fig. 7), calibrated with the same Cartesian-noise curve.
    ``"auto"`` picks alanine for 6 beads, protein otherwise.

    The result's ``unreliable_reasons`` lists why the noise-equivalent sigma cannot be
    trusted (the CG run misses more than 5% of the reference probability mass, KL < 0, or no
    shared bin; see :func:`openmm_geom.analysis.unreliable_reasons`); the sigmas are then
    None. An empty list means the sigma is reliable. ``warnings`` repeats the reasons.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    reference = np.asarray(reference, dtype=np.float64)
    run = read_trajectory(trajectory)
    frames = run.positions
    if frames.shape[2] != reference.shape[1]:
        raise ValueError(f"the trajectory has {frames.shape[2]} beads but the reference "
                         f"{reference.shape[1]}")
    first = int(settings.equilibration_fraction * len(frames))
    cg = frames[first:].reshape(-1, frames.shape[2], 3)
    if kind == "auto":
        kind = "alanine" if reference.shape[1] == 6 else "protein"
    kT = MOLAR_GAS_CONSTANT_KJ * temperature_K
    if kind == "alanine":
        metrics = _evaluate_alanine(reference, cg, out, kT, settings, seed)
    elif kind == "protein":
        metrics = _evaluate_protein(reference, cg, out, kT, settings, seed)
    else:
        raise ValueError(f"kind must be 'auto', 'alanine' or 'protein', got {kind!r}")
    spread = run.spread[first:] if run.spread is not None else None
    metrics.update(kind=kind, cg_frames=int(len(cg)), reference_frames=int(len(reference)),
                   ensemble_force_spread_kj_mol_nm=None if spread is None
                   else float(np.mean(spread)))
    return metrics


def _calibrated(kl, mse: float, curve) -> dict:
    # eq. 14 and 15 sum over bins both runs visit, so a state the CG run never reaches lowers
    # nothing: a sigma from such a run reads as a good model. Report None and why instead.
    reasons = unreliable_reasons(kl)
    result = {"kl": kl.value, "kl_details": kl.as_dict(), "mse": mse,
              "unreliable_reasons": reasons, "warnings": list(reasons),
              "noise_equivalent_sigma_angstrom": None,
              "noise_equivalent_sigma_beyond_range": None,
              "noise_equivalent_sigma_mse_angstrom": None}
    if not reasons:
        sigma_kl = noise_equivalent_sigma(kl, curve)
        result.update(noise_equivalent_sigma_angstrom=sigma_kl.sigma_angstrom,
                      noise_equivalent_sigma_beyond_range=sigma_kl.beyond_range,
                      noise_equivalent_sigma_mse_angstrom=noise_equivalent_sigma(
                          mse, curve, metric="mse").sigma_angstrom)
    return result


def _evaluate_alanine(reference, cg, out: Path, kT: float, settings: CGSettings,
                      seed: int) -> dict:
    from ..analysis.plots import plot_free_energy_surfaces, plot_noise_curve

    ref_angles = dihedrals(reference, ALANINE_CG_PHI_PSI)
    cg_angles = dihedrals(cg, ALANINE_CG_PHI_PSI)
    p = ramachandran_histogram(ref_angles[:, 0], ref_angles[:, 1])
    q = ramachandran_histogram(cg_angles[:, 0], cg_angles[:, 1])
    kl = kl_divergence(p, q)
    mse = mse_bin_energies(p, q, kT)["value"]
    curve = noise_curve(reference, seeds=settings.noise_seeds, rng_seed=seed, kT=kT)
    histograms = {"reference": p, "CG": q}
    for s in (0.1, 0.2, 0.3):
        rng = np.random.default_rng(seed + 1)
        noisy = dihedrals(reference + rng.normal(0, s / 10, reference.shape), ALANINE_CG_PHI_PSI)
        histograms[f"reference + {s} Å noise"] = ramachandran_histogram(noisy[:, 0], noisy[:, 1])
    plot_free_energy_surfaces(histograms, out / "free_energy_surfaces.png", kT,
                              reference="reference")
    plot_noise_curve(curve, out / "noise_curve.png", cg_kl=kl.value, cg_mse=mse)
    return {**_calibrated(kl, mse, curve),
            "figures": ["free_energy_surfaces.png", "noise_curve.png"]}


def _evaluate_protein(reference, cg, out: Path, kT: float, settings: CGSettings,
                      seed: int) -> dict:
    from ..analysis.plots import plot_noise_curve, plot_tica_free_energy
    from ..analysis.protein import compare, tica_free_energy, tica_noise_curve

    frame = tica_free_energy(reference, lagtime=settings.tica_lag_frames)
    run = compare(frame, cg, kT=kT)
    plot_tica_free_energy({"reference": frame.project(reference), "CG": run["projection"]},
                          out / "tica_free_energy.png", kT, bins=len(frame.edges[0]) - 1)
    common = {"tica_lag_frames": settings.tica_lag_frames,
              "tica_timescales_frames": frame.tica.timescales()[:2].tolist(),
              "cg_fraction_outside_grid": run["outside_fraction"]}
    if run["kl"] is None:  # a result (a bad model), not an error: report it as such
        reasons = ["no CG frame falls on the reference's TICA grid: the CG run left the "
                   "reference's conformations entirely"]
        return {"kl": None, "kl_details": None, "mse": None,
                "noise_equivalent_sigma_angstrom": None,
                "noise_equivalent_sigma_beyond_range": True,
                "noise_equivalent_sigma_mse_angstrom": None,
                "unreliable_reasons": reasons, "warnings": list(reasons),
                **common, "figures": ["tica_free_energy.png"]}
    curve = tica_noise_curve(frame, reference, kT=kT, seeds=max(1, min(settings.noise_seeds, 10)),
                             rng_seed=seed)
    plot_noise_curve(curve, out / "noise_curve.png", cg_kl=run["kl"].value, cg_mse=run["mse"])
    return {**_calibrated(run["kl"], run["mse"], curve), **common,
            "figures": ["tica_free_energy.png", "noise_curve.png"]}


def reproduce(train_path, reference_path, out, *, settings: CGSettings = PRODUCTION,
              seed: int = 0, threads: Optional[int] = None, pdb=None, mapping="auto",
              progress: bool = True) -> dict:
    """The whole job; returns (and writes to out/metrics.json) one dict of metrics."""
    check_settings(settings)
    seed = check.count("seed", seed, minimum=0)
    t0 = time.perf_counter()
    data = load_cg_data(train_path, pdb=pdb, mapping=mapping, force_map=settings.force_map)
    reference = load_cg_data(reference_path, pdb=pdb, mapping=mapping, need_forces=False)
    if reference.mapping.groups != data.mapping.groups:
        raise ValueError("training and reference data map to different CG representations")
    time_block_folds(len(data.positions), settings.training.folds,
                     settings.training.gap_frames)  # too few frames: refuse before writing
    n_threads = set_threads(threads)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    timings = {}
    training = train(data, out, settings, seed=seed, progress=progress)
    timings["train_s"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    starts = start_configurations(data.positions, settings.replicas)
    simulation = simulate(out / "cg_model.pt", starts, out, settings, seed=seed, progress=progress)
    timings["simulate_s"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    metrics = evaluate(reference.positions, out / "cg_trajectory.h5", out,
                       temperature_K=reference.temperature_K, settings=settings, seed=seed,
                       kind=evaluation_kind(data.mapping))
    timings["evaluate_s"] = time.perf_counter() - t2
    timings["total_s"] = time.perf_counter() - t0
    result = {**metrics, "replicas": simulation["replicas"],
              "simulated_ns_total": simulation["simulated_ns_total"],
              "replica_steps_per_second": simulation.get("replica_steps_per_second"),
              "training": training, "timings": timings, "threads": n_threads, "seed": seed,
              "settings": dataclasses.asdict(settings)}
    atomic_write_bytes(out / "metrics.json", json.dumps(result, indent=2, default=float).encode())
    return result
