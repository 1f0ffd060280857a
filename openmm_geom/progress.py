"""Progress bars for long work (tqdm), an OpenMM reporter, and when to show them.

- :func:`show_progress` is the one place that decides whether bars are drawn: as asked
  (``--progress`` / ``--no-progress``), else only when stderr is a terminal, so that logs and
  pipes never receive carriage-return lines;
- :func:`progress_bar` makes a tqdm bar on stderr (tqdm is imported on first use);
- :func:`position` says how far the unfinished bars got (drawn or not), which is what the
  command line reports when it is interrupted (``interrupted at step 1200 of 4000 ...``).
"""
from __future__ import annotations

import sys
from typing import Optional

__all__ = ["show_progress", "progress_bar", "position", "completed_fraction", "reset_position",
           "ProgressReporter"]

# bar id -> [description, count, total, unit] of every open bar (and of bars closed by an
# exception), oldest first
_UNFINISHED: dict = {}
_BAR_CLASS = None


def show_progress(requested: Optional[bool] = None) -> bool:
    """Whether to draw progress bars.

    Parameters
    ----------
    requested : bool, optional
        ``--progress`` (True) or ``--no-progress`` (False); None: not given.

    Returns
    -------
    bool
        ``requested`` if given, else whether stderr is a terminal.
    """
    if requested is not None:
        return bool(requested)
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


def _bar_class():
    """tqdm's bar class, extended to count (for :func:`position`) even when disabled."""
    global _BAR_CLASS
    if _BAR_CLASS is None:
        from tqdm.auto import tqdm

        class Bar(tqdm):
            def __init__(self, **kwargs):
                super().__init__(**kwargs)  # a disabled bar sets neither desc nor unit
                self.counted = 0
                _UNFINISHED[id(self)] = [kwargs.get("desc") or "", 0, kwargs.get("total"),
                                         kwargs.get("unit", "it")]

            def update(self, n=1):
                self.counted += int(n or 0)
                entry = _UNFINISHED.get(id(self))
                if entry is not None:
                    entry[1] = self.counted
                return super().update(n)

            def close(self):
                # closed while an exception unwinds (Ctrl-C): keep it for position()
                if sys.exc_info()[0] is None:
                    _UNFINISHED.pop(id(self), None)
                return super().close()

        _BAR_CLASS = Bar
    return _BAR_CLASS


def progress_bar(total: int, description: str, *, enabled: bool = True, unit: str = "it"):
    """A tqdm bar on stderr; disabled bars draw nothing but still count for :func:`position`."""
    return _bar_class()(total=total, desc=description, unit=unit, disable=not enabled,
                        file=sys.stderr, dynamic_ncols=True, mininterval=0.5)


def position() -> Optional[str]:
    """How far the unfinished bars got, outermost first, e.g. ``"simulating: step 1200 of
    4000"``; None if no bar has counted anything."""
    parts = [f"{description}: {unit} {count} of {total}" if description else
             f"{unit} {count} of {total}"
             for description, count, total, unit in _UNFINISHED.values()
             if total and count < total]
    return "; ".join(parts) or None


def completed_fraction() -> Optional[float]:
    """How far the outermost unfinished bar with a total got (0..1); None if there is none.
    Safe to call from another thread (a task's progress is read this way on Dask workers)."""
    for _, count, total, _ in list(_UNFINISHED.values()):
        if total:
            return min(count / total, 1.0)
    return None


def reset_position() -> None:
    """Forget every bar (the command line calls this before a command starts)."""
    _UNFINISHED.clear()


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
