"""Native Gaussian hills in TorchCVForce and metadynamics on any number of CVs: energies and
forces against numpy, periodic hills, grid vs hills, XML, exact checkpoint resume, c(t)."""
import csv
import math
from typing import List

import numpy as np
import openmm
import openmm.app as app
import openmm.unit as unit
import pytest
import torch
from cv_models import Coordinates, CountingCVs

from openmm_geom.openmm import GridAxis, Metadynamics, TorchCVForce

KJ = unit.kilojoule_per_mole
KT_300 = 2.494338785  # kJ/mol


class FourCoordinates(torch.nn.Module):
    """k = 4 CVs: x, y of atom 0 and x, z of atom 1 (nm)."""

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        return torch.stack([positions[0, 0], positions[0, 1], positions[1, 0], positions[1, 2]])


class AngleAndHeight(torch.nn.Module):
    """phi = atan2(y, x) of atom 0 (periodic, radians) and its z (nm)."""

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        return torch.stack([torch.atan2(positions[0, 1], positions[0, 0]), positions[0, 2]])


FOUR = ["xa", "ya", "xb", "zb"]


def _scripted(module):
    return torch.jit.script(module)


def _system(n, well="2*(x^2+y^2+z^2)"):
    system = openmm.System()
    for _ in range(n):
        system.addParticle(1.0)
    if well:
        external = openmm.CustomExternalForce(well)
        for i in range(n):
            external.addParticle(i, [])
        system.addForce(external)
    return system


def _context(system, platform="Reference"):
    return openmm.Context(system, openmm.VerletIntegrator(0.001),
                          openmm.Platform.getPlatformByName(platform))


def _numpy_hills(s, centers, heights, widths, periods):
    """Energy and dE/ds of sum_h h exp(-0.5 sum_d (delta_d/w_d)^2), written independently."""
    energy, gradient = 0.0, np.zeros(len(s))
    for c, h in zip(centers, heights):
        delta = np.array(s, float) - np.array(c, float)
        for d, p in enumerate(periods):
            if p > 0:
                delta[d] = math.remainder(delta[d], p)
        g = h * math.exp(-0.5 * float(np.sum((delta / widths) ** 2)))
        energy += g
        gradient += -g * delta / np.asarray(widths) ** 2
    return energy, gradient


def _energy_forces(context, positions):
    context.setPositions(positions)
    state = context.getState(getEnergy=True, getForces=True)
    return (state.getPotentialEnergy().value_in_unit(KJ),
            state.getForces(asNumpy=True).value_in_unit(KJ / unit.nanometer))


@pytest.mark.parametrize("platform", ["Reference", "CPU"])
def test_hills_energy_and_forces_match_numpy_and_finite_differences(platform, rng):
    force = TorchCVForce(_scripted(FourCoordinates()), "0.5*xa^2 + xb*zb", cv_names=FOUR)
    cvs, widths = [0, 2, 3, 1], np.array([0.2, 0.15, 0.3, 0.25])  # all four, shuffled order
    force.setHillsVariables(cvs, widths.tolist(), [])
    centers = rng.uniform(-0.3, 0.3, size=(12, 4))
    heights = rng.uniform(0.5, 2.0, size=12)
    for c, h in zip(centers, heights):
        force.addHill(c.tolist(), float(h))
    assert force.getNumHills() == 12 and force.getNumHillsVariables() == 4
    center, height = force.getHill(5)
    assert np.allclose(center, centers[5]) and height == heights[5]
    system = _system(2, well="")
    system.addForce(force)
    context = _context(system, platform)
    positions = rng.uniform(-0.25, 0.25, size=(2, 3))
    energy, forces = _energy_forces(context, positions)
    s = positions.reshape(-1)[[0, 1, 3, 5]]  # xa ya xb zb
    hills_e, hills_g = _numpy_hills(s[cvs], centers, heights, widths, [0, 0, 0, 0])
    expected = 0.5 * s[0] ** 2 + s[2] * s[3] + hills_e
    assert energy == pytest.approx(expected, rel=1e-12)
    dE = np.array([s[0], 0.0, s[3], s[2]])  # the expression's dE/dcv
    dE[cvs] += hills_g
    expected_forces = np.zeros((2, 3))
    expected_forces[0, 0], expected_forces[0, 1] = -dE[0], -dE[1]
    expected_forces[1, 0], expected_forces[1, 2] = -dE[2], -dE[3]
    assert np.allclose(forces, expected_forces, rtol=1e-10, atol=1e-12)
    # finite differences of the Context's own energy
    h = 1e-5
    for atom, dim in [(0, 0), (0, 1), (1, 0), (1, 2)]:
        plus, minus = positions.copy(), positions.copy()
        plus[atom, dim] += h
        minus[atom, dim] -= h
        fd = -(_energy_forces(context, plus)[0] - _energy_forces(context, minus)[0]) / (2 * h)
        assert fd == pytest.approx(forces[atom, dim], rel=1e-6, abs=1e-7)


def test_periodic_hills_wrap_around_the_circle():
    force = TorchCVForce(_scripted(AngleAndHeight()), "0", cv_names=["phi", "z"])
    force.setHillsVariables([0, 1], [0.3, 0.2], [2 * math.pi, 0.0])
    centers = [(3.0, 0.1), (-3.1, 0.0), (0.5, -0.1)]
    for c in centers:
        force.addHill(list(c), 1.5)
    system = _system(1, well="")
    system.addForce(force)
    context = _context(system)
    for phi in [-3.05, 3.12, 2.9, -2.8]:  # near +-pi, where a non-periodic hill would vanish
        positions = np.array([[0.7 * math.cos(phi), 0.7 * math.sin(phi), 0.05]])
        energy, forces = _energy_forces(context, positions)
        expected, gradient = _numpy_hills([phi, 0.05], centers, [1.5] * 3, np.array([0.3, 0.2]),
                                          [2 * math.pi, 0.0])
        assert energy == pytest.approx(expected, rel=1e-12)
        assert expected > 0.5  # the hill across the branch cut counts
        # dE/dphi along the tangent: F_tangent = -dE/dphi / r
        tangent = np.array([-math.sin(phi), math.cos(phi), 0.0])
        assert forces[0] @ tangent == pytest.approx(-gradient[0] / 0.7, rel=1e-9)
        assert forces[0, 2] == pytest.approx(-gradient[1], rel=1e-9)


def test_hills_reach_a_running_context_without_reinitialisation():
    module = _scripted(CountingCVs())
    force = TorchCVForce(module, "0", cv_names=["r2", "calls"])
    force.setHillsVariables([0], [0.5], [])
    system = _system(3, well="")
    system.addForce(force)
    context = _context(system)
    context.setPositions(np.eye(3))
    context.getIntegrator().step(3)
    state = context.getState(getEnergy=True, getPositions=True)
    assert state.getPotentialEnergy().value_in_unit(KJ) == 0.0
    r2, calls = force.getCollectiveVariableValues(context)
    force.addHill([r2], 2.0)
    force.addHill([r2 + 0.5], 1.0)
    force.updateParametersInContext(context)
    after = context.getState(getEnergy=True, getPositions=True)
    assert after.getPotentialEnergy().value_in_unit(KJ) == pytest.approx(2.0 + math.exp(-0.5), rel=1e-12)
    assert after.getStepCount() == 3
    assert np.array_equal(after.getPositions(asNumpy=True), state.getPositions(asNumpy=True))
    # the module kept its state (call counter): the Context was not rebuilt
    assert force.getCollectiveVariableValues(context)[1] > calls
    force.clearHills()
    force.updateParametersInContext(context)
    assert context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(KJ) == 0.0


def test_xml_round_trip_keeps_hills_and_reads_version_1():
    force = TorchCVForce(_scripted(AngleAndHeight()), "0.1*z", cv_names=["phi", "z"])
    force.setHillsVariables([0, 1], [0.3, 0.2], [2 * math.pi, 0.0])
    rng = np.random.default_rng(3)
    for _ in range(5):
        force.addHill([float(rng.uniform(-3, 3)), float(rng.normal())], float(rng.uniform(0.1, 1)))
    xml = openmm.XmlSerializer.serialize(force)
    raw = openmm.XmlSerializer.deserialize(xml)
    copy = TorchCVForce.cast(raw)
    assert copy.getHillsCVIndices() == [0, 1]
    assert copy.getHillsWidths() == [0.3, 0.2] and copy.getHillsPeriods() == [2 * math.pi, 0.0]
    assert copy.getHillCenters() == force.getHillCenters()  # bit-exact doubles
    assert copy.getHillHeights() == force.getHillHeights()
    energies = []
    for f in (force, raw):
        system = _system(1, well="")
        system.addForce(f)
        energies.append(_energy_forces(_context(system), [[0.3, -0.4, 0.2]])[0])
    assert energies[0] == energies[1]
    # a file written before hills existed (version 1) still loads
    start, end = xml.index("<Hills"), xml.index("</Hills>") + len("</Hills>")
    old = (xml[:start] + xml[end:]).replace('version="4"', 'version="1"')
    assert TorchCVForce.cast(openmm.XmlSerializer.deserialize(old)).getNumHills() == 0
    # a version-2 file (no per-hill widths, no log transform): hills take the variables' widths
    hills = xml[start:end]
    v2 = hills.replace(' logEpsilon="1" logNormalization="1" logPrefactor="0"', "")
    v2 = __import__("re").sub(r' w[01]="[^"]*"', "", v2)
    assert v2.count(" w0=") == 0 and "logPrefactor" not in v2
    v2_force = TorchCVForce.cast(openmm.XmlSerializer.deserialize(
        (xml[:start] + v2 + xml[end:]).replace('version="4"', 'version="2"')))
    assert v2_force.getHillWidths() == [0.3, 0.2] * 5 and v2_force.getHillsLogPrefactor() == 0.0


def _numpy_opes(s, centers, heights, widths, periods, prefactor, normalization, epsilon):
    """a log(S/N + eps) with S = sum_h h exp(-0.5 sum_d (delta_d/w_hd)^2), per-hill widths."""
    total, gradient = 0.0, np.zeros(len(s))
    for c, h, w in zip(centers, heights, widths):
        e, g = _numpy_hills(s, [c], [h], np.asarray(w), periods)
        total += e
        gradient += g
    energy = prefactor * math.log(total / normalization + epsilon)
    return energy, prefactor * gradient / (total + normalization * epsilon)


@pytest.mark.parametrize("platform", ["Reference", "CPU"])
def test_per_hill_widths_and_log_transform_match_numpy_and_finite_differences(platform, rng):
    # the OPES form of the hills' energy: kernels with their own widths, a * log(S/N + eps)
    force = TorchCVForce(_scripted(AngleAndHeight()), "0.3*z^2", cv_names=["phi", "z"])
    force.setHillsVariables([0, 1], [0.4, 0.3], [2 * math.pi, 0.0])
    centers = np.column_stack([rng.uniform(-math.pi, math.pi, 9), rng.uniform(-0.3, 0.3, 9)])
    heights = rng.uniform(0.2, 1.0, 9)
    widths = rng.uniform(0.1, 0.5, size=(9, 2))
    for c, h, w in zip(centers, heights, widths):
        force.addHill(c.tolist(), float(h), w.tolist())
    force.addHill([0.5, 0.0], 0.7)  # no widths: the variables' widths
    centers = np.vstack([centers, [0.5, 0.0]])
    heights = np.append(heights, 0.7)
    widths = np.vstack([widths, [0.4, 0.3]])
    assert np.allclose(np.reshape(force.getHillWidths(), (10, 2)), widths, rtol=0, atol=0)
    a, n, eps = 4.2, 3.1, 0.01
    force.setHillsLogTransform(a, n, eps)
    system = _system(1, well="")
    system.addForce(force)
    context = _context(system, platform)
    for positions in ([[0.3, -0.35, 0.1]], [[-0.4, 0.01, -0.2]], [[-0.5, -0.02, 0.25]]):
        energy, forces = _energy_forces(context, np.array(positions))
        x, y, z = positions[0]
        phi = math.atan2(y, x)
        e, g = _numpy_opes([phi, z], centers, heights, widths, [2 * math.pi, 0], a, n, eps)
        assert energy == pytest.approx(0.3 * z ** 2 + e, rel=1e-12, abs=1e-12)
        r2 = x * x + y * y  # chain rule through phi = atan2(y, x)
        expected = -np.array([g[0] * -y / r2, g[0] * x / r2, 0.6 * z + g[1]])
        assert np.allclose(forces[0], expected, rtol=1e-10, atol=1e-12)
        h = 1e-6
        for dim in range(3):
            plus, minus = np.array(positions), np.array(positions)
            plus[0, dim] += h
            minus[0, dim] -= h
            fd = -(_energy_forces(context, plus)[0] - _energy_forces(context, minus)[0]) / (2 * h)
            assert fd == pytest.approx(forces[0, dim], rel=1e-6, abs=1e-6)
    # no kernels: the constant a log(eps); the transform survives XML
    copy = TorchCVForce.cast(openmm.XmlSerializer.deserialize(openmm.XmlSerializer.serialize(force)))
    assert (copy.getHillsLogPrefactor(), copy.getHillsLogNormalization(), copy.getHillsLogEpsilon()) == (a, n, eps)
    assert copy.getHillWidths() == force.getHillWidths()
    force.clearHills()
    force.updateParametersInContext(context)
    context.setPositions([[0.1, 0.2, 0.0]])
    assert context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(KJ) == pytest.approx(
        a * math.log(eps), rel=1e-12)
    force.setHillsLogTransform(0.0, 0.0, 0.0)  # back to the plain sum
    force.updateParametersInContext(context)
    assert context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(KJ) == 0.0


def test_bad_per_hill_widths_and_log_transform_are_clear_errors():
    force = TorchCVForce(_scripted(FourCoordinates()), "0", cv_names=FOUR)
    force.setHillsVariables([0, 1], [0.1, 0.1], [])
    with pytest.raises(openmm.OpenMMException, match="1 widths but there are 2 hills variables"):
        force.addHill([0.0, 0.0], 1.0, [0.1])
    with pytest.raises(openmm.OpenMMException, match="widths must be positive and finite"):
        force.addHill([0.0, 0.0], 1.0, [0.1, -0.2])
    with pytest.raises(openmm.OpenMMException, match="normalization must be positive"):
        force.setHillsLogTransform(1.0, 0.0, 0.1)
    with pytest.raises(openmm.OpenMMException, match="epsilon must be positive"):
        force.setHillsLogTransform(1.0, 1.0, -1.0)
    with pytest.raises(openmm.OpenMMException, match="prefactor must be finite"):
        force.setHillsLogTransform(float("nan"), 1.0, 1.0)
    assert force.getNumHills() == 0 and force.getHillsLogPrefactor() == 0.0


def test_bad_hills_input_is_a_clear_error(tmp_path):
    force = TorchCVForce(_scripted(FourCoordinates()), "0", cv_names=FOUR)
    with pytest.raises(openmm.OpenMMException, match="call setHillsVariables"):
        force.addHill([0.0], 1.0)
    with pytest.raises(openmm.OpenMMException, match="1 widths for 2 hills variables"):
        force.setHillsVariables([0, 1], [0.1], [])
    with pytest.raises(openmm.OpenMMException, match="width of 'ya' must be positive"):
        force.setHillsVariables([0, 1], [0.1, 0.0], [])
    with pytest.raises(openmm.OpenMMException, match="no collective variable with index 7"):
        force.setHillsVariables([0, 7], [0.1, 0.1], [])
    with pytest.raises(openmm.OpenMMException, match="listed twice"):
        force.setHillsVariables([1, 1], [0.1, 0.1], [])
    with pytest.raises(openmm.OpenMMException, match="period of 'xa' must be >= 0"):
        force.setHillsVariables([0], [0.1], [-1.0])
    force.setHillsVariables([0, 1], [0.1, 0.1], [])
    with pytest.raises(openmm.OpenMMException, match="centre has 3 values"):
        force.addHill([0.0, 0.0, 0.0], 1.0)
    # Python side
    axes = [GridAxis(name, -1, 1, 0.2) for name in FOUR]
    with pytest.raises(ValueError, match=r"no CVs named \['chi'\]"):
        Metadynamics(_system(2), _scripted(FourCoordinates()), axes[:3] + [GridAxis("chi", -1, 1, 0.2)],
                     300, 5.0, 1.0, 10, cv_names=FOUR)
    with pytest.raises(ValueError, match="grid metadynamics supports 1 to 3 CVs, got 4"):
        Metadynamics(_system(2), _scripted(FourCoordinates()), axes, 300, 5.0, 1.0, 10,
                     method="grid", cv_names=FOUR)
    with pytest.raises(ValueError, match="method must be one of"):
        Metadynamics(_system(2), _scripted(FourCoordinates()), axes, 300, 5.0, 1.0, 10,
                     method="tree", cv_names=FOUR)
    with pytest.raises(ValueError, match="GridAxis .xa. width must be > 0, got -0.1"):
        GridAxis("xa", -1, 1, -0.1)


def _simulation(system, seed=7, platform="Reference", positions=((0.1, -0.2, 0.05), (-0.1, 0.1, 0.2))):
    integrator = openmm.LangevinMiddleIntegrator(300, 5.0, 0.004)
    integrator.setRandomNumberSeed(seed)
    simulation = app.Simulation(app.Topology(), system, integrator,
                                openmm.Platform.getPlatformByName(platform))
    simulation.context.setPositions([list(p) for p in positions])
    return simulation


@pytest.mark.parametrize("platform", ["Reference", "CPU"])
def test_four_cv_metadynamics_deposits_native_hills(platform):
    system = _system(2)
    axes = [GridAxis(name, -1.5, 1.5, 0.15) for name in FOUR]
    meta = Metadynamics(system, _scripted(FourCoordinates()), axes, 300, bias_factor=6.0,
                        height=1.5, frequency=20, cv_names=FOUR, force_group=3)
    assert meta.method == "hills" and meta.bias is None
    simulation = _simulation(system, platform=platform)
    meta.step(simulation, 400)
    assert len(meta.hills) == 20 == meta.force.getNumHills()
    heights = np.array([h[-1] for h in meta.hills])
    assert heights[0] == pytest.approx(1.5) and heights.min() < 1.5
    # the force holds exactly the hills the Python side recorded
    assert np.array_equal(np.reshape(meta.force.getHillCenters(), (-1, 4)),
                          np.array([h[:4] for h in meta.hills]))
    # the bias the Context applies is the sum of Gaussians bias_at computes
    energy = simulation.context.getState(getEnergy=True, groups={3}).getPotentialEnergy()
    here = meta.current_values(simulation.context)
    assert energy.value_in_unit(KJ) == pytest.approx(meta.bias_at(here), rel=1e-10, abs=1e-12)
    # at the last deposited centre the bias is at least that hill's height
    last = np.array(meta.hills[-1][:4])
    assert meta.bias_at(last) >= heights[-1]
    assert meta.free_energy_at(last[None, :])[0] == pytest.approx(-6.0 / 5.0 * meta.bias_at(last))
    with pytest.raises(ValueError, match="free_energy_at"):
        meta.free_energy()


def test_grid_and_hills_agree_for_two_cvs():
    model = _scripted(Coordinates())
    axes = [GridAxis("x", -1.0, 1.0, 0.12, points=81), GridAxis("y", -1.0, 1.0, 0.15, points=81)]
    metas, contexts = [], []
    for method in ("grid", "hills"):
        system = _system(1)
        meta = Metadynamics(system, model, axes, 300, 5.0, 1.0, 10, method=method,
                            cv_names=["x", "y", "z"], force_group=2)
        metas.append(meta)
        contexts.append(_context(system))
    rng = np.random.default_rng(5)
    for _ in range(15):
        p = [[*rng.uniform(-0.5, 0.5, size=2), 0.0]]
        for meta, context in zip(metas, contexts):
            context.setPositions(p)
            meta.deposit(context)
    heights = np.array([[h[-1] for h in meta.hills] for meta in metas])
    # both scale heights by the exact V (the grid's bias_at is the sum of Gaussians it tabulates)
    assert np.allclose(heights[0], heights[1], rtol=1e-12, atol=0.0)
    for _ in range(20):
        p = [[*rng.uniform(-0.6, 0.6, size=2), 0.1]]
        grid_e, hills_e = [
            c.getState(getEnergy=True, groups={2}).getPotentialEnergy().value_in_unit(KJ)
            for c in (contexts[0].setPositions(p) or contexts[0], contexts[1].setPositions(p) or contexts[1])]
        assert grid_e == pytest.approx(hills_e, abs=0.05)
        assert metas[1].bias_at(p[0][:2]) == pytest.approx(hills_e, rel=1e-10)
        assert metas[0].bias_at(p[0][:2]) == pytest.approx(grid_e, abs=0.05)


def test_grid_bias_is_zero_outside_a_non_periodic_range_as_in_the_context():
    system = _system(1)
    meta = Metadynamics(system, _scripted(Coordinates()), [GridAxis("x", -1.0, 1.0, 0.3, points=81)],
                        300, 5.0, 1.0, 10, cv_names=["x", "y", "z"], force_group=2)
    context = _context(system)
    context.setPositions([[0.95, 0.0, 0.0]])
    meta.deposit(context)
    for x, inside in [(0.9, True), (1.05, False), (-1.2, False)]:
        context.setPositions([[x, 0.0, 0.0]])
        applied = context.getState(getEnergy=True, groups={2}).getPotentialEnergy().value_in_unit(KJ)
        assert meta.bias_at([x]) == pytest.approx(applied, abs=1e-3)
        assert (meta.bias_at([x]) > 0.5) == inside


def test_reweighting_offset_on_a_1d_grid_is_the_integral():
    system = _system(1)
    axis = GridAxis("x", -2.0, 2.0, 0.2, points=161)
    meta = Metadynamics(system, _scripted(Coordinates()), [axis], 300, 8.0, 2.0, 10,
                        cv_names=["x", "y", "z"])
    context = _context(system)
    for x in [-0.5, -0.45, -0.6, 0.3, 0.35, -0.5, 0.9]:
        context.setPositions([[x, 0.0, 0.0]])
        meta.deposit(context)
    fine = np.linspace(-2.0, 2.0, 20001)
    V = np.zeros_like(fine)
    for *c, h in meta.hills:
        V += h * np.exp(-0.5 * ((fine - c[0]) / 0.2) ** 2)
    kT, gamma = KT_300 * 300 / 300, 8.0
    a = 1.0 / ((gamma - 1) * kT)
    exact = kT * math.log(np.trapezoid(np.exp(gamma * a * V), fine) / np.trapezoid(np.exp(a * V), fine))
    assert meta.reweighting_offset() == pytest.approx(exact, rel=1e-4)
    assert exact > 0.1


def test_hills_reweighting_offset_is_the_documented_centre_estimator():
    system = _system(2)
    axes = [GridAxis(name, -1.5, 1.5, 0.2) for name in FOUR]
    meta = Metadynamics(system, _scripted(FourCoordinates()), axes, 300, 6.0, 1.2, 10,
                        cv_names=FOUR)
    simulation = _simulation(system)
    meta.step(simulation, 150)
    centers = np.array([h[:4] for h in meta.hills])
    V = np.array([meta.bias_at(c) for c in centers])  # V(s_j, t) recomputed from scratch
    kT = meta.kT
    expected = kT * math.log(np.mean(np.exp(V / kT)))
    assert meta.reweighting_offset() == pytest.approx(expected, rel=1e-10)


def _read_log(path) -> List[list]:
    with open(path) as handle:
        return list(csv.reader(handle))


def _resume_case(method, tmp_path, tag):
    system = _system(2)
    if method == "hills":
        model, names = _scripted(FourCoordinates()), FOUR
        axes = [GridAxis(name, -1.5, 1.5, 0.2) for name in FOUR]
    else:
        model, names = _scripted(Coordinates()), ["x", "y", "z"]
        axes = [GridAxis("x", -1.5, 1.5, 0.2, points=61)]
    meta = Metadynamics(system, model, axes, 300, 6.0, 1.2, 10, cv_names=names,
                        log=tmp_path / f"{tag}.csv", log_interval=5)
    return meta, _simulation(system)


@pytest.mark.parametrize("method", ["hills", "grid"])
def test_checkpoint_and_bias_state_resume_exactly(method, tmp_path):
    n = 60
    meta_a, sim_a = _resume_case(method, tmp_path, "a")
    meta_a.step(sim_a, 2 * n)

    meta_b, sim_b = _resume_case(method, tmp_path, "b")
    meta_b.step(sim_b, n)
    sim_b.saveCheckpoint(str(tmp_path / "b.chk"))
    meta_b.save_state(tmp_path / "b.npz", sim_b.context)
    meta_b.step(sim_b, 25)  # the run goes on past the save (rows 65..85 in the log), then dies

    meta_c, sim_c = _resume_case(method, tmp_path, "b")  # same log file: appended to
    with pytest.raises(ValueError, match="load the simulation checkpoint first"):
        meta_c.load_state(tmp_path / "b.npz", sim_c.context)
    sim_c.loadCheckpoint(str(tmp_path / "b.chk"))
    meta_c.load_state(tmp_path / "b.npz", sim_c.context)
    meta_c.step(sim_c, n)

    state_a = sim_a.context.getState(getPositions=True, getVelocities=True, getEnergy=True)
    state_c = sim_c.context.getState(getPositions=True, getVelocities=True, getEnergy=True)
    assert sim_c.currentStep == sim_a.currentStep == 2 * n
    pa, pc = state_a.getPositions(asNumpy=True)._value, state_c.getPositions(asNumpy=True)._value
    assert np.abs(pa - pc).max() <= 1e-10
    assert abs(state_a.getPotentialEnergy()._value - state_c.getPotentialEnergy()._value) <= 1e-10
    assert len(meta_a.hills) == len(meta_c.hills) == 2 * n // 10
    assert np.abs(np.array(meta_a.hills) - np.array(meta_c.hills)).max() <= 1e-10
    if method == "grid":
        assert np.abs(meta_a.bias - meta_c.bias).max() <= 1e-10
    # the reweighting log: no duplicated or missing rows, same values
    rows_a, rows_c = _read_log(tmp_path / "a.csv"), _read_log(tmp_path / "b.csv")
    names = FOUR if method == "hills" else ["x", "y", "z"]
    assert rows_a[0] == ["step", "time_ps", *names, "bias_kJmol", "c_t_kJmol"]
    assert [int(r[0]) for r in rows_c[1:]] == list(range(5, 2 * n + 1, 5))
    assert np.abs(np.array(rows_a[1:], float) - np.array(rows_c[1:], float)).max() <= 1e-10
    # the logged bias is V(s(t), t) before that step's deposition
    row = np.array(rows_a[1:], float)
    assert row[-1, 1] == pytest.approx(2 * n * 0.004)
    assert np.all(row[:, -1] >= 0.0) and row[0, -2] == 0.0  # no hill before step 5


def test_state_of_another_model_or_setup_is_refused(tmp_path):
    meta, sim = _resume_case("hills", tmp_path, "x")
    meta.step(sim, 20)
    meta.save_state(tmp_path / "s.npz", sim.context)
    other_system = _system(2)
    other = Metadynamics(other_system, _scripted(AngleAndHeight()), [GridAxis("phi", -math.pi, math.pi, 0.3, periodic=True)],
                         300, 6.0, 1.2, 10, cv_names=["phi", "z"])
    with pytest.raises(ValueError, match="another CV model"):
        other.load_state(tmp_path / "s.npz", _simulation(other_system).context, check_step=False)
    hotter_system = _system(2)
    hotter = Metadynamics(hotter_system, _scripted(FourCoordinates()),
                          [GridAxis(name, -1.5, 1.5, 0.2) for name in FOUR], 350, 6.0, 1.2, 10,
                          cv_names=FOUR)
    with pytest.raises(ValueError, match="temperature_K: saved 300.0, here 350.0"):
        hotter.load_state(tmp_path / "s.npz", _simulation(hotter_system).context, check_step=False)


def _resident_megabytes() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    pytest.skip("no /proc/self/status on this system")


def test_bias_updates_do_not_leak_the_spline_table():
    """Each deposition recompiles the force's expression with the new grid. Lepton's
    ExpressionProgram assignment used to leak the old program, spline table included: 42 MB
    per update for this 501 x 501 grid, which killed a 200 ps run at 23 GB."""
    system = _system(1)
    axes = [GridAxis("x", -1.0, 1.0, 0.02, points=501), GridAxis("y", -1.0, 1.0, 0.02, points=501)]
    meta = Metadynamics(system, _scripted(Coordinates()), axes, 300, 5.0, 1.0, 10,
                        cv_names=["x", "y", "z"])
    context = _context(system)
    context.setPositions([[0.1, 0.2, 0.0]])
    for _ in range(2):  # warm-up: allocator pools, first spline tables
        meta.deposit(context)
    before = _resident_megabytes()
    for _ in range(10):
        meta.deposit(context)
    growth = _resident_megabytes() - before
    assert growth < 100.0, f"resident memory grew by {growth:.0f} MB over 10 depositions"


def test_openmm_names_mean_what_app_metadynamics_means():
    """getFreeEnergy, getCollectiveVariables and step as in ``openmm.app.Metadynamics``: both
    deposit one hill at the same point with the same height (no bias yet), and the free
    energies agree element by element, in app's layout (last CV first) and in kJ/mol."""
    system = _system(2)
    grids = {"xa": (-1.0, 1.0, 0.2, 30), "ya": (-0.8, 0.8, 0.15, 40)}
    ours = Metadynamics(system, _scripted(FourCoordinates()),
                        [GridAxis(name, lo, hi, w, points=n) for name, (lo, hi, w, n) in grids.items()],
                        300 * unit.kelvin, 5.0, 1.2, frequency=1, cv_names=FOUR, force_group=3)
    variables = []
    for expression, (lo, hi, w, n) in zip("xy", grids.values()):
        cv = openmm.CustomExternalForce(expression)
        cv.addParticle(0, [])
        variables.append(app.BiasVariable(cv, lo, hi, w, False, n))
    theirs = app.Metadynamics(system, variables, 300 * unit.kelvin, 5.0, 1.2 * KJ, frequency=1)
    simulation = _simulation(system)
    theirs.step(simulation, 1)  # one step, then app deposits at the CVs (full height: no bias)
    ours.deposit(simulation.context)
    assert ours.getCollectiveVariables(simulation) == pytest.approx(
        tuple(theirs.getCollectiveVariables(simulation)), rel=0, abs=1e-12)
    assert isinstance(ours.getCollectiveVariables(simulation), tuple)
    fe_ours, fe_theirs = ours.getFreeEnergy(), theirs.getFreeEnergy()
    assert unit.is_quantity(fe_ours) and fe_ours.unit == unit.kilojoules_per_mole
    assert fe_ours.value_in_unit(KJ).shape == fe_theirs.value_in_unit(KJ).shape == (40, 30)
    assert fe_ours.value_in_unit(KJ).min() < -1.0  # the hill is there (1.2 * 5/4 deep)
    np.testing.assert_allclose(fe_ours.value_in_unit(KJ), fe_theirs.value_in_unit(KJ),
                               rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(ours.free_energy().T, fe_ours.value_in_unit(KJ))
    # step(simulation, steps) advances and deposits every `frequency` steps
    ours.step(simulation, 3)
    assert simulation.currentStep == 4 and len(ours.hills) == 4
