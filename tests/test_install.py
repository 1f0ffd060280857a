"""Installing into an existing environment (issue 16, item 4) and what ``doctor`` says about it.

The pure checks of :mod:`openmm_geom.doctor` are tested on made-up build facts (fast); the slow
test builds the package, non-editable and without build isolation, into a second virtual
environment that sees this environment's installed stack through a ``.pth`` file, and runs
``openmm-geom doctor`` and a ``TorchCVForce`` Context there.
"""
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import openmm
import pytest
import torch

import openmm_geom
from openmm_geom.doctor import native_problems, openmm_torch_problems

REPO = Path(__file__).resolve().parents[1]

BUILT = {"built_against_torch": "2.12.1+cu130", "built_against_openmm": "8.5.2",
         "openmm_runtime_version": "8.5.2", "cxx11_abi": True}
RUNNING = {"torch": "2.12.1+cu130", "cxx11_abi": True, "openmm": "8.5.2",
           "openmm_library": "8.5.2"}


def _one(problems, *words):
    assert len(problems) == 1, problems
    text = problems[0]["problem"]
    for word in words:
        assert word in text, text
    assert problems[0]["fix"] and "\n" not in problems[0]["fix"]
    return problems[0]


def test_native_checks_on_the_real_build_find_nothing():
    from openmm_geom.native import plugin_error

    running = {"torch": torch.__version__, "cxx11_abi": bool(torch._C._GLIBCXX_USE_CXX11_ABI),
               "openmm": openmm.__version__, "openmm_library": openmm.Platform.getOpenMMVersion()}
    assert native_problems(openmm_geom.native_build_info(), running,
                           plugin_error=plugin_error()) == []


def test_native_checks_name_each_mismatch_with_a_rebuild():
    assert native_problems(BUILT, RUNNING) == []
    # a patch release of OpenMM keeps its ABI: no problem
    assert native_problems(dict(BUILT, openmm_runtime_version="8.5.1"),
                           dict(RUNNING, openmm="8.5.1", openmm_library="8.5.1")) == []
    fix = _one(native_problems(BUILT, dict(RUNNING, torch="2.11.0+cpu")),
               "built against torch 2.12.1+cu130, running 2.11.0+cpu", "ABI")["fix"]
    assert "--no-build-isolation" in fix and "make native" in fix
    _one(native_problems(BUILT, dict(RUNNING, torch="2.12.1+cpu")), "same release")
    _one(native_problems(BUILT, dict(RUNNING, cxx11_abi=False)), "_GLIBCXX_USE_CXX11_ABI=1")
    # another OpenMM installed after the build: libOpenMM is then the new one in both
    _one(native_problems(dict(BUILT, openmm_runtime_version="8.4.0"),
                         dict(RUNNING, openmm="8.4.0", openmm_library="8.4.0")),
         "OpenMM 8.5.2's headers, running OpenMM 8.4.0")
    _one(native_problems(BUILT, dict(RUNNING, openmm_library="8.4.0")), "two OpenMM libraries")
    _one(native_problems(BUILT, RUNNING, plugin_error="ImportError: libfoo.so"),
         "TorchCVForce plugin did not load", "libfoo.so")
    several = native_problems(dict(BUILT, openmm_runtime_version="8.4.0"),
                              dict(RUNNING, torch="2.11.0", openmm="8.4.0", openmm_library="8.4.0"))
    assert len(several) == 2


def test_native_checks_when_the_module_is_missing_or_does_not_load():
    for error in ("ModuleNotFoundError: No module named 'openmm_geom._native'",
                  "ImportError: cannot import name '_native' from 'openmm_geom' (/x/__init__.py)"):
        # the plugin is missing too: one problem, one install
        missing = _one(native_problems(None, RUNNING, error, plugin_error="ImportError: cannot "
                                       "import name '_torchcv_plugin'"), "not built")
        assert "pip install --no-build-isolation ." in missing["fix"]
    _one(native_problems(None, RUNNING, "ImportError: _native.so: undefined symbol: "
                         "_ZN3c1015SmallVectorBase"), "built against others", "undefined symbol")
    _one(native_problems(None, RUNNING, "ImportError: something else"), "does not load")
    assert len(native_problems(None, RUNNING, "ImportError: undefined symbol: x",
                               plugin_error="ImportError: undefined symbol: y")) == 2


def test_openmm_torch_checks():
    cpu = [("acellera-openmmtorch-cpu", "1.10")]
    spec = {"acellera-openmmtorch-cpu": "<2.13,>=2.10"}
    assert openmm_torch_problems(cpu, None, "2.12.1+cu130", "13.0", spec) == []
    assert openmm_torch_problems(cpu, None, "2.12.1+cpu", None, spec) == []  # CPU build, CPU torch
    assert openmm_torch_problems([], None, "2.12.1", None) == []  # conda-forge: imports, no dist
    missing = _one(openmm_torch_problems([], "ModuleNotFoundError: No module named "
                                         "'openmmtorch'", "2.12.1", None), "not installed")
    assert "acellera-openmmtorch-cpu==1.10" in missing["fix"]
    _one(openmm_torch_problems(cpu, None, "2.13.0", None, spec),
         "requires torch<2.13,>=2.10, running torch 2.13.0")
    fix = _one(openmm_torch_problems([("acellera-openmmtorch-cu13", "1.10")], None,
                                     "2.12.1+cpu", None), "CUDA build", "CPU-only")["fix"]
    assert "acellera-openmmtorch-cpu" in fix
    _one(openmm_torch_problems([("acellera-openmmtorch-cu12", "1.10")], None, "2.12.1", "13.0"),
         "CUDA 12", "CUDA 13.0")
    _one(openmm_torch_problems(cpu + [("acellera-openmmtorch-cu13", "1.10")], None, "2.12.1",
                               "13.0"), "several openmm-torch builds")
    broken = _one(openmm_torch_problems(cpu, "ImportError: libcudart.so.13: cannot open",
                                        "2.12.1", "13.0"), "import openmmtorch` fails")
    assert "no CUDA here" in broken["fix"]


def test_doctor_answers_without_torch_and_openmm(tmp_path):
    """`python -S`: no site-packages at all, only the source tree. One line per problem, exit 1."""
    done = subprocess.run([sys.executable, "-S", "-m", "openmm_geom.cli", "doctor", "--json"],
                          cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(REPO)),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert not report["ok"]
    assert [p["check"] for p in report["problems"]] == ["torch", "openmm"]
    assert "pip install torch==" in report["problems"][0]["fix"]


# Run in the second environment, from a directory outside the repository.
TORCHCV_SCRIPT = r"""
import json, sys
import mdtraj, numpy as np, openmm, openmm.app as app
import openmm_geom
from openmm_geom.data import bundled
from openmm_geom.export import export_model
from openmm_geom.models import Dihedrals, backbone_quadruplets
from openmm_geom.openmm import TorchCVForce

pdb = app.PDBFile(str(bundled("alanine-dipeptide.pdb")))
export_model(Dihedrals(backbone_quadruplets(pdb.topology)), "phi_psi.pt", kind="cv",
             length_unit="nm", periodic=False, example_positions=pdb.positions,
             cv_names=["phi", "psi"])
force = TorchCVForce("phi_psi.pt", "0.5*k*((phi+1.4)^2 + (psi-2.6)^2)",
                     global_parameters={"k": 100.0})
system = openmm.System()
for atom in pdb.topology.atoms():
    system.addParticle(atom.element.mass)
system.addForce(force)
context = openmm.Context(system, openmm.VerletIntegrator(0.001),
                         openmm.Platform.getPlatformByName("Reference"))
context.setPositions(pdb.positions)
state = context.getState(getEnergy=True, getForces=True)
traj = mdtraj.load(str(bundled("alanine-dipeptide.pdb")))
phi, psi = mdtraj.compute_phi(traj)[1][0, 0], mdtraj.compute_psi(traj)[1][0, 0]
print(json.dumps({
    "file": openmm_geom.__file__,
    "energy": float(state.getPotentialEnergy()._value),
    "expected": float(0.5 * 100.0 * ((phi + 1.4) ** 2 + (psi - 2.6) ** 2)),
    "forces_finite": bool(np.isfinite(state.getForces(asNumpy=True)._value).all()),
}))
"""


@pytest.mark.slow
def test_non_editable_install_into_a_second_environment(tmp_path):
    """3-7 min on 2 shared cores: the native build (1.5-5 min) and two doctor runs (~30 s each)."""
    env = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    python = env / "bin" / "python"
    env_site = Path(subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True).stdout.strip())
    # The existing stack (torch, openmm, openmm-torch, the build tools, pip) is this
    # environment's: the new one sees it through a .pth file, nothing is downloaded.
    (env_site / "_existing_stack.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # As in an activated environment; the stack's bin directory (its swig script) is not on
    # PATH: the build finds swig as a Python package of the environment it builds for.
    run_env = dict(os.environ, PATH=f"{env / 'bin'}:{os.environ['PATH']}")
    run_env.pop("PYTHONPATH", None)
    build = subprocess.run(
        [str(python), "-m", "pip", "install", "--no-build-isolation", "--no-deps",
         f"--config-settings=build-dir={tmp_path / 'build'}", str(REPO)],
        capture_output=True, text=True, env=run_env, timeout=1800)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]

    work = tmp_path / "work"  # outside the repository: the source tree is not on sys.path
    work.mkdir()
    doctor = subprocess.run([str(env / "bin" / "openmm-geom"), "doctor", "--json"], cwd=work,
                            capture_output=True, text=True, env=run_env, timeout=900)
    report = json.loads(doctor.stdout)
    assert doctor.returncode == 0 and report["ok"], report
    assert report["problems"] == [] and report["native"]["ok"]
    assert report["native"]["build_info"]["built_against_torch"] == torch.__version__
    assert report["contexts"]["Reference"]["TorchCVForce"]["status"] == "ok"

    done = subprocess.run([str(python), "-c", TORCHCV_SCRIPT], cwd=work, capture_output=True,
                          text=True, env=run_env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert Path(result["file"]).resolve().is_relative_to(env.resolve()), result["file"]
    assert result["forces_finite"]
    # tolerance chosen beforehand: the CV model runs in float32 (relative 1e-5 of ~100 kJ/mol)
    assert result["energy"] == pytest.approx(result["expected"], rel=1e-5, abs=1e-4)

    # Without the native module doctor still answers, in JSON, and exits 1 with the fix.
    package = Path(result["file"]).parent
    for built in list(package.glob("_native*.so")) + list(package.glob("_torchcv_plugin*.so")):
        built.unlink()
    shutil.rmtree(package / "__pycache__", ignore_errors=True)
    doctor = subprocess.run([str(env / "bin" / "openmm-geom"), "doctor", "--json"], cwd=work,
                            capture_output=True, text=True, env=run_env, timeout=900)
    assert doctor.returncode == 1, doctor.stderr[-3000:]
    report = json.loads(doctor.stdout)
    assert not report["ok"] and not report["native"]["ok"]
    native = [p for p in report["problems"] if p["check"] == "native"]
    assert "not built" in native[0]["problem"], native
    assert "--no-build-isolation" in native[0]["fix"]
