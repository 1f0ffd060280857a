"""SPIB training on precomputed per-frame features (geom2vec paper, section III.B, eqs. 8-12).

Objective (eq. 10, maximised; :func:`spib_loss` returns its negative, minimised):

    L = E_{x_t, z ~ p(z|x_t)} [ ln q(y_{t+lag} | z) - beta ln( p(z|x_t) / r(z) ) ]

estimated per minibatch with **one reparameterised sample** ``z = mu + exp(logvar/2) eps`` per
pair: the reconstruction term is the cross-entropy of the decoder logits at ``z`` against the
label at ``t + lag``; the second term is the single-sample Monte-Carlo estimate
``log p(z|x) - log r(z)`` of ``KL(p(z|x) || r(z))`` (the VampPrior mixture has no closed-form
KL; the estimate is unbiased, and exactly 0 when the encoder and prior coincide).

Label refinement (eq. 11): after each training round every frame is relabelled with
``argmax_y q(y | mu(x))`` and training continues with the new labels, for ``refinements``
rounds or until the labels stop changing. Initial labels: k-means on CVs (the paper: VAMPnet
CVs with k = 100), fitted on training frames only (:func:`initial_labels_kmeans`).

Model selection: within a round, the state with the lowest loss on the **whole** validation set
is kept as a deep copy and restored at the end of the round. The loss is a per-pair mean, so
accumulating batch sums over the validation pairs gives exactly the whole-set value. Noise for
validation uses a generator re-seeded at every validation, so successive validations compare
like with like.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import time
import warnings
from typing import Callable, Dict, List, NamedTuple, Optional, Union

import numpy as np
import torch
from torch import nn

from openmm_geom.data.timelagged import TimeLaggedPairs, as_trajectory_list
from openmm_geom.models.heads import SPIBModel, gaussian_log_density
from openmm_geom.progress import progress_bar

__all__ = ["SPIBLoss", "spib_loss", "SPIBResult", "fit_spib", "initial_labels_kmeans",
           "predict_labels"]


class SPIBLoss(NamedTuple):
    """Minibatch SPIB loss: ``loss = reconstruction + beta * kl`` (0-dim tensors)."""

    loss: torch.Tensor
    reconstruction: torch.Tensor
    kl: torch.Tensor


def spib_loss(model: SPIBModel, x0: torch.Tensor, y_tau: torch.Tensor, beta: float, *,
              generator: Optional[torch.Generator] = None,
              noise: Optional[torch.Tensor] = None) -> SPIBLoss:
    """Negative of eq. 10 for a minibatch, with one reparameterised latent sample per pair.

    Parameters
    ----------
    model : SPIBModel
        Provides ``encode``, ``decode`` and ``log_prior``.
    x0 : torch.Tensor ``(B, F)``
        Features at time ``t``.
    y_tau : torch.Tensor
        Targets at ``t + lag``: int64 labels ``(B,)`` or (soft) one-hot ``(B, n_states)``.
    beta : float
        Weight of the bottleneck term (Table S3 / SPIB: ~1e-3).
    generator : torch.Generator, optional
        For the sample ``eps ~ N(0, 1)``.
    noise : torch.Tensor ``(B, latent_dim)``, optional
        Use this ``eps`` instead of drawing one (tests; ``zeros`` gives ``z = mu``).

    Returns
    -------
    SPIBLoss
        ``reconstruction = mean_b[-ln q(y_b | z_b)]``,
        ``kl = mean_b[ln p(z_b|x_b) - ln r(z_b)]``, ``loss = reconstruction + beta * kl``.
    """
    mean, logvar = model.encode(x0)
    if noise is None:
        noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device=mean.device)
    z = mean + torch.exp(0.5 * logvar) * noise
    log_q = torch.log_softmax(model.decode(z), dim=-1)
    if y_tau.dim() == 1:
        reconstruction = -log_q.gather(1, y_tau.long().unsqueeze(1)).squeeze(1).mean()
    else:
        reconstruction = -(y_tau.to(log_q.dtype) * log_q).sum(-1).mean()
    kl = (gaussian_log_density(z, mean, logvar) - model.log_prior(z)).mean()
    return SPIBLoss(reconstruction + beta * kl, reconstruction, kl)


# -------------------------------------------------------------------------------- labels
def initial_labels_kmeans(cvs_train, n_clusters: int, seed: int = 0, *, n_init: int = 10):
    """k-means initial states on training CVs (the paper: k = 100 clusters of VAMPnet CVs).

    Parameters
    ----------
    cvs_train : array ``(N, k)`` or list of arrays ``(T_i, k)``
        CVs of **training** frames only (fitting on validation frames leaks them).
    n_clusters : int
    seed : int
        ``random_state`` of scikit-learn's KMeans.

    Returns
    -------
    (sklearn.cluster.KMeans, labels)
        ``labels`` are int64, an array or a list of arrays matching ``cvs_train``. Label
        validation frames with ``kmeans.predict(cvs_validation)``.
    """
    from sklearn.cluster import KMeans

    as_list = isinstance(cvs_train, (list, tuple))
    parts = [np.asarray(c, dtype=np.float64) for c in as_trajectory_list(cvs_train)]
    parts = [p.reshape(len(p), -1) for p in parts]
    data = np.concatenate(parts, axis=0)
    if not np.isfinite(data).all():
        raise ValueError("CVs contain NaN/inf; cannot cluster")
    if n_clusters < 2 or n_clusters > len(data):
        raise ValueError(f"n_clusters must be in 2..{len(data)} (frames), got {n_clusters}")
    kmeans = KMeans(n_clusters=n_clusters, random_state=int(seed), n_init=n_init).fit(data)
    labels = kmeans.labels_.astype(np.int64)
    if not as_list:
        return kmeans, labels
    bounds = np.cumsum([0] + [len(p) for p in parts])
    return kmeans, [labels[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


@torch.no_grad()
def predict_labels(model: SPIBModel, features, batch_size: int = 4096):
    """Eq. 11 labels ``argmax_y q(y|mu(x))`` of frames ``(T, F)`` (or a list) as int64 numpy."""
    if isinstance(features, (list, tuple)):
        return [predict_labels(model, f, batch_size) for f in features]
    was_training = model.training
    model.eval()
    try:
        dtype = next(model.parameters()).dtype
        x = torch.as_tensor(features)
        out = [model.predict_state(c.to(dtype)) for c in torch.split(x, batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(out).cpu().numpy().astype(np.int64)


# ------------------------------------------------------------------------------ training
@dataclasses.dataclass
class SPIBResult:
    """Outcome of :func:`fit_spib`.

    Attributes
    ----------
    model : SPIBModel
        Trained model (best state of the last round loaded); ``model(x)`` is the CV.
    train_labels, validation_labels : list of numpy int64 arrays ``(T_i,)``
        Final (refined) labels of every frame; ``validation_labels`` is None without validation.
    best_state : dict
        Deep copy of the restored state dict.
    validation_loss : float or None
        Loss on the whole validation set (final model, final labels, fixed noise seed).
    history : dict of lists
        Per epoch: ``round``, ``epoch``, ``train_loss``, ``validation_loss``,
        ``train_reconstruction``, ``train_kl``. Per round: ``round_labels_changed`` (fraction of
        training frames relabelled), ``round_states`` (number of occupied states).
    rounds : int
        Training rounds run (1 + refinements actually applied).
    seconds : float
    """

    model: SPIBModel
    train_labels: List[np.ndarray]
    validation_labels: Optional[List[np.ndarray]]
    best_state: Dict[str, torch.Tensor]
    validation_loss: Optional[float]
    history: Dict[str, list]
    rounds: int
    seconds: float


def _check_labels(labels, features: List, n_states: int, what: str) -> List[np.ndarray]:
    labels = [np.asarray(l) for l in as_trajectory_list(labels)]
    if len(labels) != len(features):
        raise ValueError(f"{what}: {len(labels)} label arrays for {len(features)} trajectories")
    for i, (l, f) in enumerate(zip(labels, features)):
        if l.shape != (int(f.shape[0]),):
            raise ValueError(f"{what}: trajectory {i} has {f.shape[0]} frames but labels of shape "
                             f"{l.shape}")
        if l.size and (l.min() < 0 or l.max() >= n_states):
            raise ValueError(f"{what}: labels must be in 0..{n_states - 1}, trajectory {i} has "
                             f"{l.min()}..{l.max()}")
    return [l.astype(np.int64) for l in labels]


@torch.no_grad()
def _whole_loss(model, pairs: TimeLaggedPairs, labels: torch.Tensor, beta: float, seed: int,
                batch_size: int) -> float:
    """Exact whole-set mean loss (batch sums weighted by batch size), fixed noise seed."""
    was_training = model.training
    model.eval()
    generator = torch.Generator().manual_seed(int(seed))
    dtype = next(model.parameters()).dtype
    total = 0.0
    try:
        for idx in torch.split(torch.arange(len(pairs)), batch_size):
            x0 = pairs.features[pairs.pairs[idx, 0]].to(dtype)
            y = labels[pairs.pairs[idx, 1]]
            total += float(spib_loss(model, x0, y, beta, generator=generator).loss) * len(idx)
    finally:
        model.train(was_training)
    return total / len(pairs)


@torch.no_grad()
def _init_representatives(model: SPIBModel, features: torch.Tensor, labels: np.ndarray,
                          generator: torch.Generator) -> None:
    """u_i := mean input of the i-th most populated state (random frames if too few states)."""
    counts = np.bincount(labels, minlength=model.n_states)
    order = np.argsort(-counts, kind="stable")
    reps = []
    for state in order[:model.n_representatives]:
        if counts[state] == 0:
            break
        mask = torch.as_tensor(labels == state)
        reps.append(features[mask].mean(dim=0))
    while len(reps) < model.n_representatives:
        reps.append(features[int(torch.randint(len(features), (1,), generator=generator))])
    model.representatives.copy_(torch.stack(reps).to(model.representatives.dtype))


def fit_spib(model: Union[SPIBModel, Callable[[], SPIBModel]], train_features, train_labels,
             validation_features=None, validation_labels=None, *, lag: int, beta: float = 1e-3,
             lr: float = 2e-4, weight_decay: float = 0.0, batch_size: int = 1000,
             max_epochs: int = 50, refinements: int = 5, patience: int = 5, stride: int = 1,
             seed: int = 0, init_representatives: bool = True, eval_batch_size: int = 4096,
             progress: bool = False) -> SPIBResult:
    """Train SPIB with label refinement.

    Parameters
    ----------
    model : SPIBModel or callable returning one
        Trained in place. A factory is called under the seeded RNG (reproducible init).
    train_features : array ``(T, F)`` or list of arrays ``(T_i, F)``
    train_labels : int array ``(T,)`` or list of them
        Initial state labels (e.g. :func:`initial_labels_kmeans`), in ``0..n_states-1``.
    validation_features, validation_labels : optional
        Held-out time block / trajectories (labels from ``kmeans.predict``).
    lag : int
        Lag in frames; the target of frame ``t`` is the label of ``t + lag``.
    beta : float, default 1e-3
    lr : float, default 2e-4
        AdamW learning rate (Table S3).
    batch_size : int, default 1000
    max_epochs : int, default 50
        Epoch cap per round.
    refinements : int, default 5
        Label-refinement rounds after the first round (Table S3: 5).
    patience : int, default 5
        Epochs without a better (validation, else training) loss before a round ends.
    stride : int, default 1
        Spacing of time origins (see :class:`~openmm_geom.data.timelagged.TimeLaggedPairs`).
    seed : int, default 0
        Seeds init (factory), batch order, dropout and latent noise; CPU runs are bit-identical.
    init_representatives : bool, default True
        Set the VampPrior inputs to state means at the start of every round.

    Returns
    -------
    SPIBResult
    """
    start_time = time.perf_counter()
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    if refinements < 0 or patience < 1 or max_epochs < 1 or batch_size < 1:
        raise ValueError("refinements >= 0, patience >= 1, max_epochs >= 1, batch_size >= 1")
    train_list = as_trajectory_list(train_features)
    val_list = None if validation_features is None else as_trajectory_list(validation_features)
    if (validation_features is None) != (validation_labels is None):
        raise ValueError("give both validation_features and validation_labels, or neither")

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        if not isinstance(model, nn.Module):
            model = model()
        dtype = next(model.parameters()).dtype
        train_pairs = TimeLaggedPairs(train_list, lag, stride, dtype=dtype)
        if train_pairs.features.dim() != 2 or train_pairs.feature_shape[0] != model.in_dim:
            raise ValueError(f"SPIB features must be (T, {model.in_dim}); got per-frame shape "
                             f"{train_pairs.feature_shape}")
        val_pairs = None
        if val_list is not None:
            val_pairs = TimeLaggedPairs(val_list, lag, stride, dtype=dtype)
            if val_pairs.feature_shape != train_pairs.feature_shape:
                raise ValueError(f"validation feature shape {val_pairs.feature_shape} differs "
                                 f"from training {train_pairs.feature_shape}")
        labels_tr = np.concatenate(_check_labels(train_labels, train_list, model.n_states,
                                                 "train_labels"))
        labels_va = None if val_list is None else np.concatenate(
            _check_labels(validation_labels, val_list, model.n_states, "validation_labels"))

        generator = torch.Generator().manual_seed(int(seed))
        history: Dict[str, list] = {k: [] for k in (
            "round", "epoch", "train_loss", "train_reconstruction", "train_kl", "validation_loss",
            "round_labels_changed", "round_states")}
        per_epoch = math.ceil(len(train_pairs) / batch_size)
        bar = progress_bar((refinements + 1) * max_epochs * per_epoch, "SPIB",
                           enabled=progress, unit="batch")
        rounds = 0
        best_state = copy.deepcopy(model.state_dict())
        try:
            for round_index in range(refinements + 1):
                rounds += 1
                if init_representatives:
                    _init_representatives(model, train_pairs.features, labels_tr, generator)
                y_tr = torch.as_tensor(labels_tr)
                y_va = None if labels_va is None else torch.as_tensor(labels_va)
                # fresh optimizer per round: the targets changed, old moments are stale
                optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
                best, since = math.inf, 0
                best_state = copy.deepcopy(model.state_dict())
                model.train()
                for epoch in range(1, max_epochs + 1):
                    sums = np.zeros(3)
                    for idx in train_pairs.batch_indices(batch_size, generator=generator):
                        pair = train_pairs.pairs[idx]
                        optimizer.zero_grad(set_to_none=True)
                        terms = spib_loss(model, train_pairs.features[pair[:, 0]],
                                          y_tr[pair[:, 1]], beta, generator=generator)
                        terms.loss.backward()
                        optimizer.step()
                        sums += np.array([float(t.detach()) for t in terms]) * len(idx)
                        bar.update(1)
                    sums /= len(train_pairs)
                    val = None if val_pairs is None else _whole_loss(
                        model, val_pairs, y_va, beta, seed + 1, eval_batch_size)
                    for key, value in zip(("round", "epoch", "train_loss", "train_reconstruction",
                                           "train_kl", "validation_loss"),
                                          (round_index, epoch, *sums.tolist(), val)):
                        history[key].append(value)
                    monitored = sums[0] if val is None else val
                    bar.set_postfix(round=round_index, loss=f"{monitored:.4f}", refresh=False)
                    if monitored < best:
                        best, since = monitored, 0
                        best_state = copy.deepcopy(model.state_dict())
                    else:
                        since += 1
                        if since >= patience:
                            break
                model.load_state_dict(copy.deepcopy(best_state))
                if round_index == refinements:
                    break
                # eq. 11: relabel every frame with the decoder's most likely state at mu(x)
                new_tr = predict_labels(model, train_pairs.features, eval_batch_size)
                changed = float(np.mean(new_tr != labels_tr))
                history["round_labels_changed"].append(changed)
                history["round_states"].append(int(np.unique(new_tr).size))
                labels_tr = new_tr
                if history["round_states"][-1] < 2:
                    warnings.warn("SPIB label refinement collapsed every frame into one state; "
                                  "try a smaller beta, a longer lag or more data", RuntimeWarning,
                                  stacklevel=2)
                if val_pairs is not None:
                    labels_va = predict_labels(model, val_pairs.features, eval_batch_size)
                if changed == 0.0:
                    break  # converged: another round would train on identical targets
        finally:
            bar.close()

        # final labels from the final model (consistent with the returned CV)
        labels_tr = predict_labels(model, train_pairs.features, eval_batch_size)
        validation_loss = None
        final_val_labels = None
        if val_pairs is not None:
            labels_va = predict_labels(model, val_pairs.features, eval_batch_size)
            validation_loss = _whole_loss(model, val_pairs, torch.as_tensor(labels_va), beta,
                                          seed + 1, eval_batch_size)
            final_val_labels = val_pairs.split_frames(labels_va)
    model.eval()
    return SPIBResult(model=model, train_labels=train_pairs.split_frames(labels_tr),
                      validation_labels=final_val_labels, best_state=best_state,
                      validation_loss=validation_loss, history=history, rounds=rounds,
                      seconds=time.perf_counter() - start_time)
