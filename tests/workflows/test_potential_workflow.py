"""The potential job end to end through the CLI, on flexible-water (and salt-water) data made
with OpenMM: reproduce, export, simulate, evaluate, the model sizes and pareto."""
import json
import math
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from openmm_geom.data.water import generate_water_reference, water_box_pdb
from openmm_geom.models.potentials import build_potential
from openmm_geom.workflows.config import MODEL_SIZES, SIZES, budget
from openmm_geom.workflows.potential_pareto import composition, in_fresh_process, speed_boxes

CLI = [sys.executable, "-m", "openmm_geom.cli"]


def run_cli(*args, expect=0):
    done = subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=900,
                          env={**os.environ, "OPENMM_GEOM_THREADS": "1"})
    assert done.returncode == expect, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def water_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("water") / "water48.npz"
    return generate_water_reference(48, out, n_frames=40, save_interval_ps=0.05,
                                    equilibration_ps=0.5, progress=False)


@pytest.fixture(scope="module")
def reproduced(water_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("reproduce")
    done = run_cli("potential", "reproduce", "--data", water_data, "--model", "attention",
                   "--quick", "--out", out, "--json", "--no-progress")
    return out, json.loads(done.stdout)


def test_reproduce_reports_the_metrics_and_writes_figures(reproduced):
    out, result = reproduced
    for key in ("force_mae", "force_rmse", "energy_mae_per_atom", "nve_drift", "rdf_error"):
        assert math.isfinite(result[key]), key
    assert result["force_rmse"] >= result["force_mae"] > 0
    assert set(result["rdf"]) == {"O-O", "O-H", "H-H"}
    assert result["size"] == "medium" and result["parameters"] == result["training"]["parameters"]
    goal = result["rdf_goal"]
    assert set(goal["pairs"]) == {"O-O", "O-H", "H-H"}
    assert goal["met"] == all(p["met"] for p in goal["pairs"].values())
    o_o = result["rdf"]["O-O"]
    assert goal["pairs"]["O-O"]["rdf_mae"] == (o_o["rdf_mae"] <= 0.05)
    assert result["steps_per_second_openmm"] == result["openmm"]["nvt_steps_per_second"] > 0
    for name in ("model.pt", "model_openmm.pt", "learning_curves.png", "force_parity.png",
                 "rdf.png", "metrics.json", "nvt.npz", "nve.npz", "reproduce.json"):
        assert (out / name).stat().st_size > 0, name
    assert json.loads((out / "reproduce.json").read_text())["force_mae"] == result["force_mae"]
    # the held-out block is the last one in time: no test frame was trained on
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train_frames"] + metrics["validation_frames"] + metrics["test_frames"] < 40


def test_export_to_a_larger_box_simulate_and_evaluate(reproduced, water_data, tmp_path):
    out, _ = reproduced
    pdb = water_box_pdb(64, tmp_path / "water64.pdb")
    run_cli("potential", "export", "--checkpoint", out / "model.pt", "--pdb", pdb,
            "--out", tmp_path / "w64.pt")
    done = run_cli("potential", "simulate", "--exported", tmp_path / "w64.pt", "--pdb", pdb,
                   "--ensemble", "nve", "--quick", "--out", tmp_path / "md", "--json",
                   "--no-progress")
    result = json.loads(done.stdout)
    assert result["steps"] == 100 and result["steps_per_second"] > 0
    frames = np.load(tmp_path / "md" / "nve.npz")
    assert frames["positions"].shape[1:] == (192, 3)
    done = run_cli("potential", "evaluate", "--checkpoint", out / "model.pt", "--data",
                   water_data, "--out", tmp_path / "eval", "--json")
    assert json.loads(done.stdout)["frames"] == 40
    assert (tmp_path / "eval" / "force_parity.png").exists()


def test_an_ensemble_spread_is_recorded(reproduced, tmp_path):
    out, _ = reproduced
    pdb = water_box_pdb(48, tmp_path / "water48.pdb")
    done = run_cli("potential", "simulate", "--checkpoint", out / "model.pt", "--pdb", pdb,
                   "--spread-models", out / "model_openmm.pt", out / "model_openmm.pt",
                   "--quick", "--out", tmp_path / "md", "--json", "--no-progress")
    assert json.loads(done.stdout)["max_force_spread"] == 0.0  # identical members agree


def test_bad_inputs_fail_with_clear_messages(reproduced, tmp_path):
    out, _ = reproduced
    small = water_box_pdb(20, tmp_path / "water20.pdb")  # 0.84 nm box < 2 x 0.5 nm cutoff
    done = run_cli("potential", "export", "--checkpoint", out / "model.pt", "--pdb", small,
                   "--out", tmp_path / "x.pt", expect=2)
    assert "box too small" in done.stderr
    methane = tmp_path / "methane.pdb"
    methane.write_text(
        "CRYST1   20.000   20.000   20.000  90.00  90.00  90.00 P 1           1\n"
        "HETATM    1  C   MET A   1       0.000   0.000   0.000  1.00  0.00           C\n"
        "HETATM    2  H1  MET A   1       0.629   0.629   0.629  1.00  0.00           H\n"
        "END\n")
    done = run_cli("potential", "export", "--checkpoint", out / "model.pt", "--pdb", methane,
                   "--out", tmp_path / "y.pt", expect=2)
    assert "not in the training data" in done.stderr
    no_energies = tmp_path / "no_energies.npz"
    np.savez(no_energies, positions=np.zeros((3, 3, 3)), forces=np.zeros((3, 3, 3)),
             atomic_numbers=np.array([8, 1, 1]))
    done = run_cli("potential", "train", "--data", no_energies, "--out", tmp_path / "t",
                   "--quick", expect=2)
    assert "energies" in done.stderr
    pdb = water_box_pdb(48, tmp_path / "water48.pdb")
    done = run_cli("potential", "simulate", "--checkpoint", out / "model.pt", "--pdb", pdb,
                   "--timestep-fs", "40", "--nvt-ps", "20", "--quick", "--out", tmp_path / "boom",
                   "--no-progress", expect=2)
    assert "unstable" in done.stderr


def test_a_collapsed_liquid_is_stopped_with_a_diagnosis():
    from openmm_geom.workflows.potential import SimulationBlowUp, _check_no_collapse

    box = np.eye(3) * 1.2
    x = np.stack(np.meshgrid(*[np.arange(3)] * 3, indexing="ij"), -1).reshape(-1, 3) * 0.4
    _check_no_collapse(x, box, 10, "nvt")  # 0.4 nm apart: fine
    x[5] = x[4] + [0.0, 0.0, 0.01]
    with pytest.raises(SimulationBlowUp, match="atoms 4 and 5 are 0.0100 nm apart"):
        _check_no_collapse(x, box, 10, "nvt")
    x[5] = x[4] + box[0] + [0.0, 0.003, 0.0]  # through the periodic boundary
    with pytest.raises(SimulationBlowUp, match="collapsed"):
        _check_no_collapse(x, box, 10, "nvt")


# --- sizes and the Pareto comparison ------------------------------------------------------

@pytest.fixture(scope="module")
def salt_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("salt") / "salt48.npz"
    return generate_water_reference(48, out, ion_pairs=1, n_frames=40, save_interval_ps=0.05,
                                    equilibration_ps=0.5, threads=1, progress=False)


def test_sizes_grow_in_parameters_and_medium_is_the_production_default():
    numbers = [8, 1, 1] * 4
    for architecture, sizes in MODEL_SIZES.items():
        assert set(sizes) == set(SIZES) and sizes["medium"] == {}
        count = [sum(p.numel() for p in build_potential(
            architecture, numbers, **budget("production", architecture, size).model_options(0)
        ).parameters()) for size in SIZES]
        assert count[0] < count[1] < count[2], (architecture, count)
        assert budget("production", architecture, "medium") == budget("production", architecture)
        # the training budget is the same at every size
        trainings = [budget("production", architecture, s).training for s in SIZES]
        assert trainings[0] == trainings[1] == trainings[2]
    with pytest.raises(ValueError, match="unknown size 'huge'"):
        budget("production", "et", "huge")


def test_composition_and_speed_boxes(tmp_path):
    assert composition([8, 1, 1] * 3 + [11, 17]) == {"waters": 3, "ion_pairs": 1, "atoms": 11}
    with pytest.raises(ValueError, match=r"other elements too \(atomic numbers \[6\]\)"):
        composition([8, 1, 1, 6])
    with pytest.raises(ValueError, match="not whole waters"):
        composition([8, 1, 1, 11])
    # 60 waters + 2 pairs (64 sites, 184 atoms) scaled to ~300 and ~3,000 atoms
    boxes = speed_boxes([8, 1, 1] * 60 + [11, 11, 17, 17], tmp_path, atoms=(300, 3000))
    assert [(b["target"], b["ion_pairs"]) for b in boxes] == [(300, 3), (3000, 33)]
    for b in boxes:
        assert abs(b["atoms"] - b["target"]) / b["target"] < 0.05
        assert os.path.exists(b["pdb"])


def test_pareto_trains_times_and_plots_every_model(salt_data, tmp_path):
    out = tmp_path / "pareto"
    done = run_cli("potential", "pareto", "--data", salt_data, "--out", out, "--quick",
                   "--models", "attention:small", "et:medium", "--seeds", "0", "1",
                   "--atoms", "110", "--speed-threads", "1", "2", "--speed-seconds", "0.3",
                   "--threads", "1", "--no-progress", "--json")
    result = json.loads(done.stdout)
    assert result["composition"] == {"waters": 46, "ion_pairs": 1, "atoms": 140}
    assert [(m["architecture"], m["size"]) for m in result["models"]] == [
        ("attention", "small"), ("et", "medium")]
    assert len(result["runs"]) == 4 and result["boxes"][0]["ion_pairs"] == 1
    for m in result["models"]:
        mine = [r["force_mae"] for r in result["runs"]
                if (r["architecture"], r["size"]) == (m["architecture"], m["size"])]
        assert m["force_mae_seeds"] == mine and m["force_mae"] == pytest.approx(np.mean(mine))
        rates = m["steps_per_second_openmm"]["110"]
        assert set(rates) == {"1", "2"} and min(rates.values()) > 0
        assert min(m["peak_rss_bytes"]["110"].values()) > 0 and m["failed"] == {}
    for r in result["runs"]:
        # quick budget: 2 epochs over at most 16 training frames (a stride), batches of 4
        frames = json.loads((out / "runs" / r["name"] / "metrics.json").read_text())["train_frames"]
        stride = -(-frames // 16)
        assert r["optimizer_steps"] == 2 * -(-len(range(0, frames, stride)) // 4)
        wall = r["training_seconds"]  # recorded for the learning curves, not judged
        assert wall > 0 and (out / "runs" / r["name"] / "model.pt").exists()
    (row,) = result["comparison"]
    attention, et = result["models"]
    assert row["force_mae_ratio"] == pytest.approx(attention["force_mae"] / et["force_mae"])
    assert row["speed_ratio"]["1"] == pytest.approx(
        attention["steps_per_second_openmm"]["110"]["1"] / et["steps_per_second_openmm"]["110"]["1"])
    assert result["goal"]["met"] == (row["force_mae_ratio"] <= 1.1
                                     and min(row["speed_ratio"].values()) >= 2.0)
    for name in ("pareto.png", "learning_curves.png", "pareto.json"):
        assert (out / name).read_bytes()[:4] in (b"\x89PNG", b"{\n  ")


def test_pareto_refuses_bad_input_before_writing(salt_data, tmp_path):
    out = tmp_path / "refused"
    done = run_cli("potential", "pareto", "--data", salt_data, "--out", out, "--quick",
                   "--atoms", "60", expect=2)
    assert "less than twice the cutoff" in done.stderr
    done = run_cli("potential", "pareto", "--data", salt_data, "--out", out, "--quick",
                   "--models", "attention:huge", expect=2)
    assert "unknown model attention:huge" in done.stderr
    done = run_cli("potential", "pareto", "--data", salt_data, "--out", out, "--quick",
                   "--models", "attention", expect=2)
    assert "ARCHITECTURE:SIZE" in done.stderr
    few = tmp_path / "few.npz"
    arrays = dict(np.load(salt_data))
    np.savez(few, **{k: (v[:4] if k in ("positions", "forces", "potential_energies",
                                        "box_vectors") else v) for k, v in arrays.items()})
    done = run_cli("potential", "pareto", "--data", few, "--out", out, "--quick", expect=2)
    assert "frames" in done.stderr
    assert not out.exists()


def _killed_by_the_kernel() -> dict:
    os.kill(os.getpid(), signal.SIGKILL)  # as the out-of-memory killer does


def _refuses() -> dict:
    raise ValueError("a clear error from the timing process")


def test_a_timing_process_that_dies_is_recorded_not_waited_for():
    """The first full pareto run hung: the out-of-memory killer took a timing process of a
    multiprocessing Pool, which replaced it and waited for its result forever."""
    result = in_fresh_process(_killed_by_the_kernel)
    assert list(result) == ["failed"] and "died" in result["failed"]
    with pytest.raises(ValueError, match="clear error"):
        in_fresh_process(_refuses)


def test_pareto_trainings_on_a_local_cluster_equal_the_serial_ones(salt_data, tmp_path):
    """--cluster: one training per task; the trained models' test errors are the serial
    run's (same seeds, one thread each); the timings run here either way."""
    common = ["potential", "pareto", "--data", salt_data, "--quick", "--models",
              "attention:small", "--seeds", "0", "1", "--atoms", "110", "--speed-threads", "1",
              "--speed-seconds", "0.2", "--threads", "1", "--no-progress", "--json"]
    serial = json.loads(run_cli(*common, "--out", tmp_path / "serial").stdout)
    done = run_cli(*common, "--out", tmp_path / "local", "--cluster", "local:2")
    local = json.loads(done.stdout)
    assert "running on a local cluster of 2 processes" in done.stderr
    assert ([(r["name"], r["force_mae"], r["optimizer_steps"]) for r in serial["runs"]]
            == [(r["name"], r["force_mae"], r["optimizer_steps"]) for r in local["runs"]])
    assert sorted(p.name for p in (tmp_path / "local" / "logs").iterdir()) == [
        "attention-small-s0.log", "attention-small-s1.log"]
    assert local["models"][0]["steps_per_second_openmm"]["110"]["1"] > 0
