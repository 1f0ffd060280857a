"""Exported CV modules in OpenMM's own machinery: ``CustomCVForce`` and ``app.Metadynamics``.

For users who prefer OpenMM's classes to :class:`~openmm_geom.openmm.TorchCVForce`. OpenMM
takes each collective variable from the *energy* of a ``Force``, so a k-CV module becomes k
openmm-torch ``TorchForce`` objects, one per output, each running the whole model: the network
runs k times per step (``TorchCVForce`` runs it once). Values, energies and forces are the same.

Typical use::

    from openmm.app import Metadynamics
    from openmm_geom.openmm import bias_variables, custom_cv_force

    system.addForce(custom_cv_force("cvs.pt", "0.5*300*(phi+1.3)^2"))  # an umbrella

    variables = bias_variables("cvs.pt", {
        "phi": dict(min=-pi, max=pi, width=0.35, periodic=True, gridWidth=64),
        "psi": dict(min=-pi, max=pi, width=0.35, periodic=True, gridWidth=64),
    })
    meta = Metadynamics(system, variables, 300, biasFactor=8, height=1.0, frequency=250)

Every returned force is plain OpenMM (``CustomCVForce`` holding ``TorchForce`` objects), so it
serializes with ``XmlSerializer`` and needs only openmm and openmm-torch at run time.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence, Union

import openmm

from ..modelfile import ExportedModel, ModelLike
from ..units import CV_UNITS, to_openmm_units
from .cvforce import global_parameter_values
from .forces import torch_force

__all__ = ["custom_cv_force", "bias_variables"]


def custom_cv_force(model: ModelLike, energy: str, cv_names: Optional[Sequence[str]] = None,
                    particles: Optional[Sequence[int]] = None, *,
                    include: Optional[Sequence[str]] = None,
                    global_parameters: Optional[Mapping[str, float]] = None,
                    periodic: Optional[bool] = None,
                    force_group: Optional[int] = None) -> openmm.CustomCVForce:
    """An ``openmm.CustomCVForce`` with one openmm-torch ``TorchForce`` per CV of a module.

    The drop-in OpenMM equivalent of ``TorchCVForce(model, energy, ...)``: the same energy
    expression, CV names, particles and periodicity give the same energies and forces, but the
    model runs once per CV and step.

    Parameters
    ----------
    model : path or ScriptModule
        A CV module exported with ``export_model(..., kind="cv")``, or any scripted module
        mapping positions to a ``(k,)`` tensor together with ``cv_names``.
    energy : str
        Energy expression in kJ/mol of the CVs (by name) and global parameters, e.g.
        ``"0.5*kappa*(phi-phi0)^2"``.
    cv_names : sequence of str, optional
        Names of the k outputs as used in ``energy``. Default: the model's ``cv_names``
        (``cv0 ... cv{k-1}`` if it has none).
    particles : sequence of int, optional
        System particles passed to the module, in order (default: all). The ``TorchForce``
        objects still receive all particles; their modules select these.
    include : sequence of str, optional
        Add only these CVs (by name) to the force, saving one model evaluation per CV left
        out. Default: all k.
    global_parameters : mapping name -> default value, optional
        Global parameters used in ``energy``: plain numbers in OpenMM units, or Quantities of
        any unit (converted to OpenMM's MD unit system), as for ``TorchCVForce``.
    periodic : bool, optional
        Whether the module takes the box; default from the model's metadata (else False).
    force_group : int, optional
        Force group of the ``CustomCVForce``.

    Returns
    -------
    openmm.CustomCVForce
        Its collective variables are the ``TorchForce`` objects, in the order of ``include``
        (default: model order); ``getCollectiveVariableValues(context)`` returns the CVs.

    Raises
    ------
    ValueError
        A potential instead of a CV module, ``cv_names`` of the wrong length, an unknown name
        in ``include``, a wrong number of particles, contradictory ``periodic``.
    """
    if not isinstance(energy, str) or not energy.strip():
        raise ValueError("energy must be a non-empty expression string")
    model = ExportedModel.load(model, allow_bare=True)
    names, periodic, subset = model.cv_setup("a CustomCVForce collective variable", cv_names,
                                             periodic, particles)
    chosen = names if include is None else [str(n) for n in include]
    unknown = [n for n in chosen if n not in names]
    if unknown:
        raise ValueError(f"no CVs named {unknown}; the module's CVs are {names}")
    if not chosen:
        raise ValueError("include selects no CVs")
    parameters = global_parameter_values(global_parameters)
    force = openmm.CustomCVForce(energy)
    for name, value in parameters.items():
        force.addGlobalParameter(name, value)
    for name in chosen:
        force.addCollectiveVariable(name, torch_force(model, output_index=names.index(name),
                                                      particles=subset, periodic=periodic))
    if force_group is not None:
        force.setForceGroup(force_group)
    force.setName("CustomCVForce(TorchForce per CV)")
    return force


_SPEC_KEYS = {
    "min": "min", "minvalue": "min", "max": "max", "maxvalue": "max",
    "width": "width", "biaswidth": "width", "periodic": "periodic",
    "gridwidth": "gridWidth", "grid_width": "gridWidth", "points": "gridWidth",
}


def _spec(name: str, spec: Any) -> dict:
    if isinstance(spec, Mapping):
        fields = {}
        for key, value in spec.items():
            canonical = _SPEC_KEYS.get(str(key).lower())
            if canonical is None:
                raise ValueError(f"CV {name!r}: unknown bias-variable setting {key!r}; use min, "
                                 "max, width, periodic, gridWidth")
            fields[canonical] = value
    elif isinstance(spec, (tuple, list)) and 3 <= len(spec) <= 5:
        fields = dict(zip(("min", "max", "width", "periodic", "gridWidth"), spec))
    else:
        raise TypeError(f"CV {name!r}: a bias-variable spec is a dict(min=, max=, width=, "
                        f"periodic=, gridWidth=) or a tuple (min, max, width[, periodic[, "
                        f"gridWidth]]), got {spec!r}")
    missing = [k for k in ("min", "max", "width") if k not in fields]
    if missing:
        raise ValueError(f"CV {name!r}: missing {missing}")
    lo, hi, width = (to_openmm_units(fields[k], f"CV {name!r} {k}", CV_UNITS)
                     for k in ("min", "max", "width"))
    if not lo < hi:
        raise ValueError(f"CV {name!r}: min ({lo}) must be below max ({hi})")
    if not width > 0:
        raise ValueError(f"CV {name!r}: width must be > 0, got {width}")
    grid = fields.get("gridWidth")
    if grid is not None:
        grid = int(grid)
        if grid < 2:
            raise ValueError(f"CV {name!r}: gridWidth must be >= 2, got {grid}")
    return dict(min=lo, max=hi, width=width, periodic=bool(fields.get("periodic", False)),
                gridWidth=grid)


def bias_variables(model: ModelLike, specs: Mapping[Union[str, int], Any], *,
                   cv_names: Optional[Sequence[str]] = None,
                   particles: Optional[Sequence[int]] = None,
                   periodic: Optional[bool] = None) -> list:
    """``openmm.app.BiasVariable`` objects for CVs of a module, for ``openmm.app.Metadynamics``.

    Parameters
    ----------
    model : path or ScriptModule
        A CV module exported with ``export_model(..., kind="cv")`` (or a scripted module with
        ``cv_names``).
    specs : mapping CV name (or index) -> spec
        One entry per biased CV, in the order the variables should have. A spec is a dict
        ``dict(min=..., max=..., width=..., periodic=False, gridWidth=None)`` (OpenMM's
        ``minValue``/``maxValue``/``biasWidth`` spellings are accepted too) or a tuple
        ``(min, max, width[, periodic[, gridWidth]])``. ``min``, ``max``, ``width``: plain
        numbers in the CV's OpenMM unit (rad, nm) or Quantities (``-180*degree``,
        ``3*angstrom``). ``openmm.app.Metadynamics`` takes 1 to 3 variables, all periodic or
        none.
    cv_names, particles, periodic
        As for :func:`custom_cv_force`.

    Returns
    -------
    list of openmm.app.BiasVariable
        Each variable's ``force`` is a ``CustomCVForce`` whose energy is the single CV (one
        ``TorchForce``); the CV's name is in its ``cv_name`` attribute.

    Raises
    ------
    ValueError
        Unknown CV name, bad spec (min >= max, width <= 0, unknown setting), a potential
        instead of a CV module.
    """
    from openmm.app import BiasVariable

    if not isinstance(specs, Mapping) or not specs:
        raise TypeError("specs must be a non-empty mapping of CV name -> spec")
    model = ExportedModel.load(model, allow_bare=True)
    names, periodic, subset = model.cv_setup("a CustomCVForce collective variable", cv_names,
                                             periodic, particles)
    variables = []
    for which, spec in specs.items():
        index = model.cv_index(which, names)
        name = names[index]
        fields = _spec(name, spec)
        force = openmm.CustomCVForce(name)
        force.addCollectiveVariable(name, torch_force(model, output_index=index,
                                                      particles=subset, periodic=periodic))
        force.setName(f"CV {name}")
        variable = BiasVariable(force, fields["min"], fields["max"], fields["width"],
                                fields["periodic"], fields["gridWidth"])
        variable.cv_name = name
        variables.append(variable)
    chosen = [v.cv_name for v in variables]
    if len(set(chosen)) != len(chosen):
        raise ValueError(f"a CV is listed twice in specs: {chosen}")
    return variables
