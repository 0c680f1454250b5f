"""The host half of the GPU device: turn a fetched batch into the work of a fixed number of
device calls. Pure NumPy, so it is tested on machines without a GPU.

Every present chunk's bytes→bytes chain is resolved on the host into *streams* that nvCOMP
decodes raw (framing is stripped here: gzip/zlib headers and trailers, the numcodecs LZ4 size
prefix, blosc headers and block tables) plus *copies* (stored bytes) and *unshuffles* (blosc
blocks). Framing is checked and the tables are built for the whole batch at once with NumPy
(zstd, blosc, gzip, zlib, LZ4, stored chunks); a chunk those checks leave out (corrupt, or of a
rare form: a gzip member with a name or comment, blosclz) goes through the per-chunk path, which
says what is wrong, or decodes it on the CPU. Checksums are verified on the device: the layout lists their messages and the values
stored with them (`checksums`). A chunk whose codec has no GPU decoder is decoded on the CPU
(checksums included) and uploaded as a copy. The device then runs:

1. one host→device copy of `staging`: the fetched buffer itself wherever every stream, copy and
   checksum can be read where fetch put it (nvCOMP's own alignment query says where it can,
   `decode_alignments`); else a copy of it with the moved bytes after it (or those alone);
2. one nvCOMP CRC32C call over the stored bytes of every chunk with crc32c codecs (`checksums["crc32c"]`);
3. one nvCOMP batched decode per algorithm in `streams`, into `work`;
4. one nvCOMP CRC32 call over the decoded bytes of every gzip member (`checksums["crc32"]`);
5. one copy launch staging→work (`copies`), one work→work (`moves`);
6. one launch per shuffle kind (`unshuffles`, work→work);
then the shared placement code views rows 0..n-1 of `work` (each `raw_nbytes`) as the chunks.
`work` is `n * raw_nbytes` bytes of decoded chunks, then (aligned) `temp_nbytes` of scratch.
"""

from __future__ import annotations

import ctypes
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..blosc_frames import (COMPRESSORS, FLAG_MEMCPYED, SHUFFLE_BIT, SHUFFLE_BYTE, SHUFFLE_NONE, BloscBatch,
                            parse_blosc_batch, parse_blosc_frame, read_le_where)
from ..codecs.bytes_to_bytes import (Blosc, Gzip, Lz4, Zlib, Zstd, check_zstd_frames, strip_crc32c, zstd_frame_walk,
                                     zstd_walk, zstd_whole_frames, zstd_write_bounds)
from ..codecs.chain import CodecChain
from ..errors import CorruptDataError, claim_error
from ..fetch import FetchedBatch
from ..plan import SMALL

# The granule of work's temp area and of bytes moved in staging, and where fetch starts each
# stored (uncompressed) chunk (fetch_align): above every minimum nvCOMP states
# (decode_alignments), as its headers advise ("Providing buffers with alignments above the
# minimum requirements (e.g., 16- or 32-byte alignment) may help improve performance", at each
# *DecompressGetRequiredAlignments), but no stream is moved to meet it.
ALIGN = 16
# nvCOMP 6.0 writes a stream's whole output whatever buffer size it is told (measured on an H200
# for zstd, LZ4 and Deflate: 1 MiB written behind a buffer declared 16 bytes long). An LZ4, gzip
# or blosc stream's framing states its decoded size (numcodecs' LZ4 prefix, gzip's ISIZE, a blosc
# block's size, each checked against the chunk's): it decodes past it only if it is corrupt,
# which nvCOMP's contract leaves undefined. The others get room for the most they can decode to:
# a zstd frame (a content size or not) its bound from its block headers (_zstd_bounds), a zlib
# stream 1032 bytes a stored byte (Deflate: 258 bytes for a 1-bit length and a 1-bit distance
# code). Work keeps that room behind its rows, up to ROOM or the rows' own size, whichever is
# larger; a stream that would need more is decoded on the host. A stream that decodes past its
# buffer then fails the read on its size.
# Behind every batch with streams, SLACK more: a corrupt stream of a stated size that overruns it
# by up to that much writes there, and fails the read on its size, not into another buffer (in a
# probe, an overrun rewrote the statuses nvCOMP had just written).
DEFLATE_EXPANSION = 1032
ROOM = 64 << 20
SLACK = 1 << 20
# nvCOMP's per-chunk decompression limits (nvcomp*DecompressionMaxAllowedChunkSize, nvCOMP 6)
MAX_DECODED = {"zstd": (1 << 31) - 1, "snappy": (1 << 31) - 1, "deflate": (1 << 32) - 1, "lz4": (1 << 32) - 1}
# blosc compressor → nvCOMP algorithm; blosclz has no GPU decoder
_BLOSC_ALGORITHMS = {"lz4": "lz4", "zstd": "zstd", "zlib": "deflate", "snappy": "snappy"}
_BLOSC_CODES = np.array([_BLOSC_ALGORITHMS.get(COMPRESSORS[c], "") for c in sorted(COMPRESSORS)])  # by flags >> 5


def _align(n: Any, to: int = ALIGN) -> Any:
    return -(-n // to) * to


@functools.cache
def decode_alignments() -> dict[str, tuple[int, int]]:
    """Per stream kind (zstd, deflate, lz4, snappy): the alignment nvCOMP needs of each
    compressed input and of each decoded output, nvCOMP's own answer for the options gpuzarr
    decodes with (nvcompBatched*DecompressGetRequiredAlignments with the CUDA backend, which
    answers without a GPU), asked once per process. nvCOMP 6.0 answers 1 everywhere but deflate's
    input (4); tests/test_nvcomp_capi.py pins that, and the CPU stand-in asserts it of every call.

    That query is the contract for decompression buffers: each DecompressAsync says of
    device_compressed_chunk_ptrs "Each chunk must be aligned to the value in the `input` member of
    the nvcompAlignmentRequirements_t object output by
    `nvcompBatched<Alg>DecompressGetRequiredAlignments`" and of device_uncompressed_chunk_ptrs
    "be aligned to the value in the `output` member" (zstd.h, lz4.h, deflate.h, snappy.h). The
    higher constants beside it (nvcompZstdRequiredDecompressionAlignment = 8, LZ4 4, Deflate 4,
    Gzip 8) are documented as "The most restrictive of the minimum alignment requirements for
    void-type CUDA memory buffers used for input, output, or temporary memory, passed to
    decompression functions": one bound over the three kinds of buffer, whatever the options
    (zstd's 8 is its temp buffer's, `temp` of the query), not the inputs' requirement. The temp
    buffer (nvcomp_batch's CuPy allocation, 256-byte aligned) and the typed pointer and size
    arrays (aligned to their type, as the constants' @note asks: CuPy allocations and rows of
    them) meet any of these. Without nvCOMP's library (no GPU path then: the stand-in's tests
    elsewhere) every buffer is ALIGN-ed, more than nvCOMP 6 asks of any."""
    from .nvcomp_batch import NVCOMP_ALGORITHMS

    try:
        from .nvcomp_capi import BACKEND_CUDA, Alignments, DecompressOpts, load

        functions = load()
    except (ImportError, OSError, AttributeError):
        return {kind: (ALIGN, ALIGN) for kind in NVCOMP_ALGORITHMS}
    found = {}
    for kind, name in NVCOMP_ALGORITHMS.items():
        got = Alignments()
        status = functions[(name, "DecompressGetRequiredAlignments")](DecompressOpts(backend=BACKEND_CUDA),
                                                                      ctypes.byref(got))
        if status != 0:
            raise RuntimeError(f"nvcompBatched{name}DecompressGetRequiredAlignments returned status {status}")
        found[kind] = (int(got.input), int(got.output))
    return found


def fetch_align(chain: CodecChain) -> int:
    """Where fetch starts each chunk of a local read (GpuDevice.staging_align): only as far
    apart as a stream that starts where its chunk does must be, nvCOMP's input alignment for a
    zstd frame (1 in nvCOMP 6), so a coalesced range lands by one preadv into one buffer; 16-byte
    starts made every chunk a buffer of its own, and the host half 8-25% slower on the 2-D sets
    (2d-64 full 11.5 -> 8.7 ms, 2d-128 5.4 -> 5.0, alternated medians of 15). Stored chunks
    start at ALIGN, for the copy kernel's 16-byte words. Every other stream lies past a header
    (blosc, gzip, zlib, numcodecs' LZ4 prefix): chunk starts do not align it, and the layout moves
    the few nvCOMP could not read where they are (GpuBatchLayout.stage_many)."""
    codecs = chain.bytes_to_bytes[:len(chain.bytes_to_bytes) - chain.trailing_crc32c]
    if not codecs:
        return ALIGN
    return decode_alignments()["zstd"][0] if isinstance(codecs[-1], Zstd) else 1


@functools.cache
def _granule() -> int:
    """ALIGN, or more if nvCOMP ever asks for more: what temp slots and moved bytes start at."""
    return math.lcm(ALIGN, *(a for pair in decode_alignments().values() for a in pair))


class _Table:
    """Growable columns of int64 (one row per stream/copy/unshuffle)."""

    def __init__(self, *names: str):
        self.names = names
        self.rows: list[tuple[int, ...]] = []
        self.blocks: list[tuple[np.ndarray, ...]] = []  # whole-batch columns, added at once
        self.block_rows = 0

    def add(self, *values: int) -> None:
        self.rows.append(values)

    def extend(self, *columns: np.ndarray) -> None:
        self.blocks.append(tuple(np.asarray(c, np.int64) for c in columns))
        self.block_rows += len(columns[0])

    def arrays(self) -> dict[str, np.ndarray]:
        if not self.rows and not self.blocks:  # most tables of a batch: ~3 us instead of ~12
            return {name: np.zeros(0, np.int64) for name in self.names}
        data = np.array(self.rows, dtype=np.int64).reshape(len(self.rows), len(self.names))
        return {name: np.concatenate([data[:, i], *(b[i] for b in self.blocks)]) for i, name in enumerate(self.names)}

    def __len__(self) -> int:
        return len(self.rows) + self.block_rows


@dataclass
class GpuBatchLayout:
    n: int
    raw_nbytes: int
    present: np.ndarray
    staging: np.ndarray  # uint8, uploaded in one copy
    staging_token: Any  # what the engine needs back to upload `staging` (its pinned slot's event)
    streams: dict[str, dict[str, np.ndarray]]  # algorithm -> src, src_size, dst, dst_size, chunk
    copies: dict[str, np.ndarray]  # staging -> work: src, dst, size
    moves: dict[str, np.ndarray]  # work -> work (after decoding): src, dst, size
    unshuffles: dict[int, dict[str, np.ndarray]]  # kind -> src, dst, size, typesize (work -> work)
    temp_nbytes: int
    cpu_fallback: list[int] = field(default_factory=list)  # chunks decoded on the host
    labels: list = field(default_factory=list)
    # "crc32c": messages in staging (the stored bytes before each crc32c trailer), checked before
    # decoding; "crc32": gzip members' decoded bytes in work, checked after. Columns src, size,
    # expected (the stored value), chunk; per chunk outermost codec first, as the CPU checks them.
    checksums: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    per_frame: int = 0  # chunks the whole-batch framing left to the per-chunk path (odd or corrupt frames)

    @property
    def work_nbytes(self) -> int:
        return _align(self.n * self.raw_nbytes) + self.temp_nbytes


class _NoGpuDecoder(Exception):
    """This chunk's codec has no nvCOMP decoder: decode it on the CPU."""


class _Builder:
    """Tables of one batch, their staging offsets into the fetched buffer (`batch.staging`) where
    nvCOMP may read the bytes there, else into a moved area after it (from `base`): pieces of
    the fetched buffer that miss their algorithm's input alignment, and bytes made on the host
    (the per-chunk path's, CPU-decoded chunks)."""

    def __init__(self, batch: FetchedBatch, raw_nbytes: int, n_checks: int):
        self.batch, self.raw_nbytes, self.n_checks = batch, raw_nbytes, n_checks
        self.alignments = decode_alignments()
        self.granule = _granule()
        self.base = _align(batch.staging.size, self.granule)  # where moved bytes go
        self.pos = self.base
        self.in_place = False  # whether any table points into the fetched bytes
        self.parts: list[tuple[int, Any]] = []  # (offset in staging, a bytes-like piece of it)
        self.pieces: list[tuple[np.ndarray, ...]] = []  # (offsets in staging, in batch.staging, sizes)
        self.temp = 0
        self.temp_base = _align(batch.n * raw_nbytes, self.granule)
        self.reach = 0  # where the furthest byte nvCOMP may write ends (see DEFLATE_EXPANSION)
        self.streams: dict[str, _Table] = {}
        self.copies = _Table("src", "dst", "size")
        self.moves = _Table("src", "dst", "size")
        self.stored = _Table("src", "size", "chunk")  # chunks staged whole for their crc32c codecs
        self.gzip_crcs = _Table("src", "size", "expected", "chunk")
        self.unshuffles = {SHUFFLE_BYTE: _Table("src", "dst", "size", "typesize"),
                           SHUFFLE_BIT: _Table("src", "dst", "size", "typesize")}

    def stage(self, data: Any, align: int = 1) -> int:
        """Host bytes into the moved area, at a multiple of `align`; returns the offset."""
        start = _align(self.pos, align)
        self.parts.append((start, data))
        self.pos = start + len(data)
        return start

    def stage_many(self, at: np.ndarray, size: np.ndarray, align: int = 1) -> np.ndarray:
        """Offsets in staging of the pieces batch.staging[at[k]:at[k] + size[k]], each at a
        multiple of `align`: where fetch put it if it is one, else moved."""
        moved = at % align != 0
        self.in_place |= bool(size.size) and not moved.all()
        if not moved.any():
            return at
        size_moved = size[moved]
        padded = _align(size_moved, align)
        start = at.copy()
        start[moved] = _align(self.pos, align) + np.cumsum(padded) - padded
        self.pieces.append((start[moved], at[moved], size_moved))
        self.pos = int(start[moved][-1] + size_moved[-1])
        return start

    def temp_slots(self, nbytes: np.ndarray) -> np.ndarray:
        """temp_slot for each size at once."""
        padded = _align(np.maximum(nbytes, 1), self.granule)
        start = self.temp_base + self.temp + np.cumsum(padded) - padded
        self.temp += int(padded.sum())
        return start

    def temp_slot(self, nbytes: int) -> int:
        """An aligned slot of the temp area, as an offset into work."""
        start = self.temp_base + self.temp
        self.temp += _align(max(nbytes, 1), self.granule)
        return start

    def stream(self, algorithm: str, data: Any, dst: int, dst_size: int, chunk: int, sized: bool = True) -> int:
        """nvCOMP decodes `data` (host bytes of chunk `chunk`) into work[dst:dst+dst_size];
        destinations it cannot write to go through temp. Returns where nvCOMP writes it.
        `sized`: whether its framing states dst_size (see DEFLATE_EXPANSION)."""
        if dst_size > MAX_DECODED[algorithm]:
            raise _NoGpuDecoder
        if algorithm == "zstd":  # a frame of any number of blocks
            frame = np.frombuffer(data, np.uint8)
            end, bound = zstd_frame_walk(frame)
            bound = int(_zstd_bounds(frame, np.zeros(1, np.int64), np.array([frame.size]),
                                     np.array([bound if end == frame.size else -1]))[0])
        else:
            bound = dst_size if sized else int(deflate_bounds(np.array([len(data)]))[0])
        at = self.temp_base + self.temp if dst % self.alignments[algorithm][1] else dst  # temp_slot's
        if not self.fits(np.array([at]), np.array([bound]))[0]:
            raise _NoGpuDecoder
        table = self.streams.setdefault(algorithm, _Table("src", "src_size", "dst", "dst_size", "chunk"))
        src = self.stage(data, self.alignments[algorithm][0])
        if at != dst:
            at = self.temp_slot(dst_size)
            self.moves.add(at, dst, dst_size)
        table.add(src, len(data), at, dst_size, chunk)
        self.reach = max(self.reach, at + bound)
        return at

    def fits(self, dst: np.ndarray, bounds: np.ndarray) -> np.ndarray:
        """Whether streams written from `dst` that may decode to `bounds` bytes (-1: not to be
        given to nvCOMP) stay within the room work may keep behind its rows (see DEFLATE_EXPANSION)."""
        return (bounds >= 0) & (dst + bounds <= self.temp_base + max(ROOM, self.temp_base))

    def streams_many(self, algorithm: str, at: np.ndarray, src_size: np.ndarray, dst: np.ndarray,
                     dst_size: np.ndarray, chunk: np.ndarray, bounds: np.ndarray) -> np.ndarray:
        """`stream` for many streams batch.staging[at[k]:at[k] + src_size[k]] at once (each
        dst_size within MAX_DECODED), read where fetch put them where nvCOMP may; returns where
        each is written. `bounds`: the most each may decode to (see DEFLATE_EXPANSION), none negative."""
        align_in, align_out = self.alignments[algorithm]
        src = self.stage_many(at, src_size, align_in)
        unaligned = np.flatnonzero(dst % align_out)
        if unaligned.size:
            slots = self.temp_slots(dst_size[unaligned])
            self.moves.extend(slots, dst[unaligned], dst_size[unaligned])
            dst = dst.copy()
            dst[unaligned] = slots
        if not dst.size:
            return dst
        table = self.streams.setdefault(algorithm, _Table("src", "src_size", "dst", "dst_size", "chunk"))
        table.extend(src, src_size, dst, dst_size, chunk)
        assert bounds.size == dst.size and (bounds >= 0).all()
        self.reach = max(self.reach, int((dst + bounds).max()))
        return dst

    def copy(self, data: Any, dst: int) -> None:
        """Host bytes, copied into work by the copy kernel (any alignment: scatter_core.cuh)."""
        self.copies.add(self.stage(data), dst, len(data))

    def store(self, chunk: int) -> None:
        """A chunk's stored bytes, whole, where fetch put them, for the device to verify its
        crc32c codecs (nvCOMP's CRC32 inputs "do not have any alignment requirements", crc32.h)."""
        self.stored.add(int(self.batch.offsets[chunk]), int(self.batch.sizes[chunk]), chunk)
        self.in_place = True

    def layout(self, present: np.ndarray, fallback: list[int], allocate: Callable[[int], tuple]) -> GpuBatchLayout:
        streams = {alg: t.arrays() for alg, t in self.streams.items()}
        copies, stored = self.copies.arrays(), self.stored.arrays()
        if self.pos == self.base:  # every byte where fetch put it: uploaded as it is
            staging, token = self.batch.staging, self.batch.token
        else:
            # the fetched bytes, when a table points into them, then the moved ones; else those alone
            shift = 0 if self.in_place else self.base
            staging, token = allocate(self.pos - shift)
            into, source = memoryview(staging), memoryview(self.batch.staging)  # slices of memoryviews: ~5x cheaper
            if self.in_place:
                into[:len(source)] = source
            for at, part in self.parts:
                into[at - shift:at - shift + len(part)] = part
            for start, at, size in self.pieces:
                for a, b, n in zip((start - shift).tolist(), at.tolist(), size.tolist()):
                    into[a:a + n] = source[b:b + n]
            for table in (*streams.values(), copies, stored):
                table["src"] -= shift
        checksums = {}
        if stored["size"].size:
            checksums["crc32c"] = crc32c_messages(staging, stored["src"], stored["size"], self.n_checks,
                                                  stored["chunk"])
        if len(self.gzip_crcs):
            checksums["crc32"] = self.gzip_crcs.arrays()
        return GpuBatchLayout(
            self.batch.n, self.raw_nbytes, present, staging, token, streams, copies, self.moves.arrays(),
            {kind: t.arrays() for kind, t in self.unshuffles.items() if len(t)},
            max(self.temp_base + self.temp + (SLACK if streams else 0), self.reach)
            - _align(self.batch.n * self.raw_nbytes), fallback, self.batch.labels, checksums)


def build_layout(batch: FetchedBatch, chain: CodecChain, cpu_decode: Callable[[int], np.ndarray],
                 allocate: Callable[[int], tuple] = lambda n: (np.empty(n, dtype=np.uint8), None)) -> GpuBatchLayout:
    """`cpu_decode(i)` decodes chunk i on the host (exactly raw_nbytes), for codecs nvCOMP lacks;
    `allocate(n)` gives (the staging buffer, page-locked on a GPU, written exactly once; a token
    the engine wants back with it)."""
    if _zstd_only(chain):
        return _zstd_layout(batch, chain, cpu_decode, allocate)
    raw_nbytes = chain.raw_nbytes
    codecs = chain.bytes_to_bytes
    n_checks = chain.trailing_crc32c
    inner = codecs[:len(codecs) - n_checks]  # decoded after the checksums are stripped
    b = _Builder(batch, raw_nbytes, n_checks)
    live = np.flatnonzero(batch.present)
    done = _add_whole_batch(b, inner, live)
    fallback: list[int] = []
    for i in live[~done].tolist():
        label = batch.labels[i]
        data = batch.chunk(i)
        try:
            if len(data) < 4 * n_checks:
                verify_crc32c_on_host(data, n_checks, label)  # raises the CPU path's error
            _add_chunk(b, inner, data[:len(data) - 4 * n_checks], i, raw_nbytes)
            if n_checks:
                b.store(i)
        except _NoGpuDecoder:
            fallback.append(i)  # cpu_decode verifies its checksums itself
            b.copy(np.ascontiguousarray(cpu_decode(i)).view(np.uint8).reshape(-1), i * raw_nbytes)
        except CorruptDataError as exc:
            verify_crc32c_on_host(data, n_checks, label)
            raise CorruptDataError(f"{label}: {exc}" if label not in str(exc) else str(exc)) from None
    layout = b.layout(batch.present, fallback, allocate)
    layout.per_frame = int(live.size - done.sum())
    return layout


def _add_whole_batch(b: _Builder, inner: tuple, live: np.ndarray) -> np.ndarray:
    """Lay out, as whole-batch arrays, the chunks among `live` whose framing passes every check the
    per-chunk path makes (the common case: all of them); returns which did. The others (corrupt,
    or of a form left to the per-chunk path) go chunk by chunk, which says what is wrong."""
    batch, raw, checks = b.batch, b.raw_nbytes, b.n_checks
    stored = batch.sizes[live]
    at, size = batch.offsets[live], np.maximum(stored - 4 * checks, 0)
    framing, algorithm = _FRAMINGS.get(type(inner[0]), (None, None)) if len(inner) == 1 else (
        (_copies, None) if not inner else (None, None))
    if framing is None or (algorithm and raw > MAX_DECODED[algorithm]):  # those go per chunk, to the CPU
        return np.zeros(live.size, bool)
    done = framing(b, live, at, size, stored >= 4 * checks)
    if checks and done.any():  # stored whole for the device to verify their crc32c codecs
        b.stored.extend(b.stage_many(at[done], stored[done]), stored[done], live[done])
    return done


def _copies(b: _Builder, chunks: np.ndarray, at: np.ndarray, size: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """Chunks stored as they are."""
    ok = ok & (size == b.raw_nbytes)
    b.copies.extend(b.stage_many(at[ok], size[ok]), chunks[ok] * b.raw_nbytes, size[ok])
    return ok


def deflate_bounds(stored: np.ndarray) -> np.ndarray:
    """The most bytes Deflate streams of `stored` bytes can decode to."""
    return DEFLATE_EXPANSION * stored.astype(np.int64) + 64


def _single_streams(b: _Builder, algorithm: str, chunks: np.ndarray, src: np.ndarray, size: np.ndarray,
                    ok: np.ndarray, sized: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """One nvCOMP stream per chunk among `ok`, each decoding to the whole chunk, where work has
    room for its bound (`sized`: its framing states the chunk's size; the others go chunk by
    chunk: to the host); returns which were laid out and where each is written."""
    bounds = np.full(chunks.size, b.raw_nbytes, np.int64) if sized else deflate_bounds(size)
    ok = ok & b.fits(chunks * b.raw_nbytes, bounds)
    raw = np.full(int(ok.sum()), b.raw_nbytes, np.int64)
    return ok, b.streams_many(algorithm, src[ok], size[ok], chunks[ok] * b.raw_nbytes, raw, chunks[ok], bounds[ok])


def _lz4_streams(b: _Builder, chunks: np.ndarray, at: np.ndarray, size: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """numcodecs LZ4: a 4-byte LE decoded size, which must be the chunk's, then the block."""
    prefix = read_le_where(b.batch.staging, at, 4, ok & (size >= 4))
    return _single_streams(b, "lz4", chunks, at + 4, size - 4, ok & (size >= 4) & (prefix == b.raw_nbytes))[0]


def _zlib_streams(b: _Builder, chunks: np.ndarray, at: np.ndarray, size: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """RFC 1950: the header checked as zlib_to_deflate checks it; the deflate stream between it
    and the Adler-32."""
    ok = ok & _zlib_header_ok(b.batch.staging, at, ok & (size >= 6)) & (size >= 6)
    return _single_streams(b, "deflate", chunks, at + 2, size - 6, ok, sized=False)[0]


def _zlib_header_ok(staging: np.ndarray, at: np.ndarray, inside: np.ndarray) -> np.ndarray:
    cmf, flg = (read_le_where(staging, at + k, 1, inside) for k in (0, 1))
    return (cmf & 0x0F == 8) & ((cmf << 8 | flg) % 31 == 0) & (flg & 0x20 == 0)


def _gzip_streams(b: _Builder, chunks: np.ndarray, at: np.ndarray, size: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """RFC 1952 members checked as gzip_to_deflate checks them (magic, method, flags, FEXTRA,
    FHCRC, ISIZE against the chunk size); members with a file name or comment go per chunk. The
    CRC-32 in the trailer is listed for the device, over the decoded bytes."""
    staging, raw = b.batch.staging, b.raw_nbytes
    inside = ok & (size >= 18)
    head = read_le_where(staging, at, 4, inside)
    flags = head >> 24
    extra = np.where(flags & 4, 2 + read_le_where(staging, at + 10, 2, inside), 0)
    start = 10 + extra + np.where(flags & 2, 2, 0)
    fits = inside & (size >= start + 8)
    isize = read_le_where(staging, at + size - 4, 4, fits)
    ok = fits & (head & 0xFFFFFF == 0x088B1F) & (flags & 0xF8 == 0) & (isize == raw % (1 << 32))
    ok, dst = _single_streams(b, "deflate", chunks, at + start, size - start - 8, ok)
    crc = read_le_where(staging, at[ok] + size[ok] - 8, 4, np.ones(dst.size, bool))
    b.gzip_crcs.extend(dst, np.full(dst.size, raw, np.int64), crc, chunks[ok])
    return ok


def _blosc_streams(b: _Builder, chunks: np.ndarray, at: np.ndarray, size: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """Blosc frames taken apart together (parse_blosc_batch): those the per-chunk path would lay
    out as they are (see _blosc_accepted). Raw streams are copies; streams of shuffled blocks
    decode into a temp copy of the chunk, which the unshuffle kernels write into its row."""
    p = parse_blosc_batch(b.batch.staging, at, size, b.raw_nbytes)
    codes = _BLOSC_CODES[np.where(p.parsed, p.flags >> 5, 0)]  # per frame: nvCOMP's algorithm, or ""
    ok = ok & _blosc_accepted(b.batch.staging, p, at, size, codes)
    bounds = p.stream_dsize.astype(np.int64)  # a blosc block states its size
    k = (p.stream_csize != p.stream_dsize) & (codes[p.stream_frame] == "zstd")
    bounds[k] = _zstd_bounds(b.batch.staging, p.stream_src[k], p.stream_csize[k])
    ok[p.stream_frame[(bounds < 0) | (bounds > ROOM)]] = False  # those go chunk by chunk, to the host
    keep = ok[p.stream_frame]
    blocks = ok[p.block_frame]
    shuffled = np.zeros(ok.size, bool)
    shuffled[p.block_frame[blocks & (p.block_shuffle != SHUFFLE_NONE)]] = True
    area = np.full(ok.size, -1, np.int64)  # the temp copy of each chunk with shuffled blocks
    area[shuffled] = b.temp_slots(np.full(int(shuffled.sum()), b.raw_nbytes, np.int64))
    row = chunks * b.raw_nbytes
    frame = p.stream_frame
    target = np.where(p.block_shuffle[p.stream_block] != SHUFFLE_NONE, area[frame], row[frame]) + p.stream_dst
    stored = keep & (p.stream_csize == p.stream_dsize)
    b.copies.extend(b.stage_many(p.stream_src[stored], p.stream_csize[stored]), target[stored],
                    p.stream_csize[stored])
    algorithm = codes[frame]
    for name in np.unique(algorithm[keep & ~stored]).tolist():
        k = keep & ~stored & (algorithm == name)
        src, csize = p.stream_src[k], p.stream_csize[k]
        if name == "deflate":  # blosc's zlib streams are RFC 1950 streams
            src, csize = src + 2, csize - 6
        b.streams_many(name, src, csize, target[k], p.stream_dsize[k], chunks[frame[k]], bounds[k])
    for kind in (SHUFFLE_BYTE, SHUFFLE_BIT):
        k = blocks & (p.block_shuffle == kind)
        off, of = p.block_offset[k], p.block_frame[k]
        b.unshuffles[kind].extend(area[of] + off, row[of] + off, p.block_size[k], p.block_typesize[k])
    return ok


def _blosc_accepted(staging: np.ndarray, p: BloscBatch, at: np.ndarray, size: np.ndarray,
                    codes: np.ndarray) -> np.ndarray:
    """Per frame: parsed, its header's size is the frame's (as _add_blosc), memcpyed or compressed
    with a codec nvCOMP decodes, and its zlib streams' headers pass zlib_to_deflate's check."""
    ok = p.parsed & (read_le_where(staging, at + 12, 4, p.parsed) == size) & ((codes != "") | (p.flags & FLAG_MEMCPYED != 0))
    zlib = np.flatnonzero((p.stream_csize != p.stream_dsize) & (codes[p.stream_frame] == "deflate"))
    csize = p.stream_csize[zlib]
    bad = zlib[~(_zlib_header_ok(staging, p.stream_src[zlib], csize >= 6) & (csize >= 6))]
    ok[p.stream_frame[bad]] = False
    return ok


# codec -> (its whole-batch framing, the algorithm whose chunk-size limit the whole chunk meets;
# blosc's streams are blocks, below every limit)
_FRAMINGS = {Blosc: (_blosc_streams, None), Lz4: (_lz4_streams, "lz4"), Zlib: (_zlib_streams, "deflate"),
             Gzip: (_gzip_streams, "deflate")}


def verify_crc32c_on_host(data: memoryview, n_checks: int, label: str) -> None:
    """The chunk's crc32c codecs, checked here: on the error path only, so a chunk the host
    refuses fails with a checksum mismatch first where it has one, as on the CPU path."""
    for _ in range(n_checks):
        data = strip_crc32c(data, f"{label} (crc32c codec)")


def crc32c_messages(staging: np.ndarray, at: np.ndarray, stored: np.ndarray, n_checks: int,
                    chunks: np.ndarray) -> dict[str, np.ndarray]:
    """The messages of `n_checks` trailing crc32c codecs of the chunks stored whole at `at`
    (sizes `stored`, each >= 4 * n_checks) in `staging`, the host copy of what is uploaded: the
    k-th codec from the end covers the bytes before its trailer (the trailers of the codecs
    after it included); the stored values are read here, whole-batch, and compared on the device."""
    size = (stored[:, None] - 4 * np.arange(1, n_checks + 1)).reshape(-1)  # chunk-major, outermost first
    src = np.repeat(at, n_checks)
    trailers = staging[(src + size)[:, None] + np.arange(4)] if size.size else np.zeros((0, 4), np.uint8)
    expected = np.ascontiguousarray(trailers).view("<u4").reshape(-1).astype(np.int64)
    return {"src": src, "size": size, "expected": expected, "chunk": np.repeat(chunks, n_checks)}


def _zstd_only(chain: CodecChain) -> bool:
    """zstd alone (then crc32c codecs, maybe) within nvCOMP's per-chunk limit: the layout is
    computed for the whole batch at once, without a Python step per chunk but the copy."""
    codecs = chain.bytes_to_bytes
    return (len(codecs) - chain.trailing_crc32c == 1 and isinstance(codecs[0], Zstd)
            and chain.raw_nbytes <= MAX_DECODED["zstd"])


def _zstd_layout(batch: FetchedBatch, chain: CodecChain, cpu_decode: Callable[[int], np.ndarray],
                 allocate: Callable[[int], tuple]) -> GpuBatchLayout:
    """Streams of a zstd batch as whole-batch arrays: frame headers checked (content sizes
    against the chunk size) for every chunk at once, crc32c codecs listed for the device, frames
    read where fetch put them (where nvCOMP's input alignment allows, which for zstd is
    everywhere), decoded straight into its row of work (through temp where its output alignment
    does not allow that). A chunk that is not one frame ending at its end (cut short, bytes or a
    frame after it: a frame nvCOMP might decode without a word, the stand-in did) is decoded on
    the host, which decodes frames back to back as the CPU path does and says what is wrong
    with the others (`cpu_decode`, counted in the layout's cpu_fallback)."""
    raw, checks = chain.raw_nbytes, chain.trailing_crc32c
    live = np.flatnonzero(batch.present)
    offsets, stored = batch.offsets[live], batch.sizes[live]
    def label(k: int) -> str:  # of live chunk k: looked up on the error path only
        return batch.labels[int(live[k])]

    short = np.flatnonzero(stored < 4 * checks)
    if short.size:  # too short for its checksums: the host says so as the CPU path does
        verify_crc32c_on_host(batch.chunk(int(live[short[0]])), checks, label(int(short[0])))
    sizes = stored - 4 * checks
    fallback: list[int] = []
    bounds = np.empty(live.size, np.int64)
    if not zstd_whole_frames(batch.staging, offsets, sizes, raw, bounds):  # else every frame passes its checks
        check_zstd_frames(batch.staging, offsets, sizes, raw, label,
                          lambda k: verify_crc32c_on_host(batch.chunk(int(live[k])), checks, label(k)))
        ends, bounds = zstd_walk(batch.staging, offsets, sizes)
        odd = np.flatnonzero(ends != offsets + sizes)  # not vouched for: each walked in Python
        if odd.size:
            walked = np.array([zstd_frame_walk(batch.staging[o:o + n])
                               for o, n in zip(offsets[odd].tolist(), sizes[odd].tolist())], np.int64).reshape(-1, 2)
            bounds[odd] = walked[:, 1]
            whole = np.ones(live.size, bool)
            whole[odd] = walked[:, 0] == sizes[odd]
            fallback = live[~whole].tolist()
            live, offsets, stored, sizes, bounds = (a[whole] for a in (live, offsets, stored, sizes, bounds))
    b = _Builder(batch, raw, checks)
    bounds = _zstd_bounds(batch.staging, offsets, sizes, bounds)
    given = b.fits(live * raw, bounds)
    if not given.all():  # frames nvCOMP must not be given: decoded on the host
        fallback += live[~given].tolist()
        live, offsets, stored, sizes, bounds = (a[given] for a in (live, offsets, stored, sizes, bounds))
    if live.size:
        b.streams_many("zstd", offsets, sizes, live * raw, np.full(live.size, raw, np.int64), live, bounds)
        if checks:
            b.stored.extend(b.stage_many(offsets, stored), stored, live)
    for i in fallback:  # cpu_decode verifies their checksums itself
        b.copy(np.ascontiguousarray(cpu_decode(i)).view(np.uint8).reshape(-1), i * raw)
    return b.layout(batch.present, fallback, allocate)


def _zstd_bounds(staging: np.ndarray, at: np.ndarray, size: np.ndarray,
                 bounds: np.ndarray | None = None) -> np.ndarray:
    """zstd_write_bounds of the frames (`bounds`: the caller's, from the host library or a
    walk), -1 for those nvCOMP must not be given: a frame that cannot be walked, or one with a
    content checksum (nvCOMP 6.0 does not verify it: measured, a frame whose checksum was
    flipped decoded with status success; libzstd on the host does). libzstd's frames come
    within a few blocks of their size (its block splitter cuts 128 KiB blocks into smaller
    compressed ones: level 19 bounds a 128 KiB chunk at 768 KiB)."""
    bounds = zstd_write_bounds(staging, at, size) if bounds is None else bounds
    bounds[(read_le_where(staging, at + 4, 1, size >= 5) & 4) != 0] = -1
    return bounds


def _add_chunk(b: _Builder, codecs: tuple, data: memoryview, chunk: int, nbytes: int) -> None:
    dst = chunk * nbytes
    if not codecs:
        if len(data) != nbytes:
            raise CorruptDataError(f"chunk is {len(data)} bytes, expected {nbytes}")
        b.copy(data, dst)
        return
    if len(codecs) > 1:
        raise _NoGpuDecoder  # several compressors in a row: the host decodes the outer ones anyway
    codec = codecs[0]
    if isinstance(codec, Zstd):
        from ..codecs.bytes_to_bytes import _zstd_content_size

        size = _zstd_content_size(data)
        if size is not None and size != nbytes:
            raise claim_error("zstd frame", size, nbytes)
        b.stream("zstd", data, dst, nbytes, chunk)
    elif isinstance(codec, Gzip):  # its CRC-32 (RFC 1952 §2.3.1) covers the decoded bytes: checked on the device
        at = b.stream("deflate", gzip_to_deflate(data, nbytes), dst, nbytes, chunk)
        b.gzip_crcs.add(at, nbytes, int.from_bytes(data[-8:-4], "little"), chunk)
    elif isinstance(codec, Zlib):
        b.stream("deflate", zlib_to_deflate(data), dst, nbytes, chunk, sized=False)
    elif isinstance(codec, Lz4):
        if len(data) < 4 or int.from_bytes(data[:4], "little") != nbytes:
            raise CorruptDataError(f"lz4 size prefix does not match the chunk size {nbytes}")
        b.stream("lz4", data[4:], dst, nbytes, chunk)
    elif isinstance(codec, Blosc):
        _add_blosc(b, data, chunk, nbytes)
    else:
        raise _NoGpuDecoder


def _add_blosc(b: _Builder, data: memoryview, chunk: int, nbytes: int) -> None:
    dst = chunk * nbytes
    frame = parse_blosc_frame(data, nbytes)
    if frame.cbytes != len(data):  # as the CPU path: trailing bytes mean a damaged chunk
        raise CorruptDataError(f"blosc header says {frame.cbytes} compressed bytes, the frame has {len(data)}")
    if frame.memcpyed:
        b.copy(data[16:16 + nbytes], dst)
        return
    algorithm = _BLOSC_ALGORITHMS.get(frame.compressor)
    if algorithm is None:
        raise _NoGpuDecoder
    shuffled = frame.block_shuffle != SHUFFLE_NONE
    area = b.temp_slot(nbytes) if shuffled.any() else dst  # shuffled blocks decode to temp first
    block_of = np.searchsorted(frame.block_offsets, frame.stream_dst_offsets, side="right") - 1
    for k in range(frame.nstreams):
        off, csize = int(frame.stream_offsets[k]), int(frame.stream_csizes[k])
        dsize, target = int(frame.stream_dsizes[k]), int(frame.stream_dst_offsets[k])
        base = area if shuffled[block_of[k]] else dst
        piece = data[off:off + csize]
        if csize == dsize:
            b.copy(piece, base + target)
        elif algorithm == "deflate":
            b.stream(algorithm, zlib_to_deflate(piece), base + target, dsize, chunk)
        else:
            b.stream(algorithm, piece, base + target, dsize, chunk)
    for k in np.flatnonzero(shuffled).tolist():
        off, size = int(frame.block_offsets[k]), int(frame.block_sizes[k])
        b.unshuffles[int(frame.block_shuffle[k])].add(area + off, dst + off, size, frame.typesize)


def gzip_to_deflate(data: memoryview, nbytes: int) -> memoryview:
    """Strip RFC 1952 framing of a chunk that is one member: its trailer's ISIZE is the chunk size."""
    if len(data) < 18 or data[0] != 0x1F or data[1] != 0x8B or data[2] != 8:
        raise CorruptDataError("not a gzip member (bad magic or method)")
    flags, pos = data[3], 10
    if flags & 0xE0:
        raise CorruptDataError("gzip header sets reserved flags")
    if flags & 4:  # FEXTRA
        if len(data) < pos + 2:
            raise CorruptDataError("truncated gzip header")
        pos += 2 + int.from_bytes(data[pos:pos + 2], "little")
    for bit in (8, 16):  # FNAME, FCOMMENT: zero-terminated
        if flags & bit:
            end = bytes(data[pos:]).find(b"\0")
            if end < 0:
                raise CorruptDataError("truncated gzip header")
            pos += end + 1
    if flags & 2:  # FHCRC
        pos += 2
    if len(data) < pos + 8:
        raise CorruptDataError("truncated gzip member")
    if int.from_bytes(data[-4:], "little") != nbytes % (1 << 32):
        # several members (only the last one's size is here), or a damaged trailer: the host
        # decodes every member, or names the damage
        raise _NoGpuDecoder
    return data[pos:-8]


def zlib_to_deflate(data: memoryview) -> memoryview:
    """Strip RFC 1950 framing (2-byte header, 4-byte Adler-32)."""
    if len(data) < 6 or (data[0] & 0x0F) != 8 or ((data[0] << 8) | data[1]) % 31 or data[1] & 0x20:
        raise CorruptDataError("not a zlib stream (bad header, or a preset dictionary)")
    return data[2:-4]


# Mirrors scatter_core.cuh's record layout (see gpuzarr.devices.kernels).
from .kernels import (
    SCATTER_MAX_NDIM,
    SCATTER_REC_COUNT,
    SCATTER_REC_DST,
    SCATTER_REC_DSTRIDE,
    SCATTER_REC_LEN,
    SCATTER_REC_SHAPE,
    SCATTER_REC_SRC,
    SCATTER_REC_START,
    SCATTER_REC_STEP,
)


def copy_records(table: dict) -> np.ndarray:
    """Byte copies (src, dst, size per row) as 1-d scatter records of itemsize 1."""
    rec = np.zeros((table["size"].size, SCATTER_REC_LEN), dtype=np.int64)
    rec[:, SCATTER_REC_SRC] = table["src"]
    rec[:, SCATTER_REC_DST] = table["dst"]
    rec[:, SCATTER_REC_SHAPE] = table["size"]
    rec[:, SCATTER_REC_STEP] = 1
    rec[:, SCATTER_REC_COUNT] = table["size"]
    rec[:, SCATTER_REC_DSTRIDE] = 1
    return rec


def scatter_records(plan: Any, first: int, stop: int, present: np.ndarray, chunk_shape: tuple,
                    itemsize: int, out_strides: tuple,
                    stored_order: tuple | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Records for the placement kernels: (scatter records of present chunks, fill records of
    absent ones), one int64 row per placement of chunks first..stop-1. The fields of each
    dimension are computed once per run and gathered per placement with one take, not
    recomputed per placement (2d-64 full read, 4096 placements: 1.5 -> 0.2 ms), unless the
    placements are fewer than the plan's runs (a CPU part of a large batch: ML read_batch, 256
    windows: 23 -> 10 ms a read in all). Negative steps read the source forwards and write backwards.
    `stored_order`: the chunk's axes as its bytes hold them (a transpose codec's; stored axis k
    is chunk axis stored_order[k]): each record's dims are put in that order, so the kernel's
    C-order walk of the chunk's shape finds every element where it is stored."""
    span = plan.placements_of(first, stop)
    ndim = len(chunk_shape)
    if ndim > SCATTER_MAX_NDIM:
        raise ValueError(f"the placement kernel handles at most {SCATTER_MAX_NDIM} dimensions")
    if plan.place_chunk.size <= SMALL:
        rec, local = _small_records(plan, span, first, chunk_shape, itemsize, out_strides, stored_order)
    else:
        rec, local = _records(plan, span, first, chunk_shape, itemsize, out_strides, stored_order)
    live = present[local]
    if live.all():
        return rec, rec[:0]
    return rec[live], rec[~live]


def _records(plan: Any, span: slice, first: int, chunk_shape: tuple, itemsize: int, out_strides: tuple,
             stored_order: tuple | None) -> tuple[np.ndarray, np.ndarray]:
    """scatter_records' records of the placements `span`, and each one's chunk less `first`,
    from whole columns at once."""
    rows = plan.place_runs[span]
    local = plan.place_chunk[span] - first
    n, ndim = rows.shape[0], len(chunk_shape)
    rec = np.zeros((n, SCATTER_REC_LEN), dtype=np.int64)
    rec[:, SCATTER_REC_SRC] = local * (math.prod(chunk_shape) * itemsize)
    fields = rec[:, SCATTER_REC_SHAPE:].reshape(n, len(_RUN_FIELDS), SCATTER_MAX_NDIM)  # a view
    dst = plan.place_window[span] * out_strides[0] if plan.batched else np.zeros(n, dtype=np.int64)
    axis = int(plan.batched)
    for d, runs in enumerate(plan.dims):
        stride = 0 if runs.drop else out_strides[axis]
        axis += not runs.drop
        if n < runs.step.size:  # fewer placements than runs (a part of a large batch): theirs alone
            picked = _run_fields(runs, chunk_shape[d], stride, rows[:, d])
        else:
            picked = np.take(_run_fields(runs, chunk_shape[d], stride), rows[:, d], axis=0)  # 2x cheaper than [rows]
        fields[:, :, d] = picked[:, :-1]
        dst += picked[:, -1]
    if stored_order is not None:
        fields[:, :, :ndim] = fields[:, :, list(stored_order)]
    rec[:, SCATTER_REC_DST] = dst
    return rec, local


def _small_records(plan: Any, span: slice, first: int, chunk_shape: tuple, itemsize: int, out_strides: tuple,
                   stored_order: tuple | None) -> tuple[np.ndarray, np.ndarray]:
    """_records of a small plan in Python integers (its Plan._lists), the fields of each run as
    _run_fields makes them: ~10 us for a window's 8 placements, where _records' ~40 array calls
    took ~100 us (3-D 64^3 windows, chunk by chunk through the host library, came out 3-4% slower
    than NumPy's copies for it)."""
    chunk_of, runs_of, window_of, dims = plan._lists
    ndim, nbytes = len(chunk_shape), math.prod(chunk_shape) * itemsize
    order = stored_order or range(ndim)
    recs, local = [], []
    for p in range(span.start, span.stop):
        rec = [0] * SCATTER_REC_LEN
        rec[SCATTER_REC_SRC] = (chunk_of[p] - first) * nbytes
        dst = window_of[p] * out_strides[0] if plan.batched else 0
        axis = int(plan.batched)
        per_dim = []
        for d, (r, (start, step, count, out_start, drop)) in enumerate(zip(runs_of[p], dims)):
            a, st, c = start[r], step[r], count[r]
            if drop:
                per_dim.append((chunk_shape[d], a, 1, 1, 0))
                continue
            stride = out_strides[axis]
            axis += 1
            if st < 0:  # read forwards, written backwards
                per_dim.append((chunk_shape[d], a + st * (c - 1), -st, c, -stride))
                dst += (out_start[r] + c - 1) * stride
            else:
                per_dim.append((chunk_shape[d], a, st, c, stride))
                dst += out_start[r] * stride
        for k, d in enumerate(order):
            for f, value in zip(_RUN_FIELDS, per_dim[d]):
                rec[f + k] = value
        rec[SCATTER_REC_DST] = dst
        recs.append(rec)
        local.append(chunk_of[p] - first)
    return np.array(recs, np.int64).reshape(-1, SCATTER_REC_LEN), np.array(local, np.int64)


# the record's per-dimension fields, in record order, each a group of SCATTER_MAX_NDIM slots
# from SCATTER_REC_SHAPE on (scatter_core.cuh)
_RUN_FIELDS = (SCATTER_REC_SHAPE, SCATTER_REC_START, SCATTER_REC_STEP, SCATTER_REC_COUNT, SCATTER_REC_DSTRIDE)


def _run_fields(runs: Any, extent: int, stride: int, at: np.ndarray | None = None) -> np.ndarray:
    """Per run of one dimension (a plan's DimRuns), or per run `at[i]` where given: its record
    fields (chunk extent, first source index, step, count, output stride in bytes) and then its
    share of the output byte offset, as an (n, 6) table. A dropped dimension reads one element
    and has no output axis."""
    start, step, count = runs.local_start, runs.step, runs.count
    if at is not None:
        start, step, count = start[at], step[at], count[at]
    table = np.empty((step.size, len(_RUN_FIELDS) + 1), dtype=np.int64)
    table[:, 0] = extent
    if runs.drop:
        table[:, 1] = start
        table[:, 2:4] = 1
        table[:, 4:] = 0
        return table
    out_start = runs.out_start if at is None else runs.out_start[at]
    backwards = step < 0
    table[:, 1] = np.where(backwards, start + step * (count - 1), start)
    table[:, 2] = np.abs(step)
    table[:, 3] = count
    table[:, 4] = np.where(backwards, -stride, stride)
    table[:, 5] = (out_start + np.where(backwards, count - 1, 0)) * stride
    return table
