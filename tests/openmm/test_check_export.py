"""check_export and the `openmm-geom check-export` command: pass good exports, fail bad ones."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
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


# --- CVs: finite differences where the output depends, on the circle for angles -----------

def _phi_psi(alanine_pdb, path, **options):
    from openmm_geom.models import Dihedrals, backbone_quadruplets

    quads = backbone_quadruplets(alanine_pdb.topology)
    export_model(Dihedrals(quads), path, kind="cv", length_unit="nm", periodic=False,
                 example_positions=alanine_pdb.positions, cv_names=["phi", "psi"], **options)
    return quads


@pytest.mark.parametrize("seed", [0, 1])
def test_dihedral_cv_is_differenced_at_its_own_atoms_on_the_circle(alanine_pdb, tmp_path, seed):
    """Before: seed 0 drew no coordinate of the dihedrals' atoms (FD error exactly 0, a pass
    that tested nothing); seed 1 drew a step across the +-pi branch cut (error 3.4e4, FAIL)."""
    path = tmp_path / "phi_psi.pt"
    quads = _phi_psi(alanine_pdb, path)
    done = _cli("check-export", path, "--json", "--seed", seed, "--platforms", "Reference")
    assert done.returncode == 0, done.stdout + done.stderr
    fd = next(c for c in json.loads(done.stdout)["checks"] if c["name"] == "finite_differences")
    assert fd["passed"] and 0.0 < fd["error"] <= fd["tolerance"]
    for name, quad in zip(("phi", "psi"), quads):
        output = fd["data"]["outputs"][name]
        assert output["period"] == pytest.approx(2 * np.pi)
        assert output["depends_on_atoms"] == sorted(quad)
        # all 12 coordinates of the 4 atoms (fd_coordinates defaults to 12)
        assert sorted(map(tuple, output["coordinates"])) == sorted(
            (atom, axis) for atom in quad for axis in "xyz")
        # the bundled structure sits at phi = psi = pi: some steps cross the branch cut
        assert output["branch_cut_crossings"]
        assert f"{name}: 12 coordinates of atoms {sorted(quad)}" in fd["detail"]
    assert fd["data"]["independent_outputs"] == []


def test_angle_without_recorded_period_names_the_branch_cut(alanine_pdb, tmp_path):
    path = tmp_path / "phi_psi.pt"
    _phi_psi(alanine_pdb, path, cv_periods=[None, None])  # as if not an angle
    report = check_export(path, platforms=["Reference"], checks=["finite_differences"])
    (fd,) = report.checks
    assert not fd.passed and fd.error > 1.0
    assert "crossed the branch cut of an angle" in fd.detail
    assert "export it with cv_periods" in fd.detail


def test_file_without_cv_periods_still_loads_and_is_checked(alanine_pdb, tmp_path):
    """Files written before CV periods were recorded: metadata without the field."""
    from openmm_geom.modelfile import METADATA_ATTRIBUTE, ModelMetadata, save_model
    from openmm_geom.openmm import ExportedModel

    path = tmp_path / "phi_psi.pt"
    _phi_psi(alanine_pdb, path)
    module = ExportedModel.load(path).module
    old = json.loads(getattr(module, METADATA_ATTRIBUTE))
    del old["cv_periods"]
    setattr(module, METADATA_ATTRIBUTE, json.dumps(old))
    save_model(module, tmp_path / "old.pt")
    loaded = ExportedModel.load(tmp_path / "old.pt")
    assert loaded.metadata.cv_periods is None and loaded.metadata.cv_period(0) is None
    assert ModelMetadata.from_json(json.dumps(old)).names == ["phi", "psi"]
    report = check_export(loaded, platforms=["Reference"], checks=["finite_differences"])
    assert "crossed the branch cut of an angle" in report.checks[0].detail


class _HalfConstant(torch.nn.Module):
    """CV 0 depends on no coordinate; CV 1 is the y coordinate of atom 1."""

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        return torch.stack([positions[0, 0] * 0.0 + 1.0, positions[1, 1]])


def test_output_that_depends_on_no_coordinate_is_not_a_pass(rng, tmp_path):
    path = tmp_path / "half.pt"
    export_model(_HalfConstant(), path, kind="cv", length_unit="nm", periodic=False,
                 example_positions=jittered_lattice(2, 0.4, rng))
    report = check_export(path, platforms=["Reference"], checks=["finite_differences"])
    (fd,) = report.checks
    assert not fd.passed
    assert "cv0 depends on no coordinate at this configuration" in fd.detail
    assert fd.data["independent_outputs"] == ["cv0"]
    assert fd.data["outputs"]["cv1"]["depends_on_atoms"] == [1]
    assert "FAIL  finite_differences" in report.format()


def test_potential_differences_only_atoms_it_depends_on(rng, tmp_path):
    """An external field on atoms 2 and 5 only: the coordinates drawn are theirs."""
    path = tmp_path / "two.pt"
    export_model(_TwoAtomField(), path, length_unit="nm", energy_unit="kJ/mol", periodic=False,
                 example_positions=jittered_lattice(2, 0.4, rng))
    report = check_export(path, platforms=["Reference"], checks=["finite_differences"],
                          fd_coordinates=4)
    (fd,) = report.checks
    assert fd.passed and fd.error > 0.0
    energy = fd.data["outputs"]["energy"]
    assert energy["depends_on_atoms"] == [2, 5]
    assert len(energy["coordinates"]) == 4
    assert {atom for atom, _ in energy["coordinates"]} <= {2, 5}


class _TwoAtomField(torch.nn.Module):
    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        return (positions[2] ** 2).sum() + (positions[5] ** 3).sum()
