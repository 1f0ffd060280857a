"""Multiple walkers sharing one metadynamics or OPES bias (PLUMED's multiple walkers).

N simulations of one system bias the same CVs with one shared bias. Each walker's
:class:`Metadynamics` or :class:`OPES` puts its depositions into an ``outbox`` instead of
applying them; every ``exchange_interval`` steps the walker sends them to a
:class:`DepositionLedger` (an append-only, ordered list of every walker's depositions) and
applies, in the ledger's order, every row it has not applied yet (its own included). So each
walker's bias is the same function of the ledger's first rows, and a walker sees the others'
hills or kernels at most one exchange interval late. Each exchange is logged
(``exchanges.csv``: rows sent and received, the ledger's size and the walker's lead over the
slowest other walker, in steps).

Where the ledger lives:

- in this process: :func:`run_in_turn` steps the walkers one exchange interval at a time,
  one after the other (deterministic; what a laptop without Dask runs);
- in a Dask actor (:meth:`openmm_geom.parallel.TaskRunner.shared`): each walker is a task on
  a cluster and exchanges through the actor whenever it gets there.

Checkpoints (:meth:`Walker.checkpoint`, at an exchange): the ledger is saved first (by its
owner, atomically), then the walker's Context and bias state, so the ledger on disk always
holds every row a saved walker has applied. A walker that resumes from its checkpoint
re-runs its steps since then; the rows it deposited in the lost attempt are already in the
ledger, so its new depositions for those steps are dropped (one row per walker and step) and
the old ones are applied instead: nothing is lost and nothing is counted twice.

OPES walkers need a fixed initial sigma (the adaptive sigma is a per-walker running variance,
which the walkers would not share).
"""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from .. import arguments as check
from ..io import atomic_savez, atomic_write_bytes, format_tag, read_versioned_npz

__all__ = ["DepositionLedger", "Walker", "run_in_turn"]

LEDGER_KIND = "deposition-ledger"
LEDGER_VERSION = 1
EXCHANGE_COLUMNS = ["step", "sent", "received", "kept_from_earlier_attempt", "ledger_rows",
                    "lead_steps"]


class DepositionLedger:
    """The shared bias of multiple walkers: every deposition row, in one order.

    Parameters
    ----------
    width : int
        Numbers per row (the bias' ``deposition_width``).
    path : optional file the ledger is saved to (:meth:`save`) and, if it exists, read from
        (a resumed run).

    Plain Python, so that it runs in this process or as a Dask actor (one call at a time).
    """

    def __init__(self, width: int, path: Union[str, os.PathLike, None] = None):
        self.width = check.count("width", width)
        self.path = None if path is None else str(path)
        self._rows = np.zeros((0, self.width))
        self._origin = np.zeros((0, 2), dtype=np.int64)  # (walker, step) of each row
        self._keys: set = set()
        self._clock: dict = {}  # walker -> the step of its last exchange
        if self.path is not None and Path(self.path).exists():
            self._load()

    def __len__(self) -> int:
        return len(self._rows)

    def __bool__(self) -> bool:  # an empty ledger is still a ledger
        return True

    def exchange(self, walker: int, step: int, rows, steps: Sequence[int], start: int) -> tuple:
        """Append ``walker``'s ``rows`` (deposited at ``steps``), then return what it lacks.

        A row whose (walker, step) the ledger already holds (deposited by an earlier attempt
        of the same walker, before it resumed from a checkpoint) is dropped.

        Returns
        -------
        (rows (m, width) from row ``start`` on, how many of the walker's rows were dropped,
        the ledger's size, the walker's lead in steps over the slowest other walker (0 if
        it is alone))
        """
        rows = np.asarray(rows, dtype=float).reshape(-1, self.width)
        if len(rows) != len(steps):
            raise ValueError(f"{len(rows)} rows but {len(steps)} steps")
        dropped = 0
        kept_rows, kept_origin = [], []
        for row, at in zip(rows, steps):
            key = (int(walker), int(at))
            if key in self._keys:
                dropped += 1
                continue
            self._keys.add(key)
            kept_rows.append(row)
            kept_origin.append(key)
        if kept_rows:
            self._rows = np.vstack([self._rows, np.array(kept_rows)])
            self._origin = np.vstack([self._origin, np.array(kept_origin, dtype=np.int64)])
        self._clock[int(walker)] = int(step)
        others = [s for w, s in self._clock.items() if w != int(walker)]
        lead = int(step) - min(others) if others else 0
        return self._rows[int(start):].copy(), dropped, len(self._rows), lead

    def rows(self, start: int = 0) -> np.ndarray:
        """The rows from ``start`` on, a copy."""
        return self._rows[int(start):].copy()

    def origins(self) -> np.ndarray:
        """(walker, step) of every row, in ledger order."""
        return self._origin.copy()

    def save(self) -> Optional[str]:
        """Write the ledger to its path, atomically (no path: nothing); returns the path."""
        if self.path is None:
            return None
        import json

        meta = {"format": format_tag(LEDGER_KIND, LEDGER_VERSION), "width": self.width,
                "clock": {str(w): s for w, s in self._clock.items()}}
        atomic_savez(self.path, meta=np.array(json.dumps(meta)), rows=self._rows,
                     origin=self._origin)
        return self.path

    def _load(self) -> None:
        data, meta = read_versioned_npz(self.path, LEDGER_KIND, (LEDGER_VERSION,),
                                        required=("rows", "origin"),
                                        what="multiple-walkers deposition ledger")
        if int(meta.get("width", -1)) != self.width:
            raise ValueError(f"{self.path} holds rows of {meta.get('width')} numbers; this "
                             f"bias deposits {self.width} (another method or CVs)")
        self._rows = np.array(data["rows"], dtype=float).reshape(-1, self.width)
        self._origin = np.array(data["origin"], dtype=np.int64).reshape(-1, 2)
        self._keys = {(int(w), int(s)) for w, s in self._origin}
        self._clock = {int(w): int(s) for w, s in meta.get("clock", {}).items()}


def _call(ledger, method: str, *args):
    """A ledger method here, or on a Dask actor (whose calls return futures)."""
    result = getattr(ledger, method)(*args)
    return result.result() if hasattr(result, "result") else result


class Walker:
    """One simulation of a group sharing a bias through a :class:`DepositionLedger`.

    Parameters
    ----------
    index : int
        This walker's number (0 .. N-1), unique in the group.
    simulation : openmm.app.Simulation
        Whose System holds ``bias``' force.
    bias : :class:`~openmm_geom.openmm.Metadynamics` or :class:`~openmm_geom.openmm.OPES`
        Every walker's bias has the same settings (the ledger's rows assume it).
    ledger : DepositionLedger, or a Dask actor of one
    exchange_interval : int
        Steps between exchanges: a multiple of the deposition pace.
    log : optional CSV of the exchanges (columns ``EXCHANGE_COLUMNS``)
    """

    def __init__(self, index: int, simulation, bias, ledger, exchange_interval: int,
                 log: Union[str, os.PathLike, None] = None):
        self.index = check.count("walker index", index, minimum=0)
        pace = getattr(bias, "pace", None) or bias.frequency
        self.pace = int(pace)
        self.exchange_interval = check.count("exchange_interval", exchange_interval)
        if self.exchange_interval % pace:
            raise ValueError(f"exchange_interval ({self.exchange_interval} steps) must be a "
                             f"multiple of the deposition pace ({pace} steps)")
        if getattr(bias, "adaptive_sigma", False):
            raise ValueError("OPES walkers need a fixed initial sigma (pass sigma): the adaptive "
                             "sigma is one walker's running variance")
        self.simulation, self.bias, self.ledger = simulation, bias, ledger
        self.log = None if log is None else Path(log)
        self._outbox: list = []
        self._steps: list = []  # the step of each row in the outbox
        bias.outbox = self._outbox

    @property
    def step_count(self) -> int:
        return int(self.simulation.currentStep)

    def advance(self, steps: int) -> None:
        """Run ``steps`` (a multiple of the exchange interval from an exchange), exchanging
        every ``exchange_interval`` steps."""
        steps = check.count("steps", steps, minimum=0)
        end = self.step_count + steps
        while self.step_count < end:
            # up to the next deposition, so that each row's step is known
            n = min(self.pace - self.step_count % self.pace, end - self.step_count)
            before = len(self._outbox)
            self.bias.step(self.simulation, n)
            self._steps += [self.step_count] * (len(self._outbox) - before)
            if self.step_count % self.exchange_interval == 0:
                self.exchange()

    def exchange(self) -> dict:
        """Send the outbox, apply every ledger row not applied yet (in order); returns and
        logs what happened."""
        sent = len(self._outbox)
        rows, dropped, size, lead = _call(self.ledger, "exchange", self.index, self.step_count,
                                          np.array(self._outbox).reshape(-1, self.bias.deposition_width),
                                          list(self._steps), self.bias.depositions)
        self._outbox.clear()
        self._steps.clear()
        self.bias.add_depositions(rows, self.simulation.context)
        record = {"step": self.step_count, "sent": sent, "received": len(rows),
                  "kept_from_earlier_attempt": dropped, "ledger_rows": size, "lead_steps": lead}
        if self.log is not None:
            new = not self.log.exists() or self.log.stat().st_size == 0
            with open(self.log, "a", newline="") as handle:
                writer = csv.writer(handle)
                if new:
                    writer.writerow(EXCHANGE_COLUMNS)
                writer.writerow([record[c] for c in EXCHANGE_COLUMNS])
        return record

    def checkpoint(self, checkpoint: Union[str, os.PathLike], state: Union[str, os.PathLike]) -> None:
        """Exchange, save the ledger (its owner writes it), then this walker's Context and
        bias state. Call at an exchange step."""
        if self._outbox:
            self.exchange()
        _call(self.ledger, "save")
        self.simulation.saveCheckpoint(str(checkpoint))
        self.bias.save_state(state, self.simulation.context)

    def resume(self, checkpoint: Union[str, os.PathLike], state: Union[str, os.PathLike]) -> None:
        """Load this walker's Context checkpoint and bias state (the ledger rows after the
        state's are applied at the next exchange); the exchange log is cut back to the
        checkpoint's step."""
        self.simulation.loadCheckpoint(str(checkpoint))
        self.bias.load_state(state, self.simulation.context)
        if self.log is not None and self.log.exists():
            lines = self.log.read_text().splitlines(keepends=True)
            kept = lines[:1] + [line for line in lines[1:] if line.endswith("\n")
                                and int(line.split(",", 1)[0]) <= self.step_count]
            atomic_write_bytes(self.log, "".join(kept).encode())


def run_in_turn(walkers: Sequence[Walker], steps: int) -> None:
    """Advance every walker by ``steps`` in this process, one exchange interval at a time,
    walker after walker (deterministic)."""
    steps = check.count("steps", steps, minimum=0)
    if not walkers:
        raise ValueError("no walkers")
    interval = walkers[0].exchange_interval
    if any(w.exchange_interval != interval for w in walkers):
        raise ValueError("walkers stepped in turn need one exchange interval")
    ends = [w.step_count + steps for w in walkers]
    while any(w.step_count < end for w, end in zip(walkers, ends)):
        for walker, end in zip(walkers, ends):
            if walker.step_count < end:
                walker.advance(min(interval - walker.step_count % interval,
                                   end - walker.step_count))
