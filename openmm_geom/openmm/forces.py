"""OpenMM forces from models: openmm-torch's ``TorchForce`` and ``openmm.PythonForce``.

Both bridges call the same contract wrapper (:mod:`openmm_geom.contract`), so a model gives the
same energies and forces through either. :func:`torch_force` is the one place a ``TorchForce``
is built (by :func:`~openmm_geom.openmm.add_to_system`, the ``CustomCVForce`` interop and
``check_export``); users reach it through :func:`~openmm_geom.openmm.create_system` and
:func:`~openmm_geom.openmm.add_to_system`.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np
import openmm
import openmm.unit as unit
import torch

from ..contract import boundary_for, describe
from ..modelfile import ExportedModel, ModelLike

__all__ = ["torch_force", "python_force", "selected_output", "openmmtorch"]


def openmmtorch():
    """The ``openmmtorch`` module, imported without its ``simtk.openmm`` deprecation noise.

    openmm-torch 1.10 imports the deprecated ``simtk.openmm`` alias, which logs a warning on
    the root logger; that warning is about openmm-torch, not about the user's code.
    """
    import logging
    import sys

    if "openmmtorch" not in sys.modules:
        previous = logging.root.manager.disable
        logging.disable(logging.WARNING)
        try:
            import openmmtorch as module  # noqa: F401
        finally:
            logging.disable(previous)
    return sys.modules["openmmtorch"]


class SelectedOutput(torch.nn.Module):
    """A model evaluated on a subset of the System's particles, optionally one output of it.

    A ``TorchForce`` passes every particle of the System and takes one number back; this
    wrapper selects ``positions[particles]`` (if given) and output ``index`` (if >= 0).
    """

    def __init__(self, module: torch.nn.Module, index: int, particles: Optional[Sequence[int]]):
        super().__init__()
        self.module = module
        self.index = int(index)
        self.subset = particles is not None
        self.register_buffer("particles", torch.tensor(list(particles or []), dtype=torch.int64))

    def forward(self, positions: torch.Tensor, box: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.subset:
            positions = positions.index_select(0, self.particles)
        output = self.module(positions, box)
        return output[self.index] if self.index >= 0 else output


class SelectedOutputNoBox(SelectedOutput):
    """:class:`SelectedOutput` of a (bare, non-periodic) module whose forward takes positions."""

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        if self.subset:
            positions = positions.index_select(0, self.particles)
        output = self.module(positions)
        return output[self.index] if self.index >= 0 else output


def _takes_box(module: torch.jit.ScriptModule) -> bool:
    """Whether ``module.forward`` accepts a second (box) argument."""
    try:
        arguments = module.forward.schema.arguments  # type: ignore[attr-defined]
    except AttributeError:
        return True
    return len(arguments) >= 3  # self, positions, box


def selected_output(model: ExportedModel, index: Optional[int], particles: Optional[List[int]],
                    periodic: bool) -> torch.jit.ScriptModule:
    """The scripted module a ``TorchForce`` runs: ``model``'s output ``index`` (None: the
    whole scalar output) on ``particles`` (None: all)."""
    if index is None and particles is None:
        return model.module
    index = -1 if index is None else int(index)
    if _takes_box(model.module):
        wrapper = SelectedOutput(model.module, index, particles)
    else:
        if periodic:
            raise ValueError("the module's forward takes positions only, so it cannot be periodic")
        wrapper = SelectedOutputNoBox(model.module, index, particles)
    return torch.jit.script(wrapper)


def torch_force(model: ModelLike, *, output_index: Optional[int] = None,
                particles: Optional[Sequence[int]] = None,
                periodic: Optional[bool] = None, force_group: Optional[int] = None):
    """An openmm-torch ``TorchForce`` running an exported model.

    Parameters
    ----------
    model : path, ScriptModule or ExportedModel
    output_index : int, optional
        For a CV module: which CV the force returns as its "energy" (e.g. one collective
        variable of a ``CustomCVForce``). A 1-CV module needs none.
    particles : sequence of int, optional
        System particles the model sees, in its atom order (default: all of them).
    periodic : bool, optional
        Whether the model takes the box: the model's own setting (checked if given); only a
        bare scripted module without metadata needs it.
    force_group : int, optional

    Returns
    -------
    openmmtorch.TorchForce
        Periodicity from the model's metadata; energies in kJ/mol, forces by autograd.
    """
    model = ExportedModel.load(model, allow_bare=True)
    particles = model.check_particles(particles)
    periodic = model.resolve_periodic(periodic)
    output_index = model.scalar_output(output_index)
    force = openmmtorch().TorchForce(selected_output(model, output_index, particles, periodic))
    force.setUsesPeriodicBoundaryConditions(periodic)
    force.setOutputsForces(False)
    if force_group is not None:
        force.setForceGroup(force_group)
    return force


class TorchComputation:
    """The callable an ``openmm.PythonForce`` runs: the contract wrapper plus autograd.

    A top-level class (not a closure) so that it pickles, which XmlSerializer needs.
    """

    def __init__(self, boundary: torch.nn.Module, periodic: bool, output_index: Optional[int],
                 compile: bool = False):
        self.boundary = boundary
        self.periodic = periodic
        self.output_index = output_index
        self.compile = bool(compile)
        self._evaluate = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_evaluate"] = None  # a compiled module does not pickle: compiled again on load
        return state

    def __setstate__(self, state):
        state.setdefault("compile", False)
        state.setdefault("_evaluate", None)
        self.__dict__.update(state)

    def __call__(self, state):
        if self._evaluate is None:
            self._evaluate = self._energy_forces
            if self.compile:
                from ..ops import CompiledCall, compile_model

                self._forward = compile_model(self.boundary)
                self._evaluate = CompiledCall(self._energy_forces, "the PythonForce model")
        return self._evaluate(state)

    def _energy_forces(self, state):
        forward = self._forward if self.compile else self.boundary
        positions = torch.from_numpy(
            np.asarray(state.getPositions(asNumpy=True).value_in_unit(unit.nanometer),
                       dtype=np.float64)
        ).requires_grad_(True)
        box = None
        if self.periodic:
            box = torch.from_numpy(np.asarray(
                state.getPeriodicBoxVectors(asNumpy=True).value_in_unit(unit.nanometer),
                dtype=np.float64))
        output = forward(positions, box)
        energy = output if self.output_index is None else output[self.output_index]
        (gradient,) = torch.autograd.grad(energy, positions)
        return float(energy.detach()), (-gradient).numpy()


def python_force(
    module: torch.nn.Module,
    *,
    length_unit,
    energy_unit=None,
    periodic: bool,
    example_positions,
    example_box=None,
    kind: str = "potential",
    output_index: Optional[int] = None,
    cutoff: Optional[float] = None,
    force_group: Optional[int] = None,
    compile: bool = False,
    **metadata_fields,
):
    """An ``openmm.PythonForce`` running an eager (possibly unscriptable) torch model.

    Takes the same arguments as :func:`openmm_geom.export.export_model` and applies the same
    contract wrapper, so the numbers equal those of the TorchScript bridge. Slower: the model
    runs in Python at every step.

    Parameters
    ----------
    module : torch.nn.Module
        The eager model, in its own units.
    length_unit, energy_unit
        The model's units: names (``"angstrom"``, ``"kcal/mol"``) or ``openmm.unit`` units.
    periodic : bool
    example_positions, example_box
        A configuration: plain arrays in nm, or Quantities (``pdb.positions``, Vec3 lists in
        any length unit).
    kind : {"potential", "cv"}
    output_index : int, optional
        For a CV module, which output is the force's energy.
    cutoff : float or Quantity, optional
        The model's cutoff: a plain number in the model's own length unit, or a Quantity.
    force_group : int, optional
    compile : bool, optional
        Run the model (with its contract wrapper) through ``torch.compile`` (inductor, C++ on
        CPU), compiled at the force's first evaluation, which logs its duration on stderr.
        Default False: eager. Worth it only for long runs of a model whose Python overhead
        or kernels dominate; measured in ``benchmarks/bench_compile.py``.
    metadata_fields
        Further metadata, as for ``export_model``.

    Returns
    -------
    openmm.PythonForce
    """
    metadata = describe(
        module, kind=kind, length_unit=length_unit, energy_unit=energy_unit, periodic=periodic,
        example_positions=example_positions, example_box=example_box, cutoff=cutoff,
        **metadata_fields,
    )
    boundary = boundary_for(module, metadata)
    output_index = ExportedModel(boundary, metadata, source=type(module).__name__).scalar_output(
        output_index)
    computation = TorchComputation(boundary, periodic, output_index, compile=compile)
    force = openmm.PythonForce(computation)
    force.setUsesPeriodicBoundaryConditions(periodic)
    if force_group is not None:
        force.setForceGroup(force_group)
    return force
