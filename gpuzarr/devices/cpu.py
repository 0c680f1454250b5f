"""The CPU device: a persistent thread pool over numcodecs (which releases the GIL). Each task
decodes a group of chunks into its own cache-sized scratch buffer and places them straight into
disjoint output windows, so no locks and no whole-batch decoded copy are needed."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from ..codecs.chain import CodecChain, decode_chunk
from ..errors import CorruptDataError
from ..fetch import FetchedBatch
from ..placement import decode_raw, place
from ..plan import Plan

GROUP_BYTES = 1 << 20  # decoded bytes per task: big enough to amortise, small enough for L2


class CpuDevice:
    name = "cpu"
    xp = np
    _shared: CpuDevice | None = None
    _shared_lock = threading.Lock()

    def __init__(self, threads: int | None = None):
        self.threads = threads or os.cpu_count() or 1
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="gpuzarr-cpu")
        self._scratch = threading.local()

    @classmethod
    def shared(cls) -> CpuDevice:
        with cls._shared_lock:
            if cls._shared is None:
                cls._shared = cls()
            return cls._shared

    def empty(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        return np.empty(shape, dtype=dtype)

    def check_output(self, out: Any, shape: tuple[int, ...], dtype: Any) -> None:
        if not isinstance(out, np.ndarray):
            raise TypeError(f"out must be a numpy.ndarray on the CPU device, not {type(out).__name__}")
        if out.shape != shape or out.dtype != dtype:
            raise ValueError(f"out has shape {out.shape} and dtype {out.dtype}; the read needs {shape} {dtype}")

    def decode_and_place(self, batch: FetchedBatch, chain: CodecChain, out: Any, plan: Plan,
                         first: int, fill: Any) -> None:
        per_group = max(1, GROUP_BYTES // max(1, chain.raw_nbytes or GROUP_BYTES))
        per_group = min(per_group, max(1, -(-batch.n // self.threads)))
        bounds = [(lo, min(lo + per_group, batch.n)) for lo in range(0, batch.n, per_group)]
        if len(bounds) == 1 or self.threads == 1:
            for lo, hi in bounds:
                self._group(batch, chain, out, plan, first, fill, lo, hi)
            return
        futures = [self._pool.submit(self._group, batch, chain, out, plan, first, fill, lo, hi)
                   for lo, hi in bounds]
        for future in futures:
            future.result()

    def _group(self, batch: FetchedBatch, chain: CodecChain, out: Any, plan: Plan, first: int,
               fill: Any, lo: int, hi: int) -> None:
        raw_nbytes = chain.raw_nbytes
        if raw_nbytes is None:  # variable-length items or sharding wrapped in other codecs
            decoded = [decode_chunk(chain, batch.chunk(i), fill, batch.labels[i]) if batch.present[i] else None
                       for i in range(lo, hi)]
        else:
            raw = self._scratch_for((hi - lo) * raw_nbytes).reshape(hi - lo, raw_nbytes)
            for i in range(lo, hi):
                if batch.present[i]:
                    decode_bytes_into(chain, batch.chunk(i), raw[i - lo], batch.labels[i])
            decoded = decode_raw(np, raw, chain)
        place(out, decoded, plan, first + lo, first + hi, batch.present[lo:hi], fill)

    def _scratch_for(self, nbytes: int) -> np.ndarray:
        buf = getattr(self._scratch, "buf", None)
        if buf is None or buf.size < nbytes:
            buf = np.empty(nbytes, dtype=np.uint8)
            self._scratch.buf = buf
        return buf[:nbytes]


def decode_bytes_into(chain: CodecChain, data: Any, slot: np.ndarray, label: str) -> None:
    """Run the bytes→bytes codecs backwards; the last one writes into `slot`, exactly filling it."""
    codecs = chain.bytes_to_bytes
    try:
        for codec in reversed(codecs[1:]):
            data = codec.decode(data)
        if codecs:
            codecs[0].decode_into(data, slot)
        elif len(data) != slot.nbytes:
            raise CorruptDataError(f"chunk is {len(data)} bytes, expected {slot.nbytes}")
        else:
            slot[:] = np.frombuffer(data, dtype=np.uint8)
    except CorruptDataError as exc:
        raise CorruptDataError(f"{label}: {exc}") from None
