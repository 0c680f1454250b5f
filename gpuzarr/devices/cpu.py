"""The CPU device: a persistent thread pool. Each task takes a group of chunks of the batch
(reading them first when handed a PendingBatch of local files), decodes them (libzstd, blosc,
zlib… all release the GIL) and places them into disjoint output windows while the decoded bytes
are still in cache: no locks, no whole-batch decoded copy."""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from .. import forksafe, host_lib
from ..codecs import libdeflate
from ..codecs.array_to_array import Transpose
from ..codecs.array_to_bytes import Bytes, swap_unit
from ..codecs.bytes_to_bytes import DIRECT_LIMITS, Blosc, Lz4, Zstd, decode_through, strip_crc32c_batch
from ..codecs.chain import CodecChain, decode_chunk
from ..cores import default_threads
from ..errors import CorruptDataError, DeviceMemoryError, SettingsError
from ..fetch import FetchedBatch, PendingBatch, thread_slot
from ..output_pool import OUTPUTS
from ..placement import Box, decode_raw, fill_item, place, place_block, part_boxes, plane_assign
from ..plan import Gather, Plan
from ..spread_pool import SpreadPool
from ..store import read_io
from .base import settle
from .gpu_layout import scatter_records
from .kernels import SCATTER_MAX_NDIM, SCATTER_REC_SRC

GROUP_BYTES = 2 << 20  # decoded bytes per task: enough to amortise a task, small enough for L2
# What splitting a batch over the pool costs, against decoding it frame by frame on the calling
# thread: the hand-off (~100-150 us to wake a pool thread here), the grouped path's fixed work
# (header checks, a group decode buffer, box search) and two threads contending; a batch is
# split only where that saves more (see _inline_below). Measured on 2 cores, 16 windows each:
# 2-D 400^2 (16 chunks of 32 KiB) 1.53 ms inline, 1.95 grouped on one thread, 2.29 split;
# ML 256^2 tiles (4 of 128 KiB) 1.4 inline, 2.6 split; v2 400^2 0.78 inline, 1.26 split
SPLIT_SECONDS = 750e-6
# Rough single-core decode pace, ns per decoded byte, measured on the benchmark data (an unknown
# codec counts as zstd); placement adds PLACE_NS. Only the inline-or-pool choice uses these.
# gzip and zlib through libdeflate: the layouts' v2-zlib float32 and v3-gzip int32 full reads
# on one thread, 1.50 and 1.39 ns a byte in all (zlib's inflate: 3.27 and 2.90); blosc's zlib
# frames through libdeflate (kernels/host_blosc.cpp), 0.7-2.4 ns a byte over four layouts.
PACE_NS = {"zstd": 1.2, "gzip": 3.0, "zlib": 3.0, "gzip:libdeflate": 1.25, "zlib:libdeflate": 1.25,
           "lz4": 0.3, "crc32c": 0.1,
           "blosc:lz4": 0.35, "blosc:lz4hc": 0.35, "blosc:blosclz": 0.4, "blosc:snappy": 0.4,
           "blosc:zstd": 1.2, "blosc:zlib": 3.0, "blosc:zlib:libdeflate": 1.25}
PLACE_NS = 0.2
# and each chunk decoded on the calling thread costs this much Python besides (decode call,
# placement, checks), so many tiny chunks go to the grouped path whatever their bytes: a full
# read of 256 chunks of 2 KiB took 4.8-6.0 ms chunk by chunk (~0.7 ms by bytes alone), 2.1
# grouped on the pool; 1024 of 512 B 15-20 ms against 3.6
CHUNK_SECONDS = 15e-6
# A read decoded on the calling thread (see inline) is decoded over several threads where each
# thread's part is predicted to take this long at least: a pool thread wakes in ~30-50 us here,
# and the threads then contend for the GIL between chunks (~9 switches a window of 4 chunks,
# ~20 us each)
PART_SECONDS = 150e-6
# and where each chunk decodes this long at least without the GIL (by PACE_NS): below it the
# threads mostly wait on each other's Python (the smallest measured to gain: 8 KiB of zstd, 36
# of them in a 300^2 window, 0.73x; 256 chunks of 2 KiB: 1.25x)
SPLIT_CHUNK_SECONDS = 8e-6
# and where its decoders are this slow a byte (ns, PACE_NS): zstd, gzip and zlib are bound by
# the core and scale; blosc-lz4 and LZ4 are bound by memory here, and two at once slowed each
# other (v2 256^2 windows, 4 chunks of 128 KiB: each decode 60-75 us alone, 85-145 us beside
# another: 1.02-1.24x the time on one thread)
SCALES_NS = 1.0
STAGING_KEPT = 4 << 20  # a thread keeps its staging buffer between reads up to this size
# Chunks decoding to more than this are placed one by one even where they form a box: a box of
# them outgrows L2 between its decode and its copy (3-D 64^3 uint16, 512 KiB chunks: boxes
# measured 2-17% slower; 2-D 256^2 uint16, 128 KiB: 12-22% faster)
BLOCK_CHUNK_MAX = 256 << 10
# a part whose decoded chunks take more than this is decoded chunk by chunk into a scratch buffer
# and placed at once (_decode_scatter), not decoded whole into rows then copied into place by
# boxes: rows beyond the caches cost a second pass through memory (a remote read of the sharded
# set, 1,024 chunks of 8 KiB landing together, in parts of ~3 MiB: 11.6 -> 10.6 ms at 0 ms
# latency, alternated in-process; local reads, whose large parts are read in tasks, alike)
ROWS_MAX = 1 << 20
BLOCK_KEPT = GROUP_BYTES  # and its buffer of a part's decoded chunks (a task's part is at most that)
class CpuDevice:
    name = "cpu"
    xp = np
    batch_bytes = 4 << 20  # small batches keep fetching and decoding overlapped, and memory low
    batch_streams = 1  # each task decodes its own chunks: no floor
    reads_in_tasks = True  # local files: each task reads the chunks it decodes (see decode_and_place)
    staging_alloc = None  # the pipeline's own staging slots
    _shared: dict[int | None, CpuDevice] = {}
    _shared_lock = forksafe.Lock()

    def __init__(self, threads: int | None = None):
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise SettingsError(f"threads must be a positive integer or None, not {threads!r}")
        self._requested = threads
        self._local = threading.local()
        self.pool = forksafe.LazyPool(lambda: self.threads, "gpuzarr-cpu", make=SpreadPool)
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
        """The output, a large one from blocks reused once free (output_pool); one NumPy cannot
        make (ValueError: its byte size overflows, even with a dimension of 0) or this machine
        cannot hold is a DeviceMemoryError naming its shape."""
        try:
            return OUTPUTS.empty(shape, dtype)
        except (ValueError, MemoryError) as exc:
            raise DeviceMemoryError(f"an output of shape {shape} and dtype {np.dtype(dtype)} cannot be allocated "
                                    f"here ({exc})") from None

    def staging_align(self, chain: CodecChain) -> int:
        """Chunks as they lie: every decoder reads from any byte."""
        return 1

    def check_output(self, out: Any, shape: tuple[int, ...], dtype: Any) -> None:
        if not isinstance(out, np.ndarray):
            raise TypeError(f"out must be a numpy.ndarray on the CPU device, not {type(out).__name__}")
        if out.shape != shape or out.dtype != dtype:
            raise ValueError(f"out has shape {out.shape} and dtype {out.dtype}; the read needs {shape} {dtype}")
        # the host library writes through out's address: a read-only buffer (bytes, a memmap
        # opened "r") would be changed or fault, elements sharing memory get one another's values
        # (NumPy 2.4 gives an empty array zero strides: no elements, none overlapping)
        if not out.flags.writeable:
            raise ValueError("out is read-only")
        if out.size and any(stride == 0 and n > 1 for stride, n in zip(out.strides, out.shape)):
            raise ValueError(f"out's elements overlap (strides {out.strides}): each needs memory of its own")

    def finish(self) -> None:
        """Nothing is deferred on the CPU: errors surface where they happen."""

    def abort(self) -> None:
        """Nothing to drop: see finish()."""

    def inline(self, n: int, chain: CodecChain) -> bool:
        """Whether a read's sole batch of n chunks of `chain` decodes on the calling thread: its
        predicted time (bytes and chunks, see CHUNK_SECONDS) is below what splitting it would
        save (see _inline_below)."""
        if chain.raw_nbytes is None:
            return False
        return n * (CHUNK_SECONDS + chain.raw_nbytes * pace(chain)) < _inline_below(self.threads)

    def takes_landed(self, n: int, chain: CodecChain) -> bool:
        """Unless the batch is small enough to decode inline: its decode would barely overlap."""
        return not self.inline(n, chain)

    def inline_parts(self, n: int, chain: CodecChain) -> int:
        """Over how many threads a read decoded inline spreads its n chunks: one unless each
        part's predicted decode saves more than a hand-off costs, on decoders that scale."""
        decode_ns = _decode_ns(chain)
        if self.threads < 2 or decode_ns < SCALES_NS or chain.raw_nbytes * decode_ns * 1e-9 < SPLIT_CHUNK_SECONDS:
            return 1
        return max(1, min(self.threads, n, int(n * chain.raw_nbytes * pace(chain) // PART_SECONDS)))

    def _staging(self, nbytes: int) -> np.ndarray:
        """This thread's buffer for the compressed bytes of the part it decodes next."""
        return thread_slot(self._local, "staging", nbytes, STAGING_KEPT)

    def _scratch(self, nbytes: int) -> np.ndarray:
        """This thread's decode buffer (one chunk)."""
        return chunk_buffer(lambda n: thread_slot(self._local, "scratch", n), nbytes)

    def decode_and_place(self, batch: FetchedBatch | PendingBatch, chain: CodecChain, out: Any, plan: Plan,
                         first: int, fill: Any, report: Any = None, sole: bool = False) -> list:
        """A PendingBatch is read part by part, each task reading its own chunks just before it
        decodes them: the compressed bytes are still in cache, and the reads run on every core."""
        raw_nbytes = chain.raw_nbytes
        label = None
        if report is not None:
            label = "cpu:" + ("+".join(c.name for c in reversed(chain.bytes_to_bytes)) or "none")
        pending = isinstance(batch, PendingBatch)
        as_chunk = ChunkView(chain)
        whole = _PartReads.make(batch, chain, as_chunk, out, plan, first, fill) if pending else None

        def task(lo: int, hi: int, grouped: bool = True) -> None:
            if whole is not None:
                done = whole.run(lo, hi, self._staging, self._scratch(raw_nbytes), report)
                if done is not None:
                    if label is not None:
                        report.add(label, done[0], compressed=done[1], decoded=done[0] * raw_nbytes)
                    return
            part = batch.part(lo, hi, self._staging)
            if label is not None:
                live = int(part.present.sum())
                report.add(label, live, compressed=part.staging.nbytes if pending else 0,
                           decoded=live * (raw_nbytes or 0) if pending else 0)
            if raw_nbytes is not None:
                self._decode_by_blocks(part, chain, as_chunk, out, plan, first + lo, fill, boxes=grouped)
            else:  # variable-length items, or sharding inside other codecs
                present = part.present.tolist()
                decoded = [decode_chunk(chain, part.chunk(i), fill, part.labels[i]) if present[i] else None
                           for i in range(part.n)]
                place(out, decoded, plan, first + lo, first + hi, present, fill)

        if sole and self.inline(batch.n, chain):
            # a small read: frame by frame into this thread's reused buffer, as fast as one
            # libzstd call here, and no fresh (page-faulting) result buffer per read. A small
            # batch of a longer read goes to the pool: here it would run chunk by chunk beside
            # the tasks of the batches before it (a 2048^2 read of 934 + 90 chunks: 0.90-0.97x)
            parts = self.inline_parts(batch.n, chain)
            if parts == 1:
                task(0, batch.n, grouped=False)
            else:  # the calling thread takes the first part (and any no worker has started)
                edges = [batch.n * k // parts for k in range(parts + 1)]
                self.pool.run_parts(lambda part: task(*part, grouped=False), list(zip(edges[:-1], edges[1:])))
            return []
        bounds = _task_bounds(batch.n, max(1, GROUP_BYTES // raw_nbytes) if raw_nbytes else 1, self.threads,
                              last=sole or first + batch.n >= plan.n_chunks)
        if len(bounds) == 1 or self.threads == 1:
            for lo, hi in bounds:
                task(lo, hi)
            return []
        if not sole:
            return [self.pool.submit(task, lo, hi) for lo, hi in bounds]
        # the whole read: this thread, idle otherwise, works beside threads - 1 pool workers, each
        # taking the next group when free (see _Groups), each kept off this thread's CPU (spread_pool)
        groups = _Groups(bounds, task)
        futures = [self.pool.submit_beside(groups.work) for _ in range(min(self.threads, len(bounds)) - 1)]
        try:
            groups.work()
        except BaseException:
            settle(futures)
            raise
        return futures

    def _decode_by_blocks(self, part: FetchedBatch, chain: CodecChain, as_chunk: Any, out: Any, plan: Plan,
                          first: int, fill: Any, boxes: bool) -> None:
        """The part's chunks are decoded into one reused buffer, one row each (lone zstd, blosc or
        lz4 codecs: headers checked at once, then the frames decoded without the GIL, see
        _rows_decoder); the whole chunks among them, in any order, are placed by one copy as tiles of the
        box they span (placement.part_boxes), the others one by one. Rows are in the part's order
        where each box is a run of the part, else in the boxes' order. The part's chunk 0 is plan
        chunk `first`. Reads small enough to run inline (`boxes` False) go chunk by chunk
        (_decode_each_and_place: a 256^2 window of 9 chunks measured 743 us so, 824 us through
        rows), and so do chunks too large for a box to stay in L2 between decode and copy, and
        chains without a rows decoder (gzip, zlib…: slow enough that placement hardly counts;
        so a thread holds one decoded chunk of theirs, not a part)."""
        raw_nbytes = chain.raw_nbytes
        if (not boxes or part.n < 2 or raw_nbytes > BLOCK_CHUNK_MAX or part.n * raw_nbytes > ROWS_MAX
                or _rows_decoder(chain) is None):
            scratch = self._scratch(raw_nbytes)
            if not _decode_scatter(part, chain, as_chunk, out, plan, first, fill, scratch):
                _decode_each_and_place(part, chain, as_chunk, out, plan, first, fill, scratch)
            return
        found = part_boxes(plan, first, first + part.n, chain.shape, part.present) if as_chunk.plain else []
        runs = [_as_run(box) for box in found]
        if found and all(run is not None for run in runs):
            # every box a run of the part (chunks in C order, or a shard's in Morton order, read
            # whole): rows in the part's order, so frames back to back in staging decode in one
            # call (Zstd._decode_runs), and each box is placed from its run of rows
            present = part.present
            order = slice(0, part.n) if present.all() else np.flatnonzero(present)
            rows = _stored_rows(chain, part, order)
            live = part.n if type(order) is slice else order.size
            if rows is None:
                rows = self._block(live * raw_nbytes).reshape(live, raw_nbytes)
                _decode_rows(chain, part, order, rows)
            chunks = rows.view(as_chunk.dtype).reshape((live,) + chain.shape)
            row_of = np.cumsum(present) - 1  # each present chunk's row
            for box, (lo, hi, tiles) in zip(found, runs):
                at = int(row_of[lo])
                place_block(out, chunks[at:at + hi - lo], box.extent, box.out_start, box.window, tiles)
            if sum(hi - lo for lo, hi, _ in runs) < part.n:  # chunks not in a box, or absent (the fill value)
                row_of[~present] = -1
                for lo, hi, _ in runs:
                    row_of[lo:hi] = -2  # placed already
                _place_rows(rows, row_of, part.labels, as_chunk, out, plan, first, fill)
            return
        # boxes from anywhere in the part (a window cutting a shard's Morton order): rows in the
        # boxes' order, each box placed by one copy, then the other chunks
        boxed = np.concatenate([box.members for box in found]) if found else np.zeros(0, dtype=np.int64)
        rest = part.present.copy()
        rest[boxed] = False
        order = np.concatenate([boxed, np.flatnonzero(rest)])  # the chunk decoded into each row
        rows = _stored_rows(chain, part, order)
        if rows is None:
            rows = self._block(order.size * raw_nbytes).reshape(order.size, raw_nbytes)
            _decode_rows(chain, part, order, rows)
        chunks = rows[:boxed.size].view(as_chunk.dtype).reshape((boxed.size,) + chain.shape)
        at = 0
        for box in found:
            k = len(box.members)
            place_block(out, chunks[at:at + k], box.extent, box.out_start, box.window, box.tiles)
            at += k
        if boxed.size < part.n:
            row_of = np.full(part.n, -1, dtype=np.int64)
            row_of[order] = np.arange(order.size)
            row_of[boxed] = -2  # placed already
            _place_rows(rows, row_of, part.labels, as_chunk, out, plan, first, fill)

    def _block(self, nbytes: int) -> np.ndarray:
        """This thread's buffer for the decoded chunks of one part (kept up to BLOCK_KEPT bytes)."""
        return thread_slot(self._local, "block", nbytes, BLOCK_KEPT)


def _task_bounds(n: int, per_task: int, threads: int, last: bool = True) -> list[tuple[int, int]]:
    """A batch of n chunks as parts of `per_task` (at least one per thread where there are
    chunks for it), each a task. The read's `last` batch ends in `threads` parts that share
    out its rest equally, so the threads end together: parts of 64 chunks with a short last
    one, or one part more than the threads share out, left one thread working alone at the end
    (64 unaligned 256^2 windows of the 2-D set, batches of 240 and 205 chunks: the last two
    parts ran 2.4 ms on one thread in a 16 ms read). The other parts keep their size: a part of
    a shard's chunks whole (64 in the 2-D set) decodes in one call and is placed as one box
    (parts of equal size over a batch cut shards: full read 1.07x), and the tasks of earlier
    batches run back to back with the next batch's (their tails split too: 3-D batch 1.03-1.08x)."""
    per_task = min(per_task, max(1, -(-n // threads)))
    if not last or n == 0:
        return [(lo, min(lo + per_task, n)) for lo in range(0, n, per_task)]
    count = -(-n // per_task)
    kept = max(0, -(-count // threads) * threads - threads) * per_task  # chunks in parts of per_task
    rest = min(threads, n - kept)  # parts the rest is shared out in (n - kept >= 1)
    edges = [*range(0, kept, per_task), *(kept + (n - kept) * k // rest for k in range(rest + 1))]
    return list(zip(edges[:-1], edges[1:]))


class _Groups:
    """A read's groups taken in order by whichever worker is free: as many workers as threads,
    so none waits for a core behind another, and no group waits on a busy worker while another
    idles (groups handed out up front ran 3 at once on 2 cores, then the 4th alone: a remote
    full read of 1024 chunks in 4 groups decoded in 26 ms, ~8 of them one group on one core).
    A failure stops the handing out; the groups under way end."""

    def __init__(self, bounds: list[tuple[int, int]], task: Callable[[int, int], None]):
        self._bounds, self._task = iter(bounds), task
        self._lock = threading.Lock()

    def work(self) -> None:
        while True:
            with self._lock:
                group = next(self._bounds, None)
            if group is None:
                return
            try:
                self._task(*group)
            except BaseException:
                with self._lock:
                    self._bounds = iter(())
                raise


def _as_run(box: Box) -> tuple[int, int, tuple | None] | None:
    """The box's members as the run lo..hi-1 of the part, with each one's tile in that order
    (None: in C order of the box); None where they are not one run."""
    if type(box.members) is range and box.tiles is None:
        return box.members.start, box.members.stop, None
    members = np.asarray(box.members)
    by_part = np.argsort(members, kind="stable")
    lo, hi = int(members[by_part[0]]), int(members[by_part[-1]]) + 1
    if hi - lo != members.size:
        return None
    if box.tiles is None:
        ordered = (by_part == np.arange(by_part.size)).all()
        return lo, hi, None if ordered else np.unravel_index(by_part, box.extent)
    return lo, hi, tuple(t[by_part] for t in box.tiles)


def _rows_decoder(chain: CodecChain) -> Callable | None:
    """How the chain decodes a batch of frames into rows at once (decode_rows' signature): its
    lone zstd, blosc or lz4 (numcodecs' framing) codec, crc32c codecs after it allowed, checks
    every header at once, then decodes without the GIL (zstd: one call per run of frames back
    to back in staging, straight into their rows, else the group in one call, copied into the
    rows; blosc, lz4: one call per frame, straight into its row); stored chunks (no codec) are
    copied. None for other chains."""
    codecs = chain.bytes_to_bytes
    if not codecs:
        return _copy_rows
    if len(codecs) - chain.trailing_crc32c == 1 and isinstance(codecs[0], (Zstd, Blosc, Lz4)):
        return codecs[0].decode_rows
    return None


def _stored_rows(chain: CodecChain, part: FetchedBatch, order: np.ndarray | slice) -> np.ndarray | None:
    """The part's stored (uncompressed) chunks `order`, all present, as rows of staging itself
    where they lie there back to back in that order, each of the chunk's size (a shard's chunks
    written in order, read in one range): no copy into rows. None otherwise."""
    if chain.bytes_to_bytes:
        return None
    offsets, sizes, nbytes = part.offsets[order], part.sizes[order], chain.raw_nbytes
    if not offsets.size or (sizes != nbytes).any() or (np.diff(offsets) != nbytes).any():
        return None
    start = int(offsets[0])
    return part.staging[start:start + offsets.size * nbytes].reshape(offsets.size, nbytes)


def _copy_rows(staging: np.ndarray, offsets: np.ndarray, sizes: np.ndarray, rows: np.ndarray, labels: list) -> None:
    """Stored chunks into their rows, every size checked first."""
    nbytes = rows.shape[1]
    wrong = np.flatnonzero(sizes != nbytes)
    if wrong.size:
        i = int(wrong[0])
        raise CorruptDataError(f"{labels[i]}: chunk is {sizes[i]} bytes, expected {nbytes}")
    for k, start in enumerate(offsets.tolist()):
        rows[k] = staging[start:start + nbytes]


def _decode_rows(chain: CodecChain, part: FetchedBatch, order: np.ndarray | slice, rows: np.ndarray) -> None:
    """Decode the part's chunks `order` (indices, or a slice: no gathers; all present) into rows
    0, 1… of `rows` (see _rows_decoder), crc32c codecs verified first."""
    labels = part.labels[order] if type(order) is slice else [part.labels[i] for i in order.tolist()]
    offsets = part.offsets[order]
    sizes = strip_crc32c_batch(part.staging, offsets, part.sizes[order], chain.trailing_crc32c, labels)
    _rows_decoder(chain)(part.staging, offsets, sizes, rows, labels)


def _place_rows(rows: np.ndarray, row_of: np.ndarray, labels: list, as_chunk: Any, out: Any, plan: Plan, first: int,
                fill: Any) -> None:
    """Place the part's chunks: chunk i (plan chunk first+i) is row row_of[i] of `rows`, or
    absent (-1: the fill value), or placed already (-2). The rows' pieces, and the fills, go in
    one call each of the host library where it applies (host_swap), else one NumPy assignment
    each."""
    swap = host_swap(as_chunk, out, rows)
    if swap is not None:
        itemsize, ndim = out.dtype.itemsize, len(as_chunk.shape)
        records, others = scatter_records(plan, first, first + row_of.size, row_of >= 0, as_chunk.shape, itemsize,
                                          out.strides, as_chunk.stored_order)
        # a record's source is its chunk's place in the part (times the chunk's bytes): its row's
        records[:, SCATTER_REC_SRC] = row_of[records[:, SCATTER_REC_SRC] // rows.shape[1]] * rows.strides[0]
        host_lib.scatter(rows, out, records, ndim, itemsize, swap)
        if others.shape[0]:  # absent chunks (-1), and those placed already (-2)
            fills = others[row_of[others[:, SCATTER_REC_SRC] // rows.shape[1]] == -1]
            host_lib.fill(out, fills, fill_item(fill, out.dtype), ndim)
        return
    last, chunk = -1, None
    rows_of = row_of.tolist()
    for c, chunk_sel, out_sel in plan.selections(first, first + len(rows_of)):
        r = rows_of[c - first]
        if r == -1:
            out[out_sel] = fill
        elif r >= 0:
            if c != last:
                last, chunk = c, _named(as_chunk, rows[r], labels[c - first])
            if type(chunk_sel) is Gather:
                out[out_sel] = chunk_sel(chunk)
            elif as_chunk.reordered:  # in a transpose's axis order
                plane_assign(out, out_sel, chunk[chunk_sel])
            else:
                out[out_sel] = chunk[chunk_sel]


def host_swap(as_chunk: Any, out: Any, rows: np.ndarray | None = None) -> int | None:
    """How the host scatter places decoded chunks (`rows` of them, or each in a contiguous
    buffer): 0, their bytes as they are (chunks of the output's very dtype); 2, 4 or 8, each unit
    of that size reversed (the same dtype in the other byte order: a big-endian array here, as
    NumPy's copy swaps it); None, not at all (a cast or another array->array codec than
    transposes, another swap, rows not contiguous, a non-NumPy output, no library). Transposed
    chunks are walked in their stored axis order."""
    if not ((as_chunk.plain or as_chunk.stored_order is not None) and isinstance(out, np.ndarray)
            and (rows is None or rows.strides[1] == 1) and len(as_chunk.shape) <= SCATTER_MAX_NDIM):
        return None
    stored, wanted = as_chunk.dtype, out.dtype
    if stored == wanted:
        swap = 0
    elif stored.newbyteorder() == wanted and stored.fields is None and swap_unit(wanted) in (2, 4, 8):
        swap = swap_unit(wanted)
    else:
        return None
    return swap if host_lib.available("scatter") else None


class _PartReads:
    """A read of local files (shards, or chunk files) whose every part is read, checked,
    decoded and placed by one call of the host library (host_lib.read_decode_scatter), the GIL
    released once a part. The tables it takes are made once for the batch, whole-batch, on the
    calling thread: each chunk's file, offset and size, and the scatter records of every
    placement with where each chunk's begin; the fill value is written into the windows of
    absent chunks at once (and, after a part, of chunk files found not there). A task then
    slices them: ~20 us of Python a part, where reading a part (fetch), finding its boxes,
    checking and decoding its frames and placing them took ~400 us in ~20 GIL round trips (the
    2-D set's 64 patches on 16 cores: 19.6 ms against tensorstore's 5.8, the GIL held most of
    it). A part the library gives back (a file short or unreadable, a frame its checks refuse or
    that does not decode) is read as before, which says what is wrong; counted in
    host_lib.FALLBACKS and noted in the ReadReport."""

    __slots__ = ("codec", "paths", "keys", "file_of", "offsets", "sizes", "ends", "records", "rec_lo", "out", "ndim",
                 "itemsize", "swap", "io", "nbytes", "fill", "missing", "ahead", "rows")

    @classmethod
    def make(cls, batch: PendingBatch, chain: CodecChain, as_chunk: Any, out: Any, plan: Plan, first: int,
             fill: Any) -> _PartReads | None:
        """The batch's tables, or None where the library cannot take its parts: a chain other
        than one zstd, blosc or lz4 codec or none (stored chunks), a placement the host scatter
        does not do (transposed chunks it does: gpz_host_transpose). A cold read's parts say how
        far they are before reading (PendingBatch.ahead), then read blocking what the hand-over put
        in flight (64 cold 2-D windows in one read_batch: 1.05-1.08x tensorstore's time so,
        1.09-1.57 through fetch)."""
        codec, nbytes = host_codec(chain), chain.raw_nbytes
        if codec is None or nbytes is None or not host_lib.built():
            return None
        if nbytes * max(batch.n, 1) >= 1 << 62:  # records' offsets past int64: the tasks' chunk buffer is refused
            return None
        swap = host_swap(as_chunk, out)
        if swap is None or codec.decoder(nbytes) is None:
            return None
        self = cls()
        self.codec, self.nbytes, self.out, self.swap, self.missing = codec, nbytes, out, swap, batch.missing
        self.ndim, self.itemsize, self.fill = len(as_chunk.shape), out.dtype.itemsize, fill_item(fill, out.dtype)
        loc, rows = batch.loc, batch.rows
        present = loc.present[rows]
        _, first_of, file_of = np.unique(loc.key_ids[rows][present], return_index=True, return_inverse=True)
        self.keys = loc.keys[rows]
        self.paths = (ctypes.c_char_p * first_of.size)(
            *(os.fsencode(batch.store.path(k)) for k in self.keys[present][first_of].tolist()))
        self.file_of = np.full(rows.size, -1, np.int64)
        self.file_of[present] = file_of
        self.offsets = np.ascontiguousarray(loc.offsets[rows], np.int64)
        self.sizes = np.where(present, loc.sizes[rows], 0)  # -1: a whole chunk file
        self.ends = part_ends(self.sizes, nbytes)
        self.records, fills, self.rec_lo = _chunk_records(plan, first, present, as_chunk, out, nbytes)
        if fills.shape[0]:
            host_lib.fill(out, fills, self.fill, self.ndim)
        self.io, self.ahead, self.rows = read_io(batch.store), batch.ahead, batch.rows
        return self

    def run(self, lo: int, hi: int, staging: Callable[[int], np.ndarray], scratch: np.ndarray,
            report: Any) -> tuple[int, int] | None:
        """Chunks lo..hi-1 of the batch read, decoded and placed: (chunks present, compressed
        bytes read); None where the library gave the part back (nothing to undo: its chunks are
        placed again, to the same values)."""
        decoder = self.codec.decoder(self.nbytes)  # this thread's
        if decoder is None:
            return None
        if self.io is not None:
            self.io.check()
        if self.ahead is not None and hi > lo:  # a cold read: how far the tasks have come (PendingBatch.part)
            self.ahead(int(self.rows[hi - 1]) + 1)
        lengths = np.empty(hi - lo, np.int64)
        code, reads, got = host_lib.read_decode_scatter(
            self.paths, self.file_of[lo:hi], self.offsets[lo:hi], self.sizes[lo:hi],
            staging(int(self.ends[hi] - self.ends[lo])), decoder, scratch, self.out, self.records,
            self.rec_lo[lo:hi + 1], self.ndim, self.itemsize, self.swap, DIRECT_LIMITS, lengths)
        if self.io is not None:
            self.io.add(reads, got)
        if code:
            reason = host_lib.PART_FALLBACKS[code]
            host_lib.count_fallback(reason)
            if report is not None:
                report.note(f"cpu: a part given back by the host library ({reason}) was read and decoded in Python")
            return None
        gone = np.flatnonzero((lengths < 0) & (self.file_of[lo:hi] >= 0)) + lo  # chunk files not there
        if gone.size:
            spans = [self.records[self.rec_lo[i]:self.rec_lo[i + 1]] for i in gone.tolist()]
            host_lib.fill(self.out, np.concatenate(spans), self.fill, self.ndim)
            if self.missing is not None:
                self.missing.extend(self.keys[gone].tolist())
        return int(np.count_nonzero(lengths >= 0)), got


class _Stored:
    """The host library's decoder of chunks stored without a bytes->bytes codec: each is placed
    from where it was read (GPZ_STORED), as a lone codec's frames are decoded. 64 windows of a
    sharded uncompressed 4096^2 array read chunk by chunk in Python (preadv a range, a NumPy
    assignment a placement): 1.18-1.23x tensorstore's time."""

    @staticmethod
    def decoder(nbytes: int) -> tuple:
        return host_lib.STORED


def host_codec(chain: CodecChain) -> Any:
    """What gives the host library's decoder of the chain's chunks (its `decoder(nbytes)`): its
    lone zstd, blosc or lz4 codec, _Stored for none; None for any other chain."""
    codecs = chain.bytes_to_bytes
    if not codecs:
        return _Stored
    return codecs[0] if len(codecs) == 1 and isinstance(codecs[0], (Zstd, Blosc, Lz4)) else None


def part_ends(sizes: np.ndarray, nbytes: int) -> np.ndarray:
    """Where each chunk of a part read by gpz_read_decode_scatter ends in its staging, from 0:
    its size, or for a whole chunk file (size -1) at most what its codec writes for a chunk of
    `nbytes` (a larger file is given back, and named by the Python path)."""
    return np.concatenate(([0], np.cumsum(np.where(sizes >= 0, sizes, nbytes + nbytes // 255 + 64))))


def _decode_scatter(part: FetchedBatch, chain: CodecChain, as_chunk: Any, out: Any, plan: Plan, first: int,
                    fill: Any, scratch: np.ndarray) -> bool:
    """_decode_each_and_place in one call of the host library, the GIL released once for the
    part (host_lib.decode_scatter): every header checked first, then each chunk decoded into
    `scratch` and placed at once (a stored chunk: placed from staging). With 16 threads, the GIL
    that Python's loop takes ~4 times a chunk held back a 3-D read of 512 KiB chunks (py-spy: the
    GIL held half the time, 6.5 cores busy of 16). False where that call cannot take the part
    (no library, a chain other than one zstd, blosc or lz4 codec, or none, and crc32c checks, a
    placement the host scatter does not do or does slower, a frame that needs the Python path)
    or a frame fails to decode (a stored chunk: is not its size): the caller then goes chunk by
    chunk, which names the bad one."""
    codecs = chain.bytes_to_bytes
    stored = len(codecs) == chain.trailing_crc32c  # no codec but crc32c checks: placed from staging
    if not (stored or (len(codecs) - chain.trailing_crc32c == 1 and isinstance(codecs[0], (Zstd, Blosc, Lz4)))
            or not host_lib.built()):
        return False
    swap = host_swap(as_chunk, out)
    if swap is None:
        return False
    present = part.present
    live = np.flatnonzero(present)
    labels = part.labels if live.size == part.n else [part.labels[i] for i in live.tolist()]
    offsets = part.offsets[live]
    sizes = strip_crc32c_batch(part.staging, offsets, part.sizes[live], chain.trailing_crc32c, labels)
    if stored:  # each its chunk's size, or the call fails and the Python path names it
        direct = host_lib.STORED, part.staging.ctypes.data + offsets, sizes
    else:
        direct = codecs[0].direct(part.staging, offsets, sizes, scratch.size, labels)
    if direct is None:
        return False
    decoder, src, src_sizes = direct
    itemsize, ndim = out.dtype.itemsize, len(as_chunk.shape)
    records, fills, rec_lo = _chunk_records(plan, first, present, as_chunk, out, scratch.size)
    rec_lo = rec_lo[np.append(live, part.n)]  # the live chunks' (absent ones between have no records)
    failed, _ = host_lib.decode_scatter(decoder, src, src_sizes, scratch, out, records, rec_lo, ndim, itemsize, swap)
    if failed >= 0:
        return False
    if fills.shape[0]:
        host_lib.fill(out, fills, fill_item(fill, out.dtype), ndim)
    return True


def _chunk_records(plan: Plan, first: int, present: np.ndarray, as_chunk: Any, out: Any,
                   nbytes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """scatter_records of plan chunks first.. (present.size of them), each record's source offset
    within its own chunk (each is decoded alone, into a buffer of `nbytes`), the fill records of
    the absent ones, and where each chunk's records begin: chunk i's are rec_lo[i]..rec_lo[i+1]."""
    records, fills = scatter_records(plan, first, first + present.size, present, as_chunk.shape, out.dtype.itemsize,
                                     out.strides, as_chunk.stored_order)
    local = records[:, SCATTER_REC_SRC] // nbytes  # each record's chunk, ascending
    records[:, SCATTER_REC_SRC] -= local * nbytes
    return records, fills, np.searchsorted(local, np.arange(present.size + 1))


def _decode_each_and_place(part: FetchedBatch, chain: CodecChain, as_chunk: Any, out: Any, plan: Plan, first: int,
                           fill: Any, scratch: np.ndarray) -> None:
    """Chunk by chunk: decode into one reused chunk-sized buffer and place it at once, while its
    bytes are still in L1/L2 (a group's worth of decoded chunks would not fit). The part's
    chunk 0 is plan chunk `first`."""
    sels = plan.selections(first, first + part.n)
    present = part.present.tolist()
    reordered = as_chunk.reordered
    stored = not chain.bytes_to_bytes  # viewed where fetch put them (sizes checked): no copy
    k, n = 0, len(sels)
    for i in range(part.n):
        if present[i]:
            raw = stored_chunk(part, i, scratch.size) if stored else decode_bytes(chain, part.chunk(i), scratch, part.labels[i])
            chunk = _named(as_chunk, raw, part.labels[i])
        while k < n and sels[k][0] == first + i:
            _, chunk_sel, out_sel = sels[k]
            # a Gather (see Plan.selections) or an index; a helper call only for reordered chunks
            if not present[i]:
                out[out_sel] = fill
            elif type(chunk_sel) is Gather:
                out[out_sel] = chunk_sel(chunk)
            elif reordered:  # in a transpose's axis order
                plane_assign(out, out_sel, chunk[chunk_sel])
            else:
                out[out_sel] = chunk[chunk_sel]
            k += 1


def stored_chunk(part: FetchedBatch, i: int, nbytes: int) -> np.ndarray:
    """Stored chunk i of the part, viewed in staging: exactly `nbytes`, or this raises."""
    start, size = int(part.offsets[i]), int(part.sizes[i])
    if size != nbytes:
        raise CorruptDataError(f"{part.labels[i]}: chunk is {size} bytes, expected {nbytes}")
    return part.staging[start:start + size]


def _named(as_chunk: Any, raw: np.ndarray, label: str) -> np.ndarray:
    """as_chunk(raw), an array→array codec's error naming the chunk (scale_offset's remainder)."""
    try:
        return as_chunk(raw)
    except CorruptDataError as exc:
        raise CorruptDataError(f"{label}: {exc}") from None


def _inline_below(threads: int) -> float:
    """Predicted decode seconds under which a batch runs on the calling thread: splitting it over
    `threads` saves at most 1 - 1/threads of its time (less on cores that share a physical one),
    and costs SPLIT_SECONDS; one thread weighs its grouped path as two would."""
    split = max(threads, 2)
    return SPLIT_SECONDS * split / (split - 1)


def pace(chain: CodecChain) -> float:
    """Predicted seconds per decoded byte to decode and place a chunk of this chain on one core."""
    return (_decode_ns(chain) + PLACE_NS) * 1e-9


def _decode_ns(chain: CodecChain) -> float:
    """Predicted ns per decoded byte to decode a chunk of this chain on one core (its codecs' PACE_NS)."""
    return sum(PACE_NS.get(_paced_as(c), PACE_NS["zstd"]) for c in chain.bytes_to_bytes)


def _paced_as(codec: Any) -> str:
    """The codec's key in PACE_NS: blosc by its compressor, gzip and zlib by their decoder."""
    if codec.name == "blosc":
        cname = codec.config.get("cname")
        return f"blosc:{cname}" + (":libdeflate" if cname == "zlib" and libdeflate.available() else "")
    if codec.name in ("gzip", "zlib") and libdeflate.available():
        return f"{codec.name}:libdeflate"
    return codec.name


class ChunkView:
    """Decoded bytes of one chunk → the chunk array. The common chain (no array→array codec) is
    `plain`: a view, of the bytes' stored order (`dtype`: placement's copy into the output swaps
    them, Bytes.stored_view), so whole boxes of chunks can be viewed at once (see
    CpuDevice._decode_by_blocks); anything else goes through the shared decode_raw. `reordered`:
    a transpose leaves the chunk's axes in another order than the output's (where NumPy places
    the chunk: by placement.plane_assign; no other chain pays for that check per placement).
    `stored_order`: that order, where transposes are the only array→array codecs (the host
    scatter walks the stored chunk in it, _place_rows)."""

    __slots__ = ("chain", "plain", "reordered", "dtype", "shape", "stored_order")

    def __init__(self, chain: CodecChain):
        ab = chain.array_to_bytes
        self.chain, self.shape = chain, chain.shape
        self.dtype = ab.stored_view(chain.encoded_dtype) if isinstance(ab, Bytes) else None
        self.plain = self.dtype is not None and not chain.array_to_array
        self.reordered = any(isinstance(c, Transpose) and not c.identity for c in chain.array_to_array)
        self.stored_order = None  # stored axis k is the chunk's axis stored_order[k]
        if self.dtype is not None and chain.array_to_array and all(isinstance(c, Transpose)
                                                                   for c in chain.array_to_array):
            order = np.arange(len(chain.shape))
            for codec in chain.array_to_array:  # in encoding order: each permutes the axes the last left
                order = order[list(codec.order)]
            self.stored_order = tuple(order.tolist())

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        if self.plain:
            return raw.view(self.dtype).reshape(self.shape)
        return decode_raw(np, raw.reshape(1, -1), self.chain)[0]


def chunk_buffer(make: Callable[[int], np.ndarray], nbytes: int) -> np.ndarray:
    """make(nbytes): a buffer for one decoded chunk; one too large for memory is named as such."""
    try:
        return make(nbytes)
    except MemoryError:
        raise DeviceMemoryError(f"a chunk decodes to {nbytes} bytes, more than this machine can allocate for "
                                f"one chunk (the array's chunk shape and dtype say so)") from None


def decode_bytes(chain: CodecChain, data: Any, out: np.ndarray, label: str) -> np.ndarray:
    """Run the bytes→bytes codecs backwards; the last writes into `out` (uint8, exactly the
    chunk's decoded size) or this raises. Returns `out`."""
    codecs = chain.bytes_to_bytes
    try:
        data = decode_through(codecs[1:], data, out.nbytes)
        if codecs:
            codecs[0].decode_into(data, out)
        elif len(data) != out.nbytes:
            raise CorruptDataError(f"chunk is {len(data)} bytes, expected {out.nbytes}")
        else:
            out[:] = np.frombuffer(data, dtype=np.uint8)
    except CorruptDataError as exc:
        raise CorruptDataError(f"{label}: {exc}") from None
    return out
