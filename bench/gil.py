"""How long a read of the GPU host half holds the GIL: what bounds it on a machine with many
cores, whatever their number (issue 10 asks for the GIL-held microseconds per chunk). With the
device calls no-ops, the host half's only calls that release the GIL for long are its reads
(os.preadv, and the host library's calls that open and read whole chunk files:
host_lib.FileBatch); everything else it does holds it, or is NumPy work that may release it. So
the process's CPU time over the read, less the time spent inside those reads, is an upper bound
on the time the GIL was held (counting FileBatch's reads as held put v2's chunk files at 27-29
us a chunk, 5-6.5 without). (A thread spinning in Python beside the read measured the same
thing directly, but its rate alone varied by a third between runs on the shared 2-core machines.)"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable


def gil_seconds(op: Callable[[], object]) -> tuple[float, float]:
    """(CPU seconds of the process over `op`, the part of them outside its reads: at most the
    time `op` held the GIL)."""
    from gpuzarr import host_lib

    inside = [0.0]
    lock = threading.Lock()
    reads = [(os, "preadv"), (host_lib.FileBatch, "__init__"), (host_lib.FileBatch, "read")]
    real = [getattr(owner, name) for owner, name in reads]

    def timed(call: Callable) -> Callable:
        def wrapper(*args: object, **kw: object) -> object:
            t0 = time.perf_counter()
            try:
                return call(*args, **kw)
            finally:
                spent = time.perf_counter() - t0
                with lock:
                    inside[0] += spent
        return wrapper

    for (owner, name), call in zip(reads, real):
        setattr(owner, name, timed(call))
    try:
        c0 = time.process_time()
        op()
        cpu = time.process_time() - c0
    finally:
        for (owner, name), call in zip(reads, real):
            setattr(owner, name, call)
    return cpu, max(0.0, cpu - inside[0])
