"""Data: reference runs, trajectories, mappings and datasets (no model code here).

- :mod:`.datagen`: all-atom OpenMM runs saving positions and instantaneous forces (resumable);
- :mod:`.water`: flexible TIP3P water boxes for ML potentials;
- :mod:`.trajectories`: positions, boxes and frame spacing from trajectory files;
- :mod:`.mapping`: coarse-grained mappings and force maps;
- :mod:`.potential_data`: energy + force files and their time-block splits;
- :mod:`.timelagged`: time-lagged pairs for VAMPnet/SPIB;
- :mod:`.corpus`: the pretraining corpus of structures;
- :mod:`.path_dataset`, :mod:`.gene_regulatory`, :mod:`.md_classification`: path datasets
  for Deep Signature;
- :func:`bundled`: files shipped with the package (capped alanine, T4 lysozyme).
"""
from importlib import resources
from pathlib import Path

__all__ = ["bundled", "corpus", "datagen", "gene_regulatory", "mapping", "md_classification",
           "path_dataset", "potential_data", "timelagged", "trajectories", "water"]


def bundled(name: str) -> Path:
    """Path of a bundled data file, e.g. ``bundled("alanine-dipeptide.pdb")``."""
    path = Path(str(resources.files(__name__).joinpath(name)))
    if not path.is_file():
        raise FileNotFoundError(f"no bundled data file {name!r} in {path.parent}")
    return path
