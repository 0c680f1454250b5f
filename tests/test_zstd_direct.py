"""zstd decoded straight into place on the CPU: the batched header check (check_zstd_frames)
against the per-frame parser, one libzstd call per frame into rows (Zstd.decode_rows) against
python-zstandard, its named errors and counted fallbacks, and reads whose whole chunks are
placed as tiles of a box in any order (placement.part_boxes: shards store chunks in Morton order)."""

from __future__ import annotations

import math
from unittest import mock

import numpy as np
import pytest
import zarr
import numcodecs.zstd
import zstandard
from checks import poisoned_empty, pooled_reads
from hypothesis import given, settings
from hypothesis import strategies as st

import gpuzarr
from gpuzarr import host_lib
from gpuzarr.codecs import bytes_to_bytes
from gpuzarr.codecs.bytes_to_bytes import Zstd, _zstd_content_size, check_zstd_frames
from gpuzarr.devices import cpu, gpu_layout
from gpuzarr.devices.cpu import CpuDevice
from gpuzarr.errors import CorruptDataError
from gpuzarr.placement import part_boxes, place_block, whole_box
from gpuzarr.plan import make_plan
from gpuzarr.selection import normalize

MAGIC = b"\x28\xb5\x2f\xfd"
NBYTES = 4096


def _raw(i: int, nbytes: int = NBYTES) -> bytes:
    rng = np.random.default_rng(i)
    return (rng.integers(0, 40, nbytes // 2).astype("<u2") + i).tobytes()


def _frame(data: bytes, **kwargs) -> bytes:
    return zstandard.ZstdCompressor(**{"write_content_size": True, **kwargs}).compress(data)


def _batch(frames: list[bytes]) -> tuple[np.ndarray, np.ndarray, np.ndarray, list]:
    staging = np.frombuffer(b"".join(frames), np.uint8).copy()
    sizes = np.array([len(f) for f in frames], np.int64)
    return staging, np.cumsum(sizes) - sizes, sizes, [f"c{i}" for i in range(len(frames))]


def _one_by_one(frame: bytes, nbytes: int) -> bool:
    """What check_zstd_frames must do for one frame: the per-frame parser, then the size check."""
    size = _zstd_content_size(memoryview(frame))
    if size is not None and size != nbytes:
        raise CorruptDataError(f"zstd frame header says it decodes to {size} bytes, the chunk needs {nbytes}")
    return size is not None


def _outcome(fn, *args):
    try:
        return ("ok", fn(*args))
    except CorruptDataError as exc:
        return ("error", str(exc).removeprefix("c0: "))


@settings(max_examples=400, deadline=None)
@given(descriptor=st.integers(0, 255), tail=st.binary(min_size=0, max_size=16),
       nbytes=st.sampled_from([0, 1, 200, 256, 300, 65791, 70000]),
       magic=st.sampled_from([MAGIC, MAGIC, MAGIC, b"\x28\xb5\x2f\xfe"]))
def test_batched_header_check_equals_the_per_frame_parser(descriptor, tail, nbytes, magic):
    """Any descriptor (content size field of 0/1/2/4/8 bytes, dictionary id of 0/1/2/4, single
    segment or not), any following bytes, truncated or not: the same verdict and message."""
    frame = magic + bytes([descriptor]) + tail
    staging, offsets, sizes, labels = _batch([b"\x00" * 3, frame, b"\x00" * 20])  # neighbours must not leak in
    got = _outcome(lambda: bool(check_zstd_frames(staging, offsets[1:2], sizes[1:2], nbytes, ["c0"].__getitem__)[0]))
    assert got == _outcome(_one_by_one, frame, nbytes)


@pytest.mark.parametrize("nbytes", [0, 1, 255, 256, 300, 65535, 65791, 65792, 70000])
def test_content_size_fields_of_every_width(nbytes):
    """Frames from libzstd itself (single segment or windowed, with a dictionary id or not)."""
    data = bytes(range(256)) * (nbytes // 256) + bytes(nbytes % 256)
    dictionary = zstandard.ZstdCompressionDict(b"dictionary " * 300, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    frames = [_frame(data), _frame(data, write_content_size=False), _frame(data, dict_data=dictionary)]
    staging, offsets, sizes, labels = _batch(frames)
    assert check_zstd_frames(staging, offsets, sizes, nbytes, labels.__getitem__).tolist() == [True, False, True]
    with pytest.raises(CorruptDataError, match=f"c0: zstd frame header says it decodes to {nbytes} bytes, the chunk needs"):
        check_zstd_frames(staging, offsets, sizes, nbytes + 1, labels.__getitem__)


def test_the_refused_frame_is_handed_to_before_raising_first():
    """The GPU layout verifies a refused chunk's crc32c on the host before naming its header."""
    frames = [_frame(_raw(i)) for i in range(4)]
    frames[2] = b"\x00" + frames[2][1:]
    seen = []
    with pytest.raises(CorruptDataError, match="c2: not a zstd frame"):
        check_zstd_frames(*_batch(frames)[:3], NBYTES, [f"c{i}" for i in range(4)].__getitem__, seen.append)
    assert seen == [2]


def _rows(frames: list[bytes], nbytes: int = NBYTES) -> np.ndarray:
    staging, offsets, sizes, labels = _batch(frames)
    rows = np.full((len(frames), nbytes), 0xAB, np.uint8)
    Zstd("zstd").decode_rows(staging, offsets, sizes, rows, labels)
    return rows


def _stream(frame: bytes, nbytes: int = NBYTES) -> bytes:
    """python-zstandard's stream reader, the path of frames without a content size."""
    out = np.zeros(nbytes, np.uint8)
    Zstd._decode_stream(memoryview(frame), out, "test")
    return out.tobytes()


def test_decode_rows_equals_python_zstandard_and_counts_frames_without_a_size():
    raws = [_raw(i) for i in range(7)]
    frames = [_frame(r, write_checksum=i % 2 == 0, write_content_size=i != 3) for i, r in enumerate(raws)]
    before = bytes_to_bytes.FALLBACKS["zstd:no-content-size"]
    assert [r.tobytes() for r in _rows(frames)] == raws
    assert bytes_to_bytes.FALLBACKS["zstd:no-content-size"] == before + 1


@pytest.mark.parametrize("extra", [lambda f: f, lambda f: b"garbage", lambda f: _frame(b""),
                                   lambda f: b"\x50\x2a\x4d\x18\x04\x00\x00\x00skip"])
def test_what_follows_the_first_frame_behaves_as_the_stream_reader(extra):
    """A second frame, trailing garbage, an empty frame, a skippable frame: whatever one libzstd
    call makes of them, the result (or its refusal) is the stream reader's."""
    raw = _raw(1)
    first = _frame(raw)
    chunk = first + extra(first)
    want = _outcome(_stream, chunk)
    staging, offsets, sizes, _ = _batch([chunk])
    rows = np.zeros((1, NBYTES), np.uint8)
    got = _outcome(lambda: Zstd("zstd").decode_rows(staging, offsets, sizes, rows, ["c0"]) or rows[0].tobytes())
    assert got == want
    one = np.zeros(NBYTES, np.uint8)
    assert _outcome(lambda: Zstd("zstd").decode_into(chunk, one) or one.tobytes()) == want


def test_a_first_frame_stating_a_short_size_is_not_completed_by_a_second():
    """First frame of 1000 bytes, then a frame of the rest: one libzstd call would fill the row,
    but the first frame's header says 1000 bytes, and such a chunk stays refused. Without a
    content size the stream reader decodes on into the second frame (as numcodecs does)."""
    raw = _raw(2)
    with pytest.raises(CorruptDataError, match="c0: zstd frame header says it decodes to 1000 bytes, the chunk needs 4096"):
        _rows([_frame(raw[:1000]) + _frame(raw[1000:])])
    stripped = _frame(raw[:1000], write_content_size=False) + _frame(raw[1000:])
    assert _rows([stripped])[0].tobytes() == raw == _stream(stripped)


def _corrupt_payload(frame: bytes) -> bytes:
    return frame[:-8] + bytes(b ^ 0x5A for b in frame[-8:])


@pytest.mark.parametrize("fault, message", [
    ("magic", "c2: not a zstd frame"), ("size", "c2: zstd frame header says it decodes to 4094 bytes, the chunk needs 4096"),
    ("payload", "c2: cannot decode zstd frame"), ("truncated", "c2: "), ("empty", "c2: not a zstd frame"),
    ("checksum", "c2: cannot decode zstd frame"),
])
def test_decode_rows_names_the_bad_frame(fault, message):
    frames = [_frame(_raw(i), write_checksum=True) for i in range(5)]
    bad = frames[2]
    frames[2] = {"magic": b"\x00" + bad[1:], "size": _frame(_raw(2)[:-2]), "payload": _corrupt_payload(bad),
                 "truncated": bad[:len(bad) // 2], "empty": b"", "checksum": bad[:-1] + bytes([bad[-1] ^ 1])}[fault]
    with pytest.raises(CorruptDataError, match=message):
        _rows(frames)


def test_without_libzstd_python_zstandard_decodes_and_is_counted(monkeypatch):
    monkeypatch.setattr(bytes_to_bytes, "_libzstd", lambda: None)
    raws = [_raw(i) for i in range(4)]
    before = bytes_to_bytes.FALLBACKS["zstd:no-libzstd"]
    assert [r.tobytes() for r in _rows([_frame(r) for r in raws])] == raws
    one = np.zeros(NBYTES, np.uint8)
    Zstd("zstd").decode_into(_frame(raws[0]), one)
    assert one.tobytes() == raws[0]
    # the rows, whole frames that state their size, went in one python-zstandard group call,
    # libzstd or not: only the lone frame is a fallback
    assert bytes_to_bytes.FALLBACKS["zstd:no-libzstd"] == before + 1
    with pytest.raises(CorruptDataError, match="c1: cannot decode zstd frame"):
        _rows([_frame(raws[0]), _corrupt_payload(_frame(raws[1]))])


@pytest.fixture
def calls(monkeypatch):
    """The libzstd calls made, as (source bytes, rows' bytes) each."""
    made = []
    decode = bytes_to_bytes._DCtx.decode

    def counting(self, src, src_size, dst, nbytes):
        made.append((src_size, nbytes))
        return decode(self, src, src_size, dst, nbytes)
    monkeypatch.setattr(bytes_to_bytes._DCtx, "decode", counting)
    return made


def test_frames_back_to_back_decode_in_one_call_per_run(calls):
    raws = [_raw(i) for i in range(16)]
    frames = [_frame(r, write_checksum=i % 3 == 0) for i, r in enumerate(raws)]
    staging, offsets, sizes, labels = _batch(frames)
    rows = np.zeros((16, NBYTES), np.uint8)
    Zstd("zstd").decode_rows(staging, offsets, sizes, rows, labels)
    assert [r.tobytes() for r in rows] == raws
    assert calls == [(int(sizes.sum()), 16 * NBYTES)]
    calls.clear()  # four runs (frames 7 and 15 swapped): four calls, rows still in the given order
    order = np.r_[0:7, 15, 8:15, 7]
    rows[:] = 0
    Zstd("zstd").decode_rows(staging, offsets[order], sizes[order], rows, [labels[i] for i in order])
    assert [r.tobytes() for r in rows] == [raws[i] for i in order]
    assert [n // NBYTES for _, n in calls] == [7, 1, 7, 1]


def test_scattered_frames_go_in_one_group_call(calls):
    """Runs averaging fewer than RUN_MIN frames: no call per frame (each re-takes the GIL)."""
    raws = [_raw(i) for i in range(8)]
    staging, offsets, sizes, labels = _batch([_frame(r) for r in raws])
    order = np.array([0, 2, 4, 6, 1, 3, 5, 7])
    rows = np.zeros((8, NBYTES), np.uint8)
    Zstd("zstd").decode_rows(staging, offsets[order], sizes[order], rows, [labels[i] for i in order])
    assert [r.tobytes() for r in rows] == [raws[i] for i in order]
    assert calls == []


def test_a_segment_of_two_frames_back_to_back_with_others_is_refused():
    """One segment holding two whole frames (a bad shard index), between frames back to back: a
    call over the run fails, and the frame is named, never decoded as if the segments were right."""
    frames = [_frame(_raw(i)) for i in range(6)]
    staging, offsets, sizes, labels = _batch(frames[:2] + [frames[2] + frames[3]] + frames[4:])
    rows = np.zeros((5, NBYTES), np.uint8)
    with pytest.raises(CorruptDataError, match="c2: "):
        Zstd("zstd").decode_rows(staging, offsets, sizes, rows, labels)


def test_libzstd_is_found_in_numcodecs():
    """Where this fails, every zstd frame is decoded by the slower fallback: say so loudly."""
    assert bytes_to_bytes._libzstd() is not None


# --- reads --------------------------------------------------------------------------------------

def _sharded(path, shape, chunks, shards, crc=False, fill_holes=False):
    data = (np.arange(math.prod(shape), dtype="<u2").reshape(shape) * 7 + 3)
    if fill_holes:  # a chunk of fill values: zarr-python writes no inner chunk for it
        data[tuple(slice(c, 2 * c) for c in chunks)] = 0
    serializer = zarr.codecs.ShardingCodec(
        chunk_shape=chunks, codecs=[zarr.codecs.BytesCodec(), zarr.codecs.ZstdCodec()]
        + ([zarr.codecs.Crc32cCodec()] if crc else []))
    z = zarr.create_array(str(path), shape=shape, chunks=shards, dtype="<u2", serializer=serializer,
                          compressors=None, fill_value=0)
    z[...] = data
    return data


@pytest.fixture
def pooled(monkeypatch):
    """Reads go through the pool's task split (parts of `GROUP_BYTES`), not inline; counts the
    boxes placed, and those placed as tiles in another order than C order."""
    placed = {"boxes": 0, "tiles": 0}

    def counting(out, chunks, extent, out_start, window, tiles=None):
        placed["boxes"] += 1
        placed["tiles"] += tiles is not None
        place_block(out, chunks, extent, out_start, window, tiles)
    monkeypatch.setattr(cpu, "place_block", counting)
    with pooled_reads():
        yield placed


@pytest.mark.parametrize("crc", [False, True])
@pytest.mark.parametrize("shape, chunks, shards", [((64, 48), (8, 8), (32, 16)), ((12, 16, 20), (4, 4, 4), (8, 8, 20))])
def test_morton_ordered_shards_read_whole_by_boxes(tmp_path, monkeypatch, pooled, shape, chunks, shards, crc):
    """zarr-python stores inner chunks in Morton order: a full read still places each part's whole
    chunks by one copy, and equals the source, cut into parts of any size."""
    data = _sharded(tmp_path / "a.zarr", shape, chunks, shards, crc)
    for group_chunks in (3, 8, 1000):
        monkeypatch.setattr(cpu, "GROUP_BYTES", group_chunks * math.prod(chunks) * 2)
        arr = gpuzarr.open(str(tmp_path / "a.zarr"), device=CpuDevice(2))
        np.testing.assert_array_equal(arr[...], data)
    assert pooled["boxes"] > 0 and pooled["tiles"] > 0  # parts cutting Morton order: tiles


def test_a_full_read_decodes_each_part_of_a_shard_in_one_call(tmp_path, monkeypatch, pooled, calls):
    """Parts of whole Morton-ordered shards: rows in the part's (storage) order, so each part's
    frames, back to back in staging, go in one libzstd call, and its box is placed by tiles."""
    data = _sharded(tmp_path / "a.zarr", (64, 64), (8, 8), (32, 32))
    monkeypatch.setattr(cpu, "GROUP_BYTES", 16 * 64 * 2)  # a part: 16 chunks, a quarter of a shard
    np.testing.assert_array_equal(gpuzarr.open(str(tmp_path / "a.zarr"), device=CpuDevice(2))[...], data)
    assert sorted(n // (64 * 2) for _, n in calls) == [16] * 4
    assert pooled["boxes"] == 4 and pooled["tiles"] == 4


def test_a_part_missing_its_last_chunk_is_placed_from_its_run(tmp_path, monkeypatch, pooled):
    """Chunk files of a 4x4 grid read in two parts of 8 (C order); chunk (1, 3), the first
    part's last, is all fill (zarr-python writes no file for it). The other 7 are still a run
    of the part: decoded in the part's order and placed by tiles; the missing one reads as the
    fill value."""
    data = (np.arange(32 * 32, dtype="<u2").reshape(32, 32) * 7 + 3)
    data[8:16, 24:32] = 0
    z = zarr.create_array(str(tmp_path / "a.zarr"), shape=(32, 32), chunks=(8, 8), dtype="<u2",
                          compressors=[zarr.codecs.ZstdCodec()], fill_value=0)
    z[...] = data
    monkeypatch.setattr(cpu, "GROUP_BYTES", 8 * 64 * 2)
    monkeypatch.setattr(CpuDevice, "empty", poisoned_empty)
    np.testing.assert_array_equal(gpuzarr.open(str(tmp_path / "a.zarr"), device=CpuDevice(2))[...], data)
    assert pooled["boxes"] == 2 and pooled["tiles"] == 1


def test_whole_chunks_of_windows_and_batches_are_placed_as_tiles(tmp_path, pooled):
    data = _sharded(tmp_path / "a.zarr", (64, 64), (8, 8), (32, 32), fill_holes=True)
    arr = gpuzarr.open(str(tmp_path / "a.zarr"), device=CpuDevice(2))
    windows = [(slice(3, 45), slice(5, 60)), (slice(8, 40), slice(16, 64)), (slice(0, 64), slice(1, 63))]
    for w in windows:
        np.testing.assert_array_equal(arr[w], data[w])
    assert pooled["tiles"] > 0  # a hole, or Morton order cut by the window
    batch = [(slice(a, a + 24), slice(b, b + 24)) for a, b in ((0, 8), (8, 8), (5, 40), (16, 0))]
    np.testing.assert_array_equal(arr.read_batch(batch), np.stack([data[w] for w in batch]))


def test_reads_equal_without_boxes(tmp_path, monkeypatch, pooled):
    """The same reads with boxes switched off (every chunk placed on its own)."""
    data = _sharded(tmp_path / "a.zarr", (40, 56), (8, 8), (16, 16), fill_holes=True)
    sels = [(slice(None),) * 2, (slice(7, 33), slice(8, 56)), (slice(0, 40, 2), slice(None)), (5, slice(None))]
    got = {}
    for mode in ("boxes", "each"):
        if mode == "each":
            monkeypatch.setattr(cpu, "part_boxes", lambda *args: [])
        arr = gpuzarr.open(str(tmp_path / "a.zarr"), device=CpuDevice(2))
        got[mode] = [arr[s] for s in sels]
    for s, a, b in zip(sels, got["boxes"], got["each"]):
        np.testing.assert_array_equal(a, data[s])
        np.testing.assert_array_equal(b, data[s])


def test_a_read_without_libzstd_equals_the_source_and_counts_every_frame(tmp_path, monkeypatch, pooled):
    data = _sharded(tmp_path / "a.zarr", (32, 32), (8, 8), (16, 16), crc=True)
    monkeypatch.setattr(bytes_to_bytes, "_libzstd", lambda: None)
    monkeypatch.setattr(bytes_to_bytes, "zstd_single_frames", lambda *a: False)  # frame by frame, no group call
    monkeypatch.setattr(host_lib, "zstd_whole_frames", lambda *a: False)  # (the host library's check of the same)
    before = bytes_to_bytes.FALLBACKS["zstd:no-libzstd"]
    np.testing.assert_array_equal(gpuzarr.open(str(tmp_path / "a.zarr"), device=CpuDevice(1))[...], data)
    assert bytes_to_bytes.FALLBACKS["zstd:no-libzstd"] == before + 16


def test_a_corrupt_frame_inside_a_box_is_named(tmp_path, pooled):
    path = tmp_path / "a.zarr"
    _sharded(path, (32, 32), (8, 8), (32, 32))
    shard = path / "c" / "0" / "0"
    blob = bytearray(shard.read_bytes())
    index = np.frombuffer(bytes(blob[-(16 * 16 + 4):-4]), "<u8").reshape(-1, 2)
    start = int(index[5, 0])  # chunk (1, 1); its first block made of the reserved type (RFC 8878 §3.1.1.2)
    fhd = blob[start + 4]
    single = (fhd >> 5) & 1
    blob[start + 6 - single + (0, 1, 2, 4)[fhd & 3] + (single, 2, 4, 8)[fhd >> 6]] |= 0b110
    shard.write_bytes(bytes(blob))
    with pytest.raises(CorruptDataError, match=r"c/0/0.*cannot decode zstd frame"):
        gpuzarr.open(str(path), device=CpuDevice(1))[...]


# --- whole_box ---------------------------------------------------------------------------------

def _plan(sels, shape, chunks, batched=False):
    windows = [normalize(s, shape) for s in sels]
    return make_plan(windows, chunks, batched)


def _morton(plan, extent):
    """The plan renumbered as a 2-D shard of `extent` chunks stores them (Morton order)."""
    def code(y, x):
        return sum(((y >> b) & 1) << (2 * b + 1) | ((x >> b) & 1) << (2 * b) for b in range(8))
    keys = [code(*c) for c in plan.chunks.tolist()]
    return plan.reorder(np.argsort(keys, kind="stable"))


def test_whole_box_in_morton_order_is_the_full_box():
    plan = _morton(_plan([(slice(None),) * 2], (32, 32), (8, 8)), (4, 4))
    assert plan.chunks[:4].tolist() == [[0, 0], [0, 1], [1, 0], [1, 1]]
    box = whole_box(plan, 0, 16, (8, 8), np.ones(16, bool))
    assert (box.extent, box.out_start, box.window, box.tiles) == ((4, 4), (0, 0), None, None)
    # members in C order of the box: row k of the box's chunks is plan chunk members[k]
    assert [plan.chunks[m].tolist() for m in box.members] == [[y, x] for y in range(4) for x in range(4)]


def test_whole_box_of_a_part_with_a_hole_gives_tiles():
    plan = _morton(_plan([(slice(None),) * 2], (32, 32), (8, 8)), (4, 4))
    present = np.ones(16, bool)
    present[5] = False
    box = whole_box(plan, 2, 14, (8, 8), present[2:14])
    picked = [plan.chunks[2 + m].tolist() for m in box.members]
    assert len(picked) == 11 and plan.chunks[5].tolist() not in picked
    assert [list(t) for t in zip(*box.tiles)] == [[y - 0, x - 0] for y, x in picked]  # box corner (0, 0)
    assert picked == sorted(picked)


def test_whole_box_of_an_unaligned_window_and_of_a_batch():
    plan = _plan([(slice(3, 30), slice(8, 32))], (32, 32), (8, 8))
    box = whole_box(plan, 0, plan.n_chunks, (8, 8), np.ones(plan.n_chunks, bool))
    assert (box.extent, box.out_start, box.tiles) == ((2, 3), (5, 0), None)  # chunk rows 1-2, cols 1-3
    # a batch: the whole chunks of the window of the part's first whole chunk (here window 1's
    # chunks (0, 2) and (0, 3)); window 0's are placed one by one
    batched = _plan([(slice(8, 24), slice(0, 16)), (slice(0, 8), slice(16, 32))], (32, 32), (8, 8), batched=True)
    box = whole_box(batched, 0, batched.n_chunks, (8, 8), np.ones(batched.n_chunks, bool))
    assert (box.window, box.extent, box.out_start, box.tiles) == (1, (1, 2), (0, 0), None)
    assert batched.chunks[box.members].tolist() == [[0, 2], [0, 3]]
    # windows overlapping: a chunk placed in both (whole in one) is placed one by one
    overlapping = _plan([(slice(8, 24), slice(0, 16)), (slice(2, 18), slice(0, 16))], (32, 32), (8, 8), batched=True)
    assert whole_box(overlapping, 0, overlapping.n_chunks, (8, 8), np.ones(overlapping.n_chunks, bool)) is None
    assert whole_box(_plan([(slice(0, 32, 2), slice(None))], (32, 32), (8, 8)), 0, 16, (8, 8),
                     np.ones(16, bool)) is None  # a step: no chunk is placed whole


def test_place_block_with_tiles_places_any_subset_in_any_order():
    out = np.zeros((2, 12, 12), np.int32)
    chunks = np.arange(4 * 9).reshape(4, 3, 3)
    tiles = (np.array([1, 0, 2, 1]), np.array([2, 0, 1, 0]))
    place_block(out, chunks, (3, 3), (2, 1), 1, tiles)
    want = np.zeros_like(out)
    for k, (a, b) in enumerate(zip(*tiles)):
        want[1, 2 + 3 * a:5 + 3 * a, 1 + 3 * b:4 + 3 * b] = chunks[k]
    np.testing.assert_array_equal(out, want)


def test_part_boxes_of_c_ordered_chunks_are_plan_block_pieces():
    """Chunks in C order (unsharded arrays): a part cut across rows of the grid is the boxes of
    Plan.block_pieces; the same part in Morton order is one box of tiles."""
    plan = _plan([(slice(None),) * 2], (32, 32), (8, 8))  # a 4 x 4 grid; the part: chunks 2..10
    boxes = part_boxes(plan, 2, 11, (8, 8), np.ones(9, bool))
    assert [(list(b.members), b.extent, b.out_start, b.tiles) for b in boxes] == [
        ([0, 1], (1, 2), (0, 16), None), ([2, 3, 4, 5], (1, 4), (8, 0), None), ([6, 7, 8], (1, 3), (16, 0), None)]
    [box] = part_boxes(_morton(plan, (4, 4)), 2, 11, (8, 8), np.ones(9, bool))
    assert box.tiles is not None and box.members.size == 9


def _frame_ends_by_libzstd(frame: bytes) -> int:
    """libzstd's own ZSTD_findFrameCompressedSize: the reference for where a frame ends."""
    import ctypes

    lib = ctypes.CDLL(numcodecs.zstd.__file__)
    lib.ZSTD_findFrameCompressedSize.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
    lib.ZSTD_findFrameCompressedSize.restype = ctypes.c_size_t
    return lib.ZSTD_findFrameCompressedSize(frame, len(frame))


@pytest.mark.parametrize("kind", ["text", "zeros", "random", "mixed"])
@pytest.mark.parametrize("checksum", [False, True])
@pytest.mark.parametrize("size", [100, 40_000, 300_000, 600_000])
def test_single_frames_are_told_as_libzstd_ends_them(kind, checksum, size):
    """zstd_single_frames walks blocks (raw, RLE, compressed; one or many; a content checksum
    or none) to exactly where libzstd says each frame ends; a second frame, trailing bytes or a
    frame cut short are not single frames."""
    rng = np.random.default_rng(size)
    raw = {"text": (b"gpuzarr reads zarr " * size)[:size], "zeros": bytes(size),
           "random": rng.integers(0, 256, size, dtype=np.uint8).tobytes(),
           "mixed": (bytes(size // 2) + rng.integers(0, 256, size, dtype=np.uint8).tobytes())[:size]}[kind]
    frame = zstandard.ZstdCompressor(level=1, write_checksum=checksum).compress(raw)
    assert _frame_ends_by_libzstd(frame) == len(frame)
    for chunk, single in ((frame, True), (frame + frame, False), (frame + b"x", False), (frame[:-1], False)):
        staging, offsets, sizes, _ = _batch([_frame(_raw(0)), chunk])
        assert bytes_to_bytes.zstd_single_frames(staging, offsets, sizes) is single


def test_chunks_of_ranges_with_gaps_land_back_to_back_and_decode_in_one_call(tmp_path, monkeypatch, pooled, calls):
    """Every other chunk column of a shard: coalescing reads the gaps between them, into a
    scratch buffer where the read is a CPU task's part (`compact`), so the chunks lie back to
    back in staging and each part is one libzstd call. Otherwise the ranges land whole."""
    from gpuzarr import fetch as fetch_module
    from gpuzarr import pipeline

    data = _sharded(tmp_path / "a.zarr", (64, 64), (8, 8), (64, 64))
    arr = gpuzarr.open(str(tmp_path / "a.zarr"), device=CpuDevice(2))
    coords = np.array([(y, x) for y in range(8) for x in range(0, 8, 2)])  # 32 chunks, gaps between
    loc = arr._reader.locator.locate(coords)
    order = loc.storage_order()
    loc = loc.take(order) if order is not None else loc
    rows = np.arange(coords.shape[0])
    compact = fetch_module.fetch(arr.store, loc, rows, compact=True)
    assert (compact.offsets[1:] == compact.offsets[:-1] + compact.sizes[:-1]).all()
    assert compact.staging.nbytes == compact.sizes.sum()
    whole = fetch_module.fetch(arr.store, loc, rows)
    assert whole.staging.nbytes > compact.staging.nbytes  # the gaps
    assert [bytes(compact.chunk(i)) for i in rows] == [bytes(whole.chunk(i)) for i in rows]
    monkeypatch.setattr(cpu, "GROUP_BYTES", 16 * 64 * 2)  # parts of 16 chunks
    monkeypatch.setattr(pipeline, "REUSED_STAGING", 0)  # read by the decoding tasks, as large reads are
    monkeypatch.setattr(cpu._PartReads, "make", lambda *a: None)  # through fetch, as parts the library gives back
    windows = [(slice(y, y + 8), slice(x, x + 8)) for y in range(0, 64, 8) for x in range(0, 64, 16)]
    with mock.patch.object(CpuDevice, "reads_in_tasks", True):  # (pooled stages local reads)
        np.testing.assert_array_equal(arr.read_batch(windows), np.stack([data[w] for w in windows]))
    assert sorted(n // (64 * 2) for _, n in calls) == [16, 16]


def _numpy_verdict(staging, offsets, sizes, nbytes) -> bool:
    """What decode_rows' NumPy checks conclude: every frame states nbytes and is one whole frame."""
    try:
        sized = check_zstd_frames(staging, offsets, sizes, nbytes, str)
    except CorruptDataError:
        return False
    return bool(sized.all()) and bytes_to_bytes.zstd_single_frames(staging, offsets, sizes)


@pytest.mark.skipif(not host_lib.built(), reason="the host library is not built here (no C++ compiler)")
@settings(max_examples=500, deadline=None)
@given(data=st.data())
def test_the_host_check_of_whole_frames_agrees_with_numpy(data):
    """gpz_zstd_whole_frames (one C call a part) says yes exactly where check_zstd_frames and
    zstd_single_frames both pass: frames of libzstd with and without content size, checksum or
    dictionary id, several blocks, a second frame or bytes after one, cut short, and any byte
    of them changed."""
    n = data.draw(st.integers(1, 4))
    nbytes = data.draw(st.sampled_from([1, 255, 256, 300, 4096, 200_000]))
    frames = []
    for i in range(n):
        raw = _raw(i, nbytes + nbytes % 2)[:nbytes]
        frame = _frame(raw, write_content_size=data.draw(st.booleans()) or data.draw(st.booleans()),
                       write_checksum=data.draw(st.booleans()), write_dict_id=data.draw(st.booleans()))
        tweak = data.draw(st.sampled_from(["none"] * 6 + ["second", "tail", "cut", "byte"]))
        if tweak == "second":
            frame += frame
        elif tweak == "tail":
            frame += data.draw(st.binary(min_size=1, max_size=8))
        elif tweak == "cut":
            frame = frame[:data.draw(st.integers(0, len(frame) - 1))]
        elif tweak == "byte":
            at = data.draw(st.integers(0, min(len(frame), 40) - 1))
            frame = frame[:at] + bytes([data.draw(st.integers(0, 255))]) + frame[at + 1:]
        frames.append(frame)
    staging, offsets, sizes, _ = _batch([b"\x00" * 7] + frames + [b"\x00" * 9])  # neighbours must not leak in
    offsets, sizes = offsets[1:-1], sizes[1:-1]
    want = _numpy_verdict(staging, offsets, sizes, nbytes)
    assert host_lib.zstd_whole_frames(staging, offsets, sizes, nbytes, bytes_to_bytes._ZSTD_BLOCK_STEPS) == want


@pytest.mark.skipif(not host_lib.built(), reason="the host library is not built here (no C++ compiler)")
def test_frames_of_many_blocks_are_left_to_numpy_past_the_step_bound():
    raw = _raw(1, 600_000)  # > 128 KiB blocks: 5 of them
    frames = [_frame(raw)] * 3
    staging, offsets, sizes, _ = _batch(frames)
    assert host_lib.zstd_whole_frames(staging, offsets, sizes, 600_000, 64)
    assert not host_lib.zstd_whole_frames(staging, offsets, sizes, 600_000, 4)  # more blocks than steps: not whole
    assert not host_lib.zstd_whole_frames(staging, offsets, sizes, 600_001, 64)  # another stated size


_DAMAGE = {  # a chunk's frame, damaged as a disk or a writer might: what zarr-python makes of it
    "whole": (lambda f: f, "data"),
    "checksum cut by 1": (lambda f: f[:-1], "error"),
    "checksum cut by 3": (lambda f: f[:-3], "error"),
    "a zero byte after": (lambda f: f + b"\0", "error"),
    "garbage after": (lambda f: f + b"\x12\x34\x56", "error"),
    "the frame twice": (lambda f: f + f, "error"),
}


@pytest.mark.parametrize("content_size", [True, False])
@pytest.mark.parametrize("damage", list(_DAMAGE))
def test_a_damaged_frame_is_refused_by_both_devices_where_zarr_python_refuses_it(tmp_path, damage, content_size):
    """A frame cut inside its checksum decoded whole through python-zstandard's stream reader
    (it ends quietly with its input), and the GPU layout left bytes or a frame after a chunk's
    frame to nvCOMP (the stand-in decoded the first frame): each is a CorruptDataError on both
    devices now, as zarr-python refuses it (a helper's differential hunt)."""
    from gpu_standin import StandinEngine

    from gpuzarr.devices.gpu import GpuDevice

    mutate, want = _DAMAGE[damage]
    data = np.arange(1024, dtype="<i4")
    z = zarr.create_array(str(tmp_path / "a"), shape=data.shape, chunks=data.shape, dtype=data.dtype,
                          compressors=zarr.codecs.ZstdCodec(level=1, checksum=True))
    z[...] = data
    key = tmp_path / "a" / "c" / "0"
    frame = zstandard.ZstdCompressor(level=1, write_checksum=True, write_content_size=content_size).compress(
        data.tobytes())
    key.write_bytes(mutate(frame))
    refused = False
    try:
        np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "a"))[...], data)
    except Exception:  # zarr-python's errors are RuntimeError, ValueError: refused, whatever the kind
        refused = True
    assert refused == (want == "error")
    for device in ("cpu", GpuDevice(StandinEngine())):
        arr = gpuzarr.open(str(tmp_path / "a"), device=device)
        if want == "error":
            with pytest.raises(CorruptDataError, match="c/0: "):
                arr[...]
        else:
            np.testing.assert_array_equal(arr[...], data)


def test_frames_without_a_content_size_back_to_back_decode_on_both_devices(tmp_path):
    """Two frames of no stated size make one chunk for the stream decoder (and numcodecs); the
    GPU layout hands such a chunk to the host decoder, said in the read's report."""
    from gpu_standin import StandinEngine

    from gpuzarr.devices.gpu import GpuDevice

    data = np.arange(1024, dtype="<i4")
    z = zarr.create_array(str(tmp_path / "a"), shape=data.shape, chunks=data.shape, dtype=data.dtype,
                          compressors=zarr.codecs.ZstdCodec(level=1))
    z[...] = data
    raw = data.tobytes()
    plain = zstandard.ZstdCompressor(level=1, write_content_size=False)
    (tmp_path / "a" / "c" / "0").write_bytes(plain.compress(raw[:1000]) + plain.compress(raw[1000:]))
    np.testing.assert_array_equal(gpuzarr.open(str(tmp_path / "a"), device="cpu")[...], data)
    report = gpuzarr.ReadReport()
    got = gpuzarr.open(str(tmp_path / "a"), device=GpuDevice(StandinEngine())).read(report=report)
    np.testing.assert_array_equal(got, data)
    assert report.cpu_fallback == ["c/0"]


def _streamed(data: bytes, level: int) -> bytes:
    """A frame as a streaming writer makes it: no content size, a window descriptor."""
    c = zstandard.ZstdCompressor(level=level).compressobj()
    return c.compress(data) + c.flush()


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_write_bounds_hold_every_frame_libzstd_writes(data):
    """zstd_write_bounds (what the GPU path lets nvCOMP write, which writes a frame's whole
    output whatever room it is given) is at least what each frame decodes to, and no frame
    libzstd writes is refused for it (only for a content checksum, which nvCOMP ignores). The
    host library's bounds are the same."""
    nbytes = data.draw(st.sampled_from([1, 255, 256, 300, 4096, 131_072, 131_073, 200_000, 600_000]))
    kind = data.draw(st.sampled_from(["random", "zeros", "mixed"]))
    raw = {"random": _raw(3, nbytes + 1)[:nbytes], "zeros": bytes(nbytes),
           "mixed": (_raw(4, nbytes // 2 + 2)[:nbytes // 2] + bytes(nbytes))[:nbytes]}[kind]
    level = data.draw(st.sampled_from([-5, 1, 3, 19]))
    checksum = data.draw(st.booleans())
    frames = [_streamed(raw, level) if data.draw(st.booleans()) else _frame(raw, level=level, write_checksum=checksum)
              for _ in range(data.draw(st.integers(1, 3)))]
    staging, offsets, sizes, _ = _batch([b"\x00" * 5] + frames + [b"\x00" * 3])
    offsets, sizes = offsets[1:-1], sizes[1:-1]
    bounds = bytes_to_bytes.zstd_write_bounds(staging, offsets, sizes)
    assert (nbytes <= bounds).all(), bounds
    assert [bytes_to_bytes.zstd_frame_walk(f) for f in frames] == [(len(f), int(b)) for f, b in zip(frames, bounds)]
    given = gpu_layout._zstd_bounds(staging, offsets, sizes, bounds.copy()) >= 0
    checksummed = np.array([bool(f[4] & 4) for f in frames])
    np.testing.assert_array_equal(given, ~checksummed)
    if host_lib.built():
        got = np.full(offsets.size, -7, np.int64)
        if bytes_to_bytes.zstd_whole_frames(staging, offsets, sizes, nbytes, got):
            np.testing.assert_array_equal(got, bounds)


def test_write_bounds_refuse_frames_that_cannot_be_walked():
    frame = _frame(_raw(1, 600_000))
    cut, reserved = frame[:len(frame) // 2], bytearray(frame)
    at = 5 + 4  # the first block header, after magic, descriptor and a 4-byte content size (one segment)
    assert frame[4] == 0b1010_0000 and _zstd_content_size(memoryview(frame)) == 600_000
    reserved[at] |= 0b110  # block type 3, reserved
    many = _frame(bytes(64 * 200_000), level=1)  # zeros: RLE blocks, many more than the walk takes
    staging, offsets, sizes, _ = _batch([frame, cut, bytes(reserved), b"junk!!", many])
    bounds = bytes_to_bytes.zstd_write_bounds(staging, offsets, sizes)
    assert bounds[0] >= 600_000 and (bounds[1:4] == -1).all()
    assert bounds[4] == (-1 if 64 * 200_000 > bytes_to_bytes._ZSTD_BLOCK_STEPS * bytes_to_bytes.ZSTD_BLOCK_MAX
                         else 64 * 200_000)
