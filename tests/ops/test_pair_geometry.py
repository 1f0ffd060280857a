"""The native pair_geometry operator against a numpy oracle, with first and second derivatives."""
import numpy as np
import pytest
import torch

from openmm_geom.ops import pair_geometry


def _random_case(rng, n=12, n_pairs=40, periodic=True, dtype=torch.float64):
    positions = torch.tensor(rng.normal(size=(n, 3)), dtype=dtype)
    pairs = torch.tensor(rng.integers(0, n, size=(n_pairs, 2)), dtype=torch.int64)
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    shifts = torch.tensor(rng.integers(-2, 3, size=(len(pairs), 3)), dtype=torch.int32)
    box = torch.tensor(np.diag([3.0, 3.5, 4.0]) + np.tril(rng.normal(0, 0.4, (3, 3)), -1), dtype=dtype)
    return positions, (box if periodic else None), pairs, shifts


def _oracle(positions, box, pairs, shifts):
    x = positions.detach().double().numpy()
    p = pairs.numpy()
    v = x[p[:, 1]] - x[p[:, 0]]
    if box is not None:
        v = v + shifts.numpy().astype(np.float64) @ box.detach().double().numpy()
    return v, np.linalg.norm(v, axis=1)


@pytest.mark.parametrize("periodic", [True, False])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_values_match_numpy(periodic, dtype, rng):
    positions, box, pairs, shifts = _random_case(rng, periodic=periodic, dtype=dtype)
    out_pairs, vectors, distances = pair_geometry(positions, box, pairs, shifts)
    v, d = _oracle(positions, box, pairs, shifts)
    assert out_pairs.shape == (2, len(pairs)) and out_pairs.is_contiguous()
    assert torch.equal(out_pairs, pairs.t())
    assert vectors.dtype == dtype and distances.dtype == dtype
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    np.testing.assert_allclose(vectors.numpy(), v, rtol=tol, atol=tol)
    np.testing.assert_allclose(distances.numpy(), d, rtol=tol, atol=tol)


def _energy(positions, box, pairs, shifts):
    _, vectors, distances = pair_geometry(positions, box, pairs, shifts)
    return torch.exp(-0.3 * distances ** 2).sum() + (vectors[:, 0] * vectors[:, 2]).sum()


@pytest.mark.parametrize("periodic", [True, False])
def test_first_and_second_derivatives(periodic, rng):
    positions, box, pairs, shifts = _random_case(rng, periodic=periodic)
    positions.requires_grad_(True)
    inputs = (positions, box.requires_grad_(True)) if periodic else (positions,)

    def f(*args):
        return _energy(args[0], args[1] if periodic else None, pairs, shifts)

    assert torch.autograd.gradcheck(f, inputs)
    assert torch.autograd.gradgradcheck(f, inputs)


def test_fused_and_graph_backward_agree(rng):
    """The fused first-order kernel and the differentiable-ops backward give the same gradient."""
    positions, box, pairs, shifts = _random_case(rng, n=50, n_pairs=400)
    positions.requires_grad_(True)
    box.requires_grad_(True)
    fused = torch.autograd.grad(_energy(positions, box, pairs, shifts), (positions, box))
    graph = torch.autograd.grad(_energy(positions, box, pairs, shifts), (positions, box),
                                create_graph=True)
    for a, b in zip(fused, graph):
        torch.testing.assert_close(a, b.detach(), rtol=1e-12, atol=1e-12)


def test_scripted_caller(rng):
    positions, box, pairs, shifts = _random_case(rng)
    scripted = torch.jit.script(pair_geometry)
    for a, b in zip(scripted(positions, box, pairs, shifts), pair_geometry(positions, box, pairs, shifts)):
        assert torch.equal(a, b)


def test_bad_input(rng):
    positions, box, pairs, shifts = _random_case(rng)
    with pytest.raises(RuntimeError, match="out of range for 12 atoms"):
        pair_geometry(positions, box, pairs + 20, shifts)
    with pytest.raises(RuntimeError, match=r"pairs must be \(P, 2\) int64"):
        pair_geometry(positions, box, pairs.int(), shifts)
    with pytest.raises(RuntimeError, match=r"shifts must be \(P, 3\) int32"):
        pair_geometry(positions, box, pairs, shifts[:-1])
    with pytest.raises(RuntimeError, match=r"positions must be \(N, 3\)"):
        pair_geometry(positions[:, :2], box, pairs, shifts)
