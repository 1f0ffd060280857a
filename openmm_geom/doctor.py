"""``openmm-geom doctor``: is this environment one that works?

Reports versions, whether the native extension loads and matches the running torch/OpenMM,
and whether a ``TorchForce`` and a ``TorchForce`` inside a ``CustomCVForce`` create a Context
and give the right energy on each platform. Each Context check runs in a child process, so a
known segfaulting combination is reported as a crash instead of killing the doctor.
"""
from __future__ import annotations

import importlib.metadata as metadata
import platform as _platform
import subprocess
import sys

__all__ = ["run_doctor", "format_doctor"]

# Distributions whose versions matter, by the name pip knows them.
_DISTRIBUTIONS = {
    "torch": "torch",
    "openmm": "openmm",
    "openmm-torch": ("acellera-openmmtorch-cpu", "acellera-openmmtorch-cu13",
                     "acellera-openmmtorch-cu12", "openmmtorch"),
    "openmm-ml": "openmmml",  # optional: MLPotential("openmm-geom") (docs/openmm-ml.md)
    "torchmd-net": "torchmd-net",
    "vesin-torch": "vesin-torch",
    "numpy": "numpy",
    "mdtraj": "mdtraj",
    "pybind11": "pybind11",
    "openmm-geom": "openmm-geom",
}

def _version(names) -> dict:
    for name in (names,) if isinstance(names, str) else names:
        try:
            return {"distribution": name, "version": metadata.version(name)}
        except metadata.PackageNotFoundError:
            continue
    return {"distribution": None, "version": None}


def _major_minor(version: str | None) -> tuple:
    if not version:
        return ()
    parts = []
    for piece in version.split("+")[0].split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def _context_check(platform_name: str, kind: str, timeout: float) -> dict:
    try:
        done = subprocess.run([sys.executable, "-m", "openmm_geom._context_probe", platform_name,
                               kind], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"ok": False, "status": "timeout", "detail": f"no answer in {timeout} s"}
    if done.returncode == 0 and done.stdout.strip().endswith("ok"):
        return {"ok": True, "status": "ok", "detail": ""}
    if done.returncode < 0:
        return {"ok": False, "status": "crashed",
                "detail": f"the child process died with signal {-done.returncode}"}
    lines = (done.stderr or done.stdout).strip().splitlines()
    return {"ok": False, "status": "error", "detail": lines[-1] if lines else ""}


def _known_bad(versions: dict) -> list:
    """The combinations blueprint section 4 found to fail, when present here."""
    found = []
    torch_v = _major_minor(versions["torch"]["version"])
    openmm_v = _major_minor(versions["openmm"]["version"])
    omt = versions["openmm-torch"]
    if omt["distribution"] == "openmmtorch":
        found.append("PyPI package 'openmmtorch' installed: it links CUDA 12 and an older "
                     "libtorch; use acellera-openmmtorch-cpu==1.10 (or -cu13 on GPUs)")
    if omt["distribution"] and omt["distribution"].startswith("acellera") and torch_v >= (2, 13):
        found.append(f"torch {versions['torch']['version']} with openmm-torch {omt['version']}: "
                     "ABI mismatch, fails at the first step ('cannot access PyObject for "
                     "Tensor'); use torch 2.12.1")
    if openmm_v >= (8, 6) and omt["version"]:
        found.append(f"openmm {versions['openmm']['version']} with openmm-torch "
                     f"{omt['version']}: a TorchForce inside a CustomCVForce segfaults at "
                     "Context creation (8.6.1 with acellera-openmmtorch-cpu 1.10: exit 139); use "
                     "openmm 8.5.2")
    if _major_minor(versions["torchmd-net"]["version"]) >= (3, 0):
        found.append("torchmd-net 3.x requires setuptools>=82 while torch 2.12 requires "
                     "setuptools<82; pip then upgrades torch and breaks openmm-torch. "
                     "Use torchmd-net 2.6.2")
    if not omt["version"]:
        found.append("openmm-torch is not installed: pip install acellera-openmmtorch-cpu==1.10")
    return found


def _native_status(versions: dict) -> dict:
    try:
        from .native import native_build_info

        info = native_build_info()
    except Exception as error:  # report, do not raise: this is a diagnosis tool
        return {"ok": False, "detail": f"{type(error).__name__}: {error}. Run `make native`."}
    problems = []
    from .native import plugin_error

    if plugin_error() is not None:
        problems.append(f"the TorchCVForce plugin did not load: {plugin_error()}")
    if info["built_against_torch"] != versions["torch"]["version"]:
        problems.append(f"built against torch {info['built_against_torch']}, running "
                        f"{versions['torch']['version']}: rebuild (`make native`)")
    if info["built_against_openmm"].split(".")[:2] != (versions["openmm"]["version"] or "").split(".")[:2]:
        problems.append(f"built against OpenMM {info['built_against_openmm']}, running "
                        f"{versions['openmm']['version']}: rebuild (`make native`)")
    return {"ok": not problems, "build_info": info, "detail": "; ".join(problems)}


def run_doctor(timeout: float = 180.0) -> dict:
    """Diagnose the environment. Returns a JSON-friendly dict with ``ok`` overall."""
    import openmm

    import torch

    versions = {name: _version(dist) for name, dist in _DISTRIBUTIONS.items()}
    # Local version labels (+cu130, +cpu) matter for the native build: use the runtime's.
    versions["torch"]["version"] = torch.__version__
    versions["openmm"]["version"] = openmm.__version__
    versions["python"] = {"distribution": None, "version": _platform.python_version()}
    platforms = [openmm.Platform.getPlatform(i).getName()
                 for i in range(openmm.Platform.getNumPlatforms())]
    contexts = {}
    if versions["openmm-torch"]["version"]:
        for name in platforms:
            contexts[name] = {
                "TorchForce": _context_check(name, "torchforce", timeout),
                "TorchForce in CustomCVForce": _context_check(name, "customcv", timeout),
            }
            if name in ("Reference", "CPU"):  # the platforms TorchCVForce has kernels for
                contexts[name]["TorchCVForce"] = _context_check(name, "torchcv", timeout)
    native = _native_status(versions)
    known_bad = _known_bad(versions)
    ok = (native["ok"] and not known_bad and bool(contexts)
          and all(check["ok"] for per in contexts.values() for check in per.values()))
    return {
        "ok": ok,
        "versions": versions,
        "platforms": platforms,
        "contexts": contexts,
        "native": native,
        "known_bad": known_bad,
    }


def format_doctor(report: dict) -> str:
    lines = ["versions:"]
    for name, v in report["versions"].items():
        dist = f" ({v['distribution']})" if v["distribution"] and v["distribution"] != name else ""
        lines.append(f"  {name:<14} {v['version'] or 'not installed'}{dist}")
    native = report["native"]
    lines.append(f"native module:  {'ok' if native['ok'] else 'PROBLEM'} {native['detail']}")
    lines.append("OpenMM contexts:")
    for platform_name, checks in report["contexts"].items():
        for check, result in checks.items():
            lines.append(f"  {platform_name:<10} {check:<28} {result['status']} {result['detail']}")
    for problem in report["known_bad"]:
        lines.append(f"KNOWN BAD: {problem}")
    lines.append("environment OK" if report["ok"] else "environment has problems (see above)")
    return "\n".join(lines)
