#include "openmm_geom/TorchCVForce.h"
#include "openmm_geom/internal/TorchCVForceImpl.h"

#include "openmm/OpenMMException.h"

#include <set>

using namespace OpenMM;
using namespace OpenMMGeom;

TorchCVForce::TorchCVForce(const std::string& serializedModule, const std::string& energy,
                           const std::vector<std::string>& cvNames)
    : serializedModule(serializedModule), energyExpression(energy), cvNames(cvNames) {
    if (serializedModule.empty())
        throw OpenMMException("TorchCVForce: the serialized TorchScript module is empty");
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
