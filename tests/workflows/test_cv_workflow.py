"""`openmm-geom cv` end to end on capped alanine made here with OpenMM (no shared data):
corpus -> pretrain -> featurize -> VAMPnet/SPIB -> export -> OpenMM (eager = exported, forces
vs finite differences) -> biased run with checkpoint/resume -> bad inputs."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from openmm_geom.data import bundled

HANG_GUARD = 900  # seconds; a hang guard, not a speed requirement
PDB = str(bundled("alanine-dipeptide.pdb"))


def _cli(*args, expect=0):
    run = subprocess.run([sys.executable, "-m", "openmm_geom.cli", *map(str, args), "--json",
                          "--no-progress", "--threads", "1"], capture_output=True, text=True,
                         timeout=HANG_GUARD)
    assert run.returncode == expect, run.stderr[-3000:]
    if expect != 0:
        return run.stderr
    try:
        return json.loads(run.stdout)
    except json.JSONDecodeError:
        raise AssertionError(f"not JSON: {run.stdout[-2000:]!r}\n{run.stderr[-2000:]}")


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    from openmm_geom.data.datagen import generate_reference

    d = tmp_path_factory.mktemp("cv")
    trajectories = []
    for seed in (1, 2):
        path = d / f"ala_{seed}.npz"
        generate_reference(PDB, path, n_frames=150, save_interval_ps=0.2, timestep_fs=1.0,
                           equilibration_ps=2.0, seed=seed, threads=1, progress=False)
        trajectories.append(path)
    out = {"dir": d, "trajectories": trajectories}
    out["corpus"] = _cli("cv", "corpus", "--out", d / "corpus.npz", "--ase", "s22",
                         "--no-bundled", "--no-openmm-data", "--pdb", PDB, "--md-pdb", PDB,
                         "--md-ps", "0.4")
    out["pretrain"] = _cli("cv", "pretrain", "--corpus", d / "corpus.npz", "--out",
                           d / "backbone.pt", "--hidden-channels", "16", "--num-layers", "1",
                           "--num-rbf", "8", "--num-heads", "2", "--epochs", "1",
                           "--batch-size", "20")
    for name, path in zip(("train", "validate"), trajectories):
        out[name] = _cli("cv", "featurize", path, "--backbone", d / "backbone.pt",
                         "--topology", PDB, "--tokens", "atom", "--out", d / f"{name}.npz",
                         "--global-atoms", "name CA or name C or name N")
    out["vamp"] = _cli("cv", "train-vamp", "--train", d / "train.npz", "--validate",
                       d / "validate.npz", "--lag-ps", "1.0", "--mixer", "subformer",
                       "--hidden", "16", "--batch-size", "64", "--max-epochs", "2",
                       "--out", d / "vamp")
    out["export"] = _cli("cv", "export", "--backbone", d / "backbone.pt", "--cv",
                         d / "vamp" / "vamp_cv.pt", "--topology", PDB, "--out", d / "cv.pt",
                         "--check")
    return out


def test_pipeline_files_and_scores(pipeline):
    d = pipeline["dir"]
    assert pipeline["corpus"]["n_structures"] > 10 if "n_structures" in pipeline["corpus"] \
        else (d / "corpus.npz").exists()
    assert pipeline["train"]["frames"] == 150 and pipeline["train"]["channels"] == 16
    assert pipeline["train"]["timestep_ps"] == pytest.approx(0.2)
    vamp = pipeline["vamp"]
    assert 1.0 <= vamp["vamp2_validation"] <= 3.0 and vamp["lag_frames"] == 5
    assert (d / "vamp" / "vamp_learning_curve.png").stat().st_size > 1000
    assert (d / "vamp" / "attention_maps.png").stat().st_size > 1000
    assert pipeline["export"]["check_export_passed"] is True
    assert pipeline["export"]["cv_names"] == ["vamp0", "vamp1"]


def test_exported_cv_equals_eager_inside_openmm_and_forces_match_finite_differences(pipeline):
    import openmm
    import openmm.app as app
    import openmm.unit as unit

    from openmm_geom.openmm import TorchCVForce
    from openmm_geom.workflows.cv import build_geom2vec_cv, export_cv

    d = pipeline["dir"]
    eager, _ = build_geom2vec_cv(d / "backbone.pt", d / "vamp" / "vamp_cv.pt")
    eager = eager.double()
    pdb = app.PDBFile(PDB)
    x0 = np.array(pdb.positions.value_in_unit(unit.nanometer))
    path = d / "cv64.pt"
    export_cv(d / "backbone.pt", d / "vamp" / "vamp_cv.pt", path, x0, dtype=torch.float64)
    system = openmm.System()
    for atom in pdb.topology.atoms():
        system.addParticle(atom.element.mass)
    force = TorchCVForce(str(path), "3*vamp0 - 2*vamp1^2")
    system.addForce(force)
    context = openmm.Context(system, openmm.VerletIntegrator(0.001),
                             openmm.Platform.getPlatformByName("Reference"))
    rng = np.random.default_rng(0)
    x = x0 + 0.01 * rng.normal(size=x0.shape)
    context.setPositions(x)
    state = context.getState(getEnergy=True, getForces=True)
    values = np.array(force.getCollectiveVariableValues(context))
    expected = eager(torch.tensor(x)).detach().numpy()
    np.testing.assert_allclose(values, expected, rtol=0, atol=1e-9)
    energy = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    assert energy == pytest.approx(3 * expected[0] - 2 * expected[1] ** 2, abs=1e-9)
    forces = state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer)

    def energy_at(y):
        cv = eager(torch.tensor(y)).detach().numpy()
        return 3 * cv[0] - 2 * cv[1] ** 2

    h = 1e-5
    for atom, axis in [(4, 0), (8, 1), (14, 2), (1, 0)]:
        plus, minus = x.copy(), x.copy()
        plus[atom, axis] += h
        minus[atom, axis] -= h
        numeric = -(energy_at(plus) - energy_at(minus)) / (2 * h)
        assert forces[atom, axis] == pytest.approx(numeric, rel=1e-4, abs=1e-5)
    assert np.abs(forces[[0, 2, 3]]).max() == 0.0  # hydrogens are not featurized


def test_export_for_plumed_matches_the_openmm_file(pipeline):
    """`cv export --format plumed`: the PYTORCH_MODEL file, fed x, y, z of every atom (nm) as
    PLUMED passes them ((1, 3N); float64 here, float32 as PLUMED does), equals the OpenMM file
    (tolerances chosen before running: 1e-10 in float64, 1e-4 (1 + |cv|) through float32)."""
    d = pipeline["dir"]
    result = _cli("cv", "export", "--backbone", d / "backbone.pt", "--cv",
                  d / "vamp" / "vamp_cv.pt", "--topology", PDB, "--out", d / "plumed.ptc",
                  "--format", "plumed", "--float64", "--check")
    assert result["format"] == "plumed" and result["check_export_passed"] is True
    assert result["plumed_form"] == "positions" and result["plumed_arguments"] == 3 * 22
    assert "vesin" in result["custom_ops"]  # the neighbour search: PLUMED must load it
    text = (d / "plumed.dat").read_text()
    assert "PYTORCH_MODEL FILE=plumed.ptc ARG=p0.x,p0.y,p0.z,p1.x" in text
    # the file uses vesin's and our operators: loaded here by these imports (PLUMED would
    # have to load their libraries)
    import vesin_torch  # noqa: F401

    from openmm_geom.ops import load_ops_library

    load_ops_library()
    openmm_file = torch.jit.load(result["openmm_file"])
    plumed = torch.jit.load(str(d / "plumed.ptc")).eval()
    x = np.array(mdtraj_frame()) + 0.01 * np.random.default_rng(3).normal(size=(22, 3))
    ours = openmm_file(torch.tensor(x)).detach()
    flat = torch.tensor(x.reshape(1, -1))
    np.testing.assert_allclose(plumed(flat)[0].detach(), ours, rtol=0, atol=1e-10)
    frozen = torch.jit.optimize_for_inference(torch.jit.freeze(plumed))
    as_plumed = frozen(flat.float().requires_grad_(True))
    assert as_plumed.dtype == torch.float32 and tuple(as_plumed.shape) == (1, 2)
    np.testing.assert_allclose(as_plumed[0].detach().double(), ours, rtol=0,
                               atol=1e-4 * (1 + float(ours.abs().max())))


def mdtraj_frame():
    import mdtraj

    return mdtraj.load(PDB).xyz[0].astype(np.float64)


def test_spib_on_tokens_exports_too(pipeline):
    d = pipeline["dir"]
    spib = _cli("cv", "train-spib", "--train", d / "train.npz", "--validate", d / "validate.npz",
                "--vamp", d / "vamp" / "vamp_cv.pt", "--lag-ps", "1.0", "--states", "3",
                "--epochs", "2", "--refinements", "1", "--out", d / "spib")
    assert spib["n_states_initial"] == 3 and np.isfinite(spib["validation_loss"])
    exported = _cli("cv", "export", "--backbone", d / "backbone.pt", "--cv",
                    d / "spib" / "spib_cv.pt", "--topology", PDB, "--out", d / "spib.pt")
    assert exported["cv_names"] == ["spib0", "spib1"]


def test_bias_run_resumes_from_its_checkpoint(pipeline, tmp_path):
    d = pipeline["dir"]
    first = _cli("cv", "bias", "--pdb", PDB, "--model", d / "cv.pt", "--out", tmp_path / "run",
                 "--picoseconds", "0.6", "--checkpoint-ps", "0.2", "--deposit-ps", "0.1")
    assert first["frames"] == 6 and first["hills"] == 6 and not first["resumed"]
    longer = _cli("cv", "bias", "--pdb", PDB, "--model", d / "cv.pt", "--out", tmp_path / "run",
                  "--picoseconds", "1.0", "--checkpoint-ps", "0.2", "--deposit-ps", "0.1")
    assert longer["resumed"] and longer["frames"] == 10 and longer["hills"] == 10
    rows = np.loadtxt(tmp_path / "run" / "bias_log.csv", delimiter=",", skiprows=1)
    assert rows.shape[0] == 10 and np.all(np.diff(rows[:, 0]) > 0)  # appended, no duplicates
    assert (tmp_path / "run" / "phi_profile.png").exists()


def test_aoti_package_of_the_trained_cv_biases_with_opes(pipeline, tmp_path):
    """`cv export --format aoti`: the package's CVs equal the TorchScript file's (1e-10 in
    float64), and `cv bias --method opes` runs along it."""
    from openmm_geom.modelfile import ExportedModel

    d = pipeline["dir"]
    result = _cli("cv", "export", "--backbone", d / "backbone.pt", "--cv",
                  d / "vamp" / "vamp_cv.pt", "--topology", PDB, "--out", tmp_path / "cv.pt2",
                  "--format", "aoti", "--float64")
    assert result["cv_names"] == ["vamp0", "vamp1"]
    package = ExportedModel.load(tmp_path / "cv.pt2", allow_package=True)
    script = ExportedModel.load(d / "cv.pt")
    assert package.backend == "aoti"
    x = torch.tensor(mdtraj_frame() + 0.01 * np.random.default_rng(4).normal(size=(22, 3)))
    np.testing.assert_allclose(package(x).numpy(), script.module(x).detach().double().numpy(),
                               rtol=0, atol=1e-5)  # the TorchScript file is float32
    run = _cli("cv", "bias", "--pdb", PDB, "--model", tmp_path / "cv.pt2", "--method", "opes",
               "--out", tmp_path / "opes", "--picoseconds", "0.4", "--opes-pace-ps", "0.1",
               "--checkpoint-ps", "0.2")
    assert run["frames"] == 4
    rows = np.loadtxt(tmp_path / "opes" / "bias_log.csv", delimiter=",", skiprows=1)
    assert rows.shape[0] == 4 and np.isfinite(rows).all()
    message = _cli("cv", "export", "--backbone", d / "backbone.pt", "--cv",
                   d / "vamp" / "vamp_cv.pt", "--topology", PDB, "--out", tmp_path / "c.pt2",
                   "--format", "aoti", "--check", expect=2)
    assert "--check runs check-export" in message and not (tmp_path / "c.pt2").exists()


def test_bad_inputs_are_clear_errors(pipeline, tmp_path):
    d = pipeline["dir"]
    wrong = tmp_path / "wrong_atoms.npz"
    np.savez(wrong, positions=np.zeros((5, 21, 3), np.float32), save_interval_ps=1.0)
    message = _cli("cv", "featurize", wrong, "--backbone", d / "backbone.pt", "--topology", PDB,
                   "--out", tmp_path / "f.npz", expect=2)
    assert "21 atoms per frame but the topology has 22" in message
    message = _cli("cv", "train-vamp", "--train", d / "train.npz", "--validate",
                   d / "validate.npz", "--lag-ps", "400", "--out", tmp_path / "v", expect=2)
    assert "longer than every trajectory" in message
    message = _cli("cv", "bias", "--pdb", str(bundled("t4-lysozyme-l99a.pdb")), "--model",
                   d / "cv.pt", "--out", tmp_path / "b", "--picoseconds", "0.1", expect=2)
    assert "22 atoms" in message or "phi and psi" in message
    message = _cli("cv", "export", "--backbone", d / "train.npz", "--cv",
                   d / "vamp" / "vamp_cv.pt", "--topology", PDB, "--out", tmp_path / "x.pt",
                   expect=2)
    assert "error:" in message
    from openmm_geom.errors import FileFormatError
    from openmm_geom.training.features import FeatureSet

    features = FeatureSet.load(d / "train.npz")
    with pytest.raises(FileFormatError, match="NaN"):
        FeatureSet(features.tokens * np.nan, features.lengths, None, features.token_map_json,
                   features.backbone, features.timestep_ps)


def test_quick_reproduce_reports_every_score(pipeline, tmp_path):
    # the three VAMPnet trainings run here, then as tasks on two Dask workers: same scores
    train, validate = pipeline["trajectories"]
    runs = [_cli("cv", "reproduce", "--train", train, "--validate", validate, "--topology", PDB,
                 "--out", tmp_path / name, "--quick", "--lag-ps", "1.0",
                 "--backbone", pipeline["dir"] / "backbone.pt", *cluster)
            for name, cluster in (("rep", ()), ("rep2", ("--cluster", "local:2")))]
    result = runs[0]
    for key in ("vamp2_geom2vec", "vamp2_distance_baseline", "vamp2_dihedral_baseline",
                "vamp2_train", "cv_resolution_nm"):
        assert runs[1][key] == result[key], key
    assert (tmp_path / "rep2" / "logs" / "distance.log").exists()
    for key in ("vamp2_geom2vec", "vamp2_distance_baseline", "vamp2_dihedral_baseline"):
        assert 1.0 <= result[key] <= 3.0
    assert result["lag_ps"] == 1.0 and result["k"] == 2
    assert result["jitter_nm"] == 0 and result["jitter_copies"] == 0  # cv reproduce: no noise
    resolution = result["cv_resolution_nm"]
    assert len(resolution["cvs"]) == 2 and len(resolution["phi_psi"]) == 2
    assert all(0 < r < 1 for r in resolution["cvs"] + resolution["phi_psi"])
    assert (tmp_path / "rep" / "cvs_vs_phi_psi.png").exists()


def test_explore_learns_from_hot_runs_it_makes_and_reuses(pipeline, tmp_path):
    args = ("cv", "explore", "--pdb", PDB, "--out", tmp_path / "hot", "--quick",
            "--temperature-k", "600", "--nanoseconds", "0.03", "--save-interval-ps", "0.2",
            "--equilibration-ps", "1", "--lag-ps", "1.0",
            "--backbone", pipeline["dir"] / "backbone.pt")
    result = _cli(*args)
    hot = result["exploration"]
    assert hot["temperature_K"] == 600 and hot["ns_per_run"] == 0.03
    assert all(isinstance(n, int) and n >= 0 for n in hot["phi_transitions"])
    runs = [np.load(path) for path in hot["trajectories"]]
    assert [len(run["positions"]) for run in runs] == [150, 150]
    assert not np.allclose(runs[0]["positions"], runs[1]["positions"])  # independent seeds
    assert result["train_frames"] == result["validation_frames"] == 150
    assert 1.0 <= result["vamp2_geom2vec"] <= 2.0  # one CV (k = 1) by default
    # the training frames are augmented: 4 noisy copies (0.005 nm) of the 150 frames
    assert result["k"] == 1 and result["jitter_nm"] == 0.005 and result["jitter_copies"] == 4
    assert all(0 < r < 1 for r in result["cv_resolution_nm"]["cvs"])
    assert (tmp_path / "hot" / "cv.pt").exists()
    stamps = [(tmp_path / "hot" / f"hot_{n}.npz").stat().st_mtime_ns for n in ("train", "validate")]
    again = _cli(*args)  # the hot runs are reused, not simulated again
    assert [(tmp_path / "hot" / f"hot_{n}.npz").stat().st_mtime_ns
            for n in ("train", "validate")] == stamps
    assert again["exploration"]["phi_transitions"] == hot["phi_transitions"]
    hotter = list(args)
    hotter[hotter.index("--temperature-k") + 1] = "650"
    assert "not made with these settings" in _cli(*hotter, expect=2)  # nothing is overwritten


def test_a_blown_up_run_stops_with_a_diagnosis_and_saves_nothing_of_it(tmp_path):
    from openmm_geom.workflows.cv_bias import BiasSettings, SimulationBlowUp, run_biased

    settings = BiasSettings(picoseconds=1.0, timestep_fs=6.0, checkpoint_ps=0.5)  # unstable
    with pytest.raises(SimulationBlowUp, match="bonds broke.*timestep"):
        run_biased(PDB, tmp_path / "run", mode="unbiased", settings=settings, threads=1,
                   progress=False)
    assert not (tmp_path / "run" / "dihedrals.npz").exists()  # no frame of the blow-up kept
    assert not (tmp_path / "run" / "summary.json").exists()


def test_cv_walls_hold_learned_cvs_in_their_training_range(pipeline, tmp_path):
    """--cv-walls-kjmol: W ((s - max)/std)^2 above the training maximum, W ((min - s)/std)^2
    below the minimum, zero inside; checked in a Context against numpy, then a short OPES run
    with walls."""
    import dataclasses

    import openmm
    import openmm.app as app

    from openmm_geom.modelfile import ExportedModel
    from openmm_geom.openmm import TorchCVForce
    from openmm_geom.workflows.cv_bias import BiasSettings, _cv_walls

    d = pipeline["dir"]
    model = ExportedModel.load(d / "cv.pt")
    pdb = app.PDBFile(PDB)
    values = model.module(torch.tensor(mdtraj_frame())).detach().double().numpy()
    w = 7.0
    cases = {"inside": {n: {"min": v - 1.0, "max": v + 1.0, "std": 0.5}
                        for n, v in zip(model.metadata.cv_names, values)},
             "outside": {n: {"min": v + 0.1 * (i + 1), "max": v + 1.0, "std": 0.05 * (i + 1)}
                         if i == 0 else {"min": v - 1.0, "max": v - 0.02, "std": 0.04}
                         for i, (n, v) in enumerate(zip(model.metadata.cv_names, values))}}
    for name, stats in cases.items():
        metadata = dataclasses.replace(model.metadata, extra={**model.metadata.extra,
                                                              "cv_statistics": stats})
        expression = _cv_walls(metadata, BiasSettings(cv_walls_kJmol=w))
        system = openmm.System()
        for atom in pdb.topology.atoms():
            system.addParticle(atom.element.mass)
        system.addForce(TorchCVForce(model, expression))
        context = openmm.Context(system, openmm.VerletIntegrator(0.001),
                                 openmm.Platform.getPlatformByName("Reference"))
        context.setPositions(pdb.positions)
        energy = context.getState(getEnergy=True).getPotentialEnergy()._value
        expected = sum(w * (max(0.0, v - s["max"]) / s["std"]) ** 2
                       + w * (max(0.0, s["min"] - v) / s["std"]) ** 2
                       for v, s in zip(values, stats.values()))
        assert (expected > 1.0) == (name == "outside")
        assert energy == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert _cv_walls(model.metadata, BiasSettings()) == ""
    message = _cli("cv", "bias", "--pdb", PDB, "--mode", "phipsi", "--cv-walls-kjmol", "10",
                   "--out", tmp_path / "no", "--picoseconds", "0.1", expect=2)
    assert "no learned CVs" in message and not (tmp_path / "no").exists()
    run = _cli("cv", "bias", "--pdb", PDB, "--model", d / "cv.pt", "--method", "opes",
               "--cv-walls-kjmol", "10", "--out", tmp_path / "walls", "--picoseconds", "0.2",
               "--checkpoint-ps", "0.1")
    assert run["frames"] == 2


def test_training_frames_are_jittered_into_independent_noisy_copies():
    from openmm_geom.workflows.config import ReproduceSettings
    from openmm_geom.workflows.cv import jittered

    positions = np.random.default_rng(3).normal(size=(500, 10, 3))
    assert jittered(positions, ReproduceSettings(), seed=0)[0] is positions  # no jitter
    settings = ReproduceSettings(jitter_nm=0.005, jitter_copies=3)
    copies = jittered(positions, settings, seed=0)
    noise = np.stack([c - positions for c in copies])
    assert noise.shape == (3, 500, 10, 3)
    assert noise.std() == pytest.approx(0.005, rel=0.01) and abs(noise.mean()) < 1e-4
    assert abs(np.corrcoef(noise[0].ravel(), noise[1].ravel())[0, 1]) < 0.02
    assert all(np.array_equal(a, b) for a, b in zip(copies, jittered(positions, settings, 0)))
    with pytest.raises(ValueError, match="jitter_nm"):
        ReproduceSettings(jitter_nm=-0.1)
