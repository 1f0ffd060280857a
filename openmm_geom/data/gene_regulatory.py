"""Synthetic gene-regulatory dynamics on power-law networks (Deep Signature, appendix B.1).

Every node ``i`` of a network with adjacency ``A`` carries an expression level ``x_i`` that
follows the gene-regulatory model of Gao, Barzel & Barabási (Nature 530, 307, 2016)::

    dx_i/dt = -B x_i^f + R sum_j A_ij x_j^h / (1 + x_j^h)

The first term is degradation (``f = 1``, class 0) or dimerization (``f = 2``, class 1); the
second is activation by the neighbours with Hill coefficient ``h``. :func:`generate_gene_dataset`
draws a network and an initial state per trajectory, integrates the equation with the
Dormand-Prince method, and writes a path dataset (:mod:`openmm_geom.data.path_dataset`) whose
task is to tell the two kinds of dynamics apart.

Choices the paper does not fix (all recorded in the file's provenance)
----------------------------------------------------------------------
- Network: Barabási-Albert preferential attachment (:func:`power_law_network`), ``m = 2`` edges
  per new node, a fresh network per trajectory. Its degree distribution has a power-law tail
  (exponent 3); it is connected by construction and has mean degree close to ``2 m``.
- Initial state: every ``x_i(0)`` independently uniform on ``[0, 5)`` (``initial_range``):
  non-negative, because the model is defined for concentrations (``x >= 0`` is then kept by
  the dynamics, since ``dx_i/dt >= 0`` at ``x_i = 0``), and spread across the Hill switch at
  ``x = 1`` and up to the size of the steady states (``x ~ degree`` for ``f = 1``,
  ``~ sqrt(degree)`` for ``f = 2``) so both terms matter.
- Frames: ``n_frames`` frames at ``t_k = k * duration / n_frames``, ``k = 0 .. n_frames - 1``
  (the paper's 500 frames 0.004 s apart over 2 s); frame 0 is the initial state.
- B = R = 1, h = 2.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Sequence, Union

import numpy as np
from scipy.integrate import solve_ivp

from .. import arguments as check
from ..version import __version__
from ..progress import progress_bar
from .path_dataset import save_path_dataset

__all__ = [
    "CLASS_EXPONENTS",
    "LABEL_NAMES",
    "power_law_network",
    "simulate_gene_dynamics",
    "generate_gene_dataset",
]

LABEL_NAMES = ("degradation", "dimerization")
CLASS_EXPONENTS = (1.0, 2.0)  # f of class 0 and class 1
RTOL = 1e-9
ATOL = 1e-11
_POOL_STREAM, _TEST_STREAM = 0, 1  # spawn keys of the two seed streams


def power_law_network(n_nodes: int, rng: np.random.Generator, m: int = 2) -> np.ndarray:
    """A Barabási-Albert preferential-attachment network (power-law degree tail).

    Starts from a complete graph on ``m + 1`` nodes; every further node links to ``m`` distinct
    existing nodes, each picked with probability proportional to its current degree (a node
    is drawn from the list of edge endpoints, so a node of degree ``d`` appears ``d`` times).
    Every new node attaches to the connected graph built so far, so the result is connected.

    Parameters
    ----------
    n_nodes : int
        Number of nodes, at least ``m + 1``.
    rng : numpy.random.Generator
        Source of randomness (the network is a deterministic function of its state).
    m : int
        Edges added with each new node (the mean degree tends to ``2 m``).

    Returns
    -------
    numpy.ndarray of float32, shape (n_nodes, n_nodes)
        Symmetric 0/1 adjacency with a zero diagonal.
    """
    m = check.count("m", m)
    n_nodes = check.count("n_nodes", n_nodes, minimum=m + 1)
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    adjacency = np.zeros((n_nodes, n_nodes), np.float32)
    seed_nodes = np.arange(m + 1)
    adjacency[np.ix_(seed_nodes, seed_nodes)] = 1.0
    adjacency[seed_nodes, seed_nodes] = 0.0
    # every edge contributes both endpoints: sampling uniformly from this list is sampling
    # nodes proportionally to degree
    endpoints = np.empty(2 * (m * (m + 1) // 2 + m * (n_nodes - m - 1)), np.int64)
    size = 0
    for i in seed_nodes:
        endpoints[size:size + m] = i
        size += m
    for new in range(m + 1, n_nodes):
        chosen: list = []
        while len(chosen) < m:
            node = int(endpoints[rng.integers(size)])
            if node not in chosen:
                chosen.append(node)
        for node in chosen:
            adjacency[new, node] = adjacency[node, new] = 1.0
            endpoints[size:size + 2] = (node, new)
            size += 2
    return adjacency


def gene_rhs(x: np.ndarray, adjacency: np.ndarray, f: float, B: float = 1.0, R: float = 1.0,
             h: float = 2.0) -> np.ndarray:
    """Right-hand side ``-B x^f + R A (x^h / (1 + x^h))`` for states ``x`` of shape (..., N)."""
    activation = x ** h / (1.0 + x ** h)
    return -B * x ** f + R * activation @ adjacency.T


def simulate_gene_dynamics(
    adjacency: np.ndarray,
    f: float,
    *,
    B: float = 1.0,
    R: float = 1.0,
    h: float = 2.0,
    x0: np.ndarray,
    duration: float = 2.0,
    n_frames: int = 500,
    rtol: float = RTOL,
    atol: float = ATOL,
) -> np.ndarray:
    """Integrate the gene-regulatory equation with the Dormand-Prince method (RK45).

    Parameters
    ----------
    adjacency : numpy.ndarray, (N, N)
        The network; ``A_ij`` weighs the activation of node ``i`` by node ``j``.
    f : float
        Exponent of the loss term: 1 degradation, 2 dimerization.
    B, R, h : float
        Loss rate, activation rate and Hill coefficient.
    x0 : numpy.ndarray, (N,)
        Initial expression levels, finite and non-negative.
    duration : float
        Time span (s); frames are ``duration / n_frames`` apart.
    n_frames : int
        Frames returned, at ``t_k = k * duration / n_frames`` (frame 0 is ``x0``).
    rtol, atol : float
        Tolerances of the adaptive step; frames between steps come from the method's
        dense output (4th-order interpolant).

    Returns
    -------
    numpy.ndarray of float64, shape (n_frames, N)

    Raises
    ------
    ValueError
        Bad arguments.
    RuntimeError
        The integrator failed or produced non-finite values.
    """
    adjacency = np.asarray(adjacency, dtype=np.float64)
    if adjacency.ndim != 2 or adjacency.shape[0] != adjacency.shape[1] or not adjacency.size:
        raise ValueError(f"adjacency must be a square (N, N) matrix, got {adjacency.shape}")
    if not np.isfinite(adjacency).all():
        raise ValueError("adjacency contains NaN or infinite values")
    n_nodes = adjacency.shape[0]
    x0 = np.asarray(x0, dtype=np.float64)
    if x0.shape != (n_nodes,):
        raise ValueError(f"x0 must have shape ({n_nodes},) for a {n_nodes}-node network, "
                         f"got {x0.shape}")
    if not np.isfinite(x0).all() or (x0 < 0).any():
        raise ValueError("x0 must be finite and non-negative (expression levels)")
    f, B, R, h = (check.number(name, value, sign="any") for name, value in
                  (("f", f), ("B", B), ("R", R), ("h", h)))
    duration = check.number("duration", duration)
    n_frames = check.count("n_frames", n_frames)
    times = np.arange(n_frames) * (duration / n_frames)

    def rhs(_t, x):
        return gene_rhs(x, adjacency, f, B, R, h)

    solution = solve_ivp(rhs, (0.0, float(times[-1])), x0, method="RK45", t_eval=times,
                         rtol=check.number("rtol", rtol),
                         atol=check.number("atol", atol))
    if solution.status != 0:
        raise RuntimeError(f"the Dormand-Prince integration failed: {solution.message}")
    x = solution.y.T
    if x.shape != (n_frames, n_nodes) or not np.isfinite(x).all():
        raise RuntimeError("the gene dynamics produced non-finite values")
    return x


def _seeds(seed: int, stream: int, count: int) -> list:
    """``count`` independent seed sequences of one stream; trajectory i's does not depend on
    ``count``, so a larger dataset extends a smaller one with the same seed."""
    return [np.random.SeedSequence(seed, spawn_key=(stream, i)) for i in range(count)]


def generate_gene_dataset(
    out: Union[str, os.PathLike],
    *,
    n_trajectories: int = 100,
    n_test: int = 40,
    n_nodes: int = 100,
    n_frames: int = 500,
    duration: float = 2.0,
    seed: int = 0,
    m: int = 2,
    initial_range: Sequence[float] = (0.0, 5.0),
    B: float = 1.0,
    R: float = 1.0,
    h: float = 2.0,
    rate_spread: float = 1.0,
    progress: bool = True,
) -> Path:
    """Simulate gene-regulatory dynamics of both classes and write a path dataset.

    Trajectory ``i`` of the cross-validation pool has class ``i % 2`` (degradation f=1,
    dimerization f=2) and its own network and initial state from the seed sequence
    ``(seed, spawn_key=(0, i))``; the independent test trajectories use ``(seed, (1, i))``,
    a stream of their own. The pool comes first in the file, then the test trajectories.

    Parameters
    ----------
    out : path
        Output ``.npz`` (written atomically; byte-identical for the same arguments).
    n_trajectories : int
        Trajectories of the cross-validation pool; even, so the classes are balanced.
    n_test : int
        Independent test trajectories; even (0 for none).
    n_nodes : int
        Nodes per network.
    n_frames : int
        Frames per trajectory.
    duration : float
        Simulated time (s); frames are ``duration / n_frames`` apart.
    seed : int
        Non-negative integer seed of everything random.
    m : int
        Edges per new node of the preferential-attachment networks.
    initial_range : (float, float)
        ``x_i(0)`` are uniform on ``[low, high)``, ``0 <= low < high``.
    B, R, h : float
        Parameters of the equation (module docstring).
    rate_spread : float
        With ``rate_spread > 1`` every trajectory draws its own ``B`` and ``R``, each multiplied
        by an independent log-uniform factor in ``[1/rate_spread, rate_spread]``: the level of
        expression then no longer gives the class away, only the shape of the dynamics does.
    progress : bool
        Show a progress bar (stderr).

    Returns
    -------
    pathlib.Path
        ``out``.

    Raises
    ------
    ValueError
        Bad arguments.
    RuntimeError
        A trajectory could not be integrated or has non-finite values (never dropped
        silently: the message names the trajectory and its seed).
    """
    n_trajectories = check.count("n_trajectories", n_trajectories, minimum=2)
    n_test = check.count("n_test", n_test, minimum=0)
    for name, value in (("n_trajectories", n_trajectories), ("n_test", n_test)):
        if value % len(LABEL_NAMES):
            raise ValueError(f"{name} must be even so that both classes have the same number "
                             f"of trajectories, got {value}")
    m = check.count("m", m)
    n_nodes = check.count("n_nodes", n_nodes, minimum=m + 1)
    n_frames = check.count("n_frames", n_frames, minimum=2)
    duration = check.number("duration", duration)
    seed = check.count("seed", seed, minimum=0)
    rate_spread = check.number("rate_spread", rate_spread)
    if rate_spread < 1:
        raise ValueError(f"rate_spread must be >= 1, got {rate_spread}")
    low, high = (check.number("initial_range", value, sign="any") for value in initial_range)
    if not 0 <= low < high:
        raise ValueError(f"initial_range must be (low, high) with 0 <= low < high, got "
                         f"{tuple(initial_range)}")

    jobs = [(False, i, s) for i, s in enumerate(_seeds(seed, _POOL_STREAM, n_trajectories))]
    jobs += [(True, i, s) for i, s in enumerate(_seeds(seed, _TEST_STREAM, n_test))]
    paths = np.empty((len(jobs), n_frames, n_nodes, 1), np.float32)
    adjacency = np.empty((len(jobs), n_nodes, n_nodes), np.float32)
    labels = np.empty(len(jobs), np.int64)
    is_test = np.empty(len(jobs), bool)
    with progress_bar(len(jobs), "gene trajectories", enabled=progress,
                      unit="traj") as bar:
        for row, (test, i, seed_sequence) in enumerate(jobs):
            rng = np.random.default_rng(seed_sequence)
            label = i % len(LABEL_NAMES)
            adjacency[row] = power_law_network(n_nodes, rng, m=m)
            x0 = rng.uniform(low, high, size=n_nodes)
            rates = (B, R)
            if rate_spread > 1:
                factors = np.exp(rng.uniform(-math.log(rate_spread), math.log(rate_spread), 2))
                rates = (B * float(factors[0]), R * float(factors[1]))
            where = (f"{'test' if test else 'cross-validation'} trajectory {i} (seed {seed}, "
                     f"spawn key {seed_sequence.spawn_key})")
            try:
                x = simulate_gene_dynamics(adjacency[row], CLASS_EXPONENTS[label], B=rates[0],
                                           R=rates[1],
                                           h=h, x0=x0, duration=duration, n_frames=n_frames)
            except RuntimeError as error:
                raise RuntimeError(f"{where}: {error}") from error
            x32 = x.astype(np.float32)
            if not np.isfinite(x32).all():  # beyond float32's range
                raise RuntimeError(f"{where}: expression levels overflow float32")
            paths[row, :, :, 0] = x32
            labels[row], is_test[row] = label, test
            bar.update(1)

    provenance = {
        "generator": "openmm_geom.data.gene_regulatory.generate_gene_dataset",
        "version": __version__,
        "model": "dx_i/dt = -B x_i^f + R sum_j A_ij x_j^h / (1 + x_j^h) (Gao et al. 2016)",
        "class_exponents_f": list(CLASS_EXPONENTS),
        "parameters": {
            "n_trajectories": n_trajectories, "n_test": n_test, "n_nodes": n_nodes,
            "n_frames": n_frames, "duration": duration, "seed": seed, "m": m,
            "initial_range": [low, high], "B": B, "R": R, "h": h,
            "rate_spread": rate_spread,
        },
        "network": "Barabasi-Albert preferential attachment from a complete graph on m+1 "
                   "nodes, one per trajectory",
        "initial_state": "x_i(0) ~ Uniform[initial_range), independent",
        "integrator": {"method": "scipy solve_ivp RK45 (Dormand-Prince)", "rtol": RTOL,
                       "atol": ATOL},
        "frames": "t_k = k * duration / n_frames, k = 0..n_frames-1",
        "seeds": "numpy SeedSequence(seed, spawn_key=(0, i)) for pool trajectory i, "
                 "(1, i) for test trajectory i",
    }
    return save_path_dataset(
        out, paths=paths, labels=labels, label_names=np.asarray(LABEL_NAMES),
        adjacency=adjacency, is_test=is_test, time_step=np.float64(duration / n_frames),
        time_unit=np.asarray("s"), channel_unit=np.asarray("a.u."),
        provenance=np.asarray(json.dumps(provenance, sort_keys=True)))
