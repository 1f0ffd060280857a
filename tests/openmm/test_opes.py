"""OPES and OPES-explore on TorchCVForce: kernel bookkeeping against an independent brute-force
numpy OPES (PLUMED's algorithm, written with plain loops), the Context's energy against it,
compression, adaptive sigma, exact resume, bad input, and the exactly solvable 2D double well
(OPES, OPES-explore and metadynamics recover the exact free energy by reweighting)."""
import csv
import functools
import math

import numpy as np
import openmm
import openmm.app as app
import openmm.unit as unit
import pytest
import torch

from analytic import (DOUBLE_WELL, DW_LENGTH, KT_300, double_well_delta_f,
                      double_well_density)
from openmm_geom.errors import CheckpointMismatchError, SimulationBlowUp
from openmm_geom.openmm import OPES, GridAxis, Metadynamics

KJ = unit.kilojoule_per_mole


# -- CV modules --------------------------------------------------------------------------------
class XY(torch.nn.Module):
    """CVs x, y of particle 0 (nm)."""

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        return positions[0, :2]


class AngleAndX(torch.nn.Module):
    """phi = atan2(y, x) of particle 0 (periodic, rad) and its x (nm)."""

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        return torch.stack([torch.atan2(positions[0, 1], positions[0, 0]), positions[0, 0]])


class XYThenNaN(torch.nn.Module):
    """x, y and a third CV that turns NaN from the 40th evaluation on (not biased)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("calls", torch.zeros((), dtype=torch.float64))

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        self.calls += 1.0
        flag = torch.where(self.calls >= 40.0, torch.full_like(self.calls, float("nan")),
                           torch.zeros_like(self.calls))
        return torch.stack([positions[0, 0], positions[0, 1], flag])


def _scripted(module):
    return torch.jit.script(module)


# -- the brute-force reference ------------------------------------------------------------------
class NumpyOPES:
    """PLUMED's OPES_METAD / OPES_METAD_EXPLORE update, plain loops, Z recomputed in full."""

    def __init__(self, kT, barrier, pace, sigma, explore, threshold, periods, stride=0,
                 interval=1, fixed_sigma=False):
        gamma = barrier / kT
        self.kT, self.pace, self.explore, self.threshold = kT, pace, explore, threshold
        self.periods, self.fixed_sigma = list(periods), fixed_sigma
        self.prefactor = (gamma - 1) if explore else (1 - 1 / gamma)
        self.epsilon = math.exp(-barrier / (self.prefactor * kT))
        self.sigma0 = None if sigma is None else [s * (math.sqrt(gamma) if explore else 1) for s in sigma]
        self.stride, self.interval = stride, interval
        self.needed = -(-stride // interval) if sigma is None else 0
        self.counter, self.sum_w = 1, self.epsilon ** self.prefactor
        self.sum_w2, self.zed = self.sum_w ** 2, 1.0
        self.adaptive_counter = 0
        d = len(self.periods)
        self.av, self.m2 = [0.0] * d, [0.0] * d
        self.kernels = []  # [height, center list, sigma list]

    def diff(self, i, a, b):
        x = b - a
        p = self.periods[i]
        return x - p * math.floor(x / p + 0.5) if p > 0 else x

    def kernel(self, kern, s):
        h, c, sig = kern
        return h * math.exp(-0.5 * sum((self.diff(i, c[i], s[i]) / sig[i]) ** 2 for i in range(len(s))))

    def norm(self):
        return self.counter if self.explore else self.sum_w

    def bias(self, s):
        prob = sum(self.kernel(kern, s) for kern in self.kernels) / self.norm()
        return self.prefactor * self.kT * math.log(prob / self.zed + self.epsilon)

    def merge(self, k1, k2):
        h = k1[0] + k2[0]
        for i in range(len(k1[1])):
            c1 = k1[1][i]
            if self.periods[i] > 0:
                c1 = k2[1][i] + self.diff(i, k2[1][i], c1)
            c = (k1[0] * c1 + k2[0] * k2[1][i]) / h
            ss = (k1[0] * (k1[2][i] ** 2 + c1 ** 2) + k2[0] * (k2[2][i] ** 2 + k2[1][i] ** 2)) / h - c * c
            p = self.periods[i]
            k1[1][i] = c - p * math.floor(c / p + 0.5) if p > 0 else c
            k1[2][i] = math.sqrt(ss)
        k1[0] = h

    def nearest(self, center, skip):
        best, best_norm = None, self.threshold ** 2
        for k, (_, c, sig) in enumerate(self.kernels):
            if k == skip:
                continue
            n2 = sum((self.diff(i, center[i], c[i]) / sig[i]) ** 2 for i in range(len(c)))
            if n2 < best_norm:
                best, best_norm = k, n2
        return best

    def add(self, height, center, sigma):
        taker = self.nearest(center, None) if self.threshold > 0 else None
        if taker is None:
            self.kernels.append([height, list(center), list(sigma)])
            return
        self.merge(self.kernels[taker], [height, list(center), list(sigma)])
        giver = taker
        taker = self.nearest(self.kernels[giver][1], giver)
        while taker is not None:
            if taker > giver:
                taker, giver = giver, taker
            self.merge(self.kernels[taker], self.kernels[giver])
            del self.kernels[giver]
            giver = taker
            taker = self.nearest(self.kernels[giver][1], giver)

    def update(self, s, step):
        d = len(s)
        if self.sigma0 is None:
            if step % self.interval == 0:
                self.adaptive_counter += 1
                tau = min(self.adaptive_counter, self.needed)
                for i in range(d):
                    delta = self.diff(i, self.av[i], s[i])
                    self.av[i] += delta / tau
                    self.m2[i] += delta * self.diff(i, self.av[i], s[i])
            if self.adaptive_counter < self.needed and self.counter == 1:
                return
        if step % self.pace:
            return
        height = math.exp(self.bias(s) / self.kT)
        self.counter += 1
        self.sum_w += height
        self.sum_w2 += height * height
        if self.explore:
            height = 1.0
        if self.sigma0 is None:
            if self.explore:
                sigma = [math.sqrt(m / self.adaptive_counter) for m in self.m2]
            else:
                if self.counter == 2:
                    self.m2 = [m / (1 - self.prefactor) for m in self.m2]
                sigma = [math.sqrt(m / self.adaptive_counter * (1 - self.prefactor)) for m in self.m2]
        else:
            sigma = list(self.sigma0)
        if not self.fixed_sigma:
            size = self.counter if self.explore else (1 + self.sum_w) ** 2 / (1 + self.sum_w2)
            r = (size * (d + 2) / 4) ** (-1 / (4 + d))
            sigma = [x * r for x in sigma]
            height /= r ** d
        self.add(height, list(s), sigma)
        self.zed = sum(self.kernel(kk, k[1]) for k in self.kernels for kk in self.kernels) \
            / self.norm() / len(self.kernels)


# -- systems -----------------------------------------------------------------------------------
def _system(expression="2000*(x^2+y^2+z^2)", mass=1.0):
    system = openmm.System()
    system.addParticle(mass)
    external = openmm.CustomExternalForce(expression)
    external.addParticle(0, [])
    system.addForce(external)
    return system


def _simulation(system, seed=11, position=(-0.1, 0.0, 0.0), friction=10.0, dt=0.002):
    integrator = openmm.LangevinMiddleIntegrator(300, friction, dt)
    integrator.setRandomNumberSeed(seed)
    simulation = app.Simulation(app.Topology(), system, integrator,
                                openmm.Platform.getPlatformByName("Reference"))
    simulation.context.setPositions([list(position)])
    simulation.context.setVelocitiesToTemperature(300, seed)
    return simulation


def _read_log(path):
    with open(path) as handle:
        return list(csv.reader(handle))


def _replay_points(rng, n, periodic):
    """A wandering 2D CV path (random walk between two centres), a periodic first CV if asked."""
    points = np.empty((n, 2))
    position = np.array([0.0, 0.0])
    for i in range(n):
        target = np.array([1.0, 0.2]) if (i // 40) % 2 else np.array([-1.0, -0.1])
        position = position + 0.15 * (target - position) + rng.normal(0, [0.15, 0.05])
        points[i] = position
    if periodic:
        points[:, 0] = (points[:, 0] * 2.0 + math.pi) % (2 * math.pi) - math.pi  # wraps round
    return points


@pytest.mark.parametrize("case", ["fixed", "adaptive", "explore", "explore-fixed", "periodic"])
def test_kernels_z_and_bias_match_brute_force_numpy_opes(case, rng):
    periodic = case == "periodic"
    model = _scripted(AngleAndX() if periodic else XY())
    names = ["phi", "x"] if periodic else ["x", "y"]
    explore = case.startswith("explore")
    sigma = None if case in ("adaptive", "explore") else [0.12, 0.05]
    options = dict(adaptive_sigma_stride=20, variance_interval=3) if sigma is None else {}
    system = _system("0*x")
    opes = OPES(system, model, 300, 12.0, 5, sigma=sigma, explore=explore, cv_names=names,
                periodic=["phi"] if periodic else (), **options)
    reference = NumpyOPES(KT_300, 12.0, 5, sigma, explore, 1.0,
                          [2 * math.pi, 0.0] if periodic else [0.0, 0.0],
                          stride=20, interval=3)
    points = _replay_points(rng, 600, periodic)
    for step, point in enumerate(points, start=1):
        opes.update_at(point, step)
        reference.update(point.tolist(), step)
        if step == 20 and sigma is None:  # 6 samples of the 7 (ceil(20/3)) needed: no kernel yet
            assert opes.counter == 1 and opes.n_kernels == 0
    centers, sigmas, heights = opes.kernels
    assert opes.n_kernels == len(reference.kernels)
    assert 15 < opes.n_kernels < 110  # merges happened, and the incremental Z path ran
    assert opes.counter == reference.counter
    assert opes.epsilon == pytest.approx(reference.epsilon, rel=1e-14)
    np.testing.assert_allclose(heights, [k[0] for k in reference.kernels], rtol=1e-10)
    np.testing.assert_allclose(centers, [k[1] for k in reference.kernels], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(sigmas, [k[2] for k in reference.kernels], rtol=1e-10)
    assert opes.zed == pytest.approx(reference.zed, rel=1e-10)
    assert opes.sum_weights == pytest.approx(reference.sum_w, rel=1e-10)
    probes = points[rng.choice(len(points), 12)] + rng.normal(0, 0.05, (12, 2))
    expected = np.array([reference.bias(p.tolist()) for p in probes])
    np.testing.assert_allclose(opes.bias_at(probes), expected, rtol=1e-10, atol=1e-10)
    # the Context applies the same bias; its forces agree with finite differences
    context = openmm.Context(system, openmm.VerletIntegrator(0.001),
                             openmm.Platform.getPlatformByName("Reference"))
    for p in probes[:4]:
        if periodic:  # phi = p[0] on a circle of radius 0.15 nm, x = 0.15 cos(phi)
            position = np.array([0.15 * math.cos(p[0]), 0.15 * math.sin(p[0]), 0.0])
            cv = [math.atan2(position[1], position[0]), position[0]]
        else:
            position = np.array([p[0], p[1], 0.0])
            cv = p.tolist()
        context.setPositions([position.tolist()])
        state = context.getState(getEnergy=True, getForces=True)
        assert state.getPotentialEnergy().value_in_unit(KJ) == pytest.approx(
            reference.bias(cv), rel=1e-10, abs=1e-10)
        force = state.getForces(asNumpy=True).value_in_unit(KJ / unit.nanometer)[0]
        h = 1e-6
        for dim in range(2):
            energies = []
            for sign in (1, -1):
                shifted = position.copy()
                shifted[dim] += sign * h
                context.setPositions([shifted.tolist()])
                energies.append(context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(KJ))
            assert -(energies[0] - energies[1]) / (2 * h) == pytest.approx(force[dim], rel=1e-5, abs=1e-4)


def test_compression_saturates_the_kernel_count(rng):
    # CVs uniform on a 1 nm square, fixed sigma 0.1 nm: with compression the kernel count
    # levels off at about area / sigma^2; without it, it is one kernel per deposition
    counts = {}
    for threshold, n in ((1.0, 1000), (0.0, 200)):
        system = _system()  # holds the force: keep it alive as long as the OPES object
        opes = OPES(system, _scripted(XY()), 300, 12.0, 1, sigma=[0.1, 0.1], fixed_sigma=True,
                    compression_threshold=threshold, cv_names=["x", "y"])
        history = []
        for step, point in enumerate(rng.uniform(-0.5, 0.5, (n, 2)), start=1):
            opes.update_at(point, step)
            history.append(opes.n_kernels)
        assert opes.force.getNumHills() == opes.n_kernels
        counts[threshold] = history
    assert counts[0.0][-1] == 200
    merged = counts[1.0]
    assert merged[-1] <= 100  # not one per deposition
    assert merged[-1] - merged[499] <= 0.05 * merged[499]  # saturated: the second half adds ~none


def test_adaptive_sigma_is_the_cv_standard_deviation():
    # a harmonic well 0.5 k x^2: std(x) = sqrt(kT/k) = 0.0223 nm; after the adaptive stride the
    # first kernel's sigma is that std times PLUMED's Silverman factor (n_eff (k+2)/4)^(-1/(k+4))
    k_x, k_y = 5000.0, 20000.0
    system = _system(f"0.5*{k_x}*x^2 + 0.5*{k_y}*y^2 + 1000*z^2")
    opes = OPES(system, _scripted(XY()), 300, 20.0, 50, cv_names=["x", "y"],
                adaptive_sigma_stride=4000, variance_interval=2)
    simulation = _simulation(system, position=(0, 0, 0))
    opes.step(simulation, 3999)
    assert opes.n_kernels == 0  # no kernel before sigma has been measured
    opes.step(simulation, 1)
    assert opes.n_kernels == 1
    _, sigmas, _ = opes.kernels
    rescaling = (opes.neff * (2 + 2.0) / 4.0) ** (-1.0 / 6.0)
    expected = np.sqrt(KT_300 / np.array([k_x, k_y]))
    np.testing.assert_allclose(sigmas[0] / rescaling, expected, rtol=0.2)


def _resume_case(tmp_path, tag, explore=False):
    system = _system()
    opes = OPES(system, _scripted(XY()), 300, 15.0, 10, explore=explore, cv_names=["x", "y"],
                adaptive_sigma_stride=40, variance_interval=5, log=tmp_path / f"{tag}.csv",
                log_interval=5)
    return opes, _simulation(system, seed=7, position=(0.02, -0.01, 0.0))


@pytest.mark.parametrize("explore", [False, True])
def test_save_load_resume_equals_an_uninterrupted_run(explore, tmp_path):
    n = 150
    opes_a, sim_a = _resume_case(tmp_path, "a", explore)
    opes_a.step(sim_a, 2 * n)

    opes_b, sim_b = _resume_case(tmp_path, "b", explore)
    opes_b.step(sim_b, n)
    sim_b.saveCheckpoint(str(tmp_path / "b.chk"))
    opes_b.save_state(tmp_path / "b.npz", sim_b.context)
    opes_b.step(sim_b, 35)  # the run goes on past the save, then dies

    opes_c, sim_c = _resume_case(tmp_path, "b", explore)
    with pytest.raises(ValueError, match="load the simulation checkpoint first"):
        opes_c.load_state(tmp_path / "b.npz", sim_c.context)
    sim_c.loadCheckpoint(str(tmp_path / "b.chk"))
    opes_c.load_state(tmp_path / "b.npz", sim_c.context)
    opes_c.step(sim_c, n)

    state_a = sim_a.context.getState(getPositions=True, getEnergy=True)
    state_c = sim_c.context.getState(getPositions=True, getEnergy=True)
    assert sim_c.currentStep == sim_a.currentStep == 2 * n
    pa, pc = state_a.getPositions(asNumpy=True)._value, state_c.getPositions(asNumpy=True)._value
    assert np.abs(pa - pc).max() <= 1e-10
    assert abs(state_a.getPotentialEnergy()._value - state_c.getPotentialEnergy()._value) <= 1e-10
    assert opes_a.n_kernels == opes_c.n_kernels >= 10
    for a, c in zip(opes_a.kernels, opes_c.kernels):
        assert np.abs(a - c).max() <= 1e-10
    assert opes_a.zed == pytest.approx(opes_c.zed, rel=1e-10)
    rows_a, rows_c = _read_log(tmp_path / "a.csv"), _read_log(tmp_path / "b.csv")
    assert rows_a[0] == ["step", "time_ps", "x", "y", "bias_kJmol", "rct_kJmol", "log_zed",
                         "n_kernels", "neff"]
    assert [int(r[0]) for r in rows_c[1:]] == list(range(5, 2 * n + 1, 5))
    assert np.abs(np.array(rows_a[1:], float) - np.array(rows_c[1:], float)).max() <= 1e-10


def test_bad_input_is_one_clear_error_and_nothing_is_added(tmp_path):
    system = _system()
    model = _scripted(XY())
    forces = system.getNumForces()
    cases = [
        (dict(temperature=-300), ValueError, "temperature must be > 0"),
        (dict(temperature=300 * unit.nanometer), TypeError, "temperature: expected a temperature"),
        (dict(barrier=0.0), ValueError, "barrier must be > 0"),
        (dict(barrier=-5 * KJ), ValueError, "barrier must be > 0"),
        (dict(barrier=2.0), ValueError, "must exceed kT"),
        (dict(pace=0), ValueError, "pace must be >= 1"),
        (dict(pace=2.5), TypeError, "pace must be a whole number"),
        (dict(sigma=[0.1, -0.1]), ValueError, r"sigma\['y'\] must be > 0"),
        (dict(sigma=[0.1, 0.0]), ValueError, r"sigma\['y'\] must be > 0"),
        (dict(sigma=[0.1]), ValueError, r"1 sigma value given for 2 biased CVs \['x', 'y'\]"),
        (dict(sigma=[0.1, 0.1, 0.1]), ValueError, "3 sigma values given for 2 biased CVs"),
        (dict(sigma=[0.1, 1 * KJ]), TypeError, r"sigma\['y'\]: expected a length"),
        (dict(cvs=["x", "q"]), ValueError, r"no CVs named \['q'\]"),
        (dict(compression_threshold=-1), ValueError, "compression_threshold must be >= 0"),
        (dict(explore=True, bias_factor=float("inf"), sigma=[0.1, 0.1]), ValueError, "not compatible with explore"),
        (dict(bias_factor=float("inf")), ValueError, "needs a fixed sigma"),
        (dict(sigma=[0.1, 0.1], variance_interval=3), ValueError, "for adaptive sigma only"),
        (dict(adaptive_sigma_stride=5, pace=10), ValueError, r"adaptive_sigma_stride \(5\) must be >= pace"),
    ]
    for change, error, message in cases:
        arguments = dict(temperature=300, barrier=20.0, pace=10, cv_names=["x", "y"])
        arguments.update(change)
        with pytest.raises(error, match=message):
            OPES(system, model, **arguments, log=tmp_path / "never.csv")
    assert system.getNumForces() == forces and not (tmp_path / "never.csv").exists()


def test_a_non_finite_cv_stops_the_run_at_its_step_and_nothing_is_written_after(tmp_path):
    system = _system()
    opes = OPES(system, _scripted(XYThenNaN()), 300, 15.0, 4, sigma=[0.02, 0.02],
                cvs=["x", "y"], cv_names=["x", "y", "flag"], log=tmp_path / "log.csv",
                log_interval=2)
    simulation = _simulation(system, position=(0.01, 0.0, 0.0))
    with pytest.raises(SimulationBlowUp, match=r"non-finite value for flag \(nan\) at step") as error:
        opes.step(simulation, 200)
    step = error.value.step
    assert 20 <= step < 40 and f"at step {step};" in str(error.value)
    rows = _read_log(tmp_path / "log.csv")
    assert 0 < int(rows[-1][0]) <= step and error.value.last_good_step == int(rows[-1][0])
    assert all(math.isfinite(float(v)) for row in rows[1:] for v in row)
    # the bias state is that of the last good step: one deposition per pace step logged before
    assert opes.counter - 1 == len([r for r in rows[1:] if int(r[0]) % 4 == 0]) >= 2


def test_state_of_another_model_or_settings_is_refused(tmp_path):
    opes, simulation = _resume_case(tmp_path, "x")
    opes.step(simulation, 60)
    opes.save_state(tmp_path / "s.npz", simulation.context)
    other_system = _system()
    other = OPES(other_system, _scripted(AngleAndX()), 300, 15.0, 10, cv_names=["phi", "x"])
    with pytest.raises(CheckpointMismatchError, match="another CV model"):
        other.load_state(tmp_path / "s.npz", _simulation(other_system).context, check_step=False)
    higher_system = _system()
    higher = OPES(higher_system, _scripted(XY()), 300, 25.0, 10, cv_names=["x", "y"],
                  adaptive_sigma_stride=40, variance_interval=5)
    with pytest.raises(ValueError, match="barrier_kJmol: saved 15.0, here 25.0"):
        higher.load_state(tmp_path / "s.npz", _simulation(higher_system).context, check_step=False)
    assert higher.n_kernels == 0 and higher.counter == 1  # nothing loaded


def test_getters_follow_the_openmm_conventions():
    system = _system()
    opes = OPES(system, _scripted(XY()), 300 * unit.kelvin, 4.0 * unit.kilocalorie_per_mole, 5,
                sigma=[0.5 * unit.angstrom, 0.005], cv_names=["x", "y"])
    assert opes.barrier == pytest.approx(4.0 * 4.184)
    np.testing.assert_allclose(opes.kernels[1], np.zeros((0, 2)))
    simulation = _simulation(system, position=(0.03, -0.02, 0.0))
    opes.step(simulation, 50)
    assert opes.n_kernels >= 1
    cvs = opes.getCollectiveVariables(simulation)
    assert cvs == pytest.approx(simulation.context.getState(getPositions=True).getPositions(
        asNumpy=True)._value[0, :2], rel=1e-12)
    assert opes.getBias(simulation).value_in_unit(KJ) == pytest.approx(opes.bias_at(cvs), rel=1e-14)
    axes, fe = opes.free_energy_grid(ranges=[(-0.1, 0.1), (-0.05, 0.05)], points=11)
    fe_openmm = opes.getFreeEnergy(ranges=[(-0.1, 0.1), (-0.05, 0.05)], points=11)
    assert fe_openmm.shape == (11, 11) and np.allclose(fe_openmm.value_in_unit(KJ), fe.T)
    point = [axes[0][3], axes[1][7]]
    assert fe[3, 7] == pytest.approx(-opes.bias_at(point) / (1 - 1 / opes.bias_factor), rel=1e-12)


# -- the exactly solvable system ---------------------------------------------------------------
# The double well of tests/analytic.py.
LENGTH = DW_LENGTH
BINS = np.linspace(-0.2, 0.2, 41)


@functools.lru_cache(maxsize=1)
def _exact_profile():
    """Exact basin difference F(x > 0) - F(x < 0) and F on BINS (min 0), kJ/mol."""
    x = np.linspace(-0.25, 0.25, 4001)
    p = double_well_density(x)
    per_bin = np.array([np.trapezoid(p[(x >= lo) & (x <= hi)], x[(x >= lo) & (x <= hi)])
                        for lo, hi in zip(BINS[:-1], BINS[1:])])
    profile = -KT_300 * np.log(per_bin)
    return double_well_delta_f(), profile - profile.min()


def _reweighted(xs, log_weights):
    """dF(x > 0 - x < 0) and the profile on BINS, the profile's RMSE against the exact one on
    the bins below 20 kJ/mol (after the best constant shift), and the empty such bins."""
    w = np.exp(log_weights - log_weights.max())
    d_f = -KT_300 * math.log(w[xs > 0].sum() / w[xs < 0].sum())
    histogram, _ = np.histogram(xs, BINS, weights=w)
    exact_df, exact = _exact_profile()
    with np.errstate(divide="ignore"):
        profile = -KT_300 * np.log(histogram)
    low = exact < 20.0
    empty = int((low & ~np.isfinite(profile)).sum())
    ok = low & np.isfinite(profile)
    shift = (profile[ok] - exact[ok]).mean()
    rmse = math.sqrt(((profile[ok] - shift - exact[ok]) ** 2).mean())
    return d_f - exact_df, rmse, empty


def _double_well_run(method, steps, seed, tmp_path):
    """Run a bias on (x, y) from the left basin; returns (dF error, profile RMSE, empty bins,
    kernels or hills, transitions) from the log, reweighted with exp(V/kT) (metadynamics:
    exp((V - c(t))/kT)), the first 10 % of the frames left out."""
    system = _system(DOUBLE_WELL)
    log = tmp_path / f"{method}-{seed}.csv"
    if method == "metad":
        axes = [GridAxis("x", -0.22, 0.22, 0.015, points=89),
                GridAxis("y", -0.12, 0.12, 0.02, points=49)]
        bias = Metadynamics(system, _scripted(XY()), axes, 300, 10.0, 1.5, 50, cv_names=["x", "y"],
                            log=log, log_interval=10)
    else:
        bias = OPES(system, _scripted(XY()), 300, 30.0, 100, explore=method == "explore",
                    cv_names=["x", "y"], log=log, log_interval=10)
    simulation = _simulation(system, seed=seed, position=(-LENGTH, 0.0, 0.0))
    bias.step(simulation, steps)
    rows = np.array(_read_log(log)[1:], float)
    kept = rows[len(rows) // 10:]
    log_weights = kept[:, 4] / KT_300
    if method == "metad":
        log_weights = (kept[:, 4] - kept[:, 5]) / KT_300
    error, rmse, empty = _reweighted(kept[:, 2], log_weights)
    transitions = int((np.diff(np.sign(rows[:, 2])) != 0).sum())
    count = len(bias.hills) if method == "metad" else bias.n_kernels
    return error, rmse, empty, count, transitions


@pytest.mark.parametrize("method", ["opes", "explore", "metad"])
def test_double_well_free_energy_is_recovered_short(method, tmp_path):
    # short runs (1e5 steps, 0.2 ns): looser tolerances than the issue's, declared here before
    # the runs; the 0.5 / 1 kJ/mol are checked by the slow test below
    error, rmse, empty, count, transitions = _double_well_run(method, 100_000, 1, tmp_path)
    assert transitions >= 20
    assert empty == 0
    assert abs(error) <= 1.5
    assert rmse <= 1.5


@pytest.mark.slow
@pytest.mark.parametrize("method", ["opes", "explore", "metad"])
def test_double_well_free_energy_is_recovered(method, tmp_path):
    # the acceptance: dF between the basins within 0.5 kJ/mol and the profile within
    # 1 kJ/mol RMSE on the bins below 20 kJ/mol (1e6 steps, 2 ns)
    error, rmse, empty, count, transitions = _double_well_run(method, 1_000_000, 2, tmp_path)
    assert empty == 0
    assert abs(error) <= 0.5
    assert rmse <= 1.0
    if method != "metad":
        assert count < 1000  # compression: far fewer kernels than the 10^4 depositions
