"""Models: plain, scriptable ``torch.nn.Module`` classes; no training code, no file formats.

- :mod:`.geometry`: bond lengths, angles, dihedrals, :class:`Dihedrals` (a CV module);
- :mod:`.priors`, :mod:`.cgschnet`: CG priors and CGSchNet ensembles;
- :mod:`.atomistic`, :mod:`.attention`, :mod:`.torchmdnet`, :mod:`.potentials`: all-atom
  potentials (the base class, graph attention, TorchMD-Net adapters, the registry);
- :mod:`.geom2vec`, :mod:`.mixers`, :mod:`.heads`: geom2vec featurizer, token mixers,
  VAMPnet/SPIB heads;
- :mod:`.spectral_pooling`, :mod:`.deep_signature`: Deep Signature and its baselines.
"""
from .geometry import Dihedrals, backbone_quadruplets, bond_angles, bond_lengths, dihedral_angles

__all__ = ["Dihedrals", "dihedral_angles", "bond_lengths", "bond_angles", "backbone_quadruplets",
           "atomistic", "attention", "cgschnet", "deep_signature", "geom2vec", "geometry", "heads",
           "mixers", "potentials", "priors", "spectral_pooling", "torchmdnet"]
