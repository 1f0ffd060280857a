"""Time-lagged pairs, leak-free splits, the VAMP-2 score (vs deeptime) and VAMPnet training."""
import copy

import numpy as np
import pytest
import torch

from openmm_geom.data.timelagged import (TimeLaggedPairs, split_by_time,
                                         split_by_trajectory)
from openmm_geom.models.heads import VAMPHead
from openmm_geom.training.vamp import (fit_vampnet, load_lobe_state, plot_learning_curve,
                                       transform, vamp2_of, vamp2_score)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---------------------------------------------------------------------------- synthetic data
def two_state_chain(n, flip, rng):
    """Symmetric 2-state Markov chain: flip with probability ``flip`` each step."""
    flips = rng.random(n) < flip
    flips[0] = False
    return ((np.cumsum(flips) + rng.integers(2)) % 2).astype(np.int64)


ROTATION = np.linalg.qr(np.random.default_rng(7).standard_normal((4, 4)))[0]


def embed(states, rng, noise=0.3):
    """State signal +-1 plus noise in one direction, pure noise in 3 others, then rotated."""
    x = rng.standard_normal((len(states), 4))
    x[:, 0] = 2 * states - 1 + noise * x[:, 0]
    return (x @ ROTATION).astype(np.float32)


def posterior(features, noise=0.3):
    """Bayes-optimal P(state | frame) of :func:`embed` (frame by frame): the best CV."""
    signal = features.astype(np.float64) @ ROTATION.T[:, 0]
    p1 = 1.0 / (1.0 + np.exp(-2.0 * signal / noise ** 2))
    return np.stack([1 - p1, p1], axis=1)


@pytest.fixture(scope="module")
def two_state():
    rng = np.random.default_rng(0)
    lag, flip = 2, 0.02
    states = [two_state_chain(3000, flip, rng) for _ in range(2)]
    features = [embed(s, rng) for s in states]
    split = split_by_time(features, 0.5, gap=lag)
    return dict(lag=lag, states=states, features=features, split=split,
                train=TimeLaggedPairs(split.train, lag),
                validation=TimeLaggedPairs(split.validation, lag))


def make_lobe(seed=0, **kw):
    torch.manual_seed(seed)
    return VAMPHead(4, hidden=32, k=2, **kw)


FAST = dict(lr=1e-2, batch_size=500, max_epochs=20, validation_interval=5, train_patience=100,
            validation_patience=10)


# --------------------------------------------------------------------------------- the score
@pytest.mark.parametrize("mode", ["regularize", "trunc", "clamp"])
def test_vamp2_matches_deeptime(mode):
    from deeptime.decomposition.deep import vamp_score

    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(400, 3, dtype=torch.float64, generator=g)
    x1 = 0.7 * x0 @ torch.randn(3, 3, dtype=torch.float64, generator=g) \
        + 0.5 * torch.randn(400, 3, dtype=torch.float64, generator=g) + 2.0
    ours = vamp2_score(x0, x1, epsilon=1e-6, mode=mode)
    theirs = vamp_score(x0, x1, method="VAMP2", epsilon=1e-6, mode=mode)
    assert float(ours) == pytest.approx(float(theirs), abs=1e-6)
    assert 1.0 < float(ours) < 4.0


def test_vamp2_is_differentiable():
    g = torch.Generator().manual_seed(4)
    x0 = torch.randn(200, 2, dtype=torch.float64, generator=g, requires_grad=True)
    x1 = (x0.detach() + 0.3 * torch.randn(200, 2, dtype=torch.float64, generator=g))
    vamp2_score(x0, x1).backward()
    assert torch.isfinite(x0.grad).all() and x0.grad.abs().sum() > 0


def test_vamp2_two_state_chain_known_answer():
    """Indicators of a 2-state chain: VAMP-2 = 1 + lambda_2^(2 lag), lambda_2 = 1 - a - b.

    The mean-free indicators span one direction (they sum to 1); its whitened Koopman singular
    value is |lambda_2|^lag, the constant function contributes the 1.
    """
    rng = np.random.default_rng(11)
    a, b, n, lag = 0.05, 0.10, 200_000, 2
    u = rng.random(n)
    s = np.empty(n, dtype=np.int64)
    s[0] = 0
    for t in range(1, n):  # plain loop: 0.1 s for 2e5 steps
        s[t] = (1 if u[t] < a else 0) if s[t - 1] == 0 else (0 if u[t] < b else 1)
    indicators = torch.as_tensor(np.stack([s == 0, s == 1], 1), dtype=torch.float64)
    expected = 1 + (1 - a - b) ** (2 * lag)
    for mode in ("regularize", "trunc"):
        score = float(vamp2_score(indicators[:-lag], indicators[lag:], mode=mode))
        assert score == pytest.approx(expected, abs=0.01)


# ------------------------------------------------------------------------- pairs and splits
def test_pairs_never_cross_trajectory_boundaries():
    trajs = [np.arange(n, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)
             for n in (10, 3, 7)]
    pairs = TimeLaggedPairs(trajs, lag=3)
    # the 3-frame trajectory yields none; the others T - lag each
    assert len(pairs) == (10 - 3) + 0 + (7 - 3)
    i0, i1 = pairs.pairs[:, 0], pairs.pairs[:, 1]
    assert torch.equal(pairs.trajectory_of(i0), pairs.trajectory_of(i1))
    x0, x1 = pairs[torch.arange(len(pairs))]
    assert torch.equal(x1[:, 0] - x0[:, 0], torch.full((len(pairs),), 3.0))
    strided = TimeLaggedPairs(trajs, lag=3, stride=2)
    assert strided.pairs[:, 0].tolist() == [0, 2, 4, 6, 13, 15]
    assert [len(p) for p in pairs.split_frames(np.zeros(20))] == [10, 3, 7]


def test_pairs_accept_token_features_and_batch_deterministically():
    trajs = [torch.randn(50, 5, 4, 8), torch.randn(30, 5, 4, 8)]
    pairs = TimeLaggedPairs(trajs, lag=4)
    assert pairs.feature_shape == (5, 4, 8)
    a = pairs.batch_indices(16, seed=5)
    b = pairs.batch_indices(16, seed=5)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert sorted(torch.cat(a).tolist()) == list(range(len(pairs)))
    x0, x1 = next(pairs.batches(16, seed=5))
    assert x0.shape == (16, 5, 4, 8) and x1.shape == (16, 5, 4, 8)
    with pytest.raises(ValueError, match="seed"):
        pairs.batch_indices(16)


def test_pairs_errors():
    with pytest.raises(ValueError, match=r"lag 500 frames is longer than every trajectory "
                                         r"\(longest 300 frames\)"):
        TimeLaggedPairs([np.zeros((300, 2)), np.zeros((100, 2))], lag=500)
    bad = np.zeros((40, 2))
    bad[17, 1] = np.nan
    with pytest.raises(ValueError, match="trajectory 1, frame 17"):
        TimeLaggedPairs([np.zeros((40, 2)), bad], lag=1)
    inf = np.zeros((40, 2))
    inf[3, 0] = np.inf
    with pytest.raises(ValueError, match="trajectory 0, frame 3.*inf"):
        TimeLaggedPairs(inf, lag=1)
    with pytest.raises(ValueError, match="feature shapes"):
        TimeLaggedPairs([np.zeros((40, 2)), np.zeros((40, 3))], lag=1)
    with pytest.raises(ValueError, match="positive integer"):
        TimeLaggedPairs(np.zeros((40, 2)), lag=0)


def test_split_by_time_leaves_a_gap_and_splits_labels_alike():
    trajs = [np.arange(100, dtype=np.float32)[:, None], np.arange(60, dtype=np.float32)[:, None]]
    split = split_by_time(trajs, 0.5, gap=5)
    train, validation = split
    assert [len(t) for t in train] == [45, 25] and [len(v) for v in validation] == [50, 30]
    for tr, va in zip(train, validation):
        assert va[0, 0] - tr[-1, 0] == 6  # 5 frames dropped in between
    labels = [np.arange(100), np.arange(60)]
    lab_tr, lab_va = split.apply(labels)
    assert np.array_equal(lab_tr[1], np.arange(25)) and np.array_equal(lab_va[0], np.arange(50, 100))
    with pytest.raises(ValueError, match="validation_fraction"):
        split_by_time(trajs, 1.0, gap=1)
    with pytest.raises(ValueError, match="no training frames"):
        split_by_time([np.zeros((10, 1))], 0.5, gap=10)


def test_split_by_trajectory():
    trajs = [np.full((10, 1), i, dtype=np.float32) for i in range(4)]
    train, validation = split_by_trajectory(trajs, [3, 1])
    assert [t[0, 0] for t in train] == [0, 2] and [v[0, 0] for v in validation] == [1, 3]
    with pytest.raises(ValueError, match="out of range"):
        split_by_trajectory(trajs, [4])
    with pytest.raises(ValueError, match="none left"):
        split_by_trajectory(trajs, [0, 1, 2, 3])


# ----------------------------------------------------------------------------------- training
def test_fit_vampnet_learns_the_slow_process_and_is_reproducible(two_state, tmp_path):
    d = two_state
    ref_pairs = TimeLaggedPairs(d["split"].apply([posterior(f) for f in d["features"]])[1], d["lag"])
    achievable = vamp2_of(torch.nn.Identity(), ref_pairs)
    assert achievable > 1.8  # 1 + 0.96^4 = 1.85 noise-free

    result = fit_vampnet(make_lobe(), d["train"], d["validation"], seed=1, **FAST)
    assert result.validation_score >= achievable - 0.04
    assert result.validation_score <= achievable + 0.03  # no free lunch on held-out data
    # the reported score is the whole-validation score of the restored model
    assert result.validation_score == pytest.approx(vamp2_of(result.lobe, d["validation"]))
    assert result.validation_score == pytest.approx(max(result.history["validation_score"]))
    assert len(result.history["train_score"]) == result.history["train_step"][-1]

    again = fit_vampnet(make_lobe(), d["train"], d["validation"], seed=1, **FAST)
    assert again.history == result.history
    for key, value in result.best_state.items():
        assert torch.equal(value, again.best_state[key])
    other = fit_vampnet(make_lobe(), d["train"], d["validation"], seed=2,
                        **{**FAST, "max_epochs": 2})
    assert other.history["train_score"] != result.history["train_score"][:10]

    # best state is a deep copy: training on / mutating the live lobe leaves it alone
    stored = copy.deepcopy(result.best_state)
    with torch.no_grad():
        for p in result.lobe.parameters():
            p.add_(1.0)
    for key, value in result.best_state.items():
        assert torch.equal(value, stored[key])

    cvs = transform(result.lobe, d["features"], batch_size=1000)
    assert [c.shape for c in cvs] == [(3000, 2), (3000, 2)]

    png = plot_learning_curve(result.history, tmp_path / "curve" / "vamp.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = result.save(tmp_path / "vamp.pt")
    fresh = make_lobe(seed=9)
    load_lobe_state(fresh, saved)
    assert vamp2_of(fresh, d["validation"]) == pytest.approx(result.validation_score)


def test_separate_lobes_and_early_stopping(two_state):
    d = two_state
    lobe, lagged = make_lobe(0), make_lobe(1)
    result = fit_vampnet(lobe, d["train"], d["validation"], lobe_timelagged=lagged, seed=0,
                         lr=5e-3, batch_size=500, max_epochs=50, validation_interval=2,
                         train_patience=1000, validation_patience=3)
    assert result.lobe_timelagged is lagged and result.best_state_timelagged is not None
    assert result.stop_reason.startswith("validation_patience")
    assert result.validation_score == pytest.approx(
        vamp2_of(lobe, d["validation"], lobe_timelagged=lagged))


def test_against_deeptime_vampnet(two_state):
    """Same lobe init, data, batch size, learning rate and number of batches as deeptime."""
    from deeptime.decomposition.deep import VAMPNet
    from deeptime.util.data import TimeLaggedDataset

    d = two_state
    epochs, batch, lr = 4, 500, 5e-3
    ours = fit_vampnet(make_lobe(), d["train"], d["validation"], seed=0, lr=lr, batch_size=batch,
                       max_epochs=epochs, validation_interval=1000, train_patience=1000,
                       validation_patience=1000)

    x = d["train"].features.numpy()
    i0, i1 = d["train"].pairs[:, 0].numpy(), d["train"].pairs[:, 1].numpy()
    loader = torch.utils.data.DataLoader(TimeLaggedDataset(x[i0], x[i1]), batch_size=batch,
                                         shuffle=True, drop_last=True,
                                         generator=torch.Generator().manual_seed(0))
    estimator = VAMPNet(lobe=make_lobe(), learning_rate=lr, dtype=np.float32)
    model = estimator.fit(loader, n_epochs=epochs).fetch_model()
    theirs = vamp2_of(model.lobe, d["validation"])
    assert ours.validation_score >= theirs - 0.05


def test_heads_script():
    x = torch.randn(6, 10)
    for head in (VAMPHead(10, 16, 3), VAMPHead(10, 16, 3, layers=1, dropout=0.2, softmax=True)):
        head.eval()
        scripted = torch.jit.script(head)
        assert torch.equal(scripted(x), head(x))
    soft = VAMPHead(10, 16, 3, softmax=True)
    assert torch.allclose(soft(x).sum(1), torch.ones(6))
