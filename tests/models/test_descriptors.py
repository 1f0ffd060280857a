"""Descriptor front ends against mdtraj and numpy, gradients against finite differences,
TorchScript, and descriptor_cv's handling of batched and unbatched models.

Tolerances, chosen before running: 1e-12 against float64 numpy formulas; 1e-5 (nm or rad)
against mdtraj, which computes in float32; torch.autograd.gradcheck's defaults (central
differences, float64).
"""
import itertools

import mdtraj
import numpy as np
import pytest
import torch

from openmm_geom.data import bundled
from openmm_geom.models.descriptors import (Angles, DescriptorSet, Distances, PairwiseDistances,
                                            Positions, Torsions, descriptor_cv)


@pytest.fixture(scope="module")
def frames():
    """Capped alanine, 5 frames jittered by 0.01 nm (float64, nm), and its mdtraj topology."""
    pdb = mdtraj.load(str(bundled("alanine-dipeptide.pdb")))
    rng = np.random.default_rng(7)
    xyz = pdb.xyz[0].astype(np.float64)[None] + rng.normal(0, 0.01, (5,) + pdb.xyz.shape[1:])
    return xyz, pdb.topology


def _heavy(topology):
    return [a.index for a in topology.atoms if a.element.symbol != "H"]


def _np_angles(x, t):
    u, v = x[:, t[:, 0]] - x[:, t[:, 1]], x[:, t[:, 2]] - x[:, t[:, 1]]
    cos = (u * v).sum(-1) / np.linalg.norm(u, axis=-1) / np.linalg.norm(v, axis=-1)
    return np.arccos(cos)


def _np_dihedrals(x, q):
    """The projection formula (not the one the module uses): v, w are b0 and b2 projected
    on the plane normal to b1."""
    b0 = x[:, q[:, 0]] - x[:, q[:, 1]]
    b1 = x[:, q[:, 2]] - x[:, q[:, 1]]
    b2 = x[:, q[:, 3]] - x[:, q[:, 2]]
    b1 = b1 / np.linalg.norm(b1, axis=-1, keepdims=True)
    v = b0 - (b0 * b1).sum(-1, keepdims=True) * b1
    w = b2 - (b2 * b1).sum(-1, keepdims=True) * b1
    return np.arctan2((np.cross(b1, v) * w).sum(-1), (v * w).sum(-1))


def _eval(module, xyz):
    return np.stack([module(torch.as_tensor(x)).numpy() for x in xyz])


def test_pairwise_distances_match_mdtraj_and_numpy(frames):
    xyz, top = frames
    heavy = _heavy(top)
    module = PairwiseDistances(heavy)
    pairs = np.array(list(itertools.combinations(heavy, 2)))
    ours = _eval(module, xyz)
    assert ours.shape == (5, len(heavy) * (len(heavy) - 1) // 2) == (5, module.n_features)
    traj = mdtraj.Trajectory(xyz.astype(np.float32), top)
    np.testing.assert_allclose(ours, mdtraj.compute_distances(traj, pairs, periodic=False),
                               atol=1e-5, rtol=0)
    exact = np.linalg.norm(xyz[:, pairs[:, 1]] - xyz[:, pairs[:, 0]], axis=-1)
    np.testing.assert_allclose(ours, exact, atol=1e-12, rtol=0)


def test_distances_angles_torsions_positions_match_mdtraj(frames):
    xyz, top = frames
    traj = mdtraj.Trajectory(xyz.astype(np.float32), top)
    pairs = np.array([[0, 4], [4, 14], [8, 18]])
    triplets = np.array([[4, 6, 8], [6, 8, 14], [8, 14, 16]])
    phi = mdtraj.compute_phi(traj)[0]
    psi = mdtraj.compute_psi(traj)[0]
    quads = np.concatenate([phi, psi])
    np.testing.assert_allclose(_eval(Distances(pairs), xyz),
                               mdtraj.compute_distances(traj, pairs, periodic=False), atol=1e-5)
    np.testing.assert_allclose(_eval(Angles(triplets), xyz),
                               mdtraj.compute_angles(traj, triplets, periodic=False), atol=1e-5)
    np.testing.assert_allclose(_eval(Angles(triplets), xyz), _np_angles(xyz, triplets),
                               atol=1e-12, rtol=0)
    angles = _eval(Torsions(quads, sincos=False), xyz)
    np.testing.assert_allclose(angles, mdtraj.compute_dihedrals(traj, quads, periodic=False),
                               atol=1e-5)
    np.testing.assert_allclose(angles, _np_dihedrals(xyz, quads), atol=1e-12, rtol=0)
    sincos = _eval(Torsions(quads), xyz)
    reference = _np_dihedrals(xyz, quads)
    np.testing.assert_allclose(sincos[:, 0::2], np.sin(reference), atol=1e-12, rtol=0)
    np.testing.assert_allclose(sincos[:, 1::2], np.cos(reference), atol=1e-12, rtol=0)
    np.testing.assert_array_equal(_eval(Positions([3, 0]), xyz),
                                  xyz[:, [3, 0]].reshape(5, -1))


def _fronts():
    return [PairwiseDistances([0, 4, 6, 8, 14]), Distances([[1, 18], [4, 16]]),
            Angles([[4, 6, 8], [6, 8, 14]]), Torsions([[4, 6, 8, 14], [6, 8, 14, 16]]),
            Torsions([[4, 6, 8, 14]], sincos=False), Positions([5, 9]),
            DescriptorSet([Distances([[0, 4]]), Torsions([[4, 6, 8, 14]])])]


@pytest.mark.parametrize("index", range(7))
def test_gradients_match_finite_differences_and_script(frames, index):
    xyz, _ = frames
    module = _fronts()[index]
    x = torch.as_tensor(xyz[0]).clone().requires_grad_(True)
    assert torch.autograd.gradcheck(module, (x,))
    scripted = torch.jit.script(module)
    out_e, out_s = module(x), scripted(x)
    assert out_e.shape == (module.n_features,)
    assert torch.equal(out_e, out_s)
    weights = torch.linspace(-1, 1, module.n_features, dtype=torch.float64)
    (g_e,) = torch.autograd.grad((out_e * weights).sum(), x)
    (g_s,) = torch.autograd.grad((out_s * weights).sum(), x)
    torch.testing.assert_close(g_e, g_s, rtol=0, atol=1e-14)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="two distinct"):
        PairwiseDistances([3, 3])
    with pytest.raises(ValueError, match="4 atom indices"):
        Torsions([[0, 1, 2]])
    with pytest.raises(ValueError, match="non-negative"):
        Distances([[0, -1]])
    with pytest.raises(ValueError, match="only 3 atoms"):
        Distances([[0, 5]])(torch.zeros(3, 3))


class _Unbatched(torch.nn.Module):
    """(D,) -> (2,): ours-style."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([x.sum(), (x ** 2).sum()])


def test_descriptor_cv_batched_and_unbatched_models(frames):
    xyz, _ = frames
    front = Torsions([[4, 6, 8, 14], [6, 8, 14, 16]])
    x = torch.as_tensor(xyz[0])
    features = front(x)
    torch.manual_seed(0)
    linear = torch.nn.Linear(4, 3).double()            # (B, D) -> (B, k), like mlcolvar
    cv = descriptor_cv(front, linear, cv_names=["a", "b", "c"])
    assert cv.batched and cv.n_outputs == 3 and cv.cv_names == ["a", "b", "c"]
    torch.testing.assert_close(cv(x), linear(features[None])[0], rtol=0, atol=0)
    traced = torch.jit.trace(linear.float(), torch.zeros(1, 4))   # a PLUMED-style file: float32
    cv32 = descriptor_cv(front, traced, dtype=torch.float64)
    assert cv32.batched and cv32(x).dtype == torch.float64
    torch.testing.assert_close(cv32(x), linear.double()(features[None])[0], rtol=0, atol=1e-15)
    ours = descriptor_cv(front, _Unbatched(), batched=False)
    torch.testing.assert_close(ours(x), torch.stack([features.sum(), (features ** 2).sum()]))
    scripted = torch.jit.script(cv)
    torch.testing.assert_close(scripted(x), cv(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match="cv_names"):
        descriptor_cv(front, linear, cv_names=["only-one"])
