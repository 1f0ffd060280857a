"""Biased OpenMM runs of a peptide along exported CVs, checkpointed, then reweighted.

:func:`run_biased` runs well-tempered metadynamics through the native ``TorchCVForce`` along
the CVs of an exported module (``mode="cv"``), along the backbone phi/psi (``"phipsi"``, the
ideal CVs of capped alanine, as a reference), or no bias (``"unbiased"``). It writes:

- ``bias_log.csv``: the metadynamics time series (step, time, every CV, V(s,t), c(t));
- ``dihedrals.npz``: phi/psi (radians) at the same steps, and whether each frame was biased;
- ``checkpoint.chk`` + ``metad_state.npz`` every ``checkpoint_ps``: a killed run resumes where
  it stopped, with the same bias and log (rows after the checkpoint are discarded);
- ``summary.json`` and PNGs from :func:`analyse_run`: phi transitions per ns between the
  phi<0 and phi>0 basins (core to core), the reweighted phi free-energy profile, and the
  free-energy difference of the two basins with a block-bootstrap error.

A run whose energy turns non-finite, or whose atoms fly apart, stops with a diagnosis.
"""
from __future__ import annotations

import dataclasses
import io
import json
import math
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..arguments import openmm_seed
from ..errors import SimulationBlowUp
from ..io import atomic_write_bytes
from ..units import MOLAR_GAS_CONSTANT_KJ
from ..analysis.peptide import (PHI_NEGATIVE_CORE, PHI_POSITIVE_CORE, PHI_SHIFT_ABOVE,
                               backbone_dihedrals, phi_psi_quadruplets, shifted_phi)
from .config import BiasSettings

__all__ = ["BiasSettings", "run_biased", "analyse_run", "reference_phi"]

REFERENCE_BIN_CEILING_KJMOL = 15.0


def _alanine_system(pdb):
    import openmm.app as app

    forcefield = app.ForceField("amber14-all.xml")
    return forcefield.createSystem(pdb.topology, nonbondedMethod=app.NoCutoff,
                                   constraints=app.HBonds)


def _phi_psi(positions: np.ndarray, quads: np.ndarray) -> np.ndarray:
    from ..analysis.free_energy import dihedrals

    return dihedrals(positions[None], quads)[0]


def _learned_axes(metadata, settings: BiasSettings):
    from ..openmm import GridAxis

    stats = (metadata.extra or {}).get("cv_statistics")
    if not stats:
        raise ValueError("the CV file records no training statistics of its CVs "
                         "(cv_statistics); export it with openmm-geom cv export")
    axes = []
    for name in metadata.cv_names:
        s = stats[name]
        span = s["max"] - s["min"]
        axes.append(GridAxis(name, s["min"] - 0.75 * span, s["max"] + 0.75 * span,
                             width=settings.width_fraction * s["std"]))
    return axes


def run_biased(pdb_path, out, *, mode: str = "cv", cv_model=None,
               settings: Optional[BiasSettings] = None, seed: int = 1,
               threads: Optional[int] = None, progress: bool = True,
               resume: bool = True) -> dict:
    """Run (or resume) a biased simulation and analyse it; returns the summary.

    Parameters
    ----------
    pdb_path : PDB of the peptide (capped alanine for the phi analysis)
    out : directory for the outputs (see module docstring)
    mode : "cv" (metadynamics on ``cv_model``'s CVs), "phipsi", or "unbiased"
    cv_model : exported CV file (``mode="cv"``)
    """
    import openmm
    import openmm.app as app
    import openmm.unit as unit

    from ..threads import set_threads
    from ..threads import cpu_platform_properties
    from ..export import export_model
    from ..openmm import ExportedModel
    from ..models import Dihedrals
    from ..openmm import GridAxis, Metadynamics
    from ..progress import progress_bar

    settings = settings or BiasSettings()
    if mode not in ("cv", "phipsi", "unbiased"):
        raise ValueError(f"mode must be 'cv', 'phipsi' or 'unbiased', got {mode!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    n_threads = set_threads(threads)
    pdb = app.PDBFile(str(pdb_path))
    system = _alanine_system(pdb)
    quads = phi_psi_quadruplets(pdb.topology)
    temperature = settings.temperature_K * unit.kelvin
    meta = None
    log_steps = settings.steps(settings.log_ps)
    if mode == "cv":
        if cv_model is None:
            raise ValueError("mode 'cv' needs the exported CV file (cv_model)")
        model = ExportedModel.load(cv_model)  # read once; Metadynamics takes it as it is
        model.require_kind("cv", "a biased run along learned CVs")
        model.check_atom_count(system.getNumParticles())
        axes = _learned_axes(model.metadata, settings)
    elif mode == "phipsi":
        model_path = out / "phi_psi.pt"
        if model_path.exists():
            model = ExportedModel.load(model_path)
        else:
            model = export_model(Dihedrals(quads), model_path, kind="cv", length_unit="nm",
                                 periodic=False, example_positions=pdb.positions,
                                 cv_names=["phi", "psi"])
        axes = [GridAxis(name, -math.pi, math.pi, width=settings.phipsi_width, periodic=True,
                         points=61) for name in ("phi", "psi")]
    if mode != "unbiased":
        meta = Metadynamics(system, model, axes, temperature, settings.bias_factor,
                            settings.height_kJmol, settings.steps(settings.deposit_ps),
                            method=settings.method, log=out / "bias_log.csv",
                            log_interval=log_steps, force_group=5)
    integrator = openmm.LangevinMiddleIntegrator(temperature, settings.friction_per_ps / unit.picosecond,
                                                 settings.timestep_fs * unit.femtosecond)
    integrator.setRandomNumberSeed(openmm_seed(seed))
    simulation = app.Simulation(pdb.topology, system, integrator,
                                openmm.Platform.getPlatformByName("CPU"),
                                cpu_platform_properties(n_threads))
    checkpoint, state_file, series_file = (out / "checkpoint.chk", out / "metad_state.npz",
                                           out / "dihedrals.npz")
    steps_series, angles = [], []
    resumed = resume and checkpoint.exists() and series_file.exists()
    if resumed:
        simulation.loadCheckpoint(str(checkpoint))
        if meta is not None:
            meta.load_state(state_file, simulation.context)
        with np.load(series_file) as data:
            keep = data["step"] <= simulation.currentStep
            steps_series, angles = list(data["step"][keep]), list(data["phi_psi"][keep])
    else:
        simulation.context.setPositions(pdb.positions)
        simulation.minimizeEnergy()
        simulation.context.setVelocitiesToTemperature(temperature, openmm_seed(seed))
    total = settings.steps(settings.picoseconds)
    chunk = settings.steps(settings.checkpoint_ps)
    chunk -= chunk % log_steps or 0
    chunk = max(chunk, log_steps)
    start, start_step = time.perf_counter(), simulation.currentStep
    with progress_bar(total, f"{mode} run", enabled=progress, unit="step") as bar:
        bar.update(simulation.currentStep)
        while simulation.currentStep < total:
            target = min(total, simulation.currentStep + chunk)
            while simulation.currentStep < target:
                n = min(log_steps - simulation.currentStep % log_steps,
                        target - simulation.currentStep)
                if meta is not None:
                    meta.step(simulation, n)
                else:
                    simulation.step(n)
                if simulation.currentStep % log_steps == 0:
                    state = simulation.context.getState(getPositions=True, getEnergy=True)
                    positions = state.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
                    _check_sane(state, positions, simulation.currentStep, settings)
                    steps_series.append(simulation.currentStep)
                    angles.append(_phi_psi(positions, quads))
                bar.update(n)
            _save_series(series_file, steps_series, angles)
            simulation.saveCheckpoint(str(checkpoint))
            if meta is not None:
                meta.save_state(state_file, simulation.context)
    elapsed = time.perf_counter() - start
    ran = simulation.currentStep - start_step
    run = {"mode": mode, "steps": total, "simulated_ps": total * settings.timestep_fs / 1000,
           "resumed": bool(resumed), "threads": n_threads,
           "ns_per_day": (ran * settings.timestep_fs * 1e-6) / (elapsed / 86400) if ran else None,
           "hills": None if meta is None else len(meta.hills),
           "method": None if meta is None else meta.method,
           "settings": dataclasses.asdict(settings), "seed": seed}
    summary = analyse_run(out, settings.temperature_K, run=run)
    return summary


def _check_sane(state, positions: np.ndarray, step: int, settings: BiasSettings) -> None:
    import openmm.unit as unit

    energy = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    if not math.isfinite(energy) or not np.isfinite(positions).all():
        raise SimulationBlowUp(f"step {step}: non-finite potential energy ({energy}) or "
                               "coordinates; lower the timestep or the hill height")
    extent = float(np.ptp(positions, axis=0).max())
    if extent > 5.0:  # a 22-atom peptide spans ~1 nm; 5 nm means it came apart
        raise SimulationBlowUp(f"step {step}: the molecule spans {extent:.1f} nm (bonds broke); "
                               "a steep bias (lower the hill height or widen the hills, "
                               "--width-fraction) or too long a timestep. Checkpoints and "
                               "series saved before this step are kept")


def _save_series(path: Path, steps: Sequence[int], angles: Sequence[np.ndarray]) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, step=np.asarray(steps, dtype=np.int64),
             phi_psi=np.asarray(angles, dtype=np.float64).reshape(-1, 2))
    atomic_write_bytes(path, buffer.getvalue())


def reference_phi(paths: Sequence, pdb_path, stride: int = 1) -> np.ndarray:
    """phi (radians) of long unbiased reference trajectories (npz with positions in nm)."""
    import mdtraj

    from ..data.trajectories import read_positions

    topology = mdtraj.load_topology(str(pdb_path))
    phis = []
    for path in paths:
        positions, _, _ = read_positions(path, stride=stride, n_atoms=topology.n_atoms)
        phis.append(backbone_dihedrals(positions, topology)[:, 0])
    return np.concatenate(phis)


def analyse_run(out, temperature_K: float, *, run: Optional[dict] = None,
                reference: Optional[np.ndarray] = None, bins: int = 36,
                discard_fraction: float = 0.0) -> dict:
    """Transitions, reweighted phi profile and basin free-energy difference of a finished run.

    ``reference``: phi of a long unbiased reference (radians) to compare the profile with, on
    the bins both populate where the reference's free energy is at most 15 kJ/mol (profiles
    aligned by their mean over those bins).
    """
    from ..analysis import reweight

    out = Path(out)
    with np.load(out / "dihedrals.npz") as data:
        steps, angles = data["step"], data["phi_psi"]
    weights = np.full(len(steps), 1.0 / max(len(steps), 1))
    biased = (out / "bias_log.csv").exists()
    if biased:
        log = reweight.load_bias_log(out / "bias_log.csv", partial_last_line="drop")
        index = {int(s): i for i, s in enumerate(log.step)}
        missing = [int(s) for s in steps if int(s) not in index]
        if missing:
            raise ValueError(f"bias log lacks {len(missing)} logged steps (first {missing[0]})")
        rows = np.array([index[int(s)] for s in steps], dtype=np.int64)
        weights = reweight.metad_weights(log.bias_kJmol[rows], log.c_t_kJmol[rows], temperature_K)
    keep = slice(int(discard_fraction * len(steps)), None)
    phi = angles[keep, 0]
    w = weights[keep] / weights[keep].sum()
    timestep_ps = float(run["settings"]["timestep_fs"]) / 1000 if run else None
    simulated_ns = (steps[-1] * timestep_ps / 1000) if run else None
    transitions = reweight.count_transitions(shifted_phi(angles[:, 0]), PHI_NEGATIVE_CORE,
                                             PHI_POSITIVE_CORE)
    profile = reweight.reweighted_profile(phi, w, bins=bins, temperature=temperature_K,
                                          periodic=True)
    positive = (shifted_phi(phi) > 0.0)
    summary = dict(run or {})
    summary.update({
        "frames": int(len(steps)),
        "phi_transitions": int(transitions),
        "phi_transitions_per_ns": (transitions / simulated_ns) if simulated_ns else None,
        "fraction_frames_phi_positive": float(positive.mean()),
        "reweighted_fraction_phi_positive": float(w[positive].sum()),
        "effective_sample_size": float(profile.effective_sample_size),
    })
    if positive.any() and (~positive).any():
        diff = reweight.free_energy_difference(
            shifted_phi(phi), w, temperature_K, (-2 * math.pi, 0.0), (0.0, PHI_SHIFT_ABOVE))
        summary["delta_f_phi_positive_minus_negative_kJmol"] = float(diff.delta_f)
        summary["delta_f_error_kJmol"] = float(diff.error)
    else:
        summary["delta_f_phi_positive_minus_negative_kJmol"] = None
    reference_profile = None
    if reference is not None:
        reference_profile = reweight.reweighted_profile(reference, None, bins=bins,
                                                        temperature=temperature_K, periodic=True)
        a, b = profile.free_energy, reference_profile.free_energy
        # bins the reference samples well (F <= 15 kJ/mol, >= ~1/400 of the top bin's
        # frames); sparser bins carry the reference's own noise
        both = np.isfinite(a) & np.isfinite(b) & (b <= REFERENCE_BIN_CEILING_KJMOL)
        if both.any():
            shift = np.mean(a[both] - b[both])
            summary["profile_rmse_vs_reference_kJmol"] = float(
                np.sqrt(np.mean((a[both] - b[both] - shift) ** 2)))
            summary["profile_bins_compared"] = int(both.sum())
        ref_pos = shifted_phi(reference) > 0
        summary["reference_delta_f_kJmol"] = (
            float(-MOLAR_GAS_CONSTANT_KJ * temperature_K * math.log(ref_pos.mean() / (1 - ref_pos.mean())))
            if ref_pos.any() else None)
    summary["figures"] = [str(reweight.plot_profile(
        profile, out / "phi_profile.png", labels=["phi (rad)"],
        title=f"reweighted phi profile ({summary.get('mode', 'run')})",
        reference=None if reference_profile is None else np.where(
            np.isfinite(reference_profile.free_energy), reference_profile.free_energy, np.nan)))]
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    return summary
