"""Trajectory files -> positions, boxes and frame spacing (nm, ps), with clear errors.

Any mdtraj-readable file (DCD, XTC, HDF5, PDB, ...) with a topology, or an npz with
``positions`` (frames, atoms, 3) in nm (e.g. the files ``openmm-geom datagen`` writes), optionally
``box_vectors`` (frames, 3, 3) nm and ``save_interval_ps``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

import numpy as np

__all__ = ["read_positions", "as_mdtraj_topology"]


def as_mdtraj_topology(topology):
    """An ``mdtraj.Topology`` from a structure file path, an mdtraj or an OpenMM topology."""
    import mdtraj

    if isinstance(topology, mdtraj.Topology):
        return topology
    if isinstance(topology, (str, bytes)) or hasattr(topology, "__fspath__"):
        return mdtraj.load_topology(str(topology))
    return mdtraj.Topology.from_openmm(topology)


def read_positions(path: Union[str, os.PathLike], topology=None, *, stride: int = 1,
                   n_atoms: Optional[int] = None):
    """(positions (T, N, 3) nm float32, boxes (T, 3, 3) nm or None, timestep_ps or None).

    ``topology`` (a PDB path or mdtraj/OpenMM topology) is needed for mdtraj formats other
    than PDB/HDF5. ``n_atoms`` checks the atom count against the system's.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no trajectory file at {path}")
    if stride < 1:
        raise ValueError("stride must be >= 1")
    boxes = timestep = None
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as data:
                if "positions" not in data.files:
                    raise ValueError(f"{path} has no 'positions' array (frames, atoms, 3) in nm")
                positions = np.asarray(data["positions"][::stride], dtype=np.float32)
                if "box_vectors" in data.files:
                    boxes = np.asarray(data["box_vectors"][::stride], dtype=np.float32)
                if "save_interval_ps" in data.files:
                    timestep = float(data["save_interval_ps"]) * stride
        except ValueError:
            raise
        except Exception as error:
            raise ValueError(f"cannot read {path}: {error}") from error
    else:
        import mdtraj

        kwargs = {}
        if topology is not None and path.suffix not in (".pdb", ".h5"):
            kwargs["top"] = as_mdtraj_topology(topology)
        try:
            traj = mdtraj.load(str(path), stride=stride, **kwargs)
        except Exception as error:
            raise ValueError(f"cannot read trajectory {path}: {error}") from error
        positions = traj.xyz.astype(np.float32)
        if traj.unitcell_vectors is not None:
            boxes = traj.unitcell_vectors.astype(np.float32)
        if path.suffix == ".h5" and traj.n_frames > 1:  # DCD/XTC times are often frame numbers
            timestep = float(traj.timestep)
    if positions.ndim != 3 or positions.shape[2] != 3:
        raise ValueError(f"{path}: positions must have shape (frames, atoms, 3), got "
                         f"{positions.shape}")
    if n_atoms is not None and positions.shape[1] != n_atoms:
        raise ValueError(f"{path} has {positions.shape[1]} atoms per frame but the topology "
                         f"has {n_atoms}")
    bad = ~np.isfinite(positions).reshape(len(positions), -1).all(1)
    if bad.any():
        raise ValueError(f"{path}: frame {int(np.flatnonzero(bad)[0])} has NaN or infinite "
                         "coordinates")
    return positions, boxes, timestep
