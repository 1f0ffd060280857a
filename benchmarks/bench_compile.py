"""Compiled models: eager vs ``torch.compile`` (inductor, C++ on CPU), side by side, as ratios.

Use cases:

* ``cg``: the batched CG simulator's force function, ``EnsembleForces(model)`` vs
  ``EnsembleForces(model, compile=True)`` (and ``dynamic=True``), on the model of
  ``bench_cg.py`` (CGSchNet, 5 members, production size, float32, capped alanine's 6 beads,
  with priors) at 100 replicas: one call = one forward and one backward of every member for
  every replica, i.e. one simulator step's force evaluation;
* ``pythonforce``: ``python_force(model)`` vs ``python_force(model, compile=True)`` in an OpenMM
  Context (CPU platform, Verlet, 1 fs), steps/s, on a small float64 potential: all-pairs
  Lennard-Jones + harmonic bonds in Angstrom/kcal/mol on the 22 atoms of the bundled capped
  alanine (a model where per-step Python and dispatch overhead dominate, as in openmm-ml's
  PythonForce path).

Compile time is measured twice, each in a fresh process (dynamo's tracing is never cached):
``cold`` with an empty ``TORCHINDUCTOR_CACHE_DIR`` and ``cached`` with the directory the cold
run filled (inductor's FX graph and AOTAutograd caches). ``dynamic=False`` and ``dynamic=True``
run in separate processes with separate caches (dynamo caches compiled code per code object, so
two compiled wrappers of one model in one process would share compilations); the PythonForce
case runs in the ``dynamic=False`` processes. The cg case also times the call on a new replica
count (101): a recompilation with ``dynamic=False``, none with ``dynamic=True``. Break-even: the number of
calls (simulator steps) after which the compile time is paid back,
``compile_seconds / (eager_seconds_per_call - compiled_seconds_per_call)``.

Correctness checks (before timing): compiled forces and energies equal eager ones to 1e-5
relative (float32 model) and 1e-9 (float64 potential). Timings are medians of interleaved blocks
(eager, compiled, ...) in the cached process; machine load is recorded ("other_load").

    .venv/bin/python benchmarks/bench_compile.py [--out benchmarks/results/compile.json]  # ~5-10 min
    .venv/bin/python benchmarks/bench_compile.py --quick   # no compilation: eager path + the
                                                            # opt-in objects built, ~5 s
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import openmm
import openmm.app as app
import openmm.unit as unit
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import (LoadMonitor, environment, fmt, measure_clean, parse, parser,  # noqa: E402
                     report, timed_interleaved, write_json)

from openmm_geom.data import bundled  # noqa: E402
from openmm_geom.openmm import python_force  # noqa: E402
from openmm_geom.simulate import EnsembleForces  # noqa: E402

REPLICAS = 100
NEW_REPLICAS = 101
CG_TOLERANCE = 1e-5  # max |dF| / max |F|, float32
PF_TOLERANCE = 1e-9  # float64
TIMING = {"full": (3, 15), "quick": (1, 2)}  # warm-up calls, timed calls (cg); x10 for pf steps
KJ_NM = unit.kilojoule_per_mole / unit.nanometer


class PairPotential(torch.nn.Module):
    """All-pairs LJ (sigma 3 A, epsilon 0.1 kcal/mol) + harmonic bonds i,i+1 (1.5 A), float64."""

    def __init__(self, n_atoms: int):
        super().__init__()
        i, j = torch.triu_indices(n_atoms, n_atoms, 2)
        self.register_buffer("i", i)
        self.register_buffer("j", j)

    def forward(self, positions, box=None):
        r = (positions[self.i] - positions[self.j]).norm(dim=-1)
        s6 = (3.0 / r) ** 6
        bonds = (positions[1:] - positions[:-1]).norm(dim=-1)
        return (0.4 * (s6 * s6 - s6)).sum() + (100.0 * (bonds - 1.5) ** 2).sum()


def cg_inputs():
    from bench_cg import build  # the same model and priors as bench_cg

    case = build("alanine")
    rng = np.random.default_rng(7)
    frames = case["positions"][rng.integers(0, len(case["positions"]), REPLICAS + 1)]
    return case["model"], torch.as_tensor(frames, dtype=torch.float64)


def alanine_positions() -> np.ndarray:
    pdb = app.PDBFile(str(bundled("alanine-dipeptide.pdb")))
    return np.asarray(pdb.positions.value_in_unit(unit.nanometer))


def pf_context(force, positions, threads: int):
    system = openmm.System()
    for _ in range(len(positions)):
        system.addParticle(12.0)
    system.addForce(force)
    context = openmm.Context(system, openmm.VerletIntegrator(0.001),
                             openmm.Platform.getPlatformByName("CPU"), {"Threads": str(threads)})
    context.setPositions(positions)
    return context


def energy_forces(context):
    state = context.getState(getEnergy=True, getForces=True)
    return (state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole),
            state.getForces(asNumpy=True).value_in_unit(KJ_NM))


def child(mode: str, variant: str, threads: int, timing: tuple) -> dict:
    """One process: compile one variant (cold or cached, per TORCHINDUCTOR_CACHE_DIR), check,
    time; the PythonForce case in the ``static`` process only. One variant per process: dynamo
    caches compiled code per code object (``CGSchNet.forward``), so two compiled wrappers of
    one model in one process would share compilations."""
    torch.set_num_threads(threads)
    warmup, repeats = timing
    out = {"cache_dir": os.environ.get("TORCHINDUCTOR_CACHE_DIR"), "threads": threads}
    compile_now = mode != "quick"
    # -- cg force function
    model, frames = cg_inputs()
    x = frames[:REPLICAS]
    eager = EnsembleForces(model)
    compiled = EnsembleForces(model, compile=True, dynamic=variant == "dynamic")
    want = eager(x)
    checks = []
    calls = {"eager": lambda: eager(x)}
    if compile_now:
        for name, fn in ((variant, compiled),):
            got = fn(x)
            out[f"cg_{name}_compile_seconds"] = fn.compile_seconds
            scale = want[0].abs().max().item()
            error = max((g - w).abs().max().item() / max(scale, w.abs().max().item())
                        for g, w in zip(got, want))
            checks.append({"check": f"cg {name} compiled == eager", "relative_error": error,
                           "tolerance": CG_TOLERANCE, "ok": bool(error <= CG_TOLERANCE)})
            calls[name] = (lambda fn=fn: fn(x))
        start = time.perf_counter()
        compiled(frames)  # a new replica count: static recompiles (then marked dynamic)
        out[f"cg_{variant}_recompile_seconds"] = time.perf_counter() - start
    names = list(calls)
    timings, load = measure_clean(lambda: timed_interleaved([calls[n] for n in names],
                                                            warmup, repeats))
    out["cg_other_load"] = load
    for name, (median, _, _) in zip(names, timings):
        out[f"cg_{name}_ms" if name != "eager" else f"cg_{variant}_eager_ms"] = median * 1e3
    out["checks"] = checks
    if variant != "static":
        return out
    # -- PythonForce bridge
    positions = alanine_positions()
    kwargs = dict(length_unit="angstrom", energy_unit="kcal/mol", periodic=False,
                  example_positions=positions)
    contexts = {"eager": pf_context(python_force(PairPotential(len(positions)), **kwargs),
                                    positions, threads)}
    reference = energy_forces(contexts["eager"])
    compiled_force = python_force(PairPotential(len(positions)), compile=True, **kwargs)
    openmm.XmlSerializer.serialize(compiled_force)  # pickles, compiled or not
    if compile_now:
        contexts["compiled"] = pf_context(compiled_force, positions, threads)
        start = time.perf_counter()
        got = energy_forces(contexts["compiled"])
        out["pf_compile_seconds"] = time.perf_counter() - start
        error = max(abs(got[0] - reference[0]) / abs(reference[0]),
                    np.abs(got[1] - reference[1]).max() / np.abs(reference[1]).max())
        checks.append({"check": "pythonforce compiled == eager", "relative_error": float(error),
                       "tolerance": PF_TOLERANCE, "ok": bool(error <= PF_TOLERANCE)})
    steps = 10
    names = list(contexts)
    timings, load = measure_clean(lambda: timed_interleaved(
        [(lambda c=contexts[n]: c.getIntegrator().step(steps)) for n in names], warmup, repeats))
    out["pf_other_load"] = load
    for name, (median, _, _) in zip(names, timings):
        out[f"pf_{name}_steps_per_s"] = steps / median
    out["checks"] = checks
    return out


def run_child(mode: str, variant: str, cache: Path, threads: int, timing: tuple) -> dict:
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache)}
    command = [sys.executable, __file__, "--child", mode, "--variant", variant,
               "--threads", str(threads),
               "--timing", ",".join(map(str, timing))] + (["--quick"] if mode == "quick" else [])
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    sys.stderr.write(done.stderr[-4000:])
    if done.returncode != 0:
        raise RuntimeError(f"{mode} child failed with exit {done.returncode}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def summarize(cold: dict, cached: dict) -> dict:
    row = {"replicas": REPLICAS, "threads": cached["threads"],
           "other_load": max(cached["cg_other_load"], cached["pf_other_load"],
                             cached.get("cg_other_load_dynamic", 0.0))}
    for name in ("static", "dynamic"):
        key = f"cg_{name}_ms"
        if key not in cached:
            continue
        eager_ms, compiled_ms = cached[f"cg_{name}_eager_ms"], cached[key]
        row[f"cg_{name}_speedup"] = eager_ms / compiled_ms
        for which, data in (("cold", cold), ("cached", cached)):
            seconds = data[f"cg_{name}_compile_seconds"]
            row[f"cg_{name}_compile_{which}_s"] = seconds
            gain = (eager_ms - compiled_ms) / 1e3
            row[f"cg_{name}_break_even_steps_{which}"] = seconds / gain if gain > 0 else None
    row["cg_eager_ms"] = cached["cg_static_eager_ms"]
    row["cg_eager_ms_dynamic_process"] = cached.get("cg_dynamic_eager_ms")
    row["cg_static_ms"] = cached.get("cg_static_ms")
    row["cg_dynamic_ms"] = cached.get("cg_dynamic_ms")
    for name in ("static", "dynamic"):
        for which, data in (("cold", cold), ("cached", cached)):
            row[f"cg_{name}_recompile_{which}_s"] = data.get(f"cg_{name}_recompile_seconds")
    row["pf_eager_steps_per_s"] = cached["pf_eager_steps_per_s"]
    if "pf_compiled_steps_per_s" in cached:
        row["pf_compiled_steps_per_s"] = cached["pf_compiled_steps_per_s"]
        row["pf_speedup"] = cached["pf_compiled_steps_per_s"] / cached["pf_eager_steps_per_s"]
        gain = 1 / cached["pf_eager_steps_per_s"] - 1 / cached["pf_compiled_steps_per_s"]
        for which, data in (("cold", cold), ("cached", cached)):
            row[f"pf_compile_{which}_s"] = data["pf_compile_seconds"]
            row[f"pf_break_even_steps_{which}"] = (data["pf_compile_seconds"] / gain
                                                   if gain > 0 else None)
    return row


def table(rows: list) -> str:
    lines = ["use case      threads  eager        compiled     speedup  compile cold/cached s  "
             "break-even steps (cold/cached)"]
    for r in rows:
        flag = "  (!load)" if r["other_load"] > 0.1 else ""
        for name in ("static", "dynamic"):
            if f"cg_{name}_speedup" in r:
                lines.append(
                    f"cg {name:<9} {r['threads']:>7}  "
                    f"{fmt(r['cg_eager_ms' if name == 'static' else 'cg_eager_ms_dynamic_process'], '.1f'):>7} ms   "
                    f"{fmt(r[f'cg_{name}_ms'], '.1f'):>7} ms   {r[f'cg_{name}_speedup']:>6.2f}x  "
                    f"{fmt(r[f'cg_{name}_compile_cold_s'], '.1f'):>8} / "
                    f"{fmt(r[f'cg_{name}_compile_cached_s'], '.1f'):<8}     "
                    f"{fmt(r[f'cg_{name}_break_even_steps_cold'], '.0f')} / "
                    f"{fmt(r[f'cg_{name}_break_even_steps_cached'], '.0f')}{flag}")
        if "cg_static_speedup" not in r:  # quick: eager only
            lines.append(f"cg eager      {r['threads']:>7}  {r['cg_eager_ms']:>7.1f} ms   (not compiled)")
            lines.append(f"pythonforce   {r['threads']:>7}  {r['pf_eager_steps_per_s']:>7.0f} st/s "
                         "(not compiled)")
        if "pf_speedup" in r:
            lines.append(
                f"pythonforce   {r['threads']:>7}  {r['pf_eager_steps_per_s']:>7.0f} st/s "
                f"{r['pf_compiled_steps_per_s']:>7.0f} st/s {r['pf_speedup']:>6.2f}x  "
                f"{fmt(r['pf_compile_cold_s'], '.1f'):>8} / {fmt(r['pf_compile_cached_s'], '.1f'):<8}"
                f"     {fmt(r['pf_break_even_steps_cold'], '.0f')} / "
                f"{fmt(r['pf_break_even_steps_cached'], '.0f')}{flag}")
        for name in ("static", "dynamic"):
            if r.get(f"cg_{name}_recompile_cold_s") is not None:
                lines.append(f"cg {name}: a new replica count (101) takes "
                             f"{r[f'cg_{name}_recompile_cold_s']:.1f} s cold, "
                             f"{r[f'cg_{name}_recompile_cached_s']:.1f} s cached")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = parser(__doc__, "compile.json", "no compilation: eager timings, opt-in objects built")
    p.add_argument("--child", choices=["cold", "cached", "quick"], help=argparse_hidden())
    p.add_argument("--timing", help=argparse_hidden())
    p.add_argument("--variant", default="static", help=argparse_hidden())
    args = parse(p, argv)
    if args.child:
        timing = tuple(int(v) for v in args.timing.split(","))
        print(json.dumps(child(args.child, args.variant, int(args.threads), timing)))
        return 0
    monitor = LoadMonitor()
    timing = TIMING["quick" if args.quick else "full"]
    threads_list = [int(t) for t in args.threads.split(",")] if args.threads else [1]
    rows, checks = [], []
    for threads in threads_list:
        cold, cached = {"checks": []}, {"checks": []}
        for variant in (("static",) if args.quick else ("static", "dynamic")):
            with tempfile.TemporaryDirectory(prefix="inductor-cache-") as cache:
                for mode, into in ((("quick", cold),) if args.quick
                                   else (("cold", cold), ("cached", cached))):
                    data = run_child(mode, variant, Path(cache), threads, timing)
                    into["checks"] += data.pop("checks")
                    if variant == "dynamic":
                        data["cg_other_load_dynamic"] = data.pop("cg_other_load")
                    into.update(data)
        if args.quick:
            cached = cold
        checks += cold["checks"] + ([] if args.quick else cached["checks"])
        rows.append(summarize(cold, cached))
    ok = all(c["ok"] for c in checks)
    write_json(args.out, {"benchmark": "compile", "quick": args.quick, "ok": ok,
                          "environment": environment(), "load": monitor.result(),
                          "torch": torch.__version__, "rows": rows, "checks": checks})
    return report(table(rows), rows, checks, ok, args.out)


def argparse_hidden():
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    sys.exit(main())
