"""examples/water_ml_potential.py runs for every number of molecules it accepts and refuses the
others up front (before: --molecules 8 failed in training with "box too small for the cutoff",
after writing data, although the docstring promised any number)."""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "water_ml_potential.py"


def _example():
    spec = importlib.util.spec_from_file_location("water_ml_potential", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(tmp_path, *args):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True,
                          text=True, timeout=900, cwd=tmp_path,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})


def test_the_stated_minimum_is_the_computed_one():
    from openmm_geom.data.water import water_box_edge_nm
    from openmm_geom.workflows.potential import budget

    example = _example()
    cutoff = budget("quick", "attention").cutoff_nm
    smallest = example.minimum_molecules(cutoff)
    assert water_box_edge_nm(smallest) >= 2 * cutoff > water_box_edge_nm(smallest - 1)
    doc = " ".join(example.__doc__.split())
    assert f"{smallest} for the {cutoff:g} nm cutoff of the demonstration model" in doc
    assert [example.minimum_molecules(c) for c in (0.4, 0.6)] == [18, 58]  # as documented
    assert "(18 at 0.4 nm, 58 at 0.6 nm)" in doc


@pytest.mark.parametrize("args, message", [
    (("--molecules", "8"), "--molecules 8 makes a 0.621 nm box, too small for the "
                           "demonstration model's cutoff of 0.5 nm"),
    (("--molecules", "0"), "--molecules must be >= 1"),
    (("--steps", "-5"), "--steps must be >= 0"),
    (("--model", "missing.pt"), "--model missing.pt: potential checkpoint not found"),
])
def test_refused_before_anything_is_written(tmp_path, args, message):
    done = _run(tmp_path, *args, "--out", tmp_path / "out")
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()


def test_runs_at_the_smallest_accepted_box(tmp_path):
    done = _run(tmp_path, "--molecules", 34, "--steps", 20, "--out", tmp_path / "out")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "34 waters, 20 steps" in done.stdout
    assert (tmp_path / "out" / "water_ml.pt").stat().st_size > 0
