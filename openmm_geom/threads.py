"""One place that sets CPU threads for torch (and so vesin and our ops) and OpenMM's CPU platform,
and how the process's freed memory is kept (:func:`retain_freed_memory`) or given back
(:func:`release_freed_memory`).

On CPU, oversubscription costs more than anything else: torch's intra-op pool and OpenMM's
CPU platform each default to all cores, and running them side by side on 2 cores was measured
at 5 steps/s instead of 75-105 (blueprint section 4). vesin's pair search and our native ops
use torch's intra-op thread count.
"""
import ctypes
import ctypes.util
import os

import torch

__all__ = ["set_threads", "cpu_platform_properties", "default_threads", "retain_freed_memory",
           "release_freed_memory", "memory_status_bytes"]

_M_TRIM_THRESHOLD = -1  # glibc mallopt parameters (malloc.h)
_M_MMAP_MAX = -4


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


def _libc_function(name: str):
    """A glibc function by name, or None where the C library has no such function."""
    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), name)
    except (OSError, AttributeError):
        return None


def retain_freed_memory() -> bool:
    """Keep the memory torch frees for the next call instead of returning it to the kernel.

    An ML potential's energy+force call allocates and frees large per-edge tensors (at 3,000
    atoms of water, gigabytes per call). With glibc's defaults, blocks above a threshold are
    mapped and unmapped on every call and the heap top is trimmed, so each call faults its
    pages in again: 20-60% of the CPU time went to the kernel (docs/benchmarks.md).
    This sets glibc malloc to serve large blocks from the heap (``M_MMAP_MAX = 0``) and never
    to trim it (``M_TRIM_THRESHOLD`` unlimited), so later calls reuse the pages of earlier
    ones. The resident memory then stays at its peak until the process ends, which suits a
    simulation process. Process-wide and not undone; the ``openmm-geom potential`` commands
    call it.

    Returns
    -------
    bool
        True if glibc accepted both settings; False (nothing changed) without glibc.
    """
    mallopt = _libc_function("mallopt")
    if mallopt is None:  # not glibc (musl, macOS): nothing to set
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # -1 as the threshold is SIZE_MAX once glibc converts it: trimming never happens
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, -1))


def release_freed_memory() -> bool:
    """Give the memory freed so far back to the kernel (glibc ``malloc_trim(0)``).

    For a process that keeps freed memory (:func:`retain_freed_memory`) and is done with its
    heavy phase, e.g. before it starts child processes that need the memory.

    Returns
    -------
    bool
        True if glibc released something; False otherwise (or without glibc).
    """
    trim = _libc_function("malloc_trim")
    if trim is None:
        return False
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return bool(trim(0))


def memory_status_bytes(field: str = "VmHWM") -> int | None:
    """A memory field of this process from ``/proc/self/status`` in bytes (Linux), or None.

    ``VmHWM`` (default) is the peak resident memory, ``VmRSS`` the current one. For peaks,
    prefer this to ``getrusage``: Linux carries ``ru_maxrss`` over from a parent into a
    spawned child.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None
