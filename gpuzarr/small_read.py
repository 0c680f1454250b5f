"""A window of up to LOCATE_ARRAYS chunks, or a batch of windows of as many in all, from local
files on the CPU, in plain Python integers from selection to placement: where a read is a few
chunks, the general path's tables (Plan, Locations, FetchedBatch: a dozen array calls on arrays
of 9 rows each) cost more than the bytes they describe. A 256^2 window of the 2-D set (9 chunks
in 1-4 shards) spent ~450-575 us of host work around ~750-1000 us of decoding.

The same steps as the general path, with its own pieces where they are already plain integers:
Locator.locate_few (shard indexes, cached and version-checked as there), fetch's coalescing and
bounded preadv (its checks and messages), and the CPU device's decode_bytes. It takes arrays
whose chunks are plain views of their bytes, or transposed ones; anything else is the general
path's. Windows of many chunks are read, decoded and placed by the host library in one call a
part instead (_direct), from the page cache only: what the disk must give goes the Python way,
many reads in flight."""

from __future__ import annotations

import ctypes
import itertools
import os
import threading
from typing import Any

import numpy as np

from . import host_lib
from .codecs.bytes_to_bytes import DIRECT_LIMITS, ZSTD_BLOCK_BYTES, Blosc, Zstd
from .devices.base import AutoDevice
from .devices.cpu import STAGING_KEPT, ChunkView, CpuDevice, decode_bytes, host_codec, host_swap, part_ends, \
    stored_chunk
from .devices.kernels import SCATTER_REC_COUNT, SCATTER_REC_DST, SCATTER_REC_DSTRIDE, SCATTER_REC_LEN, \
    SCATTER_REC_SHAPE, SCATTER_REC_START, SCATTER_REC_STEP
from .errors import CorruptDataError
from .fetch import LOCATE_ARRAYS, Locator, coalesce_small, fetch_bounded, fetch_files, thread_slot
from .placement import plane_assign
from .plan import Boxes
from .selection import DimSelection
from .store import LocalStore


# Windows of at least DIRECT_MIN_CHUNKS chunks of at most DIRECT_CHUNK_BYTES each go through
# the host library in one call (_direct): below that size Python's ~5-8 us a chunk (the decode
# call, a NumPy assignment, the GIL retaken) weigh against a decode of ~14 us. Paired A/B, same
# process (ratios of time, direct / Python): 8 KiB zstd chunk files, 300^2 windows (~32 chunks)
# 0.66-0.71; 8 KiB chunks in shards, 256^2 windows 0.87; 32 KiB chunks 1.02-1.04, 128-512 KiB
# 1.04-1.10 (NumPy's copies place big chunks faster; the tables cost ~20 us); 1-2 chunks 1.3.
# Larger chunks go through it from DIRECT_MIN_LARGE chunks on, where Python's per-chunk work
# (and two threads contending for the GIL between chunks) outweighs NumPy's faster copies:
# unaligned windows of k^2 chunks, 128 KiB uint16: 4 chunks 1.12, 9 1.04, 16 0.93, 25 0.89;
# 256 KiB RGB uint8: 4 1.04, 9 0.90, 16 0.86; 16 of 128 KiB in 5-D (a sixteenth of each
# placed) 0.85; 33 of 64 KiB, 1-D 0.91
DIRECT_CHUNK_BYTES = 16 << 10
DIRECT_MIN_CHUNKS = 4
DIRECT_MIN_LARGE = 9
# Windows of up to LOCATE_ARRAYS chunks of up to WHOLE_CHUNK_MAX each are read here whatever
# their predicted decode time (CpuDevice.inline): each chunk decoded into a buffer that stays in
# cache and placed at once, the chunks spread over the threads (inline_parts), beat the general
# path's grouped tasks, whose rows outgrow the caches (window / general path, alternated
# in-process, 2 cores: 4 chunks of 256 KiB bool 0.38, 32 of 64 KiB uint8 0.66, 4 of 128 KiB
# complex64 0.73, 16 of 128 KiB in 5-D 0.80; 25-49 chunks of 32 KiB, 2-D zstd 0.58-0.67, float16
# 0.54-0.67, zstd + crc32c 0.53-0.68, order F 0.70-0.85, gzip 0.84-0.87; 64 of 8 KiB 0.58);
# larger chunks take the general path, which sizes their buffers with care (4 of 32 MiB were 0.78).
# A read decoding more than WHOLE_READ_MAX bytes that would be decoded here on one thread (blosc-lz4
# and LZ4, bound by memory: see CpuDevice.inline_parts) takes the general path, whose tasks run
# on every core (v2 3-D blosc-lz4 full read, 64 chunks of 1 MiB: 0.49 of this path's time; a
# read at step 3 of 3.6 MiB decoding 32 MiB, 1.49x tensorstore's time here, 0.7 there). On
# several threads this path stays ahead however large the window (general / this path, quiet,
# medians of 25: 16 MiB full reads of 64 chunks of 256 KiB, 3-D uint8 and RGB, 1.08; 32 MiB of
# 512 KiB float64 1.03; 12 MiB of bitshuffled float32 1.09; 6 MiB of 128 KiB uint16 1.09)
WHOLE_CHUNK_MAX = 4 << 20
WHOLE_READ_MAX = 4 << 20


class SmallReads:
    """Small reads of one array; `applies` says whether its layout allows them at all."""

    def __init__(self, locator: Locator):
        chain, meta = locator.leaf_chain, locator.meta
        self.locator, self.store = locator, locator.store
        self.fill, self.dtype = meta.fill_value, meta.data_type.dtype
        self.chain, self.as_chunk = chain, ChunkView(chain) if chain.raw_nbytes is not None else None
        self.leaf = locator.leaf_shape
        # chunks of the output's axis order, or transposed (a v2 order "F", a transpose codec: whole
        # chunks decoded, placed by the host scatter walking them in their stored order; a 256^2
        # window of 128 KiB zstd chunks 0.74 -> 0.56 ms against the general path with NumPy's
        # placement, tensorstore's 0.68)
        as_chunk = self.as_chunk
        self.applies = (type(self.store) is LocalStore and len(locator.levels) <= 1 and as_chunk is not None
                        and (as_chunk.plain or as_chunk.stored_order is not None))
        plain = self.applies and as_chunk.plain
        codecs = chain.bytes_to_bytes
        self.part = type(codecs[0]) if plain and len(codecs) == 1 and isinstance(codecs[0], (Zstd, Blosc)) else None
        if plain:  # C-order element strides of a chunk, in bytes
            self._strides = tuple(int(n) * self.dtype.itemsize for n in np.cumprod((1,) + chain.shape[:0:-1])[::-1])
        # the host library reads, decodes and places a window in one call (see _direct), from
        # direct_min chunks on
        self.direct = None
        self.direct_min = DIRECT_MIN_CHUNKS if self.applies and chain.raw_nbytes <= DIRECT_CHUNK_BYTES else \
            DIRECT_MIN_LARGE
        codec = host_codec(chain)
        if self.applies and codec is not None and host_lib.built() and codec.decoder(chain.raw_nbytes) is not None:
            swap = host_swap(self.as_chunk, np.empty(0, self.dtype))
            self.direct = None if swap is None else (codec, swap)
        self._local = threading.local()

    def read(self, windows: list[list[DimSelection]] | Boxes, batched: bool, device: Any, out_shape: tuple) -> Any:
        """The read of `windows` (one, or with `batched` a batch, stacked on a first axis, a chunk
        windows share read once; Boxes: a loader's batch by its starts, vindex's points), or None
        where it is not small (the general path reads it). With device="auto" on a GPU, a read
        the CPU would decode (AutoDevice.choose: its decoded size, a bound on its compressed
        bytes, below cpu_below) is read so, then copied up once."""
        cpu = device.cpu if isinstance(device, AutoDevice) else device
        if type(cpu) is not CpuDevice:
            return None
        if isinstance(windows, Boxes):  # (always a batch)
            if windows.starts.shape[0] > LOCATE_ARRAYS:
                return None
            windows, batched = windows.selections(), True
        if not windows[0]:  # (a 0-d array: one chunk, nothing to save)
            return None
        n = 0
        for window in windows:  # counted first: a window may cross 2**30 chunks
            count = 1
            for sel, c in zip(window, self.leaf):  # (with steps too: each element past a chunk's width in its own)
                if sel.indices is not None or sel.step < 1:
                    return None
                count *= min(sel.count, (sel.start + (sel.count - 1) * sel.step) // c - sel.start // c + 1)
                if n + count > LOCATE_ARRAYS:
                    return None
            n += count
        nbytes = self.chain.raw_nbytes
        counts = tuple(sel.count for sel in windows[0])
        if not cpu.inline(n, self.chain) and not (
                nbytes <= WHOLE_CHUNK_MAX
                and (n * nbytes <= WHOLE_READ_MAX
                     or cpu.inline_parts(n, self.chain) > 1)):
            return None
        if cpu is not device and device.choose(n * nbytes) is not cpu:
            return None
        if not batched:
            chunks = self._chunks(windows[0], None)
        else:  # a chunk windows share is read and decoded once, then placed in each
            shared: dict = {}
            for w, window in enumerate(windows):
                for chunk in self._chunks(window, w):
                    if chunk[0] in shared:
                        shared[chunk[0]][1].extend(chunk[1])
                    else:
                        shared[chunk[0]] = chunk
            chunks = list(shared.values())
        host = self._read(chunks, ((len(windows),) if batched else ()) + counts, out_shape, cpu)
        return host if cpu is device else device.upload(host, None)

    def _chunks(self, window: list[DimSelection], w: int | None) -> list[tuple]:
        """Per chunk the window crosses: its coordinates, its one place (per axis the selection in
        it and in the output, led by the window's number `w` in a batch; see _read) and per axis
        its shard terms."""
        sharded = bool(self.locator.levels)
        terms = self.locator.shard_terms
        axes = []  # per axis, per chunk it crosses: (chunk, slice in it, slice in the output[, shard terms])
        for d, (sel, c) in enumerate(zip(window, self.leaf)):
            start, step, count = sel.start, sel.step, sel.count
            i, axis = 0, []
            while i < count:  # elements i..j-1 lie in chunk k
                pos = start + i * step
                k = pos // c
                j = min(count, -(-((k + 1) * c - start) // step))
                run = (k, slice(pos - k * c, start + (j - 1) * step - k * c + 1, step), slice(i, j))
                axis.append(run + terms(d, k) if sharded else run)
                i = j
            axes.append(axis)
        lead = () if w is None else (w,)
        return [(chunk[0], [(chunk[1], lead + chunk[2])]) + chunk[3:]
                for chunk in (tuple(zip(*crossed)) for crossed in itertools.product(*axes))]

    def _read(self, chunks: list[tuple], counts: tuple, out_shape: tuple, device: CpuDevice) -> np.ndarray:
        """`chunks`: per chunk, its coordinates, where it is placed (a list of its selection and
        the output's, per axis) and per axis its shard terms (see _chunks)."""
        versions: dict = {}
        try:
            out = self._read_chunks(chunks, counts, out_shape, device, versions)
        except CorruptDataError:  # where a shard changed meanwhile, that (ChangedError) is what happened
            self.locator.check_unchanged(versions)
            raise
        self.locator.check_unchanged(versions)
        return out

    def _read_chunks(self, chunks: list[tuple], counts: tuple, out_shape: tuple, device: CpuDevice,
                     versions: dict) -> np.ndarray:
        """_read's work; `versions` gets the shards' versions (see Locator.check_unchanged)."""
        store = self.store
        # the device's (output_pool): a read of 32 MiB or more, as a full read of 64 chunks of
        # 512 KiB is, from np.empty, faulted in fresh pages each time (15.1 ms against 9.1)
        out = device.empty(out_shape, self.dtype)
        view = out.reshape(counts)  # dropped axes (integer indices) kept, of length 1
        n = len(chunks)
        if self.locator.levels:
            shards, rows = {}, []
            for chunk in chunks:
                linear = sum(chunk[3])
                shards[linear] = chunk[2]
                rows.append((linear, sum(chunk[4])))
            keys, ids, offsets, sizes, present, _, seen = self.locator.locate_few(shards, rows)
            versions.update(seen)
            live = sorted((i for i in range(n) if present[i]), key=lambda i: (ids[i], offsets[i]))
            if self.direct and len(live) >= self.direct_min and self._direct(
                    keys, [i for i in range(n) if not present[i]] + live,
                    [ids[i] if present[i] else -1 for i in range(n)], offsets, sizes, chunks, view, device):
                return out
            labels = [keys[i] for i in ids]
            ranges, members = coalesce_small(labels, offsets, sizes, live)  # (a cold window: fewer, larger disk reads)
            batch = fetch_bounded(store, ranges, members, np.array(offsets), np.array(sizes), np.array(present),
                                   labels, self._staging, 1) if ranges else None
        else:  # a file per chunk
            encode = self.locator.meta.key_encoding.key
            labels = [encode(chunk[0]) for chunk in chunks]
            if self.direct and n >= self.direct_min and self._direct(labels, range(n), range(n), [0] * n, [-1] * n,
                                                                       chunks, view, device):
                return out
            batch = fetch_files(store, labels, self._staging, 1, None)
            present = batch.present.tolist()
        live = []
        for i, chunk in enumerate(chunks):
            if present[i]:
                live.append(i)
            else:
                for _, outer in chunk[1]:
                    view[outer] = self.fill
        if not live:
            return out
        starts, lengths = batch.offsets.tolist(), batch.sizes.tolist()
        data = memoryview(batch.staging)
        nbytes = self.chain.raw_nbytes
        stored = not self.chain.bytes_to_bytes  # placed from where fetch put them (sizes checked): no copy
        # a lone zstd or blosc codec: a chunk is decoded only in the blocks that hold the bytes
        # placed from it (host_lib.decode_span: zstd's up to the last, blosc's those alone),
        # which for chunks over one block (zstd's hold at most 128 KiB) saves the others
        first = live[0]
        if self.part is Blosc and lengths[first] >= 16 and int.from_bytes(
                data[starts[first] + 8:starts[first] + 12], "little") >= nbytes:
            self.part = None  # frames of one block (c-blosc sizes blocks by the chunk and settings: alike in an array)
        part = self.part if self.part is not Zstd or nbytes > ZSTD_BLOCK_BYTES else None
        spans = [self._span(chunk[1]) if part else (0, nbytes) for chunk in chunks]
        # chunks in a transpose's axis order: placed by the host scatter, which walks them in it
        # (register tiles), where it can; NumPy's strided copy otherwise
        swap = host_swap(self.as_chunk, view) if self.as_chunk.reordered else None
        records, rec_lo = self._records([chunk[1] for chunk in chunks], view) if swap is not None else (None, None)
        ndim, itemsize = len(self.leaf), self.dtype.itemsize
        as_chunk, reordered = self.as_chunk, self.as_chunk.reordered

        def decode(which: list[int]) -> None:
            scratch = thread_slot(self._local, "scratch", nbytes)
            decoder = part.decoder(nbytes) if part and host_lib.built() else None  # this thread's (zstd: its context)
            for i in which:
                start = starts[i]
                frame = data[start:start + lengths[i]]
                lo, hi = spans[i]
                if stored:
                    raw = stored_chunk(batch, i, nbytes)
                elif decoder and (lo or hi < nbytes) and host_lib.decode_span(
                        decoder, host_lib.address(frame), len(frame), scratch, lo, hi, DIRECT_LIMITS):
                    raw = scratch
                else:
                    raw = decode_bytes(self.chain, frame, scratch, labels[i])
                if records is not None:
                    host_lib.scatter(raw, view, records[rec_lo[i]:rec_lo[i + 1]], ndim, itemsize, swap)
                    continue
                decoded = as_chunk(raw)
                for inner, outer in chunks[i][1]:
                    if reordered:
                        plane_assign(view, outer, decoded[inner])
                    else:
                        view[outer] = decoded[inner]

        parts = device.inline_parts(len(live), self.chain)
        if parts == 1:
            decode(live)
        else:  # the calling thread takes the first part (and any no worker has started)
            device.pool.run_parts(decode, [live[k::parts] for k in range(parts)])
        return out

    def _direct(self, paths: list[str], order: Any, file_of: list[int], offsets: list[int], sizes: list[int],
                chunks: list[tuple], view: np.ndarray, device: CpuDevice) -> bool:
        """The window read, checked, decoded and placed by the host library
        (host_lib.read_decode_scatter), one call a part (CpuDevice.inline_parts), the GIL released
        once each, the fill value written where a chunk is absent or its file is not there.
        `paths`: chunk i's file is paths[file_of[i]] (absent where -1), sizes[i] bytes at
        offsets[i] of it, or the whole file where -1; chunks are taken in `order` (a shard's by
        offset: back to back ones are read at once). False where the library gives a part back
        (a file short or unreadable, a frame its checks refuse or that does not decode: counted
        in host_lib.FALLBACKS): the Python path then reads the window again, which says what
        is wrong."""
        codec, swap = self.direct
        nbytes, itemsize = self.chain.raw_nbytes, self.dtype.itemsize
        order = list(order)
        placed = [chunks[i][1] for i in order]
        n, ndim = len(order), len(self.leaf)
        records, rec_lo = self._records(placed, view)
        used = sorted({file_of[i] for i in order if file_of[i] >= 0})
        rank = {f: k for k, f in enumerate(used)}
        names = (ctypes.c_char_p * len(used))(*(os.fsencode(self.store.path(paths[f])) for f in used))
        files = np.array([rank.get(file_of[i], -1) for i in order], np.int64)
        wants = np.array([sizes[i] for i in order], np.int64)
        ends = part_ends(wants, nbytes)
        at = np.array([offsets[i] for i in order], np.int64)
        lengths = np.empty(n, np.int64)
        codes: list[int] = []

        def run(span: tuple[int, int]) -> None:
            lo, hi = span
            code, _, _ = host_lib.read_decode_scatter(
                names, files[lo:hi], at[lo:hi], wants[lo:hi], self._staging(int(ends[hi] - ends[lo])),
                codec.decoder(nbytes),  # this thread's (zstd: its context)
                thread_slot(self._local, "scratch", nbytes), view, records, rec_lo[lo:hi + 1], ndim, itemsize, swap,
                DIRECT_LIMITS, lengths[lo:hi], self.store.cache_only)
            codes.append(code)

        live = int(np.count_nonzero(files >= 0))
        parts = device.inline_parts(live, self.chain) if live > 1 else 1
        if parts == 1:
            run((0, n))
        else:  # parts of equal compressed bytes
            cuts = np.searchsorted(ends, ends[-1] * np.arange(1, parts) / parts).tolist()
            bounds = [0, *cuts, n]
            device.pool.run_parts(run, [(lo, hi) for lo, hi in zip(bounds, bounds[1:]) if hi > lo])
        failed = [code for code in codes if code]
        if failed:
            if failed[0] != host_lib.NOT_CACHED:  # (the Python path's reads of the disk are deeper: not a fallback)
                host_lib.count_fallback(host_lib.PART_FALLBACKS[failed[0]])
            return False
        for k in np.flatnonzero(lengths < 0).tolist():  # absent, or a chunk file not there
            for _, outer in placed[k]:
                view[outer] = self.fill
        return True

    def _records(self, places: list[list[tuple]], view: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The host scatter's records of chunks placed at `places` (per chunk, each place its
        selection and the output's, see _chunks) into `view`, SRC 0, and where each chunk's records
        begin (rec_lo: chunk i's are rows rec_lo[i]..rec_lo[i+1]-1): each chunk's bytes walked in its
        stored axis order (a transpose's: every per-axis field permuted so, as
        gpu_layout.scatter_records does)."""
        pairs = [pair for chunk in places for pair in chunk]
        n, ndim = len(pairs), len(self.leaf)
        rec_lo = np.array([0, *itertools.accumulate(len(chunk) for chunk in places)], np.int64)
        records = np.zeros((n, SCATTER_REC_LEN), np.int64)
        # per place: its first element, count and step per axis in the chunk, its first in the
        # output (a batch's window axis first, a number)
        table = np.array([[s.start for s in inner] + [len(range(s.start, s.stop, s.step)) for s in inner]
                          + [s.step for s in inner] + [o if type(o) is int else o.start for o in outer]
                          for inner, outer in pairs], np.int64).reshape(n, 3 * ndim + view.ndim)
        strides = np.array(view.strides, np.int64)
        records[:, SCATTER_REC_DST] = table[:, 3 * ndim:] @ strides
        strides = strides[view.ndim - ndim:]
        records[:, SCATTER_REC_SHAPE:SCATTER_REC_SHAPE + ndim] = self.leaf
        records[:, SCATTER_REC_START:SCATTER_REC_START + ndim] = table[:, :ndim]
        records[:, SCATTER_REC_COUNT:SCATTER_REC_COUNT + ndim] = table[:, ndim:2 * ndim]
        records[:, SCATTER_REC_STEP:SCATTER_REC_STEP + ndim] = table[:, 2 * ndim:3 * ndim]
        records[:, SCATTER_REC_DSTRIDE:SCATTER_REC_DSTRIDE + ndim] = strides
        stored = self.as_chunk.stored_order
        if stored is not None:
            for field in (SCATTER_REC_SHAPE, SCATTER_REC_START, SCATTER_REC_STEP, SCATTER_REC_COUNT,
                          SCATTER_REC_DSTRIDE):
                records[:, field:field + ndim] = records[:, field:field + ndim][:, list(stored)]
        return records, rec_lo

    def _span(self, places: list[tuple]) -> tuple[int, int]:
        """The bytes of a decoded chunk that its `places` (each its selection, a slice per axis,
        and the output's) read: from the first element's first to one past the last element's."""
        strides = self._strides
        return (min(sum(s.start * stride for s, stride in zip(inner, strides)) for inner, _ in places),
                self.dtype.itemsize + max(sum((s.stop - 1) * stride for s, stride in zip(inner, strides))
                                          for inner, _ in places))

    def _staging(self, nbytes: int) -> np.ndarray:
        """This thread's buffer for a small read's compressed chunks, kept as the CPU device keeps its own."""
        return thread_slot(self._local, "staging", nbytes, STAGING_KEPT)
