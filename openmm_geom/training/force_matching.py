"""Force matching (eq. 3 of the CGSchNet paper) with time-block k-fold cross-validation.

Each fold trains one CGSchNet on all time blocks but one and validates on the held-out block
(contiguous in time, with a gap on both sides so that correlated neighbouring frames do not
leak into validation). Early stopping keeps a deep copy of the best state. The k fold models
become one k-member ensemble (:func:`openmm_geom.models.cgschnet.stack_ensemble`), as in the
paper (five models). Training is resumable: every fold checkpoints atomically each epoch.

``compile=True`` runs the training steps through ``torch.compile`` (:class:`ForceMatchingLoss`,
see there for why the gradient is taken with ``torch.func.grad`` and which batches compile).
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Callable, List, Optional

import numpy as np
import torch

from ..io import atomic_write_bytes
from ..models.cgschnet import CGSchNet, stack_ensemble
from ..ops.compile import CompiledCall, compile_model
from ..progress import progress_bar
from .config import TrainConfig
from .loop import EpochTracker

__all__ = ["TrainConfig", "time_block_folds", "force_matching_loss", "ForceMatchingLoss",
           "train_fold", "train_ensemble", "FoldResult"]


def time_block_folds(n_frames: int, folds: int, gap: int = 0) -> List[tuple]:
    """(train_indices, validation_indices) per fold; validation = one contiguous time block.

    ``gap`` frames on each side of the validation block are left out of training.
    """
    if folds < 2:
        raise ValueError("cross-validation needs at least 2 folds")
    if n_frames < folds * (2 * gap + 2):
        raise ValueError(f"{n_frames} frames are too few for {folds} folds with gap {gap}")
    edges = np.linspace(0, n_frames, folds + 1).astype(int)
    result = []
    for k in range(folds):
        lo, hi = edges[k], edges[k + 1]
        validation = np.arange(lo, hi)
        keep = np.ones(n_frames, bool)
        keep[max(0, lo - gap):min(n_frames, hi + gap)] = False
        result.append((np.flatnonzero(keep), validation))
    return result


def force_matching_loss(model: torch.nn.Module, positions: torch.Tensor, forces: torch.Tensor,
                        create_graph: bool = True) -> torch.Tensor:
    """Eq. (3): mean over frames, beads and components of |F_mapped + grad U|^2."""
    x = positions.detach().requires_grad_(True)
    energy = model(x)
    (gradient,) = torch.autograd.grad(energy.sum(), x, create_graph=create_graph)
    return ((forces + gradient) ** 2).mean()


class ForceMatchingLoss(torch.nn.Module):
    """:func:`force_matching_loss` of ``model`` as a module that ``torch.compile`` can train.

    ``torch.autograd.grad(..., create_graph=True)`` through a compiled model cannot be
    differentiated again ("torch.compile with aot_autograd does not currently support double
    backward", torch 2.12), and compiling a function that calls it breaks the graph there with
    the same result. Taking the force with ``torch.func.grad`` instead keeps the whole loss, the
    positions' gradient included, in one graph, whose backward (to the parameters) inductor
    compiles as well. Equal to :func:`force_matching_loss` up to rounding (float32: 1e-6
    relative in the parameters' gradients).

    Compile it with ``dynamic=False``: ``dynamic=True`` fails while tracing (torch 2.12: an
    internal assert in ``torch.func.grad``'s ``autograd.grad`` on symbolic shapes), and every
    new batch size costs a recompilation, so :func:`train_fold` sends only full batches through
    it (the last, smaller batch of an epoch and the validation run eager).

    Parameters
    ----------
    model : CGSchNet
        ``model(positions (B, n, 3)) -> energies (B,)``.
    """

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, positions: torch.Tensor, forces: torch.Tensor) -> torch.Tensor:
        gradient = torch.func.grad(lambda x: self.model(x).sum())(positions.detach())
        return ((forces + gradient) ** 2).mean()


def _evaluate(model, positions, forces, batch_size) -> float:
    """Loss over the whole set (not a mean of batch means)."""
    total, count = 0.0, 0
    for start in range(0, len(positions), batch_size):
        x, f = positions[start:start + batch_size], forces[start:start + batch_size]
        loss = force_matching_loss(model, x, f, create_graph=False)
        total += float(loss.detach()) * f.numel()
        count += f.numel()
    return total / count


@dataclasses.dataclass
class FoldResult:
    fold: int
    best_epoch: int
    best_validation: float
    history: dict
    state: dict
    #: Seconds of the first compiled step (compilation + one step); None when eager or resumed
    #: finished.
    compile_seconds: Optional[float] = None


def train_fold(make_model: Callable[[int], CGSchNet], positions: torch.Tensor,
               forces: torch.Tensor, train_idx, val_idx, config: TrainConfig, fold: int,
               checkpoint: Optional[Path] = None, progress: bool = True,
               callback: Optional[Callable[[int, dict], None]] = None, *,
               compile: bool = False) -> FoldResult:
    """Train one model; resumes from ``checkpoint`` if it exists. Returns the best state.

    ``callback(epoch, history)`` runs after each epoch's checkpoint (logging, or stopping).
    ``compile``: run the full-size training batches through ``torch.compile``
    (:class:`ForceMatchingLoss`); the first compiled step compiles, and a line on stderr says
    how long it took. It changes the speed, not the result (beyond float rounding), so it is
    not part of the checkpoint's identity: a run may resume compiled what it began eager.
    """
    torch.manual_seed(config.seed + 1000 * fold)
    model = make_model(config.seed + fold)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate,
                                 weight_decay=config.weight_decay)
    gamma = (config.final_learning_rate / config.learning_rate) ** (1.0 / max(config.epochs - 1, 1))
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma)
    generator = torch.Generator().manual_seed(config.seed + 7919 * fold)
    tracker = EpochTracker(model, optimizer, scheduler, generator, epochs=config.epochs,
                           patience=config.patience,
                           history={"epoch": [], "train": [], "validation": [], "learning_rate": []},
                           checkpoint=checkpoint, what="force-matching checkpoint",
                           identity={"config": json.loads(json.dumps(dataclasses.asdict(config))),
                                     "fold": int(fold)},
                           bar=progress_bar(config.epochs, f"fold {fold + 1}/{config.folds}",
                                            enabled=progress, unit="epoch"),
                           callback=callback)
    if tracker.resume():
        return FoldResult(fold, tracker.best_epoch, tracker.best_score, tracker.history,
                          tracker.best_state)
    train_idx = torch.as_tensor(train_idx)
    if config.max_train_frames and len(train_idx) > config.max_train_frames:
        stride = math.ceil(len(train_idx) / config.max_train_frames)
    else:
        stride = 1
    x_val, f_val = positions[val_idx], forces[val_idx]
    compiled = None
    if compile:
        # A compiled step left from another fold is not reused for this fold's new model: in
        # bench_compile.py the second fold reused the first fold's compilation ("done in
        # 0.0 s") and its epoch losses were 28% off eager (torch 2.12). Compile afresh.
        torch.compiler.reset()
        compiled = CompiledCall(compile_model(ForceMatchingLoss(model)),
                                f"the force-matching step of fold {fold + 1}")
    for epoch in range(tracker.start_epoch, config.epochs):
        offset = int(torch.randint(stride, (1,), generator=generator))
        subset = train_idx[offset::stride]
        order = subset[torch.randperm(len(subset), generator=generator)]
        model.train()
        total, count = 0.0, 0
        for start in range(0, len(order), config.batch_size):
            batch = order[start:start + config.batch_size]
            if compiled is not None and len(batch) == config.batch_size:
                loss = compiled(positions[batch], forces[batch])
            else:
                loss = force_matching_loss(model, positions[batch], forces[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(batch)
            count += len(batch)
        scheduler.step()
        model.eval()
        validation = _evaluate(model, x_val, f_val, 4 * config.batch_size)
        if tracker.record(epoch, validation, train=total / count, validation=validation,
                          learning_rate=optimizer.param_groups[0]["lr"],
                          postfix={"train": f"{total / count:.1f}", "val": f"{validation:.1f}"}):
            break
    tracker.close()
    return FoldResult(fold, tracker.best_epoch, tracker.best_score, tracker.history,
                      tracker.best_state, None if compiled is None else compiled.compile_seconds)


def train_ensemble(make_model: Callable[[int], CGSchNet], positions, forces, config: TrainConfig,
                   out_dir: Optional[Path] = None, progress: bool = True, *,
                   compile: bool = False):
    """Train ``config.folds`` models by time-block cross-validation; returns (ensemble, results).

    ``compile``: compile each fold's training steps (see :func:`train_fold`); the seconds each
    fold's compilation took are in its :class:`FoldResult` and in ``training.json``.
    """
    x = torch.as_tensor(np.asarray(positions))
    f = torch.as_tensor(np.asarray(forces), dtype=x.dtype)
    if x.shape != f.shape or x.dim() != 3 or x.shape[-1] != 3:
        raise ValueError(f"positions {tuple(x.shape)} and forces {tuple(f.shape)} must both be "
                         "(frames, beads, 3)")
    if not (torch.isfinite(x).all() and torch.isfinite(f).all()):
        raise ValueError("training data contain NaN or infinite values")
    results, models = [], []
    for fold, (train_idx, val_idx) in enumerate(time_block_folds(len(x), config.folds,
                                                                 config.gap_frames)):
        checkpoint = None if out_dir is None else Path(out_dir) / f"fold{fold}.ckpt"
        result = train_fold(make_model, x, f, train_idx, val_idx, config, fold, checkpoint,
                            progress, compile=compile)
        model = make_model(config.seed + fold)
        model.load_state_dict(result.state)
        results.append(result)
        models.append(model)
    ensemble = stack_ensemble(models)
    if out_dir is not None:
        summary = [{"fold": r.fold, "best_epoch": r.best_epoch, "best_validation": r.best_validation,
                    "compile_seconds": r.compile_seconds, "history": r.history} for r in results]
        atomic_write_bytes(Path(out_dir) / "training.json", json.dumps(summary, indent=1).encode())
    return ensemble, results
