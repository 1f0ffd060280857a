"""``openmm-geom doctor``: is this environment one that works?

Reports versions, whether the native extension loads and matches the running torch/OpenMM,
and whether a ``TorchForce`` and a ``TorchForce`` inside a ``CustomCVForce`` create a Context
and give the right energy on each platform. Each Context check runs in a child process, so a
known segfaulting combination is reported as a crash instead of killing the doctor.

Every problem comes with a one-line fix: a native module built against another torch (version,
build or C++ ABI) or another OpenMM than the running ones, or missing altogether; openmm-torch
missing, not importing, installed twice, built for another CUDA or requiring another torch; the
known-bad combinations of docs/install.md. The checks on facts are pure functions
(:func:`native_problems`, :func:`openmm_torch_problems`) so they can be tested on made-up facts.
"""
from __future__ import annotations

import importlib.metadata as metadata
import platform as _platform
import subprocess
import logging
import sys

__all__ = ["run_doctor", "format_doctor", "native_problems", "openmm_torch_problems"]

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


def _known_bad_pairs(versions: dict) -> list:
    """``(problem, fix)`` for each combination blueprint section 4 found to fail, when present."""
    found = []
    torch_v = _major_minor(versions["torch"]["version"])
    openmm_v = _major_minor(versions["openmm"]["version"])
    omt = versions["openmm-torch"]
    if omt["distribution"] == "openmmtorch":
        found.append(("PyPI package 'openmmtorch' installed: it links CUDA 12 and an older "
                      "libtorch", "pip uninstall -y openmmtorch && pip install "
                      "acellera-openmmtorch-cpu==1.10 (or -cu13 on GPUs)"))
    if omt["distribution"] and omt["distribution"].startswith("acellera") and torch_v >= (2, 13):
        found.append((f"torch {versions['torch']['version']} with openmm-torch {omt['version']}: "
                      "ABI mismatch, fails at the first step ('cannot access PyObject for "
                      "Tensor')", "pip install torch==2.12.1"))
    if openmm_v >= (8, 6) and omt["version"]:
        found.append((f"openmm {versions['openmm']['version']} with openmm-torch "
                      f"{omt['version']}: a TorchForce inside a CustomCVForce segfaults at "
                      "Context creation (8.6.1 with acellera-openmmtorch-cpu 1.10: exit 139)",
                      "pip install openmm==8.5.2, then rebuild openmm-geom "
                      "(pip install --no-build-isolation --no-deps --force-reinstall .)"))
    if _major_minor(versions["torchmd-net"]["version"]) >= (3, 0):
        found.append(("torchmd-net 3.x requires setuptools>=82 while torch 2.12 requires "
                      "setuptools<82; pip then upgrades torch and breaks openmm-torch",
                      "pip install torchmd-net==2.6.2 -c requirements.txt"))
    return found


def _known_bad(versions: dict) -> list:
    """The combinations blueprint section 4 found to fail, when present here (one line each)."""
    return [f"{problem}; fix: {fix}" for problem, fix in _known_bad_pairs(versions)]


# The one-line fix for a native module that does not match the running stack. A development
# checkout built by `make` rebuilds with `make native`.
REBUILD = ("rebuild against the running stack, from the clone: pip install --no-build-isolation "
           "--no-deps --force-reinstall .  (a `make` checkout: make native)")
INSTALL_NATIVE = ("install from a clone with torch and openmm already installed: pip install "
                  "--no-build-isolation .  (needs a C++17 compiler, CMake >= 3.18, pybind11, swig "
                  "4.4 and scikit-build-core; docs/install.md)")


def _problem(check: str, problem: str, fix: str) -> dict:
    return {"check": check, "problem": problem, "fix": fix}


def native_problems(build_info, running: dict, load_error=None, plugin_error=None) -> list:
    """Why the native module does not fit the running stack (pure: facts in, problems out).

    Parameters
    ----------
    build_info : dict or None
        :func:`openmm_geom.native.native_build_info` (what ``openmm_geom._native`` was compiled
        against), or None when the module did not import.
    running : dict
        The running stack: ``torch`` (``torch.__version__``), ``cxx11_abi``
        (``torch._C._GLIBCXX_USE_CXX11_ABI``), ``openmm`` (``openmm.__version__``) and
        ``openmm_library`` (``openmm.Platform.getOpenMMVersion()``).
    load_error : str, optional
        The import error of ``openmm_geom._native``, when it did not import.
    plugin_error : str, optional
        Why the TorchCVForce plugin did not load (:func:`openmm_geom.native.plugin_error`).

    Returns
    -------
    list of dict
        ``{"check": "native", "problem": ..., "fix": ...}``, one per problem; empty if it fits.
    """
    found = []
    if build_info is None:
        error = load_error or "openmm_geom._native did not import"
        if "No module named" in error or "cannot import name '_native'" in error:
            # not built at all: the plugin is missing too, and the same install brings both
            return [_problem("native", "the native module is not built (openmm_geom._native "
                             "is missing): TorchCVForce and the native torch ops are "
                             "unavailable", INSTALL_NATIVE)]
        if "undefined symbol" in error or "cannot open shared object" in error:
            found.append(_problem("native", "the native module does not load against the "
                                  f"installed torch/OpenMM, it was built against others: {error}",
                                  REBUILD))
        else:
            found.append(_problem("native", f"the native module does not load: {error}", REBUILD))
        if plugin_error:
            found.append(_problem("native", f"the TorchCVForce plugin did not load: "
                                  f"{plugin_error}", REBUILD))
        return found
    built_torch, torch_now = build_info["built_against_torch"], running["torch"]
    if built_torch != torch_now:
        same_release = built_torch.split("+")[0] == torch_now.split("+")[0]
        why = ("another build of the same release" if same_release
               else "libtorch's C++ ABI changes between releases")
        found.append(_problem("native", f"built against torch {built_torch}, running "
                              f"{torch_now} ({why})", REBUILD))
    if "cxx11_abi" in build_info and "cxx11_abi" in running and \
            bool(build_info["cxx11_abi"]) != bool(running["cxx11_abi"]):
        found.append(_problem("native", f"built with _GLIBCXX_USE_CXX11_ABI="
                              f"{int(build_info['cxx11_abi'])}, the running torch uses "
                              f"{int(running['cxx11_abi'])}", REBUILD))
    built_openmm, openmm_now = build_info["built_against_openmm"], running["openmm"]
    if _major_minor(built_openmm) != _major_minor(openmm_now):
        found.append(_problem("native", f"built against OpenMM {built_openmm}'s headers, running "
                              f"OpenMM {openmm_now}", REBUILD))
    library = build_info.get("openmm_runtime_version")
    if library and running.get("openmm_library") and library != running["openmm_library"]:
        found.append(_problem("native", f"two OpenMM libraries in one process: the native module "
                              f"runs libOpenMM {library}, the openmm package "
                              f"{running['openmm_library']}",
                              "keep one OpenMM in the environment (e.g. not both conda's and "
                              "pip's), then " + REBUILD))
    if plugin_error:
        found.append(_problem("native", f"the TorchCVForce plugin did not load: {plugin_error}",
                              REBUILD))
    return found


OPENMM_TORCH_INSTALL = ("pip install acellera-openmmtorch-cpu==1.10 (GPUs: "
                        "acellera-openmmtorch-cu13==1.10)")


def openmm_torch_problems(installed: list, import_error, torch_version: str,
                          torch_cuda, requires: dict = None) -> list:
    """Is the openmm-torch build one that works with the running torch? (pure)

    Parameters
    ----------
    installed : list of (str, str)
        ``(distribution, version)`` of every openmm-torch distribution pip knows
        (``acellera-openmmtorch-cpu``, ``-cu13``, ``-cu12``, ``openmmtorch``).
    import_error : str or None
        The error of ``import openmmtorch``, None when it imports (a conda-forge build imports
        without a pip distribution).
    torch_version : str
        ``torch.__version__``.
    torch_cuda : str or None
        ``torch.version.cuda`` (None for a CPU-only torch).
    requires : dict, optional
        Distribution -> its ``torch`` requirement (e.g. ``"torch<2.13,>=2.10"``).

    Returns
    -------
    list of dict
        ``{"check": "openmm-torch", "problem": ..., "fix": ...}``; empty if it fits.
    """
    found = []
    names = [name for name, _ in installed]
    if not installed and import_error:
        return [_problem("openmm-torch", "openmm-torch is not installed (`import openmmtorch` "
                         "fails): TorchForce, create_system and the Context checks need it",
                         OPENMM_TORCH_INSTALL)]
    if len(installed) > 1:
        found.append(_problem("openmm-torch", f"several openmm-torch builds installed "
                              f"({', '.join(names)}): they overwrite each other's files",
                              f"pip uninstall -y {' '.join(names)} && {OPENMM_TORCH_INSTALL}"))
    if import_error:
        cuda_missing = any(word in import_error for word in ("libcuda", "libcudart", "libnvrtc"))
        found.append(_problem("openmm-torch", f"{' / '.join(names) or 'openmm-torch'} is "
                              f"installed but `import openmmtorch` fails: {import_error}",
                              "no CUDA here: pip uninstall -y " + " ".join(names) + " && "
                              "pip install acellera-openmmtorch-cpu==1.10" if cuda_missing
                              else "pip install --force-reinstall --no-deps "
                              "acellera-openmmtorch-cpu==1.10 (with torch 2.10-2.12)"))
    for name, _ in installed:
        flavour = name.rsplit("-", 1)[-1] if name.startswith("acellera-openmmtorch-") else None
        if flavour and flavour.startswith("cu"):
            if torch_cuda is None:
                found.append(_problem("openmm-torch", f"{name} is a CUDA build but torch "
                                      f"{torch_version} is CPU-only",
                                      f"pip uninstall -y {name} && pip install "
                                      "acellera-openmmtorch-cpu==1.10"))
            elif flavour[2:] != str(torch_cuda).split(".")[0]:
                found.append(_problem("openmm-torch", f"{name} is built for CUDA {flavour[2:]} "
                                      f"but torch {torch_version} for CUDA {torch_cuda}",
                                      f"pip uninstall -y {name} && pip install "
                                      f"acellera-openmmtorch-cu{str(torch_cuda).split('.')[0]}"
                                      "==1.10 (or -cpu)"))
        spec = (requires or {}).get(name)
        if spec:
            try:
                from packaging.specifiers import SpecifierSet

                ok = SpecifierSet(spec).contains(torch_version.split("+")[0], prereleases=True)
            except Exception:  # packaging absent or an unparsable spec: no verdict
                ok = True
            if not ok:
                found.append(_problem("openmm-torch", f"{name} requires torch{spec}, running "
                                      f"torch {torch_version}", "pip install torch==2.12.1, "
                                      "then " + REBUILD))
    return found


def _openmm_torch_status() -> tuple:
    """``(problems, version)`` of the openmm-torch installed here."""
    import torch

    installed, requires = [], {}
    for name in _DISTRIBUTIONS["openmm-torch"]:
        try:
            installed.append((name, metadata.version(name)))
        except metadata.PackageNotFoundError:
            continue
        for requirement in metadata.requires(name) or []:
            try:
                from packaging.requirements import Requirement

                parsed = Requirement(requirement)
            except Exception:  # packaging absent or an unparsable line: no verdict
                continue
            if parsed.name == "torch" and parsed.marker is None and str(parsed.specifier):
                requires[name] = str(parsed.specifier)
    try:
        # openmm-torch 1.10 imports the deprecated simtk.openmm alias, which logs a warning
        previous = logging.root.manager.disable
        logging.disable(logging.WARNING)
        try:
            import openmmtorch  # noqa: F401
        finally:
            logging.disable(previous)
        import_error = None
    except Exception as error:  # ImportError, or an OSError from a library it links
        import_error = f"{type(error).__name__}: {error}"
    problems = openmm_torch_problems(installed, import_error, torch.__version__,
                                     torch.version.cuda, requires)
    return problems, import_error


def _native_status(versions: dict) -> dict:
    import openmm
    import torch

    info, load_error = None, None
    try:
        from .native import native_build_info

        info = native_build_info()
    except Exception as error:  # report, do not raise: this is a diagnosis tool
        load_error = f"{type(error).__name__}: {error}"
    from .native import plugin_error

    running = {"torch": torch.__version__, "cxx11_abi": bool(torch._C._GLIBCXX_USE_CXX11_ABI),
               "openmm": versions["openmm"]["version"],
               "openmm_library": openmm.Platform.getOpenMMVersion()}
    error = plugin_error()
    problems = native_problems(info, running, load_error,
                               None if error is None else f"{type(error).__name__}: {error}")
    return {"ok": not problems, "build_info": info, "running": running,
            "detail": "; ".join(p["problem"] for p in problems), "problems": problems}


def run_doctor(timeout: float = 180.0) -> dict:
    """Diagnose the environment.

    Returns
    -------
    dict
        JSON-friendly: ``ok`` overall, ``versions``, ``platforms``, ``contexts`` (per platform and
        force: ``status``), ``native`` (its build facts and problems), ``openmm_torch``,
        ``known_bad`` (one line each) and ``problems``: every problem found, each
        ``{"check", "problem", "fix"}`` with a one-line fix. ``ok`` is True when there is none.
    """
    versions = {name: _version(dist) for name, dist in _DISTRIBUTIONS.items()}
    missing = []
    for module, install in (("torch", "pip install torch==2.12.1 (first: the native build "
                                      "compiles against it)"),
                            ("openmm", "pip install openmm==8.5.2")):
        try:
            __import__(module)
        except ImportError as error:
            missing.append(_problem(module, f"{module} does not import ({error}): openmm-geom "
                                    f"needs it", f"{install}, then " + INSTALL_NATIVE.split(
                                        ": ", 1)[1]))
    if missing:  # nothing else can be checked
        return {"ok": False, "versions": versions, "platforms": [], "contexts": {},
                "native": {"ok": False, "build_info": None, "detail": "not checked",
                           "problems": []},
                "openmm_torch": {"ok": False, "import_error": "not checked"},
                "known_bad": [], "problems": missing}
    import openmm

    import torch


    # Local version labels (+cu130, +cpu) matter for the native build: use the runtime's.
    versions["torch"]["version"] = torch.__version__
    versions["openmm"]["version"] = openmm.__version__
    versions["python"] = {"distribution": None, "version": _platform.python_version()}
    platforms = [openmm.Platform.getPlatform(i).getName()
                 for i in range(openmm.Platform.getNumPlatforms())]
    omt_problems, omt_import_error = _openmm_torch_status()
    if omt_import_error is None and not versions["openmm-torch"]["version"]:  # e.g. conda-forge
        versions["openmm-torch"] = {"distribution": None, "version": "unknown (no pip metadata)"}
    contexts = {}
    if omt_import_error is None:
        for name in platforms:
            contexts[name] = {
                "TorchForce": _context_check(name, "torchforce", timeout),
                "TorchForce in CustomCVForce": _context_check(name, "customcv", timeout),
            }
            if name in ("Reference", "CPU"):  # the platforms TorchCVForce has kernels for
                contexts[name]["TorchCVForce"] = _context_check(name, "torchcv", timeout)
    native = _native_status(versions)
    known_bad = _known_bad(versions)
    problems = native["problems"] + omt_problems + [
        _problem("known bad", problem, fix) for problem, fix in _known_bad_pairs(versions)]
    failed = {}  # one problem per distinct failure, naming every check that failed so
    for platform_name, checks in contexts.items():
        for check, result in checks.items():
            if not result["ok"]:
                why = f"{result['status']}: {result['detail']}".rstrip(": ")
                failed.setdefault(why, []).append(f"{check} on {platform_name}")
    for why, where in failed.items():
        problems.append(_problem("context", f"{', '.join(where)}: {why}",
                                 "fix the problems above first; otherwise docs/install.md "
                                 "('What doctor checks') lists the combinations that fail"))
    ok = not problems and bool(contexts)
    return {
        "ok": ok,
        "versions": versions,
        "platforms": platforms,
        "contexts": contexts,
        "native": native,
        "openmm_torch": {"ok": not omt_problems, "import_error": omt_import_error},
        "known_bad": known_bad,
        "problems": problems,
    }


def format_doctor(report: dict) -> str:
    lines = ["versions:"]
    for name, v in report["versions"].items():
        dist = f" ({v['distribution']})" if v["distribution"] and v["distribution"] != name else ""
        lines.append(f"  {name:<14} {v['version'] or 'not installed'}{dist}")
    native = report["native"]
    built = native.get("build_info") or {}
    facts = (f"(built against torch {built['built_against_torch']}, OpenMM "
             f"{built['built_against_openmm']})" if built else "(not loaded)")
    lines.append(f"native module:  {'ok' if native['ok'] else 'PROBLEM'} {facts}")
    lines.append("OpenMM contexts:" if report["contexts"] else
                 "OpenMM contexts: not checked (openmm-torch does not import)")
    for platform_name, checks in report["contexts"].items():
        for check, result in checks.items():
            lines.append(f"  {platform_name:<10} {check:<28} {result['status']} {result['detail']}")
    for problem in report["problems"]:
        lines.append(f"PROBLEM ({problem['check']}): {problem['problem']}")
        lines.append(f"  fix: {problem['fix']}")
    lines.append("environment OK" if report["ok"] else "environment has problems (see above)")
    return "\n".join(lines)
