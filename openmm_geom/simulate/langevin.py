"""Batched Langevin dynamics for coarse-grained models: many replicas in one set of tensors.

:class:`BatchedLangevin` integrates ``B`` independent replicas of an ``n``-bead system at once,
with the two integrators of the CGSchNet paper (section III.C, eqs. 12-13):

* ``"baoab"``: underdamped Langevin dynamics with the BAOAB splitting of Leimkuhler and
  Matthews. Per step, with ``c1 = exp(-gamma dt)``::

      B  v <- v + F/m dt/2
      A  x <- x + v dt/2
      O  v <- c1 v + sqrt((1 - c1^2) kT/m) xi
      A  x <- x + v dt/2
         F <- force_fn(x)
      B  v <- v + F/m dt/2

  The force of the final B is reused by the first B of the next step, so ``force_fn`` runs
  once per step. With ``friction=0`` the O step is skipped and BAOAB is velocity Verlet.
  Internally the final B of a step and the first B of the next are one kick,
  ``v <- v + F/m dt``: the stored velocity is the half-kicked one, and the end-of-step
  velocity is computed from it (``v - F/m dt/2``) whenever it is reported or checkpointed.
  This is the same algorithm (identical up to rounding) with one tensor operation less per step,
  and it does not depend on how the steps are grouped between saves and checkpoints.
* ``"overdamped"``: overdamped (Brownian) Langevin dynamics, Euler-Maruyama::

      x <- x + F D/kT dt + sqrt(2 D dt) xi,    D = kT/(m gamma)   (per bead and replica)

Units are OpenMM's: nm, ps, amu, K, kJ/mol; every physical argument also accepts an
``openmm.unit`` Quantity (``temperature=300*kelvin, timestep=2*femtosecond``). Each replica
may have its own temperature. All random numbers come from one seeded
:class:`torch.Generator`, so a seeded CPU run is
bit-identical to any other with the same seed, inputs and thread count, and a run resumed from a
checkpoint is bit-identical to an uninterrupted one.

The Gaussian noise is drawn in ``noise_dtype`` (default float32, whose generator is vectorised
and about five times faster than float64's; Box-Muller on 24-bit uniforms truncates the
Gaussian beyond 5.8 standard deviations). Positions, velocities and forces are integrated in
``dtype``.

The step loop only launches in-place tensor operations on preallocated buffers: it does not
synchronise with the host, loop over replicas or allocate, except every ``save_interval`` or
``checkpoint_interval`` steps, where frames are written, checkpoints are taken and the state is
checked for a blow-up (non-finite values or forces above ``blowup_force``), which stops the run
with :class:`SimulationBlowUp` instead of writing garbage.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import operator
import os
import time as _time
from pathlib import Path
from typing import Callable, Optional, Sequence, Tuple

import openmm.unit as unit
import torch

from ..errors import CheckpointError, CheckpointMismatchError, SimulationBlowUp
from ..io import load_versioned, save_versioned
from ..progress import progress_bar
from ..units import MOLAR_GAS_CONSTANT_KJ, has_units, to_openmm_units
from .trajectory import TrajectoryWriter

__all__ = [
    "BatchedLangevin",
    "ForceFn",
    "RunSummary",
    "SimulationBlowUp",
    "benchmark_integrator",
]

#: ``force_fn(x[B, n, 3] nm) -> (forces[B, n, 3] kJ/mol/nm, energies[B] kJ/mol, spread[B] | None)``
ForceFn = Callable[[torch.Tensor], Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]]

INTEGRATORS = ("baoab", "overdamped")
CHECKPOINT_KIND, CHECKPOINT_VERSION = "langevin-checkpoint", 1
_MAX_LISTED = 20  # replicas/beads named in a blow-up message


@dataclasses.dataclass(frozen=True)
class RunSummary:
    """What :meth:`BatchedLangevin.run` did.

    Attributes
    ----------
    steps : int
        Steps integrated by this call (fewer than ``n_steps`` when resumed).
    final_step : int
        Step reached (equals ``n_steps``).
    time_ps : float
        Simulated time reached, ps (``final_step * timestep``).
    wall_seconds : float
        Wall-clock time of this call.
    replica_steps_per_second : float
        ``n_replicas * steps / wall_seconds`` (0 when no step was taken).
    n_replicas : int
        Number of replicas.
    frames_written : int
        Frames appended to the writer by this call.
    resumed_from_step : int or None
        Step of the checkpoint the run resumed from, None for a fresh start.
    """

    steps: int
    final_step: int
    time_ps: float
    wall_seconds: float
    replica_steps_per_second: float
    n_replicas: int
    frames_written: int
    resumed_from_step: Optional[int]

    def as_dict(self) -> dict:
        """The summary as a JSON-serialisable dict."""
        return dataclasses.asdict(self)


# -- validation helpers --------------------------------------------------------------------------
def _scalar(value, name: str, openmm_unit, **checks) -> float:
    """A scalar physical argument in OpenMM units (a plain number or a Quantity)."""
    number = to_openmm_units(value, name, openmm_unit, **checks)
    if not isinstance(number, float):
        raise TypeError(f"{name} must be a single number, got shape {number.shape}")
    return number


def _physical_tensor(value, name: str, openmm_unit, dtype: torch.dtype,
                     **checks) -> torch.Tensor:
    """A physical array (plain numbers in OpenMM units, or Quantities) as a CPU tensor, with
    the finiteness and sign checks of :func:`~openmm_geom.units.to_openmm_units`."""
    if has_units(value):
        value = to_openmm_units(value, name, openmm_unit, finite=False)
    tensor = _as_tensor(value, name, dtype)
    if checks:
        to_openmm_units(tensor.to(torch.float64).numpy(), name, openmm_unit, **checks)
    return tensor


def _int(value, name: str, minimum: int) -> int:
    try:
        number = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {value!r}") from None
    if number < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {number}")
    return number


def _as_tensor(value, name: str, dtype: torch.dtype) -> torch.Tensor:
    try:
        tensor = torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as error:
        raise TypeError(f"{name} must be a tensor or array of numbers: {error}") from None
    if tensor.is_complex() or tensor.dtype == torch.bool:
        raise TypeError(f"{name} must be real numbers, got dtype {tensor.dtype}")
    if tensor.device.type != "cpu":
        raise ValueError(f"{name} must be on the CPU (the simulator runs on the CPU), got "
                         f"{tensor.device}")
    return tensor.detach().to(dtype)


def _digest(tensor: Optional[torch.Tensor]) -> str:
    if tensor is None:
        return "None"
    data = tensor.detach().to(torch.float64).contiguous().numpy().tobytes()
    return hashlib.sha256(data).hexdigest()[:16]


def _listed(indices: Sequence[int]) -> str:
    shown = ", ".join(str(i) for i in indices[:_MAX_LISTED])
    more = f", ... ({len(indices)} in all)" if len(indices) > _MAX_LISTED else ""
    return f"[{shown}{more}]"


@dataclasses.dataclass
class _State:
    """The dynamical state advanced by the step loop (all tensors preallocated or reused).

    ``w`` is the half-kicked velocity ``v + F/m dt/2`` of BAOAB (None when overdamped).
    """

    x: torch.Tensor
    w: Optional[torch.Tensor]
    f: torch.Tensor
    e: torch.Tensor
    s: Optional[torch.Tensor]
    step: int


class BatchedLangevin:
    """Langevin dynamics of ``B`` replicas of an ``n``-bead coarse-grained system, batched.

    Parameters
    ----------
    force_fn : callable
        ``force_fn(x) -> (forces, energies, spread)`` with ``x`` the positions, shape
        ``(B, n, 3)`` nm, in ``dtype``; ``forces`` shape ``(B, n, 3)`` kJ/mol/nm; ``energies``
        shape ``(B,)`` kJ/mol; ``spread`` shape ``(B,)`` (an ensemble uncertainty such as the
        standard deviation of the members' forces) or None. It is called once per step (plus
        once at the start of a fresh run) and must not modify ``x`` in place; it may compute
        forces with autograd (the simulator detaches what it returns). Forces of another
        floating dtype are converted.
    masses : array-like or Quantity, shape (n,)
        Bead masses (> 0): plain numbers in amu (daltons), or Quantities (``12*dalton``).
    temperature : float, Quantity or array-like of shape (B,)
        Temperature (> 0) for all replicas or one per replica: plain numbers in K, or
        Quantities (``300*kelvin``, a Quantity array).
    friction : float or Quantity, default 1.0
        Friction coefficient gamma (>= 0): a plain number in 1/ps, or a Quantity
        (``1/picosecond``, ``0.5/femtosecond``). ``0`` makes BAOAB velocity Verlet (constant
        energy); overdamped dynamics need ``friction > 0``.
    timestep : float or Quantity, default 0.002
        Time step (> 0): a plain number in **ps** (OpenMM's unit; the command line takes fs),
        or a Quantity (``2*femtosecond``).
    integrator : {"baoab", "overdamped"}, default "baoab"
        Underdamped Langevin (BAOAB) or overdamped Langevin (Euler-Maruyama), see the module
        documentation.
    seed : int, default 0
        Seed of the simulator's :class:`torch.Generator`, the only source of randomness
        (initial velocities and noise). Successive :meth:`run` calls continue its stream.
    dtype : torch.dtype, default torch.float64
        Floating dtype of the state (positions, velocities, forces).
    noise_dtype : torch.dtype, default torch.float32
        Dtype in which the Gaussian noise is drawn (see the module documentation); float64
        costs about 20 ns per number instead of 4.

    Raises
    ------
    TypeError, ValueError
        Invalid parameters, with a message naming the parameter.

    Examples
    --------
    >>> k = 1000.0                                    # kJ/mol/nm^2, a harmonic trap
    >>> def force_fn(x):
    ...     return -k * x, 0.5 * k * (x * x).sum((1, 2)), None
    >>> sim = BatchedLangevin(force_fn, masses=[12.0, 12.0], temperature=300.0, seed=1)
    >>> summary = sim.run(torch.zeros(8, 2, 3), 100, save_interval=50, progress=False)
    >>> summary.final_step, sim.positions.shape
    (100, torch.Size([8, 2, 3]))
    """

    def __init__(self, force_fn: ForceFn, masses, temperature, friction: float = 1.0,
                 timestep: float = 0.002, integrator: str = "baoab", seed: int = 0,
                 dtype: torch.dtype = torch.float64, *, noise_dtype: torch.dtype = torch.float32):
        if not callable(force_fn):
            raise TypeError(f"force_fn must be callable, got {force_fn!r}")
        if dtype not in (torch.float32, torch.float64):
            raise TypeError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        if noise_dtype not in (torch.float32, torch.float64):
            raise TypeError(f"noise_dtype must be torch.float32 or torch.float64, got "
                            f"{noise_dtype}")
        if integrator not in INTEGRATORS:
            raise ValueError(f"integrator must be one of {INTEGRATORS}, got {integrator!r}")
        masses = _physical_tensor(masses, "masses", unit.dalton, torch.float64)
        if masses.ndim != 1 or masses.numel() == 0:
            raise ValueError(f"masses must have shape (n_beads,), got {tuple(masses.shape)}")
        _physical_tensor(masses, "masses", unit.dalton, torch.float64, positive=True)
        temperature = _physical_tensor(temperature, "temperature", unit.kelvin, torch.float64)
        if temperature.ndim > 1 or temperature.numel() == 0:
            raise ValueError("temperature must be a number or have shape (n_replicas,), got "
                             f"shape {tuple(temperature.shape)}")
        _physical_tensor(temperature, "temperature", unit.kelvin, torch.float64, positive=True)
        friction = _scalar(friction, "friction", unit.picosecond ** -1, nonnegative=True)
        if integrator == "overdamped" and friction <= 0:
            raise ValueError("overdamped dynamics need friction > 0 (D = kT/(m friction))")
        timestep = _scalar(timestep, "timestep", unit.picosecond, positive=True)
        seed = _int(seed, "seed", 0)

        self.force_fn = force_fn
        self.masses = masses  # float64, (n,)
        self.temperature = temperature  # float64, () or (B,)
        self.friction = friction
        self.timestep = timestep
        self.integrator = integrator
        self.seed = seed
        self.dtype = dtype
        self.noise_dtype = noise_dtype
        self.generator = torch.Generator(device="cpu")
        self.generator.manual_seed(seed)
        self._state: Optional[_State] = None

    # -- public state --------------------------------------------------------------------------
    @property
    def n_beads(self) -> int:
        """Number of beads per replica."""
        return int(self.masses.numel())

    @property
    def step(self) -> int:
        """Step reached by the last :meth:`run` (0 before any)."""
        return 0 if self._state is None else self._state.step

    def _copy(self, name: str) -> Optional[torch.Tensor]:
        if self._state is None:
            raise RuntimeError("the simulator has no state yet: call run() first")
        value = getattr(self._state, name)
        return None if value is None else value.clone()

    @property
    def positions(self) -> torch.Tensor:
        """Positions after the last :meth:`run`, (B, n, 3) nm (a copy)."""
        return self._copy("x")

    @property
    def velocities(self) -> Optional[torch.Tensor]:
        """Velocities after the last :meth:`run`, (B, n, 3) nm/ps (None if overdamped)."""
        if self._state is None:
            raise RuntimeError("the simulator has no state yet: call run() first")
        return self._velocities(self._state)

    def _velocities(self, st: _State) -> Optional[torch.Tensor]:
        """End-of-step velocities from the half-kicked ones: ``w - F/m dt/2``."""
        if st.w is None:
            return None
        half_kick = (0.5 * self.timestep / self.masses[None, :, None]).to(self.dtype)
        return torch.addcmul(st.w, st.f, half_kick, value=-1.0)

    @property
    def forces(self) -> torch.Tensor:
        """Forces at :attr:`positions`, (B, n, 3) kJ/mol/nm (a copy)."""
        return self._copy("f")

    @property
    def energies(self) -> torch.Tensor:
        """Potential energies at :attr:`positions`, (B,) kJ/mol (a copy)."""
        return self._copy("e")

    @property
    def spread(self) -> Optional[torch.Tensor]:
        """Spread returned by ``force_fn`` at :attr:`positions` (a copy), or None."""
        return self._copy("s")

    def kinetic_energy(self) -> torch.Tensor:
        """Kinetic energy of each replica after the last :meth:`run`, (B,) kJ/mol."""
        v = self.velocities
        if v is None:
            raise RuntimeError("overdamped dynamics have no velocities")
        m = self.masses.to(self.dtype)[:, None]
        return 0.5 * (m * v * v).sum((1, 2))

    # -- setup ---------------------------------------------------------------------------------
    def _kT(self, n_replicas: int) -> torch.Tensor:
        """kT of each replica, (B,) float64 kJ/mol."""
        t = self.temperature
        if t.ndim == 1 and t.numel() != n_replicas:
            raise ValueError(f"temperature has shape {tuple(t.shape)} but there are "
                             f"{n_replicas} replicas: give one temperature or shape "
                             f"({n_replicas},)")
        return MOLAR_GAS_CONSTANT_KJ * t.expand(n_replicas)

    def _positions(self, x0) -> torch.Tensor:
        x = _physical_tensor(x0, "x0", unit.nanometer, self.dtype)
        if x.ndim != 3 or x.shape[1:] != (self.n_beads, 3) or x.shape[0] < 1:
            raise ValueError(f"x0 must have shape (n_replicas, {self.n_beads}, 3) for "
                             f"{self.n_beads} beads, got {tuple(x.shape)}")
        if not torch.isfinite(x).all():
            raise ValueError("x0 contains non-finite positions")
        return x.clone().contiguous()

    def _config(self, x: torch.Tensor, velocities: Optional[torch.Tensor],
                save_interval: int) -> dict:
        """What a checkpoint must match to be resumed by this run."""
        b = x.shape[0]
        return {
            "integrator": self.integrator,
            "n_replicas": b,
            "n_beads": self.n_beads,
            "dtype": str(self.dtype),
            "noise_dtype": str(self.noise_dtype),
            "timestep": self.timestep,
            "friction": self.friction,
            "seed": self.seed,
            "save_interval": save_interval,
            "masses": self.masses.clone(),
            "temperature": self.temperature.expand(b).clone(),
            "x0_sha256": _digest(x),
            "velocities_sha256": _digest(velocities),
        }

    def _evaluate(self, x: torch.Tensor, n_replicas: int, step: int):
        """First force evaluation of a run, with full validation of force_fn's output."""
        out = self.force_fn(x)
        if not isinstance(out, (tuple, list)) or len(out) != 3:
            raise TypeError("force_fn must return a tuple (forces, energies, spread), got "
                            f"{type(out).__name__}")
        return self._check_output(*out, n_replicas, step)

    def _check_output(self, forces, energies, spread, n_replicas: int, step: int):
        shape = (n_replicas, self.n_beads, 3)
        if not isinstance(forces, torch.Tensor) or tuple(forces.shape) != shape:
            raise ValueError(f"force_fn returned forces of shape "
                             f"{getattr(forces, 'shape', type(forces).__name__)} at step "
                             f"{step}, expected {shape}")
        if not isinstance(energies, torch.Tensor) or tuple(energies.shape) != (n_replicas,):
            raise ValueError(f"force_fn returned energies of shape "
                             f"{getattr(energies, 'shape', type(energies).__name__)} at step "
                             f"{step}, expected ({n_replicas},)")
        if spread is not None and (not isinstance(spread, torch.Tensor)
                                   or tuple(spread.shape) != (n_replicas,)):
            raise ValueError(f"force_fn returned spread of shape "
                             f"{getattr(spread, 'shape', type(spread).__name__)} at step "
                             f"{step}, expected ({n_replicas},) or None")
        if not forces.is_floating_point():
            raise TypeError(f"force_fn returned forces of dtype {forces.dtype}")
        forces = forces.detach().to(self.dtype)
        energies = energies.detach()
        spread = None if spread is None else spread.detach()
        return forces, energies, spread

    # -- the step loops ------------------------------------------------------------------------
    def _advance_baoab(self, st: _State, n: int, c: dict) -> None:
        # w enters half-kicked (the first B of the step is done) and leaves half-kicked
        x, w, f, e, s = st.x, st.w, st.f, st.e, st.s
        force_fn, dtype, shape = self.force_fn, self.dtype, x.shape
        half_dt, kick = c["half_dt"], c["kick"]
        gen, noise, c1, sigma = self.generator, c["noise"], c["c1"], c["sigma"]
        thermostat = sigma is not None
        for _ in range(n):
            x.add_(w, alpha=half_dt)  # A
            if thermostat:  # O
                noise.normal_(generator=gen)
                w.mul_(c1).addcmul_(noise, sigma)
            x.add_(w, alpha=half_dt)  # A
            f, e, s = force_fn(x)
            if f.dtype != dtype or f.requires_grad or f.shape != shape:
                f = self._fix_forces(f, shape)
            w.addcmul_(f, kick)  # B of this step and B of the next: dt F/m
        st.f, st.e, st.s = f, e, s
        st.step += n

    def _advance_overdamped(self, st: _State, n: int, c: dict) -> None:
        x, f, e, s = st.x, st.f, st.e, st.s
        force_fn, dtype, shape = self.force_fn, self.dtype, x.shape
        gen, noise, drift, sigma = self.generator, c["noise"], c["drift"], c["sigma"]
        for _ in range(n):
            noise.normal_(generator=gen)
            x.addcmul_(f, drift).addcmul_(noise, sigma)
            f, e, s = force_fn(x)
            if f.dtype != dtype or f.requires_grad or f.shape != shape:
                f = self._fix_forces(f, shape)
        st.f, st.e, st.s = f, e, s
        st.step += n

    def _fix_forces(self, f, shape) -> torch.Tensor:
        if not isinstance(f, torch.Tensor) or f.shape != shape:
            raise ValueError(f"force_fn returned forces of shape "
                             f"{getattr(f, 'shape', type(f).__name__)}, expected {tuple(shape)}")
        return f.detach().to(self.dtype)

    def _coefficients(self, kT: torch.Tensor, shape) -> dict:
        """Preallocated noise buffer and the per-bead/per-replica coefficients.

        Computed in float64 and stored in the state dtype, expanded to the full (B, n, 3)
        shape and contiguous: element-wise kernels on equal contiguous shapes vectorise, with
        broadcast (1, n, 1) operands they are up to 9x slower.
        """
        dt, gamma, dtype = self.timestep, self.friction, self.dtype
        m = self.masses[None, :, None]  # (1, n, 1)
        kT = kT[:, None, None]  # (B, 1, 1)

        def full(t: torch.Tensor) -> torch.Tensor:
            return t.expand(shape).to(dtype).contiguous()

        c = {"noise": torch.empty(shape, dtype=self.noise_dtype)}
        if self.integrator == "baoab":
            c["half_dt"] = 0.5 * dt
            c["kick"] = full(dt / m)
            c1 = math.exp(-gamma * dt)
            c["c1"] = c1
            c["sigma"] = full(torch.sqrt((1.0 - c1 * c1) * kT / m)) if gamma > 0 else None
        else:
            zeta = m * gamma  # m gamma: D/kT = 1/(m gamma)
            c["drift"] = full(dt / zeta)
            c["sigma"] = full(torch.sqrt(2.0 * kT * dt / zeta))  # sqrt(2 D dt)
        return c

    # -- checks, checkpoints ---------------------------------------------------------------------
    def _check_blowup(self, st: _State, limit: float, last_good_step: int) -> None:
        """Raise SimulationBlowUp if the state is non-finite or a force exceeds ``limit``.
        One host synchronisation when the state is healthy."""
        fsq = st.f.square().sum(-1)  # (B, n)
        bad = ~(fsq.isfinite() & (fsq <= limit * limit)) | ~st.x.isfinite().all(-1)
        bad_energy = ~st.e.isfinite()
        if not bool(bad.any() | bad_energy.any()):
            return
        raise self._diagnose(st, fsq, bad, bad_energy, limit, last_good_step)

    def _diagnose(self, st, fsq, bad, bad_energy, limit, last_good_step) -> SimulationBlowUp:
        replicas = sorted(set(torch.nonzero(bad.any(1)).flatten().tolist())
                          | set(torch.nonzero(bad_energy).flatten().tolist()))
        beads = torch.nonzero(bad.any(0)).flatten().tolist()
        finite = fsq.isfinite()
        when = (f"at step {st.step} (t = {st.step * self.timestep:g} ps; the last check, at step "
                f"{last_good_step}, passed)" if st.step > last_good_step
                else f"in the initial configuration (step {st.step})")
        parts = [f"simulation blew up: detected {when}",
                 f"{len(replicas)} of {st.x.shape[0]} replicas affected {_listed(replicas)}",
                 f"beads {_listed(beads)}"]
        if finite.any():
            masked = torch.where(finite, fsq, torch.full_like(fsq, -1.0))
            flat = int(torch.argmax(masked))
            r, i = divmod(flat, fsq.shape[1])
            max_force = math.sqrt(float(masked.flatten()[flat]))
            parts.append(f"largest |F| = {max_force:.4g} kJ/mol/nm (replica {r}, bead {i}; "
                         f"blowup_force = {limit:g})")
        else:
            max_force = float("nan")
            parts.append("no force is finite")
        for what, mask in (("forces", ~finite), ("positions", ~st.x.isfinite().all(-1)),
                           ("energies", bad_energy[:, None])):
            rows = torch.nonzero(mask.any(1)).flatten().tolist()
            if rows:
                parts.append(f"non-finite {what} in replicas {_listed(rows)}")
        message = ("; ".join(parts) + f". No frame or checkpoint after step {last_good_step} "
                   "was written. Usual causes: a timestep too large for the stiffest force (now "
                   f"{self.timestep:g} ps), or a model extrapolating outside its training data "
                   "(add or strengthen prior/repulsion terms).")
        return SimulationBlowUp(message, step=st.step, last_good_step=last_good_step,
                                replicas=replicas, beads=beads, max_force=max_force)

    def _write_checkpoint(self, path: Path, st: _State, config: dict) -> None:
        payload = {
            "config": config,
            "step": st.step,
            "positions": st.x,
            "half_kicked_velocities": st.w,
            "forces": st.f,
            "energies": st.e,
            "spread": st.s,
            "generator_state": self.generator.get_state(),
        }
        save_versioned(path, CHECKPOINT_KIND, CHECKPOINT_VERSION, payload)

    def _read_checkpoint(self, path: Path, config: dict) -> _State:
        try:
            payload = load_versioned(path, CHECKPOINT_KIND, (CHECKPOINT_VERSION,),
                                     what="simulation checkpoint", error=CheckpointError)
        except CheckpointError as error:
            raise CheckpointError(f"{error} (delete it to start over)") from None
        stored = payload.get("config")
        if not isinstance(stored, dict):
            raise CheckpointError(f"{path} has no simulation settings (config)")
        differences = []
        for key, want in config.items():
            have = stored.get(key)
            same = (isinstance(have, torch.Tensor) and have.shape == want.shape
                    and torch.equal(have, want)) if isinstance(want, torch.Tensor) else have == want
            if not same:
                have_s = have.tolist() if isinstance(have, torch.Tensor) else have
                want_s = want.tolist() if isinstance(want, torch.Tensor) else want
                differences.append(f"{key}: checkpoint {have_s!r}, this run {want_s!r}")
        if differences:
            raise CheckpointMismatchError(
                f"checkpoint {path} belongs to a different simulation; refusing to resume it "
                "(use another checkpoint path to start afresh). Differences: "
                + "; ".join(differences))
        try:
            self.generator.set_state(payload["generator_state"])
        except (RuntimeError, TypeError) as error:
            raise CheckpointError(f"{path}: invalid generator state: {error}") from error
        try:
            w = payload["half_kicked_velocities"]
            return _State(x=payload["positions"].to(self.dtype).contiguous(),
                          w=None if w is None else w.to(self.dtype).contiguous(),
                          f=payload["forces"], e=payload["energies"], s=payload["spread"],
                          step=int(payload["step"]))
        except (KeyError, AttributeError, TypeError) as error:
            raise CheckpointError(f"{path} is incomplete: {error!r}") from error

    # -- run -----------------------------------------------------------------------------------
    def run(self, x0, n_steps: int, *, save_interval: int,
            writer: Optional[TrajectoryWriter] = None, velocities=None,
            checkpoint: Optional[os.PathLike] = None, checkpoint_interval: Optional[int] = None,
            blowup_force: float = 1e5, progress: bool = True) -> RunSummary:
        """Integrate until step ``n_steps``, saving frames, checkpointing and checking.

        Parameters
        ----------
        x0 : array-like or Quantity, shape (B, n, 3)
            Initial positions: plain numbers in nm, or a Quantity array in any length unit.
            Also identifies the run: a checkpoint from another ``x0`` is refused.
        n_steps : int
            Step to reach. A run resumed from a checkpoint at step ``s`` integrates the
            remaining ``n_steps - s`` steps; a larger ``n_steps`` extends a finished run.
        save_interval : int
            Frames are written (to ``writer``, if any) and the state is checked for a blow-up
            every ``save_interval`` steps. The initial configuration is not written.
        writer : TrajectoryWriter, optional
            Where frames go (positions, energies, spread if the writer stores it, time). For a
            fresh run it must be empty; to resume, open it with ``mode="a"``: frames after the
            checkpoint step are dropped and written again. The simulation settings are recorded
            as root attributes. Buffered frames are flushed when the run ends, however it ends.
        velocities : array-like or Quantity, shape (B, n, 3), optional
            Initial velocities: plain numbers in nm/ps, or a Quantity array (BAOAB only). Default: Maxwell-Boltzmann at each
            replica's temperature, drawn from the simulator's generator.
        checkpoint : path, optional
            Checkpoint file. If it exists the run resumes from it (bit-identically to an
            uninterrupted run), after checking it was written by the same setup; it is
            (re)written atomically every ``checkpoint_interval`` steps and at the end.
        checkpoint_interval : int, optional
            Steps between checkpoints (default: only at the end). Needs ``checkpoint``.
        blowup_force : float or Quantity, default 1e5
            A force magnitude on one bead above this (a plain number in kJ/mol/nm, or a
            Quantity such as ``1e4*kilocalorie_per_mole/angstrom``), or any non-finite position,
            force or energy, found at a save or checkpoint step stops the run.
        progress : bool, default True
            Show a progress bar (stderr).

        Returns
        -------
        RunSummary

        Raises
        ------
        SimulationBlowUp
            The state became unstable; frames before the blow-up are flushed, the bad state is
            neither written nor checkpointed.
        CheckpointMismatchError, CheckpointError
            The checkpoint belongs to another setup, or cannot be read.
        ValueError, TypeError
            Invalid arguments or a ``force_fn`` returning the wrong shapes.
        """
        wall_start = _time.perf_counter()
        x = self._positions(x0)
        b = x.shape[0]
        kT = self._kT(b)
        n_steps = _int(n_steps, "n_steps", 0)
        save_interval = _int(save_interval, "save_interval", 1)
        if checkpoint_interval is not None:
            checkpoint_interval = _int(checkpoint_interval, "checkpoint_interval", 1)
            if checkpoint is None:
                raise ValueError("checkpoint_interval needs a checkpoint path")
        blowup_force = _scalar(blowup_force, "blowup_force",
                               unit.kilojoule_per_mole / unit.nanometer, positive=True)
        if velocities is not None:
            if self.integrator == "overdamped":
                raise ValueError("overdamped dynamics have no velocities; do not pass any")
            velocities = _physical_tensor(velocities, "velocities",
                                          unit.nanometer / unit.picosecond, self.dtype)
            if tuple(velocities.shape) != tuple(x.shape):
                raise ValueError(f"velocities must have the shape of x0, {tuple(x.shape)}, got "
                                 f"{tuple(velocities.shape)}")
            if not torch.isfinite(velocities).all():
                raise ValueError("velocities contain non-finite values")
        if writer is not None:
            if not isinstance(writer, TrajectoryWriter):
                raise TypeError(f"writer must be a TrajectoryWriter, got {writer!r}")
            if writer.closed:
                raise ValueError(f"{writer!r} is closed")
            if (writer.n_replicas, writer.n_beads) != (b, self.n_beads):
                raise ValueError(f"the writer is for {writer.n_replicas} replicas of "
                                 f"{writer.n_beads} beads, the simulation has {b} of "
                                 f"{self.n_beads}")
        checkpoint = None if checkpoint is None else Path(checkpoint)
        config = None if checkpoint is None else self._config(x, velocities, save_interval)

        # -- initial state: fresh, or from the checkpoint --------------------------------------
        resumed_from = None
        if checkpoint is not None and checkpoint.exists():
            st = self._read_checkpoint(checkpoint, config)
            resumed_from = st.step
            if st.step > n_steps:
                raise ValueError(f"checkpoint {checkpoint} is at step {st.step}, beyond "
                                 f"n_steps = {n_steps}")
        else:
            if self.integrator == "baoab" and velocities is None:  # Maxwell-Boltzmann
                velocities = torch.empty_like(x).normal_(generator=self.generator)
                velocities.mul_(torch.sqrt(kT[:, None, None] / self.masses[None, :, None])
                                .to(self.dtype))
            f, e, s = self._evaluate(x, b, 0)
            w = None
            if self.integrator == "baoab":  # the first half kick
                w = torch.addcmul(velocities, f, (0.5 * self.timestep
                                                  / self.masses[None, :, None]).to(self.dtype))
            st = _State(x=x, w=w, f=f, e=e, s=s, step=0)
        if writer is not None and writer.has_spread and st.s is None:
            raise ValueError("the writer stores a spread per replica but force_fn returns "
                             "spread=None; open the writer with spread=False")
        if writer is not None:
            self._prepare_writer(writer, st.step, save_interval, resumed_from, checkpoint)

        advance = self._advance_baoab if self.integrator == "baoab" else self._advance_overdamped
        coefficients = self._coefficients(kT, x.shape)
        frames = 0
        last_good = st.step
        bar = progress_bar(n_steps, "simulating", enabled=progress, unit="step")
        bar.update(st.step)
        tick = max(1, n_steps // 100) if progress else max(1, n_steps)
        self._state = None  # until the run ends or blows up: the state is then consistent
        try:
            if resumed_from is None:
                self._check_blowup(st, blowup_force, 0)
            while st.step < n_steps:
                target = min(n_steps, (st.step // save_interval + 1) * save_interval,
                             (st.step // tick + 1) * tick)
                if checkpoint_interval is not None:
                    target = min(target, (st.step // checkpoint_interval + 1)
                                 * checkpoint_interval)
                done = st.step
                advance(st, target - st.step, coefficients)
                bar.update(st.step - done)
                save = st.step % save_interval == 0
                take_checkpoint = (checkpoint is not None and (st.step == n_steps or (
                    checkpoint_interval is not None and st.step % checkpoint_interval == 0)))
                if not (save or take_checkpoint or st.step == n_steps):
                    continue
                st.e, st.s = self._check_output(st.f, st.e, st.s, b, st.step)[1:]
                self._check_blowup(st, blowup_force, last_good)
                last_good = st.step
                if save and writer is not None:
                    writer.append(st.step, st.step * self.timestep, st.x, st.e,
                                  st.s if writer.has_spread else None)
                    frames += 1
                if take_checkpoint:
                    if writer is not None:
                        writer.flush(durable=True)
                    self._write_checkpoint(checkpoint, st, config)
            if checkpoint is not None and not checkpoint.exists():  # n_steps == 0
                self._write_checkpoint(checkpoint, st, config)
        except SimulationBlowUp:
            self._state = st  # consistent (a whole number of steps): inspect it to debug
            raise
        finally:
            bar.close()
            if writer is not None and not writer.closed:
                writer.flush(durable=True)
        self._state = st
        wall = _time.perf_counter() - wall_start
        steps = st.step - (resumed_from or 0)
        return RunSummary(steps=steps, final_step=st.step, time_ps=st.step * self.timestep,
                          wall_seconds=wall,
                          replica_steps_per_second=b * steps / wall if steps else 0.0,
                          n_replicas=b, frames_written=frames, resumed_from_step=resumed_from)

    def _prepare_writer(self, writer: TrajectoryWriter, step: int, save_interval: int,
                        resumed_from: Optional[int], checkpoint: Optional[Path]) -> None:
        """Make the writer hold exactly the frames up to ``step`` and record the settings."""
        if resumed_from is None:
            if writer.n_frames:
                raise ValueError(
                    f"{writer.path} already holds {writer.n_frames} frames but this run starts "
                    "at step 0" + ("" if checkpoint is None else
                                   f" (no checkpoint at {checkpoint})")
                    + "; open the writer with mode='w' to replace them")
        else:
            kept = writer.truncate(step)
            expected = step // save_interval
            if kept != expected:
                raise ValueError(
                    f"{writer.path} holds {kept} frames up to the checkpoint step {step}, but the "
                    f"run saved {expected}; the trajectory does not belong to this checkpoint "
                    "(was the writer opened with mode='w'? use mode='a' to resume)")
        writer.set_attributes({
            "integrator": self.integrator,
            "timestep_ps": self.timestep,
            "friction_per_ps": self.friction,
            "temperature_K": self.temperature.expand(writer.n_replicas).numpy(),
            "masses_amu": self.masses.numpy(),
            "seed": self.seed,
            "save_interval": save_interval,
            "dtype": str(self.dtype),
        })


def benchmark_integrator(replicas: Sequence[int] = (1, 10, 100, 1000), n_beads: int = 10,
                         n_steps: int = 2000, integrator: str = "baoab",
                         dtype: torch.dtype = torch.float64, repeats: int = 3,
                         threads: Optional[int] = None) -> list:
    """Measure the integrator's own cost per step, with a force_fn that does nothing.

    ``force_fn`` returns preallocated zero forces and energies, so the time is that of the step
    loop (kicks, drifts, noise, bookkeeping). Each measurement is the best of ``repeats`` runs of
    ``n_steps`` steps (one save/check at the end, no writer, no progress bar), after a warm-up.

    Parameters
    ----------
    replicas : sequence of int
        Numbers of replicas B to measure.
    n_beads : int
        Beads per replica.
    n_steps : int
        Steps per timed run.
    integrator : {"baoab", "overdamped"}
    dtype : torch.dtype
    repeats : int
        Timed runs per B (the fastest counts).
    threads : int, optional
        Set torch's intra-op thread count for the measurement (restored afterwards).

    Returns
    -------
    list of dict
        One per B: ``n_replicas``, ``n_beads``, ``us_per_step``, ``replica_steps_per_s``,
        ``threads``.
    """
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    results = []
    try:
        for b in replicas:
            zeros_f = torch.zeros(b, n_beads, 3, dtype=dtype)
            zeros_e = torch.zeros(b, dtype=dtype)

            def force_fn(x, f=zeros_f, e=zeros_e):
                return f, e, None

            sim = BatchedLangevin(force_fn, torch.full((n_beads,), 12.0), 300.0,
                                  integrator=integrator, dtype=dtype, seed=0)
            x0 = torch.zeros(b, n_beads, 3, dtype=dtype)
            sim.run(x0, max(10, n_steps // 10), save_interval=n_steps, progress=False)
            best = math.inf
            for _ in range(repeats):
                start = _time.perf_counter()
                sim.run(x0, n_steps, save_interval=n_steps, progress=False)
                best = min(best, _time.perf_counter() - start)
            results.append({"n_replicas": b, "n_beads": n_beads, "integrator": integrator,
                            "dtype": str(dtype), "us_per_step": 1e6 * best / n_steps,
                            "replica_steps_per_s": b * n_steps / best,
                            "threads": torch.get_num_threads()})
    finally:
        torch.set_num_threads(previous)
    return results
