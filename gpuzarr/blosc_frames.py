"""Blosc 1.x frames taken apart for batched decoding, and NumPy references of blosc's unshuffles.

A blosc 1.x frame (what ``numcodecs.Blosc`` writes; c-blosc 1.21) is:

* a 16-byte header: version (2), versionlz, flags, typesize (uint8 each), then int32 LE nbytes
  (decoded size), blocksize, cbytes (frame size);
* unless the frame is memcpyed, one int32 LE start offset per block (``bstarts``), then the blocks;
  the decoded chunk is cut into ``ceil(nbytes / blocksize)`` blocks, the last one shorter when
  ``nbytes % blocksize`` (the "leftover" block);
* each block holds ``nsplits`` streams, each an int32 LE compressed size ``csize`` and ``csize``
  bytes; a stream whose csize equals its decoded size is stored raw. ``nsplits`` is ``typesize``
  when the "don't split" flag is clear, ``typesize <= 16``, ``blocksize // typesize >= 128`` and the
  block is not the leftover one; otherwise 1. The streams of a block, decoded and concatenated,
  are the block still shuffled; blosc then unshuffles each block on its own.
* a memcpyed frame (flag 0x2) is the header followed by the ``nbytes`` decoded bytes as they are,
  never unshuffled, whatever the shuffle flags say.

Flags: bit 0 byte shuffle, bit 1 memcpyed, bit 2 bit shuffle, bit 3 reserved (rejected), bit 4
"don't split", bits 5-7 the compressor format (0 blosclz, 1 lz4 and lz4hc, 2 snappy, 3 zlib, 4 zstd).

``parse_blosc_frame`` checks every size and offset against the frame and the decoded size before it
allocates or indexes anything, and raises CorruptDataError otherwise.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from gpuzarr.errors import CorruptDataError, claim_error

HEADER_SIZE = 16
VERSION_FORMAT = 2
MIN_BUFFERSIZE = 128  # c-blosc: below this many bytes a frame is always memcpyed
MAX_SPLITS = 16
MAX_TYPESIZE = 255
MAX_BLOCKSIZE = (2**31 - 1 - MAX_TYPESIZE * 4) // 3

FLAG_BYTE_SHUFFLE = 0x01
FLAG_MEMCPYED = 0x02
FLAG_BIT_SHUFFLE = 0x04
FLAG_RESERVED = 0x08
FLAG_DONT_SPLIT = 0x10

SHUFFLE_NONE = 0
SHUFFLE_BYTE = 1
SHUFFLE_BIT = 2

# Compressor format in flags bits 5-7. lz4hc writes the lz4 format: the two cannot be told apart.
COMPRESSORS = {0: "blosclz", 1: "lz4", 2: "snappy", 3: "zlib", 4: "zstd"}

_HEADER = struct.Struct("<BBBBiii")
_EMPTY = np.zeros(0, dtype=np.int64)
_EMPTY.flags.writeable = False


@dataclass(frozen=True, eq=False)
class BloscFrame:
    """Where every piece of one blosc frame is, and what to do with it.

    Streams are in frame order (block by block, split by split). Decoding stream ``i`` (or copying
    it, when ``stream_csizes[i] == stream_dsizes[i]``) fills ``stream_dsizes[i]`` bytes at
    ``stream_dst_offsets[i]`` of the chunk; the streams tile ``[0, nbytes)``. Then block ``b``,
    ``block_sizes[b]`` bytes at ``block_offsets[b]``, is unshuffled according to
    ``block_shuffle[b]`` (SHUFFLE_NONE: the bytes are final) with element size ``typesize``.
    """

    version: int
    versionlz: int
    flags: int
    typesize: int
    nbytes: int
    blocksize: int
    cbytes: int
    compressor: str
    shuffle: int  # what the header asks for: SHUFFLE_NONE, SHUFFLE_BYTE or SHUFFLE_BIT
    memcpyed: bool
    split: bool  # the "don't split" flag is clear
    stream_offsets: np.ndarray  # int64: offset in the frame of the stream's bytes (after its csize)
    stream_csizes: np.ndarray  # int64: bytes in the frame
    stream_dsizes: np.ndarray  # int64: bytes once decoded
    stream_dst_offsets: np.ndarray  # int64: offset of the decoded bytes in the chunk
    block_offsets: np.ndarray  # int64: offset of each block in the chunk
    block_sizes: np.ndarray  # int64
    block_shuffle: np.ndarray  # int8: the shuffle blosc applied to each block, as decoding must undo it

    @property
    def nstreams(self) -> int:
        return int(self.stream_offsets.shape[0])

    @property
    def nblocks(self) -> int:
        return int(self.block_offsets.shape[0])

    @property
    def stream_stored(self) -> np.ndarray:
        """Per stream: True when its bytes are stored raw (copy them; do not decompress)."""
        return self.stream_csizes == self.stream_dsizes


def parse_blosc_frame(frame, expected_nbytes: int | None = None) -> BloscFrame:
    """Take apart one blosc 1.x frame (bytes-like); raise CorruptDataError if it is inconsistent.

    ``expected_nbytes``, when given, is the decoded size the caller needs (the chunk's size in
    bytes); a frame whose header states any other size is corrupt.
    """
    buf = _u8(frame)
    size = buf.shape[0]
    if size < HEADER_SIZE:
        raise CorruptDataError(f"blosc frame of {size} bytes is shorter than the {HEADER_SIZE}-byte header")
    version, versionlz, flags, typesize, nbytes, blocksize, cbytes = _HEADER.unpack_from(buf, 0)
    if version != VERSION_FORMAT:
        raise CorruptDataError(
            f"blosc frame format version {version}; only version {VERSION_FORMAT} (blosc 1.x) is readable"
        )
    if flags & FLAG_RESERVED:
        raise CorruptDataError(f"blosc frame flags {flags:#04x} set the reserved bit 3")
    compcode = flags >> 5
    if compcode not in COMPRESSORS:
        raise CorruptDataError(f"blosc frame names unknown compressor format {compcode}")
    if nbytes < 0:
        raise CorruptDataError(f"blosc frame decoded size {nbytes} is negative")
    if expected_nbytes is not None and nbytes != expected_nbytes:
        raise claim_error("blosc frame", nbytes, expected_nbytes)
    if cbytes < HEADER_SIZE:
        raise CorruptDataError(f"blosc frame size {cbytes} in the header is smaller than the header")
    if cbytes > size:
        raise CorruptDataError(f"blosc frame is truncated: the header says {cbytes} bytes, {size} were given")

    memcpyed = bool(flags & FLAG_MEMCPYED)
    shuffle = (
        SHUFFLE_BYTE if flags & FLAG_BYTE_SHUFFLE else SHUFFLE_BIT if flags & FLAG_BIT_SHUFFLE else SHUFFLE_NONE
    )  # (what the header asks for; block_shuffle is what blosc does)
    split = not flags & FLAG_DONT_SPLIT

    def result(streams, blocks) -> BloscFrame:
        return BloscFrame(
            version, versionlz, flags, typesize, nbytes, blocksize, cbytes, COMPRESSORS[compcode],
            shuffle, memcpyed, split, *streams, *blocks,
        )

    if nbytes == 0:  # c-blosc stops here too: nothing else in the header matters
        return result((_EMPTY,) * 4, (_EMPTY, _EMPTY, np.zeros(0, dtype=np.int8)))
    if typesize == 0:
        raise CorruptDataError("blosc frame typesize is 0")
    if blocksize <= 0 or blocksize > MAX_BLOCKSIZE:
        raise CorruptDataError(f"blosc frame blocksize {blocksize} is out of range")
    if blocksize > nbytes:
        raise CorruptDataError(f"blosc frame blocksize {blocksize} exceeds its decoded size {nbytes}")

    if memcpyed:
        if cbytes != nbytes + HEADER_SIZE:
            raise CorruptDataError(
                f"memcpyed blosc frame is {cbytes} bytes, expected header + {nbytes} decoded bytes"
            )
        one = np.array([HEADER_SIZE], dtype=np.int64)
        n = np.array([nbytes], dtype=np.int64)
        zero = np.zeros(1, dtype=np.int64)
        return result((one, n, n.copy(), zero), (zero.copy(), n.copy(), np.zeros(1, dtype=np.int8)))

    if versionlz != 1:
        raise CorruptDataError(f"blosc frame {COMPRESSORS[compcode]} format version {versionlz} is not 1")
    nblocks = -(-nbytes // blocksize)
    table_end = HEADER_SIZE + 4 * nblocks
    if table_end > cbytes:
        raise CorruptDataError(
            f"blosc frame of {cbytes} bytes cannot hold the start table of its {nblocks} blocks"
        )
    leftover = nbytes % blocksize
    nfull = nblocks - (1 if leftover else 0)
    nsplits = typesize if (split and typesize <= MAX_SPLITS and blocksize // typesize >= MIN_BUFFERSIZE) else 1
    if blocksize % nsplits:
        raise CorruptDataError(
            f"blosc frame blocksize {blocksize} is not a multiple of its {nsplits} split streams"
        )
    neblock = blocksize // nsplits
    nstreams = nfull * nsplits + (1 if leftover else 0)

    walk = _walk_streams_scalar if nblocks <= SCALAR_WALK_MAX_BLOCKS else _walk_streams_vector
    stream_offsets, stream_csizes = walk(buf, nblocks, nfull, nsplits, table_end, cbytes)
    stream_dsizes = np.full(nstreams, neblock, dtype=np.int64)
    if leftover:
        stream_dsizes[-1] = leftover
    # Full blocks are nsplits * neblock bytes, so stream i (the leftover one too) starts at i * neblock.
    stream_dst_offsets = np.arange(nstreams, dtype=np.int64) * neblock

    block_offsets = np.arange(nblocks, dtype=np.int64) * blocksize
    block_sizes = np.full(nblocks, blocksize, dtype=np.int64)
    if leftover:
        block_sizes[-1] = leftover
    block_shuffle = _block_shuffle(np.full(nblocks, flags), np.full(nblocks, typesize), block_sizes)
    return result(
        (stream_offsets, stream_csizes, stream_dsizes, stream_dst_offsets),
        (block_offsets, block_sizes, block_shuffle),
    )


# Up to this many blocks a Python loop over the streams beats NumPy's per-call overhead.
SCALAR_WALK_MAX_BLOCKS = 16
_I32 = struct.Struct("<i")


def _block_shuffle(flags: np.ndarray, typesize: np.ndarray, block_size: np.ndarray) -> np.ndarray:
    """The shuffle c-blosc 1.21 undoes in each block (int8): bytes where the byte bit is set and
    items are wider than a byte; else bits where the bit-shuffle bit is set and the block holds a
    multiple of 8 items (at least one); else none. So a frame of 1-byte items with both bits set
    (c-blosc never writes one) is bit-unshuffled, as c-blosc decodes it."""
    byte = (flags & FLAG_BYTE_SHUFFLE != 0) & (typesize > 1)
    bit = (flags & FLAG_BIT_SHUFFLE != 0) & (block_size >= typesize) & ((block_size // typesize) % 8 == 0)
    return np.where(byte, SHUFFLE_BYTE, np.where(bit, SHUFFLE_BIT, SHUFFLE_NONE)).astype(np.int8)


def _bad_block_start(b: int, start: int, table_end: int, cbytes: int) -> CorruptDataError:
    return CorruptDataError(f"blosc block {b} starts at byte {start}, outside [{table_end}, {cbytes - 4}]")


def _bad_stream(b: int, j: int, pos: int, csize: int | None, cbytes: int) -> CorruptDataError:
    if csize is None:
        return CorruptDataError(
            f"blosc stream {j} of block {b} starts at byte {pos}, past the end of the {cbytes}-byte frame"
        )
    return CorruptDataError(
        f"blosc stream {j} of block {b} at byte {pos} claims {csize} compressed bytes; "
        f"{cbytes - pos - 4} remain in the frame"
    )


def _walk_streams_scalar(buf, nblocks, nfull, nsplits, table_end, cbytes):
    """Data offsets and compressed sizes of every stream, in frame order (a Python loop)."""
    mv = memoryview(buf)
    starts = struct.unpack_from(f"<{nblocks}i", mv, HEADER_SIZE)
    offsets: list[int] = []
    csizes: list[int] = []
    for b, pos in enumerate(starts):
        if pos < table_end or pos > cbytes - 4:
            raise _bad_block_start(b, pos, table_end, cbytes)
        for j in range(nsplits if b < nfull else 1):
            if pos > cbytes - 4:
                raise _bad_stream(b, j, pos, None, cbytes)
            (csize,) = _I32.unpack_from(mv, pos)
            if csize <= 0 or csize > cbytes - pos - 4:
                raise _bad_stream(b, j, pos, csize, cbytes)
            offsets.append(pos + 4)
            csizes.append(csize)
            pos += 4 + csize
    return np.array(offsets, dtype=np.int64), np.array(csizes, dtype=np.int64)


def _walk_streams_vector(buf, nblocks, nfull, nsplits, table_end, cbytes):
    """The same as _walk_streams_scalar, vectorised over blocks: one step per split position."""
    starts = np.frombuffer(buf, dtype="<i4", count=nblocks, offset=HEADER_SIZE).astype(np.int64)
    bad = (starts < table_end) | (starts > cbytes - 4)
    if bad.any():
        b = int(np.argmax(bad))
        raise _bad_block_start(b, int(starts[b]), table_end, cbytes)
    offsets = np.zeros((nblocks, nsplits), dtype=np.int64)
    csizes = np.zeros((nblocks, nsplits), dtype=np.int64)
    pos = starts
    for j in range(nsplits):
        rows = nblocks if j == 0 else nfull  # the leftover block, if any, has one stream
        offsets[:rows, j], csizes[:rows, j] = _read_stream_sizes(buf, pos[:rows], j, cbytes)
        pos = offsets[:, j] + csizes[:, j]
    keep = np.ones((nblocks, nsplits), dtype=bool)
    keep[nfull:, 1:] = False
    return offsets[keep], csizes[keep]


def _read_stream_sizes(buf, pos, j, cbytes):
    """For split j of the blocks whose next size prefix is at ``pos``: data offsets and csizes."""
    bad = pos > cbytes - 4
    if bad.any():
        b = int(np.argmax(bad))
        raise _bad_stream(b, j, int(pos[b]), None, cbytes)
    byte = buf[pos[:, None] + np.arange(4)].astype(np.int64)
    csize = byte[:, 0] | (byte[:, 1] << 8) | (byte[:, 2] << 16) | (byte[:, 3] << 24)
    csize = np.where(csize >= 2**31, csize - 2**32, csize)
    bad = (csize <= 0) | (csize > cbytes - pos - 4)
    if bad.any():
        b = int(np.argmax(bad))
        raise _bad_stream(b, j, int(pos[b]), int(csize[b]), cbytes)
    return pos + 4, csize


@dataclass(frozen=True, eq=False)
class BloscBatch:
    """The frames of a batch taken apart together (``parse_blosc_batch``): what ``BloscFrame`` holds
    for one frame, as flat arrays over every frame parsed, each row naming its frame by position.

    Streams are frame by frame, in frame order; ``stream_src`` is an offset into the batch's buffer;
    ``stream_block`` is the row of the stream's block in the block arrays.
    """

    parsed: np.ndarray  # bool per frame: False where parse_blosc_frame is left to say why (or nbytes is 0)
    flags: np.ndarray  # int64 per frame: the header's flags (compressor in bits 5-7)
    groups: int  # distinct block shapes among the compressed frames parsed (each walked as one)
    stream_frame: np.ndarray  # int64
    stream_src: np.ndarray  # int64
    stream_csize: np.ndarray  # int64
    stream_dsize: np.ndarray  # int64
    stream_dst: np.ndarray  # int64: offset in the chunk
    stream_block: np.ndarray  # int64
    block_frame: np.ndarray  # int64
    block_offset: np.ndarray  # int64: offset in the chunk
    block_size: np.ndarray  # int64
    block_shuffle: np.ndarray  # int8
    block_typesize: np.ndarray  # int64


def parse_blosc_batch(buf: np.ndarray, offsets: np.ndarray, sizes: np.ndarray, expected_nbytes: int) -> BloscBatch:
    """``parse_blosc_frame(buf[offsets[k]:offsets[k] + sizes[k]], expected_nbytes)`` for every k at once:
    all headers checked together, then the frames sharing a block shape (blocksize, splits; every full
    chunk of an array) walked together, one step per split position. A frame the per-frame parser
    refuses is left unparsed, never half-parsed, so that its caller hands it to parse_blosc_frame for
    the error; so is a frame of decoded size 0. `buf` holds every frame whole."""
    head = _gather(buf, offsets, HEADER_SIZE, sizes >= HEADER_SIZE)
    version, versionlz, flags, typesize = (head[:, k].astype(np.int64) for k in range(4))
    nbytes, blocksize, cbytes = np.ascontiguousarray(head[:, 4:]).view("<i4").T.astype(np.int64)
    ok = ((sizes >= HEADER_SIZE) & (version == VERSION_FORMAT) & (flags & FLAG_RESERVED == 0)
          & (flags >> 5 < len(COMPRESSORS)) & (nbytes == expected_nbytes) & (nbytes > 0)
          & (cbytes >= HEADER_SIZE) & (cbytes <= sizes) & (typesize > 0)
          & (blocksize > 0) & (blocksize <= MAX_BLOCKSIZE) & (blocksize <= nbytes))
    memcpyed = flags & FLAG_MEMCPYED != 0
    # a memcpyed frame is one raw stream and one block of nbytes, never unshuffled
    memcpyed_ok = ok & memcpyed & (cbytes == nbytes + HEADER_SIZE)
    blocksize = np.where(memcpyed, nbytes, np.maximum(blocksize, 1))
    typesize = np.maximum(typesize, 1)
    nblocks = -(-nbytes // blocksize)
    split = (flags & FLAG_DONT_SPLIT == 0) & (typesize <= MAX_SPLITS) & (blocksize // typesize >= MIN_BUFFERSIZE)
    nsplits = np.where(split & ~memcpyed, typesize, 1)
    compressed = (ok & ~memcpyed & (versionlz == 1) & (HEADER_SIZE + 4 * nblocks <= cbytes)
                  & (blocksize % nsplits == 0))
    candidates = np.flatnonzero(compressed)
    shapes, group_of = np.unique(blocksize[candidates] * (MAX_SPLITS + 1) + nsplits[candidates], return_inverse=True)
    walks = []
    for g in range(shapes.size):  # one step per block shape, not per frame
        frames = candidates[group_of.reshape(-1) == g]
        good, src, csize = _walk_group(buf, offsets[frames], cbytes[frames], expected_nbytes,
                                       int(blocksize[frames[0]]), int(nsplits[frames[0]]))
        compressed[frames[~good]] = False
        walks.append((frames[good], src[good], csize[good], int(blocksize[frames[0]]), int(nsplits[frames[0]])))
    parsed = memcpyed_ok | compressed
    return _assemble(parsed, flags, typesize, blocksize, nblocks, offsets, walks, expected_nbytes)


def _walk_group(buf, at, cbytes, nbytes, blocksize, nsplits):
    """The streams of frames sharing one block shape (frame k at ``at[k]``, ``cbytes[k]`` bytes):
    (whether each frame passes every check _walk_streams_scalar makes, the buf offset of every
    stream's bytes and its csize, both (frames, streams per frame) in frame order)."""
    nblocks = -(-nbytes // blocksize)
    nfull = nbytes // blocksize
    table_end = HEADER_SIZE + 4 * nblocks
    last = (cbytes - 4)[:, None]  # a size prefix must start at or before this
    pos = read_le(buf, at[:, None] + HEADER_SIZE + 4 * np.arange(nblocks), "<i4")
    bad = ((pos < table_end) | (pos > last)).any(axis=1)
    src = np.zeros((at.size, nblocks, nsplits), np.int64)
    csize = np.zeros((at.size, nblocks, nsplits), np.int64)
    for j in range(nsplits):
        rows = nblocks if j == 0 else nfull  # the leftover block, if any, has one stream
        p = pos[:, :rows]
        bad |= (p > last).any(axis=1)
        p = np.where(bad[:, None], 0, p)  # a refused frame reads its header from here on: in bounds
        size = read_le(buf, at[:, None] + p, "<i4")
        bad |= ((size <= 0) | (size > last - p)).any(axis=1)
        src[:, :rows, j], csize[:, :rows, j] = at[:, None] + p + 4, size
        pos = p + 4 + np.where(bad[:, None], 0, size)
    keep = np.ones((nblocks, nsplits), bool)
    keep[nfull:, 1:] = False
    return ~bad, src[:, keep], csize[:, keep]


def _assemble(parsed, flags, typesize, blocksize, nblocks, offsets, walks, nbytes) -> BloscBatch:
    """The flat stream and block arrays of the parsed frames, in frame order."""
    frames = np.flatnonzero(parsed)
    nblocks = nblocks[frames]
    first_block = np.cumsum(nblocks) - nblocks
    block_frame = np.repeat(frames, nblocks)
    index = np.arange(block_frame.size) - np.repeat(first_block, nblocks)  # block number in its frame
    block_offset = index * blocksize[block_frame]
    block_size = np.minimum(blocksize[block_frame], nbytes - block_offset)
    ts, f = typesize[block_frame], flags[block_frame]
    shuffle = np.where(f & FLAG_MEMCPYED != 0, SHUFFLE_NONE, _block_shuffle(f, ts, block_size)).astype(np.int8)
    row_of = np.zeros(parsed.size, np.int64)  # frame -> its row among `frames`
    row_of[frames] = np.arange(frames.size)
    counts = np.ones(frames.size, np.int64)  # streams per frame (a memcpyed frame has one)
    for walk in walks:
        counts[row_of[walk[0]]] = walk[1].shape[1]
    first_stream = np.cumsum(counts) - counts
    total = int(counts.sum())
    s_frame = np.repeat(frames, counts)
    s_src = offsets[s_frame] + HEADER_SIZE  # memcpyed frames' value; the walks overwrite theirs
    s_csize = np.full(total, nbytes, np.int64)
    s_dsize = s_csize.copy()
    s_dst = np.zeros(total, np.int64)
    s_block = first_block[row_of[s_frame]].copy()
    for fr, src, csize, bs, ns in walks:
        per = src.shape[1]
        rows = (first_stream[row_of[fr]][:, None] + np.arange(per)).reshape(-1)
        neblock = bs // ns
        s_src[rows], s_csize[rows] = src.reshape(-1), csize.reshape(-1)
        column = np.arange(per)
        dsize = np.full(per, neblock)
        if nbytes % bs:  # the leftover block's one stream
            dsize[-1] = nbytes % bs
        s_dsize[rows] = np.tile(dsize, fr.size)
        s_dst[rows] = np.tile(column * neblock, fr.size)
        s_block[rows] += np.tile(column // ns, fr.size)
    return BloscBatch(parsed, flags, len(walks), s_frame, s_src, s_csize, s_dsize, s_dst, s_block,
                      block_frame, block_offset, block_size, shuffle, ts)


def _gather(buf: np.ndarray, at: np.ndarray, width: int, inside: np.ndarray) -> np.ndarray:
    """(len(at), width) bytes buf[at[k]:at[k] + width]; zeros for the rows not `inside` the buffer."""
    if not buf.size:
        return np.zeros((at.size, width), np.uint8)
    rows = buf[np.minimum(at[:, None] + np.arange(width), buf.size - 1)]
    rows[~inside] = 0
    return rows


def read_le(buf: np.ndarray, at: np.ndarray, dtype: str) -> np.ndarray:
    """The little-endian integer of `dtype` at each byte offset of `at` (any shape; each leaves room
    for one in `buf`), as int64: one gather through a view with a stride of one byte (3x faster
    than gathering the bytes and combining them)."""
    item = np.dtype(dtype).itemsize
    words = np.ndarray((max(buf.size - item + 1, 0),), dtype, buf, 0, (1,))
    return words[at].astype(np.int64)


def read_le_where(buf: np.ndarray, at: np.ndarray, width: int, inside: np.ndarray) -> np.ndarray:
    """read_le of the unsigned `width`-byte integer at each offset where `inside`, 0 elsewhere
    (offsets outside the buffer are never read)."""
    if buf.size < width:
        return np.zeros(at.size, np.int64)
    if inside.all():  # the common case: no masking (two np.where a call: ~40% of a small batch's)
        return read_le(buf, at, f"<u{width}")
    return np.where(inside, read_le(buf, np.where(inside, at, 0), f"<u{width}"), 0)


def _u8(buf) -> np.ndarray:
    """A flat uint8 view of a bytes-like object or an array (copied only if not contiguous)."""
    a = buf if isinstance(buf, np.ndarray) else np.frombuffer(buf, dtype=np.uint8)
    return np.ascontiguousarray(a).reshape(-1).view(np.uint8)


def byte_unshuffle(buf, typesize: int) -> np.ndarray:
    """Undo blosc's byte shuffle of one block: a new uint8 array of the same length.

    The first ``len // typesize`` elements were stored byte position by byte position; the last
    ``len % typesize`` bytes, and the whole block when ``typesize == 1``, were stored as they are.
    """
    src = _u8(buf)
    if typesize < 1:
        raise ValueError(f"typesize must be >= 1, got {typesize}")
    n = src.shape[0] // typesize if typesize > 1 else 0
    m = n * typesize
    out = np.empty_like(src)
    out[:m] = src[:m].reshape(typesize, n).T.reshape(-1)
    out[m:] = src[m:]
    return out


def bit_unshuffle(buf, typesize: int) -> np.ndarray:
    """Undo blosc 1.x's bit shuffle of one block: a new uint8 array of the same length.

    With ``n = len // typesize``: when ``len >= typesize`` and ``n % 8 == 0``, the first ``n``
    elements were stored bit plane by bit plane (for each byte position, for each bit from the
    least significant, one bit per element, 8 elements per byte, first element in the lowest bit)
    and the ``len % typesize`` trailing bytes as they are; otherwise the whole block was stored as
    it is (c-blosc 1.21 shuffle.c, blosc format version 2; c-blosc2 shuffles the first
    ``n - n % 8`` elements instead, but only in its own format versions >= 3, which are not parsed here).
    """
    src = _u8(buf)
    if typesize < 1:
        raise ValueError(f"typesize must be >= 1, got {typesize}")
    size = src.shape[0]
    n = size // typesize
    if size < typesize or n % 8:
        n = 0
    m = n * typesize
    out = np.empty_like(src)
    bits = np.unpackbits(src[:m], bitorder="little").reshape(typesize, 8, n)
    out[:m] = np.packbits(bits.transpose(2, 0, 1), axis=-1, bitorder="little").reshape(-1)
    out[m:] = src[m:]
    return out


def unshuffle(info: BloscFrame, shuffled) -> np.ndarray:
    """Apply the per-block unshuffles of ``info`` to a chunk whose streams are decoded in place."""
    src = _u8(shuffled)
    if src.shape[0] != info.nbytes:
        raise CorruptDataError(f"decoded blosc streams are {src.shape[0]} bytes, expected {info.nbytes}")
    out = src.copy()
    for off, size, kind in zip(info.block_offsets.tolist(), info.block_sizes.tolist(), info.block_shuffle.tolist()):
        if kind == SHUFFLE_BYTE:
            out[off : off + size] = byte_unshuffle(src[off : off + size], info.typesize)
        elif kind == SHUFFLE_BIT:
            out[off : off + size] = bit_unshuffle(src[off : off + size], info.typesize)
    return out
