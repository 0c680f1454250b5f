"""gpuzarr._host_lib, the one compiled part (setup.py; kernels/host_scatter.cpp and
kernels/host_calls.cpp): per-chunk loops of the CPU path run in C, each in one ctypes call with
the GIL released once: the placement of a part's pieces and the fills of its absent chunks
(the GPU kernel's own scatter and fill records, reduced by its core), the blosc, LZ4 and zstd
decoder calls of a part (alone, or each followed by its chunk's placement; blosc frames of the
zlib format inflated by libdeflate and unshuffled there, kernels/host_blosc.cpp), the syscalls that
read a part's chunk files or a read's shard indexes, and all of that at once for a part of
local files (read, check, decode, place: gpz_read_decode_scatter).

Why: each NumPy assignment or ctypes call of such a loop drops and retakes the GIL. With a second
thread that wants it, that is a context switch each (measured ~20 us on the shared 2-core VMs;
438 a read of 64 windows of v3 uncompressed 128^2 chunks, where 2 threads then took 10 ms more
CPU than one, and were slower). Where the library was not built (no C++ compiler at install),
the loops run in Python as before: counted in FALLBACKS by loop, and logged once."""

from __future__ import annotations

import ctypes
import importlib.machinery
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from . import forksafe

log = logging.getLogger("gpuzarr")

# loops run in Python for want of the library: "scatter", "blosc", "lz4", "zstd", "files"; and
# parts the library gave back (PART_FALLBACKS)
FALLBACKS: Counter = Counter()
_LOCK = forksafe.Lock()

_NAME = "_host_lib"
VERSION = 16  # gpz_host_version() of the sources this module calls
_i64, _ptr = ctypes.c_int64, ctypes.c_void_p
_lib: list = []  # [the loaded library, or None where it is missing or stale]


def _load() -> Any:
    """The built library with its prototypes set, or None (logged once)."""
    from .devices.kernels import SCATTER_REC_LEN  # here: the codecs import this module, and devices imports them

    folder = Path(__file__).resolve().parent
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = folder / (_NAME + suffix)
        if path.is_file():
            break
    else:
        log.warning("gpuzarr: %s was not built (no C++ compiler at install?): the CPU places chunks and calls "
                    "its decoders chunk by chunk from Python, slower where another thread reads at once", _NAME)
        return None
    lib = ctypes.CDLL(str(path))
    lib.gpz_host_rec_len.restype = _i64
    version = getattr(lib, "gpz_host_version", None)
    if version is None or version() != VERSION or lib.gpz_host_rec_len() != SCATTER_REC_LEN:
        log.warning("gpuzarr: %s was built from other sources than this gpuzarr's; rebuild it (pip install .): "
                    "the CPU runs its loops in Python meanwhile", path)  # a stale build beside newer sources
        return None
    lib.gpz_scatter_host.argtypes = [_ptr, _ptr, _ptr, _i64, ctypes.c_int, _i64, ctypes.c_int]
    lib.gpz_scatter_host.restype = ctypes.c_int
    lib.gpz_fill_host.argtypes = [_ptr, _ptr, _i64, ctypes.c_int, _i64, ctypes.c_char_p]
    lib.gpz_fill_host.restype = None
    lib.gpz_each_blosc.argtypes = [_ptr, _ptr, _ptr, _i64, _i64, _ptr]
    lib.gpz_each_blosc.restype = None
    lib.gpz_each_lz4.argtypes = [_ptr, _ptr, _ptr, _ptr, _i64, ctypes.c_int, _ptr]
    lib.gpz_each_lz4.restype = None
    lib.gpz_each_zstd.argtypes = [_ptr, _ptr, _ptr, _ptr, _ptr, _i64, _i64, _ptr]
    lib.gpz_each_zstd.restype = None
    lib.gpz_decode_scatter.argtypes = [ctypes.c_int, _ptr, _ptr, _ptr, _ptr, _i64, _i64, _ptr, _ptr, _ptr, _ptr,
                                       ctypes.c_int, _i64, ctypes.c_int, _ptr]
    lib.gpz_decode_scatter.restype = _i64
    lib.gpz_read_decode_scatter.argtypes = [_ptr, _ptr, _ptr, _ptr, _i64, _ptr, _i64, ctypes.c_int, _ptr, _ptr, _i64,
                                            _ptr, _ptr, _ptr, _ptr, ctypes.c_int, _i64, ctypes.c_int, ctypes.c_int,
                                            _i64, _i64, ctypes.c_int, _ptr, _ptr]
    lib.gpz_read_decode_scatter.restype = ctypes.c_int
    lib.gpz_zstd_whole_frames.argtypes = [_ptr, _ptr, _ptr, _i64, _i64, ctypes.c_int, _ptr]
    lib.gpz_zstd_whole_frames.restype = ctypes.c_int
    lib.gpz_decode_span.argtypes = [ctypes.c_int, _ptr, _ptr, _ptr, _i64, _ptr, _i64, _i64, _i64, ctypes.c_int,
                                     _i64, _i64]
    lib.gpz_decode_span.restype = _i64
    lib.gpz_open_files.argtypes = [_ptr, _i64, _i64, _ptr, _ptr, _ptr]
    lib.gpz_read_files.argtypes = [_ptr, _i64, _ptr, _ptr, _ptr, _ptr, _ptr, ctypes.c_int, _ptr, _ptr]
    lib.gpz_close_files.argtypes = [_ptr, _i64]
    for fn in (lib.gpz_open_files, lib.gpz_read_files, lib.gpz_close_files):
        fn.restype = None
    return lib


def _library() -> Any:
    if not _lib:
        with _LOCK:
            if not _lib:
                _lib.append(_load())
    return _lib[0]


def built() -> bool:
    """Whether the library is built and loads."""
    return _library() is not None


def count_fallback(what: str) -> None:
    with _LOCK:
        FALLBACKS[what] += 1


def available(loop: str) -> bool:
    """built(); where not, the Python run of `loop` is counted."""
    if built():
        return True
    count_fallback(loop)
    return False


def scatter(src: np.ndarray, dst: np.ndarray, records: np.ndarray, ndim: int, itemsize: int, swap: int = 0) -> None:
    """Place `records` (scatter_records' rows, SRC as byte offsets into `src`) from `src` into
    `dst`, both NumPy arrays whose memory the records address (checked by their maker: they come
    from the read's plan, inside the chunk and the output). `swap`: reverse the bytes of each
    unit of this size (2, 4 or 8) on the way, as NumPy's copy between byte orders does."""
    records = np.ascontiguousarray(records, dtype=np.int64)
    if records.shape[0] and _library().gpz_scatter_host(src.ctypes.data, dst.ctypes.data, records.ctypes.data,
                                                        records.shape[0], ndim, itemsize, swap):
        raise ValueError(f"the host scatter swaps units of 2, 4 or 8 bytes, not {swap}")


def fill(dst: np.ndarray, records: np.ndarray, value: bytes, ndim: int) -> None:
    """Fill `records` (scatter_records' fill records: windows of `dst`, checked by their maker)
    with `value`, one item of dst's dtype as bytes."""
    records = np.ascontiguousarray(records, dtype=np.int64)
    if len(value) != dst.dtype.itemsize:
        raise ValueError(f"a fill of {dst.dtype} takes {dst.dtype.itemsize} bytes, not {len(value)}")
    if records.shape[0]:
        _library().gpz_fill_host(dst.ctypes.data, records.ctypes.data, records.shape[0], ndim, len(value), value)


def _function_address(fn: Any) -> int:
    """A ctypes function's address, or a table's of them (zstd's and blosc's decoders:
    gpz_zstd_calls, gpz_blosc_calls)."""
    return ctypes.addressof(fn) if isinstance(fn, ctypes.Array) else ctypes.cast(fn, ctypes.c_void_p).value


def address(buf: Any) -> int:
    """Address of a contiguous buffer's first byte: through ctypes where it is writable (~0.2 us),
    else through NumPy (~1.3 us); 0 for an empty one."""
    try:
        return ctypes.addressof(ctypes.c_char.from_buffer(buf))
    except TypeError:  # read-only
        return np.frombuffer(buf, np.uint8).ctypes.data
    except ValueError:  # empty: nothing is read or written there
        return 0


def each_blosc(calls: Any, src: np.ndarray, dst: np.ndarray, nbytes: int) -> np.ndarray:
    """Blosc frames at addresses `src` decoded whole into the `nbytes` at addresses `dst` (int64
    arrays; the caller checked each frame's header against its buffer) by `calls` (a ctypes table
    of gpz_blosc_calls: c-blosc, libdeflate for zlib-format frames); each one's result."""
    src, dst = np.ascontiguousarray(src, np.int64), np.ascontiguousarray(dst, np.int64)
    got = np.empty(src.size, np.int64)
    _library().gpz_each_blosc(_function_address(calls), src.ctypes.data, dst.ctypes.data, src.size, nbytes,
                              got.ctypes.data)
    return got


def each_lz4(fn: Any, src: np.ndarray, sizes: np.ndarray, dst: np.ndarray, capacity: int) -> np.ndarray:
    """LZ4_decompress_safe (`fn`) on the blocks of `sizes` bytes at addresses `src` into the
    `capacity` bytes at addresses `dst`; each one's result."""
    src, dst = np.ascontiguousarray(src, np.int64), np.ascontiguousarray(dst, np.int64)
    sizes = np.ascontiguousarray(sizes, np.int64)
    got = np.empty(src.size, np.intc)
    _library().gpz_each_lz4(_function_address(fn), src.ctypes.data, sizes.ctypes.data, dst.ctypes.data, src.size,
                            capacity, got.ctypes.data)
    return got


def each_zstd(fn: Any, dctx: int, src: np.ndarray, sizes: np.ndarray, dst: np.ndarray, capacity: int) -> np.ndarray:
    """ZSTD_decompressDCtx (`fn`) with the context `dctx` (the calling thread's) on the frames of
    `sizes` bytes at addresses `src` into the `capacity` bytes at addresses `dst`; each one's
    result (libzstd's error codes are above any size)."""
    src, dst = np.ascontiguousarray(src, np.int64), np.ascontiguousarray(dst, np.int64)
    sizes = np.ascontiguousarray(sizes, np.int64)
    got = np.empty(src.size, np.uint64)
    _library().gpz_each_zstd(_function_address(fn), dctx, src.ctypes.data, sizes.ctypes.data, dst.ctypes.data,
                             src.size, capacity, got.ctypes.data)
    return got


# the decoders gpz_decode_scatter calls, by its `kind`
DECODERS = {"zstd": 0, "blosc": 1, "lz4": 2, "stored": 3}  # "stored": no codec (GPZ_STORED)
STORED = ("stored", None, None)  # the decoder of chunks stored without a bytes->bytes codec


def decode_scatter(decoder: tuple, src: np.ndarray, sizes: np.ndarray, scratch: np.ndarray, dst: np.ndarray,
                   records: np.ndarray, rec_lo: np.ndarray, ndim: int, itemsize: int, swap: int) -> tuple[int, int]:
    """Frames at addresses `src` (`sizes` bytes each) decoded one by one into `scratch` (one
    chunk's bytes; a zstd or blosc frame only as far as its records read) by `decoder` ((DECODERS
    key, ctypes function or, for zstd and blosc, table of them, context address or None)), each
    placed into `dst` at once by its scatter records, records[rec_lo[i]:rec_lo[i+1]] (SRC: offsets
    within the chunk; checked by their maker, as for scatter()): gpz_decode_scatter. Returns
    (-1, 0) when every frame decoded to exactly the scratch's size, else (the first frame that
    did not, its decoder's result); nothing is placed from that frame on."""
    kind, fn, ctx = decoder
    src, sizes = np.ascontiguousarray(src, np.int64), np.ascontiguousarray(sizes, np.int64)
    records, rec_lo = np.ascontiguousarray(records, np.int64), np.ascontiguousarray(rec_lo, np.int64)
    assert rec_lo.size == src.size + 1 and scratch.flags.c_contiguous
    got = np.zeros(1, np.int64)
    failed = _library().gpz_decode_scatter(DECODERS[kind], _function_address(fn), ctx, src.ctypes.data,
                                           sizes.ctypes.data, src.size, scratch.nbytes, scratch.ctypes.data,
                                           dst.ctypes.data, records.ctypes.data, rec_lo.ctypes.data, ndim, itemsize,
                                           swap, got.ctypes.data)
    return int(failed), int(got[0])


# why gpz_read_decode_scatter gave a part back (its code), as counted in FALLBACKS when the
# caller then reads and decodes that part the Python way
PART_FALLBACKS = {1: "part:io", 2: "part:frame", 3: "part:decode"}
NOT_CACHED = 4  # what gpz_read_decode_scatter returns, asked to read from the page cache only, where it cannot


def read_decode_scatter(paths: Any, file_of: np.ndarray, offsets: np.ndarray, sizes: np.ndarray,
                        staging: np.ndarray, decoder: tuple, scratch: np.ndarray, dst: np.ndarray, records: np.ndarray,
                        rec_lo: np.ndarray, ndim: int, itemsize: int, swap: int, limits: tuple[int, int, int],
                        lengths: np.ndarray, flags: int = 0) -> tuple[int, int, int]:
    """gpz_read_decode_scatter: read chunks (sizes[i] bytes at offsets[i] of paths[file_of[i]], a
    ctypes array of paths, or that whole file where sizes[i] < 0; file_of[i] < 0: absent) into
    `staging`, check, decode each into `scratch` by `decoder` (see decode_scatter) and place it
    by records[rec_lo[i]:rec_lo[i+1]] into `dst`, in one call; lengths[i]: each chunk's bytes as
    read, -1 for one absent or gone (a chunk file not there). Every int64 array C-contiguous;
    the call checks that the chunks fit in `staging`. `limits`: (zstd blocks walked at most,
    blosc's expansion at most, an LZ4 frame's bytes at most). `flags`: RWF_NOWAIT reads from the
    page cache only, NOT_CACHED where it cannot (before decoding anything). Returns (0, or a
    PART_FALLBACKS code, or NOT_CACHED; reads made, bytes read)."""
    kind, fn, ctx = decoder
    assert rec_lo.size == file_of.size + 1 == lengths.size + 1 and lengths.dtype == records.dtype == np.int64
    io = np.zeros(2, np.int64)
    code = _library().gpz_read_decode_scatter(paths, file_of.ctypes.data, offsets.ctypes.data, sizes.ctypes.data,
                                              file_of.size, staging.ctypes.data, staging.nbytes, DECODERS[kind],
                                              _function_address(fn), ctx, scratch.nbytes, scratch.ctypes.data,
                                              dst.ctypes.data, records.ctypes.data, rec_lo.ctypes.data, ndim, itemsize,
                                              swap, *limits, flags, lengths.ctypes.data, io.ctypes.data)
    return int(code), int(io[0]), int(io[1])


def zstd_whole_frames(staging: np.ndarray, offsets: np.ndarray, sizes: np.ndarray, nbytes: int,
                      max_blocks: int, bounds: np.ndarray | None = None) -> bool:
    """Whether every segment (`sizes` bytes at `offsets` of `staging`, inside it: the fetch that
    put them there says so) is one whole zstd frame stating `nbytes` decoded bytes, its blocks
    (at most `max_blocks`) ending at the segment's end: gpz_zstd_whole_frames. False says only
    that some frame is not; the NumPy checks then say which and why. Where True, `bounds` (int64,
    one per frame, if given) holds each frame's zstd_write_bounds."""
    offsets, sizes = np.ascontiguousarray(offsets, np.int64), np.ascontiguousarray(sizes, np.int64)
    assert bounds is None or (bounds.dtype == np.int64 and bounds.flags.c_contiguous and bounds.size == offsets.size)
    return bool(_library().gpz_zstd_whole_frames(staging.ctypes.data, offsets.ctypes.data, sizes.ctypes.data,
                                                 offsets.size, nbytes, max_blocks,
                                                 None if bounds is None else bounds.ctypes.data))


def decode_span(decoder: tuple, src: int, size: int, dst: np.ndarray, lo: int, hi: int,
                limits: tuple[int, int, int]) -> bool:
    """The frame of `size` bytes at address `src` decoded into `dst` (contiguous, the chunk's
    size) by `decoder` (see decode_scatter) as far as bytes lo..hi-1 need (a zstd frame up to
    the block that holds the last, a blosc frame in the blocks that hold them; the rest of `dst`
    unwritten), where it passes the checks read_decode_scatter makes (`limits`, as there):
    gpz_decode_span. False otherwise: the caller decodes it another way, which names what is
    wrong."""
    kind, fn, ctx = decoder
    return _library().gpz_decode_span(DECODERS[kind], _function_address(fn), ctx, src, size, dst.ctypes.data,
                                      dst.nbytes, lo, hi, *limits) == dst.nbytes


class FileBatch:
    """Files opened and sized at once, read at once, closed at once (gpz_*_files): three calls
    for a part's chunk files, not four syscalls each. `sizes`: a regular file's size, -1 for
    anything else; `errors`: the errno of a failed open or stat, 0. close() always."""

    def __init__(self, paths: list[str], keep_open: int):
        n = self.n = len(paths)
        self._paths = (ctypes.c_char_p * n)(*map(os.fsencode, paths))
        self._fds = np.full(n, -1, np.intc)
        self.sizes, self.errors = np.full(n, -1, np.int64), np.zeros(n, np.intc)
        _library().gpz_open_files(self._paths, n, keep_open, self._fds.ctypes.data, self.sizes.ctypes.data,
                                  self.errors.ctypes.data)

    def read(self, offsets: np.ndarray, sizes: np.ndarray, addresses: np.ndarray, flags: int,
             part: range | None = None) -> tuple[np.ndarray, np.ndarray]:
        """sizes[i] bytes of each file i with sizes[i] >= 0, from byte offsets[i] on, into
        addresses[i]: (bytes read, -1 where it failed; the errno of each failure, EAGAIN for one
        not all in the page cache under RWF_NOWAIT `flags`, whose descriptor is kept for a
        blocking read; ESTALE for a file sized by its path and replaced since). `part`: files
        part.start..part.stop-1 alone (the arrays are still the batch's; the results are the
        part's), for threads that read parts of a batch at once."""
        lo, hi = (0, self.n) if part is None else (part.start, part.stop)
        assert 0 <= lo <= hi <= self.n
        offsets, sizes = np.ascontiguousarray(offsets[lo:hi], np.int64), np.ascontiguousarray(sizes[lo:hi], np.int64)
        addresses = np.ascontiguousarray(addresses[lo:hi], np.int64)
        counts, errors = np.empty(hi - lo, np.int64), np.empty(hi - lo, np.intc)
        _library().gpz_read_files(ctypes.addressof(self._paths) + lo * ctypes.sizeof(ctypes.c_char_p), hi - lo,
                                  self._fds[lo:].ctypes.data, offsets.ctypes.data, sizes.ctypes.data,
                                  self.sizes[lo:].ctypes.data, addresses.ctypes.data, flags, counts.ctypes.data,
                                  errors.ctypes.data)
        return counts, errors

    def fd(self, i: int) -> int:
        return int(self._fds[i])

    def close(self) -> None:
        _library().gpz_close_files(self._fds.ctypes.data, self.n)
