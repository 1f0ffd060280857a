#ifndef OPENMM_GEOM_TORCHCVFORCEPROXY_H_
#define OPENMM_GEOM_TORCHCVFORCEPROXY_H_

#include "openmm/serialization/SerializationProxy.h"

#include <string>

namespace OpenMMGeom {

// The XML type name says which package defines the force, so that OpenMM's error for a
// System read without the plugin ("There is no serialization proxy registered for type
// 'openmm_geom.TorchCVForce'") names what to import. Files written before the rename say
// "TorchCVForce"; a second proxy registered under that name still reads them.
class TorchCVForceProxy : public OpenMM::SerializationProxy {
public:
    static const char* const TypeName;        // "openmm_geom.TorchCVForce": written and read
    static const char* const LegacyTypeName;  // "TorchCVForce": read only
    explicit TorchCVForceProxy(const std::string& typeName = TypeName);
    void serialize(const void* object, OpenMM::SerializationNode& node) const override;
    void* deserialize(const OpenMM::SerializationNode& node) const override;
};

} // namespace OpenMMGeom

#endif
