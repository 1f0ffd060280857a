"""Deep Signature training, CLI, featurisation and the on-the-fly signature reporter."""
import json
import os
import subprocess
import sys

import numpy as np
import openmm
import openmm.app as app
import openmm.unit as unit
import pytest
import torch
from sklearn.metrics import accuracy_score, recall_score

from openmm_geom.data import bundled
from openmm_geom.data.gene_regulatory import generate_gene_dataset
from openmm_geom.data.path_dataset import PathDataset
from openmm_geom.ops.signature import logsignature, windowed_logsignature
from openmm_geom.openmm import SignatureReporter
from openmm_geom.training.signature_classifier import (TrainingSettings, classification_metrics,
                                                       cross_validate, load_classifier, predict,
                                                       train_fold)

torch.set_num_threads(1)
TINY = dict(epochs=3, batch_size=16, groups=2, folds=2)
SMALL_MODEL = {"clusters": (8, 4), "hidden": 6}


@pytest.fixture(scope="module")
def gene_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("gene") / "gene.npz"
    return generate_gene_dataset(path, n_trajectories=8, n_test=4, n_nodes=16, n_frames=60,
                                 seed=3, progress=False)


def test_metrics_agree_with_sklearn():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    predicted = np.where(rng.random(200) < 0.8, labels, 1 - labels)
    metrics = classification_metrics(labels, predicted, 2)
    assert metrics["accuracy"] == pytest.approx(accuracy_score(labels, predicted))
    assert metrics["recall"] == pytest.approx(recall_score(labels, predicted))
    assert metrics["macro_recall"] == pytest.approx(recall_score(labels, predicted, average="macro"))
    assert np.sum(metrics["confusion"]) == 200


def test_best_epoch_is_restored_and_saved(gene_file, tmp_path):
    data = PathDataset(gene_file)
    settings = TrainingSettings(**TINY, learning_rate=3e-3)
    summary = cross_validate(data, "graph-lstm", settings, hyper={**SMALL_MODEL, "centre": False},
                             out=tmp_path, progress=False, folds_to_run=[1])
    history = summary["histories"][0]
    best = summary["best_epochs"][0]
    assert history["validation_accuracy"][best - 1] == max(history["validation_accuracy"])
    # The saved parameters are the best epoch's: they reproduce its validation accuracy.
    model, info = load_classifier(tmp_path / "graph-lstm" / "fold1.pt")
    validation = data.fold(1, groups=2, folds=2)["validation"]
    accuracy = np.mean(predict(model, info, validation) == validation.labels.numpy())
    assert accuracy == pytest.approx(history["validation_accuracy"][best - 1])
    assert summary["validation"]["accuracy"]["mean"] == pytest.approx(accuracy)


def test_training_is_reproducible_and_resumes(gene_file, tmp_path):
    data = PathDataset(gene_file)
    settings = TrainingSettings(**TINY, seed=5)
    hyper = {**SMALL_MODEL, "basepoint": True, "segments": 2}
    first = cross_validate(data, "deep-signature", settings, hyper=hyper, out=tmp_path,
                           progress=False)
    files = sorted((tmp_path / "deep-signature").glob("fold*.json"))
    assert len(files) == 2
    stamps = [f.stat().st_mtime_ns for f in files]
    again = cross_validate(data, "deep-signature", settings, hyper=hyper, out=tmp_path,
                           progress=False)
    assert [f.stat().st_mtime_ns for f in files] == stamps          # nothing retrained
    assert again["histories"] == first["histories"]
    fresh = train_fold(data, "deep-signature", 0, settings, hyper, progress=False)
    assert fresh["history"] == first["histories"][0]                 # same seed, same numbers
    changed = cross_validate(data, "deep-signature", TrainingSettings(**{**TINY, "epochs": 2}, seed=5),
                             hyper=hyper, out=tmp_path, progress=False, folds_to_run=[0])
    assert len(changed["histories"][0]["epoch"]) == 2                # other settings: retrained


def test_bad_requests_are_refused(gene_file):
    data = PathDataset(gene_file)
    with pytest.raises(ValueError, match="unknown method"):
        cross_validate(data, "svm-of-everything", TrainingSettings(**TINY))
    with pytest.raises(ValueError, match="descriptors"):
        cross_validate(data, "dihedral-svm", TrainingSettings(**TINY), progress=False)
    with pytest.raises(ValueError, match="segments"):
        train_fold(data, "deep-signature", 0, TrainingSettings(epochs=1, groups=5, folds=5),
                   {**SMALL_MODEL, "segments": 4}, progress=False)
    with pytest.raises(ValueError, match="epochs"):
        TrainingSettings(epochs=0)
    with pytest.raises(FileNotFoundError):
        load_classifier("no-such-model.pt")


def _cli(*args, cwd):
    done = subprocess.run([sys.executable, "-m", "openmm_geom.cli", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=600,
                          env={**os.environ, "OPENMM_GEOM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_cli_generate_train_evaluate(tmp_path):
    _cli("signature", "generate-gene", "--out", "g.npz", "--trajectories", "6", "--test", "2",
         "--nodes", "12", "--frames", "40", "--no-progress", cwd=tmp_path)
    out = json.loads(_cli("signature", "train", "--data", "g.npz", "--out", "run", "--methods",
                          "deep-signature,head-tail", "--epochs", "1", "--groups", "2",
                          "--folds", "2", "--no-progress", "--json", cwd=tmp_path))
    assert set(out["accuracy"]) == {"deep-signature", "head-tail"}
    assert 0.0 <= out["accuracy"]["deep-signature"] <= 1.0
    assert (tmp_path / "run" / "learning_curves.png").stat().st_size > 1000
    assert (tmp_path / "run" / "methods.png").stat().st_size > 1000
    evaluated = json.loads(_cli("signature", "evaluate", "--model",
                                "run/folds/deep-signature/fold0.pt", "--data", "g.npz", "--json",
                                cwd=tmp_path))
    assert evaluated["windows"] == 2 * 4 and evaluated["method"] == "deep-signature"


def _alanine_simulation(seed=11):
    pdb = app.PDBFile(str(bundled("alanine-dipeptide.pdb")))
    system = app.ForceField("amber14-all.xml").createSystem(pdb.topology,
                                                            nonbondedMethod=app.NoCutoff)
    integrator = openmm.LangevinMiddleIntegrator(300 * unit.kelvin, 1 / unit.picosecond,
                                                 1 * unit.femtosecond)
    integrator.setRandomNumberSeed(seed)
    simulation = app.Simulation(pdb.topology, system, integrator,
                                openmm.Platform.getPlatformByName("Reference"))
    simulation.context.setPositions(pdb.positions)
    simulation.context.setVelocitiesToTemperature(300 * unit.kelvin, seed)
    return simulation


def _positions(simulation):
    return simulation.context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(
        unit.nanometer)


@pytest.mark.parametrize("window", [None, 6])
def test_signature_reporter_equals_offline_signatures(tmp_path, window):
    atoms = [4, 6, 8, 14, 16]
    sample = 5
    reference = _alanine_simulation()
    points = []
    for _ in range(24):
        reference.step(sample)
        points.append(_positions(reference)[atoms].reshape(-1))
    path = torch.from_numpy(np.array(points)).unsqueeze(0)

    simulation = _alanine_simulation()
    csv = tmp_path / "sig.csv"
    options = {"window": window} if window else {"reportInterval": 4 * sample}
    reporter = SignatureReporter(str(csv), sample, depth=3, atoms=atoms, **options)
    simulation.reporters.append(reporter)
    simulation.step(24 * sample)
    reporter.close()
    rows = np.loadtxt(csv, delimiter=",", ndmin=2)
    header = csv.read_text().splitlines()[0]
    assert header.startswith('#"Step","Time (ps)","Points"')
    if window:
        expected = windowed_logsignature(path, 3, window, window - 1)[0].numpy()
        assert rows.shape[0] == expected.shape[0] == 4
        assert np.all(rows[:, 2] == window)
    else:
        expected = np.stack([logsignature(path[:, :n], 3)[0].numpy() for n in range(4, 25, 4)])
        assert rows.shape[0] == 6
        np.testing.assert_array_equal(rows[:, 0], np.arange(20, 121, 20))
    np.testing.assert_allclose(rows[:, 3:], expected, rtol=1e-7, atol=1e-12)


def test_signature_reporter_stops_on_a_blown_up_simulation(tmp_path):
    simulation = _alanine_simulation()
    reporter = SignatureReporter(str(tmp_path / "s.csv"), 2, depth=2, atoms=[0, 1], window=3)
    simulation.reporters.append(reporter)
    simulation.step(2)
    positions = _positions(simulation)
    positions[0, 0] = np.nan
    simulation.context.setPositions(positions)
    with pytest.raises(ValueError, match="blown up"):
        reporter.report(simulation, simulation.context.getState(getPositions=True))
    with pytest.raises(ValueError, match="at least 2 points"):
        SignatureReporter(str(tmp_path / "t.csv"), 2, window=1)
    with pytest.raises(ValueError, match="multiple"):
        SignatureReporter(str(tmp_path / "u.csv"), 3, reportInterval=10)


def test_featurize_cli_matches_the_op(tmp_path):
    import mdtraj

    traj = mdtraj.load(str(bundled("alanine-dipeptide.pdb")))
    rng = np.random.default_rng(1)
    frames = traj.xyz + rng.normal(scale=0.01, size=(30,) + traj.xyz.shape[1:]).astype(np.float32)
    mdtraj.Trajectory(frames, traj.topology).save_dcd(str(tmp_path / "t.dcd"))
    pdb = str(bundled("alanine-dipeptide.pdb"))
    out = json.loads(_cli("signature", "featurize", "t.dcd", "--topology", pdb, "--selection", "name CA",
                          "--depth", "3", "--window", "10", "--out", "f.npz", "--json",
                          cwd=tmp_path))
    assert out["features"] == [3, 3 + 3 + 8]
    features = np.load(tmp_path / "f.npz")["features"]
    ca = traj.topology.select("name CA")
    frames = mdtraj.load(str(tmp_path / "t.dcd"), top=pdb).xyz       # what the file holds
    path = torch.from_numpy(frames[:, ca].reshape(30, -1).astype(np.float64)).unsqueeze(0)
    np.testing.assert_allclose(features, windowed_logsignature(path, 3, 10, 9)[0].numpy(),
                               rtol=1e-10)
    with pytest.raises(AssertionError):
        _cli("signature", "featurize", "t.dcd", "--topology", pdb, "--selection", "name XYZ",
             "--out", "g.npz",
             cwd=tmp_path)
