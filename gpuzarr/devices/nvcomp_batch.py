"""One nvCOMP decode of a whole batch of streams through the batched C API (nvcomp_capi), with
its tables built on the device: the stream table goes up in one copy, the pointer arrays are the
staging and work base addresses plus its offsets, and nvCOMP writes each stream's actual decoded
size and status into device arrays, checked later with one copy back per read. Written against
the array namespace `xp` (CuPy on a GPU; NumPy in the tests, where "device" addresses are host
addresses and a stand-in C function does the decoding)."""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import CorruptDataError
from .nvcomp_capi import BACKEND_CUDA, CRC32_ONLY_SEGMENT, CRC32KernelConf, DecompressOpts, crc32_opts

# nvCOMP's algorithm names, by the name gpu_layout gives each raw stream kind
NVCOMP_ALGORITHMS = {"zstd": "Zstd", "deflate": "Deflate", "lz4": "LZ4", "snappy": "Snappy"}
STATUS_NAMES = {0: "nvcompSuccess", 10: "nvcompErrorInvalidValue", 11: "nvcompErrorNotSupported",
                12: "nvcompErrorCannotDecompress", 13: "nvcompErrorBadChecksum",
                14: "nvcompErrorCannotVerifyChecksums", 15: "nvcompErrorOutputBufferTooSmall",
                16: "nvcompErrorWrongHeaderLength", 17: "nvcompErrorAlignment", 18: "nvcompErrorChunkSizeTooLarge",
                19: "nvcompErrorCannotCompress", 20: "nvcompErrorWrongInputLength", 21: "nvcompErrorBatchSizeTooLarge",
                22: "nvcompErrorSubChunkCountTooLarge", 23: "nvcompErrorSubChunkCountTooSmall",
                24: "nvcompErrorOutputBufferAlignmentTooSmall", 1000: "nvcompErrorCudaError",
                10000: "nvcompErrorInternal"}  # every nvcompStatus_t of shared_types.h (a test compares)


BAD_CHECKSUM = 13  # nvcompErrorBadChecksum: the status a checksum that does not match is given
# what a mismatch of each checksum says: the crc32c codec's as the CPU path's grouped zstd reads
# word it (strip_crc32c); gzip's as "bad gzip stream", as the CPU path's zlib error begins
MISMATCH = {"crc32c": "{label} (crc32c codec): checksum mismatch (stored {stored:#010x}, computed {got:#010x})",
            "crc32": "{label}: bad gzip stream (CRC-32 mismatch: stored {stored:#010x}, computed {got:#010x})"}


def status_name(code: int) -> str:
    return STATUS_NAMES.get(int(code), f"nvCOMP status {int(code)}")


@dataclass
class Decoded:
    """A queued decode: where nvCOMP will have written the streams' sizes and statuses."""

    actual: Any  # (n,) uint64 on the device: bytes each stream decoded to
    statuses: Any  # (n,) int32 on the device
    expected: np.ndarray  # (n,) the chunk sizes
    chunks: np.ndarray  # (n,) the batch chunk of each stream
    labels: list  # per batch chunk: its key
    keep: tuple  # device buffers nvCOMP reads until it is done
    kind: str = "size"  # or a key of MISMATCH: `actual` holds computed checksums, `expected` stored ones
    host: Any = None  # (2, n) int64 host copy of (actual, statuses) and the event after its copy (copy_back)


def decode_batch(xp: Any, functions: dict, algorithm: str, staging: Any, work: Any, table: dict,
                 labels: list, stream_ptr: int) -> Decoded:
    """Queue nvCOMP's decode of every stream of `table` (offsets into `staging` and `work`) on
    the stream. Raises for a call nvCOMP refuses outright (its status names the reason)."""
    name = NVCOMP_ALGORITHMS[algorithm]
    n = int(table["src"].size)
    dst_size = table["dst_size"]
    columns = xp.asarray(np.stack([table["src"], table["src_size"], table["dst"], dst_size]).astype(np.uint64))
    comp_ptrs = columns[0] + np.uint64(_address(staging))
    comp_bytes = xp.ascontiguousarray(columns[1])
    out_ptrs = columns[2] + np.uint64(_address(work))
    out_bytes = xp.ascontiguousarray(columns[3])
    actual = xp.zeros(n, dtype=xp.uint64)
    statuses = xp.zeros(n, dtype=xp.int32)
    temp_bytes = ctypes.c_size_t()
    opts = DecompressOpts(backend=BACKEND_CUDA)
    _ok(functions[(name, "DecompressGetTempSize")](n, int(dst_size.max()), opts, ctypes.byref(temp_bytes),
                                                    int(dst_size.sum()), stream_ptr), name, "GetTempSize")
    temp = xp.empty(max(temp_bytes.value, 1), dtype=xp.uint8)
    _ok(functions[(name, "DecompressAsync")](
        _address(comp_ptrs), _address(comp_bytes), _address(out_bytes), _address(actual), n, _address(temp),
        temp_bytes.value, _address(out_ptrs), opts, _address(statuses), stream_ptr), name, "DecompressAsync")
    return Decoded(actual, statuses, np.asarray(dst_size, np.int64), np.asarray(table["chunk"]), labels,
                   (columns, comp_ptrs, comp_bytes, out_ptrs, out_bytes, temp, staging))


def checksum_batch(xp: Any, functions: dict, model: str, area: Any, table: dict, labels: list,
                   stream_ptr: int) -> Decoded:
    """Queue nvCOMP's CRC (crc32.h, `model` of nvcomp_capi.CRC32_MODELS) of every message of
    `table` (src offsets into `area`, size) and its comparison with the stored values, on the
    device: a mismatch becomes status BAD_CHECKSUM, read back with the decode statuses."""
    n = int(table["src"].size)
    columns = xp.asarray(np.stack([table["src"], table["size"], table["expected"]]).astype(np.uint64))
    pointers = columns[0] + np.uint64(_address(area))
    sizes = xp.ascontiguousarray(columns[1])
    crcs = xp.zeros(n, dtype=xp.uint32)
    statuses = xp.zeros(n, dtype=xp.int32)
    opts = crc32_opts(model)
    conf = CRC32KernelConf()  # a size given, not deduced: no synchronisation, stream ignored (crc32.h)
    _ok(functions[("CRC32", "GetHeuristicConf")](None, n, ctypes.byref(conf), max(int(table["size"].max()), 1),
                                                 stream_ptr), "CRC32", "GetHeuristicConf")
    opts.kernel_conf = conf
    _ok(functions[("CRC32", "Async")](_address(pointers), _address(sizes), n, _address(crcs), opts,
                                      CRC32_ONLY_SEGMENT, _address(statuses), stream_ptr), "CRC32", "Async")
    return compared(xp, crcs, statuses, columns[2], table, labels, model, (columns, pointers, sizes, area))


def compared(xp: Any, crcs: Any, statuses: Any, stored: Any, table: dict, labels: list, model: str,
             keep: tuple) -> Decoded:
    """The checksums nvCOMP computed against the stored ones, on the device, as a Decoded whose
    statuses say BAD_CHECKSUM where they differ (shared with the tests' stand-in)."""
    computed = crcs.astype(xp.uint64)
    statuses = xp.where((statuses == 0) & (computed != stored), BAD_CHECKSUM, statuses).astype(xp.int32)
    return Decoded(computed, statuses, np.asarray(table["expected"], np.int64), np.asarray(table["chunk"]), labels,
                   keep, model)


def copy_back(xp: Any, d: Decoded) -> None:
    """Queue the copy of `d`'s sizes and statuses into page-locked host memory right behind the
    call that writes them, and an event after it: checking `d` later waits for that event alone,
    not for the work queued on the stream since (a blocking copy then would wait for all of it,
    and the host could prepare no later batch while the GPU decodes). NumPy (the tests): the
    values are there already."""
    both = xp.stack([d.actual.astype(xp.int64), d.statuses.astype(xp.int64)])
    if not hasattr(both, "get"):
        d.host = (np.array(both), None)
        return
    memory = xp.cuda.alloc_pinned_memory(max(both.nbytes, 1))
    host = np.frombuffer(memory, np.int64, both.size).reshape(both.shape)  # keeps `memory` alive
    both.get(out=host, blocking=False)  # on the current stream, as the call
    event = xp.cuda.Event(block=True, disable_timing=True)
    event.record()
    d.host = (host, event)


def check(xp: Any, decoded: list[Decoded]) -> None:
    """Every queued decode's sizes and statuses and every checksum's status: those copied back
    already (copy_back) once their events are done, the others with one copy back (which waits
    for the stream); the first failure in queue order is raised, naming its chunk."""
    if not decoded:
        return
    waiting = [d for d in decoded if d.host is None]
    if waiting:
        both = _host(xp, xp.stack([xp.concatenate([d.actual for d in waiting]).astype(xp.int64),
                                   xp.concatenate([d.statuses for d in waiting]).astype(xp.int64)]))
        at = 0
        for d in waiting:
            d.host, at = (both[:, at:at + d.expected.size], None), at + d.expected.size
    for d in decoded:
        if d.host[1] is not None:
            d.host[1].synchronize()
    for d in decoded:
        got, status = d.host[0][0], d.host[0][1]
        bad = np.flatnonzero((status != 0) | (got != d.expected))
        if bad.size:
            k = int(bad[0])
            label = d.labels[int(d.chunks[k])]
            if d.kind in MISMATCH:
                if status[k] == BAD_CHECKSUM:
                    raise CorruptDataError(MISMATCH[d.kind].format(label=label, stored=int(d.expected[k]),
                                                                   got=int(got[k])))
                raise CorruptDataError(f"{label}: nvCOMP could not compute its {d.kind} ({status_name(status[k])})")
            if status[k] != 0:
                raise CorruptDataError(f"{label}: nvCOMP could not decode it ({status_name(status[k])})")
            raise CorruptDataError(f"{label}: decodes to {int(got[k])} bytes, the chunk needs {int(d.expected[k])}")


def _ok(status: int, name: str, call: str) -> None:
    if status != 0:
        raise RuntimeError(f"nvcompBatched{name}{call}: {status_name(status)}")


def _address(array: Any) -> int:
    """The device address of a CuPy array (the host address of a NumPy one, in the tests)."""
    data = array.data
    return int(data.ptr) if hasattr(data, "ptr") else int(array.ctypes.data)


def _host(xp: Any, array: Any) -> np.ndarray:
    return array.get() if hasattr(array, "get") else np.asarray(array)
