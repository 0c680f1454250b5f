"""A CPU STAND-IN for the GPU engine (gpuzarr.devices.gpu.CupyEngine), for tests only.

It runs the same GpuDevice orchestration and host half (gpu_layout) as a GPU would, but executes
the device calls with NumPy and CPU codecs, and checks the contracts the real calls rely on
(every nvCOMP input and output at the alignment nvCOMP's own query states for it, and inside its
buffer; the scatter kernel's record semantics; one nvCOMP call per algorithm per batch). Passing
tests therefore show our orchestration is right; they say nothing about nvCOMP or the CUDA
kernels themselves.

Checksums run through `crc32`, a CRC of the Rocksoft model parameterised exactly as nvCOMP's
nvcompCRC32Spec_t (crc32.h: poly unreflected, init, ref_in, ref_out applied before the XOR
with xorout), fed the parameters gpuzarr passes (nvcomp_capi.CRC32_MODELS). Our belief that
those parameters are the crc32c codec's and gzip's comes from crc32.h's presets (nvcompCRC32_C,
"CRC-32/ISCSI"; nvcompCRC32, "CRC-32/PKZIP"); tests check this CRC against the crc32c package
and zlib, and the parameters against the header."""

from __future__ import annotations

import ctypes
import functools
import threading
import zlib
from collections import Counter

import numcodecs
import numpy as np
import zstandard
from numpy.lib.stride_tricks import as_strided

from gpuzarr.blosc_frames import SHUFFLE_BIT, bit_unshuffle, byte_unshuffle
from gpuzarr.codecs.bytes_to_bytes import _lz4_safe
from gpuzarr.devices.gpu_layout import ALIGN, copy_records
from gpuzarr.devices.nvcomp_batch import NVCOMP_ALGORITHMS, Decoded, check, compared
from gpuzarr.devices.nvcomp_capi import CRC32_MODELS
from gpuzarr.devices.kernels import (SCATTER_REC_COUNT, SCATTER_REC_DST, SCATTER_REC_DSTRIDE, SCATTER_REC_SHAPE,
                                     SCATTER_REC_SRC, SCATTER_REC_START, SCATTER_REC_STEP)


@functools.cache
def nvcomp_alignments() -> dict[str, tuple[int, int]]:
    """(input, output) alignment nvCOMP requires of each stream kind's decompression buffers: its
    own query's answer for the options gpuzarr decodes with (the CUDA backend), asked here and not
    taken from gpu_layout, so a layout is held to what nvCOMP says, not to gpu_layout's reading of
    it. Without the nvCOMP wheel (then gpu_layout lays every buffer out at ALIGN): ALIGN."""
    try:
        from gpuzarr.devices import nvcomp_capi as capi

        functions = capi.load()
    except (ImportError, OSError, AttributeError):
        return {kind: (ALIGN, ALIGN) for kind in NVCOMP_ALGORITHMS}
    found = {}
    for kind, name in NVCOMP_ALGORITHMS.items():
        got = capi.Alignments()
        query = functions[(name, "DecompressGetRequiredAlignments")]
        assert query(capi.DecompressOpts(backend=capi.BACKEND_CUDA), ctypes.byref(got)) == 0
        found[kind] = (got.input, got.output)
    return found


def _reflect(value: int, bits: int) -> int:
    return int(f"{value:0{bits}b}"[::-1], 2)


@functools.cache
def _crc_table(poly: int, reflected: bool) -> tuple[int, ...]:
    """The 256-entry table of `poly`, for a register shifted right (reflected) or left."""
    table = []
    for byte in range(256):
        if reflected:
            reg, top = byte, _reflect(poly, 32)
            for _ in range(8):
                reg = (reg >> 1) ^ (top if reg & 1 else 0)
        else:
            reg = byte << 24
            for _ in range(8):
                reg = ((reg << 1) ^ (poly if reg & 0x80000000 else 0)) & 0xFFFFFFFF
        table.append(reg)
    return tuple(table)


def crc32(data: bytes, poly: int, init: int, ref_in: bool, ref_out: bool, xorout: int) -> int:
    """A CRC-32 of the Rocksoft model (nvcompCRC32Spec_t's fields), byte by byte."""
    table = _crc_table(poly, ref_in)
    if ref_in:  # the register holds the reflected CRC
        reg = _reflect(init, 32)
        for byte in data:
            reg = table[(reg ^ byte) & 0xFF] ^ (reg >> 8)
        unreflected = _reflect(reg, 32)
    else:
        reg = init
        for byte in data:
            reg = table[((reg >> 24) ^ byte) & 0xFF] ^ ((reg << 8) & 0xFFFFFFFF)
        unreflected = reg
    return (_reflect(unreflected, 32) if ref_out else unreflected) ^ xorout


class StandinEngine:
    xp = np
    sm_count = 2  # a small GPU: batches of at least STREAMS_PER_SM * 2 chunks where the bounds allow

    def __init__(self):
        self.calls: Counter = Counter()
        self._local = threading.local()  # per thread, as CupyEngine's pending checks

    @property
    def decoded(self) -> list:
        """nvcomp_batch.Decoded of each call of this thread's read, checked at its finish()."""
        if not hasattr(self._local, "decoded"):
            self._local.decoded = []
        return self._local.decoded

    def empty(self, nbytes: int) -> np.ndarray:
        return np.full(nbytes, 0xA5, dtype=np.uint8)  # garbage, so unwritten bytes show

    def host_ring(self):
        return lambda nbytes: (np.empty(nbytes, dtype=np.uint8), None)

    def upload(self, data: np.ndarray, token: None) -> np.ndarray:
        self.calls["upload"] += 1
        return data.copy()

    def decompress(self, algorithm, staging, work, table, layout) -> None:
        """Decode like nvCOMP's batched call: each stream's actual size and status recorded
        (status 12, nvcompErrorCannotDecompress, where the stream does not decode), checked at
        finish() by the real engine's `check`. As nvCOMP 6.0 does it on an H200 (measured there
        on zstd, LZ4 and Deflate streams): a stream's whole output is written whatever dst_size
        says (Deflate's status is then 14, the others' success), and zstd content checksums are
        not verified; an output that would run past work fails here, as it faults the GPU there
        (cudaErrorIllegalAddress, the process's CUDA context lost)."""
        self.calls[f"decompress:{algorithm}"] += 1
        assert table["src"].size, "an empty stream table (CupyEngine's decode_batch takes none)"
        align_in, align_out = nvcomp_alignments()[algorithm]
        src, dst = np.asarray(table["src"]), np.asarray(table["dst"])
        assert not (src % align_in).any(), f"{algorithm} inputs not at multiples of {align_in}: {src % align_in}"
        assert not (dst % align_out).any(), f"{algorithm} outputs not at multiples of {align_out}: {dst % align_out}"
        assert ((src >= 0) & (src + table["src_size"] <= staging.size)).all(), "an input outside staging"
        assert ((dst >= 0) & (dst + table["dst_size"] <= work.size)).all(), "an output outside work"
        got = np.zeros(table["dst"].size, dtype=np.uint64)
        status = np.zeros(table["dst"].size, dtype=np.int32)
        for k, (src, size, dst, dsize) in enumerate(zip(table["src"], table["src_size"], table["dst"],
                                                        table["dst_size"])):
            stream = staging[src:src + size].tobytes()
            try:
                out = self._decode(algorithm, stream, int(dsize))
            except (zstandard.ZstdError, zlib.error, RuntimeError, ValueError):
                status[k] = 12
                continue
            got[k] = len(out)
            if algorithm == "deflate" and len(out) > dsize:
                status[k] = 14
            assert dst + len(out) <= work.size, f"nvCOMP would write {dst + len(out) - work.size} bytes past work"
            work[dst:dst + len(out)] = np.frombuffer(out, dtype=np.uint8)
        self.decoded.append(Decoded(got, status, table["dst_size"].astype(np.int64), np.asarray(table["chunk"]),
                                    layout.labels, ()))

    def checksum(self, model, area, table, layout) -> None:
        """nvcompBatchedCRC32Async with gpuzarr's parameters for `model`, then the engine's own
        comparison with the stored values (nvcomp_batch.compared), checked at finish()."""
        self.calls[f"checksum:{model}"] += 1
        crcs = np.array([crc32(area[src:src + size].tobytes(), *CRC32_MODELS[model])
                         for src, size in zip(table["src"].tolist(), table["size"].tolist())], np.uint32)
        stored = np.asarray(table["expected"]).astype(np.uint64)
        self.decoded.append(compared(np, crcs, np.zeros(crcs.size, np.int32), stored, table, layout.labels, model, ()))

    def _decode(self, algorithm: str, stream: bytes, dsize: int) -> bytes:
        if algorithm == "zstd":  # the whole frame, its checksum unread
            if len(stream) > 4 and stream[4] & 4:
                stream = stream[:4] + bytes([stream[4] & ~4]) + stream[5:-4]
            return zstandard.ZstdDecompressor().decompressobj().decompress(stream)
        if algorithm == "deflate":
            return zlib.decompressobj(-15).decompress(stream)
        if algorithm == "lz4":  # liblz4 with room for any block this long (255 bytes a byte)
            room = np.empty(255 * len(stream) + 64, np.uint8)
            got = _lz4_safe()(stream, room.ctypes.data, len(stream), room.size)
            if got < 0:
                raise RuntimeError(f"LZ4 error {got}")
            return room[:got].tobytes()
        raise NotImplementedError(f"no CPU stand-in for {algorithm}")

    def copy(self, src, dst, table) -> None:
        self.calls["copy"] += 1
        self._scatter(src, dst, copy_records(table), 1, 1)  # the records CupyEngine.copy launches

    def unshuffle(self, kind, work, table) -> None:
        self.calls[f"unshuffle:{kind}"] += 1
        fn = bit_unshuffle if kind == SHUFFLE_BIT else byte_unshuffle
        for s, d, n, t in zip(table["src"], table["dst"], table["size"], table["typesize"]):
            work[d:d + n] = fn(work[s:s + n].copy(), int(t))

    def scatter(self, decoded, out, records, itemsize, ndim) -> None:
        self.calls["scatter"] += 1
        self._scatter(decoded, out, records, itemsize, ndim)

    def _scatter(self, decoded, out, records, itemsize, ndim) -> None:
        src = decoded.reshape(-1).view(np.uint8)
        for rec in records:
            shape = rec[SCATTER_REC_SHAPE:SCATTER_REC_SHAPE + ndim]
            cstrides = [int(np.prod(shape[d + 1:])) * itemsize for d in range(ndim)]
            start = rec[SCATTER_REC_SRC] + sum(int(rec[SCATTER_REC_START + d]) * cstrides[d] for d in range(ndim))
            window = as_strided(src[start:], shape=(*rec[SCATTER_REC_COUNT:SCATTER_REC_COUNT + ndim], itemsize),
                                strides=(*(int(rec[SCATTER_REC_STEP + d]) * cstrides[d] for d in range(ndim)), 1))
            self._target(out, rec, itemsize, ndim)[...] = window

    def fill(self, out, records, value: bytes, itemsize, ndim) -> None:
        self.calls["fill"] += 1
        pattern = np.frombuffer(value[:itemsize], dtype=np.uint8)
        for rec in records:
            self._target(out, rec, itemsize, ndim)[...] = pattern

    @staticmethod
    def _target(out, rec, itemsize, ndim):
        assert rec[SCATTER_REC_DST] % min(itemsize, 8) == 0
        base = np.frombuffer(out, dtype=np.uint8) if out.size else np.zeros(0, np.uint8)
        counts = tuple(int(c) for c in rec[SCATTER_REC_COUNT:SCATTER_REC_COUNT + ndim])
        strides = tuple(int(s) for s in rec[SCATTER_REC_DSTRIDE:SCATTER_REC_DSTRIDE + ndim])
        view = as_strided(base[int(rec[SCATTER_REC_DST]):], shape=(*counts, itemsize), strides=(*strides, 1),
                          writeable=True)
        return view

    def finish(self) -> None:
        decoded, self._local.decoded = self.decoded, []
        check(np, decoded)

    def discard(self) -> None:
        self.decoded.clear()
