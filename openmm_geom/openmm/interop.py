"""Exported CV modules in OpenMM's own machinery: ``CustomCVForce`` and ``app.Metadynamics``.

For users who prefer OpenMM's classes to :class:`~openmm_geom.openmm.TorchCVForce`. OpenMM
takes each collective variable from the *energy* of a ``Force``, so a k-CV module becomes k
openmm-torch ``TorchForce`` objects, one per output, each running the whole model: the network
runs k times per step (``TorchCVForce`` runs it once). Values, energies and forces are the same.

Typical use::

    from openmm.app import Metadynamics
    from openmm_geom.openmm.interop import bias_variables, custom_cv_force

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

import os
from typing import Any, List, Mapping, Optional, Sequence, Tuple, Union

import openmm
import torch

from ..modelfile import ModelFileError, ModelMetadata, load_model, metadata_of
from .forces import openmmtorch

__all__ = ["single_cv_module", "custom_cv_force", "bias_variables"]

ModelLike = Union[str, os.PathLike, torch.jit.ScriptModule]


class _Selection(torch.nn.Module):
    """Output ``index`` of a CV module, optionally evaluated on a subset of the particles."""

    def __init__(self, cv_module: torch.nn.Module, index: int, particles: Optional[Sequence[int]]):
        super().__init__()
        self.cv_module = cv_module
        self.index = index
        self.subset = particles is not None
        self.register_buffer("particles", torch.tensor(list(particles or []), dtype=torch.int64))


class _SingleCV(_Selection):
    """For a CV module taking ``(positions, box)``."""

    def forward(self, positions: torch.Tensor, box: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.subset:
            positions = positions.index_select(0, self.particles)
        return self.cv_module(positions, box)[self.index]


class _SingleCVNoBox(_Selection):
    """For a (non-periodic, metadata-less) module whose forward takes positions only."""

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        if self.subset:
            positions = positions.index_select(0, self.particles)
        return self.cv_module(positions)[self.index]


def _resolve(model: ModelLike) -> Tuple[torch.jit.ScriptModule, Optional[ModelMetadata]]:
    """(scripted module, metadata or None); refuses potentials and eager modules."""
    if isinstance(model, (str, os.PathLike)):
        module, metadata = load_model(model)
        where = f"{os.fspath(model)}"
    elif isinstance(model, torch.jit.ScriptModule):
        module, where = model, "this module"
        try:
            metadata = metadata_of(model)
        except ModelFileError:
            metadata = None  # any scripted CV module is allowed; the caller names its CVs
    elif isinstance(model, torch.nn.Module):
        raise TypeError(f"{type(model).__name__} is an eager module: export it with "
                        "openmm_geom.export.export_model(..., kind='cv') or torch.jit.script it")
    else:
        raise TypeError(f"expected a CV model file path or a ScriptModule, got {type(model).__name__}")
    if metadata is not None and metadata.kind != "cv":
        raise ValueError(f"{where} is a {metadata.kind} (energy) model, but a CV module is needed "
                         "here: export the CVs with export_model(..., kind='cv')")
    return module, metadata


def _takes_box(module: torch.jit.ScriptModule) -> bool:
    """Whether ``module.forward`` accepts a second (box) argument."""
    try:
        arguments = module.forward.schema.arguments  # type: ignore[attr-defined]
    except AttributeError:
        return True
    return len(arguments) >= 3  # self, positions, box


def _names(metadata: Optional[ModelMetadata], cv_names: Optional[Sequence[str]]) -> List[str]:
    """The k names the outputs are known by."""
    if cv_names is not None:
        names = [str(n) for n in cv_names]
        if metadata is not None and len(names) != metadata.output_dim:
            raise ValueError(f"{len(names)} cv_names given for a module with "
                             f"{metadata.output_dim} CV outputs ({metadata.cv_names})")
        if len(set(names)) != len(names):
            raise ValueError(f"cv_names must be unique, got {names}")
        return names
    if metadata is None:
        raise ValueError("this module carries no openmm-geom metadata: pass cv_names "
                         "(one per output) so that the CVs can be counted and named")
    return list(metadata.cv_names or [f"cv{i}" for i in range(metadata.output_dim)])


def _periodic(metadata: Optional[ModelMetadata], periodic: Optional[bool]) -> bool:
    if periodic is None:
        return bool(metadata.periodic) if metadata is not None else False
    if metadata is not None and bool(periodic) != bool(metadata.periodic):
        raise ValueError(f"periodic={periodic} contradicts the model, exported with "
                         f"periodic={metadata.periodic}")
    return bool(periodic)


def _particles(metadata: Optional[ModelMetadata], particles) -> Optional[List[int]]:
    if particles is None:
        return None
    particles = [int(p) for p in particles]
    if any(p < 0 for p in particles):
        raise ValueError("particle indices must be >= 0")
    if len(set(particles)) != len(particles):
        raise ValueError("particle indices must be distinct")
    if metadata is not None and len(particles) != metadata.n_atoms:
        raise ValueError(f"{len(particles)} particles given for a model exported for "
                         f"{metadata.n_atoms} atoms")
    return particles


def _index(names: List[str], which: Union[int, str]) -> int:
    if isinstance(which, str):
        if which not in names:
            raise ValueError(f"no CV named {which!r}; the module's CVs are {names}")
        return names.index(which)
    index = int(which)
    if not 0 <= index < len(names):
        raise IndexError(f"CV index {index} out of range for a module with {len(names)} CVs")
    return index


def _single(module, metadata, names, which, particles, periodic) -> torch.jit.ScriptModule:
    index = _index(names, which)
    if _takes_box(module):
        wrapper = _SingleCV(module, index, particles)
    else:
        if periodic:
            raise ValueError("the module's forward takes positions only, so it cannot be periodic")
        wrapper = _SingleCVNoBox(module, index, particles)
    return torch.jit.script(wrapper)


def single_cv_module(model: ModelLike, index: Union[int, str], *,
                     particles: Optional[Sequence[int]] = None,
                     cv_names: Optional[Sequence[str]] = None) -> torch.jit.ScriptModule:
    """One output of a k-CV module as a scalar, which is what a ``TorchForce`` must return.

    Parameters
    ----------
    model : path or ScriptModule
        A CV module exported with ``export_model(..., kind="cv")`` (or any scripted module
        mapping positions to a ``(k,)`` tensor, together with ``cv_names``).
    index : int or str
        Which output: its position, or its name in the model's ``cv_names``.
    particles : sequence of int, optional
        System particles the module sees, in order. A ``TorchForce`` passes all particles of
        the System; the returned module then selects these ``positions[particles]``.
    cv_names : sequence of str, optional
        Names of the k outputs (needed for a name ``index`` on a module without metadata).

    Returns
    -------
    torch.jit.ScriptModule
        ``forward(positions[N,3] nm, box[3,3] nm = None) -> scalar``. The box is passed on to
        the CV module unchanged, so a periodic model works in a ``TorchForce`` with
        ``setUsesPeriodicBoundaryConditions(True)`` (which passes the box). A module whose
        own ``forward`` takes positions only gives a positions-only module.

    Raises
    ------
    ValueError
        A potential instead of a CV module, an unknown CV name, a wrong number of particles.
    IndexError
        ``index`` out of range.
    """
    module, metadata = _resolve(model)
    names = (_names(metadata, cv_names) if (metadata is not None or cv_names is not None)
             else None)
    if names is None:  # no metadata and no names: a bare index, range unknown until run time
        if isinstance(index, str):
            raise ValueError("this module carries no openmm-geom metadata: pass cv_names to "
                             "select a CV by name")
        if int(index) < 0:
            raise IndexError(f"CV index {index} must be >= 0")
        names = [f"cv{i}" for i in range(int(index) + 1)]
    periodic = bool(metadata.periodic) if metadata is not None else False
    return _single(module, metadata, names, index, _particles(metadata, particles), periodic)


def _torch_force(scalar: torch.jit.ScriptModule, periodic: bool, force_group: Optional[int]):
    force = openmmtorch().TorchForce(scalar)
    force.setUsesPeriodicBoundaryConditions(periodic)
    force.setOutputsForces(False)
    if force_group is not None:
        force.setForceGroup(force_group)
    return force


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
        Global parameters used in ``energy``.
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
    module, metadata = _resolve(model)
    names = _names(metadata, cv_names)
    periodic = _periodic(metadata, periodic)
    subset = _particles(metadata, particles)
    chosen = names if include is None else [str(n) for n in include]
    unknown = [n for n in chosen if n not in names]
    if unknown:
        raise ValueError(f"no CVs named {unknown}; the module's CVs are {names}")
    if not chosen:
        raise ValueError("include selects no CVs")
    force = openmm.CustomCVForce(energy)
    for name, value in (global_parameters or {}).items():
        force.addGlobalParameter(name, float(value))
    for name in chosen:
        scalar = _single(module, metadata, names, name, subset, periodic)
        force.addCollectiveVariable(name, _torch_force(scalar, periodic, None))
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
    lo, hi, width = (_plain(fields[k]) for k in ("min", "max", "width"))
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


def _plain(value) -> float:
    import openmm.unit as unit

    if unit.is_quantity(value):
        return float(value.value_in_unit_system(unit.md_unit_system))
    return float(value)


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
        ``(min, max, width[, periodic[, gridWidth]])``. Values in the CV's units (floats or
        OpenMM quantities). ``openmm.app.Metadynamics`` takes 1 to 3 variables, all periodic
        or none.
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
    module, metadata = _resolve(model)
    names = _names(metadata, cv_names)
    periodic = _periodic(metadata, periodic)
    subset = _particles(metadata, particles)
    variables = []
    for which, spec in specs.items():
        index = _index(names, which)
        name = names[index]
        fields = _spec(name, spec)
        scalar = _single(module, metadata, names, index, subset, periodic)
        force = openmm.CustomCVForce(name)
        force.addCollectiveVariable(name, _torch_force(scalar, periodic, None))
        force.setName(f"CV {name}")
        variable = BiasVariable(force, fields["min"], fields["max"], fields["width"],
                                fields["periodic"], fields["gridWidth"])
        variable.cv_name = name
        variables.append(variable)
    chosen = [v.cv_name for v in variables]
    if len(set(chosen)) != len(chosen):
        raise ValueError(f"a CV is listed twice in specs: {chosen}")
    return variables
