"""How long a read of the GPU host half holds the GIL: what bounds it on a machine with many
cores, whatever their number (issue 10 asks for the GIL-held microseconds per chunk). With the
device calls no-ops, the host half's only calls that release the GIL for long are its reads
(os.preadv); everything else it does holds it, or is NumPy work that may release it. So the
process's CPU time over the read, less the time spent inside os.preadv, is an upper bound on the
time the GIL was held. (A thread spinning in Python beside the read measured the same thing
directly, but its rate alone varied by a third between runs on the shared 2-core machines.)"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable


def gil_seconds(op: Callable[[], object]) -> tuple[float, float]:
    """(CPU seconds of the process over `op`, the part of them outside os.preadv: at most the
    time `op` held the GIL)."""
    inside = [0.0]
    lock = threading.Lock()
    real = os.preadv

    def timed(*args: object) -> int:
        t0 = time.perf_counter()
        try:
            return real(*args)
        finally:
            spent = time.perf_counter() - t0
            with lock:
                inside[0] += spent

    os.preadv = timed
    try:
        c0 = time.process_time()
        op()
        cpu = time.process_time() - c0
    finally:
        os.preadv = real
    return cpu, max(0.0, cpu - inside[0])
