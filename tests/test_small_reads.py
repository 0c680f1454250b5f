"""Small reads take plain-integer paths (planning, selections, locating, storage order) and read
whole chunk files sized on their open descriptors: each path is checked against the array path
it stands in for, and the file reads against what is on disk, missing and odd files included."""

from __future__ import annotations

import itertools
import os
import threading

import numcodecs
import numpy as np
import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st

import gpuzarr
from gpuzarr import fetch as fetch_module
from gpuzarr import host_lib
from gpuzarr.codecs import bytes_to_bytes
from gpuzarr.devices import cpu as cpu_module
from gpuzarr import store as store_module
from gpuzarr.devices.cpu import CpuDevice
from gpuzarr.errors import CorruptDataError
from gpuzarr.fetch import LOCATE_ARRAYS, Locations, fetch
from gpuzarr.plan import SMALL, _plan_small, _plan_tables, make_plan
from gpuzarr.selection import normalize
from gpuzarr.small_read import SmallReads

# ---------------------------------------------------------------- planning


def _window(data: st.DataObject, shape: tuple[int, ...]) -> tuple:
    """A selection of ints and slices (any step, bounds past the ends) over `shape`."""
    sel = []
    for n in shape:
        if data.draw(st.booleans()) and data.draw(st.booleans()):
            sel.append(data.draw(st.integers(-n, n - 1)))
        else:
            bound = st.none() | st.integers(-n - 2, n + 2)
            step = data.draw(st.sampled_from([1, 1, 1, 2, 3, -1, -2, 7, 40]))
            sel.append(slice(data.draw(bound), data.draw(bound), step))
    return tuple(sel)


def _assert_same_plan(a, b) -> None:
    for name in ("chunks", "place_chunk", "place_runs", "place_window"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y), name
    assert a.batched == b.batched and len(a.dims) == len(b.dims)
    for da, db in zip(a.dims, b.dims):
        assert da.drop == db.drop
        for name in ("chunk", "local_start", "count", "out_start", "step"):
            assert np.array_equal(getattr(da, name), getattr(db, name)), name


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_a_small_window_plans_as_the_array_path_does(data):
    ndim = data.draw(st.integers(0, 3))
    shape = tuple(data.draw(st.integers(1, 50)) for _ in range(ndim))
    chunks = tuple(data.draw(st.integers(1, 12)) for _ in range(ndim))
    window = normalize(_window(data, shape), shape)
    batched = data.draw(st.booleans())
    small = _plan_small(window, chunks, batched)
    if any(d.count == 0 for d in window):
        assert small is None  # nothing to plan: the array path's business
        return
    spanned = np.prod([abs((d.start + d.step * (d.count - 1)) // c - d.start // c) + 1
                       for d, c in zip(window, chunks)])
    assert (small is None) == (spanned > SMALL)
    if small is not None:
        tables = _plan_tables([window], chunks, batched)
        _assert_same_plan(small, tables)
        for first in range(small.n_chunks + 1):  # its selections come from lists it made itself
            for stop in range(first, small.n_chunks + 1):
                assert small.selections(first, stop) == tables._selections_arrays(tables.placements_of(first, stop))


def test_a_large_window_takes_the_array_path():
    window = normalize((slice(0, 100), slice(0, 100)), (100, 100))
    assert _plan_small(window, (10, 10), False) is None  # 100 chunks
    assert make_plan([window], (10, 10), False).n_chunks == 100


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_small_selections_equal_the_array_ones_for_every_span(data):
    """Plans of every kind (one window, read_batch windows, index arrays) with at most SMALL
    placements: the plain-integer selections equal the column-wise ones for every chunk range."""
    ndim = data.draw(st.integers(1, 3))
    shape = tuple(data.draw(st.integers(1, 30)) for _ in range(ndim))
    chunks = tuple(data.draw(st.integers(1, 10)) for _ in range(ndim))
    kind = data.draw(st.sampled_from(["window", "batch", "indices"]))
    if kind == "indices":
        dims = normalize(_window(data, shape), shape)
        axis = data.draw(st.integers(0, ndim - 1))
        picks = data.draw(st.lists(st.integers(0, shape[axis] - 1), min_size=1, max_size=6))
        dims[axis] = gpuzarr.selection.index_array(np.array(picks), shape[axis], axis)
        windows, batched = [dims], False
    else:
        count = 1 if kind == "window" else data.draw(st.integers(2, 5))
        sizes = [data.draw(st.integers(1, n)) for n in shape]
        windows = []
        for _ in range(count):
            starts = [data.draw(st.integers(0, n - k)) for n, k in zip(shape, sizes)]
            windows.append(normalize(tuple(slice(a, a + k) for a, k in zip(starts, sizes)), shape))
        batched = kind == "batch"
    plan = _plan_tables(windows, chunks, batched)
    if plan.place_chunk.size > SMALL or plan.place_chunk.size == 0:
        return
    for first in range(plan.n_chunks + 1):
        for stop in range(first, plan.n_chunks + 1):
            span = plan.placements_of(first, stop)
            assert plan._selections_small(span) == plan._selections_arrays(span)


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_reorder_moves_each_chunk_with_its_placements(data):
    """Plans with one placement per chunk (one window) take the short path of reorder, plans with
    shared chunks (read_batch) the grouped one: both keep every placement with its chunk."""
    shape = (data.draw(st.integers(1, 30)), data.draw(st.integers(1, 30)))
    chunks = (data.draw(st.integers(1, 8)), data.draw(st.integers(1, 8)))
    size = [data.draw(st.integers(1, n)) for n in shape]
    windows = []
    for _ in range(data.draw(st.integers(1, 3))):
        starts = [data.draw(st.integers(0, n - k)) for n, k in zip(shape, size)]
        windows.append(normalize(tuple(slice(a, a + k) for a, k in zip(starts, size)), shape))
    plan = make_plan(windows, chunks, len(windows) > 1)
    order = np.array(data.draw(st.permutations(range(plan.n_chunks))), dtype=np.int64)
    moved = plan.reorder(order)
    np.testing.assert_array_equal(moved.chunks, plan.chunks[order])
    assert (np.diff(moved.place_chunk) >= 0).all()

    def placements(p):
        return sorted(map(tuple, np.column_stack([p.chunks[p.place_chunk], p.place_runs, p.place_window]).tolist()))

    assert placements(moved) == placements(plan)


def test_a_small_window_reads_what_numpy_slices(tmp_path):
    data = np.arange(60 * 50, dtype="u2").reshape(60, 50)
    z = zarr.create_array(tmp_path / "a.zarr", shape=data.shape, chunks=(7, 9), dtype="u2")
    z[:] = data
    arr = gpuzarr.open(str(tmp_path / "a.zarr"), device="cpu")
    for sel in [(slice(3, 20), slice(5, 30)), (slice(None, None, -3), 4), (slice(55, 2, -2), slice(1, 49, 5)),
                (5, slice(None)), (slice(10, 11), slice(48, 50))]:
        np.testing.assert_array_equal(arr[sel], data[sel])


# ---------------------------------------------------------------- locating


@pytest.fixture(scope="module")
def sparse_sharded(tmp_path_factory):
    """A sharded array with missing shards and empty inner chunks (fill value), and its data."""
    path = tmp_path_factory.mktemp("small") / "a.zarr"
    z = zarr.create_array(path, shape=(90, 70), chunks=(5, 7), shards=(20, 21), dtype="i4", fill_value=-3)
    data = np.full((90, 70), -3, dtype="i4")
    rng = np.random.default_rng(5)
    for i in range(18):
        for j in range(10):
            if i < 15 and rng.random() < 0.6:  # rows 80.. (a row of shards) stay missing
                block = rng.integers(0, 1000, (5, 7), dtype="i4")
                z[i * 5:(i + 1) * 5, j * 7:(j + 1) * 7] = block
                data[i * 5:(i + 1) * 5, j * 7:(j + 1) * 7] = block
    return path, data


def _assert_same_locations(a: Locations, b: Locations) -> None:
    for name in ("keys", "offsets", "sizes", "present", "key_ids"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and np.array_equal(x, y), name
    assert a.missing == b.missing and a.prefetched == b.prefetched


def test_small_locations_equal_the_array_path(sparse_sharded, monkeypatch):
    path, _ = sparse_sharded
    locator = gpuzarr.open(str(path), device="cpu")._reader.locator
    grid = np.array([18, 10])
    rng = np.random.default_rng(0)
    seen_missing = seen_empty = 0
    for _ in range(300):
        n = int(rng.integers(1, LOCATE_ARRAYS + 1))
        coords = rng.integers(0, grid, size=(n, 2))
        small = locator._locate_small(coords)
        with monkeypatch.context() as m:
            m.setattr(fetch_module, "LOCATE_ARRAYS", 0)
            general = locator.locate(coords)
        _assert_same_locations(small, general)
        seen_missing += bool(small.missing)
        seen_empty += bool((~small.present).any())
    assert seen_missing and seen_empty  # both kinds of absence were exercised


def test_indexes_stacked_or_looked_up_shard_by_shard_locate_the_same(sparse_sharded, monkeypatch):
    """locate() looks every chunk up in one table of the shards' indexes stacked (up to
    STACKED_ENTRIES), else shard by shard: the same locations, missing shards included."""
    path, _ = sparse_sharded
    locator = gpuzarr.open(str(path), device="cpu")._reader.locator
    rng = np.random.default_rng(1)
    for _ in range(50):
        coords = rng.integers(0, [18, 10], size=(int(rng.integers(LOCATE_ARRAYS + 1, 200)), 2))
        stacked = locator.locate(coords)
        with monkeypatch.context() as m:
            m.setattr(fetch_module, "STACKED_ENTRIES", 0)
            _assert_same_locations(stacked, locator.locate(coords))
        assert stacked.missing and (~stacked.present).any()


def test_small_windows_of_a_sparse_sharded_array_read_right(sparse_sharded):
    path, data = sparse_sharded
    arr = gpuzarr.open(str(path), device="cpu")
    for sel in [(slice(0, 20), slice(0, 21)), (slice(17, 43), slice(19, 44)), (slice(75, 90), slice(60, 70)),
                (slice(None, None, -7), slice(3, 70, 11)), (81, slice(None))]:
        report = gpuzarr.ReadReport()
        np.testing.assert_array_equal(arr.read(sel, report=report), data[sel])
    assert report.missing_keys  # row 81 lies in the missing row of shards


@settings(max_examples=300, deadline=None)
@given(pairs=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 50)), min_size=1, max_size=LOCATE_ARRAYS * 2,
                      unique=True))
def test_small_storage_order_equals_the_array_one(pairs):
    ids = np.array([p[0] for p in pairs], dtype=np.int64)
    offsets = np.array([p[1] for p in pairs], dtype=np.int64)
    n = ids.size
    loc = Locations(np.array(["k"] * n, dtype=object), offsets, np.ones(n, np.int64), np.ones(n, bool), ids)
    order = loc.storage_order()
    expected = np.lexsort((offsets, ids))
    if (expected == np.arange(n)).all():
        assert order is None
    else:
        assert order is not None and order.dtype == np.int64 and np.array_equal(order, expected)


@settings(max_examples=100, deadline=None)
@given(pairs=st.lists(st.tuples(st.integers(0, 40), st.integers(0, 5000)), min_size=LOCATE_ARRAYS + 1,
                      max_size=LOCATE_ARRAYS * 4, unique=True), scale=st.sampled_from([1, 1 << 50]))
def test_storage_order_of_many_chunks_is_lexsorts(pairs, scale):
    """One sort of a combined key, or lexsort where that key would overflow (offsets near 2**62):
    the same order."""
    ids = np.array([p[0] for p in pairs], dtype=np.int64)
    offsets = np.array([p[1] for p in pairs], dtype=np.int64) * scale
    n = ids.size
    loc = Locations(np.array(["k"] * n, dtype=object), offsets, np.ones(n, np.int64), np.ones(n, bool), ids)
    expected = np.lexsort((offsets, ids))
    order = loc.storage_order()
    assert np.array_equal(np.arange(n) if order is None else order, expected)


# ---------------------------------------------------------------- whole chunk files


@pytest.fixture
def chunked(tmp_path):
    """A v2 array of 16 chunk files (blosc), one removed, one replaced by a directory."""
    data = np.arange(32 * 32, dtype="u2").reshape(32, 32)
    z = zarr.create_array(tmp_path / "v2.zarr", shape=(32, 32), chunks=(8, 8), dtype="u2", zarr_format=2,
                          fill_value=9)
    z[:] = data
    os.remove(tmp_path / "v2.zarr" / "1.2")
    os.remove(tmp_path / "v2.zarr" / "3.3")
    os.mkdir(tmp_path / "v2.zarr" / "3.3")
    expected = data.copy()
    expected[8:16, 16:24] = 9
    expected[24:32, 24:32] = 9
    return tmp_path / "v2.zarr", expected


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts descriptors through /proc")
@pytest.mark.parametrize("files_open", [256, 3], ids=["all-held-open", "most-sized-by-stat"])
def test_chunk_files_read_whole_missing_ones_as_fill(chunked, monkeypatch, files_open):
    path, expected = chunked
    monkeypatch.setattr(store_module, "FILES_OPEN", files_open)
    arr = gpuzarr.open(str(path), device="cpu")
    before = _open_fds()
    report = gpuzarr.ReadReport()
    np.testing.assert_array_equal(arr.read(report=report), expected)
    assert sorted(report.missing_keys) == ["1.2", "3.3"]
    stored = sum(p.stat().st_size for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    assert report.requests == 14 and report.bytes_requested == stored == report.bytes_compressed
    np.testing.assert_array_equal(arr[5:20, 3:30], expected[5:20, 3:30])
    assert _open_fds() == before  # every descriptor closed


def test_fetched_chunk_files_land_aligned_with_their_bytes(chunked):
    path, _ = chunked
    arr = gpuzarr.open(str(path), device="cpu")
    loc = arr._reader.locator.locate(np.array([[0, 0], [1, 2], [2, 1], [3, 3], [0, 1]]))
    missing: list = []
    batch = fetch(arr.store, loc, np.arange(5), align=64, missing=missing)
    assert batch.present.tolist() == [True, False, True, False, True] and missing == ["1.2", "3.3"]
    assert (batch.offsets % 64 == 0).all() and batch.sizes[~batch.present].tolist() == [0, 0]
    for i, key in enumerate(loc.keys.tolist()):
        if batch.present[i]:
            assert bytes(batch.chunk(i)) == (path / key).read_bytes()


def test_a_chunk_file_shorter_than_its_size_is_read_as_it_is(chunked, monkeypatch):
    """A file that shrinks between its fstat and its read is read again whole, as it is then:
    never a silently cut chunk, nor one padded with zeros."""
    path, expected = chunked
    real = os.fstat

    class Grown:
        def __init__(self, info):
            self.st_mode, self.st_size = info.st_mode, info.st_size + 5

    arr = gpuzarr.open(str(path), device="cpu")
    monkeypatch.setattr(store_module.os, "fstat", lambda fd: Grown(real(fd)))
    np.testing.assert_array_equal(arr[0:4, 0:4], expected[0:4, 0:4])


def test_chunk_files_the_page_cache_lacks_are_handed_to_the_kernel_then_read(chunked, monkeypatch):
    path, expected = chunked
    real = store_module.os.preadv
    advised, read = [], []

    def cold(fd, buffers, offset, flags=0):
        if flags:
            raise BlockingIOError
        read.append(offset)
        return real(fd, buffers, offset)

    arr = gpuzarr.open(str(path), device="cpu")
    calls = []  # the host library's one call (small chunks: SmallReads._direct), which finds them cold
    real_call = host_lib.read_decode_scatter
    monkeypatch.setattr(host_lib, "read_decode_scatter",
                        lambda *a: calls.append(a[-1]) or ((host_lib.NOT_CACHED, 0, 0) if a[-1] else real_call(*a)))
    monkeypatch.setattr(store_module.os, "preadv", cold)
    monkeypatch.setattr(store_module.os, "posix_fadvise", lambda fd, offset, length, advice:
                        advised.append(length) if advice == store_module.os.POSIX_FADV_WILLNEED else None)
    np.testing.assert_array_equal(arr[0:20, 0:32], expected[0:20, 0:32])
    assert calls == [store_module._NOWAIT]
    assert len(read) == 11 and len(advised) == len(read)  # every file there, whole, before it is read


# ---------------------------------------------------------------- small chunks in one host library call


def _direct_codes(monkeypatch) -> list:
    """The result code of every host_lib.read_decode_scatter call a read makes."""
    codes: list = []
    real = host_lib.read_decode_scatter
    monkeypatch.setattr(host_lib, "read_decode_scatter", lambda *a: (lambda r: codes.append(r[0]) or r)(real(*a)))
    return codes


def _small_chunk_array(tmp_path, layout: str, dtype: str = ">u2") -> tuple:
    """A 64^2 array of 8^2 chunks, some chunks all fill (not stored), in `layout`, v3 chunks
    big-endian: (path, values)."""
    values = (np.add.outer(np.arange(64), 3 * np.arange(64)) % 251).astype(dtype)
    values[8:16, 16:32] = 7  # the fill value: two chunks not stored
    kwargs = {"chunks": (8, 8), "dtype": dtype, "fill_value": 7}
    big_endian = zarr.codecs.BytesCodec(endian="big")  # chunks the host library swaps as it places them
    if layout == "sharded":
        kwargs.update(shards=(32, 32), compressors=zarr.codecs.ZstdCodec(), serializer=big_endian)
    elif layout == "chunked":
        kwargs.update(compressors=zarr.codecs.ZstdCodec(), serializer=big_endian)
    elif layout == "v2-blosc":
        kwargs.update(zarr_format=2, compressors=numcodecs.Blosc("lz4", 5, shuffle=numcodecs.Blosc.SHUFFLE))
    else:
        kwargs.update(zarr_format=2, compressors=numcodecs.LZ4())
    path = tmp_path / f"{layout}.zarr"
    zarr.create_array(path, shape=values.shape, **kwargs)[...] = values
    return str(path), values


@pytest.mark.parametrize("parts", [1, 2])
@pytest.mark.parametrize("layout", ["sharded", "chunked", "v2-blosc", "v2-lz4"])
def test_small_chunk_windows_are_read_decoded_and_placed_in_one_host_library_call(tmp_path, monkeypatch, layout,
                                                                                   parts):
    """Windows of 4 chunks or more of at most DIRECT_CHUNK_BYTES go through the host library, one
    call a part, big-endian values swapped there; absent chunks and chunk files not there read as
    the fill value; the values are the Python path's and zarr-python's."""
    path, values = _small_chunk_array(tmp_path, layout)
    if layout == "chunked":
        os.remove(os.path.join(path, "c", "5", "5"))
        values = values.copy()
        values[40:48, 40:48] = 7
    arr = gpuzarr.open(path, device="cpu")
    reads = arr._reader.small
    assert reads.direct is not None
    monkeypatch.setattr(CpuDevice, "inline_parts", lambda self, n, chain: parts)
    codes = _direct_codes(monkeypatch)
    windows = [(slice(3, 50), slice(5, 61)), (slice(6, 20), slice(12, 34)), (9, slice(0, 64)), (slice(0, 16), 17)]
    got = [arr[w] for w in windows]
    assert codes == [0] * parts * 3  # the last window: 2 chunks, the Python path's
    direct, reads.direct = reads.direct, None
    try:
        python = [arr[w] for w in windows]
    finally:
        reads.direct = direct
    for w, a, b in zip(windows, got, python):
        assert a.dtype == b.dtype == arr.dtype and a.dtype.newbyteorder("=") == values.dtype.newbyteorder("=")
        np.testing.assert_array_equal(a, values[w], err_msg=str(w))
        np.testing.assert_array_equal(a, b, err_msg=str(w))
    assert len(codes) == parts * 3


def test_windows_of_few_chunks_are_read_by_python(tmp_path, monkeypatch):
    """Windows of fewer than DIRECT_MIN_CHUNKS chunks of at most DIRECT_CHUNK_BYTES, and of fewer
    than DIRECT_MIN_LARGE larger ones (NumPy places those faster than the host scatter; the
    tables cost more than they save), take the Python path; more go through the host library.
    Both read what zarr-python wrote."""
    from gpuzarr import small_read

    big = (np.arange(512 * 512, dtype="<u4").reshape(512, 512) * 2654435761 % 1000).astype("<u4")
    zarr.create_array(tmp_path / "big.zarr", shape=big.shape, chunks=(128, 128), dtype="<u4")[...] = big
    assert 128 * 128 * 4 > small_read.DIRECT_CHUNK_BYTES and small_read.DIRECT_MIN_LARGE == 9
    arr = gpuzarr.open(str(tmp_path / "big.zarr"), device="cpu")
    monkeypatch.setattr(CpuDevice, "inline_parts", lambda self, n, chain: 1)
    codes = _direct_codes(monkeypatch)
    np.testing.assert_array_equal(arr[5:200, 7:300], big[5:200, 7:300])  # 2 x 3 chunks
    assert codes == []
    np.testing.assert_array_equal(arr[5:300, 7:300], big[5:300, 7:300])  # 3 x 3
    assert codes == [0]
    path, values = _small_chunk_array(tmp_path, "chunked")
    arr = gpuzarr.open(path, device="cpu")
    codes.clear()
    np.testing.assert_array_equal(arr[0:16, 33:38], values[0:16, 33:38])
    assert codes == []
    np.testing.assert_array_equal(arr[0:16, 30:42], values[0:16, 30:42])
    assert codes == [0]


@pytest.mark.parametrize("layout", ["sharded", "chunked"])
def test_a_corrupt_small_chunk_is_given_back_by_the_library_and_named(tmp_path, monkeypatch, layout):
    """A frame the library's checks refuse, or that does not decode: the window is read again by
    the Python path, which names the chunk; the fallback is counted. Local data read as corrupt
    is read again twice (a writer may have replaced it meanwhile): shards then whole, through
    the general path."""
    path, values = _small_chunk_array(tmp_path, layout)
    key = os.path.join(path, "c", "0", "0")
    raw = bytearray(open(key, "rb").read())
    raw[0:4] = b"\xff" * 4  # the (first) frame's magic number
    open(key, "wb").write(bytes(raw))
    arr = gpuzarr.open(path, device="cpu")
    codes = _direct_codes(monkeypatch)
    before = sum(host_lib.FALLBACKS[host_lib.PART_FALLBACKS[c]] for c in (1, 2, 3))
    with pytest.raises(CorruptDataError, match=r"c/0/0.*; the same in 3 reads"):
        arr[0:40, 0:40]
    small = 1 if layout == "sharded" else 3  # the reads that take the small path
    assert len(codes) == small and len(set(codes)) == 1 and codes[0] in (1, 2, 3)  # each read: once, named
    assert sum(host_lib.FALLBACKS[host_lib.PART_FALLBACKS[c]] for c in (1, 2, 3)) == before + small


def test_chunk_files_not_in_the_page_cache_are_left_to_the_python_path(tmp_path, monkeypatch):
    """The library's call reads from the page cache only (RWF_NOWAIT): files the kernel dropped
    end it before decoding (NOT_CACHED, not a fallback) and the Python path hands them to the
    kernel at once. Real files, dropped from the page cache by POSIX_FADV_DONTNEED."""
    if not getattr(store_module, "_NOWAIT", 0):
        pytest.skip("no RWF_NOWAIT on this platform")
    path, values = _small_chunk_array(tmp_path, "chunked", "<u2")
    arr = gpuzarr.open(path, device="cpu")

    def drop(name: str) -> None:
        fd = os.open(name, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)

    probe = tmp_path / "probe"  # (a probing read of a chunk file may start the kernel reading it)
    probe.write_bytes(b"x" * 8192)
    drop(str(probe))
    fd = os.open(probe, os.O_RDONLY)
    try:
        os.preadv(fd, [bytearray(1)], 4096, store_module._NOWAIT)
        pytest.skip("this filesystem keeps the pages of a file it was told to drop: no cold file to read")
    except BlockingIOError:
        pass
    except OSError:
        pytest.skip("this filesystem refuses RWF_NOWAIT")
    finally:
        os.close(fd)
    for name in (os.path.join(path, "c", str(i), str(j)) for i in range(3) for j in range(3)):
        if os.path.exists(name):  # (c/1/2: all fill, not stored)
            drop(name)
    codes = _direct_codes(monkeypatch)
    before = dict(host_lib.FALLBACKS)
    np.testing.assert_array_equal(arr[0:24, 0:24], values[0:24, 0:24])
    assert codes == [host_lib.NOT_CACHED] and dict(host_lib.FALLBACKS) == before
    np.testing.assert_array_equal(arr[0:24, 0:24], values[0:24, 0:24])  # now cached: the library's
    assert codes == [host_lib.NOT_CACHED, 0]


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_where_chunks_land_is_the_same_by_integers_and_by_arrays(data):
    """fetch._landing: each chunk at its range's position plus its offset into the range, 0 for
    chunks in no range, whichever path computes it."""
    n = data.draw(st.integers(0, 40))
    chunks = data.draw(st.permutations(range(n)))
    taken = chunks[:data.draw(st.integers(0, n))]
    cuts = sorted(data.draw(st.lists(st.integers(0, len(taken)), max_size=6)))
    members = [list(taken[a:b]) for a, b in zip([0, *cuts], [*cuts, len(taken)]) if b > a]
    starts = [data.draw(st.integers(0, 1000)) for _ in members]
    positions = [data.draw(st.integers(0, 10**6)) for _ in members]
    offsets = np.array([data.draw(st.integers(0, 2000)) for _ in range(n)], np.int64)
    expected = np.zeros(n, np.int64)
    for idx, pos, start in zip(members, positions, starts):
        expected[idx] = pos + offsets[idx] - start
    for arrays_from in (0, 10**6):
        fetch_module.LANDING_ARRAYS, saved = arrays_from, fetch_module.LANDING_ARRAYS
        try:
            got = fetch_module._landing(members, positions, starts, offsets, n)
        finally:
            fetch_module.LANDING_ARRAYS = saved
        assert got.dtype == np.int64 and np.array_equal(got, expected)


# ---------------------------------------------------------------- small reads end to end


def _small_path_spy(monkeypatch) -> list:
    """Each window SmallReads read (a read it declines returns None before _read)."""
    taken: list = []
    original = SmallReads._read

    def spy(self, chunks, counts, out_shape, device):
        taken.append(len(chunks))
        return original(self, chunks, counts, out_shape, device)

    monkeypatch.setattr(SmallReads, "_read", spy)
    return taken


_LAYOUTS = st.sampled_from(["sharded", "sharded", "chunked", "v2"])


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_small_reads_equal_the_general_path_and_zarr(tmp_path_factory, data):
    """Windows of a few chunks (SmallReads) read what the general path (taken when a report is
    asked for) and zarr-python read, for any layout, dtype, byte order, codec and fill value,
    with shards and inner chunks absent."""
    ndim = data.draw(st.integers(1, 3))
    shape = tuple(data.draw(st.integers(1, 30)) for _ in range(ndim))
    chunks = tuple(data.draw(st.integers(1, 8)) for _ in range(ndim))
    layout = data.draw(_LAYOUTS)
    dtype = data.draw(st.sampled_from(["<u2", ">i4", "<f8", "u1", ">u8"] if layout != "v2" else ["<u2", "<i4", "<f8"]))
    fill = data.draw(st.integers(0, 100))
    kwargs: dict = {"fill_value": fill}
    if layout == "v2":
        kwargs.update(zarr_format=2, compressors=data.draw(st.sampled_from([None, numcodecs.Zstd()])))
    else:
        kwargs["compressors"] = data.draw(st.sampled_from([None, zarr.codecs.ZstdCodec(), zarr.codecs.GzipCodec()]))
        if layout == "sharded":
            kwargs["shards"] = tuple(c * data.draw(st.integers(1, 3)) for c in chunks)
    path = tmp_path_factory.mktemp("small-e2e") / "a.zarr"
    z = zarr.create_array(path, shape=shape, chunks=chunks, dtype=dtype, **kwargs)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    values = rng.integers(0, 200, shape).astype(dtype)
    values[rng.random(shape) < 0.3] = fill
    values[tuple(slice(0, s // 2) for s in shape)] = fill  # whole chunks (and shards) of the fill value: not stored
    z[...] = values
    arr = gpuzarr.open(str(path), device="cpu")
    split = data.draw(st.booleans())  # every window of two chunks or more decoded over the pool's threads
    for _ in range(4):
        sel = []
        for n in shape:
            if data.draw(st.booleans()) and data.draw(st.booleans()):
                sel.append(data.draw(st.integers(-n, n - 1)))
            else:
                start = data.draw(st.integers(0, n - 1))
                sel.append(slice(start, data.draw(st.integers(start, n)), data.draw(st.sampled_from([1, 1, 2, 3, 7]))))
        sel = tuple(sel)
        spans = [1 if isinstance(s, int) else len({e // c for e in range(s.start, s.stop, s.step)})
                 for s, c in zip(sel, chunks)]
        n = int(np.prod(spans))
        taken: list = []
        original = SmallReads._read
        SmallReads._read = lambda self, *args: taken.append(1) or original(self, *args)
        kept = cpu_module.PART_SECONDS, cpu_module.SCALES_NS, cpu_module.SPLIT_CHUNK_SECONDS
        if split:  # both paths' reads decoded on the calling thread spread over the pool
            cpu_module.PART_SECONDS, cpu_module.SCALES_NS, cpu_module.SPLIT_CHUNK_SECONDS = 1e-30, -1.0, 0.0
        try:
            small = arr[sel]
            SmallReads._read = original
            general = arr.read(sel, report=gpuzarr.ReadReport())
        finally:
            SmallReads._read = original
            cpu_module.PART_SECONDS, cpu_module.SCALES_NS, cpu_module.SPLIT_CHUNK_SECONDS = kept
        assert bool(taken) == (0 < n <= LOCATE_ARRAYS)  # (every window here within WHOLE_READ_MAX)
        assert small.dtype == general.dtype and small.shape == general.shape == values[sel].shape
        np.testing.assert_array_equal(small, general)
        np.testing.assert_array_equal(small, z[sel])
    # a batch of windows of one shape (an axis of each maybe a number): read as one small read
    size = [data.draw(st.integers(1, n)) for n in shape]
    point = [data.draw(st.booleans()) and data.draw(st.booleans()) for _ in shape]
    batch = []
    for _ in range(data.draw(st.integers(1, 4))):
        starts = [data.draw(st.integers(0, n - w)) for n, w in zip(shape, size)]
        batch.append(tuple(a if p else slice(a, a + w) for a, w, p in zip(starts, size, point)))
    crossed = [list(itertools.product(*[[s // c] if isinstance(s, int) else range(s.start // c, (s.stop - 1) // c + 1)
                                        for s, c in zip(w, chunks)])) for w in batch]
    n = sum(map(len, crossed))
    taken = []
    original = SmallReads._read
    SmallReads._read = lambda self, chunks, *args: taken.append(len(chunks)) or original(self, chunks, *args)
    try:
        small = arr.read_batch(batch)
    finally:
        SmallReads._read = original
    assert taken == ([len(set().union(*crossed))] if n <= LOCATE_ARRAYS else [])  # a shared chunk read once
    np.testing.assert_array_equal(small, arr.read_batch(batch, report=gpuzarr.ReadReport()))
    np.testing.assert_array_equal(small, np.stack([z[w] for w in batch]))


@pytest.mark.parametrize("layout", ["sharded", "v2"])
def test_a_window_of_a_few_chunks_takes_the_small_path_others_the_general(tmp_path, monkeypatch, layout):
    data = np.arange(64 * 64, dtype="u2").reshape(64, 64)
    kwargs = {"shards": (32, 32)} if layout == "sharded" else {"zarr_format": 2}
    z = zarr.create_array(tmp_path / "a.zarr", shape=data.shape, chunks=(4, 4), dtype="u2", **kwargs)
    z[...] = data
    arr = gpuzarr.open(str(tmp_path / "a.zarr"), device="cpu")
    taken = _small_path_spy(monkeypatch)
    np.testing.assert_array_equal(arr[3:20, 30:40], data[3:20, 30:40])
    np.testing.assert_array_equal(arr[5, 2:60], data[5, 2:60])
    np.testing.assert_array_equal(arr.read_batch([(slice(0, 9), slice(0, 9)), (slice(1, 10), slice(50, 59))]),
                                  np.stack([data[:9, :9], data[1:10, 50:59]]))
    np.testing.assert_array_equal(arr.read_windows([[0, 0], [20, 30]], (9, 9)), np.stack([data[:9, :9],
                                                                                           data[20:29, 30:39]]))
    np.testing.assert_array_equal(arr.vindex[[1, 9, 30], [4, 20, 50]], data[[1, 9, 30], [4, 20, 50]])
    np.testing.assert_array_equal(arr[3:20:2, 30:40], data[3:20:2, 30:40])
    np.testing.assert_array_equal(arr[3:60:9, 1:40:5], data[3:60:9, 1:40:5])  # steps past a chunk: 7 x 8
    # windows sharing chunks: each read and decoded once, placed in each
    np.testing.assert_array_equal(arr.read_windows([[0, 0], [2, 3]], (9, 9)), np.stack([data[:9, :9], data[2:11, 3:12]]))
    np.testing.assert_array_equal(arr.vindex[[1, 2, 3], [4, 5, 6]], data[[1, 2, 3], [4, 5, 6]])  # one chunk's points
    assert taken == [5 * 3, 15, 9 + 9, 9 + 9, 3, 5 * 3, 7 * 8, 9, 1]
    # not small: reversed, reported, into `out`, or more than LOCATE_ARRAYS chunks (placed)
    np.testing.assert_array_equal(arr[20:3:-2, 30:40], data[20:3:-2, 30:40])
    np.testing.assert_array_equal(arr.read((slice(0, 9), slice(0, 9)), report=gpuzarr.ReadReport()), data[:9, :9])
    out = np.zeros((9, 9), "u2")
    arr.read((slice(0, 9), slice(0, 9)), out=out)
    np.testing.assert_array_equal(out, data[:9, :9])
    np.testing.assert_array_equal(arr[...], data)
    windows = [(slice(a, a + 9), slice(0, 9)) for a in range(0, 48, 6)]  # 8 x 9 chunks
    np.testing.assert_array_equal(arr.read_batch(windows), np.stack([data[w] for w in windows]))
    assert taken == [5 * 3, 15, 9 + 9, 9 + 9, 3, 5 * 3, 7 * 8, 9, 1]


def test_a_corrupt_chunk_in_a_small_read_names_the_array_and_key(tmp_path):
    path = tmp_path / "a.zarr"
    z = zarr.create_array(path, shape=(32, 32), chunks=(8, 8), shards=(16, 16), dtype="u2",
                          compressors=zarr.codecs.ZstdCodec())
    z[...] = np.arange(32 * 32, dtype="u2").reshape(32, 32)
    shard = path / "c" / "0" / "1"
    raw = bytearray(shard.read_bytes())
    raw[10:30] = b"\xff" * 20  # inside the shard's first inner chunk
    shard.write_bytes(bytes(raw))
    arr = gpuzarr.open(str(path), device="cpu")
    with pytest.raises(CorruptDataError, match=r"a\.zarr.*c/0/1"):
        arr[0:4, 16:20]
    np.testing.assert_array_equal(arr[9:12, 0:12], z[9:12, 0:12])  # the other shards still read


def test_small_reads_on_many_threads_each_read_their_own_window(tmp_path):
    """Staging and decode buffers are per thread: windows read at once on 8 threads are each right."""
    from concurrent.futures import ThreadPoolExecutor

    data = np.random.default_rng(3).integers(0, 1 << 16, (256, 256)).astype("u2")
    z = zarr.create_array(tmp_path / "a.zarr", shape=data.shape, chunks=(16, 16), shards=(64, 64), dtype="u2")
    z[...] = data
    arr = gpuzarr.open(str(tmp_path / "a.zarr"), device="cpu")
    starts = np.random.default_rng(4).integers(0, 256 - 40, (400, 2)).tolist()

    def window(start):
        y, x = start
        return np.array_equal(arr[y:y + 40, x:x + 40], data[y:y + 40, x:x + 40])

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(window, starts))


def test_auto_on_a_gpu_reads_a_small_window_on_the_cpu_path_and_copies_it_up(tmp_path, monkeypatch):
    """device="auto" with a GPU (a stand-in engine): a window the CPU would decode takes the
    small path and is copied up once; a larger read goes to the GPU."""
    from gpu_standin import StandinEngine

    from gpuzarr.devices.base import AutoDevice, get_device
    from gpuzarr.devices.gpu import GpuDevice

    data = np.random.default_rng(2).integers(0, 1 << 16, (256, 256)).astype("u2")  # stored as large as it is
    z = zarr.create_array(tmp_path / "a.zarr", shape=data.shape, chunks=(32, 32), shards=(128, 128), dtype="u2")
    z[...] = data
    arr = gpuzarr.open(str(tmp_path / "a.zarr"), device="cpu")
    engine = StandinEngine()
    auto = AutoDevice(GpuDevice(engine), get_device("cpu"), cpu_below=64 << 10)
    uploads = []
    monkeypatch.setattr(auto, "upload", lambda host, out: uploads.append(host.shape) or host)
    taken = _small_path_spy(monkeypatch)
    np.testing.assert_array_equal(arr.read((slice(5, 40), slice(60, 90)), device=auto), data[5:40, 60:90])
    assert taken == [4] and uploads == [(35, 30)] and not engine.calls
    np.testing.assert_array_equal(arr.read((slice(0, 256), slice(0, 160)), device=auto), data[:, :160])
    assert taken == [4] and engine.calls  # 40 chunks of 2 KiB: past cpu_below, the GPU's


def _zstd_window_array(tmp_path, chunks=(256, 256), compressors=None) -> tuple:
    data = np.random.default_rng(5).integers(0, 1 << 12, (512, 512)).astype("u2")
    z = zarr.create_array(tmp_path / "w.zarr", shape=data.shape, chunks=chunks, shards=(512, 512), dtype="u2",
                          compressors=compressors or zarr.codecs.ZstdCodec())
    z[...] = data
    return gpuzarr.open(str(tmp_path / "w.zarr"), device=CpuDevice(threads=2)), data


def test_a_window_of_large_zstd_chunks_is_decoded_over_two_threads(tmp_path, monkeypatch):
    """4 chunks of 128 KiB of zstd: ~0.6 ms of decoding, in two parts, one on a pool thread."""
    arr, data = _zstd_window_array(tmp_path)
    threads: list = []
    real = SmallReads._read
    caller, other_started = threading.get_ident(), threading.Event()

    def counted(work, part):
        threads.append(threading.get_ident())
        if threads[-1] == caller:  # a part not started by a worker when this one ends is taken back here:
            other_started.wait(5)  # wait for the worker (its wake is the kernel's, however late)
        else:
            other_started.set()
        work(part)

    def spy(self, chunks, counts, out_shape, device):
        original = device.pool.run_parts

        def run_parts(work, parts):
            threads.append([len(p) for p in parts])
            return original(lambda part: counted(work, part), parts)

        device.pool.run_parts = run_parts
        try:
            return real(self, chunks, counts, out_shape, device)
        finally:
            del device.pool.run_parts

    monkeypatch.setattr(SmallReads, "_read", spy)
    np.testing.assert_array_equal(arr[100:400, 50:300], data[100:400, 50:300])
    assert threads[0] == [2, 2] and len(set(threads[1:])) == 2  # both parts ran, on two threads


@pytest.mark.parametrize("threads, compressors, parts", [
    (2, None, 2),  # zstd: bound by the core
    (1, None, 1),  # one thread
    (8, None, 4),  # no more parts than chunks
    (2, zarr.codecs.BloscCodec(cname="lz4"), 1),  # blosc-lz4: bound by memory, two at once slowed each other
])
def test_a_window_is_split_where_its_decoders_scale_and_parts_pay(tmp_path, threads, compressors, parts):
    arr, _ = _zstd_window_array(tmp_path, compressors=compressors)
    device, chain = CpuDevice(threads), arr._reader.locator.leaf_chain
    assert device.inline_parts(4, chain) == parts
    assert device.inline_parts(1, chain) == 1  # one chunk
    small_chunks, _ = _zstd_window_array(tmp_path / "s", chunks=(16, 16))
    assert device.inline_parts(4, small_chunks._reader.locator.leaf_chain) == 1  # 512 B chunks: a part would not pay


def test_a_corrupt_chunk_in_a_pool_part_names_its_key(tmp_path):
    arr, data = _zstd_window_array(tmp_path, chunks=(128, 128))
    shard = tmp_path / "w.zarr" / "c" / "0" / "0"
    raw = bytearray(shard.read_bytes())
    index = np.frombuffer(raw[-(16 * 16 + 4):-4], "<u8").reshape(16, 2)  # (offset, size) per inner chunk
    start = int(index[14, 0])  # chunk (3, 2): the 8th of the window, in the second part (the pool's)
    raw[start:start + 8] = b"\xff" * 8  # its zstd frame header
    shard.write_bytes(bytes(raw))
    with pytest.raises(CorruptDataError, match=r"w\.zarr.*c/0/0"):
        arr[200:512, 200:512]  # 9 chunks, in two parts


@pytest.mark.parametrize("layout", ["chunked", "sharded", "v2"])
def test_a_small_read_decodes_a_zstd_chunk_only_as_far_as_its_window(tmp_path, monkeypatch, layout):
    """A small read's chunks of several zstd blocks (128 KiB each at most) are decoded up to the
    block that holds the window's last byte (host_lib.decode_span), whatever the byte order: the
    same data as zarr-python's, the blocks past it never decoded (a frame whose last block is
    damaged still gives a window at its start, and is named when a window reaches the block)."""
    data = np.random.default_rng(5).integers(0, 3000, (300, 240)).astype(">u2" if layout == "v2" else "<u2")
    path = str(tmp_path / "a.zarr")
    kw = ({"zarr_format": 2, "compressors": numcodecs.Zstd()} if layout == "v2"
          else {"compressors": zarr.codecs.ZstdCodec(), "shards": (300, 240) if layout == "sharded" else None})
    z = zarr.create_array(path, shape=data.shape, chunks=(300, 240), dtype=data.dtype, **kw)  # 144,000 B: 2 blocks
    z[...] = data
    taken = _small_path_spy(monkeypatch)
    prefixes: list = []  # the last byte + 1 each chunk is decoded for
    decode_span = host_lib.decode_span
    monkeypatch.setattr(host_lib, "decode_span", lambda *a: prefixes.append(a[5]) or decode_span(*a))
    arr = gpuzarr.open(path, device="cpu")
    # rows of 480 bytes: the first block (131,072 bytes) ends at row 273's 16th element
    windows = [(slice(0, 10), slice(3, 7)), (slice(100, 273), slice(0, 240)), (273, 15), (273, 16), (5, 239),
               (slice(273, 300), slice(1, 2))]
    for window in windows:
        np.testing.assert_array_equal(arr[window], data[window], err_msg=str(window))
    assert len(taken) == len(windows), "every window a small read"
    assert prefixes == [9 * 480 + 7 * 2, 273 * 480, 131072, 131074, 6 * 480, 299 * 480 + 2 * 2], \
        "each chunk decoded as far as its window reads"
    chunk = os.path.join(path, "0.0" if layout == "v2" else "c/0/0")
    raw = bytearray(open(chunk, "rb").read())  # the frame first (a shard's index after it)
    a, b = _last_zstd_block(raw)
    raw[a:b] = b"\xff" * (b - a)  # a garbled last block: its headers, and the frame's, as they were
    open(chunk, "wb").write(bytes(raw))
    with pytest.raises(RuntimeError):
        numcodecs.Zstd().decode(bytes(raw[:b + 4 * ((raw[4] >> 2) & 1)]))
    arr = gpuzarr.open(path, device="cpu")
    np.testing.assert_array_equal(arr[0:10, 3:7], data[0:10, 3:7])
    with pytest.raises(CorruptDataError, match="0.0" if layout == "v2" else "c/0/0"):
        arr[290:300, 0:5]


def test_a_small_read_decodes_a_blosc_chunk_only_in_the_blocks_of_its_window(tmp_path, monkeypatch):
    """A small read's blosc chunk is decoded only in the blocks that hold its window
    (host_lib.decode_span: blosc_getitem): with the chunk's first block garbled, windows in later
    blocks read right, through the small path; one that reaches the first block is named."""
    if bytes_to_bytes._blosc_getitem() is None:
        pytest.skip("this numcodecs build exports no blosc_getitem")
    data = (np.add.outer(np.arange(512), np.arange(512)) % 89 * 3).astype("<u2")
    path = str(tmp_path / "a.zarr")
    codec = numcodecs.Blosc("lz4", 5, shuffle=numcodecs.Blosc.BITSHUFFLE)
    zarr.create_array(path, shape=data.shape, chunks=(512, 512), dtype=data.dtype, zarr_format=2,
                      compressors=codec)[...] = data
    chunk = os.path.join(path, "0.0")
    raw = bytearray(open(chunk, "rb").read())
    rows = int.from_bytes(raw[8:12], "little") // 1024  # a block's rows
    assert rows < 512, "the chunk is several blocks"
    first = int.from_bytes(raw[16:20], "little")
    raw[first + 4:first + 24] = b"\xff" * 20  # block 0's first stream garbled
    open(chunk, "wb").write(bytes(raw))
    taken = _small_path_spy(monkeypatch)
    arr = gpuzarr.open(path, device="cpu")
    windows = [(slice(rows, rows + 3), slice(5, 9)), (511, slice(None)), (slice(rows + 7, 500), 3)]
    for window in windows:
        np.testing.assert_array_equal(arr[window], data[window], err_msg=str(window))
    assert len(taken) == len(windows), "every window a small read"
    with pytest.raises(CorruptDataError, match=r"0\.0"):
        arr[rows - 1, 0]


def _last_zstd_block(frame: bytearray) -> tuple[int, int]:
    """Where the content of the last block of the zstd frame at `frame`'s start lies (RFC 8878
    section 3.1.1): a compressed block's."""
    fhd = frame[4]
    single = (fhd >> 5) & 1
    pos = 5 + (1 - single) + (0, 1, 2, 4)[fhd & 3] + (single, 2, 4, 8)[fhd >> 6]
    while True:
        head = int.from_bytes(frame[pos:pos + 3], "little")
        kind, size = (head >> 1) & 3, head >> 3
        if head & 1:
            assert kind == 2, "a compressed last block"
            return pos + 3, pos + 3 + size
        pos += 3 + (1 if kind == 1 else size)


@pytest.mark.parametrize("host", [True, False], ids=["host-library", "python"])
def test_chunk_files_replaced_or_deleted_between_sizing_and_reading(tmp_path, monkeypatch, host):
    """zarr-python writes a chunk file as a new one renamed over the old, and deletes one that
    holds only the fill value: a file sized by its path (past the FILES_OPEN held open) and so
    replaced or deleted before it is read is read again, whole, its size and bytes from one
    file: each chunk one version of its file (the old size with the new bytes raised
    CorruptDataError, found by a differential run against a writer)."""
    old = np.arange(100 * 100, dtype="u2").reshape(100, 100)
    new = (old * 7 + 1).astype("u2")
    path = tmp_path / "a.zarr"
    z = zarr.create_array(path, shape=old.shape, chunks=(10, 10), dtype="u2", zarr_format=2, fill_value=5)
    z[:] = old
    zarr.create_array(tmp_path / "b.zarr", shape=old.shape, chunks=(10, 10), dtype="u2", zarr_format=2,
                      compressors=[numcodecs.Zstd(level=3)])[:] = new  # other sizes than a.zarr's
    if not host:
        monkeypatch.setattr(store_module.host_lib, "available", lambda what: False)
    arr = gpuzarr.open(str(path), device="cpu")
    keys = [f"{i}.{j}" for i in range(10) for j in range(10)]
    replaced, deleted = keys[70:80], keys[90:95]  # sized by their path: past the first FILES_OPEN
    assert store_module.FILES_OPEN <= 70
    lay_out = fetch_module._lay_out

    def writer_between(sizes, alloc, align):
        for key in replaced:
            os.replace(tmp_path / "b.zarr" / key, path / key)
        for key in deleted:
            os.remove(path / key)
        monkeypatch.setattr(fetch_module, "_lay_out", lay_out)
        return lay_out(sizes, alloc, align)

    monkeypatch.setattr(fetch_module, "_lay_out", writer_between)
    loc = arr._reader.locator.locate(np.array([[i, j] for i in range(10) for j in range(10)]))
    missing: list = []
    batch = fetch_module.fetch(arr.store, loc, np.arange(100), missing=missing)
    assert missing == deleted
    for k, key in enumerate(keys):
        if key in deleted:
            assert not batch.present[k]
        else:
            assert bytes(batch.chunk(k)) == (path / key).read_bytes(), key


@pytest.mark.parametrize("code", ["EBUSY", "ENOMEM", "EIO", "ESTALE"])
def test_a_chunk_file_read_error_is_a_store_error_never_the_fill_value(tmp_path, monkeypatch, code):
    """Errors of the host library's batch read other than a vanished file raise, whatever their
    errno (an even one, EBUSY or ENOMEM, was masked out by a bitwise AND and read as a missing
    chunk: the fill value); a file replaced since it was sized (ESTALE) is read again instead."""
    import errno

    data = np.arange(40 * 40, dtype="u2").reshape(40, 40)
    z = zarr.create_array(tmp_path / "a.zarr", shape=data.shape, chunks=(5, 5), dtype="u2", zarr_format=2,
                          fill_value=7)
    z[:] = data  # 64 chunk files: read by the host library's batch calls
    real = store_module._read_split

    def failing(files, offsets, sizes, addresses, flags):
        counts, errors = real(files, offsets, sizes, addresses, flags)
        counts, errors = counts.copy(), errors.copy()
        counts[3], errors[3] = -1, getattr(errno, code)
        return counts, errors

    monkeypatch.setattr(store_module, "_read_split", failing)
    arr = gpuzarr.open(str(tmp_path / "a.zarr"), device="cpu")
    loc = arr._reader.locator.locate(np.array([[i, j] for i in range(8) for j in range(8)]))
    if code == "ESTALE":
        batch = fetch_module.fetch(arr.store, loc, np.arange(64))
        assert batch.present.all() and bytes(batch.chunk(3)) == (tmp_path / "a.zarr" / loc.keys[3]).read_bytes()
    else:
        with pytest.raises(gpuzarr.StoreError, match=rf"{loc.keys[3]}: read failed"):
            fetch_module.fetch(arr.store, loc, np.arange(64))


@pytest.mark.parametrize("layout", ["transpose", "order-F", "sharded-transpose", "small-transposed-chunks",
                                    "large-chunks", "multi-block", "many-chunks", "many-sharded-chunks"])
def test_windows_the_small_path_takes_read_as_zarr_python_does(tmp_path, layout):
    """Chunks in a transpose's axis order (placed by the host scatter walking them in their
    stored order: chunk by chunk once decoded, or small ones read, decoded and placed in one
    call), and
    windows of up to LOCATE_ARRAYS chunks whatever their predicted decode (chunks of 256 KiB;
    25 and 42 of 32 KiB; 64 of 8 KiB in shards; zstd chunks of several blocks decoded only as
    far as a window reads) take the small path, and read what zarr-python reads."""
    rng = np.random.default_rng(4)
    kw: dict = {"compressors": zarr.codecs.ZstdCodec(level=1)}
    if layout == "order-F":
        data = rng.integers(0, 60000, (300, 260)).astype("<u2")
        kw = {"compressors": numcodecs.Zstd(level=1), "zarr_format": 2, "order": "F"}
        chunks = (128, 96)
    elif layout in ("transpose", "sharded-transpose", "small-transposed-chunks"):
        data = rng.integers(0, 60000, (40, 300, 260)).astype(">i4")
        kw["filters"] = [zarr.codecs.TransposeCodec(order=(2, 0, 1))]
        kw["serializer"] = zarr.codecs.BytesCodec(endian="big")
        # (192 KiB chunks: a window of 8 decodes 1.5 MiB, within WHOLE_READ_MAX)
        chunks = (8, 16, 24) if layout == "small-transposed-chunks" else (16, 64, 48)
        if layout == "sharded-transpose":
            kw["shards"] = (32, 128, 96)
    elif layout == "large-chunks":  # 4 x 256 KiB: predicted beyond an inline decode
        data = (rng.random((1024, 1024)) > 0.5)
        chunks = (512, 512)
    elif layout == "many-chunks":  # 25 and 42 chunks of 32 KiB: predicted beyond an inline decode
        data = rng.integers(0, 60000, (1024, 1024)).astype("<u2")
        chunks = (128, 128)
    elif layout == "many-sharded-chunks":  # 64 chunks of 8 KiB, in 4 shards
        data = rng.integers(0, 60000, (1024, 1024)).astype("<u2")
        chunks = (64, 64)
        kw["shards"] = (256, 256)
    else:  # 640 KiB chunks, 5 zstd blocks: a window near their top decodes one or two
        data = rng.integers(0, 60000, (1280, 640)).astype("<u2")
        chunks = (512, 640)
    path = str(tmp_path / "a.zarr")
    z = zarr.create_array(path, shape=data.shape, chunks=chunks, dtype=data.dtype, fill_value=0, **kw)
    z[...] = data
    arr = gpuzarr.open(path, device="cpu")
    taken = []
    real = SmallReads.read
    windows = {"order-F": [(slice(100, 170), slice(50, 140)), (slice(0, 300), slice(255, 260)),
                           (slice(3, 290, 5), slice(7, 250, 2))],
               "large-chunks": [(slice(300, 700), slice(400, 620))],
               "many-chunks": [(slice(100, 612), slice(3, 515)), (slice(1, 1000), slice(130, 870))],
               "many-sharded-chunks": [(slice(200, 648), slice(120, 568))],
               "multi-block": [(slice(500, 530), slice(0, 640)), (slice(3, 9), slice(600, 640))]
               }.get(layout, [(slice(10, 30), slice(100, 170), slice(50, 140)), (0, slice(0, 300), 259),
                              (slice(1, 40, 3), slice(5, 150, 2), slice(40, 60))])
    if layout == "small-transposed-chunks":
        windows = [(slice(10, 20), slice(100, 140), slice(50, 90)), (3, slice(0, 40), 259)]
    placed = []  # the host library's calls
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(SmallReads, "read", lambda self, *a: (lambda r: taken.append(r is not None) or r)(real(self, *a)))
        for name in ("scatter", "read_decode_scatter"):
            mp.setattr(host_lib, name, lambda *a, _real=getattr(host_lib, name), _name=name: (
                placed.append(_name), _real(*a))[1])
        for window in windows:
            np.testing.assert_array_equal(arr[window], z[window])
    assert taken and all(taken), "a window took the general path"
    if layout in ("transpose", "sharded-transpose", "order-F", "small-transposed-chunks") and host_lib.built():
        assert ("read_decode_scatter" if layout.startswith("small") else "scatter") in placed


def test_windows_of_large_chunks_past_whole_read_max_on_one_thread_take_the_general_path(tmp_path):
    """Windows take the small path whatever their predicted decode; one decoding more than
    WHOLE_READ_MAX bytes on one thread (a memory-bound decoder's: CpuDevice.inline_parts) goes
    to the general path, whose tasks use every core; on several threads it stays small however
    large. All read what zarr-python reads."""
    from gpuzarr import small_read

    data = np.random.default_rng(9).integers(0, 60000, (1024, 1024)).astype("<u2")
    path = str(tmp_path / "a.zarr")
    z = zarr.create_array(path, shape=data.shape, chunks=(256, 256), dtype=data.dtype, fill_value=0,
                          compressors=zarr.codecs.ZstdCodec(level=1))  # 16 chunks of 128 KiB
    z[...] = data
    arr = gpuzarr.open(path, device="cpu")
    real = SmallReads.read
    windows = [(slice(100, 600), slice(3, 700)),  # 3 x 3 chunks decoded, 1.125 MiB (680 KiB read)
               (slice(1, 1024), slice(0, 1000)),  # 16 chunks, 2 MiB
               (slice(250, 1020), slice(250, 262)),  # 8 chunks, 1 MiB (18 KiB read)
               (Ellipsis,)]  # 16 chunks, 2 MiB
    for most, parts, small in [(2 << 20, 1, [True] * 4), (1 << 20, 1, [False, False, True, False]),
                               (1 << 20, 2, [True] * 4)]:
        taken = []
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(SmallReads, "read",
                       lambda self, *a: (lambda r: taken.append(r is not None) or r)(real(self, *a)))
            mp.setattr(small_read, "WHOLE_READ_MAX", most)
            mp.setattr(CpuDevice, "inline_parts", lambda self, n, chain, _p=parts: _p)
            for window in windows:
                np.testing.assert_array_equal(arr[window], data[window])
        assert taken == small, (most, parts)
