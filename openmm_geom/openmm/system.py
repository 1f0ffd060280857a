"""The entry point: an exported model file into an OpenMM System.

``create_system(model, topology)`` builds a System from one exported model, in the style of
openmm-ml's ``MLPotential(name).createSystem(topology)``; ``add_to_system(model, system)`` adds
a model to a System you already have (an ML potential on some of its particles, a CG model, or
a bias along the CVs of a CV module). Both dispatch on the file's kind and read the file once.
"""
from __future__ import annotations

from typing import List, Mapping, Optional, Sequence

import openmm
import openmm.unit as unit

from ..modelfile import ExportedModel, ModelLike
from ..units import to_openmm_units
from .cvforce import TorchCVForce
from .forces import torch_force
from .priors import prior_forces

__all__ = ["create_system", "add_to_system"]

#: Force group of the network of a CG model; its native priors stay in group 0.
CG_NETWORK_GROUP = 1


def create_system(model: ModelLike, topology=None, *, masses: Optional[Sequence[float]] = None,
                  remove_cm_motion: Optional[bool] = None,
                  force_group: Optional[int] = None) -> openmm.System:
    """An OpenMM System whose interactions come from one exported model.

    Parameters
    ----------
    model : path, ScriptModule or ExportedModel
        Written by :func:`openmm_geom.export.export_potential`, :func:`~openmm_geom.export.
        export_cg_model` or :func:`~openmm_geom.export.export_model`.
    topology : openmm.app.Topology
        All-atom potentials: required; atoms in the model's order, their elements must match
        the model's, and the topology's periodic box (if any) becomes the System's (checked
        against the model's periodicity and cutoff). CG models: optional (the bead count is
        checked); the beads come from the file.
    masses : sequence of float or Quantity, optional
        Particle masses (>= 0; 0 fixes a particle, as in OpenMM): plain numbers in amu
        (daltons), or Quantities (``[12*dalton, ...]``, a Quantity array). Default: the elements' masses (all-atom), the file's bead masses (CG).
    remove_cm_motion : bool, optional
        Add a ``CMMotionRemover``. Default: True for all-atom potentials (as
        ``ForceField.createSystem``), False for CG models.
    force_group : int, optional
        Force group of the model's force (CG: of the network; default 1, priors in group 0).

    Returns
    -------
    openmm.System

    Raises
    ------
    TopologyMismatchError
        Wrong atom count, other elements or atom order, or periodicity unlike the model's.
    ValueError
        A CV module (it is not an energy: use :class:`~openmm_geom.openmm.TorchCVForce`), a
        box too small for the model's cutoff, masses of the wrong length.
    """
    if masses is not None:
        masses = to_openmm_units(masses, "masses", unit.dalton, nonnegative=True)
        if getattr(masses, "ndim", 0) != 1:
            raise ValueError("masses must be a sequence with one mass per particle")
        masses = masses.tolist()
    model = ExportedModel.load(model)
    meta = model.metadata
    if meta.kind == "cv":
        raise ValueError(f"{model.source} is a CV module, not a potential: it has no System of "
                         "its own. Add it to a System as a bias with add_to_system(model, "
                         "system, energy=...) or TorchCVForce(model, energy), Metadynamics or "
                         "restraint_force")
    if meta.is_coarse_grained:
        if topology is not None:
            model.check_atom_count(topology.getNumAtoms(), "the topology has")
        masses = meta.masses_amu if masses is None else list(masses)
        box = None
    else:
        if topology is None:
            raise ValueError(f"{model.source} is an all-atom potential: create_system needs the "
                             "topology of the system it was exported for")
        model.check_topology(topology)
        if masses is None:
            masses = [atom.element.mass.value_in_unit(unit.dalton) for atom in topology.atoms()]
        box = topology.getPeriodicBoxVectors()
    if masses is None or len(masses) != meta.n_atoms:
        raise ValueError(f"need {meta.n_atoms} masses, got "
                         f"{'none' if masses is None else len(masses)}")
    system = openmm.System()
    for mass in masses:
        system.addParticle(mass)
    if box is not None:
        system.setDefaultPeriodicBoxVectors(*box)
    for force in _model_forces(model, system, None, force_group):  # checked above
        system.addForce(force)
    if remove_cm_motion if remove_cm_motion is not None else not meta.is_coarse_grained:
        system.addForce(openmm.CMMotionRemover())
    return system


def add_to_system(model: ModelLike, system: openmm.System, *,
                  particles: Optional[Sequence[int]] = None, energy: Optional[str] = None,
                  cv_names: Optional[Sequence[str]] = None,
                  global_parameters: Optional[Mapping[str, float]] = None,
                  force_group: Optional[int] = None) -> List[openmm.Force]:
    """Add an exported model to an existing System; returns the forces added, in order.

    Parameters
    ----------
    model : path, ScriptModule or ExportedModel
    system : openmm.System
        Checked against the model: particle count (or ``particles``), box vs the cutoff.
    particles : sequence of int, optional
        The System particles the model acts on, in the model's atom order (e.g. the solute of
        a solvated system). Default: all particles, whose count must equal the model's.
    energy : str, CV modules only
        The bias in kJ/mol as an expression of the CVs (by name) and global parameters, e.g.
        ``"0.5*k*(phi-phi0)^2"``: adds one :class:`~openmm_geom.openmm.TorchCVForce`.
    cv_names, global_parameters : CV modules only
        As for :class:`~openmm_geom.openmm.TorchCVForce` (parameter values: plain numbers in
        OpenMM units or Quantities of any unit).
    force_group : int, optional
        Force group of the model's force (CG models: of the network, default 1).

    Returns
    -------
    list of openmm.Force
        Potential: ``[TorchForce]``; CG model: its native priors, then ``[TorchForce]``;
        CV module: ``[TorchCVForce]``.
    """
    model = ExportedModel.load(model, allow_bare=energy is not None)
    if model.kind == "potential" and (energy is not None or cv_names is not None
                                      or global_parameters is not None):
        raise ValueError(f"{model.source} is a potential: energy, cv_names and "
                         "global_parameters apply to CV modules only")
    if model.kind != "potential" and energy is None:
        raise ValueError(f"{model.source} is a CV module, not an energy: pass energy= (an "
                         "expression of its CVs), or use Metadynamics / restraint_force")
    particles = model.check_system(system, particles)
    if model.kind != "potential":
        forces = [TorchCVForce(model, energy, cv_names=cv_names, particles=particles,
                               global_parameters=global_parameters, force_group=force_group)]
    else:
        forces = _model_forces(model, system, particles, force_group)
    for force in forces:
        system.addForce(force)
    return forces


def _model_forces(model: ExportedModel, system: openmm.System, particles: Optional[List[int]],
                  force_group: Optional[int]) -> List[openmm.Force]:
    """The forces of a potential (CG: native priors, then the network), already checked."""
    forces = []
    meta = model.metadata
    if meta.is_coarse_grained:
        cg = meta.extra["cg"]
        if force_group is None:
            force_group = CG_NETWORK_GROUP
        if cg["priors"]:
            where = list(range(system.getNumParticles())) if particles is None else particles
            n = cg["n_beads"]
            for replica in range(cg["replicas"]):
                forces += prior_forces(cg["priors"], where[replica * n:(replica + 1) * n])
    forces.append(torch_force(model, particles=particles, force_group=force_group))
    return forces
