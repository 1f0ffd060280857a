"""Output heads for learned collective variables: VAMPnet lobes and the SPIB encoder/decoder.

Both heads take flat features ``(B, F)`` (to use them on geom2vec token features ``(B, M, 4, d)``
compose a token mixer in front). Both are plain ``torch.nn.Module``s that script with
``torch.jit.script``; their ``forward`` is the CV that export wraps: the VAMPnet outputs
``(B, k)`` and the SPIB latent mean ``(B, latent_dim)``. Training lives in
:mod:`openmm_geom.training.vamp` and :mod:`openmm_geom.training.spib`.
"""
from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch
from torch import nn

__all__ = ["VAMPHead", "SPIBModel", "mlp", "gaussian_log_density"]


def mlp(in_dim: int, hidden: int, out_dim: int, layers: int, dropout: float = 0.0) -> nn.Sequential:
    """``layers`` hidden ``Linear -> SiLU (-> Dropout)`` blocks, then ``Linear(hidden, out_dim)``.

    ``layers=0`` is a single linear map (Table S2/S3 heads: SiLU, no BatchNorm).
    """
    if layers < 0:
        raise ValueError(f"layers must be >= 0, got {layers}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    modules: List[nn.Module] = []
    width = in_dim
    for _ in range(layers):
        modules.append(nn.Linear(width, hidden))
        modules.append(nn.SiLU())
        if dropout > 0:
            modules.append(nn.Dropout(dropout))
        width = hidden
    modules.append(nn.Linear(width, out_dim))
    return nn.Sequential(*modules)


def gaussian_log_density(z: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Log density of a diagonal Gaussian, summed over the last dimension.

    Shapes broadcast: ``z (..., L)``, ``mean (..., L)``, ``logvar (..., L)`` -> ``(...)``.
    """
    return -0.5 * (((z - mean) ** 2) * torch.exp(-logvar) + logvar
                   + math.log(2.0 * math.pi)).sum(-1)


class VAMPHead(nn.Module):
    """VAMPnet lobe head: an MLP ``(B, in_dim) -> (B, k)``.

    Parameters
    ----------
    in_dim : int
        Input feature dimension ``F``.
    hidden : int, default 128
        Hidden width (Table S2: 128-256).
    k : int, default 2
        Output dimension (number of CVs / singular functions).
    layers : int, default 2
        Number of hidden layers (SiLU activations).
    dropout : float, default 0.0
        Dropout after each hidden activation (Table S2 uses 0.2); inactive in ``eval()``.
    softmax : bool, default False
        Softmax the output: state-assignment ("fuzzy MSM") VAMPnets. Plain CVs: False.
    """

    def __init__(self, in_dim: int, hidden: int = 128, k: int = 2, layers: int = 2,
                 dropout: float = 0.0, softmax: bool = False):
        super().__init__()
        if in_dim < 1 or k < 1 or hidden < 1:
            raise ValueError(f"in_dim, hidden and k must be >= 1 (got {in_dim}, {hidden}, {k})")
        self.in_dim = int(in_dim)
        self.k = int(k)
        self.softmax = bool(softmax)
        self.net = mlp(in_dim, hidden, k, layers, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x (B, in_dim) -> (B, k)``."""
        y = self.net(x)
        if self.softmax:
            y = torch.softmax(y, dim=-1)
        return y


class SPIBModel(nn.Module):
    """State predictive information bottleneck: Gaussian encoder, state decoder, VampPrior.

    Encoder ``p(z|x) = N(mu(x), diag(exp(logvar(x))))``; decoder ``q(y|z)`` = softmax of
    ``n_states`` logits; prior (eq. 12 of the geom2vec paper, a variational mixture of
    posteriors) ``r(z) = sum_i w_i p(z|u_i)`` with ``w = softmax(representative_logits)``
    (equivalently ``omega_i / sum omega`` with ``omega = exp(logits) > 0``).

    The representative inputs ``u_i`` are learned parameters in the **encoder's input space**
    ``(n_representatives, in_dim)``: ``p(z|u_i)`` is the encoder applied to ``u_i``, so the prior
    moves with the encoder, as in Tomczak & Welling's VampPrior and Wang & Tiwary's SPIB. If
    a token mixer sits in front of this model, ``u_i`` live in the mixer's output space.
    ``fit_spib`` initialises them to the mean input of the most populated states.

    Parameters
    ----------
    in_dim : int
        Input feature dimension ``F``.
    latent_dim : int, default 2
        Dimension of ``z`` (the CVs).
    hidden : int, default 64
        Hidden width of encoder and decoder MLPs (Table S3: 64).
    n_states : int
        Number of state labels (e.g. the k-means clusters of the initial labels).
    n_representatives : int, optional
        Number of VampPrior components (default ``n_states``).
    layers : int, default 2
        Hidden layers of the encoder trunk and of the decoder.
    dropout : float, default 0.0
        Dropout in the MLPs (Table S3: 0.2).

    Notes
    -----
    ``forward(x)`` returns the latent mean ``(B, latent_dim)``: the exported CV.
    """

    def __init__(self, in_dim: int, latent_dim: int = 2, hidden: int = 64, *, n_states: int,
                 n_representatives: Optional[int] = None, layers: int = 2, dropout: float = 0.0):
        super().__init__()
        if n_states < 2:
            raise ValueError(f"SPIB needs at least 2 states, got n_states={n_states}")
        if in_dim < 1 or latent_dim < 1 or hidden < 1:
            raise ValueError("in_dim, latent_dim and hidden must be >= 1")
        n_rep = n_states if n_representatives is None else int(n_representatives)
        if n_rep < 1:
            raise ValueError(f"n_representatives must be >= 1, got {n_rep}")
        self.in_dim = int(in_dim)
        self.latent_dim = int(latent_dim)
        self.n_states = int(n_states)
        self.n_representatives = n_rep
        # shared trunk, then two linear maps for mean and log-variance
        self.encoder = mlp(in_dim, hidden, hidden, max(layers - 1, 0), dropout)
        self.encoder_activation = nn.SiLU()
        self.mean_layer = nn.Linear(hidden, latent_dim)
        self.logvar_layer = nn.Linear(hidden, latent_dim)
        self.decoder = mlp(latent_dim, hidden, n_states, layers, dropout)
        self.representatives = nn.Parameter(torch.randn(n_rep, in_dim) * 0.1)
        self.representative_logits = nn.Parameter(torch.zeros(n_rep))

    @torch.jit.export
    def encode(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``x (B, in_dim) -> (mean (B, L), logvar (B, L))``."""
        h = self.encoder_activation(self.encoder(x))
        return self.mean_layer(h), self.logvar_layer(h)

    @torch.jit.export
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """``z (B, L) -> logits (B, n_states)`` of ``q(y|z)``."""
        return self.decoder(z)

    @torch.jit.export
    def log_prior(self, z: torch.Tensor) -> torch.Tensor:
        """``log r(z)`` of the VampPrior, ``z (B, L) -> (B,)``."""
        mean_u, logvar_u = self.encode(self.representatives)            # (R, L)
        log_components = gaussian_log_density(z.unsqueeze(1), mean_u.unsqueeze(0),
                                              logvar_u.unsqueeze(0))     # (B, R)
        log_weights = torch.log_softmax(self.representative_logits, dim=0)
        return torch.logsumexp(log_components + log_weights, dim=1)

    @torch.jit.export
    def predict_state(self, x: torch.Tensor) -> torch.Tensor:
        """Eq. 11: ``argmax_y q(y | mu(x))``, ``x (B, in_dim) -> (B,)`` int64."""
        mean, _ = self.encode(x)
        return torch.argmax(self.decode(mean), dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The CV: latent mean ``mu(x)``, ``(B, in_dim) -> (B, latent_dim)``."""
        mean, _ = self.encode(x)
        return mean
