"""Neighbour-list benchmark: our wrapper vs raw vesin-torch vs torchmd-net, side by side.

Compared, on the same random configuration (uniform positions, float64, cubic periodic box at
liquid-water-like density, 100 atoms/nm^3, cutoff 0.5 nm, half lists):

(a) ``openmm_geom.ops.NeighborPairs(cutoff, n_threads=T)(positions, box)``, the form models
    hold and call each step (a persistent vesin searcher, built once like (b)'s): pairs,
    vectors, distances (vesin's search plus checks and our native pair_geometry op, exact
    first and second derivatives); the functional ``neighbor_pairs(positions, cutoff, box)``,
    which builds a searcher per call, is timed too ("functional" columns);
(b) raw ``vesin_torch.NeighborList(cutoff, full_list=False, n_threads=T).compute(points, box,
    True, quantities="PSD")``: pairs, shifts and vectors, the same information as (a); the
    NeighborList object is built once, outside the timed call;
(c) torchmd-net's ``OptimizedDistance`` (half list, no self loops). On CPU it always runs the
    pure-torch O(N^2) brute force whatever ``strategy`` says, so it is run at 1k (median of 3)
    and once at 10k (~20-45 s, ~8 GB); 100k would need ~5e9 candidate pairs (hundreds of GB).

Each timing is the median of several calls after warm-up ((a) and (b) called in turn), at
T = 1 thread and at the core count (torch.set_num_threads(T), n_threads=T for vesin and the
wrapper); a measurement during which other processes took > 10% of the CPUs is retried and
its remaining "other_load" recorded. Correctness is checked
before anything is reported: (a) and (b) must find the same pair set with the same distances
(and torchmd-net too, wherever it runs); otherwise the script exits with status 1.

Reported per N: ms per call, wrapper overhead ratio (a)/(b), and the scaling exponent (slope
of log time vs log N) of (a) and (b).

    .venv/bin/python benchmarks/bench_neighbors.py [--out benchmarks/results/neighbors.json]
    .venv/bin/python benchmarks/bench_neighbors.py --quick      # N = 1000, 3000; a few seconds
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
from _common import (LoadMonitor, environment, fmt, measure_clean,  # noqa: E402
                     thread_counts, timed, timed_interleaved, write_json)

DENSITY = 100.0  # atoms / nm^3, roughly liquid water (33.4 molecules/nm^3 x 3 atoms)
CUTOFF = 0.5  # nm
SEED = 20261101
# N -> (warm-up calls, timed calls)
FULL = {1000: (3, 21), 10000: (2, 9), 100000: (1, 5)}
QUICK = {1000: (2, 7), 3000: (1, 5)}
TORCHMDNET_MAX_N = 10000
DISTANCE_TOLERANCE = 1e-10  # nm


def configuration(n: int):
    """Random uniform positions (float64) in a cubic periodic box at ``DENSITY``."""
    length = (n / DENSITY) ** (1.0 / 3.0)
    generator = torch.Generator().manual_seed(SEED + n)
    positions = torch.rand(n, 3, dtype=torch.float64, generator=generator) * length
    return positions, torch.eye(3, dtype=torch.float64) * length


def pair_table(pairs: torch.Tensor, distances: torch.Tensor, n: int):
    """(sorted unordered-pair keys, distances in that order) for comparing two lists."""
    keys = torch.minimum(pairs[0], pairs[1]) * n + torch.maximum(pairs[0], pairs[1])
    keys, order = torch.sort(keys)
    return keys, distances[order]


def compare(name: str, reference, other, n: int, threads: int) -> dict:
    """Check that two (keys, distances) tables hold the same pairs at the same distances."""
    (keys_a, dist_a), (keys_b, dist_b) = reference, other
    same_count = keys_a.numel() == keys_b.numel()
    same_pairs = same_count and bool(torch.equal(keys_a, keys_b))
    max_dd = float((dist_a - dist_b).abs().max()) if same_pairs and keys_a.numel() else None
    ok = same_pairs and (max_dd is None or max_dd <= DISTANCE_TOLERANCE)
    return {"n_atoms": n, "threads": threads, "check": name, "ok": ok,
            "pairs": [keys_a.numel(), keys_b.numel()], "same_pair_set": same_pairs,
            "max_distance_difference_nm": max_dd}


def slope(ns, times) -> float | None:
    """Least-squares slope of log(time) vs log(N)."""
    if len(ns) < 2:
        return None
    return float(np.polyfit(np.log(ns), np.log(times), 1)[0])


def run(sizes: dict, threads: int, torchmdnet_max_n: int) -> tuple[list, list]:
    """Time (a), (b) and, up to ``torchmdnet_max_n`` atoms, (c); return (rows, checks)."""
    from torchmdnet.models.utils import OptimizedDistance
    from vesin_torch import NeighborList

    from openmm_geom.ops import NeighborPairs, neighbor_pairs

    torch.set_num_threads(threads)
    vesin = NeighborList(cutoff=CUTOFF, full_list=False, n_threads=threads)
    wrapper = NeighborPairs(CUTOFF, n_threads=threads)
    rows, checks = [], []
    for n, (warmup, repeats) in sizes.items():
        positions, box = configuration(n)

        ((ours_s, ours_min, (p_a, _, d_a)), (raw_s, raw_min, (p_b, _, v_b)),
         (func_s, _, _)), load = \
            measure_clean(lambda: timed_interleaved(
                [lambda: wrapper(positions, box),
                 lambda: vesin.compute(positions, box, True, quantities="PSD"),
                 lambda: neighbor_pairs(positions, CUTOFF, box, n_threads=threads)],
                warmup, repeats))
        ours = pair_table(p_a, d_a, n)
        checks.append(compare("ours == vesin", ours,
                              pair_table(p_b.t(), torch.linalg.vector_norm(v_b, dim=1), n),
                              n, threads))
        row = {"n_atoms": n, "box_nm": float(box[0, 0]), "pairs": int(p_a.shape[1]),
               "repeats": repeats, "ours_ms": 1e3 * ours_s, "ours_min_ms": 1e3 * ours_min,
               "vesin_ms": 1e3 * raw_s, "vesin_min_ms": 1e3 * raw_min,
               "overhead_ratio": ours_s / raw_s, "other_load": load,
               "functional_ms": 1e3 * func_s, "functional_over_vesin": func_s / raw_s,
               "torchmdnet_ms": None, "torchmdnet_note": None}
        if n > TORCHMDNET_MAX_N:
            row["torchmdnet_note"] = (
                "skipped: on CPU OptimizedDistance is an O(N^2) pure-torch brute force "
                f"({n * (n - 1) // 2:.2g} candidate pairs, far beyond memory; ~20-45 s "
                "and ~8 GB already at 10k)")
        elif n > torchmdnet_max_n:
            row["torchmdnet_note"] = "skipped (--quick or --no-torchmdnet)"
        else:
            search = OptimizedDistance(
                cutoff_upper=CUTOFF, max_num_pairs=-64, strategy="brute", box=box, loop=False,
                include_transpose=False, resize_to_fit=True, return_vecs=True)
            # Cheap at 1k: median of 3 after a warm-up; at 10k a single call.
            small = n <= 1000
            (tmd_s, _, (p_c, d_c, _)), tmd_load = measure_clean(
                lambda: timed(lambda: search(positions), 1 if small else 0, 3 if small else 1),
                retries=2 if small else 0)
            row["torchmdnet_ms"] = 1e3 * tmd_s
            row["torchmdnet_other_load"] = tmd_load
            row["torchmdnet_note"] = (("median of 3" if small else "single call")
                                      + "; strategy 'brute' ('cell' runs the same CPU code)")
            checks.append(compare("ours == torchmd-net", ours, pair_table(p_c, d_c, n),
                                  n, threads))
        rows.append(row)
    return rows, checks


def table(runs: list) -> str:
    lines = []
    for block in runs:
        exponents = block["scaling_exponent"]
        lines.append(f"neighbour pairs, cutoff {CUTOFF} nm, {DENSITY:g} atoms/nm^3, float64, "
                     f"{block['threads']} thread(s); times in ms (median)")
        lines.append(f"{'N':>8} {'pairs':>9} {'ours':>9} {'vesin':>9} {'ours/vesin':>10} "
                     f"{'torchmd-net':>12} {'functional/vesin':>17}")
        for r in block["rows"]:
            lines.append(f"{r['n_atoms']:>8} {r['pairs']:>9} {fmt(r['ours_ms']):>9} "
                         f"{fmt(r['vesin_ms']):>9} {fmt(r['overhead_ratio']):>10} "
                         f"{fmt(r['torchmdnet_ms'], '.1f'):>12} "
                         f"{fmt(r['functional_over_vesin']):>17}"
                         + (f"  (other load {r['other_load']:.0%})" if r["other_load"] > 0.1
                            else ""))
        lines.append(f"{'slope':>8} {'':>9} {fmt(exponents['ours']):>9} "
                     f"{fmt(exponents['vesin']):>9}   (d log t / d log N)")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    options = _common.parser(__doc__, "neighbors.json", "N = 1000, 3000, few repeats")
    options.add_argument("--no-torchmdnet", action="store_true",
                         help="skip torchmd-net (its 10k call takes 20-45 s)")
    args = _common.parse(options, argv)

    sizes = QUICK if args.quick else FULL
    env, monitor = environment(), LoadMonitor()
    runs, checks = [], []
    for threads in thread_counts(args.threads):
        rows, run_checks = run(sizes, threads, 0 if args.no_torchmdnet
                               else 1000 if args.quick else TORCHMDNET_MAX_N)
        ns = [r["n_atoms"] for r in rows]
        runs.append({"threads": threads, "rows": rows, "scaling_exponent": {
            "ours": slope(ns, [r["ours_ms"] for r in rows]),
            "vesin": slope(ns, [r["vesin_ms"] for r in rows])}})
        checks += run_checks
    ok = all(c["ok"] for c in checks)
    load = monitor.result()
    write_json(args.out, {
        "benchmark": "neighbors",
        "quick": args.quick,
        "config": {"density_atoms_per_nm3": DENSITY, "cutoff_nm": CUTOFF, "dtype": "float64",
                   "box": "cubic, periodic", "positions": "uniform random", "seed": SEED,
                   "half_list": True, "timing": "median of repeats after warm-up",
                   "warmup_repeats": {str(n): list(v) for n, v in sizes.items()}},
        "environment": env,
        "load": load,
        "runs": runs,
        "checks": checks,
        "ok": ok,
    })
    return _common.report(table(runs), [r for run in runs for r in run["rows"]], checks, ok,
                          args.out)


if __name__ == "__main__":
    sys.exit(main())
