#include "ReferenceTorchCVKernels.h"

#include "lepton/Parser.h"
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include "lepton/ExpressionTreeNode.h"
#include "lepton/Operation.h"
#include "lepton/ParsedExpression.h"
#include "openmm/OpenMMException.h"
#include "openmm/internal/ContextImpl.h"
#include "openmm/reference/ReferencePlatform.h"
#include "openmm/reference/ReferenceTabulatedFunction.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <unistd.h>

using namespace OpenMM;
using namespace OpenMMGeom;

namespace {

ReferencePlatform::PlatformData& platformData(ContextImpl& context) {
    return *reinterpret_cast<ReferencePlatform::PlatformData*>(context.getPlatformData());
}

/** The informative part of a TorchScript error: its last non-empty line. */
std::string lastLine(const std::string& text) {
    std::istringstream lines(text);
    std::string line, last;
    while (std::getline(lines, line))
        if (line.find_first_not_of(" \t\r") != std::string::npos)
            last = line;
    return last;
}

void collectVariables(const Lepton::ExpressionTreeNode& node, std::set<std::string>& names) {
    if (node.getOperation().getId() == Lepton::Operation::VARIABLE)
        names.insert(node.getOperation().getName());
    for (const auto& child : node.getChildren())
        collectVariables(child, names);
}

/** The package's metadata value `key` (an openmm_geom.* entry written by export_model). */
std::string packageEntry(const std::unordered_map<std::string, std::string>& metadata, const std::string& key) {
    auto found = metadata.find(key);
    if (found == metadata.end())
        throw OpenMMException("TorchCVForce: the AOTInductor package has no '" + key +
                              "' metadata entry; write it with openmm_geom.export.export_model(..., "
                              "format=\"aoti\")");
    return found->second;
}

/** A file holding `bytes` (the loader reads a path), removed when this goes out of scope. */
struct TemporaryFile {
    std::string path;
    explicit TemporaryFile(const std::string& bytes) {
        std::string pattern = (std::filesystem::temp_directory_path() / "openmm-geom-XXXXXX.pt2").string();
        std::vector<char> name(pattern.begin(), pattern.end());
        name.push_back('\0');
        int fd = mkstemps(name.data(), 4);
        if (fd < 0)
            throw OpenMMException("TorchCVForce: cannot create a temporary file for the AOTInductor package");
        close(fd);
        path = name.data();
        std::ofstream out(path, std::ios::binary);
        out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
        if (!out)
            throw OpenMMException("TorchCVForce: cannot write the AOTInductor package to " + path);
    }
    ~TemporaryFile() { std::remove(path.c_str()); }
};

std::string shapeOf(const torch::Tensor& t) {
    std::string s = "(";
    for (int64_t i = 0; i < t.dim(); i++)
        s += (i ? ", " : "") + std::to_string(t.size(i));
    return s + (t.dim() == 1 ? ",)" : ")");
}

} // namespace

ReferenceCalcTorchCVForceKernel::~ReferenceCalcTorchCVForceKernel() {
    for (auto* f : functions)
        delete f;
}

void ReferenceCalcTorchCVForceKernel::initialize(const System& system, const TorchCVForce& force) {
    aoti = force.getBackend() == TorchCVForce::AOTInductor;
    if (aoti)
        loadPackage(force);
    else
        loadTorchScript(force);
    energyFunction = force.getEnergyFunction();
    cvNames.clear();
    for (int i = 0; i < force.getNumCollectiveVariables(); i++)
        cvNames.push_back(force.getCollectiveVariableName(i));
    globalParameterNames.clear();
    for (int i = 0; i < force.getNumGlobalParameters(); i++)
        globalParameterNames.push_back(force.getGlobalParameterName(i));
    parameterDerivativeNames.clear();
    for (int i = 0; i < force.getNumEnergyParameterDerivatives(); i++)
        parameterDerivativeNames.push_back(force.getEnergyParameterDerivativeName(i));
    particles = force.getParticles();
    if (particles.empty())
        for (int i = 0; i < system.getNumParticles(); i++)
            particles.push_back(i);
    periodic = force.usesPeriodicBoundaryConditions();
    if (aoti)
        checkPackage(force);
    compileExpressions(force);
    copyHills(force);
}

void ReferenceCalcTorchCVForceKernel::loadTorchScript(const TorchCVForce& force) {
    std::istringstream stream(force.getSerializedModule());
    try {
        module = torch::jit::load(stream, torch::kCPU);
    } catch (const std::exception& e) {
        throw OpenMMException("TorchCVForce: the module is not a loadable TorchScript file: " +
                              lastLine(e.what()));
    }
    module.eval();
    // Freezing inlines parameters and attributes as constants and lets TorchScript optimise
    // the graph (measured: 0.81-0.87x of a frozen module's speed without it). Modules that
    // cannot be frozen run as they are.
    try {
        module = torch::jit::freeze(module);
    } catch (const std::exception&) {
    }
}

void ReferenceCalcTorchCVForceKernel::loadPackage(const TorchCVForce& force) {
    // The loader reads a path and extracts the compiled libraries to its own directory; the
    // package file itself is not needed once both models are loaded.
    TemporaryFile file(force.getSerializedModule());
    try {
        cvModel = std::make_unique<torch::inductor::AOTIModelPackageLoader>(file.path, "cv");
        vjpModel = std::make_unique<torch::inductor::AOTIModelPackageLoader>(file.path, "vjp");
        packageMetadata = cvModel->get_metadata();
    } catch (const std::exception& e) {
        cvModel.reset();
        vjpModel.reset();
        throw OpenMMException("TorchCVForce: the module is not a loadable AOTInductor package with "
                              "models 'cv' and 'vjp': " + lastLine(e.what()));
    }
}

void ReferenceCalcTorchCVForceKernel::checkPackage(const TorchCVForce& force) const {
    // A package is compiled for one atom count, CV count and periodicity: refuse any other
    // here rather than feed it tensors of other shapes.
    const int atoms = std::stoi(packageEntry(packageMetadata, "openmm_geom.n_atoms"));
    const int cvs = std::stoi(packageEntry(packageMetadata, "openmm_geom.num_cvs"));
    const bool packagePeriodic = packageEntry(packageMetadata, "openmm_geom.periodic") == "1";
    if (atoms != static_cast<int>(particles.size()))
        throw OpenMMException("TorchCVForce: the AOTInductor package was compiled for " + std::to_string(atoms) +
                              " atoms but the force passes " + std::to_string(particles.size()) +
                              " particles to it");
    if (cvs != force.getNumCollectiveVariables())
        throw OpenMMException("TorchCVForce: the AOTInductor package computes " + std::to_string(cvs) +
                              " collective variables but the force declares " +
                              std::to_string(force.getNumCollectiveVariables()));
    if (packagePeriodic != periodic)
        throw OpenMMException(std::string("TorchCVForce: the AOTInductor package was compiled ") +
                              (packagePeriodic ? "for a periodic model (it takes the box)"
                                               : "for a non-periodic model (it takes no box)") +
                              " but the force's usesPeriodicBoundaryConditions() is " +
                              (periodic ? "true" : "false"));
}

void ReferenceCalcTorchCVForceKernel::copyHills(const TorchCVForce& force) {
    hillsCVs = force.getHillsCVIndices();
    hillsPeriods = force.getHillsPeriods();
    hillCenters = force.getHillCenters();
    hillInverseWidth2.clear();
    for (double w : force.getHillWidths())
        hillInverseWidth2.push_back(1.0 / (w * w));
    hillHeights = force.getHillHeights();
    logPrefactor = force.getHillsLogPrefactor();
    logNormalization = force.getHillsLogNormalization();
    logEpsilon = force.getHillsLogEpsilon();
}

double ReferenceCalcTorchCVForceKernel::hillsEnergy(double* dEdcv) const {
    const std::size_t d = hillsCVs.size(), n = hillHeights.size();
    if (n == 0)
        return logPrefactor != 0.0 ? logPrefactor * std::log(logEpsilon) : 0.0;
    // Plain loops, O(hills * d): per variable, the CV value, period and 1/period.
    std::vector<double> s(d), inversePeriod(d), derivative(d, 0.0), delta(d);
    for (std::size_t j = 0; j < d; j++) {
        s[j] = cvValues[hillsCVs[j]];
        inversePeriod[j] = hillsPeriods[j] > 0.0 ? 1.0 / hillsPeriods[j] : 0.0;
    }
    double sum = 0.0;
    const double* center = hillCenters.data();
    const double* inverseWidth2 = hillInverseWidth2.data();
    for (std::size_t h = 0; h < n; h++, center += d, inverseWidth2 += d) {
        double exponent = 0.0;
        for (std::size_t j = 0; j < d; j++) {
            double x = s[j] - center[j];
            if (inversePeriod[j] != 0.0)
                x -= hillsPeriods[j] * std::floor(x * inversePeriod[j] + 0.5);
            delta[j] = x;
            exponent += x * x * inverseWidth2[j];
        }
        const double g = hillHeights[h] * std::exp(-0.5 * exponent);
        sum += g;
        if (dEdcv != nullptr)
            for (std::size_t j = 0; j < d; j++)
                derivative[j] -= g * delta[j] * inverseWidth2[j];
    }
    double energy = sum, chain = 1.0;
    if (logPrefactor != 0.0) {
        // a * log(S/N + eps): dE/ds = a / (S + N * eps) * dS/ds
        energy = logPrefactor * std::log(sum / logNormalization + logEpsilon);
        chain = logPrefactor / (sum + logNormalization * logEpsilon);
    }
    if (dEdcv != nullptr)
        for (std::size_t j = 0; j < d; j++)
            dEdcv[hillsCVs[j]] += chain * derivative[j];
    return energy;
}

void ReferenceCalcTorchCVForceKernel::compileExpressions(const TorchCVForce& force) {
    std::map<std::string, Lepton::CustomFunction*> byName;
    std::vector<Lepton::CustomFunction*> created;
    try {
        for (int i = 0; i < force.getNumTabulatedFunctions(); i++) {
            created.push_back(createReferenceTabulatedFunction(force.getTabulatedFunction(i)));
            byName[force.getTabulatedFunctionName(i)] = created.back();
        }
        Lepton::ParsedExpression energy = Lepton::Parser::parse(energyFunction, byName).optimize();
        std::set<std::string> known(cvNames.begin(), cvNames.end());
        known.insert(globalParameterNames.begin(), globalParameterNames.end());
        std::set<std::string> used;
        collectVariables(energy.getRootNode(), used);
        for (const std::string& name : used)
            if (known.count(name) == 0) {
                std::string cvs;
                for (const auto& cv : cvNames)
                    cvs += (cvs.empty() ? "" : ", ") + cv;
                throw OpenMMException("TorchCVForce: the energy expression uses '" + name +
                                      "', which is neither a collective variable (" + cvs +
                                      ") nor a global parameter");
            }
        // copy-constructed once from the temporary, so no ExpressionProgram is ever assigned to
        auto program = [](const Lepton::ParsedExpression& e) {
            return std::make_unique<Lepton::ExpressionProgram>(e.createProgram());
        };
        std::vector<Program> cvDerivatives, parameterDerivatives;
        for (const std::string& cv : cvNames)
            cvDerivatives.push_back(program(energy.differentiate(cv).optimize()));
        for (const std::string& p : parameterDerivativeNames)
            parameterDerivatives.push_back(program(energy.differentiate(p).optimize()));
        energyExpression = program(energy);
        cvDerivativeExpressions = std::move(cvDerivatives);
        parameterDerivativeExpressions = std::move(parameterDerivatives);
    } catch (const OpenMMException&) {
        for (auto* f : created)
            delete f;
        throw;
    } catch (const std::exception& e) {  // Lepton reports parse errors as Lepton::Exception
        for (auto* f : created)
            delete f;
        throw OpenMMException("TorchCVForce: cannot use the energy expression '" + energyFunction +
                              "': " + e.what());
    }
    for (auto* f : functions)
        delete f;
    functions = created;
}

void ReferenceCalcTorchCVForceKernel::gatherCoordinates(ContextImpl& context, std::vector<double>& coordinates,
                                                        double box[9]) const {
    const std::vector<Vec3>& positions = *platformData(context).positions;
    coordinates.resize(3 * particles.size());
    for (std::size_t i = 0; i < particles.size(); i++)
        for (int d = 0; d < 3; d++)
            coordinates[3 * i + d] = positions[particles[i]][d];
    const Vec3* vectors = platformData(context).periodicBoxVectors;
    for (int r = 0; r < 3; r++)
        for (int d = 0; d < 3; d++)
            box[3 * r + d] = periodic ? vectors[r][d] : 0.0;
}

std::vector<torch::Tensor> ReferenceCalcTorchCVForceKernel::packageInputs(const torch::Tensor& positions,
                                                                         const double box[9]) const {
    // The TorchScript module's boundary refuses non-finite inputs; the compiled package has no
    // such check of values, so it is made here, with the same message.
    const double* x = positions.data_ptr<double>();  // contiguous float64, made by the kernel
    bool finite = true;
    for (int64_t i = 0; i < positions.numel(); i++)
        finite = finite && std::isfinite(x[i]);
    if (!finite)
        throw OpenMMException("TorchCVForce: the module failed: positions contain NaN/inf values; the "
                              "model was not run: the simulation blew up, or it was given bad coordinates");
    std::vector<torch::Tensor> inputs{positions};
    if (periodic) {
        for (int i = 0; i < 9; i++)
            if (!std::isfinite(box[i]))
                throw OpenMMException("TorchCVForce: the module failed: the periodic box contains NaN/inf "
                                      "values; the model was not run");
        inputs.push_back(torch::from_blob(const_cast<double*>(box), {3, 3}, torch::kFloat64).clone());
    }
    return inputs;
}

torch::Tensor ReferenceCalcTorchCVForceKernel::evaluate(torch::Tensor positions, const double box[9]) {
    torch::Tensor cv;
    if (aoti) {
        std::vector<torch::Tensor> inputs = packageInputs(positions, box);
        try {
            cv = cvModel->run(inputs)[0];
        } catch (const std::exception& e) {
            throw OpenMMException("TorchCVForce: the module failed: " + lastLine(e.what()));
        }
    } else {
        std::vector<torch::jit::IValue> inputs{positions};
        if (periodic)
            inputs.emplace_back(torch::from_blob(const_cast<double*>(box), {3, 3}, torch::kFloat64).clone());
        try {
            cv = module.forward(inputs).toTensor();
        } catch (const std::exception& e) {
            throw OpenMMException("TorchCVForce: the module failed: " + lastLine(e.what()));
        }
    }
    const int64_t k = static_cast<int64_t>(cvNames.size());
    if (cv.dim() != 1 || cv.size(0) != k)
        throw OpenMMException("TorchCVForce: the module returned shape " + shapeOf(cv) +
                              " but the force declares " + std::to_string(k) +
                              " collective variables, shape (" + std::to_string(k) + ",)");
    torch::Tensor values = cv.detach().to(torch::kFloat64).contiguous();
    cvValues.assign(values.data_ptr<double>(), values.data_ptr<double>() + k);
    for (int64_t i = 0; i < k; i++)
        if (!std::isfinite(cvValues[i]))
            throw OpenMMException("TorchCVForce: the module returned a non-finite value for " +
                                  cvNames[i] + " (" + std::to_string(cvValues[i]) + ")");
    return cv;
}

std::map<std::string, double> ReferenceCalcTorchCVForceKernel::variables(ContextImpl& context) const {
    std::map<std::string, double> values;
    for (const std::string& name : globalParameterNames)
        values[name] = context.getParameter(name);
    for (std::size_t i = 0; i < cvNames.size(); i++)
        values[cvNames[i]] = cvValues[i];
    return values;
}

double ReferenceCalcTorchCVForceKernel::execute(ContextImpl& context, bool includeForces, bool includeEnergy) {
    std::vector<double> coordinates;
    double box[9];
    gatherCoordinates(context, coordinates, box);
    const int64_t n = static_cast<int64_t>(particles.size());
    torch::Tensor positions =
        torch::from_blob(coordinates.data(), {n, 3}, torch::kFloat64).clone().requires_grad_(includeForces && !aoti);
    torch::Tensor cv = evaluate(positions, box);
    cachedCoordinates = coordinates;
    std::copy(box, box + 9, cachedBox);
    cacheValid = true;

    const std::map<std::string, double> values = variables(context);
    double energy = energyExpression->evaluate(values);
    std::vector<double> dEdcv(cvNames.size(), 0.0);
    if (includeForces || includeEnergy)
        energy += hillsEnergy(includeForces ? dEdcv.data() : nullptr);
    if (includeForces) {
        for (std::size_t i = 0; i < cvNames.size(); i++)
            dEdcv[i] += cvDerivativeExpressions[i]->evaluate(values);
        torch::Tensor gradient;
        if (aoti) {
            // The package's VJP model: dE/dx = sum_i dE/dcv_i * dcv_i/dx, compiled.
            std::vector<torch::Tensor> inputs = packageInputs(positions, box);
            inputs.push_back(torch::from_blob(dEdcv.data(), {(int64_t) dEdcv.size()}, torch::kFloat64).clone());
            try {
                gradient = vjpModel->run(inputs)[0];
            } catch (const std::exception& e) {
                throw OpenMMException("TorchCVForce: the module's gradient failed: " + lastLine(e.what()));
            }
            if (gradient.dim() != 2 || gradient.size(0) != n || gradient.size(1) != 3)
                throw OpenMMException("TorchCVForce: the AOTInductor package's gradient has shape " +
                                      shapeOf(gradient) + ", not (" + std::to_string(n) + ", 3)");
        } else if (cv.requires_grad()) {
            // One backward pass for all CVs: dE/dx = sum_i dE/dcv_i * dcv_i/dx.
            torch::Tensor weights =
                torch::from_blob(dEdcv.data(), {(int64_t) dEdcv.size()}, torch::kFloat64).to(cv.dtype());
            gradient = torch::autograd::grad({cv}, {positions}, {weights},
                                             /*retain_graph=*/false,
                                             /*create_graph=*/false,
                                             /*allow_unused=*/true)[0];
        }
        {
            if (gradient.defined()) {
                gradient = gradient.to(torch::kFloat64).contiguous();
                const double* g = gradient.data_ptr<double>();
                std::vector<Vec3>& forces = *platformData(context).forces;
                for (int64_t i = 0; i < n; i++)
                    forces[particles[i]] -= Vec3(g[3 * i], g[3 * i + 1], g[3 * i + 2]);
            }
        }
        std::map<std::string, double>& derivatives = *platformData(context).energyParameterDerivatives;
        for (std::size_t i = 0; i < parameterDerivativeNames.size(); i++)
            derivatives[parameterDerivativeNames[i]] += parameterDerivativeExpressions[i]->evaluate(values);
    }
    return includeEnergy ? energy : 0.0;
}

void ReferenceCalcTorchCVForceKernel::getCollectiveVariableValues(ContextImpl& context, std::vector<double>& values) {
    std::vector<double> coordinates;
    double box[9];
    gatherCoordinates(context, coordinates, box);
    if (!(cacheValid && coordinates == cachedCoordinates && std::equal(box, box + 9, cachedBox))) {
        torch::NoGradGuard noGrad;
        torch::Tensor positions =
            torch::from_blob(coordinates.data(), {(int64_t) particles.size(), 3}, torch::kFloat64).clone();
        evaluate(positions, box);
        cachedCoordinates = coordinates;
        std::copy(box, box + 9, cachedBox);
        cacheValid = true;
    }
    values = cvValues;
}

void ReferenceCalcTorchCVForceKernel::copyParametersToContext(ContextImpl& context, const TorchCVForce& force) {
    if (force.getNumCollectiveVariables() != (int) cvNames.size())
        throw OpenMMException("TorchCVForce.updateParametersInContext: the number of collective "
                              "variables cannot change");
    if (force.getEnergyFunction() != energyFunction)
        throw OpenMMException("TorchCVForce.updateParametersInContext: the energy expression "
                              "cannot change; call context.reinitialize(preserveState=True)");
    compileExpressions(force);
    copyHills(force);
}
