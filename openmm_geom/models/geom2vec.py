"""geom2vec: a pretrained equivariant GNN as a frozen featurizer, pooled into structural tokens.

The pieces, in data-flow order (paper: Pengmei et al., geom2vec, sections II.A-II.C):

- :class:`Geom2VecFeaturizer` runs torchmd-net 2.6.2's TorchMD-ET or TensorNet representation
  network on any molecule (atomic numbers are an argument, so one pretrained backbone serves
  every system) and returns per-atom features ``(B, N, 4, d)``: channel 0 holds the ``d``
  invariant scalars, channels 1-3 the x, y, z components of ``d`` equivariant vectors (eq. 1).
  Pairs come from our vesin neighbour list: complete (no neighbour cap, unlike geom2vec's
  32-neighbour limit) and periodic with any triclinic box.
- :class:`TokenMap` selects atoms (heavy atoms, solute, any mdtraj selection) and partitions
  them into structural units (residues, or any user partition); :func:`pool_tokens` sums
  (eq. 2) or averages the atom features of each unit into ``(B, M, 4, d)`` tokens.
- :class:`TokenCV` (standardisation -> token mixer -> head) is what VAMPnet/SPIB train on
  stored tokens; :class:`Geom2VecCV` is the whole collective variable: featurizer (frozen) ->
  tokens -> :class:`TokenCV`, ``positions[N, 3]`` nm (and the box) -> ``cv[k]``,
  scriptable and exported through the foundation bridge like any other CV module.

Units: positions in nm at every boundary; torchmd-net is fed angstrom inside (see
:mod:`openmm_geom.models.torchmdnet` for why), so the cutoff is given in nm. The features are
dimensionless network activations.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torchmdnet.models.torchmd_et import EquivariantMultiHeadAttention

from ..ops.neighbors import check_cutoff
from ..data.trajectories import as_mdtraj_topology
from .torchmdnet import ANGSTROM_PER_NM, VesinEdges, build_torchmdnet

__all__ = ["Geom2VecFeaturizer", "TokenMap", "pool_tokens", "Geom2VecCV", "TokenCV",
           "TokenStandardizer", "global_distances",
           "FEATURE_CHANNELS", "DEFAULT_MAX_Z"]

FEATURE_CHANNELS = 4  # one scalar + three vector components per feature
# Embedding rows: atomic numbers 1..35 (H to Br) cover organic molecules and proteins.
DEFAULT_MAX_Z = 36


class _TensorNetFeatures(torch.nn.Module):
    """TensorNet's forward pass, also returning a vector per feature channel.

    torchmd-net's ``TensorNet.forward`` reduces its rank-2 tensor features to invariant norms.
    The antisymmetric part ``A`` of each channel's tensor is equivalent to an (axial) vector
    ``a`` with ``A v = a x v``; it rotates like a vector under proper rotations, which is what
    the token mixers need. The scalars are exactly TensorNet's own outputs.
    """

    def __init__(self, tensornet: torch.nn.Module):
        super().__init__()
        self.net = tensornet

    def forward(self, z: torch.Tensor, pos: torch.Tensor, batch: torch.Tensor,
                box: Optional[torch.Tensor], frames: int) -> Tuple[torch.Tensor, torch.Tensor]:
        net = self.net
        edge_index, edge_weight, edge_vec = net.distance(pos, batch, box, frames)
        assert edge_vec is not None
        q = torch.zeros_like(z)
        edge_attr = net.distance_expansion(edge_weight)
        loops = edge_index[0] == edge_index[1]
        edge_vec = edge_vec / edge_weight.masked_fill(loops, 1.0).unsqueeze(1)
        X = net.tensor_embedding(z, edge_index, edge_weight, edge_vec, edge_attr)
        for layer in net.layers:
            X = layer(X, edge_index, edge_weight, edge_attr, q)
        antisymmetric = 0.5 * (X - X.transpose(-2, -1))
        trace = X.diagonal(dim1=-2, dim2=-1).mean(-1)
        symmetric = 0.5 * (X + X.transpose(-2, -1)) \
            - trace[..., None, None] * torch.eye(3, dtype=X.dtype, device=X.device)
        x = torch.cat((3 * trace ** 2, (antisymmetric ** 2).sum((-2, -1)),
                       (symmetric ** 2).sum((-2, -1))), dim=-1)
        x = net.act(net.linear(net.out_norm(x)))
        # (atoms, d, 3, 3) -> (atoms, 3, d): a = (A_zy, A_xz, A_yx)
        vec = torch.stack((antisymmetric[..., 2, 1], antisymmetric[..., 0, 2],
                           antisymmetric[..., 1, 0]), dim=1)
        return x, vec


class _ETFeatures(torch.nn.Module):
    """TorchMD-ET's forward pass (torchmd-net 2.6.2, ``TorchMD_ET.forward``) on its own layers,
    written without data-dependent shapes or host syncs.

    torchmd-net removes self-loops by boolean indexing (``if not mask.all()``, ``x[mask]``) and
    sizes each scatter from ``index.max().item()``; ``torch.export`` can trace neither, which
    kept geom2vec CVs out of AOTInductor packages. Here self-loops are zeroed by multiplication
    and every scatter is sized by the atom count. The result equals torchmd-net's own forward
    (tested to 1e-12 in float64, values and gradients).
    """

    def __init__(self, et: torch.nn.Module):
        super().__init__()
        for layer in et.attention_layers:
            layer.__class__ = _SizedAttention
        self.net = et

    def forward(self, z: torch.Tensor, pos: torch.Tensor, batch: torch.Tensor,
                box: Optional[torch.Tensor], frames: int) -> Tuple[torch.Tensor, torch.Tensor]:
        net = self.net
        n = z.size(0)
        x = net.embedding(z)
        edge_index, edge_weight, edge_vec = net.distance(pos, batch, box, frames)
        assert edge_vec is not None
        edge_attr = net.distance_expansion(edge_weight)
        loops = edge_index[0] == edge_index[1]
        norms = torch.linalg.vector_norm(edge_vec, dim=1).masked_fill(loops, 1.0)
        edge_vec = edge_vec / norms.unsqueeze(1)  # self-loops carry the zero vector
        if net.neighbor_embedding is not None:
            embed = net.neighbor_embedding
            weight = embed.cutoff(edge_weight).masked_fill(loops, 0.0)
            message = embed.distance_proj(edge_attr) * weight.unsqueeze(1) \
                * embed.embedding(z).index_select(0, edge_index[1])
            neighbors = torch.zeros(n, x.size(1), dtype=x.dtype, device=x.device) \
                .index_add(0, edge_index[0], message)
            x = embed.combine(torch.cat([x, neighbors], dim=1))
        vec = torch.zeros(n, 3, x.size(1), device=x.device, dtype=x.dtype)
        for layer in net.attention_layers:
            dx, dvec = layer(x, vec, edge_index, edge_weight, edge_attr, edge_vec)
            x = x + dx
            vec = vec + dvec
        return net.out_norm(x), vec


class _SizedAttention(EquivariantMultiHeadAttention):
    """``EquivariantMultiHeadAttention`` whose aggregation is sized by the atom count instead of
    ``index.max().item()``. Same parameters and state-dict keys: :class:`_ETFeatures` changes
    the class of ET's own layers to this one."""

    def forward(self, x: torch.Tensor, vec: torch.Tensor, edge_index: torch.Tensor,
                r_ij: torch.Tensor, f_ij: torch.Tensor, d_ij: torch.Tensor
                ) -> Tuple[torch.Tensor, torch.Tensor]:
        n = x.size(0)
        heads, head_dim, hidden = self.num_heads, self.head_dim, self.hidden_channels
        x = self.layernorm(x)
        q = self.q_proj(x).reshape(-1, heads, head_dim)
        k = self.k_proj(x).reshape(-1, heads, head_dim)
        v = self.v_proj(x).reshape(-1, heads, head_dim * 3)
        vec1, vec2, vec3 = torch.split(self.vec_proj(vec), hidden, dim=-1)
        vec = vec.reshape(-1, 3, heads, head_dim)
        vec_dot = (vec1 * vec2).sum(dim=1)
        dk: Optional[torch.Tensor] = None
        dv: Optional[torch.Tensor] = None
        if self.dk_proj is not None:
            dk = self.act(self.dk_proj(f_ij)).reshape(-1, heads, head_dim)
        if self.dv_proj is not None:
            dv = self.act(self.dv_proj(f_ij)).reshape(-1, heads, head_dim * 3)
        x, vec = self.propagate(edge_index, q=q, k=k, v=v, vec=vec, dk=dk, dv=dv, r_ij=r_ij,
                                d_ij=d_ij, dim_size=n)
        x = x.reshape(-1, hidden)
        vec = vec.reshape(-1, 3, hidden)
        o1, o2, o3 = torch.split(self.o_proj(x), hidden, dim=1)
        return vec_dot * o2 + o3, vec3 * o1.unsqueeze(1) + vec


class Geom2VecFeaturizer(torch.nn.Module):
    """Per-atom scalar and vector features from a torchmd-net ET or TensorNet backbone.

    Parameters
    ----------
    architecture : {"et", "tensornet"}
    cutoff : float
        Interaction cutoff in nm (default 0.5, the paper's 5 A). Periodic boxes must hold it.
    hidden_channels : int
        ``d``, the features per atom (per channel).
    num_layers, num_rbf, num_heads : int
        Message-passing layers, radial basis functions, attention heads (ET).
    max_z : int
        Atomic numbers ``1 .. max_z - 1`` can be embedded; others are refused.
    dtype : torch.dtype
    seed : int
        Seed of the weight initialisation (the global RNG is untouched).

    Attributes
    ----------
    hyperparameters : dict
        Plain JSON; ``Geom2VecFeaturizer(**hyperparameters)`` rebuilds the network.
    """

    __jit_unused_properties__ = ["dtype"]

    def __init__(self, architecture: str = "et", cutoff: float = 0.5, hidden_channels: int = 64,
                 num_layers: int = 3, num_rbf: int = 32, num_heads: int = 8,
                 max_z: int = DEFAULT_MAX_Z, dtype: torch.dtype = torch.float32, seed: int = 0):
        super().__init__()
        architecture = str(architecture).lower()
        if architecture not in ("et", "tensornet"):
            raise ValueError(f"architecture must be 'et' or 'tensornet', got {architecture!r}")
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype)
        check_cutoff(cutoff)
        self.cutoff = float(cutoff)
        self.max_z = int(max_z)
        self.hidden_channels = int(hidden_channels)
        self.hyperparameters: Dict = {
            "architecture": architecture, "cutoff": self.cutoff,
            "hidden_channels": int(hidden_channels), "num_layers": int(num_layers),
            "num_rbf": int(num_rbf), "num_heads": int(num_heads), "max_z": self.max_z,
            "dtype": str(dtype).replace("torch.", ""), "seed": int(seed),
        }
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            representation, _ = build_torchmdnet(architecture, hidden_channels, num_layers, num_rbf,
                                       num_heads, architecture == "et", "silu", "O(3)",
                                       self.cutoff * ANGSTROM_PER_NM, self.max_z, 64, dtype)
        representation.distance = VesinEdges(self.cutoff * ANGSTROM_PER_NM)
        self.backbone = (_ETFeatures(representation) if architecture == "et"
                         else _TensorNetFeatures(representation))
        self.register_buffer("angstrom_per_nm", torch.tensor(ANGSTROM_PER_NM, dtype=dtype),
                             persistent=False)
        self.to(dtype)

    @property
    def dtype(self) -> torch.dtype:
        return self.angstrom_per_nm.dtype

    @torch.jit.export
    def check_atomic_numbers(self, atomic_numbers: torch.Tensor) -> None:
        """Refuse atomic numbers the embedding has no row for."""
        if atomic_numbers.numel() > 0 and (int(atomic_numbers.min()) < 1
                                           or int(atomic_numbers.max()) >= self.max_z):
            raise ValueError("atomic numbers must lie in 1.." + str(self.max_z - 1)
                             + " for this backbone")

    def forward(self, atomic_numbers: torch.Tensor, positions: torch.Tensor,
                boxes: Optional[torch.Tensor] = None, check_inputs: bool = True) -> torch.Tensor:
        """Features of every atom of every frame.

        Parameters
        ----------
        atomic_numbers : Tensor (N,) int64
        positions : Tensor (B, N, 3), nm
        boxes : Tensor (B, 3, 3), nm, rows a, b, c; or None (not periodic)
        check_inputs : bool
            Check atomic numbers and finite positions (two host syncs). :class:`Geom2VecCV`
            checks its fixed atomic numbers once and relies on the export wrapper's check of
            non-finite outputs, so it passes False on OpenMM's per-step path.

        Returns
        -------
        Tensor (B, N, 4, d): ``[..., 0, :]`` scalars, ``[..., 1:, :]`` vector x, y, z.
        """
        if positions.dim() != 3 or positions.size(2) != 3:
            raise ValueError("positions must have shape (frames, atoms, 3), got "
                             + str(list(positions.shape)))
        frames, n_atoms = positions.size(0), positions.size(1)
        if atomic_numbers.dim() != 1 or atomic_numbers.size(0) != n_atoms:
            raise ValueError("expected " + str(n_atoms) + " atomic numbers, got "
                             + str(list(atomic_numbers.shape)))
        if check_inputs:
            self.check_atomic_numbers(atomic_numbers)
            if not bool(torch.isfinite(positions).all()):
                raise ValueError("positions contain NaN or infinite values")
        scale = self.angstrom_per_nm
        pos = positions.to(scale.dtype).reshape(frames * n_atoms, 3) * scale
        box: Optional[torch.Tensor] = None
        if boxes is not None:
            if boxes.dim() != 3 or boxes.size(0) != frames:
                raise ValueError("boxes must have shape (frames, 3, 3)")
            box = boxes.to(scale.dtype) * scale
        z = atomic_numbers.to(torch.int64).repeat(frames)
        batch = torch.arange(frames, dtype=torch.int64,
                             device=pos.device).repeat_interleave(n_atoms)
        x, v = self.backbone(z, pos, batch, box, frames)
        features = torch.cat((x.unsqueeze(1), v), dim=1)  # (B*N, 4, d)
        return features.reshape(frames, n_atoms, 4, x.size(-1))  # FEATURE_CHANNELS


def pool_tokens(features: torch.Tensor, token_index: torch.Tensor, n_tokens: int,
                mean: bool = False) -> torch.Tensor:
    """Pool atom features into structural tokens (paper eq. 2: the sum over each unit).

    Parameters
    ----------
    features : Tensor (B, N, 4, d), atoms of the selection in selection order
    token_index : Tensor (N,) int64, token of each atom, in ``0 .. n_tokens - 1``
    n_tokens : int
    mean : bool
        Average instead of summing (units of different size then weigh alike).

    Returns
    -------
    Tensor (B, n_tokens, 4, d)
    """
    shape = [features.size(0), n_tokens, features.size(2), features.size(3)]
    pooled = features.new_zeros(shape).index_add(1, token_index, features)
    if mean:
        counts = torch.bincount(token_index, minlength=n_tokens).to(features.dtype)
        pooled = pooled / counts.clamp(min=1.0).reshape(1, n_tokens, 1, 1)
    return pooled


@dataclasses.dataclass
class TokenMap:
    """Which atoms are featurized and which structural token each belongs to.

    Attributes
    ----------
    atom_indices : (S,) indices of the selected atoms in the full system, increasing
    token_index : (S,) token of each selected atom
    token_names : (M,) names of the tokens, e.g. ``"ALA2"``
    atomic_numbers : (S,) of the selected atoms
    n_system_atoms : atoms in the full system (the topology the map was built from)
    global_pairs : (P, 2) pairs of system atom indices whose distances form the optional
        global token (e.g. all CA-CA pairs), or an empty (0, 2) array
    """

    atom_indices: np.ndarray
    token_index: np.ndarray
    token_names: List[str]
    atomic_numbers: np.ndarray
    n_system_atoms: int
    global_pairs: np.ndarray = dataclasses.field(
        default_factory=lambda: np.zeros((0, 2), dtype=np.int64))

    def __post_init__(self):
        self.atom_indices = np.asarray(self.atom_indices, dtype=np.int64)
        self.token_index = np.asarray(self.token_index, dtype=np.int64)
        self.atomic_numbers = np.asarray(self.atomic_numbers, dtype=np.int64)
        self.global_pairs = np.asarray(self.global_pairs, dtype=np.int64).reshape(-1, 2)
        self.token_names = [str(n) for n in self.token_names]
        if len(self.atom_indices) == 0:
            raise ValueError("the atom selection is empty")
        if not (len(self.atom_indices) == len(self.token_index) == len(self.atomic_numbers)):
            raise ValueError("atom_indices, token_index and atomic_numbers differ in length")
        if np.any(np.diff(self.atom_indices) <= 0):
            raise ValueError("atom_indices must be strictly increasing (each atom once)")
        if self.atom_indices[0] < 0 or self.atom_indices[-1] >= self.n_system_atoms:
            raise ValueError(f"atom indices must lie in 0..{self.n_system_atoms - 1}")
        used = np.unique(self.token_index)
        if len(used) != len(self.token_names) or used[0] != 0 or used[-1] != len(used) - 1:
            raise ValueError("every token needs at least one atom and tokens are numbered "
                             "0..M-1")
        if self.global_pairs.size and (self.global_pairs.min() < 0
                                       or self.global_pairs.max() >= self.n_system_atoms):
            raise ValueError("global_pairs index atoms outside the system")

    @property
    def n_tokens(self) -> int:
        return len(self.token_names)

    @property
    def global_dim(self) -> int:
        return len(self.global_pairs)

    @classmethod
    def from_topology(cls, topology, selection: str = "heavy", tokens: str = "residue",
                      global_atoms: Optional[str] = None) -> "TokenMap":
        """A token map from an mdtraj or OpenMM topology.

        Parameters
        ----------
        topology : mdtraj.Topology, openmm.app.Topology, or a path to a PDB
        selection : "heavy" (no hydrogens, no water or ions), "all", "solute" (no water or
            ions), or any mdtraj selection string
        tokens : "residue" (one token per residue) or "atom" (one per selected atom)
        global_atoms : mdtraj selection whose pairwise distances form the global token
            (e.g. ``"name CA"``); None for no global features
        """
        import mdtraj

        top = as_mdtraj_topology(topology)
        solvent = "not (water or resname NA or resname CL or resname K or resname HOH)"
        expression = {"heavy": f"{solvent} and not element H", "solute": solvent,
                      "all": "all"}.get(selection, selection)
        try:
            atoms = top.select(expression)
        except Exception as error:  # mdtraj raises several types for bad selections
            raise ValueError(f"bad atom selection {selection!r}: {error}") from error
        if len(atoms) == 0:
            raise ValueError(f"the selection {selection!r} matches no atom")
        z = np.array([top.atom(int(i)).element.atomic_number for i in atoms])
        if tokens == "residue":
            residues = [top.atom(int(i)).residue for i in atoms]
            order = {}
            for residue in residues:
                order.setdefault(residue.index, (len(order), f"{residue.name}{residue.resSeq}"))
            token_index = [order[r.index][0] for r in residues]
            names = [name for _, name in sorted(order.values())]
        elif tokens == "atom":
            token_index = list(range(len(atoms)))
            names = [f"{top.atom(int(i)).residue}-{top.atom(int(i)).name}" for i in atoms]
        else:
            raise ValueError(f"tokens must be 'residue' or 'atom', got {tokens!r}")
        pairs = np.zeros((0, 2), dtype=np.int64)
        if global_atoms:
            anchors = top.select(global_atoms)
            if len(anchors) < 2:
                raise ValueError(f"global_atoms {global_atoms!r} must select at least 2 atoms")
            pairs = np.array([(a, b) for k, a in enumerate(anchors) for b in anchors[k + 1:]])
        del mdtraj
        return cls(atoms, token_index, names, z, top.n_atoms, pairs)

    @classmethod
    def from_partition(cls, groups: Sequence[Sequence[int]], atomic_numbers: Sequence[int],
                       names: Optional[Sequence[str]] = None) -> "TokenMap":
        """A token map from any partition: ``groups[m]`` are the system atoms of token m.

        ``atomic_numbers`` are those of the whole system. Atoms in no group are not featurized.
        """
        z_all = np.asarray(atomic_numbers, dtype=np.int64)
        owner = {}
        for m, group in enumerate(groups):
            for atom in group:
                if int(atom) in owner:
                    raise ValueError(f"atom {atom} is in tokens {owner[int(atom)]} and {m}: "
                                     "a partition assigns each atom once")
                owner[int(atom)] = m
        atoms = np.array(sorted(owner), dtype=np.int64)
        if len(atoms) and (atoms[0] < 0 or atoms[-1] >= len(z_all)):
            raise ValueError(f"partition atoms must lie in 0..{len(z_all) - 1}")
        names = list(names) if names is not None else [f"token{m}" for m in range(len(groups))]
        if len(names) != len(groups):
            raise ValueError(f"{len(names)} names for {len(groups)} groups")
        return cls(atoms, [owner[int(a)] for a in atoms], names, z_all[atoms], len(z_all))

    def to_json(self) -> str:
        return json.dumps({"atom_indices": self.atom_indices.tolist(),
                           "token_index": self.token_index.tolist(),
                           "token_names": self.token_names,
                           "atomic_numbers": self.atomic_numbers.tolist(),
                           "n_system_atoms": int(self.n_system_atoms),
                           "global_pairs": self.global_pairs.tolist()})

    @classmethod
    def from_json(cls, text: str) -> "TokenMap":
        data = json.loads(text)
        return cls(data["atom_indices"], data["token_index"], data["token_names"],
                   data["atomic_numbers"], data["n_system_atoms"],
                   np.asarray(data.get("global_pairs", []), dtype=np.int64).reshape(-1, 2))


class TokenStandardizer(torch.nn.Module):
    """Per-token, per-feature scaling fitted on training tokens.

    Scalars are centred and scaled; vectors are only scaled (a shift would break their
    equivariance). Fitted statistics are buffers, so they travel with the exported CV.
    """

    def __init__(self, n_tokens: int, channels: int, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.register_buffer("scalar_mean", torch.zeros(n_tokens, channels, dtype=dtype))
        self.register_buffer("scalar_scale", torch.ones(n_tokens, channels, dtype=dtype))
        self.register_buffer("vector_scale", torch.ones(n_tokens, channels, dtype=dtype))

    @torch.jit.unused
    def fit(self, tokens: torch.Tensor) -> "TokenStandardizer":
        """Fit on training tokens (T, M, 4, d)."""
        tokens = tokens.to(self.scalar_mean.dtype)
        scalars = tokens[:, :, 0]
        self.scalar_mean.copy_(scalars.mean(0))
        self.scalar_scale.copy_(scalars.std(0).clamp(min=1e-6))
        vector_rms = tokens[:, :, 1:].pow(2).sum(2).mean(0).sqrt()
        self.vector_scale.copy_(vector_rms.clamp(min=1e-6))
        return self

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        scalars = (tokens[:, :, 0] - self.scalar_mean) / self.scalar_scale
        vectors = tokens[:, :, 1:] / self.vector_scale.unsqueeze(1)
        return torch.cat((scalars.unsqueeze(2), vectors), dim=2)


class TokenCV(torch.nn.Module):
    """The trainable part of a geom2vec CV: standardisation -> token mixer -> head.

    It is trained on stored token features (the backbone is frozen, so featurizing once is
    enough) and takes them *packed* into one flat tensor per frame, so that any trainer that
    batches ``(B, F)`` arrays (VAMPnet, SPIB) can use it: ``packed = [tokens.flatten(),
    global_features]``, see :meth:`pack`.

    Parameters
    ----------
    n_tokens, channels : M and d of the tokens (M, 4, d)
    global_dim : g, length of the global feature vector (0 for none)
    mixer : module ``(tokens (B, M, 4, d), global (B, g) or None) -> (B, F)``
    head : module ``(B, F) -> (B, k)``
    standardizer : TokenStandardizer, optional (identity until fitted)
    """

    def __init__(self, n_tokens: int, channels: int, global_dim: int, mixer: torch.nn.Module,
                 head: torch.nn.Module, standardizer: Optional[TokenStandardizer] = None,
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        self.n_tokens = int(n_tokens)
        self.channels = int(channels)
        self.global_dim = int(global_dim)
        self.token_size = self.n_tokens * 4 * self.channels
        self.mixer = mixer
        self.head = head
        self.standardizer = standardizer if standardizer is not None else \
            TokenStandardizer(self.n_tokens, self.channels, dtype)

    @staticmethod
    def pack(tokens: np.ndarray, global_features: Optional[np.ndarray] = None) -> np.ndarray:
        """(T, M*4*d + g) float32 rows from tokens (T, M, 4, d) and globals (T, g)."""
        flat = np.asarray(tokens, dtype=np.float32).reshape(len(tokens), -1)
        if global_features is None:
            return flat
        return np.concatenate([flat, np.asarray(global_features, np.float32)], axis=1)

    def unpack(self, packed: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        if packed.dim() != 2 or packed.size(1) != self.token_size + self.global_dim:
            raise ValueError("expected packed features of shape (B, "
                             + str(self.token_size + self.global_dim) + "), got "
                             + str(list(packed.shape)))
        tokens = packed[:, :self.token_size].reshape(packed.size(0), self.n_tokens, 4,
                                                     self.channels)
        global_features: Optional[torch.Tensor] = None
        if self.global_dim > 0:
            global_features = packed[:, self.token_size:]
        return tokens, global_features

    def from_tokens(self, tokens: torch.Tensor,
                    global_features: Optional[torch.Tensor]) -> torch.Tensor:
        """CVs (B, k) from raw (unstandardised) tokens (B, M, 4, d)."""
        return self.head(self.mixer(self.standardizer(tokens), global_features))

    def forward(self, packed: torch.Tensor) -> torch.Tensor:
        tokens, global_features = self.unpack(packed)
        return self.from_tokens(tokens, global_features)


class Geom2VecCV(torch.nn.Module):
    """A whole geom2vec collective variable: ``positions[N, 3]`` nm (, box) -> ``cv[k]``.

    Parameters
    ----------
    featurizer : Geom2VecFeaturizer (frozen: its parameters are not trained further)
    token_map : TokenMap
    token_cv : TokenCV (standardisation, mixer and head, trained on stored tokens)
    mean_pooling : bool
        Token pooling by mean instead of sum (must match how the training tokens were made).

    ``forward`` takes one frame (the export contract); :meth:`batch` takes ``(B, N, 3)``.
    Gradients with respect to positions flow through the frozen featurizer, so OpenMM gets
    biasing forces from one backward pass.
    """

    def __init__(self, featurizer: Geom2VecFeaturizer, token_map: TokenMap, token_cv: TokenCV,
                 mean_pooling: bool = False):
        super().__init__()
        if token_cv.n_tokens != token_map.n_tokens or token_cv.global_dim != token_map.global_dim:
            raise ValueError(f"the trained CV expects {token_cv.n_tokens} tokens and "
                             f"{token_cv.global_dim} global features; the token map has "
                             f"{token_map.n_tokens} and {token_map.global_dim}")
        if token_cv.channels != featurizer.hidden_channels:
            raise ValueError(f"the trained CV expects {token_cv.channels} features per token; "
                             f"the backbone gives {featurizer.hidden_channels}")
        featurizer.check_atomic_numbers(torch.as_tensor(token_map.atomic_numbers))
        self.featurizer = featurizer
        for parameter in self.featurizer.parameters():
            parameter.requires_grad_(False)
        self.token_cv = token_cv
        self.n_system_atoms = int(token_map.n_system_atoms)
        self.n_tokens = int(token_map.n_tokens)
        self.mean_pooling = bool(mean_pooling)
        self.has_global = token_map.global_dim > 0
        self.register_buffer("atom_indices", torch.as_tensor(token_map.atom_indices))
        self.register_buffer("token_index", torch.as_tensor(token_map.token_index))
        self.register_buffer("atomic_numbers", torch.as_tensor(token_map.atomic_numbers))
        self.register_buffer("global_pairs", torch.as_tensor(token_map.global_pairs))

    def batch(self, positions: torch.Tensor, boxes: Optional[torch.Tensor] = None) -> torch.Tensor:
        """CVs of ``(B, N, 3)`` nm frames: ``(B, k)``."""
        if positions.dim() != 3 or positions.size(1) != self.n_system_atoms:
            raise ValueError("this CV was built for " + str(self.n_system_atoms)
                             + " atoms, got positions of shape " + str(list(positions.shape)))
        selected = positions.index_select(1, self.atom_indices)
        # atomic numbers checked at construction; non-finite CVs are refused by the export wrapper
        features = self.featurizer(self.atomic_numbers, selected, boxes, False)
        tokens = pool_tokens(features, self.token_index, self.n_tokens, self.mean_pooling)
        global_features: Optional[torch.Tensor] = None
        if self.has_global:
            global_features = global_distances(positions, self.global_pairs, boxes)
        return self.token_cv.from_tokens(tokens, global_features)

    def forward(self, positions: torch.Tensor, box: Optional[torch.Tensor] = None) -> torch.Tensor:
        boxes: Optional[torch.Tensor] = None
        dtype = self.featurizer.angstrom_per_nm.dtype
        if box is not None:
            boxes = box.to(dtype).unsqueeze(0)
        return self.batch(positions.to(dtype).unsqueeze(0), boxes).squeeze(0)


def global_distances(positions: torch.Tensor, pairs: torch.Tensor,
                     boxes: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Distances (B, P) in nm between atom pairs (P, 2), minimum image when boxes are given."""
    d = positions[:, pairs[:, 1]] - positions[:, pairs[:, 0]]
    if boxes is not None:
        # Reduced (lower-triangular) boxes: subtract c, then b, then a multiples.
        for axis in (2, 1, 0):
            row = boxes[:, axis].unsqueeze(1)  # (B, 1, 3)
            d = d - torch.round(d[:, :, axis:axis + 1] / row[:, :, axis:axis + 1]) * row
    return torch.sqrt((d * d).sum(-1) + 1e-12)
