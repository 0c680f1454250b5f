"""bytes→bytes codecs: compressors and checksums. numcodecs/crc32c do the arithmetic; these classes
own the framing checks, so a frame that cannot produce the expected size is refused before or
while it is decoded, never after garbage lands in the output."""

from __future__ import annotations

import ctypes
import functools
import logging
import struct
import threading
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import crc32c as _crc32c
import numcodecs
import numpy as np
import zstandard
from numcodecs import blosc as _blosc
from numcodecs import lz4 as _numcodecs_lz4
from numcodecs import zstd as _numcodecs_zstd

from .. import forksafe, host_lib
from ..blosc_frames import read_le_where
from ..errors import CorruptDataError, GpuzarrError, MetadataError, UnsupportedFeatureError, claim_error
from . import libdeflate, libz

Buffer = Any  # bytes, memoryview or a 1-D uint8 ndarray
# No frame decodes to more than this many times its own size: a zstd RLE block (3-byte header and
# 1 byte) stands for at most 128 KiB, the densest encoding of the codecs here (deflate: 1032x,
# LZ4: 255x). A header claiming more is corrupt, and is refused before anything is allocated.
MAX_EXPANSION = 32768
log = logging.getLogger("gpuzarr.codecs")
# Frames decoded otherwise than by one library call straight into place, by reason: zstd
# "zstd:no-libzstd" (numcodecs' extension does not export libzstd: python-zstandard decodes every
# frame), "zstd:no-content-size", "zstd:refused" (the one call failed: several frames, trailing
# bytes, or corrupt), all through python-zstandard's stream reader; "lz4:no-liblz4" and
# "lz4:refused", through numcodecs' LZ4 codec; "gzip:no-libz", "gzip:refused", "zlib:no-libz",
# "zlib:refused", through Python's zlib module (see libz); "blosc-zlib:refused" (a blosc frame of
# the zlib format that the host library's libdeflate path refused: corrupt, or of a layout it does
# not take), through c-blosc.
FALLBACKS: Counter = Counter()
_FALLBACKS_LOCK = forksafe.Lock()


def _count_fallback(reason: str) -> None:
    with _FALLBACKS_LOCK:
        FALLBACKS[reason] += 1


def _as_view(data: Buffer) -> memoryview:
    view = memoryview(data)
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


# An intermediate result of a chain's decode may be at most this many times the chunk's decoded
# size (see decode_through)
STEP_GROWTH_MAX = 16


def decode_through(codecs: list, data: Buffer, nbytes: int | None) -> Buffer:
    """Run `codecs`' decode backwards. A result past STEP_GROWTH_MAX times the chunk's decoded
    size `nbytes` (where it is known) is refused before the next codec can grow it further: a
    chain of v2 `astype` filters, each doubling what it is given, would otherwise allocate
    without bound (forty of them on a 640-byte chunk reached 640 MiB)."""
    for codec in reversed(codecs):
        data = codec.decode(data)
        if nbytes is not None and (size := memoryview(data).nbytes) > STEP_GROWTH_MAX * nbytes + 4096:
            raise CorruptDataError(f"codec {codec.name!r} decodes to {size} bytes, more than "
                                   f"{STEP_GROWTH_MAX}x the chunk's {nbytes}")
    return data


def _check_claim(claimed: int, stored: int, what: str) -> None:
    """Refuse a decoded size that no frame of `stored` bytes can produce."""
    if claimed > MAX_EXPANSION * stored:
        raise CorruptDataError(f"{what} header claims {claimed} decoded bytes, more than a {stored}-byte frame holds")


def _expect_size(got: int, expected: int, what: str) -> None:
    if got != expected:
        raise CorruptDataError(f"{what} decodes to {got} bytes, the chunk needs {expected}")


def _expect_claim(claimed: int, expected: int, what: str) -> None:
    if claimed != expected:
        raise claim_error(what, claimed, expected)


@dataclass(frozen=True)
class BytesBytesCodec:
    """Base: `decode` returns the decoded bytes; `decode_into` fills a given buffer exactly (the
    chunk's decoded size) or raises, checking the frame header before decoding where the format
    allows. Decoding into reused buffers spares a fresh allocation (page faults) per chunk."""

    name: str
    config: dict = field(default_factory=dict, compare=False)

    def decode(self, data: Buffer) -> Buffer:
        raise NotImplementedError

    def decode_into(self, data: Buffer, out: np.ndarray) -> None:
        decoded = _as_view(self.decode(data))
        _expect_size(len(decoded), out.nbytes, f"{self.name} frame")
        out[:] = np.frombuffer(decoded, dtype=np.uint8)


def _zstd_content_size(view: memoryview) -> int | None:
    """Frame_Content_Size from a zstd frame header (RFC 8878 §3.1.1.1), or None when absent."""
    if len(view) < 5 or bytes(view[:4]) != b"\x28\xb5\x2f\xfd":
        raise CorruptDataError("not a zstd frame (bad magic number)")
    fhd = view[4]
    fcs_flag, single_segment, dict_flag = fhd >> 6, (fhd >> 5) & 1, fhd & 3
    pos = 5 + (0 if single_segment else 1) + (0, 1, 2, 4)[dict_flag]
    size = (1 if single_segment else 0, 2, 4, 8)[fcs_flag]
    if size == 0:
        return None
    if len(view) < pos + size:
        raise CorruptDataError("truncated zstd frame header")
    value = int.from_bytes(view[pos:pos + size], "little")
    return value + 256 if size == 2 else value


_ZSTD_MAGIC = 0xFD2FB528  # 28 b5 2f fd, read little-endian
_ZSTD_DICT_BYTES = np.array([0, 1, 2, 4])  # Dictionary_ID field size by Dictionary_ID_Flag
_ZSTD_FCS_BYTES = np.array([0, 2, 4, 8])  # Frame_Content_Size field size by FCS_Field_Size flag


def _zstd_header(staging: np.ndarray, offsets: np.ndarray, framed: np.ndarray) -> tuple[np.ndarray, ...]:
    """Each frame's Frame_Header_Descriptor, where its Frame_Content_Size field starts (from the
    frame's start) and that field's width in bytes (0: no content size), RFC 8878 §3.1.1.1."""
    fhd = read_le_where(staging, offsets + 4, 1, framed)
    single = (fhd >> 5) & 1
    return fhd, 6 - single + _ZSTD_DICT_BYTES[fhd & 3], np.where(fhd >> 6 == 0, single, _ZSTD_FCS_BYTES[fhd >> 6])


def check_zstd_frames(staging: np.ndarray, offsets: np.ndarray, sizes: np.ndarray, nbytes: int,
                      label: Callable[[int], str], before_raising: Callable[[int], None] = lambda i: None,
                      header: tuple | None = None) -> np.ndarray:
    """Every frame's header at once (RFC 8878 §3.1.1.1), as _zstd_content_size one by one, for
    both devices: a bad magic number, a truncated header, or a Frame_Content_Size other than
    `nbytes` raises naming the chunk (`label(i)`; `before_raising(i)` runs first for the refused
    frame i). Returns which frames state their content size (the others are checked by what
    their decoder writes). Three gathers of one integer per frame, one more per field width the
    frames use: 4096 frames ~0.3 ms, against ~0.7 for 18 header bytes per frame. `header`:
    _zstd_header's fields of these frames, where the caller has them."""
    framed = sizes >= 5
    magic = read_le_where(staging, offsets, 4, framed)
    fhd, pos, width = header or _zstd_header(staging, offsets, framed)
    bad_magic = ~framed | (magic != _ZSTD_MAGIC)
    truncated = ~bad_magic & (width > 0) & (sizes < pos + width)
    stated = ~bad_magic & ~truncated & (width > 0)
    value = np.zeros(offsets.size, np.uint64)
    for w in set(width[stated].tolist()):  # one width, mostly (a set: np.unique cost ~50 us a part)
        k = stated & (width == w)
        value[k] = read_le_where(staging, offsets + pos, w, k)[k]  # 8-byte sizes past 2**63: wrapped, as bits
    value[width == 2] += np.uint64(256)
    wrong = stated & (value != np.uint64(nbytes))
    for mask, what in ((bad_magic, "not a zstd frame (bad magic number)"), (truncated, "truncated zstd frame header"),
                       (wrong, None)):
        if mask.any():
            i = int(np.flatnonzero(mask)[0])
            before_raising(i)
            if what is None:
                raise claim_error(f"{label(i)}: zstd frame", int(value[i]), nbytes)
            raise CorruptDataError(f"{label(i)}: {what}")
    return width > 0


def _each_named(decode: Callable[[memoryview, np.ndarray], None], staging: np.ndarray, rows: np.ndarray,
                offsets: np.ndarray, sizes: np.ndarray, out: np.ndarray, labels: list) -> None:
    """decode(frame, out[i]) frame by frame for the rows the batched call left, an error naming
    the chunk."""
    view = memoryview(staging)
    for i, start, size in zip(rows.tolist(), offsets[rows].tolist(), sizes[rows].tolist()):
        try:
            decode(view[start:start + size], out[i])
        except CorruptDataError as exc:
            raise CorruptDataError(f"{labels[i]}: {exc}") from None


RUN_MIN = 4  # frames per libzstd call, on average, for Zstd._decode_runs to take a group
_ZSTD_BLOCK_STEPS = 64  # blocks walked per frame at most (a chunk of up to 8 MiB; more: frame by frame)
ZSTD_BLOCK_BYTES = 128 << 10  # a zstd block decodes to at most this (RFC 8878 section 3.1.1.2.4)


def zstd_whole_frames(staging: np.ndarray, offsets: np.ndarray, sizes: np.ndarray, nbytes: int,
                      bounds: np.ndarray | None = None) -> bool:
    """Whether every segment is one whole zstd frame stating `nbytes` (check_zstd_frames passes,
    every frame sized, and zstd_single_frames holds), by the host library in one call: ~1 us,
    where those two take ~150 us of NumPy calls for a part of 8-64 frames. False where some
    frame is not, or without the library (counted): the caller then runs them. Where True,
    `bounds` (if given) holds zstd_write_bounds of the frames."""
    return host_lib.available("zstd frames") and host_lib.zstd_whole_frames(staging, offsets, sizes, nbytes,
                                                                             _ZSTD_BLOCK_STEPS, bounds)


def zstd_single_frames(staging: np.ndarray, offsets: np.ndarray, sizes: np.ndarray, header: tuple | None = None) -> bool:
    """Whether every segment is exactly one zstd frame, nothing after it (no second frame, no
    trailing bytes), its blocks walked for all frames at once (zstd_walk; `header`: the fields
    check_zstd_frames read, where the caller has them). False where a frame has more than
    _ZSTD_BLOCK_STEPS blocks, a reserved block type, or runs past its segment: the caller then
    decodes frame by frame, which says what is wrong."""
    return bool((zstd_walk(staging, offsets, sizes, header)[0] == offsets + sizes).all())


ZSTD_BLOCK_MAX = 1 << 17  # Block_Maximum_Size at most (RFC 8878 §3.1.1.2.3): 128 KiB


def zstd_write_bounds(staging: np.ndarray, offsets: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """The most bytes each zstd frame's blocks can decode to (zstd_walk), -1 for a frame that
    cannot be walked or runs past its segment. Why: nvCOMP 6.0 writes a zstd frame's whole
    output past the buffer size it is given (measured on an H200: 1 MiB written into a 16-byte
    buffer, status success), so the GPU gives it only frames whose bound fits the room behind
    their buffer."""
    ends, bounds = zstd_walk(staging, offsets, sizes)
    return np.where((ends >= 0) & (ends <= offsets + sizes), bounds, -1)


def zstd_walk(staging: np.ndarray, offsets: np.ndarray, sizes: np.ndarray,
              header: tuple | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Every frame's blocks walked at once (RFC 8878 §3.1.1.2): where each frame ends in
    `staging` (its content checksum counted) and the most bytes its blocks can decode to (a Raw
    or RLE block its Block_Size, a compressed one Block_Maximum_Size: min(Window_Size, 128 KiB));
    -1 for both where a frame cannot be walked: bad magic, a truncated header, a block header
    past its segment, a reserved block type, more than _ZSTD_BLOCK_STEPS blocks (zstd_frame_walk
    walks any number, one frame)."""
    framed = sizes >= 5
    fhd, fcs_at, width = header or _zstd_header(staging, offsets, framed)
    walking = framed & (read_le_where(staging, offsets, 4, framed) == _ZSTD_MAGIC) & (sizes >= fcs_at + width)
    single = (fhd >> 5) & 1
    content = np.zeros(offsets.size, np.int64)
    for w in set(width[walking & (single == 1)].tolist()):  # a single segment's window is its content size
        k = walking & (single == 1) & (width == w)
        content[k] = read_le_where(staging, offsets + fcs_at, w, k)[k].astype(np.int64) + (256 if w == 2 else 0)
    descriptor = read_le_where(staging, offsets + 5, 1, walking & (single == 0)).astype(np.int64)
    block_max = np.minimum(np.where(single == 1, content, _zstd_window(descriptor)), ZSTD_BLOCK_MAX)
    pos, end = offsets + fcs_at + width, offsets + sizes
    bounds = np.zeros(offsets.size, np.int64)
    ends = np.full(offsets.size, -1, np.int64)
    for _ in range(_ZSTD_BLOCK_STEPS):
        walking &= pos + 3 <= end
        if not walking.any():
            break
        head = read_le_where(staging, pos, 2, walking) | read_le_where(staging, pos + 2, 1, walking) << 16
        kind, block = (head >> 1) & 3, (head >> 3).astype(np.int64)
        walking &= kind != 3
        bounds += np.where(walking, np.where(kind == 2, block_max, block), 0)
        pos = np.where(walking, pos + 3 + np.where(kind == 1, 1, block), pos)  # RLE: one byte stored
        done = walking & ((head & 1) == 1)  # Last_Block
        ends[done] = pos[done] + 4 * ((fhd[done] >> 2) & 1)
        walking &= ~done
    bounds[ends < 0] = -1
    return ends, bounds


def _zstd_window(descriptor: Any) -> Any:
    """Window_Size from a Window_Descriptor byte (RFC 8878 §3.1.1.1.2), exponent capped at 41."""
    base = np.left_shift(1, np.minimum(10 + (descriptor >> 3), 41))
    return base + (base >> 3) * (descriptor & 7)


def zstd_frame_end(data: Any) -> int:
    """Where the zstd frame at the start of `data` ends, its blocks walked to the last and its
    content checksum counted (RFC 8878 §3.1.1; a skippable frame, §3.1.2, by its size): past
    len(data) where it is cut short, -1 where it is no frame (bad magic, a reserved block
    type). One frame, block by block in Python: for the frames the whole-batch checks could
    not vouch for (zstd_single_frames)."""
    return zstd_frame_walk(data)[0]


def zstd_frame_walk(data: Any) -> tuple[int, int]:
    """zstd_frame_end, and the most bytes the frame's blocks can decode to (as zstd_walk; 0 for
    a skippable frame, -1 where it ends at -1)."""
    view, n = memoryview(data).cast("B"), len(data)
    if n >= 8 and view[0] & 0xF0 == 0x50 and bytes(view[1:4]) == b"\x2a\x4d\x18":  # a skippable frame
        return 8 + int.from_bytes(view[4:8], "little"), 0
    if n < 6 or bytes(view[:4]) != b"\x28\xb5\x2f\xfd":
        return -1, -1
    fhd = view[4]
    single = (fhd >> 5) & 1
    fcs_at = 6 - single + (0, 1, 2, 4)[fhd & 3]
    width = single if fhd >> 6 == 0 else (0, 2, 4, 8)[fhd >> 6]
    if single:
        window = int.from_bytes(view[fcs_at:fcs_at + width], "little") + (256 if width == 2 else 0)
    else:
        window = int(_zstd_window(view[5]))
    block_max, pos, bound = min(window, ZSTD_BLOCK_MAX), fcs_at + width, 0
    while True:
        if pos + 3 > n:
            return n + 1, -1
        head = view[pos] | view[pos + 1] << 8 | view[pos + 2] << 16
        kind = (head >> 1) & 3
        if kind == 3:
            return -1, -1
        bound += block_max if kind == 2 else head >> 3
        pos += 3 + (1 if kind == 1 else head >> 3)  # RLE: one byte
        if head & 1:  # Last_Block
            return pos + 4 * ((fhd >> 2) & 1), bound


def zstd_frames_problem(data: Any) -> str | None:
    """What is wrong with `data` as zstd frames back to back, ending at its end; None if nothing."""
    pos, n = 0, len(data)
    while pos < n:
        end = zstd_frame_end(memoryview(data)[pos:])
        if end < 0:
            return f"bytes {pos}.. of the {n}-byte chunk are not a zstd frame" if pos else "not a zstd frame"
        if pos + end > n:
            return f"zstd frame cut short: its blocks and checksum need {pos + end} bytes, the chunk has {n}"
        pos += end
    return None


class Zstd(BytesBytesCodec):
    """libzstd: into a given buffer by one ZSTD_decompressDCtx call (ctypes, GIL released) where
    the frame states its size; otherwise, and where numcodecs' extension does not export libzstd,
    through python-zstandard (which releases the GIL for the whole frame too)."""

    def decode(self, data: Buffer) -> Buffer:
        view = _as_view(data)
        size = _zstd_content_size(view)
        if size is None:  # grown as it decodes: a size cap would be allocated up front
            return self._decompress_stream(view)
        _check_claim(size, len(view), "zstd frame")
        end = zstd_frame_end(view)  # one call decodes the first frame alone: nothing may follow it
        if end != len(view):
            raise CorruptDataError(zstd_frames_problem(view) or f"{len(view) - end} bytes after the zstd frame")
        return self._decompress(view, size)

    def decode_into(self, data: Buffer, out: np.ndarray) -> None:
        """`out`: contiguous uint8 of the chunk's decoded size."""
        view = _as_view(data)
        content_size = _zstd_content_size(view)
        if content_size is not None:
            _expect_claim(content_size, out.nbytes, "zstd frame")
            dctx = _thread_dctx()
            if dctx is not None and dctx.decode(host_lib.address(view), len(view), host_lib.address(out), out.nbytes):
                return
        self._decode_stream(view, out, "zstd:no-content-size" if content_size is None else
                            "zstd:refused" if _thread_dctx() is not None else "zstd:no-libzstd")

    def decode_rows(self, staging: np.ndarray, offsets: np.ndarray, sizes: np.ndarray, out: np.ndarray,
                    labels: list) -> None:
        """Decode frame i (`sizes[i]` bytes at `offsets[i]` of `staging`) into row i of `out`
        (k, decoded size) uint8. Every header is checked at once (check_zstd_frames). Where every
        frame states its size and is its segment whole (zstd_single_frames), frames that lie back
        to back go in one libzstd call per run (_decode_runs). Otherwise one libzstd call per
        frame, straight into its row, all in ONE call of the host library that releases the GIL
        once (host_lib.each_zstd). Without that library, single frames go in one call of
        python-zstandard's multi_decompress_to_buffer, each result copied into its row (a ctypes
        call per frame re-takes the GIL per frame: with two threads a full 2-D read of 128^2
        chunks took 68-85 ms against 62-67 so), others one ctypes call each. A frame with no
        content size, or one libzstd refuses, goes through decode_into (which names it)."""
        k, nbytes = out.shape
        if k == 0:
            return
        if zstd_whole_frames(staging, offsets, sizes, nbytes):
            sized, single = np.ones(k, bool), True  # every check below passes
        else:
            header = _zstd_header(staging, offsets, sizes >= 5)  # for both checks: parsed once
            sized = check_zstd_frames(staging, offsets, sizes, nbytes, labels.__getitem__, header=header)
            single = sized.all() and zstd_single_frames(staging, offsets, sizes, header)
        if single and self._decode_runs(staging, offsets, sizes, out):
            return
        dctx = _thread_dctx()
        each = dctx is not None and host_lib.available("zstd")  # every frame in one call of the host library
        if single and not each and self._decode_group(staging, offsets, sizes, out):
            return
        rest = np.arange(k)
        if dctx is not None:
            sized = np.flatnonzero(sized)
            src, dst = staging.ctypes.data + offsets[sized], out.ctypes.data + nbytes * sized
            if each:
                done = dctx.decode_each(src, sizes[sized], dst, nbytes)
            else:
                decode = dctx.decode
                done = [decode(s, n, d, nbytes) for s, n, d in zip(src.tolist(), sizes[sized].tolist(), dst.tolist())]
            rest = np.setdiff1d(rest, sized[np.asarray(done, dtype=bool)], assume_unique=True)
        _each_named(self.decode_into, staging, rest, offsets, sizes, out, labels)

    @staticmethod
    def direct(staging: np.ndarray, offsets: np.ndarray, sizes: np.ndarray, nbytes: int,
               labels: list) -> tuple | None:
        """(decoder, frame addresses, their sizes) for host_lib.decode_scatter, where every frame
        is one whole frame stating `nbytes` (zstd_whole_frames, one call) and libzstd is loaded;
        None otherwise: decode_rows' checks then name or decode the others."""
        decoder = Zstd.decoder(nbytes)
        if decoder is None or not zstd_whole_frames(staging, offsets, sizes, nbytes):
            return None
        return decoder, staging.ctypes.data + offsets, sizes

    @staticmethod
    def decoder(nbytes: int) -> tuple | None:
        """This thread's direct decoder (host_lib.decode_scatter's), None without libzstd."""
        dctx = _thread_dctx()
        return None if dctx is None else dctx.decoder()

    @staticmethod
    def _decode_runs(staging: np.ndarray, offsets: np.ndarray, sizes: np.ndarray, out: np.ndarray) -> bool:
        """Frames that lie back to back in staging (a shard's chunks read in one range), each
        one whole frame of the row's size (checked by the caller), decoded by ONE libzstd call
        per run straight into consecutive rows: libzstd decodes concatenated frames one after
        another and checks each against its stated size. No result buffer and no copy (64
        frames of 32 KiB: 2.34 ms against 2.64 through _decode_group), the GIL released once
        per run. False (rows unusable) without libzstd, where runs average fewer than RUN_MIN
        frames (one call per frame would re-take the GIL per frame), or where a call fails: the
        caller then decodes otherwise and names the bad frame."""
        dctx = _thread_dctx()
        k, nbytes = out.shape
        ends = offsets + sizes
        breaks = np.flatnonzero(offsets[1:] != ends[:-1]) + 1
        if dctx is None or (breaks.size + 1) * RUN_MIN > k:
            return False
        edges = [0, *breaks.tolist(), k]
        base, dst = staging.ctypes.data, out.ctypes.data
        for lo, hi in zip(edges[:-1], edges[1:]):
            start = int(offsets[lo])
            if not dctx.decode(base + start, int(ends[hi - 1]) - start, dst + lo * nbytes, (hi - lo) * nbytes):
                return False
        return True

    @classmethod
    def _decode_group(cls, staging: np.ndarray, offsets: np.ndarray, sizes: np.ndarray, out: np.ndarray) -> bool:
        """Every frame into its row through one multi_decompress_to_buffer call; False (rows
        unusable) where it refuses the group or a frame decodes to another size: the caller then
        decodes frame by frame and names the bad one."""
        k, nbytes = out.shape
        segments = np.stack([offsets, sizes], axis=1).astype("<u8")
        try:
            result = cls._dctx().multi_decompress_to_buffer(
                zstandard.BufferWithSegments(staging, segments.tobytes()),
                decompressed_sizes=np.full(k, nbytes, dtype="<u8").tobytes(), threads=1)
        except (zstandard.ZstdError, ValueError):
            return False
        # one segment per frame, each a buffer of its own: copied by memoryview slices (0.5 us a
        # frame of 8 KiB, under the GIL; a numpy row assignment took 1.9), which refuse a frame
        # of another size
        rows = memoryview(out).cast("B")
        pos = 0
        try:
            for frame in result:
                rows[pos:pos + nbytes] = frame
                pos += nbytes
        except ValueError:
            return False
        return pos == out.nbytes

    @classmethod
    def _decode_stream(cls, view: memoryview, out: np.ndarray, reason: str) -> None:
        """`view` into `out` through python-zstandard's stream reader, as before libzstd was
        called directly (it stops at the end of a frame that states its size, and reads on
        into the next where none is stated); counted in FALLBACKS under `reason`."""
        _count_fallback(reason)
        nbytes = out.nbytes
        try:
            with cls._dctx().stream_reader(view, read_across_frames=False) as reader:
                done = 0
                while done < nbytes:
                    got = reader.readinto(out[done:])
                    if got == 0:
                        break
                    done += got
                _expect_size(done + len(reader.read(1)), nbytes, "zstd frame")
        except zstandard.ZstdError as exc:
            raise CorruptDataError(f"cannot decode zstd frame ({exc})") from None
        # the reader ends quietly where its input does: a frame cut inside its checksum decodes
        # whole (zarr-python's libzstd refuses it)
        problem = zstd_frames_problem(view)
        if problem:
            raise CorruptDataError(problem)

    _local = threading.local()  # a decompression context per thread: creating one costs more than a chunk

    @classmethod
    def _dctx(cls) -> zstandard.ZstdDecompressor:
        dctx = getattr(cls._local, "dctx", None)
        if dctx is None:
            dctx = cls._local.dctx = zstandard.ZstdDecompressor()
        return dctx

    @classmethod
    def _decompress_stream(cls, view: memoryview) -> bytes:
        try:
            dobj = cls._dctx().decompressobj()
            out = dobj.decompress(view)
        except zstandard.ZstdError as exc:
            raise CorruptDataError(f"cannot decode zstd frame ({exc})") from None
        if not dobj.eof:
            raise CorruptDataError("truncated zstd frame")
        return out

    @classmethod
    def _decompress(cls, view: memoryview, max_size: int) -> bytes:
        try:
            return cls._dctx().decompress(view, max_output_size=max_size)
        except zstandard.ZstdError as exc:
            raise CorruptDataError(f"cannot decode zstd frame ({exc})") from None


class _LibZstd(NamedTuple):
    create: Any  # ZSTD_createDCtx() -> ZSTD_DCtx*
    free: Any  # ZSTD_freeDCtx(dctx)
    decompress: Any  # ZSTD_decompressDCtx(dctx, dst, dst capacity, src, src size) -> size or error code
    calls: Any  # the host library's table of libzstd calls (gpz_zstd_calls in kernels/host_calls.cpp)


# libzstd's buffer-less streaming calls, which decode a frame block by block: the host library
# decodes only the blocks a window reads (gpz_zstd_prefix); absent, it decodes every frame whole
_STREAM_CALLS = ("ZSTD_decompressBegin", "ZSTD_nextSrcSizeToDecompress", "ZSTD_decompressContinue")


@functools.cache
def _libzstd() -> _LibZstd | None:
    """libzstd's one-call decoder from the library numcodecs built and loaded, or None where
    its extension does not export it (python-zstandard decodes every frame then: see FALLBACKS)."""
    try:
        lib = ctypes.CDLL(_numcodecs_zstd.__file__)
        create, free, decompress = lib.ZSTD_createDCtx, lib.ZSTD_freeDCtx, lib.ZSTD_decompressDCtx
    except (OSError, AttributeError):
        log.debug("numcodecs.zstd exports no libzstd: zstd frames decode through python-zstandard")
        return None
    stream = [getattr(lib, name, None) for name in _STREAM_CALLS]
    if None in stream:
        log.debug("numcodecs.zstd exports no buffer-less zstd calls: windows decode whole chunks")
        stream = [None] * len(_STREAM_CALLS)
    calls = (ctypes.c_void_p * 4)(*(ctypes.cast(fn, ctypes.c_void_p).value if fn is not None else None
                                    for fn in (decompress, *stream)))
    api = _LibZstd(create, free, decompress, calls)
    api.create.argtypes, api.create.restype = [], ctypes.c_void_p
    api.free.argtypes, api.free.restype = [ctypes.c_void_p], ctypes.c_size_t
    api.decompress.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t]
    api.decompress.restype = ctypes.c_size_t
    return api


class _DCtx:
    """A libzstd decompression context owned by one thread (creating one costs more than
    decoding a chunk), freed with the thread's locals."""

    __slots__ = ("_ptr", "_free", "_decompress", "_calls")

    def __init__(self, api: _LibZstd):
        self._ptr = api.create()
        if not self._ptr:
            raise MemoryError("ZSTD_createDCtx failed")
        self._free, self._decompress, self._calls = api.free, api.decompress, api.calls

    def decode(self, src: int, src_size: int, dst: int, nbytes: int) -> bool:
        """Decode the frame(s) of `src_size` bytes at address `src` into the `nbytes` at `dst`;
        True when that filled `dst` exactly (libzstd checks a frame against its stated size and
        checksum, and writes nothing past `nbytes`)."""
        return self._decompress(self._ptr, dst, nbytes, src, src_size) == nbytes

    def decoder(self) -> tuple:
        """This context's decoder, as host_lib.decode_scatter takes it: for zstd, a table of calls."""
        return "zstd", self._calls, self._ptr

    def decode_each(self, src: np.ndarray, sizes: np.ndarray, dst: np.ndarray, nbytes: int) -> np.ndarray:
        """decode() of every frame (addresses `src`, `sizes` bytes each, into `nbytes` at the
        addresses `dst`) in one call of the host library, the GIL released once; True where it
        filled its `nbytes` exactly."""
        return host_lib.each_zstd(self._decompress, self._ptr, src, sizes, dst, nbytes) == nbytes

    def __del__(self) -> None:
        self._free(self._ptr)


_dctxs = threading.local()


def _thread_dctx() -> _DCtx | None:
    """This thread's libzstd context, or None without libzstd (see _libzstd)."""
    api = _libzstd()
    if api is None:
        return None
    dctx = getattr(_dctxs, "dctx", None)
    if dctx is None:
        dctx = _dctxs.dctx = _DCtx(api)
    return dctx


class _Inflated(BytesBytesCodec):
    """gzip and zlib: decode_into inflates straight into the chunk's buffer (libdeflate where
    the deflate package is installed, else libz); where that is not possible, or it refuses the
    data, Python's zlib module decodes and says what is wrong."""

    wbits = 15
    members = False  # gzip: members may follow one another, zero bytes between them

    def decode_into(self, data: Buffer, out: np.ndarray) -> None:
        """`out`: contiguous uint8 of the chunk's decoded size."""
        inflater = libdeflate.decoder(self.wbits) or libz.inflater(self.wbits)
        if inflater is not None and self._inflate(inflater, _as_view(data), out):
            return
        _count_fallback(f"{self.name}:" + ("no-libz" if inflater is None else "refused"))
        super().decode_into(data, out)

    def _inflate(self, inflater: libz.Inflater | libdeflate.Decoder, view: memoryview, out: np.ndarray) -> bool:
        """Whether the streams in `view` filled `out` exactly."""
        size, room = len(view), out.nbytes
        if size > libz.MAX_BYTES or room > libz.MAX_BYTES or size == 0:
            return False
        src, dst = host_lib.address(view), out.ctypes.data
        taken = done = 0
        while True:
            got = inflater.stream(src + taken, size - taken, dst + done, room - done)
            if got is None:
                return False
            taken, done = taken + got[0], done + got[1]
            if self.members and taken < size and view[taken] == 0:  # padding: rare, and short
                rest = np.frombuffer(view, np.uint8, offset=taken)
                nonzero = np.flatnonzero(rest)
                taken += int(nonzero[0]) if nonzero.size else rest.size
            if not self.members or taken == size:
                return done == room


class Gzip(_Inflated):
    wbits = 31
    members = True

    def decode(self, data: Buffer) -> Buffer:
        """Every member, as numcodecs' GZip reads them (Python's gzip module): members may
        follow one another, zero bytes may pad them; anything else after one is an error. Where
        the size its last member states (ISIZE) is all it holds, inflated into a buffer of that
        size as decode_into inflates (a gzip before another codec, whose decoded size the chunk
        does not give: 256 KiB chunks, 394 -> 276 us each), else through Python's zlib."""
        view = _as_view(data)
        stated = int.from_bytes(view[-4:], "little") if len(view) >= 18 else 0
        inflater = (libdeflate.decoder(self.wbits) or libz.inflater(self.wbits)) if stated else None
        if inflater is not None and stated <= MAX_EXPANSION * len(view):
            out = np.empty(stated, np.uint8)
            if self._inflate(inflater, view, out):
                return out
        parts, rest = [], data
        while True:
            obj = zlib.decompressobj(31)
            parts.append(_zlib_decompress(rest, 31, "gzip", obj))
            rest = obj.unused_data.lstrip(b"\0")
            if not rest:
                return parts[0] if len(parts) == 1 else b"".join(parts)


class Zlib(_Inflated):
    def decode(self, data: Buffer) -> Buffer:
        return _zlib_decompress(data, 15, "zlib")


def _zlib_decompress(data: Buffer, wbits: int, what: str, obj: Any = None) -> bytes:
    obj = obj or zlib.decompressobj(wbits)
    try:
        out = obj.decompress(data)
    except zlib.error as exc:
        raise CorruptDataError(f"bad {what} stream ({exc})") from None
    if not obj.eof:
        raise CorruptDataError(f"truncated {what} stream")
    return out


class Blosc(BytesBytesCodec):
    def decode(self, data: Buffer) -> Buffer:
        view = _as_view(data)
        nbytes = self._checked_header(view)
        out = np.empty(nbytes, dtype=np.uint8)
        self._decompress(view, out)
        return out

    def decode_into(self, data: Buffer, out: np.ndarray) -> None:
        view = _as_view(data)
        _expect_claim(self._checked_header(view), out.nbytes, "blosc frame")
        self._decompress(view, out)

    @staticmethod
    def _checked_header(view: memoryview) -> int:
        if len(view) < 16:
            raise CorruptDataError(f"blosc frame of {len(view)} bytes is shorter than its 16-byte header")
        nbytes, _blocksize, cbytes = struct.unpack_from("<III", view, 4)
        if cbytes != len(view):
            raise CorruptDataError(f"blosc header says {cbytes} compressed bytes, the frame has {len(view)}")
        _check_claim(nbytes, cbytes, "blosc frame")
        return nbytes

    @staticmethod
    def _decompress(view: memoryview, out: np.ndarray) -> None:
        """Into `out` (contiguous, the header's size): c-blosc directly where it can (see
        decode_rows); a frame of the zlib format through the host library, whose libdeflate
        inflates it (_blosc_zlib_direct), c-blosc where that refuses it."""
        decompress = _blosc_ctx()
        if decompress is None:
            _numcodecs_call(_blosc.decompress, view, "blosc", dest=out)
            return
        src = host_lib.address(view)
        if _blosc_zlib_direct(view[2]):
            if host_lib.decode_span(Blosc.decoder(out.nbytes), src, len(view), out, 0, out.nbytes, DIRECT_LIMITS):
                return
            _count_fallback("blosc-zlib:refused")
        got = decompress(src, out.ctypes.data, out.nbytes, 1)
        if got != out.nbytes:
            raise _blosc_failure(view, got)

    def decode_rows(self, staging: np.ndarray, offsets: np.ndarray, sizes: np.ndarray, out: np.ndarray,
                    labels: list) -> None:
        """Decode frame i (`sizes[i]` bytes at `offsets[i]` of `staging`) into row i of `out`
        (k, decoded size) uint8. The headers are checked for the whole batch first; then one
        c-blosc call per frame, single-threaded and without the GIL (blosc_decompress_ctx, through
        ctypes: numcodecs adds ~3 us of Python per call, and on the main thread switches to
        blosc's global context and its own threads, which compete with the caller's pool); frames
        of the zlib format inflated by libdeflate instead (see _blosc_calls), those it refuses
        through c-blosc, counted."""
        k, nbytes = out.shape
        if k == 0:
            return
        self._check_rows(staging, offsets, sizes, nbytes, labels)
        decompress = _blosc_ctx()
        if decompress is None:
            view = memoryview(staging)
            for i, (start, size) in enumerate(zip(offsets.tolist(), sizes.tolist())):
                try:
                    _numcodecs_call(_blosc.decompress, view[start:start + size], "blosc", dest=out[i])
                except CorruptDataError as exc:
                    raise CorruptDataError(f"{labels[i]}: {exc}") from None
            return
        src = staging.ctypes.data + offsets
        dst = out.ctypes.data + nbytes * np.arange(k)
        if host_lib.available("blosc"):  # the loop in C: the GIL released once, not per frame
            got = host_lib.each_blosc(_blosc_calls(), src, dst, nbytes)
        else:
            got = [decompress(s, d, nbytes, 1) for s, d in zip(src.tolist(), dst.tolist())]
        for i in np.flatnonzero(np.asarray(got) != nbytes).tolist():
            frame, result = memoryview(staging)[offsets[i]:offsets[i] + sizes[i]], int(got[i])
            if _blosc_zlib_direct(frame[2]):  # libdeflate refused it: c-blosc's turn
                _count_fallback("blosc-zlib:refused")
                result = decompress(int(src[i]), int(dst[i]), nbytes, 1)
                if result == nbytes:
                    continue
            exc = _blosc_failure(frame, result)
            raise type(exc)(f"{labels[i]}: {exc}")

    def direct(self, staging: np.ndarray, offsets: np.ndarray, sizes: np.ndarray, nbytes: int,
               labels: list) -> tuple | None:
        """(decoder, frame addresses, their sizes) for host_lib.decode_scatter, every header
        checked (_check_rows raises); None where c-blosc cannot be called directly."""
        self._check_rows(staging, offsets, sizes, nbytes, labels)
        decoder = self.decoder(nbytes)
        return None if decoder is None else (decoder, staging.ctypes.data + offsets, sizes)

    @staticmethod
    def decoder(nbytes: int) -> tuple | None:
        """The direct decoder (host_lib.decode_scatter's: the table of blosc's calls, _blosc_calls),
        None where c-blosc is not exported."""
        calls = _blosc_calls()
        return None if calls is None else ("blosc", calls, None)

    @staticmethod
    def _check_rows(staging: np.ndarray, offsets: np.ndarray, sizes: np.ndarray, nbytes: int, labels: list) -> None:
        """Every frame's header against its segment and `nbytes`, for the whole batch at once."""
        short = np.flatnonzero(sizes < 16)
        if short.size:
            raise CorruptDataError(f"{labels[short[0]]}: blosc frame of {sizes[short[0]]} bytes is shorter than "
                                   f"its 16-byte header")
        header = staging[offsets[:, None] + np.arange(4, 16)].view("<u4").astype(np.int64)
        claimed, cbytes = header[:, 0], header[:, 2]  # decoded and frame size (then blocksize)
        bad = np.flatnonzero(cbytes != sizes)
        if bad.size:
            i = int(bad[0])
            raise CorruptDataError(f"{labels[i]}: blosc header says {cbytes[i]} compressed bytes, "
                                   f"the frame has {sizes[i]}")
        bad = np.flatnonzero(claimed != nbytes)
        if bad.size:
            i = int(bad[0])
            raise claim_error(f"{labels[i]}: blosc frame", int(claimed[i]), nbytes)
        bad = np.flatnonzero(claimed > MAX_EXPANSION * cbytes)
        if bad.size:
            i = int(bad[0])
            _check_claim(nbytes, int(cbytes[i]), f"{labels[i]}: blosc frame")


def _blosc_function(name: str, argtypes: list) -> Any:
    """c-blosc's function `name` (returning an int) from the library numcodecs built and loaded,
    typed; None where it does not export it."""
    try:
        fn = getattr(ctypes.CDLL(_blosc.__file__), name)
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = argtypes, ctypes.c_int
    return fn


@functools.cache
def _blosc_ctx() -> Any:
    """blosc_decompress_ctx(src, dest, destsize, nthreads), or None (numcodecs is then called instead)."""
    return _blosc_function("blosc_decompress_ctx", [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int])


@functools.cache
def _blosc_getitem() -> Any:
    """blosc_getitem(src, start, nitems, dest) (see gpz_blosc_calls in kernels/host_calls.cpp), or None."""
    return _blosc_function("blosc_getitem", [ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_void_p])


@functools.cache
def _blosc_calls() -> Any:
    """The host library's table of blosc's calls (gpz_blosc_calls in kernels/host_blosc.h):
    blosc_decompress_ctx, and blosc_getitem (NULL where it is not exported: every frame is then
    decoded whole), which decodes only the blocks that hold the bytes a window reads; then
    libdeflate's decompressor and zlib call (NULL without the deflate package), which inflate
    frames of blosc's zlib format (c-blosc's own zlib: 1.7x the time). None without
    blosc_decompress_ctx."""
    decompress, getitem = _blosc_ctx(), _blosc_getitem()
    if decompress is None:
        return None
    inflate = libdeflate.zlib_calls() or (None, None, None)
    return (ctypes.c_void_p * 5)(*(None if fn is None else ctypes.cast(fn, ctypes.c_void_p).value
                                   for fn in (decompress, getitem, *inflate)))


_BLOSC_ZLIB = 3  # blosc's zlib format, in its header's flags (bits 5-7)


def _blosc_zlib_direct(flags: int) -> bool:
    """Whether a blosc frame with these header flags is inflated by the host library's libdeflate
    path (kernels/host_blosc.cpp): of the zlib format, with the library and libdeflate there."""
    calls = _blosc_calls()
    return flags >> 5 == _BLOSC_ZLIB and calls is not None and calls[4] is not None and host_lib.built()


class Crc32c(BytesBytesCodec):
    def decode(self, data: Buffer) -> Buffer:
        return strip_crc32c(_as_view(data), "crc32c")


def strip_crc32c(view: memoryview, what: str) -> memoryview:
    """Verify the 4-byte little-endian CRC32C at the end of `view` and return the bytes before it."""
    if len(view) < 4:
        raise CorruptDataError(f"{what}: {len(view)} bytes cannot hold a crc32c checksum")
    body = view[:-4]
    stored = int.from_bytes(view[-4:], "little")
    actual = _crc32c.crc32c(body)
    if stored != actual:
        raise CorruptDataError(f"{what}: checksum mismatch (stored {stored:#010x}, computed {actual:#010x})")
    return body


def strip_crc32c_batch(staging: np.ndarray, offsets: np.ndarray, sizes: np.ndarray, checks: int,
                       labels: list) -> np.ndarray:
    """Verify `checks` trailing crc32c codecs of every chunk (one C call each); sizes without them."""
    if not checks:
        return sizes
    view = memoryview(staging)
    for start, size, label in zip(offsets.tolist(), sizes.tolist(), labels):
        data = view[start:start + size]
        for _ in range(checks):
            data = strip_crc32c(data, f"{label} (crc32c codec)")
    return sizes - 4 * checks


class Lz4(BytesBytesCodec):
    """numcodecs LZ4: a 4-byte little-endian decoded size, then one LZ4 block. Into a given
    buffer by one LZ4_decompress_safe call (ctypes, GIL released: ~3 us a frame less than
    numcodecs' codec, 45% of an 8 KiB chunk's decode), numcodecs' codec where that is missing."""

    _codec = numcodecs.LZ4()

    def decode(self, data: Buffer) -> Buffer:
        view = _as_view(data)
        if len(view) >= 4:  # numcodecs allocates what the prefix says
            _check_claim(int.from_bytes(view[:4], "little"), len(view), "lz4 frame")
        return _numcodecs_call(self._codec.decode, view, "lz4")

    def decode_into(self, data: Buffer, out: np.ndarray) -> None:
        """`out`: contiguous uint8 of the chunk's decoded size."""
        view = _as_view(data)
        if len(view) < 4:
            raise CorruptDataError("lz4 frame is shorter than its 4-byte size prefix")
        _expect_claim(int.from_bytes(view[:4], "little"), out.nbytes, "lz4 frame")
        decompress = _lz4_direct(len(view), out.nbytes)
        if decompress is not None and decompress(host_lib.address(view) + 4, host_lib.address(out), len(view) - 4,
                                                 out.nbytes) == out.nbytes:
            return
        self._decode_numcodecs(view, out)

    def decode_rows(self, staging: np.ndarray, offsets: np.ndarray, sizes: np.ndarray, out: np.ndarray,
                    labels: list) -> None:
        """Decode frame i (`sizes[i]` bytes at `offsets[i]` of `staging`) into row i of `out`
        (k, decoded size) uint8: every size prefix checked at once, then one LZ4 call per frame
        straight into its row; a frame that call refuses goes to numcodecs, whose error names it."""
        k, nbytes = out.shape
        if k == 0:
            return
        self._check_rows(staging, offsets, sizes, nbytes, labels)
        decompress = _lz4_direct(int(sizes.max()), nbytes)
        rest = np.arange(k)
        if decompress is not None:
            src, dst = staging.ctypes.data + 4 + offsets, out.ctypes.data + nbytes * rest
            if host_lib.available("lz4"):  # the loop in C: the GIL released once, not per frame
                got = host_lib.each_lz4(decompress, src, sizes - 4, dst, nbytes)
            else:
                got = [decompress(s, d, n, nbytes) for s, d, n in zip(src.tolist(), dst.tolist(), (sizes - 4).tolist())]
            rest = np.flatnonzero(np.asarray(got) != nbytes)
        _each_named(self._decode_numcodecs, staging, rest, offsets, sizes, out, labels)

    def direct(self, staging: np.ndarray, offsets: np.ndarray, sizes: np.ndarray, nbytes: int,
               labels: list) -> tuple | None:
        """(decoder, block addresses, their sizes: past the prefix) for host_lib.decode_scatter,
        every prefix checked (_check_rows raises); None where liblz4 cannot be called directly."""
        self._check_rows(staging, offsets, sizes, nbytes, labels)
        decoder = self.decoder(nbytes) if sizes.size and _lz4_direct(int(sizes.max()), nbytes) else None
        return None if decoder is None else (decoder, staging.ctypes.data + 4 + offsets, sizes - 4)

    @staticmethod
    def decoder(nbytes: int) -> tuple | None:
        """The direct decoder (host_lib.decode_scatter's) of blocks of `nbytes`, where liblz4 is
        exported and numcodecs would call it for them (_lz4_direct; frames of at most
        DIRECT_LIMITS' bytes)."""
        decompress = _lz4_direct(0, nbytes)
        return None if decompress is None else ("lz4", decompress, None)

    @staticmethod
    def _check_rows(staging: np.ndarray, offsets: np.ndarray, sizes: np.ndarray, nbytes: int, labels: list) -> None:
        """Every size prefix against `nbytes`, for the whole batch at once."""
        short = np.flatnonzero(sizes < 4)
        if short.size:
            raise CorruptDataError(f"{labels[short[0]]}: lz4 frame is shorter than its 4-byte size prefix")
        prefix = staging[offsets[:, None] + np.arange(4)].view("<u4").reshape(-1)
        wrong = np.flatnonzero(prefix != nbytes)
        if wrong.size:
            i = int(wrong[0])
            raise claim_error(f"{labels[i]}: lz4 frame", int(prefix[i]), nbytes)

    def _decode_numcodecs(self, view: memoryview, out: np.ndarray) -> None:
        _count_fallback("lz4:refused" if _lz4_safe() is not None else "lz4:no-liblz4")
        _numcodecs_call(self._codec.decode, view, "lz4", out=out)


# What host_lib.read_decode_scatter checks its frames against, as the Python checks do: zstd
# blocks walked at most (a walk there costs ~1 ns a block, so frames of 4 GiB: the NumPy walk's
# _ZSTD_BLOCK_STEPS gave chunks over 8 MiB back to Python, counted as part:frame fallbacks), a
# blosc frame's expansion at most (_check_claim), an LZ4 frame's bytes at most (_lz4_direct)
DIRECT_LIMITS = (1 << 15, MAX_EXPANSION, numcodecs.LZ4.max_buffer_size)


def _lz4_direct(frame_bytes: int, nbytes: int) -> Any:
    """LZ4_decompress_safe where it decodes exactly what numcodecs' codec would (which calls it
    with the same arguments, after refusing sizes of 0, or beyond its int and buffer bounds);
    None otherwise (numcodecs then decodes, and refuses)."""
    return _lz4_safe() if 0 < nbytes < 2**31 and frame_bytes <= numcodecs.LZ4.max_buffer_size else None


@functools.cache
def _lz4_safe() -> Any:
    """liblz4's LZ4_decompress_safe(src, dst, compressed size, dst capacity) -> decoded size or
    < 0, from numcodecs' LZ4 extension; None where it does not export it."""
    try:
        fn = ctypes.CDLL(_numcodecs_lz4.__file__).LZ4_decompress_safe
    except (OSError, AttributeError):
        log.debug("numcodecs.lz4 exports no LZ4_decompress_safe: lz4 frames decode through numcodecs")
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


# numcodecs codecs whose decode yields Python objects: only an object array's first v2 filter
_OBJECT_CODECS = {"vlen-utf8", "vlen-bytes", "vlen-array", "json2", "pickle", "msgpack2", "json", "msgpack"}


class NumcodecsBytes(BytesBytesCodec):
    """Any other numcodecs codec (bz2, lzma, shuffle, checksums, v2 filters): decode, then view as bytes."""

    def __init__(self, name: str, config: dict, where: str = ""):
        super().__init__(name, config)
        if name in _OBJECT_CODECS:
            raise UnsupportedFeatureError(f"{where}: codec {name!r} yields Python objects: it is read only as "
                                          f"the first filter of a v2 object array")
        try:
            codec = numcodecs.get_codec(dict(config))
        except (KeyError, ValueError, TypeError) as exc:
            raise UnsupportedFeatureError(f"{where}: unknown codec {name!r} (numcodecs cannot build it from "
                                          f"{config!r}: {exc})") from None
        object.__setattr__(self, "_codec", codec)

    def decode(self, data: Buffer) -> Buffer:
        result = _numcodecs_call(self._codec.decode, data, self.name)
        if isinstance(result, np.ndarray):
            if result.dtype.hasobject:
                raise UnsupportedFeatureError(f"codec {self.name!r} yields Python objects; use it as a filter")
            return np.ascontiguousarray(result).reshape(-1).view(np.uint8)
        return result


# c-blosc's compressor codes (the header's flags, bits 5-7) and their names
_BLOSC_FORMATS = {0: "blosclz", 1: "lz4", 2: "snappy", 3: "zlib", 4: "zstd"}


def _blosc_failure(frame: memoryview, got: int) -> GpuzarrError:
    """What a frame c-blosc would not decode is: one of a compressor this c-blosc was built
    without (numcodecs' wheels have no snappy; the GPU decodes it), else corrupt."""
    name = _BLOSC_FORMATS.get(frame[2] >> 5) if len(frame) >= 16 else None
    if name is not None and name not in _blosc.list_compressors():
        return UnsupportedFeatureError(f"blosc frame compressed with {name}: the c-blosc numcodecs carries is built "
                                       f"without it (read on the GPU, where nvCOMP decodes it, or re-compress)")
    return CorruptDataError(f"cannot decode blosc frame (c-blosc returned {got})")


def _numcodecs_call(fn: Any, data: Buffer, what: str, **kwargs: Any) -> Any:
    try:
        return fn(data, **kwargs)
    except (RuntimeError, ValueError, TypeError, IndexError, OverflowError, OSError, EOFError, zlib.error) as exc:
        raise CorruptDataError(f"cannot decode {what} frame ({exc})") from None
    except Exception as exc:  # bz2/lzma raise their own error types
        if type(exc).__module__ in ("_lzma", "lzma", "_bz2", "bz2"):
            raise CorruptDataError(f"cannot decode {what} frame ({exc})") from None
        raise


_V3_CODECS = {"zstd": Zstd, "gzip": Gzip, "blosc": Blosc, "crc32c": Crc32c}
# numcodecs ids for which gpuzarr owns the framing checks (v2 compressors and numcodecs.* in v3).
_NUMCODECS_NATIVE = {"zstd": Zstd, "gzip": Gzip, "zlib": Zlib, "blosc": Blosc, "lz4": Lz4}


_INT = (int,)
_V3_CONFIG = {  # field: (accepted types, allowed values or None)
    "zstd": {"level": (_INT, None), "checksum": ((bool,), None)},
    "gzip": {"level": (_INT, range(10))},
    "blosc": {"cname": ((str,), {"lz4", "lz4hc", "blosclz", "zstd", "snappy", "zlib"}),
              "clevel": (_INT, range(10)), "shuffle": ((str,), {"noshuffle", "shuffle", "bitshuffle"}),
              "typesize": (_INT, None), "blocksize": (_INT, None)},
    "crc32c": {},
}


def _check_config(name: str, config: dict, where: str) -> None:
    for key, value in config.items():
        rule = _V3_CONFIG[name].get(key)
        if rule is None:
            raise MetadataError(f"{where}: unknown {name} codec setting {key!r}")
        types, allowed = rule
        if isinstance(value, bool) and bool not in types or not isinstance(value, types) or (
                allowed is not None and value not in allowed):
            raise MetadataError(f"{where}: {name} codec setting {key}={value!r} is not valid")


def build_v3(name: str, config: dict, where: str) -> BytesBytesCodec | None:
    """The spec's bytes→bytes codecs by v3 name; None if `name` is not one."""
    cls = _V3_CODECS.get(name)
    if cls is None:
        return None
    _check_config(name, config, where)
    return cls(name, config)


def build_numcodecs(codec_id: str, config: dict, where: str) -> BytesBytesCodec:
    """A numcodecs codec by id, with `config` including the "id" key."""
    cls = _NUMCODECS_NATIVE.get(codec_id)
    if cls is not None:
        return cls(codec_id, config)
    return NumcodecsBytes(codec_id, config, where)
