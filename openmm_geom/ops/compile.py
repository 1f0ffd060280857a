"""``torch.compile`` for the package's opt-in compiled paths: :func:`compile_model` (inductor,
its C++ backend on CPU) and :class:`CompiledCall`, which times the first (compiling) call and
says so on stderr.

Used by the batched CG simulator's force function
(:class:`openmm_geom.simulate.EnsembleForces`), the PythonForce bridge
(:func:`openmm_geom.openmm.python_force`) and force-matching training
(:func:`openmm_geom.training.force_matching.train_ensemble`); the gains are measured in
``benchmarks/bench_compile.py`` (docs/benchmarks.md, "Compiled models").
"""
from __future__ import annotations

import sys
import time
from typing import Callable, Optional

import torch

__all__ = ["compile_model", "CompiledCall"]


def compile_model(module: torch.nn.Module, *, dynamic: Optional[bool] = False) -> Callable:
    """``torch.compile(module)`` with inductor (its C++ backend on CPU).

    Compilation happens at the first call (forward) and the first backward through it. Inductor
    caches compiled artefacts on disk (its FX graph and AOTAutograd caches, in
    ``TORCHINDUCTOR_CACHE_DIR``, default ``/tmp/torchinductor_<user>``), so a later process
    compiling the same model again is faster; dynamo's tracing is repeated every time.

    Parameters
    ----------
    module : torch.nn.Module
    dynamic : bool or None, optional
        torch.compile's ``dynamic``. False (default): specialise on the input shape (a new
        replica count triggers a recompilation; after the second shape torch marks it dynamic
        and does not recompile again). None: torch's default, the same here. True: symbolic
        shapes from the start.

    Returns
    -------
    callable
    """
    return torch.compile(module, backend="inductor", dynamic=dynamic)


class CompiledCall:
    """A callable whose first call compiles: times it and says so on stderr.

    Prints ``compiling <what> (first call)... done in N s`` around the first call (which
    includes the first backward when ``function`` differentiates through a compiled module), and
    keeps the time in :attr:`compile_seconds`.

    Parameters
    ----------
    function : callable
    what : str
        Named in the log line.
    """

    def __init__(self, function: Callable, what: str):
        self.function = function
        self.what = what
        #: Seconds taken by the first call (compilation plus one evaluation); None before it.
        self.compile_seconds: Optional[float] = None

    def __call__(self, *args, **kwargs):
        if self.compile_seconds is not None:
            return self.function(*args, **kwargs)
        print(f"compiling {self.what} (first call)...", end="", file=sys.stderr, flush=True)
        start = time.perf_counter()
        try:
            result = self.function(*args, **kwargs)
        except BaseException:
            print(" failed", file=sys.stderr, flush=True)
            raise
        self.compile_seconds = time.perf_counter() - start
        print(f" done in {self.compile_seconds:.1f} s", file=sys.stderr, flush=True)
        return result
