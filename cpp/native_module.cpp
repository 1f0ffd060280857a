// openmm_geom._native: compiled parts of openmm-geom.
// For now it reports what it was built against, so `openmm-geom doctor` can tell a stale
// build (compiled against another torch/OpenMM than the one imported) from a good one.
#include <pybind11/pybind11.h>
#include <torch/script.h>
#include <OpenMM.h>

namespace py = pybind11;

static py::dict build_info() {
    py::dict info;
    info["built_against_torch"] = OPENMM_GEOM_BUILT_TORCH;
    info["built_against_openmm"] = OPENMM_GEOM_BUILT_OPENMM;
    info["openmm_runtime_version"] = OpenMM::Platform::getOpenMMVersion();
    info["pybind11_version"] = std::to_string(PYBIND11_VERSION_MAJOR) + "." +
                               std::to_string(PYBIND11_VERSION_MINOR) + "." +
                               std::to_string(PYBIND11_VERSION_PATCH);
    info["cxx11_abi"] = static_cast<bool>(_GLIBCXX_USE_CXX11_ABI);
    info["compiler"] = __VERSION__;
    return info;
}

// A real libtorch call: proves the extension links and runs libtorch, not only its headers.
static double torch_selftest() {
    auto x = torch::arange(4, torch::TensorOptions().dtype(torch::kFloat64)).requires_grad_(true);
    auto y = (x * x).sum();
    y.backward();
    return x.grad().sum().item<double>();  // d/dx sum(x^2) = 2x -> 2*(0+1+2+3) = 12
}

PYBIND11_MODULE(_native, m) {
    m.doc() = "Compiled extension of openmm-geom (libtorch + OpenMM).";
    m.def("build_info", &build_info, "Versions this extension was built against and runs with.");
    m.def("torch_selftest", &torch_selftest, py::call_guard<py::gil_scoped_release>(),
          "Run a libtorch autograd computation; returns 12.0 when libtorch works.");
}
