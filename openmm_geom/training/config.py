"""The training settings dataclasses, importable without torch.

Each class is defined here once and re-exported by the module that trains with it
(:mod:`.force_matching`, :mod:`.energy_force`, :mod:`.signature_classifier`, :mod:`.vamp`), so
``openmm-geom ... --help`` can list their fields without loading torch. Every class checks its
fields on construction (:func:`openmm_geom.settings.check_settings`).
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

from ..settings import check_settings, setting

__all__ = ["TrainConfig", "EnergyForceConfig", "TrainingSettings", "VAMPNetTrainer",
           "VAMP_MODES"]

#: Covariance regularisation modes of :func:`openmm_geom.training.vamp.vamp2_score`.
VAMP_MODES = ("regularize", "trunc", "clamp")


@dataclasses.dataclass
class TrainConfig:
    """Force-matching hyper-parameters (lengths nm, forces kJ/mol/nm)."""

    epochs: int = setting(30, help="most training epochs per fold", check="count")
    batch_size: int = setting(256, help="frames per optimiser step", check="count")
    learning_rate: float = setting(3e-3, help="Adam learning rate at the start",
                                   check="positive")
    final_learning_rate: float = setting(3e-4, help="learning rate of the last epoch, decayed "
                                                    "exponentially", check="positive")
    weight_decay: float = setting(0.0, help="Adam weight decay", check="non-negative")
    patience: int = setting(6, help="stop a fold after this many epochs without a better "
                                    "validation loss", check="count")
    folds: int = setting(5, help="time-block cross-validation folds = ensemble members (>= 2)",
                         check="count")
    gap_frames: int = setting(10, help="frames left out on each side of a validation block",
                              check="non-negative")
    seed: int = setting(0, help="the run's random seed (set per run)", cli=False,
                        check="non-negative")
    max_train_frames: Optional[int] = setting(
        None, help="training frames per epoch, a stride through them; none: all", check="count")

    def __post_init__(self):
        check_settings(self)
        if self.folds < 2:
            raise ValueError(f"folds must be an integer >= 2 (cross-validation), got "
                             f"{self.folds!r}")


@dataclasses.dataclass
class EnergyForceConfig:
    """Hyper-parameters of energy+force training (units: nm, kJ/mol)."""

    epochs: int = setting(30, help="most training epochs", check="count")
    batch_size: int = setting(8, help="frames per optimiser step", check="count")
    lr_min: float = setting(5e-5, help="one-cycle schedule: starting learning rate",
                            check="positive")
    lr_max: float = setting(2e-3, help="one-cycle schedule: peak learning rate",
                            check="positive")
    lr_final: float = setting(1e-5, help="one-cycle schedule: final learning rate",
                              check="positive")
    weight_decay: float = setting(0.0, help="AdamW weight decay", check="non-negative")
    rho: float = setting(0.0, help="weight of the energy term, 0-1; forces: 1 - rho",
                         check="finite")
    loss: str = setting("logcosh", help="per-component loss", choices=("logcosh", "mse"))
    logcosh_alpha: float = setting(1.0, help="log-cosh: quadratic below this, in units of sigma",
                                   check="positive")
    patience: int = setting(10, help="stop after this many epochs without a better validation "
                                     "force MAE", check="count")
    seed: int = setting(0, help="the run's random seed (set per run)", cli=False,
                        check="non-negative")
    max_train_frames: Optional[int] = setting(
        None, help="training frames per epoch, a stride through them; none: all", check="count")
    core_repulsion: bool = setting(True, help="fit (sigma/r)^12 walls from the closest "
                                              "distances seen")

    def __post_init__(self):
        check_settings(self)
        if not 0.0 <= self.rho <= 1.0:
            raise ValueError(f"rho must be in [0, 1], got {self.rho}")
        if not self.lr_min <= self.lr_max:
            raise ValueError("learning rates must satisfy 0 < lr_min <= lr_max and lr_final > 0")


@dataclasses.dataclass
class TrainingSettings:
    """Optimisation settings (defaults: the paper's gene-regulatory setting, appendix B.1).

    ``loss_weights`` multiply the cut, orthogonality and temporal-consistency terms of eq. 12
    (cross entropy has weight 1). The cut weight defaults to 0.1, not 1: with weight 1 the
    cut term (which rewards putting every node in one bead) outweighs orthogonality early in
    training and the assignment collapses to a single bead. ``patience`` stops a fold after that many epochs without a
    better validation accuracy (None: run all epochs).
    """

    epochs: int = setting(100, help="training epochs per fold", check="count")
    batch_size: int = setting(48, help="windows per optimiser step", check="count")
    learning_rate: float = setting(5e-4, help="Adam learning rate", check="positive")
    weight_decay: float = setting(1e-4, help="Adam weight decay", check="non-negative")
    loss_weights: Sequence[float] = setting(
        (0.1, 1.0, 1.0), help="weights of the cut, orthogonality and consistency terms")
    patience: Optional[int] = setting(None, help="stop a fold after N epochs without a better "
                                                 "validation accuracy; none: run all epochs",
                                      check="count")
    groups: int = setting(5, help="time groups per trajectory", check="count")
    folds: int = setting(5, help="folds per time group", check="count")
    seed: int = setting(0, help="random seed of the models and the batch order",
                        check="non-negative")

    def __post_init__(self):
        check_settings(self)
        if len(self.loss_weights) != 3:
            raise ValueError("loss_weights needs three numbers (cut, orthogonality, consistency)")
        self.loss_weights = tuple(float(w) for w in self.loss_weights)


@dataclasses.dataclass
class VAMPNetTrainer:
    """VAMPnet optimisation settings (defaults: Table S2 of the geom2vec paper).

    Parameters
    ----------
    lr : float, default 2e-4
        AdamW learning rate.
    weight_decay : float, default 0.0
    batch_size : int, default 5000
        Pairs per batch; VAMP needs large batches (covariance inverses).
    max_epochs : int, default 20
    validation_interval : int, default 5
        Batches between validations.
    train_patience : int, default 10
        Stop after this many batches without a better training (batch) score.
    validation_patience : int, default 2
        Stop after this many validations without a better validation score.
    epsilon, mode
        Covariance regularisation, see :func:`~openmm_geom.training.vamp.vamp2_score`.
    seed : int, default 0
        Seeds batch order and dropout; CPU runs with equal seeds are bit-identical.
    progress : bool, default False
        tqdm bar on stderr.
    eval_batch_size : int, default 4096

    :func:`openmm_geom.training.vamp.fit_lobe` trains with these settings.
    """

    lr: float = setting(2e-4, help="AdamW learning rate", check="positive")
    weight_decay: float = setting(0.0, help="AdamW weight decay", check="non-negative")
    batch_size: int = setting(5000, help="time-lagged pairs per batch; VAMP needs large "
                                         "batches", check="count")
    max_epochs: int = setting(20, help="most passes over the training pairs", check="count")
    validation_interval: int = setting(5, help="batches between validations", check="count")
    train_patience: int = setting(10, help="stop after this many batches without a better "
                                           "training score", check="count")
    validation_patience: int = setting(2, help="stop after this many validations without a "
                                               "better validation score", check="count")
    epsilon: float = setting(1e-6, help="covariance regularisation", check="non-negative")
    mode: str = setting("regularize", help="covariance regularisation mode", choices=VAMP_MODES)
    seed: int = setting(0, help="seeds batch order and dropout (set per run)", cli=False,
                        check="non-negative")
    progress: bool = setting(False, help="progress bar on stderr (set per run)", cli=False)
    eval_batch_size: int = setting(4096, help="pairs per batch when scoring", check="count")

    def __post_init__(self):
        check_settings(self)
