"""Deep Signature and its baselines: MinCutPool pieces against numpy oracles, symmetries,
trainability on a separable toy problem, TorchScript parity and hyper-parameter round trips."""
import numpy as np
import pytest
import torch

from openmm_geom.models.deep_signature import (METHODS, DeepSignature, build_model, coarse_dynamics,
                                               normalized_assignment)
from openmm_geom.models.spectral_pooling import (DenseGCN, HierarchicalSpectralPooling, mincut_losses,
                                                 mincut_pool, node_features, resample_frames)

torch.set_num_threads(1)

SMALL = dict(feature_frames=6, hidden=8, clusters=(6, 3), decoder_hidden=8, mlp_hidden=16)
EXTRA = {"deep-signature": dict(lstm_hidden=12, segments=3), "graph-lstm": dict(lstm_hidden=12),
         "graph-trans": dict(model_dim=16, heads=2, layers=1)}


def random_graph(rng, n, p=0.3):
    a = (rng.random((n, n)) < p).astype(float)
    a = np.triu(a, 1)
    a = a + a.T
    for i in range(n - 1):  # a path keeps every node connected
        a[i, i + 1] = a[i + 1, i] = 1.0
    return a


def small_model(method, n_nodes=12, channels=3, n_classes=2, seed=0, **extra):
    hyper = dict(SMALL, **EXTRA.get(method, {}))
    hyper.update(extra)
    return build_model(method, n_nodes=n_nodes, channels=channels, n_classes=n_classes, seed=seed, **hyper)


def batch(rng, b=3, t=10, n=12, c=3):
    paths = torch.tensor(rng.normal(size=(b, t, n, c)).cumsum(1))
    adjacency = torch.tensor(np.stack([random_graph(rng, n) for _ in range(b)]))
    return paths, adjacency


def test_mincut_losses_match_numpy(rng):
    b, n, k = 3, 9, 4
    a = np.stack([random_graph(rng, n) * rng.random((n, n)) for _ in range(b)])
    a = a + a.transpose(0, 2, 1)
    logits = rng.normal(size=(b, n, k))
    s = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    cuts, orths = [], []
    for g in range(b):
        d = np.diag(a[g].sum(1))
        num = sum(s[g, i, c] * a[g, i, j] * s[g, j, c] for i in range(n) for j in range(n) for c in range(k))
        den = sum(d[i, i] * s[g, i, c] ** 2 for i in range(n) for c in range(k))
        cuts.append(-num / den)
        sts = s[g].T @ s[g]
        orths.append(np.sqrt((((sts / np.sqrt((sts ** 2).sum())) - np.eye(k) / np.sqrt(k)) ** 2).sum()))
    cut, ortho = mincut_losses(torch.tensor(a), torch.tensor(s))
    assert cut.item() == pytest.approx(np.mean(cuts), rel=1e-10)
    assert ortho.item() == pytest.approx(np.mean(orths), rel=1e-10)
    # the two limits that make the terms meaningful
    uniform = torch.full((1, n, k), 1.0 / k, dtype=torch.float64)
    assert mincut_losses(torch.tensor(a[:1]), uniform)[0].item() == pytest.approx(-1.0)
    hard = torch.eye(k, dtype=torch.float64)[torch.arange(n) % k].unsqueeze(0)
    balanced = torch.eye(k, dtype=torch.float64).unsqueeze(0)
    assert mincut_losses(torch.ones(1, k, k, dtype=torch.float64) - torch.eye(k), balanced)[1].item() \
        == pytest.approx(0.0, abs=1e-12)
    assert mincut_losses(torch.tensor(a[:1]), hard)[1].item() > 0.0


def test_gcn_and_pool_match_dense_numpy(rng):
    b, n, fin, fout = 2, 7, 5, 4
    a = np.stack([random_graph(rng, n) for _ in range(b)])
    x = rng.normal(size=(b, n, fin))
    for act in (False, True):
        layer = DenseGCN(fin, fout, activation=act).double()
        w = layer.linear.weight.detach().numpy()
        bias = layer.linear.bias.detach().numpy()
        got = layer(torch.tensor(x), torch.tensor(a)).detach().numpy()
        for g in range(b):
            at = a[g] + np.eye(n)
            dinv = np.diag(1.0 / np.sqrt(at.sum(1)))
            ref = dinv @ at @ dinv @ (x[g] @ w.T + bias)
            if act:
                ref = np.where(ref > 0, ref, np.expm1(ref))
            np.testing.assert_allclose(got[g], ref, rtol=1e-12, atol=1e-12)
    k = 3
    s = rng.random((b, n, k))
    s /= s.sum(-1, keepdims=True)
    xp, ap = mincut_pool(torch.tensor(x), torch.tensor(a), torch.tensor(s))
    for g in range(b):
        np.testing.assert_allclose(xp[g].numpy(), s[g].T @ x[g], rtol=1e-12)
        m = s[g].T @ a[g] @ s[g]
        np.fill_diagonal(m, 0.0)
        dd = 1.0 / np.sqrt(m.sum(1))
        np.testing.assert_allclose(ap[g].numpy(), dd[:, None] * m * dd[None, :], rtol=1e-10)


def test_resample_and_node_features(rng):
    x = torch.tensor(rng.normal(size=(2, 7, 3)))
    r = resample_frames(x, 11, 1)
    grid = np.linspace(0, 6, 11)
    for i in range(2):
        for j in range(3):
            np.testing.assert_allclose(r[i, :, j].numpy(), np.interp(grid, np.arange(7), x[i, :, j].numpy()),
                                       atol=1e-12)
    paths = torch.tensor(rng.normal(size=(2, 9, 5, 3)))
    f = node_features(paths, 4)
    assert f.shape == (2, 5, 12)
    # translation invariant, node-major rows, frame-major columns
    torch.testing.assert_close(node_features(paths + torch.tensor([1.0, -2.0, 3.0]), 4), f)
    centred = paths - paths.mean(2, keepdim=True)
    torch.testing.assert_close(f[:, 2, 3:6], resample_frames(centred, 4, 1)[:, 1, 2])


def test_assignment_columns_and_rotation(rng):
    model = small_model("deep-signature").double()
    paths, adjacency = batch(rng)
    out = model(paths, adjacency)
    s = out["assignment"]
    assert s.shape == (3, 12, 3)
    torch.testing.assert_close(s.sum(-1), torch.ones(3, 12, dtype=torch.float64))  # S = S1 S2 row-stochastic
    torch.testing.assert_close(normalized_assignment(s).sum(1), torch.ones(3, 3, dtype=torch.float64))
    torch.testing.assert_close(out["coarse"], coarse_dynamics(paths, s))
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    rot = torch.tensor(q)
    # for a given assignment the beads rotate (and translate) with the input (paper A.1, A.2)
    torch.testing.assert_close(coarse_dynamics(paths @ rot.T + 0.7, s), out["coarse"] @ rot.T + 0.7)


def test_permutation_equivariance(rng):
    paths, adjacency = batch(rng)
    perm = torch.tensor(rng.permutation(12))
    for method in METHODS:
        model = small_model(method).double().eval()
        out = model(paths, adjacency)
        outp = model(paths[:, :, perm], adjacency[:, perm][:, :, perm])
        for key in ("logits", "cut_loss", "orthogonality_loss", "consistency_loss", "coarse"):
            torch.testing.assert_close(outp[key], out[key], rtol=1e-9, atol=1e-10, msg=f"{method} {key}")
        torch.testing.assert_close(outp["assignment"], out["assignment"][:, perm])


def test_translation_invariance(rng):
    paths, adjacency = batch(rng)
    shift = torch.tensor([3.0, -1.5, 0.25], dtype=torch.float64)
    for method in METHODS:
        model = small_model(method).double().eval()
        a, b = model(paths, adjacency), model(paths + shift, adjacency)
        torch.testing.assert_close(b["logits"], a["logits"], rtol=1e-8, atol=1e-9, msg=method)
        torch.testing.assert_close(b["assignment"], a["assignment"], rtol=1e-9, atol=1e-12)
    # a basepoint makes absolute levels visible: the same check must then fail
    model = small_model("deep-signature", basepoint=True, time_augment=True).double().eval()
    assert not torch.allclose(model(paths + shift, adjacency)["logits"], model(paths, adjacency)["logits"])


def test_segments_share_boundaries_and_any_length(rng):
    model = small_model("deep-signature", segments=3, time_augment=True).double()
    for t in (7, 10, 13):
        paths, adjacency = batch(rng, t=t)
        coarse = model(paths, adjacency)["coarse"]
        pieces = model.segment_paths(coarse)
        assert pieces.shape[1] == 3
        for i in range(2):
            torch.testing.assert_close(pieces[:, i, -1], pieces[:, i + 1, 0])
        flat = coarse.flatten(2)
        torch.testing.assert_close(pieces[:, 0, 0, :-1], flat[:, 0])
        torch.testing.assert_close(pieces[:, -1, -1, :-1], flat[:, -1])
        assert pieces[:, -1, -1, -1].eq(1.0).all() and pieces[:, 0, 0, -1].eq(0.0).all()
    with pytest.raises(ValueError, match="segments"):
        model(*batch(rng, t=3))


def toy_problem(seed, b=16, t=12, n=10, c=2):
    """Class 1: nodes 0-2 sit apart from the rest and circle; class 0: plain random walk."""
    g = np.random.default_rng(seed)
    labels = np.arange(b) % 2
    paths = g.normal(scale=0.1, size=(b, t, n, c)).cumsum(1)
    time = np.linspace(0, 2 * np.pi, t)
    circle = np.stack([np.cos(time), np.sin(time)], -1)
    paths[labels == 1, :, :3] += 1.5 + circle[None, :, None, :]
    adjacency = np.stack([random_graph(g, n, 0.2) for _ in range(b)])
    return (torch.tensor(paths, dtype=torch.float32), torch.tensor(adjacency, dtype=torch.float32),
            torch.tensor(labels))


@pytest.mark.parametrize("method", sorted(METHODS))
def test_each_method_trains_on_toy_problem(method):
    paths, adjacency, labels = toy_problem(0)
    model = small_model(method, n_nodes=10, channels=2, clusters=(5, 3))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        out = model(paths, adjacency)
        loss = model.total_loss(out, labels)
        opt.zero_grad()
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        opt.step()
        losses.append(torch.nn.functional.cross_entropy(out["logits"], labels).item())
    assert losses[-1] < 0.5 * losses[0], (method, losses[0], losses[-1])
    assert model(paths, adjacency)["logits"].argmax(1).eq(labels).float().mean() >= 0.9


def test_scripted_matches_eager_and_roundtrip(rng):
    paths, adjacency = batch(rng)
    labels = torch.tensor([0, 1, 1])
    for method in METHODS:
        model = small_model(method, n_classes=3).eval()
        scripted = torch.jit.script(model)
        a, b = model(paths.float(), adjacency.float()), scripted(paths.float(), adjacency.float())
        assert set(a) == set(b)
        for key in a:
            torch.testing.assert_close(b[key], a[key], rtol=1e-6, atol=1e-6, msg=f"{method} {key}")
        torch.testing.assert_close(scripted.total_loss(b, labels, (0.1, 1.0, 1.0)), model.total_loss(a, labels))
        # the stored hyper-parameters rebuild the same architecture
        rebuilt = build_model(model.method, **model.hyperparameters)
        rebuilt.load_state_dict(model.state_dict())
        torch.testing.assert_close(rebuilt.eval()(paths.float(), adjacency.float())["logits"], a["logits"])


def test_seeded_and_global_rng_untouched():
    state = torch.random.get_rng_state()
    m1, m2 = small_model("deep-signature", seed=5), small_model("deep-signature", seed=5)
    m3 = small_model("deep-signature", seed=6)
    assert torch.equal(torch.random.get_rng_state(), state)
    for (k, v1), v2, v3 in zip(m1.state_dict().items(), m2.state_dict().values(), m3.state_dict().values()):
        assert torch.equal(v1, v2), k
    assert any(not torch.equal(v1, v3) for v1, v3 in zip(m1.state_dict().values(), m3.state_dict().values()))


def test_hierarchy_overall_assignment_is_product(rng):
    pool = HierarchicalSpectralPooling(5, 4, (6, 3)).double()
    x = torch.tensor(rng.normal(size=(2, 9, 5)))
    a = torch.tensor(np.stack([random_graph(rng, 9) for _ in range(2)]))
    emb, s, cut, ortho = pool(x, a)
    x1, a1, s1, c1, o1 = pool.levels[0](x, a)
    _, _, s2, c2, o2 = pool.levels[1](x1, a1)
    torch.testing.assert_close(s, s1 @ s2)
    torch.testing.assert_close(cut, c1 + c2)
    torch.testing.assert_close(ortho, o1 + o2)
    assert emb.shape == (2, 3, 4)


def test_bad_input_messages(rng):
    with pytest.raises(ValueError, match="clusters"):
        build_model("deep-signature", n_nodes=10, channels=1, n_classes=2, clusters=(60, 30))
    with pytest.raises(ValueError, match="unknown method"):
        build_model("graph-gru", n_nodes=10, channels=1, n_classes=2)
    with pytest.raises(ValueError, match="unknown hyper-parameters"):
        build_model("head", n_nodes=10, channels=1, n_classes=2, depth=2, clusters=(4, 2))
    model = small_model("head")
    paths, adjacency = batch(rng)
    with pytest.raises(ValueError, match="paths must be"):
        model(paths[..., :2].float(), adjacency.float())
    with pytest.raises(ValueError, match="adjacency must be"):
        model(paths.float(), adjacency[:, :5, :5].float())
    assert isinstance(small_model("deep-signature"), DeepSignature)
