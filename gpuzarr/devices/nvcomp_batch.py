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
from .nvcomp_capi import DecompressOpts

# nvCOMP's algorithm names, by the name gpu_layout gives each raw stream kind
NVCOMP_ALGORITHMS = {"zstd": "Zstd", "deflate": "Deflate", "lz4": "LZ4", "snappy": "Snappy"}
STATUS_NAMES = {0: "nvcompSuccess", 10: "nvcompErrorInvalidValue", 11: "nvcompErrorNotSupported",
                12: "nvcompErrorCannotDecompress", 13: "nvcompErrorBadChecksum",
                14: "nvcompErrorCannotVerifyChecksums", 15: "nvcompErrorOutputBufferTooSmall",
                16: "nvcompErrorWrongHeaderLength", 17: "nvcompErrorAlignment", 18: "nvcompErrorChunkSizeTooLarge",
                19: "nvcompErrorCannotCompress", 20: "nvcompErrorWrongInputLength", 1000: "nvcompErrorCudaError",
                10000: "nvcompErrorInternal"}


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
    opts = DecompressOpts()
    _ok(functions[(name, "DecompressGetTempSize")](n, int(dst_size.max()), opts, ctypes.byref(temp_bytes),
                                                    int(dst_size.sum()), stream_ptr), name, "GetTempSize")
    temp = xp.empty(max(temp_bytes.value, 1), dtype=xp.uint8)
    _ok(functions[(name, "DecompressAsync")](
        _address(comp_ptrs), _address(comp_bytes), _address(out_bytes), _address(actual), n, _address(temp),
        temp_bytes.value, _address(out_ptrs), opts, _address(statuses), stream_ptr), name, "DecompressAsync")
    return Decoded(actual, statuses, np.asarray(dst_size, np.int64), np.asarray(table["chunk"]), labels,
                   (columns, comp_ptrs, comp_bytes, out_ptrs, out_bytes, temp, staging))


def check(xp: Any, decoded: list[Decoded]) -> None:
    """Every queued decode's sizes and statuses, with one copy back (waits for the stream)."""
    if not decoded:
        return
    sizes = _host(xp, xp.concatenate([d.actual for d in decoded])).astype(np.int64)
    statuses = _host(xp, xp.concatenate([d.statuses for d in decoded]))
    at = 0
    for d in decoded:
        n = d.expected.size
        got, status = sizes[at:at + n], statuses[at:at + n]
        at += n
        bad = np.flatnonzero((status != 0) | (got != d.expected))
        if bad.size:
            k = int(bad[0])
            label = d.labels[int(d.chunks[k])]
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
