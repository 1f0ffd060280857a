"""OpenMM forces from exported models: openmm-torch's ``TorchForce`` and ``openmm.PythonForce``.

Both bridges call the same contract wrapper (:mod:`openmm_geom.contract`), so a model gives the
same energies and forces through either.
"""
from __future__ import annotations

import os
from typing import Optional, Union

import numpy as np
import openmm
import openmm.unit as unit
import torch

from ..contract import boundary_for, describe
from ..modelfile import ModelMetadata, load_model, metadata_of
from ..ops.neighbors import check_box_holds_cutoff

__all__ = [
    "torch_force", "python_force", "load_exported", "CVComponent", "check_system", "openmmtorch",
]


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


class CVComponent(torch.nn.Module):
    """One output of a CV module as a scalar, which is what a ``TorchForce`` must return.

    Needed only for the one-force-per-CV layout (e.g. inside ``CustomCVForce``);
    ``TorchCVForce`` evaluates all CVs in one pass instead.
    """

    def __init__(self, cv_module: torch.nn.Module, index: int):
        super().__init__()
        self.cv_module = cv_module
        self.index = index

    def forward(self, positions: torch.Tensor, box: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.cv_module(positions, box)[self.index]


def load_exported(model: Union[str, os.PathLike, torch.jit.ScriptModule]):
    """(scripted module, metadata) from a model file path or an exported ScriptModule."""
    if isinstance(model, (str, os.PathLike)):
        return load_model(model)
    if isinstance(model, torch.jit.ScriptModule):
        return model, metadata_of(model)
    if isinstance(model, torch.nn.Module):
        raise TypeError(
            f"{type(model).__name__} is an eager module: export it first with "
            "openmm_geom.export.export_model(...) (it fixes units and periodicity), or use "
            "openmm_geom.openmm.python_force(...) for a model that cannot be scripted"
        )
    raise TypeError(f"expected a model file path or an exported ScriptModule, got {type(model)}")


def check_system(metadata: ModelMetadata, system: openmm.System) -> None:
    """Raise a clear error unless ``system`` suits the model (atoms, periodicity, box/cutoff)."""
    metadata.check_topology(system.getNumParticles(), periodic=None)
    if metadata.periodic:
        box = np.array([v.value_in_unit(unit.nanometer)
                        for v in system.getDefaultPeriodicBoxVectors()])
        if metadata.cutoff_nm:
            check_box_holds_cutoff(torch.as_tensor(box), metadata.cutoff_nm)


def _scalar_module(module, metadata: ModelMetadata, output_index: Optional[int]):
    if metadata.kind == "potential":
        if output_index is not None:
            raise ValueError("output_index is only meaningful for a CV module")
        return module
    if output_index is None:
        if metadata.output_dim != 1:
            raise ValueError(
                f"this CV module returns {metadata.output_dim} CVs; a TorchForce takes one: pass "
                "output_index, or use TorchCVForce to evaluate all of them in one model pass"
            )
        output_index = 0
    if not 0 <= output_index < metadata.output_dim:
        raise IndexError(f"output_index {output_index} out of range for {metadata.output_dim} CVs")
    return CVComponent(module, int(output_index))


def torch_force(
    model: Union[str, os.PathLike, torch.jit.ScriptModule],
    *,
    output_index: Optional[int] = None,
    system: Optional[openmm.System] = None,
    force_group: Optional[int] = None,
):
    """A ready openmm-torch ``TorchForce`` for an exported model.

    Parameters
    ----------
    model : path or ScriptModule
        A file written by :func:`openmm_geom.export.export_model`, or the module it returned.
    output_index : int, optional
        For a CV module: which CV the force returns as its "energy" (e.g. for ``CustomCVForce``).
    system : openmm.System, optional
        If given, checked against the model (atom count, periodicity, box vs cutoff).
    force_group : int, optional
        OpenMM force group.

    Returns
    -------
    openmmtorch.TorchForce
        Periodicity set from the model's metadata; energies in kJ/mol, forces by autograd.
    """
    module, metadata = load_exported(model)
    scalar = _scalar_module(module, metadata, output_index)
    if not isinstance(scalar, torch.jit.ScriptModule):
        scalar = torch.jit.script(scalar)
    if system is not None:
        check_system(metadata, system)
    force = openmmtorch().TorchForce(scalar)
    force.setUsesPeriodicBoundaryConditions(metadata.periodic)
    force.setOutputsForces(False)
    if force_group is not None:
        force.setForceGroup(force_group)
    return force


class _TorchComputation:
    """The callable an ``openmm.PythonForce`` runs: the contract wrapper plus autograd.

    A top-level class (not a closure) so that it pickles, which XmlSerializer needs.
    """

    def __init__(self, boundary: torch.nn.Module, periodic: bool, output_index: Optional[int]):
        self.boundary = boundary
        self.periodic = periodic
        self.output_index = output_index

    def __call__(self, state):
        positions = torch.from_numpy(
            np.asarray(state.getPositions(asNumpy=True).value_in_unit(unit.nanometer),
                       dtype=np.float64)
        ).requires_grad_(True)
        box = None
        if self.periodic:
            box = torch.from_numpy(np.asarray(
                state.getPeriodicBoxVectors(asNumpy=True).value_in_unit(unit.nanometer),
                dtype=np.float64))
        output = self.boundary(positions, box)
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
    **metadata_fields,
):
    """An ``openmm.PythonForce`` running an eager (possibly unscriptable) torch model.

    Takes the same arguments as :func:`openmm_geom.export.export_model` (units, periodicity,
    example configuration in nm) and applies the same contract wrapper, so the numbers equal
    those of the TorchScript bridge. Slower: the model runs in Python at every step.
    """
    metadata = describe(
        module, kind=kind, length_unit=length_unit, energy_unit=energy_unit, periodic=periodic,
        example_positions=example_positions, example_box=example_box, cutoff=cutoff,
        **metadata_fields,
    )
    scalar = _scalar_module(module, metadata, output_index)  # validates output_index
    index = None if scalar is module else scalar.index
    computation = _TorchComputation(boundary_for(module, metadata), periodic, index)
    force = openmm.PythonForce(computation)
    force.setUsesPeriodicBoundaryConditions(periodic)
    if force_group is not None:
        force.setForceGroup(force_group)
    return force
