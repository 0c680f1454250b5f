"""One window of a handful of chunks, from local files on the CPU, in plain Python integers from
selection to placement: where a read is a few chunks decoded on the calling thread, the general
path's tables (Plan, Locations, FetchedBatch: a dozen array calls on arrays of 9 rows each)
cost more than the bytes they describe. A 256^2 window of the 2-D set (9 chunks in 1-4 shards)
spent ~450-575 us of host work around ~750-1000 us of decoding.

The same steps as the general path, with its own pieces where they are already plain integers:
Locator.locate_few (shard indexes, cached and version-checked as there), fetch's coalescing and
bounded preadv (its checks and messages), and the CPU device's decode_bytes. It takes only what
the general path would read on one thread in one batch (CpuDevice.inline), from arrays whose
chunks are plain views of their bytes; anything else is the general path's."""

from __future__ import annotations

import itertools
import threading
from typing import Any

import numpy as np

from . import host_lib
from .codecs.bytes_to_bytes import DIRECT_LIMITS, ZSTD_BLOCK_BYTES, Blosc, Zstd
from .devices.base import AutoDevice
from .devices.cpu import STAGING_KEPT, ChunkView, CpuDevice, decode_bytes, stored_chunk
from .fetch import LOCATE_ARRAYS, Locator, coalesce_small, fetch_bounded, fetch_files, thread_slot
from .selection import DimSelection
from .store import LocalStore


class SmallReads:
    """Small reads of one array; `applies` says whether its layout allows them at all."""

    def __init__(self, locator: Locator):
        chain, meta = locator.leaf_chain, locator.meta
        self.locator, self.store = locator, locator.store
        self.fill, self.dtype = meta.fill_value, meta.data_type.dtype
        self.chain, self.as_chunk = chain, ChunkView(chain) if chain.raw_nbytes is not None else None
        self.leaf = locator.leaf_shape
        self.applies = (type(self.store) is LocalStore and len(locator.levels) <= 1 and self.as_chunk is not None
                        and self.as_chunk.plain and not self.as_chunk.reordered)
        codecs = chain.bytes_to_bytes
        self.part = type(codecs[0]) if len(codecs) == 1 and isinstance(codecs[0], (Zstd, Blosc)) else None
        if self.applies:  # C-order element strides of a chunk, in bytes
            self._strides = tuple(int(n) * self.dtype.itemsize for n in np.cumprod((1,) + chain.shape[:0:-1])[::-1])
        self._local = threading.local()

    def read(self, window: list[DimSelection], device: Any, out_shape: tuple) -> Any:
        """The window read, or None where it is not small (the general path reads it). With
        device="auto" on a GPU, a read the CPU would decode (AutoDevice.choose: its decoded size,
        a bound on its compressed bytes, below cpu_below) is read so, then copied up once."""
        cpu = device.cpu if isinstance(device, AutoDevice) else device
        if type(cpu) is not CpuDevice or not window:  # (a 0-d array: one chunk, nothing to save)
            return None
        sharded = bool(self.locator.levels)
        terms = self.locator.shard_terms
        axes = []  # per axis, per chunk it crosses: (chunk, slice in it, slice in the output[, shard terms])
        n = 1
        for d, (sel, c) in enumerate(zip(window, self.leaf)):
            if sel.indices is not None or sel.step != 1:
                return None
            start, stop = sel.start, sel.start + sel.count
            k, pos, axis = start // c, start, []
            while pos < stop:
                end = min((k + 1) * c, stop)
                run = (k, slice(pos - k * c, end - k * c), slice(pos - start, end - start))
                axis.append(run + terms(d, k) if sharded else run)
                pos, k = end, k + 1
            axes.append(axis)
            n *= len(axis)
            if n > LOCATE_ARRAYS:
                return None
        if not cpu.inline(n, self.chain) or (cpu is not device and device.choose(n * self.chain.raw_nbytes) is not cpu):
            return None
        host = self._read([tuple(zip(*chunk)) for chunk in itertools.product(*axes)],
                          tuple(sel.count for sel in window), out_shape, cpu)
        return host if cpu is device else device.upload(host, None)

    def _read(self, chunks: list[tuple], counts: tuple, out_shape: tuple, device: CpuDevice) -> np.ndarray:
        """`chunks`: per chunk, per axis (see read) its chunk, selections and shard terms."""
        store = self.store
        if self.locator.levels:
            shards, rows = {}, []
            for chunk in chunks:
                linear = sum(chunk[4])
                shards[linear] = chunk[3]
                rows.append((linear, sum(chunk[5])))
            keys, ids, offsets, sizes, present, _ = self.locator.locate_few(shards, rows)
            labels = [keys[i] for i in ids]
            live = sorted((i for i in range(len(chunks)) if present[i]), key=lambda i: (ids[i], offsets[i]))
            ranges, members = coalesce_small(labels, offsets, sizes, live)
            batch = fetch_bounded(store, ranges, members, np.array(offsets), np.array(sizes), np.array(present),
                                   labels, self._staging, 1) if ranges else None
        else:  # a file per chunk
            encode = self.locator.meta.key_encoding.key
            labels = [encode(chunk[0]) for chunk in chunks]
            batch = fetch_files(store, labels, self._staging, 1, None)
            present = batch.present.tolist()
        out = np.empty(out_shape, self.dtype)
        view = out.reshape(counts)  # dropped axes (integer indices) kept, of length 1
        live = []
        for i, chunk in enumerate(chunks):
            if present[i]:
                live.append(i)
            else:
                view[chunk[2]] = self.fill
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
        spans = [self._span(chunks[i][1]) if part else (0, nbytes) for i in range(len(chunks))]

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
                view[chunks[i][2]] = self.as_chunk(raw)[chunks[i][1]]

        parts = device.inline_parts(len(live), self.chain)
        if parts == 1:
            decode(live)
        else:  # the calling thread takes the first part (and any no worker has started)
            device.pool.run_parts(decode, [live[k::parts] for k in range(parts)])
        return out

    def _span(self, within: tuple) -> tuple[int, int]:
        """The bytes of a decoded chunk that its window `within` (a slice per axis) reads: from
        its first element's first to one past its last element's."""
        strides = self._strides
        return (sum(s.start * stride for s, stride in zip(within, strides)),
                self.dtype.itemsize + sum((s.stop - 1) * stride for s, stride in zip(within, strides)))

    def _staging(self, nbytes: int) -> np.ndarray:
        """This thread's buffer for a small read's compressed chunks, kept as the CPU device keeps its own."""
        return thread_slot(self._local, "staging", nbytes, STAGING_KEPT)
