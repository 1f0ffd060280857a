// XML serialization of TorchCVForce. The TorchScript module is embedded as base64 so that a
// serialized System is self-contained, as openmm-torch does for TorchForce.
#include "TorchCVForceProxy.h"

#include "openmm_geom/TorchCVForce.h"
#include "openmm/OpenMMException.h"
#include "openmm/serialization/SerializationNode.h"

#include <cstdint>

using namespace OpenMM;
using namespace OpenMMGeom;

namespace {

const char* const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

std::string toBase64(const std::string& bytes) {
    std::string out;
    out.reserve(4 * ((bytes.size() + 2) / 3));
    for (std::size_t i = 0; i < bytes.size(); i += 3) {
        uint32_t chunk = static_cast<uint8_t>(bytes[i]) << 16;
        if (i + 1 < bytes.size()) chunk |= static_cast<uint8_t>(bytes[i + 1]) << 8;
        if (i + 2 < bytes.size()) chunk |= static_cast<uint8_t>(bytes[i + 2]);
        out += alphabet[(chunk >> 18) & 63];
        out += alphabet[(chunk >> 12) & 63];
        out += i + 1 < bytes.size() ? alphabet[(chunk >> 6) & 63] : '=';
        out += i + 2 < bytes.size() ? alphabet[chunk & 63] : '=';
    }
    return out;
}

std::string fromBase64(const std::string& text) {
    int value[256];
    std::fill(value, value + 256, -1);
    for (int i = 0; i < 64; i++)
        value[static_cast<uint8_t>(alphabet[i])] = i;
    std::string out;
    uint32_t buffer = 0;
    int bits = 0;
    for (char c : text) {
        if (c == '=')
            break;
        int v = value[static_cast<uint8_t>(c)];
        if (v < 0)
            throw OpenMMException("TorchCVForce: the serialized module is not valid base64");
        buffer = (buffer << 6) | v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out += static_cast<char>((buffer >> bits) & 0xFF);
        }
    }
    return out;
}

} // namespace

const char* const TorchCVForceProxy::TypeName = "openmm_geom.TorchCVForce";
const char* const TorchCVForceProxy::LegacyTypeName = "TorchCVForce";

TorchCVForceProxy::TorchCVForceProxy(const std::string& typeName) : SerializationProxy(typeName) {}

void TorchCVForceProxy::serialize(const void* object, SerializationNode& node) const {
    const TorchCVForce& force = *reinterpret_cast<const TorchCVForce*>(object);
    // 2: Gaussian hills; 3: per-hill widths, log transform; 4: backend (TorchScript/AOTInductor)
    node.setIntProperty("version", 4);
    node.setStringProperty("name", force.getName());
    node.setIntProperty("forceGroup", force.getForceGroup());
    node.setStringProperty("energy", force.getEnergyFunction());
    node.setBoolProperty("usesPeriodic", force.usesPeriodicBoundaryConditions());
    node.setStringProperty("module", toBase64(force.getSerializedModule()));
    node.setIntProperty("backend", static_cast<int>(force.getBackend()));
    SerializationNode& cvs = node.createChildNode("CollectiveVariables");
    for (int i = 0; i < force.getNumCollectiveVariables(); i++)
        cvs.createChildNode("Variable").setStringProperty("name", force.getCollectiveVariableName(i));
    SerializationNode& particles = node.createChildNode("Particles");
    for (int p : force.getParticles())
        particles.createChildNode("Particle").setIntProperty("index", p);
    SerializationNode& parameters = node.createChildNode("GlobalParameters");
    for (int i = 0; i < force.getNumGlobalParameters(); i++)
        parameters.createChildNode("Parameter")
            .setStringProperty("name", force.getGlobalParameterName(i))
            .setDoubleProperty("default", force.getGlobalParameterDefaultValue(i));
    SerializationNode& derivatives = node.createChildNode("EnergyParameterDerivatives");
    for (int i = 0; i < force.getNumEnergyParameterDerivatives(); i++)
        derivatives.createChildNode("Parameter").setStringProperty("name", force.getEnergyParameterDerivativeName(i));
    SerializationNode& functions = node.createChildNode("Functions");
    for (int i = 0; i < force.getNumTabulatedFunctions(); i++)
        functions.createChildNode("Function", &force.getTabulatedFunction(i))
            .setStringProperty("name", force.getTabulatedFunctionName(i));
    SerializationNode& hills = node.createChildNode("Hills");
    SerializationNode& variables = hills.createChildNode("Variables");
    for (int j = 0; j < force.getNumHillsVariables(); j++)
        variables.createChildNode("Variable")
            .setIntProperty("cv", force.getHillsCVIndices()[j])
            .setDoubleProperty("width", force.getHillsWidths()[j])
            .setDoubleProperty("period", force.getHillsPeriods()[j]);
    hills.setDoubleProperty("logPrefactor", force.getHillsLogPrefactor())
        .setDoubleProperty("logNormalization", force.getHillsLogNormalization())
        .setDoubleProperty("logEpsilon", force.getHillsLogEpsilon());
    const int d = force.getNumHillsVariables();
    const std::vector<double>& centers = force.getHillCenters();
    const std::vector<double>& widths = force.getHillWidths();
    for (int h = 0; h < force.getNumHills(); h++) {
        SerializationNode& hill = hills.createChildNode("Hill").setDoubleProperty("height", force.getHillHeights()[h]);
        for (int j = 0; j < d; j++)
            hill.setDoubleProperty("c" + std::to_string(j), centers[h * d + j])
                .setDoubleProperty("w" + std::to_string(j), widths[h * d + j]);
    }
}

void* TorchCVForceProxy::deserialize(const SerializationNode& node) const {
    const int version = node.getIntProperty("version");
    if (version < 1 || version > 4)
        throw OpenMMException("TorchCVForce: unsupported serialization version " +
                              std::to_string(node.getIntProperty("version")));
    std::vector<std::string> names;
    for (const auto& cv : node.getChildNode("CollectiveVariables").getChildren())
        names.push_back(cv.getStringProperty("name"));
    const int backend = version >= 4 ? node.getIntProperty("backend") : TorchCVForce::TorchScript;
    if (backend != TorchCVForce::TorchScript && backend != TorchCVForce::AOTInductor)
        throw OpenMMException("TorchCVForce: unknown backend " + std::to_string(backend) +
                              " in the serialized force (0 = TorchScript, 1 = AOTInductor)");
    auto* force = new TorchCVForce(fromBase64(node.getStringProperty("module")),
                                   node.getStringProperty("energy"), names,
                                   static_cast<TorchCVForce::Backend>(backend));
    try {
        force->setName(node.getStringProperty("name", force->getName()));
        force->setForceGroup(node.getIntProperty("forceGroup", 0));
        force->setUsesPeriodicBoundaryConditions(node.getBoolProperty("usesPeriodic"));
        std::vector<int> particles;
        for (const auto& p : node.getChildNode("Particles").getChildren())
            particles.push_back(p.getIntProperty("index"));
        force->setParticles(particles);
        for (const auto& p : node.getChildNode("GlobalParameters").getChildren())
            force->addGlobalParameter(p.getStringProperty("name"), p.getDoubleProperty("default"));
        for (const auto& p : node.getChildNode("EnergyParameterDerivatives").getChildren())
            force->addEnergyParameterDerivative(p.getStringProperty("name"));
        for (const auto& f : node.getChildNode("Functions").getChildren())
            force->addTabulatedFunction(f.getStringProperty("name"), f.decodeObject<TabulatedFunction>());
        if (version >= 2) {
            const SerializationNode& hills = node.getChildNode("Hills");
            std::vector<int> cvs;
            std::vector<double> widths, periods;
            for (const auto& v : hills.getChildNode("Variables").getChildren()) {
                cvs.push_back(v.getIntProperty("cv"));
                widths.push_back(v.getDoubleProperty("width"));
                periods.push_back(v.getDoubleProperty("period"));
            }
            if (!cvs.empty())
                force->setHillsVariables(cvs, widths, periods);
            std::vector<double> center(cvs.size()), hillWidths(version >= 3 ? cvs.size() : 0);
            for (const auto& h : hills.getChildren()) {
                if (h.getName() != "Hill")
                    continue;
                for (std::size_t j = 0; j < cvs.size(); j++)
                    center[j] = h.getDoubleProperty("c" + std::to_string(j));
                for (std::size_t j = 0; j < hillWidths.size(); j++)
                    hillWidths[j] = h.getDoubleProperty("w" + std::to_string(j));
                force->addHill(center, h.getDoubleProperty("height"), hillWidths);
            }
            if (version >= 3)
                force->setHillsLogTransform(hills.getDoubleProperty("logPrefactor"),
                                            hills.getDoubleProperty("logNormalization"),
                                            hills.getDoubleProperty("logEpsilon"));
        }
    } catch (...) {
        delete force;
        throw;
    }
    return force;
}
