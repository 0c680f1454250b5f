"""How many threads a process should keep busy: shared by the CPU device's decoding pool and
the local store's parallel reads, so both follow $GPUZARR_THREADS, the CPU affinity and a
DataLoader worker's share of the cores."""

from __future__ import annotations

import os
import sys

from .errors import SettingsError

THREADS_ENV = "GPUZARR_THREADS"
# Threads a process takes by default at most. Measured on 16 cores (an H200 host, 2026-12-04,
# `python -m bench --scaling`-style: full reads and 64 patches of the 2-D and 3-D sets): 8
# threads were faster than 16 in all four, by 1.07x to 1.8x (3-D full 208 against 257 ms, 3-D
# patches 107 against 191 ms), while tensorstore still gained from 8 to 16: the reads' Python
# held the GIL about half the time there (py-spy), ~4 GIL round trips a chunk. Parts now run in
# one call of the host library (cpu._PartReads), which has not been measured on many cores yet:
# the cap stays until it is. More by Settings(threads=...) or $GPUZARR_THREADS.
MAX_DEFAULT_THREADS = 8


def default_threads() -> int:
    """Threads of a CPU device made without a count: $GPUZARR_THREADS, else the cores this
    process may run on (its CPU affinity, not the machine's count), divided among the workers
    when this is a PyTorch DataLoader worker, so N workers do not oversubscribe the cores N-fold,
    and at most MAX_DEFAULT_THREADS."""
    env = os.environ.get(THREADS_ENV, "").strip()
    if env:
        try:
            n = int(env)
        except ValueError:
            n = 0
        if n < 1:
            raise SettingsError(f"{THREADS_ENV}={env!r}: expected a positive integer")
        return n
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(MAX_DEFAULT_THREADS, cores // _loader_workers()))


def _loader_workers() -> int:
    """Number of sibling workers when this process is a torch DataLoader worker, else 1
    (torch is looked up, never imported: a worker has imported it already)."""
    data = sys.modules.get("torch.utils.data")
    info = data.get_worker_info() if data is not None and hasattr(data, "get_worker_info") else None
    return max(1, getattr(info, "num_workers", 1) or 1)
