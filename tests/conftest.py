"""Shared fixtures. Tests run real OpenMM Contexts and real openmm-torch; nothing is mocked."""
import os
import sys
from pathlib import Path

import numpy as np
import pytest

import openmm_geom

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))  # test helpers (analytic.py)

openmm_geom.set_threads(int(os.environ.get("OPENMM_GEOM_THREADS", "2")))


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture
def alanine_pdb():
    import openmm.app as app

    from openmm_geom.data import bundled

    return app.PDBFile(str(bundled("alanine-dipeptide.pdb")))


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny training problems (500 x 32 matmuls): a 2-thread intra-op pool only adds contention
    on a shared machine (measured 6 s at 1 thread vs 25-100 s at 2). Restored afterwards."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
