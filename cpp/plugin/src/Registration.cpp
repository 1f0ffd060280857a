// Registers the TorchCVForce kernels with every Reference-derived platform (Reference, CPU)
// and its XML serialization proxy. Called when `openmm_geom` is imported; also usable as an
// OpenMM plugin library (Platform.loadPluginLibrary), hence the extern "C" entry points.
#include "ReferenceTorchCVKernels.h"
#include "TorchCVForceProxy.h"

#include "openmm_geom/TorchCVForce.h"
#include "openmm/KernelFactory.h"
#include "openmm/OpenMMException.h"
#include "openmm/Platform.h"
#include "openmm/reference/ReferencePlatform.h"
#include "openmm/serialization/SerializationProxy.h"

#include <mutex>
#include <set>
#include <typeinfo>

using namespace OpenMM;
using namespace OpenMMGeom;

namespace {

class ReferenceTorchCVKernelFactory : public KernelFactory {
public:
    KernelImpl* createKernelImpl(std::string name, const Platform& platform, ContextImpl&) const override {
        if (name == CalcTorchCVForceKernel::Name())
            return new ReferenceCalcTorchCVForceKernel(name, platform);
        throw OpenMMException("openmm-geom: unknown kernel '" + name + "'");
    }
};

std::mutex registrationMutex;
std::set<const Platform*> registeredPlatforms;
bool proxyRegistered = false;

} // namespace

extern "C" OPENMM_EXPORT int openmmGeomRegister() {
    std::lock_guard<std::mutex> lock(registrationMutex);
    int added = 0;
    for (int i = 0; i < Platform::getNumPlatforms(); i++) {
        Platform& platform = Platform::getPlatform(i);
        if (dynamic_cast<ReferencePlatform*>(&platform) == nullptr || registeredPlatforms.count(&platform))
            continue;
        platform.registerKernelFactory(CalcTorchCVForceKernel::Name(), new ReferenceTorchCVKernelFactory());
        registeredPlatforms.insert(&platform);
        added++;
    }
    if (!proxyRegistered) {
        // registerProxy maps both the C++ type and the proxy's name to the proxy; the last
        // registration of a type is the one used to write. So: the legacy name first (read
        // only), then the package-qualified name (read and written).
        SerializationProxy::registerProxy(typeid(TorchCVForce),
                                          new TorchCVForceProxy(TorchCVForceProxy::LegacyTypeName));
        SerializationProxy::registerProxy(typeid(TorchCVForce),
                                          new TorchCVForceProxy(TorchCVForceProxy::TypeName));
        proxyRegistered = true;
    }
    return added;
}

extern "C" OPENMM_EXPORT void registerPlatforms() {}

extern "C" OPENMM_EXPORT void registerKernelFactories() {
    openmmGeomRegister();
}
