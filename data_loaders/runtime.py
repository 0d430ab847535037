"""Process-wide runtime settings: how many CPU threads torch and Numba may use.

On a small shared machine torch's default (one intra-op thread per core) oversubscribes the CPU as soon as
anything else runs: a 2-core box under load ran small models 10-40x slower than with one thread. The default
here takes the cores that are actually free (cores available to this process minus the 1-minute load average,
rounded), at least 1. torch and Numba kernels run one after another in advsim, never at the same time, so both
get the same count.
"""

from __future__ import annotations

import os


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS reports it)."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except (AttributeError, OSError):
        return max(os.cpu_count() or 1, 1)


def free_cores() -> int:
    """Cores not busy right now: available cores minus the 1-minute load average (rounded), at least 1."""
    cores = available_cores()
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        load = 0.0
    return max(1, min(cores, cores - int(round(load))))


def choose_threads(requested: int = 0) -> int:
    """``requested`` when positive (capped at the available cores), else :func:`free_cores`."""
    if requested < 0:
        raise ValueError(f"--threads must be >= 0 (0 = automatic), got {requested}")
    return min(requested, available_cores()) if requested > 0 else free_cores()


def set_threads(requested: int = 0) -> int:
    """Set torch intra-op and Numba threads to :func:`choose_threads` (``requested``); returns the count used."""
    n = choose_threads(requested)
    # Numba first: its first set_num_threads launches its thread pool, which (OpenMP layer, one libgomp shared
    # with torch) resets the OpenMP thread count that torch reads; setting torch afterwards makes torch's count
    # stick (measured: the other order left torch at the core count).
    try:
        import numba

        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    except (ImportError, ValueError):
        pass
    import torch

    torch.set_num_threads(n)
    return n
