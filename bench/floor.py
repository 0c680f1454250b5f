"""The libzstd floor: the time to decompress, on every core, exactly the inner-chunk frames a
workload needs, with the compressed bytes already in memory (parsed out of the shards
beforehand, see datasets.Frames) and nothing else: no planning, no I/O, no placement, no output
assembly. A perfect reader approaches it; efficiency = floor / reader time.

Two bindings of the same libzstd are timed, alternating with the readers like a reader:
  numcodecs  numcodecs.Zstd().decode(frame, out=preallocated slice), the binding the brief names
  libzstd    python-zstandard, one ZstdDecompressor per thread, decompress(frame) -> bytes
Both spread the frames of an op over a thread pool of one thread per core, in contiguous runs
balanced by compressed size (one frame: decoded inline, no pool). On these machines numcodecs'
binding is ~2x slower per frame and does not scale over threads (it sets up a decompression
context per call), so the tighter of the two is the floor used for efficiency; both are kept.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np

from .datasets import Frames
from .workloads import Workload, floor_ops

VARIANTS = ("numcodecs", "libzstd")


def threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


class Floor:
    def __init__(self, frames: Frames):
        self.frames = frames
        self.n_threads = threads()
        self.pool = ThreadPoolExecutor(self.n_threads, thread_name_prefix="bench-floor")
        self._local = threading.local()

    def close(self) -> None:
        self.pool.shutdown()

    def _decoder(self, variant: str) -> Callable[[bytes, np.ndarray], None]:
        if variant == "numcodecs":
            import numcodecs

            codec = numcodecs.Zstd()

            def decode(frame: bytes, dest: np.ndarray) -> None:
                codec.decode(frame, out=dest)

            return decode
        import zstandard

        local = self._local

        def decode(frame: bytes, dest: np.ndarray) -> None:
            dctx = getattr(local, "dctx", None)
            if dctx is None:
                dctx = local.dctx = zstandard.ZstdDecompressor()
            dctx.decompress(frame)

        return decode

    def timer(self, wl: Workload, variant: str) -> Callable[[], list[float]]:
        """A function timing one pass of the workload's floor (samples as the readers': per
        window for `window`, one per pass otherwise). Everything is prepared here, untimed,
        and every frame is decoded once to check its size."""
        ops = floor_ops(wl)
        missing = sum(1 for op in ops for c in op if c not in self.frames.frames)
        if missing:
            raise RuntimeError(f"{missing} chunk(s) the workload reads have no frame (empty chunks?)")
        nbytes = self.frames.chunk_nbytes
        width = max(len(op) for op in ops)
        dest = np.empty((width, nbytes), np.uint8)
        decode = self._decoder(variant)
        prepared = []
        for op in ops:
            fr = [self.frames.frames[c] for c in op]
            prepared.append((fr, self._split(fr)))
        import zstandard

        check = zstandard.ZstdDecompressor()
        for fr, _ in prepared:
            for f in fr:
                if len(check.decompress(f)) != nbytes:
                    raise RuntimeError("a frame does not decode to the inner chunk size")
        pool = self.pool

        def run_op(fr: list[bytes], parts: list[tuple[int, int]]) -> None:
            if len(parts) == 1:
                for i in range(len(fr)):
                    decode(fr[i], dest[i])
                return

            def part(lo: int, hi: int) -> None:
                for i in range(lo, hi):
                    decode(fr[i], dest[i])

            for fut in [pool.submit(part, lo, hi) for lo, hi in parts]:
                fut.result()

        if wl.timed_per_item:
            def timed() -> list[float]:
                out = []
                for fr, parts in prepared:
                    t0 = time.perf_counter()
                    run_op(fr, parts)
                    out.append(time.perf_counter() - t0)
                return out
        else:
            def timed() -> list[float]:
                t0 = time.perf_counter()
                for fr, parts in prepared:
                    run_op(fr, parts)
                return [time.perf_counter() - t0]
        timed()  # warm-up (threads started, buffers touched)
        return timed

    def _split(self, fr: list[bytes]) -> list[tuple[int, int]]:
        n = min(self.n_threads, len(fr))
        if n <= 1:
            return [(0, len(fr))]
        sizes = np.cumsum([len(f) for f in fr])
        cuts = [0] + [int(np.searchsorted(sizes, sizes[-1] * k / n)) + 1 for k in range(1, n)] + [len(fr)]
        cuts = sorted(set(min(max(c, 0), len(fr)) for c in cuts))
        return [(a, b) for a, b in zip(cuts, cuts[1:]) if b > a]
