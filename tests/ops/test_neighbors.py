"""Tests for ``openmm_geom.ops.neighbor_pairs`` and ``check_box_holds_cutoff``.

The reference for every pair list is a brute-force numpy oracle defined here: it enumerates
all pairs ``i < j`` and, for periodic systems, all images ``n`` within two cells of the
nearest one, keeping those with ``|r_j - r_i + n @ box| < cutoff``. Pair membership,
distances and (orientation-aware) vectors of the implementation are compared with it on
hypothesis-generated systems: triclinic boxes in OpenMM's reduced form, positions well
outside the cell, float32 and float64.

The other tests check gradients (gradcheck w.r.t. positions and box, translation invariance),
TorchScript (scripted function, and a scripted module inside an openmm-torch ``TorchForce``
whose energy and forces must match the oracle's analytic ones), input validation and edge
cases (empty systems, a pair straddling the periodic boundary).
"""
import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from openmm_geom.ops import check_box_holds_cutoff, neighbor_pairs

# Offsets {-2..2}^3 around the rounded fractional image: the nearest image of a reduced
# triclinic box is always among them.
IMAGE_OFFSETS = np.array(list(itertools.product(range(-2, 3), repeat=3)), dtype=np.float64)

# Pairs whose true distance is within this relative band of the cutoff may legitimately be
# found or missed (rounding decides), so the comparison with the oracle tolerates both.
AMBIGUOUS_REL = {torch.float64: 1e-10, torch.float32: 1e-4}


# --------------------------------------------------------------------------------------------
# Oracle
# --------------------------------------------------------------------------------------------

def face_widths(box):
    """Distances between opposite faces of the cell with rows a, b, c (numpy, float64)."""
    a, b, c = np.asarray(box, dtype=np.float64)
    volume = abs(np.linalg.det(np.array([a, b, c])))
    return volume / np.array([np.linalg.norm(np.cross(b, c)),
                              np.linalg.norm(np.cross(c, a)),
                              np.linalg.norm(np.cross(a, b))])


def oracle_pairs(positions, cutoff, box=None):
    """Brute-force pair list: ``{(i, j): vector r_j - r_i of the nearest image}`` for i < j.

    Every pair with a distance below ``cutoff`` is returned. In a periodic box, each pair
    ``r_j - r_i`` is first shifted by the rounded fractional difference, then the shortest of
    the 125 image offsets around it is taken.
    """
    pos = np.asarray(positions, dtype=np.float64)
    found = {}
    for i, j in itertools.combinations(range(len(pos)), 2):
        d = pos[j] - pos[i]
        if box is None:
            candidates = d[None, :]
        else:
            cell = np.asarray(box, dtype=np.float64)
            nearest = -np.round(np.linalg.solve(cell.T, d))
            candidates = d + (nearest + IMAGE_OFFSETS) @ cell
        lengths = np.linalg.norm(candidates, axis=1)
        nearest_image = np.argmin(lengths)
        if lengths[nearest_image] < cutoff:
            found[(i, j)] = candidates[nearest_image]
    return found


def oracle_energy_forces(positions, cutoff, box):
    """Energy ``sum (1 - d/cutoff)^2`` over oracle pairs and its analytic forces ``-dE/dr``."""
    forces = np.zeros((len(positions), 3))
    energy = 0.0
    for (i, j), vec in oracle_pairs(positions, cutoff, box).items():
        d = np.linalg.norm(vec)
        energy += (1.0 - d / cutoff) ** 2
        de_dd = -2.0 * (1.0 - d / cutoff) / cutoff
        forces[j] -= de_dd * vec / d
        forces[i] += de_dd * vec / d
    return energy, forces


def result_as_dict(pairs, vectors):
    """Implementation output as ``{(min, max): vector from min to max}`` (unique keys)."""
    out = {}
    for (i, j), vec in zip(pairs.t().tolist(), vectors.detach().double().numpy()):
        assert i != j, f"self pair ({i}, {i}) returned"
        key, oriented = ((i, j), vec) if i < j else ((j, i), -vec)
        assert key not in out, f"pair {key} listed twice"
        out[key] = oriented
    return out


def assert_matches_oracle(positions, cutoff, box, result):
    """Compare ``neighbor_pairs`` output with the oracle (membership, vectors, distances)."""
    pairs, vectors, distances = result
    n_pairs = pairs.shape[1]
    assert pairs.dtype == torch.int64 and pairs.shape == (2, n_pairs)
    assert vectors.dtype == positions.dtype and vectors.shape == (n_pairs, 3)
    assert distances.dtype == positions.dtype and distances.shape == (n_pairs,)

    pos_np = positions.double().numpy()
    box_np = None if box is None else box.double().numpy()
    band = AMBIGUOUS_REL[positions.dtype] * cutoff
    expected = oracle_pairs(pos_np, cutoff * (1.0 + AMBIGUOUS_REL[positions.dtype]), box_np)
    sure = {k for k, v in expected.items() if np.linalg.norm(v) < cutoff - band}
    got = result_as_dict(pairs, vectors)

    assert sure <= got.keys(), f"missing pairs: {sorted(sure - got.keys())}"
    assert got.keys() <= expected.keys(), f"spurious pairs: {sorted(got.keys() - expected.keys())}"

    if positions.dtype == torch.float64:
        atol = 1e-10 * (1.0 + cutoff)
    else:  # float32: round-off of coordinates and image shifts up to a few box lengths
        scale = np.abs(pos_np).max(initial=0.0) + (0.0 if box_np is None else np.abs(box_np).sum())
        atol = 2e-6 * (1.0 + scale)
    for key, vec in got.items():
        np.testing.assert_allclose(vec, expected[key], rtol=0, atol=atol, err_msg=str(key))
    np.testing.assert_allclose(distances.double().numpy(),
                               np.linalg.norm(vectors.detach().double().numpy(), axis=1),
                               rtol=0, atol=atol)


# --------------------------------------------------------------------------------------------
# Hypothesis strategies
# --------------------------------------------------------------------------------------------

@st.composite
def reduced_boxes(draw):
    """Triclinic box in OpenMM's reduced form (positive diagonal, bounded off-diagonals)."""
    length = st.floats(1.0, 10.0)
    skew = st.floats(-0.5, 0.5)
    ax, by, cz = draw(length), draw(length), draw(length)
    return np.array([[ax, 0.0, 0.0],
                     [draw(skew) * ax, by, 0.0],
                     [draw(skew) * ax, draw(skew) * by, cz]])


@st.composite
def periodic_systems(draw, dtype):
    """(positions, cutoff, box) with fractional coordinates in [-1.5, 2.5] and a held cutoff."""
    box = torch.tensor(draw(reduced_boxes()), dtype=dtype)
    min_width = face_widths(box.double().numpy()).min()
    cutoff = draw(st.floats(0.02 * min_width, 0.5 * min_width))
    assume(2.0 * cutoff <= min_width * (1.0 - 1e-9))
    n_atoms = draw(st.integers(1, 40))
    fractional = draw(st.lists(st.tuples(*[st.floats(-1.5, 2.5)] * 3),
                               min_size=n_atoms, max_size=n_atoms))
    positions = torch.tensor(fractional, dtype=torch.float64).reshape(-1, 3) @ box.double()
    return positions.to(dtype), cutoff, box


@st.composite
def open_systems(draw, dtype):
    """(positions, cutoff) for a non-periodic system."""
    n_atoms = draw(st.integers(1, 40))
    coords = draw(st.lists(st.tuples(*[st.floats(-5.0, 5.0)] * 3),
                           min_size=n_atoms, max_size=n_atoms))
    cutoff = draw(st.floats(0.1, 5.0))
    return torch.tensor(coords, dtype=dtype).reshape(-1, 3), cutoff


ORACLE_SETTINGS = settings(max_examples=60, deadline=None,
                           suppress_health_check=[HealthCheck.too_slow])
DTYPES = pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])


# --------------------------------------------------------------------------------------------
# 1. Oracle comparison
# --------------------------------------------------------------------------------------------

@DTYPES
@ORACLE_SETTINGS
@given(data=st.data())
def test_periodic_pairs_match_oracle(dtype, data):
    positions, cutoff, box = data.draw(periodic_systems(dtype))
    n_threads = data.draw(st.sampled_from([0, 1, 2]))
    result = neighbor_pairs(positions, cutoff, box, n_threads=n_threads)
    assert_matches_oracle(positions, cutoff, box, result)


@DTYPES
@ORACLE_SETTINGS
@given(data=st.data())
def test_open_pairs_match_oracle(dtype, data):
    positions, cutoff = data.draw(open_systems(dtype))
    assert_matches_oracle(positions, cutoff, None, neighbor_pairs(positions, cutoff))


# --------------------------------------------------------------------------------------------
# 2. Gradients
# --------------------------------------------------------------------------------------------

GRAD_BOX = torch.tensor([[2.0, 0.0, 0.0],
                         [0.6, 2.1, 0.0],
                         [-0.7, 0.5, 2.3]], dtype=torch.float64)
GRAD_CUTOFF = 0.9


def gradient_system():
    """Small triclinic system, positions partly outside the cell, no pair near the cutoff."""
    gen = torch.Generator().manual_seed(7)
    fractional = torch.rand(12, 3, generator=gen, dtype=torch.float64) * 3.0 - 1.0
    positions = fractional @ GRAD_BOX
    distances = [np.linalg.norm(v) for v in
                 oracle_pairs(positions.numpy(), 2.0 * GRAD_CUTOFF, GRAD_BOX.numpy()).values()]
    gaps = [abs(d - GRAD_CUTOFF) for d in distances]
    assert min(gaps) > 0.01, "test setup: a pair is too close to the cutoff for gradcheck"
    assert sum(d < GRAD_CUTOFF for d in distances) >= 5, "test setup: too few pairs"
    return positions


def gaussian_energy(positions, box):
    _, _, distances = neighbor_pairs(positions, GRAD_CUTOFF, box)
    return torch.exp(-distances ** 2).sum()


def test_gradcheck_positions_and_box():
    positions = gradient_system().requires_grad_(True)
    box = GRAD_BOX.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(gaussian_energy, (positions, box), eps=1e-6, atol=1e-7)


def test_periodic_energy_is_translation_invariant():
    positions = gradient_system().requires_grad_(True)
    energy = gaussian_energy(positions, GRAD_BOX)
    (grad,) = torch.autograd.grad(energy, positions)
    assert grad.abs().max() > 1e-3  # non-trivial forces
    torch.testing.assert_close(grad.sum(dim=0), torch.zeros(3, dtype=torch.float64),
                               rtol=0, atol=1e-12)
    shifted = gaussian_energy(positions.detach() + torch.tensor([0.31, -1.7, 5.2],
                                                                dtype=torch.float64), GRAD_BOX)
    torch.testing.assert_close(shifted, energy.detach(), rtol=1e-12, atol=0)


# --------------------------------------------------------------------------------------------
# 3. TorchScript and openmm-torch
# --------------------------------------------------------------------------------------------

@DTYPES
@pytest.mark.parametrize("periodic", [True, False], ids=["pbc", "open"])
def test_scripted_function_matches_eager(dtype, periodic):
    scripted = torch.jit.script(neighbor_pairs)
    positions = gradient_system().to(dtype)
    box = GRAD_BOX.to(dtype) if periodic else None
    eager_out = neighbor_pairs(positions, GRAD_CUTOFF, box, 1)
    script_out = scripted(positions, GRAD_CUTOFF, box, 1)
    assert eager_out[0].shape[1] > 0
    for eager, script in zip(eager_out, script_out):
        assert eager.dtype == script.dtype
        assert torch.equal(eager, script)


class PairEnergy(torch.nn.Module):
    """``sum over pairs (1 - d/cutoff)^2``; positions and box in nm, energy in kJ/mol."""

    def __init__(self, cutoff: float):
        super().__init__()
        self.cutoff = cutoff

    def forward(self, positions: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
        _, _, distances = neighbor_pairs(positions, self.cutoff, box)
        return ((1.0 - distances / self.cutoff) ** 2).sum()


def test_torchforce_energy_and_forces_match_oracle():
    openmm = pytest.importorskip("openmm")
    openmmtorch = pytest.importorskip("openmmtorch")

    cutoff = 0.9
    box = np.array([[3.0, 0.0, 0.0], [1.1, 2.8, 0.0], [-0.9, 1.2, 3.1]])
    assert 2.0 * cutoff <= face_widths(box).min()
    rng = np.random.default_rng(11)
    positions = (rng.uniform(-0.5, 1.5, size=(100, 3))) @ box  # some outside the cell

    force = openmmtorch.TorchForce(torch.jit.script(PairEnergy(cutoff)))
    force.setUsesPeriodicBoundaryConditions(True)
    system = openmm.System()
    for _ in range(len(positions)):
        system.addParticle(1.0)
    system.setDefaultPeriodicBoxVectors(*(openmm.Vec3(*row) for row in box))
    system.addForce(force)
    context = openmm.Context(system, openmm.VerletIntegrator(0.001),
                             openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(positions)
    state = context.getState(getEnergy=True, getForces=True)
    energy = state.getPotentialEnergy().value_in_unit(openmm.unit.kilojoule_per_mole)
    forces = state.getForces(asNumpy=True).value_in_unit(
        openmm.unit.kilojoule_per_mole / openmm.unit.nanometer)

    expected_energy, expected_forces = oracle_energy_forces(positions, cutoff, box)
    assert expected_energy > 1.0
    assert energy == pytest.approx(expected_energy, rel=1e-8)
    np.testing.assert_allclose(forces, expected_forces, rtol=1e-8,
                               atol=1e-8 * np.abs(expected_forces).max())


# --------------------------------------------------------------------------------------------
# 4. Input validation
# --------------------------------------------------------------------------------------------

def cube(length, dtype=torch.float64):
    return torch.eye(3, dtype=dtype) * length


def two_atoms(dtype=torch.float64):
    return torch.tensor([[0.1, 0.2, 0.3], [0.5, 0.5, 0.5]], dtype=dtype)


def with_value(value, atom=1, axis=2):
    positions = two_atoms()
    positions[atom, axis] = value
    return positions


@pytest.mark.parametrize("positions, cutoff, box, error, match", [
    (with_value(float("nan")), 1.0, None, ValueError, r"NaN or infinite.*\[1\]"),
    (with_value(float("inf"), atom=0), 1.0, cube(4.0), ValueError, r"NaN or infinite.*\[0\]"),
    (with_value(-float("inf")), 1.0, None, ValueError, "NaN or infinite"),
    (torch.zeros(4, 2, dtype=torch.float64), 1.0, None, ValueError, r"shape \(N, 3\).*\[4, 2\]"),
    (torch.zeros(4, dtype=torch.float64), 1.0, None, ValueError, r"shape \(N, 3\).*\[4\]"),
    (torch.zeros(4, 3, dtype=torch.int64), 1.0, None, TypeError, "float32 or float64.*int64"),
    (torch.zeros(4, 3, dtype=torch.int32), 1.0, None, TypeError, "float32 or float64.*int32"),
    (two_atoms(), 0.0, None, ValueError, "cutoff must be positive"),
    (two_atoms(), -1.0, cube(4.0), ValueError, "cutoff must be positive"),
    (two_atoms(), float("inf"), None, ValueError, "cutoff must be positive and finite"),
    (two_atoms(), float("nan"), None, ValueError, "cutoff must be positive and finite"),
    (two_atoms(), 1.0, torch.eye(2, dtype=torch.float64), ValueError, r"box must have shape \(3, 3\)"),
    (two_atoms(), 1.0, torch.ones(9, dtype=torch.float64), ValueError, r"box must have shape \(3, 3\)"),
    (two_atoms(), 1.0, torch.tensor([[4.0, 0, 0], [0, 4.0, 0], [4.0, 4.0, 0]],
                                    dtype=torch.float64), ValueError, "singular"),
    (two_atoms(), 1.0, cube(float("nan")), ValueError, "box contains NaN"),
    (two_atoms(), 1.0, cube(1.5), ValueError, "too small"),
], ids=["nan-pos", "inf-pos", "neg-inf-pos", "shape-N2", "shape-N", "int64-pos", "int32-pos",
        "zero-cutoff", "negative-cutoff", "inf-cutoff", "nan-cutoff", "box-2x2", "box-flat",
        "box-singular", "box-nan", "box-too-small"])
def test_bad_input_raises(positions, cutoff, box, error, match):
    with pytest.raises(error, match=match):
        neighbor_pairs(positions, cutoff, box)


def test_box_exactly_holding_cutoff_passes_and_slightly_smaller_fails():
    check_box_holds_cutoff(cube(2.0), 1.0)
    neighbor_pairs(two_atoms(), 1.0, cube(2.0))
    with pytest.raises(ValueError, match="too small"):
        check_box_holds_cutoff(cube(2.0 * (1.0 - 1e-9)), 1.0)


@pytest.mark.parametrize("box", [
    # reduced form, every diagonal entry >= 2 * cutoff but the b-width is 4 / sqrt(5) = 1.79
    [[4.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 1.0, 2.0]],
    # not reduced: all box vectors longer than 4, but the cell is only 0.5 thick along y
    [[4.0, 0.0, 0.0], [4.0, 0.5, 0.0], [0.0, 0.0, 4.0]],
], ids=["reduced", "flattened"])
def test_skewed_box_with_large_diagonal_but_thin_faces_fails(box):
    box = torch.tensor(box, dtype=torch.float64)
    assert bool((torch.linalg.vector_norm(box, dim=1) >= 2.0).all())
    with pytest.raises(ValueError, match="too small"):
        check_box_holds_cutoff(box, 0.95)


# --------------------------------------------------------------------------------------------
# 5. Edge cases
# --------------------------------------------------------------------------------------------

@DTYPES
@pytest.mark.parametrize("n_atoms", [0, 1])
@pytest.mark.parametrize("periodic", [True, False], ids=["pbc", "open"])
def test_fewer_than_two_atoms_gives_empty_result(dtype, n_atoms, periodic):
    positions = torch.full((n_atoms, 3), 0.5, dtype=dtype)
    box = cube(2.0, dtype) if periodic else None
    pairs, vectors, distances = neighbor_pairs(positions, 0.9, box)
    assert pairs.shape == (2, 0) and pairs.dtype == torch.int64
    assert vectors.shape == (0, 3) and vectors.dtype == dtype
    assert distances.shape == (0,) and distances.dtype == dtype


@DTYPES
def test_pair_across_periodic_boundary(dtype):
    length = 2.0
    positions = torch.tensor([[0.05, 0.3, 0.3], [length - 0.05, 0.3, 0.3]], dtype=dtype)
    pairs, vectors, distances = neighbor_pairs(positions, 0.5, cube(length, dtype))
    assert pairs.shape == (2, 1)
    i, j = pairs[:, 0].tolist()
    assert {i, j} == {0, 1}
    # r_1 - r_0 of the nearest image points in -x (atom 1 sits just below atom 0's image)
    sign = 1.0 if (i, j) == (0, 1) else -1.0
    expected = torch.tensor([[-0.1 * sign, 0.0, 0.0]], dtype=dtype)
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    torch.testing.assert_close(vectors, expected, rtol=0, atol=tol)
    assert math.isclose(float(distances[0]), 0.1, abs_tol=tol)


def test_second_derivatives_through_neighbor_pairs():
    """Force matching differentiates forces: d2E/dx2 and d2E/dx dbox must be exact."""
    torch.manual_seed(3)
    positions = (torch.rand(20, 3, dtype=torch.float64) * 1.4).requires_grad_(True)
    box = (torch.eye(3, dtype=torch.float64) * 1.4
           + torch.tensor([[0, 0, 0], [0.2, 0, 0], [-0.1, 0.3, 0]], dtype=torch.float64))
    box.requires_grad_(True)

    def energy(x, b):
        _, vectors, distances = neighbor_pairs(x, 0.45, b)
        return (torch.exp(-4 * distances ** 2) + vectors[:, 1] ** 2 * 0.1).sum()

    assert torch.autograd.gradgradcheck(energy, (positions, box))
