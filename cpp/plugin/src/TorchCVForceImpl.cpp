#include "openmm_geom/internal/TorchCVForceImpl.h"
#include "openmm_geom/TorchCVKernels.h"

#include "openmm/OpenMMException.h"
#include "openmm/internal/ContextImpl.h"

using namespace OpenMM;
using namespace OpenMMGeom;

void TorchCVForceImpl::initialize(ContextImpl& context) {
    const int numParticles = context.getSystem().getNumParticles();
    for (int p : owner.getParticles())
        if (p >= numParticles)
            throw OpenMMException("TorchCVForce: particle index " + std::to_string(p) +
                                  " out of range for a System of " + std::to_string(numParticles) +
                                  " particles");
    kernel = context.getPlatform().createKernel(CalcTorchCVForceKernel::Name(), context);
    kernel.getAs<CalcTorchCVForceKernel>().initialize(context.getSystem(), owner);
}

double TorchCVForceImpl::calcForcesAndEnergy(ContextImpl& context, bool includeForces,
                                             bool includeEnergy, int groups) {
    if ((groups & (1 << owner.getForceGroup())) == 0)
        return 0.0;
    return kernel.getAs<CalcTorchCVForceKernel>().execute(context, includeForces, includeEnergy);
}

std::map<std::string, double> TorchCVForceImpl::getDefaultParameters() {
    std::map<std::string, double> parameters;
    for (int i = 0; i < owner.getNumGlobalParameters(); i++)
        parameters[owner.getGlobalParameterName(i)] = owner.getGlobalParameterDefaultValue(i);
    return parameters;
}

std::vector<std::string> TorchCVForceImpl::getKernelNames() {
    return {CalcTorchCVForceKernel::Name()};
}

void TorchCVForceImpl::getCollectiveVariableValues(ContextImpl& context, std::vector<double>& values) {
    kernel.getAs<CalcTorchCVForceKernel>().getCollectiveVariableValues(context, values);
}

void TorchCVForceImpl::updateParametersInContext(ContextImpl& context) {
    kernel.getAs<CalcTorchCVForceKernel>().copyParametersToContext(context, owner);
    context.systemChanged();
}
