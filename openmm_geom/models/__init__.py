"""Models: plain, scriptable ``torch.nn.Module``s. Training code never lives here."""
from .geometry import Dihedrals, backbone_quadruplets, bond_angles, bond_lengths, dihedral_angles

__all__ = ["Dihedrals", "dihedral_angles", "bond_lengths", "bond_angles", "backbone_quadruplets"]
