"""Force matching (eq. 3 of the CGSchNet paper) with time-block k-fold cross-validation.

Each fold trains one CGSchNet on all time blocks but one and validates on the held-out block
(contiguous in time, with a gap on both sides so that correlated neighbouring frames do not
leak into validation). Early stopping keeps a deep copy of the best state. The k fold models
become one k-member ensemble (:func:`openmm_geom.models.cgschnet.stack_ensemble`), as in the
paper (five models). Training is resumable: every fold checkpoints atomically each epoch.
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
from ..progress import progress_bar
from .config import TrainConfig
from .loop import EpochTracker

__all__ = ["TrainConfig", "time_block_folds", "force_matching_loss", "train_fold",
           "train_ensemble", "FoldResult"]


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


def train_fold(make_model: Callable[[int], CGSchNet], positions: torch.Tensor,
               forces: torch.Tensor, train_idx, val_idx, config: TrainConfig, fold: int,
               checkpoint: Optional[Path] = None, progress: bool = True,
               callback: Optional[Callable[[int, dict], None]] = None) -> FoldResult:
    """Train one model; resumes from ``checkpoint`` if it exists. Returns the best state.

    ``callback(epoch, history)`` runs after each epoch's checkpoint (logging, or stopping).
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
    for epoch in range(tracker.start_epoch, config.epochs):
        offset = int(torch.randint(stride, (1,), generator=generator))
        subset = train_idx[offset::stride]
        order = subset[torch.randperm(len(subset), generator=generator)]
        model.train()
        total, count = 0.0, 0
        for start in range(0, len(order), config.batch_size):
            batch = order[start:start + config.batch_size]
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
                      tracker.best_state)


def train_ensemble(make_model: Callable[[int], CGSchNet], positions, forces, config: TrainConfig,
                   out_dir: Optional[Path] = None, progress: bool = True, runner=None):
    """Train ``config.folds`` models by time-block cross-validation; returns (ensemble, results).

    ``runner`` (a :class:`~openmm_geom.parallel.TaskRunner` on a cluster) trains the folds as
    tasks, one per fold (each resumable from its checkpoint in ``out_dir``; task logs in
    ``out_dir/logs``); without one they train here one after the other. Each fold's result
    depends only on its data, settings and seed, not on where it ran.
    """
    x = torch.as_tensor(np.asarray(positions))
    f = torch.as_tensor(np.asarray(forces), dtype=x.dtype)
    if x.shape != f.shape or x.dim() != 3 or x.shape[-1] != 3:
        raise ValueError(f"positions {tuple(x.shape)} and forces {tuple(f.shape)} must both be "
                         "(frames, beads, 3)")
    if not (torch.isfinite(x).all() and torch.isfinite(f).all()):
        raise ValueError("training data contain NaN or infinite values")
    folds = list(enumerate(time_block_folds(len(x), config.folds, config.gap_frames)))

    def checkpoint(fold):
        return None if out_dir is None else Path(out_dir) / f"fold{fold}.ckpt"

    if runner is not None and runner.spec is not None:
        from ..parallel import Task

        tasks = [Task(f"fold{fold}", (make_model, x, f, train_idx, val_idx, config, fold,
                                      checkpoint(fold), False))
                 for fold, (train_idx, val_idx) in folds]
        fold_results = runner.run(train_fold, tasks, progress=progress, description="folds",
                                  log_dir=None if out_dir is None else Path(out_dir) / "logs")
    else:
        fold_results = [train_fold(make_model, x, f, train_idx, val_idx, config, fold,
                                   checkpoint(fold), progress)
                        for fold, (train_idx, val_idx) in folds]
    results, models = [], []
    for fold, result in enumerate(fold_results):
        model = make_model(config.seed + fold)
        model.load_state_dict(result.state)
        results.append(result)
        models.append(model)
    ensemble = stack_ensemble(models)
    if out_dir is not None:
        summary = [{"fold": r.fold, "best_epoch": r.best_epoch, "best_validation": r.best_validation,
                    "history": r.history} for r in results]
        atomic_write_bytes(Path(out_dir) / "training.json", json.dumps(summary, indent=1).encode())
    return ensemble, results
