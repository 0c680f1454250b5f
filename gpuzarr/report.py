"""An optional per-read record of where the work and the time went, on either device."""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field


@dataclass
class ReadReport:
    """Pass one to `Array.read(..., report=r)` or `read_batch`; the read fills it in."""

    device: str = ""
    chunks: int = 0  # distinct chunks the read touched
    chunks_absent: int = 0  # of those, read as the fill value (missing chunk/shard, empty inner chunk)
    placements: int = 0  # chunk windows copied into the output
    batches: int = 0
    bytes_compressed: int = 0  # fetched from the store (coalescing gaps included)
    bytes_decoded: int = 0
    codec_calls: Counter = field(default_factory=Counter)  # e.g. {"nvcomp:zstd": 1, "cpu:zstd": 9}
    kernel_launches: int = 0
    cpu_fallback: list = field(default_factory=list)  # chunks the GPU device decoded on the host
    notes: list = field(default_factory=list)
    missing_keys: list = field(default_factory=list)  # chunk or shard objects found absent (read as fill)
    seconds: Counter = field(default_factory=Counter)  # plan, locate, fetch (waited for), decode, finish
    # store I/O (see gpuzarr.store.ReadIO): one request per byte range asked of the store (a GET; a
    # pread/preadv of a local file), shard indexes included; the bytes those ranges span (coalescing
    # gaps included; a whole object counts as its size); retries the store reports (obstore: only
    # those of a request that failed, as its error says; a request that succeeded after retries
    # tells nothing) plus requests gpuzarr repeats itself (a ranged GET answered with the whole object)
    requests: int = 0
    bytes_requested: int = 0
    retries: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, codec: str | None = None, calls: int = 0, compressed: int = 0, decoded: int = 0) -> None:
        """Counts from a task on a pool thread: several may report at once."""
        with self._lock:
            if codec is not None:
                self.codec_calls[codec] += calls
            self.bytes_compressed += compressed
            self.bytes_decoded += decoded

    def add_io(self, requests: int, nbytes: int, retries: int = 0) -> None:
        """Counts from a store call, on whichever thread made it (pool threads, obstore's loop)."""
        with self._lock:
            self.requests += requests
            self.bytes_requested += nbytes
            self.retries += retries

    def note(self, text: str) -> None:
        """A note from a store call, on whichever thread made it: once per read, however many
        calls meet the same thing."""
        with self._lock:
            if text not in self.notes:
                self.notes.append(text)

    def timed(self, stage: str) -> _Timer:
        return _Timer(self.seconds, stage)

    def __str__(self) -> str:
        lines = [f"read on {self.device}: {self.chunks} chunks ({self.chunks_absent} fill), "
                 f"{self.placements} placements, {self.batches} batches",
                 f"  bytes: {self.bytes_compressed} compressed, {self.bytes_decoded} decoded",
                 f"  store: {self.requests} requests, {self.bytes_requested} bytes requested, "
                 f"{self.retries} retries",
                 f"  codec calls: {dict(self.codec_calls)}; kernel launches: {self.kernel_launches}"]
        if self.cpu_fallback:
            lines.append(f"  decoded on the CPU (no GPU decoder, or zstd frames nvCOMP is not given): "
                         f"{len(self.cpu_fallback)} chunks, "
                         f"e.g. {self.cpu_fallback[:3]}")
        lines += [f"  note: {n}" for n in self.notes]
        lines.append("  seconds: " + ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in self.seconds.items()))
        return "\n".join(lines)


class _Timer:
    """`with report.timed(stage):` adds the block's seconds to the stage; a plain class, as a read
    enters a dozen of these and a generator-based context manager costs several times more."""

    __slots__ = ("seconds", "stage", "start")

    def __init__(self, seconds: Counter, stage: str):
        self.seconds, self.stage = seconds, stage

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.seconds[self.stage] += time.perf_counter() - self.start
