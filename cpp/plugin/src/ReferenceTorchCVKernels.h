#ifndef OPENMM_GEOM_REFERENCETORCHCVKERNELS_H_
#define OPENMM_GEOM_REFERENCETORCHCVKERNELS_H_

#include "openmm_geom/TorchCVKernels.h"

#include "lepton/CustomFunction.h"
#include "lepton/ExpressionProgram.h"
#include "openmm/Vec3.h"

#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/script.h>

#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

namespace OpenMMGeom {

/**
 * TorchCVForce on the Reference and CPU platforms (the CPU platform shares the Reference
 * platform's position/force arrays). Positions are passed to the module as float64.
 */
class ReferenceCalcTorchCVForceKernel : public CalcTorchCVForceKernel {
public:
    ReferenceCalcTorchCVForceKernel(const std::string& name, const OpenMM::Platform& platform)
        : CalcTorchCVForceKernel(name, platform) {}
    ~ReferenceCalcTorchCVForceKernel();
    void initialize(const OpenMM::System& system, const TorchCVForce& force) override;
    double execute(OpenMM::ContextImpl& context, bool includeForces, bool includeEnergy) override;
    void getCollectiveVariableValues(OpenMM::ContextImpl& context, std::vector<double>& values) override;
    void copyParametersToContext(OpenMM::ContextImpl& context, const TorchCVForce& force) override;

private:
    /** Parse the energy and its derivatives with the force's current tabulated functions. */
    void compileExpressions(const TorchCVForce& force);
    /** Load the force's TorchScript module (backend TorchScript). */
    void loadTorchScript(const TorchCVForce& force);
    /** Load the force's AOTInductor package's "cv" and "vjp" models (backend AOTInductor). */
    void loadPackage(const TorchCVForce& force);
    /** Check the package's atom count, CV count and periodicity against the force. */
    void checkPackage(const TorchCVForce& force) const;
    /** The package models' inputs: positions [, box], checked to be finite. */
    std::vector<torch::Tensor> packageInputs(const torch::Tensor& positions, const double box[9]) const;
    /** Gather the module's input coordinates (nm) into `coordinates`. */
    void gatherCoordinates(OpenMM::ContextImpl& context, std::vector<double>& coordinates, double box[9]) const;
    /** Run the module; checks the output shape and values and records them in the cache. */
    torch::Tensor evaluate(torch::Tensor positions, const double box[9]);
    /** Copy the force's hills variables and hills. */
    void copyHills(const TorchCVForce& force);
    /**
     * The Gaussian hills' energy at the current cvValues; adds their dE/dcv to dEdcv (indexed
     * by CV) when it is not null.
     */
    double hillsEnergy(double* dEdcv) const;
    /** CV values and global parameters by name, as the expressions read them. */
    std::map<std::string, double> variables(OpenMM::ContextImpl& context) const;

    torch::jit::Module module;
    // backend AOTInductor: the package's two models and its metadata
    bool aoti = false;
    std::unique_ptr<torch::inductor::AOTIModelPackageLoader> cvModel, vjpModel;
    std::unordered_map<std::string, std::string> packageMetadata;
    std::string energyFunction;
    std::vector<std::string> cvNames;
    std::vector<std::string> globalParameterNames;
    std::vector<std::string> parameterDerivativeNames;
    std::vector<int> particles;
    bool periodic = false;
    std::vector<Lepton::CustomFunction*> functions;
    // ExpressionProgram, not CompiledExpression: the latter's layout depends on whether OpenMM
    // was built with Lepton's JIT (asmjit headers are not shipped), so it is not ABI-safe here.
    // Held by pointer and never assigned to: Lepton's ExpressionProgram::operator= overwrites
    // its operations without deleting them, so recompiling by assignment (every metadynamics
    // deposition) leaked every operation, including a tabulated bias's spline table (42 MB
    // per update on a 501 x 501 grid).
    using Program = std::unique_ptr<Lepton::ExpressionProgram>;
    Program energyExpression;
    std::vector<Program> cvDerivativeExpressions;
    std::vector<Program> parameterDerivativeExpressions;
    // Gaussian hills: the CVs they act on, periods (0 = none), centres and 1/width^2 (both
    // hill-major), heights; the optional log transform a * log(S / N + eps) (a = 0: plain sum).
    std::vector<int> hillsCVs;
    std::vector<double> hillsPeriods, hillCenters, hillInverseWidth2, hillHeights;
    double logPrefactor = 0.0, logNormalization = 1.0, logEpsilon = 1.0;
    // The CVs of the last evaluation and the coordinates/box they belong to.
    std::vector<double> cvValues;
    std::vector<double> cachedCoordinates;
    double cachedBox[9] = {0};
    bool cacheValid = false;
};

} // namespace OpenMMGeom

#endif
