"""Quantities everywhere: every public callable of the OpenMM-facing API that takes a physical
value accepts an ``openmm.unit.Quantity`` in any compatible unit, gives the same result as with
plain numbers in OpenMM's units, and names the argument when the dimension is wrong.

The callables come from the ``__all__`` of :mod:`openmm_geom.openmm`, :mod:`openmm_geom.simulate`
and :mod:`openmm_geom.export`: each has a case in ``CASES`` or a reason in ``NO_PHYSICAL_VALUE``,
so a new public callable without a case fails :func:`test_every_public_callable_has_a_case`.
Results are compared by what they do (energies in a Reference Context, grids, trajectories,
metadata), with ``rtol = 1e-9`` (unit conversions change the last bits of a double only).
"""
import dataclasses
import importlib
import math
import warnings
from typing import Callable

import numpy as np
import openmm
import openmm.app as app
import openmm.unit as u
import pytest
import torch
from analytic import LJHarmonic

from openmm_geom.units import AVOGADRO, to_openmm_units

RTOL = 1e-9
NAMESPACES = ("openmm_geom.openmm", "openmm_geom.simulate", "openmm_geom.export")

KJ = u.kilojoule_per_mole
KCAL = u.kilocalorie_per_mole

#: Public names that take no physical value, with the reason.
NO_PHYSICAL_VALUE = {
    "openmm_geom.openmm.ExportedModel": "a loaded model file; Systems, topologies and boxes "
                                        "reach it with OpenMM's own units",
    "openmm_geom.openmm.CVReporter": "a file, a step interval, a model, names, atom indices",
    "openmm_geom.openmm.SignatureReporter": "step intervals, a depth, atom indices or a "
                                            "dimensionless mapping",
    "openmm_geom.openmm.ExportReport": "a result",
    "openmm_geom.openmm.CheckResult": "a result",
    "openmm_geom.simulate.EnsembleForces": "wraps a model",
    "openmm_geom.export.export_plumed": "a CV module or file, paths and a form name; PLUMED's "
                                        "own units are fixed (nm, rad)",
    "openmm_geom.simulate.ForceFn": "a type alias",
    "openmm_geom.simulate.RunSummary": "a result",
    "openmm_geom.simulate.Trajectory": "a result",
    "openmm_geom.simulate.read_trajectory": "a path and a frame slice",
    "openmm_geom.simulate.benchmark_integrator": "counts only (replicas, beads, steps, threads)",
}

# -- small models and systems ---------------------------------------------------------------
X0 = np.array([[0.3, 0.4, 0.1], [0.5, -0.1, 0.2], [0.0, 0.0, 0.35], [-0.3, 0.1, 0.0]])
NAMES = ["phi", "x"]


class AngleAndX(torch.nn.Module):
    """phi = atan2(y, x) of atom 0 (rad) and the x coordinate of atom 1 (nm)."""

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        return torch.stack([torch.atan2(positions[0, 1], positions[0, 0]), positions[1, 0]])


def _cv_module():
    return torch.jit.script(AngleAndX())


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Exported model files: a CV module (nm) and two LJ potentials (Å, eV) of 4 argon atoms."""
    from openmm_geom.export import export_model

    root = tmp_path_factory.mktemp("quantities")
    cv = export_model(AngleAndX(), root / "cv.pt", kind="cv", length_unit="nm", periodic=False,
                      example_positions=X0, cv_names=NAMES)
    potentials = [export_model(LJHarmonic([[0, 1]], eps=eps, sigma=2.5, cutoff=6.0),
                               root / f"lj{i}.pt", length_unit="angstrom", energy_unit="eV",
                               periodic=False, example_positions=X0, cutoff=6.0,
                               atom_types=["Ar"] * 4, masses=[39.948] * 4)
                  for i, eps in enumerate((0.0104, 0.02))]
    return {"cv": cv.source, "lj": [p.source for p in potentials]}


def _system(n=4, mass=12.0):
    system = openmm.System()
    for _ in range(n):
        system.addParticle(mass)
    return system


def _energy(system, forces=(), positions=X0):
    for force in forces:
        system.addForce(force)
    context = openmm.Context(system, openmm.VerletIntegrator(0.001),
                             openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(positions)
    return context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(KJ)


def _argon_topology(n=4):
    topology = app.Topology()
    chain = topology.addChain()
    for _ in range(n):
        topology.addAtom("Ar", app.element.argon, topology.addResidue("AR", chain))
    return topology


def _in(value, unit):
    """``value`` (plain, OpenMM units) re-expressed as a Quantity in ``unit``."""
    return value.in_units_of(unit)


# The same physical values, plain (OpenMM units) and as Quantities in other units.
PHI0, X_0 = -1.4, 0.45
K_PHI, K_X = 200.0, 1000.0  # kJ/mol/rad^2, kJ/mol/nm^2
PHI0_Q = _in(PHI0 * u.radian, u.degree)
X0_Q = _in(X_0 * u.nanometer, u.angstrom)
K_PHI_Q = _in(K_PHI * KJ / u.radian ** 2, KCAL / u.degree ** 2)
K_X_Q = _in(K_X * KJ / u.nanometer ** 2, KCAL / u.angstrom ** 2)
ENERGY = "k*(1-cos(phi-phi0)) + kx*(x-x0)^2"
PARAMETERS = {"k": 5.0, "phi0": PHI0, "kx": K_X, "x0": X_0}
PARAMETERS_Q = {"k": _in(5.0 * KJ, KCAL), "phi0": PHI0_Q,
                "kx": K_X_Q, "x0": X0_Q}


@dataclasses.dataclass
class Case:
    """``plain(files)`` and ``quantity(files)`` return comparable results (numbers or arrays);
    ``wrong(files)`` passes a value of the wrong dimension and must raise ``error`` matching
    ``match`` (which names the argument)."""

    plain: Callable
    quantity: Callable
    wrong: Callable
    match: str
    error: type = TypeError
    rtol: float = RTOL


def _restraint_energy(files, restraints):
    from openmm_geom.openmm import restraint_force

    return _energy(_system(), [restraint_force(_cv_module(), restraints, periodic=["phi"],
                                               cv_names=NAMES)])


def _torchcv_energy(files, parameters):
    from openmm_geom.openmm import TorchCVForce

    return _energy(_system(), [TorchCVForce(_cv_module(), ENERGY, cv_names=NAMES,
                                            global_parameters=parameters)])


def _add_to_system_energy(files, parameters):
    from openmm_geom.openmm import add_to_system

    system = _system()
    add_to_system(files["cv"], system, energy=ENERGY, global_parameters=parameters)
    return _energy(system)


def _custom_cv_energy(files, parameters):
    from openmm_geom.openmm import custom_cv_force

    return _energy(_system(), [custom_cv_force(files["cv"], ENERGY,
                                               global_parameters=parameters)])


def _grid_axis(minimum, maximum, width):
    from openmm_geom.openmm import GridAxis

    axis = GridAxis("phi", minimum, maximum, width, periodic=True, points=64)
    return [axis.minimum, axis.maximum, axis.width, axis.points]


def _bias_variable(minimum, maximum, width):
    from openmm_geom.openmm import bias_variables

    (variable,) = bias_variables(_cv_module(), {"phi": dict(min=minimum, max=maximum,
                                                            width=width, periodic=True,
                                                            gridWidth=32)},
                                 cv_names=NAMES)
    return [variable.minValue, variable.maxValue, variable.biasWidth]


def _metadynamics(files, temperature, height, minimum, maximum, width):
    from openmm_geom.openmm import GridAxis, Metadynamics

    system = _system()
    meta = Metadynamics(system, _cv_module(), [GridAxis("phi", minimum, maximum, width,
                                                        periodic=True, points=48)],
                        temperature, bias_factor=6.0, height=height, frequency=10,
                        cv_names=NAMES)
    context = openmm.Context(system, openmm.VerletIntegrator(0.001),
                             openmm.Platform.getPlatformByName("Reference"))
    heights = []
    for shift in (0.0, 0.05, 0.1):  # three hills, the later ones lowered by the bias
        context.setPositions(X0 + shift)
        heights.append(meta.deposit(context))
    energy = context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(KJ)
    return [meta.temperature, meta.height, *heights, energy,
            *meta.getFreeEnergy().value_in_unit(KJ)]


def _opes(files, temperature, barrier, sigma):
    from openmm_geom.openmm import OPES

    system = _system()
    opes = OPES(system, _cv_module(), temperature, barrier, 10, sigma=sigma, cv_names=NAMES)
    context = openmm.Context(system, openmm.VerletIntegrator(0.001),
                             openmm.Platform.getPlatformByName("Reference"))
    for step, shift in zip((10, 20, 30), (0.0, 0.05, 0.1)):  # three kernels
        context.setPositions(X0 + shift)
        opes.update_at(opes.getCollectiveVariables(context), step)
        opes.force.updateParametersInContext(context)
    energy = context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(KJ)
    return [opes.temperature, opes.barrier, opes.epsilon, opes.zed, energy,
            *np.ravel(opes.kernels[1])]


def _create_system_masses(files, masses):
    from openmm_geom.openmm import create_system

    system = create_system(files["lj"][0], _argon_topology(), masses=masses)
    return [system.getParticleMass(i).value_in_unit(u.dalton) for i in range(4)]


def _python_force_energy(files, positions, cutoff):
    from openmm_geom.openmm import python_force

    force = python_force(LJHarmonic([[0, 1]], eps=0.0104, sigma=2.5, cutoff=6.0),
                         length_unit="angstrom", energy_unit="eV", periodic=False,
                         example_positions=positions, cutoff=cutoff)
    return _energy(_system(), [force])


def _spread_threshold(files, threshold, tmp="spread.csv"):
    import tempfile

    from openmm_geom.openmm import EnsembleSpreadReporter

    with tempfile.TemporaryDirectory() as directory:
        reporter = EnsembleSpreadReporter(f"{directory}/{tmp}", 10, files["lj"],
                                          threshold=threshold)
        reporter.close()
    return reporter._threshold  # what the reporter compares the spread with, kJ/mol/nm


def _check_export(files, positions):
    from openmm_geom.openmm import check_export

    report = check_export(files["lj"][0], positions=positions,
                          checks=("in_context", "finite_differences"), platforms=("Reference",))
    assert report.passed, report.format()
    # The finite-difference error depends on the configuration (about 1e-10 here, near the
    # rounding level of the differences): positions that differ in their last bit move it by
    # about 1e-6 of itself, positions misread by a factor of 10 by orders of magnitude.
    return [check.error for check in report.checks if check.name == "finite_differences"]


def _langevin(files, **physical):
    from openmm_geom.simulate import BatchedLangevin

    def force_fn(x):
        return -1000.0 * x, 500.0 * (x * x).sum((1, 2)), None

    x0 = physical.pop("x0")
    sim = BatchedLangevin(force_fn, seed=3, **physical)
    sim.run(x0, 20, save_interval=10, progress=False)
    return sim.positions.numpy().ravel()


LANGEVIN_PLAIN = dict(masses=[12.0, 16.0], temperature=[300.0, 350.0], friction=1.0,
                      timestep=0.002, x0=np.tile(X0[:2], (2, 1, 1)))
LANGEVIN_QUANTITIES = dict(masses=[12.0 * u.dalton, (16.0 / AVOGADRO) * u.gram],
                           temperature=[300.0, 350.0] * u.kelvin,
                           friction=0.001 / u.femtosecond, timestep=2.0 * u.femtosecond,
                           x0=np.tile(X0[:2] * 10, (2, 1, 1)) * u.angstrom)


def _trajectory(files, time, positions, energies):
    import tempfile

    from openmm_geom.simulate import TrajectoryWriter, read_trajectory

    with tempfile.TemporaryDirectory() as directory:
        with TrajectoryWriter(f"{directory}/t.h5", 1, 4) as writer:
            writer.append(10, time, positions, energies)
        trajectory = read_trajectory(f"{directory}/t.h5")
        return np.concatenate([trajectory.time, trajectory.positions.ravel(),
                               trajectory.energies.ravel()])


def _export_model(files, positions, cutoff, masses):
    import tempfile

    from openmm_geom.export import export_model

    with tempfile.TemporaryDirectory() as directory:
        meta = export_model(LJHarmonic([[0, 1]], sigma=2.5, cutoff=6.0), f"{directory}/m.pt",
                            length_unit="angstrom", energy_unit="eV", periodic=False,
                            example_positions=positions, cutoff=cutoff, atom_types=["Ar"] * 4,
                            masses=masses).metadata
    return [*np.ravel(meta.example_positions_nm), meta.cutoff_nm, *meta.masses_amu]


def _export_cg(files, positions, masses):
    import tempfile

    from openmm_geom.export import export_cg_model
    from openmm_geom.models.cgschnet import CGSchNet

    model = CGSchNet([6, 7, 6, 8], None, features=8, filters=8, n_rbf=4, output_hidden=4,
                     cutoff=0.5, seed=0)
    with tempfile.TemporaryDirectory() as directory:
        meta = export_cg_model(model, f"{directory}/cg.pt", example_positions=positions,
                               masses=masses).metadata
    return [*np.ravel(meta.example_positions_nm), *meta.masses_amu]


def _export_potential(files, positions, masses):
    import tempfile

    from openmm_geom.export import export_potential
    from openmm_geom.models.attention import AttentionPotential

    model = AttentionPotential([8, 1, 1, 8], cutoff=0.45, features=8, layers=1, heads=2,
                               n_rbf=4)
    with tempfile.TemporaryDirectory() as directory:
        meta = export_potential(model, f"{directory}/p.pt", positions=positions,
                                masses=masses).metadata
    return [*np.ravel(meta.example_positions_nm), *meta.masses_amu]


CG_MASSES = [12.0, 14.0, 12.0, 16.0]
CG_MASSES_Q = [(m / 1000.0) * u.kilogram / u.mole for m in CG_MASSES]
X0_ANGSTROM = [openmm.Vec3(*row) * u.angstrom for row in X0 * 10]  # a list of Vec3 Quantities

CASES = {
    "openmm_geom.openmm.GridAxis": Case(
        lambda f: _grid_axis(-math.pi, math.pi, 0.35),
        lambda f: _grid_axis(-180 * u.degree, 180 * u.degree, _in(0.35 * u.radian, u.degree)),
        lambda f: _grid_axis(-180 * u.degree, 180 * u.degree, 20 * u.kelvin),
        r"GridAxis 'phi' width: expected a length \(nm\), an angle \(rad\) or a plain number"),
    "openmm_geom.openmm.restraint_force": Case(
        lambda f: _restraint_energy(f, {"phi": (K_PHI, PHI0), "x": (K_X, X_0)}),
        lambda f: _restraint_energy(f, {"phi": (K_PHI_Q, PHI0_Q), "x": (K_X_Q, X0_Q)}),
        lambda f: _restraint_energy(f, {"phi": (5 * u.nanometer, PHI0), "x": (K_X, X_0)}),
        r"restraints\['phi'\] k: expected a force constant"),
    "openmm_geom.openmm.TorchCVForce": Case(
        lambda f: _torchcv_energy(f, PARAMETERS),
        lambda f: _torchcv_energy(f, PARAMETERS_Q),
        lambda f: _torchcv_energy(f, dict(PARAMETERS, k="5 kJ/mol")),
        r"global_parameters\['k'\]: expected"),
    "openmm_geom.openmm.add_to_system": Case(
        lambda f: _add_to_system_energy(f, PARAMETERS),
        lambda f: _add_to_system_energy(f, PARAMETERS_Q),
        lambda f: _add_to_system_energy(f, dict(PARAMETERS, x0=[1, "nm"])),
        r"global_parameters\['x0'\]: expected"),
    "openmm_geom.openmm.custom_cv_force": Case(
        lambda f: _custom_cv_energy(f, PARAMETERS),
        lambda f: _custom_cv_energy(f, PARAMETERS_Q),
        lambda f: _custom_cv_energy(f, dict(PARAMETERS, kx=None)),
        r"global_parameters\['kx'\]: expected"),
    "openmm_geom.openmm.bias_variables": Case(
        lambda f: _bias_variable(-math.pi, math.pi, 0.35),
        lambda f: _bias_variable(-180 * u.degree, 180 * u.degree,
                                 _in(0.35 * u.radian, u.degree)),
        lambda f: _bias_variable(-math.pi, 300 * u.kelvin, 0.35),
        r"CV 'phi' max: expected a length \(nm\), an angle \(rad\) or a plain number, got 300 K"),
    "openmm_geom.openmm.Metadynamics": Case(
        lambda f: _metadynamics(f, 300.0, 1.5, -math.pi, math.pi, 0.4),
        lambda f: _metadynamics(f, 300.0 * u.kelvin, _in(1.5 * KJ, KCAL), -180 * u.degree,
                                180 * u.degree, _in(0.4 * u.radian, u.degree)),
        lambda f: _metadynamics(f, 300.0 * u.nanometer, 1.5, -math.pi, math.pi, 0.4),
        r"temperature: expected a temperature \(K\), got 300.0 nm"),
    "openmm_geom.openmm.OPES": Case(
        lambda f: _opes(f, 300.0, 30.0, [0.3, 0.05]),
        lambda f: _opes(f, 300.0 * u.kelvin, _in(30.0 * KJ, KCAL),
                        [_in(0.3 * u.radian, u.degree), _in(0.05 * u.nanometer, u.angstrom)]),
        lambda f: _opes(f, 300.0, 30.0 * u.nanometer, [0.3, 0.05]),
        r"barrier: expected an energy \(kJ/mol\), got 30.0 nm"),
    "openmm_geom.openmm.create_system": Case(
        lambda f: _create_system_masses(f, [39.948] * 4),
        lambda f: _create_system_masses(f, [(0.039948 * u.kilogram / u.mole)] * 4),
        lambda f: _create_system_masses(f, [1.0 * u.nanometer] * 4),
        r"masses: expected a mass \(amu\)"),
    "openmm_geom.openmm.python_force": Case(
        lambda f: _python_force_energy(f, X0, 6.0),
        lambda f: _python_force_energy(f, X0_ANGSTROM, 0.6 * u.nanometer),
        lambda f: _python_force_energy(f, X0, 6.0 * u.kelvin),
        r"cutoff: expected a length \(nm\), got 6.0 K"),
    "openmm_geom.openmm.EnsembleSpreadReporter": Case(
        lambda f: _spread_threshold(f, 50.0),
        lambda f: _spread_threshold(f, _in(50.0 * KJ / u.nanometer, KCAL / u.angstrom)),
        lambda f: _spread_threshold(f, 50.0 * KJ),
        r"threshold: expected a force \(kJ/mol/nm\)"),
    "openmm_geom.openmm.check_export": Case(
        lambda f: _check_export(f, X0),
        lambda f: _check_export(f, X0_ANGSTROM),
        lambda f: _check_export(f, X0 * u.kelvin),
        r"positions: expected a length \(nm\)", rtol=1e-3),
    "openmm_geom.simulate.BatchedLangevin": Case(
        lambda f: _langevin(f, **LANGEVIN_PLAIN),
        lambda f: _langevin(f, **LANGEVIN_QUANTITIES),
        lambda f: _langevin(f, **dict(LANGEVIN_PLAIN, timestep=2.0 * u.kelvin)),
        r"timestep: expected a time \(ps\), got 2.0 K"),
    "openmm_geom.simulate.TrajectoryWriter": Case(
        lambda f: _trajectory(f, 0.02, X0[None], [-3.0]),
        lambda f: _trajectory(f, 20 * u.femtosecond, [X0_ANGSTROM], _in([-3.0] * KJ, KCAL)),
        lambda f: _trajectory(f, 20 * u.nanometer, X0[None], [-3.0]),
        r"time: expected a time \(ps\), got 20 nm"),
    "openmm_geom.export.export_model": Case(
        lambda f: _export_model(f, X0, 6.0, [39.948] * 4),
        lambda f: _export_model(f, X0_ANGSTROM, 0.6 * u.nanometer,
                                [39.948 * u.dalton] * 4),
        lambda f: _export_model(f, X0, 6.0 * u.kilojoule_per_mole, [39.948] * 4),
        r"cutoff: expected a length \(nm\), got 6.0 kJ/mol"),
    "openmm_geom.export.export_cg_model": Case(
        lambda f: _export_cg(f, X0, CG_MASSES),
        lambda f: _export_cg(f, X0_ANGSTROM, CG_MASSES_Q),
        lambda f: _export_cg(f, X0, [12.0 * u.nanometer] * 4),
        r"masses: expected a mass \(amu\)"),
    "openmm_geom.export.export_potential": Case(
        lambda f: _export_potential(f, X0, [15.999, 1.008, 1.008, 15.999]),
        lambda f: _export_potential(f, X0 * 10 * u.angstrom,
                                    [15.999, 1.008, 1.008, 15.999] * u.dalton),
        lambda f: _export_potential(f, X0 * u.picosecond, None),
        r"positions: expected a length \(nm\)"),
}


def _public_callables():
    names = []
    for namespace in NAMESPACES:
        module = importlib.import_module(namespace)
        names += [f"{namespace}.{name}" for name in module.__all__
                  if callable(getattr(module, name)) or name == "ForceFn"]
    return names


def test_every_public_callable_has_a_case():
    public = set(_public_callables())
    missing = sorted(public - set(CASES) - set(NO_PHYSICAL_VALUE))
    assert not missing, ("public callables without a Quantity case in tests/test_quantities.py "
                         f"(add one to CASES, or a reason to NO_PHYSICAL_VALUE): {missing}")
    stale = sorted((set(CASES) | set(NO_PHYSICAL_VALUE)) - public)
    assert not stale, f"cases for names that are not public: {stale}"
    assert not set(CASES) & set(NO_PHYSICAL_VALUE)


@pytest.mark.parametrize("name", sorted(CASES))
def test_quantities_give_the_plain_number_result(name, files):
    case = CASES[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        plain, quantity = case.plain(files), case.quantity(files)
    np.testing.assert_allclose(np.asarray(quantity, dtype=float), np.asarray(plain, dtype=float),
                               rtol=case.rtol, atol=0.0)


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_wrong_dimension_names_the_argument(name, files):
    case = CASES[name]
    with pytest.raises(case.error, match=case.match):
        case.wrong(files)


# -- the helper itself ----------------------------------------------------------------------
@pytest.mark.parametrize("value,unit,expected", [
    (2 * u.femtosecond, u.picosecond, 0.002),
    (300, u.kelvin, 300.0),
    (-180 * u.degree, u.radian, -math.pi),
    (1 * KCAL, KJ, 4.184),
    (1 * u.kilocalorie, KJ, 4.184 * AVOGADRO),  # a per-particle energy is made molar
    (5 * KCAL / u.angstrom ** 2, KJ / u.nanometer ** 2, 5 * 4.184 * 100),
    (5 * KJ / u.degree ** 2, KJ / u.radian ** 2, 5 * (180 / math.pi) ** 2),
    (1 / u.femtosecond, u.picosecond ** -1, 1000.0),
    (12 * u.gram / u.mole, u.dalton, 12.0),
])
def test_to_openmm_units_converts(value, unit, expected):
    assert to_openmm_units(value, "x", unit) == pytest.approx(expected, rel=1e-12)


def test_to_openmm_units_arrays_and_any_unit():
    vec3s = [openmm.Vec3(1, 2, 3) * u.angstrom, openmm.Vec3(4, 5, 6) * u.angstrom]
    np.testing.assert_allclose(to_openmm_units(vec3s, "positions", u.nanometer),
                               [[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]], rtol=1e-12)
    np.testing.assert_allclose(to_openmm_units([300, 310] * u.kelvin, "t", u.kelvin), [300, 310])
    # None: any Quantity, in OpenMM's MD unit system (a global parameter's value)
    assert to_openmm_units(5 * KJ / u.degree ** 2, "k", None) == pytest.approx(
        5 * (180 / math.pi) ** 2, rel=1e-12)
    assert to_openmm_units(1 * u.kilojoule, "e", None) == pytest.approx(AVOGADRO, rel=1e-12)
    assert to_openmm_units(2.5, "k", None) == 2.5


@pytest.mark.parametrize("call,error,message", [
    (lambda: to_openmm_units(3.0 * u.nanometer, "temperature", u.kelvin), TypeError,
     "temperature: expected a temperature (K), got 3.0 nm"),
    (lambda: to_openmm_units(-300 * u.kelvin, "temperature", u.kelvin, positive=True),
     ValueError, "temperature must be > 0 K, got -300 K"),
    (lambda: to_openmm_units(-300, "temperature", u.kelvin, positive=True), ValueError,
     "temperature must be > 0 K, got -300 K"),
    (lambda: to_openmm_units([1.0, -0.5], "friction", u.picosecond ** -1, nonnegative=True),
     ValueError, "friction must be >= 0 1/ps, got -0.5 1/ps at index 1"),
    (lambda: to_openmm_units(float("nan"), "width", u.nanometer), ValueError,
     "width must be finite, got nan nm"),
    (lambda: to_openmm_units("300", "temperature", u.kelvin), TypeError,
     "temperature: expected a temperature (K) or a plain number in OpenMM's unit, got '300'"),
    (lambda: to_openmm_units(5 * u.nanometer, "k", (KJ / u.nanometer ** 2, KJ / u.radian ** 2)),
     TypeError, "k: expected a force constant (kJ/mol/nm^2 or kJ/mol/rad^2), got 5 nm"),
    (lambda: to_openmm_units([1 * u.kelvin, 1 * u.nanometer], "t", u.kelvin), TypeError,
     "t: expected a temperature (K), got values in K, nm"),
])
def test_to_openmm_units_errors(call, error, message):
    with pytest.raises(error) as raised:
        call()
    assert str(raised.value) == message


def test_negative_temperature_is_refused_before_anything_is_added():
    from openmm_geom.openmm import GridAxis, Metadynamics

    system = _system()
    with pytest.raises(ValueError, match="temperature must be > 0 K, got -300 K"):
        Metadynamics(system, _cv_module(), [GridAxis("phi", -math.pi, math.pi, 0.4,
                                                     periodic=True)],
                     -300 * u.kelvin, bias_factor=6.0, height=1.5, frequency=10, cv_names=NAMES)
    assert system.getNumForces() == 0


def test_check_export_nve_settings_take_quantities(files):
    """The NVE run's time step (fs when plain) and temperature (K) accept Quantities."""
    from openmm_geom.openmm import check_export

    def nve(**settings):
        report = check_export(files["lj"][0], checks=("nve_drift",), nve_steps=100, seed=3,
                              **settings)
        return [check.error for check in report.checks]

    plain = nve(nve_timestep_fs=0.5, temperature_kelvin=300.0)
    assert nve(nve_timestep_fs=0.0005 * u.picosecond,
               temperature_kelvin=300.0 * u.kelvin) == pytest.approx(plain, rel=1e-9)
    with pytest.raises(TypeError, match=r"nve_timestep_fs: expected a quantity in fs .*got 0.5 nm"):
        nve(nve_timestep_fs=0.5 * u.nanometer)
    with pytest.raises(ValueError, match=r"temperature_kelvin must be > 0"):
        nve(temperature_kelvin=-300.0 * u.kelvin)
