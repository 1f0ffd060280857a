"""VAMPnet training on precomputed per-frame features (geom2vec paper, section III.A).

The score (eq. 7, in deeptime's convention) is

    VAMP-2 = 1 + || C00^{-1/2} C01 C11^{-1/2} ||_F^2

with mean-free covariances normalised by ``1 / (N - 1)``; the ``+1`` counts the constant
singular function that removing the mean takes out, so scores are directly comparable with
``deeptime.decomposition.deep.vamp_score(..., method="VAMP2")`` and ``VAMPNet``.

Training (Table S2; the optimizer is AdamW instead of the paper's AdamAtan2): minibatches of
time-lagged pairs drawn with a seeded ``torch.Generator``; every ``validation_interval`` batches
the score of the **whole** validation set is computed (not a mean of batch scores: VAMP-2 is a
nonlinear function of covariance estimates, so batch means are biased). The best validation
state is kept as a deep copy (``copy.deepcopy`` of the state dict: the geom2vec reference code
stored a reference to the live tensors, so "restoring" restored the last state) and loaded back
at the end. Training stops after ``train_patience`` batches without a better training score,
``validation_patience`` validations without a better validation score, or ``max_epochs``.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import time
from pathlib import Path
from typing import Dict, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from ..data.timelagged import TimeLaggedPairs
from ..errors import ModelFileError
from ..io import load_versioned, save_figure, save_versioned
from ..progress import progress_bar
from .config import VAMP_MODES
from .config import VAMPNetTrainer

__all__ = ["vamp2_score", "covariances", "vamp2_of", "transform", "VAMPNetTrainer",
           "VAMPNetResult", "fit_vampnet", "fit_lobe", "plot_learning_curve", "load_lobe_state"]

LOBE_KIND, LOBE_VERSION = "vampnet-lobe", 1



def covariances(x0: torch.Tensor, x1: torch.Tensor):
    """Mean-free ``C00, C01, C11`` of ``x0, x1 (N, k)``, normalised by ``1/(N-1)`` (deeptime)."""
    if x0.shape != x1.shape or x0.dim() != 2:
        raise ValueError(f"x0 and x1 must both be (N, k); got {tuple(x0.shape)} and "
                         f"{tuple(x1.shape)}")
    n = x0.shape[0]
    if n < 2:
        raise ValueError(f"need at least 2 pairs to estimate covariances, got {n}")
    x0 = x0 - x0.mean(dim=0, keepdim=True)
    x1 = x1 - x1.mean(dim=0, keepdim=True)
    norm = 1.0 / (n - 1)
    return norm * x0.T @ x0, norm * x0.T @ x1, norm * x1.T @ x1


def _inverse_sqrt(matrix: torch.Tensor, epsilon: float, mode: str) -> torch.Tensor:
    """``matrix^{-1/2}`` of a symmetric PSD matrix via its eigendecomposition.

    ``regularize``: eigenvalues of ``matrix + epsilon I``, absolute values (rounding can make a
    rank-deficient covariance slightly negative). ``trunc``: drop eigenpairs ``<= epsilon``
    (pseudo-inverse square root). ``clamp``: clamp eigenvalues to ``>= epsilon``. These are
    deeptime's three modes, so scores agree to rounding.
    """
    if mode == "regularize":
        matrix = matrix + epsilon * torch.eye(matrix.shape[0], dtype=matrix.dtype,
                                              device=matrix.device)
    values, vectors = torch.linalg.eigh(matrix)
    if mode == "trunc":
        keep = values > epsilon
        values, vectors = values[keep], vectors[:, keep]
    elif mode == "regularize":
        values = values.abs()
    else:
        values = values.clamp_min(epsilon)
    return (vectors * values.rsqrt()) @ vectors.T


def vamp2_score(x0: torch.Tensor, x1: torch.Tensor, epsilon: float = 1e-6,
                mode: str = "regularize") -> torch.Tensor:
    """VAMP-2 score ``1 + ||C00^{-1/2} C01 C11^{-1/2}||_F^2`` (differentiable).

    Parameters
    ----------
    x0, x1 : torch.Tensor ``(N, k)``
        Lobe outputs at times ``t`` and ``t + lag`` for ``N`` pairs.
    epsilon : float, default 1e-6
        Regularisation (``regularize``, ``clamp``) or cutoff (``trunc``) for eigenvalues.
    mode : {"regularize", "trunc", "clamp"}
        How covariance matrices are inverted; ``regularize`` is the stable choice for training.

    Returns
    -------
    torch.Tensor
        0-dim score in ``[1, 1 + k]`` for well-conditioned data; equals deeptime's
        ``vamp_score(x0, x1, method="VAMP2", epsilon=epsilon, mode=mode)``.
    """
    if mode not in VAMP_MODES:
        raise ValueError(f"mode must be one of {VAMP_MODES}, got {mode!r}")
    c00, c01, c11 = covariances(x0, x1)
    koopman = _inverse_sqrt(c00, epsilon, mode) @ c01 @ _inverse_sqrt(c11, epsilon, mode)
    return 1.0 + (koopman ** 2).sum()


# ----------------------------------------------------------------------------- evaluation
def _module_dtype(module: nn.Module) -> Optional[torch.dtype]:
    """Dtype of the first parameter; None for parameter-free modules (inputs pass unchanged)."""
    for p in module.parameters():
        return p.dtype
    return None


def _cast(x: torch.Tensor, dtype: Optional[torch.dtype]) -> torch.Tensor:
    return x if dtype is None else x.to(dtype)


@torch.no_grad()
def _apply(module: nn.Module, features: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Module outputs for all rows of ``features`` in eval mode, batched; restores the mode."""
    was_training = module.training
    module.eval()
    try:
        dtype = _module_dtype(module)
        outs = [module(_cast(chunk, dtype)) for chunk in torch.split(features, batch_size)]
    finally:
        module.train(was_training)
    return torch.cat(outs, dim=0)


def vamp2_of(lobe: nn.Module, pairs: TimeLaggedPairs, *, lobe_timelagged: Optional[nn.Module] = None,
             batch_size: int = 4096, epsilon: float = 1e-6, mode: str = "regularize") -> float:
    """VAMP-2 of ``lobe`` on **all** pairs of ``pairs`` (eval mode, no gradients).

    Every frame passes through the lobe once (pairs share frames), then the score is computed
    from the full ``(P, k)`` outputs.
    """
    idx0, idx1 = pairs.pairs[:, 0], pairs.pairs[:, 1]
    out0 = _apply(lobe, pairs.features, batch_size)
    out1 = out0 if lobe_timelagged is None else _apply(lobe_timelagged, pairs.features, batch_size)
    return float(vamp2_score(out0[idx0], out1[idx1], epsilon=epsilon, mode=mode))


def transform(lobe: nn.Module, features, batch_size: int = 4096):
    """CVs of frames: ``features (T, *feature_shape)`` -> numpy ``(T, k)``.

    A list of trajectories gives a list of arrays. Evaluated in eval mode without gradients.
    """
    if isinstance(features, (list, tuple)):
        return [transform(lobe, f, batch_size) for f in features]
    return _apply(lobe, torch.as_tensor(features), batch_size).cpu().numpy()


# ------------------------------------------------------------------------------- training
@dataclasses.dataclass
class VAMPNetResult:
    """Outcome of :func:`fit_lobe`.

    Attributes
    ----------
    lobe, lobe_timelagged : nn.Module
        The trained lobe(s) with the best-validation state loaded (``lobe_timelagged is lobe``
        when shared).
    best_state, best_state_timelagged : dict
        Deep copies of the best state dicts (independent of the live modules).
    validation_score : float or None
        VAMP-2 of the restored lobe(s) on the whole validation set.
    train_score : float
        VAMP-2 of the restored lobe(s) on the whole training set.
    best_step : int
        Batch count at which the best state was taken.
    history : dict of lists
        ``train_step``, ``train_score`` (per batch), ``validation_step``, ``validation_score``.
    stop_reason : str
    epochs : int
        Epochs started.
    seconds : float
    """

    lobe: nn.Module
    lobe_timelagged: nn.Module
    best_state: Dict[str, torch.Tensor]
    best_state_timelagged: Optional[Dict[str, torch.Tensor]]
    validation_score: Optional[float]
    train_score: float
    best_step: int
    history: Dict[str, list]
    stop_reason: str
    epochs: int
    seconds: float

    def save(self, path: Union[str, Path]) -> Path:
        """Write best state(s), scores and history atomically (``torch.load(weights_only=True)``)."""
        payload = {"best_state": self.best_state, "best_state_timelagged": self.best_state_timelagged,
                   "validation_score": self.validation_score, "train_score": self.train_score,
                   "best_step": self.best_step, "history": self.history,
                   "stop_reason": self.stop_reason}
        return save_versioned(path, LOBE_KIND, LOBE_VERSION, payload)


def load_lobe_state(lobe: nn.Module, path: Union[str, Path],
                    lobe_timelagged: Optional[nn.Module] = None) -> dict:
    """Load a state saved by :meth:`VAMPNetResult.save` into ``lobe`` (and the lagged lobe)."""
    payload = load_versioned(path, LOBE_KIND, (LOBE_VERSION,), what="VAMPnet lobe state",
                             error=ModelFileError)
    lobe.load_state_dict(payload["best_state"])
    if lobe_timelagged is not None:
        if payload["best_state_timelagged"] is None:
            raise ValueError(f"{path} holds a shared-lobe VAMPnet; no separate lagged lobe")
        lobe_timelagged.load_state_dict(payload["best_state_timelagged"])
    return payload


def _state_copy(module: nn.Module) -> Dict[str, torch.Tensor]:
    # deepcopy of the state dict: state_dict() returns references to the live parameters
    return copy.deepcopy(module.state_dict())


def fit_lobe(trainer: VAMPNetTrainer, lobe: nn.Module, train_pairs: TimeLaggedPairs,
             validation_pairs: Optional[TimeLaggedPairs] = None, *,
             lobe_timelagged: Optional[nn.Module] = None) -> VAMPNetResult:
    """Train ``lobe`` in place with ``trainer``'s settings (and ``lobe_timelagged``; None =
    shared lobe, the default); the settings are :class:`VAMPNetTrainer`'s.

    Parameters
    ----------
    trainer : VAMPNetTrainer
        The optimisation settings.
    lobe : nn.Module
        Maps ``(B, *feature_shape) -> (B, k)``.
    train_pairs, validation_pairs : TimeLaggedPairs
        Validation pairs should come from :func:`~openmm_geom.data.timelagged.split_by_time`
        or ``split_by_trajectory``. Without them the final state is kept.
    lobe_timelagged : nn.Module, optional
        Separate lobe for ``t + lag`` (non-reversible VAMP); default: shared.

    Returns
    -------
    VAMPNetResult
    """
    if len(train_pairs) < 2:
        raise ValueError(f"need at least 2 training pairs, got {len(train_pairs)}")
    if validation_pairs is not None and len(validation_pairs) < 2:
        raise ValueError(f"need at least 2 validation pairs, got {len(validation_pairs)}")
    if validation_pairs is not None and validation_pairs.feature_shape != train_pairs.feature_shape:
        raise ValueError(f"validation feature shape {validation_pairs.feature_shape} differs "
                         f"from training {train_pairs.feature_shape}")
    shared = lobe_timelagged is None or lobe_timelagged is lobe
    lagged = lobe if shared else lobe_timelagged
    params = list(lobe.parameters()) + ([] if shared else list(lagged.parameters()))
    if not params:
        raise ValueError("the lobe has no trainable parameters")
    dtype = _module_dtype(lobe)
    start_time = time.perf_counter()
    history: Dict[str, list] = {"train_step": [], "train_score": [], "validation_step": [],
                                "validation_score": []}

    def validate() -> float:
        return vamp2_of(lobe, validation_pairs, lobe_timelagged=None if shared else lagged,
                        batch_size=trainer.eval_batch_size, epsilon=trainer.epsilon, mode=trainer.mode)

    # fork_rng: seeding dropout must not change the caller's global RNG stream
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(trainer.seed))
        generator = torch.Generator().manual_seed(int(trainer.seed))
        optimizer = torch.optim.AdamW(params, lr=trainer.lr, weight_decay=trainer.weight_decay)
        # a final batch of a few pairs gives a singular covariance: drop it (it is shuffled
        # into another batch next epoch)
        per_epoch = max(len(train_pairs) // trainer.batch_size, 1)
        bar = progress_bar(trainer.max_epochs * per_epoch, "VAMPnet", enabled=trainer.progress,
                           unit="batch")
        step = 0
        best_train = -math.inf
        since_train = 0
        best_val = -math.inf
        since_val = 0
        best_state = _state_copy(lobe)
        best_state_lagged = None if shared else _state_copy(lagged)
        best_step = 0
        stop_reason = f"max_epochs ({trainer.max_epochs})"
        epoch = 0
        stop = False
        lobe.train()
        lagged.train()
        try:
            for epoch in range(1, trainer.max_epochs + 1):
                batches = train_pairs.batch_indices(trainer.batch_size, generator=generator,
                                                    drop_last=True)
                for idx in batches:
                    x0, x1 = train_pairs.batch(idx)
                    optimizer.zero_grad(set_to_none=True)
                    score = vamp2_score(lobe(_cast(x0, dtype)), lagged(_cast(x1, dtype)),
                                        epsilon=trainer.epsilon, mode=trainer.mode)
                    (-score).backward()
                    optimizer.step()
                    step += 1
                    value = float(score.detach())
                    history["train_step"].append(step)
                    history["train_score"].append(value)
                    bar.update(1)
                    if value > best_train:
                        best_train, since_train = value, 0
                    else:
                        since_train += 1
                    if validation_pairs is not None and step % trainer.validation_interval == 0:
                        val = validate()
                        history["validation_step"].append(step)
                        history["validation_score"].append(val)
                        bar.set_postfix(train=f"{value:.3f}", val=f"{val:.3f}", refresh=False)
                        if val > best_val:
                            best_val, since_val, best_step = val, 0, step
                            best_state = _state_copy(lobe)
                            if not shared:
                                best_state_lagged = _state_copy(lagged)
                        else:
                            since_val += 1
                        if since_val >= trainer.validation_patience:
                            stop_reason = (f"validation_patience ({trainer.validation_patience} "
                                           f"validations without improvement)")
                            stop = True
                            break
                    if since_train >= trainer.train_patience:
                        stop_reason = (f"train_patience ({trainer.train_patience} batches "
                                       f"without improvement)")
                        stop = True
                        break
                if stop:
                    break
        finally:
            bar.close()

        if validation_pairs is None:
            best_state = _state_copy(lobe)
            best_state_lagged = None if shared else _state_copy(lagged)
            best_step = step
        else:
            # the last batches may not have been validated yet: give them their chance
            if not history["validation_step"] or history["validation_step"][-1] != step:
                val = validate()
                history["validation_step"].append(step)
                history["validation_score"].append(val)
                if val > best_val:
                    best_val, best_step = val, step
                    best_state = _state_copy(lobe)
                    if not shared:
                        best_state_lagged = _state_copy(lagged)
            # load a copy so that the stored best stays independent of the live module
            lobe.load_state_dict(copy.deepcopy(best_state))
            if not shared:
                lagged.load_state_dict(copy.deepcopy(best_state_lagged))

    lobe.eval()
    lagged.eval()
    lagged_arg = None if shared else lagged
    validation_score = None if validation_pairs is None else vamp2_of(
        lobe, validation_pairs, lobe_timelagged=lagged_arg, batch_size=trainer.eval_batch_size,
        epsilon=trainer.epsilon, mode=trainer.mode)
    train_score = vamp2_of(lobe, train_pairs, lobe_timelagged=lagged_arg,
                           batch_size=trainer.eval_batch_size, epsilon=trainer.epsilon,
                           mode=trainer.mode)
    return VAMPNetResult(lobe=lobe, lobe_timelagged=lagged, best_state=best_state,
                         best_state_timelagged=best_state_lagged,
                         validation_score=validation_score, train_score=train_score,
                         best_step=best_step, history=history, stop_reason=stop_reason,
                         epochs=epoch, seconds=time.perf_counter() - start_time)


def fit_vampnet(lobe: nn.Module, train_pairs: TimeLaggedPairs,
                validation_pairs: Optional[TimeLaggedPairs] = None, *,
                lobe_timelagged: Optional[nn.Module] = None, lr: float = 2e-4,
                weight_decay: float = 0.0, batch_size: int = 5000, max_epochs: int = 20,
                validation_interval: int = 5, train_patience: int = 10,
                validation_patience: int = 2, epsilon: float = 1e-6, mode: str = "regularize",
                seed: int = 0, progress: bool = False, eval_batch_size: int = 4096) -> VAMPNetResult:
    """Train a VAMPnet; shorthand for ``fit_lobe(VAMPNetTrainer(...), ...)`` (see there)."""
    trainer = VAMPNetTrainer(lr=lr, weight_decay=weight_decay, batch_size=batch_size,
                             max_epochs=max_epochs, validation_interval=validation_interval,
                             train_patience=train_patience, validation_patience=validation_patience,
                             epsilon=epsilon, mode=mode, seed=seed, progress=progress,
                             eval_batch_size=eval_batch_size)
    return fit_lobe(trainer, lobe, train_pairs, validation_pairs, lobe_timelagged=lobe_timelagged)


def plot_learning_curve(history: Dict[str, Sequence[float]], path: Union[str, Path],
                        dpi: int = 120) -> Path:
    """PNG of VAMP-2 per training batch and per validation, best validation starred.

    ``history`` as in :attr:`VAMPNetResult.history`; written atomically.
    """
    from matplotlib.figure import Figure


    fig = Figure(figsize=(6.5, 4.2))
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(history["train_step"], history["train_score"], "-", lw=0.8, color="0.55",
            label="training batch")
    if history.get("validation_score"):
        ax.plot(history["validation_step"], history["validation_score"], "-o", ms=3, color="C0",
                label="validation (whole set)")
        best = int(np.argmax(history["validation_score"]))
        ax.plot(history["validation_step"][best], history["validation_score"][best], "*", ms=12,
                color="C3", label="restored best")
    ax.set(xlabel="training batch", ylabel="VAMP-2 score", title="VAMPnet learning curve")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path, dpi)
