"""Path-signature benchmark: our op (native kernel) vs pysiglib 4.0, memory, and the reporter's
cost in OpenMM.

(1) Paths per second of ``openmm_geom.ops.signature.signature`` / ``logsignature`` (the
    native kernel, their default) and of pysiglib's ``sig`` / ``log_sig`` (Lyndon-word
    coordinates, ``method=1``, the same basis as ours), forward and forward + backward (a
    random linear functional of the output, ``.backward()``; pysiglib through its
    ``torch_api`` autograd functions), on the same random walks: batch 256, float64, length
    1,000 and 10,000, channels 8 and 16, depth 2-4, at each thread count (default 1 and the
    core count). torch runs with ``torch.set_num_threads(T)``, pysiglib with ``n_jobs=T``.
    Goal per row (the native-kernel issue): forward <= 1.0x and forward + backward <= 1.2x
    pysiglib's time. Each timing is
    the median of a few interleaved calls (ours, pysiglib, ours, ...) after a warm-up; calls
    longer than a few seconds are timed once. Before timing, every configuration's outputs
    (and gradients) are compared (relative 1e-8); a mismatch fails the script.
    A configuration whose predicted call time (the 1,000-step time x 10) exceeds
    ``--max-call-seconds`` is not run at 10,000 steps and is recorded as skipped with the
    prediction; a configuration our op refuses for memory is recorded with its message.
(2) Memory: peak resident memory added by one forward + backward of 256 paths x 10,000
    points x 8 channels at depth 4 (float64), in a fresh process, against the goal of 1 GB.
(3) Reporter overhead: capped alanine (amber14, vacuum, 1 fs Langevin, OpenMM CPU platform)
    stepped with no reporter, with ``SignatureReporter`` (backbone N/CA/C, depth 2, a point
    every 10 steps, 50-point windows) and with the same reporter sampling every step (the worst
    case), in turn; ns/day and the slow-down ratio.

    .venv/bin/python benchmarks/bench_signature.py [--out benchmarks/results/signature.json]
    .venv/bin/python benchmarks/bench_signature.py --quick     # small shapes, seconds
"""
from __future__ import annotations

import concurrent.futures
import math
import multiprocessing
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
from _common import (LoadMonitor, environment, fmt, measure_clean, timed_interleaved,  # noqa: E402
                     write_json)

BATCH = 256
FORWARD_GOAL, BACKWARD_GOAL, MEMORY_GOAL_BYTES = 1.0, 1.2, 2 ** 30
FULL_SHAPES = {"lengths": (1000, 10000), "channels": (8, 16), "depths": (2, 3, 4)}
QUICK_SHAPES = {"lengths": (50, 200), "channels": (4,), "depths": (2, 3)}
QUICK_BATCH = 16
AGREEMENT = 1e-8  # relative, float64
SEED = 20261129


def random_walk(batch: int, length: int, channels: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(SEED + 31 * length + channels)
    steps = torch.randn(batch, length, channels, generator=generator, dtype=torch.float64)
    return torch.cumsum(steps, dim=1) / math.sqrt(length)


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


def implementations(kind: str, depth: int, threads: int):
    """(ours, pysiglib) callables path -> output for ``kind`` in {signature, logsignature}."""
    import pysiglib.torch_api as siglib_torch

    from openmm_geom.ops import signature as ours

    if kind == "signature":
        return (lambda p: ours.signature(p, depth),
                lambda p: siglib_torch.sig(p, depth, n_jobs=threads))
    return (lambda p: ours.logsignature(p, depth),
            lambda p: siglib_torch.log_sig(p, depth, method=1, n_jobs=threads))


def forward_backward(fn, path: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    leaf = path.detach().requires_grad_()
    (fn(leaf) * weights).sum().backward()
    return leaf.grad


def measure_config(kind: str, length: int, channels: int, depth: int, batch: int, threads: int,
                   quick: bool) -> tuple[dict, list]:
    """Check agreement, then time forward and forward+backward of both implementations."""
    from openmm_geom.ops import signature as ours_module

    import pysiglib

    row = {"kind": kind, "length": length, "channels": channels, "depth": depth,
           "batch": batch, "threads": threads, "skipped": None}
    if kind == "logsignature":
        pysiglib.prepare_log_sig(channels, depth, method=1)  # one-off table, not timed
    ours, theirs = implementations(kind, depth, threads)
    path = random_walk(batch, length, channels)
    try:
        with torch.no_grad():
            out_ours = ours(path)
    except ValueError as error:  # our memory refusal: record it, it is a result
        row["skipped"] = f"refused by our op: {error}"
        return row, []
    out_theirs = theirs(path)
    weights = torch.randn(out_ours.shape, dtype=torch.float64,
                          generator=torch.Generator().manual_seed(SEED))
    checks = [{"check": f"{kind} forward", "length": length, "channels": channels,
               "depth": depth, "relative_error": _relative(out_ours, out_theirs)}]
    try:
        grad_ours = forward_backward(ours, path, weights)
    except ValueError as error:
        row["skipped"] = f"backward refused by our op: {error}"
        checks[0]["ok"] = checks[0]["relative_error"] <= AGREEMENT
        return row, checks
    grad_theirs = forward_backward(theirs, path, weights)
    checks.append({"check": f"{kind} gradient", "length": length, "channels": channels,
                   "depth": depth, "relative_error": _relative(grad_ours, grad_theirs)})
    for c in checks:
        c["ok"] = c["relative_error"] <= AGREEMENT

    def once(seconds: float) -> tuple[int, int]:
        return (0, 1) if seconds > 3.0 else (1, 3) if not quick else (1, 2)

    with torch.no_grad():
        probe = timed_interleaved([lambda: ours(path)], 0, 1)[0][0]
    warmup, repeats = once(probe)
    with torch.no_grad():
        ((f_ours, _, _), (f_theirs, _, _)), forward_load = measure_clean(
            lambda: timed_interleaved([lambda: ours(path), lambda: theirs(path)],
                                      warmup, repeats))
    ((b_ours, _, _), (b_theirs, _, _)), backward_load = measure_clean(
        lambda: timed_interleaved([lambda: forward_backward(ours, path, weights),
                                   lambda: forward_backward(theirs, path, weights)],
                                  warmup, repeats))
    row.update(
        ours_forward_s=f_ours, pysiglib_forward_s=f_theirs,
        ours_backward_s=b_ours, pysiglib_backward_s=b_theirs,
        ours_forward_paths_per_s=batch / f_ours, pysiglib_forward_paths_per_s=batch / f_theirs,
        ours_backward_paths_per_s=batch / b_ours,
        pysiglib_backward_paths_per_s=batch / b_theirs,
        forward_ours_over_pysiglib=f_ours / f_theirs,
        backward_ours_over_pysiglib=b_ours / b_theirs,
        repeats=repeats, output_channels=int(out_ours.shape[-1]),
        estimated_bytes_forward=ours_module.signature_memory_bytes(batch, length, channels, depth,
                                                                   8, native=True),
        estimated_bytes_backward=ours_module.signature_memory_bytes(batch, length, channels,
                                                                    depth, 8, True, native=True),
        other_load=max(forward_load, backward_load))
    row["goal_met"] = (row["forward_ours_over_pysiglib"] <= FORWARD_GOAL
                       and row["backward_ours_over_pysiglib"] <= BACKWARD_GOAL)
    return row, checks


def bench_ops(shapes: dict, batch: int, threads: int, quick: bool,
              max_call_seconds: float) -> tuple[list, list]:
    torch.set_num_threads(threads)
    rows, checks = [], []
    short = min(shapes["lengths"])
    for kind in ("signature", "logsignature"):
        for channels in shapes["channels"]:
            for depth in shapes["depths"]:
                base = None
                for length in shapes["lengths"]:
                    if base is not None and base.get("ours_backward_s") is not None:
                        predicted = max(base["ours_backward_s"], base["pysiglib_backward_s"]) \
                            * length / short
                        if predicted > max_call_seconds:
                            rows.append({"kind": kind, "length": length, "channels": channels,
                                         "depth": depth, "batch": batch, "threads": threads,
                                         "skipped": f"predicted {predicted:.0f} s per backward "
                                                    f"call > --max-call-seconds "
                                                    f"{max_call_seconds:g}"})
                            print(f"  {kind} L={length} C={channels} N={depth}: skipped "
                                  f"(predicted {predicted:.0f} s per call)", flush=True)
                            continue
                    row, row_checks = measure_config(kind, length, channels, depth, batch,
                                                     threads, quick)
                    print(f"  {kind} L={length} C={channels} N={depth}: "
                          + (row["skipped"] or
                             f"fwd {row['forward_ours_over_pysiglib']:.2f}x, "
                             f"fwd+bwd {row['backward_ours_over_pysiglib']:.2f}x pysiglib time"),
                          flush=True)
                    rows.append(row)
                    checks += row_checks
                    if length == short:
                        base = row
    return rows, checks


def bench_reporter(steps: int, repeats: int, threads: int) -> dict:
    """ns/day of capped alanine without and with SignatureReporter (interleaved runs)."""
    import openmm
    import openmm.app as app
    import openmm.unit as unit

    from openmm_geom.data import bundled
    from openmm_geom.openmm import SignatureReporter

    torch.set_num_threads(threads)
    pdb = app.PDBFile(str(bundled("alanine-dipeptide.pdb")))
    system = app.ForceField("amber14-all.xml").createSystem(
        pdb.topology, nonbondedMethod=app.NoCutoff, constraints=None)
    backbone = [a.index for a in pdb.topology.atoms() if a.name in ("N", "CA", "C")]
    integrator = openmm.LangevinMiddleIntegrator(300 * unit.kelvin, 1 / unit.picosecond,
                                                 1 * unit.femtosecond)
    integrator.setRandomNumberSeed(3)
    platform = openmm.Platform.getPlatformByName("CPU")
    simulation = app.Simulation(pdb.topology, system, integrator, platform,
                                {"Threads": str(threads)})
    simulation.context.setPositions(pdb.positions)
    simulation.minimizeEnergy()
    simulation.context.setVelocitiesToTemperature(300 * unit.kelvin, 3)
    directory = Path(tempfile.mkdtemp(prefix="bench_signature_"))

    def run(sample: int | None):
        def go():
            simulation.reporters.clear()
            reporter = None
            if sample is not None:
                reporter = SignatureReporter(str(directory / f"s{sample}.csv"), sample, depth=2,
                                             atoms=backbone, window=50)
                simulation.reporters.append(reporter)
            simulation.step(steps)
            if reporter is not None:
                reporter.close()
            simulation.reporters.clear()
        return go

    ((bare, _, _), (every10, _, _), (every1, _, _)), load = measure_clean(
        lambda: timed_interleaved([run(None), run(10), run(1)], 1, repeats))
    per_day = 86400.0 * steps * 1e-6  # ns simulated per second of wall time, times a day

    rows = []
    for label, seconds in (("no reporter", bare), ("SignatureReporter every 10 steps", every10),
                           ("SignatureReporter every step", every1)):
        rows.append({"setting": label, "seconds": seconds, "ns_per_day": per_day / seconds,
                     "slowdown": seconds / bare})
    return {"system": "capped alanine, amber14, vacuum, 22 atoms, 1 fs, CPU platform",
            "goal": "slowdown < 1.05 with a point every 10 steps",
            "goal_met": rows[1]["slowdown"] < 1.05,
            "path": f"backbone N/CA/C coordinates ({3 * len(backbone)} channels)", "depth": 2,
            "window": 50,
            "steps": steps, "repeats": repeats, "threads": threads, "rows": rows,
            "other_load": load}


def _peak_memory(batch: int, length: int, channels: int, depth: int, queue) -> None:
    """In a fresh process: the peak RSS one forward + backward adds to the process (the path
    itself is allocated before)."""
    from openmm_geom.ops import signature as ours
    from openmm_geom.threads import memory_status_bytes

    torch.set_num_threads(1)
    path = random_walk(batch, length, channels).requires_grad_()
    ours.signature(random_walk(2, 10, channels), depth)  # load everything once
    # the peak from here on: reset the kernel's high-water mark (VmHWM; not getrusage, whose
    # ru_maxrss Linux carries over from the parent into a spawned child)
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")
    before = memory_status_bytes("VmRSS")
    ours.signature(path, depth).sum().backward()
    after = memory_status_bytes("VmHWM")
    queue.put({"peak_added_bytes": after - before,
               "estimated_bytes": ours.signature_memory_bytes(batch, length, channels, depth, 8,
                                                              True, native=True),
               "path_bytes": path.numel() * 8})


def bench_memory(quick: bool) -> dict:
    import multiprocessing

    batch, length, channels, depth = (16, 500, 4, 3) if quick else (256, 10000, 8, 4)
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_peak_memory, args=(batch, length, channels, depth, queue))
    process.start()
    result = queue.get()
    process.join()
    return {"batch": batch, "length": length, "channels": channels, "depth": depth,
            "dtype": "float64", **result, "goal_bytes": MEMORY_GOAL_BYTES,
            "goal_met": result["peak_added_bytes"] < MEMORY_GOAL_BYTES}


def table(rows: list, reporter: dict, memory: dict) -> str:
    lines = [f"signature ops, float64, batch {rows[0]['batch'] if rows else '-'}; paths/s "
             "(higher is better); ratio = our time / pysiglib time (< 1: we are faster)",
             f"goal: forward ratio <= {FORWARD_GOAL}, forward+backward ratio <= {BACKWARD_GOAL}",
             f"{'kind':<13}{'T':>2}{'L':>6}{'C':>4}{'N':>3} {'ours fwd':>10} {'siglib fwd':>11} "
             f"{'ratio':>6} {'ours f+b':>10} {'siglib f+b':>11} {'ratio':>6}"]
    for r in rows:
        head = f"{r['kind']:<13}{r['threads']:>2}{r['length']:>6}{r['channels']:>4}{r['depth']:>3} "
        if r["skipped"]:
            lines.append(head + r["skipped"])
            continue
        lines.append(head + f"{fmt(r['ours_forward_paths_per_s'], '.1f'):>10} "
                     f"{fmt(r['pysiglib_forward_paths_per_s'], '.1f'):>11} "
                     f"{fmt(r['forward_ours_over_pysiglib']):>6} "
                     f"{fmt(r['ours_backward_paths_per_s'], '.1f'):>10} "
                     f"{fmt(r['pysiglib_backward_paths_per_s'], '.1f'):>11} "
                     f"{fmt(r['backward_ours_over_pysiglib']):>6}"
                     + ("" if r["goal_met"] else "  goal not met")
                     + (f"  (other load {r['other_load']:.0%})" if r["other_load"] > 0.1 else ""))
    lines += ["", f"memory: {memory['batch']} x {memory['length']} x {memory['channels']} at depth "
                  f"{memory['depth']}, forward + backward: peak +{memory['peak_added_bytes'] / 2 ** 20:.0f}"
                  f" MiB (estimate {memory['estimated_bytes'] / 2 ** 20:.0f} MiB, goal < "
                  f"{memory['goal_bytes'] / 2 ** 20:.0f} MiB)"]
    lines += ["", f"reporter overhead: {reporter['system']}, {reporter['steps']} steps, "
                  f"{reporter['threads']} thread(s)"]
    for r in reporter["rows"]:
        lines.append(f"  {r['setting']:<34} {r['ns_per_day']:>8.1f} ns/day  x{r['slowdown']:.3f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    options = _common.parser(__doc__, "signature.json", "small shapes, a few seconds")
    options.add_argument("--max-call-seconds", type=float, default=400.0,
                         help="skip 10,000-step configurations predicted to take longer per call")
    options.add_argument("--lengths", help="comma-separated path lengths (default 1000,10000)")
    args = _common.parse(options, argv)
    thread_list = _common.thread_counts(args.threads)
    shapes, batch = (QUICK_SHAPES, QUICK_BATCH) if args.quick else (FULL_SHAPES, BATCH)
    if args.lengths:
        shapes = dict(shapes, lengths=tuple(int(n) for n in args.lengths.split(",")))
    env, monitor = environment(), LoadMonitor()
    try:
        from importlib import metadata
        env["pysiglib"] = metadata.version("pysiglib")
    except Exception:  # noqa: BLE001 - recorded, then the import below fails loudly
        env["pysiglib"] = None
    rows, checks = [], []
    for threads in thread_list:
        more_rows, more_checks = bench_ops(shapes, batch, threads, args.quick,
                                           args.max_call_seconds)
        rows, checks = rows + more_rows, checks + more_checks
    memory = bench_memory(args.quick)
    # in a fresh process: the kernels' and pysiglib's thread pools and allocations from the
    # rows above must not weigh on a 1-thread OpenMM run
    with concurrent.futures.ProcessPoolExecutor(
            1, mp_context=multiprocessing.get_context("spawn")) as pool:
        reporter = pool.submit(bench_reporter, 500 if args.quick else 20000,
                               1 if args.quick else 3, 1).result()
    ok = bool(checks) and all(c["ok"] for c in checks)
    measured = [r for r in rows if not r["skipped"]]
    goal = {"rows_met": sum(bool(r.get("goal_met")) for r in measured), "rows": len(measured),
            "worst_forward_ratio": max((r["forward_ours_over_pysiglib"] for r in measured),
                                       default=None),
            "worst_backward_ratio": max((r["backward_ours_over_pysiglib"] for r in measured),
                                        default=None),
            "memory_met": memory["goal_met"], "reporter_met": reporter["goal_met"]}
    write_json(args.out, {
        "benchmark": "signature",
        "quick": args.quick,
        "config": {"batch": batch, "dtype": "float64", "shapes": shapes, "threads": thread_list,
                   "pysiglib_log_sig_method": 1, "agreement_tolerance": AGREEMENT,
                   "max_call_seconds": args.max_call_seconds, "seed": SEED,
                   "timing": "median of interleaved calls after warm-up; one call if > 3 s"},
        "environment": env,
        "load": monitor.result(),
        "rows": rows,
        "memory": memory,
        "reporter": reporter,
        "goal": goal,
        "checks": checks,
        "ok": ok,
    })
    return _common.report(table(rows, reporter, memory), measured + [reporter], checks, ok,
                          args.out)


if __name__ == "__main__":
    sys.exit(main())
