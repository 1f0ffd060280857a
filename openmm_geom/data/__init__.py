"""Data bundled with openmm-geom and helpers to locate it."""
from importlib import resources
from pathlib import Path

__all__ = ["bundled"]


def bundled(name: str) -> Path:
    """Path of a bundled data file, e.g. ``bundled("alanine-dipeptide.pdb")``."""
    path = Path(str(resources.files(__name__).joinpath(name)))
    if not path.is_file():
        raise FileNotFoundError(f"no bundled data file {name!r} in {path.parent}")
    return path
