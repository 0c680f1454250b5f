"""libdeflate's gzip and zlib decoders, called directly (ctypes: the GIL is released while they
run) into the chunk's buffer: ~2.5x zlib's inflate here (a 256 KiB float32 chunk at zlib level
5: 333 against 843 us, one thread; libdeflate decodes a whole stream in one pass, zlib block by
block through its window). The library is the one the `deflate` package's extension carries and
exports (extra `[deflate]`), as the zstd and lz4 decoders use numcodecs' libraries; None where
that package is not installed or exports no decoder: libz's inflate decodes then."""

from __future__ import annotations

import ctypes
import functools
import logging
import threading
from typing import Any, NamedTuple

from .libz import per_thread

log = logging.getLogger(__name__)

LIBDEFLATE_SUCCESS = 0


class _Api(NamedTuple):
    alloc: Any  # libdeflate_alloc_decompressor() -> decompressor*
    free: Any  # libdeflate_free_decompressor(d)
    # libdeflate_{gzip,zlib}_decompress_ex(d, in, in_nbytes, out, out_nbytes_avail,
    #                                      size_t *actual_in_nbytes, size_t *actual_out_nbytes) -> result
    gzip: Any
    zlib: Any


@functools.cache
def _api() -> _Api | None:
    try:
        from deflate import _deflate

        lib = ctypes.CDLL(_deflate.__file__)
        api = _Api(lib.libdeflate_alloc_decompressor, lib.libdeflate_free_decompressor,
                   lib.libdeflate_gzip_decompress_ex, lib.libdeflate_zlib_decompress_ex)
    except (ImportError, OSError, AttributeError):
        log.debug("no libdeflate (the deflate package): gzip and zlib streams inflate through zlib")
        return None
    api.alloc.argtypes, api.alloc.restype = [], ctypes.c_void_p
    api.free.argtypes, api.free.restype = [ctypes.c_void_p], None
    for fn in (api.gzip, api.zlib):
        fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t,
                       ctypes.POINTER(ctypes.c_size_t), ctypes.POINTER(ctypes.c_size_t)]
        fn.restype = ctypes.c_int
    return api


class Decoder:
    """One thread's libdeflate decompressor for gzip members or zlib streams, with the call
    interface of libz.Inflater."""

    __slots__ = ("_free", "_ptr", "_decode", "_taken", "_done", "_taken_ref", "_done_ref")

    def __init__(self, api: _Api, wbits: int):
        self._ptr = api.alloc()
        if not self._ptr:
            raise MemoryError("libdeflate_alloc_decompressor failed")
        self._free, self._decode = api.free, api.gzip if wbits == 31 else api.zlib
        self._taken, self._done = ctypes.c_size_t(), ctypes.c_size_t()
        self._taken_ref, self._done_ref = ctypes.byref(self._taken), ctypes.byref(self._done)

    def stream(self, src: int, size: int, dst: int, room: int) -> tuple[int, int] | None:
        """Decode one stream (a gzip member, or a zlib stream) from the `size` bytes at address
        `src` into the `room` bytes at `dst`: (bytes it took, bytes it wrote), its checksum and
        (gzip) length checked by libdeflate; None where it did not end there (corrupt,
        truncated, or more than `room` bytes)."""
        if self._decode(self._ptr, src, size, dst, room, self._taken_ref, self._done_ref) != LIBDEFLATE_SUCCESS:
            return None
        return self._taken.value, self._done.value

    def __del__(self) -> None:
        self._free(self._ptr)


_local = threading.local()


def available() -> bool:
    """Whether gzip and zlib streams are decoded by libdeflate here."""
    return _api() is not None


def zlib_calls() -> tuple | None:
    """(libdeflate_alloc_decompressor, libdeflate_free_decompressor, libdeflate_zlib_decompress_ex)
    as ctypes functions, for the host library's own calls (blosc frames of the zlib format:
    kernels/host_blosc.cpp); None without libdeflate."""
    api = _api()
    return None if api is None else (api.alloc, api.free, api.zlib)


def decoder(wbits: int) -> Decoder | None:
    """This thread's decoder for `wbits` (31: gzip, 15: zlib), or None without libdeflate."""
    api = _api()
    return None if api is None else per_thread(_local, wbits, lambda: Decoder(api, wbits))
