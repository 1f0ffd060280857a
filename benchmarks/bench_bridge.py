"""Bridge overhead: OpenMM steps/s with an exported model vs the model's own speed.

Model: a periodic Lennard-Jones pair potential written in Angstrom and eV (argon-like:
sigma 3.4 A, epsilon 0.0104 eV, cutoff 8.5 A) that finds its pairs with
``openmm_geom.ops.NeighborPairs``. Systems: jittered FCC lattices of 108 and 2048 atoms
(mass 39.948 amu) at liquid-argon density, 21 atoms/nm^3, so each atom has ~54 neighbours
inside the cutoff; the 108-atom box (1.726 nm) just holds the 8.5 A cutoff.

Measured, at 1 thread and at the core count (``openmm_geom.set_threads(T)`` for torch and vesin,
CPU platform ``{"Threads": T}``):

* floor: the exported ScriptModule in a plain Python loop, ``e = module(x, box); e.backward()``
  (x float64 nm, requires_grad): calls/s;
* TorchForce: ``openmm_geom.openmm.forces.torch_force(path)`` (what ``create_system`` adds) alone in an ``openmm.System``, Verlet,
  1 fs: steps/s;  ratio = steps/s / floor calls/s (goal >= 0.8);
* PythonForce: ``openmm_geom.openmm.python_force(...)`` with the same (eager) model: steps/s.

Each rate is the median of several timed blocks after warm-up, the blocks of the three
interleaved (floor, TorchForce, PythonForce, floor, ...); a measurement during which
other processes took > 10% of the CPUs is retried and its remaining "other_load" recorded.
Note the floor is a Python loop (Python + ``.backward()`` overhead per call), not a strict
lower bound: a ratio slightly above 1 is possible. Before timing, energies and
forces of both OpenMM forces are checked against the floor module on the same configuration;
a mismatch makes the script exit with status 1.

    .venv/bin/python benchmarks/bench_bridge.py [--out benchmarks/results/bridge.json]
    .venv/bin/python benchmarks/bench_bridge.py --quick      # shorter blocks, ~20 s
"""
from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import openmm
import openmm.unit as unit
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
from _common import (LoadMonitor, environment, fmt, measure_clean,  # noqa: E402
                     thread_counts, write_json)

import openmm_geom  # noqa: E402
from openmm_geom.export import export_model  # noqa: E402
from openmm_geom.openmm import ExportedModel  # noqa: E402
from openmm_geom.openmm import python_force  # noqa: E402
from openmm_geom.openmm.forces import torch_force  # noqa: E402
from openmm_geom.ops import NeighborPairs, neighbor_pairs  # noqa: E402

DENSITY = 21.0  # atoms / nm^3, liquid argon near 85 K (1.40 g/cm^3)
SIGMA = 3.4  # Angstrom
EPSILON = 0.0104  # eV (120 K)
CUTOFF = 8.5  # Angstrom
MASS = 39.948  # amu
JITTER = 0.01  # nm, standard deviation of the displacement from the lattice sites
TEMPERATURE = 85.0  # K, initial velocities
TIMESTEP_FS = 1.0
SEED = 7
FCC_CELLS = {"full": (3, 8), "quick": (3, 5)}  # 4 n^3 atoms: 108 and 2048 (quick: 500)
# seconds per timed block, number of blocks, warm-up steps/calls
TIMING = {"full": (0.8, 7, 20), "quick": (0.3, 2, 5)}
ENERGY_TOLERANCE = 1e-6  # relative
FORCE_TOLERANCE = 1e-5  # max |dF| / max |F|


class LJ(torch.nn.Module):
    """Periodic Lennard-Jones energy (eV) of positions and box in Angstrom."""

    def __init__(self, eps: float = EPSILON, sigma: float = SIGMA, cutoff: float = CUTOFF):
        super().__init__()
        self.eps, self.sigma, self.cutoff = eps, sigma, cutoff
        self.pairs = NeighborPairs(cutoff)

    def forward(self, pos: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
        _, _, d = self.pairs(pos, box)
        sr6 = (self.sigma / d) ** 6
        return (4 * self.eps * (sr6 * sr6 - sr6)).sum()


def fcc_lattice(cells: int):
    """Jittered FCC positions (nm) of 4 cells^3 atoms and the cubic box (nm) at DENSITY."""
    n = 4 * cells**3
    length = (n / DENSITY) ** (1.0 / 3.0)
    basis = np.array([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    grid = np.stack(np.meshgrid(*[np.arange(cells)] * 3, indexing="ij"), -1).reshape(-1, 1, 3)
    sites = ((grid + basis).reshape(-1, 3) + 0.25) * (length / cells)
    positions = sites + np.random.default_rng(SEED).normal(0.0, JITTER, sites.shape)
    return positions, np.eye(3) * length


def rates(chunks: list, warmup: int, block_seconds: float, blocks: int) -> list:
    """Units/s of each ``chunk(k)`` (which does k units) in every block, the blocks timed
    interleaved (a, b, c, a, b, c, ...) so that none is favoured by order or drifting load."""
    sizes = []
    for chunk in chunks:
        chunk(warmup)
        start = time.perf_counter()
        chunk(max(1, warmup // 4))
        per_unit = (time.perf_counter() - start) / max(1, warmup // 4)
        sizes.append(max(1, int(block_seconds / per_unit)))
    samples = [[] for _ in chunks]
    for _ in range(blocks):
        for chunk, k, sample in zip(chunks, sizes, samples):
            start = time.perf_counter()
            chunk(k)
            sample.append(k / (time.perf_counter() - start))
    return samples


def make_context(force, positions, box, threads: int):
    """(Context, integrator): ``force`` alone in a periodic System, CPU platform."""
    system = openmm.System()
    for _ in range(len(positions)):
        system.addParticle(MASS)
    system.setDefaultPeriodicBoxVectors(*(openmm.Vec3(*row) for row in box))
    system.addForce(force)
    integrator = openmm.VerletIntegrator(TIMESTEP_FS * unit.femtoseconds)
    context = openmm.Context(system, integrator, openmm.Platform.getPlatformByName("CPU"),
                             {"Threads": str(threads)})
    context.setPositions(positions)
    context.setVelocitiesToTemperature(TEMPERATURE * unit.kelvin, SEED)
    return context, integrator


def energy_forces(context):
    state = context.getState(getEnergy=True, getForces=True)
    return (state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole),
            state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer))


def agreement(name: str, energy: float, forces, reference) -> dict:
    ref_energy, ref_forces = reference
    de = abs(energy - ref_energy) / max(abs(ref_energy), 1e-12)
    df = float(np.abs(forces - ref_forces).max() / np.abs(ref_forces).max())
    return {"check": name, "ok": de <= ENERGY_TOLERANCE and df <= FORCE_TOLERANCE,
            "energy_rel_error": de, "force_rel_error": df}


def run_system(cells: int, threads_list, timing, workdir: Path) -> tuple[dict, list]:
    """Export the LJ model for one lattice, check both forces, time all three per thread count."""
    block_seconds, blocks, warmup = timing
    positions, box = fcc_lattice(cells)
    n = len(positions)
    path = workdir / f"lj_{n}.pt"
    export_model(LJ(), path, length_unit="angstrom", energy_unit="eV", periodic=True,
                 example_positions=positions, example_box=box, cutoff=CUTOFF,
                 masses=[MASS] * n)
    module = ExportedModel.load(path).module
    x = torch.tensor(positions, dtype=torch.float64, requires_grad=True)
    box_t = torch.tensor(box, dtype=torch.float64)

    energy = module(x, box_t)
    (gradient,) = torch.autograd.grad(energy, x)
    reference = (float(energy.detach()), -gradient.numpy())
    pairs = int(neighbor_pairs(x.detach() * 10.0, CUTOFF, box_t * 10.0)[0].shape[1])

    def floor_chunk(k: int) -> None:
        for _ in range(k):
            x.grad = None
            module(x, box_t).backward()

    system_row = {"n_atoms": n, "box_nm": float(box[0, 0]), "pairs_within_cutoff": pairs,
                  "energy_kj_per_mol": reference[0], "by_threads": []}
    checks = []
    for threads in threads_list:
        openmm_geom.set_threads(threads)
        forces = {
            "torchforce": torch_force(path),
            "pythonforce": python_force(LJ(), length_unit="angstrom", energy_unit="eV",
                                        periodic=True, example_positions=positions,
                                        example_box=box, cutoff=CUTOFF),
        }
        contexts = {name: make_context(force, positions, box, threads)
                    for name, force in forces.items()}
        for name, (context, _) in contexts.items():
            check = agreement(f"{name} == floor module", *energy_forces(context), reference)
            checks.append({"n_atoms": n, "threads": threads, **check})
        chunks = [floor_chunk] + [integrator.step for _, integrator in contexts.values()]
        samples, load = measure_clean(lambda: rates(chunks, warmup, block_seconds, blocks))
        floor, torchforce, pythonforce = (statistics.median(s) for s in samples)
        for name, (context, _) in contexts.items():
            final = context.getState(getEnergy=True).getPotentialEnergy()
            if not np.isfinite(final.value_in_unit(unit.kilojoule_per_mole)):
                checks.append({"n_atoms": n, "threads": threads, "check": f"{name} stable",
                               "ok": False})
        del contexts
        system_row["by_threads"].append({
            "threads": threads, "other_load": load, "floor_calls_per_s": floor,
            "torchforce_steps_per_s": torchforce, "pythonforce_steps_per_s": pythonforce,
            "ratio_torchforce_over_floor": torchforce / floor,
            "overhead_ms_per_step": 1e3 * (1 / torchforce - 1 / floor),
            "ratio_pythonforce_over_floor": pythonforce / floor,
            "block_rates": dict(zip(("floor", "torchforce", "pythonforce"),
                                    ([round(r, 1) for r in s] for s in samples))),
        })
    return system_row, checks


def table(systems: list) -> str:
    lines = ["bridge overhead: periodic LJ (A, eV) via neighbor_pairs; rates are per second",
             f"{'N':>6} {'thr':>3} {'floor calls':>11} {'TorchForce':>11} {'ratio':>6} "
             f"{'ovh ms/step':>11} {'PythonForce':>11} {'ratio':>6}"]
    for s in systems:
        for r in s["by_threads"]:
            lines.append(
                f"{s['n_atoms']:>6} {r['threads']:>3} {fmt(r['floor_calls_per_s'], '.1f'):>11} "
                f"{fmt(r['torchforce_steps_per_s'], '.1f'):>11} "
                f"{fmt(r['ratio_torchforce_over_floor']):>6} "
                f"{fmt(r['overhead_ms_per_step'], '.3f'):>11} "
                f"{fmt(r['pythonforce_steps_per_s'], '.1f'):>11} "
                f"{fmt(r['ratio_pythonforce_over_floor']):>6}"
                + (f"  (other load {r['other_load']:.0%})" if r["other_load"] > 0.1 else ""))
    return "\n".join(lines)


def main(argv=None) -> int:
    args = _common.parse(_common.parser(__doc__, "bridge.json", "108 and 500 atoms, short blocks"),
                         argv)

    mode = "quick" if args.quick else "full"
    env, monitor = environment(), LoadMonitor()
    systems, checks = [], []
    with tempfile.TemporaryDirectory() as workdir:
        for cells in FCC_CELLS[mode]:
            row, row_checks = run_system(cells, thread_counts(args.threads), TIMING[mode],
                                         Path(workdir))
            systems.append(row)
            checks += row_checks
    ok = all(c["ok"] for c in checks)
    load = monitor.result()
    block_seconds, blocks, warmup = TIMING[mode]
    write_json(args.out, {
        "benchmark": "bridge",
        "quick": args.quick,
        "config": {
            "model": "periodic Lennard-Jones, Angstrom/eV, openmm_geom.ops.neighbor_pairs",
            "sigma_angstrom": SIGMA, "epsilon_ev": EPSILON, "cutoff_angstrom": CUTOFF,
            "density_atoms_per_nm3": DENSITY, "mass_amu": MASS, "lattice": "jittered FCC",
            "jitter_nm": JITTER, "integrator": "VerletIntegrator", "timestep_fs": TIMESTEP_FS,
            "initial_temperature_k": TEMPERATURE, "platform": "CPU", "dtype": "float64",
            "floor": "exported ScriptModule: e = module(x, box); e.backward(), Python loop",
            "timing": {"block_seconds": block_seconds, "blocks": blocks,
                       "warmup": warmup,
                       "statistic": "median rate over interleaved blocks"},
        },
        "environment": env,
        "load": load,
        "systems": systems,
        "checks": checks,
        "ok": ok,
    })
    return _common.report(table(systems), [r for s in systems for r in s["by_threads"]], checks,
                          ok, args.out)


if __name__ == "__main__":
    sys.exit(main())
