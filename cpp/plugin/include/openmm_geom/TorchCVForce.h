#ifndef OPENMM_GEOM_TORCHCVFORCE_H_
#define OPENMM_GEOM_TORCHCVFORCE_H_

#include "openmm/Context.h"
#include "openmm/Force.h"
#include "openmm/TabulatedFunction.h"

#include <string>
#include <vector>

namespace OpenMMGeom {

/**
 * A force whose energy is an arbitrary expression of k collective variables that one
 * TorchScript module computes in one pass: positions[N,3] (nm) [, box[3,3] (nm)] -> cv[k].
 *
 * The energy expression is parsed by Lepton exactly as CustomCVForce does: the CVs appear
 * under their names, together with global parameters and tabulated functions
 * (Continuous1D/2D/3DFunction, Discrete*). Forces come from a single backward pass with
 * grad_outputs dE/dcv, so the cost is one model evaluation whatever k is.
 *
 * The module is stored as its serialized TorchScript bytes, which is also how it is
 * embedded in XML serialization.
 *
 * Gaussian hills (metadynamics on any number of CVs): setHillsVariables() chooses d of the k
 * CVs with a width (standard deviation) and a period (0 = not periodic) each; every addHill()
 * adds height * exp(-0.5 sum_j (delta_j / width_j)^2) to the energy, delta_j being the
 * difference between the CV and the hill's centre (the shortest one on the circle for a
 * periodic CV). The hills' dE/dcv joins the expression's before the single backward pass, so
 * they cost O(hills * d) arithmetic per step and no extra model evaluation. Hills reach a
 * Context through updateParametersInContext().
 *
 * Each hill may carry its own widths (addHill with widths; OPES kernels after compression), and
 * the hills' sum S(s) may enter the energy through a logarithm instead of directly:
 * setHillsLogTransform(a, N, eps) makes the hills' energy a * log(S(s) / N + eps), the OPES
 * bias (1 - 1/gamma) kT log(P(s)/Z + eps) when the heights are the kernels' weights and
 * N = Z * sum of weights.
 */
class TorchCVForce : public OpenMM::Force {
public:
    /** How the serialized module is run. */
    enum Backend {
        /** A TorchScript file (torch.jit.save); forces by autograd. */
        TorchScript = 0,
        /**
         * An AOTInductor package (.pt2) holding two compiled models: "cv", positions[N,3]
         * [, box[3,3]] -> cv[k], and "vjp", (positions[, box], w[k]) -> w . dcv/dpositions,
         * all float64, compiled for one atom count (openmm_geom.export.export_model(...,
         * format="aoti")). Its metadata gives openmm_geom.n_atoms, openmm_geom.num_cvs and
         * openmm_geom.periodic, checked against the force when a Context is created.
         */
        AOTInductor = 1
    };
    /**
     * @param serializedModule  the bytes of a TorchScript file (torch.jit.save), or of an
     *                          AOTInductor package if backend is AOTInductor
     * @param energy            energy expression (kJ/mol) of the CVs and global parameters
     * @param cvNames           names of the module's k outputs, in order
     * @param backend           what serializedModule holds
     */
    TorchCVForce(const std::string& serializedModule, const std::string& energy,
                 const std::vector<std::string>& cvNames, Backend backend = TorchScript);
    ~TorchCVForce();

    const std::string& getSerializedModule() const { return serializedModule; }
    Backend getBackend() const { return backend; }
    int getNumCollectiveVariables() const { return static_cast<int>(cvNames.size()); }
    const std::string& getCollectiveVariableName(int index) const;
    const std::string& getEnergyFunction() const { return energyExpression; }
    void setEnergyFunction(const std::string& energy) { energyExpression = energy; }

    /** The particles passed to the module, in order; empty means all particles of the System. */
    void setParticles(const std::vector<int>& particles);
    const std::vector<int>& getParticles() const { return particles; }

    void setUsesPeriodicBoundaryConditions(bool periodic) { periodic_ = periodic; }
    bool usesPeriodicBoundaryConditions() const override { return periodic_; }

    int getNumGlobalParameters() const { return static_cast<int>(globalParameters.size()); }
    int addGlobalParameter(const std::string& name, double defaultValue);
    const std::string& getGlobalParameterName(int index) const;
    void setGlobalParameterName(int index, const std::string& name);
    double getGlobalParameterDefaultValue(int index) const;
    void setGlobalParameterDefaultValue(int index, double defaultValue);

    int getNumEnergyParameterDerivatives() const { return static_cast<int>(parameterDerivatives.size()); }
    void addEnergyParameterDerivative(const std::string& name);
    const std::string& getEnergyParameterDerivativeName(int index) const;

    /** Takes ownership of the function. */
    int addTabulatedFunction(const std::string& name, OpenMM::TabulatedFunction* function);
    int getNumTabulatedFunctions() const { return static_cast<int>(functions.size()); }
    const OpenMM::TabulatedFunction& getTabulatedFunction(int index) const;
    OpenMM::TabulatedFunction& getTabulatedFunction(int index);
    const std::string& getTabulatedFunctionName(int index) const;

    /**
     * The CV values at the Context's current positions. If the force was last evaluated at
     * exactly these positions (and box), the values it computed are returned without running
     * the module again; otherwise the module runs once, without gradients.
     */
    void getCollectiveVariableValues(OpenMM::Context& context, std::vector<double>& values) const;

    /**
     * Choose the CVs the Gaussian hills act on.
     * @param cvIndices  indices of distinct CVs (0 <= index < k), in the order of hill centres
     * @param widths     the hills' standard deviation along each, > 0 (CV units)
     * @param periods    the period of each CV (e.g. 2*pi for an angle), 0 = not periodic;
     *                   an empty vector means no CV is periodic
     * Changing the variables while hills exist is an error unless their number stays the same
     * (clearHills() first otherwise); hills already added keep the widths they were added with.
     */
    void setHillsVariables(const std::vector<int>& cvIndices, const std::vector<double>& widths,
                           const std::vector<double>& periods);
    int getNumHillsVariables() const { return static_cast<int>(hillsCVs.size()); }
    const std::vector<int>& getHillsCVIndices() const { return hillsCVs; }
    const std::vector<double>& getHillsWidths() const { return hillsWidths; }
    const std::vector<double>& getHillsPeriods() const { return hillsPeriods; }
    /**
     * Add a hill centred at `center` (one value per hills variable); returns its index.
     * @param widths  this hill's standard deviations (one per hills variable, > 0); empty means
     *                the hills variables' widths at the time of the call
     */
    int addHill(const std::vector<double>& center, double height,
                const std::vector<double>& widths = std::vector<double>());
    int getNumHills() const { return static_cast<int>(hillHeights.size()); }
    void getHill(int index, std::vector<double>& center, double& height) const;
    /** All hill centres, hill-major (getNumHills() x getNumHillsVariables()). */
    const std::vector<double>& getHillCenters() const { return hillCenters; }
    const std::vector<double>& getHillHeights() const { return hillHeights; }
    /** All hills' widths, hill-major (getNumHills() x getNumHillsVariables()). */
    const std::vector<double>& getHillWidths() const { return hillWidths; }
    void clearHills();

    /**
     * Make the hills' energy prefactor * log(S / normalization + epsilon), S being the sum of the
     * Gaussians (OPES). prefactor = 0 restores the plain sum S (the default).
     * @param prefactor      kJ/mol, finite
     * @param normalization  > 0 (same units as the heights)
     * @param epsilon        > 0
     */
    void setHillsLogTransform(double prefactor, double normalization, double epsilon);
    double getHillsLogPrefactor() const { return logPrefactor; }
    double getHillsLogNormalization() const { return logNormalization; }
    double getHillsLogEpsilon() const { return logEpsilon; }

    /**
     * Copy changed tabulated functions (e.g. a metadynamics bias grid), hills and hills
     * variables into a Context. Not allowed: a changed energy expression or number of CVs.
     */
    void updateParametersInContext(OpenMM::Context& context);

protected:
    OpenMM::ForceImpl* createImpl() const override;

private:
    struct GlobalParameter {
        std::string name;
        double defaultValue;
    };
    struct Function {
        std::string name;
        OpenMM::TabulatedFunction* function;
    };
    void checkIndex(int index, std::size_t size, const char* what) const;

    std::string serializedModule;
    Backend backend = TorchScript;
    std::string energyExpression;
    std::vector<std::string> cvNames;
    std::vector<int> particles;
    bool periodic_ = false;
    std::vector<GlobalParameter> globalParameters;
    std::vector<std::string> parameterDerivatives;
    std::vector<Function> functions;
    std::vector<int> hillsCVs;
    std::vector<double> hillsWidths, hillsPeriods;
    std::vector<double> hillCenters, hillHeights, hillWidths;
    double logPrefactor = 0.0, logNormalization = 1.0, logEpsilon = 1.0;
};

} // namespace OpenMMGeom

#endif
