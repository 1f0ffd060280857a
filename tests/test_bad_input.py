"""Every bad input gets a clear error that names the problem, and nothing is written half-way."""
import zipfile

import numpy as np
import openmm
import openmm.unit as unit
import pytest
import torch
from analytic import LJHarmonic, jittered_lattice

from openmm_geom.errors import ExportError, ModelFileError, TopologyMismatchError
from openmm_geom.export import export_model
from openmm_geom.models import Dihedrals
from openmm_geom.openmm import CVReporter, ExportedModel, add_to_system
from openmm_geom.openmm.forces import torch_force


@pytest.fixture
def lattice(rng):
    return jittered_lattice(3, 0.36, rng)  # 27 atoms, nm


@pytest.fixture
def periodic_model(lattice, tmp_path):
    path = tmp_path / "lj.pt"
    export_model(LJHarmonic([], cutoff=4.0), path, length_unit="angstrom", energy_unit="eV",
                 periodic=True, example_positions=lattice, example_box=np.eye(3) * 1.08,
                 cutoff=4.0)
    return path


def _context(path, n_atoms, box=None, platform="Reference"):
    system = openmm.System()
    for _ in range(n_atoms):
        system.addParticle(1.0)
    if box is not None:
        system.setDefaultPeriodicBoxVectors(*[openmm.Vec3(*row) for row in box])
    system.addForce(torch_force(path))
    properties = {"Threads": "1"} if platform == "CPU" else {}
    return openmm.Context(system, openmm.VerletIntegrator(0.001),
                          openmm.Platform.getPlatformByName(platform), properties)


def _energy_error(context, positions):
    context.setPositions(positions)
    with pytest.raises(openmm.OpenMMException) as info:
        context.getState(getEnergy=True)
    return str(info.value)


# --- inside a running Context -------------------------------------------------------------

def test_wrong_atom_count_in_context(periodic_model, lattice):
    context = _context(periodic_model, 28, np.eye(3) * 1.08)
    message = _energy_error(context, np.vstack([lattice, [[0.5, 0.5, 0.5]]]))
    assert "wrong atom count: the model was exported for 27 atoms, got 28" in message


def test_wrong_atom_count_checked_against_system(periodic_model):
    system = openmm.System()
    for _ in range(30):
        system.addParticle(1.0)
    with pytest.raises(TopologyMismatchError, match="exported for 27 atoms but the system has 30"):
        add_to_system(periodic_model, system)
    assert system.getNumForces() == 0  # refused before anything was added


def test_nan_coordinates_in_context(periodic_model, lattice):
    context = _context(periodic_model, 27, np.eye(3) * 1.08)
    bad = lattice.copy()
    bad[3, 1] = np.nan
    assert "positions contain NaN/inf values (first bad atoms: [3])" in _energy_error(context, bad)


class _TwoAtoms(torch.nn.Module):
    """A potential of atoms 0 and 1 only: a NaN elsewhere never reaches its arithmetic."""

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        return ((positions[0] - positions[1]) ** 2).sum()


@pytest.mark.parametrize("platform", ["Reference", "CPU"])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_positions_are_refused_before_the_model_runs(platform, value, lattice,
                                                                tmp_path):
    """Before: a TorchForce of this model returned a finite energy for a NaN position."""
    path = tmp_path / "two.pt"
    export_model(_TwoAtoms(), path, length_unit="nm", energy_unit="kJ/mol", periodic=False,
                 example_positions=lattice[:4])
    context = _context(path, 4, platform=platform)
    context.setPositions(lattice[:4])
    assert np.isfinite(context.getState(getEnergy=True).getPotentialEnergy()._value)
    bad = lattice[:4].copy()
    bad[2, 0] = value
    message = _energy_error(context, bad)
    if platform == "CPU" and np.isnan(value):  # OpenMM's CPU platform refuses NaN itself
        assert "Particle coordinate is NaN" in message
    else:
        assert "positions contain NaN/inf values (first bad atoms: [2]); the model was not run" \
            in message


@pytest.mark.parametrize("platform", ["Reference", "CPU"])
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_box_is_refused(platform, value, periodic_model, lattice):
    context = _context(periodic_model, 27, np.eye(3) * 1.08, platform=platform)
    box = np.eye(3) * 1.08
    box[2, 2] = value
    context.setPositions(lattice)
    context.setPeriodicBoxVectors(*[openmm.Vec3(*row) for row in box])
    with pytest.raises(openmm.OpenMMException, match="the periodic box contains NaN/inf values"):
        context.getState(getEnergy=True)


def test_non_finite_input_is_refused_by_the_module_itself(periodic_model, lattice):
    module = ExportedModel.load(periodic_model).module
    box = torch.eye(3, dtype=torch.float64) * 1.08
    bad = torch.as_tensor(lattice).clone()
    bad[5, 2] = float("nan")
    with pytest.raises(Exception, match=r"positions contain NaN/inf values \(first bad atoms: \[5\]\)"):
        module(bad, box)
    box[0, 0] = float("inf")
    with pytest.raises(Exception, match="the periodic box contains NaN/inf values"):
        module(torch.as_tensor(lattice), box)


def test_box_too_small_for_cutoff_in_context(periodic_model, lattice):
    context = _context(periodic_model, 27, np.eye(3) * 0.7)
    assert "box too small for the cutoff" in _energy_error(context, lattice)


def test_box_too_small_checked_against_system(periodic_model):
    system = openmm.System()
    for _ in range(27):
        system.addParticle(1.0)
    system.setDefaultPeriodicBoxVectors(*[openmm.Vec3(*row) for row in np.eye(3) * 0.7])
    with pytest.raises(ValueError, match="box too small for the cutoff"):
        add_to_system(periodic_model, system)


def test_periodic_model_without_box_is_refused(periodic_model, lattice):
    module = ExportedModel.load(periodic_model).module
    with pytest.raises(Exception, match="this model is periodic and needs the box vectors"):
        module(torch.as_tensor(lattice))


# --- at export time -----------------------------------------------------------------------

def test_unknown_units_are_refused(lattice, tmp_path):
    model = LJHarmonic([], cutoff=4.0)
    with pytest.raises(ValueError, match="unknown length unit 'furlong'"):
        export_model(model, tmp_path / "x.pt", length_unit="furlong", energy_unit="eV",
                     periodic=False, example_positions=lattice)
    with pytest.raises(ValueError, match="unknown energy unit 'kJ'"):
        export_model(model, tmp_path / "x.pt", length_unit="nm", energy_unit="kJ",
                     periodic=False, example_positions=lattice)
    with pytest.raises(ValueError, match="energy_unit is required for a potential"):
        export_model(model, tmp_path / "x.pt", length_unit="nm", periodic=False,
                     example_positions=lattice)
    with pytest.raises(ValueError, match="is not a length unit"):
        export_model(model, tmp_path / "x.pt", length_unit=unit.kilojoule_per_mole,
                     energy_unit="eV", periodic=False, example_positions=lattice)
    assert not (tmp_path / "x.pt").exists()


def test_positions_with_wrong_units_are_refused(lattice, tmp_path):
    with pytest.raises(TypeError, match="not compatible|expected a length"):
        export_model(LJHarmonic([]), tmp_path / "x.pt", length_unit="nm", energy_unit="eV",
                     periodic=False, example_positions=lattice * unit.kilojoule_per_mole)


def test_cv_module_with_energy_unit_is_refused(alanine_pdb, tmp_path):
    with pytest.raises(ValueError, match="leave energy_unit unset"):
        export_model(Dihedrals([[4, 6, 8, 14]]), tmp_path / "x.pt", kind="cv", length_unit="nm",
                     energy_unit="eV", periodic=False, example_positions=alanine_pdb.positions)


def test_box_too_small_at_export(lattice, tmp_path):
    with pytest.raises(ValueError, match="box too small for the cutoff"):
        export_model(LJHarmonic([], cutoff=6.0), tmp_path / "x.pt", length_unit="angstrom",
                     energy_unit="eV", periodic=True, example_positions=lattice,
                     example_box=np.eye(3) * 1.08, cutoff=6.0)


def test_nan_example_positions(lattice, tmp_path):
    lattice[0, 0] = np.inf
    with pytest.raises(ValueError, match="example_positions contains NaN or infinite"):
        export_model(LJHarmonic([]), tmp_path / "x.pt", length_unit="nm", energy_unit="eV",
                     periodic=False, example_positions=lattice)


class _NotScriptable(torch.nn.Module):
    def forward(self, positions):
        return torch.tensor(float(np.sum(positions.detach().numpy() ** 2)))


def test_unscriptable_model_points_to_python_force(lattice, tmp_path):
    with pytest.raises(ExportError, match="python_force"):
        export_model(_NotScriptable(), tmp_path / "x.pt", length_unit="nm", energy_unit="eV",
                     periodic=False, example_positions=lattice)
    assert not (tmp_path / "x.pt").exists()


class _Matrix(torch.nn.Module):
    def forward(self, positions):
        return positions[:2, :2].sum(1, keepdim=True)


def test_bad_cv_periods_are_refused(alanine_pdb, tmp_path):
    quads = [[4, 6, 8, 14], [6, 8, 14, 16]]
    for periods, message in (([6.28], "1 cv_periods given for 2 CV outputs"),
                             ([6.28, -1.0], "cv_periods must be positive numbers or None"),
                             ([0.0, None], "cv_periods must be positive numbers or None")):
        with pytest.raises(ValueError, match=message):
            export_model(Dihedrals(quads), tmp_path / "x.pt", kind="cv", length_unit="nm",
                         periodic=False, example_positions=alanine_pdb.positions,
                         cv_periods=periods)
    with pytest.raises(ValueError, match="cv_periods is only meaningful for a CV module"):
        export_model(LJHarmonic([]), tmp_path / "x.pt", length_unit="nm", energy_unit="eV",
                     periodic=False, example_positions=alanine_pdb.positions,
                     cv_periods=[6.28])
    assert not (tmp_path / "x.pt").exists()


def test_cv_with_wrong_output_shape(lattice, tmp_path):
    with pytest.raises(ValueError, match=r"must return a 1-D tensor \(k,\), got shape \(2, 1\)"):
        export_model(_Matrix(), tmp_path / "x.pt", kind="cv", length_unit="nm", periodic=False,
                     example_positions=lattice)


def test_eager_module_is_not_a_torch_force():
    with pytest.raises(TypeError, match="export it first"):
        torch_force(LJHarmonic([]))


def test_multi_cv_module_needs_output_index(alanine_pdb, tmp_path):
    path = tmp_path / "cv.pt"
    export_model(Dihedrals([[4, 6, 8, 14], [6, 8, 14, 16]]), path, kind="cv", length_unit="nm",
                 periodic=False, example_positions=alanine_pdb.positions)
    with pytest.raises(ValueError, match="returns 2 CVs; a force takes one"):
        torch_force(path)
    with pytest.raises(IndexError, match="CV index 2 out of range"):
        torch_force(path, output_index=2)
    with pytest.raises(ValueError, match="2 names for 1|1 names for 2"):
        CVReporter(tmp_path / "log.csv", 10, path, names=["phi"])


# --- model files --------------------------------------------------------------------------

def test_missing_file():
    with pytest.raises(ModelFileError, match="model file not found"):
        ExportedModel.load("/nonexistent/model.pt")


def test_not_a_model_file(tmp_path):
    (tmp_path / "notes.pt").write_text("these are not weights")
    with pytest.raises(ModelFileError, match="not a TorchScript model file"):
        ExportedModel.load(tmp_path / "notes.pt")


def test_truncated_file(periodic_model, tmp_path):
    data = periodic_model.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="not a TorchScript model file|could not be loaded"):
        ExportedModel.load(tmp_path / "cut.pt")


def test_corrupted_member(periodic_model, tmp_path):
    """A zip that is intact but whose module pickle was damaged.

    (Damaging the TorchScript source instead only fails when no module of the same classes
    was loaded before in the process: torch reuses class definitions it already knows.)
    """
    damaged = tmp_path / "damaged.pt"
    with zipfile.ZipFile(periodic_model) as source, zipfile.ZipFile(damaged, "w") as target:
        for item in source.infolist():
            data = source.read(item.filename)
            if item.filename.endswith("/data.pkl"):
                data = data[: len(data) // 2]
            target.writestr(item, data)
    with pytest.raises(ModelFileError, match="could not be loaded as TorchScript"):
        ExportedModel.load(damaged)


def test_torchscript_without_metadata(tmp_path):
    torch.jit.save(torch.jit.script(Dihedrals([[0, 1, 2, 3]])), str(tmp_path / "plain.pt"))
    with pytest.raises(ModelFileError, match="carries no openmm-geom metadata"):
        ExportedModel.load(tmp_path / "plain.pt")


def test_failed_export_keeps_the_previous_file(periodic_model, lattice):
    before = periodic_model.read_bytes()
    with pytest.raises(ExportError):
        export_model(_NotScriptable(), periodic_model, length_unit="nm", energy_unit="eV",
                     periodic=False, example_positions=lattice)
    assert periodic_model.read_bytes() == before
