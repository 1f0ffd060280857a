#ifndef OPENMM_GEOM_TORCHCVFORCEPROXY_H_
#define OPENMM_GEOM_TORCHCVFORCEPROXY_H_

#include "openmm/serialization/SerializationProxy.h"

namespace OpenMMGeom {

class TorchCVForceProxy : public OpenMM::SerializationProxy {
public:
    TorchCVForceProxy();
    void serialize(const void* object, OpenMM::SerializationNode& node) const override;
    void* deserialize(const OpenMM::SerializationNode& node) const override;
};

} // namespace OpenMMGeom

#endif
