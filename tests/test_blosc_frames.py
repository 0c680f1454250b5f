"""gpuzarr.blosc_frames against real frames written by numcodecs' blosc (c-blosc 1.21).

Every frame is parsed, its streams are decompressed one by one with a plain CPU codec, laid out
where the parser says, unshuffled block by block with the NumPy references, and compared byte for
byte with what ``numcodecs.Blosc.decode`` returns. Corrupt frames must raise CorruptDataError.
"""

from __future__ import annotations

import struct
import zlib

import numcodecs
import numcodecs.lz4
import numpy as np
import pytest
from numcodecs import Blosc
from numcodecs import blosc as nc_blosc

from gpuzarr import blosc_frames as bf
from gpuzarr.errors import CorruptDataError

ALL_CNAMES = ["blosclz", "lz4", "lz4hc", "zlib", "zstd", "snappy"]
CNAMES = [c for c in ALL_CNAMES if c in nc_blosc.list_compressors()]  # numcodecs 0.16 has no snappy
SHUFFLES = {"noshuffle": Blosc.NOSHUFFLE, "shuffle": Blosc.SHUFFLE, "bitshuffle": Blosc.BITSHUFFLE}
TYPESIZES = [1, 2, 3, 4, 8, 12]
# (nbytes, forced blocksize): empty, tiny (always memcpyed below 128 bytes), not a multiple of the
# typesize, several small blocks with a short leftover block, and big enough for split streams.
SIZES = [(0, 0), (5, 0), (127, 0), (200, 0), (1001, 0), (1001, 256), (4099, 512), (150_001, 0), (150_001, 1024)]
LIBS = {"blosclz": "BloscLZ", "lz4": "LZ4", "lz4hc": "LZ4", "zlib": "Zlib", "zstd": "Zstd", "snappy": "Snappy"}
# Python has no blosclz (or snappy) block decoder: frames using them are checked up to the
# decompression step (header, tables, tiling) and fully only where every stream is stored raw.
NO_DECODER = {"blosclz": "no Python blosclz decoder", "snappy": "no Python snappy decoder"}


def _decompress(compressor: str, data: bytes, dsize: int) -> bytes | None:
    if compressor == "lz4":  # numcodecs.lz4 wants its own 4-byte little-endian size prefix
        return numcodecs.lz4.decompress(struct.pack("<I", dsize) + data)
    if compressor == "zstd":
        return bytes(numcodecs.Zstd().decode(data))
    if compressor == "zlib":
        return zlib.decompress(data)
    return None


def decode_with_parts(frame: bytes, info: bf.BloscFrame) -> np.ndarray | None:
    """Decode a frame from the parser's description alone; None if a stream has no Python decoder."""
    buf = np.frombuffer(frame, dtype=np.uint8)
    shuffled = np.empty(info.nbytes, dtype=np.uint8)
    for off, cs, ds, dst in zip(
        info.stream_offsets.tolist(), info.stream_csizes.tolist(),
        info.stream_dsizes.tolist(), info.stream_dst_offsets.tolist(),
    ):
        data = buf[off : off + cs].tobytes()
        if cs == ds:
            part = data
        else:
            part = _decompress(info.compressor, data, ds)
            if part is None:
                return None
        assert len(part) == ds
        shuffled[dst : dst + ds] = np.frombuffer(part, dtype=np.uint8)
    return bf.unshuffle(info, shuffled)


def check_invariants(frame: bytes, info: bf.BloscFrame, cname: str, nbytes: int, typesize: int) -> None:
    """What must hold for any frame c-blosc writes, checked against independent sources."""
    # numcodecs' own (private) header readers, c-blosc's blosc_cbuffer_sizes / _metainfo
    assert (info.nbytes, info.cbytes, info.blocksize) == tuple(nc_blosc._cbuffer_sizes(frame))
    ts_nc, shuffle_nc, memcpyed_nc = nc_blosc._cbuffer_metainfo(frame)
    assert info.nbytes == nbytes
    assert info.cbytes == len(frame)
    assert info.memcpyed == bool(memcpyed_nc)
    if nbytes:
        assert info.typesize == ts_nc == typesize
        assert info.shuffle == shuffle_nc
        assert nc_blosc.cbuffer_complib(frame) == LIBS[cname]
        assert info.compressor == ("lz4" if cname == "lz4hc" else cname)
    # streams tile the decoded chunk, in order
    ds, dst = info.stream_dsizes, info.stream_dst_offsets
    assert int(ds.sum()) == nbytes and (ds > 0).all()
    assert (dst == np.concatenate([[0], np.cumsum(ds)[:-1]])).all()
    # blocks tile it too, all but the last of the same size, and each is a whole number of streams
    assert int(info.block_sizes.sum()) == nbytes
    assert (info.block_offsets == np.concatenate([[0], np.cumsum(info.block_sizes)[:-1]])).all()
    assert set(info.block_offsets.tolist()) <= set(dst.tolist())
    # the streams of a frame blosc wrote fill it exactly: data after the start table, no gaps
    if nbytes and not info.memcpyed:
        ends = info.stream_offsets + info.stream_csizes
        assert int(info.stream_offsets[0]) == 16 + 4 * info.nblocks + 4
        assert (info.stream_offsets[1:] == ends[:-1] + 4).all()
        assert int(ends[-1]) == info.cbytes
    if info.memcpyed:
        assert info.nstreams == (1 if nbytes else 0)
    if info.memcpyed or info.typesize == 1 and info.shuffle == bf.SHUFFLE_BYTE:
        assert (info.block_shuffle == bf.SHUFFLE_NONE).all()  # blocks with nothing to undo say so


def _data(kind: str, nbytes: int, typesize: int, rng) -> bytes:
    if kind == "random":  # incompressible: raw streams, or a memcpyed frame
        return rng.integers(0, 256, nbytes, dtype=np.uint8).tobytes()
    # compressible but not trivial: small integers of the typesize, little-endian, some zero runs
    n = -(-nbytes // typesize)
    low = rng.integers(0, 2**12, (n, 1)) * (rng.random((n, 1)) < 0.8)
    b = np.zeros((n, typesize), dtype=np.uint8)
    b[:, 0] = low[:, 0] & 0xFF
    if typesize > 1:
        b[:, 1] = low[:, 0] >> 8
    return b.reshape(-1)[:nbytes].tobytes()


@pytest.fixture(params=[False, True], ids=["scalar-walk", "vector-walk"])
def walk(request, monkeypatch):
    """Run with each of the parser's two stream walkers (Python loop, vectorised over blocks)."""
    monkeypatch.setattr(bf, "SCALAR_WALK_MAX_BLOCKS", 0 if request.param else 2**31)
    return request.param


@pytest.mark.parametrize("typesize", TYPESIZES)
@pytest.mark.parametrize("shuffle", list(SHUFFLES), ids=list(SHUFFLES))
@pytest.mark.parametrize("cname", CNAMES)
def test_frames_decode_like_numcodecs(cname, shuffle, typesize, walk):
    rng = np.random.default_rng(zlib.crc32(f"{cname}-{shuffle}-{typesize}".encode()))
    compared = 0
    for nbytes, blocksize in SIZES:
        for kind in ("compressible", "random"):
            data = _data(kind, nbytes, typesize, rng)
            codec = Blosc(cname=cname, clevel=5, shuffle=SHUFFLES[shuffle], blocksize=blocksize, typesize=typesize)
            frame = bytes(codec.encode(data))
            info = bf.parse_blosc_frame(frame, expected_nbytes=nbytes)
            check_invariants(frame, info, cname, nbytes, typesize)
            if nbytes:  # numcodecs cannot decode the empty frame it writes ("error ... : 0")
                assert bytes(codec.decode(frame)) == data
            got = decode_with_parts(frame, info)
            if got is None:
                assert cname in NO_DECODER, NO_DECODER.get(cname)
                continue
            assert got.tobytes() == data, f"nbytes={nbytes} blocksize={blocksize} {kind}"
            compared += 1
    assert compared > 0 or cname in NO_DECODER


@pytest.mark.parametrize(
    "cname,typesize,nbytes,split",
    [
        ("lz4", 2, 256, True),  # blocksize / typesize == 128: the smallest split block
        ("lz4", 2, 254, False),  # 127 elements: not split
        ("blosclz", 16, 2048, True),  # typesize 16 == MAX_SPLITS: split
        ("zlib", 16, 2048, True),
        ("lz4", 17, 17 * 128, False),  # typesize 17: never split
        ("zstd", 2, 4096, False),  # zstd: never split
    ],
)
def test_split_boundaries(cname, typesize, nbytes, split, walk):
    elems = np.zeros((nbytes // typesize, typesize), dtype=np.uint8)
    elems[:, 0] = np.arange(nbytes // typesize) // 16 % 4  # very compressible, so never memcpyed
    data = elems.tobytes()
    frame = bytes(Blosc(cname, 5, Blosc.SHUFFLE, typesize=typesize).encode(data))
    info = bf.parse_blosc_frame(frame, nbytes)
    assert not info.memcpyed and info.nblocks == 1
    assert info.split is split and info.nstreams == (typesize if split else 1)
    check_invariants(frame, info, cname, nbytes, typesize)
    got = decode_with_parts(frame, info)
    assert got is None and cname in NO_DECODER or got.tobytes() == data


def test_memcpyed_frames_at_clevel_0(walk):
    for nbytes in (1, 127, 128, 5000):
        data = np.arange(nbytes, dtype=np.uint8).tobytes()
        frame = bytes(Blosc("zstd", clevel=0, shuffle=Blosc.BITSHUFFLE, typesize=4).encode(data))
        info = bf.parse_blosc_frame(frame, nbytes)
        assert info.memcpyed and info.nstreams == 1 and info.stream_stored.all()
        assert info.shuffle == bf.SHUFFLE_BIT and (info.block_shuffle == bf.SHUFFLE_NONE).all()
        assert decode_with_parts(frame, info).tobytes() == data


@pytest.mark.parametrize("cname", sorted(set(ALL_CNAMES) - set(CNAMES)) or ["(none)"])
def test_compressors_missing_from_numcodecs(cname):
    if cname == "(none)":
        assert set(CNAMES) == set(ALL_CNAMES)
        return
    pytest.skip(f"this numcodecs build's blosc has no {cname} (it has {nc_blosc.list_compressors()}): "
                f"no {cname} frames can be written to test against")


def test_split_streams_happen_where_c_blosc_says(walk):
    """FORWARD_COMPAT split mode (c-blosc 1.21's default): every codec but zstd splits a block into
    typesize streams when typesize <= 16 and blocksize / typesize >= 128, whatever the shuffle."""
    data = _data("compressible", 150_001, 4, np.random.default_rng(0))
    for cname, shuffle, want in [
        ("lz4", Blosc.SHUFFLE, True),
        ("lz4", Blosc.NOSHUFFLE, True),
        ("zlib", Blosc.BITSHUFFLE, True),
        ("blosclz", Blosc.SHUFFLE, True),
        ("zstd", Blosc.SHUFFLE, False),
    ]:
        frame = bytes(Blosc(cname, 5, shuffle, typesize=4).encode(data))
        info = bf.parse_blosc_frame(frame)
        assert info.split is want, cname
        full = info.nblocks - (1 if info.nbytes % info.blocksize else 0)
        assert info.nstreams == full * (4 if want else 1) + (info.nblocks - full), cname
    # typesize above 16: never split
    frame = bytes(Blosc("lz4", 5, Blosc.SHUFFLE, typesize=24).encode(data[:150_000]))
    info = bf.parse_blosc_frame(frame)
    assert not info.split and info.nstreams == info.nblocks


def test_bitshuffle_skipped_when_block_elements_not_multiple_of_8():
    """c-blosc 1.21 stores a block with n % 8 != 0 elements entirely unshuffled (c-blosc2 differs)."""
    a = (np.arange(250) % 7).astype("<u4")  # 250 elements: 250 % 8 == 2
    frame = bytes(Blosc("lz4", 5, Blosc.BITSHUFFLE).encode(a))
    info = bf.parse_blosc_frame(frame)
    assert info.shuffle == bf.SHUFFLE_BIT and not info.memcpyed
    assert info.block_shuffle.tolist() == [bf.SHUFFLE_NONE]
    decoded = decode_with_parts(frame, info)
    assert decoded.tobytes() == a.tobytes()


@pytest.mark.parametrize("typesize", [1, 4])
def test_both_shuffle_bits_unshuffle_as_c_blosc_does(typesize):
    """A frame with both shuffle bits set (c-blosc never writes one): bytes where items are wider
    than a byte, else bits; c-blosc decodes it so, and so do both parsers."""
    a = (np.arange(40000) % 5).astype(f"u{typesize}")
    frame = bytearray(Blosc("lz4", 5, Blosc.BITSHUFFLE if typesize == 1 else Blosc.SHUFFLE).encode(a))
    frame[2] |= bf.FLAG_BYTE_SHUFFLE | bf.FLAG_BIT_SHUFFLE
    frame = bytes(frame)
    assert nc_blosc.decompress(frame) == a.tobytes()
    info = bf.parse_blosc_frame(frame)
    want = bf.SHUFFLE_BIT if typesize == 1 else bf.SHUFFLE_BYTE
    assert set(info.block_shuffle.tolist()) == {want}
    assert decode_with_parts(frame, info).tobytes() == a.tobytes()
    buf = np.frombuffer(frame, np.uint8)
    batch = bf.parse_blosc_batch(buf, np.array([0]), np.array([len(frame)]), a.nbytes)
    assert set(batch.block_shuffle.tolist()) == {want}


def test_parse_accepts_any_bytes_like():
    data = _data("compressible", 3000, 2, np.random.default_rng(1))
    frame = bytes(Blosc("lz4", 5, Blosc.SHUFFLE, typesize=2).encode(data))
    ref = bf.parse_blosc_frame(frame)
    for f in (bytearray(frame), memoryview(frame), np.frombuffer(frame, np.uint8)):
        info = bf.parse_blosc_frame(f)
        assert (info.stream_offsets == ref.stream_offsets).all()
        assert (info.stream_csizes == ref.stream_csizes).all()
    # a frame followed by other bytes (e.g. a buffer larger than the frame) parses the same
    info = bf.parse_blosc_frame(frame + b"\0" * 10)
    assert (info.stream_csizes == ref.stream_csizes).all()


# ------------------------------------------------------------------------------------------------
# corruption


def _frame(cname="lz4", nbytes=4099, typesize=4, blocksize=256, shuffle=Blosc.SHUFFLE) -> bytearray:
    data = _data("compressible", nbytes, typesize, np.random.default_rng(2))
    return bytearray(Blosc(cname, 5, shuffle, blocksize=blocksize, typesize=typesize).encode(data))


def _set_i32(f: bytearray, pos: int, value: int) -> bytearray:
    f = bytearray(f)
    struct.pack_into("<i", f, pos, value)
    return f


def _corrupt(frame, match, expected_nbytes=None):
    with pytest.raises(CorruptDataError, match=match):
        bf.parse_blosc_frame(bytes(frame), expected_nbytes)


def test_truncated_frames(walk):
    f = _frame()
    info = bf.parse_blosc_frame(bytes(f))
    assert info.nblocks > 2
    for n in range(0, len(f)):
        _corrupt(f[:n], "shorter than the 16-byte header" if n < 16 else "truncated")


def test_nbytes_mismatch():
    f = _frame()
    _corrupt(f, "header says it decodes to 4099 bytes, the chunk needs 4100", expected_nbytes=4100)
    # a header claiming more decoded bytes: more blocks than the start table has room for
    _corrupt(_set_i32(f, 4, 10**9), "cannot hold the start table")
    _corrupt(_set_i32(f, 4, -5), "negative")


def test_bad_block_starts(walk):
    f = _frame()
    info = bf.parse_blosc_frame(bytes(f))
    table = 16 + 4 * info.nblocks
    for b in (0, 1, info.nblocks - 1):
        for bad in (0, 15, table - 1, len(f) - 3, len(f) + 100, -1, -(2**31)):
            _corrupt(_set_i32(f, 16 + 4 * b, bad), f"blosc block {b} starts at byte")


def test_stream_sizes_past_the_end(walk):
    f = _frame()
    info = bf.parse_blosc_frame(bytes(f))
    for s in (0, info.nstreams // 2, info.nstreams - 1):
        pos = int(info.stream_offsets[s]) - 4
        for bad in (0, -1, -(2**31), len(f), 2**31 - 1, len(f) - pos - 3):
            _corrupt(_set_i32(f, pos, bad), f"at byte {pos} claims {bad} compressed bytes")
    # the first split stream of the last full block ends 2 bytes before the frame does: the
    # next split's size prefix would lie past the end
    f = _frame(nbytes=150_001, blocksize=0)
    info = bf.parse_blosc_frame(bytes(f))
    assert info.split and info.typesize == 4 and info.nbytes % info.blocksize
    s = info.nstreams - 1 - 4  # streams: ..., [last full block: 4 splits], leftover block
    pos = int(info.stream_offsets[s]) - 4
    _corrupt(_set_i32(f, pos, len(f) - pos - 4 - 2), "stream 1 of block .* past the end")


def test_bad_header_fields():
    f = _frame()
    g = bytearray(f)
    g[0] = 3
    _corrupt(g, "format version 3")
    g = bytearray(f)
    g[2] |= bf.FLAG_RESERVED
    _corrupt(g, "reserved bit")
    for code in (5, 6, 7):
        g = bytearray(f)
        g[2] = (g[2] & 0x1F) | (code << 5)
        _corrupt(g, "unknown compressor")
    g = bytearray(f)
    g[3] = 0
    _corrupt(g, "typesize is 0")
    g = bytearray(f)
    g[1] = 2
    _corrupt(g, "format version 2 is not 1")
    _corrupt(_set_i32(f, 8, 0), "blocksize 0")
    _corrupt(_set_i32(f, 8, -512), "blocksize -512")
    _corrupt(_set_i32(f, 8, 5000), "exceeds its decoded size")
    _corrupt(_set_i32(f, 12, 15), "smaller than the header")


def test_split_block_size_not_multiple_of_typesize():
    f = _frame(nbytes=150_001, blocksize=0)
    info = bf.parse_blosc_frame(bytes(f))
    assert info.split and info.typesize == 4
    # an odd blocksize keeps the same number of blocks but cannot be cut into 4 equal streams
    odd = info.nbytes // info.nblocks + 1 | 1
    assert -(-info.nbytes // odd) == info.nblocks and odd // 4 >= 128
    _corrupt(_set_i32(f, 8, odd), "not a multiple of its 4 split streams")


def test_memcpyed_size_mismatch():
    f = bytearray(Blosc("lz4", 0).encode(b"x" * 300))
    assert bf.parse_blosc_frame(bytes(f)).memcpyed
    _corrupt(_set_i32(f, 12, len(f) - 1), "memcpyed blosc frame is")
    _corrupt(_set_i32(_set_i32(f, 4, 299), 8, 299), "memcpyed blosc frame is")


def test_random_damage_never_escapes_as_another_error(walk):
    """Flipping bytes of real frames gives either a CorruptDataError or a self-consistent parse."""
    rng = np.random.default_rng(11)
    frames = [_frame(), _frame(nbytes=150_001, blocksize=0), _frame("zstd", shuffle=Blosc.BITSHUFFLE),
              _frame(nbytes=100)]
    outcomes = {"ok": 0, "corrupt": 0}
    for _ in range(1500):
        f = bytearray(frames[int(rng.integers(len(frames)))])
        for _ in range(int(rng.integers(1, 4))):
            pos = int(rng.integers(0, min(len(f), 64))) if rng.random() < 0.7 else int(rng.integers(len(f)))
            f[pos] = int(rng.integers(256))
        try:
            info = bf.parse_blosc_frame(bytes(f))
        except CorruptDataError:
            outcomes["corrupt"] += 1
            continue
        outcomes["ok"] += 1
        ends = info.stream_offsets + info.stream_csizes
        assert (info.stream_offsets >= 16).all() and (ends <= info.cbytes).all() and info.cbytes <= len(f)
        assert int(info.stream_dsizes.sum()) == info.nbytes
    assert outcomes["ok"] > 0 and outcomes["corrupt"] > 0, outcomes


# ------------------------------------------------------------ parse_blosc_batch: every frame at once

def _batch(frames: list[bytes], gaps: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The frames in one buffer, `gaps[k]` bytes before frame k, bytes after the last one."""
    buf, offsets = bytearray(), []
    for frame, gap in zip(frames, gaps):
        buf += b"\xee" * gap
        offsets.append(len(buf))
        buf += frame
    buf += b"\xff" * 7  # must never be read as part of the last frame
    return np.frombuffer(bytes(buf), np.uint8), np.array(offsets, np.int64), np.array([len(f) for f in frames], np.int64)


def _assert_batch_matches_frames(frames: list[bytes], nbytes: int, gaps: list[int] | None = None) -> int:
    """parse_blosc_batch parses exactly the frames parse_blosc_frame accepts (decoded size > 0),
    into the same streams and blocks; returns how many it refused."""
    buf, offsets, sizes = _batch(frames, gaps or [3 * k % 5 for k in range(len(frames))])
    got = bf.parse_blosc_batch(buf, offsets, sizes, nbytes)
    refused = 0
    for k, frame in enumerate(frames):
        try:
            one = bf.parse_blosc_frame(frame, nbytes)
        except CorruptDataError:
            one = None
        assert got.parsed[k] == (one is not None and one.nbytes > 0), k
        if not got.parsed[k]:
            refused += 1
            assert not (got.stream_frame == k).any() and not (got.block_frame == k).any()
            continue
        s, b = got.stream_frame == k, got.block_frame == k
        assert (got.stream_src[s] - offsets[k]).tolist() == one.stream_offsets.tolist()
        assert got.stream_csize[s].tolist() == one.stream_csizes.tolist()
        assert got.stream_dsize[s].tolist() == one.stream_dsizes.tolist()
        assert got.stream_dst[s].tolist() == one.stream_dst_offsets.tolist()
        assert got.block_offset[b].tolist() == one.block_offsets.tolist()
        assert got.block_size[b].tolist() == one.block_sizes.tolist()
        assert got.block_shuffle[b].tolist() == one.block_shuffle.tolist()
        assert (got.block_typesize[b] == one.typesize).all()
        block_of = np.searchsorted(one.block_offsets, one.stream_dst_offsets, side="right") - 1
        assert (got.stream_block[s] - np.flatnonzero(b)[0]).tolist() == block_of.tolist()
    assert np.all(np.diff(got.stream_frame) >= 0) and np.all(np.diff(got.block_frame) >= 0)  # frame order
    return refused


@pytest.mark.parametrize("nbytes, blocksize", [(n, b) for n, b in SIZES if n] + [(4096 * 3, 4096)])
def test_the_batch_parser_equals_the_frame_parser_on_real_frames(nbytes, blocksize):
    """Every compressor, shuffle and typesize in one batch: several block shapes walked together,
    memcpyed frames (random data, tiny sizes) among them."""
    rng = np.random.default_rng(nbytes + blocksize)
    frames = [bytes(Blosc(cname, 5, SHUFFLES[shuffle], blocksize=blocksize, typesize=typesize)
                    .encode(_data(kind, nbytes, typesize, rng)))
              for cname in CNAMES for shuffle in SHUFFLES for typesize in TYPESIZES
              for kind in ("compressible", "random")]
    assert _assert_batch_matches_frames(frames, nbytes) == 0
    assert _assert_batch_matches_frames(frames, nbytes + 1) == len(frames)  # another chunk size: all refused


def test_the_batch_parser_refuses_exactly_the_damaged_frames_the_frame_parser_refuses():
    rng = np.random.default_rng(5)
    base = [bytes(_frame(cname, 4099, typesize, blocksize, shuffle)) for cname in ("lz4", "zstd", "zlib")
            for typesize in (1, 2, 4) for blocksize in (0, 256, 1024) for shuffle in SHUFFLES.values()]
    base.append(bytes(Blosc("lz4", 0, typesize=2).encode(bytes(4099))))  # memcpyed
    refused = 0
    for _ in range(400):
        frames = []
        for _ in range(int(rng.integers(1, 6))):
            f = bytearray(base[int(rng.integers(len(base)))])
            for _ in range(int(rng.integers(0, 3))):
                kind = int(rng.integers(4))
                if kind == 0:
                    f[int(rng.integers(len(f)))] = int(rng.integers(256))
                elif kind == 1:  # header, block starts and first size prefixes
                    f[int(rng.integers(min(len(f), 40)))] = int(rng.integers(256))
                elif kind == 2:
                    f = f[:int(rng.integers(len(f) + 1))]
                else:
                    f += bytes(int(rng.integers(1, 5)))
            frames.append(bytes(f))
        refused += _assert_batch_matches_frames(frames, 4099, [int(rng.integers(0, 4)) for _ in frames])
    assert refused > 100


@pytest.mark.parametrize("edit", [
    lambda f: _set_i32(f, 16, 8),  # block 0 starts inside the start table
    lambda f: _set_i32(f, 16, len(f) - 3),  # block 0 starts too near the end for a size prefix
    lambda f: _set_i32(f, int.from_bytes(f[16:20], "little"), len(f)),  # its first stream runs past the end
    lambda f: _set_i32(f, int.from_bytes(f[16:20], "little"), 0),  # an empty stream
    lambda f: _set_i32(f, int.from_bytes(f[16:20], "little"), -5),
    lambda f: f[:-1],  # truncated
    lambda f: _set_i32(f, 4, 4098),  # another decoded size
    lambda f: f[:3] + bytes([3]) + f[4:],  # typesize 3: 1024-byte blocks do not split into 3 streams
], ids=["start-in-table", "start-at-end", "csize-past-end", "csize-0", "csize-negative", "truncated", "nbytes",
        "splits"])
def test_the_batch_parser_refuses_each_corruption_the_frame_parser_refuses(edit):
    good = bytes(_frame("lz4", 4099, 4, 1024))
    bad = bytes(edit(bytearray(good)))
    with pytest.raises(CorruptDataError):
        bf.parse_blosc_frame(bad, 4099)
    buf, offsets, sizes = _batch([good, bad, good], [0, 1, 2])
    assert bf.parse_blosc_batch(buf, offsets, sizes, 4099).parsed.tolist() == [True, False, True]


def test_the_batch_parser_takes_an_empty_batch():
    got = bf.parse_blosc_batch(np.zeros(0, np.uint8), np.zeros(0, np.int64), np.zeros(0, np.int64), 100)
    assert got.parsed.size == 0 and got.stream_frame.size == 0 and got.groups == 0


def test_a_size_prefix_past_the_frame_is_refused_without_reading_past_the_buffer():
    """Stream 0 claims all but 2 bytes of the frame: stream 1's size prefix would start 2 bytes
    before the end. The frame is last in the buffer, with nothing after it."""
    frame = bytearray(Blosc("lz4", 5, Blosc.SHUFFLE, blocksize=4096, typesize=2).encode(bytes(4096)))
    assert bf.parse_blosc_frame(bytes(frame)).nstreams == 2  # one block, two split streams
    start = int.from_bytes(frame[16:20], "little")
    frame = _set_i32(frame, start, len(frame) - start - 4 - 2)
    with pytest.raises(CorruptDataError, match="stream 1 of block 0 starts at byte"):
        bf.parse_blosc_frame(bytes(frame), 4096)
    buf = np.frombuffer(bytes(frame), np.uint8)
    got = bf.parse_blosc_batch(buf, np.array([0]), np.array([len(frame)]), 4096)
    assert got.parsed.tolist() == [False]
