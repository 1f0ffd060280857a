"""check_export and the `openmm-geom check-export` command: pass good exports, fail bad ones."""
import json
import subprocess
import sys

import numpy as np
import pytest
from analytic import ExternalField, LJHarmonic, chain_bonds, jittered_lattice

from openmm_geom.export import export_model
from openmm_geom.openmm import check_export


@pytest.fixture
def lj_file(rng, tmp_path):
    positions = jittered_lattice(3, 0.36, rng)
    model = LJHarmonic(chain_bonds(27), cutoff=5.0)
    path = tmp_path / "lj.pt"
    export_model(model, path, length_unit="angstrom", energy_unit="eV", periodic=True,
                 example_positions=positions, example_box=np.eye(3) * 1.08, cutoff=5.0,
                 masses=[39.9] * 27)
    return path, model


@pytest.fixture
def field_file(rng, tmp_path):
    path = tmp_path / "field.pt"
    export_model(ExternalField(), path, length_unit="angstrom", energy_unit="eV",
                 periodic=False, example_positions=jittered_lattice(2, 0.4, rng))
    return path


def test_good_periodic_export_passes_every_check(lj_file):
    path, model = lj_file
    report = check_export(path, eager=model, nve_steps=200)
    names = [c.name for c in report.checks]
    assert names == ["in_context[Reference]", "in_context[CPU]", "finite_differences",
                     "translation", "periodic_images", "nve_drift"]
    assert report.passed, report.format()
    assert all(c.error is not None and c.error <= c.tolerance for c in report.checks)


def test_cv_export_checks_every_component(alanine_pdb, tmp_path):
    from openmm_geom.models import Dihedrals, backbone_quadruplets

    path = tmp_path / "cv.pt"
    export_model(Dihedrals(backbone_quadruplets(alanine_pdb.topology)), path, kind="cv",
                 length_unit="nm", periodic=False, example_positions=alanine_pdb.positions)
    report = check_export(path, platforms=["Reference"])
    assert report.passed, report.format()
    assert "nve_drift" not in [c.name for c in report.checks]  # CVs have no dynamics
    assert report.output_dim == 2


def test_translation_dependent_model_fails(field_file):
    report = check_export(field_file, checks=["in_context", "translation"], platforms=["Reference"])
    assert not report.passed
    failed = [c.name for c in report.checks if not c.passed]
    assert failed == ["translation"]


def test_eager_model_that_differs_from_the_export_fails(lj_file):
    path, _ = lj_file
    other = LJHarmonic(chain_bonds(27), cutoff=5.0, eps=0.02)  # not what was exported
    report = check_export(path, eager=other, checks=["in_context"])
    assert not report.passed and "eager model" in report.checks[0].detail


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "openmm_geom.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=600)


def test_cli_json_and_exit_codes(lj_file, field_file, tmp_path):
    done = _cli("check-export", lj_file[0], "--json", "--nve-steps", "100")
    assert done.returncode == 0, done.stdout + done.stderr
    payload = json.loads(done.stdout)
    assert payload["passed"] and payload["n_atoms"] == 27

    done = _cli("check-export", field_file, "--json", "--platforms", "Reference")
    assert done.returncode == 1
    assert not json.loads(done.stdout)["passed"]

    done = _cli("check-export", tmp_path / "missing.pt", "--json")
    assert done.returncode == 2
    assert "model file not found" in json.loads(done.stdout)["error"]

    done = _cli("check-export", field_file)  # human-readable report
    assert done.returncode == 1 and "FAIL  translation" in done.stdout
