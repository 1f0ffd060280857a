// SWIG wrapper of OpenMMGeom::TorchCVForce. It imports OpenMM's own SWIG declarations, so the
// generated class derives from openmm.Force and System.addForce(), XmlSerializer and
// force groups treat it like any OpenMM force. Built with -threads: the GIL is released while
// OpenMM/libtorch compute.
%module(package="openmm_geom") torchcv_plugin

%import(module="openmm") "swig/OpenMMSwigHeaders.i"
%include "factory.i"
%include <std_string.i>

%{
#include "OpenMM.h"
#include "OpenMMAmoeba.h"
#include "OpenMMDrude.h"
#include "openmm/RPMDIntegrator.h"
#include "openmm/RPMDMonteCarloBarostat.h"
#include "openmm_geom/TorchCVForce.h"
extern "C" int openmmGeomRegister();
%}

%init %{
    openmmGeomRegister();
%}

%inline %{
/** Register TorchCVForce's kernels with platforms loaded since (idempotent); returns how many. */
int registerKernels() {
    return openmmGeomRegister();
}
%}

// C++ exceptions become openmm.OpenMMException, like errors from OpenMM itself.
%exception {
    try {
        $action
    } catch (const std::exception& e) {
        SWIG_PYTHON_THREAD_BEGIN_BLOCK;
        PyObject* openmm = PyImport_ImportModule("openmm");
        PyObject* type = openmm ? PyObject_GetAttrString(openmm, "OpenMMException") : NULL;
        PyErr_SetString(type ? type : PyExc_Exception, e.what());
        Py_XDECREF(type);
        Py_XDECREF(openmm);
        SWIG_PYTHON_THREAD_END_BLOCK;
        SWIG_fail;
    }
}

// The module travels as the bytes of a TorchScript file.
%typemap(in) const std::string& serializedModule (std::string temp) {
    char* buffer;
    Py_ssize_t length;
    if (PyBytes_AsStringAndSize($input, &buffer, &length) < 0) SWIG_fail;
    temp.assign(buffer, length);
    $1 = &temp;
}
%typemap(freearg) const std::string& serializedModule ""
%typemap(typecheck, precedence=SWIG_TYPECHECK_STRING) const std::string& serializedModule {
    $1 = PyBytes_Check($input) ? 1 : 0;
}
%typemap(out) const std::string& getSerializedModule {
    $result = PyBytes_FromStringAndSize($1->data(), (Py_ssize_t) $1->size());
}

%typemap(in) const std::vector<std::string>& (std::vector<std::string> temp) {
    PyObject* sequence = PySequence_Fast($input, "expected a sequence of str");
    if (!sequence) SWIG_fail;
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(sequence); i++) {
        PyObject* item = PySequence_Fast_GET_ITEM(sequence, i);
        if (!PyUnicode_Check(item)) {
            Py_DECREF(sequence);
            PyErr_SetString(PyExc_TypeError, "expected a sequence of str");
            SWIG_fail;
        }
        temp.push_back(PyUnicode_AsUTF8(item));
    }
    Py_DECREF(sequence);
    $1 = &temp;
}
%typemap(typecheck) const std::vector<std::string>& { $1 = PySequence_Check($input) ? 1 : 0; }

%typemap(in) const std::vector<int>& (std::vector<int> temp) {
    PyObject* sequence = PySequence_Fast($input, "expected a sequence of int");
    if (!sequence) SWIG_fail;
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(sequence); i++) {
        long value = PyLong_AsLong(PySequence_Fast_GET_ITEM(sequence, i));
        if (value == -1 && PyErr_Occurred()) {
            Py_DECREF(sequence);
            SWIG_fail;
        }
        temp.push_back((int) value);
    }
    Py_DECREF(sequence);
    $1 = &temp;
}
%typemap(typecheck) const std::vector<int>& { $1 = PySequence_Check($input) ? 1 : 0; }
%typemap(out) const std::vector<int>& {
    $result = PyList_New($1->size());
    for (size_t i = 0; i < $1->size(); i++)
        PyList_SET_ITEM($result, i, PyLong_FromLong((*$1)[i]));
}

%typemap(in) const std::vector<double>& (std::vector<double> temp) {
    PyObject* sequence = PySequence_Fast($input, "expected a sequence of float");
    if (!sequence) SWIG_fail;
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(sequence); i++) {
        double value = PyFloat_AsDouble(PySequence_Fast_GET_ITEM(sequence, i));
        if (value == -1.0 && PyErr_Occurred()) {
            Py_DECREF(sequence);
            SWIG_fail;
        }
        temp.push_back(value);
    }
    Py_DECREF(sequence);
    $1 = &temp;
}
%typemap(typecheck) const std::vector<double>& { $1 = PySequence_Check($input) ? 1 : 0; }
%typemap(out) const std::vector<double>& {
    $result = PyList_New($1->size());
    for (size_t i = 0; i < $1->size(); i++)
        PyList_SET_ITEM($result, i, PyFloat_FromDouble((*$1)[i]));
}

%factory(OpenMM::TabulatedFunction& OpenMMGeom::TorchCVForce::getTabulatedFunction,
         OpenMM::Continuous1DFunction, OpenMM::Continuous2DFunction, OpenMM::Continuous3DFunction,
         OpenMM::Discrete1DFunction, OpenMM::Discrete2DFunction, OpenMM::Discrete3DFunction);

// The force takes ownership of tabulated functions, as CustomCVForce does.
%pythonprepend OpenMMGeom::TorchCVForce::addTabulatedFunction %{
    if not function.thisown:
        raise ValueError("this tabulated function already belongs to another force")
%}
%pythonappend OpenMMGeom::TorchCVForce::addTabulatedFunction %{
    function.thisown = 0
%}

// cast() returns a view of the same C++ object: keep the Python object that owns it alive
// (e.g. TorchCVForce.cast(XmlSerializer.deserialize(xml)) would otherwise dangle).
%pythonappend OpenMMGeom::TorchCVForce::cast %{
    val._cast_source = force
%}

// This method releases the GIL itself around the computation and builds its tuple with it held.
%feature("nothread") OpenMMGeom::TorchCVForce::getCollectiveVariableValues;
%feature("nothread") OpenMMGeom::TorchCVForce::getHill;

namespace OpenMMGeom {

class TorchCVForce : public OpenMM::Force {
public:
    enum Backend { TorchScript = 0, AOTInductor = 1 };
    TorchCVForce(const std::string& serializedModule, const std::string& energy,
                 const std::vector<std::string>& cvNames, Backend backend = TorchScript);
    const std::string& getSerializedModule() const;
    Backend getBackend() const;
    int getNumCollectiveVariables() const;
    const std::string& getCollectiveVariableName(int index) const;
    const std::string& getEnergyFunction() const;
    void setEnergyFunction(const std::string& energy);
    void setParticles(const std::vector<int>& particles);
    const std::vector<int>& getParticles() const;
    void setUsesPeriodicBoundaryConditions(bool periodic);
    bool usesPeriodicBoundaryConditions() const;
    int getNumGlobalParameters() const;
    int addGlobalParameter(const std::string& name, double defaultValue);
    const std::string& getGlobalParameterName(int index) const;
    void setGlobalParameterName(int index, const std::string& name);
    double getGlobalParameterDefaultValue(int index) const;
    void setGlobalParameterDefaultValue(int index, double defaultValue);
    int getNumEnergyParameterDerivatives() const;
    void addEnergyParameterDerivative(const std::string& name);
    const std::string& getEnergyParameterDerivativeName(int index) const;
    int addTabulatedFunction(const std::string& name, OpenMM::TabulatedFunction* function);
    int getNumTabulatedFunctions() const;
    OpenMM::TabulatedFunction& getTabulatedFunction(int index);
    const std::string& getTabulatedFunctionName(int index) const;
    void updateParametersInContext(OpenMM::Context& context);
    void setHillsVariables(const std::vector<int>& cvIndices, const std::vector<double>& widths,
                           const std::vector<double>& periods);
    int getNumHillsVariables() const;
    const std::vector<int>& getHillsCVIndices() const;
    const std::vector<double>& getHillsWidths() const;
    const std::vector<double>& getHillsPeriods() const;
    int addHill(const std::vector<double>& center, double height,
                const std::vector<double>& widths = std::vector<double>());
    int getNumHills() const;
    const std::vector<double>& getHillCenters() const;
    const std::vector<double>& getHillHeights() const;
    const std::vector<double>& getHillWidths() const;
    void clearHills();
    void setHillsLogTransform(double prefactor, double normalization, double epsilon);
    double getHillsLogPrefactor() const;
    double getHillsLogNormalization() const;
    double getHillsLogEpsilon() const;

    %extend {
        /** (centre tuple, height) of hill `index`. */
        PyObject* getHill(int index) {
            std::vector<double> center;
            double height;
            self->getHill(index, center, height);
            PyObject* c = PyTuple_New(center.size());
            for (size_t i = 0; i < center.size(); i++)
                PyTuple_SET_ITEM(c, i, PyFloat_FromDouble(center[i]));
            return Py_BuildValue("(Nd)", c, height);
        }
        /** The CV values (tuple of float) at the Context's current positions. */
        PyObject* getCollectiveVariableValues(OpenMM::Context& context) {
            std::vector<double> values;
            SWIG_PYTHON_THREAD_BEGIN_ALLOW;
            self->getCollectiveVariableValues(context, values);
            SWIG_PYTHON_THREAD_END_ALLOW;
            PyObject* result = PyTuple_New(values.size());
            for (size_t i = 0; i < values.size(); i++)
                PyTuple_SET_ITEM(result, i, PyFloat_FromDouble(values[i]));
            return result;
        }
        static OpenMMGeom::TorchCVForce& cast(OpenMM::Force& force) {
            return dynamic_cast<OpenMMGeom::TorchCVForce&>(force);
        }
        static bool isinstance(OpenMM::Force& force) {
            return dynamic_cast<OpenMMGeom::TorchCVForce*>(&force) != nullptr;
        }
    }
};

}
