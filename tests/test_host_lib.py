"""The host library (gpuzarr.host_lib) against the Python loops it replaces (run by hiding the
library) and against zarr-python, on arrays zarr-python wrote: placement of windows of any step,
batches, absent chunks (the fill value beside scattered pieces), dtypes of 1 to 16 bytes in either
byte order, transposed or not; blosc, LZ4 and zstd frames decoded in one call, a bad frame named;
chunk files read in three calls. The scatter's own record semantics: tests/test_kernels_cpu.py."""

from __future__ import annotations

import json
import logging
import os
from unittest import mock

import crc32c
import numcodecs
import numpy as np
import pytest
import zarr
from checks import pooled_reads
from fsspec.implementations.local import LocalFileSystem
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gpuzarr
from gpuzarr import host_lib
from gpuzarr import store as store_module
from gpuzarr.codecs import bytes_to_bytes
from gpuzarr.codecs.bytes_to_bytes import Blosc, Lz4, Zstd
from gpuzarr.devices import cpu as cpu_device
from gpuzarr.devices.kernels import (SCATTER_REC_COUNT, SCATTER_REC_DST, SCATTER_REC_DSTRIDE, SCATTER_REC_LEN,
                                     SCATTER_REC_SHAPE, SCATTER_REC_START, SCATTER_REC_STEP)
from gpuzarr.errors import CorruptDataError, StoreError
from gpuzarr.store import LocalStore

pytestmark = pytest.mark.skipif(not host_lib.built(), reason="gpuzarr._host_lib is not built here "
                                "(tests/test_kernels_cpu.py fails where a C++ compiler is)")

DTYPES = ["uint8", "<i2", "<f4", "<u8", "<c16"]


@pytest.fixture
def grouped():
    """No batch decoded chunk by chunk on the calling thread (CpuDevice.inline): every one
    staged, in parts, whose pieces _place_rows places, as a remote read's are."""
    with pooled_reads():
        yield


@pytest.fixture
def numpy_only(monkeypatch):
    """The library hidden: every part placed through NumPy, as where it was not built."""
    monkeypatch.setattr(host_lib, "_lib", [None])


def _array(root, dtype: str, shape, chunks, shards, sparse: bool, seed: int, endian: str = "little",
           order: tuple | None = None):
    """`order`: a transpose codec's (the chunks stored with their axes so)."""
    rng = np.random.default_rng(seed)
    data = (rng.integers(0, 250, shape) * 1.5).astype(dtype)
    arr = zarr.create_array(str(root), shape=shape, chunks=chunks, shards=shards, dtype=dtype, fill_value=7,
                            compressors=None if seed % 2 else zarr.codecs.ZstdCodec(level=1),
                            serializer=zarr.codecs.BytesCodec(endian=endian),
                            filters=[zarr.codecs.TransposeCodec(order=order)] if order else None)
    if sparse:  # a band of chunks left unwritten: absent, read as the fill value
        arr[:shape[0] // 2] = data[:shape[0] // 2]
        data[shape[0] // 2:] = 7
    else:
        arr[...] = data
    return data


def _selection(draw, shape):
    sel = []
    for n in shape:
        a = draw(st.integers(0, n - 1))
        b = draw(st.integers(a + 1, n))
        sel.append(slice(a, b, draw(st.sampled_from([1, 1, 2, 3]))))
    return tuple(sel)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_host_and_numpy_placement_agree_with_zarr(tmp_path_factory, data):
    dtype = data.draw(st.sampled_from(DTYPES))
    ndim = data.draw(st.integers(1, 3))
    shape = tuple(data.draw(st.integers(8, 40)) for _ in range(ndim))
    chunks = tuple(data.draw(st.integers(2, 9)) for _ in range(ndim))
    shards = tuple(c * data.draw(st.integers(1, 3)) for c in chunks) if data.draw(st.booleans()) else None
    root = tmp_path_factory.mktemp("a") / "a.zarr"
    order = data.draw(st.none() | st.permutations(range(ndim)).map(tuple))
    truth = _array(root, dtype, shape, chunks, shards, data.draw(st.booleans()), data.draw(st.integers(0, 9)),
                   data.draw(st.sampled_from(["little", "big"])), order)
    size = tuple(data.draw(st.integers(1, n)) for n in shape)
    windows = []
    for _ in range(data.draw(st.integers(2, 12))):
        starts = [data.draw(st.integers(0, n - w)) for n, w in zip(shape, size)]
        windows.append(tuple(slice(a, a + w) for a, w in zip(starts, size)))
    strided = _selection(data.draw, shape)
    arr = gpuzarr.open(str(root), device="cpu", settings=gpuzarr.Settings(threads=data.draw(st.sampled_from([1, 2]))))
    want_batch = np.stack([truth[w] for w in windows])
    with pooled_reads():  # parts, not chunk by chunk (see `grouped`)
        got_batch, got_strided = arr.read_batch(windows), arr[strided]
        with mock.patch.object(cpu_device, "BLOCK_CHUNK_MAX", 0):  # each chunk decoded alone, placed at once
            each_batch, each_strided = arr.read_batch(windows), arr[strided]
        with mock.patch.object(host_lib, "_lib", [None]):  # hidden: NumPy places every piece
            np_batch, np_strided = arr.read_batch(windows), arr[strided]
    # batches of a few chunks: a read the tasks fetch themselves, each part in one call (_PartReads)
    parts = gpuzarr.open(str(root), device="cpu", settings=gpuzarr.Settings(threads=2, batch_bytes=256))
    np.testing.assert_array_equal(parts.read_batch(windows), want_batch)
    np.testing.assert_array_equal(parts[strided], truth[strided])
    for got in (got_batch, each_batch, np_batch):
        np.testing.assert_array_equal(got, want_batch)
    for got in (got_strided, each_strided, np_strided):
        np.testing.assert_array_equal(got, truth[strided])
    assert got_batch.tobytes() == np_batch.tobytes() == each_batch.tobytes()  # bit for bit (NaN payloads, -0.0)


def test_a_batch_of_pieces_goes_through_the_host_lib(tmp_path, grouped, monkeypatch):
    """Windows cutting chunks, present and absent: their pieces are placed, and the absent ones'
    filled, by the library, in one call each per part."""
    truth = _array(tmp_path / "a.zarr", "<u2", (64, 64), (8, 8), (32, 32), sparse=True, seed=1)
    arr = gpuzarr.open(str(tmp_path / "a.zarr"), device="cpu", settings=gpuzarr.Settings(threads=2))
    windows = [(slice(a, a + 13), slice(b, b + 11)) for a, b in [(1, 2), (20, 30), (40, 3), (50, 50), (5, 45)]]
    calls: dict = {"scatter": [], "fill": []}
    for name in calls:
        real = getattr(host_lib, name)
        monkeypatch.setattr(host_lib, name, lambda *a, _real=real, _name=name, **k: (
            calls[_name].append(len(a[2] if _name == "scatter" else a[1])), _real(*a, **k)))
    got = arr.read_batch(windows)
    np.testing.assert_array_equal(got, np.stack([truth[w] for w in windows]))
    assert sum(calls["scatter"]) > len(calls["scatter"]) > 0, "the pieces were not placed through the host scatter"
    assert sum(calls["fill"]) > len(calls["fill"]) > 0, "the absent chunks were not filled through the host fill"


def test_without_the_library_numpy_places_and_it_is_counted(tmp_path, grouped, numpy_only):
    truth = _array(tmp_path / "a.zarr", "<f4", (40, 40), (6, 6), None, sparse=True, seed=2)
    arr = gpuzarr.open(str(tmp_path / "a.zarr"), device="cpu", settings=gpuzarr.Settings(threads=2))
    before = host_lib.FALLBACKS["scatter"]
    windows = [(slice(a, a + 9), slice(a + 1, a + 10)) for a in range(0, 30, 3)]
    np.testing.assert_array_equal(arr.read_batch(windows), np.stack([truth[w] for w in windows]))
    assert host_lib.FALLBACKS["scatter"] > before


def test_a_missing_library_is_logged_once(monkeypatch, caplog):
    monkeypatch.setattr(host_lib, "_NAME", "_no_such_library")
    monkeypatch.setattr(host_lib, "_lib", [])
    with caplog.at_level(logging.WARNING, logger="gpuzarr"):
        assert not host_lib.built()
        assert not host_lib.built()
    assert [r.getMessage() for r in caplog.records].count(caplog.records[0].getMessage()) == 1
    assert "_no_such_library was not built" in caplog.records[0].getMessage()


def test_only_chunks_of_the_output_dtype_or_its_byte_swap_are_scattered():
    """A cast, another array->array codec than transposes or a struct is NumPy's: the library
    copies bytes, or reverses units, in any axis order."""
    rows = np.zeros((2, 8), np.uint8)

    class View:
        plain, shape, stored_order = True, (2, 2), None

        def __init__(self, dtype):
            self.dtype = np.dtype(dtype)

    out = np.zeros((4, 4), "<u2")
    assert cpu_device.host_swap(View("<u2"), out) == 0
    assert cpu_device.host_swap(View(">u2"), out) == 2
    assert cpu_device.host_swap(View(">c8"), np.zeros(4, "<c8")) == 4
    assert cpu_device.host_swap(View(">f8"), np.zeros(4, "<f8")) == 8
    assert cpu_device.host_swap(View("<i2"), out) is None  # a cast
    assert cpu_device.host_swap(View("<u2"), out, rows) == 0
    assert cpu_device.host_swap(View("<u2"), out, rows[:, ::2]) is None  # rows not contiguous
    assert cpu_device.host_swap(View("<u2"), [[0] * 4] * 4) is None  # not a NumPy output
    not_plain = View("<u2")
    not_plain.plain = False  # another array->array codec than transposes
    assert cpu_device.host_swap(not_plain, out) is None
    not_plain.stored_order = (1, 0)  # transposes only
    assert cpu_device.host_swap(not_plain, out) == 0


def _frames(codec, n: int = 9, nbytes: int = 4096, gap: int = 0):
    """n frames of `codec` in one staging buffer, `gap` bytes between them."""
    rng = np.random.default_rng(4)
    raws = [(rng.integers(0, 50, nbytes // 2).astype("<u2") + i).tobytes() for i in range(n)]
    frames = [codec.encode(r) for r in raws]
    staging = np.frombuffer((b"\0" * gap).join(frames), np.uint8).copy()
    sizes = np.array([len(f) for f in frames], np.int64)
    return staging, np.cumsum(sizes + gap) - sizes - gap, sizes, raws


CODECS = {"blosc": (lambda: numcodecs.Blosc("lz4", shuffle=numcodecs.Blosc.SHUFFLE, blocksize=1024),
                    lambda: Blosc("blosc"), lambda: bytes_to_bytes._blosc_ctx()),
          "lz4": (numcodecs.LZ4, lambda: Lz4("lz4"), lambda: bytes_to_bytes._lz4_safe()),
          "zstd": (lambda: numcodecs.Zstd(checksum=True), lambda: Zstd("zstd"), lambda: bytes_to_bytes._thread_dctx())}


@pytest.mark.parametrize("name", list(CODECS))
def test_frames_decoded_in_one_call_equal_the_python_loop(name):
    """Every frame into its row, in C and in Python alike; a frame its decoder refuses is named.
    zstd frames with gaps between them: no run decodes them in one libzstd call."""
    codec, ours, decoder = (make() for make in CODECS[name])
    if decoder is None:
        pytest.skip(f"this numcodecs build exports no {name} decoder: no loop to run in C")
    staging, offsets, sizes, raws = _frames(codec, gap=1 if name == "zstd" else 0)
    labels = [f"c{i}" for i in range(len(raws))]
    calls = []
    real = getattr(host_lib, f"each_{name}")
    with mock.patch.object(host_lib, f"each_{name}", lambda *a: (calls.append(1), real(*a))[1]):
        in_c = np.zeros((len(raws), 4096), np.uint8)
        ours.decode_rows(staging, offsets, sizes, in_c, labels)
        with mock.patch.object(host_lib, "_lib", [None]):
            in_python = np.zeros_like(in_c)
            ours.decode_rows(staging, offsets, sizes, in_python, labels)
    assert calls == [1]
    assert [r.tobytes() for r in in_c] == [r.tobytes() for r in in_python] == raws
    skip = {"blosc": int.from_bytes(staging[offsets[3] + 16:offsets[3] + 20].tobytes(), "little"), "lz4": 4,
            "zstd": int(sizes[3]) // 2}[name]
    at = int(offsets[3]) + skip
    staging[at:at + 4] = 0xFF  # blosc: the first stream's size made huge; lz4: a bogus token; zstd: its checksum fails
    messages = []
    for lib in (host_lib._lib, [None]):
        with mock.patch.object(host_lib, "_lib", lib), pytest.raises(CorruptDataError) as err:
            ours.decode_rows(staging, offsets, sizes, np.zeros_like(in_c), labels)
        messages.append(str(err.value))
    assert messages[0] == messages[1] and messages[0].startswith("c3:")


@pytest.mark.parametrize("name", list(CODECS))
def test_frames_decoded_and_placed_in_one_call(name):
    """host_lib.decode_scatter: each frame decoded, then placed by its records (none, one or
    two here), in one call; the first frame that fails is returned, nothing placed from it on."""
    codec, ours, decoder = (make() for make in CODECS[name])
    if decoder is None:
        pytest.skip(f"this numcodecs build exports no {name} decoder: no loop to run in C")
    staging, offsets, sizes, raws = _frames(codec, n=6)
    labels = [f"c{i}" for i in range(len(raws))]
    out = np.zeros((8, 2048), "<u2")
    # chunk i (2048 u2) to row 7 - i; chunk 1 nowhere; chunk 4 also its second half to row 0's first half
    places = sorted([(i, 0, 2048, 7 - i) for i in (0, 2, 3, 4, 5)] + [(4, 1024, 1024, 0)])  # by chunk
    records = np.zeros((len(places), SCATTER_REC_LEN), np.int64)
    for r, (_, start, count, row) in enumerate(places):
        records[r, [SCATTER_REC_SHAPE, SCATTER_REC_START, SCATTER_REC_STEP, SCATTER_REC_COUNT, SCATTER_REC_DSTRIDE]] = \
            2048, start, 1, count, 2
        records[r, SCATTER_REC_DST] = row * out.strides[0]
    rec_lo = np.searchsorted([p[0] for p in places], np.arange(len(raws) + 1))
    decoder, src, src_sizes = ours.direct(staging, offsets, sizes, 4096, labels)
    assert host_lib.decode_scatter(decoder, src, src_sizes, np.empty(4096, np.uint8), out, records, rec_lo, 1, 2,
                                   0) == (-1, 0)
    chunks = [np.frombuffer(r, "<u2") for r in raws]
    want = np.zeros_like(out)
    for i, start, count, row in places:
        want[row, :count] = chunks[i][start:start + count]
    np.testing.assert_array_equal(out, want)
    at = int(offsets[3]) + {"blosc": int.from_bytes(staging[offsets[3] + 16:offsets[3] + 20].tobytes(), "little"),
                            "lz4": 4, "zstd": int(sizes[3]) - 4}[name]
    staging[at:at + 4] = 0xFF  # blosc: a stream's size made huge; lz4: a bogus token; zstd: its checksum
    out[:] = 0
    decoder, src, src_sizes = ours.direct(staging, offsets, sizes, 4096, labels)
    failed, got = host_lib.decode_scatter(decoder, src, src_sizes, np.empty(4096, np.uint8), out, records, rec_lo, 1,
                                          2, 0)
    assert failed == 3 and got != 4096
    want[[4, 3, 2, 0]] = 0  # chunks 3, 4 and 5 not placed
    np.testing.assert_array_equal(out, want)


@pytest.fixture
def no_block_calls():
    """libzstd's table as a build without its buffer-less calls has it (begin NULL)."""
    api = bytes_to_bytes._libzstd()
    if api is None:
        pytest.skip("this numcodecs build exports no libzstd")
    begin, api.calls[1] = api.calls[1], None
    yield
    api.calls[1] = begin


def test_without_libzstd_s_block_calls_every_frame_is_decoded_whole(no_block_calls):
    """A libzstd that exports no buffer-less calls (begin NULL in the table): windows still read
    right, their frames decoded whole, so a frame cut short in its last block fails."""
    rows, width = 256, 1024
    chunk = (np.arange(rows * width) % 1009 * 3).astype("<u2").reshape(rows, width)
    frame = np.frombuffer(numcodecs.Zstd().encode(chunk.tobytes()), np.uint8).copy()
    out = np.zeros((40, width), "<u2")
    record = np.zeros((1, SCATTER_REC_LEN), np.int64)
    record[0, [SCATTER_REC_SHAPE, SCATTER_REC_SHAPE + 1]] = rows, width
    record[0, [SCATTER_REC_STEP, SCATTER_REC_STEP + 1]] = 1
    record[0, [SCATTER_REC_COUNT, SCATTER_REC_COUNT + 1]] = 40, width
    record[0, [SCATTER_REC_DSTRIDE, SCATTER_REC_DSTRIDE + 1]] = out.strides
    for cut, failed in ((0, -1), (3, 0)):
        got = host_lib.decode_scatter(Zstd.decoder(chunk.nbytes), np.array([frame.ctypes.data]),
                                      np.array([frame.size - cut]), np.empty(chunk.nbytes, np.uint8), out, record,
                                      np.array([0, 1]), 2, 2, 0)
        assert got[0] == failed
    np.testing.assert_array_equal(out, chunk[:40])


@pytest.mark.parametrize("checksum", [False, True])
def test_a_zstd_frame_is_decoded_only_as_far_as_its_records_read(checksum):
    """A zstd chunk of several blocks (at most 128 KiB each) whose records read only its first
    rows is decoded block by block up to them (gpz_zstd_prefix): a frame cut short in its last
    block still places those rows, while records that read its last byte need the whole frame
    and fail. A frame with a content checksum is always decoded whole, its checksum checked."""
    if bytes_to_bytes._thread_dctx() is None:
        pytest.skip("this numcodecs build exports no libzstd: no zstd decoder to call from C")
    rows, width = 256, 1024  # 512 KiB of u2: 4 blocks
    chunk = (np.arange(rows * width) % 1009 * 3).astype("<u2").reshape(rows, width)
    frame = np.frombuffer(numcodecs.Zstd(checksum=checksum).encode(chunk.tobytes()), np.uint8).copy()
    nbytes = chunk.nbytes

    def place(first_rows: int, cut: int) -> tuple[int, np.ndarray]:
        out = np.zeros((first_rows, width), "<u2")
        record = np.zeros((1, SCATTER_REC_LEN), np.int64)
        record[0, [SCATTER_REC_SHAPE, SCATTER_REC_SHAPE + 1]] = rows, width
        record[0, [SCATTER_REC_STEP, SCATTER_REC_STEP + 1]] = 1
        record[0, [SCATTER_REC_COUNT, SCATTER_REC_COUNT + 1]] = first_rows, width
        record[0, [SCATTER_REC_DSTRIDE, SCATTER_REC_DSTRIDE + 1]] = out.strides
        decoder = Zstd.decoder(nbytes)
        src, size = np.array([frame.ctypes.data]), np.array([frame.size - cut])
        failed, _ = host_lib.decode_scatter(decoder, src, size, np.empty(nbytes, np.uint8), out, record,
                                            np.array([0, 1]), 2, 2, 0)
        return failed, out

    for first_rows in (1, 40, rows):
        failed, out = place(first_rows, 0)
        assert failed == -1
        np.testing.assert_array_equal(out, chunk[:first_rows])
    failed, out = place(40, 3)  # the last block cut short: not decoded for the first 40 rows
    assert failed == (0 if checksum else -1)
    if not checksum:
        np.testing.assert_array_equal(out, chunk[:40])
    assert place(rows, 3)[0] == 0


def test_chunk_files_not_there_read_as_the_fill_value_in_the_call(tmp_path, monkeypatch):
    """Warm v2 chunk files read by the host library's part calls: files not there (never
    written) and a directory where a chunk would be are the fill value, each missing key
    reported as the Python path reports it."""
    data = np.random.default_rng(6).integers(0, 3000, (96, 80)).astype("<u2")
    path = str(tmp_path / "a.zarr")
    z = zarr.create_array(path, shape=data.shape, chunks=(16, 16), dtype="<u2", zarr_format=2, fill_value=4,
                          compressors=numcodecs.Blosc("zstd"))
    z[:48] = data[:48]
    data[48:] = 4
    os.mkdir(os.path.join(path, "4.2"))  # a directory where chunk 4.2 would be
    codes = []
    real = host_lib.read_decode_scatter
    monkeypatch.setattr(host_lib, "read_decode_scatter", lambda *a: (lambda r: codes.append(r[0]) or r)(real(*a)))
    arr = gpuzarr.open(path, device="cpu", settings=gpuzarr.Settings(threads=2, batch_bytes=2048))
    arr[...]
    for read in range(2):
        report = gpuzarr.ReadReport()
        np.testing.assert_array_equal(arr.read(report=report), data)
        assert sorted(report.missing_keys) == sorted(f"{y}.{x}" for y in range(3, 6) for x in range(5))
        window = (slice(30, 70), slice(7, 61))
        np.testing.assert_array_equal(arr[window], data[window])
        np.testing.assert_array_equal(arr.read_batch([window, window]), np.stack([data[window]] * 2))
    assert codes and set(codes) == {0}, "the parts were not read through the host library"


def test_a_chunk_too_large_for_memory_is_refused_before_any_part_table(tmp_path):
    """Metadata whose chunk shape makes a chunk larger than any memory (from fuzzing): a warm
    read of its chunk files, one batch of several, says so (DeviceMemoryError), as a read chunk
    by chunk does; the part tables (int64 byte offsets of records) are never built for it."""
    path = tmp_path / "a.zarr"
    z = zarr.create_array(str(path), shape=(20, 6, 16), chunks=(2, 3, 8), dtype="<f8",
                          compressors=zarr.codecs.ZstdCodec())  # 20 chunks of 2**60 bytes once mutated
    z[...] = 1
    meta = json.loads((path / "zarr.json").read_text())
    meta["chunk_grid"]["configuration"]["chunk_shape"][1] = 2**53 + 1
    (path / "zarr.json").write_text(json.dumps(meta))
    arr = gpuzarr.open(str(path), device="cpu", settings=gpuzarr.Settings(threads=2))
    with pytest.raises(gpuzarr.DeviceMemoryError, match="more than this machine can allocate"):
        arr[...]


@pytest.mark.parametrize("parts", [True, False], ids=["read-in-the-call", "fetched-first"])
@pytest.mark.parametrize("fmt", [2, 3])
def test_large_chunks_are_decoded_and_placed_in_one_call_a_part(tmp_path, monkeypatch, fmt, parts):
    """Chunks too large to decode a part of them first (BLOCK_CHUNK_MAX) go through one call of
    the host library a part, read in it where they can be (cpu._PartReads: warm v2 chunk files,
    not v3 chunks with a crc32c codec) or fetched first (decode_scatter), absent ones filled,
    crc32c codecs verified first; a corrupt one is named."""
    if not parts:
        monkeypatch.setattr(cpu_device._PartReads, "make", lambda *a: None)
    data = np.random.default_rng(3).integers(0, 3000, (150, 96, 72)).astype(">u2" if fmt == 2 else "<u2")
    path = str(tmp_path / "a.zarr")
    if fmt == 2:
        z = zarr.create_array(path, shape=data.shape, chunks=(64, 64, 72), dtype=data.dtype, zarr_format=2,
                              compressors=numcodecs.Blosc("lz4"), fill_value=9)
    else:
        z = zarr.create_array(path, shape=data.shape, chunks=(64, 64, 72), shards=(128, 128, 72), dtype=data.dtype,
                              compressors=[zarr.codecs.ZstdCodec(), zarr.codecs.Crc32cCodec()], fill_value=9)
    z[:128] = data[:128]
    data[128:] = 9  # a band of absent chunks
    calls = []  # (which call, chunks in it)
    for name in ("decode_scatter", "read_decode_scatter"):
        real = getattr(host_lib, name)
        monkeypatch.setattr(host_lib, name, lambda *a, _real=real, _name=name: (calls.append((_name, a[1].size)),
                                                                                _real(*a))[1])
    arr = gpuzarr.open(path, device="cpu", settings=gpuzarr.Settings(threads=2))
    np.testing.assert_array_equal(arr[...], data)
    window = (slice(20, 140), slice(5, 90), slice(3, 70, 2))
    np.testing.assert_array_equal(arr[window], data[window])  # (both small reads: small_read)
    np.testing.assert_array_equal(arr.read(window, report=gpuzarr.ReadReport()), data[window])  # the general path
    which = "read_decode_scatter" if parts and fmt == 2 else "decode_scatter"
    sizes = [n for name, n in calls if name == which]
    assert sizes and sum(sizes) > len(sizes), f"the chunks were not decoded and placed through {which}"
    key = "a.zarr/0.1.0" if fmt == 2 else "a.zarr/c/0/0/0"
    chunk = os.path.join(path, "0.1.0" if fmt == 2 else "c/0/0/0")
    raw = bytearray(open(chunk, "rb").read())
    if fmt == 2:
        del raw[-9:]  # the frame shorter than its header says
    else:
        raw[len(raw) // 3:len(raw) // 3 + 8] = b"\xff" * 8  # the crc32c codec's checksum fails
    open(chunk, "wb").write(bytes(raw))
    with pytest.raises(CorruptDataError, match=key.split("/", 1)[1].replace(".", r"\.")):
        gpuzarr.open(path, device="cpu", settings=gpuzarr.Settings(threads=2))[...]


@pytest.mark.parametrize("parts", [True, False], ids=["read-in-the-call", "fetched-first"])
def test_windows_of_multi_block_zstd_chunks_read_right_wherever_they_end(tmp_path, monkeypatch, parts):
    """Chunks of four zstd blocks, written by zarr-python, read through windows that end in each
    block of a chunk, or at a block's first or last item (their chunks decoded only so far),
    with steps, integer indexes and reversed axes: every one equals the data."""
    if not parts:
        monkeypatch.setattr(cpu_device._PartReads, "make", lambda *a: None)
    monkeypatch.setattr(cpu_device, "BLOCK_CHUNK_MAX", 0)  # every chunk alone: through the host library
    data = (np.arange(96 * 128 * 64) % 4093).astype("<u2").reshape(96, 128, 64)  # no two blocks alike
    path = str(tmp_path / "a.zarr")
    z = zarr.create_array(path, shape=data.shape, chunks=(64, 64, 64), shards=(64, 128, 64), dtype=data.dtype,
                          compressors=zarr.codecs.ZstdCodec())
    z[...] = data
    arr = gpuzarr.open(path, device="cpu", settings=gpuzarr.Settings(threads=1))  # one decode buffer
    calls = []
    for name in ("decode_scatter", "read_decode_scatter"):
        real = getattr(host_lib, name)
        monkeypatch.setattr(host_lib, name, lambda *a, _real=real: (calls.append(1), _real(*a))[1])
    windows = [(slice(0, 1),), (slice(10, 17), slice(3, 70)), (slice(30, 40), slice(60, 100), slice(1, 5)),
               (slice(50, 80, 3), slice(None, None, -7)), (47, slice(0, 128, 5), 63), (slice(63, 65),),
               (slice(None, None, -1), slice(0, 1), slice(0, 1)), (slice(5, 96), slice(64, 65)),
               (slice(0, 17), 0, 0), (slice(0, 16), 63, 63)]  # a block's first item, and its last (16 planes)
    other = [(slice(64, 96), slice(64, 128))]  # another chunk: its bytes left in the decode buffer
    for window in windows:  # small reads go chunk by chunk (small_read); reported, never
        np.testing.assert_array_equal(arr[window], data[window], err_msg=str(window))
        arr.read_batch(other, report=gpuzarr.ReadReport())
        np.testing.assert_array_equal(arr.read_batch([window], report=gpuzarr.ReadReport())[0], data[window],
                                      err_msg=str(window))
    assert len(calls) >= len(windows), "windows did not go through the host library"


@pytest.mark.parametrize("parts", [True, False], ids=["read-in-the-call", "fetched-first"])
def test_a_blosc_frame_is_decoded_only_in_the_blocks_its_records_read(tmp_path, monkeypatch, parts):
    """A blosc chunk of several blocks is decoded only in the blocks that hold the bytes its
    records read (blosc_getitem): with its first block garbled, windows in later blocks read
    right, while a window that reaches the first block is named as corrupt. v2 chunk files,
    big-endian, shuffled."""
    if bytes_to_bytes._blosc_calls() is None or not bytes_to_bytes._blosc_calls()[1]:
        pytest.skip("this numcodecs build exports no blosc_getitem")
    if not parts:
        monkeypatch.setattr(cpu_device._PartReads, "make", lambda *a: None)
    monkeypatch.setattr(cpu_device, "BLOCK_CHUNK_MAX", 0)  # each chunk alone, through the host library
    data = (np.add.outer(np.arange(512), np.arange(512)) % 97 * 5).astype(">u2")  # compressible: no block stored raw
    path = str(tmp_path / "a.zarr")
    codec = numcodecs.Blosc("lz4", 5, shuffle=numcodecs.Blosc.SHUFFLE)
    z = zarr.create_array(path, shape=data.shape, chunks=(512, 512), dtype=data.dtype, zarr_format=2,
                          compressors=codec)
    z[...] = data
    chunk = os.path.join(path, "0.0")
    raw = bytearray(open(chunk, "rb").read())
    rows = int.from_bytes(raw[8:12], "little") // 1024  # a block's rows (c-blosc picks the block size)
    assert rows < 512, "the chunk is several blocks"
    first = int.from_bytes(raw[16:20], "little")  # block 0: its first stream's size, then its bytes
    raw[first + 4:first + 24] = b"\xff" * 20
    open(chunk, "wb").write(bytes(raw))
    with pytest.raises(RuntimeError):
        codec.decode(bytes(raw))
    arr = gpuzarr.open(path, device="cpu", settings=gpuzarr.Settings(threads=1))
    for window in [(slice(rows, rows + 9), slice(None)), (slice(rows + 1, 512), slice(3, 250, 7)), (511, 7)]:
        np.testing.assert_array_equal(arr.read_batch([window])[0], data[window], err_msg=str(window))
    with pytest.raises(CorruptDataError, match=r"0\.0"):
        arr.read_batch([(slice(rows - 1, rows + 5), slice(None))])


@pytest.fixture(scope="module")
def multi_block(tmp_path_factory):
    """Arrays of zstd chunks of 4 blocks (60x50x70 uint16, 420 KB), in chunk files (big-endian)
    and in shards (little-endian), written by zarr-python: (their paths, the data)."""
    data = np.random.default_rng(11).integers(0, 3000, (100, 90, 70)).astype("<u2")
    root = tmp_path_factory.mktemp("multi_block")
    paths = []
    for name, endian, shards in (("files", "big", None), ("shards", "little", (120, 100, 70))):
        path = str(root / f"{name}.zarr")
        z = zarr.create_array(path, shape=data.shape, chunks=(60, 50, 70), shards=shards, dtype=data.dtype,
                              serializer=zarr.codecs.BytesCodec(endian=endian), compressors=zarr.codecs.ZstdCodec())
        z[...] = data
        paths.append(path)
    return paths, data


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_window_of_multi_block_zstd_chunks_reads_right(multi_block, monkeypatch, data):
    """Windows with steps anywhere in chunks of several zstd blocks, each chunk decoded only as
    far as the window reads it, in chunk files and in shards, one thread (one decode buffer,
    reused: bytes left there by another chunk would show), read alone and in a batch."""
    paths, truth = multi_block
    monkeypatch.setattr(cpu_device, "BLOCK_CHUNK_MAX", 0)
    path = data.draw(st.sampled_from(paths))
    arr = gpuzarr.open(path, device="cpu", settings=gpuzarr.Settings(threads=1))
    for _ in range(3):
        window = _selection(data.draw, truth.shape)
        np.testing.assert_array_equal(arr[window], truth[window])
        np.testing.assert_array_equal(arr.read_batch([window])[0], truth[window])


@pytest.mark.parametrize("endian", ["little", "big"])
def test_warm_parts_are_read_decoded_and_placed_in_one_call(tmp_path, monkeypatch, endian):
    """A warm read of local shards that the tasks read themselves: each part read, checked,
    decoded and placed in one call (cpu._PartReads), absent chunks filled, as zarr-python reads
    it. A part the library gives back is read the Python way, counted and noted: a chunk whose
    magic number is gone (refused by the checks) or whose checksum fails (by the decoder) is named."""
    shape = (150, 96)
    data = np.random.default_rng(5).integers(0, 3000, shape).astype("<u2")
    path = str(tmp_path / "a.zarr")
    z = zarr.create_array(path, shape=shape, chunks=(16, 16), shards=(64, 48), dtype="<u2", fill_value=9,
                          compressors=zarr.codecs.ZstdCodec(checksum=True),
                          serializer=zarr.codecs.BytesCodec(endian=endian))
    z[:128] = data[:128]
    data[128:] = 9  # absent chunks
    codes = []
    real = host_lib.read_decode_scatter
    monkeypatch.setattr(host_lib, "read_decode_scatter", lambda *a: (lambda r: codes.append(r[0]) or r)(real(*a)))
    arr = gpuzarr.open(path, device="cpu", settings=gpuzarr.Settings(threads=2, batch_bytes=4096))
    windows = [(slice(a, a + 40), slice(b, b + 30)) for a, b in [(0, 0), (37, 11), (100, 60), (110, 5)]]
    for _ in range(2):  # cold (the indexes read), then warm
        np.testing.assert_array_equal(arr[...], data)
        np.testing.assert_array_equal(arr.read_batch(windows), np.stack([data[w] for w in windows]))
        np.testing.assert_array_equal(arr[5:140:3, ::-2], data[5:140:3, ::-2])
    assert codes and set(codes) == {0}, "the parts were not read through the host library"
    locate = arr._reader.locator.locate
    for where, reason, match in [(0, "part:frame", "bad magic"), (-2, "part:decode", "zstd")]:
        coords = np.array([[2, 1]])
        start, size = int(locate(coords).offsets[0]), int(locate(coords).sizes[0])
        shard = tmp_path / "a.zarr" / "c" / "0" / "0"
        raw = bytearray(shard.read_bytes())
        raw[start + where % size] ^= 0xFF  # the frame's magic number; a byte of its checksum
        shard.write_bytes(bytes(raw))
        before, codes[:] = host_lib.FALLBACKS[reason], []
        report = gpuzarr.ReadReport()
        with pytest.raises(CorruptDataError, match=f"c/0/0.*{match}"):
            arr.read(report=report)
        assert codes and host_lib.FALLBACKS[reason] > before
        assert any(reason in note for note in report.notes)
        raw[start + where % size] ^= 0xFF
        shard.write_bytes(bytes(raw))


@pytest.mark.parametrize("parts", [True, False], ids=["read-in-the-call", "fetched-first"])
@pytest.mark.parametrize("layout", ["v3-shards", "v3-shards-crc32c", "v2-files-big-endian"])
def test_stored_chunks_are_placed_from_where_they_were_read(tmp_path, monkeypatch, parts, layout):
    """Chunks without a bytes->bytes codec go through the host library as a lone codec's do
    (GPZ_STORED: placed from staging, no decode): read in the call where the tasks read them
    (not with a crc32c codec, which the Python path checks first), or placed from the fetched
    bytes; small windows in one call too (small_read._direct). A chunk of the wrong size is given
    back and named by the Python path."""
    if not parts:
        monkeypatch.setattr(cpu_device._PartReads, "make", lambda *a: None)
    fmt = 2 if layout.startswith("v2") else 3
    dtype = ">i4" if "big" in layout else "<u2"
    shape = (200, 90)
    data = np.random.default_rng(11).integers(-5000, 5000, shape).astype(dtype)
    path = str(tmp_path / "a.zarr")
    if fmt == 2:
        z = zarr.create_array(path, shape=shape, chunks=(32, 30), dtype=dtype, zarr_format=2, compressors=None,
                              fill_value=9)
    else:
        z = zarr.create_array(path, shape=shape, chunks=(32, 30), shards=(128, 90), dtype=dtype, fill_value=9,
                              compressors=[zarr.codecs.Crc32cCodec()] if "crc32c" in layout else None)
    z[:160] = data[:160]
    data[160:] = 9  # absent chunks
    calls = []  # (which call, its decoder's kind)
    for name, at in (("decode_scatter", 0), ("read_decode_scatter", 5)):
        real = getattr(host_lib, name)
        monkeypatch.setattr(host_lib, name, lambda *a, _real=real, _name=name, _at=at: (
            calls.append((_name, a[_at][0])), _real(*a))[1])
    arr = gpuzarr.open(path, device="cpu", settings=gpuzarr.Settings(threads=2))
    np.testing.assert_array_equal(arr[...], data)
    windows = [(slice(a, a + 70), slice(b, b + 50)) for a, b in [(0, 0), (37, 11), (100, 40), (130, 5)]]
    np.testing.assert_array_equal(arr.read_batch(windows), np.stack([data[w] for w in windows]))
    np.testing.assert_array_equal(arr[5:190:3, ::-2], data[5:190:3, ::-2])
    np.testing.assert_array_equal(arr[40:100, 20:80], data[40:100, 20:80])  # a small window
    which = "read_decode_scatter" if parts and "crc32c" not in layout else "decode_scatter"
    assert (which, "stored") in calls, f"the stored chunks were not placed through {which}"
    assert {kind for _, kind in calls} == {"stored"}
    if fmt == 2:
        chunk = tmp_path / "a.zarr" / "1.2"
        chunk.write_bytes(chunk.read_bytes()[:-4])
        key = r"1\.2"
    else:
        locate = arr._reader.locator.locate
        start = int(locate(np.array([[1, 2]])).offsets[0])
        shard = tmp_path / "a.zarr" / "c" / "0" / "0"
        raw = bytearray(shard.read_bytes())
        tail = len(raw) - 12 * 16 - 4  # zarr-python's index: 4 x 3 chunks, then its crc32c
        index = np.frombuffer(bytes(raw[tail:-4]), "<u8").reshape(12, 2).copy()
        index[np.flatnonzero(index[:, 0] == start)[0], 1] -= 2  # the chunk said 2 bytes short
        raw[tail:-4] = index.tobytes()
        raw[-4:] = crc32c.crc32c(index.tobytes()).to_bytes(4, "little")  # read as the index says
        shard.write_bytes(bytes(raw))
        key = "c/0/0"
    with pytest.raises(CorruptDataError, match=f"{key}.*(bytes, expected|shorter|checksum)"):
        gpuzarr.open(path, device="cpu", settings=gpuzarr.Settings(threads=2))[...]


@pytest.fixture
def at_once(monkeypatch):
    """Every read of two files or more through the library's three calls, however few."""
    monkeypatch.setattr(store_module, "FILES_AT_ONCE", 2)


def _read_files(store, keys):
    """store.read_files_into into one buffer per file: (counts, each file's bytes or None)."""
    held = []

    def place(sizes):
        held.extend(bytearray(size or 0) for size in sizes)
        return [memoryview(b) for b in held]

    counts = store.read_files_into(keys, place)
    return counts, [bytes(b[:c]) if c is not None else None for b, c in zip(held, counts)]


@pytest.mark.parametrize("files_open", [64, 2], ids=["held-open", "sized-by-path"])
def test_chunk_files_read_at_once_as_one_by_one(tmp_path, monkeypatch, at_once, files_open):
    """Regular files, an empty one, a missing one, a directory: the same counts and bytes from the
    library's three calls as from the syscalls of the Python loop; no descriptor left open."""
    monkeypatch.setattr(store_module, "FILES_OPEN", files_open)
    rng = np.random.default_rng(8)
    for i in range(5):
        (tmp_path / f"f{i}").write_bytes(rng.integers(0, 256, 100 * i + 7, dtype=np.uint8).tobytes())
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "dir").mkdir()
    keys = ["f0", "missing", "f1", "dir", "empty", "f2", "f3", "f4"]
    store = LocalStore(LocalFileSystem(), str(tmp_path))
    before = len(os.listdir("/proc/self/fd"))
    in_c = _read_files(store, keys)
    with mock.patch.object(host_lib, "_lib", [None]):
        in_python = _read_files(store, keys)
    assert in_c == in_python
    assert in_c[0] == [7, None, 107, None, 0, 207, 307, 407]
    calls, real = [], host_lib.FileBatch
    with mock.patch.object(host_lib, "FileBatch", lambda *a: calls.append(a) or real(*a)):
        _read_files(store, keys)
    assert calls, "the library's calls were not taken"
    assert len(os.listdir("/proc/self/fd")) == before


def test_a_file_that_cannot_be_opened_is_named(tmp_path, at_once):
    """Not a missing chunk but a broken file (a symbolic link to itself): a StoreError naming it,
    as from the Python loop; no descriptor left open."""
    (tmp_path / "a").write_bytes(b"x" * 10)
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    store = LocalStore(LocalFileSystem(), str(tmp_path))
    before = len(os.listdir("/proc/self/fd"))
    messages = []
    for lib in (host_lib._lib, [None]):
        with mock.patch.object(host_lib, "_lib", lib), pytest.raises(StoreError) as err:
            _read_files(store, ["a", "loop"])
        messages.append(str(err.value))
    assert messages[0] == messages[1] and "loop: open failed" in messages[0]
    assert len(os.listdir("/proc/self/fd")) == before


@pytest.mark.skipif(not hasattr(os, "RWF_NOWAIT"), reason="no RWF_NOWAIT here: every read blocks")
@pytest.mark.parametrize("what", ["whole files", "shard indexes"])
def test_bytes_not_in_the_page_cache_are_handed_over_then_read(tmp_path, monkeypatch, at_once, what):
    """A file dropped from the page cache (POSIX_FADV_DONTNEED): RWF_NOWAIT refuses it, the store
    hands the bytes wanted (the whole file, or its last 4100 bytes) to the kernel (_willneed) and
    reads them blocking, from the descriptor it holds."""
    data = np.random.default_rng(9).integers(0, 256, 1 << 20, dtype=np.uint8).tobytes()
    for name in ("warm", "cold"):
        (tmp_path / name).write_bytes(data)
    handed = []
    real = store_module._willneed
    monkeypatch.setattr(store_module, "_willneed", lambda *a: (handed.append(a), real(*a))[1])
    store = LocalStore(LocalFileSystem(), str(tmp_path))
    assert store._nowait, "the store reads with RWF_NOWAIT first"
    fd = os.open(tmp_path / "cold", os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    if what == "whole files":
        counts, got = _read_files(store, ["warm", "cold"])
        assert counts == [len(data)] * 2 and got == [data, data]
        wanted = (0, len(data))
    else:
        got = store.read_indexes([("warm", -4100, None), ("cold", -4100, None)])
        assert [bytes(b) for b in got] == [data[-4100:]] * 2
        wanted = (len(data) - 4100, len(data))
    if not handed:
        pytest.skip("this filesystem kept the file cached (or ignores RWF_NOWAIT): nothing was handed over")
    assert len(handed) == 1 and handed[0][1:] == wanted


@pytest.mark.parametrize("at", ["end", "start"])
def test_shard_indexes_read_at_once_as_one_by_one(tmp_path, monkeypatch, at_once, at):
    """Indexes (the same number of bytes at the end, or the start, of each shard file) of regular
    files, a file shorter than an index, a missing one, a directory: the same bytes from the
    library's three calls as from the Python loop; no descriptor left open; other ranges, or a file
    named twice, go the Python way."""
    rng = np.random.default_rng(10)
    for i in range(4):
        (tmp_path / f"s{i}").write_bytes(rng.integers(0, 256, 300 * i + 50, dtype=np.uint8).tobytes())
    (tmp_path / "dir").mkdir()
    keys = ["s1", "s0", "missing", "dir", "s2", "s3"]
    ranges = [(k, -100, None) if at == "end" else (k, 0, 100) for k in keys]
    store = LocalStore(LocalFileSystem(), str(tmp_path))
    before = len(os.listdir("/proc/self/fd"))
    calls, real = [], host_lib.FileBatch
    with mock.patch.object(host_lib, "FileBatch", lambda *a: calls.append(a) or real(*a)):
        in_c = [None if b is None else bytes(b) for b in store.read_indexes(ranges)]
    in_python = [None if b is None else bytes(b) for b in store.read_ranges(ranges)]
    assert calls and in_c == in_python
    assert [None if b is None else len(b) for b in in_c] == [100, 50, None, None, 100, 100]
    assert in_c[0] == (tmp_path / "s1").read_bytes()[-100:] if at == "end" else (tmp_path / "s1").read_bytes()[:100]
    assert len(os.listdir("/proc/self/fd")) == before
    calls.clear()
    with mock.patch.object(host_lib, "FileBatch", lambda *a: calls.append(a) or real(*a)):
        store.read_indexes([("s1", -100, None), ("s2", -90, None)])  # not one size
        store.read_indexes([("s1", -100, None), ("s1", -100, None)])  # a file twice
        store.read_indexes([("s1", 10, 110), ("s2", 10, 110)])  # inside the files
    assert not calls


def test_transposed_chunks_are_walked_in_their_stored_order(tmp_path, grouped):
    """A transpose codec, or two, and a v2 array in order F: the records' dims follow the stored
    axes (ChunkView.stored_order), so the library places what NumPy's transposed view would."""
    data = np.arange(24 * 20 * 6, dtype="<u2").reshape(24, 20, 6)
    v3 = zarr.create_array(str(tmp_path / "t.zarr"), shape=data.shape, chunks=(8, 6, 4), dtype="<u2",
                           compressors=None, filters=[zarr.codecs.TransposeCodec(order=(2, 0, 1)),
                                                      zarr.codecs.TransposeCodec(order=(0, 2, 1))])
    v3[...] = data
    v2 = zarr.create_array(str(tmp_path / "f.zarr"), shape=data.shape, chunks=(8, 6, 4), dtype="<u2", zarr_format=2,
                           order="F", compressors=None)
    v2[...] = data
    windows = [(slice(a, a + 9), slice(b, b + 7), slice(1, 5)) for a, b in [(0, 0), (3, 11), (15, 2), (10, 13)]]
    for name in ("t.zarr", "f.zarr"):  # (2, 0, 1) then (0, 2, 1): the axes reversed, as order F stores them
        arr = gpuzarr.open(str(tmp_path / name), device="cpu", settings=gpuzarr.Settings(threads=2))
        assert cpu_device.ChunkView(arr._reader.locator.leaf_chain).stored_order == (2, 1, 0)
        calls = []
        real = host_lib.scatter
        with mock.patch.object(host_lib, "scatter", lambda *a: (calls.append(1), real(*a))[1]):
            got = arr.read_batch(windows)
        np.testing.assert_array_equal(got, np.stack([data[w] for w in windows]))
        assert calls, f"{name}: not placed through the host scatter"


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_transposed_chunks_placed_by_register_tiles_equal_numpy(tmp_path_factory, data):
    """Chunks whose stored axes are the output's transposed (channels last stored first, v2 order
    F) place their windows as 2-D transposes by tiles of 16 bytes (gpz_host_transpose) wherever
    the output is contiguous along one axis and the chunk along another, with remainders past
    whole tiles, other axes around them, steps and reversed axes: what NumPy places."""
    dtype = data.draw(st.sampled_from(["u1", "<u2", "<f4", "<f8", "<i4"]))
    channels = data.draw(st.integers(1, 40))
    shape = (data.draw(st.integers(16, 70)), data.draw(st.integers(16, 70)), channels)
    chunks = (data.draw(st.integers(16, 40)), data.draw(st.integers(16, 40)), data.draw(st.integers(1, channels)))
    truth = np.random.default_rng(data.draw(st.integers(0, 99))).integers(0, 250, shape).astype(dtype)
    root = tmp_path_factory.mktemp("tiles")
    if data.draw(st.booleans()):
        z = zarr.create_array(str(root / "a.zarr"), shape=shape, chunks=chunks, dtype=dtype,
                              filters=[zarr.codecs.TransposeCodec(order=data.draw(st.sampled_from(
                                  [(2, 0, 1), (1, 2, 0), (2, 1, 0), (0, 2, 1)])))])
    else:
        z = zarr.create_array(str(root / "a.zarr"), shape=shape, chunks=chunks, dtype=dtype, zarr_format=2,
                              order="F", compressors=numcodecs.Zstd())
    z[...] = truth
    arr = gpuzarr.open(str(root / "a.zarr"), device="cpu", settings=gpuzarr.Settings(threads=1))
    windows = [_selection(data.draw, shape) for _ in range(3)]
    windows.append(tuple(slice(None, None, -1) if data.draw(st.booleans()) else slice(None) for _ in shape))
    with mock.patch.object(cpu_device, "BLOCK_CHUNK_MAX", 1 << 30):  # every part through the rows and host scatter
        for window in windows:
            np.testing.assert_array_equal(arr[window], truth[window], err_msg=str(window))
            np.testing.assert_array_equal(arr.read_batch([window])[0], truth[window], err_msg=str(window))


def test_zstd_chunks_over_8_mib_are_read_in_the_call(tmp_path):
    """A zstd frame of more than 64 blocks (a chunk over 8 MiB) was given back by the library's
    frame check (its walk stopped where the NumPy walk stops) and read in Python, counted as a
    part:frame fallback, though intact (found by a differential run on 9 MiB transposed chunks)."""
    data = np.random.default_rng(2).integers(0, 50, (3200, 1536)).astype("<u2")
    path = str(tmp_path / "a.zarr")
    z = zarr.create_array(path, shape=data.shape, chunks=(3200, 1536), dtype=data.dtype,
                          compressors=zarr.codecs.ZstdCodec(level=1))
    z[...] = data
    before = dict(host_lib.FALLBACKS)
    arr = gpuzarr.open(path, device="cpu", settings=gpuzarr.Settings(threads=2))
    np.testing.assert_array_equal(arr[...], data)
    np.testing.assert_array_equal(arr[100:3100, 7:1500:3], data[100:3100, 7:1500:3])
    assert dict(host_lib.FALLBACKS) == before
