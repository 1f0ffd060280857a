"""`openmm-geom demo` (what `make demo` runs) works end to end with short settings."""
import json
import subprocess
import sys


def test_demo_short(tmp_path):
    out = tmp_path / "demo"
    done = subprocess.run([sys.executable, "-m", "openmm_geom.cli", "demo", "--out", str(out),
                           "--part", "cv", "--steps", "2000", "--json", "--no-progress",
                           "--threads", "1"], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads(done.stdout)["cv"]
    out = out / "cv"
    assert summary["check_export_passed"] and summary["hills"] == 8
    assert summary["frames_logged"] == 40
    for name in ("phi_psi.pt", "cvs.csv", "demo.png", "free_energy.npz", "check_export.json",
                 "summary.json"):
        assert (out / name).stat().st_size > 0, name
    assert summary["free_energy_range_kj_per_mol"] > 0
