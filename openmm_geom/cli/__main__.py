"""``python -m openmm_geom.cli``: the same as the ``openmm-geom`` command."""
import sys

from . import main

sys.exit(main())
