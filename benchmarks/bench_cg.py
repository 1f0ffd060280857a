"""Coarse-grained MD throughput: replica-steps/s of one CGSchNet ensemble under four integrators.

Model (the same in every method): ``CGSchNet`` ensemble of 5 members at the production size of
``openmm_geom.workflows.coarse_grain.PRODUCTION`` (features 32, filters 32, 2 interactions,
16 RBFs, output hidden 16, cutoff 1.0 nm, float32, random weights with fixed seeds) plus priors
from ``fit_priors`` (cgnet moments, bonds, angles, 3-harmonic Fourier dihedrals, repulsions) on
synthetic frames built from internal coordinates (so bond lengths, angles and non-bonded
distances are sane; the dihedrals are spread over several basins so that the Fourier fit is
well posed). Weights are random: speed does not depend on them.

Systems:

* ``alanine``: capped alanine's 6 beads C(ACE)-N-CA-C-N(NME) + CB (types [6,7,6,6,7,6], bonds
  (0,1),(1,2),(2,3),(3,4),(2,5), dihedral priors on phi and psi as in the CG workflow), bond
  lengths and angles of the bundled ``alanine-dipeptide.pdb``, phi/psi drawn from the
  alpha_R/beta/PII/alpha_L basins; masses of the mapped atoms (12.011/14.007 amu);
* ``ca35``: a 35-bead CA chain with the villin headpiece HP35 sequence (types = amino-acid
  index), bonds i,i+1 (0.38 nm), pseudo-torsion priors i..i+3, helix/strand segments, frames
  with non-bonded beads closer than 0.4 nm rejected; bead mass 12.011 amu (CA, as
  ``ca_mapping`` maps).

Methods, all Langevin at 300 K, friction 1/ps, 2 fs:

* ours: ``BatchedLangevin(EnsembleForces(model), masses, 300, friction=1, timestep=0.002)``
  (BAOAB), float64 state (the default and what ``coarse_grain.simulate`` uses; the model runs
  in float32). Each block is one ``run(x0, step + k, checkpoint=...)`` call that resumes the
  previous block from its checkpoint (on tmpfs when /dev/shm exists), as a long production run
  is chunked: no extra force evaluation per block (a fresh run() evaluates the forces once
  before its first step), but one checkpoint read and write (~0.1 ms at 10 x 6 beads, ~15 ms
  at 1000 x 35 beads) is included;
* torchmd: torchmd 1.1.2's ``Integrator`` (velocity Verlet + its Langevin thermostat) on a
  ``System`` of B replicas in float32 (torchmd's default precision) with ``Forces(params,
  terms=[], external=...)``: torchmd's own terms off (the model contains its priors); the
  external is the same ``EnsembleForces(model)`` call as ours (one call per step, ensemble
  mean energies and forces, the same model cost), converted to torchmd's units (Angstrom,
  kcal/mol). ``params`` is a stand-in with the masses (torchmd's ``Parameters`` needs a
  moleculekit Molecule and a force field, and is only read for masses when terms=[]);
* omm/replica: R OpenMM Contexts (CPU platform), each of ``create_system`` of the model exported
  with ``export_cg_model(..., native_priors=True)`` (priors as native forces + one TorchForce),
  ``LangevinMiddleIntegrator``, stepped in turn (k steps each per block);
* omm/batched: one Context of ``create_system`` of ``export_cg_model(..., replicas=R)``: R disjoint
  copies, one TorchForce call per step, ``LangevinMiddleIntegrator``;
* floor: the ``EnsembleForces(model)`` call alone on B configurations (calls/s x B): the model
  cost shared by ours and torchmd, to split their step time into model and integrator + glue.

Threads: 1 and the core count (``openmm_geom.set_threads(T)`` for torch and the CPU platform's
default, CPU platform ``{"Threads": T}``).

Before timing, for each system, the forces and energies of all four on the same R_CHECK
configurations (float64 positions) must agree with the float32 model evaluated directly
(ensemble mean, autograd) to FORCE_TOLERANCE (max |dF| / max |F|) and ENERGY_TOLERANCE, and so
must the network part alone (OpenMM force group 1 vs the model without priors), which must
exert forces that matter. After timing every method's state must be finite. A failed check
makes the script exit with status 1.

Rates are medians over blocks run interleaved (floor, ours, torchmd, omm/replica, omm/batched,
floor, ...) after warm-up; a measurement during which other processes took > 10% of the CPUs
is retried and its remaining "other_load" recorded. Cases whose estimated cost would exceed the
time budget (ca35 at 1000 replicas; per-replica Contexts at 1000) are skipped with the reason
in the JSON and the table. The ratio ours/torchmd is compared with the goal 3 at 100 replicas;
it is reported, not enforced.

    .venv/bin/python benchmarks/bench_cg.py [--out benchmarks/results/cg.json]   # ~8 minutes
    .venv/bin/python benchmarks/bench_cg.py --quick      # alanine at 1 and 10 replicas, ~25 s
"""
from __future__ import annotations

import math
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import openmm
import openmm.app as app
import openmm.unit as unit
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
from _common import (LoadMonitor, environment, fmt, measure_clean,  # noqa: E402
                     thread_counts, write_json)

import openmm_geom  # noqa: E402
from openmm_geom.data import bundled  # noqa: E402
from openmm_geom.data.mapping import AMINO_ACIDS, alanine_backbone_cb_mapping  # noqa: E402
from openmm_geom.export.cg import export_cg_model  # noqa: E402
from openmm_geom.models.cgschnet import CGSchNet  # noqa: E402
from openmm_geom.models.geometry import bond_angles, bond_lengths, dihedral_angles  # noqa: E402
from openmm_geom.models.priors import fit_priors  # noqa: E402
from openmm_geom.openmm import create_system  # noqa: E402
from openmm_geom.simulate import BatchedLangevin, EnsembleForces  # noqa: E402

TEMPERATURE = 300.0  # K
FRICTION = 1.0  # 1/ps
TIMESTEP_PS = 0.002
SEED = 5
MEMBERS = 5
NETWORK = {"features": 32, "filters": 32, "interactions": 2, "n_rbf": 16, "output_hidden": 16,
           "cutoff": 1.0}  # coarse_grain.PRODUCTION
MODEL_DTYPE = torch.float32
STATE_DTYPE = torch.float64  # ours; torchmd's System is float32
DIHEDRAL_HARMONICS = 3
FRAMES = 400  # synthetic frames the priors are fitted to
HP35 = "LSDEDFKAVFGMTRSAFANLPLWKQQNLKKEKGLF"  # villin headpiece, 35 residues
ONE_TO_THREE = {"A": "ALA", "R": "ARG", "N": "ASN", "D": "ASP", "C": "CYS", "Q": "GLN",
                "E": "GLU", "G": "GLY", "H": "HIS", "I": "ILE", "L": "LEU", "K": "LYS",
                "M": "MET", "F": "PHE", "P": "PRO", "S": "SER", "T": "THR", "W": "TRP",
                "Y": "TYR", "V": "VAL"}
REPLICAS = {"full": (1, 10, 100, 1000), "quick": (1, 10)}
SYSTEMS = {"full": ("alanine", "ca35"), "quick": ("alanine",)}
R_CHECK = 4  # configurations in the correctness check
# seconds per timed block, number of blocks, warm-up seconds per method
TIMING = {"full": (0.6, 3, 0.6), "quick": (0.15, 2, 0.1)}
SAVE_INTERVAL = 10**9  # ours: no frames, one blow-up check at the end of each run() call
MAX_CASE_SECONDS = 40.0  # estimated wall time of one (system, R, threads) case: skip above
MAX_CONTEXTS = 200  # per-replica Contexts: more cost minutes to create and add nothing new
FORCE_TOLERANCE = 1e-4  # max |dF| / max |F|, float32 model
ENERGY_TOLERANCE = 1e-4  # relative
MIN_NETWORK_FORCE = 1.0  # kJ/mol/nm: a network whose forces are smaller measures nothing
GOAL = 3.0  # ours / torchmd at GOAL_REPLICAS replicas
GOAL_REPLICAS = 100
PROFILE_SECONDS = 3.0  # per timed part of a profile
OUTPUT_SCALE = 300.0  # last layer x this: network forces of tens of kJ/mol/nm
KCAL = 4.184  # kJ per kcal
ANGSTROM_PER_NM = 10.0


# -- synthetic coarse-grained frames ---------------------------------------------------------------
def place(a, b, c, bond, angle, torsion):
    """Positions d (frames, 3) with |cd| = bond, angle(b, c, d) = angle and
    dihedral(a, b, c, d) = torsion (IUPAC sign), from a, b, c (frames, 3) (NeRF)."""
    bc = c - b
    bc /= np.linalg.norm(bc, axis=-1, keepdims=True)
    normal = np.cross(b - a, bc)
    normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
    m = np.cross(normal, bc)
    bond, angle, torsion = (np.asarray(v, dtype=float)[..., None] for v in (bond, angle, torsion))
    return (c - bond * np.cos(angle) * bc + bond * np.sin(angle) * np.cos(torsion) * m
            + bond * np.sin(angle) * np.sin(torsion) * normal)


def first_three(frames: int, r01, r12, angle012):
    """Beads 0, 1, 2 of every frame: 0 at the origin, 1 on x, 2 in the xy plane."""
    x = np.zeros((frames, 3, 3))
    x[:, 1, 0] = r01
    x[:, 2, 0] = r01 - r12 * np.cos(angle012)
    x[:, 2, 1] = r12 * np.sin(angle012)
    return x


def internal(x: np.ndarray, bonds, angles, dihedrals):
    """Bond lengths, angles and dihedrals of one configuration (n, 3) nm."""
    t = torch.as_tensor(x, dtype=torch.float64)
    return (bond_lengths(t, torch.tensor(bonds)).numpy(),
            bond_angles(t, torch.tensor(angles)).numpy(),
            dihedral_angles(t, torch.tensor(dihedrals)).numpy())


def alanine_frames(rng, frames: int):
    """Capped alanine's 6 beads: reference bond lengths/angles, phi/psi from four basins."""
    pdb = app.PDBFile(str(bundled("alanine-dipeptide.pdb")))
    mapping = alanine_backbone_cb_mapping(pdb.topology)
    ref = mapping.map_positions(np.array(pdb.positions.value_in_unit(unit.nanometer))[None])[0]
    r, theta, phi = internal(ref, [(0, 1), (1, 2), (2, 3), (3, 4), (2, 5)],
                             [(0, 1, 2), (1, 2, 3), (2, 3, 4), (1, 2, 5)],
                             [(0, 1, 2, 3), (0, 1, 2, 5)])
    cb_offset = phi[1] - phi[0]  # CB's dihedral relative to phi
    basins = np.radians([(-63, -41), (-120, 130), (-70, 145), (60, 45)])  # aR, beta, PII, aL
    pick = rng.choice(len(basins), size=frames, p=[0.35, 0.3, 0.3, 0.05])
    phipsi = basins[pick] + rng.normal(0.0, np.radians(15), (frames, 2))
    bond = r + rng.normal(0.0, 0.003, (frames, 5))
    angle = theta + rng.normal(0.0, 0.05, (frames, 4))
    x = np.zeros((frames, 6, 3))
    x[:, :3] = first_three(frames, bond[:, 0], bond[:, 1], angle[:, 0])
    x[:, 3] = place(x[:, 0], x[:, 1], x[:, 2], bond[:, 2], angle[:, 1], phipsi[:, 0])
    x[:, 4] = place(x[:, 1], x[:, 2], x[:, 3], bond[:, 3], angle[:, 2], phipsi[:, 1])
    x[:, 5] = place(x[:, 0], x[:, 1], x[:, 2], bond[:, 4], angle[:, 3],
                    phipsi[:, 0] + cb_offset + rng.normal(0.0, 0.05, frames))
    masses = [a.element.mass.value_in_unit(unit.dalton) for a in pdb.topology.atoms()]
    return {"positions": x, "types": [int(t) for t in mapping.bead_types],
            "masses": [masses[g[0]] for g in mapping.groups],
            "bonds": [(0, 1), (1, 2), (2, 3), (3, 4), (2, 5)],
            "dihedrals": [(0, 1, 2, 3), (1, 2, 3, 4)], "n_types": max(mapping.bead_types) + 1,
            "description": "capped alanine, 6 beads C(ACE)-N-CA-C-N(NME)+CB"}


def ca_frames(rng, frames: int, sequence: str = HP35):
    """A CA chain: bonds 0.38 nm, helix/strand segments, clashing frames rejected."""
    n = len(sequence)
    helix, strand = (np.radians(91.0), np.radians(50.0)), (np.radians(120.0), np.radians(-170.0))
    kept = []
    while sum(len(k) for k in kept) < frames:
        batch = 4 * frames
        # secondary structure in segments of 4-9 residues
        state = np.zeros((batch, n), dtype=bool)
        for f in range(batch):
            i = 0
            while i < n:
                length = rng.integers(4, 10)
                state[f, i:i + length] = rng.random() < 0.5
                i += length
        angle = np.where(state, helix[0], strand[0]) + rng.normal(0.0, np.radians(5), (batch, n))
        torsion = np.where(state, helix[1], strand[1]) + rng.normal(0.0, np.radians(15),
                                                                     (batch, n))
        bond = 0.38 + rng.normal(0.0, 0.01, (batch, n))
        x = np.zeros((batch, n, 3))
        x[:, :3] = first_three(batch, bond[:, 0], bond[:, 1], angle[:, 0])
        for i in range(3, n):
            x[:, i] = place(x[:, i - 3], x[:, i - 2], x[:, i - 1], bond[:, i - 1],
                            angle[:, i - 2], torsion[:, i - 3])
        d = np.linalg.norm(x[:, :, None] - x[:, None], axis=-1)
        far = np.abs(np.arange(n)[:, None] - np.arange(n)[None]) >= 3
        kept.append(x[(d[:, far] >= 0.4).all(-1)])
    x = np.concatenate(kept)[:frames]
    residues = [ONE_TO_THREE[c] for c in sequence]
    return {"positions": x, "types": [AMINO_ACIDS.index(r) for r in residues],
            "masses": [12.011] * n, "bonds": [(i, i + 1) for i in range(n - 1)],
            "dihedrals": [(i, i + 1, i + 2, i + 3) for i in range(n - 3)],
            "n_types": len(AMINO_ACIDS),
            "description": f"{n}-bead CA chain, HP35 sequence {sequence}"}


def build(name: str) -> dict:
    """Frames, priors and the 5-member float32 model of one system."""
    rng = np.random.default_rng(SEED)
    data = alanine_frames(rng, FRAMES) if name == "alanine" else ca_frames(rng, FRAMES)
    priors = fit_priors(data["positions"], TEMPERATURE, bonds=data["bonds"],
                        dihedrals=data["dihedrals"], method="cgnet",
                        dihedral_harmonics=DIHEDRAL_HARMONICS)
    model = CGSchNet(data["types"], priors, n_types=data["n_types"], **NETWORK, members=MEMBERS,
                     seed=SEED, dtype=MODEL_DTYPE)
    with torch.no_grad():  # random networks exert ~0.1 kJ/mol/nm; trained ones ~100
        model.out2.weight.mul_(OUTPUT_SCALE)
        model.out2.bias.mul_(OUTPUT_SCALE)
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)  # forces need gradients wrt positions only
    return {"name": name, "model": model, **data}


# -- the four ways to run the model ---------------------------------------------------------------
class TorchmdExternal:
    """torchmd's ``external`` calculator: ``calculate(pos Angstrom (B, n, 3), box)`` ->
    (energies kcal/mol (B,), forces kcal/mol/Angstrom (B, n, 3)), from one call of the same
    force function as ours (ensemble-mean energies and forces of all B replicas)."""

    def __init__(self, force_fn):
        self.force_fn = force_fn

    def calculate(self, pos, box):
        forces, energies, _ = self.force_fn(pos.detach() / ANGSTROM_PER_NM)
        return energies / KCAL, forces / (KCAL * ANGSTROM_PER_NM)


def have_torchmd() -> bool:
    """torchmd is a benchmark dependency (requirements-bench.txt); without it its column is
    skipped with the reason, so `make test`'s smoke run works on the test dependencies."""
    import importlib.util

    return importlib.util.find_spec("torchmd") is not None


NO_TORCHMD = "torchmd not installed (pip install -r requirements-bench.txt)"


def torchmd_setup(force_fn, masses, x0: np.ndarray, seed: int):
    """(Integrator, System, Forces) of torchmd for B replicas starting at x0 (B, n, 3) nm."""
    from torchmd.forces import Forces
    from torchmd.integrator import Integrator, maxwell_boltzmann
    from torchmd.systems import System

    b, n, _ = x0.shape
    system = System(n, b, torch.float32, "cpu")
    system.set_positions(np.transpose(x0 * ANGSTROM_PER_NM, (1, 2, 0)))  # (n, 3, B)
    system.set_masses(torch.tensor(masses))
    torch.manual_seed(seed)
    system.set_velocities(maxwell_boltzmann(system.masses, TEMPERATURE, b))
    parameters = types.SimpleNamespace(masses=np.asarray(masses), nonbonded_params=None)
    forces = Forces(parameters, terms=[], external=TorchmdExternal(force_fn))
    forces.compute(system.pos, system.box, system.forces)  # forces of the first half kick
    integrator = Integrator(system, forces, TIMESTEP_PS * 1000.0, "cpu", gamma=FRICTION,
                            T=TEMPERATURE)
    return integrator, system, forces


def ours_setup(model, masses, seed: int) -> BatchedLangevin:
    return BatchedLangevin(EnsembleForces(model), masses, TEMPERATURE, friction=FRICTION,
                           timestep=TIMESTEP_PS, seed=seed, dtype=STATE_DTYPE)


def export(model, path: Path, example, masses, replicas: int) -> Path:
    export_cg_model(model, path, example_positions=example, masses=masses, native_priors=True,
                    replicas=replicas)
    return path


def omm_context(path: Path, positions: np.ndarray, threads: int, seed: int):
    """(Context, integrator) of ``create_system(path)`` on the CPU platform."""
    system = create_system(path)
    integrator = openmm.LangevinMiddleIntegrator(TEMPERATURE * unit.kelvin,
                                                 FRICTION / unit.picosecond,
                                                 TIMESTEP_PS * unit.picoseconds)
    integrator.setRandomNumberSeed(seed)
    context = openmm.Context(system, integrator, openmm.Platform.getPlatformByName("CPU"),
                             {"Threads": str(threads)})
    context.setPositions(positions)
    context.setVelocitiesToTemperature(TEMPERATURE * unit.kelvin, seed)
    return context, integrator


def omm_energy_forces(context, groups=None):
    kwargs = {} if groups is None else {"groups": groups}
    state = context.getState(getEnergy=True, getForces=True, **kwargs)
    return (state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole),
            state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer))


# -- correctness ----------------------------------------------------------------------------------
def direct(model, x: np.ndarray):
    """Ensemble-mean energies (B,) and forces (B, n, 3) of the model evaluated directly."""
    positions = torch.tensor(x, dtype=MODEL_DTYPE, requires_grad=True)
    with torch.enable_grad():
        energies = model(positions)
        (gradient,) = torch.autograd.grad(energies.sum(), positions)
    return energies.detach().double().numpy(), -gradient.double().numpy()


def agreement(name: str, got, want, *, energy=True) -> dict:
    (e_got, f_got), (e_want, f_want) = got, want
    df = float(np.abs(np.asarray(f_got) - f_want).max() / max(np.abs(f_want).max(), 1e-12))
    check = {"check": name, "force_rel_error": df, "max_force": float(np.abs(f_want).max()),
             "tolerance": FORCE_TOLERANCE}
    ok = df <= FORCE_TOLERANCE
    if energy:
        de = float(np.abs(np.asarray(e_got) - e_want).max() / max(np.abs(e_want).max(), 1.0))
        check["energy_rel_error"] = de
        ok = ok and de <= ENERGY_TOLERANCE
    check["ok"] = bool(ok)
    return check


def check_models(case: dict, workdir: Path, threads: int) -> list:
    """All four methods give the model's energies and forces on the same R_CHECK frames."""
    model, masses, name = case["model"], case["masses"], case["name"]
    x = case["positions"][np.linspace(0, FRAMES - 1, R_CHECK).astype(int)]
    n = x.shape[1]
    want = direct(model, x)
    network = model.without_priors()
    want_network = direct(network, x)
    checks = []

    sim = ours_setup(model, masses, SEED)
    sim.run(torch.as_tensor(x), 0, save_interval=1, progress=False)
    checks.append(agreement("ours (BatchedLangevin's forces) == model",
                            (sim.energies.numpy(), sim.forces.numpy()), want))

    if have_torchmd():
        _, system, forces = torchmd_setup(EnsembleForces(model), masses, x, SEED)
        energies = forces.compute(system.pos, system.box, system.forces)
        # torchmd holds float32 Angstrom: compare with the model at exactly those positions
        held = system.pos.double().numpy() / ANGSTROM_PER_NM
        checks.append(agreement("torchmd (Forces.compute with the external) == model",
                                (np.array(energies) * KCAL,
                                 system.forces.double().numpy() * KCAL * ANGSTROM_PER_NM),
                                direct(model, held)))

    single = export(model, workdir / f"{name}_r1.pt", x[0], masses, 1)
    got, got_network = [], []
    for r in range(R_CHECK):
        context, _ = omm_context(single, x[r], threads, SEED)
        got.append(omm_energy_forces(context))
        got_network.append(omm_energy_forces(context, {1}))
        del context
    checks.append(agreement("omm/replica (create_system: native priors + TorchForce) == model",
                            (np.array([g[0] for g in got]), np.stack([g[1] for g in got])),
                            want))
    checks.append(agreement("omm/replica network only (force group 1) == model w/o priors",
                            (np.array([g[0] for g in got_network]),
                             np.stack([g[1] for g in got_network])), want_network))

    batched = export(model, workdir / f"{name}_r{R_CHECK}.pt", x[0], masses, R_CHECK)
    context, _ = omm_context(batched, x.reshape(-1, 3), threads, SEED)
    e, f = omm_energy_forces(context)
    checks.append(agreement("omm/batched (replicas=R, one TorchForce) == model",
                            (np.array([e]), f.reshape(R_CHECK, n, 3)),
                            (np.array([want[0].sum()]), want[1])))
    e, f = omm_energy_forces(context, {1})
    checks.append(agreement("omm/batched network only (force group 1) == model w/o priors",
                            (np.array([e]), f.reshape(R_CHECK, n, 3)),
                            (np.array([want_network[0].sum()]), want_network[1])))
    del context
    network_force = float(np.abs(want_network[1]).max())
    checks.append({"check": "network forces matter", "ok": network_force >= MIN_NETWORK_FORCE,
                   "max_network_force_kj_per_mol_nm": network_force,
                   "max_total_force_kj_per_mol_nm": float(np.abs(want[1]).max()),
                   "minimum": MIN_NETWORK_FORCE})
    for check in checks:
        check["system"] = name
    return checks


# -- timing ---------------------------------------------------------------------------------------
class Method:
    """A timed way of stepping R replicas: ``advance(k)`` does k steps of every replica."""

    def __init__(self, name: str, advance, min_steps: int = 1, finite=None, close=None):
        self.name, self.advance, self.min_steps = name, advance, min_steps
        self.finite = finite or (lambda: True)
        self.close = close or (lambda: None)


def ours_method(model, masses, x0: np.ndarray, checkpoint: Path) -> Method:
    sim = ours_setup(model, masses, SEED)
    x = torch.as_tensor(x0)
    checkpoint.unlink(missing_ok=True)

    def advance(k: int) -> None:  # resume from the previous call's checkpoint, k more steps
        sim.run(x, sim.step + k, save_interval=SAVE_INTERVAL, checkpoint=checkpoint,
                progress=False)

    def finite() -> bool:
        return bool(torch.isfinite(sim.positions).all() and torch.isfinite(sim.energies).all())

    return Method("ours", advance, 1, finite, lambda: checkpoint.unlink(missing_ok=True))


def torchmd_method(model, masses, x0: np.ndarray) -> Method:
    integrator, system, _ = torchmd_setup(EnsembleForces(model), masses, x0, SEED)

    def advance(k: int) -> None:
        integrator.step(k)

    return Method("torchmd", advance, 1, lambda: bool(torch.isfinite(system.pos).all()))


def floor_method(model, x0: np.ndarray) -> Method:
    force_fn, x = EnsembleForces(model), torch.as_tensor(x0)  # float64, as ours calls it

    def advance(k: int) -> None:
        for _ in range(k):
            force_fn(x)

    return Method("floor", advance)


def omm_finite(contexts) -> bool:
    return all(math.isfinite(c.getState(getEnergy=True).getPotentialEnergy()
                             .value_in_unit(unit.kilojoule_per_mole)) for c in contexts)


def omm_replica_method(path: Path, x0: np.ndarray, threads: int) -> Method:
    pairs = [omm_context(path, x, threads, SEED + r) for r, x in enumerate(x0)]
    integrators = [integrator for _, integrator in pairs]

    def advance(k: int) -> None:
        for integrator in integrators:
            integrator.step(k)

    return Method("omm_replica", advance, 1, lambda: omm_finite([c for c, _ in pairs]),
                  pairs.clear)


def omm_batched_method(path: Path, x0: np.ndarray, threads: int) -> Method:
    context, integrator = omm_context(path, x0.reshape(-1, 3), threads, SEED)
    return Method("omm_batched", integrator.step, 1, lambda: omm_finite([context]))


def block_rates(methods: list, warmup_seconds: float, block_seconds: float, blocks: int):
    """Steps/s of every method in each block, blocks interleaved (a, b, c, a, b, c, ...).

    Per method: one warm-up call of ``min_steps`` (more until ``warmup_seconds``), one timed
    call to size the blocks (>= ``min_steps``, about ``block_seconds``)."""
    sizes = []
    for method in methods:
        start = time.perf_counter()
        method.advance(method.min_steps)
        while time.perf_counter() - start < warmup_seconds:
            method.advance(method.min_steps)
        start = time.perf_counter()
        method.advance(method.min_steps)
        per_step = (time.perf_counter() - start) / method.min_steps
        sizes.append(max(method.min_steps, int(round(block_seconds / per_step))))
    samples = [[] for _ in methods]
    for _ in range(blocks):
        for method, k, sample in zip(methods, sizes, samples):
            start = time.perf_counter()
            method.advance(k)
            sample.append(k / (time.perf_counter() - start))
    return samples, sizes


METHODS = ("floor", "ours", "torchmd", "omm_replica", "omm_batched")


def estimate(previous: dict | None, replicas: int, timing) -> tuple[float, dict]:
    """Estimated wall seconds of a case and of one step per method, scaled linearly in R from
    the previous replica count's measurement (None: no estimate, measure)."""
    if previous is None:
        return 0.0, {}
    block_seconds, blocks, warmup = timing
    scale = replicas / previous["replicas"]
    steps = {m: s * scale for m, s in previous["seconds_per_step"].items() if s is not None}
    total = sum(max(block_seconds, s) * (blocks + 2) + warmup for s in steps.values())
    return total, steps


def run_case(case: dict, replicas: int, threads: int, batched_path: Path, single_path: Path,
             x0: np.ndarray, timing, skip: dict, scratch: Path) -> tuple[dict, list]:
    """Time every method for R replicas at one thread count; (row, checks)."""
    block_seconds, blocks, warmup = timing
    openmm_geom.set_threads(threads)
    model, masses = case["model"], case["masses"]
    setup_start = time.perf_counter()
    methods = [floor_method(model, x0), ours_method(model, masses, x0, scratch / "ours.ckpt")]
    if have_torchmd():
        methods.append(torchmd_method(model, masses, x0))
    else:
        skip = dict(skip, torchmd=NO_TORCHMD)
    context_seconds = None
    if "omm_replica" not in skip:
        start = time.perf_counter()
        methods.append(omm_replica_method(single_path, x0, threads))
        context_seconds = (time.perf_counter() - start) / replicas
    methods.append(omm_batched_method(batched_path, x0, threads))
    setup_seconds = time.perf_counter() - setup_start
    (samples, sizes), load = measure_clean(
        lambda: block_rates(methods, warmup, block_seconds, blocks))
    checks = [{"check": f"{m.name} stayed finite", "ok": m.finite(), "system": case["name"],
               "replicas": replicas, "threads": threads} for m in methods]
    for m in methods:
        m.close()
    steps_per_s = {m.name: statistics.median(s) for m, s in zip(methods, samples)}
    rate = {m: (steps_per_s[m] * replicas if m in steps_per_s else None) for m in METHODS}
    ms = {m: (1e3 / steps_per_s[m] if m in steps_per_s else None) for m in METHODS}

    def ratio(a, b):
        return None if rate[a] is None or rate[b] is None else rate[a] / rate[b]

    row = {
        "system": case["name"], "n_beads": len(case["masses"]), "replicas": replicas,
        "threads": threads, "other_load": load,
        **{f"{m}_replica_steps_per_s": rate[m] for m in METHODS},
        **{f"{m}_ms_per_step": ms[m] for m in METHODS},
        "ours_over_torchmd": ratio("ours", "torchmd"),
        "ours_over_omm_replica": ratio("ours", "omm_replica"),
        "ours_over_omm_batched": ratio("ours", "omm_batched"),
        "omm_batched_over_omm_replica": ratio("omm_batched", "omm_replica"),
        # model (one EnsembleForces call) vs everything else per step
        "ours_integrator_and_glue_ms": ms["ours"] - ms["floor"],
        "torchmd_integrator_and_glue_ms": None if ms["torchmd"] is None
        else ms["torchmd"] - ms["floor"],
        "model_share_ours": ms["floor"] / ms["ours"],
        "model_share_torchmd": None if ms["torchmd"] is None else ms["floor"] / ms["torchmd"],
        "goal": GOAL if replicas == GOAL_REPLICAS else None,
        "goal_met": (ratio("ours", "torchmd") >= GOAL)
        if replicas == GOAL_REPLICAS and rate["torchmd"] is not None else None,
        "skipped": dict(skip),
        "steps_per_block": {m.name: k for m, k in zip(methods, sizes)},
        "block_replica_steps_per_s": {m.name: [round(r * replicas, 1) for r in s]
                                      for m, s in zip(methods, samples)},
        "setup_seconds": setup_seconds,
        "omm_replica_context_seconds_each": context_seconds,
    }
    return row, checks


def skipped_row(case: dict, replicas: int, threads: int, reason: str) -> dict:
    return {"system": case["name"], "n_beads": len(case["masses"]), "replicas": replicas,
            "threads": threads, "other_load": 0.0, "skipped": {"all": reason},
            **{f"{m}_replica_steps_per_s": None for m in METHODS},
            "ours_over_torchmd": None, "goal": GOAL if replicas == GOAL_REPLICAS else None,
            "goal_met": None}


def run_system(case: dict, workdir: Path, scratch: Path, thread_list: list, replica_list,
               timing):
    rows, checks = [], []
    rng = np.random.default_rng(SEED + 1)
    single = workdir / f"{case['name']}_r1.pt"
    previous = {}  # threads -> last measured case
    for replicas in replica_list:
        x0 = case["positions"][rng.integers(0, FRAMES, replicas)]
        batched = None
        for threads in thread_list:
            # only the largest R is extrapolated (from R=100): a loaded machine must not
            # make the script skip the cases the comparison is about
            seconds, per_step = estimate(previous.get(threads), replicas, timing)
            if replicas > GOAL_REPLICAS and seconds > MAX_CASE_SECONDS:
                slowest = max(per_step, key=per_step.get)
                reason = (f"estimated {seconds:.0f} s for this case (> {MAX_CASE_SECONDS:.0f} s "
                          f"budget): {slowest} ~{per_step[slowest]:.1f} s per step, linear in R "
                          f"from R={previous[threads]['replicas']}")
                rows.append(skipped_row(case, replicas, threads, reason))
                print(f"  {case['name']} R={replicas} threads={threads}: skipped ({reason})",
                      flush=True)
                continue
            skip = {}
            if replicas > MAX_CONTEXTS:
                each = previous[threads]["context_seconds"] if threads in previous else None
                skip["omm_replica"] = (
                    f"{replicas} Contexts" + (f" would take ~{replicas * each:.0f} s to create "
                                              f"({each * 1e3:.0f} ms each)" if each else "")
                    + f"; capped at {MAX_CONTEXTS}: independent Contexts cost the same per "
                    "replica-step at any R (see R <= 100)")
            if batched is None:
                batched = export(case["model"], workdir / f"{case['name']}_r{replicas}.pt",
                                 x0[0], case["masses"], replicas)
            row, case_checks = run_case(case, replicas, threads, batched, single, x0, timing,
                                        skip, scratch)
            rows.append(row)
            checks += case_checks
            previous[threads] = {
                "replicas": replicas,
                "context_seconds": row["omm_replica_context_seconds_each"]
                or previous.get(threads, {}).get("context_seconds"),
                "seconds_per_step": {m: (row[f"{m}_ms_per_step"] or 0.0) / 1e3
                                     for m in METHODS if row[f"{m}_ms_per_step"] is not None}}
            print(f"  {case['name']} R={replicas} threads={threads}: "
                  + ", ".join(f"{m} {fmt(row[f'{m}_replica_steps_per_s'], '.0f')}"
                              for m in METHODS), flush=True)
    return rows, checks



# -- where the time goes (run when ours/torchmd misses the goal) ----------------------------------
class Timer:
    """Wraps a callable and accumulates its wall time (perf_counter, ~1 us per call)."""

    def __init__(self, fn):
        self.fn, self.seconds, self.calls = fn, 0.0, 0

    def __call__(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return self.fn(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start
            self.calls += 1


def per_call_ms(fn, seconds: float) -> float:
    fn()
    calls, start = 0, time.perf_counter()
    while calls < 2 or time.perf_counter() - start < seconds:
        fn()
        calls += 1
    return 1e3 * (time.perf_counter() - start) / calls


def model_components(model, x0: np.ndarray, seconds: float) -> dict:
    """ms per call of the parts of one EnsembleForces call, and of alternatives."""
    members = model.members
    x64 = torch.as_tensor(x0)
    x32 = x64.to(MODEL_DTYPE)

    def grad_of(energy_fn, shape_members: bool):
        def call():
            x = (x32.unsqueeze(0).expand(members, *x32.shape).clone() if shape_members
                 else x32.clone())
            x.requires_grad_(True)
            with torch.enable_grad():
                torch.autograd.grad(energy_fn(x).sum(), x)
        return call

    forces = -torch.randn(members, *x32.shape)
    network = model.without_priors()
    return {
        "ensemble_forces_call": per_call_ms(lambda: EnsembleForces(model)(x64), seconds),
        "network_forward_backward_E_x_B": per_call_ms(grad_of(model.network_energy, True),
                                                      seconds),
        "network_forward_only_E_x_B": per_call_ms(
            lambda: model.network_energy(x32.unsqueeze(0).expand(members, *x32.shape)),
            seconds),
        "priors_forward_backward_E_x_B": per_call_ms(grad_of(model.priors, True), seconds),
        "priors_forward_backward_B": per_call_ms(grad_of(model.priors, False), seconds),
        "spread_and_mean_of_member_forces": per_call_ms(
            lambda: ((forces.std(0, unbiased=False) ** 2).sum(-1).mean(-1).sqrt(),
                     forces.mean(0)), seconds),
        "mean_energy_then_gradient_B (what the TorchForce computes; no per-member forces)":
            per_call_ms(grad_of(model, False), seconds),
        "network_only_mean_energy_then_gradient_B": per_call_ms(grad_of(network, False),
                                                                seconds),
    }


def top_ops(prof, steps: int, limit: int = 12) -> list:
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    return [{"op": e.key, "calls_per_step": round(e.count / steps, 1),
             "self_ms_per_step": round(e.self_cpu_time_total / 1e3 / steps, 3),
             "self_share": round(e.self_cpu_time_total / total, 3)} for e in events[:limit]]


def profile_case(case: dict, replicas: int, threads: int, seconds: float,
                 scratch: Path) -> dict:
    """Split a step of ours and of torchmd into model / integrator / glue, plain timers
    (no profiler overhead), then torch.profiler's top operators of each."""
    from torch.profiler import ProfilerActivity, profile

    openmm_geom.set_threads(threads)
    model, masses = case["model"], case["masses"]
    x0 = case["positions"][np.random.default_rng(SEED + 2).integers(0, FRAMES, replicas)]

    ours_model = Timer(EnsembleForces(model))
    sim = BatchedLangevin(ours_model, masses, TEMPERATURE, friction=FRICTION,
                          timestep=TIMESTEP_PS, seed=SEED, dtype=STATE_DTYPE)
    x, checkpoint = torch.as_tensor(x0), scratch / "profile.ckpt"
    checkpoint.unlink(missing_ok=True)

    def ours_advance(k: int) -> None:
        sim.run(x, sim.step + k, save_interval=SAVE_INTERVAL, checkpoint=checkpoint,
                progress=False)

    ours_advance(1)
    start = time.perf_counter()
    ours_advance(1)
    steps = max(2, int(seconds / (time.perf_counter() - start)))
    ours_model.seconds = ours_model.calls = 0
    start = time.perf_counter()
    ours_advance(steps)
    ours_total = (time.perf_counter() - start) / steps
    ours_model_ms = 1e3 * ours_model.seconds / steps

    from torchmd.integrator import Integrator
    integrator, system, forces = torchmd_setup(EnsembleForces(model), masses, x0, SEED)
    tmd_model = Timer(forces.external.calculate)
    forces.external.calculate = tmd_model
    tmd_compute = Timer(forces.compute)
    forces.compute = tmd_compute  # instance attribute: torchmd's Integrator calls it
    integrator.step(2)
    for timer in (tmd_model, tmd_compute):
        timer.seconds = timer.calls = 0
    start = time.perf_counter()
    integrator.step(steps)
    tmd_total = (time.perf_counter() - start) / steps
    assert isinstance(integrator, Integrator) and tmd_compute.calls == steps

    result = {
        "system": case["name"], "replicas": replicas, "threads": threads, "steps": steps,
        "ours_ms_per_step": {
            "total": 1e3 * ours_total,
            "model (EnsembleForces call)": ours_model_ms,
            "integrator and glue (BAOAB step loop, run() setup, checkpoint)":
                1e3 * ours_total - ours_model_ms},
        "torchmd_ms_per_step": {
            "total": 1e3 * tmd_total,
            "model (the same EnsembleForces call, in external.calculate)":
                1e3 * tmd_model.seconds / steps,
            "glue: Forces.compute around the external (per-replica Python loop, "
            "toNumpy, stack)": 1e3 * (tmd_compute.seconds - tmd_model.seconds) / steps,
            "integrator (Verlet, Langevin, kinetic energy)":
                1e3 * (tmd_total - tmd_compute.seconds / steps)},
        "model_components_ms_per_call": model_components(model, x0, min(seconds, 1.0)),
    }
    profile_steps = max(2, steps // 4)
    for name, advance in (("ours", ours_advance), ("torchmd", integrator.step)):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            advance(profile_steps)
        result[f"{name}_top_ops"] = top_ops(prof, profile_steps)
    checkpoint.unlink(missing_ok=True)
    return result


def profile_table(profiles: list) -> str:
    lines = []
    for p in profiles:
        lines.append(f"where the time goes: {p['system']}, R={p['replicas']}, "
                     f"threads={p['threads']} (ms per step)")
        for who in ("ours", "torchmd"):
            parts = p[f"{who}_ms_per_step"]
            lines.append(f"  {who:<8} " + "; ".join(f"{k} {v:.2f}" for k, v in parts.items()))
        lines.append("  model parts (ms per call): " + "; ".join(
            f"{k} {v:.2f}" for k, v in p["model_components_ms_per_call"].items()))
        for who in ("ours", "torchmd"):
            lines.append(f"  {who} top ops (self ms/step): " + ", ".join(
                f"{o['op']} {o['self_ms_per_step']:.2f}" for o in p[f"{who}_top_ops"][:8]))
    return "\n".join(lines)

def table(rows: list) -> str:
    lines = [f"CG MD throughput, replica-steps/s: CGSchNet ensemble of {MEMBERS} (32 feat/32 filt/"
             "2 int/16 rbf/16 hidden, 1.0 nm, float32) + fitted priors; Langevin 300 K, 1/ps, "
             "2 fs",
             "floor = the EnsembleForces call alone; ms = model ms per step, +ours/+tmd = "
             "integrator and glue ms per step beyond it",
             f"{'system':<8} {'R':>5} {'thr':>3} {'floor':>8} {'ours':>8} {'torchmd':>8} "
             f"{'omm/rep':>8} {'omm/bat':>8} {'ours/tmd':>8} {'goal':>5} {'ours/rep':>8} "
             f"{'ours/bat':>8} {'ms':>8} {'+ours':>7} {'+tmd':>7}"]
    for r in rows:
        head = f"{r['system']:<8} {r['replicas']:>5} {r['threads']:>3}"
        if "all" in r["skipped"]:
            lines.append(f"{head}  skipped: {r['skipped']['all']}")
            continue
        met = "" if r["goal"] is None else ("met" if r["goal_met"] else "NO")
        lines.append(
            f"{head} {fmt(r['floor_replica_steps_per_s'], '.0f'):>8} "
            f"{fmt(r['ours_replica_steps_per_s'], '.0f'):>8} "
            f"{fmt(r['torchmd_replica_steps_per_s'], '.0f'):>8} "
            f"{fmt(r['omm_replica_replica_steps_per_s'], '.0f'):>8} "
            f"{fmt(r['omm_batched_replica_steps_per_s'], '.0f'):>8} "
            f"{fmt(r['ours_over_torchmd']):>8} {met:>5} {fmt(r['ours_over_omm_replica']):>8} "
            f"{fmt(r['ours_over_omm_batched']):>8} {fmt(r['floor_ms_per_step'], '.2f'):>8} "
            f"{fmt(r['ours_integrator_and_glue_ms'], '.2f'):>7} "
            f"{fmt(r['torchmd_integrator_and_glue_ms'], '.2f'):>7}"
            + (f"  (other load {r['other_load']:.0%})" if r["other_load"] > 0.1 else "")
            + ("  [omm/rep skipped]" if "omm_replica" in r["skipped"] else ""))
    return "\n".join(lines)


def main(argv=None) -> int:
    p = _common.parser(__doc__, "cg.json", "alanine at 1 and 10 replicas, short blocks")
    p.add_argument("--no-profile", action="store_true",
                   help="do not profile ours and torchmd when ours/torchmd misses the goal")
    args = _common.parse(p, argv)
    mode = "quick" if args.quick else "full"
    env, monitor = environment(), LoadMonitor()
    for distribution in ("torchmd",):
        try:
            from importlib import metadata
            env[distribution] = metadata.version(distribution)
        except Exception:
            env[distribution] = None
    threads = thread_counts(args.threads)
    rows, checks, systems, profiles = [], [], [], []
    shm = "/dev/shm" if Path("/dev/shm").is_dir() else None
    with tempfile.TemporaryDirectory() as workdir, tempfile.TemporaryDirectory(dir=shm) as scratch:
        cases = [build(name) for name in SYSTEMS[mode]]
        for case in cases:
            case_checks = check_models(case, Path(workdir), max(threads))
            checks += case_checks
            systems.append({"name": case["name"], "description": case["description"],
                            "n_beads": len(case["masses"]), "bead_types": case["types"],
                            "masses_amu": case["masses"], "bonds": case["bonds"],
                            "prior_dihedrals": case["dihedrals"],
                            "n_pairs": len(case["masses"]) * (len(case["masses"]) - 1) // 2,
                            "priors": case["model"].priors.to_config()})
        if all(c["ok"] for c in checks):  # a benchmark of different models is worthless
            for case in cases:
                print(f"== {case['name']}", flush=True)
                case_rows, case_checks = run_system(case, Path(workdir), Path(scratch),
                                                    threads, REPLICAS[mode], TIMING[mode])
                rows += case_rows
                checks += case_checks
            if not args.no_profile and have_torchmd():
                for case in cases:
                    for threads_ in threads:
                        missed = [r for r in rows if r["system"] == case["name"]
                                  and r["threads"] == threads_ and r["goal_met"] is False]
                        if missed:
                            print(f"== profile {case['name']} R={GOAL_REPLICAS} "
                                  f"threads={threads_} (ours/torchmd < {GOAL})", flush=True)
                            profiles.append(profile_case(case, GOAL_REPLICAS, threads_,
                                                         PROFILE_SECONDS, Path(scratch)))
    ok = all(c["ok"] for c in checks)
    block_seconds, blocks, warmup = TIMING[mode]
    write_json(args.out, {
        "benchmark": "cg",
        "quick": args.quick,
        "config": {
            "model": {"class": "openmm_geom.models.cgschnet.CGSchNet", "members": MEMBERS,
                      **NETWORK, "dtype": str(MODEL_DTYPE), "weights": "random (seed "
                      f"{SEED}), last layer x {OUTPUT_SCALE} so the network's forces matter",
                      "priors": f"fit_priors(method='cgnet', dihedral_harmonics="
                                f"{DIHEDRAL_HARMONICS}) on {FRAMES} synthetic frames"},
            "temperature_k": TEMPERATURE, "friction_per_ps": FRICTION,
            "timestep_ps": TIMESTEP_PS,
            "replicas": list(REPLICAS[mode]), "threads": threads,
            "ours": "BatchedLangevin(EnsembleForces(model), masses, 300, friction=1, "
                    f"timestep=0.002) BAOAB, state {STATE_DTYPE}; one run(x0, step + k, "
                    "checkpoint=tmpfs file) call per block, resuming the previous one",
            "torchmd": "torchmd 1.1.2 Integrator (Verlet + Langevin) on System(n, B, float32), "
                       "Forces(terms=[], external=EnsembleForces(model) in Angstrom/kcal)",
            "omm_replica": "R Contexts (CPU) of create_system(export_cg_model(replicas=1)), "
                           "LangevinMiddleIntegrator, stepped in turn",
            "omm_batched": "one Context (CPU) of create_system(export_cg_model(replicas=R)), "
                           "LangevinMiddleIntegrator",
            "floor": "EnsembleForces(model)(x) alone on B float64 configurations",
            "goal": f"ours / torchmd >= {GOAL} at {GOAL_REPLICAS} replicas",
            "timing": {"block_seconds": block_seconds, "blocks": blocks,
                       "warmup_seconds": warmup, "max_case_seconds": MAX_CASE_SECONDS,
                       "max_contexts": MAX_CONTEXTS,
                       "statistic": "median rate over interleaved blocks"},
            "tolerances": {"force": FORCE_TOLERANCE, "energy": ENERGY_TOLERANCE},
        },
        "environment": env,
        "load": monitor.result(),
        "systems": systems,
        "rows": rows,
        "profiles": profiles,
        "checks": checks,
        "ok": ok,
    })
    text = table(rows) + ("\n" + profile_table(profiles) if profiles else "")
    return _common.report(text, [r for r in rows if "all" not in r["skipped"]], checks,
                          ok, args.out)


if __name__ == "__main__":
    sys.exit(main())
