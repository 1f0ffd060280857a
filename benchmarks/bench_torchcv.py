"""TorchCVForce vs CustomCVForce + k TorchForces: ns/day of capped alanine biased on k CVs.

Issue: "ns/day of capped alanine biased on k = 2 and k = 4 CVs from one module: TorchCVForce
vs CustomCVForce + k TorchForces. Goal: >= 0.8*k x faster when the model dominates the step."

System: capped alanine (``openmm_geom.data.bundled("alanine-dipeptide.pdb")``, 22 atoms),
amber14-all.xml, NoCutoff, HBonds constraints, LangevinMiddleIntegrator 300 K, 1/ps, 2 fs,
CPU platform ``{"Threads": T}`` and ``openmm_geom.set_threads(T)`` for torch, T = 1 and the
core count.

CV module (one per k, float64, random weights, fixed seeds): a TorchMD-Net 2.6.2 equivariant
transformer (``TorchMD_ET``: 64 features, 3 layers, 8 heads, 32 expnorm RBFs, cutoff 5 A,
neighbour cap 22 per atom, i.e. every pair of the 22 atoms may enter) gives per-atom scalar
features; their sum over atoms goes through a fixed random linear layer to k outputs. The
module works in Angstrom and is exported with ``export_model(..., kind="cv",
length_unit="angstrom")``: torchmd-net's expnorm RBF assumes an Angstrom-sized cutoff (its
width is ``exp(-cutoff)``), and with nm positions and a 0.5 nm cutoff every RBF is ~exp(-150),
so the CVs would hardly depend on the positions (gradients ~1e-40).

Bias, identical in both forces: ``sum_i 0.5*kappa*(cv_i - c_i)^2`` with global parameters
kappa = 10 and c_i = round(cv_i(start)) + 1 (bias forces up to ~300 kJ/mol/nm at the start).

* ours: ``openmm_geom.openmm.TorchCVForce(path, expression)``: one model pass per step;
* peer: ``openmm.CustomCVForce(expression)`` over one TorchForce per CV (``custom_cv_force``) for
  i < k: k model passes per step;
* fused: one openmm-torch ``TorchForce`` of a scripted module computing the CVs and the bias
  itself: a single pass with no expression, the target for ours;
* floor: the exported ScriptModule in a Python loop, ``torch.autograd.grad(module(x), x,
  ones(k))`` (gradient wrt positions only, as the kernels compute it);
* amber: the same System without a bias (what the step costs when the model is absent).

Before timing, energies and forces of the bias (force group 1) are compared on the starting
configuration on the Reference platform: ours vs peer, ours vs fused and ours vs the bias
computed directly in torch from the module (rel 1e-8); then the full CPU-platform Contexts
(ours vs peer, rel 1e-6). A mismatch, or bias forces too small to matter, makes the script
exit with status 1. Rates are medians over timed blocks run interleaved (floor, amber, ours,
peer, fused, floor, ...) after warm-up; a measurement during which other processes took > 10%
of the CPUs is retried and its remaining "other_load" recorded. ns/day = steps/s * 2 fs * 86400.
The speedup ours/peer is compared with the goal 0.8*k; it is reported, not enforced.

    .venv/bin/python benchmarks/bench_torchcv.py [--out benchmarks/results/torchcv.json]
    .venv/bin/python benchmarks/bench_torchcv.py --quick      # k=2 only, short blocks, ~20 s
"""
from __future__ import annotations

import functools
import statistics
import sys
import tempfile
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
from bench_bridge import rates  # noqa: E402  (interleaved block timing)

import openmm_geom  # noqa: E402
from openmm_geom.data import bundled  # noqa: E402
from openmm_geom.export import export_model  # noqa: E402
from openmm_geom.openmm import ExportedModel  # noqa: E402
from openmm_geom.openmm import TorchCVForce, custom_cv_force  # noqa: E402
from openmm_geom.openmm.forces import openmmtorch  # noqa: E402

PDB = "alanine-dipeptide.pdb"
FORCEFIELD = "amber14-all.xml"
TEMPERATURE = 300.0  # K
FRICTION = 1.0  # 1/ps
TIMESTEP_FS = 2.0
SEED = 11
ET = {"hidden_channels": 64, "num_layers": 3, "num_rbf": 32, "num_heads": 8,
      "rbf_type": "expnorm", "cutoff_upper": 5.0, "vector_cutoff": True}  # Angstrom
KAPPA = 10.0  # kJ/mol per CV unit^2
OFFSET = 1.0  # restraint centres: c_i = round(cv_i(start)) + OFFSET
BIAS_GROUP = 1
KS = {"full": (2, 4), "quick": (2,)}
# seconds per timed block, number of blocks, warm-up steps/calls
TIMING = {"full": (1.0, 7, 20), "quick": (0.25, 2, 3)}
REFERENCE_TOLERANCE = 1e-8  # relative, Reference platform
CPU_TOLERANCE = 1e-6  # relative, full CPU Contexts (amber in mixed precision on both sides)
MIN_BIAS_FORCE = 1.0  # kJ/mol/nm: a bias whose forces are smaller measures nothing


class ETCollectiveVariables(torch.nn.Module):
    """k CVs of one molecule from a TorchMD-Net equivariant transformer (Angstrom in)."""

    def __init__(self, atomic_numbers, k: int, seed: int):
        super().__init__()
        from torchmdnet.models.torchmd_et import TorchMD_ET

        generator_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        n = len(atomic_numbers)
        self.et = TorchMD_ET(**ET, max_z=max(atomic_numbers) + 1, max_num_neighbors=n,
                             dtype=torch.float64)
        self.head = torch.nn.Linear(ET["hidden_channels"], k, dtype=torch.float64)
        torch.random.set_rng_state(generator_state)
        self.register_buffer("z", torch.tensor(atomic_numbers, dtype=torch.long))
        self.register_buffer("batch", torch.zeros(n, dtype=torch.long))

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        x, _, _, _, _ = self.et(self.z, positions, self.batch)
        return self.head(x.sum(0))


def expression(k: int) -> str:
    return " + ".join(f"0.5*kappa*(cv{i}-c{i})^2" for i in range(k))


def parameters(centres) -> dict:
    return {"kappa": KAPPA, **{f"c{i}": float(c) for i, c in enumerate(centres)}}


def ours_force(path, k: int, params: dict):
    return TorchCVForce(path, expression(k), global_parameters=params, force_group=BIAS_GROUP)


def peer_force(path, k: int, params: dict):
    return custom_cv_force(path, expression(k), global_parameters=params, force_group=BIAS_GROUP)


class BiasEnergy(torch.nn.Module):
    """The bias as one scalar module: what a single hand-written TorchForce would compute."""

    def __init__(self, cv_module: torch.nn.Module, centres, kappa: float):
        super().__init__()
        self.cv_module = cv_module
        self.register_buffer("centres", torch.as_tensor(centres, dtype=torch.float64))
        self.kappa = float(kappa)

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        return (0.5 * self.kappa * (self.cv_module(positions) - self.centres) ** 2).sum()


def fused_force(module, centres):
    """One openmm-torch TorchForce computing the CVs and the bias (no CustomCVForce)."""
    force = openmmtorch().TorchForce(torch.jit.script(BiasEnergy(module, centres, KAPPA)))
    force.setForceGroup(BIAS_GROUP)
    return force


@functools.lru_cache(maxsize=None)
def forcefield() -> app.ForceField:
    return app.ForceField(FORCEFIELD)


def make_context(pdb, bias, platform: str, threads: int | None):
    """(Context, integrator): amber14 capped alanine plus ``bias`` (if any)."""
    system = forcefield().createSystem(pdb.topology, nonbondedMethod=app.NoCutoff,
                                       constraints=app.HBonds)
    if bias is not None:
        system.addForce(bias)
    integrator = openmm.LangevinMiddleIntegrator(TEMPERATURE * unit.kelvin,
                                                 FRICTION / unit.picosecond,
                                                 TIMESTEP_FS * unit.femtoseconds)
    integrator.setRandomNumberSeed(SEED)
    properties = {"Threads": str(threads)} if platform == "CPU" else {}
    context = openmm.Context(system, integrator, openmm.Platform.getPlatformByName(platform),
                             properties)
    context.setPositions(pdb.positions)
    context.setVelocitiesToTemperature(TEMPERATURE * unit.kelvin, SEED)
    return context, integrator


def energy_forces(context, groups=None):
    state = (context.getState(getEnergy=True, getForces=True) if groups is None
             else context.getState(getEnergy=True, getForces=True, groups=groups))
    return (state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole),
            state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer))


def agreement(name: str, a, b, tolerance: float) -> dict:
    (ea, fa), (eb, fb) = a, b
    de = abs(ea - eb) / max(abs(eb), 1e-12)
    df = float(np.abs(fa - fb).max() / max(np.abs(fb).max(), 1e-12))
    return {"check": name, "ok": de <= tolerance and df <= tolerance,
            "energy_rel_error": de, "force_rel_error": df, "tolerance": tolerance}


def torch_bias(module, positions_nm, centres):
    """Energy (kJ/mol) and forces (kJ/mol/nm) of the bias computed directly from the module."""
    x = torch.tensor(positions_nm, dtype=torch.float64, requires_grad=True)
    cv = module(x)
    energy = (0.5 * KAPPA * (cv - torch.as_tensor(centres, dtype=torch.float64)) ** 2).sum()
    (gradient,) = torch.autograd.grad(energy, x)
    return float(energy.detach()), -gradient.numpy()


def prepare(k: int, pdb, positions, atomic_numbers, workdir: Path) -> dict:
    """Export the k-CV module and check ours == peer == torch on the starting configuration."""
    path = workdir / f"et_cv{k}.pt"
    model = ETCollectiveVariables(atomic_numbers, k, seed=SEED + k)
    export_model(model, path, kind="cv", length_unit="angstrom", periodic=False,
                 example_positions=positions, cv_names=[f"cv{i}" for i in range(k)],
                 hyperparameters={**ET, "k": k, "seed": SEED + k})
    module = ExportedModel.load(path).module
    with torch.no_grad():
        start = module(torch.tensor(positions, dtype=torch.float64)).numpy()
    centres = np.round(start) + OFFSET  # 0.5-1.5 CV units away: energy depends on the CVs
    params = parameters(centres)

    checks = []
    forces = {"ours": ours_force(path, k, params), "peer": peer_force(path, k, params),
              "fused": fused_force(module, centres)}
    contexts = {name: make_context(pdb, force, "Reference", None)[0]
                for name, force in forces.items()}
    bias = {name: energy_forces(c, {BIAS_GROUP}) for name, c in contexts.items()}
    full = {name: energy_forces(c) for name, c in contexts.items()}
    direct = torch_bias(module, positions, centres)
    checks.append(agreement("bias: TorchCVForce == CustomCVForce (Reference)",
                            bias["ours"], bias["peer"], REFERENCE_TOLERANCE))
    checks.append(agreement("bias: TorchCVForce == torch module (Reference)",
                            bias["ours"], direct, REFERENCE_TOLERANCE))
    checks.append(agreement("bias: TorchCVForce == fused TorchForce (Reference)",
                            bias["ours"], bias["fused"], REFERENCE_TOLERANCE))
    checks.append(agreement("total: TorchCVForce == CustomCVForce (Reference)",
                            full["ours"], full["peer"], REFERENCE_TOLERANCE))
    bias_force = float(np.abs(bias["ours"][1]).max())
    checks.append({"check": "bias forces matter", "ok": bias_force >= MIN_BIAS_FORCE,
                   "max_bias_force_kj_per_mol_nm": bias_force, "minimum": MIN_BIAS_FORCE})
    cv_ours = forces["ours"].getCollectiveVariableValues(contexts["ours"])
    checks.append({"check": "CV values: TorchCVForce == module", "ok": bool(np.allclose(
        cv_ours, start, rtol=REFERENCE_TOLERANCE, atol=0.0)),
        "max_abs_error": float(np.abs(np.array(cv_ours) - start).max())})
    for check in checks:
        check["k"] = k
    del contexts, forces
    return {"k": k, "path": path, "module": module, "params": params, "centres": centres,
            "checks": checks,
            "cv_start": start.tolist(), "bias_energy_kj_per_mol": bias["ours"][0],
            "max_bias_force_kj_per_mol_nm": bias_force}


def run_threads(threads: int, cases: list, pdb, positions, timing) -> tuple[list, list]:
    """Time floor, amber, ours, peer and fused for every k at one thread count."""
    block_seconds, blocks, warmup = timing
    openmm_geom.set_threads(threads)
    amber_context, amber_integrator = make_context(pdb, None, "CPU", threads)
    rows, checks = [], []
    for case in cases:
        k, path, module, params = case["k"], case["path"], case["module"], case["params"]
        contexts = {name: make_context(pdb, force, "CPU", threads)
                    for name, force in (("ours", ours_force(path, k, params)),
                                        ("peer", peer_force(path, k, params)),
                                        ("fused", fused_force(module, case["centres"])))}
        check = agreement("total: TorchCVForce == CustomCVForce (CPU)",
                          energy_forces(contexts["ours"][0]), energy_forces(contexts["peer"][0]),
                          CPU_TOLERANCE)
        checks.append({"k": k, "threads": threads, **check})
        x = torch.tensor(positions, dtype=torch.float64, requires_grad=True)
        weights = torch.ones(k, dtype=torch.float64)

        def floor_chunk(n: int) -> None:  # like the kernels: gradient wrt positions only
            for _ in range(n):
                torch.autograd.grad([module(x)], [x], [weights])

        chunks = [floor_chunk, amber_integrator.step, contexts["ours"][1].step,
                  contexts["peer"][1].step, contexts["fused"][1].step]
        samples, load = measure_clean(lambda: rates(chunks, warmup, block_seconds, blocks))
        floor, amber, ours, peer, fused = (statistics.median(s) for s in samples)
        for name, (context, _) in contexts.items():
            energy = context.getState(getEnergy=True).getPotentialEnergy()
            if not np.isfinite(energy.value_in_unit(unit.kilojoule_per_mole)):
                checks.append({"k": k, "threads": threads, "check": f"{name} stable",
                               "ok": False})
        del contexts
        goal = 0.8 * k
        rows.append({
            "threads": threads, "k": k, "other_load": load,
            "floor_calls_per_s": floor, "amber_steps_per_s": amber,
            "ours_steps_per_s": ours, "peer_steps_per_s": peer, "fused_steps_per_s": fused,
            "ours_ns_per_day": ours * ns_per_day_per_step_per_s(),
            "peer_ns_per_day": peer * ns_per_day_per_step_per_s(),
            "fused_ns_per_day": fused * ns_per_day_per_step_per_s(),
            "amber_ns_per_day": amber * ns_per_day_per_step_per_s(),
            "speedup_ours_over_peer": ours / peer, "goal": goal, "goal_met": ours / peer >= goal,
            "ours_over_floor": ours / floor, "ours_over_fused": ours / fused,
            "fused_over_peer": fused / peer,
            "model_share_of_amber_plus_floor": (1 / floor) / (1 / floor + 1 / amber),
            "block_rates": dict(zip(("floor", "amber", "ours", "peer", "fused"),
                                    ([round(r, 2) for r in s] for s in samples))),
        })
    del amber_context
    return rows, checks


def ns_per_day_per_step_per_s() -> float:
    return TIMESTEP_FS * 1e-6 * 86400


def table(rows: list) -> str:
    lines = ["TorchCVForce vs CustomCVForce + k TorchForces: capped alanine, TorchMD-ET CVs "
             "(64 feat, 3 layers, f64); steps/s unless noted",
             f"{'thr':>3} {'k':>2} {'floor/s':>8} {'amber':>8} {'ours':>7} {'peer':>7} "
             f"{'ours ns/d':>9} {'peer ns/d':>9} {'speedup':>7} {'goal':>5} {'met':>4} "
             f"{'ours/floor':>10} {'fused':>7} {'ours/fused':>10}"]
    for r in rows:
        lines.append(
            f"{r['threads']:>3} {r['k']:>2} {fmt(r['floor_calls_per_s'], '.1f'):>8} "
            f"{fmt(r['amber_steps_per_s'], '.0f'):>8} {fmt(r['ours_steps_per_s'], '.1f'):>7} "
            f"{fmt(r['peer_steps_per_s'], '.1f'):>7} {fmt(r['ours_ns_per_day'], '.2f'):>9} "
            f"{fmt(r['peer_ns_per_day'], '.2f'):>9} {fmt(r['speedup_ours_over_peer'], '.3f'):>7} "
            f"{fmt(r['goal'], '.1f'):>5} {'yes' if r['goal_met'] else 'NO':>4} "
            f"{fmt(r['ours_over_floor']):>10} {fmt(r['fused_steps_per_s'], '.1f'):>7} "
            f"{fmt(r['ours_over_fused']):>10}"
            + (f"  (other load {r['other_load']:.0%})" if r["other_load"] > 0.1 else ""))
    return "\n".join(lines)


def main(argv=None) -> int:
    args = _common.parse(_common.parser(__doc__, "torchcv.json", "k=2 only, short blocks"), argv)

    mode = "quick" if args.quick else "full"
    env, monitor = environment(), LoadMonitor()
    pdb = app.PDBFile(str(bundled(PDB)))
    positions = np.array(pdb.positions.value_in_unit(unit.nanometer))
    atomic_numbers = [atom.element.atomic_number for atom in pdb.topology.atoms()]
    rows, checks, cases_out = [], [], []
    with tempfile.TemporaryDirectory() as workdir:
        cases = [prepare(k, pdb, positions, atomic_numbers, Path(workdir)) for k in KS[mode]]
        for case in cases:
            checks += case["checks"]
            cases_out.append({key: case[key] for key in ("k", "cv_start", "params",
                                                          "bias_energy_kj_per_mol",
                                                          "max_bias_force_kj_per_mol_nm")})
        if all(c["ok"] for c in checks):  # a benchmark of different physics is worthless
            for threads in thread_counts(args.threads):
                thread_rows, thread_checks = run_threads(threads, cases, pdb, positions,
                                                         TIMING[mode])
                rows += thread_rows
                checks += thread_checks
    ok = all(c["ok"] for c in checks)
    load = monitor.result()
    block_seconds, blocks, warmup = TIMING[mode]
    write_json(args.out, {
        "benchmark": "torchcv",
        "quick": args.quick,
        "config": {
            "system": f"capped alanine ({PDB}, {len(atomic_numbers)} atoms), {FORCEFIELD}, "
                      "NoCutoff, HBonds constraints",
            "integrator": "LangevinMiddleIntegrator", "temperature_k": TEMPERATURE,
            "friction_per_ps": FRICTION, "timestep_fs": TIMESTEP_FS, "platform": "CPU",
            "cv_model": "TorchMD-Net 2.6.2 TorchMD_ET (random weights) -> sum over atoms -> "
                        "fixed random Linear(64, k); float64; Angstrom in "
                        "(export_model length_unit='angstrom')",
            "et": {**ET, "max_num_neighbors": len(atomic_numbers),
                   "max_z": max(atomic_numbers) + 1},
            "bias": "sum_i 0.5*kappa*(cv_i - c_i)^2, c_i = round(cv_i(start)) + offset",
            "kappa": KAPPA, "offset": OFFSET, "ks": list(KS[mode]),
            "ours": "openmm_geom.openmm.TorchCVForce(path, expression)",
            "peer": "openmm.CustomCVForce(expression) + one TorchForce per CV (custom_cv_force), "
                    "i < k",
            "floor": "exported ScriptModule: torch.autograd.grad(module(x), x, ones(k)), "
                     "Python loop",
            "fused": "one openmm-torch TorchForce of a scripted module computing the CVs "
                     "and the bias (the best a single pass can do; openmm-torch freezes it)",
            "amber": "the same System without the bias",
            "goal": "speedup ours/peer >= 0.8*k",
            "timing": {"block_seconds": block_seconds, "blocks": blocks, "warmup": warmup,
                       "statistic": "median rate over interleaved blocks"},
        },
        "environment": env,
        "load": load,
        "cases": cases_out,
        "rows": rows,
        "checks": checks,
        "ok": ok,
    })
    if rows:
        return _common.report(table(rows), rows, checks, ok, args.out)


if __name__ == "__main__":
    sys.exit(main())
