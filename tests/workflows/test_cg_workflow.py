"""The coarse-graining job end to end on data made here with OpenMM (tiny settings)."""
import json
import subprocess
import sys

import numpy as np
import pytest

from openmm_geom.data import bundled
from openmm_geom.data.datagen import generate_reference
from openmm_geom.settings import override
from openmm_geom.workflows import coarse_grain as cg

TINY = override(cg.QUICK, folds=2, epochs=1, max_train_frames=300, replicas=4, steps=200,
                save_interval=20, noise_seeds=2)


@pytest.fixture(scope="module")
def alanine_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("aa")
    paths = []
    for seed in (1, 2):
        paths.append(generate_reference(bundled("alanine-dipeptide.pdb"), root / f"s{seed}.npz",
                                        n_frames=400, save_interval_ps=0.05,
                                        equilibration_ps=1.0, seed=seed, platform="Reference",
                                        progress=False))
    return paths


def test_reproduce_writes_metrics_and_figures(alanine_data, tmp_path):
    result = cg.reproduce(*alanine_data, tmp_path, settings=TINY, seed=0, threads=1,
                          progress=False)
    for key in ("kl", "mse", "replicas", "simulated_ns_total"):
        assert key in result and np.isfinite(result[key])
    # a 1-epoch model may miss reference states: then sigma is None and the reasons say why
    assert isinstance(result["unreliable_reasons"], list)
    if result["unreliable_reasons"]:
        assert result["noise_equivalent_sigma_angstrom"] is None
    else:
        assert np.isfinite(result["noise_equivalent_sigma_angstrom"])
    assert result["replicas"] == 4
    assert result["simulated_ns_total"] == pytest.approx(4 * 200 * 0.002 / 1000)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["kl"] == result["kl"]
    assert saved["unreliable_reasons"] == result["unreliable_reasons"]
    for name in ("cg_model.pt", "cg_model_openmm.pt", "learning_curves.png", "priors.json",
                 "cg_trajectory.h5", "free_energy_surfaces.png", "noise_curve.png"):
        assert (tmp_path / name).stat().st_size > 0, name


def test_cli_train_simulate_evaluate(alanine_data, tmp_path):
    def cli(*args):
        done = subprocess.run([sys.executable, "-m", "openmm_geom.cli", "cg", *map(str, args),
                               "--quick", "--json", "--no-progress", "--threads", "1"],
                              capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
        return json.loads(done.stdout)

    trained = cli("train", "--data", alanine_data[0], "--out", tmp_path, "--folds", "2",
                  "--epochs", "1")
    assert len(trained["folds"]) == 2
    sim = cli("simulate", "--model", tmp_path / "cg_model.pt", "--start", alanine_data[1],
              "--out", tmp_path, "--replicas", "3", "--steps", "100")
    assert sim["replicas"] == 3 and sim["final_step"] == 100
    metrics = cli("evaluate", "--reference", alanine_data[1], "--trajectory",
                  tmp_path / "cg_trajectory.h5", "--out", tmp_path, "--noise-seeds", "2")
    assert np.isfinite(metrics["kl"])
    assert isinstance(metrics["unreliable_reasons"], list)
    assert (metrics["noise_equivalent_sigma_angstrom"] is None) == bool(
        metrics["unreliable_reasons"])


def test_bad_inputs(alanine_data, tmp_path):
    data = dict(np.load(alanine_data[0]))
    no_forces = {k: v for k, v in data.items() if k != "forces"}
    np.savez(tmp_path / "noforces.npz", **no_forces)
    with pytest.raises(ValueError, match="has no 'forces' array"):
        cg.load_cg_data(tmp_path / "noforces.npz")
    mismatched = dict(data, forces=data["forces"][:-1])
    np.savez(tmp_path / "mismatch.npz", **mismatched)
    with pytest.raises(ValueError, match="forces have shape .* they must match"):
        cg.load_cg_data(tmp_path / "mismatch.npz")
    assert cg.load_cg_data(tmp_path / "noforces.npz", need_forces=False).forces is None
    nan = dict(data)
    nan["positions"] = data["positions"].copy()
    nan["positions"][3, 2, 1] = np.nan
    np.savez(tmp_path / "nan.npz", **nan)
    with pytest.raises(ValueError, match="(?i)nan|finite"):
        cg.load_cg_data(tmp_path / "nan.npz")
    trained = cg.train(cg.load_cg_data(alanine_data[0]), tmp_path / "m", TINY, progress=False)
    with pytest.raises(ValueError, match="different bead count"):
        cg.simulate(trained["model"], np.zeros((2, 5, 3)), tmp_path / "s", TINY, progress=False)


@pytest.mark.slow
def test_protein_ca_pipeline_end_to_end(tmp_path):
    """T4 lysozyme (2,603 atoms, amber14, vacuum) -> 162 CA beads -> priors + CGSchNet ->
    batched simulation -> TICA free-energy comparison, through the same reproduce()."""
    pdb = bundled("t4-lysozyme-l99a.pdb")
    paths = [generate_reference(pdb, tmp_path / f"t4l_{seed}.npz", n_frames=60,
                                save_interval_ps=0.01, equilibration_ps=0.05, seed=seed,
                                platform="CPU", progress=False) for seed in (1, 2)]
    settings = override(TINY, replicas=3, steps=60, save_interval=10, tica_lag_frames=2)
    result = cg.reproduce(*paths, tmp_path / "cg", settings=settings, seed=0, threads=2,
                          mapping="ca", progress=False)
    assert result["kind"] == "protein" and result["replicas"] == 3
    assert 0.0 <= result["cg_fraction_outside_grid"] <= 1.0
    if result["kl"] is None:  # a 1-epoch model may leave the reference entirely: said so
        assert result["cg_fraction_outside_grid"] == 1.0 and result["unreliable_reasons"]
    else:
        for key in ("kl", "mse"):
            assert np.isfinite(result[key]), key
        assert (result["noise_equivalent_sigma_angstrom"] is None) == bool(
            result["unreliable_reasons"])
    for name in result["figures"] + ["cg_model_openmm.pt", "metrics.json"]:
        assert (tmp_path / "cg" / name).stat().st_size > 0, name
