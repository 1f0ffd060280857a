"""CVReporter writes what a StateDataReporter user expects, with the model's values."""
import io

import numpy as np
import openmm
import openmm.app as app
import openmm.unit as unit
import pytest
import torch

from openmm_geom.export import export_model
from openmm_geom.models import Dihedrals, backbone_quadruplets
from openmm_geom.openmm import CVReporter


@pytest.fixture
def simulation(alanine_pdb):
    system = app.ForceField("amber14-all.xml").createSystem(alanine_pdb.topology,
                                                              nonbondedMethod=app.NoCutoff)
    integrator = openmm.LangevinMiddleIntegrator(300, 1.0, 0.001)
    integrator.setRandomNumberSeed(7)
    sim = app.Simulation(alanine_pdb.topology, system, integrator,
                         openmm.Platform.getPlatformByName("Reference"))
    sim.context.setPositions(alanine_pdb.positions)
    sim.context.setVelocitiesToTemperature(300, 7)
    return sim


def test_csv_matches_state_data_reporter_conventions(simulation, alanine_pdb, tmp_path):
    quads = backbone_quadruplets(alanine_pdb.topology)
    path = tmp_path / "cv.pt"
    export_model(Dihedrals(quads), path, kind="cv", length_unit="nm", periodic=False,
                 example_positions=alanine_pdb.positions, cv_names=["phi", "psi"])
    cv_out, state_out = io.StringIO(), io.StringIO()
    simulation.reporters.append(CVReporter(cv_out, 10, path))
    simulation.reporters.append(app.StateDataReporter(state_out, 10, step=True, time=True))
    simulation.step(50)

    cv_lines = cv_out.getvalue().splitlines()
    state_lines = state_out.getvalue().splitlines()
    assert cv_lines[0] == '#"Step","Time (ps)","phi","psi"'
    assert state_lines[0].startswith('#"Step","Time (ps)"')
    rows = np.array([[float(v) for v in line.split(",")] for line in cv_lines[1:]])
    state_rows = np.array([[float(v) for v in line.split(",")] for line in state_lines[1:]])
    np.testing.assert_array_equal(rows[:, :2], state_rows[:, :2])  # same steps and times
    assert rows[:, 0].tolist() == [10, 20, 30, 40, 50]

    # the last row holds the CVs of the final positions
    positions = simulation.context.getState(getPositions=True).getPositions(asNumpy=True)
    expected = Dihedrals(quads)(torch.as_tensor(positions.value_in_unit(unit.nanometer)))
    np.testing.assert_allclose(rows[-1, 2:], expected.numpy(), rtol=1e-12)


def test_atom_subset_and_append(simulation, alanine_pdb, tmp_path):
    subset = [4, 6, 8, 14]
    positions = alanine_pdb.getPositions(asNumpy=True).value_in_unit(unit.nanometer)[subset]
    path = tmp_path / "phi.pt"
    export_model(Dihedrals([[0, 1, 2, 3]]), path, kind="cv", length_unit="nm", periodic=False,
                 example_positions=positions)
    log = tmp_path / "phi.csv"
    reporter = CVReporter(log, 5, path, atom_indices=subset, names=["phi"])
    simulation.reporters.append(reporter)
    simulation.step(10)
    reporter.close()
    simulation.reporters[:] = [CVReporter(log, 5, path, atom_indices=subset, append=True)]
    simulation.step(10)
    simulation.reporters[0].close()
    lines = log.read_text().splitlines()
    assert lines[0] == '#"Step","Time (ps)","phi"' and len(lines) == 5
    assert [int(line.split(",")[0]) for line in lines[1:]] == [5, 10, 15, 20]


def test_subset_out_of_range(simulation, alanine_pdb, tmp_path):
    path = tmp_path / "phi.pt"
    export_model(Dihedrals([[0, 1, 2, 3]]), path, kind="cv", length_unit="nm", periodic=False,
                 example_positions=alanine_pdb.getPositions(asNumpy=True)[:4])
    simulation.reporters.append(CVReporter(io.StringIO(), 5, path, atom_indices=[0, 1, 2, 99]))
    with pytest.raises(IndexError, match="atom_indices out of range for a system of 22"):
        simulation.step(5)
