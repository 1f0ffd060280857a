"""TorchMDNetPotential: torchmd-net's ET and TensorNet on our interface, physics and export.

Small float64 models on a dozen water molecules in a triclinic box; every architecture gets
the same checks (symmetries, periodic images, cutoff continuity, finite differences, our vesin
pairs against torchmd-net's own search, TorchScript, OpenMM through the export, clear errors).
"""
import json

import numpy as np
import openmm
import openmm.unit as unit
import pytest
import torch

from openmm_geom.threads import cpu_platform_properties
from openmm_geom.export import export_model
from openmm_geom.models.torchmdnet import TorchMDNetPotential
from openmm_geom.openmm import add_to_system, check_export

ARCHITECTURES = ["et", "tensornet"]
CUTOFF = 0.4  # nm
# OpenMM's reduced triclinic form (torchmd-net's search needs it); narrowest width ~1.07 nm.
BOX = np.array([[1.30, 0.0, 0.0], [0.30, 1.25, 0.0], [-0.20, 0.35, 1.20]])
WATER = np.array([[0.0, 0.0, 0.0], [0.0757, 0.0586, 0.0], [0.0757, -0.0586, 0.0]])  # O, H, H


def random_rotation(rng):
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def water_box(rng, grid=(2, 2, 3)):
    """(36, 3) nm positions of 12 randomly oriented waters on a jittered grid in BOX; Z."""
    centres = []
    for i in range(grid[0]):
        for j in range(grid[1]):
            for k in range(grid[2]):
                fractional = (np.array([i, j, k]) + 0.5 + rng.uniform(-0.1, 0.1, 3)) / grid
                centres.append(fractional @ BOX)
    positions = np.concatenate([c + WATER @ random_rotation(rng).T for c in centres])
    return positions, [8, 1, 1] * len(centres)


@pytest.fixture(scope="module")
def system():
    positions, numbers = water_box(np.random.default_rng(7))
    return torch.tensor(positions), torch.tensor(BOX), numbers


@pytest.fixture(scope="module", params=ARCHITECTURES)
def model(request, system):
    _, _, numbers = system
    return TorchMDNetPotential(numbers, request.param, cutoff=CUTOFF, hidden_channels=16,
                               num_layers=2, num_rbf=16, dtype=torch.float64, seed=3)


def energy(model, positions, box=None):
    with torch.no_grad():
        return float(model(positions, box))


def energy_forces(model, positions, box=None):
    x = positions.clone().requires_grad_(True)
    energy = model(x, box)
    (gradient,) = torch.autograd.grad(energy, x)
    return float(energy.detach()), -gradient


def assert_close(e1, f1, e2, f2, tolerance):
    assert abs(e1 - e2) <= tolerance * max(abs(e2), 1.0), (e1, e2)
    scale = max(float(f2.abs().max()), 1.0)
    assert float((f1 - f2).abs().max()) <= tolerance * scale


# -- symmetries -----------------------------------------------------------------------------------
@pytest.mark.parametrize("periodic", [False, True])
def test_translation(model, system, periodic):
    positions, box, _ = system
    box = box if periodic else None
    e0, f0 = energy_forces(model, positions, box)
    e1, f1 = energy_forces(model, positions + torch.tensor([0.37, -1.21, 2.9], dtype=torch.float64), box)
    assert_close(e1, f1, e0, f0, 1e-10)


def test_rotation(model, system):
    positions, _, _ = system
    rotation = torch.tensor(random_rotation(np.random.default_rng(11)))
    e0, f0 = energy_forces(model, positions)
    e1, f1 = energy_forces(model, positions @ rotation.T)
    assert_close(e1, f1, e0, f0 @ rotation.T, 1e-10)


def test_permutation_of_identical_atoms(model, system):
    positions, box, numbers = system
    order = np.arange(len(numbers))
    oxygens = np.flatnonzero(np.array(numbers) == 8)
    hydrogens = np.flatnonzero(np.array(numbers) == 1)
    order[oxygens] = np.roll(oxygens, 2)
    order[hydrogens] = hydrogens[::-1]
    e0, f0 = energy_forces(model, positions, box)
    e1, f1 = energy_forces(model, positions[order], box)
    assert_close(e1, f1, e0, f0[order], 1e-10)


def test_periodic_images(model, system):
    positions, box, _ = system
    shifts = torch.tensor(np.random.default_rng(5).integers(-2, 3, size=(positions.shape[0], 3)),
                          dtype=torch.float64)
    e0, f0 = energy_forces(model, positions, box)
    e1, f1 = energy_forces(model, positions + shifts @ box, box)
    assert_close(e1, f1, e0, f0, 1e-9)


def test_energy_is_continuous_across_the_cutoff(model):
    # Two waters, hydrogens pointing away, so that the O-O pair is the only one that crosses.
    left = -WATER
    numbers = [8, 1, 1, 8, 1, 1]
    two = model.for_atoms(numbers)
    # Fresh models have zero biases, which hides discontinuities (ET's default vector_cutoff=False
    # jumps by ~3% here once its dv_proj bias is trained); perturb every weight like training.
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in two.parameters():
            parameter.add_(0.3 * torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype))
    energies = []
    for distance in (CUTOFF - 1e-7, CUTOFF + 1e-7):
        positions = np.concatenate([left, WATER + [distance, 0.0, 0.0]])
        energies.append(energy(two, torch.tensor(positions)))
    inside, outside = energies
    assert abs(inside - outside) <= 1e-6 * max(abs(outside), 1.0)
    far = energy(two, torch.tensor(np.concatenate([left, WATER + [3.0, 0.0, 0.0]])))
    assert abs(far - outside) <= 1e-10 * max(abs(far), 1.0)  # beyond the cutoff: no interaction


def test_extensive_for_far_apart_copies(model, system):
    positions, _, numbers = system
    double = model.for_atoms(numbers + numbers)
    far = torch.cat([positions, positions + torch.tensor([10.0, 0.0, 0.0], dtype=torch.float64)])
    assert energy(double, far) == pytest.approx(2 * energy(model, positions), rel=1e-10)


# -- derivatives ----------------------------------------------------------------------------------
def test_forces_are_minus_the_gradient(model, system):
    positions, box, _ = system
    _, forces = energy_forces(model, positions, box)
    h = 1e-6  # the O-H geometry curves fast: at 1e-5 nm the O(h^2) error reaches 2e-6
    rng = np.random.default_rng(2)
    for index in rng.choice(positions.numel(), size=8, replace=False):
        atom, axis = divmod(int(index), 3)
        shifted = []
        for sign in (1.0, -1.0):
            p = positions.clone()
            p[atom, axis] += sign * h
            shifted.append(energy(model, p, box))
        numeric = -(shifted[0] - shifted[1]) / (2 * h)
        assert numeric == pytest.approx(float(forces[atom, axis]),
                                        abs=1e-6 * max(float(forces.abs().max()), 1.0))


def test_second_derivatives_for_force_training(model, system):
    positions, box, _ = system
    direction = torch.tensor(np.random.default_rng(4).normal(size=positions.shape))

    def gradient(p, create_graph):
        x = p.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(model(x, box), x, create_graph=create_graph)
        return x, g

    x, g = gradient(positions, True)
    (hessian_direction,) = torch.autograd.grad((g * direction).sum(), x)
    h = 1e-5
    numeric = (gradient(positions + h * direction, False)[1]
               - gradient(positions - h * direction, False)[1]) / (2 * h)
    scale = float(numeric.abs().max())
    assert float((hessian_direction - numeric).abs().max()) <= 1e-5 * scale

    # A force loss reaches the weights (create_graph through our pair geometry and the network).
    model.zero_grad()
    x, g = gradient(positions, True)
    (g ** 2).sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert sum(1 for q in grads if q is not None and float(q.abs().sum()) > 0) > len(grads) // 2
    assert all(torch.isfinite(q).all() for q in grads if q is not None)
    model.zero_grad()


# -- neighbour search, batches, TorchScript --------------------------------------------------------
@pytest.mark.parametrize("periodic", [False, True])
def test_vesin_pairs_match_torchmdnet_search(model, system, periodic):
    positions, box, numbers = system
    box = box if periodic else None
    theirs = TorchMDNetPotential.from_hyperparameters(numbers, model.hyperparameters,
                                                      neighbors="torchmdnet")
    theirs.load_state_dict(model.state_dict())  # strict: same keys in both modes
    # Atoms outside the cell too: both searches must find the nearest images.
    moved = positions + torch.tensor([1.0, -1.0, 2.0], dtype=torch.float64) if periodic else positions
    e_ours, f_ours = energy_forces(model, moved, box)
    e_theirs, f_theirs = energy_forces(theirs, moved, box)
    assert_close(e_ours, f_ours, e_theirs, f_theirs, 1e-5)
    assert e_ours == pytest.approx(e_theirs, rel=1e-10)  # float64: equal up to summation order


@pytest.mark.parametrize("periodic", [False, True])
def test_edges_are_torchmdnets_edges(system, periodic):
    """Same directed edges, distances and vectors (sign included) as OptimizedDistance."""
    from torchmdnet.models.utils import OptimizedDistance

    from openmm_geom.models.torchmdnet import VesinEdges

    positions, box, _ = system
    pos = torch.cat([positions, positions + 0.02]) * 10.0  # two frames, angstrom
    batch = torch.arange(2).repeat_interleave(positions.shape[0])
    boxes = torch.stack([box, box * 1.05]) * 10.0 if periodic else None
    cutoff = CUTOFF * 10.0
    theirs = OptimizedDistance(0.0, cutoff, max_num_pairs=-128, return_vecs=True, loop=True)
    edges = []
    for search in (VesinEdges(cutoff), theirs):
        index, weight, vec = search(pos, batch, boxes)
        edges.append({(int(i), int(j)): (float(w), v.tolist())
                      for i, j, w, v in zip(index[0], index[1], weight, vec)})
    ours, reference = edges
    assert len(ours) > 2 * positions.shape[0] and set(ours) == set(reference)
    for key, (weight, vec) in reference.items():
        assert ours[key][0] == pytest.approx(weight, abs=1e-12)
        assert ours[key][1] == pytest.approx(vec, abs=1e-12)


@pytest.mark.parametrize("neighbors", ["vesin", "torchmdnet"])
def test_batch_of_frames_equals_frames_one_by_one(model, system, neighbors):
    positions, box, numbers = system
    m = TorchMDNetPotential.from_hyperparameters(numbers, model.hyperparameters, neighbors=neighbors)
    m.load_state_dict(model.state_dict())
    rng = np.random.default_rng(9)
    frames = torch.stack([positions, positions + 0.01 * torch.tensor(rng.normal(size=positions.shape))])
    boxes = torch.stack([box, box * 1.02])
    batch = m.energies(frames, boxes)
    single = torch.stack([m(frames[b], boxes[b]) for b in range(2)])
    assert torch.allclose(batch, single, rtol=1e-12, atol=0)
    assert torch.allclose(m.energies(frames), torch.stack([m(f) for f in frames]), rtol=1e-12, atol=0)


@pytest.mark.parametrize("neighbors", ["vesin", "torchmdnet"])
def test_torchscript_matches_eager(model, system, neighbors):
    positions, box, numbers = system
    m = TorchMDNetPotential.from_hyperparameters(numbers, model.hyperparameters, neighbors=neighbors)
    m.load_state_dict(model.state_dict())
    scripted = torch.jit.script(m)
    for b in (box, None):
        assert_close(*energy_forces(scripted, positions, b), *energy_forces(m, positions, b), 1e-12)


def test_hyperparameters_rebuild_the_model(model, system):
    positions, box, numbers = system
    hp = json.loads(json.dumps(model.hyperparameters))  # plain JSON types
    assert hp["architecture"] == model.architecture and hp["cutoff"] == CUTOFF
    assert hp["dtype"] == "float64" and hp["elements"] == [1, 8] and hp["neighbors"] == "vesin"
    rebuilt = TorchMDNetPotential.from_hyperparameters(numbers, hp, seed=123)
    rebuilt.load_state_dict(model.state_dict())
    assert energy(rebuilt, positions, box) == energy(model, positions, box)


def test_float32_model(system):
    positions, box, numbers = system
    m64 = TorchMDNetPotential(numbers, "tensornet", cutoff=CUTOFF, hidden_channels=16,
                              num_layers=1, dtype=torch.float64)
    m32 = TorchMDNetPotential.from_hyperparameters(numbers, m64.hyperparameters, dtype="float32")
    m32.load_state_dict({k: v.float() if v.is_floating_point() and k != "energy_offsets" else v
                         for k, v in m64.state_dict().items()})
    e32 = m32(positions.float(), box.float())
    assert e32.dtype == torch.float32
    assert float(e32.detach()) == pytest.approx(energy(m64, positions, box), rel=1e-4, abs=1e-4)


# -- OpenMM ---------------------------------------------------------------------------------------
def test_exported_model_in_openmm_triclinic_context(model, system, tmp_path):
    positions, box, numbers = system
    path = tmp_path / "model.pt"
    scripted = export_model(model, path, length_unit="nm", energy_unit="kJ/mol", periodic=True,
                            example_positions=positions.numpy(), example_box=box.numpy(),
                            cutoff=model.cutoff, masses=[16.0 if z == 8 else 1.008 for z in numbers])
    assert scripted.metadata.hyperparameters == json.loads(json.dumps(model.hyperparameters))

    system_ = openmm.System()
    for z in numbers:
        system_.addParticle(16.0 if z == 8 else 1.008)
    system_.setDefaultPeriodicBoxVectors(*[openmm.Vec3(*row) for row in BOX])
    add_to_system(path, system_)
    context = openmm.Context(system_, openmm.VerletIntegrator(0.001),
                             openmm.Platform.getPlatformByName("CPU"), cpu_platform_properties())
    moved = positions + torch.tensor([0.5, 1.5, -0.7], dtype=torch.float64)  # outside the cell
    context.setPositions(moved.numpy())
    state = context.getState(getEnergy=True, getForces=True)
    e_ctx = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    f_ctx = torch.tensor(state.getForces(asNumpy=True).value_in_unit(
        unit.kilojoule_per_mole / unit.nanometer))
    assert_close(e_ctx, f_ctx, *energy_forces(model, moved, box), 1e-5)

    report = check_export(path, eager=model, platforms=("CPU",),
                          checks=("in_context", "finite_differences", "periodic_images",
                                  "nve_drift"), fd_coordinates=4, nve_steps=60)
    assert report.passed, report.format()


# -- errors ---------------------------------------------------------------------------------------
def test_wrong_atom_count(model, system):
    positions, box, _ = system
    with pytest.raises(ValueError, match="wrong atom count"):
        model(positions[:-3], box)


def test_unseen_element(model, system):
    _, _, numbers = system
    with pytest.raises(ValueError, match=r"atomic numbers \[6\] were not in the training data"):
        model.for_atoms(numbers + [6])


def test_nan_positions(model, system):
    positions, box, _ = system
    bad = positions.clone()
    bad[4, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        model(bad, box)


def test_box_smaller_than_twice_the_cutoff(model, system):
    positions, _, _ = system
    with pytest.raises(ValueError, match="box too small for the cutoff"):
        model(positions, torch.eye(3, dtype=torch.float64) * 1.5 * CUTOFF)


def test_torchmdnet_search_refuses_unreduced_boxes(system):
    positions, _, numbers = system
    m = TorchMDNetPotential(numbers, "et", cutoff=CUTOFF, hidden_channels=16, num_layers=1,
                            dtype=torch.float64, neighbors="torchmdnet")
    rotated = torch.tensor(BOX @ random_rotation(np.random.default_rng(1)).T)
    with pytest.raises(ValueError, match="reduced lower-triangular"):
        m(positions, rotated)
    # Our search takes any box: the same rotated system gives the same energy.
    ours = TorchMDNetPotential.from_hyperparameters(numbers, m.hyperparameters, neighbors="vesin")
    ours.load_state_dict(m.state_dict())
    rotation = torch.linalg.solve(torch.tensor(BOX), rotated)  # rotated = BOX @ R^T
    assert energy(ours, positions @ rotation, rotated) == pytest.approx(
        energy(ours, positions, torch.tensor(BOX)), rel=1e-10)


def test_torchmdnet_search_cap_is_an_error_not_missing_pairs(system):
    positions, box, numbers = system
    m = TorchMDNetPotential(numbers, "tensornet", cutoff=CUTOFF, hidden_channels=16,
                            num_layers=1, dtype=torch.float64, neighbors="torchmdnet",
                            max_num_neighbors=3)
    with pytest.raises(RuntimeError, match="max_num_pairs"):  # torchmd-net's own eager check
        m(positions, box)
    # Under TorchScript torchmd-net would silently drop the farthest pairs; ours refuses.
    with pytest.raises(torch.jit.Error, match="raise max_num_neighbors"):
        torch.jit.script(m)(positions, box)


def test_bad_arguments(system):
    _, _, numbers = system
    with pytest.raises(ValueError, match="architecture"):
        TorchMDNetPotential(numbers, "painn")
    with pytest.raises(ValueError, match="neighbors"):
        TorchMDNetPotential(numbers, neighbors="brute")
    with pytest.raises(ValueError, match="divisible"):
        TorchMDNetPotential(numbers, "et", hidden_channels=20, num_heads=8)
