"""TorchCVForce backends: TorchScript vs AOTInductor package, steps/s of biased capped alanine.

The system, integrator, platform and bias are ``bench_torchcv.py``'s (capped alanine, amber14,
NoCutoff, HBonds, LangevinMiddle 300 K 2 fs, CPU platform; ``sum_i 0.5*kappa*(cv_i - c_i)^2``
with kappa = 10 and c_i = round(cv_i(start)) + 1). Three CVs, each exported twice from the same
module: ``export_model(..., kind="cv")`` (TorchScript) and ``export_model(..., format="aoti")``:

* ``dihedrals``: phi/psi (``openmm_geom.models.Dihedrals``, k = 2), the smallest CV;
* ``mlp``: the 231 pair distances of the 22 atoms through a float64 MLP 231-128-128-2 (tanh,
  random weights, fixed seed), a descriptor network of moderate size;
* ``geom2vec``: the CV ``cv explore``/``cv reproduce`` export by default (TorchMD-ET backbone
  with 64 channels, 3 layers, 32 RBFs, 8 heads, cutoff 0.5 nm on the 10 heavy atoms, one token
  per atom plus the global heavy-atom distances, pool mixer, VAMP head, k = 2; random weights,
  float64). Its package runs every atom pair instead of the neighbour search (fixed shapes).

Before timing, the bias's energy and forces (force group 1) of both backends are compared on
the Reference platform (rel 1e-10). Rates are medians over interleaved timed blocks (amber
alone, TorchScript, AOTInductor) after warm-up, measurements during which other processes took
> 10% of the CPUs retried (bench_torchcv's protocol). Reported side by side: steps/s, the bias's
own cost per step (1/rate - 1/amber rate, microseconds) and the ratios AOTI/TorchScript of both.
The packaging (compile) time of each package is recorded, cold or cached as inductor's cache
happens to be (``cache`` says which was measured first in this process).

Not part of ``run_all.py`` (like ``aoti_probe.py``): packaging compiles C++ for one to two
minutes with a cold inductor cache, which the benchmarks' smoke test would pay every run.

    .venv/bin/python benchmarks/bench_torchcv_aoti.py [--out benchmarks/results/torchcv_aoti.json]
    .venv/bin/python benchmarks/bench_torchcv_aoti.py --quick    # short blocks
"""
from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import openmm.app as app
import openmm.unit as unit
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
from _common import LoadMonitor, environment, fmt, measure_clean, thread_counts, write_json  # noqa: E402
from bench_bridge import rates  # noqa: E402  (interleaved block timing)
from bench_torchcv import (BIAS_GROUP, OFFSET, PDB, agreement, energy_forces,  # noqa: E402
                           expression, make_context, ns_per_day_per_step_per_s, parameters)

import openmm_geom  # noqa: E402
from openmm_geom.data import bundled  # noqa: E402
from openmm_geom.export import export_model  # noqa: E402
from openmm_geom.models import Dihedrals, backbone_quadruplets  # noqa: E402
from openmm_geom.openmm import TorchCVForce  # noqa: E402

SEED = 11
TOLERANCE = 1e-10  # relative, Reference platform, TorchScript vs AOTI bias
TIMING = {"full": (1.0, 7, 20), "quick": (0.25, 2, 3)}


class DistanceMLP(torch.nn.Module):
    """All pair distances (nm) -> MLP 128-128 (tanh) -> k CVs, float64, random weights."""

    def __init__(self, n_atoms: int, k: int = 2, width: int = 128, seed: int = SEED):
        super().__init__()
        torch.manual_seed(seed)
        pairs = torch.triu_indices(n_atoms, n_atoms, 1)
        self.register_buffer("first", pairs[0].clone())
        self.register_buffer("second", pairs[1].clone())
        n = int(pairs.shape[1])
        self.net = torch.nn.Sequential(torch.nn.Linear(n, width), torch.nn.Tanh(),
                                       torch.nn.Linear(width, width), torch.nn.Tanh(),
                                       torch.nn.Linear(width, k)).double()

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        d = torch.linalg.vector_norm(positions[self.second] - positions[self.first], dim=-1)
        return self.net(d)


def geom2vec_cv(topology) -> torch.nn.Module:
    """The default geom2vec CV architecture with random weights (see the module docstring)."""
    from openmm_geom.models.geom2vec import Geom2VecCV, Geom2VecFeaturizer, TokenCV, TokenMap
    from openmm_geom.models.heads import VAMPHead
    from openmm_geom.models.mixers import build_mixer

    tokens = TokenMap.from_topology(topology, selection="heavy", tokens="atom",
                                    global_atoms="not element H")
    featurizer = Geom2VecFeaturizer("et", dtype=torch.float64, seed=SEED)
    d = featurizer.hidden_channels
    with torch.random.fork_rng():
        torch.manual_seed(SEED)
        mixer = build_mixer("pool", d, tokens.n_tokens, tokens.global_dim)
        token_cv = TokenCV(tokens.n_tokens, d, tokens.global_dim, mixer,
                           VAMPHead(mixer.out_dim, k=2), dtype=torch.float64)
    return Geom2VecCV(featurizer, tokens, token_cv.double()).eval()


def prepare(name: str, module: torch.nn.Module, pdb, positions, workdir: Path) -> dict:
    options = dict(kind="cv", length_unit="nm", periodic=False, example_positions=positions)
    script = export_model(module, workdir / f"{name}.pt", **options)
    start = time.perf_counter()
    package = export_model(module, workdir / f"{name}.pt2", format="aoti", **options)
    package_seconds = time.perf_counter() - start
    with torch.no_grad():
        cv = script.module(torch.tensor(positions, dtype=torch.float64)).numpy()
    params = parameters(np.round(cv) + OFFSET)
    k = len(cv)

    def force(model):
        return TorchCVForce(model, expression(k), global_parameters=params,
                            force_group=BIAS_GROUP)

    bias = [energy_forces(make_context(pdb, force(m), "Reference", None)[0], {BIAS_GROUP})
            for m in (script, package)]
    check = agreement(f"{name}: bias AOTI == TorchScript (Reference)", bias[1], bias[0],
                      TOLERANCE)
    print(f"{name}: packaged in {package_seconds:.1f} s; {check['check']}: "
          f"{'ok' if check['ok'] else 'FAILED'}", flush=True)
    return {"name": name, "k": k, "script": script, "package": package, "force": force,
            "package_seconds": package_seconds, "package_bytes": len(package.data),
            "max_bias_force_kj_per_mol_nm": float(np.abs(bias[0][1]).max()), "check": check}


def run(threads: int, cases: list, pdb, timing) -> list:
    block_seconds, blocks, warmup = timing
    openmm_geom.set_threads(threads)
    amber = make_context(pdb, None, "CPU", threads)
    rows = []
    for case in cases:
        ts = make_context(pdb, case["force"](case["script"]), "CPU", threads)
        aoti = make_context(pdb, case["force"](case["package"]), "CPU", threads)
        chunks = [amber[1].step, ts[1].step, aoti[1].step]
        samples, load = measure_clean(lambda: rates(chunks, warmup, block_seconds, blocks))
        r_amber, r_ts, r_aoti = (statistics.median(s) for s in samples)
        bias_ts_us = (1 / r_ts - 1 / r_amber) * 1e6
        bias_aoti_us = (1 / r_aoti - 1 / r_amber) * 1e6
        rows.append({
            "threads": threads, "cv": case["name"], "k": case["k"], "other_load": load,
            "amber_steps_per_s": r_amber, "torchscript_steps_per_s": r_ts,
            "aoti_steps_per_s": r_aoti,
            "torchscript_ns_per_day": r_ts * ns_per_day_per_step_per_s(),
            "aoti_ns_per_day": r_aoti * ns_per_day_per_step_per_s(),
            "aoti_over_torchscript_steps": r_aoti / r_ts,
            "bias_us_per_step_torchscript": bias_ts_us, "bias_us_per_step_aoti": bias_aoti_us,
            "torchscript_over_aoti_bias_cost": bias_ts_us / bias_aoti_us
            if bias_aoti_us > 0 else None,
            "block_rates": dict(zip(("amber", "torchscript", "aoti"),
                                    ([round(x, 2) for x in s] for s in samples))),
        })
        print(f"threads {threads}, {case['name']}: measured (other load {load:.0%})", flush=True)
        del ts, aoti
    return rows


def table(rows: list) -> str:
    lines = ["TorchCVForce backends on biased capped alanine (CPU platform): steps/s; bias = "
             "its own cost per step (us)",
             f"{'thr':>3} {'cv':>9} {'amber':>7} {'TS':>7} {'AOTI':>7} {'AOTI/TS':>7} "
             f"{'bias TS':>8} {'bias AOTI':>9} {'TS/AOTI bias':>12}"]
    for r in rows:
        lines.append(
            f"{r['threads']:>3} {r['cv']:>9} {fmt(r['amber_steps_per_s'], '.0f'):>7} "
            f"{fmt(r['torchscript_steps_per_s'], '.0f'):>7} {fmt(r['aoti_steps_per_s'], '.0f'):>7} "
            f"{fmt(r['aoti_over_torchscript_steps'], '.2f'):>7} "
            f"{fmt(r['bias_us_per_step_torchscript'], '.0f'):>8} "
            f"{fmt(r['bias_us_per_step_aoti'], '.0f'):>9} "
            f"{fmt(r['torchscript_over_aoti_bias_cost'], '.1f'):>12}"
            + (f"  (other load {r['other_load']:.0%})" if r["other_load"] > 0.1 else ""))
    return "\n".join(lines)


def main(argv=None) -> int:
    args = _common.parse(_common.parser(__doc__, "torchcv_aoti.json", "short blocks"), argv)
    mode = "quick" if args.quick else "full"
    env, monitor = environment(), LoadMonitor()
    torch.set_num_threads(1)  # packaging and checks; the timing sets its own thread counts
    pdb = app.PDBFile(str(bundled(PDB)))
    positions = np.array(pdb.positions.value_in_unit(unit.nanometer))
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        cases = [prepare("dihedrals", Dihedrals(backbone_quadruplets(pdb.topology)), pdb,
                         positions, Path(workdir)),
                 prepare("mlp", DistanceMLP(len(positions)), pdb, positions, Path(workdir)),
                 prepare("geom2vec", geom2vec_cv(pdb.topology), pdb, positions,
                         Path(workdir))]
        checks = [c["check"] for c in cases]
        if all(c["ok"] for c in checks):
            for threads in thread_counts(args.threads):
                rows += run(threads, cases, pdb, TIMING[mode])
    ok = all(c["ok"] for c in checks)
    block_seconds, blocks, warmup = TIMING[mode]
    write_json(args.out, {
        "benchmark": "torchcv_aoti", "quick": args.quick,
        "config": {
            "system": "bench_torchcv.py's (capped alanine, amber14, NoCutoff, HBonds, "
                      "LangevinMiddle 300 K 2 fs, CPU platform)",
            "bias": "sum_i 0.5*kappa*(cv_i - c_i)^2, c_i = round(cv_i(start)) + 1",
            "cvs": {"dihedrals": "phi/psi Dihedrals, k=2",
                    "mlp": "231 pair distances -> MLP 128-128 tanh -> 2, float64",
                    "geom2vec": "ET 64x3 on the heavy atoms, atom tokens + global distances, "
                                "pool mixer, VAMP head k=2, random weights, float64"},
            "timing": {"block_seconds": block_seconds, "blocks": blocks, "warmup": warmup,
                       "statistic": "median rate over interleaved blocks"},
        },
        "environment": env, "load": monitor.result(),
        "packages": [{key: c[key] for key in ("name", "k", "package_seconds", "package_bytes",
                                              "max_bias_force_kj_per_mol_nm")}
                     for c in cases],
        "rows": rows, "checks": checks, "ok": ok,
    })
    if rows:
        return _common.report(table(rows), rows, checks, ok, args.out)
    print(f"CHECK FAILED: {checks}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
