"""The package version, recorded in every file openmm-geom writes."""
__version__ = "0.1.0"

__all__ = ["__version__"]
