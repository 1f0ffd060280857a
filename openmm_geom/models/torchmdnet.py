"""torchmd-net's equivariant transformer (ET) and TensorNet behind :class:`AtomisticPotential`.

:class:`TorchMDNetPotential` builds torchmd-net 2.6.2's representation network
(``TorchMD_ET`` or ``TensorNet``) and its scalar energy head (``EquivariantScalar`` for ET,
``Scalar`` for TensorNet) and runs them on our interface: positions in nm in, energies in kJ/mol
out, periodic triclinic boxes, batches of frames, ``torch.jit.script`` and the openmm-torch
export.

Units inside the network
    torchmd-net is fed **angstrom**: positions, boxes and the cutoff are multiplied by 10 on the
    way in. Its radial basis is not scale-free (``ExpNormalSmearing`` places its centres
    between ``exp(-cutoff)`` and 1, PhysNet's choice for cutoffs of about 5 A); fed nm with a
    0.5 nm cutoff all the centres would crowd at short range. The energy head's output *is* the
    energy in kJ/mol (it is learned, so no conversion applies); forces come out in kJ/mol/nm
    because autograd differentiates through the x10.

Neighbour pairs
    ``neighbors="vesin"`` (default) replaces torchmd-net's ``OptimizedDistance`` submodule
    (``representation.distance``; O(N^2) brute force on CPU) by :class:`VesinEdges`, which
    calls our :class:`~openmm_geom.ops.neighbors.NeighborPairs` (vesin cell lists, O(N), any
    triclinic box, exact second derivatives) once per frame and rewrites the half list into
    the graph torchmd-net's layers expect, identical to what ``OptimizedDistance(loop=True,
    include_transpose=True)`` returns up to edge order: both directions of every pair with
    ``edge_vec = r[edge_index[0]] - r[edge_index[1]]``, plus one self-loop per atom (distance 0,
    vector 0), which both architectures use (it carries an atom's own features into its
    update). ``neighbors="torchmdnet"`` keeps torchmd-net's own search (for benchmarks),
    boxes passed per frame as ``(B, 3, 3)`` angstrom; it needs them in OpenMM's reduced
    lower-triangular form and keeps at most ``max_num_neighbors * N`` directed edges
    (self-loops included). Reaching that cap is an error here, also under TorchScript, where
    torchmd-net itself would silently drop the farthest pairs.

ET's cutoff
    ET is built with ``vector_cutoff=True``: torchmd-net's default multiplies only the attention
    weights by the cosine cutoff, so once ``dv_proj`` has a non-zero bias (any trained model)
    the vector messages of a pair jump when it crosses the cutoff, and so does the energy
    (by ~3% in a test with random weights). With the option, energies are continuous.
    ET warns (``GatedEquivariantBlock``) about atoms without any neighbour: their vector
    features are zero.

Checkpoints
    ``model.hyperparameters`` (plain JSON) plus ``model.state_dict()`` rebuild the model with
    :meth:`TorchMDNetPotential.from_hyperparameters`. The state dict does not depend on the
    neighbour mode, so weights trained with one run with the other.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from ..ops.neighbors import NeighborPairs, check_box_holds_cutoff
from .atomistic import AtomisticPotential

__all__ = ["TorchMDNetPotential", "ANGSTROM_PER_NM", "VesinEdges", "build_torchmdnet"]

ANGSTROM_PER_NM = 10.0
_ARCHITECTURES = ("et", "tensornet")
_NEIGHBORS = ("vesin", "torchmdnet")


class VesinEdges(torch.nn.Module):
    """Drop-in for torchmd-net's ``OptimizedDistance(loop=True, return_vecs=True)``, by vesin.

    ``forward(pos[M,3], batch[M], box[B,3,3] or [3,3] or None) -> (edge_index[2,E] int64,
    edge_weight[E], edge_vec[E,3])``, all in the length unit of ``pos`` (angstrom here). The
    ``M = B * n`` atoms are ``B`` frames of ``n`` atoms each, consecutive and in order (as
    :class:`TorchMDNetPotential` lays them out). ``E = 2 P + M``: every pair within
    ``cutoff`` in both directions, then one self-loop per atom.
    """

    def __init__(self, cutoff: float, dense_limit: int = 128):
        super().__init__()
        self.cutoff = float(cutoff)
        self.pairs = NeighborPairs(self.cutoff)
        # Batches of small non-periodic frames (featurizing a trajectory) are searched all at
        # once over every i < j pair: one vectorised pass instead of a vesin call per frame,
        # which held capped alanine to ~1,450 frames/s. Single frames (an OpenMM step) and
        # periodic or larger systems keep vesin, whose cost grows as N, not N^2.
        self.dense_limit = int(dense_limit)
        # Fixed shapes (enable_fixed_shapes): every ordered pair, none dropped, for tracing.
        self.every_pair = False

    @torch.jit.unused
    def enable_fixed_shapes(self) -> None:
        """Return every ordered pair of a non-periodic frame, whatever its distance.

        The edge count then depends on the atom count only, not on the positions, which is
        what ``torch.export`` and AOTInductor need (:func:`openmm_geom.export.export_model`
        with ``format="aoti"`` calls this on a copy of the model). The result is unchanged:
        both architectures multiply every message by the cosine cutoff (ET with
        ``vector_cutoff=True``), so pairs beyond the cutoff add exact zeros. Cost grows as N^2;
        periodic frames keep the neighbour search.
        """
        self.every_pair = True

    def forward(self, pos: torch.Tensor, batch: Optional[torch.Tensor] = None,
                box: Optional[torch.Tensor] = None, frames: int = -1
                ) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """``frames``: the frame count if the caller knows it (else read from ``batch``)."""
        total = pos.size(0)
        if frames < 0:
            frames = 1
            if batch is not None and total > 0:
                frames = int(batch[-1]) + 1
        if box is None and self.every_pair:
            return self._all_pairs_of_frames(pos, frames, total // frames, True)
        if box is not None and box.dim() == 2:
            box = box.unsqueeze(0)
        if box is not None and box.size(0) != frames:
            raise ValueError("expected one box per frame: " + str(frames) + " frames, "
                             + str(box.size(0)) + " boxes")
        n_atoms = total // frames
        if n_atoms * frames != total:
            raise ValueError("frames must all have the same number of atoms")
        if box is None and frames > 1 and n_atoms <= self.dense_limit:
            return self._all_pairs_of_frames(pos, frames, n_atoms)
        senders: List[torch.Tensor] = []
        receivers: List[torch.Tensor] = []
        vectors: List[torch.Tensor] = []
        lengths: List[torch.Tensor] = []
        for f in range(frames):
            frame_box: Optional[torch.Tensor] = None
            if box is not None:
                frame_box = box[f]
            pairs, vec, dist = self.pairs(pos[f * n_atoms:(f + 1) * n_atoms], frame_box)
            # vesin gives each pair once as (i, j) with vec = r_j - r_i; torchmd-net wants both
            # directions with edge_vec = r[edge_index[0]] - r[edge_index[1]], so (j, i) carries
            # +vec and (i, j) carries -vec. Mixing the two conventions would break ET's and
            # TensorNet's equivariance (a global flip would hide behind parity invariance).
            i = pairs[0] + f * n_atoms
            j = pairs[1] + f * n_atoms
            senders += [j, i]
            receivers += [i, j]
            vectors += [vec, -vec]
            lengths += [dist, dist]
        loops = torch.arange(total, dtype=torch.int64, device=pos.device)
        senders.append(loops)
        receivers.append(loops)
        vectors.append(pos.new_zeros((total, 3)))
        lengths.append(pos.new_zeros((total,)))
        edge_index = torch.stack([torch.cat(senders), torch.cat(receivers)])
        return edge_index, torch.cat(lengths), torch.cat(vectors)

    def _all_pairs_of_frames(self, pos: torch.Tensor, frames: int, n_atoms: int,
                             every_pair: bool = False
                             ) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """The same edges as the vesin path (both directions, then self-loops), grouped by
        direction instead of by frame: every pair of every frame within the cutoff; with
        ``every_pair``, every pair whatever its distance (shapes fixed by ``frames`` and
        ``n_atoms`` alone: no filter and no check of values, which tracing refuses)."""
        if not every_pair and not bool(torch.isfinite(pos).all()):
            raise ValueError("positions contain NaN or infinite values")
        upper = torch.triu_indices(n_atoms, n_atoms, 1, device=pos.device)
        frame_pos = pos.reshape(frames, n_atoms, 3)
        vec = frame_pos[:, upper[1]] - frame_pos[:, upper[0]]  # (B, P, 3): r_j - r_i
        dist = torch.linalg.vector_norm(vec, dim=-1)
        if every_pair:
            offsets = torch.arange(frames, dtype=torch.int64, device=pos.device).unsqueeze(1) \
                * n_atoms
            i = (upper[0].unsqueeze(0) + offsets).reshape(-1)
            j = (upper[1].unsqueeze(0) + offsets).reshape(-1)
            v = vec.reshape(-1, 3)
            d = dist.reshape(-1)
        else:
            kept = torch.nonzero(dist < self.cutoff)  # (Q, 2): frame, pair
            frame, pair = kept[:, 0], kept[:, 1]
            i = upper[0][pair] + frame * n_atoms
            j = upper[1][pair] + frame * n_atoms
            v = vec[frame, pair]
            d = dist[frame, pair]
        total = frames * n_atoms
        loops = torch.arange(total, dtype=torch.int64, device=pos.device)
        edge_index = torch.stack([torch.cat([j, i, loops]), torch.cat([i, j, loops])])
        return (edge_index, torch.cat([d, d, pos.new_zeros((total,))]),
                torch.cat([v, -v, pos.new_zeros((total, 3))]))


class _CappedSearch(torch.nn.Module):
    """torchmd-net's own ``OptimizedDistance``, made to fail loudly when its edge cap is hit.

    Its brute-force search keeps the ``max_num_neighbors * M`` shortest directed edges and
    only asserts on overflow in eager mode; under TorchScript (hence inside OpenMM) it drops
    the farthest pairs silently, which would give wrong energies.
    """

    def __init__(self, search: torch.nn.Module, max_num_neighbors: int):
        super().__init__()
        self.search = search
        self.max_num_neighbors = int(max_num_neighbors)

    def forward(self, pos: torch.Tensor, batch: Optional[torch.Tensor] = None,
                box: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor,
                                                              Optional[torch.Tensor]]:
        edge_index, edge_weight, edge_vec = self.search(pos, batch, box)
        cap = self.max_num_neighbors * pos.size(0)
        if edge_index.size(1) >= cap:
            raise ValueError("torchmd-net's pair search reached its cap of " + str(cap)
                             + " directed edges (max_num_neighbors = "
                             + str(self.max_num_neighbors) + " per atom, self-loop included), "
                             "so pairs may be missing: raise max_num_neighbors or use "
                             "neighbors='vesin', which has no cap")
        return edge_index, edge_weight, edge_vec


class TorchMDNetPotential(AtomisticPotential):
    """torchmd-net 2.6.2 ET or TensorNet as an :class:`AtomisticPotential`; nm in, kJ/mol out.

    Parameters
    ----------
    atomic_numbers : sequence of int (N,)
        The system's atoms in order; the true atomic numbers are what torchmd-net embeds.
    architecture : {"et", "tensornet"}
        Equivariant transformer (``TorchMD_ET``) or ``TensorNet``.
    cutoff : float
        Interaction cutoff in nm (default 0.5). Periodic boxes must be at least twice as wide.
    hidden_channels : int
        Feature channels per atom (for ET, divisible by ``num_heads``).
    num_layers : int
        Attention (ET) or interaction (TensorNet) layers.
    num_rbf : int
        Radial basis functions (torchmd-net's ``expnorm`` basis).
    elements : sequence of int, optional
        Elements the model can handle (default: those in ``atomic_numbers``).
    dtype : torch.dtype
        float32 (default) or float64.
    seed : int
        Seed of the weight initialisation (the global RNG is left untouched).
    neighbors : {"vesin", "torchmdnet"}
        Pair search: ours (O(N), default) or torchmd-net's brute force (O(N^2), benchmarks).
    max_num_neighbors : int
        torchmd-net's cap on directed edges per atom (self-loop included) in ``"torchmdnet"``
        mode; exceeding it is an error. Unused by ``"vesin"``, which has no cap.
    num_heads : int
        Attention heads (ET only).
    trainable_rbf : bool, optional
        Whether the radial basis is trained (default: torchmd-net's, True for ET, False for
        TensorNet).
    activation : str
        torchmd-net activation name (``"silu"``, ``"tanh"``, ...).
    equivariance_invariance_group : {"O(3)", "SO(3)"}
        TensorNet only.

    Attributes
    ----------
    hyperparameters : dict
        Everything needed to rebuild the model (plain JSON types); recorded by the export.
    representation : torch.nn.Module
        The torchmd-net representation network (angstrom inside).
    output_model : torch.nn.Module
        The torchmd-net per-atom energy head.
    """

    def __init__(self, atomic_numbers: Sequence[int], architecture: str = "et",
                 cutoff: float = 0.5, hidden_channels: int = 64, num_layers: int = 2,
                 num_rbf: int = 32, elements: Optional[Sequence[int]] = None,
                 dtype: torch.dtype = torch.float32, seed: int = 0, neighbors: str = "vesin",
                 max_num_neighbors: int = 128, num_heads: int = 8,
                 trainable_rbf: Optional[bool] = None, activation: str = "silu",
                 equivariance_invariance_group: str = "O(3)"):
        super().__init__(atomic_numbers, elements, cutoff)
        architecture = str(architecture).lower()
        if architecture not in _ARCHITECTURES:
            raise ValueError(f"architecture must be one of {_ARCHITECTURES}, got {architecture!r}")
        if neighbors not in _NEIGHBORS:
            raise ValueError(f"neighbors must be one of {_NEIGHBORS}, got {neighbors!r}")
        if dtype not in (torch.float32, torch.float64):
            raise TypeError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        if hidden_channels < 2 or num_layers < 1 or num_rbf < 1 or max_num_neighbors < 1:
            raise ValueError("hidden_channels must be >= 2; num_layers, num_rbf and "
                             "max_num_neighbors >= 1")
        if architecture == "et" and hidden_channels % num_heads != 0:
            raise ValueError(f"hidden_channels ({hidden_channels}) must be divisible by "
                             f"num_heads ({num_heads}) for ET")
        if trainable_rbf is None:
            trainable_rbf = architecture == "et"  # torchmd-net's defaults
        self.architecture = architecture
        self.neighbor_mode = neighbors
        self.cutoff_angstrom = self.cutoff * ANGSTROM_PER_NM
        self.hyperparameters: Dict[str, Any] = {
            "architecture": architecture, "cutoff": self.cutoff,
            "hidden_channels": int(hidden_channels), "num_layers": int(num_layers),
            "num_rbf": int(num_rbf), "num_heads": int(num_heads),
            "trainable_rbf": bool(trainable_rbf), "activation": str(activation),
            "equivariance_invariance_group": str(equivariance_invariance_group),
            "elements": list(self.elements), "dtype": str(dtype).replace("torch.", ""),
            "neighbors": neighbors, "max_num_neighbors": int(max_num_neighbors),
            "seed": int(seed), "internal_length_unit": "angstrom",
        }
        # Embedding rows for atomic numbers 0..max(elements): unseen elements are refused by
        # the base class (species_indices) before they could index past the table.
        max_z = max(self.elements) + 1
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.representation, self.output_model = build_torchmdnet(
                architecture, hidden_channels, num_layers, num_rbf, num_heads, bool(trainable_rbf),
                activation, equivariance_invariance_group, self.cutoff_angstrom, max_z,
                max_num_neighbors, dtype)
        if neighbors == "vesin":
            self.representation.distance = VesinEdges(self.cutoff_angstrom)
        else:
            search = self.representation.distance
            # OptimizedDistance keeps a placeholder box as a persistent buffer; leaving it out of
            # the state dict keeps checkpoints interchangeable between the two neighbour modes.
            search.register_buffer("box", search.box, persistent=False)
            self.representation.distance = _CappedSearch(search, max_num_neighbors)
        self.register_buffer("angstrom_per_nm", torch.tensor(ANGSTROM_PER_NM), persistent=False)
        self.to(dtype)

    @classmethod
    def from_hyperparameters(cls, atomic_numbers: Sequence[int], hyperparameters: Dict[str, Any],
                             **overrides) -> "TorchMDNetPotential":
        """Rebuild a model from its ``hyperparameters`` (then load the weights' state dict).

        ``overrides`` replace entries, e.g. ``neighbors="torchmdnet"`` to benchmark trained
        weights with torchmd-net's own pair search.
        """
        hp = dict(hyperparameters)
        hp.update(overrides)
        known = ("architecture", "cutoff", "hidden_channels", "num_layers", "num_rbf",
                 "elements", "seed", "neighbors", "max_num_neighbors", "num_heads",
                 "trainable_rbf", "activation", "equivariance_invariance_group")
        kwargs = {key: hp[key] for key in known if key in hp}
        if "dtype" in hp:
            kwargs["dtype"] = hp["dtype"] if isinstance(hp["dtype"], torch.dtype) \
                else getattr(torch, str(hp["dtype"]))
        return cls(atomic_numbers, **kwargs)

    def _check_boxes(self, boxes: torch.Tensor) -> None:
        """torchmd-net's own search only: its boxes must be in OpenMM's reduced form.

        (With vesin, the pair search checks the box against the cutoff.)"""
        rows_per_frame: List[List[List[float]]] = boxes.detach().to(torch.float64).tolist()
        for f in range(boxes.size(0)):
            a, b, c = rows_per_frame[f][0], rows_per_frame[f][1], rows_per_frame[f][2]
            if a[1] != 0.0 or a[2] != 0.0 or b[2] != 0.0 or a[0] < 2.0 * abs(b[0]) \
                    or a[0] < 2.0 * abs(c[0]) or b[1] < 2.0 * abs(c[1]):
                raise ValueError("torchmd-net's pair search needs boxes in reduced "
                                 "lower-triangular form (OpenMM's), got " + str(rows_per_frame[f])
                                 + "; use neighbors='vesin' for general boxes")
            check_box_holds_cutoff(boxes[f], self.cutoff)

    def interaction_energies(self, positions: torch.Tensor, boxes: Optional[torch.Tensor],
                             pairs: Optional[Tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                   torch.Tensor]]
                             ) -> torch.Tensor:
        """(B,) network energies in kJ/mol.

        Parameters
        ----------
        positions : Tensor (B, N, 3), nm
        boxes : Tensor (B, 3, 3), nm, rows a, b, c; or None (not periodic)
        pairs : unused: torchmd-net searches its own pairs
        """
        scale = self.angstrom_per_nm  # a buffer: it follows the model's dtype and device
        frames, n_atoms = positions.size(0), positions.size(1)
        pos = positions.to(scale.dtype).reshape(frames * n_atoms, 3) * scale
        box: Optional[torch.Tensor] = None
        if boxes is not None:
            if self.neighbor_mode == "torchmdnet":
                self._check_boxes(boxes)
            box = boxes.to(scale.dtype) * scale
        z = self.atomic_numbers.repeat(frames)
        batch = torch.arange(frames, dtype=torch.int64, device=pos.device).repeat_interleave(n_atoms)
        x, v, z, pos, batch = self.representation(z, pos, batch, box)
        atomic = self.output_model.pre_reduce(x, v, z, pos, batch)
        return atomic.reshape(frames, n_atoms).sum(1)

    def extra_repr(self) -> str:
        return (f"architecture={self.architecture!r}, cutoff={self.cutoff} nm, "
                f"neighbors={self.neighbor_mode!r}, elements={self.elements}")


def build_torchmdnet(architecture: str, hidden: int, layers: int, num_rbf: int, heads: int,
           trainable_rbf: bool, activation: str, group: str, cutoff_angstrom: float, max_z: int,
           max_num_neighbors: int, dtype: torch.dtype) -> Tuple[torch.nn.Module, torch.nn.Module]:
    """torchmd-net's representation network and energy head, as ``create_model`` pairs them."""
    from torchmdnet.models import output_modules

    if architecture == "et":
        from torchmdnet.models.torchmd_et import TorchMD_ET

        representation = TorchMD_ET(
            hidden_channels=hidden, num_layers=layers, num_rbf=num_rbf, rbf_type="expnorm",
            trainable_rbf=trainable_rbf, activation=activation, attn_activation=activation,
            neighbor_embedding=True, num_heads=heads, distance_influence="both",
            cutoff_lower=0.0, cutoff_upper=cutoff_angstrom, max_z=max_z,
            max_num_neighbors=max_num_neighbors, box_vecs=None, vector_cutoff=True, dtype=dtype)
        head = output_modules.EquivariantScalar(hidden, activation=activation, reduce_op="sum",
                                                dtype=dtype)
    else:
        from torchmdnet.models.tensornet import TensorNet

        # static_shapes=False: no padding edges to a ghost atom (that is for CUDA graphs).
        representation = TensorNet(
            hidden_channels=hidden, num_layers=layers, num_rbf=num_rbf, rbf_type="expnorm",
            trainable_rbf=trainable_rbf, activation=activation, cutoff_lower=0.0,
            cutoff_upper=cutoff_angstrom, max_num_neighbors=max_num_neighbors, max_z=max_z,
            equivariance_invariance_group=group, static_shapes=False, dtype=dtype, box_vecs=None)
        head = output_modules.Scalar(hidden, activation=activation, reduce_op="sum", dtype=dtype)
    # Some torchmd-net layers ignore ``dtype`` (TensorNet's bias-free tensor linears).
    return representation.to(dtype), head.to(dtype)
