"""``check_export``: an exported model, inside real OpenMM Contexts, held to physics.

Checks (each one a :class:`CheckResult`):

- ``in_context[<platform>]``: energy and forces from the Context equal the eager model's
  (or, without an eager model, the exported module called directly by torch);
- ``finite_differences``: Context forces equal central differences of Context energies (or CV
  values), taken at coordinates of the atoms each output depends on (nonzero gradient); the
  report names them. Periodic CVs (``cv_periods`` in the metadata, e.g. dihedrals) are
  differenced on the circle, so a step across the branch cut is not an error; an output that
  depends on no coordinate fails the check (there is nothing to test);
- ``translation``: energy and forces do not change when the system is translated;
- ``periodic_images`` (periodic models): nor when atoms are moved by whole box vectors;
- ``nve_drift`` (potentials): a short velocity-Verlet run conserves energy, measured as the
  standard deviation of the total energy over that of the kinetic energy.

It lives on the OpenMM side (``openmm_geom.openmm.check_export``, its one address), so that
``openmm_geom.export`` and ``openmm_geom.openmm`` never import each other.
"""
from __future__ import annotations

import dataclasses
import json
import math
from typing import Optional, Sequence

import numpy as np
import openmm
import openmm.unit as unit
import torch

from ..contract import boundary_for
from ..modelfile import ExportedModel, ModelLike
from ..threads import cpu_platform_properties
from ..units import as_nm_array, to_openmm_units
from .forces import torch_force

__all__ = ["check_export", "ExportReport", "CheckResult", "DEFAULT_CHECKS"]

DEFAULT_CHECKS = ("in_context", "finite_differences", "translation", "periodic_images", "nve_drift")


@dataclasses.dataclass
class CheckResult:
    name: str
    passed: bool
    error: Optional[float]
    tolerance: Optional[float]
    detail: str = ""
    #: Check-specific details for machines (``finite_differences``: the coordinates tested).
    data: Optional[dict] = None

    def __post_init__(self):  # plain Python types, so that reports are JSON-serialisable
        self.passed = bool(self.passed)
        self.error = None if self.error is None else float(self.error)
        self.tolerance = None if self.tolerance is None else float(self.tolerance)


@dataclasses.dataclass
class ExportReport:
    model: str
    kind: str
    n_atoms: int
    periodic: bool
    output_dim: int
    checks: list

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["passed"] = self.passed
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def format(self) -> str:
        lines = [f"check-export {self.model}: {self.kind}, {self.n_atoms} atoms, "
                 f"{'periodic' if self.periodic else 'non-periodic'}"]
        for c in self.checks:
            err = "" if c.error is None else f"error {c.error:.3g} (tolerance {c.tolerance:.3g})"
            lines.append(f"  {'PASS' if c.passed else 'FAIL'}  {c.name:<28} {err}  {c.detail}")
        lines.append("all checks passed" if self.passed else "SOME CHECKS FAILED")
        return "\n".join(lines)


def _platform_properties(name: str) -> dict:
    return cpu_platform_properties() if name == "CPU" else {}


class _Harness:
    """One OpenMM Context per (platform, CV component) holding the exported model."""

    def __init__(self, model: ExportedModel, box, masses):
        self.model, self.box = model, box
        self.masses = masses
        self._contexts = {}

    def context(self, platform: str, component: Optional[int], timestep_fs: float = 0.5):
        key = (platform, component, timestep_fs)
        if key not in self._contexts:
            system = openmm.System()
            for mass in self.masses:
                system.addParticle(mass)
            if self.box is not None:
                system.setDefaultPeriodicBoxVectors(*[openmm.Vec3(*row) for row in self.box])
            system.addForce(torch_force(self.model, output_index=component))
            integrator = openmm.VerletIntegrator(timestep_fs * 1e-3)
            self._contexts[key] = openmm.Context(
                system, integrator, openmm.Platform.getPlatformByName(platform),
                _platform_properties(platform))
        return self._contexts[key]

    def evaluate(self, platform: str, component: Optional[int], positions: np.ndarray):
        context = self.context(platform, component)
        context.setPositions(positions)
        if self.box is not None:
            context.setPeriodicBoxVectors(*[openmm.Vec3(*row) for row in self.box])
        state = context.getState(getEnergy=True, getForces=True)
        energy = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
        forces = state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer)
        return float(energy), np.asarray(forces)


def _torch_reference(reference_module, positions, box, component):
    x = torch.tensor(positions, dtype=torch.float64, requires_grad=True)
    b = None if box is None else torch.tensor(box, dtype=torch.float64)
    out = reference_module(x, b)
    value = out if component is None else out[component]
    (grad,) = torch.autograd.grad(value, x)
    return float(value.detach()), (-grad).numpy()


def _wrap(difference: float, period: Optional[float]) -> float:
    """``difference`` of a periodic output mapped into [-period/2, period/2) (as is if None)."""
    if not period or -0.5 * period <= difference < 0.5 * period:
        return difference  # unchanged (no rounding) when already in range
    return (difference + 0.5 * period) % period - 0.5 * period


def _relative_errors(e1, f1, e2, f2, period: Optional[float] = None):
    energy_scale = max(abs(e2), 1.0)
    force_scale = max(float(np.abs(f2).max()), 1.0)
    return (abs(_wrap(e1 - e2, period)) / energy_scale,
            float(np.abs(f1 - f2).max()) / force_scale)


_AXES = "xyz"


def _atom_list(atoms, limit: int = 12) -> str:
    atoms = [int(a) for a in atoms]
    if len(atoms) <= limit:
        return str(atoms)
    return "[" + ", ".join(map(str, atoms[:limit])) + f", ... {len(atoms) - limit} more]"


def check_export(
    model: ModelLike,
    *,
    eager: Optional[torch.nn.Module] = None,
    positions=None,
    box=None,
    platforms: Sequence[str] = ("Reference", "CPU"),
    checks: Sequence[str] = DEFAULT_CHECKS,
    tolerance: Optional[float] = None,
    fd_coordinates: int = 12,
    nve_steps: int = 400,
    nve_timestep_fs: float = 0.5,
    nve_tolerance: float = 0.1,
    temperature_kelvin: float = 300.0,
    seed: int = 0,
) -> ExportReport:
    """Validate an exported model inside real OpenMM Contexts.

    Parameters
    ----------
    model : path, ScriptModule or ExportedModel
        The exported model (read once).
    eager : torch.nn.Module, optional
        The original model (in its own units). If given, Context results are compared with it
        (through the same unit wrapper); otherwise with the exported module run by torch.
    positions, box : arrays in nm or Quantities, optional
        Configuration to test; defaults to the example stored in the model file.
    platforms : names of OpenMM platforms for the ``in_context`` check.
    checks : subset of :data:`DEFAULT_CHECKS` to run.
    tolerance : relative tolerance of Context-vs-torch, translation and image checks
        (default 1e-6 for float64 models, 1e-4 for float32); finite differences get 100x it.
    fd_coordinates : how many Cartesian coordinates to differentiate numerically per output,
        drawn from the coordinates of the atoms the output depends on (nonzero gradient).
    nve_steps, nve_timestep_fs, nve_tolerance : the NVE run (potentials only) and its pass
        threshold on std(total energy) / std(kinetic energy). ``nve_timestep_fs`` is a plain
        number in fs (as its name says) or a time Quantity.
    temperature_kelvin : float (K) or temperature Quantity
        Initial velocities of the NVE run.
    seed : int
        Random choices (coordinates to difference, velocities).

    Returns
    -------
    ExportReport
        ``report.passed`` is False if any check failed; ``report.format()`` explains.
    """
    unknown = set(checks) - set(DEFAULT_CHECKS)
    if unknown:
        raise ValueError(f"unknown checks {sorted(unknown)}; known: {list(DEFAULT_CHECKS)}")
    nve_timestep_fs = to_openmm_units(nve_timestep_fs, "nve_timestep_fs", unit.femtosecond,
                                      positive=True)
    temperature_kelvin = to_openmm_units(temperature_kelvin, "temperature_kelvin", unit.kelvin,
                                         positive=True)
    exported = ExportedModel.load(model)
    module, meta = exported.module, exported.metadata
    if positions is None:
        if meta.example_positions_nm is None:
            raise ValueError("no positions given and the model file stores no example")
        positions = meta.example_positions_nm
    positions = as_nm_array(positions, "positions", (3,))
    exported.check_atom_count(positions.shape[0], "positions have")
    if meta.periodic:
        box = meta.example_box_nm if box is None else box
        if box is None:
            raise ValueError("a periodic model needs a box (3x3, nm)")
        box = as_nm_array(box, "box", (3,))
    else:
        box = None
    rng = np.random.default_rng(seed)
    tol = tolerance if tolerance is not None else (1e-6 if meta.dtype == "float64" else 1e-4)
    masses = meta.masses_amu or [12.0] * meta.n_atoms
    harness = _Harness(exported, box, masses)
    reference = boundary_for(eager, meta) if eager is not None else module
    components = [None] if meta.kind == "potential" else list(range(meta.output_dim))
    output_names = meta.names

    def period_of(component):
        return None if component is None else meta.cv_period(component)

    def name_of(component):
        return output_names[0 if component is None else component]

    results = []

    def run(name, function):
        try:
            results.append(function())
        except Exception as error:  # a check that cannot run has failed; say why
            results.append(CheckResult(name, False, None, None,
                                       f"{type(error).__name__}: {error}"))

    def in_context(platform):
        worst_e = worst_f = 0.0
        for c in components:
            e_ctx, f_ctx = harness.evaluate(platform, c, positions)
            e_ref, f_ref = _torch_reference(reference, positions, box, c)
            de, df = _relative_errors(e_ctx, f_ctx, e_ref, f_ref, period_of(c))
            worst_e, worst_f = max(worst_e, de), max(worst_f, df)
        worst = max(worst_e, worst_f)
        source = "eager model" if eager is not None else "exported module in torch"
        return CheckResult(f"in_context[{platform}]", worst <= tol, worst, tol,
                           f"vs {source}: energy {worst_e:.2g}, forces {worst_f:.2g}")

    def finite_differences():
        fd_tol = 100 * tol
        h = 1e-5 if meta.dtype == "float64" else 1e-3
        worst = 0.0
        outputs, independent, parts, problems = {}, [], [], []
        for c in components:
            name, period = name_of(c), period_of(c)
            _, forces = harness.evaluate("Reference", c, positions)
            _, ref_forces = _torch_reference(reference, positions, box, c)
            # the atoms this output depends on here: nonzero gradient in torch or in OpenMM
            dependent = np.flatnonzero((np.abs(ref_forces).max(axis=1) > 0)
                                       | (np.abs(forces).max(axis=1) > 0))
            if dependent.size == 0:
                independent.append(name)
                outputs[name] = {"period": period, "depends_on_atoms": [], "coordinates": [],
                                 "error": None, "branch_cut_crossings": []}
                continue
            candidates = (dependent[:, None] * 3 + np.arange(3)).ravel()
            flat = np.sort(rng.choice(candidates, size=min(fd_coordinates, candidates.size),
                                      replace=False))
            scale = max(float(np.abs(forces).max()), 1.0)
            worst_here, crossed, jumps = 0.0, [], []
            for index in flat:
                atom, axis = divmod(int(index), 3)
                shifted = []
                for sign in (1.0, -1.0):
                    p = positions.copy()
                    p[atom, axis] += sign * h
                    shifted.append(harness.evaluate("Reference", c, p)[0])
                raw = shifted[0] - shifted[1]
                difference = _wrap(raw, period)
                numeric = -difference / (2 * h)
                error = abs(numeric - forces[atom, axis]) / scale
                if difference != raw:
                    crossed.append([atom, _AXES[axis]])
                if error > fd_tol and period is None:
                    jumps.append(abs(raw))
                worst_here = max(worst_here, error)
            worst = max(worst, worst_here)
            tested = sorted({int(i) // 3 for i in flat})
            outputs[name] = {
                "period": period,
                "depends_on_atoms": dependent.tolist(),
                "coordinates": [[int(i) // 3, _AXES[int(i) % 3]] for i in flat],
                "error": worst_here,
                "branch_cut_crossings": crossed,
            }
            parts.append(f"{name}: {len(flat)} coordinates of atoms {_atom_list(tested)}"
                         + (f" (depends on {dependent.size})" if len(tested) < dependent.size
                            else "")
                         + (f", period {period:.6g}" if period else ""))
            if crossed:
                what = (f"{len(crossed)} of {len(flat)} steps crossed the branch cut "
                        f"(compared modulo {period:.6g})")
                if worst_here > fd_tol:
                    problems.append(f"{name}: fails although compared on the circle; {what}")
                else:
                    parts[-1] += f"; {what}"
            if jumps and min(abs(j - 2 * math.pi) for j in jumps) < 0.2 * math.pi:
                problems.append(
                    f"{name} jumped by {max(jumps):.4g} across a step of {2 * h:g} nm: the "
                    "step crossed the branch cut of an angle (+-pi); the file records no "
                    "period for it: export it with cv_periods (2 * math.pi for an angle in "
                    "radians) to compare it on the circle")
            elif jumps:
                problems.append(f"{name} changed by up to {max(jumps):.4g} across a step "
                                f"of {2 * h:g} nm (a discontinuity?)")
        if independent:
            problems.insert(0, f"{' and '.join(independent)} "
                            f"{'depends' if len(independent) == 1 else 'depend'} on no "
                            "coordinate at this configuration (zero gradient on every atom), so "
                            "there is nothing to test: check the model, or pass positions where "
                            "it varies")
        detail = "; ".join(problems + parts) + f"; step {h:g} nm, Reference platform"
        passed = worst <= fd_tol and not independent
        data = {"step_nm": h, "outputs": outputs, "independent_outputs": independent}
        return CheckResult("finite_differences", passed, worst if parts else None, fd_tol,
                           detail, data)

    def compare_moved(name, moved, what):
        worst = 0.0
        for c in components:
            e0, f0 = harness.evaluate("Reference", c, positions)
            e1, f1 = harness.evaluate("Reference", c, moved)
            worst = max(worst, *_relative_errors(e1, f1, e0, f0, period_of(c)))
        return CheckResult(name, worst <= tol, worst, tol, what)

    def translation():
        shift = rng.uniform(-1.0, 1.0, size=3)
        return compare_moved("translation", positions + shift,
                             f"shifted by {np.round(shift, 3).tolist()} nm")

    def periodic_images():
        images = rng.integers(-2, 3, size=(positions.shape[0], 3))
        return compare_moved("periodic_images", positions + images @ box,
                             "every atom moved by a random integer combination of box vectors")

    def nve_drift():
        context = harness.context("Reference", None, nve_timestep_fs)
        context.setPositions(positions)
        if box is not None:
            context.setPeriodicBoxVectors(*[openmm.Vec3(*row) for row in box])
        openmm.LocalEnergyMinimizer.minimize(context, 1.0, 100)
        context.setVelocitiesToTemperature(temperature_kelvin, int(rng.integers(1, 2**30)))
        integrator = context.getIntegrator()
        total, kinetic = [], []
        for _ in range(max(nve_steps // 10, 2)):
            integrator.step(10)
            state = context.getState(getEnergy=True)
            k = state.getKineticEnergy().value_in_unit(unit.kilojoule_per_mole)
            v = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
            if not np.isfinite(k + v):
                return CheckResult("nve_drift", False, float("inf"), nve_tolerance,
                                   "the NVE run produced non-finite energies")
            total.append(k + v)
            kinetic.append(k)
        ratio = float(np.std(total) / max(np.std(kinetic), 1e-12))
        slope = float(np.polyfit(np.arange(len(total)) * 10 * nve_timestep_fs * 1e-3, total, 1)[0])
        return CheckResult("nve_drift", ratio <= nve_tolerance, ratio, nve_tolerance,
                           f"std(E_total)/std(E_kin) over {len(total) * 10} steps of "
                           f"{nve_timestep_fs} fs; drift {slope:.3g} kJ/mol/ps")

    if "in_context" in checks:
        for platform in platforms:
            run(f"in_context[{platform}]", lambda p=platform: in_context(p))
    if "finite_differences" in checks:
        run("finite_differences", finite_differences)
    if "translation" in checks:
        run("translation", translation)
    if "periodic_images" in checks and meta.periodic:
        run("periodic_images", periodic_images)
    if "nve_drift" in checks and meta.kind == "potential" and nve_steps > 0:
        run("nve_drift", nve_drift)
    return ExportReport(exported.source, meta.kind, meta.n_atoms, meta.periodic, meta.output_dim, results)
