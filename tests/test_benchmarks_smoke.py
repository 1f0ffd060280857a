"""The benchmark scripts run (--quick) and their built-in correctness checks pass.

Times are not asserted: benchmarks report them; this only keeps the scripts from rotting.
"""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_run_all_quick(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run_all.py"), "--quick",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    names = {Path(r["json"]).stem for r in summary["benchmarks"]}
    assert {"neighbors", "bridge", "torchcv", "cg", "signature", "potential",
            "cv", "compile", "memory", "distributed"} <= names
    assert all(r["ok"] for r in summary["benchmarks"])
