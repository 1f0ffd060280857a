"""Trajectory classification: Deep Signature and its baselines under temporal cross-validation.

One entry point, :func:`cross_validate`, trains a method of
:data:`openmm_geom.models.deep_signature.METHODS` (or the descriptor + PCA + SVM baseline,
``"dihedral-svm"``) on every fold of a :class:`~openmm_geom.data.path_dataset.PathDataset`
(paper section 3.4: validation = one window of every time group of every trajectory, model
selection on the whole validation set, then the independent test trajectories) and returns
accuracy and recall per fold and averaged.

Model selection keeps a deep copy of the parameters of the epoch with the best validation
accuracy (ties: lower validation loss), never the last epoch. Each finished fold is written to
``out/<method>/fold<k>.json`` (+ ``.pt`` parameters) atomically; calling again with the same
settings skips finished folds, so a long run resumes where it stopped.

Recall is the recall of class 1 (the paper's positive class: dimerization in the gene task,
the higher temperature in the MD task); ``macro_recall`` averages over classes.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import os
import time
from pathlib import Path
from typing import List, Optional, Sequence, Union

import numpy as np
import torch

from ..data.path_dataset import PathDataset, WindowSet
from ..errors import ModelFileError
from ..io import atomic_write_bytes, load_versioned, save_versioned
from ..models.deep_signature import METHODS, build_model
from ..progress import progress_bar
from .config import TrainingSettings

__all__ = ["TrainingSettings", "SVM_METHOD", "ALL_METHODS", "classification_metrics",
           "train_fold", "cross_validate", "load_classifier", "predict"]

CLASSIFIER_KIND, CLASSIFIER_VERSION = "signature-classifier", 1

SVM_METHOD = "dihedral-svm"
ALL_METHODS = tuple(METHODS) + (SVM_METHOD,)


def classification_metrics(labels: np.ndarray, predicted: np.ndarray, n_classes: int) -> dict:
    """Accuracy, recall of class 1, macro recall and the confusion matrix (rows: truth)."""
    labels = np.asarray(labels, dtype=np.int64)
    predicted = np.asarray(predicted, dtype=np.int64)
    confusion = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    support = confusion.sum(axis=1)
    recalls = np.where(support > 0, np.diag(confusion) / np.maximum(support, 1), np.nan)
    return {"accuracy": float(np.mean(labels == predicted)) if len(labels) else float("nan"),
            "recall": float(recalls[1]) if n_classes > 1 else float("nan"),
            "macro_recall": float(np.nanmean(recalls)), "confusion": confusion.tolist(),
            "windows": int(len(labels))}


def _input_scale(paths: torch.Tensor) -> float:
    # Inputs are divided by the training windows' spread about their per-frame node mean, so
    # gene levels (~10) and nm coordinates (~0.1) reach the networks at order one.
    centred = paths - paths.mean(dim=2, keepdim=True)
    scale = float(centred.std())
    return scale if scale > 0 and math.isfinite(scale) else 1.0


def _evaluate(model: torch.nn.Module, windows: WindowSet, scale: float, weights, batch: int = 256):
    model.eval()
    logits, loss_sum = [], 0.0
    with torch.no_grad():
        for start in range(0, len(windows), batch):
            index = torch.arange(start, min(start + batch, len(windows)))
            out = model(windows.paths[index] / scale, windows.graphs(index))
            loss = model.total_loss(out, windows.labels[index], weights)
            loss_sum += float(loss) * len(index)
            logits.append(out["logits"])
    logits = torch.cat(logits)
    return logits, loss_sum / max(len(windows), 1)


def _fold_key(dataset: PathDataset, method: str, fold: int, settings: TrainingSettings,
              hyper: dict) -> str:
    record = {"data": dataset.fingerprint, "method": method, "fold": fold,
              "settings": dataclasses.asdict(settings), "hyper": hyper}
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _svm_features(windows: WindowSet) -> np.ndarray:
    if windows.descriptors is None:
        raise ValueError("the dihedral-svm baseline needs per-frame descriptors (e.g. backbone "
                         "dihedrals), and this dataset has none")
    angles = windows.descriptors.double().numpy()
    sines, cosines = np.sin(angles), np.cos(angles)
    return np.concatenate([sines.mean(1), cosines.mean(1), sines.std(1), cosines.std(1)], axis=1)


def _train_svm(split: dict, n_classes: int, seed: int) -> dict:
    from sklearn.decomposition import PCA
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    train = _svm_features(split["train"])
    components = min(10, train.shape[1], train.shape[0])
    pipeline = make_pipeline(StandardScaler(), PCA(n_components=components, random_state=seed),
                             SVC(kernel="rbf", C=1.0, random_state=seed))
    pipeline.fit(train, split["train"].labels.numpy())
    result = {}
    for name in ("validation", "test"):
        if len(split[name]):
            predicted = pipeline.predict(_svm_features(split[name]))
            result[name] = classification_metrics(split[name].labels.numpy(), predicted, n_classes)
    return result


def train_fold(dataset: PathDataset, method: str, fold: int, settings: TrainingSettings,
               hyper: Optional[dict] = None, progress: bool = True) -> dict:
    """Train one fold; returns metrics, the learning history and the best parameters.

    Returns
    -------
    dict
        ``validation`` and ``test`` metrics (:func:`classification_metrics`) of the restored
        best epoch, ``best_epoch``, ``history`` (per epoch: ``train_loss``,
        ``validation_loss``, ``validation_accuracy``), ``seconds``, and for neural methods
        ``state_dict``, ``input_scale`` and ``hyperparameters``.
    """
    hyper = dict(hyper or {})
    split = dataset.fold(fold, groups=settings.groups, folds=settings.folds)
    n_classes = dataset.n_classes
    started = time.perf_counter()
    if method == SVM_METHOD:
        result = _train_svm(split, n_classes, settings.seed + fold)
        result.update(best_epoch=None, history=None, seconds=time.perf_counter() - started)
        return result
    train = split["train"]
    model = build_model(method, n_nodes=dataset.n_nodes, channels=dataset.n_channels,
                        n_classes=n_classes, seed=settings.seed + 1000 * fold, **hyper)
    scale = _input_scale(train.paths)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.learning_rate,
                                 weight_decay=settings.weight_decay)
    generator = torch.Generator().manual_seed(settings.seed + 7919 * fold)
    weights = settings.loss_weights
    history = {"epoch": [], "train_loss": [], "validation_loss": [], "validation_accuracy": []}
    best = (-1.0, math.inf)
    best_state, best_epoch, since_best = None, 0, 0
    bar = progress_bar(settings.epochs, f"{method} fold {fold}", enabled=progress, unit="epoch")
    for epoch in range(1, settings.epochs + 1):
        model.train()
        order = torch.randperm(len(train), generator=generator)
        total = 0.0
        for start in range(0, len(train), settings.batch_size):
            index = order[start:start + settings.batch_size]
            out = model(train.paths[index] / scale, train.graphs(index))
            loss = model.total_loss(out, train.labels[index], weights)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{method} fold {fold}: the loss became {float(loss)} at "
                                         f"epoch {epoch}; lower the learning rate")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(index)
        logits, validation_loss = _evaluate(model, split["validation"], scale, weights)
        accuracy = float((logits.argmax(1) == split["validation"].labels).float().mean())
        history["epoch"].append(epoch)
        history["train_loss"].append(total / len(train))
        history["validation_loss"].append(validation_loss)
        history["validation_accuracy"].append(accuracy)
        if (accuracy, -validation_loss) > (best[0], -best[1]):
            best = (accuracy, validation_loss)
            # A deep copy: the live tensors keep changing after this epoch.
            best_state = copy.deepcopy(model.state_dict())
            best_epoch, since_best = epoch, 0
        else:
            since_best += 1
        bar.set_postfix(val_acc=f"{accuracy:.3f}", best=f"{best[0]:.3f}")
        bar.update(1)
        if settings.patience is not None and since_best >= settings.patience:
            break
    bar.close()
    model.load_state_dict(best_state)
    result = {"best_epoch": best_epoch, "history": history, "input_scale": scale,
              "hyperparameters": model.hyperparameters, "state_dict": best_state}
    for name in ("validation", "test"):
        if len(split[name]):
            logits, _ = _evaluate(model, split[name], scale, weights)
            result[name] = classification_metrics(split[name].labels.numpy(),
                                                   logits.argmax(1).numpy(), n_classes)
    result["seconds"] = time.perf_counter() - started
    return result


def _summary(values: List[float]) -> dict:
    array = np.asarray(values, dtype=float)
    return {"mean": float(np.mean(array)), "std": float(np.std(array)), "per_fold": array.tolist()}


def cross_validate(dataset: Union[PathDataset, str, os.PathLike], method: str,
                   settings: Optional[TrainingSettings] = None, *, hyper: Optional[dict] = None,
                   out: Optional[Union[str, os.PathLike]] = None, progress: bool = True,
                   folds_to_run: Optional[Sequence[int]] = None) -> dict:
    """Temporal cross-validation of one method, with the independent test after each fold.

    Parameters
    ----------
    dataset : PathDataset or path
    method : str
        One of :data:`ALL_METHODS`.
    settings : TrainingSettings
    hyper : dict
        Architecture keywords of the method (see :func:`~openmm_geom.models.deep_signature.build_model`).
    out : path, optional
        Directory for per-fold results and parameters (resumable); nothing is written without it.
    folds_to_run : sequence of int, optional
        Subset of folds (default: all ``settings.folds``).

    Returns
    -------
    dict
        ``method``, ``validation``/``test`` summaries of ``accuracy``, ``recall`` and
        ``macro_recall`` (mean, std, per fold), ``accuracy``/``recall`` (the test means, the
        paper's reported numbers), ``best_epochs``, ``seconds`` and ``histories``.
    """
    if method not in ALL_METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {list(ALL_METHODS)}")
    dataset = dataset if isinstance(dataset, PathDataset) else PathDataset(dataset)
    settings = settings or TrainingSettings()
    hyper = dict(hyper or {})
    folds = list(range(settings.folds)) if folds_to_run is None else [int(k) for k in folds_to_run]
    directory = Path(out) / method if out is not None else None
    results = []
    for k in folds:
        key = _fold_key(dataset, method, k, settings, hyper)
        record_path = directory / f"fold{k}.json" if directory else None
        if record_path is not None and record_path.exists():
            record = json.loads(record_path.read_text())
            if record.get("key") == key:
                results.append(record)
                continue
        result = train_fold(dataset, method, k, settings, hyper, progress=progress)
        record = {key_: value for key_, value in result.items() if key_ != "state_dict"}
        record.update(key=key, fold=k, method=method)
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
            if "state_dict" in result:
                save_versioned(directory / f"fold{k}.pt", CLASSIFIER_KIND, CLASSIFIER_VERSION, {
                    "method": method, "hyperparameters": result["hyperparameters"],
                    "state_dict": result["state_dict"], "input_scale": result["input_scale"],
                    "label_names": list(dataset.label_names),
                    "window_length": dataset.fold(k, settings.groups, settings.folds)[
                        "train"].window_length,
                    "groups": settings.groups, "folds": settings.folds,
                    "data": dataset.fingerprint})
            atomic_write_bytes(record_path, json.dumps(record, indent=1).encode())
        results.append(record)
    summary = {"method": method, "folds": len(results), "best_epochs": [r["best_epoch"] for r in results],
               "seconds": float(sum(r["seconds"] for r in results)),
               "histories": [r["history"] for r in results]}
    for name in ("validation", "test"):
        if all(name in r for r in results):
            summary[name] = {metric: _summary([r[name][metric] for r in results])
                             for metric in ("accuracy", "recall", "macro_recall")}
    headline = summary.get("test", summary.get("validation"))
    summary["accuracy"] = headline["accuracy"]["mean"]
    summary["recall"] = headline["recall"]["mean"]
    return summary


def load_classifier(path: Union[str, os.PathLike]):
    """Rebuild a saved fold model: returns ``(model, info)`` with ``info['input_scale']`` etc."""
    saved = load_versioned(path, CLASSIFIER_KIND, (CLASSIFIER_VERSION,),
                           what="signature classifier file", error=ModelFileError)
    hyper = dict(saved["hyperparameters"])
    n_nodes, channels, n_classes = hyper.pop("n_nodes"), hyper.pop("channels"), hyper.pop("n_classes")
    model = build_model(saved["method"], n_nodes=n_nodes, channels=channels, n_classes=n_classes, **hyper)
    model.load_state_dict(saved["state_dict"])
    model.eval()
    return model, saved


def predict(model: torch.nn.Module, info: dict, windows: WindowSet) -> np.ndarray:
    """Class predictions of a loaded classifier for windows (applies the stored input scale)."""
    if windows.paths.shape[2] != model.n_nodes or windows.paths.shape[3] != model.channels:
        raise ValueError(f"the classifier was trained on {model.n_nodes} nodes x {model.channels} "
                         f"channels; these windows have {windows.paths.shape[2]} x "
                         f"{windows.paths.shape[3]}")
    logits, _ = _evaluate(model, windows, info["input_scale"], (0.0, 0.0, 0.0))
    return logits.argmax(1).numpy()
