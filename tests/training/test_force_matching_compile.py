"""Compiled force matching (``train_fold(..., compile=True)``) trains as eager does.

Tolerances were chosen before the first run. The functional loss (``torch.func.grad``, the form
``torch.compile`` can differentiate twice) equals the ``autograd.grad`` loss in float64 to 1e-10
relative, value and parameter gradients. Compiled training of a float32 model (inductor may
reorder sums) gives the eager per-epoch losses to 1e-5 relative and the eager final weights to
1e-4 of the largest weight after a few dozen Adam steps. The compiled test compiles a tiny model
(tens of seconds to minutes on a loaded 2-core machine), so it is marked slow.
"""
import pytest
import torch

from openmm_geom.models.cgschnet import CGSchNet
from openmm_geom.training.force_matching import (ForceMatchingLoss, TrainConfig,
                                                 force_matching_loss, time_block_folds,
                                                 train_fold)


def _model(seed: int, dtype=torch.float32) -> CGSchNet:
    return CGSchNet([0, 1, 0, 1], None, n_types=2, features=8, filters=8, interactions=1,
                    n_rbf=8, output_hidden=8, cutoff=1.0, seed=seed, dtype=dtype)


def _frames(n: int, dtype=torch.float32):
    generator = torch.Generator().manual_seed(0)
    chain = torch.tensor([[0.0, 0.0, 0.0], [0.38, 0.0, 0.0], [0.5, 0.35, 0.0], [0.8, 0.4, 0.2]],
                         dtype=dtype)
    x = chain + 0.03 * torch.randn(n, 4, 3, generator=generator, dtype=dtype)
    return x, 10.0 * torch.randn(n, 4, 3, generator=generator, dtype=dtype)


def _loss_and_gradients(model, loss_fn, x, f):
    model.zero_grad()
    loss = loss_fn(x, f)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]


def test_functional_loss_equals_the_autograd_loss_and_its_gradients():
    model = _model(3, torch.float64)
    x, f = _frames(12, torch.float64)
    want, want_grads = _loss_and_gradients(model, lambda a, b: force_matching_loss(model, a, b),
                                           x, f)
    got, got_grads = _loss_and_gradients(model, ForceMatchingLoss(model), x, f)
    assert len(got_grads) == len(want_grads) > 0
    assert got.item() == pytest.approx(want.item(), rel=1e-10)
    for g, w in zip(got_grads, want_grads):
        assert w.abs().max() > 0
        torch.testing.assert_close(g, w, rtol=0, atol=1e-10 * w.abs().max().item())


@pytest.mark.slow
def test_compiled_training_gives_the_eager_losses_and_weights(capfd):
    x, f = _frames(100)
    config = TrainConfig(epochs=2, batch_size=16, folds=2, gap_frames=2, patience=5)
    train_idx, val_idx = time_block_folds(len(x), config.folds, config.gap_frames)[0]
    eager = train_fold(_model, x, f, train_idx, val_idx, config, 0, progress=False)
    compiled = train_fold(_model, x, f, train_idx, val_idx, config, 0, progress=False,
                          compile=True)
    assert "compiling the force-matching step of fold 1 (first call)... done in" \
        in capfd.readouterr().err
    assert eager.compile_seconds is None and compiled.compile_seconds is not None
    for key in ("train", "validation"):
        assert compiled.history[key] == pytest.approx(eager.history[key], rel=1e-5)
    assert eager.history["train"][-1] != eager.history["train"][0]  # the weights moved
    for name, want in eager.state.items():
        if want.is_floating_point() and want.numel():
            torch.testing.assert_close(compiled.state[name], want, rtol=0,
                                       atol=1e-4 * max(want.abs().max().item(), 1.0))
    # the next fold (a new model in the same process) trains its own model, not a stale one
    train_idx, val_idx = time_block_folds(len(x), config.folds, config.gap_frames)[1]
    eager = train_fold(_model, x, f, train_idx, val_idx, config, 1, progress=False)
    compiled = train_fold(_model, x, f, train_idx, val_idx, config, 1, progress=False,
                          compile=True)
    for key in ("train", "validation"):
        assert compiled.history[key] == pytest.approx(eager.history[key], rel=1e-5)
