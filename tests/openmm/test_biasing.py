"""Umbrellas and well-tempered metadynamics on TorchCVForce, judged by physics."""
import math

import numpy as np
import openmm
import openmm.app as app
import openmm.unit as unit
import pytest
from cv_models import Coordinates

from openmm_geom.export import export_model
from openmm_geom.models import Dihedrals, backbone_quadruplets
from openmm_geom.openmm import CVReporter, GridAxis, Metadynamics, restraint_force

KT_300 = 2.494338785  # kJ/mol


@pytest.fixture
def alanine_cvs(alanine_pdb, tmp_path):
    path = tmp_path / "cvs.pt"
    quads = backbone_quadruplets(alanine_pdb.topology) + [[1, 4, 6, 8]]
    export_model(Dihedrals(quads), path, kind="cv", length_unit="nm", periodic=False,
                 example_positions=alanine_pdb.positions, cv_names=["phi", "psi", "omega"])
    return path


def _alanine_simulation(pdb, system, seed=1):
    integrator = openmm.LangevinMiddleIntegrator(300, 1.0, 0.002)
    integrator.setRandomNumberSeed(seed)
    simulation = app.Simulation(pdb.topology, system, integrator,
                                openmm.Platform.getPlatformByName("CPU"))
    simulation.context.setPositions(pdb.positions)
    simulation.minimizeEnergy(maxIterations=100)
    return simulation


def _alanine_system(pdb):
    return app.ForceField("amber14-all.xml").createSystem(
        pdb.topology, nonbondedMethod=app.NoCutoff, constraints=app.HBonds)


def _periodic_hills_sum(point, hills, width):
    """Oracle: sum of periodic Gaussians, computed directly from the deposited hills."""
    hills = np.asarray(hills, dtype=float)
    d = np.asarray(point)[None, :] - hills[:, :-1]
    d -= 2 * math.pi * np.floor(d / (2 * math.pi) + 0.5)
    return float((hills[:, -1] * np.exp(-0.5 * ((d / width) ** 2).sum(-1))).sum())


@pytest.mark.parametrize("n_cvs", [1, 2, 3])
def test_metadynamics_runs_on_1_to_3_cvs(n_cvs, alanine_pdb, alanine_cvs):
    system = _alanine_system(alanine_pdb)
    # 48 points per axis: interpolation error (h^2/8 |V''| per axis, h = 0.134 rad, |V''| <=
    # height/width^2) stays below 0.03 kJ/mol per axis, so the checks below can be tight
    # whatever trajectory the thread count produces.
    axes = [GridAxis(name, -math.pi, math.pi, 0.4, periodic=True, points=48)
            for name in ["phi", "psi", "omega"][:n_cvs]]
    meta = Metadynamics(system, alanine_cvs, axes, 300 * unit.kelvin, bias_factor=8.0,
                        height=2.0, frequency=25, force_group=5)
    simulation = _alanine_simulation(alanine_pdb, system)
    meta.step(simulation, 250)
    assert len(meta.hills) == 10
    heights = [hill[-1] for hill in meta.hills]
    assert heights[0] == pytest.approx(2.0) and min(heights) < 2.0  # well-tempering shrinks hills
    here = meta.current_values(simulation.context)
    exact = _periodic_hills_sum(here, meta.hills, 0.4)
    assert exact > 0.1  # the walker sits on deposited bias, so the comparison means something
    # the Context applies splines of the grid; bias_at is the sum of Gaussians the grid holds
    energy = simulation.context.getState(getEnergy=True, groups={meta.force.getForceGroup()})
    applied = energy.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    assert applied == pytest.approx(exact, abs=0.1)
    assert meta.bias_at(here) == pytest.approx(exact, rel=1e-12)


def test_metadynamics_recovers_a_known_free_energy(tmp_path):
    """One particle in a 1D double well U(x) = 4 (x^2 - 1)^2 kJ/mol (nm): F(x) = U(x) + c."""
    path = tmp_path / "xyz.pt"
    export_model(Coordinates(), path, kind="cv", length_unit="nm", periodic=False,
                 example_positions=[[0.1, 0.2, 0.3]], cv_names=["x", "y", "z"])
    system = openmm.System()
    system.addParticle(1.0)
    well = openmm.CustomExternalForce("4*(x^2-1)^2 + 5*(y^2 + z^2)")
    well.addParticle(0, [])
    system.addForce(well)
    meta = Metadynamics(system, path, [GridAxis("x", -2.0, 2.0, 0.1, points=81)],
                        300, bias_factor=4.0, height=0.3, frequency=50)
    integrator = openmm.LangevinMiddleIntegrator(300, 5.0, 0.004)
    integrator.setRandomNumberSeed(13)
    simulation = app.Simulation(app.Topology(), system, integrator,
                                openmm.Platform.getPlatformByName("Reference"))
    simulation.context.setPositions([[-1.0, 0.0, 0.0]])
    meta.step(simulation, 40_000)
    grid = meta.axes[0].grid
    inside = np.abs(grid) < 1.3
    estimate = meta.free_energy()[inside]
    exact = 4 * (grid[inside] ** 2 - 1) ** 2
    error = (estimate - estimate.mean()) - (exact - exact.mean())
    # 160 ps of well-tempered sampling: converged to about a third of kT (measured 0.27 kT)
    assert np.sqrt(np.mean(error ** 2)) < 0.4 * KT_300, np.round(error, 2)


def test_moving_umbrella_drags_the_cv(alanine_pdb, alanine_cvs, tmp_path):
    system = _alanine_system(alanine_pdb)
    force = restraint_force(alanine_cvs, {"phi": (300.0, -1.3), "psi": (300.0, 2.6)},
                            periodic=["phi", "psi"])
    system.addForce(force)
    simulation = _alanine_simulation(alanine_pdb, system)
    log = tmp_path / "cvs.csv"
    simulation.reporters.append(CVReporter(log, 20, force))
    centers = np.linspace(2.6, 0.0, 6)
    for center in centers:
        simulation.context.setParameter("psi0", center)
        simulation.step(400)
    phi, psi, _ = force.getCollectiveVariableValues(simulation.context)
    assert abs(psi - centers[-1]) < 0.5 and abs(phi + 1.3) < 0.5
    lines = log.read_text().splitlines()
    assert lines[0] == '#"Step","Time (ps)","phi","psi","omega"' and len(lines) == 1 + 6 * 400 // 20
    logged_psi = np.array([float(line.split(",")[3]) for line in lines[1:]])
    assert logged_psi[:20].mean() > 2.0 and logged_psi[-20:].mean() < 0.6


def test_restraint_on_unknown_cv(alanine_cvs):
    with pytest.raises(ValueError, match=r"no CVs named \['chi'\]"):
        restraint_force(alanine_cvs, {"chi": (10.0, 0.0)})


def test_metadynamics_input_checks(alanine_pdb, alanine_cvs):
    system = _alanine_system(alanine_pdb)
    axis = GridAxis("phi", -math.pi, math.pi, 0.4, periodic=True)
    with pytest.raises(ValueError, match="1 to 3 CVs"):
        Metadynamics(system, alanine_cvs, [axis] * 4, 300, 5.0, 1.0, 10)
    with pytest.raises(ValueError, match="bias_factor must be > 1"):
        Metadynamics(system, alanine_cvs, [axis], 300, 1.0, 1.0, 10)
    with pytest.raises(ValueError, match="periodic in all or no dimensions"):
        Metadynamics(system, alanine_cvs, [axis, GridAxis("psi", -3, 3, 0.4)], 300, 5.0, 1.0, 10)
    with pytest.raises(ValueError, match="maximum must exceed minimum"):
        GridAxis("phi", 1.0, 0.0, 0.1)


def _restraint_energy(model, restraints, positions, n, **options):
    system = openmm.System()
    for _ in range(n):
        system.addParticle(12.0)
    system.addForce(restraint_force(model, restraints, **options))
    context = openmm.Context(system, openmm.VerletIntegrator(0.001),
                             openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(positions)
    return context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(
        unit.kilojoule_per_mole)


def test_restraint_takes_periodicity_from_the_model_file(alanine_pdb, alanine_cvs, tmp_path):
    """Dihedrals record a 2 pi period: the default restraint is on the circle, as periodic=[...]
    says; periodic=() keeps plain differences. A recorded period other than 2 pi is used."""
    positions = alanine_pdb.positions  # phi = psi = pi (the bundled structure)
    restraints = {"phi": (100.0, -3.0), "psi": (100 * unit.kilojoule_per_mole / unit.radian ** 2,
                                                 170 * unit.degree)}
    default = _restraint_energy(alanine_cvs, restraints, positions, 22)
    explicit = _restraint_energy(alanine_cvs, restraints, positions, 22, periodic=["phi", "psi"])
    plain = _restraint_energy(alanine_cvs, restraints, positions, 22, periodic=())
    # phi ~ pi is about 0.14 rad from -3.0 the short way round (6.1 rad the long way), psi
    # ~ pi about 0.17 rad from 170 degrees
    assert default == explicit
    assert default < 0.5 * 100 * (0.3 ** 2 + 0.2 ** 2) < plain

    path = tmp_path / "x.pt"
    export_model(Coordinates(), path, kind="cv", length_unit="nm", periodic=False,
                 example_positions=[[0.1, 0.2, 0.3]], cv_names=["x", "y", "z"],
                 cv_periods=[1.0, None, None])
    at = [[-0.45, 0.0, 0.0]]
    # x - x0 = -0.9 nm is 0.1 nm on a circle of 1 nm: 0.5 * 100 * 0.1^2
    assert _restraint_energy(path, {"x": (100.0, 0.45)}, at, 1) == pytest.approx(0.5, rel=1e-9)
    assert _restraint_energy(path, {"x": (100.0, 0.45)}, at, 1, periodic=()) == pytest.approx(
        0.5 * 100 * 0.81, rel=1e-12)
    with pytest.raises(ValueError, match=r"periodic names CVs \['w'\]"):
        restraint_force(path, {"x": (100.0, 0.45)}, periodic=["w"])
