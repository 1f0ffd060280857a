"""Can the native TorchCVForce kernel load an AOTInductor package? A measured answer.

Packages the phi/psi ``Dihedrals`` CV of the bundled capped alanine (22 atoms, float64) and its
vector-Jacobian product ``(positions, cotangent) -> (cvs, cotangent . dcvs/dpositions)`` (what
the kernel needs per step: CV values and the chain rule's gradient) with
``torch._inductor.aoti_compile_and_package``; loads the VJP package in Python
(``torch._inductor.aoti_load_package``) and in a standalone C++ program built against the same
libtorch the native plugin links (``torch::inductor::AOTIModelPackageLoader``, libtorch_cpu),
and times both against the TorchScript module + autograd (what TorchCVForce runs today).
Records what fails on the way (the plain module's export, ``torch.autograd.grad`` and
``torch.func.vjp`` under ``torch.export``).

Not part of ``run_all.py``: packaging compiles C++ for minutes on a loaded 2-core machine.

    .venv/bin/python benchmarks/aoti_probe.py [--out benchmarks/results/aoti.json]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import openmm.app as app
import openmm.unit as unit
import torch
from torch.fx.experimental.proxy_tensor import make_fx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import LoadMonitor, environment, write_json  # noqa: E402

from openmm_geom.data import bundled  # noqa: E402
from openmm_geom.models import Dihedrals, backbone_quadruplets  # noqa: E402
from openmm_geom.models.geometry import dihedral_angles  # noqa: E402

CPP = r"""
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/script.h>
#include <torch/torch.h>
#include <chrono>
#include <fstream>
#include <iostream>

static at::Tensor read(const std::string& path, std::vector<int64_t> shape) {
  int64_t n = 1;
  for (auto s : shape) n *= s;
  std::vector<double> data(n);
  std::ifstream f(path, std::ios::binary);
  f.read(reinterpret_cast<char*>(data.data()), n * sizeof(double));
  return torch::from_blob(data.data(), shape, torch::kFloat64).clone();
}

int main(int argc, char** argv) {
  at::set_num_threads(1);
  const std::string dir = argv[1];
  const int64_t atoms = std::stoll(argv[2]), k = std::stoll(argv[3]);
  at::Tensor pos = read(dir + "/pos.bin", {atoms, 3});
  at::Tensor v = read(dir + "/v.bin", {k});
  auto t0 = std::chrono::steady_clock::now();
  torch::inductor::AOTIModelPackageLoader loader(dir + "/vjp.pt2");
  auto t1 = std::chrono::steady_clock::now();
  std::vector<at::Tensor> out = loader.run({pos, v});
  torch::jit::Module ts = torch::jit::load(dir + "/dihedrals_ts.pt");
  auto ts_vjp = [&]() {
    at::Tensor x = pos.clone().requires_grad_(true);
    at::Tensor y = ts.forward({x}).toTensor();
    auto g = torch::autograd::grad({y}, {x}, {v});
    return std::make_pair(y.detach(), g[0]);
  };
  auto ref = ts_vjp();
  double dy = (out[0] - ref.first).abs().max().item<double>();
  double dg = (out[1] - ref.second).abs().max().item<double>();
  const int n = 5000;
  for (int i = 0; i < 100; ++i) { loader.run({pos, v}); ts_vjp(); }
  auto a = std::chrono::steady_clock::now();
  for (int i = 0; i < n; ++i) loader.run({pos, v});
  auto b = std::chrono::steady_clock::now();
  for (int i = 0; i < n; ++i) ts_vjp();
  auto c = std::chrono::steady_clock::now();
  auto us = [](auto x, auto y) { return std::chrono::duration<double, std::micro>(y - x).count(); };
  std::cout << "{\"cpp_load_ms\": " << us(t0, t1) / 1e3 << ", \"cpp_max_abs_diff_cv\": " << dy
            << ", \"cpp_max_abs_diff_vjp\": " << dg << ", \"cpp_aoti_us_per_call\": "
            << us(a, b) / n << ", \"cpp_torchscript_us_per_call\": " << us(b, c) / n << "}"
            << std::endl;
  return 0;
}
"""


class CV(torch.nn.Module):
    """``Dihedrals`` without its data-dependent index check (which ``torch.export`` rejects)."""

    def __init__(self, quadruplets):
        super().__init__()
        self.register_buffer("quadruplets", torch.tensor(quadruplets))

    def forward(self, positions):
        return dihedral_angles(positions, self.quadruplets)


def error_text(error: Exception) -> str:
    return f"{type(error).__name__}: {str(error).strip().splitlines()[0][:300]}"


def per_call_us(fn, n: int = 2000) -> float:
    for _ in range(50):
        fn()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1e6


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(HERE / "results" / "aoti.json"))
    args = p.parse_args(argv)
    monitor = LoadMonitor()
    torch.set_num_threads(1)
    pdb = app.PDBFile(str(bundled("alanine-dipeptide.pdb")))
    quads = backbone_quadruplets(pdb.topology)
    pos = torch.tensor(pdb.positions.value_in_unit(unit.nanometer), dtype=torch.float64)
    v = torch.tensor([1.0, -0.5], dtype=torch.float64)
    cv = CV(quads)
    out: dict = {"torch": torch.__version__, "n_atoms": len(pos), "cvs": len(quads)}
    work = Path(tempfile.mkdtemp(prefix="aoti-probe-"))

    # what does not work, recorded
    try:
        torch.export.export(Dihedrals(quads), (pos,))
        out["export_Dihedrals"] = "ok"
    except Exception as error:  # noqa: BLE001 - recorded, not hidden
        out["export_Dihedrals"] = error_text(error)

    class AutogradVJP(torch.nn.Module):
        def forward(self, x, w):
            x = x.detach().requires_grad_(True)
            with torch.enable_grad():
                y = cv(x)
                (g,) = torch.autograd.grad(y, x, w)
            return y.detach(), g

    class FuncVJP(torch.nn.Module):
        def forward(self, x, w):
            y, pull = torch.func.vjp(cv, x)
            return y, pull(w)[0]

    for name, module in (("export_autograd_grad", AutogradVJP()), ("export_func_vjp", FuncVJP())):
        try:
            torch.export.export(module, (pos, v))
            out[name] = "ok"
        except Exception as error:  # noqa: BLE001
            out[name] = error_text(error)

    # what works: the CV as is, the VJP traced to aten ops by make_fx, then exported
    def vjp(x, w):
        y, pull = torch.func.vjp(cv, x)
        return y, pull(w)[0]

    start = time.perf_counter()
    torch._inductor.aoti_compile_and_package(torch.export.export(cv, (pos,)),
                                             package_path=str(work / "cv.pt2"))
    out["package_cv_seconds"] = time.perf_counter() - start
    start = time.perf_counter()
    exported = torch.export.export(make_fx(vjp)(pos, v), (pos, v))
    torch._inductor.aoti_compile_and_package(exported, package_path=str(work / "vjp.pt2"))
    out["package_vjp_seconds"] = time.perf_counter() - start
    out["package_vjp_bytes"] = (work / "vjp.pt2").stat().st_size

    scripted = torch.jit.script(Dihedrals(quads))
    scripted.save(str(work / "dihedrals_ts.pt"))

    def ts_vjp():
        x = pos.clone().requires_grad_(True)
        y = scripted(x)
        return y.detach(), torch.autograd.grad(y, x, v)[0]

    want = ts_vjp()
    runner = torch._inductor.aoti_load_package(str(work / "vjp.pt2"))
    got = runner(pos, v)
    out["python_max_abs_diff"] = max((g - w).abs().max().item() for g, w in zip(got, want))
    out["python_aoti_us_per_call"] = per_call_us(lambda: runner(pos, v))
    out["python_torchscript_us_per_call"] = per_call_us(ts_vjp)

    # C++: the libtorch the native plugin links (c10, torch_cpu, torch of the installed wheel)
    pos.numpy().tofile(work / "pos.bin")
    v.numpy().tofile(work / "v.bin")
    (work / "load.cpp").write_text(CPP)
    root = Path(torch.__file__).parent
    command = ["g++", "-O2", "-std=c++17",
               f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
               "-isystem", str(root / "include"),
               "-isystem", str(root / "include/torch/csrc/api/include"),
               str(work / "load.cpp"), "-o", str(work / "load"), f"-L{root / 'lib'}",
               f"-Wl,-rpath,{root / 'lib'}", "-Wl,--no-as-needed", "-ltorch", "-ltorch_cpu",
               "-lc10"]
    start = time.perf_counter()
    built = subprocess.run(command, capture_output=True, text=True)
    out["cpp_build_seconds"] = time.perf_counter() - start
    out["cpp_build_ok"] = built.returncode == 0
    ok = built.returncode == 0
    if ok:
        ran = subprocess.run([str(work / "load"), str(work), str(len(pos)), str(len(quads))],
                             capture_output=True, text=True)
        ok = ran.returncode == 0
        out.update(json.loads(ran.stdout) if ok else {"cpp_error": ran.stderr[-2000:]})
    else:
        out["cpp_error"] = built.stderr[-2000:]
    ok = ok and out["python_max_abs_diff"] < 1e-12 and out.get("cpp_max_abs_diff_vjp", 1) < 1e-12
    write_json(args.out, {"benchmark": "aoti", "ok": ok, "environment": environment(),
                          "load": monitor.result(), **out})
    print(json.dumps(out, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
