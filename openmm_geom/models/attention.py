"""Sparse graph-attention potential (GATv2-style message passing, after the JAT model).

Architecture (chapter 3 of ``sparse-graph-attention-ionic-liquid-potentials``, our PyTorch
implementation):

1. **Graph**: every pair closer than the cutoff, periodic and triclinic, from
   :func:`openmm_geom.ops.neighbors.neighbor_pairs` (vesin, O(N)); each pair becomes two
   directed edges so that sender and receiver projections may differ.
2. **Embedding** of the element of each atom into ``features`` channels.
3. **Attention layers** (``layers`` of them, ``heads`` heads each). For an edge from sender
   ``j`` to receiver ``i`` at distance ``r``::

       e_ij   = a_h . swish(W_r h_i + W_s h_j + W_e phi(r))          (GATv2: nonlinearity
                                                                       before the vector a)
       alpha_ij = u(r) exp(e_ij) / (exp(b_h) + sum_k u(r_ik) exp(e_ik))
       m_i    = sum_j alpha_ij (W_v h_j * W_f phi(r))
       h_i   <- LayerNorm(h_i + swish(W_o m_i))                       (skip connection)

   Logits and sink are soft-bounded to +-5 (``5 tanh(x/5)``) so that the weight of an atom's
   only neighbour fades out smoothly over the last few percent of the cutoff.
   ``phi`` is a Gaussian radial basis evenly spaced in ``exp(-2.5 r / cutoff)`` (fine at bond
   lengths, coarse near the cutoff, like PhysNet's and TorchMD-Net's expnorm) and ``u`` a
   polynomial envelope (DimeNet's, p = 6) that falls from 1 to 0 between r = 0 and the cutoff with vanishing first and second
   derivatives there. The softmax is *envelope-weighted* and has a learned per-head sink ``b_h``: a
   neighbour's weight therefore goes to zero continuously as it reaches the cutoff, and an
   atom whose last neighbour leaves does not divide by zero. A plain softmax would
   renormalise the remaining weights the moment a pair crosses the cutoff, so energies would
   jump; with this form energy and forces are continuous (tested).

   **Vector channels** (``vector_features = Fv > 0``; default 0, scalar channels only): each
   atom also carries ``v_i`` (3, Fv), zero before the first layer. Every layer adds an
   envelope-weighted *sum* (not the softmax) of direction-carrying messages, with ``a``, ``b``
   from the value projection and ``phi_a``, ``phi_b`` from the radial filter::

       v_i   <- v_i + s_v sum_j u(r) [(a_j * phi_a(r)) v_j + (b_j * phi_b(r)) rhat_ij]
       h_i   <- LayerNorm(h_i + swish(W_o [m_i, <U v_i, W v_i>]))
       v_i   <- v_i + (X v_i) sigmoid(W_g h_i)

   The dot products ``<U v_i, W v_i>`` (U, W, X mix channels only) are sums of cosines of the
   angles between neighbours of ``i``: the model sees three-body geometry (e.g. a water bend)
   in one layer. From the second layer on, ``rhat_ij . (Q v_i) - rhat_ij . (K v_j)`` is added
   inside the swish of ``e_ij`` (``angular_logits``). Every new term carries ``u(r)`` or is a
   smooth function of terms that do, so continuity at the cutoff is kept; energies are
   invariant under rotations, reflections and translations.
4. **Pyramidal readout**: ``features -> features/2 -> features/4 -> features/4 -> 1`` dense
   layers with swish and layer normalisation, giving per-atom energies that are summed.

Units: nm and kJ/mol (the base class :class:`AtomisticPotential` adds per-element offsets and
the energy scale). Scriptable with ``torch.jit.script``, float32 or float64.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import torch
from torch.nn import functional as F

from .atomistic import AtomisticPotential, smooth_envelope

__all__ = ["AttentionPotential", "smooth_envelope", "LOGIT_BOUND", "VECTOR_SCALE"]

LOGIT_BOUND = 5.0  # |attention logit| and |sink| stay below this (soft, via tanh)
RBF_GAMMA_TIMES_CUTOFF = 2.5  # decay of the exp(-gamma r) radial coordinate, times the cutoff
VECTOR_SCALE = 0.125  # factor of the summed vector messages, about 1/sqrt(neighbours in water)


def both_directions(per_pair: torch.Tensor) -> torch.Tensor:
    """(2P, ...) a per-pair quantity for both directed edges of each pair (the edge order of
    :meth:`AttentionPotential.interaction_energies`: every pair ``i -> j``, then ``j -> i``).

    Radial filters depend on the distance only, so they are computed once per pair: half
    the work of computing them per directed edge, same values.
    """
    return torch.cat([per_pair, per_pair])


class _AttentionLayer(torch.nn.Module):
    """One attention layer on scalar channels; ``vector_features`` widens the value, filter
    and output projections for :class:`_AngularAttentionLayer` (0: today's layer exactly)."""

    def __init__(self, features: int, heads: int, n_rbf: int, vector_features: int = 0,
                 summed_messages: bool = False):
        super().__init__()
        self.summed_messages = summed_messages
        self.sum_scale = VECTOR_SCALE
        self.heads = heads
        self.head_dim = features // heads
        self.features = features
        self.vector_features = vector_features
        self.receiver = torch.nn.Linear(features, features, bias=True)
        self.sender = torch.nn.Linear(features, features, bias=False)
        self.edge = torch.nn.Linear(n_rbf, features, bias=False)
        self.attention = torch.nn.Parameter(torch.randn(heads, self.head_dim) / math.sqrt(self.head_dim))
        self.sink = torch.nn.Parameter(torch.zeros(heads))
        self.logit_bound = LOGIT_BOUND
        # values: the scalar message (features) and, with vectors, the two per-edge gates
        # of the vector message (vector_features each)
        self.value = torch.nn.Linear(features, features + 2 * vector_features, bias=False)
        self.filter = torch.nn.Linear(n_rbf, features + 2 * vector_features, bias=True)
        self.output = torch.nn.Linear(features * (2 if summed_messages else 1) + vector_features,
                                      features, bias=True)
        self.norm = torch.nn.LayerNorm(features)

    def attention_weights(self, h: torch.Tensor, receivers: torch.Tensor, senders: torch.Tensor,
                          basis: torch.Tensor, envelope: torch.Tensor,
                          angular: Optional[torch.Tensor]) -> torch.Tensor:
        """(E, H) envelope-weighted softmax weights with the sink; ``basis`` is per pair
        (P = E/2, n_rbf), ``envelope`` per edge (E,); ``angular`` (E, F) is added to the
        lifted edge features before the swish."""
        n, e = h.size(0), receivers.size(0)
        lifted = (self.receiver(h).index_select(0, receivers) + self.sender(h).index_select(0, senders)
                  + both_directions(self.edge(basis)))
        if angular is not None:
            lifted = lifted + angular
        raw = (F.silu(lifted).view(e, self.heads, self.head_dim) * self.attention).sum(-1)  # (E, H)
        # Soft-bounded logits and sink: a lone neighbour's weight u e^l / (e^b + u e^l) then
        # fades out over a finite distance before the cutoff instead of a near-step.
        logits = self.logit_bound * torch.tanh(raw / self.logit_bound)
        sink = self.logit_bound * torch.tanh(self.sink / self.logit_bound)
        # Any per-receiver constant cancels in the ratio below; the largest logit keeps exp()
        # finite. Detached because it does not change the value, so it has no gradient.
        shift = torch.zeros(n, self.heads, dtype=h.dtype, device=h.device).scatter_reduce(
            0, receivers.unsqueeze(1).expand(e, self.heads), logits.detach(), "amax", include_self=False)
        shift = torch.maximum(shift, sink.detach().to(h.dtype).unsqueeze(0))
        weights = envelope.unsqueeze(1) * torch.exp(logits - shift.index_select(0, receivers))
        denominator = torch.exp(sink.to(h.dtype).unsqueeze(0) - shift).index_add(0, receivers, weights)
        return weights / denominator.index_select(0, receivers)  # (E, H)

    def forward(self, h: torch.Tensor, v: torch.Tensor, receivers: torch.Tensor,
                senders: torch.Tensor, basis: torch.Tensor, envelope: torch.Tensor,
                unit: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """New scalar channels ``h`` (N, F); ``v`` is returned untouched and ``unit`` unused."""
        n = h.size(0)
        alpha = self.attention_weights(h, receivers, senders, basis, envelope, None)
        values = self.value(h).index_select(0, senders) * both_directions(self.filter(basis))
        aggregated = self.aggregate(values, alpha, receivers, envelope, n)
        return self.norm(h + F.silu(self.output(aggregated))), v

    def aggregate(self, scalar: torch.Tensor, alpha: torch.Tensor, receivers: torch.Tensor,
                  envelope: torch.Tensor, n: int) -> torch.Tensor:
        """(N, F) softmax-weighted messages ``scalar`` (E, F) per receiver; with
        ``summed_messages`` also (N, F) their envelope-weighted sum, scaled by
        :data:`VECTOR_SCALE` (it keeps the neighbour count the softmax divides out)."""
        e = scalar.size(0)
        averaged = torch.zeros(n, self.heads, self.head_dim, dtype=scalar.dtype,
                               device=scalar.device).index_add(
            0, receivers, alpha.unsqueeze(2) * scalar.reshape(e, self.heads, self.head_dim))
        if not self.summed_messages:
            return averaged.view(n, -1)
        summed = torch.zeros(n, self.features, dtype=scalar.dtype, device=scalar.device).index_add(
            0, receivers, (self.sum_scale * envelope).unsqueeze(1) * scalar)
        return torch.cat([averaged.view(n, -1), summed], dim=1)


class _AngularAttentionLayer(_AttentionLayer):
    """An attention layer that also carries ``vector_features`` equivariant vector channels.

    Vectors ``v`` (N, 3, Fv) receive an envelope-weighted *sum* (not softmax) of messages
    ``s_v u(r) [(a_j phi_a(r)) v_j + (b_j phi_b(r)) rhat_ij]``; channel-mixed dot products
    ``<U v_i, W v_i>`` (rotation- and reflection-invariant sums of cosines of the angles
    at atom i) join the scalar update, and a gate set by the new ``h`` updates ``v``. With
    ``angular_logits`` the attention logits also see ``rhat_ij . (Q v_i) - rhat_ij . (K v_j)``.
    Only linear channel mixing touches ``v``, so it stays equivariant; dot products rather than
    norms, whose gradient is infinite at ``v = 0`` (where ``v`` starts). The ``first`` layer's
    incoming vectors are zero: it skips the terms that read them, angular logits included.
    """

    def __init__(self, features: int, heads: int, n_rbf: int, vector_features: int,
                 angular_logits: bool, vector_scale: float, first: bool = False,
                 summed_messages: bool = False):
        super().__init__(features, heads, n_rbf, vector_features, summed_messages)
        self.vector_scale = vector_scale
        self.reads_vectors = not first
        angular_logits = angular_logits and not first
        self.vector_mix = torch.nn.Linear(vector_features, 3 * vector_features, bias=False)
        self.gate = torch.nn.Linear(features, vector_features, bias=True)
        self.angle_receiver: Optional[torch.nn.Linear] = None
        self.angle_sender: Optional[torch.nn.Linear] = None
        if angular_logits:
            self.angle_receiver = torch.nn.Linear(vector_features, features, bias=False)
            self.angle_sender = torch.nn.Linear(vector_features, features, bias=False)

    def forward(self, h: torch.Tensor, v: torch.Tensor, receivers: torch.Tensor,
                senders: torch.Tensor, basis: torch.Tensor, envelope: torch.Tensor,
                unit: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """New ``(h, v)``; ``unit`` (E, 3) points from each edge's receiver to its sender."""
        n, fv = h.size(0), self.vector_features
        v_senders = v.index_select(0, senders) if self.reads_vectors else v  # (E, 3, Fv)
        angular: Optional[torch.Tensor] = None
        if self.angle_receiver is not None and self.angle_sender is not None:
            # rhat_ij . (Q v_i) = Q (rhat_ij . v_i): project on the edge first, (E, Fv) -> (E, F)
            along_receiver = (v.index_select(0, receivers) * unit.unsqueeze(2)).sum(1)
            along_sender = (v_senders * unit.unsqueeze(2)).sum(1)
            angular = self.angle_receiver(along_receiver) - self.angle_sender(along_sender)
        alpha = self.attention_weights(h, receivers, senders, basis, envelope, angular)
        values = self.value(h).index_select(0, senders) * both_directions(self.filter(basis))
        scalar, a, b = torch.split(values, [self.features, fv, fv], dim=1)
        aggregated = self.aggregate(scalar, alpha, receivers, envelope, n)
        # The vector message is an envelope-weighted sum: it keeps the neighbour count and
        # fades out with vanishing first and second derivatives at the cutoff.
        weight = (self.vector_scale * envelope).unsqueeze(1)
        messages = (b * weight).unsqueeze(1) * unit.unsqueeze(2)  # (E, 3, Fv)
        if self.reads_vectors:
            messages = messages + (a * weight).unsqueeze(1) * v_senders
        v = v + torch.zeros(n, 3, fv, dtype=h.dtype, device=h.device).index_add(0, receivers, messages)
        first, second, update = torch.split(self.vector_mix(v), [fv, fv, fv], dim=2)
        dots = (first * second).sum(1)  # (N, Fv)
        h = self.norm(h + F.silu(self.output(torch.cat([aggregated, dots], dim=1))))
        return h, v + update * torch.sigmoid(self.gate(h)).unsqueeze(1)


class AttentionPotential(AtomisticPotential):
    """GATv2-style graph-attention potential; nm in, kJ/mol out.

    Parameters
    ----------
    atomic_numbers : sequence of int (N,)
        The system's atoms in order.
    cutoff : float
        Graph cutoff in nm (default 0.5). Periodic boxes must be at least twice as wide.
    features : int
        Channels per atom (divisible by ``heads``).
    layers, heads : int
        Message-passing layers and attention heads per layer.
    n_rbf : int
        Gaussian radial basis functions, evenly spaced in ``exp(-2.5 r / cutoff)``.
    elements : sequence of int, optional
        Elements the model can handle (default: those in ``atomic_numbers``).
    dtype : torch.dtype
        float32 (default) or float64.
    seed : int
        Seed of the weight initialisation.
    vector_features : int
        Equivariant vector channels per atom (default 0: scalar channels only, the model
        as it was before vectors, with the same parameters and energies). With vectors, each
        layer sends direction-carrying messages and feeds angular invariants (dot products of
        vector channels) into the scalar update (see the module description).
    angular_logits : bool
        With vectors, let the attention logits of layers 2 onwards depend on the neighbour's
        direction relative to the receiver's and sender's vector channels (default True).
    vector_scale : float
        Fixed factor of the summed vector messages (default 0.125, about 1/sqrt(52), the
        mean neighbour count of liquid water within 0.5 nm). A constant, not a normalisation
        by the neighbour count, so that energies stay continuous at the cutoff.
    summed_messages : bool
        Also feed each layer's update the envelope-weighted *sum* of the scalar messages
        (times 0.125) beside their softmax average (default False). The softmax divides out
        how many neighbours an atom has; the sum keeps that density signal, as ET's
        unnormalised attention does.
    """

    def __init__(self, atomic_numbers: Sequence[int], cutoff: float = 0.5, features: int = 48,
                 layers: int = 4, heads: int = 4, n_rbf: int = 32,
                 elements: Optional[Sequence[int]] = None, dtype: torch.dtype = torch.float32,
                 seed: int = 0, vector_features: int = 0, angular_logits: bool = True,
                 vector_scale: float = VECTOR_SCALE, summed_messages: bool = False):
        super().__init__(atomic_numbers, elements, cutoff)
        if features % heads != 0:
            raise ValueError(f"features ({features}) must be divisible by heads ({heads})")
        if dtype not in (torch.float32, torch.float64):
            raise TypeError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        if layers < 1 or n_rbf < 1 or features < 4:
            raise ValueError("layers and n_rbf must be >= 1 and features >= 4")
        if isinstance(vector_features, bool) or int(vector_features) != vector_features \
                or vector_features < 0:
            raise ValueError(f"vector_features must be an integer >= 0, got {vector_features!r}")
        if not (math.isfinite(vector_scale) and vector_scale > 0):
            raise ValueError(f"vector_scale must be a finite number > 0, got {vector_scale!r}")
        vector_features = int(vector_features)
        self.hyperparameters = {
            "architecture": "attention", "cutoff": float(cutoff), "features": int(features),
            "layers": int(layers), "heads": int(heads), "n_rbf": int(n_rbf),
            "elements": list(self.elements), "dtype": str(dtype).replace("torch.", ""),
        }
        if summed_messages:  # absent: softmax messages only (files from before the option)
            self.hyperparameters["summed_messages"] = True
        if vector_features > 0:  # absent: scalar channels only (files from before vectors)
            self.hyperparameters.update(vector_features=vector_features,
                                        angular_logits=bool(angular_logits),
                                        vector_scale=float(vector_scale))
        self.vector_features = vector_features
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.embedding = torch.nn.Embedding(len(self.elements), features)
            summed = bool(summed_messages)
            if vector_features == 0:
                stack = [_AttentionLayer(features, heads, n_rbf, 0, summed) for _ in range(layers)]
            else:
                # the vectors are zero when the first layer reads them: no angular logits there
                stack = [_AngularAttentionLayer(features, heads, n_rbf, vector_features,
                                                bool(angular_logits), float(vector_scale), k == 0,
                                                summed)
                         for k in range(layers)]
            self.layers = torch.nn.ModuleList(stack)
            widths = [features, max(features // 2, 1), max(features // 4, 1), max(features // 4, 1)]
            readout: List[torch.nn.Module] = []
            for n_in, n_out in zip(widths[:-1], widths[1:]):
                readout += [torch.nn.Linear(n_in, n_out), torch.nn.SiLU(), torch.nn.LayerNorm(n_out)]
            readout.append(torch.nn.Linear(widths[-1], 1))
            self.readout = torch.nn.Sequential(*readout)
        # Gaussians evenly spaced in exp(-gamma r), not in r: dense at bond lengths (0.01 nm
        # apart near 0.1 nm), coarser at the cutoff (0.07 nm). With even spacing in r, 16
        # functions could not resolve the stiff O-H stretch of flexible water (forces did not
        # fit even on 4 frames); 64 could, at twice the cost of 32 of these.
        self.rbf_gamma = RBF_GAMMA_TIMES_CUTOFF / float(cutoff)
        low = math.exp(-RBF_GAMMA_TIMES_CUTOFF)
        self.register_buffer("rbf_centers", torch.linspace(low, 1.0, n_rbf))
        self.rbf_width = float((1.0 - low) / max(n_rbf - 1, 1))
        self.shares_pairs = True  # the base class's one pair search per frame
        self.to(dtype)

    @classmethod
    def from_hyperparameters(cls, atomic_numbers: Sequence[int], hp: dict) -> "AttentionPotential":
        """Rebuild a model from its ``hyperparameters`` (weights come from a state dict)."""
        return cls(atomic_numbers, cutoff=hp["cutoff"], features=hp["features"], layers=hp["layers"],
                   heads=hp["heads"], n_rbf=hp["n_rbf"], elements=hp["elements"],
                   dtype=getattr(torch, hp["dtype"]), vector_features=hp.get("vector_features", 0),
                   angular_logits=hp.get("angular_logits", True),
                   vector_scale=hp.get("vector_scale", VECTOR_SCALE),
                   summed_messages=hp.get("summed_messages", False))

    def interaction_energies(self, positions: torch.Tensor, boxes: Optional[torch.Tensor],
                             pairs: Optional[Tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                   torch.Tensor]]
                             ) -> torch.Tensor:
        dtype = self.rbf_centers.dtype
        frames, n_atoms = positions.size(0), positions.size(1)
        if pairs is None:
            pairs = self.pairs(positions, boxes)
        i, j, r = pairs[0], pairs[1], pairs[3].to(dtype)
        # Each pair is two directed edges: sender and receiver projections differ (W_s != W_r).
        # Radial terms (basis, envelope) stay per pair, the layers expand them.
        receivers, senders = torch.cat([i, j]), torch.cat([j, i])
        h = self.embedding(self.species).repeat(frames, 1)
        # Vector channels start at zero; unit vectors point from receiver to sender (the pair
        # vectors are r_j - r_i). Without vectors both stay empty and unused.
        v = torch.zeros(h.size(0), 3, self.vector_features, dtype=h.dtype, device=h.device)
        unit = torch.zeros(0, 3, dtype=h.dtype, device=h.device)
        if self.vector_features > 0:
            d = pairs[2].to(dtype) / r.unsqueeze(1)
            unit = torch.cat([d, -d])
        # The envelope enters through the attention weights, which carry every scalar message,
        # and multiplies every vector message.
        envelope = both_directions(smooth_envelope(r, self.cutoff))
        u = torch.exp(-self.rbf_gamma * r).unsqueeze(1)
        basis = torch.exp(-((u - self.rbf_centers) / self.rbf_width) ** 2)  # (P, n_rbf)
        for layer in self.layers:
            h, v = layer(h, v, receivers, senders, basis, envelope, unit)
        atomic = self.readout(h).view(frames, n_atoms)
        return atomic.sum(1)
