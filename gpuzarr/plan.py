"""Which chunks a read touches and where each lands in the output, as NumPy tables (one row per
chunk, not one Python object per chunk), so planning 100,000 chunks costs milliseconds.

A read is a set of windows (one for `arr[sel]`, many for `read_batch`). Per window and dimension
the selected indices split into runs, one per chunk; the cartesian product of runs gives
placements. Chunks shared by several windows are fetched and decoded once."""

from __future__ import annotations

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

    def selections(self, p: int) -> tuple[tuple, tuple]:
        """(selection inside the decoded chunk, selection in the output) of placement p."""
        chunk_sel, out_sel = [], [int(self.place_window[p])] if self.batched else []
        for d, runs in enumerate(self.dims):
            r = self.place_runs[p, d]
            start, step, count = int(runs.local_start[r]), int(runs.step[r]), int(runs.count[r])
            if runs.drop:
                chunk_sel.append(start)
                continue
            stop = start + step * count
            chunk_sel.append(slice(start, stop if stop >= 0 else None, step))
            out = int(runs.out_start[r])
            out_sel.append(slice(out, out + count))
        return tuple(chunk_sel), tuple(out_sel)

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
    if sel.count == 0:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty, empty, empty
    idx = sel.start + sel.step * np.arange(sel.count, dtype=np.int64)
    cidx = idx // chunk
    starts = np.concatenate(([0], np.flatnonzero(np.diff(cidx)) + 1))
    counts = np.diff(np.append(starts, sel.count))
    return cidx[starts], idx[starts] - cidx[starts] * chunk, counts, starts


def make_plan(windows: list[list[DimSelection]], chunk_shape: Shape, batched: bool) -> Plan:
    ndim = len(chunk_shape)
    if batched and len({tuple(d.drop for d in w) for w in windows}) > 1:
        raise IndexError("read_batch windows must index the same dimensions with integers")
    tables: list[list[tuple[np.ndarray, ...]]] = [[] for _ in range(ndim)]
    steps: list[list[np.ndarray]] = [[] for _ in range(ndim)]
    place_runs, place_window = [], []
    offsets = [0] * ndim
    for w, window in enumerate(windows):
        per_dim = []
        for d, sel in enumerate(window):
            runs = _dim_runs(sel, chunk_shape[d])
            tables[d].append(runs)
            steps[d].append(np.full(runs[0].size, sel.step, dtype=np.int64))
            per_dim.append(np.arange(runs[0].size, dtype=np.int64) + offsets[d])
            offsets[d] += runs[0].size
        grids = np.meshgrid(*per_dim, indexing="ij") if ndim else []
        rows = np.stack([g.reshape(-1) for g in grids], axis=1) if ndim else np.zeros((1, 0), dtype=np.int64)
        place_runs.append(rows)
        place_window.append(np.full(rows.shape[0], w, dtype=np.int64))
    dims = tuple(
        DimRuns(*(np.concatenate([t[i] for t in tables[d]]) for i in range(4)),
                step=np.concatenate(steps[d]), drop=windows[0][d].drop)
        for d in range(ndim)
    )
    runs = np.concatenate(place_runs) if place_runs else np.zeros((0, ndim), dtype=np.int64)
    window = np.concatenate(place_window) if place_window else np.zeros(0, dtype=np.int64)
    coords = np.stack([dims[d].chunk[runs[:, d]] for d in range(ndim)], axis=1) if ndim else np.zeros(
        (runs.shape[0], 0), dtype=np.int64)
    if len(windows) > 1:
        chunks, inverse = np.unique(coords, axis=0, return_inverse=True)
        inverse = inverse.reshape(-1)
    else:
        chunks, inverse = coords, np.arange(coords.shape[0], dtype=np.int64)
    by = np.argsort(inverse, kind="stable")
    return Plan(chunks, inverse[by], runs[by], window[by], dims, batched)
