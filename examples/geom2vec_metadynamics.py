"""Well-tempered metadynamics of capped alanine along an exported geom2vec CV, in plain OpenMM.

The CV file (``openmm-geom cv export``) is a TorchScript module ``positions (nm) -> CVs``:
a geom2vec backbone, a token mixer and a VAMPnet head. :class:`openmm_geom.openmm.Metadynamics`
puts it into one ``TorchCVForce`` with a grid bias on its CVs; hill widths and grid ranges come
from the CV statistics on the training frames, stored in the file. ``CVReporter`` logs the CVs
the force computed, on the fly; afterwards the frames are reweighted (Tiwary-Parrinello c(t))
into a free-energy profile along phi, which the bias never saw.

Usage::

    python examples/geom2vec_metadynamics.py --cv cv.pt --steps 50000 --out g2v-metad
    python examples/geom2vec_metadynamics.py --steps 200 --out g2v-metad   # makes a CV first

``--cv`` takes the file of ``openmm-geom cv export`` (or ``cv reproduce``'s ``cv.pt``) for
capped alanine. Without it the script makes one in 10-20 s on one core: 40 ps of unbiased
MD, a tiny backbone (16 features, 1 layer) pretrained for a few epochs on a tiny denoising
corpus, featurization, a few epochs of VAMPnet training and export. That CV shows the
plumbing; it is not a good reaction coordinate (see ``openmm-geom cv reproduce`` for one).

The biased run evaluates the CV network at every step: about 300 steps/s on one core with the
tiny CV, so the default 50,000 steps (100 ps) take about 3 minutes. Outputs in ``--out``:
``bias.csv`` (step, time, CVs, V(s,t), c(t)), ``cvs.csv`` (CVReporter), ``state.csv``,
``trajectory.dcd``, ``metad_state.npz`` + ``checkpoint.chk`` (bias and simulation state at the
end) and ``phi_profile.png``.
"""
import argparse
import sys
import time
from pathlib import Path

import mdtraj
import numpy as np
import openmm
import openmm.app as app
import openmm.unit as unit

TEMPERATURE = 300 * unit.kelvin
TIMESTEP = 2 * unit.femtosecond
FRICTION = 1 / unit.picosecond


def alanine_system(pdb):
    return app.ForceField("amber14-all.xml").createSystem(
        pdb.topology, nonbondedMethod=app.NoCutoff, constraints=app.HBonds)


def make_cv(pdb, out: Path, seed: int, threads: int) -> Path:
    """A quick geom2vec VAMPnet CV exported for OpenMM: a demonstration, not a converged CV."""
    from openmm_geom.threads import cpu_platform_properties
    from openmm_geom.data import bundled
    from openmm_geom.data.corpus import build_corpus
    from openmm_geom.training.features import featurize
    from openmm_geom.models.geom2vec import TokenMap
    from openmm_geom.training.denoising import load_backbone, pretrain
    from openmm_geom.settings import override
    from openmm_geom.workflows.cv import VampSettings, export_cv, train_vamp

    work = out / "make_cv"
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    # 1. Unbiased MD: 400 frames 0.1 ps apart (300 to train on, the last 100 to validate).
    frames, interval = 400, 50  # 50 steps of 2 fs = 0.1 ps
    integrator = openmm.LangevinMiddleIntegrator(TEMPERATURE, FRICTION, TIMESTEP)
    integrator.setRandomNumberSeed(seed + 1000)
    simulation = app.Simulation(pdb.topology, alanine_system(pdb), integrator,
                                openmm.Platform.getPlatformByName("CPU"),
                                cpu_platform_properties(threads))
    simulation.context.setPositions(pdb.positions)
    simulation.minimizeEnergy()
    simulation.context.setVelocitiesToTemperature(TEMPERATURE, seed + 1000)
    simulation.step(2500)  # 5 ps equilibration
    positions = np.empty((frames, pdb.topology.getNumAtoms(), 3), dtype=np.float32)
    for i in range(frames):
        simulation.step(interval)
        state = simulation.context.getState(getPositions=True)
        positions[i] = state.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
    timestep_ps = interval * TIMESTEP.value_in_unit(unit.picosecond)
    md_seconds = time.perf_counter() - started
    print(f"[make CV] {frames} frames of unbiased MD ({frames * timestep_ps:.0f} ps) "
          f"in {md_seconds:.1f} s")

    # 2. A tiny backbone, denoising-pretrained briefly on a tiny corpus (small molecules from
    #    ASE's g2 set and the alanine PDB).
    t0 = time.perf_counter()
    build_corpus(work / "corpus.npz", ase_collections=("g2",),
                 pdbs=[bundled("alanine-dipeptide.pdb")], include_bundled=False,
                 include_openmm_data=False, md_pdbs=[], seed=seed, progress=False)
    backbone_hp = {"architecture": "et", "cutoff": 0.5, "hidden_channels": 16, "num_layers": 1,
                   "num_rbf": 8, "num_heads": 2, "seed": seed}
    pretrained = pretrain(work / "corpus.npz", backbone_hp, out=work / "backbone.pt", epochs=8,
                          batch_size=20, lr=2e-3, seed=seed, max_minutes=0.5, resume=False,
                          progress=False)
    losses = pretrained["history"]["validation_loss"]
    print(f"[make CV] backbone (ET, 16 features, 1 layer) pretrained for "
          f"{pretrained['epochs_completed']} epochs in {time.perf_counter() - t0:.1f} s: "
          f"denoising validation loss {losses[0]:.3f} -> {losses[-1]:.3f} "
          f"(predicting zero: {pretrained['zero_baseline_validation_loss']:.3f}); a toy backbone")

    # 3. Token features (one token per heavy atom) of the frozen backbone.
    t0 = time.perf_counter()
    featurizer, info = load_backbone(work / "backbone.pt")
    token_map = TokenMap.from_topology(pdb.topology, selection="heavy", tokens="atom")
    train, validate = (featurize(featurizer, token_map, [block], backbone_sha256=info["sha256"],
                                 timestep_ps=timestep_ps, progress=False)
                       for block in (positions[:300], positions[300:]))
    print(f"[make CV] featurized {frames} frames ({token_map.n_tokens} tokens) "
          f"in {time.perf_counter() - t0:.1f} s")

    # 4. A 2-CV VAMPnet (SubFormer mixer) at a 1 ps lag, then one TorchScript file for OpenMM.
    t0 = time.perf_counter()
    # (batch_size, max_epochs, validation_interval: fields of the settings' trainer)
    settings = override(VampSettings(), k=2, lag_ps=1.0, mixer="subformer", hidden=16,
                        batch_size=64, max_epochs=10, validation_interval=5)
    vamp = train_vamp(train, validate, work / "vamp", settings, seed=seed, progress=False)
    cv_path = out / "geom2vec_cv.pt"
    export_cv(work / "backbone.pt", vamp["checkpoint"], cv_path,
              pdb.getPositions(asNumpy=True).value_in_unit(unit.nanometer))
    print(f"[make CV] VAMPnet trained in {time.perf_counter() - t0:.1f} s: VAMP-2 "
          f"{vamp['vamp2_train']:.2f} (train), {vamp['vamp2_validation']:.2f} (validation); "
          f"exported {cv_path}")
    print(f"[make CV] done in {time.perf_counter() - started:.0f} s. A demonstration CV from "
          "40 ps of data and a toy backbone; pass --cv for a real one.")
    return cv_path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cv", type=Path,
                        help="exported CV file (openmm-geom cv export); default: make one here")
    parser.add_argument("--steps", type=int, default=50_000, help="2 fs steps of biased MD")
    parser.add_argument("--out", type=Path, default=Path("geom2vec-metad"))
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads for OpenMM and torch (default 1: a 22-atom system "
                             "gains little from more, and loses much on a busy machine)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)

    from openmm_geom import set_threads
    from openmm_geom.threads import cpu_platform_properties
    from openmm_geom.analysis import reweight
    from openmm_geom.data import bundled
    from openmm_geom.openmm import CVReporter, ExportedModel, GridAxis, Metadynamics

    threads = set_threads(args.threads)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    pdb = app.PDBFile(str(bundled("alanine-dipeptide.pdb")))
    cv_path = args.cv if args.cv is not None else make_cv(pdb, out, args.seed, threads)

    # The CV file says what it computes and on which scale (statistics on its training frames).
    # Loaded once here; Metadynamics below takes the loaded model without reading it again.
    cv_model = ExportedModel.load(cv_path)
    metadata = cv_model.metadata
    if metadata.kind != "cv":
        print(f"{cv_path} is a {metadata.kind}, not a CV module", file=sys.stderr)
        return 2
    cv_model.check_atom_count(pdb.topology.getNumAtoms())
    statistics = metadata.extra.get("cv_statistics")
    if not statistics:
        print(f"{cv_path} records no cv_statistics; export it with `openmm-geom cv export`",
              file=sys.stderr)
        return 2

    # One grid axis per CV: the training range widened by 75% of its span on each side, hills
    # a fifth of the CV's standard deviation wide.
    axes = []
    for name in metadata.cv_names:
        s = statistics[name]
        span = s["max"] - s["min"]
        axes.append(GridAxis(name, s["min"] - 0.75 * span, s["max"] + 0.75 * span,
                             width=0.2 * s["std"]))
        print(f"CV {name}: training range [{s['min']:.3f}, {s['max']:.3f}], std {s['std']:.3f}; "
              f"grid [{axes[-1].minimum:.3f}, {axes[-1].maximum:.3f}], hill width "
              f"{axes[-1].width:.3f}")

    # Reports every 0.1 ps and hills every 0.5 ps; a short run reports and deposits more often
    # so that it still has something to reweight.
    report = max(1, min(50, args.steps // 40))
    frequency = 5 * report

    system = alanine_system(pdb)
    meta = Metadynamics(system, cv_model, axes, TEMPERATURE, bias_factor=8.0, height=1.2,
                        frequency=frequency, log=out / "bias.csv", log_interval=report)
    integrator = openmm.LangevinMiddleIntegrator(TEMPERATURE, FRICTION, TIMESTEP)
    integrator.setRandomNumberSeed(args.seed)
    simulation = app.Simulation(pdb.topology, system, integrator,
                                openmm.Platform.getPlatformByName("CPU"),
                                cpu_platform_properties(threads))
    simulation.context.setPositions(pdb.positions)
    simulation.minimizeEnergy()
    simulation.context.setVelocitiesToTemperature(TEMPERATURE, args.seed)

    cv_log = CVReporter(str(out / "cvs.csv"), report, meta.force)
    simulation.reporters.append(cv_log)
    simulation.reporters.append(app.StateDataReporter(
        str(out / "state.csv"), report, step=True, time=True, potentialEnergy=True,
        temperature=True, speed=True))
    simulation.reporters.append(app.DCDReporter(str(out / "trajectory.dcd"), report))

    start = time.perf_counter()
    meta.step(simulation, args.steps)
    elapsed = time.perf_counter() - start
    cv_log.close()
    meta.save_state(out / "metad_state.npz", simulation.context)
    simulation.saveCheckpoint(str(out / "checkpoint.chk"))

    # Reweighting: phi of the DCD frames (same steps as the rows of bias.csv), weighted by
    # exp((V(s,t) - c(t))/kT).
    log = reweight.load_bias_log(out / "bias.csv")
    trajectory = mdtraj.load_dcd(str(out / "trajectory.dcd"),
                                 top=mdtraj.Topology.from_openmm(pdb.topology))
    if len(trajectory) != len(log):
        print(f"{len(trajectory)} frames in trajectory.dcd but {len(log)} rows in bias.csv",
              file=sys.stderr)
        return 1
    phi = mdtraj.compute_phi(trajectory)[1][:, 0]
    weights = reweight.metad_weights(log.bias_kJmol, log.c_t_kJmol, TEMPERATURE)
    profile = reweight.reweighted_profile(phi, weights, bins=36, temperature=TEMPERATURE,
                                          periodic=True)
    figure = reweight.plot_profile(
        profile, out / "phi_profile.png", labels=["phi (rad)"],
        title=f"phi, reweighted from metadynamics on {', '.join(metadata.cv_names)}")

    simulated_ps = args.steps * TIMESTEP.value_in_unit(unit.picosecond)
    energy = simulation.context.getState(getEnergy=True).getPotentialEnergy()
    print(f"\n{args.steps} steps ({simulated_ps:g} ps) in {elapsed:.1f} s on {threads} "
          f"thread(s): {args.steps / elapsed:.0f} steps/s, "
          f"{simulated_ps * 1e-3 / (elapsed / 86400):.1f} ns/day")
    largest = max((meta.bias_at(hill[:-1]) for hill in meta.hills), default=0.0)
    print(f"hills deposited: {len(meta.hills)} (every {frequency} steps), bias at the hill "
          f"centres up to {largest:.2f} kJ/mol; final potential energy "
          f"{energy.value_in_unit(unit.kilojoule_per_mole):.1f} kJ/mol")
    print(f"phi > 0 in {np.mean(phi > 0):.0%} of {len(phi)} frames (reweighted "
          f"{weights[phi > 0].sum():.0%}); effective sample size "
          f"{profile.effective_sample_size:.1f}")
    print("wrote " + ", ".join(str(out / name) for name in (
        "bias.csv", "cvs.csv", "state.csv", "trajectory.dcd", "metad_state.npz",
        "checkpoint.chk")) + f", {figure}" + ("" if args.cv else f", {cv_path}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
