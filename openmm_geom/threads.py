"""One place that sets CPU threads for torch (and so vesin and our ops) and OpenMM's CPU platform.

On CPU, oversubscription costs more than anything else: torch's intra-op pool and OpenMM's
CPU platform each default to all cores, and running them side by side on 2 cores was measured
at 5 steps/s instead of 75-105 (blueprint section 4). vesin's pair search and our native ops
use torch's intra-op thread count.
"""
import os

import torch

__all__ = ["set_threads", "cpu_platform_properties", "default_threads"]


def default_threads() -> int:
    """``$OPENMM_GEOM_THREADS`` if set, else the number of usable cores."""
    value = os.environ.get("OPENMM_GEOM_THREADS")
    if value:
        n = int(value)
        if n < 1:
            raise ValueError(f"OPENMM_GEOM_THREADS must be >= 1, got {value}")
        return n
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def set_threads(n: int | None = None) -> int:
    """Use ``n`` CPU threads in torch and as the default of OpenMM's CPU platform.

    Returns the number set. ``None`` means :func:`default_threads`. Contexts created afterwards
    on the CPU platform use ``n`` threads unless given a ``Threads`` property.
    """
    import openmm

    n = default_threads() if n is None else int(n)
    if n < 1:
        raise ValueError(f"threads must be >= 1, got {n}")
    torch.set_num_threads(n)
    try:
        openmm.Platform.getPlatformByName("CPU").setPropertyDefaultValue("Threads", str(n))
    except Exception:  # no CPU platform in this OpenMM build: nothing to configure
        pass
    return n


def cpu_platform_properties(n: int | None = None) -> dict:
    """Platform properties for OpenMM's CPU platform with ``n`` threads."""
    return {"Threads": str(default_threads() if n is None else int(n))}
