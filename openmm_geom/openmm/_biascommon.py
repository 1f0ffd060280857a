"""What :class:`~openmm_geom.openmm.Metadynamics` and :class:`~openmm_geom.openmm.OPES` share:
step counts, settings comparison, periodic CVs from a model file, Gaussian sums in numpy,
the CV read-out of a Context and the reweighting CSV log (resumable without duplicated rows).

Private to :mod:`openmm_geom.openmm`.
"""
from __future__ import annotations

import math
import operator
import os
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
import openmm

from ..io import atomic_write_bytes

__all__ = ["whole_steps", "same_setting", "logsumexp", "recorded_periods", "gaussian_sum",
           "BiasedCVs", "BiasLog"]


def whole_steps(value, name: str, minimum: int = 1) -> int:
    """A step count (an integer >= ``minimum``)."""
    try:
        count = operator.index(value)
    except TypeError:
        if not (isinstance(value, float) and value.is_integer()):
            raise TypeError(f"{name} must be a whole number of steps, got {value!r}") from None
        count = int(value)
    if count < minimum:
        raise ValueError(f"{name} must be >= {minimum} step{'s' if minimum != 1 else ''}, "
                         f"got {count}")
    return count


def same_setting(a, b) -> bool:
    """Whether a saved setting equals ours (floats to 1e-12 relative, recursively)."""
    if isinstance(a, float) or isinstance(b, float):
        if a is None or b is None:
            return False
        if math.isinf(float(a)) or math.isinf(float(b)):
            return float(a) == float(b)
        return math.isclose(float(a), float(b), rel_tol=1e-12)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same_setting(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_setting(a[key], b[key]) for key in a)
    return a == b


def logsumexp(values: np.ndarray) -> float:
    values = np.asarray(values, dtype=float)
    top = float(values.max())
    return top + math.log(float(np.exp(values - top).sum()))


def recorded_periods(model, names: Sequence[str], periodic) -> dict:
    """The period of each CV in ``names`` (None: not periodic).

    ``periodic``: None = the CVs the model file records as periodic (``cv_periods``), with
    their recorded periods; else a name or sequence of names taken on the circle, with the
    recorded period or 2 pi if none is recorded (``()``: none periodic).
    """
    recorded = {name: (model.metadata.cv_period(i) if model.metadata is not None else None)
                for i, name in enumerate(names)}
    if periodic is None:
        periodic = [name for name, period in recorded.items() if period is not None]
    periodic = [periodic] if isinstance(periodic, str) else [str(name) for name in periodic]
    unknown = sorted(set(periodic) - set(names))
    if unknown:
        raise ValueError(f"periodic names CVs {unknown} the module does not have; its CVs are "
                         f"{list(names)}")
    return {name: ((recorded[name] or 2 * math.pi) if name in periodic else None)
            for name in names}


def gaussian_sum(points: np.ndarray, centers: np.ndarray, heights: np.ndarray,
                 widths: np.ndarray, periods: np.ndarray) -> np.ndarray:
    """``sum_h height_h exp(-0.5 sum_d (delta_hd / width_hd)^2)`` at each of ``points`` (m, k).

    ``widths``: one per CV (k,) for all kernels, or one row per kernel (n, k). ``periods``: (k,),
    0 = not periodic; ``delta`` is then the shortest difference on the circle, as in the
    C++ force (``x - p floor(x/p + 1/2)``).
    """
    points = np.asarray(points, dtype=float)
    out = np.zeros(len(points))
    if len(heights) == 0:
        return out
    periodic = periods > 0
    p = np.where(periodic, periods, 1.0)
    widths = np.asarray(widths, dtype=float)
    chunk = max(1, 2_000_000 // max(1, len(heights) * points.shape[1]))
    for start in range(0, len(points), chunk):
        d = points[start:start + chunk, None, :] - centers[None, :, :]
        if periodic.any():
            d = np.where(periodic, d - p * np.floor(d / p + 0.5), d)
        exponent = ((d / widths) ** 2).sum(-1)
        out[start:start + chunk] = (heights * np.exp(-0.5 * exponent)).sum(-1)
    return out


class BiasedCVs:
    """The biased CVs' read-out, for a class with ``force`` (a TorchCVForce), ``_biased`` (the
    biased CVs' indices in the module) and ``_biased_names``."""

    def current_values(self, context: openmm.Context) -> np.ndarray:
        """Values of the biased CVs at the Context's positions, in bias order (OpenMM units)."""
        values = self.force.getCollectiveVariableValues(context)
        return np.array([values[i] for i in self._biased])

    def getCollectiveVariables(self, simulation) -> tuple:
        """The current values of the biased CVs in a Simulation, as ``app.Metadynamics``.

        Parameters
        ----------
        simulation : openmm.app.Simulation (or anything with a ``context``) or a Context

        Returns
        -------
        tuple of float
            One value per biased CV, in their order, in OpenMM units (rad, nm ...).
        """
        context = simulation if isinstance(simulation, openmm.Context) else simulation.context
        return tuple(float(v) for v in self.current_values(context))

    def _as_points(self, points) -> np.ndarray:
        points = np.asarray(points, dtype=float)
        if points.ndim == 1:
            points = points[None, :]
        k = len(self._biased)
        if points.ndim != 2 or points.shape[1] != k:
            raise ValueError(f"points must have {k} values each (one per biased CV: "
                             f"{list(self._biased_names)}), got shape {points.shape}")
        return points


class BiasLog:
    """A CSV time series with a header, appended to by row; a resumed run cuts it back to the
    saved step so that no row is duplicated or missing."""

    def __init__(self, path: Union[str, os.PathLike, None], columns: Callable[[], list], what: str):
        self.path: Optional[Path] = Path(path) if path is not None else None
        self._columns = columns
        self._what = what
        self.header_written = False
        self.last_logged_step = -1

    def redirect(self, path: Union[str, os.PathLike, None]) -> None:
        """Log to ``path`` from now on (a new file gets a header)."""
        if path is not None and (self.path is None or Path(path) != self.path):
            self.path = Path(path)
            self.header_written = False

    def due(self, step: int, interval: int) -> bool:
        return self.path is not None and step % interval == 0 and step > self.last_logged_step

    def open(self):
        path = self.path
        if not self.header_written:
            if self.last_logged_step >= 0 and path.exists() and path.stat().st_size > 0:
                self.header_written = True  # resumed: rows up to the saved step are kept
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(",".join(self._columns()) + "\n")
                self.header_written = True
        return open(path, "a")

    def write(self, handle, step: int, fields: list) -> None:
        handle.write(",".join(fields) + "\n")
        handle.flush()
        self.last_logged_step = step

    def truncate(self, last_step: int) -> None:
        """Keep the header and the rows up to ``last_step`` (a resumed run re-creates the rest)."""
        path = self.path
        if path is None or not path.exists():
            self.last_logged_step = -1
            self.header_written = False
            return
        lines = path.read_text().splitlines(keepends=True)
        columns = self._columns()
        if not lines or lines[0].rstrip("\n").split(",") != columns:
            raise ValueError(f"{path} is not this {self._what}'s log (expected the columns "
                             f"{columns})")
        kept, last = [lines[0]], -1
        for line in lines[1:]:
            try:
                step = int(line.split(",", 1)[0])
            except ValueError:
                break  # a half-written last row
            if step > last_step or not line.endswith("\n"):
                break
            kept.append(line)
            last = step
        atomic_write_bytes(path, "".join(kept).encode())
        self.last_logged_step = last
        self.header_written = True
