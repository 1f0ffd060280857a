"""The names a setting or a model file may ask for, importable without torch.

:data:`ARCHITECTURES` (all-atom potentials, :mod:`.potentials`) and :data:`MIXER_NAMES`
(token mixers, :mod:`.mixers`) are defined here once, so that settings classes can offer them
as choices (and ``openmm-geom ... --help`` list them) without loading the models.
"""
__all__ = ["ARCHITECTURES", "MIXER_NAMES"]

ARCHITECTURES = ("attention", "et", "tensornet")
MIXER_NAMES = ("pool", "subformer", "submixer", "gvp", "gvp+subformer", "gvp+submixer")
