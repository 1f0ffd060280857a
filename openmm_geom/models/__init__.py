"""Models: plain, scriptable ``torch.nn.Module``s. Training code never lives here."""
from .geometry import Dihedrals, backbone_quadruplets, dihedral_angles

__all__ = ["Dihedrals", "dihedral_angles", "backbone_quadruplets"]
