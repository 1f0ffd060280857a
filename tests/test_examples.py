"""Examples never rot: every script in examples/ runs with short settings."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.py"))
SHORT_STEPS = "200"


def test_every_example_is_collected():
    assert len(EXAMPLES) >= 3


@pytest.mark.parametrize("script", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs(script, tmp_path):
    args = [sys.executable, str(script), "--steps", SHORT_STEPS]
    if "--out" in script.read_text():
        args += ["--out", str(tmp_path / "out")]
    done = subprocess.run(args, capture_output=True, text=True, timeout=900, cwd=tmp_path,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert done.returncode == 0, f"{script.name} failed:\n{done.stdout}\n{done.stderr}"
