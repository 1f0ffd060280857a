"""Every exception openmm-geom raises on purpose, in one hierarchy.

Each class derives from :class:`OpenMMGeomError` (``except OpenMMGeomError`` catches all of
them) *and* from the builtin it has always been, so existing ``except ValueError`` /
``except RuntimeError`` clauses keep working:

=============================  ==========================  ==================================
class                          builtin                     raised for
=============================  ==========================  ==================================
:class:`FileFormatError`       ``ValueError``              a data file that is corrupt, of
                                                           another kind or version, or lacks
                                                           what its format requires
:class:`ModelFileError`        ``ValueError``,             a model file (exported TorchScript
                               ``RuntimeError``            or a trained-model checkpoint)
                                                           that is missing, corrupt or not an
                                                           openmm-geom model
:class:`TopologyMismatchError` ``ValueError``              a model used with a system it was
                                                           not made for
:class:`ExportError`           ``RuntimeError``            a model that cannot be exported
:class:`SimulationBlowUp`      ``RuntimeError``            every blown-up simulation (OpenMM
                                                           or the batched simulator)
:class:`CheckpointError`       ``RuntimeError``            a checkpoint that cannot be read
:class:`CheckpointMismatchError` ``CheckpointError``,      a checkpoint of another setup
                               ``ValueError``
:class:`OutOfDistributionError` ``RuntimeError``           an ensemble's forces disagree and
                                                           the run was asked to stop
:class:`ClusterError`          ``RuntimeError``            a Dask cluster that cannot be
                                                           started or reached, or the
                                                           ``distributed`` extra missing
=============================  ==========================  ==================================
"""
from __future__ import annotations

from typing import Optional, Sequence

__all__ = [
    "OpenMMGeomError",
    "FileFormatError",
    "ModelFileError",
    "TopologyMismatchError",
    "ExportError",
    "SimulationBlowUp",
    "CheckpointError",
    "CheckpointMismatchError",
    "OutOfDistributionError",
    "OutOfDistributionWarning",
    "ClusterError",
]


class OpenMMGeomError(Exception):
    """Base class of every error openmm-geom raises on purpose."""


class FileFormatError(OpenMMGeomError, ValueError):
    """A file that is corrupt, truncated, of another kind or version, or lacks required data."""


class ModelFileError(FileFormatError, RuntimeError):
    """A model file that is missing, corrupt, or not an openmm-geom model of the expected kind."""


class TopologyMismatchError(OpenMMGeomError, ValueError):
    """A model used with a system it was not made for (atom count, types, periodicity)."""


class ExportError(OpenMMGeomError, RuntimeError):
    """A model that cannot be exported (not scriptable, or its script disagrees with it)."""


class SimulationBlowUp(OpenMMGeomError, RuntimeError):
    """A simulation became unstable: non-finite or exploding energies, forces or coordinates.

    The message says where and what to try; what was written before the blow-up is kept.

    Attributes
    ----------
    step : int or None
        The step at which the blow-up was detected.
    last_good_step : int or None
        The previous check, which passed (data up to it were written).
    replicas, beads : list of int
        Batched simulator only: replicas and beads with a non-finite or too large force or a
        non-finite position (empty otherwise).
    max_force : float or None
        Batched simulator only: largest finite force magnitude found, kJ/mol/nm.
    """

    def __init__(self, message: str, *, step: Optional[int] = None,
                 last_good_step: Optional[int] = None, replicas: Sequence[int] = (),
                 beads: Sequence[int] = (), max_force: Optional[float] = None):
        super().__init__(message)
        self.step = step
        self.last_good_step = last_good_step
        self.replicas = list(replicas)
        self.beads = list(beads)
        self.max_force = max_force


class CheckpointError(OpenMMGeomError, RuntimeError):
    """A checkpoint that cannot be read (missing, corrupt, truncated, or of another kind)."""


class CheckpointMismatchError(CheckpointError, ValueError):
    """A checkpoint written by a different setup than the one asked to resume from it."""


class OutOfDistributionError(OpenMMGeomError, RuntimeError):
    """An ensemble's forces disagree beyond the threshold and the run was asked to stop."""


class OutOfDistributionWarning(UserWarning):
    """An ensemble's forces disagree beyond the threshold (the run goes on)."""


class ClusterError(OpenMMGeomError, RuntimeError):
    """A Dask cluster that cannot be started or reached, or the ``distributed`` extra missing.

    ``hint`` (optional) says what to try; the command line prints it under the error.
    """

    def __init__(self, message: str, *, hint: Optional[str] = None):
        super().__init__(message)
        self.hint = hint
