"""Training all-atom potentials on energies and forces.

Loss (both terms dimensionless, so that the weight ``rho`` means the same for any system)::

    L = rho * < l(dE / sigma_E) > + (1 - rho) * < l(dF / sigma_F) >

with ``dE`` the per-frame energy error, ``dF`` each force component's error, ``sigma_E`` and
``sigma_F`` the training set's standard deviations of the energies (after the per-element
offsets) and of the force components, and ``l`` either the squared error or the log-cosh loss
``alpha^2 log cosh(x / alpha)``, quadratic below ``alpha`` (in units of sigma) and linear above
it (eq. 3.4 of the thesis; computed through softplus so that it cannot overflow).

The learning rate follows a one-cycle schedule (Smith 2018, as in the thesis): linear warm-up
from ``lr_min`` to ``lr_max`` over the first 45% of the steps, back down over the next 45%, then
to ``lr_final``. Before training, per-element energy offsets are fitted to the training energies
by least squares (and refitted after training, see :func:`refit_energy_offsets`) and the
network's energy scale is set so that its initial forces have the
spread of the reference forces (see :func:`prepare_model`). The best state by validation force MAE is deep-copied and restored;
training stops early after ``patience`` epochs without improvement; every epoch is checkpointed
atomically and a rerun resumes (a checkpoint from other data or settings is refused).
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Callable, Dict, Optional

import numpy as np
import torch

from ..models.atomistic import AtomisticPotential, fit_energy_offsets
from ..ops.neighbors import neighbor_pairs
from ..progress import progress_bar
from .config import EnergyForceConfig
from .loop import EpochTracker

__all__ = ["EnergyForceConfig", "energy_force_loss", "prepare_model", "evaluate_potential",
           "train_potential", "TrainingResult", "one_cycle_lambda", "refit_energy_offsets"]

# The untrained network's forces start at this fraction of the reference spread: large
# enough for a useful first gradient, small enough not to start from a huge energy error.
INITIAL_FORCE_FRACTION = 0.1
REPULSION_FRACTION = 0.9  # repulsion sigma / closest distance in the training data


def one_cycle_lambda(total_steps: int, lr_min: float, lr_max: float, lr_final: float):
    """Multiplier of ``lr_max`` at each optimiser step for the thesis' one-cycle schedule."""
    rise = max(int(0.45 * total_steps), 1)
    fall = max(int(0.9 * total_steps), rise + 1)

    def factor(step: int) -> float:
        if step < rise:
            lr = lr_min + (lr_max - lr_min) * step / rise
        elif step < fall:
            lr = lr_max - (lr_max - lr_min) * (step - rise) / (fall - rise)
        else:
            tail = max(total_steps - fall, 1)
            lr = lr_min + (lr_final - lr_min) * min((step - fall) / tail, 1.0)
        return lr / lr_max

    return factor


def _elementwise(x: torch.Tensor, kind: str, alpha: float) -> torch.Tensor:
    if kind == "mse":
        return x * x
    # alpha^2 log cosh(x/alpha). Large |y|: |y| + softplus(-2|y|) - log 2 (cosh would
    # overflow); small |y|: log(cosh(y)) itself (the other form cancels digits in float32).
    # The clamp keeps the unused branch finite, so torch.where's gradient has no NaN in it.
    y = (x / alpha).abs()
    large = y + torch.nn.functional.softplus(-2.0 * y) - math.log(2.0)
    small = torch.log1p(2.0 * torch.sinh(0.5 * torch.clamp(y, max=1.0)) ** 2)  # = log cosh y
    return alpha * alpha * torch.where(y < 1.0, small, large)


def energy_force_loss(predicted_energy, energy, predicted_forces, forces, sigma_energy: float,
                      sigma_force: float, config: EnergyForceConfig) -> torch.Tensor:
    """The training loss above; energies (B,) kJ/mol, forces (B, N, 3) kJ/mol/nm."""
    le = _elementwise((predicted_energy - energy) / sigma_energy, config.loss, config.logcosh_alpha)
    lf = _elementwise((predicted_forces - forces) / sigma_force, config.loss, config.logcosh_alpha)
    return config.rho * le.mean() + (1.0 - config.rho) * lf.mean()


def _energies_and_forces(model: AtomisticPotential, positions: torch.Tensor,
                         boxes: Optional[torch.Tensor], create_graph: bool):
    x = positions.detach().requires_grad_(True)
    energies = model.energies(x, boxes)
    (gradient,) = torch.autograd.grad(energies.sum(), x, create_graph=create_graph)
    return energies, -gradient


def closest_distances(model: AtomisticPotential, positions, boxes=None,
                      max_frames: int = 200) -> dict:
    """``{(z_a, z_b): closest distance in nm}`` per element pair over (up to ``max_frames``
    evenly spaced) frames, within the model's cutoff."""
    stride = max(1, math.ceil(len(positions) / max_frames))
    species = model.species.cpu().numpy()
    n = len(model.elements)
    closest = np.full((n, n), np.inf)
    for frame in range(0, len(positions), stride):
        box = None if boxes is None else torch.as_tensor(np.asarray(boxes[frame]), dtype=torch.float64)
        pairs, _, r = neighbor_pairs(torch.as_tensor(np.asarray(positions[frame]), dtype=torch.float64),
                                     model.cutoff, box)
        a, b = species[pairs[0].numpy()], species[pairs[1].numpy()]
        low, high = np.minimum(a, b), np.maximum(a, b)
        np.minimum.at(closest, (low, high), r.numpy())
    return {(model.elements[i], model.elements[j]): float(closest[i, j])
            for i in range(n) for j in range(i, n) if np.isfinite(closest[i, j])}


def prepare_model(model: AtomisticPotential, energies: np.ndarray, forces: np.ndarray,
                  positions=None, boxes=None, probe_frames: int = 4,
                  core_repulsion: bool = True) -> dict:
    """Fit per-element offsets and the energy scale from training data; returns the statistics.

    The offsets are the least-squares per-element energies. The energy scale makes the
    untrained network's forces on the first ``probe_frames`` training frames as spread as the
    reference forces (``sigma_F``): a freshly initialised network is nearly flat (its forces
    were ~1e-4 sigma_F on a Lennard-Jones liquid), and without this the first epochs only
    learn the scale. (Scaled to ``INITIAL_FORCE_FRACTION`` of it.) With ``core_repulsion``,
    each element pair gets the repulsion ``(sigma/r)^12`` kJ/mol with sigma = 0.9 x the closest
    distance in the data (:meth:`AtomisticPotential.set_repulsion`), which the network then
    corrects; it walls off distances the data never visited. Without ``positions`` the scale is ``sigma_F x 0.01 nm``.
    """
    counts = np.tile(model.element_counts(), (len(energies), 1))
    offsets = fit_energy_offsets(energies, counts)
    model.set_energy_offsets({z: float(b) for z, b in zip(model.elements, offsets)})
    residual = np.asarray(energies, np.float64) - counts @ offsets
    sigma_force = float(np.std(np.asarray(forces, np.float64)))
    # A single composition leaves no residual spread when only one frame is given.
    sigma_energy = float(np.std(residual)) or 1.0
    if not sigma_force > 0:
        raise ValueError("the training forces are all equal: nothing to learn from")
    scale = sigma_force * 0.01
    repulsion = {}
    if positions is not None and core_repulsion:
        repulsion = closest_distances(model, positions, boxes)
        model.set_repulsion({pair: REPULSION_FRACTION * r for pair, r in repulsion.items()})
    if positions is not None:
        model.set_energy_scale(1.0)
        dtype = next(model.parameters()).dtype
        x = torch.as_tensor(np.asarray(positions[:probe_frames]), dtype=dtype)
        b = None if boxes is None else torch.as_tensor(np.asarray(boxes[:probe_frames]), dtype=dtype)
        _, raw = _energies_and_forces(model, x, b, False)
        raw_spread = float(raw.detach().double().std())
        if raw_spread > 0 and math.isfinite(raw_spread):
            scale = INITIAL_FORCE_FRACTION * sigma_force / raw_spread
        model.set_energy_scale(scale)
        # The scaled network adds its own mean energy; move it into the offsets (shared by
        # every atom) so that training starts from the right mean energy.
        predicted, _ = _energies_and_forces(model, x, b, False)
        mean_error = float((predicted.detach().double().numpy()
                            - np.asarray(energies[:probe_frames], np.float64)).mean())
        offsets = offsets - mean_error / float(counts[0].sum())
        model.set_energy_offsets({z: float(v) for z, v in zip(model.elements, offsets)})
    model.set_energy_scale(scale)
    return {"energy_offsets": {int(z): float(b) for z, b in zip(model.elements, offsets)},
            "sigma_energy": sigma_energy, "sigma_force": sigma_force, "energy_scale": scale,
            "closest_distances_nm": {f"{a}-{b}": r for (a, b), r in repulsion.items()}}


def evaluate_potential(model: AtomisticPotential, positions, energies, forces, boxes=None,
                       batch_size: int = 16) -> dict:
    """Errors over a whole set (not a mean of batch means).

    Returns ``energy_mae_per_atom`` (kJ/mol), ``energy_mae_per_atom_centred`` (the same after
    removing the mean error), ``energy_rmse`` (kJ/mol per frame),
    ``force_mae`` and ``force_rmse`` (kJ/mol/nm, over components), and the predictions.
    """
    model.eval()
    predicted_e, predicted_f = [], []
    positions = torch.as_tensor(np.asarray(positions))
    dtype = positions.dtype
    box_tensor = None if boxes is None else torch.as_tensor(np.asarray(boxes), dtype=dtype)
    for start in range(0, len(positions), batch_size):
        stop = start + batch_size
        e, f = _energies_and_forces(model, positions[start:stop],
                                    None if box_tensor is None else box_tensor[start:stop], False)
        predicted_e.append(e.detach().double().numpy())
        predicted_f.append(f.detach().double().numpy())
    pe, pf = np.concatenate(predicted_e), np.concatenate(predicted_f)
    de = pe - np.asarray(energies, np.float64)
    df = pf - np.asarray(forces, np.float64)
    n_atoms = positions.shape[1]
    return {"energy_mae_per_atom": float(np.abs(de).mean() / n_atoms),
            # the error once the mean is removed, which is what the final offset refit does
            "energy_mae_per_atom_centred": float(np.abs(de - de.mean()).mean() / n_atoms),
            "energy_rmse": float(np.sqrt((de ** 2).mean())),
            "force_mae": float(np.abs(df).mean()), "force_rmse": float(np.sqrt((df ** 2).mean())),
            "frames": int(len(pe)), "predicted_energies": pe, "predicted_forces": pf}


def refit_energy_offsets(model: AtomisticPotential, positions, energies, boxes=None,
                         max_frames: int = 200, batch_size: int = 16) -> dict:
    """Move the per-element offsets by the least-squares fit of ``E_ref - E_model``.

    Forces fix the energy only up to a constant, and the network's output drifts collectively
    during training; a final least-squares fit on (up to ``max_frames`` evenly spaced)
    training frames removes that drift without touching the forces.
    """
    model.eval()
    stride = max(1, math.ceil(len(energies) / max_frames))
    dtype = next(model.parameters()).dtype
    x = torch.as_tensor(np.asarray(positions[::stride]), dtype=dtype)
    b = None if boxes is None else torch.as_tensor(np.asarray(boxes[::stride]), dtype=dtype)
    predicted = []
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            predicted.append(model.energies(x[start:start + batch_size],
                                            None if b is None else b[start:start + batch_size]))
    residual = np.asarray(energies[::stride], np.float64) - torch.cat(predicted).double().numpy()
    counts = np.tile(model.element_counts(), (len(residual), 1))
    shift = fit_energy_offsets(residual, counts)
    current = model.energy_offsets.double().cpu().numpy()
    model.set_energy_offsets({z: float(c + d) for z, c, d in zip(model.elements, current, shift)})
    return {int(z): float(d) for z, d in zip(model.elements, shift)}


@dataclasses.dataclass
class TrainingResult:
    best_epoch: int
    best_validation: dict
    history: dict
    statistics: dict
    state: dict


def train_potential(model: AtomisticPotential, train, validation, config: EnergyForceConfig,
                    checkpoint: Optional[Path] = None, progress: bool = True,
                    callback: Optional[Callable[[int, dict], None]] = None,
                    data_hash: str = "") -> TrainingResult:
    """Train ``model`` in place on energies and forces; returns the restored best state.

    Parameters
    ----------
    model : AtomisticPotential
    train, validation : objects with ``positions`` (F, N, 3) nm, ``energies`` (F,) kJ/mol,
        ``forces`` (F, N, 3) kJ/mol/nm and ``boxes`` (F, 3, 3) nm or None
        (e.g. :class:`openmm_geom.data.potential_data.PotentialData`).
    config : EnergyForceConfig
    checkpoint : path, optional
        Written atomically after every epoch; if it exists (same data and settings), training
        resumes from it.
    callback : callable(epoch, history), optional
    data_hash : str
        Recorded in the checkpoint; resuming on other data is refused.
    """
    torch.manual_seed(config.seed)
    dtype = next(model.parameters()).dtype
    x = torch.as_tensor(np.asarray(train.positions), dtype=dtype)
    e = torch.as_tensor(np.asarray(train.energies), dtype=dtype)
    f = torch.as_tensor(np.asarray(train.forces), dtype=dtype)
    boxes = None if train.boxes is None else torch.as_tensor(np.asarray(train.boxes), dtype=dtype)
    n_frames = len(x)
    if n_frames == 0 or len(validation.positions) == 0:
        raise ValueError("training and validation sets must both contain frames")
    stride = 1
    if config.max_train_frames and n_frames > config.max_train_frames:
        stride = math.ceil(n_frames / config.max_train_frames)
    steps_per_epoch = math.ceil(len(range(0, n_frames, stride)) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs

    settings = json.loads(json.dumps(dataclasses.asdict(config)))
    statistics = prepare_model(model, train.energies, train.forces, train.positions, train.boxes,
                               core_repulsion=config.core_repulsion)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr_max,
                                  weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, one_cycle_lambda(total_steps, config.lr_min, config.lr_max, config.lr_final))
    generator = torch.Generator().manual_seed(config.seed)
    history: Dict[str, list] = {"epoch": [], "train_loss": [], "validation_force_mae": [],
                                "validation_energy_mae_per_atom": [], "learning_rate": [],
                                "steps": [], "training_seconds": []}
    tracker = EpochTracker(model, optimizer, scheduler, generator, epochs=config.epochs,
                           patience=config.patience, history=history, checkpoint=checkpoint,
                           identity={"settings": settings, "data_hash": data_hash},
                           bar=progress_bar(config.epochs, "training", enabled=progress,
                                            unit="epoch"),
                           callback=callback)
    if tracker.resume():
        statistics["offset_refit"] = refit_energy_offsets(model, train.positions,
                                                          train.energies, train.boxes)
        return TrainingResult(tracker.best_epoch, tracker.best_info, tracker.history, statistics,
                              copy.deepcopy(model.state_dict()))

    # learning curves against optimiser steps and wall time (cumulative over a resume)
    for key in ("steps", "training_seconds"):  # absent from checkpoints of older versions
        history.setdefault(key, [])
    steps = history["steps"][-1] if history["steps"] else 0
    seconds = history["training_seconds"][-1] if history["training_seconds"] else 0.0
    for epoch in range(tracker.start_epoch, config.epochs):
        started = time.perf_counter()
        model.train()
        offset = int(torch.randint(stride, (1,), generator=generator))
        subset = torch.arange(offset, n_frames, stride)
        order = subset[torch.randperm(len(subset), generator=generator)]
        total, count = 0.0, 0
        for start in range(0, len(order), config.batch_size):
            batch = order[start:start + config.batch_size]
            pe, pf = _energies_and_forces(model, x[batch], None if boxes is None else boxes[batch], True)
            loss = energy_force_loss(pe, e[batch], pf, f[batch], statistics["sigma_energy"],
                                     statistics["sigma_force"], config)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += float(loss.detach()) * len(batch)
            count += len(batch)
            steps += 1
        metrics = evaluate_potential(model, np.asarray(validation.positions, dtype=np.float64).astype(
            x.numpy().dtype), validation.energies, validation.forces, validation.boxes,
            batch_size=2 * config.batch_size)
        metrics = {k: v for k, v in metrics.items() if not k.startswith("predicted")}
        seconds += time.perf_counter() - started
        if tracker.record(epoch, metrics["force_mae"], metrics, train_loss=total / count,
                          validation_force_mae=metrics["force_mae"],
                          validation_energy_mae_per_atom=metrics["energy_mae_per_atom_centred"],
                          learning_rate=optimizer.param_groups[0]["lr"], steps=steps,
                          training_seconds=seconds,
                          postfix={"loss": f"{total / count:.3g}",
                                   "val_fmae": f"{metrics['force_mae']:.1f}"}):
            break
    tracker.close()
    statistics["offset_refit"] = refit_energy_offsets(model, train.positions, train.energies,
                                                      train.boxes)
    best_state = copy.deepcopy(model.state_dict())
    return TrainingResult(tracker.best_epoch, tracker.best_info, tracker.history, statistics,
                          best_state)
