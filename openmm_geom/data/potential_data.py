"""Energy+force training data for all-atom ML potentials, and leak-free time-block splits.

:func:`load_potential_data` reads a NumPy ``.npz`` in one of two layouts into a checked
:class:`PotentialData` (float64, OpenMM units):

* the :mod:`openmm_geom.data.datagen` format (``openmm-geom datagen``): ``positions``,
  ``forces``, ``potential_energies``, ``box_vectors`` (periodic runs), ``atomic_numbers``,
  ``masses``, ``topology_pdb``, ...;
* a generic format: ``positions`` (F, N, 3) nm, ``forces`` (F, N, 3) kJ/mol/nm, ``energies``
  (F,) kJ/mol, ``atomic_numbers`` (N,) and optionally ``box_vectors`` as (F, 3, 3) or one
  (3, 3) box for all frames (nm, rows a, b, c), ``masses`` (N,) amu, ``topology_pdb``.

Other keys are ignored. :func:`time_block_split` splits frames of one trajectory into
contiguous training, validation and test blocks separated by gaps, so that time-correlated
neighbouring frames do not appear on both sides of a split.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np

from ..io import sha256_of_arrays
from ..io import read_npz

__all__ = ["PotentialData", "load_potential_data", "time_block_split"]

_ENERGY_KEYS = ("energies", "potential_energies")
_BOX_KEYS = ("box_vectors", "boxes", "box")
_EXPECTED_UNITS = {"positions": "nm", "forces": "kJ/mol/nm", "energies": "kJ/mol",
                   "potential_energies": "kJ/mol", "box_vectors": "nm"}
_MAX_ATOMIC_NUMBER = 118


@dataclasses.dataclass(frozen=True, eq=False)
class PotentialData:
    """Frames of one system with reference energies and forces (OpenMM units, float64).

    Attributes
    ----------
    positions : numpy.ndarray, shape (F, N, 3), float64
        nm, as stored (not wrapped into the box).
    forces : numpy.ndarray, shape (F, N, 3), float64
        kJ/mol/nm, the total force on each atom (minus the energy gradient).
    energies : numpy.ndarray, shape (F,), float64
        Potential energy, kJ/mol.
    boxes : numpy.ndarray, shape (F, 3, 3), float64, or None
        Periodic box vectors (rows a, b, c) in nm; None for non-periodic data.
    atomic_numbers : numpy.ndarray, shape (N,), int64
        Element of each atom (all >= 1).
    masses : numpy.ndarray, shape (N,), float64, or None
        amu, if the file has them.
    topology_pdb : str or None
        The structure as PDB text (datagen files), for residues and bonds.
    source : pathlib.Path or None
        The file the data came from.
    sha256 : str
        Content hash of positions, forces, energies, boxes and atomic numbers as held here
        (:func:`openmm_geom.modelfile.sha256_of_arrays`), recorded in trained models.
    """

    positions: np.ndarray
    forces: np.ndarray
    energies: np.ndarray
    boxes: Optional[np.ndarray]
    atomic_numbers: np.ndarray
    masses: Optional[np.ndarray] = None
    topology_pdb: Optional[str] = None
    source: Optional[Path] = None
    sha256: str = ""

    def __post_init__(self):
        if not self.sha256:
            object.__setattr__(self, "sha256", _hash(self.positions, self.forces, self.energies,
                                                     self.boxes, self.atomic_numbers))

    @property
    def n_frames(self) -> int:
        return int(self.positions.shape[0])

    @property
    def n_atoms(self) -> int:
        return int(self.positions.shape[1])

    @property
    def periodic(self) -> bool:
        return self.boxes is not None

    def __len__(self) -> int:
        return self.n_frames

    def subset(self, indices) -> "PotentialData":
        """The frames ``indices`` (integer array, in the given order); the hash is recomputed.

        Parameters
        ----------
        indices : array_like of int, shape (K,)
            Frame indices in ``[-F, F)``; a boolean mask of length F is accepted too.

        Returns
        -------
        PotentialData
            New arrays (copies); per-atom data, ``topology_pdb`` and ``source`` are shared.
        """
        index = np.asarray(indices)
        if index.dtype == bool:
            if index.shape != (self.n_frames,):
                raise ValueError(f"a boolean frame mask must have shape ({self.n_frames},), "
                                 f"got {index.shape}")
            index = np.flatnonzero(index)
        if index.ndim != 1 or (index.size and not np.issubdtype(index.dtype, np.integer)):
            raise ValueError(f"indices must be a 1-D array of integers, got shape {index.shape} "
                             f"and dtype {index.dtype}")
        index = index.astype(np.int64)
        bad = (index < -self.n_frames) | (index >= self.n_frames)
        if bad.any():
            raise IndexError(f"frame index {int(index[bad][0])} is out of range for "
                             f"{self.n_frames} frames")
        return dataclasses.replace(
            self, positions=self.positions[index], forces=self.forces[index],
            energies=self.energies[index],
            boxes=None if self.boxes is None else self.boxes[index], sha256="")


def _hash(positions, forces, energies, boxes, atomic_numbers) -> str:
    arrays = [positions, forces, energies, atomic_numbers]
    if boxes is not None:
        arrays.append(boxes)
    return sha256_of_arrays(*arrays)


def _first_bad_frame(array: np.ndarray) -> int:
    return int(np.flatnonzero(~np.isfinite(array.reshape(len(array), -1)).all(axis=1))[0])


def _floats(path: Path, key: str, array: np.ndarray) -> np.ndarray:
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise ValueError(f"{path}: {key!r} must hold numbers, got dtype {array.dtype}")
    return np.asarray(array, dtype=np.float64)


def _finite_frames(path: Path, key: str, array: np.ndarray) -> None:
    if not np.isfinite(array).all():
        frame = _first_bad_frame(array)
        raise ValueError(f"{path}: {key!r} has NaN or infinite values in frame {frame} "
                         f"(of {len(array)}); drop the frame or regenerate the data")


def _one_of(path: Path, data: dict, keys: tuple, what: str) -> Optional[str]:
    present = [key for key in keys if key in data]
    if len(present) > 1:
        raise ValueError(f"{path} has both {present[0]!r} and {present[1]!r} as {what}; "
                         f"keep one")
    return present[0] if present else None


def _check_units(path: Path, data: dict) -> None:
    if "units" not in data:
        return
    try:
        units = json.loads(str(data["units"].item()))
    except (ValueError, AttributeError) as error:
        raise ValueError(f"{path}: 'units' is not valid JSON ({error})") from None
    if not isinstance(units, dict):
        return
    for key, expected in _EXPECTED_UNITS.items():
        if key in units and units[key] != expected:
            raise ValueError(f"{path}: {key} are in {units[key]!r}; openmm-geom expects "
                             f"{expected!r}")


def _atomic_numbers(path: Path, array: np.ndarray, n_atoms: int) -> np.ndarray:
    if array.shape != (n_atoms,):
        raise ValueError(f"{path}: 'atomic_numbers' has shape {array.shape}, expected "
                         f"({n_atoms},) for {n_atoms} atoms")
    if np.issubdtype(array.dtype, np.floating):
        if not (np.isfinite(array).all() and (array == np.round(array)).all()):
            raise ValueError(f"{path}: 'atomic_numbers' must be whole numbers")
    elif not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{path}: 'atomic_numbers' must be integers, got dtype {array.dtype}")
    numbers = array.astype(np.int64)
    bad = np.flatnonzero((numbers < 1) | (numbers > _MAX_ATOMIC_NUMBER))
    if bad.size:
        listed = ", ".join(f"atom {i}: {numbers[i]}" for i in bad[:5])
        raise ValueError(
            f"{path}: atomic numbers must be 1-{_MAX_ATOMIC_NUMBER} ({listed}"
            f"{', ...' if bad.size > 5 else ''}); particles without an element (virtual sites, "
            f"extra points) cannot be learned by an element-based potential")
    return numbers


def _boxes(path: Path, key: str, array: np.ndarray, n_frames: int) -> np.ndarray:
    boxes = _floats(path, key, array)
    if boxes.shape == (3, 3):
        boxes = np.broadcast_to(boxes, (n_frames, 3, 3)).copy()
    elif boxes.shape != (n_frames, 3, 3):
        raise ValueError(f"{path}: {key!r} has shape {array.shape}; expected ({n_frames}, 3, 3) "
                         f"(one box per frame) or (3, 3) (one box for all frames)")
    _finite_frames(path, key, boxes)
    volumes = np.linalg.det(boxes)
    if not (volumes > 0).all():
        frame = int(np.flatnonzero(~(volumes > 0))[0])
        raise ValueError(f"{path}: the box of frame {frame} has volume {volumes[frame]:.4g} nm^3; "
                         f"box vectors must be the rows a, b, c of a right-handed cell in nm")
    return boxes


def load_potential_data(path: Union[str, os.PathLike]) -> PotentialData:
    """Read and check an energy+force dataset (datagen or generic ``.npz``).

    Parameters
    ----------
    path : path
        The ``.npz`` file; see the module docstring for the accepted keys.

    Returns
    -------
    PotentialData
        float64 positions (F, N, 3) nm, forces (F, N, 3) kJ/mol/nm, energies (F,) kJ/mol,
        boxes (F, 3, 3) nm or None, int64 atomic numbers (N,), masses (N,) amu or None.

    Raises
    ------
    FileNotFoundError
        No such file.
    ValueError
        Not an npz file or corrupt; a required key missing (named, with the keys present);
        shapes that disagree; NaN or infinite values (the message names the array and the first
        bad frame); atomic numbers outside 1-118; a box with non-positive volume; units other
        than nm, kJ/mol and kJ/mol/nm.
    """
    path = Path(path)
    data = read_npz(path, "potential data file")
    present = sorted(data)
    for key, value in data.items():
        if not isinstance(value, np.ndarray):  # np.load hands back raw bytes of a non-.npy member
            raise ValueError(f"{path} is corrupt or not a NumPy npz file: member {key!r} is not "
                             f"a NumPy array")
    missing = [key for key in ("positions", "forces", "atomic_numbers") if key not in data]
    energy_key = _one_of(path, data, _ENERGY_KEYS, "energies")
    if energy_key is None:
        missing.append("energies (or potential_energies)")
    if missing:
        raise ValueError(f"{path} is missing {', '.join(repr(m) for m in missing)} (it has: "
                         f"{present}); energy+force training needs positions, forces, energies "
                         f"and atomic_numbers")
    _check_units(path, data)

    positions = _floats(path, "positions", data["positions"])
    if positions.ndim != 3 or positions.shape[2] != 3 or 0 in positions.shape:
        raise ValueError(f"{path}: 'positions' must have shape (frames > 0, atoms > 0, 3), got "
                         f"{positions.shape}")
    n_frames, n_atoms = positions.shape[:2]
    forces = _floats(path, "forces", data["forces"])
    if forces.shape != positions.shape:
        raise ValueError(f"{path}: 'forces' has shape {forces.shape} but 'positions' "
                         f"{positions.shape}; they must match")
    energies = _floats(path, energy_key, data[energy_key])
    if energies.shape != (n_frames,):
        raise ValueError(f"{path}: {energy_key!r} has shape {energies.shape}, expected "
                         f"({n_frames},): one potential energy per frame")
    for key, array in (("positions", positions), ("forces", forces), (energy_key, energies)):
        _finite_frames(path, key, array)
    atomic_numbers = _atomic_numbers(path, data["atomic_numbers"], n_atoms)

    box_key = _one_of(path, data, _BOX_KEYS, "periodic boxes")
    boxes = None if box_key is None else _boxes(path, box_key, data[box_key], n_frames)

    masses = None
    if "masses" in data:
        masses = _floats(path, "masses", data["masses"])
        if masses.shape != (n_atoms,):
            raise ValueError(f"{path}: 'masses' has shape {masses.shape}, expected ({n_atoms},)")
        if not (np.isfinite(masses).all() and (masses > 0).all()):
            raise ValueError(f"{path}: 'masses' must be finite and positive (amu)")

    topology_pdb = None
    if "topology_pdb" in data:
        if data["topology_pdb"].shape != ():
            raise ValueError(f"{path}: 'topology_pdb' must be one string, got shape "
                             f"{data['topology_pdb'].shape}")
        topology_pdb = str(data["topology_pdb"].item())

    return PotentialData(positions=positions, forces=forces, energies=energies, boxes=boxes,
                         atomic_numbers=atomic_numbers, masses=masses,
                         topology_pdb=topology_pdb, source=path)


def _block_size(name: str, fraction: float, n_frames: int) -> int:
    if isinstance(fraction, bool) or not (0.0 <= float(fraction) < 1.0):
        raise ValueError(f"{name} must be in [0, 1), got {fraction!r}")
    # at least one frame for a requested block, so a small dataset still gets each set
    return max(1, int(round(fraction * n_frames))) if fraction > 0 else 0


def time_block_split(
    n_frames: int,
    validation_fraction: float = 0.1,
    test_fraction: float = 0.1,
    gap: int = 10,
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split ``n_frames`` consecutive frames into training, validation and test time blocks.

    The layout is ``[training][gap][validation][gap][test]``: the test set is the last
    ``round(test_fraction * n_frames)`` frames, the validation set the block before it, and
    ``gap`` frames are left out between neighbouring blocks, so frames correlated in time do not
    end up on both sides of a split (random splits of MD frames overstate accuracy). The gaps
    come out of the training block.

    Parameters
    ----------
    n_frames : int
        Number of frames (in time order).
    validation_fraction, test_fraction : float
        Fractions of ``n_frames`` in [0, 1); a non-zero fraction gives at least one frame.
        0 leaves that block (and its gap) out.
    gap : int
        Frames dropped between blocks. 10 frames of the default ``openmm-geom datagen
        --water-box`` data are 1 ps, about the decorrelation time of liquid water's local
        structure; choose it from your frame interval.

    Returns
    -------
    train, validation, test : numpy.ndarray of int64
        Sorted frame indices; disjoint, with every training index before every validation
        index before every test index.

    Raises
    ------
    ValueError
        Bad fractions or gap, or too few frames for the blocks, gaps and at least one training
        frame (the message gives the minimum).
    """
    if isinstance(n_frames, bool) or not isinstance(n_frames, (int, np.integer)) or n_frames < 1:
        raise ValueError(f"n_frames must be a positive integer, got {n_frames!r}")
    if isinstance(gap, bool) or not isinstance(gap, (int, np.integer)) or gap < 0:
        raise ValueError(f"gap must be a non-negative integer, got {gap!r}")
    n_frames, gap = int(n_frames), int(gap)
    n_validation = _block_size("validation_fraction", validation_fraction, n_frames)
    n_test = _block_size("test_fraction", test_fraction, n_frames)
    n_gaps = (n_validation > 0) + (n_test > 0)
    n_train = n_frames - n_validation - n_test - n_gaps * gap
    if n_train < 1:
        raise ValueError(
            f"too few frames: {n_frames} frames cannot hold {n_validation} validation and "
            f"{n_test} test frames, {n_gaps} gap(s) of {gap} frames and at least one training "
            f"frame (need at least {n_frames - n_train + 1}); use more frames, a smaller gap or "
            f"smaller fractions")
    train = np.arange(n_train, dtype=np.int64)
    start = n_train + (gap if n_validation else 0)
    validation = np.arange(start, start + n_validation, dtype=np.int64)
    start = (start + n_validation) + (gap if n_test else 0)
    test = np.arange(start, start + n_test, dtype=np.int64)
    return train, validation, test
