"""Deep Signature (paper sections 3.2-3.4) and the baselines of its Table 4.

Every method shares one coarse-graining front end (:class:`CoarseGraining`) and one interface:
``forward(paths (B, T, N, C), adjacency (B, N, N)) -> Dict[str, Tensor]`` with

* ``logits`` (B, n_classes);
* ``cut_loss``, ``orthogonality_loss`` (eq. 3, summed over pooling levels, batch means);
* ``consistency_loss`` (eq. 6, batch mean);
* ``assignment`` (B, N, K): the overall soft assignment S = S_1 S_2 ... (rows sum to 1);
* ``coarse`` (B, T, K, C): the coarse-grained dynamics Y (eq. 5, below);

and ``total_loss(out, labels, weights=(l_cut, l_orth, l_cons))`` =
``cross_entropy + l_cut * cut + l_orth * orthogonality + l_cons * consistency`` (eq. 12). The
paper's three lambdas are stripped from our copy of the text; eq. 12 combines the losses of
eqs. 3, 6 and 11, and cross entropy carries weight 1 here (a common factor on all terms is a
learning-rate rescaling). Defaults: ``(0.1, 1.0, 1.0)``. The cut weight is below 1 because the
uniform assignment minimises the cut term exactly; measured (100-node random graphs, clusters
(60, 30), Adam 5e-4, no class signal), with weights (1, 1, 1) the assignment drifted to uniform
(each bead the average of ~100 nodes after 150 steps) while with (0.1, 1, 1) it sharpened
(~52 effective nodes per bead after 600 steps, still decreasing). Per level the cut term lies in
[-1, 0] and the orthogonality term in [0, sqrt(2)].

Reading of eqs. 5-6 (coarse dynamics and temporal consistency)
---------------------------------------------------------------
The coarse dynamics are ``Y_t = S^^T X_t`` where ``S^`` is the overall assignment normalised so
that each cluster's weights over nodes sum to 1: a bead is the weighted centre of its nodes.
Hence Y is translation- and rotation-equivariant (for a given assignment) and invariant under a
permutation of the nodes (with the adjacency permuted alike, S's rows permute and S^^T X does
not change). The assignment itself is computed from per-frame centred node features, so it is
translation invariant; it is *not* rotation invariant (raw coordinates in a molecular frame, as
in the paper, whose proof A.2 treats the assignment as given).
A decoder MLP maps the pooled embeddings (B, K, hidden) back to the coarse dynamics as node
features see them (centred per frame over beads, resampled to ``feature_frames``); eq. 6 is the
mean absolute error between that decoded dynamics and the same transform of the *detached*
``S^^T X`` (our reading of eq. 6; the equation's symbols are stripped from our copy of the
paper). The detachment keeps the consistency term from
moving the assignment towards easily predicted trajectories; it trains the embeddings. The
signature is taken of ``S^^T X`` itself (gradient flowing into the
assignment), not of the decoder output, which keeps the symmetry properties above exact.

Path signature module
---------------------
The coarse path (B, T, K*C) is split into ``segments`` consecutive pieces that share their
boundary frames (lengths differ by at most one frame; shorter pieces are padded by repeating
their last point, which leaves a signature unchanged), optionally time-augmented (a channel
t in [0, 1] over the window) and basepoint-augmented (a point with zero spatial channels, at the
segment's start time, prepended: it makes absolute levels visible, useful for gene expression;
off by default for MD, where it would break translation invariance). The depth-``depth``
log-signature of each piece feeds an LSTM over pieces, then LayerNorm and a two-layer MLP.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from openmm_geom.ops.signature import logsignature, logsignature_channels

from .spectral_pooling import HierarchicalSpectralPooling, node_features

__all__ = ["CoarseGraining", "DeepSignature", "Head", "Tail", "HeadTail", "GraphLSTM", "GraphTrans",
           "METHODS", "build_model", "normalized_assignment", "coarse_dynamics"]

def normalized_assignment(assignment: torch.Tensor) -> torch.Tensor:
    """``S^``: the assignment (B, N, K) scaled so that every column sums to 1 over nodes."""
    return assignment / assignment.sum(dim=1, keepdim=True).clamp_min(1e-12)


def coarse_dynamics(paths: torch.Tensor, assignment: torch.Tensor) -> torch.Tensor:
    """Eq. 5: bead trajectories ``Y_t = S^^T X_t``; paths (B, T, N, C), S (B, N, K) -> (B, T, K, C)."""
    return torch.einsum("bnk,btnc->btkc", normalized_assignment(assignment), paths)


class CoarseGraining(torch.nn.Module):
    """Hierarchical MinCutPool on node features + eq. 5 coarse dynamics + eq. 6 decoder.

    ``forward(paths (B, T, N, C), adjacency (B, N, N))`` returns
    ``(coarse (B, T, K, C), assignment (B, N, K), cut, orthogonality, consistency)``.
    """

    def __init__(self, channels: int, feature_frames: int, hidden: int, clusters: Sequence[int],
                 assign_hidden: int, decoder_hidden: int):
        super().__init__()
        self.feature_frames = int(feature_frames)
        width = self.feature_frames * int(channels)
        self.pooling = HierarchicalSpectralPooling(width, hidden, clusters, assign_hidden)
        self.decoder = torch.nn.Sequential(torch.nn.Linear(hidden, decoder_hidden), torch.nn.ELU(),
                                           torch.nn.Linear(decoder_hidden, width))

    def forward(self, paths: torch.Tensor, adjacency: torch.Tensor
                ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        x = node_features(paths, self.feature_frames)
        embeddings, s, cut, ortho = self.pooling(x, adjacency)
        coarse = coarse_dynamics(paths, s)
        target = node_features(coarse.detach(), self.feature_frames)
        consistency = torch.nn.functional.l1_loss(self.decoder(embeddings), target)
        return coarse, s, cut, ortho, consistency


def _classifier(in_features: int, hidden: int, n_classes: int, dropout: float) -> torch.nn.Sequential:
    """Two-layer MLP head (paper: "a two-layer MLP"), logits out."""
    return torch.nn.Sequential(torch.nn.Linear(in_features, hidden), torch.nn.ELU(),
                               torch.nn.Dropout(dropout), torch.nn.Linear(hidden, n_classes))


class _PathClassifier(torch.nn.Module):
    """Shared front end, input checks, output dict and loss; subclasses implement ``classify``."""

    def __init__(self, method: str, hyperparameters: Dict[str, object], n_nodes: int, channels: int,
                 n_classes: int, feature_frames: int, hidden: int, clusters: Sequence[int],
                 assign_hidden: int, decoder_hidden: int):
        super().__init__()
        clusters = [int(k) for k in clusters]
        previous = int(n_nodes)
        for k in clusters:
            if k < 1 or k > previous:
                raise ValueError(f"clusters {clusters} must be positive and non-increasing from "
                                 f"n_nodes={n_nodes}: a level may not have more clusters than nodes")
            previous = k
        for name, value in (("n_nodes", n_nodes), ("channels", channels), ("feature_frames", feature_frames),
                            ("hidden", hidden), ("decoder_hidden", decoder_hidden)):
            if int(value) < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if int(n_classes) < 2:
            raise ValueError(f"n_classes must be >= 2, got {n_classes}")
        self.method = method
        # Plain-Python record for the trainer (save/restore with build_model(method, **hp)).
        self.hyperparameters = dict(hyperparameters)
        self.n_nodes = int(n_nodes)
        self.channels = int(channels)
        self.n_classes = int(n_classes)
        self.n_clusters = clusters[-1]
        self.coarse_graining = CoarseGraining(channels, feature_frames, hidden, clusters, assign_hidden,
                                              decoder_hidden)

    def classify(self, coarse: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError("subclasses implement classify(coarse (B, T, K, C)) -> logits")

    def forward(self, paths: torch.Tensor, adjacency: torch.Tensor) -> Dict[str, torch.Tensor]:
        if paths.dim() != 4 or paths.size(2) != self.n_nodes or paths.size(3) != self.channels:
            raise ValueError(f"paths must be (B, T, {self.n_nodes}, {self.channels}), got {list(paths.shape)}")
        if adjacency.dim() != 3 or adjacency.size(0) != paths.size(0) or adjacency.size(1) != self.n_nodes \
                or adjacency.size(2) != self.n_nodes:
            raise ValueError(f"adjacency must be ({paths.size(0)}, {self.n_nodes}, {self.n_nodes}), "
                             f"got {list(adjacency.shape)}")
        coarse, s, cut, ortho, consistency = self.coarse_graining(paths, adjacency.to(paths.dtype))
        return {"logits": self.classify(coarse), "cut_loss": cut, "orthogonality_loss": ortho,
                "consistency_loss": consistency, "assignment": s, "coarse": coarse}

    @torch.jit.export
    def total_loss(self, out: Dict[str, torch.Tensor], labels: torch.Tensor,
                   weights: Tuple[float, float, float] = (0.1, 1.0, 1.0)) -> torch.Tensor:
        """Eq. 12: ``CE + w[0] * cut + w[1] * orthogonality + w[2] * consistency`` (scalar).

        ``out`` is this model's forward output, ``labels`` (B,) int64 class indices.
        """
        ce = torch.nn.functional.cross_entropy(out["logits"], labels)
        return ce + weights[0] * out["cut_loss"] + weights[1] * out["orthogonality_loss"] \
            + weights[2] * out["consistency_loss"]


def _centre_beads(coarse: torch.Tensor) -> torch.Tensor:
    """Subtract each frame's mean over beads: (B, T, K, C) -> same shape, translation invariant."""
    return coarse - coarse.mean(dim=2, keepdim=True)


class DeepSignature(_PathClassifier):
    """Spectral coarse graining -> segment log-signatures -> LSTM -> LayerNorm -> MLP (paper Fig. 1).

    Parameters (besides the shared ones of :func:`build_model`)
    ----------
    depth : log-signature depth (paper: 2 gene; 2-3 MD)
    segments : number of consecutive pieces of the window (paper: 4 for MD); needs T > segments
    basepoint : prepend a zero point to each piece (absolute levels visible; breaks translation
        invariance)
    time_augment : add a time channel in [0, 1] over the window
    lstm_hidden, mlp_hidden, dropout : sizes of the sequence model and of the classifier
    """

    def __init__(self, n_nodes: int, channels: int, n_classes: int, *, feature_frames: int = 16,
                 hidden: int = 10, clusters: Sequence[int] = (60, 30), assign_hidden: int = 0,
                 decoder_hidden: int = 32, depth: int = 2, segments: int = 4, basepoint: bool = False,
                 time_augment: bool = False, lstm_hidden: int = 64, mlp_hidden: int = 64,
                 dropout: float = 0.0):
        hp = dict(n_nodes=n_nodes, channels=channels, n_classes=n_classes, feature_frames=feature_frames,
                  hidden=hidden, clusters=[int(k) for k in clusters], assign_hidden=assign_hidden,
                  decoder_hidden=decoder_hidden, depth=depth, segments=segments, basepoint=basepoint,
                  time_augment=time_augment, lstm_hidden=lstm_hidden, mlp_hidden=mlp_hidden,
                  dropout=dropout)
        super().__init__("deep-signature", hp, n_nodes, channels, n_classes, feature_frames, hidden,
                         clusters, assign_hidden, decoder_hidden)
        if depth < 1 or segments < 1:
            raise ValueError(f"depth and segments must be >= 1, got {depth}, {segments}")
        self.depth = int(depth)
        self.segments = int(segments)
        self.basepoint = bool(basepoint)
        self.time_augment = bool(time_augment)
        path_channels = self.n_clusters * self.channels + (1 if self.time_augment else 0)
        self.signature_channels = logsignature_channels(path_channels, self.depth)
        self.lstm = torch.nn.LSTM(self.signature_channels, lstm_hidden, batch_first=True)
        self.norm = torch.nn.LayerNorm(lstm_hidden)
        self.classifier = _classifier(lstm_hidden, mlp_hidden, n_classes, dropout)

    def segment_paths(self, coarse: torch.Tensor) -> torch.Tensor:
        """Pieces of the (augmented) coarse path: (B, T, K, C) -> (B, segments, L, D)."""
        b, t = coarse.size(0), coarse.size(1)
        if t < self.segments + 1:
            raise ValueError(f"a window of {t} frames cannot be cut into {self.segments} segments "
                             f"of >= 2 frames; use windows of >= {self.segments + 1} frames")
        path = coarse.reshape(b, t, -1)
        if self.time_augment:
            time = torch.linspace(0.0, 1.0, t, dtype=path.dtype, device=path.device)
            path = torch.cat([path, time.reshape(1, t, 1).expand(b, t, 1)], dim=2)
        bounds: List[int] = []
        for i in range(self.segments + 1):
            bounds.append((i * (t - 1) + self.segments // 2) // self.segments)
        longest = 0
        for i in range(self.segments):
            longest = max(longest, bounds[i + 1] - bounds[i] + 1)
        pieces: List[torch.Tensor] = []
        for i in range(self.segments):
            piece = path[:, bounds[i]:bounds[i + 1] + 1]
            pad = longest - piece.size(1)
            if pad > 0:
                piece = torch.cat([piece, piece[:, -1:].expand(b, pad, piece.size(2))], dim=1)
            if self.basepoint:
                start = torch.zeros_like(piece[:, :1])
                if self.time_augment:
                    start[:, :, -1] = piece[:, :1, -1]
                piece = torch.cat([start, piece], dim=1)
            pieces.append(piece)
        return torch.stack(pieces, dim=1)

    def classify(self, coarse: torch.Tensor) -> torch.Tensor:
        pieces = self.segment_paths(coarse)
        b, s, length, d = pieces.shape
        sig = logsignature(pieces.reshape(b * s, length, d), self.depth).reshape(b, s, -1)
        out, _ = self.lstm(sig)
        return self.classifier(self.norm(out[:, -1]))


class _FrameMLP(_PathClassifier):
    """Head / Tail / Head & Tail baselines: an MLP on the first and/or last coarse frame."""

    def __init__(self, method: str, use_head: bool, use_tail: bool, n_nodes: int, channels: int,
                 n_classes: int, feature_frames: int, hidden: int, clusters: Sequence[int],
                 assign_hidden: int, decoder_hidden: int, centre: bool, mlp_hidden: int, dropout: float):
        hp = dict(n_nodes=n_nodes, channels=channels, n_classes=n_classes, feature_frames=feature_frames,
                  hidden=hidden, clusters=[int(k) for k in clusters], assign_hidden=assign_hidden,
                  decoder_hidden=decoder_hidden, centre=centre, mlp_hidden=mlp_hidden, dropout=dropout)
        super().__init__(method, hp, n_nodes, channels, n_classes, feature_frames, hidden, clusters,
                         assign_hidden, decoder_hidden)
        self.use_head = use_head
        self.use_tail = use_tail
        self.centre = bool(centre)
        width = self.n_clusters * self.channels * (int(use_head) + int(use_tail))
        self.classifier = _classifier(width, mlp_hidden, n_classes, dropout)

    def classify(self, coarse: torch.Tensor) -> torch.Tensor:
        if self.centre:
            coarse = _centre_beads(coarse)
        frames: List[torch.Tensor] = []
        if self.use_head:
            frames.append(coarse[:, 0])
        if self.use_tail:
            frames.append(coarse[:, -1])
        return self.classifier(torch.cat(frames, dim=1).flatten(1))


class Head(_FrameMLP):
    """MLP on the first frame of the coarse dynamics (centred over beads unless ``centre=False``)."""

    def __init__(self, n_nodes: int, channels: int, n_classes: int, *, feature_frames: int = 16,
                 hidden: int = 10, clusters: Sequence[int] = (60, 30), assign_hidden: int = 0,
                 decoder_hidden: int = 32, centre: bool = True, mlp_hidden: int = 64, dropout: float = 0.0):
        super().__init__("head", True, False, n_nodes, channels, n_classes, feature_frames, hidden, clusters,
                         assign_hidden, decoder_hidden, centre, mlp_hidden, dropout)


class Tail(_FrameMLP):
    """MLP on the last frame of the coarse dynamics (centred over beads unless ``centre=False``)."""

    def __init__(self, n_nodes: int, channels: int, n_classes: int, *, feature_frames: int = 16,
                 hidden: int = 10, clusters: Sequence[int] = (60, 30), assign_hidden: int = 0,
                 decoder_hidden: int = 32, centre: bool = True, mlp_hidden: int = 64, dropout: float = 0.0):
        super().__init__("tail", False, True, n_nodes, channels, n_classes, feature_frames, hidden, clusters,
                         assign_hidden, decoder_hidden, centre, mlp_hidden, dropout)


class HeadTail(_FrameMLP):
    """MLP on the first and last coarse frames, concatenated."""

    def __init__(self, n_nodes: int, channels: int, n_classes: int, *, feature_frames: int = 16,
                 hidden: int = 10, clusters: Sequence[int] = (60, 30), assign_hidden: int = 0,
                 decoder_hidden: int = 32, centre: bool = True, mlp_hidden: int = 64, dropout: float = 0.0):
        super().__init__("head-tail", True, True, n_nodes, channels, n_classes, feature_frames, hidden,
                         clusters, assign_hidden, decoder_hidden, centre, mlp_hidden, dropout)


class GraphLSTM(_PathClassifier):
    """LSTM over all frames of the coarse dynamics -> LayerNorm -> MLP."""

    def __init__(self, n_nodes: int, channels: int, n_classes: int, *, feature_frames: int = 16,
                 hidden: int = 10, clusters: Sequence[int] = (60, 30), assign_hidden: int = 0,
                 decoder_hidden: int = 32, centre: bool = True, lstm_hidden: int = 64, mlp_hidden: int = 64,
                 dropout: float = 0.0):
        hp = dict(n_nodes=n_nodes, channels=channels, n_classes=n_classes, feature_frames=feature_frames,
                  hidden=hidden, clusters=[int(k) for k in clusters], assign_hidden=assign_hidden,
                  decoder_hidden=decoder_hidden, centre=centre, lstm_hidden=lstm_hidden,
                  mlp_hidden=mlp_hidden, dropout=dropout)
        super().__init__("graph-lstm", hp, n_nodes, channels, n_classes, feature_frames, hidden, clusters,
                         assign_hidden, decoder_hidden)
        self.centre = bool(centre)
        self.lstm = torch.nn.LSTM(self.n_clusters * self.channels, lstm_hidden, batch_first=True)
        self.norm = torch.nn.LayerNorm(lstm_hidden)
        self.classifier = _classifier(lstm_hidden, mlp_hidden, n_classes, dropout)

    def classify(self, coarse: torch.Tensor) -> torch.Tensor:
        if self.centre:
            coarse = _centre_beads(coarse)
        out, _ = self.lstm(coarse.flatten(2))
        return self.classifier(self.norm(out[:, -1]))


def sinusoidal_positions(frames: int, width: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Vaswani et al. positional encoding (frames, width): sin on even, cos on odd features."""
    position = torch.arange(frames, dtype=torch.float64, device=device).unsqueeze(1)
    rate = torch.exp(torch.arange(0, width, 2, dtype=torch.float64, device=device) * (-math.log(10000.0) / width))
    pe = torch.zeros(frames, width, dtype=torch.float64, device=device)
    pe[:, 0::2] = torch.sin(position * rate)
    pe[:, 1::2] = torch.cos(position * rate)[:, : width // 2]
    return pe.to(dtype)


class GraphTrans(_PathClassifier):
    """Transformer encoder over coarse frames (sinusoidal positions), mean over frames -> MLP."""

    def __init__(self, n_nodes: int, channels: int, n_classes: int, *, feature_frames: int = 16,
                 hidden: int = 10, clusters: Sequence[int] = (60, 30), assign_hidden: int = 0,
                 decoder_hidden: int = 32, centre: bool = True, model_dim: int = 64, heads: int = 4,
                 layers: int = 2, mlp_hidden: int = 64, dropout: float = 0.0):
        hp = dict(n_nodes=n_nodes, channels=channels, n_classes=n_classes, feature_frames=feature_frames,
                  hidden=hidden, clusters=[int(k) for k in clusters], assign_hidden=assign_hidden,
                  decoder_hidden=decoder_hidden, centre=centre, model_dim=model_dim, heads=heads,
                  layers=layers, mlp_hidden=mlp_hidden, dropout=dropout)
        super().__init__("graph-trans", hp, n_nodes, channels, n_classes, feature_frames, hidden, clusters,
                         assign_hidden, decoder_hidden)
        if model_dim % heads != 0 or model_dim % 2 != 0:
            raise ValueError(f"model_dim ({model_dim}) must be even and divisible by heads ({heads})")
        self.centre = bool(centre)
        self.model_dim = int(model_dim)
        self.embed = torch.nn.Linear(self.n_clusters * self.channels, model_dim)
        layer = torch.nn.TransformerEncoderLayer(model_dim, heads, dim_feedforward=2 * model_dim,
                                                 dropout=dropout, batch_first=True)
        self.encoder = torch.nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = torch.nn.LayerNorm(model_dim)
        self.classifier = _classifier(model_dim, mlp_hidden, n_classes, dropout)

    def classify(self, coarse: torch.Tensor) -> torch.Tensor:
        if self.centre:
            coarse = _centre_beads(coarse)
        h = self.embed(coarse.flatten(2))
        h = h + sinusoidal_positions(h.size(1), self.model_dim, h.dtype, h.device).unsqueeze(0)
        return self.classifier(self.norm(self.encoder(h).mean(dim=1)))


METHODS = {"deep-signature": DeepSignature, "head": Head, "tail": Tail, "head-tail": HeadTail,
           "graph-lstm": GraphLSTM, "graph-trans": GraphTrans}


def build_model(method: str, *, n_nodes: int, channels: int, n_classes: int, seed: Optional[int] = None,
                **hyper) -> _PathClassifier:
    """Construct a method of :data:`METHODS` by name.

    ``hyper`` are the keyword arguments of that method's class (unknown names are a ValueError);
    ``build_model(model.method, **model.hyperparameters)`` rebuilds the same architecture. With
    ``seed``, parameters are initialised from that seed without touching the global RNG state.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {sorted(METHODS)}")
    cls = METHODS[method]
    import inspect

    allowed = [p.name for p in inspect.signature(cls.__init__).parameters.values()
               if p.kind == inspect.Parameter.KEYWORD_ONLY]
    unknown = sorted(set(hyper) - set(allowed))
    if unknown:
        raise ValueError(f"unknown hyper-parameters {unknown} for method {method!r}; allowed: {allowed}")
    if seed is None:
        return cls(n_nodes, channels, n_classes, **hyper)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return cls(n_nodes, channels, n_classes, **hyper)
