"""The bookkeeping every epoch-based trainer shares: early stopping on a validation score with
a deep-copied best state, a checkpoint after every epoch from which training resumes exactly
(model, optimizer, scheduler, random generator, history), the progress bar and the per-epoch
callback.

Checkpoints are tagged ``openmm-geom/training-state/1``; one written by another run (other
settings or data, as ``identity`` says) is refused instead of being silently continued.
"""
from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from ..errors import CheckpointError, CheckpointMismatchError
from ..io import PathLike, load_versioned, save_versioned

__all__ = ["EpochTracker"]

STATE_KIND, STATE_VERSION = "training-state", 1


class EpochTracker:
    """Best state, patience and the resumable checkpoint of one training loop.

    Parameters
    ----------
    model, optimizer, scheduler, generator
        What a checkpoint saves and a resumed run restores.
    epochs, patience : int
        Training stops after ``epochs`` or ``patience`` epochs without a better score.
    history : dict of lists
        The per-epoch record (its keys in the order :meth:`record` fills them).
    checkpoint : path, optional
        Written atomically after every epoch; :meth:`resume` continues from it.
    identity : dict, optional
        Plain data naming the run (settings, a hash of the data); a checkpoint recording other
        values is refused with :class:`~openmm_geom.errors.CheckpointMismatchError`.
    what : str
        The checkpoint's name in messages.
    bar : progress bar (:func:`openmm_geom.progress.progress_bar`), optional
        Advanced by one per recorded epoch (and by the epochs a resumed run skips).
    callback : callable(epoch, history), optional
        Runs after each epoch's checkpoint (logging, or stopping by raising).
    """

    def __init__(self, model: torch.nn.Module, optimizer, scheduler, generator: torch.Generator,
                 *, epochs: int, patience: int, history: dict,
                 checkpoint: Optional[PathLike] = None, identity: Optional[dict] = None,
                 what: str = "training checkpoint", bar=None,
                 callback: Optional[Callable[[int, dict], None]] = None):
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.generator = generator
        self.epochs, self.patience = int(epochs), int(patience)
        self.history = history
        self.checkpoint = None if checkpoint is None else Path(checkpoint)
        self.identity = identity
        self.what = what
        self.bar, self.callback = bar, callback
        self.best_state: Optional[dict] = None
        self.best_score = math.inf
        self.best_info: Any = None
        self.best_epoch = -1
        self.start_epoch = 0
        self.stale = 0

    def resume(self) -> bool:
        """Restore the checkpoint if there is one; True if its run had finished.

        A finished run's best state is loaded into the model.
        """
        if self.checkpoint is None or not self.checkpoint.exists():
            return False
        saved = load_versioned(self.checkpoint, STATE_KIND, (STATE_VERSION,), what=self.what,
                               error=CheckpointError)
        if saved.get("identity") != self.identity:
            raise CheckpointMismatchError(
                f"{self.checkpoint} belongs to another training run (other data or settings); "
                "remove it or choose another output directory")
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.generator.set_state(saved["generator"])
        self.history.clear()
        self.history.update(saved["history"])
        self.best_state, self.best_score = saved["best_state"], saved["best_score"]
        self.best_info, self.best_epoch = saved["best_info"], saved["best_epoch"]
        self.start_epoch, self.stale = saved["epoch"] + 1, saved["stale"]
        if saved["finished"]:
            self.close()
        elif self.bar is not None:
            self.bar.update(self.start_epoch)
        return bool(saved["finished"])

    def record(self, epoch: int, score: float, info: Any = None, *,
               postfix: Optional[dict] = None, **values) -> bool:
        """Close an epoch: append ``epoch`` and ``values`` to the history, keep the state if
        ``score`` (lower is better) is the best so far, write the checkpoint, advance the bar
        (showing ``postfix``) and run the callback.

        Returns True when training should stop (patience exhausted or the last epoch).
        """
        self.history["epoch"].append(epoch)
        for key, value in values.items():
            self.history[key].append(value)
        if self.best_state is None or score < self.best_score:
            self.best_score, self.best_info, self.best_epoch, self.stale = score, info, epoch, 0
            # A deep copy: state_dict() holds live references that later steps overwrite.
            self.best_state = copy.deepcopy(self.model.state_dict())
        else:
            self.stale += 1
        finished = self.stale >= self.patience or epoch == self.epochs - 1
        if self.checkpoint is not None:
            save_versioned(self.checkpoint, STATE_KIND, STATE_VERSION, {
                "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "generator": self.generator.get_state(),
                "history": self.history, "best_state": self.best_state,
                "best_score": self.best_score, "best_info": self.best_info,
                "best_epoch": self.best_epoch, "epoch": epoch, "stale": self.stale,
                "finished": finished, "identity": self.identity})
        if self.bar is not None:
            self.bar.set_postfix(**(postfix or {}))
            self.bar.update(1)
        if self.callback is not None:
            self.callback(epoch, self.history)
        return finished

    def close(self) -> None:
        """End training: close the bar and load the best state into the model."""
        if self.bar is not None:
            self.bar.close()
        self.model.load_state_dict(self.best_state)
