"""Force functions for the batched simulator from trained (ensemble) models, eager or compiled."""
from __future__ import annotations

from typing import Optional

import torch

from ..ops.compile import CompiledCall, compile_model

__all__ = ["EnsembleForces"]


class EnsembleForces:
    """``force_fn`` for :class:`~openmm_geom.simulate.BatchedLangevin` from a CGSchNet ensemble.

    One forward and one backward pass give every member's forces for every replica (members
    are a batch dimension of the model, not a Python loop). The simulator propagates with the
    members' mean force; ``spread`` is the root-mean-square over beads of the members' force
    standard deviation (kJ/mol/nm), an uncertainty logged with the trajectory.

    Parameters
    ----------
    model : torch.nn.Module
        A CGSchNet (ensemble) model: ``model(x[members, B, n, 3]) -> energies[members, B]``.
    compile : bool, optional
        Run the model through ``torch.compile`` (inductor, C++ on CPU; see
        :func:`compile_model`). Default False: eager, unchanged. The first call compiles the
        forward and backward passes (measured for the production-size model on a loaded
        2-core machine: about 60 s cold, 16-20 s when inductor's on-disk cache has it; a line
        on stderr says how long), then calls run 1.7-2x faster; the payoff is measured in
        ``benchmarks/bench_compile.py`` (docs/benchmarks.md, "Compiled models").
    dynamic : bool or None, optional
        ``torch.compile``'s ``dynamic`` when ``compile`` is True. Default True (symbolic
        replica count): measured as fast per call as ``dynamic=False`` (9.1 vs 9.7 ms at 100
        replicas, about the same compile time) and a new replica count (or the last, smaller
        chunk of a large batch) needs no recompilation, which costs ``dynamic=False`` 29 s
        cold.
    """

    #: Replicas per model call are capped so that one (members, replicas, pairs, filters)
    #: activation stays near this many elements: beyond a few MB the per-pair tensors fall out
    #: of cache and a call slows down super-linearly (measured on a 35-bead chain, 5 members:
    #: 100 replicas in one call 1.4 s, in 10 chunks of 10 about 0.5 s).
    max_pair_elements = 1_000_000

    def __init__(self, model: torch.nn.Module, *, compile: bool = False,
                 dynamic: Optional[bool] = True):
        self.model = model
        self.compiled = bool(compile)
        self._dynamic = dynamic
        self._forward = model  # compile: replaced by the compiled module at the first call
        self._first = CompiledCall(self._compile_and_evaluate, "the force function") \
            if compile else None
        self.members = int(getattr(model, "members", 1))
        self.dtype = next(model.parameters()).dtype
        n_beads = int(getattr(model, "n_beads", 0))
        width = int(getattr(model, "hyperparameters", {}).get("filters", 1))
        per_replica = self.members * max(n_beads * (n_beads - 1) // 2, 1) * width
        self.chunk = max(1, self.max_pair_elements // per_replica)

    @property
    def compile_seconds(self) -> Optional[float]:
        """Seconds of the first (compiling) call; None if not compiled or not yet called."""
        return None if self._first is None else self._first.compile_seconds

    def __call__(self, x: torch.Tensor):
        evaluate = self._evaluate
        if self._first is not None and self._first.compile_seconds is None:
            evaluate = self._first
        if x.shape[0] <= self.chunk:
            return evaluate(x)
        parts = [evaluate(part) for part in torch.split(x, self.chunk)]
        return tuple(torch.cat(values) for values in zip(*parts))

    def _compile_and_evaluate(self, x: torch.Tensor):
        if self._forward is self.model:  # importing torch's compiler takes seconds: not before
            self._forward = compile_model(self.model, dynamic=self._dynamic)
        return self._evaluate(x)

    def _evaluate(self, x: torch.Tensor):
        positions = x.to(self.dtype)
        expanded = positions.unsqueeze(0).expand(self.members, *positions.shape).clone()
        expanded.requires_grad_(True)
        with torch.enable_grad():
            energies = self._forward(expanded)  # (E, B)
            (gradient,) = torch.autograd.grad(energies.sum(), expanded)
        forces = -gradient  # (E, B, n, 3)
        mean = forces.mean(0)
        spread = (forces.std(0, unbiased=False) ** 2).sum(-1).mean(-1).sqrt() if self.members > 1 \
            else torch.zeros(x.shape[0], dtype=self.dtype)
        return (mean.to(x.dtype).detach(), energies.mean(0).to(x.dtype).detach(),
                spread.to(x.dtype).detach())
