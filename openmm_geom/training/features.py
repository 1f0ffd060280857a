"""Trajectories -> geom2vec token features, the input of VAMPnet/SPIB heads, in a
self-describing file.

:func:`featurize` runs a frozen backbone (:class:`~openmm_geom.models.geom2vec.Geom2VecFeaturizer`)
over any number of trajectories, pools atoms into the tokens of a
:class:`~openmm_geom.models.geom2vec.TokenMap` and returns a :class:`FeatureSet`. Its file
(npz) records what is needed to trust and reuse the features later: the backbone's
hyper-parameters and the SHA-256 of its checkpoint, the token map, the units, the frame spacing,
where each trajectory starts (lagged pairs must not cross trajectory boundaries), the pooling,
and the number of system atoms. Downstream training refuses features made by another backbone
or for another system.

Trajectory inputs: whatever :func:`openmm_geom.data.trajectories.read_positions` reads.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import List, Optional, Sequence, Union

import numpy as np
import torch

from ..data.trajectories import read_positions
from ..errors import FileFormatError
from ..io import atomic_savez, format_tag, read_versioned_npz
from ..models.geom2vec import TokenMap, global_distances, pool_tokens
from ..progress import progress_bar

__all__ = ["FeatureSet", "featurize"]

FEATURE_KIND, FEATURE_VERSION = "token-features", 1


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
            raise FileFormatError(f"tokens must have shape (frames, tokens, 4, d), got "
                                   f"{self.tokens.shape}")
        if int(self.lengths.sum()) != len(self.tokens):
            raise FileFormatError(f"trajectory lengths sum to {int(self.lengths.sum())} but "
                                   f"there are {len(self.tokens)} frames")
        bad = ~np.isfinite(self.tokens).reshape(len(self.tokens), -1).all(1)
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            raise FileFormatError(f"features of frame {first} (and {int(bad.sum()) - 1} "
                                   "others) are NaN or infinite")

    @property
    def token_map(self) -> TokenMap:
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
            raise FileFormatError("the feature sets were made by different backbones "
                                   f"({self.backbone.get('sha256', '?')[:12]} vs "
                                   f"{other.backbone.get('sha256', '?')[:12]})")
        if self.token_map_json != other.token_map_json or self.mean_pooling != other.mean_pooling:
            raise FileFormatError("the feature sets use different token maps (another system "
                                   "or selection) or pooling")

    def save(self, path: Union[str, os.PathLike]) -> Path:
        header = {"format": format_tag(FEATURE_KIND, FEATURE_VERSION),
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
        return atomic_savez(path, **arrays)

    @classmethod
    def load(cls, path: Union[str, os.PathLike]) -> "FeatureSet":
        """Read a feature file; :class:`~openmm_geom.errors.FileFormatError` if it is not one."""
        path = Path(path)
        if not path.is_file():
            raise FileFormatError(f"no feature file at {path}")
        data, header = read_versioned_npz(path, FEATURE_KIND, (FEATURE_VERSION,),
                                          header="header", what="feature file",
                                          required=("tokens", "lengths", "token_map"))
        try:
            return cls(tokens=data["tokens"], lengths=data["lengths"],
                       global_features=data.get("global_features"),
                       token_map_json=str(data["token_map"]), backbone=header["backbone"],
                       timestep_ps=float(header["timestep_ps"]),
                       mean_pooling=bool(header.get("mean_pooling", False)),
                       sources=list(header.get("sources", [])))
        except KeyError as error:
            raise FileFormatError(f"{path} is not a complete feature file (its header lacks "
                                  f"{error})") from error


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
