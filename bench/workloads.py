"""Workloads (what is read) and the runner (check first, then time, alternating readers).

  full    the whole array in one read
  window  unaligned windows (the dataset's window: 256x256 in 2-D, 64^3 in 3-D, one 256x256
          tile of one slice in the ML stack) at random offsets, read one at a time; each
          window is timed on its own and the figure is the median over windows x repeats
  batch   N random patches of the same shape: gpuzarr `read_batch` (one pass, stacked output)
          against each peer's best way to read the same patches one by one (tensorstore: every
          read issued, then every future awaited; zarr-python/zarrs: asyncio.gather)
  scan    every inner chunk, one aligned read at a time, in C order (zarr_benchmarks'
          "inner chunk by inner chunk", concurrency 1)

Protocol (shared/BENCHMARKS.md): a warm-up pass per reader that is also the correctness check
(per-item digests compared across readers, majority wins, a reader that disagrees is reported
as an error and never timed), then `repeats` rounds; each round runs every reader once, the
order rotated round by round; medians are reported, every sample is kept.
"""

from __future__ import annotations

import gc
import hashlib
import itertools
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .datasets import DatasetSpec

WORKLOADS = ("full", "window", "batch", "scan")


@dataclass
class Workload:
    name: str
    spec: DatasetSpec
    items: list[tuple]  # the selections
    item_nbytes: int  # decoded bytes of one item
    timed_per_item: bool  # window: one sample per item; else one sample per pass over all items
    unit: str  # what one reported time covers
    # window: every cache line of this buffer written before each window's timer starts (a
    # loader's work between reads: the CPU caches cold, the page cache warm); None: back to back
    evict: np.ndarray | None = None

    @property
    def op_nbytes(self) -> int:
        return self.item_nbytes * (1 if self.timed_per_item else len(self.items))

    def describe(self) -> str:
        return f"{self.name}: {len(self.items)} item(s) of {self.item_nbytes / 2**20:.2f} MiB, time per {self.unit}"


def _window_shape(spec: DatasetSpec) -> tuple[int, ...]:
    return tuple(1 if w is None else min(w, n) for w, n in zip(spec.window, spec.shape))


def _window_sel(spec: DatasetSpec, start: tuple[int, ...]) -> tuple:
    return tuple(int(s) if w is None else slice(int(s), int(s) + min(w, n))
                 for s, w, n in zip(start, spec.window, spec.shape))


def _random_starts(spec: DatasetSpec, rng: np.random.Generator, n: int, unaligned: bool) -> list[tuple[int, ...]]:
    shape = _window_shape(spec)
    out = []
    while len(out) < n:
        start = []
        for ext, size, c, w in zip(shape, spec.shape, spec.chunks, spec.window):
            hi = size - ext
            s = int(rng.integers(0, hi + 1))
            if unaligned and w is not None and hi >= c:
                while s % c == 0:
                    s = int(rng.integers(0, hi + 1))
            start.append(s)
        out.append(tuple(start))
    return out


def make_workload(name: str, spec: DatasetSpec, windows: int, patches: int, seed: int,
                  evict_mb: int = 0) -> Workload:
    """`evict_mb`: the window workload's caches made cold before each window (Workload.evict)."""
    itemsize = np.dtype(spec.dtype).itemsize
    rng = np.random.default_rng([seed, sorted(("full", "window", "batch", "scan")).index(name)])
    win_nbytes = int(np.prod([s for s, w in zip(_window_shape(spec), spec.window) if w is not None])) * itemsize
    if name == "full":
        return Workload(name, spec, [tuple(slice(0, n) for n in spec.shape)], spec.nbytes, False, "read")
    if name == "window":
        items = [_window_sel(spec, s) for s in _random_starts(spec, rng, windows, unaligned=True)]
        if evict_mb:
            return Workload(name, spec, items, win_nbytes, True, f"window, {evict_mb} MiB written before",
                            np.zeros(evict_mb << 20, np.uint8))
        return Workload(name, spec, items, win_nbytes, True, "window")
    if name == "batch":
        items = [_window_sel(spec, s) for s in _random_starts(spec, rng, patches, unaligned=False)]
        return Workload(name, spec, items, win_nbytes, False, f"{patches} patches")
    if name == "scan":
        items = [tuple(slice(i * c, min(n, (i + 1) * c)) for i, c, n in zip(idx, spec.chunks, spec.shape))
                 for idx in itertools.product(*(range(g) for g in spec.chunk_grid))]
        chunk_nbytes = int(np.prod(spec.chunks)) * itemsize
        return Workload(name, spec, items, chunk_nbytes, False, f"scan of {len(items)} chunks")
    raise ValueError(name)


def chunks_of(spec: DatasetSpec, sel: tuple) -> list[tuple[int, ...]]:
    """Inner-chunk grid coordinates a (step-1) selection touches, in C order."""
    ranges = []
    for s, c in zip(sel, spec.chunks):
        if isinstance(s, slice):
            ranges.append(range(s.start // c, (s.stop - 1) // c + 1))
        else:
            ranges.append(range(s // c, s // c + 1))
    return list(itertools.product(*ranges))


def floor_ops(wl: Workload) -> list[list[tuple[int, ...]]]:
    """Chunks a perfect reader decompresses per timed op (shared chunks once)."""
    if wl.timed_per_item:
        return [chunks_of(wl.spec, s) for s in wl.items]
    if wl.name == "scan":  # one chunk at a time: every chunk is its own call
        return [[c] for s in wl.items for c in chunks_of(wl.spec, s)]
    seen: dict = {}
    for s in wl.items:
        for c in chunks_of(wl.spec, s):
            seen.setdefault(c, None)
    return [list(seen)]


# --------------------------------------------------------------------------- runner


def digest(a: np.ndarray) -> str:
    a = np.ascontiguousarray(a)
    h = hashlib.blake2b(f"{a.dtype.str}{a.shape}".encode(), digest_size=16)
    h.update(memoryview(a).cast("B"))
    return h.hexdigest()


@dataclass
class Outcome:
    reader: str
    samples: list[float] = field(default_factory=list)  # seconds
    error: str | None = None
    digests: list[str] | None = None

    @property
    def median(self) -> float | None:
        return float(np.median(self.samples)) if self.samples and self.error is None else None


def _run_op(reader: Any, wl: Workload, timed: bool) -> tuple[list[float], list[str]]:
    """One pass of the workload. Returns (sample times, per-item digests when not timed: the
    check pass digests each result as it comes, outside its timer, so nothing piles up)."""
    times, results = [], []
    items = wl.items
    with reader.context():
        gc.collect()
        gc.disable()
        try:
            if wl.timed_per_item:
                for sel in items:
                    if wl.evict is not None:
                        wl.evict[::64] += 1
                    t0 = time.perf_counter()
                    r = reader.read(sel)
                    reader.sync(r)
                    times.append(time.perf_counter() - t0)
                    if not timed:
                        results.append(digest(reader.to_host(r)))
                    del r
            elif wl.name == "batch":
                t0 = time.perf_counter()
                r = reader.read_many(items)
                reader.sync(r)
                times.append(time.perf_counter() - t0)
                if not timed:
                    results = [digest(reader.to_host(x)) for x in r]
                del r
            elif timed:  # full, scan: one read per item, back to back
                t0 = time.perf_counter()
                for sel in items:
                    r = reader.read(sel)
                    reader.sync(r)
                    del r
                times.append(time.perf_counter() - t0)
            else:
                for sel in items:
                    r = reader.read(sel)
                    reader.sync(r)
                    results.append(digest(reader.to_host(r)))
                    del r
        finally:
            gc.enable()
    return times, results


def check(readers: list, wl: Workload, log: Callable[[str], None]) -> dict[str, Outcome]:
    """Warm-up pass of every reader, which is also the correctness check."""
    outcomes: dict[str, Outcome] = {}
    for reader in readers:
        out = Outcome(reader.name)
        outcomes[reader.name] = out
        if getattr(reader, "open_error", None):
            out.error = reader.open_error
            continue
        try:
            _, out.digests = _run_op(reader, wl, timed=False)
            if len(out.digests) != len(wl.items):
                out.error = f"returned {len(out.digests)} results for {len(wl.items)} selections"
        except Exception as exc:  # a reader that fails is reported, the others go on
            out.error = f"{type(exc).__name__}: {exc}"
    live = [o for o in outcomes.values() if o.error is None]
    if not live:
        return outcomes
    votes = Counter(tuple(o.digests) for o in live)
    ranked = votes.most_common()
    if len(ranked) > 1 and ranked[0][1] == ranked[1][1]:
        # a tie: zarr-python, the reference implementation, breaks it
        ref = outcomes.get("zarr-python")
        majority = tuple(ref.digests) if ref and ref.error is None else ranked[0][0]
    else:
        majority = ranked[0][0]
    agree = [o.reader for o in live if tuple(o.digests) == majority]
    for o in live:
        if tuple(o.digests) != majority:
            bad = [i for i, (a, b) in enumerate(zip(o.digests, majority)) if a != b]
            o.error = (f"MISMATCH: {len(bad)} of {len(wl.items)} results differ from {', '.join(agree)} "
                       f"(first: item {bad[0]}, selection {_fmt_sel(wl.items[bad[0]])})")
            o.error += _element_diff(readers, o.reader, agree[0], wl.items[bad[0]])
            log(f"  {wl.spec.name}/{wl.name}: {o.reader}: {o.error}")
    return outcomes


def _element_diff(readers: list, bad: str, good: str, sel: tuple) -> str:
    by = {r.name: r for r in readers}
    try:
        with by[bad].context():
            a = by[bad].to_host(by[bad].read(sel))
        with by[good].context():
            b = by[good].to_host(by[good].read(sel))
        if a.shape != b.shape or a.dtype != b.dtype:
            return f"; {bad} gives {a.shape} {a.dtype}, {good} {b.shape} {b.dtype}"
        diff = np.argwhere(a != b)
        if diff.size == 0:
            return "; the same selection read on its own agrees (the difference is in the batched/whole read)"
        first = tuple(int(v) for v in diff[0])
        return f"; {len(diff)} elements differ, first at {first}: {a[first]} vs {b[first]}"
    except Exception as exc:
        return f"; (could not re-read for detail: {exc})"


def _fmt_sel(sel: tuple) -> str:
    return "[" + ", ".join(f"{s.start}:{s.stop}" if isinstance(s, slice) else str(s) for s in sel) + "]"


def time_all(readers: list, wl: Workload, outcomes: dict[str, Outcome], repeats: int,
             extra: list | None = None) -> None:
    """`repeats` rounds; every reader (and every extra timer, e.g. the floors) once per round,
    in an order rotated each round."""
    runners: list[tuple[Outcome, Callable[[], list[float]]]] = []
    for r in readers:
        o = outcomes[r.name]
        if o.error is None:
            runners.append((o, lambda r=r: _run_op(r, wl, timed=True)[0]))
    for o, fn in extra or []:
        runners.append((o, fn))
    for k in range(repeats):
        shift = k % max(1, len(runners))
        for o, fn in runners[shift:] + runners[:shift]:
            if o.error is not None:
                continue
            try:
                o.samples.extend(fn())
            except Exception as exc:
                o.error = f"{type(exc).__name__} while timing: {exc}"
