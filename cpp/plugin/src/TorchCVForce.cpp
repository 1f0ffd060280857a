#include "openmm_geom/TorchCVForce.h"
#include "openmm_geom/internal/TorchCVForceImpl.h"

#include "openmm/OpenMMException.h"

#include <cmath>
#include <set>

using namespace OpenMM;
using namespace OpenMMGeom;

TorchCVForce::TorchCVForce(const std::string& serializedModule, const std::string& energy,
                           const std::vector<std::string>& cvNames, Backend backend)
    : serializedModule(serializedModule), backend(backend), energyExpression(energy), cvNames(cvNames) {
    if (backend != TorchScript && backend != AOTInductor)
        throw OpenMMException("TorchCVForce: unknown backend " + std::to_string(static_cast<int>(backend)) +
                              " (0 = TorchScript, 1 = AOTInductor)");
    if (serializedModule.empty())
        throw OpenMMException(backend == TorchScript ? "TorchCVForce: the serialized TorchScript module is empty"
                                                     : "TorchCVForce: the AOTInductor package is empty");
    if (cvNames.empty())
        throw OpenMMException("TorchCVForce: at least one collective variable name is needed");
    std::set<std::string> unique(cvNames.begin(), cvNames.end());
    if (unique.size() != cvNames.size())
        throw OpenMMException("TorchCVForce: collective variable names must be unique");
}

TorchCVForce::~TorchCVForce() {
    for (auto& f : functions)
        delete f.function;
}

void TorchCVForce::checkIndex(int index, std::size_t size, const char* what) const {
    if (index < 0 || static_cast<std::size_t>(index) >= size)
        throw OpenMMException(std::string("TorchCVForce: ") + what + " index " +
                              std::to_string(index) + " out of range (" + std::to_string(size) + ")");
}

const std::string& TorchCVForce::getCollectiveVariableName(int index) const {
    checkIndex(index, cvNames.size(), "collective variable");
    return cvNames[index];
}

void TorchCVForce::setParticles(const std::vector<int>& particles) {
    std::set<int> unique;
    for (int p : particles) {
        if (p < 0)
            throw OpenMMException("TorchCVForce: particle index " + std::to_string(p) + " is negative");
        if (!unique.insert(p).second)
            throw OpenMMException("TorchCVForce: particle " + std::to_string(p) + " is listed twice");
    }
    this->particles = particles;
}

int TorchCVForce::addGlobalParameter(const std::string& name, double defaultValue) {
    globalParameters.push_back({name, defaultValue});
    return static_cast<int>(globalParameters.size()) - 1;
}

const std::string& TorchCVForce::getGlobalParameterName(int index) const {
    checkIndex(index, globalParameters.size(), "global parameter");
    return globalParameters[index].name;
}

void TorchCVForce::setGlobalParameterName(int index, const std::string& name) {
    checkIndex(index, globalParameters.size(), "global parameter");
    globalParameters[index].name = name;
}

double TorchCVForce::getGlobalParameterDefaultValue(int index) const {
    checkIndex(index, globalParameters.size(), "global parameter");
    return globalParameters[index].defaultValue;
}

void TorchCVForce::setGlobalParameterDefaultValue(int index, double defaultValue) {
    checkIndex(index, globalParameters.size(), "global parameter");
    globalParameters[index].defaultValue = defaultValue;
}

void TorchCVForce::addEnergyParameterDerivative(const std::string& name) {
    for (const auto& p : globalParameters)
        if (p.name == name) {
            parameterDerivatives.push_back(name);
            return;
        }
    throw OpenMMException("TorchCVForce: addEnergyParameterDerivative('" + name +
                          "'): add the global parameter first");
}

const std::string& TorchCVForce::getEnergyParameterDerivativeName(int index) const {
    checkIndex(index, parameterDerivatives.size(), "energy parameter derivative");
    return parameterDerivatives[index];
}

int TorchCVForce::addTabulatedFunction(const std::string& name, TabulatedFunction* function) {
    if (function == nullptr)
        throw OpenMMException("TorchCVForce: addTabulatedFunction('" + name + "') got no function");
    functions.push_back({name, function});
    return static_cast<int>(functions.size()) - 1;
}

const TabulatedFunction& TorchCVForce::getTabulatedFunction(int index) const {
    checkIndex(index, functions.size(), "tabulated function");
    return *functions[index].function;
}

TabulatedFunction& TorchCVForce::getTabulatedFunction(int index) {
    checkIndex(index, functions.size(), "tabulated function");
    return *functions[index].function;
}

const std::string& TorchCVForce::getTabulatedFunctionName(int index) const {
    checkIndex(index, functions.size(), "tabulated function");
    return functions[index].name;
}

void TorchCVForce::setHillsVariables(const std::vector<int>& cvIndices, const std::vector<double>& widths,
                                     const std::vector<double>& periods) {
    const std::size_t d = cvIndices.size();
    if (widths.size() != d)
        throw OpenMMException("TorchCVForce.setHillsVariables: " + std::to_string(widths.size()) +
                              " widths for " + std::to_string(d) + " hills variables");
    if (!periods.empty() && periods.size() != d)
        throw OpenMMException("TorchCVForce.setHillsVariables: " + std::to_string(periods.size()) +
                              " periods for " + std::to_string(d) + " hills variables (0 = not periodic)");
    std::set<int> unique;
    for (std::size_t j = 0; j < d; j++) {
        const int cv = cvIndices[j];
        if (cv < 0 || cv >= getNumCollectiveVariables())
            throw OpenMMException("TorchCVForce.setHillsVariables: no collective variable with index " +
                                  std::to_string(cv) + " (the force has " +
                                  std::to_string(getNumCollectiveVariables()) + ")");
        if (!unique.insert(cv).second)
            throw OpenMMException("TorchCVForce.setHillsVariables: collective variable '" + cvNames[cv] +
                                  "' is listed twice");
        if (!(widths[j] > 0.0) || !std::isfinite(widths[j]))
            throw OpenMMException("TorchCVForce.setHillsVariables: the width of '" + cvNames[cv] +
                                  "' must be positive and finite, got " + std::to_string(widths[j]));
        if (!periods.empty() && (!(periods[j] >= 0.0) || !std::isfinite(periods[j])))
            throw OpenMMException("TorchCVForce.setHillsVariables: the period of '" + cvNames[cv] +
                                  "' must be >= 0 (0 = not periodic), got " + std::to_string(periods[j]));
    }
    if (!hillHeights.empty() && d != hillsCVs.size())
        throw OpenMMException("TorchCVForce.setHillsVariables: " + std::to_string(hillHeights.size()) +
                              " hills have " + std::to_string(hillsCVs.size()) +
                              "-dimensional centres; call clearHills() before changing the dimension");
    hillsCVs = cvIndices;
    hillsWidths = widths;
    hillsPeriods = periods.empty() ? std::vector<double>(d, 0.0) : periods;
}

int TorchCVForce::addHill(const std::vector<double>& center, double height, const std::vector<double>& widths) {
    if (hillsCVs.empty())
        throw OpenMMException("TorchCVForce.addHill: call setHillsVariables() first");
    if (center.size() != hillsCVs.size())
        throw OpenMMException("TorchCVForce.addHill: the centre has " + std::to_string(center.size()) +
                              " values but there are " + std::to_string(hillsCVs.size()) + " hills variables");
    if (!widths.empty() && widths.size() != hillsCVs.size())
        throw OpenMMException("TorchCVForce.addHill: " + std::to_string(widths.size()) + " widths but there are " +
                              std::to_string(hillsCVs.size()) + " hills variables");
    for (double c : center)
        if (!std::isfinite(c))
            throw OpenMMException("TorchCVForce.addHill: the centre must be finite");
    for (double w : widths)
        if (!(w > 0.0) || !std::isfinite(w))
            throw OpenMMException("TorchCVForce.addHill: the widths must be positive and finite, got " +
                                  std::to_string(w));
    if (!std::isfinite(height))
        throw OpenMMException("TorchCVForce.addHill: the height must be finite");
    hillCenters.insert(hillCenters.end(), center.begin(), center.end());
    const std::vector<double>& w = widths.empty() ? hillsWidths : widths;
    hillWidths.insert(hillWidths.end(), w.begin(), w.end());
    hillHeights.push_back(height);
    return static_cast<int>(hillHeights.size()) - 1;
}

void TorchCVForce::setHillsLogTransform(double prefactor, double normalization, double epsilon) {
    if (!std::isfinite(prefactor))
        throw OpenMMException("TorchCVForce.setHillsLogTransform: the prefactor must be finite");
    if (prefactor != 0.0 && (!(normalization > 0.0) || !std::isfinite(normalization)))
        throw OpenMMException("TorchCVForce.setHillsLogTransform: the normalization must be positive and "
                              "finite, got " + std::to_string(normalization));
    if (prefactor != 0.0 && (!(epsilon > 0.0) || !std::isfinite(epsilon)))
        throw OpenMMException("TorchCVForce.setHillsLogTransform: epsilon must be positive and finite, got " +
                              std::to_string(epsilon));
    logPrefactor = prefactor;
    logNormalization = prefactor != 0.0 ? normalization : 1.0;
    logEpsilon = prefactor != 0.0 ? epsilon : 1.0;
}

void TorchCVForce::getHill(int index, std::vector<double>& center, double& height) const {
    checkIndex(index, hillHeights.size(), "hill");
    const std::size_t d = hillsCVs.size();
    center.assign(hillCenters.begin() + index * d, hillCenters.begin() + (index + 1) * d);
    height = hillHeights[index];
}

void TorchCVForce::clearHills() {
    hillCenters.clear();
    hillWidths.clear();
    hillHeights.clear();
}

void TorchCVForce::getCollectiveVariableValues(Context& context, std::vector<double>& values) const {
    auto& impl = dynamic_cast<TorchCVForceImpl&>(const_cast<TorchCVForce*>(this)->getImplInContext(context));
    impl.getCollectiveVariableValues(const_cast<TorchCVForce*>(this)->getContextImpl(context), values);
}

void TorchCVForce::updateParametersInContext(Context& context) {
    dynamic_cast<TorchCVForceImpl&>(getImplInContext(context)).updateParametersInContext(getContextImpl(context));
}

ForceImpl* TorchCVForce::createImpl() const {
    return new TorchCVForceImpl(*this);
}
