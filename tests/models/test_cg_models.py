"""Coarse-grained building blocks: mappings, priors, CGSchNet, force matching, OpenMM export."""
import numpy as np
import openmm
import pytest
import torch

from openmm_geom.data.mapping import (alanine_backbone_cb_mapping, ca_mapping, group_mapping,
                                      optimized_force_map, slice_mapping)
from openmm_geom.export import export_cg_model
from openmm_geom.models.cgschnet import CGSchNet, stack_ensemble
from openmm_geom.training.checkpoints import load_cgschnet, save_cgschnet
from openmm_geom.models.priors import CGPriors, chain_topology, fit_priors
from openmm_geom.errors import ModelFileError
from openmm_geom.openmm import create_system
from openmm_geom.openmm.priors import prior_forces
from openmm_geom.training.force_matching import (TrainConfig, force_matching_loss,
                                                 time_block_folds, train_ensemble, train_fold)
from openmm_geom.models.geometry import dihedral_angles
from openmm_geom.units import MOLAR_GAS_CONSTANT_KJ

KT = MOLAR_GAS_CONSTANT_KJ * 300.0
CHAIN = [(0, 1), (1, 2), (2, 3), (3, 4), (2, 5)]  # capped alanine's 6 beads


# --- mappings -----------------------------------------------------------------------------

def test_slice_and_group_maps(rng):
    x = rng.normal(size=(4, 5, 3))
    f = rng.normal(size=(4, 5, 3))
    sliced = slice_mapping(5, [3, 0], bead_types=[1, 2])
    np.testing.assert_array_equal(sliced.map_positions(x), x[:, [3, 0]])
    np.testing.assert_array_equal(sliced.map_forces(f), f[:, [3, 0]])
    masses = np.array([1.0, 3.0, 2.0, 2.0, 4.0])
    com = group_mapping(5, [[0, 1], [2, 3, 4]], bead_types=[0, 0], masses=masses)
    expected = (x[:, 0] * 1 + x[:, 1] * 3) / 4
    np.testing.assert_allclose(com.map_positions(x)[:, 0], expected)
    np.testing.assert_allclose(com.map_forces(f)[:, 1], f[:, 2:].sum(1))  # forces are summed
    again = type(com).from_dict(com.to_dict())
    np.testing.assert_allclose(again.coordinate_map, com.coordinate_map)


def test_mapping_errors(rng, alanine_pdb):
    with pytest.raises(IndexError, match="atom index 9 out of range for 5 atoms"):
        slice_mapping(5, [1, 9], bead_types=[0, 0])
    with pytest.raises(ValueError, match="atom 1 belongs to more than one bead"):
        group_mapping(5, [[0, 1], [1, 2]], bead_types=[0, 0])
    mapping = alanine_backbone_cb_mapping(alanine_pdb.topology)
    with pytest.raises(ValueError, match="positions have 21 atoms but the mapping expects 22"):
        mapping.map_positions(rng.normal(size=(2, 21, 3)))
    assert mapping.bead_types == [6, 7, 6, 6, 7, 6]
    assert mapping.groups == [[4], [6], [8], [14], [16], [10]]
    assert len(ca_mapping(alanine_pdb.topology).groups) == 1


def test_optimized_force_map_keeps_the_mean_force_and_cuts_the_noise(rng):
    """Gaussian all-atom model U = x^T K x / 2 (exactly samplable): bead = atom 0, which is
    stiffly bonded to atom 1 (a 'hydrogen') and softly to atom 2. The CG mean force on x_0 is
    -kT x_0 / Sigma_00 with Sigma = kT K^-1; both force maps must give it, the optimized one with
    far less scatter."""
    stiff, soft = 300.0 * KT, 1.0 * KT
    k = np.array([[stiff + soft, -stiff, -soft],
                  [-stiff, stiff + 0.1 * KT, 0.0],
                  [-soft, 0.0, soft + 0.5 * KT]])
    covariance = KT * np.linalg.inv(k)
    x = rng.multivariate_normal(np.zeros(3), covariance, size=(20000, 3)).transpose(0, 2, 1)
    f = -np.einsum("ab,mbc->mac", k, x)
    sliced = slice_mapping(3, [0], bead_types=[1])
    optimized = optimized_force_map(sliced, f)
    np.testing.assert_allclose(optimized.force_map @ optimized.coordinate_map.T, [[1.0]],
                               atol=1e-10)
    np.testing.assert_array_equal(optimized.coordinate_map, sliced.coordinate_map)
    x0 = sliced.map_positions(x).ravel()
    expected_slope = -KT / covariance[0, 0]
    residuals = {}
    for name, mapping in (("slice", sliced), ("optimized", optimized)):
        mapped = mapping.map_forces(f).ravel()
        slope = np.dot(x0, mapped) / np.dot(x0, x0)
        assert slope == pytest.approx(expected_slope, rel=0.05), name
        residuals[name] = np.var(mapped - expected_slope * x0)
    assert residuals["optimized"] < 0.05 * residuals["slice"]
    again = type(optimized).from_dict(optimized.to_dict())
    np.testing.assert_allclose(again.force_map, optimized.force_map)
    with pytest.raises(ValueError, match="forces must have shape"):
        optimized_force_map(sliced, f[:, :2])
    with pytest.raises(ValueError, match="NaN"):
        optimized_force_map(sliced, np.where(f > 1e9, 0, np.nan))


# --- priors -------------------------------------------------------------------------------

def _sample_bond(rng, k, r0, n):
    """Distances with density r^2 exp(-k (r - r0)^2 / 2kT) in 3D (rejection sampling)."""
    r = rng.normal(r0, np.sqrt(KT / k), size=4 * n)
    keep = rng.random(len(r)) < (r / r.max()) ** 2
    r = r[keep][:n]
    directions = rng.normal(size=(len(r), 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    return np.stack([np.zeros_like(directions), directions * r[:, None]], axis=1)


def test_bond_prior_fits_recover_the_force_constant(rng):
    k, r0 = 2000.0, 0.4
    x = _sample_bond(rng, k, r0, 100_000)
    boltzmann = fit_priors(x, 300.0, bonds=[(0, 1)], method="boltzmann", repulsions=[])
    assert boltzmann.bond_k.item() == pytest.approx(k, rel=0.03)  # Jacobian r^2 removed
    assert boltzmann.bond_r0.item() == pytest.approx(r0, abs=2e-3)
    moment = fit_priors(x, 300.0, bonds=[(0, 1)], method="cgnet", repulsions=[])
    assert moment.bond_k.item() == pytest.approx(KT / np.linalg.norm(x[:, 1], axis=1).var())


# phi histogram (60 bins over [-pi, pi)) of capped alanine's 6-bead map in
# ../shared/data/ala2_vacuum_300K_s1.npz (100 ns, amber14, vacuum, 300 K)
ALANINE_PHI_COUNTS = [134, 590, 1621, 3187, 4348, 4393, 3431, 2380, 1606, 1101, 890, 879, 1033,
                      1819, 4101, 9144, 15945, 19060, 14402, 6909, 2324, 560, 109, 15, 1] \
    + [0] * 29 + [1, 0, 0, 0, 1, 16]


def test_dihedral_prior_is_high_where_the_data_never_go(rng):
    """A dihedral distributed like capped alanine's phi (never in 0 < phi < 2.5 rad): the
    Fourier prior must be low in the basins and high where the data never go. (Fitted to the
    visited bins only, the series dug a 260 kJ/mol well at phi = +1 rad.)"""
    edges = np.linspace(-np.pi, np.pi, 61)
    phi = np.concatenate([rng.uniform(edges[i], edges[i + 1], c)
                          for i, c in enumerate(ALANINE_PHI_COUNTS)])
    frames = len(phi)
    x = np.zeros((frames, 4, 3))
    x[:, 1] = [0.15, 0.0, 0.0]
    x[:, 2] = [0.15 + 0.15 * np.cos(np.radians(70)), 0.15 * np.sin(np.radians(70)), 0.0]
    axis = (x[:, 2] - x[:, 1]) / np.linalg.norm(x[:, 2] - x[:, 1], axis=1, keepdims=True)
    normal = np.cross(x[:, 1] - x[:, 0], axis)
    normal /= np.linalg.norm(normal, axis=1, keepdims=True)
    m = np.cross(normal, axis)
    angle = np.radians(110)
    x[:, 3] = (x[:, 2] - 0.15 * np.cos(angle) * axis
               + 0.15 * np.sin(angle) * (np.cos(phi)[:, None] * m + np.sin(phi)[:, None] * normal))
    x += rng.normal(0, 1e-3, x.shape)  # bonds and angles fluctuate a little
    priors = fit_priors(x, 300.0, bonds=[(0, 1), (1, 2), (2, 3)], dihedral_harmonics=3)
    torsion = (0, 1, 2, 3)
    assert tuple(priors.dihedrals[0].tolist()) == torsion
    fitted_phi = dihedral_angles(torch.tensor(x), torch.tensor([torsion]))[:, 0].numpy()
    np.testing.assert_allclose(np.mean(fitted_phi), np.mean(phi), atol=0.05)  # sign convention
    grid = torch.linspace(-np.pi, np.pi, 73, dtype=torch.float64)
    orders = torch.arange(1, 4, dtype=torch.float64)
    energy = ((priors.dihedral_cos[0] * torch.cos(grid[:, None] * orders)).sum(-1)
              + (priors.dihedral_sin[0] * torch.sin(grid[:, None] * orders)).sum(-1)).numpy()
    energy -= energy.min()
    inside = (grid.numpy() > -1.6) & (grid.numpy() < -1.1)  # the C7eq/alpha_R basin
    outside = (grid.numpy() > 0.3) & (grid.numpy() < 2.5)
    assert energy[inside].max() < 2 * KT
    assert energy[outside].min() > energy[inside].max() + 4 * KT


def test_degenerate_data_raise_instead_of_nan():
    x = np.zeros((10, 2, 3))
    x[:, 1, 0] = 0.3
    with pytest.raises(ValueError, match="no fluctuation"):
        fit_priors(x, 300.0, bonds=[(0, 1)], repulsions=[])
    with pytest.raises(ValueError, match="NaN"):
        fit_priors(np.full((10, 2, 3), np.nan), 300.0, bonds=[(0, 1)])


def test_chain_topology():
    angles, dihedrals, far = chain_topology(6, CHAIN)
    assert (1, 2, 3) in angles and (1, 2, 5) in angles and len(angles) == 5
    assert (0, 1, 2, 3) in dihedrals and (1, 2, 3, 4) in dihedrals
    assert far == [(0, 3), (0, 4), (0, 5), (1, 4), (4, 5)]


@pytest.fixture
def alanine_like(rng):
    """A 6-bead chain with fluctuating geometry (nm), a stand-in for mapped alanine."""
    base = np.array([[0.0, 0, 0], [0.13, 0.02, 0], [0.2, 0.13, 0], [0.35, 0.13, 0.02],
                     [0.42, 0.25, 0.05], [0.2, 0.18, 0.14]])
    return base + rng.normal(0, 0.01, size=(2000, 6, 3))


def test_priors_torch_equals_native_openmm(alanine_like):
    priors = fit_priors(alanine_like, 300.0, bonds=CHAIN, dihedral_harmonics=3)
    assert len(priors.dihedrals) == 4 and len(priors.repulsions) == 5
    system = openmm.System()
    for _ in range(6):
        system.addParticle(12.0)
    for force in prior_forces(priors.to_config()):
        system.addForce(force)
    context = openmm.Context(system, openmm.VerletIntegrator(0.001),
                             openmm.Platform.getPlatformByName("Reference"))
    for frame in alanine_like[:5]:
        context.setPositions(frame)
        state = context.getState(getEnergy=True, getForces=True)
        x = torch.tensor(frame, requires_grad=True)
        energy = priors(x)
        (grad,) = torch.autograd.grad(energy, x)
        assert state.getPotentialEnergy()._value == pytest.approx(energy.item(), rel=1e-10)
        np.testing.assert_allclose(state.getForces(asNumpy=True)._value, -grad.numpy(),
                                   rtol=1e-8, atol=1e-8)
    restored = CGPriors.from_config(priors.to_config())
    x = torch.tensor(alanine_like[:10])
    torch.testing.assert_close(restored(x), priors(x))


# --- CGSchNet -----------------------------------------------------------------------------

def _model(priors=None, seed=0, members=1, **kw):
    return CGSchNet([6, 7, 6, 6, 7, 6], priors, features=16, filters=16, n_rbf=8,
                    output_hidden=8, cutoff=0.5, members=members, seed=seed, **kw)


def test_cgschnet_invariances_and_scripting(alanine_like, rng):
    model = _model()
    x = torch.tensor(alanine_like[:8])
    scripted = torch.jit.script(model)
    torch.testing.assert_close(scripted(x), model(x))
    rotation, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    moved = x @ torch.tensor(rotation.T) + torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64)
    torch.testing.assert_close(model(moved), model(x))
    swapped = x[:, [3, 1, 2, 0, 4, 5]]  # beads 0 and 3 share type 6: the network is invariant
    torch.testing.assert_close(model(swapped), model(x))
    assert model(x[0]).dim() == 0


def test_cgschnet_energy_is_smooth_at_the_cutoff():
    model = _model()
    x = torch.zeros(1, 6, 3, dtype=torch.float64)
    x[0, :, 0] = torch.arange(6) * 2.0  # isolated beads
    distances = torch.linspace(0.49, 0.51, 41)
    energies = []
    for d in distances:
        y = x.clone()
        y[0, 1] = y[0, 0] + torch.tensor([d, 0.0, 0.0])
        energies.append(model(y).item())
    steps = np.abs(np.diff(energies))
    assert steps.max() < 1e-4  # continuous; no jump when the pair leaves the cutoff


def test_ensemble_is_the_mean_of_its_members(alanine_like):
    members = [_model(seed=s) for s in range(3)]
    ensemble = stack_ensemble(members)
    x = torch.tensor(alanine_like[:5])
    torch.testing.assert_close(ensemble(x), torch.stack([m(x) for m in members]).mean(0))
    per_member = ensemble(x.unsqueeze(0).expand(3, 5, 6, 3))
    torch.testing.assert_close(per_member, torch.stack([m(x) for m in members]))


def test_ensemble_forces_in_replica_chunks_equal_one_call(alanine_like):
    from openmm_geom.simulate import EnsembleForces

    ensemble = stack_ensemble([_model(seed=s) for s in range(3)])
    x = torch.tensor(alanine_like[:7])
    whole = EnsembleForces(ensemble)
    assert whole.chunk >= 7
    chunked = EnsembleForces(ensemble)
    chunked.chunk = 3  # 3 + 3 + 1 replicas
    for got, want in zip(chunked(x), whole(x)):
        assert got.shape == want.shape
        torch.testing.assert_close(got, want)


def test_save_load_round_trip_and_bad_files(alanine_like, tmp_path):
    model = _model(fit_priors(alanine_like, 300.0, bonds=CHAIN), members=2)
    save_cgschnet(model, tmp_path / "cg.pt", {"note": "x"})
    restored, meta = load_cgschnet(tmp_path / "cg.pt")
    x = torch.tensor(alanine_like[:4])
    torch.testing.assert_close(restored(x), model(x))
    assert meta == {"note": "x"}
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(ModelFileError, match="junk.pt is not a CG model file"):
        load_cgschnet(tmp_path / "junk.pt")
    with pytest.raises(ValueError, match=r"expected positions of shape \(B, 6, 3\)"):
        model(torch.zeros(2, 5, 3, dtype=torch.float64))


# --- force matching -----------------------------------------------------------------------

def test_time_block_folds_are_disjoint_with_gaps():
    folds = time_block_folds(100, 5, gap=3)
    validation = np.concatenate([v for _, v in folds])
    assert np.array_equal(np.sort(validation), np.arange(100))
    for train, val in folds:
        assert not set(train) & set(range(val[0] - 3, val[-1] + 4))


def _teacher_data(alanine_like, seed=3):
    """Forces from a known CGSchNet + priors + noise: force matching must approach it."""
    priors = fit_priors(alanine_like, 300.0, bonds=CHAIN)
    teacher = _model(priors, seed=seed)
    x = torch.tensor(alanine_like).requires_grad_(True)
    (grad,) = torch.autograd.grad(teacher(x).sum(), x)
    noise = np.random.default_rng(0).normal(0, 0.1, size=grad.shape)
    return priors, alanine_like, -grad.numpy() + noise


def test_force_matching_learns_and_restores_the_best_state(alanine_like, tmp_path):
    priors, x, f = _teacher_data(alanine_like)
    config = TrainConfig(epochs=4, batch_size=128, learning_rate=3e-3, folds=2, patience=10,
                         gap_frames=5)
    make = lambda seed: _model(priors, seed=seed)  # noqa: E731
    ensemble, results = train_ensemble(make, x, f, config, out_dir=tmp_path, progress=False)
    assert ensemble.members == 2 and (tmp_path / "training.json").exists()
    for r in results:
        assert r.history["validation"][r.best_epoch] == min(r.history["validation"])
        assert r.history["validation"][-1] < r.history["validation"][0]
        # the restored model is the best epoch's, not the last one's
        model = make(config.seed + r.fold)
        model.load_state_dict(r.state)
        xs, fs = torch.tensor(x[:200]), torch.tensor(f[:200])
        assert np.isfinite(force_matching_loss(model, xs, fs, create_graph=False).item())


def test_training_resumes_identically(alanine_like, tmp_path):
    priors, x, f = _teacher_data(alanine_like)
    xt, ft = torch.tensor(x), torch.tensor(f)
    train, val = time_block_folds(len(x), 2, 5)[0]
    make = lambda seed: _model(priors, seed=seed)  # noqa: E731
    config = TrainConfig(epochs=4, folds=2, patience=10)
    full = train_fold(make, xt, ft, train, val, config, 0, tmp_path / "a.ckpt", progress=False)

    def interrupt(epoch, history):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_fold(make, xt, ft, train, val, config, 0, tmp_path / "b.ckpt", progress=False,
                   callback=interrupt)
    resumed = train_fold(make, xt, ft, train, val, config, 0, tmp_path / "b.ckpt", progress=False)
    assert resumed.history["validation"] == full.history["validation"]
    for name, value in full.state.items():
        torch.testing.assert_close(resumed.state[name], value, rtol=0, atol=0)
    # a checkpoint of other settings (or another fold) is refused, not continued
    from openmm_geom.errors import CheckpointMismatchError

    with pytest.raises(CheckpointMismatchError, match="another training run"):
        train_fold(make, xt, ft, train, val, TrainConfig(epochs=5, folds=2, patience=10), 0,
                   tmp_path / "b.ckpt", progress=False)
    with pytest.raises(CheckpointMismatchError, match="another training run"):
        train_fold(make, xt, ft, train, val, config, 1, tmp_path / "b.ckpt", progress=False)


def test_training_rejects_bad_data(alanine_like):
    make = lambda seed: _model(seed=seed)  # noqa: E731
    with pytest.raises(ValueError, match="must both be"):
        train_ensemble(make, alanine_like, alanine_like[:-1], TrainConfig())
    bad = alanine_like.copy()
    bad[3, 2, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        train_ensemble(make, bad, alanine_like, TrainConfig())


# --- OpenMM export ------------------------------------------------------------------------

@pytest.mark.parametrize("native_priors", [True, False])
@pytest.mark.parametrize("replicas", [1, 3])
def test_exported_cg_model_in_openmm(native_priors, replicas, alanine_like, tmp_path):
    model = _model(fit_priors(alanine_like, 300.0, bonds=CHAIN, dihedral_harmonics=2), members=2)
    path = tmp_path / "cg.pt"
    export_cg_model(model, path, example_positions=alanine_like[0], masses=[12.0] * 6,
                    native_priors=native_priors, replicas=replicas)
    system = create_system(path)
    assert system.getNumParticles() == 6 * replicas
    context = openmm.Context(system, openmm.VerletIntegrator(0.001),
                             openmm.Platform.getPlatformByName("Reference"))
    positions = np.concatenate(alanine_like[10:10 + replicas])
    context.setPositions(positions)
    state = context.getState(getEnergy=True, getForces=True)
    x = torch.tensor(positions.reshape(replicas, 6, 3), requires_grad=True)
    energy = model(x).sum()
    (grad,) = torch.autograd.grad(energy, x)
    assert state.getPotentialEnergy()._value == pytest.approx(energy.item(), rel=1e-5)
    np.testing.assert_allclose(state.getForces(asNumpy=True)._value, -grad.reshape(-1, 3).numpy(),
                               rtol=1e-5, atol=1e-5 * np.abs(grad.numpy()).max())
