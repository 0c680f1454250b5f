"""The CPU device: a persistent thread pool. Each task takes a group of chunks of the batch
(reading them first when handed a PendingBatch of local files), decodes them (libzstd, blosc,
zlib… all release the GIL) and places them into disjoint output windows while the decoded bytes
are still in cache: no locks, no whole-batch decoded copy."""

from __future__ import annotations

import os
import sys
import threading
from typing import Any

import numpy as np
import zstandard

from .. import forksafe
from ..codecs.array_to_bytes import Bytes
from ..codecs.bytes_to_bytes import Blosc, Zstd, strip_crc32c_batch
from ..codecs.chain import CodecChain, decode_chunk
from ..errors import CorruptDataError, DeviceMemoryError, SettingsError
from ..fetch import FetchedBatch, PendingBatch, thread_slot
from ..placement import decode_raw, place, place_block
from ..plan import Gather, Plan
from .base import settle

GROUP_BYTES = 2 << 20  # decoded bytes per task: enough to amortise a task, small enough for L2
ZSTD_GROUP_MIN = 8  # from this many chunks one libzstd call per group beats a call per chunk
INLINE_SECONDS = 500e-6  # batches predicted to take less decode on the calling thread: a hand-off
#                          to the pool costs ~100-150 us here, more than splitting such a batch saves
# Rough single-core decode pace, ns per decoded byte, measured on the benchmark data (an unknown
# codec counts as zstd); placement adds PLACE_NS. Only the inline-or-pool choice uses these.
PACE_NS = {"zstd": 1.2, "gzip": 3.0, "zlib": 3.0, "lz4": 0.3, "crc32c": 0.1,
           "blosc:lz4": 0.35, "blosc:lz4hc": 0.35, "blosc:blosclz": 0.4, "blosc:snappy": 0.4,
           "blosc:zstd": 1.2, "blosc:zlib": 3.0}
PLACE_NS = 0.2
STAGING_KEPT = 4 << 20  # a thread keeps its staging buffer between reads up to this size
# Chunks decoding to more than this are placed one by one even where they form a box: a box of
# them outgrows L2 between its decode and its copy (3-D 64^3 uint16, 512 KiB chunks: boxes
# measured 2-17% slower; 2-D 256^2 uint16, 128 KiB: 12-22% faster)
BLOCK_CHUNK_MAX = 256 << 10
BLOCK_KEPT = 2 * GROUP_BYTES  # and its buffer of decoded boxes (a task's are at most GROUP_BYTES, but
#                               a read small enough to run inline may make one box of up to ~1 MiB)
THREADS_ENV = "GPUZARR_THREADS"


def default_threads() -> int:
    """Threads of a CPU device made without a count: $GPUZARR_THREADS, else the cores this
    process may run on (its CPU affinity, not the machine's count), divided among the workers
    when this is a PyTorch DataLoader worker, so N workers do not oversubscribe the cores N-fold."""
    env = os.environ.get(THREADS_ENV, "").strip()
    if env:
        try:
            n = int(env)
        except ValueError:
            n = 0
        if n < 1:
            raise SettingsError(f"{THREADS_ENV}={env!r}: expected a positive integer")
        return n
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // _loader_workers())


def _loader_workers() -> int:
    """Number of sibling workers when this process is a torch DataLoader worker, else 1
    (torch is looked up, never imported: a worker has imported it already)."""
    data = sys.modules.get("torch.utils.data")
    info = data.get_worker_info() if data is not None and hasattr(data, "get_worker_info") else None
    return max(1, getattr(info, "num_workers", 1) or 1)


class CpuDevice:
    name = "cpu"
    xp = np
    batch_bytes = 4 << 20  # small batches keep fetching and decoding overlapped, and memory low
    batch_streams = 1  # each task decodes its own chunks: no floor
    reads_in_tasks = True  # local files: each task reads the chunks it decodes (see decode_and_place)
    staging_align, staging_alloc = 1, None  # chunks as they lie; the pipeline's own staging slots
    _shared: dict[int | None, CpuDevice] = {}
    _shared_lock = threading.Lock()

    def __init__(self, threads: int | None = None):
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise SettingsError(f"threads must be a positive integer or None, not {threads!r}")
        self._requested = threads
        self._local = threading.local()
        self._pool = forksafe.LazyPool(lambda: self.threads, "gpuzarr-cpu")
        self._after_fork()
        forksafe.register(self)

    def _after_fork(self) -> None:
        """A forked child has none of the pool's threads: it starts its own at its first read,
        sized then (a DataLoader worker learns it is one only after the fork)."""
        self._sized: int | None = None

    @property
    def threads(self) -> int:
        if self._sized is None:
            self._sized = self._requested or default_threads()
        return self._sized

    def __reduce__(self) -> tuple:
        shared = CpuDevice._shared.get(self._requested) is self  # the receiver uses its own shared one
        return (CpuDevice.shared if shared else CpuDevice, (self._requested,))

    @classmethod
    def shared(cls, threads: int | None = None) -> CpuDevice:
        """The process's device with this many threads (None: `default_threads()`)."""
        with cls._shared_lock:
            if threads not in cls._shared:
                cls._shared[threads] = cls(threads)
            return cls._shared[threads]

    def empty(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        return np.empty(shape, dtype=dtype)

    def check_output(self, out: Any, shape: tuple[int, ...], dtype: Any) -> None:
        if not isinstance(out, np.ndarray):
            raise TypeError(f"out must be a numpy.ndarray on the CPU device, not {type(out).__name__}")
        if out.shape != shape or out.dtype != dtype:
            raise ValueError(f"out has shape {out.shape} and dtype {out.dtype}; the read needs {shape} {dtype}")

    def finish(self) -> None:
        """Nothing is deferred on the CPU: errors surface where they happen."""

    def abort(self) -> None:
        """Nothing to drop: see finish()."""

    def _staging(self, nbytes: int) -> np.ndarray:
        """This thread's buffer for the compressed bytes of the part it decodes next."""
        return thread_slot(self._local, "staging", nbytes, STAGING_KEPT)

    def _scratch(self, nbytes: int) -> np.ndarray:
        """This thread's decode buffer (one chunk); a chunk too large for memory is named as such."""
        try:
            return thread_slot(self._local, "scratch", nbytes)
        except MemoryError:
            raise DeviceMemoryError(f"a chunk decodes to {nbytes} bytes, more than this machine can allocate for "
                                    f"one chunk (the array's chunk shape and dtype say so)") from None

    def decode_and_place(self, batch: FetchedBatch | PendingBatch, chain: CodecChain, out: Any, plan: Plan,
                         first: int, fill: Any, report: Any = None, sole: bool = False) -> list:
        """A PendingBatch is read part by part, each task reading its own chunks just before it
        decodes them: the compressed bytes are still in cache, and the reads run on every core."""
        raw_nbytes = chain.raw_nbytes
        label = None
        if report is not None:
            label = "cpu:" + ("+".join(c.name for c in reversed(chain.bytes_to_bytes)) or "none")
        pending = isinstance(batch, PendingBatch)
        as_chunk = _ChunkView(chain)
        zstd_checks = _zstd_only(chain)

        def task(lo: int, hi: int, grouped: bool = True) -> None:
            part = batch.part(lo, hi, self._staging)
            if label is not None:
                live = int(part.present.sum())
                report.add(label, live, compressed=part.staging.nbytes if pending else 0,
                           decoded=live * (raw_nbytes or 0) if pending else 0)
            if grouped and zstd_checks is not None and part.n >= ZSTD_GROUP_MIN:
                raws = _zstd_group(part, chain, zstd_checks, self._local)
                chunks = [_named(as_chunk, raw, part.labels[i]) if raw is not None else None
                          for i, raw in enumerate(raws)]
                place(out, chunks, plan, first + lo, first + hi, part.present.tolist(), fill)
            elif raw_nbytes is not None:
                self._decode_by_blocks(part, chain, as_chunk, out, plan, first + lo, fill, boxes=grouped)
            else:  # variable-length items, or sharding inside other codecs
                present = part.present.tolist()
                decoded = [decode_chunk(chain, part.chunk(i), fill, part.labels[i]) if present[i] else None
                           for i in range(part.n)]
                place(out, decoded, plan, first + lo, first + hi, present, fill)

        if raw_nbytes is not None and batch.n * raw_nbytes * _pace(chain) < INLINE_SECONDS:
            # frame by frame into this thread's reused buffer: as fast as one libzstd call here,
            # and no fresh (page-faulting) result buffer per read
            task(0, batch.n, grouped=False)
            return []
        per_task = max(1, GROUP_BYTES // raw_nbytes) if raw_nbytes else 1
        per_task = min(per_task, max(1, -(-batch.n // self.threads)))
        bounds = [(lo, min(lo + per_task, batch.n)) for lo in range(0, batch.n, per_task)]
        if len(bounds) == 1 or self.threads == 1:
            for lo, hi in bounds:
                task(lo, hi)
            return []
        if not sole:
            return [self._pool.submit(task, lo, hi) for lo, hi in bounds]
        # the whole read: this thread, idle otherwise, takes the first group itself and wakes
        # one pool thread fewer
        futures = [self._pool.submit(task, lo, hi) for lo, hi in bounds[1:]]
        try:
            task(*bounds[0])
        except BaseException:
            settle(futures)
            raise
        return futures

    def _decode_by_blocks(self, part: FetchedBatch, chain: CodecChain, as_chunk: Any, out: Any, plan: Plan,
                          first: int, fill: Any, boxes: bool) -> None:
        """Runs of whole chunks forming a box of the grid (Plan.blocks: full reads, aligned windows)
        are decoded into one reused buffer and placed by one strided copy each; the other chunks
        one by one (_decode_each_and_place). The part's chunk 0 is plan chunk `first`. Not for
        reads small enough to run inline (`boxes` False): looking for boxes costs them ~10-15 us
        (3% of a 4-chunk window of the v2 set) and saves them little."""
        raw_nbytes = chain.raw_nbytes
        boxes = boxes and as_chunk.plain and part.n > 1 and raw_nbytes <= BLOCK_CHUNK_MAX
        pieces = plan.block_pieces(first, first + part.n, chain.shape) if boxes else ()
        done = 0
        for lo, hi, extent, at, window in pieces:
            if not part.present[lo:hi].all():  # a chunk found missing: its box goes chunk by chunk
                continue
            if done < lo:
                _decode_each_and_place(part.part(done, lo), chain, as_chunk, out, plan, first + done, fill,
                                       self._scratch(raw_nbytes))
            rows = self._block((hi - lo) * raw_nbytes).reshape(hi - lo, raw_nbytes)
            _decode_rows(chain, part, lo, hi, rows)
            place_block(out, rows.view(chain.encoded_dtype).reshape((hi - lo,) + chain.shape), extent, at,
                        window if plan.batched else None)
            done = hi
        if done < part.n:
            _decode_each_and_place(part.part(done, part.n), chain, as_chunk, out, plan, first + done, fill,
                                   self._scratch(raw_nbytes))

    def _block(self, nbytes: int) -> np.ndarray:
        """This thread's buffer for the decoded chunks of one box (kept up to BLOCK_KEPT bytes)."""
        return thread_slot(self._local, "block", nbytes, BLOCK_KEPT)


def _decode_rows(chain: CodecChain, part: FetchedBatch, lo: int, hi: int, rows: np.ndarray) -> None:
    """Decode the part's chunks lo..hi-1 (all present) into rows 0..hi-lo-1 of `rows`: a lone
    blosc codec checks every header at once and calls c-blosc per frame; other chains go frame
    by frame through decode_bytes."""
    codecs = chain.bytes_to_bytes
    if len(codecs) == 1 and isinstance(codecs[0], Blosc):
        codecs[0].decode_rows(part.staging, part.offsets[lo:hi], part.sizes[lo:hi], rows, part.labels[lo:hi])
        return
    for k, i in enumerate(range(lo, hi)):
        decode_bytes(chain, part.chunk(i), rows[k], part.labels[i])


def _decode_each_and_place(part: FetchedBatch, chain: CodecChain, as_chunk: Any, out: Any, plan: Plan, first: int,
                           fill: Any, scratch: np.ndarray) -> None:
    """Chunk by chunk: decode into one reused chunk-sized buffer and place it at once, while its
    bytes are still in L1/L2 (a group's worth of decoded chunks would not fit). The part's
    chunk 0 is plan chunk `first`."""
    sels = plan.selections(first, first + part.n)
    present = part.present.tolist()
    k, n = 0, len(sels)
    for i in range(part.n):
        if present[i]:
            chunk = _named(as_chunk, decode_bytes(chain, part.chunk(i), scratch, part.labels[i]), part.labels[i])
        while k < n and sels[k][0] == first + i:
            _, chunk_sel, out_sel = sels[k]
            # a Gather (see Plan.selections) or an index; no helper call per placement here
            out[out_sel] = (chunk_sel(chunk) if type(chunk_sel) is Gather else chunk[chunk_sel]) if present[i] else fill
            k += 1


def _named(as_chunk: Any, raw: np.ndarray, label: str) -> np.ndarray:
    """as_chunk(raw), an array→array codec's error naming the chunk (scale_offset's remainder)."""
    try:
        return as_chunk(raw)
    except CorruptDataError as exc:
        raise CorruptDataError(f"{label}: {exc}") from None


def _pace(chain: CodecChain) -> float:
    """Predicted seconds per decoded byte to decode and place a chunk of this chain on one core."""
    names = (f"blosc:{c.config.get('cname')}" if c.name == "blosc" else c.name for c in chain.bytes_to_bytes)
    return (sum(PACE_NS.get(name, PACE_NS["zstd"]) for name in names) + PLACE_NS) * 1e-9


def _zstd_only(chain: CodecChain) -> int | None:
    """Number of crc32c codecs after a lone zstd codec (0 or more), or None for other chains."""
    codecs, checks = chain.bytes_to_bytes, chain.trailing_crc32c
    if chain.raw_nbytes is None or len(codecs) - checks != 1 or not isinstance(codecs[0], Zstd):
        return None
    return checks


def _zstd_group(batch: FetchedBatch, chain: CodecChain, checks: int, local: Any) -> list:
    """Decode the zstd frames of the batch's chunks in ONE libzstd call (the GIL is released for
    the whole group); checksums are verified first. On a failure each frame is decoded alone,
    so the error names the chunk."""
    raw_nbytes = chain.raw_nbytes
    live = np.flatnonzero(batch.present).tolist()
    raws: list = [None] * batch.n
    if not live:
        return raws
    sizes = strip_crc32c_batch(batch.staging, batch.offsets[live], batch.sizes[live], checks,
                               [batch.labels[i] for i in live] if checks else [])
    segments = np.stack([batch.offsets[live], sizes], axis=1).astype("<u8")
    dctx = getattr(local, "zstd", None)
    if dctx is None:
        dctx = local.zstd = zstandard.ZstdDecompressor()
    try:
        result = dctx.multi_decompress_to_buffer(
            zstandard.BufferWithSegments(batch.staging, segments.tobytes()),
            decompressed_sizes=np.full(len(live), raw_nbytes, dtype="<u8").tobytes(), threads=1)
    except (zstandard.ZstdError, ValueError):
        for i in live:  # find and name the bad frame
            decode_bytes(chain, batch.chunk(i), np.empty(raw_nbytes, np.uint8), batch.labels[i])
        raise
    for k, i in enumerate(live):
        raw = np.frombuffer(result[k], dtype=np.uint8)
        if raw.size != raw_nbytes:
            raise CorruptDataError(f"{batch.labels[i]}: zstd frame decodes to {raw.size} bytes, expected {raw_nbytes}")
        raws[i] = raw
    return raws


class _ChunkView:
    """Decoded bytes of one chunk → the chunk array. The common chain (no byte swap, no
    array→array codec) is `plain`: a view, so whole boxes of chunks can be viewed at once
    (see CpuDevice._decode_by_blocks); anything else goes through the shared decode_raw."""

    __slots__ = ("chain", "plain", "dtype", "shape")

    def __init__(self, chain: CodecChain):
        ab = chain.array_to_bytes
        self.chain, self.dtype, self.shape = chain, chain.encoded_dtype, chain.shape
        self.plain = isinstance(ab, Bytes) and not chain.array_to_array and not ab.needs_swap(chain.encoded_dtype)

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        if self.plain:
            return raw.view(self.dtype).reshape(self.shape)
        return decode_raw(np, raw.reshape(1, -1), self.chain)[0]


def decode_bytes(chain: CodecChain, data: Any, out: np.ndarray, label: str) -> np.ndarray:
    """Run the bytes→bytes codecs backwards; the last writes into `out` (uint8, exactly the
    chunk's decoded size) or this raises. Returns `out`."""
    codecs = chain.bytes_to_bytes
    try:
        for codec in reversed(codecs[1:]):
            data = codec.decode(data)
        if codecs:
            codecs[0].decode_into(data, out)
        elif len(data) != out.nbytes:
            raise CorruptDataError(f"chunk is {len(data)} bytes, expected {out.nbytes}")
        else:
            out[:] = np.frombuffer(data, dtype=np.uint8)
    except CorruptDataError as exc:
        raise CorruptDataError(f"{label}: {exc}") from None
    return out
