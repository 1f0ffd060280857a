#ifndef OPENMM_GEOM_TORCHCVKERNELS_H_
#define OPENMM_GEOM_TORCHCVKERNELS_H_

#include "openmm_geom/TorchCVForce.h"
#include "openmm/KernelImpl.h"
#include "openmm/System.h"
#include "openmm/internal/ContextImpl.h"

#include <string>
#include <vector>

namespace OpenMMGeom {

/** The platform kernel behind TorchCVForce. */
class CalcTorchCVForceKernel : public OpenMM::KernelImpl {
public:
    static std::string Name() { return "CalcTorchCVForce"; }
    CalcTorchCVForceKernel(const std::string& name, const OpenMM::Platform& platform)
        : OpenMM::KernelImpl(name, platform) {}
    virtual void initialize(const OpenMM::System& system, const TorchCVForce& force) = 0;
    /** Add forces (kJ/mol/nm) to the Context and return the energy (kJ/mol). */
    virtual double execute(OpenMM::ContextImpl& context, bool includeForces, bool includeEnergy) = 0;
    virtual void getCollectiveVariableValues(OpenMM::ContextImpl& context, std::vector<double>& values) = 0;
    virtual void copyParametersToContext(OpenMM::ContextImpl& context, const TorchCVForce& force) = 0;
};

} // namespace OpenMMGeom

#endif
