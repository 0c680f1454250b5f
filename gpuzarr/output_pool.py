"""Large CPU outputs carved from blocks kept for reuse once every array over them is gone.

glibc serves a request over its mmap threshold (at most 32 MiB) from fresh pages, and returns
them to the kernel on free: each read of a large output pays a page fault per page it writes
first (128 MiB, a read_batch of 256 patches of 64^3 uint16: ~7 ms here), and on a VM whose
kernel reports free pages to its host (virtio-balloon free page reporting) the host must back
them again: 150-270 ms. A loader reading such batches in a loop gets the same block back (its
previous batch is gone by then), its pages already there. A block is free when nothing but the
pool refers to it (its reference count): every array over it, views of views included, refers
to it as its base."""

from __future__ import annotations

import math
import sys
from typing import Any

import numpy as np

from . import forksafe

POOLED_BYTES = 32 << 20  # smaller outputs come from glibc's heap, whose memory it reuses itself
POOLED_MAX = 256 << 20  # larger ones are NumPy's own: a one-off read of GiBs is not held on to
BLOCKS = 3  # blocks tracked at most: a loader's batch in hand, the one being read, one prefetched
# so once every output is gone the pool holds at most BLOCKS * POOLED_MAX bytes, until its next
# large read or clear()


def _free_count() -> int | None:
    """sys.getrefcount of a block the pool alone holds (the pool's list and the call's argument),
    as this interpreter counts; None where references are not counted so (a free-threaded
    build defers them)."""
    if not getattr(sys, "_is_gil_enabled", lambda: True)():
        return None
    held = [np.empty(1, np.uint8)]
    return sys.getrefcount(held[0])


class OutputPool:
    """np.empty for large outputs, from up to BLOCKS blocks reused once free."""

    def __init__(self) -> None:
        self._blocks: list[np.ndarray] = []
        self._lock = forksafe.Lock()
        self._free = _free_count()

    def empty(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        dtype = np.dtype(dtype)
        nbytes = math.prod(shape) * dtype.itemsize
        if not POOLED_BYTES <= nbytes <= POOLED_MAX or self._free is None or dtype.hasobject:
            return np.empty(shape, dtype)
        with self._lock:
            block = self._take(nbytes)
        return block[:nbytes].view(dtype).reshape(shape)

    def _take(self, nbytes: int) -> np.ndarray:
        """The smallest free block of at least `nbytes`; else a new one, tracked in place of a
        free block too small (or while fewer than BLOCKS are), untracked when all are in use."""
        blocks, free = self._blocks, self._free
        idle = [i for i in range(len(blocks)) if sys.getrefcount(blocks[i]) == free]
        fits = [i for i in idle if blocks[i].size >= nbytes]
        if fits:
            return blocks[min(fits, key=lambda i: blocks[i].size)]
        block = np.empty(nbytes, np.uint8)
        if idle:
            blocks[idle[0]] = block  # the one too small goes
        elif len(blocks) < BLOCKS:
            blocks.append(block)
        return block

    def clear(self) -> None:
        """Forget every block (those in use stay with their arrays)."""
        with self._lock:
            self._blocks.clear()


OUTPUTS = OutputPool()
