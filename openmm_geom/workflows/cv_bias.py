"""Biased OpenMM runs of a peptide along exported CVs, checkpointed, then reweighted.

:func:`run_biased` biases along the CVs of an exported module (``mode="cv"``), along the
backbone phi/psi (``"phipsi"``, the ideal CVs of capped alanine, as a reference), or not at
all (``"unbiased"``), with one of three methods (``BiasSettings.method``): well-tempered
metadynamics (``"metad"``) or OPES (``"opes"``), both through the native ``TorchCVForce``, or
OpenMM's own ``openmm.app.Metadynamics`` on phi/psi as ``CustomTorsionForce`` s
(``"app-metad"``, phipsi only: an independent cross-check of the other two). It writes:

- ``bias_log.csv``: the bias time series (step, time, every CV, V(s,t), and c(t) for
  metadynamics or log Z for OPES);
- ``dihedrals.npz``: phi/psi (radians) at the logged steps;
- ``checkpoint.chk`` + ``<method>_state.npz`` every ``checkpoint_ps``: a killed run resumes
  where it stopped, with the same bias and log (rows after the checkpoint are discarded);
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
from ..io import atomic_write_bytes, write_json
from ..units import MOLAR_GAS_CONSTANT_KJ
from ..analysis.peptide import (PHI_NEGATIVE_CORE, PHI_POSITIVE_CORE, PHI_SHIFT_ABOVE,
                               backbone_dihedrals, phi_psi_quadruplets, shifted_phi)
from .config import BiasSettings

__all__ = ["BiasSettings", "run_biased", "run_walkers", "analyse_run", "analyse_walkers", "reference_phi", "run_weights",
           "compare_runs", "pooled_delta_f", "app_metad_delta_f",
           "STATE_FILES"]

REFERENCE_BIN_CEILING_KJMOL = 15.0
#: The bias state written next to ``checkpoint.chk``, per method.
STATE_FILES = {"metad": "metad_state.npz", "opes": "opes_state.npz",
               "app-metad": "app_metad_state.npz"}
APP_METAD_GRID_POINTS = 61


def _alanine_system(pdb):
    import openmm.app as app

    forcefield = app.ForceField("amber14-all.xml")
    return forcefield.createSystem(pdb.topology, nonbondedMethod=app.NoCutoff,
                                   constraints=app.HBonds)


def _phi_psi(positions: np.ndarray, quads: np.ndarray) -> np.ndarray:
    from ..analysis.free_energy import dihedrals

    return dihedrals(positions[None], quads)[0]


def _cv_walls(metadata, settings: BiasSettings) -> str:
    """The Lepton expression of the learned CVs' walls ("" without walls): for each CV,
    ``W ((s - max)/std)^2`` above its training maximum and ``W ((min - s)/std)^2`` below its
    minimum (``cv_statistics`` of the model file), zero inside the training range."""
    if settings.cv_walls_kJmol is None:
        return ""
    stats = (metadata.extra or {}).get("cv_statistics") or {}
    terms = []
    for name in metadata.cv_names:
        s = stats[name]
        w, std, low, high = (float(x) for x in (settings.cv_walls_kJmol, s["std"], s["min"],
                                                s["max"]))
        terms.append(f"{w!r}*(max(0, {name} - ({high!r}))/{std!r})^2"
                     f" + {w!r}*(max(0, ({low!r}) - {name})/{std!r})^2")
    return " + ".join(terms)


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


class _AppMetadynamics:
    """OpenMM's own ``openmm.app.Metadynamics`` on phi/psi, logged and checkpointed like ours.

    The CVs are two ``CustomTorsionForce`` s (``theta``), periodic on a 61-point grid over
    (-pi, pi] with OpenMM's hill deposition (``app.Metadynamics.step``). Every ``log_interval``
    steps a row ``step, time_ps, phi, psi, bias_kJmol, c_t_kJmol`` is appended to the log:
    ``bias_kJmol`` is the energy of the bias force at that frame and ``c_t_kJmol`` the
    Tiwary-Parrinello offset of the grid, both after a hill deposited at the same step. The
    state file holds the bias grid (``app.Metadynamics`` keeps it in ``_selfBias`` and
    ``_totalBias``; restoring sets both and refreshes its tabulated function).
    """

    def __init__(self, system, quads, settings: BiasSettings, log: Path, log_interval: int):
        import openmm
        import openmm.app as app
        import openmm.unit as unit

        variables = []
        for quad in quads:
            torsion = openmm.CustomTorsionForce("theta")
            torsion.addTorsion(*[int(i) for i in quad])
            variables.append(app.BiasVariable(torsion, -math.pi, math.pi, settings.phipsi_width,
                                              True, APP_METAD_GRID_POINTS))
        self.settings = settings
        self.frequency = settings.steps(settings.deposit_ps)
        self.meta = app.Metadynamics(system, variables, settings.temperature_K * unit.kelvin,
                                     settings.bias_factor,
                                     settings.height_kJmol * unit.kilojoule_per_mole,
                                     self.frequency)
        self.kT = MOLAR_GAS_CONSTANT_KJ * settings.temperature_K
        self.delta_kT = self.kT * (settings.bias_factor - 1.0)
        self.log, self.log_interval = Path(log), log_interval
        self.group = self.meta._force.getForceGroup()

    _count = 0

    @property
    def hills(self) -> int:
        """Hills deposited so far (this run and the runs it resumed)."""
        return self._count

    def reweighting_offset(self) -> float:
        """c(t) of the grid: periodic axes, the duplicated end point left out."""
        from scipy.special import logsumexp

        values = np.asarray(self.meta._totalBias)[:-1, :-1].ravel()
        return float(self.kT * (logsumexp(self.settings.bias_factor * values / self.delta_kT)
                                - logsumexp(values / self.delta_kT)))

    def step(self, simulation, steps: int) -> None:
        import openmm.unit as unit

        done = 0
        while done < steps:
            n = min(steps - done, self.frequency - simulation.currentStep % self.frequency)
            self.meta.step(simulation, n)
            done += n
            if simulation.currentStep % self.frequency == 0:
                self._count += 1
        if simulation.currentStep % self.log_interval == 0:
            cvs = self.meta.getCollectiveVariables(simulation)
            energy = simulation.context.getState(getEnergy=True, groups={self.group})
            bias = energy.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
            new = not self.log.exists() or self.log.stat().st_size == 0
            with open(self.log, "a") as handle:
                if new:
                    handle.write("step,time_ps,phi,psi,bias_kJmol,c_t_kJmol\n")
                time_ps = simulation.currentStep * self.settings.timestep_fs / 1000.0
                handle.write(f"{simulation.currentStep},{time_ps!r},{float(cvs[0])!r},"
                             f"{float(cvs[1])!r},{bias!r},{self.reweighting_offset()!r}\n")

    def _description(self) -> dict:
        keys = ("temperature_K", "bias_factor", "height_kJmol", "deposit_ps", "phipsi_width",
                "timestep_fs")
        return {key: getattr(self.settings, key) for key in keys}

    def save_state(self, path: Path, context) -> None:
        meta = {"step": int(context.getStepCount()), "hills": self._count, **self._description()}
        buffer = io.BytesIO()
        np.savez(buffer, meta=np.array(json.dumps(meta)), bias=self.meta._selfBias)
        atomic_write_bytes(path, buffer.getvalue())

    def load_state(self, path: Path, context) -> None:
        with np.load(path) as data:
            meta, bias = json.loads(str(data["meta"])), np.array(data["bias"])
        mine = self._description()
        different = [k for k in mine if meta.get(k) != mine[k]]
        if different:
            raise ValueError(f"{path} was written with other settings: " + "; ".join(
                f"{k}: saved {meta.get(k)!r}, here {mine[k]!r}" for k in different))
        if meta["step"] != context.getStepCount():
            raise ValueError(f"{path} was saved at step {meta['step']} but the checkpoint is at "
                             f"step {context.getStepCount()}")
        self.meta._selfBias = bias.copy()
        self.meta._totalBias = bias.copy()
        widths = [APP_METAD_GRID_POINTS] * 2
        self.meta._table.setFunctionParameters(*widths, bias.flatten(), *self.meta._limits)
        self.meta._force.updateParametersInContext(context)
        self._count = int(meta["hills"])
        _truncate_csv(self.log, meta["step"])


def _truncate_csv(path: Path, last_step: int) -> None:
    """Drop the rows of a CSV log (first column: step) after ``last_step``."""
    if not path.exists():
        return
    lines = path.read_text().splitlines(keepends=True)
    kept = [line for i, line in enumerate(lines)
            if i == 0 or not line.strip() or not line.split(",")[0].strip().isdigit()
            or int(line.split(",")[0]) <= last_step]
    if len(kept) != len(lines) or (lines and not lines[-1].endswith("\n")):
        if kept and not kept[-1].endswith("\n"):
            kept = kept[:-1]
        atomic_write_bytes(path, "".join(kept).encode())


def _opes_bias(system, model, settings: BiasSettings, sigma, log: Path, log_steps: int,
               walls: str = ""):
    """The OPES object of ``openmm_geom.openmm`` for these settings."""
    import openmm.unit as unit

    from ..openmm import OPES

    return OPES(system, model, settings.temperature_K * unit.kelvin,
                settings.opes_barrier_kJmol * unit.kilojoule_per_mole,
                settings.steps(settings.opes_pace_ps),
                sigma=None if settings.opes_adaptive_sigma else sigma,
                explore=settings.opes_explore,
                compression_threshold=settings.opes_compression_threshold, log=log,
                log_interval=log_steps, extra_energy=walls)


def _check_request(mode: str, cv_model, settings: BiasSettings) -> None:
    """Every refusal of :func:`run_biased` that needs no file, before anything is written."""
    if mode not in ("cv", "phipsi", "unbiased"):
        raise ValueError(f"mode must be 'cv', 'phipsi' or 'unbiased', got {mode!r}")
    method = settings.method
    if method == "app-metad" and mode == "cv":
        raise ValueError("method 'app-metad' (openmm.app.Metadynamics on CustomTorsionForce "
                         "phi/psi) runs in mode 'phipsi' only; bias learned CVs with 'metad' "
                         "or 'opes'")
    if mode == "cv" and cv_model is None:
        raise ValueError("mode 'cv' needs the exported CV file (cv_model)")
    if mode != "cv" and settings.cv_walls_kJmol is not None:
        raise ValueError("walls (cv_walls_kJmol) hold learned CVs in their training range; "
                         f"mode {mode!r} has no learned CVs")
    if settings.walkers > 1:
        if mode == "unbiased" or method == "app-metad":
            raise ValueError("multiple walkers share a bias of method 'metad' or 'opes' "
                             f"(--walkers {settings.walkers} with mode {mode!r}, method "
                             f"{method!r})")
        if method == "opes" and settings.opes_adaptive_sigma:
            raise ValueError("multiple OPES walkers need fixed kernel widths (the adaptive "
                             "sigma is one walker's running variance): add "
                             "--no-opes-adaptive-sigma")
        pace = settings.steps(settings.opes_pace_ps if method == "opes" else settings.deposit_ps)
        exchange = settings.steps(settings.exchange_ps)
        if exchange % pace:
            raise ValueError(f"--exchange-ps {settings.exchange_ps:g} ({exchange} steps) must be "
                             f"a multiple of the deposition time ({pace} steps)")


class _BiasedRun:
    """One simulation of :func:`run_biased` (or one walker of several), ready to step."""

    def __init__(self, pdb_path, out, mode: str, cv_model, settings: BiasSettings, seed: int,
                 threads: Optional[int], resume: bool, walker_index: Optional[int] = None,
                 ledger=None):
        import openmm
        import openmm.app as app
        import openmm.unit as unit

        from ..export import export_model
        from ..models import Dihedrals
        from ..openmm import ExportedModel, GridAxis, Metadynamics
        from ..openmm.walkers import Walker
        from ..threads import cpu_platform_properties, set_threads

        method = settings.method
        out = Path(out)
        self.out, self.mode, self.method, self.settings, self.seed = out, mode, method, settings, seed
        self.checkpoint, self.series_file = out / "checkpoint.chk", out / "dihedrals.npz"
        self.state_file = out / STATE_FILES[method]
        if resume and self.checkpoint.exists() and self.series_file.exists() \
                and mode != "unbiased" and not self.state_file.exists():
            others = [name for m, name in STATE_FILES.items() if (out / name).exists()]
            raise ValueError(f"{out} holds a checkpoint of another run ({', '.join(others) or 'no bias state'}"
                             f"), not of method {method!r}; use another --out or --restart")
        self.n_threads = set_threads(threads)
        pdb = app.PDBFile(str(pdb_path))
        system = _alanine_system(pdb)
        self.quads = quads = phi_psi_quadruplets(pdb.topology)
        temperature = settings.temperature_K * unit.kelvin
        meta = None
        walls = ""
        self.log_steps = log_steps = settings.steps(settings.log_ps)
        if mode == "cv":
            # read once; the bias takes it as it is (TorchScript, or an AOTInductor package)
            model = ExportedModel.load(cv_model, allow_package=True)
            model.require_kind("cv", "a biased run along learned CVs")
            model.check_atom_count(system.getNumParticles())
            axes = _learned_axes(model.metadata, settings)
            walls = _cv_walls(model.metadata, settings)
        elif mode == "phipsi" and method != "app-metad":
            out.mkdir(parents=True, exist_ok=True)
            model_path = out / "phi_psi.pt"
            if model_path.exists():
                model = ExportedModel.load(model_path)
            else:
                model = export_model(Dihedrals(quads), model_path, kind="cv", length_unit="nm",
                                     periodic=False, example_positions=pdb.positions,
                                     cv_names=["phi", "psi"])
            axes = [GridAxis(name, -math.pi, math.pi, width=settings.phipsi_width, periodic=True,
                             points=61) for name in ("phi", "psi")]
        out.mkdir(parents=True, exist_ok=True)
        if mode != "unbiased":
            if method == "metad":
                meta = Metadynamics(system, model, axes, temperature, settings.bias_factor,
                                    settings.height_kJmol, settings.steps(settings.deposit_ps),
                                    method=settings.metad_storage, log=out / "bias_log.csv",
                                    log_interval=log_steps, force_group=5, extra_energy=walls)
            elif method == "opes":
                meta = _opes_bias(system, model, settings, [axis.width for axis in axes],
                                  out / "bias_log.csv", log_steps, walls)
            else:
                meta = _AppMetadynamics(system, quads, settings, out / "bias_log.csv", log_steps)
        self.meta = meta
        integrator = openmm.LangevinMiddleIntegrator(
            temperature, settings.friction_per_ps / unit.picosecond,
            settings.timestep_fs * unit.femtosecond)
        integrator.setRandomNumberSeed(openmm_seed(seed))
        self.simulation = simulation = app.Simulation(
            pdb.topology, system, integrator, openmm.Platform.getPlatformByName("CPU"),
            cpu_platform_properties(self.n_threads))
        self.walker = None
        if walker_index is not None:
            self.walker = Walker(walker_index, simulation, meta, ledger,
                                 settings.steps(settings.exchange_ps), log=out / "exchanges.csv")
        self.steps_series, self.angles = [], []
        self.resumed = resume and self.checkpoint.exists() and self.series_file.exists()
        if self.resumed:
            if self.walker is not None:
                self.walker.resume(self.checkpoint, self.state_file)
            else:
                simulation.loadCheckpoint(str(self.checkpoint))
                if meta is not None:
                    meta.load_state(self.state_file, simulation.context)
            with np.load(self.series_file) as data:
                keep = data["step"] <= simulation.currentStep
                self.steps_series = list(data["step"][keep])
                self.angles = list(data["phi_psi"][keep])
        else:
            for stale in ("bias_log.csv", "exchanges.csv"):
                if (out / stale).exists():
                    (out / stale).unlink()  # a fresh run (--restart) starts fresh logs
            simulation.context.setPositions(pdb.positions)
            simulation.minimizeEnergy()
            simulation.context.setVelocitiesToTemperature(temperature, openmm_seed(seed))
        self.start_step = simulation.currentStep
        self.started = time.perf_counter()

    def advance(self, steps: int, bar=None) -> None:
        """``steps`` more steps, a phi/psi frame every ``log_ps`` (checked for a blow-up)."""
        import openmm.unit as unit

        simulation, log_steps = self.simulation, self.log_steps
        target = simulation.currentStep + steps
        while simulation.currentStep < target:
            n = min(log_steps - simulation.currentStep % log_steps,
                    target - simulation.currentStep)
            if self.walker is not None:
                self.walker.advance(n)
            elif self.meta is not None:
                self.meta.step(simulation, n)
            else:
                simulation.step(n)
            if simulation.currentStep % log_steps == 0:
                state = simulation.context.getState(getPositions=True, getEnergy=True)
                positions = state.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
                _check_sane(state, positions, simulation.currentStep, self.settings)
                self.steps_series.append(simulation.currentStep)
                self.angles.append(_phi_psi(positions, self.quads))
            if bar is not None:
                bar.update(n)

    def save(self) -> None:
        """The frames, then the checkpoint and bias state (a walker: the ledger first)."""
        _save_series(self.series_file, self.steps_series, self.angles)
        if self.walker is not None:
            self.walker.checkpoint(self.checkpoint, self.state_file)
            return
        self.simulation.saveCheckpoint(str(self.checkpoint))
        if self.meta is not None:
            self.meta.save_state(self.state_file, self.simulation.context)

    def record(self, total: int) -> dict:
        from ..openmm import Metadynamics

        elapsed = time.perf_counter() - self.started
        ran = self.simulation.currentStep - self.start_step
        settings = self.settings
        return {"mode": self.mode, "method": None if self.mode == "unbiased" else self.method,
                "steps": total, "simulated_ps": total * settings.timestep_fs / 1000,
                "resumed": bool(self.resumed), "threads": self.n_threads,
                "ns_per_day": (ran * settings.timestep_fs * 1e-6) / (elapsed / 86400) if ran else None,
                "hills": _kernel_count(self.meta),
                "metad_storage": self.meta.method if isinstance(self.meta, Metadynamics) else None,
                "settings": dataclasses.asdict(settings), "seed": self.seed}


def _chunk_steps(settings: BiasSettings, log_steps: int) -> int:
    """Steps between checkpoints: a multiple of the frame interval (and of the exchange
    interval with multiple walkers)."""
    chunk = settings.steps(settings.checkpoint_ps)
    unit_steps = log_steps
    if settings.walkers > 1:
        unit_steps = math.lcm(log_steps, settings.steps(settings.exchange_ps))
    return max(unit_steps, chunk - chunk % unit_steps)


def run_biased(pdb_path, out, *, mode: str = "cv", cv_model=None,
               settings: Optional[BiasSettings] = None, seed: int = 1,
               threads: Optional[int] = None, progress: bool = True,
               resume: bool = True, runner=None) -> dict:
    """Run (or resume) a biased simulation and analyse it; returns the summary.

    Parameters
    ----------
    pdb_path : PDB of the peptide (capped alanine for the phi analysis)
    out : directory for the outputs (see module docstring)
    mode : "cv" (bias ``cv_model``'s CVs), "phipsi", or "unbiased"
    cv_model : exported CV file (``mode="cv"``)
    settings : BiasSettings; ``settings.method`` picks metadynamics ("metad"), OPES ("opes")
        or OpenMM's ``app.Metadynamics`` ("app-metad", phipsi only); ``settings.walkers`` > 1
        runs that many walkers sharing one bias (:func:`run_walkers`)
    runner : :class:`openmm_geom.parallel.TaskRunner`, optional
        Multiple walkers only: run each walker as a task on its cluster (default: in this
        process, in turn)
    """

    settings = settings or BiasSettings()
    _check_request(mode, cv_model, settings)
    if settings.walkers > 1:
        return run_walkers(pdb_path, out, mode=mode, cv_model=cv_model, settings=settings,
                           seed=seed, threads=threads, progress=progress, resume=resume,
                           runner=runner)
    run = _BiasedRun(pdb_path, out, mode, cv_model, settings, seed, threads, resume)
    return analyse_run(out, settings.temperature_K,
                       run=_run_to_end(run, f"{mode} run", progress))


def _run_to_end(run: _BiasedRun, label: str, progress: bool) -> dict:
    """Step ``run`` to ``settings.picoseconds``, saving it every checkpoint interval; its
    record."""
    from ..progress import progress_bar

    total = run.settings.steps(run.settings.picoseconds)
    chunk = _chunk_steps(run.settings, run.log_steps)
    with progress_bar(total, label, enabled=progress, unit="step") as bar:
        bar.update(run.simulation.currentStep)
        while run.simulation.currentStep < total:
            run.advance(min(total, run.simulation.currentStep + chunk)
                        - run.simulation.currentStep, bar)
            run.save()
    return run.record(total)


def _walker_task(pdb_path, out, mode, cv_model, settings, seed, threads, resume, index,
                 ledger, progress) -> dict:
    """One walker of :func:`run_walkers`, to its end (a task on a cluster)."""
    run = _BiasedRun(pdb_path, out, mode, cv_model, settings, seed, threads, resume,
                     walker_index=index, ledger=ledger)
    return _run_to_end(run, f"walker {index}", progress)


def run_walkers(pdb_path, out, *, mode: str = "cv", cv_model=None,
                settings: Optional[BiasSettings] = None, seed: int = 1,
                threads: Optional[int] = None, progress: bool = True, resume: bool = True,
                runner=None) -> dict:
    """``settings.walkers`` simulations sharing one metadynamics or OPES bias
    (:mod:`openmm_geom.openmm.walkers`), then the analysis of their pooled frames.

    Walker ``i`` starts from the same structure with seed ``seed + i`` and writes what a
    single run writes into ``out/walker-i`` (plus ``exchanges.csv``); the shared depositions
    are saved in ``out/ledger.npz`` at every checkpoint. Without ``runner`` (or with a runner
    without a cluster) the walkers run in this process, one exchange interval at a time in
    turn (deterministic); with a cluster each walker is a task and the ledger a Dask actor.
    ``out/summary.json``: the pooled frames' phi transitions, dF(phi > 0 - phi < 0) with a
    block error, and every walker's own summary.
    """
    from ..openmm.walkers import DepositionLedger
    from ..parallel import Task, TaskRunner
    from ..progress import progress_bar

    settings = settings or BiasSettings()
    _check_request(mode, cv_model, settings)
    out = Path(out)
    count = settings.walkers
    directories = [out / f"walker-{i}" for i in range(count)]
    ledger_path = out / "ledger.npz"
    width = _deposition_width(mode, cv_model, settings)  # reads (and checks) the CV file
    if not resume:
        for stale in [ledger_path] + [d / "checkpoint.chk" for d in directories]:
            if stale.exists():
                stale.unlink()
    runner = runner if runner is not None else TaskRunner(None)
    with runner:
        if runner.client is None:
            runs = []
            ledger = DepositionLedger(width, ledger_path)
            for i, directory in enumerate(directories):
                runs.append(_BiasedRun(pdb_path, directory, mode, cv_model, settings,
                                       seed + i, threads, resume, walker_index=i,
                                       ledger=ledger))
            total = settings.steps(settings.picoseconds)
            chunk = _chunk_steps(settings, runs[0].log_steps)
            interval = settings.steps(settings.exchange_ps)
            with progress_bar(count * total, f"{count} walkers", enabled=progress,
                              unit="step") as bar:
                bar.update(sum(r.simulation.currentStep for r in runs))
                while any(r.simulation.currentStep < total for r in runs):
                    for run in runs:  # one exchange interval each, in turn
                        step = run.simulation.currentStep
                        if step < total:
                            run.advance(min(total, step + interval - step % interval) - step,
                                        bar)
                            if run.simulation.currentStep % chunk == 0 \
                                    or run.simulation.currentStep == total:
                                run.save()
            records = [run.record(total) for run in runs]
        else:
            out.mkdir(parents=True, exist_ok=True)
            ledger = runner.shared(DepositionLedger, width, str(ledger_path))
            tasks = [Task(f"walker-{i}", (str(pdb_path), str(d), mode,
                                          None if cv_model is None else str(cv_model), settings,
                                          seed + i, runner.threads, resume, i, ledger, False))
                     for i, d in enumerate(directories)]
            records = runner.run(_walker_task, tasks, log_dir=out / "logs", progress=progress,
                                 description=f"{count} walkers")
    return analyse_walkers(out, settings.temperature_K, records)


def _deposition_width(mode: str, cv_model, settings: BiasSettings) -> int:
    """Numbers per deposition row of the bias :func:`run_walkers` builds."""
    if mode == "cv":
        from ..openmm import ExportedModel

        k = len(ExportedModel.load(cv_model, allow_package=True).metadata.cv_names)
    else:
        k = 2  # phi, psi
    return k + 1 if settings.method == "metad" else 2 * k + 2


def analyse_walkers(out, temperature_K: float, records: Sequence[dict], *, bins: int = 36) -> dict:
    """The pooled analysis of :func:`run_walkers`: every walker's :func:`analyse_run`, then
    their frames together (each walker's weights normalised to 1, the bias being shared):
    phi transitions, dF(phi > 0 - phi < 0) with a block error, the reweighted phi profile
    (``phi_profile.png``). Writes and returns ``out/summary.json``."""
    from ..analysis import reweight

    out = Path(out)
    walkers, phis, weights = [], [], []
    for i, record in enumerate(records):
        directory = out / f"walker-{i}"
        walkers.append(analyse_run(directory, temperature_K, run=record))
        _, angles, w = run_weights(directory, temperature_K, record["method"])
        phis.append(angles[:, 0])
        weights.append(w)
    phi, w = np.concatenate(phis), np.concatenate(weights)
    w = w / w.sum()
    summary = {"walkers": len(records), "method": records[0]["method"],
               "mode": records[0]["mode"], "frames": int(len(phi)),
               "simulated_ps_total": float(sum(r["simulated_ps"] for r in records)),
               "phi_transitions": int(sum(s["phi_transitions"] for s in walkers)),
               "settings": records[0]["settings"]}
    positive = shifted_phi(phi) > 0.0
    if positive.any() and (~positive).any():
        diff = reweight.free_energy_difference(
            shifted_phi(phi), w, temperature_K, (-2 * math.pi, 0.0), (0.0, PHI_SHIFT_ABOVE))
        summary["delta_f_phi_positive_minus_negative_kJmol"] = float(diff.delta_f)
        summary["delta_f_error_kJmol"] = float(diff.error)
    else:
        summary["delta_f_phi_positive_minus_negative_kJmol"] = None
    profile = reweight.reweighted_profile(phi, w, bins=bins, temperature=temperature_K,
                                          periodic=True)
    summary["figures"] = [str(reweight.plot_profile(
        profile, out / "phi_profile.png", labels=["phi (rad)"],
        title=f"reweighted phi profile, {len(records)} walkers"))]
    summary["per_walker"] = walkers
    write_json(out / "summary.json", summary)
    return summary


def _kernel_count(bias) -> Optional[int]:
    """Hills (metadynamics) or compressed kernels (OPES) of a bias; None without one."""
    if bias is None:
        return None
    count = getattr(bias, "n_kernels", None)  # OPES: the compressed kernels
    if count is None:
        count = len(bias.hills) if not isinstance(bias.hills, int) else bias.hills
    return int(count)


def _check_sane(state, positions: np.ndarray, step: int, settings: BiasSettings) -> None:
    import openmm.unit as unit

    energy = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    if not math.isfinite(energy) or not np.isfinite(positions).all():
        raise SimulationBlowUp(f"step {step}: non-finite potential energy ({energy}) or "
                               "coordinates; lower the timestep or the hill height")
    extent = float(np.ptp(positions, axis=0).max())
    if extent > 5.0:  # a 22-atom peptide spans ~1 nm; 5 nm means it came apart
        if settings.method == "opes" and settings.opes_adaptive_sigma:
            remedy = ("OPES kernels too narrow for the CV (adaptive sigma follows the CV's "
                      "fluctuation; fix wider kernels with --no-opes-adaptive-sigma "
                      "--width-fraction 0.5 or more)")
        elif settings.method == "opes":
            remedy = "OPES kernels too narrow for the CV (a larger --width-fraction)"
        else:
            remedy = "lower the hill height or widen the hills, --width-fraction"
        raise SimulationBlowUp(f"step {step}: the molecule spans {extent:.1f} nm (bonds broke); "
                               f"a steep bias ({remedy}) or too long a timestep. Checkpoints "
                               "and series saved before this step are kept")


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


def _run_method(out: Path, run: Optional[dict]) -> Optional[str]:
    """The bias method of the run in ``out``: from ``run``, else from the state file present."""
    if run and "method" in run:
        return run["method"]
    present = [m for m, name in STATE_FILES.items() if (out / name).exists()]
    if len(present) > 1:
        raise ValueError(f"{out} holds the bias states of several methods ({present}); pass "
                         "the method")
    return present[0] if present else ("metad" if (out / "bias_log.csv").exists() else None)


def run_weights(out, temperature_K: float, method: Optional[str] = None):
    """The logged steps, phi/psi (radians) and normalised frame weights of a run in ``out``.

    ``method`` (default: inferred from the bias state file present): ``"metad"`` and
    ``"app-metad"`` weigh frames by ``exp((V - c(t))/kT)``, ``"opes"`` by ``exp(V/kT)``;
    None (an unbiased run, no ``bias_log.csv``): equal weights.

    Returns
    -------
    (numpy.ndarray (T,) int, numpy.ndarray (T, 2), numpy.ndarray (T,))
    """
    from ..analysis import reweight

    out = Path(out)
    method = method if method is not None else _run_method(out, None)
    with np.load(out / "dihedrals.npz") as data:
        steps, angles = data["step"], data["phi_psi"]
    weights = np.full(len(steps), 1.0 / max(len(steps), 1))
    if method is None or not (out / "bias_log.csv").exists():
        return steps, angles, weights
    log = reweight.load_bias_log(out / "bias_log.csv", partial_last_line="drop")
    index = {int(s): i for i, s in enumerate(log.step)}
    missing = [int(s) for s in steps if int(s) not in index]
    if missing:
        raise ValueError(f"bias log lacks {len(missing)} logged steps (first {missing[0]})")
    rows = np.array([index[int(s)] for s in steps], dtype=np.int64)
    if method == "opes":
        weights = reweight.opes_weights(log.bias_kJmol[rows], temperature_K)
    else:
        if log.c_t_kJmol is None:
            raise ValueError(f"{out / 'bias_log.csv'} has no c_t_kJmol column: not a "
                             f"metadynamics log (method {method!r})")
        weights = reweight.metad_weights(log.bias_kJmol[rows], log.c_t_kJmol[rows], temperature_K)
    return steps, angles, weights


def analyse_run(out, temperature_K: float, *, run: Optional[dict] = None,
                reference: Optional[np.ndarray] = None, bins: int = 36,
                discard_fraction: float = 0.0, method: Optional[str] = None,
                timestep_fs: Optional[float] = None, tolerance_kJmol: float = 1.0,
                error_threshold_kJmol: float = 1.0) -> dict:
    """Transitions, reweighted phi profile and basin free-energy difference of a finished run.

    Frames are weighted by the run's method (:func:`run_weights`). ``reference``: phi of a
    long unbiased reference (radians) to compare the profile with, on the bins both populate
    where the reference's free energy is at most 15 kJ/mol (profiles aligned by their mean
    over those bins). The summary's ``convergence`` holds dF(phi > 0 - phi < 0) on 20 growing
    prefixes of the run with Flyvbjerg-Petersen block errors
    (:func:`openmm_geom.analysis.reweight.delta_f_convergence`) and the time from which it
    stays within ``tolerance_kJmol`` of the final value with a block error at most
    ``error_threshold_kJmol``; ``convergence.png`` draws it. ``timestep_fs`` (default: from
    ``run``, else 2 fs) converts steps to time.
    """
    from ..analysis import reweight

    out = Path(out)
    method = method if method is not None else _run_method(out, run)
    steps, angles, weights = run_weights(out, temperature_K, method)
    keep = slice(int(discard_fraction * len(steps)), None)
    phi = angles[keep, 0]
    w = weights[keep] / weights[keep].sum()
    if timestep_fs is None:
        timestep_fs = float(run["settings"]["timestep_fs"]) if run else 2.0
    timestep_ps = float(timestep_fs) / 1000
    simulated_ns = steps[-1] * timestep_ps / 1000
    transitions = reweight.count_transitions(shifted_phi(angles[:, 0]), PHI_NEGATIVE_CORE,
                                             PHI_POSITIVE_CORE)
    profile = reweight.reweighted_profile(phi, w, bins=bins, temperature=temperature_K,
                                          periodic=True)
    positive = (shifted_phi(phi) > 0.0)
    summary = dict(run or {})
    summary.update({
        "method": method,
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
        time_ns = steps[keep] * timestep_ps / 1000
        if len(phi) >= 40:
            convergence = reweight.delta_f_convergence(
                shifted_phi(phi), w, temperature_K, (-2 * math.pi, 0.0), (0.0, PHI_SHIFT_ABOVE),
                time_ns, tolerance_kJmol=tolerance_kJmol,
                error_threshold_kJmol=error_threshold_kJmol)
            summary["delta_f_block_error_kJmol"] = convergence.final_error
            summary["time_to_converge_ns"] = convergence.time_to_converge_ns
            summary["convergence"] = convergence.as_dict()
            label = f"{method or 'unbiased'} ({summary.get('mode', 'run')})"
            reweight.plot_convergence({label: convergence}, out / "convergence.png",
                                      title=f"dF(phi>0 - phi<0), {label}")
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


def compare_runs(runs, path, temperature_K: float = 300.0, *,
                 reference: Optional[Sequence[float]] = None,
                 reference_label: str = "reference", tolerance_kJmol: float = 1.0,
                 error_threshold_kJmol: float = 1.0, points: int = 20,
                 discard_ns: float = 0.0) -> dict:
    """Compare finished (or checkpointed) runs: one row each and ``convergence.png``.

    Parameters
    ----------
    runs : mapping label -> run directory (from :func:`run_biased`)
        Each is weighted by its own method (:func:`run_weights`; the method comes from its
        ``summary.json``, else from its bias state file). A run still going, or stopped, is
        read up to its last checkpoint.
    path : output PNG: dF(phi > 0 - phi < 0) against simulated time for every run, with
        block-error bands (:func:`openmm_geom.analysis.reweight.plot_convergence`)
    temperature_K : float
    reference : (value, error) kJ/mol, optional
        Drawn as a band; each row then also gets ``time_to_reference_ns``: the time from which
        the run stays within ``tolerance_kJmol`` of the reference value with a block error
        at most ``error_threshold_kJmol``.
    tolerance_kJmol, error_threshold_kJmol, points : as in
        :func:`openmm_geom.analysis.reweight.delta_f_convergence`
    discard_ns : float
        Leave out the frames of the first ``discard_ns`` of every run (the transient while
        the bias is built) from every estimate; the time axis stays the run's.
        Transitions are counted over the whole run.

    Returns
    -------
    dict label -> row: ``method``, ``simulated_ns``, ``phi_transitions``,
    ``transitions_per_ns``, ``delta_f_kJmol``, ``block_error_kJmol``, ``plateau``,
    ``time_to_converge_ns``, ``time_to_reference_ns``, ``ns_per_day`` (from ``summary.json``;
    None for an unfinished run), ``convergence`` (the dF(t) series).
    """
    from ..analysis import reweight

    rows, curves = {}, {}
    regions = ((-2 * math.pi, 0.0), (0.0, PHI_SHIFT_ABOVE))
    for label, directory in runs.items():
        directory = Path(directory)
        summary_file = directory / "summary.json"
        summary = json.loads(summary_file.read_text()) if summary_file.exists() else {}
        method = summary.get("method") or _run_method(directory, None)
        steps, angles, weights = run_weights(directory, temperature_K, method)
        timestep_fs = float(summary.get("settings", {}).get("timestep_fs", 2.0))
        time_ns = steps * timestep_fs * 1e-6
        phi = shifted_phi(angles[:, 0])
        transitions = reweight.count_transitions(phi, PHI_NEGATIVE_CORE, PHI_POSITIVE_CORE)
        simulated_ns = float(time_ns[-1])
        if not 0 <= discard_ns < simulated_ns:
            raise ValueError(f"discard_ns must be >= 0 and below the run's length "
                             f"({simulated_ns:g} ns in {directory}), got {discard_ns}")
        kept = time_ns > discard_ns
        phi, weights, time_ns = phi[kept], weights[kept], time_ns[kept]
        conv = reweight.delta_f_convergence(phi, weights, temperature_K, *regions, time_ns,
                                            points=points, tolerance_kJmol=tolerance_kJmol,
                                            error_threshold_kJmol=error_threshold_kJmol)
        finished = bool(summary) and summary.get("frames") == len(steps)
        row = {"method": method, "directory": str(directory), "simulated_ns": simulated_ns,
               "discard_ns": float(discard_ns), "phi_transitions": int(transitions),
               "transitions_per_ns": float(transitions / simulated_ns),
               "delta_f_kJmol": conv.final, "block_error_kJmol": conv.final_error,
               "plateau": conv.plateau, "time_to_converge_ns": conv.time_to_converge_ns,
               "time_to_reference_ns": None,
               "ns_per_day": summary.get("ns_per_day") if finished else None,
               "convergence": conv.as_dict()}
        if reference is not None:
            row["time_to_reference_ns"] = reweight.delta_f_convergence(
                phi, weights, temperature_K, *regions, time_ns, points=points,
                tolerance_kJmol=tolerance_kJmol, error_threshold_kJmol=error_threshold_kJmol,
                target=float(reference[0])).time_to_converge_ns
        rows[label], curves[label] = row, conv
    reweight.plot_convergence(curves, path, reference=None if reference is None else
                              (float(reference[0]), float(reference[1])),
                              reference_label=reference_label,
                              title="dF(phi > 0 - phi < 0), capped alanine, 300 K")
    return rows


def pooled_delta_f(values: Sequence[float], errors: Sequence[float]) -> tuple:
    """Inverse-variance mean of independent dF estimates: ``(mean, error, chi2 per dof)``.

    ``chi2 per dof`` near 1 says the runs agree within their block errors; much above 1,
    the errors are too small (unconverged runs), and ``error`` then understates the spread.
    """
    v, e = np.asarray(values, dtype=float), np.asarray(errors, dtype=float)
    if v.size == 0 or v.shape != e.shape or not np.all(e > 0) or not np.all(np.isfinite(v)):
        raise ValueError("pooled_delta_f needs as many finite values as positive errors")
    w = 1.0 / e ** 2
    mean = float(np.sum(w * v) / np.sum(w))
    chi2 = float(np.sum(w * (v - mean) ** 2) / (v.size - 1)) if v.size > 1 else float("nan")
    return mean, float(1.0 / math.sqrt(np.sum(w))), chi2


def app_metad_delta_f(out, temperature_K: float, bias_factor: float) -> float:
    """dF(phi > 0 - phi < 0) from the final bias of an ``app-metad`` run, kJ/mol.

    ``F(phi, psi) = -gamma/(gamma - 1) V(phi, psi)`` on OpenMM's grid (its duplicated periodic
    end points left out), integrated over psi and over the two phi basins (phi after
    :func:`~openmm_geom.analysis.peptide.shifted_phi`: 0 <= phi < 2.2 rad against the rest).
    An estimate independent of the reweighting of frames (the bias itself), for a
    cross-check.
    """
    with np.load(Path(out) / STATE_FILES["app-metad"]) as data:
        bias = np.array(data["bias"])[:-1, :-1]  # (psi, phi)
    kT = MOLAR_GAS_CONSTANT_KJ * float(temperature_K)
    free = -bias_factor / (bias_factor - 1.0) * bias
    phi = shifted_phi(np.linspace(-math.pi, math.pi, bias.shape[1] + 1)[:-1])
    log_p = -(free - free.min()) / kT
    p_phi = np.exp(log_p).sum(axis=0)
    positive = (phi >= 0.0) & (phi < PHI_SHIFT_ABOVE)
    return float(-kT * math.log(p_phi[positive].sum() / p_phi[~positive].sum()))
