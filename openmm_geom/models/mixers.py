"""Token mixers: structural tokens ``(B, M, 4, d)`` -> one invariant vector per frame ``(B, F)``.

geom2vec (Pengmei et al., section II.C "Feature combination", Appendix A.4 and B) turns the
per-residue (or per-unit) tokens of a frozen equivariant GNN into a representation for a
downstream head. The tokens come from :mod:`openmm_geom.models.geom2vec`: channel 0 holds the
``d`` invariant scalars, channels 1-3 the x, y, z components of ``d`` equivariant vectors, so
``tokens[:, :, 1:4, :]`` is a ``(3, d)`` block per token. Optional global features ``(B, g)``
(e.g. pairwise CA distances) must themselves be invariant.

Building blocks
---------------
- :class:`GatedEquivariantBlock` (Algorithm 1) and :class:`GVP` (Algorithm 2): scalar and vector
  features in, scalar and vector features out; scalars are rotation invariant and vectors
  rotate with the input. The vector layout is ``(..., 3, d)`` everywhere.
- :class:`MLP`: the output-head helper.

Mixers (``forward(tokens, global_features) -> (B, out_dim)``, all invariant under rotations)
------------------------------------------------------------------------------------------
==================  =================================================  =====================
name                what                                               token order
==================  =================================================  =====================
``pool``            :class:`TokenPooling`: sum/mean tokens, GEB         invariant
``subformer``       :class:`SubFormer`: GEB, transformer, CLS output    invariant (no
                                                                       positional encoding)
``submixer``        :class:`SubMixer`: GEB, MLP-Mixer, mean             order-dependent by
                                                                       design (token MLP)
``gvp``             :class:`GVPMixer`: GVP layers, mean                 invariant
``gvp+subformer``   :class:`GVPMixer` with a transformer on GVP scalars invariant
``gvp+submixer``    :class:`GVPMixer` with an MLP-Mixer on GVP scalars  order-dependent
==================  =================================================  =====================

Rotation invariance holds because only invariant quantities ever reach a nonlinearity or a
bias: vector features are combined linearly across channels (which commutes with a rotation of
the 3-axis) and enter the scalar stream only through their norms. Everything here is
scriptable with ``torch.jit.script`` and works in float32 and float64.

:func:`build_mixer` builds any of them by name and records plain-JSON ``hyperparameters`` that
rebuild the same architecture (``build_mixer(**mixer.hyperparameters)``).
"""
from __future__ import annotations

import inspect
import math
from typing import Any, Dict, List, Optional, Tuple

import torch

from .names import MIXER_NAMES

__all__ = ["MLP", "GatedEquivariantBlock", "GVP", "TransformerEncoderLayer", "ScalarTransformer",
           "MixerBlock", "ScalarMLPMixer", "TokenPooling", "SubFormer", "SubMixer", "GVPMixer",
           "build_mixer", "MIXER_NAMES", "ACTIVATIONS"]

ACTIVATIONS = {
    "silu": torch.nn.SiLU,
    "relu": torch.nn.ReLU,
    "gelu": torch.nn.GELU,
    "tanh": torch.nn.Tanh,
    "elu": torch.nn.ELU,
    "softplus": torch.nn.Softplus,
}



def _vector_norm(v: torch.Tensor) -> torch.Tensor:
    """Norm over the 3-axis of ``v (..., 3, c)`` -> ``(..., c)``.

    The clamp keeps the gradient finite for a zero vector (d|v|/dv is undefined at 0, and
    zero vectors are common: a token whose atoms' vectors cancel, zero-initialised inputs).
    It changes only norms below 1e-10, far under any feature scale.
    """
    return torch.sqrt(torch.clamp((v * v).sum(-2), min=1e-20))


def _check_tokens(tokens: torch.Tensor, d: int) -> None:
    if tokens.dim() != 4 or tokens.size(2) != 4 or tokens.size(3) != d:
        raise ValueError(f"tokens must have shape (B, M, 4, d={d}) (channel 0 scalars, 1-3 vector "
                         f"x, y, z), got {list(tokens.shape)}")
    if tokens.size(1) < 1:
        raise ValueError("tokens must hold at least one token (M >= 1)")


def _check_global(global_features: Optional[torch.Tensor], global_dim: int,
                  batch: int) -> Optional[torch.Tensor]:
    # Strict in both directions: silently ignoring given global features (or running without
    # the ones the model was trained with) would give a plausible but wrong representation.
    if global_dim == 0:
        if global_features is not None:
            raise ValueError("global_features were given but the mixer was built with "
                             "global_dim=0; build it with global_dim=g to use them")
        return None
    if global_features is None:
        raise ValueError(f"the mixer was built with global_dim={global_dim} and needs "
                         f"global_features of shape (B, {global_dim}), got None")
    if global_features.dim() != 2 or global_features.size(0) != batch \
            or global_features.size(1) != global_dim:
        raise ValueError(f"global_features must have shape (B={batch}, {global_dim}), "
                         f"got {list(global_features.shape)}")
    return global_features


class MLP(torch.nn.Module):
    """Multilayer perceptron ``in_dim -> hidden -> ... -> out_dim`` (the output head).

    Parameters
    ----------
    in_dim, hidden, out_dim : int
        Input, hidden and output widths.
    layers : int
        Number of linear layers (>= 1); 1 is a single affine map (``hidden`` unused).
    activation : str
        One of :data:`ACTIVATIONS` (``"silu"``, ``"relu"``, ``"gelu"``, ``"tanh"``, ``"elu"``,
        ``"softplus"``), applied between linear layers, not after the last.
    dropout : float
        Dropout probability after each activation.

    Notes
    -----
    ``forward(x (..., in_dim)) -> (..., out_dim)``.
    """

    def __init__(self, in_dim: int, hidden: int, out_dim: int, layers: int = 2,
                 activation: str = "silu", dropout: float = 0.0):
        super().__init__()
        if layers < 1:
            raise ValueError(f"MLP needs layers >= 1, got {layers}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; valid: {sorted(ACTIVATIONS)}")
        widths = [in_dim] + [hidden] * (layers - 1) + [out_dim]
        modules: List[torch.nn.Module] = []
        for i in range(layers):
            modules.append(torch.nn.Linear(widths[i], widths[i + 1]))
            if i < layers - 1:
                modules.append(ACTIVATIONS[activation]())
                if dropout > 0:
                    modules.append(torch.nn.Dropout(dropout))
        self.net = torch.nn.Sequential(*modules)
        self.in_dim = in_dim
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x (..., in_dim) -> (..., out_dim)``."""
        return self.net(x)


class GatedEquivariantBlock(torch.nn.Module):
    """Gated equivariant block (paper Algorithm 1; Schütt et al. PaiNN-style gating).

    Parameters
    ----------
    in_channels, out_channels : int
        Feature counts ``d_in`` (scalars and vectors alike) and ``d_out``.
    hidden : int, optional
        Width of the vector-norm stream and of the scalar MLP; default ``max(d_in, d_out)``.
    vector_output : bool
        If False the block computes only the scalar output (no gate, no vector projection) and
        returns an empty ``(..., 3, 0)`` vector tensor; mixers that keep only scalars use this
        so that every parameter influences the output.

    Notes
    -----
    ``forward(x (..., d_in), v (..., 3, d_in)) -> (x' (..., d_out), v' (..., 3, d_out))``:

    1. ``n = |W_1 v|`` (norm over the 3-axis), ``u = W_2 v`` (no bias: a bias would not rotate);
    2. ``[s, g] = W_4 silu(W_3 [x, n] + b_3) + b_4``;
    3. ``x' = silu(s)``, ``v' = g * u``.

    ``x'`` is invariant and ``v'`` equivariant: rotating ``v`` along its 3-axis rotates ``v'``.
    """

    def __init__(self, in_channels: int, out_channels: int, hidden: Optional[int] = None,
                 vector_output: bool = True):
        super().__init__()
        hidden = max(in_channels, out_channels) if hidden is None else hidden
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.vector_output = vector_output
        self.norm_proj = torch.nn.Linear(in_channels, hidden, bias=False)
        self.vector_proj: Optional[torch.nn.Linear] = (
            torch.nn.Linear(in_channels, out_channels, bias=False) if vector_output else None)
        self.update = torch.nn.Sequential(
            torch.nn.Linear(in_channels + hidden, hidden), torch.nn.SiLU(),
            torch.nn.Linear(hidden, 2 * out_channels if vector_output else out_channels))

    def forward(self, x: torch.Tensor, v: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Scalars ``(..., d_in)`` and vectors ``(..., 3, d_in)`` -> ``(..., d_out)``, ``(..., 3, d_out)``."""
        if x.size(-1) != self.in_channels or v.dim() != x.dim() + 1 or v.size(-2) != 3 \
                or v.size(-1) != self.in_channels:
            raise ValueError(f"GatedEquivariantBlock expects x (..., {self.in_channels}) and "
                             f"v (..., 3, {self.in_channels}), got {list(x.shape)} and "
                             f"{list(v.shape)}")
        h = self.update(torch.cat((x, _vector_norm(self.norm_proj(v))), dim=-1))
        vector_proj = self.vector_proj
        if vector_proj is None:
            return torch.nn.functional.silu(h), v[..., :0]
        s, gate = h[..., :self.out_channels], h[..., self.out_channels:]
        return torch.nn.functional.silu(s), gate.unsqueeze(-2) * vector_proj(v)


class GVP(torch.nn.Module):
    """Geometric vector perceptron (paper Algorithm 2; Jing et al. 2021).

    Parameters
    ----------
    in_scalar, in_vector : int
        Input scalar and vector channel counts.
    out_scalar, out_vector : int
        Output channel counts; ``out_vector=0`` skips the vector output (returns ``(..., 3, 0)``)
        so that a last layer whose vectors are discarded has no unused weights.
    hidden_vector : int, optional
        Channels ``d_h`` of the projected vectors; default ``max(in_vector, out_vector)``.

    Notes
    -----
    ``forward(x (..., in_scalar), v (..., 3, in_vector)) -> (x' (..., out_scalar),
    v' (..., 3, out_vector))``:

    ``v_h = W_h v``, ``x' = silu(W_m [|v_h|, x] + b_m)``, ``v_o = W_o v_h``,
    ``v' = sigmoid(|v_o|) * v_o`` (norms over the 3-axis, per channel).
    """

    def __init__(self, in_scalar: int, in_vector: int, out_scalar: int, out_vector: int,
                 hidden_vector: Optional[int] = None):
        super().__init__()
        hidden_vector = max(in_vector, out_vector) if hidden_vector is None else hidden_vector
        self.in_scalar = in_scalar
        self.in_vector = in_vector
        self.out_scalar = out_scalar
        self.out_vector = out_vector
        self.w_h = torch.nn.Linear(in_vector, hidden_vector, bias=False)
        self.w_m = torch.nn.Linear(hidden_vector + in_scalar, out_scalar)
        self.w_o: Optional[torch.nn.Linear] = (
            torch.nn.Linear(hidden_vector, out_vector, bias=False) if out_vector > 0 else None)

    def forward(self, x: torch.Tensor, v: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Scalars ``(..., in_scalar)`` and vectors ``(..., 3, in_vector)`` -> updated pair."""
        if x.size(-1) != self.in_scalar or v.dim() != x.dim() + 1 or v.size(-2) != 3 \
                or v.size(-1) != self.in_vector:
            raise ValueError(f"GVP expects x (..., {self.in_scalar}) and v (..., 3, "
                             f"{self.in_vector}), got {list(x.shape)} and {list(v.shape)}")
        v_h = self.w_h(v)
        x_out = torch.nn.functional.silu(self.w_m(torch.cat((_vector_norm(v_h), x), dim=-1)))
        w_o = self.w_o
        if w_o is None:
            return x_out, v[..., :0]
        v_o = w_o(v_h)
        return x_out, torch.sigmoid(_vector_norm(v_o)).unsqueeze(-2) * v_o


class TransformerEncoderLayer(torch.nn.Module):
    """Pre-norm transformer encoder layer whose attention weights can be returned.

    Written out (rather than ``torch.nn.TransformerEncoderLayer``) so that the scripted module
    can return per-head attention weights and its fast path never changes the numerics.

    Parameters
    ----------
    d : int
        Feature width; must be divisible by ``num_heads``.
    num_heads : int
        Attention heads.
    hidden : int
        Width of the feed-forward block.
    dropout : float
        Dropout on the attention weights and after each residual branch.

    Notes
    -----
    ``forward(x (B, T, d)) -> (x' (B, T, d), attention (B, heads, T, T))``; each attention row
    is a probability distribution over the keys.
    """

    def __init__(self, d: int, num_heads: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        if num_heads < 1 or d % num_heads != 0:
            raise ValueError(f"d={d} must be divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = d // num_heads
        self.dropout = dropout
        self.norm1 = torch.nn.LayerNorm(d)
        self.qkv = torch.nn.Linear(d, 3 * d)
        self.out = torch.nn.Linear(d, d)
        self.norm2 = torch.nn.LayerNorm(d)
        self.feed_forward = torch.nn.Sequential(
            torch.nn.Linear(d, hidden), torch.nn.SiLU(), torch.nn.Dropout(dropout),
            torch.nn.Linear(hidden, d))

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``x (B, T, d)`` -> ``(B, T, d)`` and attention weights ``(B, heads, T, T)``."""
        b, t, d = x.size(0), x.size(1), x.size(2)
        qkv = self.qkv(self.norm1(x)).reshape(b, t, 3, self.num_heads, self.head_dim) \
            .permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attention = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(self.head_dim), dim=-1)
        mixed = torch.nn.functional.dropout(attention, self.dropout, self.training) @ v
        mixed = self.out(mixed.transpose(1, 2).reshape(b, t, d))
        x = x + torch.nn.functional.dropout(mixed, self.dropout, self.training)
        x = x + torch.nn.functional.dropout(self.feed_forward(self.norm2(x)), self.dropout,
                                            self.training)
        return x, attention


class ScalarTransformer(torch.nn.Module):
    """Transformer over invariant token scalars with a leading CLS/global token.

    The CLS token is a learned vector; with ``global_dim > 0`` the projection ``MLP(G)`` of the
    global features is added to it, so the first token carries the global information (the
    paper's global token) and the learned offset is used in both cases. The output is the
    first token's final (layer-normed) state. Without positional encodings the output does
    not depend on the order of the tokens.

    Parameters
    ----------
    d : int
        Token width.
    num_layers, num_heads : int
        Encoder layers and attention heads (``d % num_heads == 0``).
    hidden : int, optional
        Feed-forward width; default ``2 * d``.
    dropout : float
        Dropout inside the encoder layers.
    global_dim : int
        Width ``g`` of the global features, 0 for none.

    Notes
    -----
    ``forward(x (B, M, d), global_features (B, g) or None) -> (B, d)``.
    """

    def __init__(self, d: int, num_layers: int = 2, num_heads: int = 4,
                 hidden: Optional[int] = None, dropout: float = 0.0, global_dim: int = 0):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        hidden = 2 * d if hidden is None else hidden
        self.d = d
        self.global_dim = global_dim
        # Small init as in BERT/ViT: the CLS token starts near the origin of the token cloud.
        self.cls = torch.nn.Parameter(0.02 * torch.randn(d))
        self.global_mlp: Optional[MLP] = MLP(global_dim, d, d) if global_dim > 0 else None
        self.layers = torch.nn.ModuleList(
            [TransformerEncoderLayer(d, num_heads, hidden, dropout) for _ in range(num_layers)])
        self.norm = torch.nn.LayerNorm(d)

    def _with_cls(self, x: torch.Tensor, global_features: Optional[torch.Tensor]) -> torch.Tensor:
        if x.dim() != 3 or x.size(2) != self.d:
            raise ValueError(f"token scalars must have shape (B, M, {self.d}), got {list(x.shape)}")
        g = _check_global(global_features, self.global_dim, x.size(0))
        first = self.cls.expand(x.size(0), 1, self.d)
        global_mlp = self.global_mlp
        if global_mlp is not None and g is not None:
            first = first + global_mlp(g).unsqueeze(1)
        return torch.cat((first, x), dim=1)

    def forward(self, x: torch.Tensor, global_features: Optional[torch.Tensor]) -> torch.Tensor:
        """Token scalars ``(B, M, d)`` -> CLS representation ``(B, d)``."""
        h = self._with_cls(x, global_features)
        for layer in self.layers:
            h, _ = layer(h)
        return self.norm(h[:, 0])

    @torch.jit.export
    def attention_maps(self, x: torch.Tensor,
                       global_features: Optional[torch.Tensor]) -> torch.Tensor:
        """Attention weights ``(layers, B, heads, M+1, M+1)``; index 0 is the CLS/global token."""
        h = self._with_cls(x, global_features)
        maps: List[torch.Tensor] = []
        for layer in self.layers:
            h, attention = layer(h)
            maps.append(attention)
        return torch.stack(maps)


class MixerBlock(torch.nn.Module):
    """One MLP-Mixer block (Tolstikhin et al. 2021): token mixing then channel mixing.

    Parameters
    ----------
    num_tokens, d : int
        Tokens ``T`` and channels per token.
    token_hidden, channel_hidden : int
        Hidden widths of the token-mixing and channel-mixing MLPs.
    dropout : float
        Dropout inside both MLPs.

    Notes
    -----
    ``forward(x (B, T, d)) -> (B, T, d)``. The token-mixing MLP has one weight per token
    position, so the block is order-dependent by design.
    """

    def __init__(self, num_tokens: int, d: int, token_hidden: int, channel_hidden: int,
                 dropout: float = 0.0):
        super().__init__()
        self.token_norm = torch.nn.LayerNorm(d)
        self.token_mlp = MLP(num_tokens, token_hidden, num_tokens, activation="gelu",
                             dropout=dropout)
        self.channel_norm = torch.nn.LayerNorm(d)
        self.channel_mlp = MLP(d, channel_hidden, d, activation="gelu", dropout=dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, T, d) -> (B, T, d)``."""
        x = x + self.token_mlp(self.token_norm(x).transpose(1, 2)).transpose(1, 2)
        return x + self.channel_mlp(self.channel_norm(x))


class ScalarMLPMixer(torch.nn.Module):
    """MLP-Mixer over invariant token scalars, mean over tokens at the end.

    With ``global_dim > 0`` the global token ``MLP(G)`` is appended after the ``M`` structural
    tokens (so token-mixing runs over ``M + 1`` positions) and takes part in the final mean.

    Parameters
    ----------
    d : int
        Token width.
    num_tokens : int
        Structural tokens ``M`` (fixed: the token-mixing weights have one row per position).
    num_layers : int
        Mixer blocks.
    token_hidden, channel_hidden : int, optional
        Hidden widths; defaults ``2 * T`` (T = tokens incl. the global one) and ``2 * d``.
    dropout : float
        Dropout inside the MLPs.
    global_dim : int
        Width ``g`` of the global features, 0 for none.

    Notes
    -----
    ``forward(x (B, M, d), global_features (B, g) or None) -> (B, d)``.
    """

    def __init__(self, d: int, num_tokens: int, num_layers: int = 2,
                 token_hidden: Optional[int] = None, channel_hidden: Optional[int] = None,
                 dropout: float = 0.0, global_dim: int = 0):
        super().__init__()
        if num_tokens < 1:
            raise ValueError(f"num_tokens must be >= 1, got {num_tokens}")
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        total = num_tokens + (1 if global_dim > 0 else 0)
        token_hidden = 2 * total if token_hidden is None else token_hidden
        channel_hidden = 2 * d if channel_hidden is None else channel_hidden
        self.d = d
        self.num_tokens = num_tokens
        self.global_dim = global_dim
        self.global_mlp: Optional[MLP] = MLP(global_dim, d, d) if global_dim > 0 else None
        self.blocks = torch.nn.ModuleList(
            [MixerBlock(total, d, token_hidden, channel_hidden, dropout) for _ in range(num_layers)])
        self.norm = torch.nn.LayerNorm(d)

    def forward(self, x: torch.Tensor, global_features: Optional[torch.Tensor]) -> torch.Tensor:
        """Token scalars ``(B, M, d)`` -> mean of the mixed tokens ``(B, d)``."""
        if x.dim() != 3 or x.size(1) != self.num_tokens or x.size(2) != self.d:
            raise ValueError(f"the MLP-Mixer was built for {self.num_tokens} tokens of width "
                             f"{self.d}: token scalars must have shape (B, {self.num_tokens}, "
                             f"{self.d}), got {list(x.shape)}")
        g = _check_global(global_features, self.global_dim, x.size(0))
        global_mlp = self.global_mlp
        if global_mlp is not None and g is not None:
            x = torch.cat((x, global_mlp(g).unsqueeze(1)), dim=1)
        for block in self.blocks:
            x = block(x)
        return self.norm(x).mean(1)


class _MeanPool(torch.nn.Module):
    """Mean over tokens; with global features, ``[mean, MLP(G)]`` (width ``2 d``)."""

    def __init__(self, d: int, global_dim: int = 0):
        super().__init__()
        self.global_dim = global_dim
        self.global_mlp: Optional[MLP] = MLP(global_dim, d, d) if global_dim > 0 else None
        self.out_dim = 2 * d if global_dim > 0 else d

    def forward(self, x: torch.Tensor, global_features: Optional[torch.Tensor]) -> torch.Tensor:
        pooled = x.mean(1)
        g = _check_global(global_features, self.global_dim, x.size(0))
        global_mlp = self.global_mlp
        if global_mlp is not None and g is not None:
            pooled = torch.cat((pooled, global_mlp(g)), dim=-1)
        return pooled


class TokenPooling(torch.nn.Module):
    """Pool the tokens, then a gated equivariant block (paper Algorithm 3, lines 3-5).

    Parameters
    ----------
    d : int
        Features per token.
    reduce : {"sum", "mean"}
        How the tokens are pooled (the paper sums; the mean keeps the scale independent of M).
    hidden : int, optional
        Hidden width of the GEB (default ``d``).
    global_dim : int
        Width ``g`` of global features; when > 0 the output is ``[GEB scalars, MLP(G)]``.

    Notes
    -----
    ``forward(tokens (B, M, 4, d), global_features (B, g) or None) -> (B, out_dim)`` with
    ``out_dim = d`` (``2 d`` with global features). Invariant under rotations and under any
    permutation of the tokens.
    """

    def __init__(self, d: int, reduce: str = "sum", hidden: Optional[int] = None,
                 global_dim: int = 0):
        super().__init__()
        if reduce not in ("sum", "mean"):
            raise ValueError(f"reduce must be 'sum' or 'mean', got {reduce!r}")
        self.d = d
        self.reduce = reduce
        self.global_dim = global_dim
        self.geb = GatedEquivariantBlock(d, d, hidden, vector_output=False)
        self.global_mlp: Optional[MLP] = MLP(global_dim, d, d) if global_dim > 0 else None
        self.out_dim = 2 * d if global_dim > 0 else d

    def forward(self, tokens: torch.Tensor,
                global_features: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``tokens (B, M, 4, d)`` -> ``(B, out_dim)``."""
        _check_tokens(tokens, self.d)
        g = _check_global(global_features, self.global_dim, tokens.size(0))
        pooled = tokens.sum(1) if self.reduce == "sum" else tokens.mean(1)
        x, _ = self.geb(pooled[:, 0], pooled[:, 1:4])
        global_mlp = self.global_mlp
        if global_mlp is not None and g is not None:
            x = torch.cat((x, global_mlp(g)), dim=-1)
        return x


class SubFormer(torch.nn.Module):
    """GEB on each token, then a transformer with a CLS/global token (Algorithm 3, 6-14).

    Parameters
    ----------
    d : int
        Features per token (``d % num_heads == 0``).
    num_layers, num_heads : int
        Encoder layers and attention heads.
    hidden : int, optional
        Feed-forward width (default ``2 d``).
    dropout : float
        Dropout inside the encoder.
    global_dim : int
        Width ``g`` of global features; > 0 adds ``MLP(G)`` to the learned CLS token.

    Notes
    -----
    ``forward(tokens (B, M, 4, d), global_features (B, g) or None) -> (B, d)``: the first
    (CLS/global) token's final state, as in BERT, so the output size does not depend on M and
    the global information has a dedicated slot. No positional encoding is used: the output
    is invariant under permutations of the tokens (and under rotations).
    :meth:`attention_maps` returns the weights ``(layers, B, heads, M+1, M+1)``.
    """

    def __init__(self, d: int, num_layers: int = 2, num_heads: int = 4,
                 hidden: Optional[int] = None, dropout: float = 0.0, global_dim: int = 0):
        super().__init__()
        self.d = d
        self.geb = GatedEquivariantBlock(d, d, vector_output=False)
        self.encoder = ScalarTransformer(d, num_layers, num_heads, hidden, dropout, global_dim)
        self.out_dim = d

    def forward(self, tokens: torch.Tensor,
                global_features: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``tokens (B, M, 4, d)`` -> ``(B, d)``."""
        _check_tokens(tokens, self.d)
        x, _ = self.geb(tokens[:, :, 0], tokens[:, :, 1:4])
        return self.encoder(x, global_features)

    @torch.jit.export
    def attention_maps(self, tokens: torch.Tensor,
                       global_features: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Per-head attention weights ``(layers, B, heads, M+1, M+1)``; index 0 = CLS/global.

        Each row (query) sums to 1 over the keys. Average over axis 2 for the head-averaged
        maps shown in the paper.
        """
        _check_tokens(tokens, self.d)
        x, _ = self.geb(tokens[:, :, 0], tokens[:, :, 1:4])
        return self.encoder.attention_maps(x, global_features)


class SubMixer(torch.nn.Module):
    """GEB on each token, then an MLP-Mixer, mean over tokens (Algorithm 3, lines 15-23).

    Parameters
    ----------
    d : int
        Features per token.
    num_tokens : int
        Token count ``M``, fixed at construction (token-mixing weights are per position).
    num_layers : int
        Mixer blocks.
    token_hidden, channel_hidden : int, optional
        Hidden widths of the token- and channel-mixing MLPs (defaults ``2 T``, ``2 d``).
    dropout : float
        Dropout inside the MLPs.
    global_dim : int
        Width ``g`` of global features; > 0 appends a global token ``MLP(G)``.

    Notes
    -----
    ``forward(tokens (B, M, 4, d), global_features (B, g) or None) -> (B, d)``. Invariant
    under rotations; **order-dependent** by design: permuting the tokens changes the output.
    """

    def __init__(self, d: int, num_tokens: int, num_layers: int = 2,
                 token_hidden: Optional[int] = None, channel_hidden: Optional[int] = None,
                 dropout: float = 0.0, global_dim: int = 0):
        super().__init__()
        self.d = d
        self.geb = GatedEquivariantBlock(d, d, vector_output=False)
        self.mixer = ScalarMLPMixer(d, num_tokens, num_layers, token_hidden, channel_hidden,
                                    dropout, global_dim)
        self.out_dim = d

    def forward(self, tokens: torch.Tensor,
                global_features: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``tokens (B, M, 4, d)`` -> ``(B, d)``."""
        _check_tokens(tokens, self.d)
        x, _ = self.geb(tokens[:, :, 0], tokens[:, :, 1:4])
        return self.mixer(x, global_features)


class GVPMixer(torch.nn.Module):
    """GVP layers on the token (scalar, vector) features, then pooling or a token mixer.

    Paper Algorithm 3, lines 24-28: the GVP works on the raw tokens (no GEB first), so the
    vector features take part in the mixing; only the GVP scalars go on to the post mixer.

    Parameters
    ----------
    d : int
        Features per token (GVP layers keep ``d`` scalars and ``d`` vectors).
    num_layers : int
        Stacked GVPs; the last one outputs scalars only.
    post : {"none", "subformer", "submixer"}
        What follows: mean over tokens (``"none"``; with global features ``[mean, MLP(G)]``,
        width ``2 d``), :class:`ScalarTransformer` (CLS output) or :class:`ScalarMLPMixer`.
    num_tokens : int, optional
        Token count; required for ``post="submixer"``.
    hidden_vector : int, optional
        GVP vector hidden width (default ``d``).
    global_dim : int
        Width ``g`` of global features, 0 for none.
    post_layers, num_heads, hidden, dropout, token_hidden, channel_hidden
        Options of the post mixer (see :class:`ScalarTransformer`, :class:`ScalarMLPMixer`).

    Notes
    -----
    ``forward(tokens (B, M, 4, d), global_features (B, g) or None) -> (B, out_dim)``.
    Invariant under rotations; invariant under token permutations unless
    ``post="submixer"``.
    """

    def __init__(self, d: int, num_layers: int = 1, post: str = "none",
                 num_tokens: Optional[int] = None, hidden_vector: Optional[int] = None,
                 global_dim: int = 0, post_layers: int = 2, num_heads: int = 4,
                 hidden: Optional[int] = None, dropout: float = 0.0,
                 token_hidden: Optional[int] = None, channel_hidden: Optional[int] = None):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        self.d = d
        self.post_name = post
        self.gvps = torch.nn.ModuleList(
            [GVP(d, d, d, d if i < num_layers - 1 else 0, hidden_vector) for i in range(num_layers)])
        if post == "none":
            pool = _MeanPool(d, global_dim)
            self.out_dim = pool.out_dim
            self.post: torch.nn.Module = pool
        elif post == "subformer":
            self.post = ScalarTransformer(d, post_layers, num_heads, hidden, dropout, global_dim)
            self.out_dim = d
        elif post == "submixer":
            if num_tokens is None:
                raise ValueError("GVPMixer(post='submixer') needs num_tokens")
            self.post = ScalarMLPMixer(d, num_tokens, post_layers, token_hidden, channel_hidden,
                                       dropout, global_dim)
            self.out_dim = d
        else:
            raise ValueError(f"post must be 'none', 'subformer' or 'submixer', got {post!r}")

    def forward(self, tokens: torch.Tensor,
                global_features: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``tokens (B, M, 4, d)`` -> ``(B, out_dim)``."""
        _check_tokens(tokens, self.d)
        x, v = tokens[:, :, 0], tokens[:, :, 1:4]
        for gvp in self.gvps:
            x, v = gvp(x, v)
        return self.post(x, global_features)

    def attention_maps(self, tokens: torch.Tensor,
                       global_features: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Attention weights ``(layers, B, heads, M+1, M+1)`` of the post transformer.

        Eager only (not compiled into the scripted module, since it exists only for
        ``post="subformer"``).
        """
        if not isinstance(self.post, ScalarTransformer):
            raise ValueError(f"attention maps need post='subformer', this mixer has "
                             f"post={self.post_name!r}")
        _check_tokens(tokens, self.d)
        x, v = tokens[:, :, 0], tokens[:, :, 1:4]
        for gvp in self.gvps:
            x, v = gvp(x, v)
        return self.post.attention_maps(x, global_features)


def _json_value(key: str, value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"mixer option {key}={value!r} is not a plain JSON value "
                    "(None, bool, int, float or str)")


def build_mixer(name: str, d: int, num_tokens: Optional[int] = None, global_dim: int = 0,
                **options: Any) -> torch.nn.Module:
    """Build a token mixer by name.

    Parameters
    ----------
    name : str
        One of :data:`MIXER_NAMES`: ``"pool"``, ``"subformer"``, ``"submixer"``, ``"gvp"``,
        ``"gvp+subformer"``, ``"gvp+submixer"``.
    d : int
        Features per token (tokens are ``(B, M, 4, d)``).
    num_tokens : int, optional
        Token count ``M``; required by the MLP-Mixer variants, recorded for all.
    global_dim : int
        Width of the global features (0: none).
    **options
        Keyword arguments of the mixer class (:class:`TokenPooling`, :class:`SubFormer`,
        :class:`SubMixer`, :class:`GVPMixer`); unknown ones raise ``TypeError``.

    Returns
    -------
    torch.nn.Module
        The mixer, with ``out_dim`` (int) and ``hyperparameters``: a plain-JSON dict including
        every default, such that ``build_mixer(**mixer.hyperparameters)`` rebuilds the same
        architecture (same parameter names and shapes).
    """
    kwargs: Dict[str, Any] = dict(options)
    if name == "pool":
        cls: Any = TokenPooling
    elif name == "subformer":
        cls = SubFormer
    elif name == "submixer":
        if num_tokens is None:
            raise ValueError("the 'submixer' mixer needs num_tokens (its token-mixing weights "
                             "have one row per token)")
        cls = SubMixer
        kwargs["num_tokens"] = num_tokens
    elif name in ("gvp", "gvp+subformer", "gvp+submixer"):
        if "post" in kwargs:
            raise TypeError(f"mixer {name!r} fixes post; choose the mixer name instead")
        cls = GVPMixer
        kwargs["post"] = {"gvp": "none", "gvp+subformer": "subformer",
                          "gvp+submixer": "submixer"}[name]
        if name == "gvp+submixer" and num_tokens is None:
            raise ValueError("the 'gvp+submixer' mixer needs num_tokens")
        kwargs["num_tokens"] = num_tokens
    else:
        raise ValueError(f"unknown mixer {name!r}; valid names: {', '.join(MIXER_NAMES)}")
    signature = inspect.signature(cls)
    try:
        bound = signature.bind(d=d, global_dim=global_dim, **kwargs)
    except TypeError as error:
        raise TypeError(f"bad options for mixer {name!r}: {error}; accepted: "
                        f"{[p for p in signature.parameters if p not in ('d', 'post')]}") from None
    bound.apply_defaults()
    mixer = cls(**bound.arguments)
    recorded = {k: _json_value(k, v) for k, v in bound.arguments.items()
                if k not in ("d", "global_dim", "num_tokens", "post")}
    mixer.hyperparameters = {"name": name, "d": d, "num_tokens": num_tokens,
                             "global_dim": global_dim, **recorded}
    return mixer


# hyperparameters is a Python-side record (mixed-type dict): keep it out of TorchScript.
for _cls in (TokenPooling, SubFormer, SubMixer, GVPMixer):
    _cls.__jit_ignored_attributes__ = ["hyperparameters"]
del _cls
