"""zlib's inflate called directly (ctypes: the GIL is released while it runs), so a gzip or zlib
stream decodes straight into the chunk's buffer. Python's zlib module grows a bytes object block
by block, joins the blocks and leaves a copy into place to the caller: a 256 KiB int32 chunk took
981 us so, 846 us inflated in place (same machine, one thread). The library is the zlib that
numcodecs' blosc extension carries (c-blosc's own copy, as the zstd and lz4 decoders use
numcodecs' libraries), else the one Python's zlib module is linked against; None where neither
exports it (the codecs then decode through Python's zlib module, counted as a fallback)."""

from __future__ import annotations

import ctypes
import functools
import threading
import zlib
from collections.abc import Callable
from typing import Any, NamedTuple

from numcodecs import blosc as _blosc

Z_OK, Z_STREAM_END, Z_FINISH = 0, 1, 4
MAX_BYTES = 2**32 - 1  # avail_in / avail_out are 32-bit: larger streams go through Python's zlib


class _ZStream(ctypes.Structure):
    """zlib.h's z_stream (uInt: 32 bits, uLong: the platform's long)."""

    _fields_ = [("next_in", ctypes.c_void_p), ("avail_in", ctypes.c_uint), ("total_in", ctypes.c_ulong),
                ("next_out", ctypes.c_void_p), ("avail_out", ctypes.c_uint), ("total_out", ctypes.c_ulong),
                ("msg", ctypes.c_char_p), ("state", ctypes.c_void_p), ("zalloc", ctypes.c_void_p),
                ("zfree", ctypes.c_void_p), ("opaque", ctypes.c_void_p), ("data_type", ctypes.c_int),
                ("adler", ctypes.c_ulong), ("reserved", ctypes.c_ulong)]


class _Api(NamedTuple):
    init: Any  # inflateInit2_(strm, windowBits, version, sizeof(z_stream)) -> Z_OK
    reset: Any  # inflateReset2(strm, windowBits) -> Z_OK
    inflate: Any  # inflate(strm, flush) -> Z_STREAM_END once the stream is whole
    end: Any  # inflateEnd(strm)
    version: bytes  # zlibVersion(), which inflateInit2_ checks against its own


@functools.cache
def _api() -> _Api | None:
    for path in (_blosc.__file__, getattr(zlib, "__file__", None)):
        if path is None:  # zlib built into the interpreter
            continue
        try:
            lib = ctypes.CDLL(path)
            api = _Api(lib.inflateInit2_, lib.inflateReset2, lib.inflate, lib.inflateEnd, lib.zlibVersion)
        except (OSError, AttributeError):
            continue
        stream = ctypes.POINTER(_ZStream)
        api.init.argtypes, api.init.restype = [stream, ctypes.c_int, ctypes.c_char_p, ctypes.c_int], ctypes.c_int
        api.reset.argtypes, api.reset.restype = [stream, ctypes.c_int], ctypes.c_int
        api.inflate.argtypes, api.inflate.restype = [stream, ctypes.c_int], ctypes.c_int
        api.end.argtypes, api.end.restype = [stream], ctypes.c_int
        api.version.argtypes, api.version.restype = [], ctypes.c_char_p
        return api._replace(version=api.version())
    return None


class Inflater:
    """One thread's z_stream for one window-bits setting (31: gzip, 15: zlib), reset per stream."""

    __slots__ = ("_api", "_stream", "_ref", "_wbits")

    def __init__(self, api: _Api, wbits: int, stream: _ZStream):
        """`stream`: initialised by inflateInit2_ (see `inflater`)."""
        self._api, self._wbits, self._stream = api, wbits, stream
        self._ref = ctypes.pointer(stream)

    def stream(self, src: int, size: int, dst: int, room: int) -> tuple[int, int] | None:
        """Inflate one stream (a gzip member, or a zlib stream) from the `size` bytes at address
        `src` into the `room` bytes at `dst`: (bytes it took, bytes it wrote) where it ended
        there, its checksum and length checked by zlib; None where it did not (corrupt,
        truncated, or more than `room` bytes)."""
        z, api = self._stream, self._api
        if api.reset(self._ref, self._wbits) != Z_OK:
            return None
        z.next_in, z.avail_in, z.next_out, z.avail_out = src, size, dst, room
        if api.inflate(self._ref, Z_FINISH) != Z_STREAM_END:
            return None
        return size - z.avail_in, room - z.avail_out

    def __del__(self) -> None:
        self._api.end(self._ref)


_local = threading.local()


def inflater(wbits: int) -> Inflater | None:
    """This thread's inflater for `wbits`, or None where no zlib is at hand (see _api) or it
    refuses our z_stream (its size or version)."""
    api = _api()
    return None if api is None else per_thread(_local, wbits, lambda: _new_inflater(api, wbits))


def _new_inflater(api: _Api, wbits: int) -> Inflater | None:
    stream = _ZStream()
    ok = api.init(ctypes.pointer(stream), wbits, api.version, ctypes.sizeof(_ZStream)) == Z_OK
    return Inflater(api, wbits, stream) if ok else None


def per_thread(local: threading.local, wbits: int, make: Callable[[], Any]) -> Any:
    """This thread's decoder for `wbits` in `local`, made by `make()` at its first use (creating
    one costs more than decoding a small chunk; one may not be shared by two threads at once)."""
    found = getattr(local, "by_wbits", None)
    if found is None:
        found = local.by_wbits = {}
    if wbits not in found:
        found[wbits] = make()
    return found[wbits]
