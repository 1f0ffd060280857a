"""Progress bars for long work (tqdm), including an OpenMM reporter."""
from __future__ import annotations

import sys

from tqdm.auto import tqdm

__all__ = ["progress_bar", "ProgressReporter"]


def progress_bar(total: int, description: str, *, enabled: bool = True, unit: str = "it"):
    """A tqdm bar on stderr; disabled bars cost nothing."""
    return tqdm(total=total, desc=description, unit=unit, disable=not enabled,
                file=sys.stderr, dynamic_ncols=True, mininterval=0.5)


class ProgressReporter:
    """OpenMM reporter that advances a progress bar every ``interval`` steps."""

    def __init__(self, total_steps: int, description: str = "simulating", interval: int = 100):
        self._bar = progress_bar(total_steps, description, unit="step")
        self._interval = max(1, int(interval))
        self._start = None

    def describeNextReport(self, simulation):
        if self._start is None:
            self._start = simulation.currentStep
        steps = self._interval - simulation.currentStep % self._interval
        return {"steps": steps, "periodic": None, "include": []}

    def report(self, simulation, state):
        self._bar.update(min(simulation.currentStep - self._start, self._bar.total) - self._bar.n)
        if self._bar.n >= self._bar.total:
            self._bar.close()
