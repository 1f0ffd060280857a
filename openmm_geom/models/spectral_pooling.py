"""Deep spectral clustering (MinCutPool, Bianchi et al. 2020) on dense, batched graphs.

This is the coarse-graining front end of Deep Signature (paper section 3.2, eqs. 1-4):

* eq. 1, :class:`DenseGCN`: ``X' = act(D~^-1/2 A~ D~^-1/2 (X W + b))`` with ``A~ = A + I``
  (the bias, absent from eq. 1, is propagated with the features);
* eq. 2, :class:`AssignmentMLP`: ``S = softmax(MLP(X))`` over clusters (rows sum to 1); the MLP
  sees the GCN output standardised over nodes and starts with a 3x output gain, so the
  hierarchy does not start at (and slide into) the uniform assignment (see
  :class:`SpectralPoolingLevel`);
* eq. 3, :func:`mincut_losses`: the normalised-cut term ``-Tr(S^T A S) / Tr(S^T D S)`` and the
  orthogonality term ``|| S^T S / ||S^T S||_F - I_K / sqrt(K) ||_F``, returned separately;
* eq. 4, :func:`mincut_pool`: ``X_pool = S^T X``, ``A_pool = S^T A S`` with its diagonal zeroed
  and symmetric degree normalisation (as in MinCutPool: without it the pooled graph is
  dominated by self loops and the next cut loss is trivially minimised);
* :class:`HierarchicalSpectralPooling`: a stack of levels; the overall assignment of the
  hierarchy is the product ``S = S_1 S_2 ...`` (still row-stochastic), the losses are summed.

Graphs are dense ``(B, N, N)`` tensors without masks: every graph of a dataset has the same N.
Node input features come from :func:`node_features`: each node's own time series over the
window, centred per frame (so the assignment does not change when the whole system is
translated) and linearly resampled to a fixed number of frames (so one model accepts windows
of any length). Everything here is scriptable with ``torch.jit.script``.
"""
from __future__ import annotations

import math
from typing import List, Sequence, Tuple

import torch

__all__ = ["gcn_normalize", "standardize_nodes", "DenseGCN", "AssignmentMLP", "mincut_losses", "mincut_pool",
           "SpectralPoolingLevel", "HierarchicalSpectralPooling", "resample_frames", "node_features"]

# The 1e-12 literals below guard divisions by degrees / norms that are zero only for degenerate
# inputs (isolated pooled clusters); small enough not to bias well-conditioned values. Literals,
# not a module constant: TorchScript cannot read Python globals of type float.


def gcn_normalize(adjacency: torch.Tensor) -> torch.Tensor:
    """``D~^-1/2 (A + I) D~^-1/2`` for a batch of dense adjacency matrices (B, N, N)."""
    if adjacency.dim() != 3 or adjacency.size(1) != adjacency.size(2):
        raise ValueError(f"adjacency must be (B, N, N), got {list(adjacency.shape)}")
    n = adjacency.size(1)
    a = adjacency + torch.eye(n, dtype=adjacency.dtype, device=adjacency.device)
    # A + I has degree >= 1 for non-negative A, so no guard is needed here.
    d = a.sum(-1).rsqrt()
    return d.unsqueeze(-1) * a * d.unsqueeze(-2)


class DenseGCN(torch.nn.Module):
    """One GCN layer (eq. 1) on a batch of dense graphs.

    ``forward(x (B, N, F_in), adjacency (B, N, N)) -> (B, N, F_out)``. The adjacency is the raw
    (weighted) adjacency without self loops; self loops and the symmetric normalisation are
    added here. ``activation=False`` gives the linear layer (no nonlinearity).
    """

    def __init__(self, in_features: int, out_features: int, activation: bool = True):
        super().__init__()
        self.linear = torch.nn.Linear(in_features, out_features)
        self.activation = activation

    def forward(self, x: torch.Tensor, adjacency: torch.Tensor) -> torch.Tensor:
        # Project first: out_features <= in_features in every use here, so the N x N product
        # runs on the narrower matrix.
        h = torch.bmm(gcn_normalize(adjacency), self.linear(x))
        # ELU rather than ReLU: hidden widths are small (10-20) and dead ReLU units would
        # remove whole feature directions from the assignment MLP.
        return torch.nn.functional.elu(h) if self.activation else h


class AssignmentMLP(torch.nn.Module):
    """Soft cluster assignment (eq. 2): ``softmax(W2 elu(W1 x + b1) + b2)`` over clusters.

    ``forward(x (B, N, F)) -> S (B, N, K)``, each row a probability distribution. ``gain``
    scales the default initialisation of W2: with the default (1) the initial logits spread
    by ~0.3 and S starts almost uniform (see :class:`SpectralPoolingLevel`).
    """

    def __init__(self, in_features: int, clusters: int, hidden: int, gain: float = 3.0):
        super().__init__()
        self.hidden = torch.nn.Linear(in_features, hidden)
        self.out = torch.nn.Linear(hidden, clusters)
        with torch.no_grad():
            self.out.weight.mul_(gain)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.out(torch.nn.functional.elu(self.hidden(x))), dim=-1)


def mincut_losses(adjacency: torch.Tensor, assignment: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Normalised-cut and orthogonality terms of eq. 3, each averaged over the batch.

    Parameters
    ----------
    adjacency : Tensor (B, N, N), symmetric, non-negative; D is its diagonal degree matrix
    assignment : Tensor (B, N, K), soft assignment S

    Returns
    -------
    cut : scalar Tensor, mean over the batch of ``-Tr(S^T A S) / Tr(S^T D S)`` (in [-1, 0])
    orthogonality : scalar Tensor, mean of ``|| S^T S / ||S^T S||_F - I_K / sqrt(K) ||_F``
        (in [0, sqrt(2)])
    """
    k = assignment.size(-1)
    st = assignment.transpose(1, 2)
    # Tr(S^T A S) = sum_ij A_ij <s_i, s_j>; Tr(S^T D S) = sum_i d_i |s_i|^2.
    num = (torch.bmm(st, torch.bmm(adjacency, assignment))).diagonal(dim1=1, dim2=2).sum(-1)
    degree = adjacency.sum(-1)
    den = (degree * (assignment * assignment).sum(-1)).sum(-1)
    cut = -num / (den + 1e-12)
    sts = torch.bmm(st, assignment)
    sts = sts / (torch.linalg.matrix_norm(sts).reshape(-1, 1, 1) + 1e-12)
    eye = torch.eye(k, dtype=assignment.dtype, device=assignment.device) / math.sqrt(k)
    orthogonality = torch.linalg.matrix_norm(sts - eye)
    return cut.mean(), orthogonality.mean()


def mincut_pool(x: torch.Tensor, adjacency: torch.Tensor,
                assignment: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Pooled features and graph (eq. 4): ``S^T X`` and normalised ``S^T A S`` with zero diagonal.

    ``x (B, N, F)``, ``adjacency (B, N, N)``, ``assignment (B, N, K)`` ->
    ``(x_pool (B, K, F), adjacency_pool (B, K, K))``.
    """
    st = assignment.transpose(1, 2)
    x_pool = torch.bmm(st, x)
    a = torch.bmm(st, torch.bmm(adjacency, assignment))
    k = a.size(-1)
    a = a * (1.0 - torch.eye(k, dtype=a.dtype, device=a.device))
    d = a.sum(-1).clamp_min(0.0).sqrt() + 1e-12
    a = a / d.unsqueeze(-1) / d.unsqueeze(-2)
    return x_pool, a


def standardize_nodes(h: torch.Tensor) -> torch.Tensor:
    """Per graph and feature, zero mean and unit variance over nodes: (B, N, F) -> same shape."""
    z = h - h.mean(dim=1, keepdim=True)
    return z / (z.pow(2).mean(dim=1, keepdim=True) + 1e-6).sqrt()


class SpectralPoolingLevel(torch.nn.Module):
    """GCN -> assignment MLP -> mincut losses -> pooled graph, for one level of the hierarchy.

    The assignment MLP sees the GCN output standardised over the graph's nodes
    (:func:`standardize_nodes`) and starts with a 3x larger output layer. Why: the uniform
    assignment minimises the cut term exactly (-1) while the orthogonality term has a vanishing
    gradient there, and a second level fed with ``S_1^T H`` of an almost uniform ``S_1`` sees
    almost identical pooled nodes, so the product ``S_1 S_2`` collapses to one row repeated
    (every bead = the mean of all nodes). Measured on 100-node random graphs, (60, 30)
    clusters, Adam 5e-4: without these two choices the beads' spread was 5e-4 of the input's at
    initialisation and 0 after 150 steps; with them it starts at 0.13 of it. Both are
    permutation equivariant and leave eq. 2-4 unchanged.

    ``forward(x (B, N, F_in), adjacency (B, N, N))`` returns ``(x_pool (B, K, hidden),
    adjacency_pool (B, K, K), S (B, N, K), cut, orthogonality)``.
    """

    def __init__(self, in_features: int, hidden: int, clusters: int, assign_hidden: int):
        super().__init__()
        self.gcn = DenseGCN(in_features, hidden)
        self.assign = AssignmentMLP(hidden, clusters, assign_hidden)

    def forward(self, x: torch.Tensor, adjacency: torch.Tensor
                ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self.gcn(x, adjacency)
        s = self.assign(standardize_nodes(h))
        cut, ortho = mincut_losses(adjacency, s)
        x_pool, a_pool = mincut_pool(h, adjacency, s)
        return x_pool, a_pool, s, cut, ortho


class HierarchicalSpectralPooling(torch.nn.Module):
    """Stack of MinCutPool levels; a last GCN runs on the coarsest graph (paper Fig. 2).

    Parameters
    ----------
    in_features : node input feature width (``feature_frames * C`` with :func:`node_features`)
    hidden : width of every GCN layer (paper: 10 gene, 20 MD)
    clusters : clusters per level, decreasing (paper: (60, 30) gene, (400, 200, 50) EGFR,
        (100, 50) GPCR)
    assign_hidden : hidden width of the assignment MLPs (default ``hidden``)

    ``forward(x (B, N, in_features), adjacency (B, N, N))`` returns
    ``(embeddings (B, K, hidden), S (B, N, K), cut, orthogonality)`` where K = clusters[-1],
    ``S = S_1 S_2 ...`` is the overall (row-stochastic) assignment of input nodes to the
    coarsest clusters and cut/orthogonality are the eq. 3 terms summed over levels.
    """

    def __init__(self, in_features: int, hidden: int, clusters: Sequence[int] = (60, 30),
                 assign_hidden: int = 0):
        super().__init__()
        clusters = [int(k) for k in clusters]
        if len(clusters) == 0 or min(clusters) < 1:
            raise ValueError(f"clusters must be a non-empty sequence of positive ints, got {clusters}")
        if in_features < 1 or hidden < 1:
            raise ValueError(f"in_features and hidden must be >= 1, got {in_features}, {hidden}")
        assign_hidden = int(assign_hidden) if assign_hidden > 0 else int(hidden)
        self.clusters: List[int] = clusters
        self.levels = torch.nn.ModuleList(
            [SpectralPoolingLevel(in_features if i == 0 else hidden, hidden, k, assign_hidden)
             for i, k in enumerate(clusters)])
        self.final = DenseGCN(hidden, hidden)

    def forward(self, x: torch.Tensor, adjacency: torch.Tensor
                ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        if x.dim() != 3 or adjacency.dim() != 3 or adjacency.size(1) != x.size(1) \
                or adjacency.size(2) != x.size(1) or adjacency.size(0) != x.size(0):
            raise ValueError(f"expected x (B, N, F) and adjacency (B, N, N), got "
                             f"{list(x.shape)} and {list(adjacency.shape)}")
        cut = torch.zeros((), dtype=x.dtype, device=x.device)
        ortho = torch.zeros((), dtype=x.dtype, device=x.device)
        overall = torch.zeros(0)
        first = True
        for level in self.levels:
            x, adjacency, s, c, o = level(x, adjacency)
            cut = cut + c
            ortho = ortho + o
            overall = s if first else torch.bmm(overall, s)
            first = False
        return self.final(x, adjacency), overall, cut, ortho


def resample_frames(x: torch.Tensor, frames: int, dim: int = 1) -> torch.Tensor:
    """Linearly interpolate ``x`` along ``dim`` onto ``frames`` equally spaced points.

    The first and last samples are kept exactly; a single input frame is repeated.
    """
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    t = x.size(dim)
    if t == frames:
        return x
    if t == 1:
        return x.repeat_interleave(frames, dim=dim)
    pos = torch.linspace(0.0, float(t - 1), frames, dtype=torch.float64, device=x.device)
    lo = pos.floor().clamp(max=float(t - 2)).to(torch.long)
    w = (pos - lo.to(torch.float64)).to(x.dtype)
    shape = [1] * x.dim()
    shape[dim] = frames
    w = w.reshape(shape)
    return x.index_select(dim, lo) * (1.0 - w) + x.index_select(dim, lo + 1) * w


def node_features(paths: torch.Tensor, feature_frames: int) -> torch.Tensor:
    """Node input features from a window: ``paths (B, T, N, C) -> (B, N, feature_frames * C)``.

    Each frame is centred (mean over nodes subtracted), then the window is resampled to
    ``feature_frames`` frames; row n holds node n's series, frame-major (frame, channel).
    """
    if paths.dim() != 4:
        raise ValueError(f"paths must be (B, T, N, C), got {list(paths.shape)}")
    centred = paths - paths.mean(dim=2, keepdim=True)
    r = resample_frames(centred, feature_frames, 1)
    b, f, n, c = r.shape
    return r.permute(0, 2, 1, 3).reshape(b, n, f * c)
