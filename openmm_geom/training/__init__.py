"""Training: estimators that fit models to data, and the checkpoints they write.

Models never import this package; the OpenMM side never imports it either. Its modules:

- :mod:`.force_matching`: CGSchNet ensembles by force matching (time-block folds);
- :mod:`.energy_force`: attention / TorchMD-Net potentials on energies and forces;
- :mod:`.vamp`, :mod:`.spib`: VAMPnet and SPIB heads on time-lagged features;
- :mod:`.features`: geom2vec token features of trajectories (the heads' input);
- :mod:`.denoising`: denoising pretraining of a geom2vec backbone;
- :mod:`.signature_classifier`: Deep Signature and baselines, temporal cross-validation;
- :mod:`.checkpoints`: checkpoint files of trained potentials and CG models.
"""
__all__ = ["checkpoints", "denoising", "energy_force", "features", "force_matching",
           "signature_classifier", "spib", "vamp"]
