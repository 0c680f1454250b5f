"""The GPU host half's whole-batch paths: zstd frame headers checked for every chunk at once
(against the per-frame reference the CPU path uses), and blosc, gzip, zlib, LZ4 and stored chunks
laid out as whole-batch arrays, checked against the per-chunk layout (the same streams, copies,
unshuffles and checksums; the same error, naming the same chunk, for a corrupt frame); run through
the GPU orchestration's CPU stand-in."""

from __future__ import annotations

import numcodecs
import numpy as np
import pytest
import zarr
from gpu_standin import StandinEngine
from hypothesis import given, settings
from hypothesis import strategies as st

import gpuzarr
from gpuzarr.codecs.bytes_to_bytes import _zstd_content_size
from gpuzarr.devices.gpu import GpuDevice
from gpuzarr.codecs.bytes_to_bytes import check_zstd_frames
from gpuzarr.devices.gpu_layout import ALIGN, build_layout
from gpuzarr.errors import CorruptDataError


def _scalar_verdict(frame: bytes, nbytes: int) -> str | None:
    """What the per-frame reference says of one frame: None (fine) or the error message."""
    try:
        size = _zstd_content_size(memoryview(frame))
    except CorruptDataError as exc:
        return str(exc)
    if size is not None and size != nbytes:
        return f"zstd frame header says it decodes to {size} bytes, the chunk needs {nbytes}"
    return None


@st.composite
def _frames(draw):
    magic = draw(st.sampled_from([b"\x28\xb5\x2f\xfd", b"\x28\xb5\x2f\xfc", b"PK\x03\x04"]))
    rest = draw(st.binary(min_size=0, max_size=20))
    return (magic + rest)[:draw(st.integers(0, 24))]


@settings(max_examples=400, deadline=None)
@given(frames=st.lists(_frames(), min_size=1, max_size=6), nbytes=st.sampled_from([0, 1, 255, 256, 300, 65536]),
       data=st.data())
def test_batch_header_check_agrees_with_the_per_frame_reference(frames, nbytes, data):
    # a frame whose header claims nbytes: the case that must pass
    frames = frames + [b"\x28\xb5\x2f\xfd\xa0" + nbytes.to_bytes(4, "little") + b"xx"] if nbytes >= 256 else frames
    gaps = [data.draw(st.integers(0, 5)) for _ in frames]
    staging, offsets = bytearray(), []
    for frame, gap in zip(frames, gaps):
        staging += bytes(gap)
        offsets.append(len(staging))
        staging += frame
    staging += b"\xff" * 3  # bytes after the last frame must not count as its header
    labels = [f"c/{k}" for k in range(len(frames))]
    verdicts = [_scalar_verdict(f, nbytes) for f in frames]
    first_bad = next(((labels[k], v) for k, v in enumerate(verdicts) if v), None)
    arr = np.frombuffer(bytes(staging), np.uint8)
    sizes = np.array([len(f) for f in frames], np.int64)
    if first_bad is None:
        check_zstd_frames(arr, np.array(offsets, np.int64), sizes, nbytes, labels.__getitem__)
        return
    with pytest.raises(CorruptDataError) as info:
        check_zstd_frames(arr, np.array(offsets, np.int64), sizes, nbytes, labels.__getitem__)
    # the batch names a bad chunk with the reference's message for it (maybe a later one first
    # by kind: magic, then truncation, then size), never a good one
    message = str(info.value)
    assert any(message == f"{lab}: {v}" for lab, v in zip(labels, verdicts) if v), (message, verdicts)


@pytest.fixture
def zstd_array(tmp_path):
    data = np.arange(40 * 50, dtype=np.uint16).reshape(40, 50)
    z = zarr.create_array(str(tmp_path / "a"), shape=data.shape, chunks=(10, 10), shards=(20, 50), dtype="u2",
                          compressors=[zarr.codecs.ZstdCodec(level=1), zarr.codecs.Crc32cCodec()])
    z[...] = data
    return tmp_path / "a", data


def test_a_zstd_batch_is_one_nvcomp_call_with_aligned_streams(zstd_array):
    path, data = zstd_array
    engine = StandinEngine()  # asserts the alignments nvCOMP's query states
    got = gpuzarr.open(str(path), device=GpuDevice(engine)).read()
    np.testing.assert_array_equal(got, data)
    assert engine.calls["decompress:zstd"] == 1 and engine.calls["upload"] == 1


def _corrupt(path, chunk: int, edit) -> None:
    """Apply `edit(frame bytes) -> bytes of the same length` to inner chunk `chunk` of shard c/0/0."""
    arr = gpuzarr.open(str(path), device="cpu")
    loc = arr._reader.locator.locate(np.array([[0, chunk]]))
    shard = path / "c" / "0" / "0"
    raw = bytearray(shard.read_bytes())
    start, size = int(loc.offsets[0]), int(loc.sizes[0])
    raw[start:start + size] = edit(bytes(raw[start:start + size]))
    shard.write_bytes(bytes(raw))


@pytest.mark.parametrize("edit, match", [
    (lambda f: b"\x00" + f[1:], "crc32c codec.*checksum mismatch"),  # the checksum sees it first
])
def test_a_corrupt_frame_fails_the_gpu_read_naming_its_shard(zstd_array, edit, match):
    path, _ = zstd_array
    _corrupt(path, 3, edit)
    with pytest.raises(CorruptDataError, match=f"c/0/0.*{match}"):
        gpuzarr.open(str(path), device=GpuDevice(StandinEngine())).read()


def _batch_of(frames: list[bytes]):
    from gpuzarr.fetch import FetchedBatch

    staging = np.frombuffer(b"".join(frames), np.uint8)
    sizes = np.array([len(f) for f in frames], np.int64)
    return FetchedBatch(staging, np.cumsum(sizes) - sizes, sizes, np.ones(len(frames), bool),
                        [f"c/{k}" for k in range(len(frames))])


def _zstd_chain(tmp_path, nbytes: int):
    z = zarr.create_array(str(tmp_path / "z"), shape=(nbytes,), chunks=(nbytes,), dtype="u1",
                          compressors=zarr.codecs.ZstdCodec(level=1))
    z[...] = 1
    return gpuzarr.open(str(tmp_path / "z"), device="cpu")._reader.locator.leaf_chain


def test_the_layout_reads_each_frame_where_fetch_put_it(tmp_path):
    """nvCOMP asks 1-byte alignment of zstd inputs and outputs: frames at any offset are read in
    place (the fetched buffer is the one uploaded) and decode straight into unaligned rows."""
    from gpuzarr.devices.gpu_layout import decode_alignments

    if decode_alignments()["zstd"] != (1, 1):
        pytest.skip(f"nvCOMP's zstd alignments here: {decode_alignments()['zstd']} (its library missing?)")
    chain = _zstd_chain(tmp_path, 100)  # 100-byte chunks: rows of work are not ALIGN-ed
    codec = numcodecs.Zstd(level=1)
    frames = [codec.encode(bytes([k]) * 100) for k in range(5)]
    batch = _batch_of(frames)
    layout = build_layout(batch, chain, lambda i: None)
    table = layout.streams["zstd"]
    assert layout.staging is batch.staging and table["src"].tolist() == batch.offsets.tolist()
    assert table["dst"].tolist() == [k * 100 for k in range(5)] and not layout.moves["size"].size
    assert table["chunk"].tolist() == list(range(5))


def test_frames_an_algorithm_cannot_read_in_place_are_moved(tmp_path, monkeypatch):
    """Were nvCOMP to ask 16-byte inputs and outputs (what gpu_layout assumes without nvCOMP's
    library): frames not at such offsets are copied to aligned places, rows decode through temp."""
    from gpuzarr.devices import gpu_layout

    monkeypatch.setattr(gpu_layout, "decode_alignments", lambda: {"zstd": (ALIGN, ALIGN)})
    chain = _zstd_chain(tmp_path, 100)
    codec = numcodecs.Zstd(level=1)
    frames = [codec.encode(bytes([k]) * 100) for k in range(5)]
    batch = _batch_of([b"-"] + frames).part(1, 6)  # no frame at a multiple of 16
    assert (batch.offsets % ALIGN).all()
    layout = build_layout(batch, chain, lambda n: (np.zeros(n, np.uint8), None))
    table = layout.streams["zstd"]
    assert (table["src"] % ALIGN == 0).all() and (table["dst"] % ALIGN == 0).all()
    for k, frame in enumerate(frames):
        src, size = int(table["src"][k]), int(table["src_size"][k])
        assert layout.staging[src:src + size].tobytes() == frame
    assert layout.moves["dst"].tolist() == [100, 200, 300]  # temp -> the rows not at multiples of 16
    assert layout.staging.size < sum(map(len, frames)) + 5 * ALIGN  # nothing read in place: the moved frames alone


def test_wrong_content_sizes_and_bad_magic_are_corrupt(tmp_path):
    chain = _zstd_chain(tmp_path, 100)
    codec = numcodecs.Zstd(level=1)
    good, other = codec.encode(bytes(100)), codec.encode(bytes(99))
    with pytest.raises(CorruptDataError, match="c/1: zstd frame header says it decodes to 99 bytes, the chunk needs 100"):
        build_layout(_batch_of([good, other, good]), chain, lambda i: None)
    with pytest.raises(CorruptDataError, match="c/2: not a zstd frame"):
        build_layout(_batch_of([good, good, b"\x00" + good[1:]]), chain, lambda i: None)


# ------------------------------------------------------------------------ fetch for the device

@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_whole_batch_coalescing_equals_the_chunk_by_chunk_one(data):
    from gpuzarr.fetch import COALESCE_GAP, LOCAL_GAP, _coalesce, coalesce_small

    n = data.draw(st.integers(1, 60))
    key_ids = np.sort(np.array(data.draw(st.lists(st.integers(0, 3), min_size=n, max_size=n)), np.int64))
    offsets = np.array(data.draw(st.lists(st.sampled_from([0, 5, 100, 4096, COALESCE_GAP, 3 * COALESCE_GAP]),
                                          min_size=n, max_size=n)), np.int64).cumsum()
    offsets -= np.array(data.draw(st.lists(st.integers(0, 150), min_size=n, max_size=n)))  # overlaps, disorder
    sizes = np.array(data.draw(st.lists(st.sampled_from([-1, 0, 1, 99, 5000]), min_size=n, max_size=n)), np.int64)
    present = np.array(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    keys = np.array([f"k{i}" for i in key_ids.tolist()], dtype=object)
    gap = data.draw(st.sampled_from([COALESCE_GAP, LOCAL_GAP, 0]))
    assert _coalesce(keys, key_ids, offsets, sizes, present, gap) == \
        coalesce_small(keys.tolist(), offsets.tolist(), sizes.tolist(), np.flatnonzero(present).tolist(), gap)


def _sharded(tmp_path, chunk=(8, 8)):
    from gpuzarr.sample import sample_data, write_sharded

    data = sample_data((64, 64))
    write_sharded(str(tmp_path / "s"), data, (32, 64), chunk)
    return gpuzarr.open(str(tmp_path / "s"), device="cpu"), data


@pytest.mark.parametrize("every", [1, 3])  # all chunks (one range per shard), or gaps between them
def test_an_aligned_fetch_places_each_chunk_at_an_aligned_offset(tmp_path, every):
    from gpuzarr.fetch import fetch

    arr, _ = _sharded(tmp_path)
    reader = arr._reader
    coords = np.array([(y, x) for y in range(8) for x in range(8)])[::every]
    loc = reader.locator.locate(coords)
    rows = np.arange(coords.shape[0])
    plain, aligned = fetch(arr.store, loc, rows), fetch(arr.store, loc, rows, align=ALIGN)
    assert not (aligned.offsets % ALIGN).any()
    for i in range(rows.size):
        assert bytes(aligned.chunk(i)) == bytes(plain.chunk(i)) and len(plain.chunk(i)) > 0


def test_a_scattered_read_continues_after_a_short_preadv(tmp_path, monkeypatch):
    from gpuzarr import store as store_module
    from gpuzarr.fetch import fetch

    arr, data = _sharded(tmp_path)
    real = store_module.os.preadv

    def seven_bytes(fd, bufs, off, flags=0):  # a preadv that reads at most 7 bytes a call
        left, short = 7, []
        for b in bufs:
            if left <= 0:
                break
            short.append(b[:left])
            left -= len(short[-1])
        return real(fd, short, off, flags)

    monkeypatch.setattr(store_module.os, "preadv", seven_bytes)
    loc = arr._reader.locator.locate(np.array([(0, 0), (0, 1), (3, 5)]))
    batch = fetch(arr.store, loc, np.arange(3), align=ALIGN)
    monkeypatch.undo()
    want = fetch(arr.store, loc, np.arange(3))
    assert [bytes(batch.chunk(i)) for i in range(3)] == [bytes(want.chunk(i)) for i in range(3)]


def test_the_gpu_device_decodes_a_local_zstd_batch_where_fetch_put_it(tmp_path):
    arr, data = _sharded(tmp_path)
    engine = StandinEngine()
    seen = []
    real_build = gpuzarr.devices.gpu.build_layout

    def spy(batch, *args, **kw):
        layout = real_build(batch, *args, **kw)
        seen.append(layout.staging is batch.staging)
        return layout

    gpuzarr.devices.gpu.build_layout = spy
    try:
        np.testing.assert_array_equal(arr.read(device=GpuDevice(engine)), data)
    finally:
        gpuzarr.devices.gpu.build_layout = real_build
    assert seen == [True]  # no repack: the staging fetched is the one uploaded


# ------------------------------------------------ blosc, gzip, zlib, LZ4, stored: whole batch vs per chunk

def _canonical(layout) -> dict:
    """What a layout asks of the device, free of where it put things in staging and temp: each
    stream, copy and checksum by its bytes, each write by where it finally lands (a chunk's row,
    or the unshuffle that moves it there)."""
    rows = layout.n * layout.raw_nbytes
    moved = dict(zip(layout.moves["src"].tolist(), layout.moves["dst"].tolist()))
    unshuffles = [(s, d, n, kind) for kind, t in layout.unshuffles.items()
                  for s, d, n in zip(t["src"].tolist(), t["dst"].tolist(), t["size"].tolist())]

    def lands(addr: int) -> tuple:
        addr = moved.get(addr, addr)
        if addr < rows:
            return ("row", addr)
        inside = [(kind, d + addr - s) for s, d, n, kind in unshuffles if s <= addr < s + n]
        assert len(inside) == 1, f"a write to temp byte {addr} that no move or unshuffle takes to a row"
        return ("unshuffled", *inside[0])

    def piece(src, size) -> bytes:
        return layout.staging[src:src + size].tobytes()

    streams = sorted((alg, piece(s, n), lands(d), ds, c) for alg, t in layout.streams.items()
                     for s, n, d, ds, c in zip(*(t[k].tolist() for k in ("src", "src_size", "dst", "dst_size", "chunk"))))
    copies = sorted((piece(s, n), lands(d)) for s, d, n in zip(*(layout.copies[k].tolist() for k in ("src", "dst", "size"))))
    unshuffled = sorted((kind, d, n, ts) for kind, t in layout.unshuffles.items()
                        for d, n, ts in zip(*(t[k].tolist() for k in ("dst", "size", "typesize"))))
    checks = layout.checksums
    crc32c = sorted((piece(s, n), e, c) for s, n, e, c in zip(*(checks["crc32c"][k].tolist()
                                                             for k in ("src", "size", "expected", "chunk")))
                    ) if "crc32c" in checks else []
    crc32 = sorted((lands(s), n, e, c) for s, n, e, c in zip(*(checks["crc32"][k].tolist()
                                                             for k in ("src", "size", "expected", "chunk")))
                   ) if "crc32" in checks else []
    return {"streams": streams, "copies": copies, "unshuffles": unshuffled, "crc32c": crc32c, "crc32": crc32,
            "fallback": sorted(layout.cpu_fallback)}


def _per_chunk_layout(monkeypatch, batch, chain, cpu_decode):
    """The reference: every chunk through the per-chunk path."""
    from gpuzarr.devices import gpu_layout

    with monkeypatch.context() as m:
        m.setattr(gpu_layout, "_add_whole_batch", lambda b, inner, live: np.zeros(live.size, bool))
        return build_layout(batch, chain, cpu_decode)


def _both(monkeypatch, batch, chain, cpu_decode=lambda i: np.zeros(0, np.uint8)):
    """(whole-batch layout or its error message, per-chunk layout or its error message)."""
    results = []
    for make in (lambda: build_layout(batch, chain, cpu_decode),
                 lambda: _per_chunk_layout(monkeypatch, batch, chain, cpu_decode)):
        try:
            results.append(make())
        except CorruptDataError as exc:
            results.append(str(exc))
    return results


def _whole_read(arr):
    from gpuzarr.fetch import fetch
    from gpuzarr.plan import make_plan
    from gpuzarr.selection import normalize

    reader = arr._reader
    plan = make_plan([normalize((slice(None),) * arr.ndim, arr.shape)], reader.locator.leaf_shape, False)
    loc = reader.locator.locate(plan.chunks)
    return fetch(arr.store, loc, np.arange(plan.n_chunks), align=ALIGN)


_SINGLE = ("blosc", "gzip", "zlib", "lz4")


def _whole_batch_cases():
    from corpus import ARRAY_CASES

    return [c.name for c in ARRAY_CASES if any(k in c.name for k in _SINGLE + ("raw", "bytes", "none"))]


@pytest.mark.parametrize("target", _whole_batch_cases())
def test_the_whole_batch_layout_equals_the_per_chunk_one_on_the_corpus(corpus, target, monkeypatch):
    from gpuzarr.codecs.bytes_to_bytes import Blosc, Gzip, Lz4, Zlib
    from gpuzarr.devices.gpu import decode_bytes

    arr = gpuzarr.open(str(corpus.path(target)), device="cpu")
    chain = arr._reader.locator.leaf_chain
    inner = chain.bytes_to_bytes[:len(chain.bytes_to_bytes) - chain.trailing_crc32c]
    if chain.raw_nbytes is None or len(inner) > 1 or (inner and not isinstance(inner[0], (Blosc, Gzip, Lz4, Zlib))):
        pytest.skip(f"{chain.describe()}: not a chain the whole-batch framings take")
    batch = _whole_read(arr)
    raw = chain.raw_nbytes
    whole, per_chunk = _both(monkeypatch, batch, chain,
                             lambda i: decode_bytes(chain, batch.chunk(i), np.empty(raw, np.uint8), batch.labels[i]))
    assert _canonical(whole) == _canonical(per_chunk)
    assert whole.per_frame == len(whole.cpu_fallback)  # only frames nvCOMP cannot decode (blosclz) go one by one
    assert per_chunk.per_frame == int(batch.present.sum())


def _chain(kind: str, nbytes: int, checks: int = 0):
    """The leaf chain of a 1-d uint8 array of one `nbytes` chunk compressed by `kind`."""
    import tempfile

    compressor = {"blosc": numcodecs.Blosc("lz4"), "gzip": numcodecs.GZip(), "zlib": numcodecs.Zlib(),
                  "lz4": numcodecs.LZ4(), "raw": None}[kind]
    path = tempfile.mkdtemp() + "/a"
    if checks:
        z = zarr.create_array(path, shape=(nbytes,), chunks=(nbytes,), dtype="u1", zarr_format=3,
                              compressors=[zarr.codecs.numcodecs.Blosc(cname="lz4")] + [zarr.codecs.Crc32cCodec()] * checks
                              if kind == "blosc" else [zarr.codecs.Crc32cCodec()] * checks)
    else:
        z = zarr.create_array(path, shape=(nbytes,), chunks=(nbytes,), dtype="u1", zarr_format=2, compressors=compressor)
    z[...] = 1
    return gpuzarr.open(path, device="cpu")._reader.locator.leaf_chain


_CHAINS: dict = {}


def _cached_chain(kind, nbytes, checks=0):
    key = (kind, nbytes, checks)
    if key not in _CHAINS:
        _CHAINS[key] = _chain(kind, nbytes, checks)
    return _CHAINS[key]


def _with_crc32c(frame: bytes, checks: int) -> bytes:
    import crc32c

    for _ in range(checks):
        frame += crc32c.crc32c(frame).to_bytes(4, "little")
    return frame


@st.composite
def _blosc_frame(draw, nbytes):
    cname = draw(st.sampled_from(["lz4", "zstd", "zlib", "blosclz"]))
    typesize = draw(st.sampled_from([1, 2, 3, 4, 8, 16, 17]))
    shuffle = draw(st.sampled_from([numcodecs.Blosc.NOSHUFFLE, numcodecs.Blosc.SHUFFLE, numcodecs.Blosc.BITSHUFFLE]))
    blocksize = draw(st.sampled_from([0, 128, 256, 1000, 4096]))
    clevel = draw(st.sampled_from([0, 5]))  # 0: memcpyed
    seed = draw(st.integers(0, 3))
    data = np.random.default_rng(seed).integers(0, 4 if seed else 256, nbytes).astype(np.uint8).tobytes()
    return numcodecs.Blosc(cname, clevel, shuffle, blocksize=blocksize, typesize=typesize).encode(data)


def _frame_of(kind: str, nbytes: int, seed: int) -> bytes:
    data = np.random.default_rng(seed).integers(0, 4 if seed else 256, nbytes).astype(np.uint8).tobytes()
    if kind == "gzip":
        import gzip
        return gzip.compress(data, mtime=0) if seed < 2 else _gzip_with_extras(data, named=seed == 3)
    return bytes({"zlib": numcodecs.Zlib(), "lz4": numcodecs.LZ4(), "raw": None}[kind].encode(data)
                 if kind != "raw" else data)


def _gzip_with_extras(data: bytes, named: bool) -> bytes:
    """A gzip member with FEXTRA and FHCRC set, and FNAME if `named` (the whole-batch framing
    leaves that one to the per-chunk path); Python's gzip writes none of them."""
    import struct
    import zlib

    body = zlib.compressobj(6, zlib.DEFLATED, -15)
    deflated = body.compress(data) + body.flush()
    head = bytes([0x1F, 0x8B, 8, 4 | 2 | (8 if named else 0)]) + bytes(6) + struct.pack("<H", 3) + b"xyz"
    head += (b"name\0" if named else b"") + b"\x12\x34"
    return head + deflated + struct.pack("<II", zlib.crc32(data), len(data))


def _damage(draw, frame: bytes) -> bytes:
    f = bytearray(frame)
    for _ in range(draw(st.integers(0, 2))):
        what = draw(st.sampled_from(["byte", "header", "truncate", "extend"]))
        if what == "byte" and f:
            f[draw(st.integers(0, len(f) - 1))] = draw(st.integers(0, 255))
        elif what == "header" and f:
            f[draw(st.integers(0, min(len(f), 40) - 1))] = draw(st.integers(0, 255))
        elif what == "truncate":
            f = f[:draw(st.integers(0, len(f)))]
        elif what == "extend":
            f += bytes(draw(st.integers(1, 4)))
    return bytes(f)


@settings(max_examples=300, deadline=None)
@given(data=st.data(), kind=st.sampled_from(["blosc", "gzip", "zlib", "lz4", "raw"]),
       nbytes=st.sampled_from([100, 1000, 4099]), checks=st.sampled_from([0, 0, 1]))
def test_whole_batch_and_per_chunk_layouts_agree_on_any_frames(data, kind, nbytes, checks):
    """Good frames of every form (blosc typesizes, blocksizes, shuffles, memcpyed, compressors;
    gzip with header extras) and damaged ones: the same layout, or the same error naming the
    same chunk."""
    chain = _cached_chain(kind, nbytes, checks)
    frames = []
    for _ in range(data.draw(st.integers(1, 6))):
        frame = (data.draw(_blosc_frame(nbytes)) if kind == "blosc"
                 else _frame_of(kind, nbytes, data.draw(st.integers(0, 3))))
        if data.draw(st.booleans()):
            frame = _damage(data.draw, frame)
        frames.append(_with_crc32c(frame, checks))
    batch = _batch_of(frames)
    present = np.array([data.draw(st.booleans()) or k == 0 for k in range(len(frames))])
    batch.present[:] = present
    batch.sizes[~present] = 0
    with pytest.MonkeyPatch.context() as mp:
        whole, per_chunk = _both(mp, batch, chain, lambda i: np.zeros(nbytes, np.uint8))
    if isinstance(per_chunk, str):
        assert whole == per_chunk
    else:
        assert not isinstance(whole, str), whole
        assert _canonical(whole) == _canonical(per_chunk)


def test_mixed_blosc_frames_decode_through_the_standin(tmp_path):
    """A v2 blosc array whose chunks are compressed (split streams, byte shuffle)
    or memcpyed (random data): whole-batch layout, stand-in decode: the CPU read's bits; one
    nvCOMP call, one unshuffle launch, no frame laid out alone."""
    data = np.zeros((64, 64), "<u4")
    data[:32] = np.arange(32 * 64).reshape(32, 64) % 97
    data[32:] = np.random.default_rng(0).integers(0, 2**32, (32, 64), dtype=np.uint32)  # incompressible
    z = zarr.create_array(str(tmp_path / "a"), shape=data.shape, chunks=(16, 64), dtype="<u4", zarr_format=2,
                          compressors=numcodecs.Blosc("lz4", 5, numcodecs.Blosc.SHUFFLE, blocksize=1024))
    z[...] = data
    engine = StandinEngine()
    seen = []
    real = gpuzarr.devices.gpu.build_layout

    def spy(*args, **kw):
        seen.append(real(*args, **kw))
        return seen[-1]

    gpuzarr.devices.gpu.build_layout = spy
    try:
        got = gpuzarr.open(str(tmp_path / "a"), device=GpuDevice(engine)).read()
    finally:
        gpuzarr.devices.gpu.build_layout = real
    np.testing.assert_array_equal(got, data)
    assert [layout.per_frame for layout in seen] == [0]
    assert engine.calls["decompress:lz4"] == 1 and engine.calls["unshuffle:1"] == 1


def test_a_corrupt_blosc_frame_fails_the_gpu_read_naming_its_chunk(tmp_path):
    data = np.arange(64 * 64, dtype="<u2").reshape(64, 64)
    z = zarr.create_array(str(tmp_path / "a"), shape=data.shape, chunks=(16, 64), dtype="<u2", zarr_format=2,
                          compressors=numcodecs.Blosc("lz4", 5, numcodecs.Blosc.SHUFFLE))
    z[...] = data
    chunk = tmp_path / "a" / "2.0"
    frame = bytearray(chunk.read_bytes())
    frame[12:16] = (len(frame) + 1).to_bytes(4, "little")  # cbytes past the end
    chunk.write_bytes(bytes(frame))
    with pytest.raises(CorruptDataError, match="2.0.*blosc frame is truncated"):
        gpuzarr.open(str(tmp_path / "a"), device=GpuDevice(StandinEngine())).read()


def test_gzip_members_with_header_extras_are_laid_out_whole_batch_or_per_chunk(monkeypatch):
    chain = _cached_chain("gzip", 1000)
    frames = [_frame_of("gzip", 1000, 2), _frame_of("gzip", 1000, 3), _frame_of("gzip", 1000, 1)]
    whole, per_chunk = _both(monkeypatch, _batch_of(frames), chain)
    assert _canonical(whole) == _canonical(per_chunk)
    assert whole.per_frame == 1  # the member with a file name


def test_a_blosc_zlib_stream_with_a_bad_header_is_refused_like_the_per_chunk_path(monkeypatch):
    chain = _cached_chain("blosc", 4099)
    data = np.arange(4099, dtype=np.uint8).tobytes()
    frame = bytearray(numcodecs.Blosc("zlib", 5, numcodecs.Blosc.NOSHUFFLE, blocksize=1024).encode(data))
    first = int.from_bytes(frame[16:20], "little")  # block 0; its first stream's bytes start 4 later
    frame[first + 5] ^= 0x20  # FDICT: a preset dictionary, which zlib_to_deflate refuses
    good = numcodecs.Blosc("lz4").encode(data)
    whole, per_chunk = _both(monkeypatch, _batch_of([good, bytes(frame)]), chain)
    assert whole == per_chunk == "c/1: not a zlib stream (bad header, or a preset dictionary)"
