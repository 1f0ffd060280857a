"""Trajectories -> geom2vec token features on disk, in a self-describing file.

:func:`featurize` runs a frozen backbone (:class:`~openmm_geom.models.geom2vec.Geom2VecFeaturizer`)
over any number of trajectories, pools atoms into the tokens of a
:class:`~openmm_geom.models.geom2vec.TokenMap` and returns a :class:`FeatureSet`. Its file
(npz) records what is needed to trust and reuse the features later: the backbone's
hyper-parameters and the SHA-256 of its checkpoint, the token map, the units, the frame spacing,
where each trajectory starts (lagged pairs must not cross trajectory boundaries), the pooling,
and the number of system atoms. Downstream training refuses features made by another backbone
or for another system.

Trajectory inputs: any mdtraj-readable file (DCD, XTC, HDF5, PDB, ...) with a topology, or an
npz with ``positions`` (frames, atoms, 3) in nm (our datagen files and ``../shared/data``),
optionally ``box_vectors`` (frames, 3, 3) nm and ``save_interval_ps``.
"""
from __future__ import annotations

import dataclasses
import io
import json
import os
from pathlib import Path
from typing import List, Optional, Sequence, Union

import numpy as np
import torch

from ..modelfile import atomic_write_bytes
from ..progress import progress_bar

__all__ = ["FeatureSet", "FeatureFileError", "featurize", "read_positions", "FEATURE_FORMAT"]

FEATURE_FORMAT = "openmm-geom-token-features"
FEATURE_VERSION = 1


class FeatureFileError(RuntimeError):
    """A feature file that is missing, corrupt, or made for something else."""


@dataclasses.dataclass
class FeatureSet:
    """Token features of one or more trajectories.

    Attributes
    ----------
    tokens : (T, M, 4, d) float32, frames of all trajectories concatenated
    lengths : (n_trajectories,) frames of each trajectory, in order
    global_features : (T, g) float32 distances in nm, or None
    token_map_json : the :class:`TokenMap` as JSON
    backbone : dict with ``hyperparameters`` and ``sha256`` of the checkpoint
    timestep_ps : time between consecutive stored frames
    mean_pooling : whether tokens are atom means (else sums, paper eq. 2)
    sources : names of the trajectories
    """

    tokens: np.ndarray
    lengths: np.ndarray
    global_features: Optional[np.ndarray]
    token_map_json: str
    backbone: dict
    timestep_ps: float
    mean_pooling: bool = False
    sources: List[str] = dataclasses.field(default_factory=list)

    def __post_init__(self):
        self.lengths = np.asarray(self.lengths, dtype=np.int64)
        if self.tokens.ndim != 4 or self.tokens.shape[2] != 4:
            raise FeatureFileError(f"tokens must have shape (frames, tokens, 4, d), got "
                                   f"{self.tokens.shape}")
        if int(self.lengths.sum()) != len(self.tokens):
            raise FeatureFileError(f"trajectory lengths sum to {int(self.lengths.sum())} but "
                                   f"there are {len(self.tokens)} frames")
        bad = ~np.isfinite(self.tokens).reshape(len(self.tokens), -1).all(1)
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            raise FeatureFileError(f"features of frame {first} (and {int(bad.sum()) - 1} "
                                   "others) are NaN or infinite")

    @property
    def token_map(self):
        from ..models.geom2vec import TokenMap

        return TokenMap.from_json(self.token_map_json)

    @property
    def n_tokens(self) -> int:
        return self.tokens.shape[1]

    @property
    def channels(self) -> int:
        return self.tokens.shape[3]

    def trajectories(self) -> List[np.ndarray]:
        """The token arrays of each trajectory, (T_i, M, 4, d) views."""
        return np.split(self.tokens, np.cumsum(self.lengths)[:-1])

    def global_trajectories(self) -> Optional[List[np.ndarray]]:
        if self.global_features is None:
            return None
        return np.split(self.global_features, np.cumsum(self.lengths)[:-1])

    def check_compatible(self, other: "FeatureSet") -> None:
        """Refuse to mix features from different backbones, token maps or pooling."""
        if self.backbone.get("sha256") != other.backbone.get("sha256"):
            raise FeatureFileError("the feature sets were made by different backbones "
                                   f"({self.backbone.get('sha256', '?')[:12]} vs "
                                   f"{other.backbone.get('sha256', '?')[:12]})")
        if self.token_map_json != other.token_map_json or self.mean_pooling != other.mean_pooling:
            raise FeatureFileError("the feature sets use different token maps (another system "
                                   "or selection) or pooling")

    def save(self, path: Union[str, os.PathLike]) -> Path:
        header = {"format": FEATURE_FORMAT, "version": FEATURE_VERSION,
                  "backbone": self.backbone, "timestep_ps": float(self.timestep_ps),
                  "mean_pooling": bool(self.mean_pooling), "sources": list(self.sources),
                  "units": {"positions": "nm", "global_features": "nm",
                            "tokens": "dimensionless network features",
                            "timestep": "ps"},
                  "layout": "tokens[frame, token, channel, feature]: channel 0 scalar, "
                            "1-3 vector x, y, z"}
        arrays = {"header": np.array(json.dumps(header)), "tokens": self.tokens,
                  "lengths": self.lengths, "token_map": np.array(self.token_map_json)}
        if self.global_features is not None:
            arrays["global_features"] = self.global_features
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        path = Path(path)
        atomic_write_bytes(path, buffer.getvalue())
        return path

    @classmethod
    def load(cls, path: Union[str, os.PathLike]) -> "FeatureSet":
        path = Path(path)
        if not path.is_file():
            raise FeatureFileError(f"no feature file at {path}")
        try:
            with np.load(path, allow_pickle=False) as data:
                header = json.loads(str(data["header"]))
                if header.get("format") != FEATURE_FORMAT:
                    raise FeatureFileError(f"{path} is not an openmm-geom feature file")
                if header.get("version", 0) > FEATURE_VERSION:
                    raise FeatureFileError(f"{path} was written by a newer openmm-geom")
                return cls(
                    tokens=data["tokens"], lengths=data["lengths"],
                    global_features=(data["global_features"]
                                     if "global_features" in data.files else None),
                    token_map_json=str(data["token_map"]), backbone=header["backbone"],
                    timestep_ps=float(header["timestep_ps"]),
                    mean_pooling=bool(header.get("mean_pooling", False)),
                    sources=list(header.get("sources", [])))
        except FeatureFileError:
            raise
        except KeyError as error:
            raise FeatureFileError(f"{path} is not an openmm-geom feature file (missing "
                                   f"{error})") from error
        except Exception as error:  # zip/npz corruption surfaces as several error types
            raise FeatureFileError(f"cannot read feature file {path}: {error}") from error


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

        from ..models.geom2vec import _as_mdtraj_topology

        kwargs = {}
        if topology is not None and path.suffix not in (".pdb", ".h5"):
            kwargs["top"] = _as_mdtraj_topology(topology)
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


@torch.no_grad()
def featurize(featurizer, token_map, trajectories: Sequence, *, backbone_sha256: str,
              topology=None, stride: int = 1, batch_size: int = 128, timestep_ps=None,
              mean_pooling: bool = False, progress: bool = True) -> FeatureSet:
    """Token features of trajectories by a frozen backbone.

    Parameters
    ----------
    featurizer : Geom2VecFeaturizer
    token_map : TokenMap of the system the trajectories belong to
    trajectories : sequence of paths (see :func:`read_positions`) or arrays (T, N, 3) nm
    backbone_sha256 : SHA-256 of the backbone checkpoint (recorded; see ``load_backbone``)
    topology : needed for mdtraj formats without their own topology (DCD, XTC)
    stride : keep every ``stride``-th frame
    batch_size : frames per backbone call
    timestep_ps : time between stored frames before striding; read from files when possible
    mean_pooling : tokens as atom means instead of sums
    progress : show a progress bar (frames)

    Returns
    -------
    FeatureSet
    """
    from ..models.geom2vec import global_distances, pool_tokens

    featurizer.eval()
    dtype = featurizer.angstrom_per_nm.dtype
    loaded, sources = [], []
    for item in trajectories:
        if isinstance(item, (str, os.PathLike)):
            positions, boxes, dt = read_positions(item, topology, stride=stride,
                                                  n_atoms=token_map.n_system_atoms)
            sources.append(str(item))
        else:
            positions = np.asarray(item, dtype=np.float32)[::stride]
            boxes, dt = None, None
            if positions.ndim != 3 or positions.shape[1] != token_map.n_system_atoms:
                raise ValueError(f"trajectory {len(loaded)} has shape {positions.shape}; the "
                                 f"system has {token_map.n_system_atoms} atoms")
            if not np.isfinite(positions).all():
                raise ValueError(f"trajectory {len(loaded)} has NaN or infinite coordinates")
            sources.append(f"array{len(loaded)}")
        if dt is not None and timestep_ps is None:
            timestep_ps = dt / stride
        loaded.append((positions, boxes))
    if not loaded:
        raise ValueError("no trajectories given")
    if timestep_ps is None:
        raise ValueError("the frame spacing is unknown: pass timestep_ps")
    atoms = torch.as_tensor(token_map.atom_indices)
    z = torch.as_tensor(token_map.atomic_numbers)
    index = torch.as_tensor(token_map.token_index)
    pairs = torch.as_tensor(token_map.global_pairs)
    total = sum(len(p) for p, _ in loaded)
    tokens = np.empty((total, token_map.n_tokens, 4, featurizer.hidden_channels), np.float32)
    global_features = (np.empty((total, len(pairs)), np.float32) if len(pairs) else None)
    row = 0
    with progress_bar(total, "featurizing", enabled=progress, unit="frame") as bar:
        for positions, boxes in loaded:
            for start in range(0, len(positions), batch_size):
                x = torch.as_tensor(positions[start:start + batch_size]).to(dtype)
                b = None if boxes is None else torch.as_tensor(
                    boxes[start:start + batch_size]).to(dtype)
                features = featurizer(z, x.index_select(1, atoms), b)
                pooled = pool_tokens(features, index, token_map.n_tokens, mean_pooling)
                tokens[row:row + len(x)] = pooled.float().numpy()
                if global_features is not None:
                    global_features[row:row + len(x)] = global_distances(x, pairs, b).numpy()
                row += len(x)
                bar.update(len(x))
    backbone = {"sha256": backbone_sha256, "hyperparameters": featurizer.hyperparameters}
    return FeatureSet(tokens, [len(p) for p, _ in loaded], global_features,
                      token_map.to_json(), backbone, float(timestep_ps) * stride,
                      mean_pooling, sources)
