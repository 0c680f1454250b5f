"""The GPU host half's whole-batch path for zstd chains: frame headers checked for every chunk at
once (against the per-frame reference the CPU path uses), checksums verified, streams laid out
without a Python step per chunk but the copy; run through the GPU orchestration's CPU stand-in."""

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
from gpuzarr.devices.gpu_layout import ALIGN, _check_zstd_headers, build_layout
from gpuzarr.errors import CorruptDataError


def _scalar_verdict(frame: bytes, nbytes: int) -> str | None:
    """What the per-frame reference says of one frame: None (fine) or the error message."""
    try:
        size = _zstd_content_size(memoryview(frame))
    except CorruptDataError as exc:
        return str(exc)
    if size is not None and size != nbytes:
        return f"zstd frame decodes to {size} bytes, the chunk needs {nbytes}"
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
        _check_zstd_headers(arr, np.array(offsets, np.int64), sizes, nbytes, labels)
        return
    with pytest.raises(CorruptDataError) as info:
        _check_zstd_headers(arr, np.array(offsets, np.int64), sizes, nbytes, labels)
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
    engine = StandinEngine()  # asserts ALIGN-ed nvCOMP buffers
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


def test_the_layout_copies_each_frame_to_an_aligned_place(tmp_path):
    chain = _zstd_chain(tmp_path, 100)  # 100-byte chunks: rows of work are not ALIGN-ed
    codec = numcodecs.Zstd(level=1)
    frames = [codec.encode(bytes([k]) * 100) for k in range(5)]
    layout = build_layout(_batch_of(frames), chain, lambda i: None)
    table = layout.streams["zstd"]
    assert (table["src"] % ALIGN == 0).all() and (table["dst"] % ALIGN == 0).all()
    for k, frame in enumerate(frames):
        src, size = int(table["src"][k]), int(table["src_size"][k])
        assert layout.staging[src:src + size].tobytes() == frame
    assert table["chunk"].tolist() == list(range(5))
    assert layout.moves["dst"].tolist() == [k * 100 for k in range(5)]  # temp -> each row


def test_wrong_content_sizes_and_bad_magic_are_corrupt(tmp_path):
    chain = _zstd_chain(tmp_path, 100)
    codec = numcodecs.Zstd(level=1)
    good, other = codec.encode(bytes(100)), codec.encode(bytes(99))
    with pytest.raises(CorruptDataError, match="c/1: zstd frame decodes to 99 bytes, the chunk needs 100"):
        build_layout(_batch_of([good, other, good]), chain, lambda i: None)
    with pytest.raises(CorruptDataError, match="c/2: not a zstd frame"):
        build_layout(_batch_of([good, good, b"\x00" + good[1:]]), chain, lambda i: None)


# ------------------------------------------------------------------------ fetch for the device

@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_whole_batch_coalescing_equals_the_chunk_by_chunk_one(data):
    from gpuzarr.fetch import COALESCE_GAP, _coalesce, _coalesce_small

    n = data.draw(st.integers(1, 60))
    key_ids = np.sort(np.array(data.draw(st.lists(st.integers(0, 3), min_size=n, max_size=n)), np.int64))
    offsets = np.array(data.draw(st.lists(st.sampled_from([0, 5, 100, 4096, COALESCE_GAP, 3 * COALESCE_GAP]),
                                          min_size=n, max_size=n)), np.int64).cumsum()
    offsets -= np.array(data.draw(st.lists(st.integers(0, 150), min_size=n, max_size=n)))  # overlaps, disorder
    sizes = np.array(data.draw(st.lists(st.sampled_from([-1, 0, 1, 99, 5000]), min_size=n, max_size=n)), np.int64)
    present = np.array(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    keys = np.array([f"k{i}" for i in key_ids.tolist()], dtype=object)
    assert _coalesce(keys, key_ids, offsets, sizes, present) == \
        _coalesce_small(keys.tolist(), offsets.tolist(), sizes.tolist(), present)


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
