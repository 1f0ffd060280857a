"""geom2vec featurizer, token maps and feature files: symmetries, completeness, bad input."""
import numpy as np
import pytest
import torch

from openmm_geom.data import bundled
from openmm_geom.data.trajectories import read_positions
from openmm_geom.errors import FileFormatError
from openmm_geom.training.features import FeatureSet, featurize
from openmm_geom.models.geom2vec import Geom2VecFeaturizer, TokenMap, global_distances, pool_tokens


def _rotation(seed):
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    if np.linalg.det(q) < 0:
        q[:, 0] *= -1
    return torch.tensor(q)


@pytest.fixture(scope="module")
def alanine():
    import mdtraj

    traj = mdtraj.load(str(bundled("alanine-dipeptide.pdb")))
    return traj.topology, torch.tensor(traj.xyz[0], dtype=torch.float64)


def _featurizer(arch, d=16):
    return Geom2VecFeaturizer(arch, hidden_channels=d, num_layers=2, num_rbf=16, num_heads=4,
                              dtype=torch.float64, seed=3)


@pytest.mark.parametrize("arch", ["et", "tensornet"])
def test_scalars_invariant_and_vectors_equivariant_under_rigid_motion(arch, alanine):
    top, pos = alanine
    f = _featurizer(arch)
    z = torch.tensor([a.element.atomic_number for a in top.atoms])
    frames = torch.stack([pos, pos + 0.01 * torch.randn(pos.shape, dtype=torch.float64,
                                                        generator=torch.Generator().manual_seed(1))])
    a = f(z, frames)
    R = _rotation(4)
    b = f(z, frames @ R.T + torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64))
    assert a.shape == (2, 22, 4, 16)
    torch.testing.assert_close(b[:, :, 0], a[:, :, 0], atol=1e-10, rtol=0)
    torch.testing.assert_close(b[:, :, 1:], torch.einsum("ij,bnjd->bnid", R, a[:, :, 1:]),
                               atol=1e-10, rtol=0)
    assert a[:, :, 1:].abs().max() > 1e-3  # the vectors are not trivially zero


@pytest.mark.parametrize("arch", ["et", "tensornet"])
def test_tokens_invariant_to_permutations_within_a_token(arch, alanine):
    top, pos = alanine
    f = _featurizer(arch)
    tm = TokenMap.from_topology(top, "heavy", "residue")
    z = torch.tensor(tm.atomic_numbers)
    x = pos[tm.atom_indices].unsqueeze(0)
    index = torch.tensor(tm.token_index)
    reference = pool_tokens(f(z, x), index, tm.n_tokens)
    perm = torch.tensor([2, 0, 1, 7, 5, 3, 6, 4, 9, 8])  # shuffles atoms inside each residue
    assert torch.equal(index[perm], index)
    shuffled = pool_tokens(f(z[perm], x[:, perm]), index[perm], tm.n_tokens)
    torch.testing.assert_close(shuffled, reference, atol=1e-10, rtol=0)


def test_periodic_images_give_the_same_features():
    rng = np.random.default_rng(0)
    box = torch.tensor([[1.6, 0, 0], [0.3, 1.5, 0], [-0.2, 0.4, 1.7]], dtype=torch.float64)
    frac = torch.tensor(rng.random((30, 3)))
    pos = frac @ box
    z = torch.tensor(rng.choice([1, 6, 7, 8], 30))
    f = _featurizer("et")
    a = f(z, pos.unsqueeze(0), box.unsqueeze(0))
    shift = torch.tensor(rng.integers(-2, 3, (30, 3)), dtype=torch.float64) @ box
    b = f(z, (pos + shift).unsqueeze(0), box.unsqueeze(0))
    torch.testing.assert_close(b, a, atol=1e-10, rtol=0)
    with pytest.raises(ValueError, match="cutoff"):
        f(z, pos.unsqueeze(0), (box * 0.5).unsqueeze(0))


def test_no_neighbour_cap_in_a_dense_cluster():
    # 80 atoms within 0.3 nm: every atom has ~79 neighbours, over geom2vec's cap of 32. Our
    # features must equal torchmd-net's own search given room for all of them.
    from torchmdnet.models.utils import OptimizedDistance

    rng = np.random.default_rng(1)
    pos = torch.tensor(rng.normal(scale=0.08, size=(80, 3)))
    z = torch.tensor(rng.choice([6, 8], 80))
    f = _featurizer("et")
    ours = f(z, pos.unsqueeze(0))
    class Search(torch.nn.Module):  # our featurizer also passes the frame count
        def __init__(self):
            super().__init__()
            self.search = OptimizedDistance(0.0, f.cutoff * 10, max_num_pairs=-100,
                                            return_vecs=True, loop=True, include_transpose=True)

        def forward(self, pos, batch, box, frames):
            return self.search(pos, batch, box)

    search = Search()
    net = f.backbone.net
    mine = net.distance
    net.distance = search
    try:
        theirs = f(z, pos.unsqueeze(0))
    finally:
        net.distance = mine
    torch.testing.assert_close(ours, theirs, atol=1e-10, rtol=0)


@pytest.mark.parametrize("arch", ["et", "tensornet"])
def test_batched_frames_equal_frame_by_frame(arch, alanine):
    """A batch of small non-periodic frames is searched over all pairs at once; it must give
    what vesin gives one frame at a time: the same edges, features and gradients."""
    top, pos = alanine
    f = _featurizer(arch)
    z = torch.tensor([a.element.atomic_number for a in top.atoms])
    noise = torch.randn((5, *pos.shape), dtype=torch.float64,
                        generator=torch.Generator().manual_seed(2))
    frames = (pos + 0.02 * noise).requires_grad_(True)
    batched = f(z, frames)
    (batched * torch.linspace(-1, 1, batched.numel(), dtype=torch.float64).reshape(batched.shape)
     ).sum().backward()
    one_by_one, grads = [], []
    for frame in frames.detach():
        frame = frame.unsqueeze(0).requires_grad_(True)
        out = f(z, frame)
        one_by_one.append(out)
        grads.append(frame)
    stacked = torch.cat(one_by_one)
    (stacked * torch.linspace(-1, 1, stacked.numel(), dtype=torch.float64).reshape(stacked.shape)
     ).sum().backward()
    torch.testing.assert_close(batched, stacked, atol=1e-10, rtol=0)
    torch.testing.assert_close(frames.grad, torch.cat([g.grad for g in grads]), atol=1e-10, rtol=0)
    edges = f.backbone.net.distance
    angstrom = (frames.detach() * 10.0).reshape(-1, 3)
    batch = torch.arange(5).repeat_interleave(22)
    dense = edges(angstrom, batch)
    edges.dense_limit = 0  # force the per-frame vesin path
    try:
        searched = edges(angstrom, batch)
    finally:
        edges.dense_limit = 128

    def as_set(result):
        index, _, vec = result
        return {(int(a), int(b), tuple(round(float(x), 9) for x in v))
                for a, b, v in zip(index[0], index[1], vec)}

    assert as_set(dense) == as_set(searched) and dense[0].shape == searched[0].shape
    scripted = torch.jit.script(f)
    torch.testing.assert_close(scripted(z, frames.detach()), batched.detach())


def test_featurizer_scripts_and_refuses_bad_input(alanine):
    top, pos = alanine
    f = _featurizer("et")
    z = torch.tensor([a.element.atomic_number for a in top.atoms])
    scripted = torch.jit.script(f)
    torch.testing.assert_close(scripted(z, pos.unsqueeze(0)), f(z, pos.unsqueeze(0)))
    with pytest.raises(ValueError, match="atomic numbers"):
        f(z[:-1], pos.unsqueeze(0))
    bad = pos.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        f(z, bad.unsqueeze(0))
    with pytest.raises(ValueError, match="1..35"):
        f(torch.full_like(z, 92), pos.unsqueeze(0))


def test_token_maps_from_topology_and_partition(alanine):
    top, _ = alanine
    heavy = TokenMap.from_topology(top, "heavy", "residue", global_atoms="name CA or name C")
    assert heavy.token_names == ["ACE1", "ALA2", "NME3"]
    assert (heavy.atomic_numbers != 1).all() and len(heavy.atom_indices) == 10
    assert heavy.global_dim == 6  # 4 anchor atoms
    per_atom = TokenMap.from_topology(top, "all", "atom")
    assert per_atom.n_tokens == 22
    assert TokenMap.from_json(heavy.to_json()).to_json() == heavy.to_json()
    z = [a.element.atomic_number for a in top.atoms]
    part = TokenMap.from_partition([[4, 6, 8], [14, 16]], z, ["left", "right"])
    assert part.token_index.tolist() == [0, 0, 0, 1, 1]
    with pytest.raises(ValueError, match="assigns each atom once"):
        TokenMap.from_partition([[4, 6], [6, 8]], z)
    with pytest.raises(ValueError, match="matches no atom"):
        TokenMap.from_topology(top, "resname XYZ")


def test_global_distances_use_the_minimum_image():
    box = torch.tensor([[[2.0, 0, 0], [0, 2.0, 0], [0, 0, 2.0]]], dtype=torch.float64)
    pos = torch.tensor([[[0.1, 0.1, 0.1], [1.9, 0.1, 0.1]]], dtype=torch.float64)
    pairs = torch.tensor([[0, 1]])
    assert float(global_distances(pos, pairs, box)) == pytest.approx(0.2)
    assert float(global_distances(pos, pairs)) == pytest.approx(1.8)


def test_feature_file_round_trip_and_errors(alanine, tmp_path):
    top, pos = alanine
    f = _featurizer("et", d=8)
    tm = TokenMap.from_topology(top, "heavy", "residue", global_atoms="name CA or name C")
    rng = np.random.default_rng(2)
    trajs = [pos.numpy() + 0.005 * rng.normal(size=(n, 22, 3)) for n in (5, 7)]
    path = tmp_path / "traj.npz"
    np.savez(path, positions=trajs[1], save_interval_ps=np.float64(2.0))
    fs = featurize(f, tm, [trajs[0], path], backbone_sha256="abc", timestep_ps=2.0,
                   batch_size=3, progress=False)
    assert fs.tokens.shape == (12, 3, 4, 8) and fs.lengths.tolist() == [5, 7]
    assert fs.global_features.shape == (12, 6)
    direct = pool_tokens(f(torch.tensor(tm.atomic_numbers),
                           torch.tensor(trajs[0][:, tm.atom_indices])),
                         torch.tensor(tm.token_index), 3)
    np.testing.assert_allclose(fs.trajectories()[0], direct.detach().numpy(), atol=1e-5)
    out = fs.save(tmp_path / "features.npz")
    back = FeatureSet.load(out)
    np.testing.assert_array_equal(back.tokens, fs.tokens)
    assert back.backbone["sha256"] == "abc" and back.token_map.n_tokens == 3
    assert back.timestep_ps == 2.0
    other = FeatureSet(fs.tokens, fs.lengths, fs.global_features, fs.token_map_json,
                       {"sha256": "def"}, 2.0)
    with pytest.raises(FileFormatError, match="different backbones"):
        back.check_compatible(other)
    (tmp_path / "corrupt.npz").write_bytes(out.read_bytes()[:200])
    with pytest.raises(FileFormatError, match="corrupt.npz is not an npz file|corrupt"):
        FeatureSet.load(tmp_path / "corrupt.npz")
    with pytest.raises(FileFormatError, match="no feature file"):
        FeatureSet.load(tmp_path / "missing.npz")
    with pytest.raises(FileFormatError, match="NaN"):
        FeatureSet(fs.tokens * np.nan, fs.lengths, None, fs.token_map_json, {}, 1.0)


def test_trajectory_topology_mismatch_is_a_clear_error(alanine, tmp_path):
    top, pos = alanine
    tm = TokenMap.from_topology(top, "heavy", "residue")
    path = tmp_path / "wrong.npz"
    np.savez(path, positions=np.zeros((3, 21, 3), np.float32))
    with pytest.raises(ValueError, match="21 atoms per frame but the topology has 22"):
        featurize(_featurizer("et", 8), tm, [path], backbone_sha256="x", timestep_ps=1.0,
                  progress=False)
    with pytest.raises(ValueError, match="frame spacing"):
        featurize(_featurizer("et", 8), tm, [pos.numpy()[None]], backbone_sha256="x",
                  progress=False)
    with pytest.raises(FileNotFoundError):
        read_positions(tmp_path / "nope.dcd")


def _perturbed(f, seed=5):
    """Random non-zero biases everywhere (a trained model's), so every term matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in f.parameters():
            p.add_(0.1 * torch.randn(p.shape, dtype=p.dtype, generator=g))
    return f


def test_et_features_equal_torchmdnet_own_forward(alanine):
    """Our shape-stable ET pass (no boolean masks, scatters sized by the atom count) against an
    untouched torchmd-net TorchMD_ET holding the same weights: values and gradients."""
    from openmm_geom.models.torchmdnet import ANGSTROM_PER_NM, VesinEdges, build_torchmdnet

    top, pos = alanine
    f = _perturbed(_featurizer("et"))
    hp = f.hyperparameters
    reference, _ = build_torchmdnet("et", hp["hidden_channels"], hp["num_layers"], hp["num_rbf"],
                                    hp["num_heads"], True, "silu", "O(3)",
                                    hp["cutoff"] * ANGSTROM_PER_NM, hp["max_z"], 64,
                                    torch.float64)
    reference.distance = VesinEdges(hp["cutoff"] * ANGSTROM_PER_NM)
    reference.load_state_dict(f.backbone.net.state_dict())
    assert type(reference.attention_layers[0]).__name__ == "EquivariantMultiHeadAttention"
    z = torch.tensor([a.element.atomic_number for a in top.atoms])
    g = torch.Generator().manual_seed(2)
    x = (pos + 0.03 * torch.randn((3,) + pos.shape, dtype=torch.float64, generator=g))
    x.requires_grad_(True)
    ours = f(z, x)
    scalars, vectors, *_ = reference(z.repeat(3), (x * ANGSTROM_PER_NM).reshape(-1, 3),
                                     torch.arange(3).repeat_interleave(len(z)), None)
    theirs = torch.cat((scalars.unsqueeze(1), vectors), dim=1).reshape(ours.shape)
    assert float((ours - theirs).abs().max()) < 1e-12 * float(theirs.abs().max())
    w = torch.randn(ours.shape, dtype=torch.float64, generator=g)
    (a,) = torch.autograd.grad((ours * w).sum(), x, retain_graph=True)
    (b,) = torch.autograd.grad((theirs * w).sum(), x)
    assert float((a - b).abs().max()) < 1e-10 * float(b.abs().max())


@pytest.mark.parametrize("arch", ["et", "tensornet"])
def test_every_pair_mode_equals_the_neighbour_search(arch, alanine):
    """enable_fixed_shapes (every ordered pair, for AOTInductor) changes nothing: pairs beyond
    the cutoff carry exact zeros. Frames far apart enough that many pairs lie beyond 0.5 nm."""
    top, pos = alanine
    f = _perturbed(_featurizer(arch))
    z = torch.tensor([a.element.atomic_number for a in top.atoms])
    g = torch.Generator().manual_seed(4)
    x = pos + 0.03 * torch.randn((2,) + pos.shape, dtype=torch.float64, generator=g)
    distances = torch.cdist(x[0], x[0])
    assert int((distances > f.cutoff).sum()) > 50  # the test needs pairs beyond the cutoff
    x.requires_grad_(True)
    searched = f(z, x)
    f.backbone.net.distance.enable_fixed_shapes()
    for module in (f, torch.jit.script(f)):
        every = module(z, x)
        assert float((every - searched).abs().max()) < 1e-12 * float(searched.abs().max())
        w = torch.randn(every.shape, dtype=torch.float64, generator=g)
        (a,) = torch.autograd.grad((every * w).sum(), x)
        (b,) = torch.autograd.grad((searched * w).sum(), x, retain_graph=True)
        assert float((a - b).abs().max()) < 1e-10 * float(b.abs().max())
