"""The sparse graph-attention potential: symmetry, smoothness, export into OpenMM, bad input."""
import math

import numpy as np
import openmm
import openmm.app as app
import openmm.unit as unit
import pytest
import torch

from openmm_geom.export import export_potential
from openmm_geom.errors import TopologyMismatchError
from openmm_geom.models.attention import AttentionPotential, smooth_envelope
from openmm_geom.openmm import create_system

WATER = [8, 1, 1]


def triclinic_box(length=1.1):
    return np.array([[length, 0.0, 0.0], [0.3, length, 0.0], [-0.25, 0.2, length]])


def water_like(n_molecules, box, seed=0):
    """Water-shaped molecules (O-H 0.096 nm) at random places and orientations in the cell."""
    rng = np.random.default_rng(seed)
    positions = []
    for _ in range(n_molecules):
        oxygen = rng.random(3) @ box
        positions.append(oxygen)
        for _hydrogen in range(2):
            direction = rng.normal(size=3)
            positions.append(oxygen + 0.096 * direction / np.linalg.norm(direction))
    return np.asarray(positions)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = AttentionPotential(WATER * 12, cutoff=0.45, features=16, layers=2, heads=2, n_rbf=8,
                           dtype=torch.float64, seed=3)
    m.set_energy_offsets({8: -3.0, 1: -1.0})
    return m


def energy_forces(model, x, box=None):
    x = torch.as_tensor(x, dtype=torch.float64).clone().requires_grad_(True)
    b = None if box is None else torch.as_tensor(box, dtype=torch.float64)
    e = model(x, b)
    (g,) = torch.autograd.grad(e, x)
    return float(e.detach()), -g.numpy()


def random_rotation(seed):
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def test_molecule_layout_is_water():
    x = water_like(3, triclinic_box())
    assert x.shape == (9, 3)
    assert np.allclose(np.linalg.norm(x[1] - x[0]), 0.096)


def test_translation_and_rotation_invariance_without_box(model):
    x = water_like(12, np.eye(3) * 1.2, seed=1)
    e0, f0 = energy_forces(model, x)
    e1, f1 = energy_forces(model, x + np.array([3.1, -2.0, 0.7]))
    assert e1 == pytest.approx(e0, rel=1e-10, abs=1e-10)
    assert np.allclose(f1, f0, atol=1e-9)
    rotation = random_rotation(2)
    e2, f2 = energy_forces(model, x @ rotation.T)
    assert e2 == pytest.approx(e0, rel=1e-10, abs=1e-10)
    assert np.allclose(f2, f0 @ rotation.T, atol=1e-8)


@pytest.mark.parametrize("fixture", ["model", "vectors", "summed"])
def test_permutation_of_identical_atoms(fixture, request):
    """With vectors it also checks the edge directions: each pair's two edges point opposite
    ways whichever atom the pair search lists first."""
    model = request.getfixturevalue(fixture)
    box = triclinic_box()
    x = water_like(12, box, seed=4)
    e0, f0 = energy_forces(model, x, box)
    order = np.arange(36).reshape(12, 3)
    order = order[np.random.default_rng(0).permutation(12)]  # whole molecules
    order[:, [1, 2]] = order[:, [2, 1]]  # and the two hydrogens within each
    order = order.reshape(-1)
    e1, f1 = energy_forces(model, x[order], box)
    assert e1 == pytest.approx(e0, rel=1e-10)
    assert np.allclose(f1, f0[order], atol=1e-9)


@pytest.mark.parametrize("fixture", ["model", "vectors", "summed"])
def test_periodic_images_and_triclinic_wrapping(fixture, request):
    model = request.getfixturevalue(fixture)
    box = triclinic_box()
    x = water_like(12, box, seed=5)
    e0, f0 = energy_forces(model, x, box)
    shifts = np.random.default_rng(1).integers(-2, 3, size=(36, 3))
    e1, f1 = energy_forces(model, x + shifts @ box, box)
    assert e1 == pytest.approx(e0, rel=1e-10)
    assert np.allclose(f1, f0, atol=1e-8)


@pytest.mark.parametrize("fixture", ["model", "vectors", "summed"])
def test_forces_match_finite_differences(fixture, request):
    model = request.getfixturevalue(fixture)
    box = triclinic_box()
    x = water_like(12, box, seed=6)
    _, forces = energy_forces(model, x, box)
    h = 1e-5
    for atom, axis in [(0, 0), (5, 1), (17, 2), (30, 0)]:
        plus, minus = x.copy(), x.copy()
        plus[atom, axis] += h
        minus[atom, axis] -= h
        numeric = -(energy_forces(model, plus, box)[0] - energy_forces(model, minus, box)[0]) / (2 * h)
        assert numeric == pytest.approx(forces[atom, axis], rel=1e-5, abs=1e-6)


def test_envelope_is_smooth_at_the_cutoff():
    r = torch.tensor([0.0, 0.5, 1.0, 1.2], dtype=torch.float64, requires_grad=True)
    u = smooth_envelope(r, 1.0)
    (du,) = torch.autograd.grad(u.sum(), r, create_graph=True)
    (d2u,) = torch.autograd.grad(du.sum(), r)
    assert u.tolist() == pytest.approx([1.0, 1 - 28 / 64 + 48 / 128 - 21 / 256, 0.0, 0.0])
    assert du[2].item() == pytest.approx(0.0) and d2u[2].item() == pytest.approx(0.0)


@pytest.mark.parametrize("lone", [False, True])
def test_energy_and_forces_continuous_across_the_cutoff(lone):
    """A pair moving through the cutoff changes energy and forces continuously: with other
    neighbours present, and when the pair is the atom's only neighbour with the sink at its
    most extreme (the envelope-weighted softmax never divides by zero or jumps)."""
    cutoff = 0.4
    m = AttentionPotential([8, 1, 1], cutoff=cutoff, features=8, layers=2, heads=2, n_rbf=6,
                           dtype=torch.float64, seed=1)
    if lone:
        with torch.no_grad():
            for layer in m.layers:
                layer.sink.fill_(-1e3)  # bounded to -5: the sink holds the least weight it can
    def configuration(r):  # atom 2 at distance r from atom 1, beyond the cutoff from atom 0
        return np.array([[0.0, 0.0, 0.0], [0.15, 0.0, 0.0] if not lone else [0.0, 0.5, 0.0],
                         [(0.15 if not lone else 0.0) + r, 0.0 if not lone else 0.5, 0.0]])
    delta = 1e-4
    (e_in, f_in), (e_out, f_out) = (energy_forces(m, configuration(cutoff - delta)),
                                    energy_forces(m, configuration(cutoff + delta)))
    assert abs(e_in - e_out) < 1e-8
    assert np.abs(f_in - f_out).max() < 1e-4
    # and just outside, atom 2 feels nothing at all
    assert np.abs(f_out[2]).max() == 0.0
    assert math.isfinite(e_in)


def test_scripted_equals_eager_float32_and_float64():
    box = triclinic_box()
    x = water_like(12, box, seed=7)
    for dtype in (torch.float32, torch.float64):
        m = AttentionPotential(WATER * 12, cutoff=0.45, features=16, layers=2, heads=2,
                               dtype=dtype)
        scripted = torch.jit.script(m)
        xt, bt = torch.as_tensor(x, dtype=dtype), torch.as_tensor(box, dtype=dtype)
        assert float(scripted(xt, bt).detach()) == pytest.approx(float(m(xt, bt).detach()), rel=1e-6)


def water_topology(n, box):
    topology = app.Topology()
    chain = topology.addChain()
    for _ in range(n):
        residue = topology.addResidue("HOH", chain)
        topology.addAtom("O", app.element.oxygen, residue)
        topology.addAtom("H1", app.element.hydrogen, residue)
        topology.addAtom("H2", app.element.hydrogen, residue)
    topology.setPeriodicBoxVectors([openmm.Vec3(*row) for row in box] * unit.nanometer)
    return topology


@pytest.mark.parametrize("fixture", ["model", "vectors", "summed"])
def test_exported_model_in_openmm_matches_eager_with_triclinic_box(fixture, request, tmp_path):
    model = request.getfixturevalue(fixture)
    box = triclinic_box()
    x = water_like(12, box, seed=8)
    path = tmp_path / "attention.pt"
    export_potential(model, path, positions=x, box=box, masses=[15.999, 1.008, 1.008] * 12)
    # the file's parameters need no gradient (openmm-torch's backward() would compute them
    # every step); the trained model keeps its own
    assert not any(p.requires_grad for p in torch.jit.load(str(path)).parameters())
    assert all(p.requires_grad for p in model.parameters())
    system = create_system(path, water_topology(12, box))
    assert system.usesPeriodicBoundaryConditions()
    for platform in ("Reference", "CPU"):
        context = openmm.Context(system, openmm.VerletIntegrator(0.0005),
                                 openmm.Platform.getPlatformByName(platform))
        context.setPeriodicBoxVectors(*[openmm.Vec3(*row) for row in box])
        context.setPositions(x)
        state = context.getState(getEnergy=True, getForces=True)
        e_omm = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
        f_omm = state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer)
        e, f = energy_forces(model, x, box)
        assert e_omm == pytest.approx(e, rel=1e-5)
        assert np.abs(f_omm - f).max() <= 1e-5 * np.abs(f).max()


def test_bad_inputs_are_clear_errors(model, tmp_path):
    box = triclinic_box()
    x = water_like(12, box, seed=9)
    with pytest.raises(ValueError, match="were not in the training data"):
        model.for_atoms([8, 1, 1, 6])
    with pytest.raises(ValueError, match="wrong atom count"):
        model(torch.as_tensor(x[:-3]), torch.as_tensor(box))
    bad = x.copy()
    bad[4, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        model(torch.as_tensor(bad), torch.as_tensor(box))
    with pytest.raises(ValueError, match="box too small"):
        model(torch.as_tensor(x), torch.as_tensor(np.eye(3) * 0.8))
    path = tmp_path / "m.pt"
    export_potential(model, path, positions=x, box=box)
    with pytest.raises(TopologyMismatchError, match="exported for 36 atoms"):
        create_system(path, water_topology(11, box))
    wrong = water_topology(12, box)
    atoms = list(wrong.atoms())
    atoms[0].element = app.element.carbon
    with pytest.raises(TopologyMismatchError, match="atom 0 is C in the topology but 8"):
        create_system(path, wrong)
    with pytest.raises(ValueError, match="box too small"):
        create_system(path, water_topology(12, np.eye(3) * 0.8))


def test_for_atoms_transfers_to_a_larger_box(model):
    box = triclinic_box()
    x = water_like(12, box, seed=10)
    double_box = box * np.array([[2.0], [1.0], [1.0]])
    bigger = np.concatenate([x, x + box[0]])
    large = model.for_atoms(WATER * 24)
    e_small, _ = energy_forces(model, x, box)
    e_large, _ = energy_forces(large, bigger, double_box)
    # Two copies of a periodic cell side by side: twice the energy (offsets included).
    assert e_large == pytest.approx(2 * e_small, rel=1e-9)


def test_ensemble_spread_reporter_measures_disagreement_and_warns(tmp_path):
    from openmm_geom.errors import OutOfDistributionError, OutOfDistributionWarning
    from openmm_geom.openmm import EnsembleSpreadReporter

    box = triclinic_box()
    x = water_like(12, box, seed=11)
    paths = []
    for seed in (0, 0, 1):
        m = AttentionPotential(WATER * 12, cutoff=0.45, features=8, layers=1, heads=2, seed=seed,
                               dtype=torch.float64)
        paths.append(tmp_path / f"m{len(paths)}.pt")
        export_potential(m, paths[-1], positions=x, box=box)
    topology = water_topology(12, box)
    system = create_system(paths[0], topology)
    for i, (a, b) in enumerate(((0, 1), (0, 2))):
        simulation = app.Simulation(topology, system, openmm.VerletIntegrator(0.0002),
                                    openmm.Platform.getPlatformByName("Reference"))
        simulation.context.setPeriodicBoxVectors(*[openmm.Vec3(*row) for row in box])
        simulation.context.setPositions(x)
        reporter = EnsembleSpreadReporter(str(tmp_path / f"spread{i}.csv"), 2, [paths[a], paths[b]])
        simulation.reporters.append(reporter)
        simulation.step(6)
        reporter.close()
        rows = np.loadtxt(tmp_path / f"spread{i}.csv", delimiter=",", comments="#")
        assert rows.shape == (3, 5) and rows[:, 0].tolist() == [2, 4, 6]
        if a == b or (a, b) == (0, 1):  # identical weights (same seed): no disagreement
            assert np.abs(rows[:, 2:]).max() == 0.0
        else:
            assert (rows[:, 2] > 0).all() and (rows[:, 2] >= rows[:, 3]).all()
    # the spread equals an independent computation from the two models' forces
    reporter = EnsembleSpreadReporter(str(tmp_path / "s.csv"), 1, [paths[0], paths[2]])
    largest, mean, _ = reporter.spread(x, box)
    forces = []
    for p in (paths[0], paths[2]):
        module = torch.jit.load(str(p))
        xt = torch.as_tensor(x).clone().requires_grad_(True)
        (g,) = torch.autograd.grad(module(xt, torch.as_tensor(box)), xt)
        forces.append(-g.numpy())
    expected = np.linalg.norm(forces[0] - forces[1], axis=1) / 2  # std of two vectors
    assert largest == pytest.approx(expected.max(), rel=1e-9)
    assert mean == pytest.approx(expected.mean(), rel=1e-9)
    simulation = app.Simulation(topology, system, openmm.VerletIntegrator(0.0002),
                                openmm.Platform.getPlatformByName("Reference"))
    simulation.context.setPeriodicBoxVectors(*[openmm.Vec3(*row) for row in box])
    simulation.context.setPositions(x)
    simulation.reporters.append(EnsembleSpreadReporter(str(tmp_path / "w.csv"), 1,
                                                       [paths[0], paths[2]], threshold=1e-9))
    with pytest.warns(OutOfDistributionWarning, match="disagree"):
        simulation.step(1)
    simulation.reporters[:] = [EnsembleSpreadReporter(str(tmp_path / "x.csv"), 1,
                                                      [paths[0], paths[2]], threshold=1e-9,
                                                      stop=True)]
    with pytest.raises(OutOfDistributionError):
        simulation.step(1)
    with pytest.raises(ValueError, match="at least two"):
        EnsembleSpreadReporter(str(tmp_path / "y.csv"), 1, [paths[0]])


def test_core_repulsion_walls_off_unseen_distances_and_is_smooth():
    from openmm_geom.training.energy_force import closest_distances

    m = AttentionPotential([8, 8], cutoff=0.45, features=8, layers=1, heads=2, dtype=torch.float64)
    frames = np.array([[[0.0, 0.0, 0.0], [r, 0.0, 0.0]] for r in (0.25, 0.3, 0.35)])
    assert closest_distances(m, frames) == {(8, 8): pytest.approx(0.25)}
    m.set_repulsion({(8, 8): 0.2})
    def repulsion(r):
        x = torch.tensor([[[0.0, 0.0, 0.0], [r, 0.0, 0.0]]], dtype=torch.float64, requires_grad=True)
        e = m.repulsion_energies(1, 2, m.pairs(x, None))
        (g,) = torch.autograd.grad(e.sum(), x)
        return float(e.detach()), float(g[0, 1, 0])
    assert repulsion(0.1)[0] == pytest.approx(2.0 ** 12 * smooth_envelope(torch.tensor(0.25), 1.0).item())
    assert repulsion(0.4 - 1e-6)[0] < 1e-12 and repulsion(0.4 + 1e-6) == (0.0, 0.0)
    e_data, f_data = repulsion(0.25)
    assert e_data < 0.1 and abs(f_data) < 3.0  # small where the data are (kJ/mol, kJ/mol/nm)
    scripted = torch.jit.script(m)
    x = torch.tensor([[0.0, 0.0, 0.0], [0.15, 0.0, 0.0]], dtype=torch.float64)
    assert float(scripted(x).detach()) == pytest.approx(float(m(x).detach()))


def test_one_pair_search_per_frame_serves_the_network_and_the_repulsion():
    """The network and the core repulsion share the pairs of one search per frame; over a
    batch the energies equal those of the frames one by one, and the network's own search
    (pairs=None) gives the same network energy."""
    rng = np.random.default_rng(5)
    m = AttentionPotential([8, 1, 1, 8, 1, 1], cutoff=0.45, features=8, layers=2, heads=2,
                           dtype=torch.float64)
    m.set_repulsion({(8, 8): 0.2, (1, 8): 0.08})
    x = torch.tensor(rng.uniform(0.0, 0.6, (3, 6, 3)))
    calls = []
    search = m.neighbors.forward
    m.neighbors.forward = lambda *a: calls.append(1) or search(*a)
    batch = m.energies(x)
    assert len(calls) == 3  # one per frame, not two
    del m.neighbors.forward
    single = torch.stack([m.energies(x[b:b + 1])[0] for b in range(3)])
    torch.testing.assert_close(batch, single, rtol=1e-12, atol=1e-12)
    pairs = m.pairs(x, None)
    torch.testing.assert_close(m.interaction_energies(x, None, pairs),
                               m.interaction_energies(x, None, None), rtol=0, atol=0)
    assert float(m.repulsion_energies(3, 6, pairs).min()) > 0  # the close pairs repel
    first, second, vectors, distances = pairs  # vectors: r_second - r_first, batch-wide indices
    flat = x.reshape(-1, 3)
    torch.testing.assert_close(vectors, flat[second] - flat[first], rtol=0, atol=1e-12)
    torch.testing.assert_close(distances, vectors.norm(dim=1), rtol=0, atol=1e-12)


def test_the_repulsion_flag_follows_the_weights_and_bad_positions_are_refused():
    """The repulsion is decided from a flag (no read-back of the buffer per call) that a
    state-dict load sets like set_repulsion; NaN positions still get one clear error."""
    m = AttentionPotential([8, 8], cutoff=0.45, features=8, layers=1, heads=2, dtype=torch.float64)
    x = torch.tensor([[0.0, 0.0, 0.0], [0.12, 0.0, 0.0]], dtype=torch.float64)
    plain = float(m(x).detach())
    m.set_repulsion({(8, 8): 0.2})
    assert m.has_repulsion and float(m(x).detach()) > plain + 1.0
    fresh = AttentionPotential([8, 8], cutoff=0.45, features=8, layers=1, heads=2,
                               dtype=torch.float64)
    assert not fresh.has_repulsion
    fresh.load_state_dict(m.state_dict())
    assert fresh.has_repulsion and float(fresh(x).detach()) == float(m(x).detach())
    m.set_repulsion({})
    assert not m.has_repulsion and float(m(x).detach()) == plain
    bad = x.clone()
    bad[1, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite"):
        m(bad)


# --------------------------------------------------------------- vector (angle-aware) channels
def vector_model(vector_features=4, angular_logits=True, dtype=torch.float64, atoms=12,
                 summed_messages=False):
    """Three layers, so that the angular logits (layers 2 onwards) are exercised."""
    m = AttentionPotential(WATER * atoms, cutoff=0.45, features=16, layers=3, heads=2, n_rbf=8,
                           dtype=dtype, seed=3, vector_features=vector_features,
                           angular_logits=angular_logits, summed_messages=summed_messages)
    m.set_energy_offsets({8: -3.0, 1: -1.0})
    return m


@pytest.fixture(scope="module")
def vectors():
    return vector_model()


@pytest.fixture(scope="module")
def summed():
    """Vector channels and summed scalar messages beside the softmax average."""
    return vector_model(summed_messages=True)


#: The fixture ``model``'s energy of ``water_like(12, triclinic_box(), seed=12)`` computed by the
#: model before vector channels existed (commit 7b7edd6), kJ/mol.
DISTANCE_ONLY_ENERGY = -78.0246000213151
LAYER_KEYS = ["attention", "sink", "receiver.weight", "receiver.bias", "sender.weight",
              "edge.weight", "value.weight", "filter.weight", "filter.bias", "output.weight",
              "output.bias", "norm.weight", "norm.bias"]


def test_no_vector_features_is_the_distance_only_model(model):
    """vector_features = 0 (the default) keeps the parameters, hyper-parameters and energies of
    the model from before vectors, and hyper-parameters without the new keys rebuild it."""
    assert [k for k in model.state_dict() if k.startswith("layers.0.")] == \
        ["layers.0." + k for k in LAYER_KEYS]
    assert not {"vector_features", "angular_logits", "vector_scale"} & set(model.hyperparameters)
    box = triclinic_box()
    x = water_like(12, box, seed=12)
    e, f = energy_forces(model, x, box)
    assert e == pytest.approx(DISTANCE_ONLY_ENERGY, rel=1e-10)
    explicit = AttentionPotential(WATER * 12, cutoff=0.45, features=16, layers=2, heads=2,
                                  n_rbf=8, dtype=torch.float64, seed=3, vector_features=0)
    assert list(explicit.state_dict()) == list(model.state_dict())
    rebuilt = AttentionPotential.from_hyperparameters(WATER * 12, dict(model.hyperparameters))
    rebuilt.load_state_dict(model.state_dict())  # strict
    assert energy_forces(rebuilt, x, box)[0] == e
    # a model with vectors records them and rebuilds with them; angular logits from layer 2 on
    keys = set(vector_model().state_dict())
    assert "layers.1.angle_receiver.weight" in keys and "layers.0.angle_receiver.weight" not in keys
    with_vectors = vector_model(vector_features=3, angular_logits=False)
    assert not any("angle_" in k for k in with_vectors.state_dict())
    hp = with_vectors.hyperparameters
    assert (hp["vector_features"], hp["angular_logits"], hp["vector_scale"]) == (3, False, 0.125)
    again = AttentionPotential.from_hyperparameters(WATER * 12, dict(hp))
    again.load_state_dict(with_vectors.state_dict())
    assert energy_forces(again, x, box)[0] == energy_forces(with_vectors, x, box)[0]


def test_vector_channels_change_the_energy(vectors):
    """Not a model that ignores its vectors: the vector messages move the energy."""
    x = water_like(12, np.eye(3) * 1.2, seed=1)
    e0, _ = energy_forces(vectors, x)
    silent = vector_model()
    for layer in silent.layers:
        layer.vector_scale = 0.0
    assert abs(energy_forces(silent, x)[0] - e0) > 1e-4  # 1.3e-3 kJ/mol untrained


@pytest.mark.parametrize("angular_logits,summed_messages", [(True, False), (False, False),
                                                             (True, True)])
def test_vector_channels_are_invariant_under_rotation_reflection_translation(angular_logits,
                                                                              summed_messages):
    m = vector_model(angular_logits=angular_logits, summed_messages=summed_messages)
    x = water_like(12, np.eye(3) * 1.2, seed=1)
    e0, f0 = energy_forces(m, x)
    rotation = random_rotation(3)
    reflection = np.diag([-1.0, 1.0, 1.0]) @ random_rotation(4)  # det -1
    for q, shift in ((rotation, np.array([3.1, -2.0, 0.7])), (reflection, np.zeros(3))):
        e1, f1 = energy_forces(m, x @ q.T + shift)
        assert e1 == pytest.approx(e0, rel=1e-10, abs=1e-10)
        assert np.allclose(f1, f0 @ q.T, atol=1e-8)


@pytest.mark.parametrize("angular_logits,summed_messages", [(True, False), (False, False),
                                                             (True, True)])
def test_vector_channels_continuous_when_a_third_atom_crosses_the_cutoff(angular_logits,
                                                                          summed_messages):
    """Atom 2 leaves the cutoff sphere of atom 0, which keeps its bonded neighbour 1 (at an
    angle, so that the vector messages and the angular logits carry it): energy and forces
    change continuously, atom 2's force fades to zero inside and is exactly zero outside."""
    cutoff = 0.4
    # 16 features: with 8 the readout's last layer norm has 2 channels and is nearly constant
    m = AttentionPotential([8, 1, 1], cutoff=cutoff, features=16, layers=3, heads=2, n_rbf=6,
                           dtype=torch.float64, seed=1, vector_features=4,
                           angular_logits=angular_logits, summed_messages=summed_messages)
    direction = np.array([-0.6, 0.8, 0.0])  # farther than r from atom 1 at (0.096, 0, 0)
    def configuration(r):
        return np.array([[0.0, 0.0, 0.0], [0.096, 0.0, 0.0], r * direction])
    delta = 1e-4
    (e_in, f_in), (e_out, f_out) = (energy_forces(m, configuration(cutoff - delta)),
                                    energy_forces(m, configuration(cutoff + delta)))
    assert abs(e_in - e_out) < 1e-8
    assert np.abs(f_in - f_out).max() < 1e-4
    assert np.abs(f_in[2]).max() < 1e-4 and np.abs(f_out[2]).max() == 0.0
    # and well inside, atom 2 does feel atom 0
    assert np.abs(energy_forces(m, configuration(0.8 * cutoff))[1][2]).max() > 1e-3


def test_vector_model_scripted_and_saved_equals_eager(tmp_path):
    box = triclinic_box()
    x = water_like(12, box, seed=7)
    for dtype, rel in ((torch.float32, 1e-5), (torch.float64, 1e-10)):
        m = vector_model(dtype=dtype)
        path = tmp_path / f"vectors_{dtype}.pt"
        torch.jit.save(torch.jit.script(m), str(path))
        loaded = torch.jit.load(str(path))
        for module in (m, loaded):
            xt = torch.as_tensor(x, dtype=dtype).clone().requires_grad_(True)
            e = module(xt, torch.as_tensor(box, dtype=dtype))
            (g,) = torch.autograd.grad(e, xt)
            if module is m:
                e_eager, f_eager = float(e.detach()), -g
            else:
                assert float(e.detach()) == pytest.approx(e_eager, rel=rel)
                assert float((-g - f_eager).abs().max()) <= rel * float(f_eager.abs().max())


def test_vector_model_batch_equals_frames_one_by_one(vectors):
    boxes = np.stack([triclinic_box(length) for length in (1.1, 1.15, 1.2)])
    x = torch.tensor(np.stack([water_like(12, b, seed=20 + k) for k, b in enumerate(boxes)]),
                     requires_grad=True)
    batch = vectors.energies(x, torch.tensor(boxes))
    (g_batch,) = torch.autograd.grad(batch.sum(), x)
    for k in range(3):
        e, f = energy_forces(vectors, x[k].detach(), boxes[k])
        assert float(batch[k].detach()) == pytest.approx(e, rel=1e-12)
        assert np.allclose(-g_batch[k].numpy(), f, rtol=0, atol=1e-10)


def test_vector_features_from_the_potential_settings(tmp_path):
    """``--vector-features`` reaches the model, and its checkpoint rebuilds it."""
    from openmm_geom.models.potentials import build_potential
    from openmm_geom.training.checkpoints import load_potential, save_potential
    from openmm_geom.settings import override
    from openmm_geom.workflows.config import PotentialSettings, budget

    assert budget("production", "attention").model_options(0)["vector_features"] == 8
    assert budget("quick", "attention").model_options(0)["vector_features"] == 4
    assert "vector_features" not in override(budget("quick", "attention"),
                                             vector_features=0).model_options(0)
    settings = PotentialSettings(features=8, layers=2, heads=2, n_rbf=6, vector_features=3,
                                 angular_logits=False, vector_scale=0.5, dtype="float64")
    m = build_potential("attention", WATER * 12, **settings.model_options(seed=1))
    assert m.hyperparameters["vector_features"] == 3 and not m.hyperparameters["angular_logits"]
    assert m.hyperparameters["vector_scale"] == 0.5 and "summed_messages" not in m.hyperparameters
    summed = build_potential("attention", WATER * 12, **override(
        settings, summed_messages=True).model_options(seed=1))
    assert summed.hyperparameters["summed_messages"] is True
    assert summed.layers[0].output.in_features == 2 * 8 + 3  # average, sum, vector dots
    rebuilt, _ = load_potential(save_potential(summed, tmp_path / "s.ckpt"))
    assert rebuilt.hyperparameters["summed_messages"] is True
    loaded, _ = load_potential(save_potential(m, tmp_path / "m.ckpt"))
    box = triclinic_box()
    x = water_like(12, box, seed=3)
    assert energy_forces(loaded, x, box)[0] == energy_forces(m, x, box)[0]
    with pytest.raises(ValueError, match="non-negative|>= 0"):
        PotentialSettings(vector_features=-1)
    with pytest.raises(ValueError, match="vector_features"):
        AttentionPotential(WATER, vector_features=-2)
