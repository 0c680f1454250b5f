"""bench.workloads' window workload with cold caches (--evict-mb): the buffer is written before
each window's timer starts, never inside it."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.datasets import make_specs  # noqa: E402
from bench.readers import BenchReader  # noqa: E402
from bench.workloads import _run_op, make_workload  # noqa: E402

sys.path.remove(str(ROOT))


class _Recorder(BenchReader):
    """Records, at each read, how many times every cache line of the eviction buffer was written."""

    def __init__(self, evict: np.ndarray | None):
        self.evict, self.seen = evict, []

    def read(self, sel):
        self.seen.append(None if self.evict is None else (int(self.evict[::64].min()), int(self.evict[::64].max())))
        return np.zeros(1)


def test_windows_with_cold_caches_write_the_buffer_before_each_read():
    spec = make_specs(1024, 64)["2d"]
    cold = make_workload("window", spec, 5, 4, 0, evict_mb=1)
    assert cold.evict is not None and cold.evict.nbytes == 1 << 20 and "1 MiB written before" in cold.unit
    reader = _Recorder(cold.evict)
    times, _ = _run_op(reader, cold, timed=True)
    assert len(times) == 5
    assert reader.seen == [(k, k) for k in range(1, 6)]  # every line written once more before each read
    warm = make_workload("window", spec, 5, 4, 0)
    assert warm.evict is None and warm.unit == "window" and warm.items == cold.items
