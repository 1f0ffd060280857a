#ifndef OPENMM_GEOM_TORCHCVFORCEIMPL_H_
#define OPENMM_GEOM_TORCHCVFORCEIMPL_H_

#include "openmm_geom/TorchCVForce.h"
#include "openmm/Kernel.h"
#include "openmm/internal/ForceImpl.h"

#include <map>
#include <string>
#include <vector>

namespace OpenMMGeom {

class TorchCVForceImpl : public OpenMM::ForceImpl {
public:
    explicit TorchCVForceImpl(const TorchCVForce& owner) : owner(owner) {}
    void initialize(OpenMM::ContextImpl& context) override;
    const TorchCVForce& getOwner() const override { return owner; }
    void updateContextState(OpenMM::ContextImpl&, bool&) override {}
    double calcForcesAndEnergy(OpenMM::ContextImpl& context, bool includeForces,
                               bool includeEnergy, int groups) override;
    std::map<std::string, double> getDefaultParameters() override;
    std::vector<std::string> getKernelNames() override;
    void getCollectiveVariableValues(OpenMM::ContextImpl& context, std::vector<double>& values);
    void updateParametersInContext(OpenMM::ContextImpl& context);

private:
    const TorchCVForce& owner;
    OpenMM::Kernel kernel;
};

} // namespace OpenMMGeom

#endif
