"""End-to-end jobs assembled from the library: what ``openmm-geom <command>`` runs.

- :mod:`.coarse_grain`: ``openmm-geom cg`` (train | simulate | evaluate | reproduce);
- :mod:`.potential`: ``openmm-geom potential`` (train | export | simulate | evaluate | reproduce);
- :mod:`.cv`, :mod:`.cv_bias`: ``openmm-geom cv`` (geom2vec CVs, biased runs);
- :mod:`.signature`: ``openmm-geom signature``.
"""
__all__ = ["coarse_grain", "cv", "cv_bias", "potential", "signature"]
