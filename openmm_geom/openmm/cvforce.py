"""``TorchCVForce``: k neural CVs from one model pass, biased by any Lepton expression.

The force itself is C++ (``cpp/plugin``, an ``OpenMM::Force`` with Reference and CPU kernels
and XML serialization); this module gives it a Python constructor that takes an exported
model file or module, names the CVs from the model's metadata and checks what can be checked
before a Context exists.
"""
from __future__ import annotations

from typing import Mapping, Optional, Sequence

from .. import torchcv_plugin as plugin
from ..modelfile import ExportedModel, ModelLike, ModelMetadata
from ..units import to_openmm_units

__all__ = ["TorchCVForce", "global_parameter_values"]


def global_parameter_values(parameters: Optional[Mapping[str, object]]) -> dict:
    """Global parameters' default values as floats in OpenMM's MD unit system.

    Each value is a plain number (already in OpenMM units) or any ``openmm.unit.Quantity``;
    all are converted before any is used, so a bad one loses nothing.
    """
    if parameters is None:
        return {}
    if not isinstance(parameters, Mapping):
        raise TypeError(f"global_parameters must be a mapping name -> value, got {parameters!r}")
    return {str(name): to_openmm_units(value, f"global_parameters[{name!r}]", None)
            for name, value in parameters.items()}


class TorchCVForce(plugin.TorchCVForce):
    """An OpenMM force whose energy is an expression of the k CVs of one TorchScript module.

    The module maps ``positions[N,3]`` (nm) (and ``box[3,3]`` when periodic) to ``cv[k]``; it
    runs once per step and the forces come from one backward pass weighted by dE/dcv, whatever
    k is. The expression is parsed like ``CustomCVForce``'s: CVs by name, global parameters,
    tabulated functions (``Continuous1D/2D/3DFunction``...), energy parameter derivatives.

    Parameters
    ----------
    model : path, ScriptModule or ExportedModel
        A CV module exported with ``export_model(..., kind="cv")`` (its metadata names the CVs
        and sets periodicity), or any scripted module together with ``cv_names``. The file is
        read and deserialised once (pass an :class:`~openmm_geom.openmm.ExportedModel` to share one
        load between several forces). An AOTInductor package (``export_model(...,
        format="aoti")``, a ``.pt2`` file) runs on the compiled backend
        (``getBackend() == TorchCVForce.AOTInductor``): same CVs, energies and forces, much
        less overhead per step for a small CV; it is compiled for one atom count.
    energy : str
        Energy expression in kJ/mol, e.g. ``"0.5*k*(phi-phi0)^2"``.
    cv_names : sequence of str, optional
        Names of the k outputs as they appear in ``energy``. Default: the model's ``cv_names``
        or ``cv0 ... cv{k-1}``.
    particles : sequence of int, optional
        System particles passed to the module, in order (default: all).
    global_parameters : mapping name -> default value, optional
        Global parameters used in ``energy``. A value may be an ``openmm.unit.Quantity`` of
        any unit (``5*kilocalorie_per_mole``, ``-60*degree``, ``100*kilojoule_per_mole/
        radian**2``): it is converted to OpenMM's MD unit system (nm, ps, kJ/mol, rad, K) in
        which ``energy`` is evaluated; a plain number is taken to be in that system already.
    periodic : bool, optional
        Whether the module takes the box; default from the model's metadata (else False).
    force_group : int, optional

    Notes
    -----
    Gaussian hills on any subset of the CVs (metadynamics beyond the 3 dimensions of
    tabulated functions): ``setHillsVariables(cv_indices, widths, periods)`` (period 0 = not
    periodic), ``addHill(center, height)``, ``getNumHills()``, ``getHill(i)`` -> ``(center,
    height)``, ``getHillCenters()``, ``getHillHeights()``, ``clearHills()``; the energy gains
    ``sum_h height_h exp(-0.5 sum_d (delta_d/width_d)^2)`` and its dE/dcv joins the single
    backward pass. New hills reach a Context with ``updateParametersInContext(context)``.
    ``addHill(center, height, widths)`` gives one hill its own widths (``getHillWidths()``
    lists all, hill-major), and ``setHillsLogTransform(a, N, eps)`` makes the hills' energy
    ``a * log(S / N + eps)`` with ``S`` their sum: the OPES bias (see :class:`OPES`);
    ``a = 0`` restores the plain sum.

    ``getCollectiveVariableValues(context)`` returns the CVs at the Context's positions,
    reusing the values of the last force evaluation when the positions have not moved since.
    After ``XmlSerializer.deserialize`` or ``system.getForce(i)``, use
    ``TorchCVForce.cast(force)`` to reach these methods.
    """

    def __init__(self, model: ModelLike, energy: str, *,
                 cv_names: Optional[Sequence[str]] = None,
                 particles: Optional[Sequence[int]] = None,
                 global_parameters: Optional[Mapping[str, float]] = None,
                 periodic: Optional[bool] = None, force_group: Optional[int] = None):
        plugin.registerKernels()  # platforms loaded after import (e.g. plugins) get kernels too
        parameters = global_parameter_values(global_parameters)
        model = ExportedModel.load(model, allow_bare=True, allow_package=True)
        names, periodic, particles = model.cv_setup("TorchCVForce", cv_names, periodic, particles)
        backend = (plugin.TorchCVForce.AOTInductor if model.backend == "aoti"
                   else plugin.TorchCVForce.TorchScript)
        super().__init__(model.data, energy, names, backend)
        self.model = model
        self.setUsesPeriodicBoundaryConditions(periodic)
        if particles is not None:
            self.setParticles(particles)
        for name, value in parameters.items():
            self.addGlobalParameter(name, value)
        if force_group is not None:
            self.setForceGroup(force_group)
        self.setName("TorchCVForce")

    @property
    def metadata(self) -> Optional[ModelMetadata]:
        """The model's metadata (None for a bare scripted module)."""
        return self.model.metadata

    @property
    def cv_names(self) -> list:
        return [self.getCollectiveVariableName(i) for i in range(self.getNumCollectiveVariables())]
