"""Denoising pretraining of a geom2vec backbone (paper section II.B, Appendix A.4, Table S1).

Gaussian noise of ``noise_nm`` (default 0.02 nm = the paper's 0.2 A) per Cartesian component is
added to every atom of a corpus structure; the backbone plus a gated equivariant block
(Algorithm 1, ``d -> 1`` vector channel) predicts the per-atom displacement.

Target scaling: the regression target is the displacement divided by ``noise_nm``, i.e. the
unit-variance standard normal draw ``eps`` (the paper's "normalized added atom displacements
with a unit variance"). :class:`DenoisingModel` therefore outputs ``eps`` predictions;
:meth:`DenoisingModel.predict_noise_nm` multiplies by ``noise_nm`` to give nm. The loss is the
mean squared error per Cartesian component; predicting zero scores 1.0 in expectation (the
recorded ``zero_baseline_validation_loss`` is its exact value on the fixed validation noise),
so a validation loss below it shows that something was learned.

Batching: a batch of ``batch_size`` structures of any sizes and compositions is laid out as one
disjoint graph (:func:`openmm_geom.data.corpus.pack_structures`: centred, on a grid farther
apart than the cutoff), so one featurizer call serves the whole batch and each structure sees
exactly its own atoms.

Splits are by group (molecule/fragment family; :meth:`Corpus.split_by_group`). The validation
noise is drawn once from the seed, so validation losses are comparable across epochs; they are
computed over the whole validation set (sum over all atoms / count, not a mean of batch means).
The best state (lowest validation loss) is deep-copied. Training noise and batch order are pure
functions of ``(seed, epoch, step)``, and a checkpoint (atomic) holds model, optimizer, history,
best state and the position within the epoch, so a resumed run is bit-identical to an
uninterrupted one, also after a stop in the middle of an epoch (``max_minutes``).
"""
from __future__ import annotations

import copy
import hashlib
import io
import json
import math
import time
import zipfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..data.corpus import Corpus, load_corpus, pack_structures
from ..errors import CheckpointError, ModelFileError
from ..io import (atomic_torch_save, atomic_write_bytes, check_format, format_tag,
                  load_versioned)
from ..models.geom2vec import Geom2VecFeaturizer

__all__ = ["DenoisingModel", "pretrain", "load_backbone", "load_denoising_model",
           "backbone_paths",
           "predict_structures"]

BACKBONE_KIND, BACKBONE_VERSION = "backbone", 1
CHECKPOINT_KIND, CHECKPOINT_VERSION = "denoising-checkpoint", 1


class DenoisingModel(torch.nn.Module):
    """Backbone + gated equivariant block predicting each atom's (normalised) displacement.

    Parameters
    ----------
    featurizer : Geom2VecFeaturizer
    head : module ``(x (..., d), v (..., 3, d)) -> (x', v' (..., 3, 1))``; default a
        :class:`~openmm_geom.models.mixers.GatedEquivariantBlock` ``(d, 1)``
    noise_nm : the noise level the outputs are scaled by (see module docstring)
    seed : seeds the default head's initialisation (the global RNG is untouched)

    ``forward(atomic_numbers (N,), positions (B, N, 3) nm, boxes=None) -> (B, N, 3)``: the
    predicted displacement divided by ``noise_nm`` (dimensionless, unit variance target).
    """

    def __init__(self, featurizer: Geom2VecFeaturizer, head: Optional[torch.nn.Module] = None,
                 noise_nm: float = 0.02, seed: int = 0):
        super().__init__()
        if head is None:
            from ..models.mixers import GatedEquivariantBlock

            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(seed) + 1)
                head = GatedEquivariantBlock(featurizer.hidden_channels, 1)
            head.to(featurizer.dtype)
        self.featurizer = featurizer
        self.head = head
        self.noise_nm = float(noise_nm)

    def forward(self, atomic_numbers: torch.Tensor, positions: torch.Tensor,
                boxes: Optional[torch.Tensor] = None) -> torch.Tensor:
        features = self.featurizer(atomic_numbers, positions, boxes)
        _, vectors = self.head(features[..., 0, :], features[..., 1:, :])
        return vectors[..., 0]

    def predict_noise_nm(self, atomic_numbers: torch.Tensor, positions: torch.Tensor,
                         boxes: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Predicted displacements in nm, ``(B, N, 3)``."""
        return self.forward(atomic_numbers, positions, boxes) * self.noise_nm


def predict_structures(model: DenoisingModel, atomic_numbers: Sequence[torch.Tensor],
                       positions: Sequence[torch.Tensor]) -> List[torch.Tensor]:
    """Predictions (normalised, ``(n_i, 3)``) for structures of any sizes in one packed call."""
    dtype = model.featurizer.dtype
    positions = [torch.as_tensor(p, dtype=dtype) for p in positions]
    packed = pack_structures(positions, model.featurizer.cutoff)
    z = torch.cat([torch.as_tensor(a, dtype=torch.int64) for a in atomic_numbers])
    out = model(z, packed.unsqueeze(0))[0]
    return list(torch.split(out, [len(p) for p in positions]))


def backbone_paths(out) -> Dict[str, Path]:
    """Files written next to the backbone ``out``: checkpoint, history JSON, learning curve."""
    out = Path(out)
    stem = out.name[:-len(out.suffix)] if out.suffix else out.name
    return {"backbone": out, "checkpoint": out.with_name(out.name + ".checkpoint"),
            "history": out.with_name(stem + ".history.json"),
            "learning_curve": out.with_name(stem + ".learning-curve.png")}


# --------------------------------------------------------------------------------------------
# Deterministic randomness: pure functions of (seed, epoch, step)


def _int_seed(*words: int) -> int:
    return int(np.random.SeedSequence([int(w) for w in words]).generate_state(1, np.uint64)[0]
               % (2 ** 62))


def _noise(generator_seed: int, n_atoms: int, dtype: torch.dtype) -> torch.Tensor:
    generator = torch.Generator().manual_seed(generator_seed)
    return torch.randn((n_atoms, 3), generator=generator, dtype=dtype)


def _batch_tensors(corpus: Corpus, indices: np.ndarray, dtype: torch.dtype):
    z = torch.as_tensor(np.concatenate([corpus.structure(int(i))[0] for i in indices]))
    pos = [torch.as_tensor(corpus.structure(int(i))[1]).to(dtype) for i in indices]
    return z, pos


def _sse(model: DenoisingModel, z: torch.Tensor, positions: List[torch.Tensor],
         eps: torch.Tensor) -> torch.Tensor:
    """Sum of squared errors of one packed batch; ``eps`` (M, 3) is the unit-variance noise."""
    noisy, start = [], 0
    for p in positions:
        noisy.append(p + model.noise_nm * eps[start:start + len(p)])
        start += len(p)
    packed = pack_structures(noisy, model.featurizer.cutoff)
    prediction = model(z, packed.unsqueeze(0))[0]
    return ((prediction - eps) ** 2).sum()


class _Validation:
    """The whole validation set with fixed noise (drawn once from the seed)."""

    def __init__(self, corpus: Corpus, indices: np.ndarray, batch_size: int, seed: int,
                 dtype: torch.dtype):
        self.batches = []
        self.count = 0
        zero = 0.0
        for b, start in enumerate(range(0, len(indices), batch_size)):
            chunk = indices[start:start + batch_size]
            z, pos = _batch_tensors(corpus, chunk, dtype)
            eps = _noise(_int_seed(seed, 99, b), len(z), dtype)
            self.batches.append((z, pos, eps))
            self.count += 3 * len(z)
            zero += float((eps.double() ** 2).sum())
        self.zero_baseline = zero / max(self.count, 1)

    def loss(self, model: DenoisingModel) -> float:
        was_training = model.training
        model.eval()
        total = 0.0
        with torch.no_grad():
            for z, pos, eps in self.batches:
                total += float(_sse(model, z, pos, eps).double())
        model.train(was_training)
        return total / max(self.count, 1)


def _plot_history(history: dict, baseline: float, path: Path) -> None:
    from matplotlib.figure import Figure

    from ..io import save_figure

    fig = Figure(figsize=(6.0, 4.0))
    ax = fig.add_subplot(1, 1, 1)
    epochs = history["epoch"]
    ax.plot(epochs, history["train_loss"], "o--", label="train")
    ax.plot(epochs, history["validation_loss"], "o-", label="validation")
    ax.axhline(baseline, color="grey", lw=1, ls=":", label="predict zero (baseline)")
    if history["validation_loss"]:
        best = int(np.argmin(history["validation_loss"]))
        ax.plot(epochs[best], history["validation_loss"][best], "k*", ms=12, label="best (saved)")
    ax.set(xlabel="epoch", ylabel="denoising MSE (noise / noise level)$^2$",
           title="denoising pretraining")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, 110)


def _state_copy(module: torch.nn.Module) -> Dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def pretrain(corpus: Union[Corpus, str, Path], featurizer_hyperparameters: dict, *, out,
             noise_nm: float = 0.02, epochs: int = 10, batch_size: int = 100,
             lr: float = 5e-4, weight_decay: float = 0.01, validation_fraction: float = 0.1,
             seed: int = 0, progress: bool = True, max_minutes: Optional[float] = None,
             resume: bool = True, threads: Optional[int] = None,
             stop_after_steps: Optional[int] = None) -> dict:
    """Denoising pretraining; writes the backbone file ``out`` and returns a summary.

    Parameters
    ----------
    corpus : Corpus or path of a corpus file
    featurizer_hyperparameters : ``Geom2VecFeaturizer(**hp)`` arguments (e.g. from
        ``Geom2VecFeaturizer(...).hyperparameters``)
    out : path of the backbone file; next to it go ``<out>.checkpoint``,
        ``<stem>.history.json`` and ``<stem>.learning-curve.png`` (:func:`backbone_paths`)
    noise_nm : Gaussian noise per Cartesian component, nm (paper: 0.2 A)
    epochs : total epochs (a resumed run continues up to this number)
    batch_size : structures per optimizer step (paper: 100)
    lr, weight_decay : AdamW with AMSGrad (paper Table S1: lr 5e-4)
    validation_fraction : of the structures, split by group (no molecule in both sets)
    seed : seeds the split, the initialisation, batch order and noise
    max_minutes : time budget; when exceeded the run stops cleanly after the current step,
        saving a checkpoint at that point and the best backbone so far
    resume : continue from ``<out>.checkpoint`` if it exists (its settings must match)
    threads : torch threads for this call, restored afterwards (None: leave as is)
    stop_after_steps : stop (as if the budget ran out) after this many optimizer steps in
        this call; for tests and for splitting a run into pieces

    Returns
    -------
    dict: backbone path and sha256, epochs_completed, finished, best_epoch,
    best_validation_loss, zero_baseline_validation_loss, history, structures/s, seconds.
    """
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    try:
        return _pretrain(corpus, featurizer_hyperparameters, out, noise_nm, epochs, batch_size,
                         lr, weight_decay, validation_fraction, seed, progress, max_minutes,
                         resume, stop_after_steps)
    finally:
        torch.set_num_threads(previous_threads)


def _pretrain(corpus, featurizer_hyperparameters, out, noise_nm, epochs, batch_size, lr,
              weight_decay, validation_fraction, seed, progress, max_minutes, resume,
              stop_after_steps) -> dict:
    start_time = time.perf_counter()
    if not isinstance(corpus, Corpus):
        corpus = load_corpus(corpus)
    if batch_size < 1 or epochs < 0 or noise_nm <= 0 or lr <= 0:
        raise ValueError("batch_size and noise_nm and lr must be positive, epochs >= 0")
    paths = backbone_paths(out)
    hp = dict(featurizer_hyperparameters)
    featurizer = Geom2VecFeaturizer(**hp)
    hp = featurizer.hyperparameters
    max_z_used = int(corpus.atomic_numbers.max())
    if max_z_used >= featurizer.max_z:
        raise ValueError(f"the corpus contains atomic number {max_z_used} but the featurizer "
                         f"embeds only 1..{featurizer.max_z - 1}: raise max_z")
    dtype = featurizer.dtype
    model = DenoisingModel(featurizer, noise_nm=noise_nm, seed=seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay,
                                  amsgrad=True)
    train_idx, val_idx = corpus.split_by_group(validation_fraction, seed)
    validation = _Validation(corpus, val_idx, batch_size, seed, dtype)
    config = {"hyperparameters": hp, "corpus_sha256": corpus.sha256, "noise_nm": float(noise_nm),
              "batch_size": int(batch_size), "lr": float(lr),
              "weight_decay": float(weight_decay),
              "validation_fraction": float(validation_fraction), "seed": int(seed)}
    steps_per_epoch = math.ceil(len(train_idx) / batch_size)

    history = {"epoch": [], "train_loss": [], "validation_loss": [], "seconds": []}
    epoch, step, partial_sse, partial_count = 0, 0, 0.0, 0
    best_val, best_epoch, best_state = math.inf, -1, None
    resumed = False
    if resume and paths["checkpoint"].is_file():
        checkpoint = _load_checkpoint(paths["checkpoint"])
        if checkpoint["config"] != config:
            diff = sorted(k for k in config if checkpoint["config"].get(k) != config[k])
            raise ValueError(f"{paths['checkpoint']} was written with different settings "
                             f"({', '.join(diff)}); pass resume=False to start over or use "
                             "another output path")
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        history = checkpoint["history"]
        epoch, step = int(checkpoint["epoch"]), int(checkpoint["step"])
        partial_sse, partial_count = float(checkpoint["partial_sse"]), \
            int(checkpoint["partial_count"])
        best_val, best_epoch = float(checkpoint["best_validation_loss"]), \
            int(checkpoint["best_epoch"])
        best_state = checkpoint["best_state"]
        resumed = True

    def save_checkpoint():
        atomic_torch_save(paths["checkpoint"], {
            "format": format_tag(CHECKPOINT_KIND, CHECKPOINT_VERSION), "config": config, "model": model.state_dict(),
            "optimizer": optimizer.state_dict(), "history": history, "epoch": epoch,
            "step": step, "partial_sse": partial_sse, "partial_count": partial_count,
            "best_validation_loss": best_val, "best_epoch": best_epoch,
            "best_state": best_state})

    def save_outputs():
        state = best_state if best_state is not None else {
            "featurizer": _state_copy(model.featurizer), "head": _state_copy(model.head)}
        _write_backbone(paths["backbone"], hp, state, history, config, corpus, best_epoch,
                        best_val, validation.zero_baseline, epoch, val_idx)
        atomic_write_bytes(paths["history"], json.dumps(
            dict(history, zero_baseline_validation_loss=validation.zero_baseline,
                 best_epoch=best_epoch, best_validation_loss=best_val), indent=1).encode())
        if history["epoch"]:
            _plot_history(history, validation.zero_baseline, paths["learning_curve"])

    from ..progress import progress_bar

    bar = progress_bar(max(0, epochs * steps_per_epoch - (epoch * steps_per_epoch + step)),
                       "denoising pretraining", enabled=progress, unit="batch")
    model.train()
    steps_done, structures_done, stopped = 0, 0, False
    train_seconds = 0.0
    while epoch < epochs and not stopped:
        order = np.random.default_rng([int(seed), epoch, 1]).permutation(train_idx)
        epoch_start = time.perf_counter()
        while step < steps_per_epoch:
            t0 = time.perf_counter()
            chunk = order[step * batch_size:(step + 1) * batch_size]
            z, pos = _batch_tensors(corpus, chunk, dtype)
            eps = _noise(_int_seed(seed, epoch, step, 2), len(z), dtype)
            optimizer.zero_grad(set_to_none=True)
            sse = _sse(model, z, pos, eps)
            (sse / (3 * len(z))).backward()
            optimizer.step()
            partial_sse += float(sse.detach().double())
            partial_count += 3 * len(z)
            step += 1
            steps_done += 1
            structures_done += len(chunk)
            train_seconds += time.perf_counter() - t0
            bar.update(1)
            bar.set_postfix(loss=f"{partial_sse / partial_count:.3f}", refresh=False)
            over_time = (max_minutes is not None
                         and time.perf_counter() - start_time > 60.0 * max_minutes)
            if (over_time or (stop_after_steps is not None and steps_done >= stop_after_steps)) \
                    and step < steps_per_epoch:
                stopped = True
                break
        if stopped:
            break
        val = validation.loss(model)
        history["epoch"].append(epoch + 1)
        history["train_loss"].append(partial_sse / max(partial_count, 1))
        history["validation_loss"].append(val)
        history["seconds"].append(time.perf_counter() - epoch_start)
        if val < best_val:
            best_val, best_epoch = val, epoch + 1
            best_state = copy.deepcopy({"featurizer": _state_copy(model.featurizer),
                                        "head": _state_copy(model.head)})
        epoch, step, partial_sse, partial_count = epoch + 1, 0, 0.0, 0
        save_checkpoint()
        atomic_write_bytes(paths["history"], json.dumps(
            dict(history, zero_baseline_validation_loss=validation.zero_baseline),
            indent=1).encode())
        if (max_minutes is not None and time.perf_counter() - start_time > 60.0 * max_minutes) \
                or (stop_after_steps is not None and steps_done >= stop_after_steps):
            stopped = epoch < epochs
    bar.close()
    if stopped:
        save_checkpoint()
    save_outputs()
    return {"backbone": str(paths["backbone"]),
            "sha256": hashlib.sha256(paths["backbone"].read_bytes()).hexdigest(),
            "checkpoint": str(paths["checkpoint"]), "history_path": str(paths["history"]),
            "learning_curve": str(paths["learning_curve"]) if history["epoch"] else None,
            "epochs_completed": epoch, "step_in_epoch": step, "finished": epoch >= epochs,
            "stopped_early": stopped, "resumed": resumed, "best_epoch": best_epoch,
            "best_validation_loss": best_val,
            "zero_baseline_validation_loss": validation.zero_baseline,
            "history": history, "n_train_structures": int(len(train_idx)),
            "n_validation_structures": int(len(val_idx)),
            "train_structures_per_second": (structures_done / train_seconds
                                            if train_seconds else None),
            "seconds": time.perf_counter() - start_time}


def _load_checkpoint(path: Path) -> dict:
    try:
        return load_versioned(path, CHECKPOINT_KIND, (CHECKPOINT_VERSION,),
                              what="pretraining checkpoint", error=CheckpointError)
    except CheckpointError as error:
        raise CheckpointError(f"{error}; delete it or pass resume=False") from None


def _write_backbone(path: Path, hp: dict, state: dict, history: dict, config: dict,
                    corpus: Corpus, best_epoch: int, best_val: float, zero_baseline: float,
                    epochs_completed: int, val_idx: np.ndarray) -> None:
    from ..version import __version__

    val_groups = sorted({corpus.group_name(int(i)) for i in val_idx})
    payload = {
        "format": format_tag(BACKBONE_KIND, BACKBONE_VERSION), "hyperparameters": hp,
        "state_dict": state["featurizer"], "head_state_dict": state["head"],
        "head": "GatedEquivariantBlock(d, 1)", "history": history,
        "corpus_sha256": corpus.sha256,
        "corpus_summary": {"n_structures": len(corpus), "n_atoms": corpus.n_atoms,
                           "n_groups": corpus.n_groups},
        "noise_nm": config["noise_nm"], "target": "displacement / noise_nm (unit variance)",
        "units": {"positions": "nm", "cutoff": "nm"},
        "best_epoch": best_epoch,
        "best_validation_loss": best_val if math.isfinite(best_val) else None,
        "zero_baseline_validation_loss": zero_baseline, "epochs_completed": epochs_completed,
        "validation_groups": val_groups,
        "training": {k: config[k] for k in ("batch_size", "lr", "weight_decay",
                                            "validation_fraction", "seed")},
        "optimizer": "AdamW(amsgrad=True)",
        "package_version": __version__, "torch_version": str(torch.__version__),
    }
    atomic_torch_save(path, payload)


# --------------------------------------------------------------------------------------------
# Loading


def _read_backbone(path) -> Tuple[dict, bytes]:
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"backbone file not found: {path}")
    data = path.read_bytes()
    if not zipfile.is_zipfile(io.BytesIO(data)):
        raise ModelFileError(f"{path} is not a backbone file (not a torch.save zip archive; "
                                "truncated or another format?)")
    names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    if any(n.endswith("constants.pkl") or "/code/" in n for n in names):
        raise ModelFileError(f"{path} is a TorchScript model, not a pretrained backbone "
                                "(load exported models with openmm_geom.openmm.ExportedModel.load)")
    try:
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        raise ModelFileError(f"{path} could not be read as a backbone file (corrupt, or not "
                                f"plain torch.save data): {first}") from error
    if not isinstance(payload, dict):
        payload = {}
    check_format(payload.get("format"), BACKBONE_KIND, (BACKBONE_VERSION,), source=path,
                 version=payload.get("version"), error=ModelFileError)
    for key in ("hyperparameters", "state_dict", "head_state_dict"):
        if key not in payload:
            raise ModelFileError(f"{path}: backbone file lacks {key!r}")
    return payload, data


def load_backbone(path, *, freeze: bool = False) -> Tuple[Geom2VecFeaturizer, dict]:
    """The pretrained featurizer of a backbone file, in eval mode, and its information.

    Returns
    -------
    (Geom2VecFeaturizer, dict): the dict holds everything in the file but the state dicts
    (hyperparameters, history, corpus_sha256, noise_nm, best_epoch, ...), plus ``"sha256"``
    (of the file's bytes) and ``"path"``.

    Raises
    ------
    ModelFileError (a :class:`openmm_geom.modelfile.ModelFileError`)
        Missing, corrupt, TorchScript, or otherwise not a backbone file; or weights that do not
        fit the recorded hyper-parameters.
    """
    payload, data = _read_backbone(path)
    try:
        featurizer = Geom2VecFeaturizer(**payload["hyperparameters"])
        featurizer.load_state_dict(payload["state_dict"])
    except (TypeError, ValueError, RuntimeError) as error:
        raise ModelFileError(f"{path}: weights do not fit the recorded hyper-parameters: "
                                f"{str(error).splitlines()[0]}") from error
    featurizer.eval()
    if freeze:
        featurizer.requires_grad_(False)
    info = {k: v for k, v in payload.items() if k not in ("state_dict", "head_state_dict")}
    info["sha256"] = hashlib.sha256(data).hexdigest()
    info["path"] = str(path)
    return featurizer, info


def load_denoising_model(path) -> Tuple[DenoisingModel, dict]:
    """The featurizer and the denoising head of a backbone file (eval mode)."""
    featurizer, info = load_backbone(path)
    payload, _ = _read_backbone(path)
    model = DenoisingModel(featurizer, noise_nm=float(payload.get("noise_nm", 0.02)))
    try:
        model.head.load_state_dict(payload["head_state_dict"])
    except RuntimeError as error:
        raise ModelFileError(f"{path}: head weights do not fit: "
                                f"{str(error).splitlines()[0]}") from error
    return model.eval(), info
