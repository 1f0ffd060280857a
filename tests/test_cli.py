"""The command line: one error path, exit codes, help, progress, Ctrl-C and resume.

Bad input must give exit code 2, exactly one ``error:`` line on stderr (maybe a ``hint:``
line), no traceback, and leave the output location as it was. Most cases call ``main()`` in
this process (they fail before any heavy work); a few run the real command in a subprocess.
"""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from openmm_geom.cli import build_parser, main
from openmm_geom.data import bundled

PDB = str(bundled("alanine-dipeptide.pdb"))
CLI = [sys.executable, "-m", "openmm_geom.cli"]
HANG_GUARD = 600


def _listing(root: Path) -> list:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _alanine_frames(n_frames: int, seed: int = 0) -> dict:
    """Capped alanine near its PDB structure: positions, noisy forces, masses (shared layout)."""
    import openmm.app as app

    structure = app.PDBFile(PDB)
    x = np.asarray(structure.getPositions(asNumpy=True)._value)
    rng = np.random.default_rng(seed)
    positions = (x[None] + rng.normal(0.0, 0.003, (n_frames, 22, 3))).astype(np.float32)
    masses = np.array([a.element.mass._value for a in structure.topology.atoms()])
    return {"positions": positions, "masses": masses, "temperature_K": np.float64(300.0),
            "forces": rng.normal(0.0, 100.0, positions.shape).astype(np.float32)}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Inputs shared by the bad-input cases: a valid npz, a truncated one, a missing path."""
    root = tmp_path_factory.mktemp("inputs")
    good = root / "ala.npz"
    np.savez(good, **_alanine_frames(60))
    truncated = root / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    return {"npz": str(good), "trunc": str(truncated), "missing": str(root / "missing"),
            "pdb": PDB}


@pytest.fixture(scope="module")
def cg_model(tmp_path_factory, files):
    """A tiny trained CG model (1 epoch, 2 folds) of the synthetic alanine data."""
    from openmm_geom.settings import override
    from openmm_geom.workflows import coarse_grain as cg

    out = tmp_path_factory.mktemp("cg_model")
    settings = override(cg.QUICK, epochs=1, folds=2, gap_frames=2, features=8, filters=8,
                        n_rbf=8, output_hidden=8)
    cg.train(cg.load_cg_data(files["npz"]), out, settings, seed=0, progress=False)
    return str(out / "cg_model.pt")


# --- bad input: exit 2, one error line, nothing created -------------------------------------
O = "{out}"
BAD_INPUTS = {
    # datagen
    "datagen-missing-pdb": (["datagen", "{missing}.pdb", "--frames", "2", "--out", O + "/r.npz"],
                            "not found"),
    "datagen-not-a-pdb": (["datagen", "{trunc}", "--frames", "2", "--out", O + "/r.npz"],
                          "could not be read as a PDB"),
    "datagen-zero-timestep": (["datagen", "{pdb}", "--frames", "2", "--timestep-fs", "0",
                               "--out", O + "/r.npz"], "timestep_fs must be"),
    "datagen-negative-temperature": (["datagen", "{pdb}", "--frames", "2", "--temperature-k",
                                      "-300", "--out", O + "/r.npz"], "temperature_K must be"),
    "datagen-negative-friction": (["datagen", "{pdb}", "--frames", "2", "--friction-per-ps",
                                   "-1", "--out", O + "/r.npz"], "friction_per_ps must be"),
    "datagen-zero-frames": (["datagen", "{pdb}", "--frames", "0", "--out", O + "/r.npz"],
                            "n_frames must be"),
    "datagen-unknown-platform": (["datagen", "{pdb}", "--frames", "2", "--platform", "CUDA",
                                  "--out", O + "/r.npz"], "available: "),
    "datagen-no-structure": (["datagen", "--frames", "2", "--out", O + "/r.npz"],
                             "either a PDB file or --water-box"),
    "datagen-water-negative-temperature": (["datagen", "--water-box", "8", "--frames", "2",
                                            "--temperature-k", "-1", "--out", O + "/r.npz"],
                                           "temperature_K must be"),
    # cg
    "cg-train-missing-data": (["cg", "train", "--data", "{missing}.npz", "--out", O],
                              "not found"),
    "cg-train-truncated-npz": (["cg", "train", "--data", "{trunc}", "--out", O],
                               "not an npz file"),
    "cg-train-zero-epochs": (["cg", "train", "--data", "{npz}", "--epochs", "0", "--out", O],
                             "epochs must be an integer >= 1"),
    "cg-train-one-fold": (["cg", "train", "--data", "{npz}", "--folds", "1", "--out", O],
                          "folds must be an integer >= 2"),
    "cg-simulate-missing-model": (["cg", "simulate", "--model", "{missing}.pt", "--start",
                                   "{npz}", "--out", O], "not found"),
    "cg-simulate-wrong-kind-of-model": (["cg", "simulate", "--model", "{trunc}", "--start",
                                         "{npz}", "--out", O], "not a CG model file"),
    "cg-simulate-truncated-start": (["cg", "simulate", "--model", "{model}", "--start",
                                     "{trunc}", "--out", O], "not an npz file"),
    "cg-simulate-negative-steps": (["cg", "simulate", "--model", "{model}", "--start", "{npz}",
                                    "--steps", "-5", "--out", O], "steps must be an integer >= 0"),
    "cg-simulate-zero-replicas": (["cg", "simulate", "--model", "{model}", "--start", "{npz}",
                                   "--replicas", "0", "--out", O],
                                  "replicas must be an integer >= 1"),
    "cg-simulate-zero-timestep": (["cg", "simulate", "--model", "{model}", "--start", "{npz}",
                                   "--timestep-fs", "0", "--out", O], "timestep_fs must be"),
    "cg-simulate-negative-friction": (["cg", "simulate", "--model", "{model}", "--start",
                                       "{npz}", "--friction-per-ps", "-1", "--out", O],
                                      "friction_per_ps must be"),
    "cg-evaluate-missing-trajectory": (["cg", "evaluate", "--reference", "{npz}", "--trajectory",
                                        "{missing}.h5", "--out", O], "not found"),
    "cg-evaluate-truncated-reference": (["cg", "evaluate", "--reference", "{trunc}",
                                         "--trajectory", "{missing}.h5", "--out", O],
                                        "not an npz file"),
    "cg-evaluate-bad-fraction": (["cg", "evaluate", "--reference", "{npz}", "--trajectory",
                                  "{missing}.h5", "--equilibration-fraction", "1.5", "--out", O],
                                 "equilibration_fraction must be below 1"),
    "cg-reproduce-missing-data": (["cg", "reproduce", "--train", "{missing}.npz", "--reference",
                                   "{npz}", "--quick", "--out", O], "not found"),
    "cg-reproduce-negative-steps": (["cg", "reproduce", "--train", "{npz}", "--reference",
                                     "{npz}", "--steps", "-5", "--out", O], "steps must be"),
    # potential
    "potential-train-missing-data": (["potential", "train", "--data", "{missing}.npz", "--out",
                                      O], "not found"),
    "potential-train-truncated-npz": (["potential", "train", "--data", "{trunc}", "--out", O],
                                      "not an npz file"),
    "potential-train-zero-epochs": (["potential", "train", "--data", "{npz}", "--epochs", "0",
                                     "--out", O], "epochs must be"),
    "potential-export-missing-model": (["potential", "export", "--checkpoint", "{missing}.pt",
                                        "--pdb", "{pdb}", "--out", O + "/x.pt"], "not found"),
    "potential-export-missing-pdb": (["potential", "export", "--checkpoint", "{missing}.pt",
                                      "--pdb", "{missing}.pdb", "--out", O + "/x.pt"],
                                     "not found"),
    "potential-simulate-zero-timestep": (["potential", "simulate", "--exported", "{missing}.pt",
                                          "--pdb", "{pdb}", "--timestep-fs", "0", "--out", O],
                                         "timestep_fs must be"),
    "potential-simulate-negative-temperature": (["potential", "simulate", "--exported",
                                                 "{missing}.pt", "--pdb", "{pdb}",
                                                 "--temperature-k", "-300", "--out", O],
                                                "temperature_K must be"),
    "potential-simulate-negative-friction": (["potential", "simulate", "--exported",
                                              "{missing}.pt", "--pdb", "{pdb}",
                                              "--friction-per-ps", "-1", "--out", O],
                                             "friction_per_ps must be"),
    "potential-simulate-missing-model": (["potential", "simulate", "--exported", "{missing}.pt",
                                          "--pdb", "{pdb}", "--out", O], "not found"),
    "potential-simulate-wrong-kind-of-model": (["potential", "simulate", "--checkpoint",
                                                "{trunc}", "--pdb", "{pdb}", "--out", O],
                                               "not a"),
    "potential-evaluate-truncated-data": (["potential", "evaluate", "--checkpoint",
                                           "{missing}.pt", "--data", "{trunc}", "--out", O],
                                          "not an npz file"),
    # signature
    "signature-train-missing-data": (["signature", "train", "--data", "{missing}.npz", "--out",
                                      O], "not found"),
    "signature-train-truncated-npz": (["signature", "train", "--data", "{trunc}", "--out", O],
                                      "not an npz file"),
    "signature-train-zero-epochs": (["signature", "train", "--data", "{npz}", "--epochs", "0",
                                     "--out", O], "epochs must be"),
    "signature-train-unknown-method": (["signature", "train", "--data", "{npz}", "--methods",
                                        "magic", "--out", O], "unknown method 'magic'"),
    "signature-featurize-missing-trajectory": (["signature", "featurize", "{missing}.dcd",
                                                "--out", O + "/f.npz"], "no trajectory"),
    "signature-featurize-zero-depth": (["signature", "featurize", "{npz}", "--depth", "0",
                                        "--out", O + "/f.npz"], "depth must be"),
    "signature-generate-zero-trajectories": (["signature", "generate-gene", "--trajectories",
                                              "0", "--out", O + "/g.npz"],
                                             "n_trajectories must be"),
    # cv
    "cv-featurize-missing-backbone": (["cv", "featurize", "{npz}", "--backbone", "{missing}.pt",
                                       "--topology", "{pdb}", "--out", O + "/f.npz"],
                                      "not found"),
    "cv-featurize-truncated-backbone": (["cv", "featurize", "{npz}", "--backbone", "{trunc}",
                                         "--topology", "{pdb}", "--out", O + "/f.npz"],
                                        "not a backbone file"),
    "cv-featurize-zero-stride": (["cv", "featurize", "{npz}", "--backbone", "{missing}.pt",
                                  "--topology", "{pdb}", "--stride", "0", "--out", O + "/f.npz"],
                                 "stride must be"),
    "cv-train-vamp-zero-lag": (["cv", "train-vamp", "--train", "{npz}", "--validate", "{npz}",
                                "--lag-ps", "0", "--out", O], "lag_ps must be"),
    "cv-train-vamp-missing-features": (["cv", "train-vamp", "--train", "{missing}.npz",
                                        "--validate", "{missing}.npz", "--lag-ps", "1", "--out",
                                        O], "no feature file"),
    "cv-bias-negative-temperature": (["cv", "bias", "--pdb", "{pdb}", "--temperature-k", "-300",
                                      "--out", O], "temperature_K must be"),
    "cv-bias-zero-timestep": (["cv", "bias", "--pdb", "{pdb}", "--timestep-fs", "0", "--out",
                               O], "timestep_fs must be"),
    "cv-bias-negative-friction": (["cv", "bias", "--pdb", "{pdb}", "--friction-per-ps", "-1",
                                   "--out", O], "friction_per_ps must be"),
    # check-export, demo
    "check-export-missing-model": (["check-export", "{missing}.pt"], "not found"),
    "check-export-truncated-model": (["check-export", "{trunc}"], "not a TorchScript model file"),
    "check-export-unknown-platform": (["check-export", "{missing}.pt", "--platforms", "CUDA"],
                                      "available: Reference"),
    "check-export-missing-positions": (["check-export", "{missing}.pt", "--positions",
                                        "{missing}.pdb"], "no such file"),
    "demo-zero-steps": (["demo", "--steps", "0", "--out", O], "--steps must be"),
}


def _argv(template, files, out, model=None):
    values = dict(files, out=str(out), model=model or "")
    return [part.format(**values) for part in template]


def _assert_refused(code, stderr, expected):
    assert code == 2, stderr
    errors = [line for line in stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith("error: "), stderr
    assert expected in errors[0], stderr
    others = [line for line in stderr.splitlines()
              if line.strip() and not line.startswith(("error: ", "hint: ", "warning: "))]
    assert not others and "Traceback" not in stderr, stderr


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_error_line_exit_2_and_creates_nothing(case, files, tmp_path, capsys,
                                                                request):
    template, expected = BAD_INPUTS[case]
    model = request.getfixturevalue("cg_model") if "{model}" in template else None
    out = tmp_path / "new" / "sub"
    before = _listing(tmp_path)
    code = main(_argv(template, files, out, model))
    captured = capsys.readouterr()
    _assert_refused(code, captured.err, expected)
    assert _listing(tmp_path) == before


@pytest.mark.parametrize("case", ["cg-simulate-negative-steps", "datagen-unknown-platform",
                                  "potential-simulate-zero-timestep", "cg-train-truncated-npz",
                                  "check-export-missing-model"])
def test_bad_input_in_a_real_process(case, files, cg_model, tmp_path):
    template, expected = BAD_INPUTS[case]
    out = tmp_path / "new" / "sub"
    before = _listing(tmp_path)
    done = subprocess.run(CLI + _argv(template, files, out, cg_model), capture_output=True,
                          text=True, timeout=HANG_GUARD)
    _assert_refused(done.returncode, done.stderr, expected)
    assert done.stdout == ""
    assert _listing(tmp_path) == before


def test_debug_shows_the_traceback_and_keeps_the_exit_code(files, tmp_path):
    done = subprocess.run(CLI + ["--debug", "cg", "train", "--data", files["trunc"], "--out",
                                 str(tmp_path / "o")], capture_output=True, text=True,
                          timeout=HANG_GUARD)
    assert done.returncode == 2
    assert "Traceback" in done.stderr and "FileFormatError" in done.stderr
    assert done.stderr.rstrip().splitlines()[-1].startswith("error: ")


def test_json_error_goes_to_stderr_and_the_document_to_stdout(files, capsys):
    assert main(["check-export", files["missing"] + ".pt", "--json"]) == 2
    captured = capsys.readouterr()
    payload = json.loads(captured.out)
    assert payload["passed"] is False and "not found" in payload["error"]
    assert payload["exit_code"] == 2
    assert captured.err.startswith("error: ") and "not found" in captured.err


def test_a_syntax_error_of_the_command_line_is_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["cg", "simulate", "--steps", "ten"])
    assert info.value.code == 2
    assert "invalid int value: 'ten'" in capsys.readouterr().err


# --- the regressions named in the issue --------------------------------------------------------
def test_refused_cg_simulate_leaves_no_trajectory_so_the_corrected_rerun_works(
        cg_model, files, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["cg", "simulate", "--model", cg_model, "--start", files["npz"], "--out", str(out),
            "--save-interval", "5", "--threads", "1", "--no-progress"]
    assert main(args + ["--replicas", "2", "--steps", "-5"]) == 2
    assert not out.exists()
    # the Python API refuses the same value, even when set after the settings were made
    from openmm_geom.settings import override
    from openmm_geom.workflows import coarse_grain as cg

    settings = override(cg.QUICK, replicas=2, steps=10, save_interval=5)
    settings.steps = -5
    with pytest.raises(ValueError, match="steps must be an integer >= 0, got -5"):
        cg.simulate(cg_model, np.zeros((2, 6, 3)), out, settings)
    assert not out.exists()
    capsys.readouterr()
    assert main(args + ["--replicas", "3", "--steps", "10", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["replicas"] == 3 and result["final_step"] == 10
    from openmm_geom.simulate import read_trajectory

    assert read_trajectory(out / "cg_trajectory.h5").positions.shape[:3] == (2, 3, 6)


def test_potential_simulate_zero_timestep_is_a_value_error_not_a_division(tmp_path):
    from openmm_geom.workflows import potential as wf

    with pytest.raises(ValueError, match="timestep_fs must be a finite number > 0"):
        wf.budget("quick", "attention").__class__(timestep_fs=0.0)
    settings = wf.budget("quick", "attention")
    settings.timestep_fs = 0.0  # assigned after construction: the workflow checks again
    with pytest.raises(ValueError, match="timestep_fs must be a finite number > 0"):
        wf.simulate_structure(PDB, tmp_path / "o", settings, exported=tmp_path / "m.pt")
    assert not (tmp_path / "o").exists()


def test_settings_refuse_unphysical_values_by_field_name():
    from openmm_geom.workflows.config import BiasSettings, CGSettings, ExploreSettings

    for cls, field, value, message in [
            (CGSettings, "friction_per_ps", -1.0, "friction_per_ps must be a finite number >= 0"),
            (CGSettings, "replicas", 0, "replicas must be an integer >= 1"),
            (CGSettings, "integrator", "verlet", "integrator must be one of baoab, overdamped"),
            (BiasSettings, "temperature_K", -300.0, "temperature_K must be a finite number > 0"),
            (BiasSettings, "bias_factor", 1.0, "bias_factor must be > 1"),
            (ExploreSettings, "nanoseconds", float("nan"), "nanoseconds must be a finite")]:
        with pytest.raises(ValueError, match=re.escape(message)):
            cls(**{field: value})
    from openmm_geom.settings import override
    from openmm_geom.workflows.config import QUICK

    with pytest.raises(ValueError, match="epochs must be an integer >= 1, got 0"):
        override(QUICK, epochs=0)


# --- cg evaluate --strict ----------------------------------------------------------------------
def test_cg_evaluate_strict_fails_on_unreliable_metrics_and_warns_either_way(files, tmp_path,
                                                                            capsys):
    from openmm_geom.simulate import TrajectoryWriter
    from openmm_geom.workflows import coarse_grain as cg

    reference = cg.load_cg_data(files["npz"], need_forces=False)
    trajectory = tmp_path / "cg_trajectory.h5"
    rng = np.random.default_rng(1)
    with TrajectoryWriter(trajectory, 2, reference.mapping.n_beads) as writer:
        for step in range(1, 41):  # a CG "run" far from the reference's conformations
            positions = rng.uniform(-1.0, 1.0, (2, 6, 3))
            writer.append(step, step * 0.002, positions, np.zeros(2))
    args = ["cg", "evaluate", "--reference", files["npz"], "--trajectory", str(trajectory),
            "--quick", "--json"]
    assert main(args + ["--out", str(tmp_path / "lenient")]) == 0
    lenient = capsys.readouterr()
    result = json.loads(lenient.out)
    assert result["unreliable_reasons"], result
    warnings = [line for line in lenient.err.splitlines() if line.startswith("warning: ")]
    assert all(any(reason in line for line in warnings) for reason in result["unreliable_reasons"])
    assert main(args + ["--out", str(tmp_path / "strict"), "--strict"]) == 1
    assert "warning: " in capsys.readouterr().err


# --- help, version, the parser's imports -------------------------------------------------------
def _subparsers(parser, prefix=()):
    import argparse

    yield prefix, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _subparsers(child, prefix + (name,))


def test_every_option_has_help_with_its_default():
    import argparse

    missing = []
    for prefix, parser in _subparsers(build_parser()):
        for action in parser._actions:
            if "-h" in action.option_strings or isinstance(action, argparse._SubParsersAction):
                continue
            name = " ".join(prefix) + " " + "/".join(action.option_strings or [action.dest])
            if not action.help:
                missing.append(f"{name}: no help")
                continue
            takes_value = action.nargs != 0 and action.option_strings
            if takes_value and not action.required and not re.search(r"default|required",
                                                                     action.help):
                missing.append(f"{name}: help does not give the default: {action.help!r}")
            if takes_value and action.required and "required" not in action.help:
                missing.append(f"{name}: help does not say it is required: {action.help!r}")
    assert not missing, "\n".join(missing)


def test_units_and_defaults_in_the_help_text(capsys):
    with pytest.raises(SystemExit):
        main(["cv", "bias", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--temperature-k X temperature, K (default: 300.0)" in text
    with pytest.raises(SystemExit):
        main(["cg", "train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert re.search(r"--folds N time-block cross-validation folds .*\(default: 5; --quick: 2\)",
                     text)
    assert re.search(r"--epochs N most training epochs per fold \(default: 30; --quick: 2\)",
                     text)


def test_version(capsys):
    from openmm_geom.version import __version__

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.strip() == f"openmm-geom {__version__}"


HEAVY = ("torch", "openmm", "numpy", "scipy", "mdtraj", "tqdm")


def test_building_the_parser_imports_neither_torch_nor_openmm():
    code = ("import sys; sys.argv = ['openmm-geom']\n"  # as the console script starts
            "from openmm_geom.cli import build_parser\n"
            "parser = build_parser()\n"
            "import argparse\n"
            "def walk(p):\n"
            "    p.format_help()\n"
            "    for a in p._actions:\n"
            "        if isinstance(a, argparse._SubParsersAction):\n"
            "            for child in a.choices.values(): walk(child)\n"
            "walk(parser)\n"
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=HANG_GUARD)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_compile_is_an_option_of_the_cg_steps_that_run_the_model(capsys):
    for step, present in (("train", False), ("simulate", True), ("reproduce", True),
                          ("evaluate", False)):
        with pytest.raises(SystemExit):
            main(["cg", step, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert ("--compile, --no-compile torch.compile the model" in text) is present, step
        if present:
            assert "(default: no)" in text.split("--compile, --no-compile", 1)[1][:250]


@pytest.mark.slow
def test_cg_simulate_compile_gives_the_eager_trajectory(cg_model, files, tmp_path, capsys):
    """--compile reaches the simulator: same seeds, same trajectory within 1e-4 nm (float32
    model, 10 BAOAB steps; tolerance chosen before the first run)."""
    from openmm_geom.simulate import read_trajectory

    runs = {}
    for name, extra in (("eager", []), ("compiled", ["--compile"])):
        out = tmp_path / name
        assert main(["cg", "simulate", "--model", cg_model, "--start", files["npz"], "--out",
                     str(out), "--replicas", "3", "--steps", "10", "--save-interval", "5",
                     "--threads", "1", "--no-progress", "--json"] + extra) == 0
        captured = capsys.readouterr()
        result = json.loads(captured.out)
        # recorded only by a compiled run (its value is not checked)
        compile_time_key = "compile_seconds"
        assert (compile_time_key in result) is bool(extra)
        assert ("compiling the force function (first call)... done in" in captured.err) \
            is bool(extra)
        runs[name] = read_trajectory(out / "cg_trajectory.h5").positions
    assert runs["eager"].shape == runs["compiled"].shape == (2, 3, 6, 3)
    assert np.abs(runs["eager"][-1] - runs["eager"][0]).max() > 1e-3  # the beads moved
    np.testing.assert_allclose(runs["compiled"], runs["eager"], rtol=0, atol=1e-4)


def test_help_of_a_command_imports_neither_torch_nor_openmm():
    done = subprocess.run(CLI[:1] + ["-X", "importtime"] + CLI[1:] + ["cg", "simulate", "--help"],
                          capture_output=True, text=True, timeout=HANG_GUARD)
    assert done.returncode == 0 and "--replicas" in done.stdout
    imported = {line.split("|")[-1].strip() for line in done.stderr.splitlines()
                if line.startswith("import time:")}
    assert "openmm_geom.cli" in imported
    assert not {m for m in imported if m.split(".")[0] in HEAVY}


# --- progress bars -----------------------------------------------------------------------------
def test_progress_bars_only_on_a_terminal_unless_asked(tmp_path, capsys):
    from openmm_geom.progress import show_progress

    assert show_progress(True) is True and show_progress(False) is False
    assert show_progress(None) is False  # pytest's stderr is not a terminal
    args = ["signature", "generate-gene", "--trajectories", "2", "--test", "0", "--nodes", "5",
            "--frames", "3"]
    assert main(args + ["--out", str(tmp_path / "a.npz")]) == 0
    assert "gene trajectories" not in capsys.readouterr().err
    assert main(args + ["--out", str(tmp_path / "b.npz"), "--progress"]) == 0
    assert "gene trajectories" in capsys.readouterr().err
    assert main(args + ["--out", str(tmp_path / "c.npz"), "--no-progress"]) == 0
    assert "gene trajectories" not in capsys.readouterr().err


# --- Ctrl-C: exit 130, the resume message, and the rerun equals an uninterrupted run ------------
def _interrupt_when(argv, ready, cwd, timeout=300):
    """Run the CLI, send SIGINT once ``ready()`` is true, and return the finished process."""
    proc = subprocess.Popen(CLI + argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "OPENMM_GEOM_THREADS": "1"})
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            raise AssertionError(f"finished before it could be interrupted: {proc.stderr.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("never got ready")
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=HANG_GUARD)
    return proc.returncode, out, err


def _run(argv, cwd):
    done = subprocess.run(CLI + argv, cwd=cwd, capture_output=True, text=True,
                          timeout=HANG_GUARD, env={**os.environ, "OPENMM_GEOM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    return done


def test_ctrl_c_in_cg_simulate_then_rerun_equals_an_uninterrupted_run(cg_model, files,
                                                                       tmp_path):
    from openmm_geom.simulate import read_trajectory

    argv = ["cg", "simulate", "--model", cg_model, "--start", files["npz"], "--replicas", "2",
            "--steps", "2000", "--save-interval", "20", "--threads", "1", "--no-progress"]
    stopped, whole = tmp_path / "stopped", tmp_path / "whole"
    code, _, err = _interrupt_when(argv + ["--out", str(stopped)],
                                   lambda: (stopped / "cg_simulation.ckpt").exists(), tmp_path)
    assert code == 130, err
    assert re.fullmatch(r"interrupted at simulating: step \d+ of 2000; run the same command "
                        r"again to resume", err.strip()), err
    resumed = json.loads(_run(argv + ["--out", str(stopped), "--json"], tmp_path).stdout)
    assert 0 < resumed["resumed_from_step"] < 2000
    _run(argv + ["--out", str(whole)], tmp_path)
    a, b = read_trajectory(stopped / "cg_trajectory.h5"), read_trajectory(whole / "cg_trajectory.h5")
    assert a.positions.shape == b.positions.shape == (100, 2, 6, 3)
    np.testing.assert_array_equal(a.positions, b.positions)
    np.testing.assert_array_equal(a.energies, b.energies)


def test_ctrl_c_in_datagen_then_rerun_equals_an_uninterrupted_run(tmp_path):
    from openmm_geom.data.datagen import load_reference

    argv = ["datagen", PDB, "--frames", "200", "--interval-ps", "0.1", "--equilibration-ps",
            "0.1", "--checkpoint-every", "10", "--threads", "1", "--no-progress"]
    stopped, whole = tmp_path / "stopped.npz", tmp_path / "whole.npz"
    work = tmp_path / "stopped.npz.partial"
    code, _, err = _interrupt_when(argv + ["--out", str(stopped)],
                                   lambda: (work / "chunk_000000.npz").exists(), tmp_path)
    assert code == 130, err
    assert re.fullmatch(r"interrupted at reference frames: frame \d+ of 200; run the same "
                        r"command again to resume", err.strip()), err
    assert not stopped.exists() and work.is_dir()
    _run(argv + ["--out", str(stopped)], tmp_path)
    assert not work.exists()
    _run(argv + ["--out", str(whole)], tmp_path)
    a, b = load_reference(stopped), load_reference(whole)
    for key in ("positions", "forces", "potential_energies"):
        np.testing.assert_array_equal(a[key], b[key])
