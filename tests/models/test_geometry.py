"""Geometric CV modules against mdtraj and finite differences."""
import mdtraj
import numpy as np
import pytest
import torch

from openmm_geom.data import bundled
from openmm_geom.models import Dihedrals, backbone_quadruplets


def test_dihedrals_match_mdtraj(rng, alanine_pdb):
    traj = mdtraj.load(str(bundled("alanine-dipeptide.pdb")))
    xyz = traj.xyz[0] + rng.normal(0, 0.04, size=(50,) + traj.xyz[0].shape).astype(np.float32)
    traj = mdtraj.Trajectory(xyz, traj.topology)
    quads = backbone_quadruplets(alanine_pdb.topology)
    _, phi = mdtraj.compute_phi(traj)
    _, psi = mdtraj.compute_psi(traj)
    module = Dihedrals(quads)
    ours = np.stack([module(torch.as_tensor(x, dtype=torch.float64)).numpy() for x in xyz])
    difference = np.angle(np.exp(1j * (ours - np.concatenate([phi, psi], axis=1))))
    assert np.abs(difference).max() < 1e-5  # mdtraj works in float32


def test_dihedral_gradients_and_invariance(rng):
    x = torch.tensor(rng.normal(size=(6, 3)), dtype=torch.float64, requires_grad=True)
    module = Dihedrals([[0, 1, 2, 3], [2, 3, 4, 5]])
    assert torch.autograd.gradcheck(module, (x,))
    rotation, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    rotation *= np.sign(np.linalg.det(rotation))  # proper rotation: dihedrals keep their sign
    moved = x.detach() @ torch.as_tensor(rotation.T) + torch.tensor([1.0, -2.0, 0.5])
    torch.testing.assert_close(module(moved), module(x.detach()))
    mirrored = x.detach() * torch.tensor([-1.0, 1.0, 1.0])
    torch.testing.assert_close(module(mirrored), -module(x.detach()))


def test_out_of_range_quadruplet():
    with pytest.raises(Exception, match="indexes atom 9 but there are only 5 atoms"):
        torch.jit.script(Dihedrals([[0, 1, 2, 9]]))(torch.zeros(5, 3, dtype=torch.float64))
