"""Which chunks a read touches and where each lands in the output, as NumPy tables (one row per
chunk, not one Python object per chunk), so planning 100,000 chunks costs milliseconds.

A read is a set of windows (one for `arr[sel]`, many for `read_batch`). Per window and dimension
the selected indices split into runs, one per chunk; the cartesian product of runs gives
placements. Chunks shared by several windows are fetched and decoded once."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .selection import DimSelection

Shape = tuple[int, ...]


@dataclass(frozen=True)
class DimRuns:
    """Runs of one dimension, all windows concatenated: each run lies in one chunk."""

    chunk: np.ndarray  # chunk index along the dimension
    local_start: np.ndarray  # first selected element inside that chunk
    count: np.ndarray  # selected elements in the run
    out_start: np.ndarray  # where the run starts along the output dimension
    step: np.ndarray  # step of the window the run belongs to
    drop: bool


@dataclass(frozen=True)
class Plan:
    chunks: np.ndarray  # (M, ndim) unique chunk grid coordinates
    place_chunk: np.ndarray  # (P,) row of `chunks` each placement reads, sorted ascending
    place_runs: np.ndarray  # (P, ndim) row of each dimension's DimRuns
    place_window: np.ndarray  # (P,) window each placement writes (read_batch axis 0)
    dims: tuple[DimRuns, ...]
    batched: bool  # True for read_batch: outputs carry a leading window axis

    @property
    def n_chunks(self) -> int:
        return self.chunks.shape[0]

    def selections(self, first: int, stop: int) -> list[tuple[int, tuple, tuple]]:
        """(chunk row, selection inside the decoded chunk, selection in the output) of every
        placement of chunks first..stop-1, built from whole columns at once."""
        span = self.placements_of(first, stop)
        rows = self.place_runs[span]
        per_dim = []
        for d, runs in enumerate(self.dims):
            r = rows[:, d]
            start, step, count = runs.local_start[r], runs.step[r], runs.count[r]
            if runs.drop:
                per_dim.append((start.tolist(), None))
                continue
            stop_ = start + step * count
            chunk = [slice(a, b if b >= 0 else None, c) for a, b, c in zip(start.tolist(), stop_.tolist(),
                                                                          step.tolist())]
            out0 = runs.out_start[r]
            out = [slice(a, b) for a, b in zip(out0.tolist(), (out0 + count).tolist())]
            per_dim.append((chunk, out))
        chunk_sels = list(zip(*(c for c, _ in per_dim))) if per_dim else [()] * rows.shape[0]
        out_parts = [o for _, o in per_dim if o is not None]
        if self.batched:
            out_parts.insert(0, self.place_window[span].tolist())
        out_sels = list(zip(*out_parts)) if out_parts else [()] * rows.shape[0]
        return list(zip(self.place_chunk[span].tolist(), chunk_sels, out_sels))

    def reorder(self, order: np.ndarray) -> Plan:
        """Renumber chunks so that row i of the result is row order[i] now (e.g. storage order)."""
        rank = np.empty_like(order)
        rank[order] = np.arange(order.size)
        new_chunk = rank[self.place_chunk]
        by = np.argsort(new_chunk, kind="stable")
        return Plan(self.chunks[order], new_chunk[by], self.place_runs[by], self.place_window[by],
                    self.dims, self.batched)

    def placements_of(self, first: int, stop: int) -> slice:
        """Placements reading chunks first..stop-1 (they are contiguous: place_chunk is sorted)."""
        a, b = np.searchsorted(self.place_chunk, [first, stop])
        return slice(int(a), int(b))


def _dim_runs(sel: DimSelection, chunk: int) -> tuple[np.ndarray, ...]:
    """(chunk index, first element inside the chunk, element count, output start) per run, in
    output order. The cost follows the smaller of the chunks spanned and the elements selected:
    a read of 10^9 elements costs what its chunks cost, a step of 2^38 what its elements cost."""
    if sel.count == 0:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty, empty, empty
    first_k, last_k = sel.start // chunk, (sel.start + sel.step * (sel.count - 1)) // chunk
    if abs(last_k - first_k) < 32:
        return _dim_runs_small(sel, chunk)
    start, step, n = sel.start, sel.step, sel.count
    if n <= abs(last_k - first_k):  # steps longer than a chunk: no more runs than elements
        idx = start + step * np.arange(n, dtype=np.int64)
        k = idx // chunk
        firsts = np.concatenate(([0], np.flatnonzero(np.diff(k)) + 1))
        return k[firsts], idx[firsts] - k[firsts] * chunk, np.diff(np.append(firsts, n)), firsts
    k = np.arange(first_k, last_k + (1 if step > 0 else -1), 1 if step > 0 else -1, dtype=np.int64)
    if step > 0:  # j: position in the selection; chunk k holds j in [j_first, j_last]
        j_first = np.maximum(0, -((start - k * chunk) // step))
        j_last = np.minimum(n - 1, ((k + 1) * chunk - 1 - start) // step)
    else:
        j_first = np.maximum(0, -(((k + 1) * chunk - 1 - start) // -step))
        j_last = np.minimum(n - 1, (start - k * chunk) // -step)
    hit = j_first <= j_last  # steps longer than a chunk skip chunks
    k, j_first, j_last = k[hit], j_first[hit], j_last[hit]
    return k, start + step * j_first - k * chunk, j_last - j_first + 1, j_first


def _dim_runs_small(sel: DimSelection, chunk: int) -> tuple[np.ndarray, ...]:
    """The same runs with Python integers: cheaper than array calls for a handful of chunks."""
    start, step, n = sel.start, sel.step, sel.count
    rows, j = [], 0
    while j < n:
        index = start + step * j
        k = index // chunk
        last = (((k + 1) * chunk - 1 - start) // step) if step > 0 else ((start - k * chunk) // -step)
        last = min(n - 1, last)
        rows.append((k, index - k * chunk, last - j + 1, j))
        j = last + 1
    table = np.array(rows, dtype=np.int64)
    return table[:, 0], table[:, 1], table[:, 2], table[:, 3]


def _product(sizes: list[int]) -> np.ndarray:
    """All index combinations of ranges of `sizes`, C order, as a (prod, len(sizes)) array."""
    total = math.prod(sizes)
    flat = np.arange(total, dtype=np.int64)
    rows = np.empty((total, len(sizes)), dtype=np.int64)
    stride = total
    for d, n in enumerate(sizes):
        stride //= max(n, 1)
        rows[:, d] = (flat // max(stride, 1)) % max(n, 1) if n else 0
    return rows


def _tables_each(windows: list[list[DimSelection]], chunk_shape: Shape) -> tuple[list, np.ndarray, np.ndarray]:
    """Run tables (chunk, local start, count, output start, step per dimension), placement rows
    and placement windows, window by window."""
    ndim = len(chunk_shape)
    runs = [[_dim_runs(sel, c) for sel, c in zip(window, chunk_shape)] for window in windows]
    place_runs, place_window = [], []
    offsets = np.zeros(ndim, dtype=np.int64)
    for w, per_dim in enumerate(runs):
        sizes = [r[0].size for r in per_dim]
        rows = _product(sizes) + offsets
        offsets += np.asarray(sizes, dtype=np.int64)
        place_runs.append(rows)
        place_window.append(np.full(rows.shape[0], w, dtype=np.int64))
    if len(windows) == 1:
        tables = [[*runs[0][d], np.full(runs[0][d][0].size, windows[0][d].step, dtype=np.int64)]
                  for d in range(ndim)]
        return tables, place_runs[0], place_window[0]
    tables = [[np.concatenate([r[d][i] for r in runs]) for i in range(4)]
              + [np.concatenate([np.full(r[d][0].size, win[d].step, dtype=np.int64)
                                 for r, win in zip(runs, windows)])] for d in range(ndim)]
    return tables, np.concatenate(place_runs), np.concatenate(place_window)


def _tables_step1(windows: list[list[DimSelection]], chunk_shape: Shape) -> tuple[list, np.ndarray, np.ndarray]:
    """The same tables for many windows of step 1, as whole-array operations over windows and
    runs (no Python loop per window)."""
    n_windows = len(windows)
    tables, n_runs, first_run = [], [], []
    for d, c in enumerate(chunk_shape):
        starts = np.array([w[d].start for w in windows], dtype=np.int64)
        counts = np.array([w[d].count for w in windows], dtype=np.int64)
        stops = starts + counts
        first = starts // c
        n = np.where(counts > 0, (stops - 1) // c - first + 1, 0)
        offs = np.cumsum(n) - n
        win = np.repeat(np.arange(n_windows), n)
        k = first[win] + np.arange(int(n.sum()), dtype=np.int64) - offs[win]
        lo, hi = np.maximum(k * c, starts[win]), np.minimum((k + 1) * c, stops[win])
        tables.append([k, lo - k * c, hi - lo, lo - starts[win], np.ones(k.size, dtype=np.int64)])
        n_runs.append(n)
        first_run.append(offs)
    per_window = np.prod(n_runs, axis=0) if n_runs else np.ones(n_windows, dtype=np.int64)
    window = np.repeat(np.arange(n_windows), per_window)
    flat = np.arange(window.size, dtype=np.int64) - (np.cumsum(per_window) - per_window)[window]
    rows = np.empty((window.size, len(chunk_shape)), dtype=np.int64)
    for d in reversed(range(len(chunk_shape))):  # C order over each window's runs
        n = n_runs[d][window]
        rows[:, d] = first_run[d][window] + flat % n
        flat //= n
    return tables, rows, window


def make_plan(windows: list[list[DimSelection]], chunk_shape: Shape, batched: bool) -> Plan:
    ndim = len(chunk_shape)
    if batched and len({tuple(d.drop for d in w) for w in windows}) > 1:
        raise IndexError("read_batch windows must index the same dimensions with integers")
    if batched and len(windows) >= 8 and all(d.step == 1 for w in windows for d in w):
        tables, rows, window = _tables_step1(windows, chunk_shape)  # an ML loader's patches
    else:
        tables, rows, window = _tables_each(windows, chunk_shape)
    dims = tuple(DimRuns(*tables[d][:4], step=tables[d][4], drop=windows[0][d].drop) for d in range(ndim))
    coords = np.empty((rows.shape[0], ndim), dtype=np.int64)
    for d in range(ndim):
        coords[:, d] = dims[d].chunk[rows[:, d]]
    if len(windows) == 1:  # chunks of one window are distinct, in C order already
        return Plan(coords, np.arange(coords.shape[0], dtype=np.int64), rows, window, dims, batched)
    chunks, inverse = np.unique(coords, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    by = np.argsort(inverse, kind="stable")
    return Plan(chunks, inverse[by], rows[by], window[by], dims, batched)
