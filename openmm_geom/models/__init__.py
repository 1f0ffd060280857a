"""Models: plain, scriptable ``torch.nn.Module`` classes; no training code, no file formats.

- :mod:`.geometry`: bond lengths, angles, dihedrals, :class:`Dihedrals` (a CV module);
- :mod:`.descriptors`: descriptor front ends (distances, angles, torsions, positions) and
  ``descriptor_cv`` (front end + any model, e.g. mlcolvar's, as one CV module);
- :mod:`.priors`, :mod:`.cgschnet`: CG priors and CGSchNet ensembles;
- :mod:`.atomistic`, :mod:`.attention`, :mod:`.torchmdnet`, :mod:`.potentials`: all-atom
  potentials (the base class, graph attention, TorchMD-Net adapters, the registry);
- :mod:`.geom2vec`, :mod:`.mixers`, :mod:`.heads`: geom2vec featurizer, token mixers,
  VAMPnet/SPIB heads;
- :mod:`.spectral_pooling`, :mod:`.deep_signature`: Deep Signature and its baselines;
- :mod:`.names`: the architecture and mixer names (no torch needed to read them).

The geometry functions below are loaded on first use, so that ``openmm_geom.models.names``
(which the settings classes read) does not load torch.
"""
__all__ = ["Dihedrals", "dihedral_angles", "bond_lengths", "bond_angles", "backbone_quadruplets",
           "atomistic", "attention", "cgschnet", "deep_signature", "descriptors", "geom2vec", "geometry", "heads",
           "mixers", "names", "potentials", "priors", "spectral_pooling", "torchmdnet"]

_GEOMETRY = ("Dihedrals", "dihedral_angles", "bond_lengths", "bond_angles",
             "backbone_quadruplets")


def __getattr__(name: str):
    if name in _GEOMETRY:
        from . import geometry

        return getattr(geometry, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
