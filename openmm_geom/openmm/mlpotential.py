"""openmm-ml plugin: exported openmm-geom potentials as ``MLPotential("openmm-geom", ...)``.

Registered under the ``openmmml.potentials`` entry point (see ``pyproject.toml``), so that, with
openmm-ml installed, any all-atom potential written by :func:`openmm_geom.export.export_potential`
or :func:`~openmm_geom.export.export_model` is used the openmm-ml way::

    from openmmml import MLPotential

    potential = MLPotential("openmm-geom", modelPath="model.pt")
    system = potential.createSystem(topology)                          # all atoms
    mixed = potential.createMixedSystem(topology, mm_system, ml_atoms)  # ML/MM

openmm-ml loads this module through the entry point when it is imported; import
``openmmml`` (not this module) to use it. The forces themselves are those of
:func:`openmm_geom.openmm.add_to_system`: this module adds the openmm-ml interface and the
topology checks, nothing else.
"""
from __future__ import annotations

import io
import sys
from typing import Iterable, Optional

import openmm
import openmm.app
import torch

# openmm-ml's import loads every plugin of the entry point, this module among them. Imported
# directly, before openmm-ml, this module would be met half-initialised by that loop: step
# aside while openmm-ml loads a complete copy, then register this module's own factory below.
_IMPORTED_FIRST = "openmmml.mlpotential" not in sys.modules
if _IMPORTED_FIRST:
    _this = sys.modules.pop(__name__)
    try:
        import openmmml.mlpotential  # noqa: F401
    finally:
        sys.modules[__name__] = _this
from openmmml.mlpotential import MLPotential, MLPotentialImpl, MLPotentialImplFactory

from ..modelfile import ExportedModel
from .forces import TorchComputation, selected_output, torch_force
from .system import add_to_system

__all__ = ["OpenMMGeomPotentialImplFactory", "OpenMMGeomPotentialImpl", "ScriptedComputation",
           "IMPLEMENTATIONS"]

#: The bridges a potential can run through: openmm-torch's ``TorchForce`` (the TorchScript
#: module runs in C++, no Python in the step loop) or ``openmm.PythonForce`` (the same module
#: called from Python at each step, the way openmm-ml 1.7 runs its own models).
IMPLEMENTATIONS = ("torchforce", "pythonforce")


def _implementation(value: str) -> str:
    name = str(value).lower()
    if name not in IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {value!r}")
    return name


class ScriptedComputation(TorchComputation):
    """The ``PythonForce`` callable of an exported (TorchScript) module, picklable.

    A ScriptModule does not pickle, and ``PythonForce`` pickles its callable whenever the
    force is copied or serialised (``XmlSerializer``, ``copy.deepcopy``, ``CustomCVForce``,
    ``createMixedSystem(..., interpolate=True)``): the module travels as its TorchScript bytes.
    """

    def __getstate__(self):
        parent = getattr(super(), "__getstate__", None)  # object has one from Python 3.11
        state = dict(self.__dict__ if parent is None else parent())
        buffer = io.BytesIO()
        torch.jit.save(self.boundary, buffer)
        state["boundary"] = buffer.getvalue()
        return state

    def __setstate__(self, state):
        import vesin_torch  # noqa: F401  (TorchScript classes a model may hold, as the

        from .. import ops  # noqa: F401  model file loader registers them)

        state = dict(state)
        state["boundary"] = torch.jit.load(io.BytesIO(state["boundary"]), map_location="cpu")
        restore = getattr(super(), "__setstate__", None)
        if restore is None:
            self.__dict__.update(state)
        else:
            restore(state)


class OpenMMGeomPotentialImplFactory(MLPotentialImplFactory):
    """Creates :class:`OpenMMGeomPotentialImpl` objects for ``MLPotential("openmm-geom")``."""

    def createImpl(self, name: str, modelPath=None, implementation: str = "torchforce",
                   **args) -> MLPotentialImpl:
        """Read the model file once and check it is an all-atom potential.

        Parameters
        ----------
        name : str
            The name given to ``MLPotential`` (``"openmm-geom"``).
        modelPath : path, torch.jit.ScriptModule or ExportedModel
            An exported openmm-geom potential.
        implementation : {"torchforce", "pythonforce"}
            The default bridge (``createSystem`` and ``createMixedSystem`` can override it).

        Returns
        -------
        OpenMMGeomPotentialImpl
        """
        if args:
            raise TypeError(f"MLPotential({name!r}) got unexpected arguments {sorted(args)}; "
                            "it takes modelPath and implementation")
        if modelPath is None:
            raise ValueError(f"MLPotential({name!r}) needs modelPath, the file written by "
                             "openmm_geom.export.export_potential (or `openmm-geom potential "
                             "export`)")
        return OpenMMGeomPotentialImpl(name, modelPath, implementation)


class OpenMMGeomPotentialImpl(MLPotentialImpl):
    """An exported openmm-geom all-atom potential inside openmm-ml.

    The model file is a TorchScript module with its metadata (atom count, elements,
    periodicity, cutoff; see ``docs/export-contract.md``); positions in nm, energies in kJ/mol.
    It is read once, here, and checked against every topology it is used with.

    >>> potential = MLPotential("openmm-geom", modelPath="model.pt")
    >>> system = potential.createSystem(topology)
    >>> mixed = potential.createMixedSystem(topology, mm_system, ml_atoms)

    The ``implementation`` argument (of the constructor, or of ``createSystem`` /
    ``createMixedSystem``) selects the bridge: ``"torchforce"`` (default) runs the module in an
    openmm-torch ``TorchForce``; ``"pythonforce"`` in an ``openmm.PythonForce``. Both give the
    same energies and forces.

    ``createMixedSystem`` passes the ML atoms in the model's atom order: ``ml_atoms[k]`` is the
    System particle that plays the model's atom ``k`` (their elements are checked). A
    non-periodic (vacuum) potential may model a molecule inside a periodic MM system: it sees
    the molecule's positions as OpenMM holds them, unwrapped, so the molecule stays whole.

    Parameters
    ----------
    name : str
    modelPath : path, torch.jit.ScriptModule or ExportedModel
    implementation : {"torchforce", "pythonforce"}

    Raises
    ------
    ValueError
        A CV module (not an energy) or a coarse-grained model (its beads are not the atoms of
        a topology: use :func:`openmm_geom.openmm.create_system`), or an unknown implementation.
    ModelFileError
        A file that is not an exported openmm-geom model.
    """

    def __init__(self, name: str, modelPath, implementation: str = "torchforce"):
        self.name = name
        self.implementation = _implementation(implementation)
        self.model = ExportedModel.load(modelPath)
        self.model.require_kind("potential", f"MLPotential({name!r})")
        if self.model.metadata.is_coarse_grained:
            raise ValueError(f"{self.model.source} is a coarse-grained model: its particles are "
                             f"beads, not the atoms of a topology, so MLPotential({name!r}) "
                             "cannot place it; use openmm_geom.openmm.create_system(model) "
                             "instead")

    def addForces(self, topology: openmm.app.Topology, system: openmm.System,
                  atoms: Optional[Iterable[int]], forceGroup: int,
                  implementation: Optional[str] = None, **args):
        """Add the model's force to ``system`` (called by ``createSystem``/``createMixedSystem``).

        Parameters
        ----------
        topology : openmm.app.Topology
        system : openmm.System
        atoms : iterable of int or None
            The System particles the model acts on, in the model's atom order; None: all.
        forceGroup : int
        implementation : {"torchforce", "pythonforce"}, optional
            Overrides the constructor's choice.

        Raises
        ------
        TopologyMismatchError
            Wrong atom count, elements or atom order, or a periodicity the model does not have.
        ValueError
            A periodic box too small for the model's cutoff.
        """
        if args:
            raise TypeError(f"MLPotential({self.name!r}) got unexpected arguments "
                            f"{sorted(args)}; it takes implementation")
        implementation = (self.implementation if implementation is None
                          else _implementation(implementation))
        model = self.model
        periodic = (topology.getPeriodicBoxVectors() is not None
                    or system.usesPeriodicBoundaryConditions())
        if atoms is None:
            model.check_topology(topology)  # count, elements, periodicity, box vs cutoff
            particles = None
        else:
            particles = model.check_particles(atoms, topology.getNumAtoms())  # count, range
            every = list(topology.atoms())
            model.check_elements([every[p].element for p in particles])
            if model.periodic:
                model.check_periodicity(periodic)
        # createMixedSystem(..., interpolate=True) collects the forces in an empty System and
        # moves them into a CustomCVForce: then only the topology (above) can be checked.
        if system.getNumParticles() > 0:
            if implementation == "torchforce":
                add_to_system(model, system, particles=particles, force_group=forceGroup)
                return
            particles = model.check_system(system, particles)  # particle count, box vs cutoff
        if implementation == "torchforce":
            system.addForce(torch_force(model, particles=particles, force_group=forceGroup))
            return
        module = selected_output(model, None, particles, model.periodic)
        force = openmm.PythonForce(ScriptedComputation(module, model.periodic, None))
        force.setUsesPeriodicBoundaryConditions(model.periodic)
        force.setForceGroup(forceGroup)
        system.addForce(force)


if _IMPORTED_FIRST:  # see the note at the imports
    MLPotential.registerImplFactory("openmm-geom", OpenMMGeomPotentialImplFactory())
