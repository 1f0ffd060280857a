"""SPIB: the loss terms against independent formulas, label refinement on a 2-state signal,
k-means initial labels, scripting."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from openmm_geom.data.timelagged import split_by_time
from openmm_geom.models.heads import SPIBModel
from openmm_geom.training.spib import (fit_spib, initial_labels_kmeans, predict_labels,
                                       spib_loss)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def two_state_data(n=2000, flip=0.02, noise=0.5, seed=0, trajectories=2):
    """2-state Markov chain; frame = +-1 signal + noise in one direction, noise in 3 more."""
    rng = np.random.default_rng(seed)
    rotation = np.linalg.qr(np.random.default_rng(7).standard_normal((4, 4)))[0]
    states, features = [], []
    for _ in range(trajectories):
        flips = rng.random(n) < flip
        flips[0] = False
        s = ((np.cumsum(flips) + rng.integers(2)) % 2).astype(np.int64)
        x = rng.standard_normal((n, 4))
        x[:, 0] = 2 * s - 1 + noise * x[:, 0]
        states.append(s)
        features.append((x @ rotation).astype(np.float32))
    return states, features


def agreement(labels, truth):
    """Fraction of frames whose label's majority true state is their true state."""
    labels, truth = np.concatenate(labels), np.concatenate(truth)
    hits = sum(np.bincount(truth[labels == l], minlength=2).max() for l in np.unique(labels))
    return hits / len(labels)


def model(seed=0, **kw):
    torch.manual_seed(seed)
    return SPIBModel(4, 2, 16, n_states=kw.pop("n_states", 3), **kw)


@torch.no_grad()
def test_reconstruction_term_is_the_cross_entropy():
    m = model().double()
    x = torch.randn(32, 4, dtype=torch.float64)
    y = torch.randint(3, (32,))
    zero = torch.zeros(32, 2, dtype=torch.float64)
    terms = spib_loss(m, x, y, beta=0.0, noise=zero)  # z = mu(x) exactly
    mean, _ = m.encode(x)
    expected = F.cross_entropy(m.decode(mean), y)
    assert float(terms.loss) == pytest.approx(float(expected), rel=1e-12)
    assert float(terms.reconstruction) == pytest.approx(float(expected), rel=1e-12)
    # one-hot targets give the same number
    onehot = F.one_hot(y, 3).double()
    assert float(spib_loss(m, x, onehot, 0.0, noise=zero).loss) == pytest.approx(float(expected))
    # a decoder that is sure and right has (almost) zero reconstruction loss
    last = m.decoder[-1]
    last.weight.zero_()
    last.bias.copy_(torch.tensor([50.0, 0.0, 0.0]))
    assert float(spib_loss(m, x, torch.zeros(32, dtype=torch.long), 0.0).reconstruction) < 1e-12


@torch.no_grad()
def test_kl_term_against_torch_distributions():
    m = model(n_representatives=4).double()
    with torch.no_grad():
        m.representative_logits.copy_(torch.tensor([0.3, -1.0, 0.0, 2.0]))
    x = torch.randn(20, 4, dtype=torch.float64)
    eps = torch.randn(20, 2, dtype=torch.float64)
    terms = spib_loss(m, x, torch.zeros(20, dtype=torch.long), beta=0.5, noise=eps)
    mean, logvar = m.encode(x)
    std = torch.exp(0.5 * logvar)
    z = mean + std * eps
    posterior = torch.distributions.Independent(torch.distributions.Normal(mean, std), 1)
    mu_u, logvar_u = m.encode(m.representatives)
    prior = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(logits=m.representative_logits),
        torch.distributions.Independent(torch.distributions.Normal(mu_u, torch.exp(0.5 * logvar_u)), 1))
    expected_kl = (posterior.log_prob(z) - prior.log_prob(z)).mean()
    assert float(terms.kl) == pytest.approx(float(expected_kl), rel=1e-10)
    assert float(terms.loss) == pytest.approx(float(terms.reconstruction + 0.5 * expected_kl))


@torch.no_grad()
def test_kl_term_vanishes_when_encoder_equals_prior():
    m = model(n_representatives=1).double()
    u = torch.randn(1, 4, dtype=torch.float64)
    with torch.no_grad():
        m.representatives.copy_(u)
    x = u.expand(64, 4)
    terms = spib_loss(m, x, torch.zeros(64, dtype=torch.long), beta=1.0,
                      generator=torch.Generator().manual_seed(0))
    assert abs(float(terms.kl)) < 1e-12


def test_kmeans_initial_labels_fit_on_training_frames_only():
    _, features = two_state_data(n=300)
    train, validation = split_by_time(features, 0.5, gap=2)
    km, labels = initial_labels_kmeans(train, n_clusters=4, seed=0)
    assert [len(l) for l in labels] == [len(t) for t in train]
    assert km.n_features_in_ == 4 and sorted(np.unique(np.concatenate(labels))) == [0, 1, 2, 3]
    # fitted on training frames only: predicting them reproduces the labels
    assert np.array_equal(km.predict(np.concatenate(train).astype(np.float64)),
                          np.concatenate(labels))
    _, again = initial_labels_kmeans(train, n_clusters=4, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(labels, again))
    with pytest.raises(ValueError, match="n_clusters"):
        initial_labels_kmeans(train, n_clusters=1)


def test_spib_refines_k_means_clusters_into_the_two_states():
    lag = 2
    states, features = two_state_data()
    split = split_by_time(features, 0.5, gap=lag)
    truth_train, truth_validation = split.apply(states)
    km, labels = initial_labels_kmeans(split.train, n_clusters=4, seed=0)
    val_labels = [km.predict(v.astype(np.float64)) for v in split.validation]
    settings = dict(lag=lag, beta=1e-2, lr=3e-3, batch_size=500, max_epochs=25, refinements=4,
                    patience=3, seed=0)
    result = fit_spib(lambda: SPIBModel(4, 2, 32, n_states=4), split.train, labels,
                      split.validation, val_labels, **settings)
    occupied = np.unique(np.concatenate(result.train_labels))
    assert len(occupied) == 2, result.history["round_states"]  # 4 k-means clusters merged
    assert agreement(result.train_labels, truth_train) > 0.9
    assert agreement(result.validation_labels, truth_validation) > 0.9
    assert result.rounds >= 2 and result.validation_loss is not None
    assert result.history["round_labels_changed"][0] > 0.1
    cv = result.model(torch.as_tensor(split.validation[0]))
    assert cv.shape == (len(split.validation[0]), 2)

    # the returned labels are eq. 11 applied with the returned model
    assert all(np.array_equal(a, b) for a, b in
               zip(predict_labels(result.model, split.train), result.train_labels))


@pytest.mark.filterwarnings("ignore:SPIB label refinement collapsed")
def test_spib_is_bit_identical_with_a_seed():
    states, features = two_state_data(n=400)
    split = split_by_time(features, 0.5, gap=2)
    _, labels = initial_labels_kmeans(split.train, n_clusters=3, seed=0)
    settings = dict(lag=2, lr=3e-3, batch_size=100, max_epochs=3, refinements=1, patience=2)
    factory = lambda: SPIBModel(4, 2, 16, n_states=3, dropout=0.1)  # noqa: E731
    a = fit_spib(factory, split.train, labels, seed=3, **settings)
    b = fit_spib(factory, split.train, labels, seed=3, **settings)
    c = fit_spib(factory, split.train, labels, seed=4, **settings)
    assert a.history == b.history and a.history != c.history
    assert all(torch.equal(v, b.best_state[k]) for k, v in a.best_state.items())
    assert a.validation_labels is None


def test_fit_spib_rejects_bad_labels():
    _, features = two_state_data(n=100, trajectories=1)
    with pytest.raises(ValueError, match=r"labels must be in 0\.\.2"):
        fit_spib(model(), features, [np.full(100, 3)], lag=1, max_epochs=1)
    with pytest.raises(ValueError, match="100 frames but labels of shape"):
        fit_spib(model(), features, [np.zeros(99, dtype=int)], lag=1, max_epochs=1)


@torch.no_grad()
def test_spib_model_scripts():
    m = model(n_representatives=5, dropout=0.2).eval()
    scripted = torch.jit.script(m)
    x = torch.randn(7, 4)
    z = torch.randn(7, 2)
    assert torch.equal(scripted(x), m(x))
    for a, b in zip(scripted.encode(x), m.encode(x)):
        assert torch.equal(a, b)
    assert torch.equal(scripted.decode(z), m.decode(z))
    assert torch.allclose(scripted.log_prior(z), m.log_prior(z))
    assert torch.equal(scripted.predict_state(x), m.predict_state(x))
    # prior is a normalised density: integrate over a 2D grid
    grid = torch.stack(torch.meshgrid(torch.linspace(-12, 12, 301), torch.linspace(-12, 12, 301),
                                      indexing="ij"), -1).reshape(-1, 2).double()
    mass = torch.exp(m.double().log_prior(grid)).sum() * (24 / 300) ** 2
    assert float(mass) == pytest.approx(1.0, abs=0.02)
