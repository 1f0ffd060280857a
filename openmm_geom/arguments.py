"""Argument checks shared across the package: a ValueError that names the argument."""
from __future__ import annotations

import math
import numbers
from typing import Optional

__all__ = ["count", "number", "openmm_seed", "SEED_ZERO_IN_OPENMM"]

_KINDS = {"positive": "finite positive", "non-negative": "finite non-negative", "any": "finite"}


def count(name: str, value, *, minimum: int = 1, maximum: Optional[int] = None) -> int:
    """``value`` as an integer in ``[minimum, maximum]`` (bools refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{name} must be {what}, got {value!r}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be at most {maximum}, got {value!r}")
    return int(value)


def number(name: str, value, *, sign: str = "positive") -> float:
    """``value`` as a finite float that is ``positive``, ``non-negative`` or ``any`` sign."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number, got {value!r}")
    x = float(value)
    if not math.isfinite(x) or (sign == "positive" and x <= 0) or (sign == "non-negative"
                                                                    and x < 0):
        raise ValueError(f"{name} must be a {_KINDS[sign]} number, got {value!r}")
    return x


#: What OpenMM is given for a seed of 0 (which OpenMM itself reads as "pick one at random").
SEED_ZERO_IN_OPENMM = 2**31 - 1


def openmm_seed(seed) -> int:
    """The seed to give OpenMM's integrators and ``setVelocitiesToTemperature`` for ``seed``.

    OpenMM treats 0 as "choose a random seed", so a run with ``--seed 0`` would not be
    reproducible; 0 becomes :data:`SEED_ZERO_IN_OPENMM` and every other seed (1 to 2^31 - 2)
    is passed as it is.
    """
    seed = count("seed", seed, minimum=0, maximum=2**31 - 2)
    return seed if seed != 0 else SEED_ZERO_IN_OPENMM
