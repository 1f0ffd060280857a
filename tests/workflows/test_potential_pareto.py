"""`potential pareto` and the model sizes: quick models on salt-water data made with OpenMM."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from openmm_geom.data.water import generate_water_reference
from openmm_geom.models.potentials import build_potential
from openmm_geom.workflows.config import MODEL_SIZES, SIZES, budget
from openmm_geom.workflows.potential_pareto import composition, speed_boxes

CLI = [sys.executable, "-m", "openmm_geom.cli"]


def run_cli(*args, expect=0):
    done = subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=900,
                          env={**os.environ, "OPENMM_GEOM_THREADS": "1"})
    assert done.returncode == expect, done.stderr[-3000:]
    return done


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
    assert not out.exists()
