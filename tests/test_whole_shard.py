"""Whole-shard reads (gpuzarr.fetch.WHOLE_SHARD_FRACTION): on stores where a request costs more
than its bytes, a shard whose index is not cached and of which a read wants most of the chunks
is read in ONE request, index included, and its chunks are served from the bytes in hand; a
read of a few chunks still reads the index, then those chunks. Counted through a Store whose
every call is recorded, over fsspec's memory filesystem and over local files read through the
generic fsspec path (not LocalStore, which is never read whole)."""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import fsspec
import numpy as np
import pytest
import zarr
from corrupt import expected, make_nested, make_sharded, put_index, read_index
from fsspec.implementations.local import LocalFileSystem

import gpuzarr
from gpuzarr import fetch as fetch_module
from gpuzarr.errors import CorruptDataError
from gpuzarr.store import LocalStore, Store


class CountingStore(Store):
    """A generic fsspec store that records every call: the ranges of each, in order."""

    def __init__(self, fs, root):
        super().__init__(fs, root)
        self.calls: list[list] = []

    def read_ranges(self, ranges):
        self.calls.append(list(ranges))
        return super().read_ranges(ranges)

    def read_indexes(self, ranges):  # Store.read_indexes calls read_ranges: counted once here
        self.calls.append(list(ranges))
        return Store.read_ranges(self, ranges)


def _whole(r) -> bool:
    return r[1] == 0 and r[2] is None


def _write(path: Path, data: np.ndarray, shards, chunks, index_location="end", codec="zstd") -> zarr.Array:
    compressors = {"zstd": [zarr.codecs.ZstdCodec(level=1)], "raw": None}[codec]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = zarr.create_array(str(path), shape=data.shape, chunks=chunks, shards={"shape": shards,
                              "index_location": index_location}, dtype=data.dtype, fill_value=0,
                              compressors=compressors)
        a[...] = data
    return a


def _image(shape, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (np.add.outer(np.arange(shape[0]), np.arange(shape[1])) % 4096 + rng.integers(0, 64, shape)).astype("u2")


def _counting(path: Path, where: str, name: str) -> CountingStore:
    """The array at `path` behind a CountingStore: in fsspec's memory filesystem, or the local
    files themselves through the generic (non-LocalStore) fsspec path."""
    if where == "local-fsspec":
        return CountingStore(LocalFileSystem(), str(path))
    fs = fsspec.filesystem("memory")
    for root, _, files in os.walk(path):
        for file in files:
            fs.pipe(f"/{name}/{os.path.relpath(os.path.join(root, file), path)}", Path(root, file).read_bytes())
    return CountingStore(fs, f"/{name}")


def _open(store: CountingStore, **kw) -> gpuzarr.Array:
    arr = gpuzarr.open(store, device="cpu", **kw)
    store.calls.clear()  # metadata
    return arr


WHERE = ["memory", "local-fsspec"]


@pytest.mark.parametrize("where", WHERE)
@pytest.mark.parametrize("index_location", ["start", "end"])
def test_a_full_read_is_one_request_per_shard_bit_identical(tmp_path, where, index_location):
    data = _image((256, 256))
    a = _write(tmp_path / "a", data, (64, 64), (16, 16), index_location)
    store = _counting(tmp_path / "a", where, f"full-{index_location}-{tmp_path.name}")
    arr = _open(store)
    got = arr[...]
    assert got.dtype == a.dtype and got.tobytes() == a[...].tobytes()
    assert len(store.calls) == 1, "no second round trip for the chunks"
    (ranges,) = store.calls
    assert len(ranges) == 16 and all(_whole(r) for r in ranges), "one whole-object request per shard"
    assert sorted(r[0] for r in ranges) == sorted(f"c/{i}/{j}" for i in range(4) for j in range(4))


@pytest.mark.parametrize("where", WHERE)
def test_one_chunk_reads_the_index_then_the_chunk(tmp_path, where):
    data = _image((256, 256))
    _write(tmp_path / "a", data, (64, 64), (16, 16))
    store = _counting(tmp_path / "a", where, f"one-{tmp_path.name}")
    arr = _open(store)
    np.testing.assert_array_equal(arr[16:32, 0:16], data[16:32, 0:16])
    index_call, chunk_call = store.calls
    assert len(index_call) == 1 and not _whole(index_call[0]) and index_call[0][1] < 0  # the index, from the end
    assert len(chunk_call) == 1 and not _whole(chunk_call[0])


def test_below_the_threshold_the_index_is_read_first_at_it_the_whole_shard(tmp_path):
    """A shard of 4x4 chunks: 8 of them (1/2) are read whole, 7 are not."""
    data = _image((64, 64))
    _write(tmp_path / "a", data, (64, 64), (16, 16))
    store = _counting(tmp_path / "a", "memory", f"threshold-{tmp_path.name}")
    arr = gpuzarr.open(store, device="cpu", settings=gpuzarr.Settings(index_cache_bytes=0))
    store.calls.clear()
    np.testing.assert_array_equal(arr[0:32, :], data[0:32, :])  # 8 of 16 chunks
    assert len(store.calls) == 1 and _whole(store.calls[0][0])
    store.calls.clear()
    np.testing.assert_array_equal(arr[0:28, 0:48], data[0:28, 0:48])  # 2 x 3 = 6 chunks
    assert len(store.calls) == 2 and not _whole(store.calls[0][0])


def test_a_few_chunks_wanting_no_shard_mostly_are_located_as_the_array_path_does(tmp_path, monkeypatch):
    """Fewer chunks than WHOLE_SHARD_FRACTION of the smallest shard (here an edge shard of 1 x 3
    chunks) can want no shard mostly: they take locate's path for a few chunks, which finds
    what the array path finds, the reads included; more take the array path, which may read a
    shard whole."""
    data = _image((70, 50))
    _write(tmp_path / "a", data, (32, 32), (8, 8))
    store = _counting(tmp_path / "a", "memory", f"few-{tmp_path.name}")
    arr = _open(store, settings=gpuzarr.Settings(index_cache_bytes=0))
    locator = arr._reader.locator
    assert locator._fewest_inside == 3  # the shard at (64:70, 32:50): 1 x 3 chunks
    small = []
    real = type(locator)._locate_small
    monkeypatch.setattr(type(locator), "_locate_small", lambda self, c: small.append(len(c)) or real(self, c))
    rng = np.random.default_rng(0)
    for _ in range(100):
        coords = rng.integers(0, (9, 7), size=(int(rng.integers(1, 4)), 2))
        store.calls.clear()
        got = locator.locate(coords)
        calls = store.calls[:]
        with monkeypatch.context() as m:
            m.setattr(locator, "_fewest_inside", 0)
            store.calls.clear()
            ref = locator.locate(coords)
            assert store.calls == calls
        for name in ("keys", "offsets", "sizes", "present", "key_ids"):
            assert np.array_equal(getattr(got, name), getattr(ref, name)), name
        assert got.missing == ref.missing and got.prefetched.keys() == ref.prefetched.keys()
    assert small and set(small) == {1}  # 1 < 1.5 chunks; 2 or 3 may want the edge shard mostly
    np.testing.assert_array_equal(arr[64:70, 32:40], data[64:70, 32:40])  # 1 of its 3: index, then the chunk
    store.calls.clear()
    np.testing.assert_array_equal(arr[64:70, 32:48], data[64:70, 32:48])  # 2 of 3: the shard whole
    assert len(store.calls) == 1 and _whole(store.calls[0][0])


def test_the_index_read_whole_is_cached(tmp_path):
    data = _image((256, 256))
    _write(tmp_path / "a", data, (64, 64), (16, 16))
    store = _counting(tmp_path / "a", "memory", f"cached-{tmp_path.name}")
    arr = _open(store)
    np.testing.assert_array_equal(arr[...], data)
    store.calls.clear()
    np.testing.assert_array_equal(arr[100:110, 5:70], data[100:110, 5:70])
    assert len(store.calls) == 1 and not any(_whole(r) for r in store.calls[0]), "only the chunks: indexes cached"
    store.calls.clear()
    np.testing.assert_array_equal(arr[...], data)  # cached indexes: the two-step read's data step alone
    (ranges,) = store.calls
    assert len(ranges) == 16 and not any(_whole(r) for r in ranges)


def test_edge_shards_count_only_their_chunks_inside_the_array(tmp_path):
    """Shards at the edge of an (80, 80) array hold 1 or 2 columns/rows of chunks of their 4:
    read in full, they are read whole too."""
    data = _image((80, 80))
    _write(tmp_path / "a", data, (64, 64), (16, 16))
    store = _counting(tmp_path / "a", "memory", f"edge-{tmp_path.name}")
    arr = _open(store)
    np.testing.assert_array_equal(arr[...], data)
    (ranges,) = store.calls
    assert len(ranges) == 4 and all(_whole(r) for r in ranges)


def test_missing_shards_read_as_fill(tmp_path):
    data = _image((256, 256))
    a = _write(tmp_path / "a", data, (64, 64), (16, 16))
    os.remove(tmp_path / "a" / "c" / "1" / "2")
    want = a[...]  # zarr-python: the missing shard is the fill value
    assert (want[64:128, 128:192] == 0).all()
    store = _counting(tmp_path / "a", "memory", f"missing-{tmp_path.name}")
    arr = _open(store)
    report = gpuzarr.ReadReport()
    got = arr.read((slice(None), slice(None)), report=report)
    np.testing.assert_array_equal(got, want)
    assert len(store.calls) == 1 and "c/1/2" in report.missing_keys
    store.calls.clear()
    np.testing.assert_array_equal(arr[64:80, 128:144], 0)  # the cache remembers it is missing
    assert store.calls == []


def test_nested_sharding_reads_only_the_outer_shards_and_caches_every_index(tmp_path):
    path = make_nested(tmp_path / "a")
    store = _counting(path, "memory", f"nested-{tmp_path.name}")
    arr = _open(store)
    np.testing.assert_array_equal(arr[...], expected())
    (ranges,) = store.calls
    assert len(ranges) == 4 and all(_whole(r) for r in ranges), "inner indexes come from the bytes in hand"
    store.calls.clear()
    np.testing.assert_array_equal(arr[5:7, 1:3], expected()[5:7, 1:3])  # inner indexes were cached too
    assert len(store.calls) == 1 and not any(_whole(r) for r in store.calls[0])


@pytest.mark.parametrize("index_location, problem", [("start", r"entry 3 .*points past the end of the shard"),
                                                     ("end", r"shard index: crc32c: checksum mismatch")])
def test_a_truncated_shard_read_whole_is_corrupt_data_naming_the_key(tmp_path, index_location, problem):
    """Index at the start: it survives and points past the end of the bytes read; at the end: the
    index itself is cut."""
    path = make_sharded(tmp_path / "a", index_location=index_location)
    shard = path / "c" / "1" / "0"
    shard.write_bytes(shard.read_bytes()[:-5])
    store = _counting(path, "memory", f"trunc-{index_location}-{tmp_path.name}")
    arr = _open(store)
    with pytest.raises(CorruptDataError, match=f"c/1/0: .*{problem}"):
        arr[...]
    assert len(store.calls) == 1 and all(_whole(r) for r in store.calls[0])


def test_a_shard_shorter_than_its_index_is_corrupt_data(tmp_path):
    path = make_sharded(tmp_path / "a", index_location="start")
    (path / "c" / "0" / "1").write_bytes(b"\x00" * 10)
    arr = _open(_counting(path, "memory", f"short-{tmp_path.name}"))
    with pytest.raises(CorruptDataError, match=r"c/0/1: shard index is 10 bytes.*truncated"):
        arr[...]


def test_an_index_pointing_past_the_shard_is_corrupt_data(tmp_path):
    path = make_sharded(tmp_path / "a")
    shard = path / "c" / "0" / "0"
    buf = shard.read_bytes()
    idx = read_index(buf)
    idx[3, 1] += 1000
    shard.write_bytes(put_index(buf, idx))
    arr = _open(_counting(path, "memory", f"past-{tmp_path.name}"))
    with pytest.raises(CorruptDataError, match=r"c/0/0: shard index entry 3 .*points past the end"):
        arr[...]


def test_whole_shards_beyond_the_byte_budget_are_read_in_two_steps(tmp_path, monkeypatch):
    """WHOLE_SHARD_BYTES bounds what one read holds: shards past it read index, then chunks, and
    their index requests go out in the same call as the whole shards."""
    data = _image((256, 256))
    _write(tmp_path / "a", data, (64, 64), (16, 16))
    shard_estimate = 64 * 64 * 2 + 16 * 16 + 4  # decoded u2 + the index (16 entries, crc32c)
    monkeypatch.setattr(fetch_module, "WHOLE_SHARD_BYTES", 5 * shard_estimate)
    store = _counting(tmp_path / "a", "memory", f"budget-{tmp_path.name}")
    arr = _open(store)
    np.testing.assert_array_equal(arr[...], data)
    first, second = store.calls
    assert len(first) == 16 and sum(_whole(r) for r in first) == 5
    assert len(second) == 11 and not any(_whole(r) for r in second)
    assert {r[0] for r in second} == {r[0] for r in first if not _whole(r)}


def test_chunks_of_a_whole_shard_across_many_batches(tmp_path):
    """Small batches: each batch's fetch slices the same shard bytes; nothing is read again."""
    data = _image((256, 256))
    _write(tmp_path / "a", data, (128, 128), (16, 16))
    store = _counting(tmp_path / "a", "memory", f"batches-{tmp_path.name}")
    arr = _open(store, settings=gpuzarr.Settings(batch_bytes=2048))
    report = gpuzarr.ReadReport()
    np.testing.assert_array_equal(arr.read((slice(None), slice(None)), report=report), data)
    assert report.batches > 4 and len(store.calls) == 1


def test_read_batch_wanting_most_of_each_shard(tmp_path):
    data = _image((256, 256))
    _write(tmp_path / "a", data, (64, 64), (16, 16))
    store = _counting(tmp_path / "a", "memory", f"batch-{tmp_path.name}")
    arr = _open(store)
    corners = [(0, 0), (70, 70), (140, 10), (190, 190)]
    got = arr.read_batch([(slice(y, y + 60), slice(x, x + 60)) for y, x in corners])
    np.testing.assert_array_equal(got, np.stack([data[y:y + 60, x:x + 60] for y, x in corners]))
    # shards a window covers (c/0/0 by the first) are read whole; of the others the windows
    # want a few chunks: index, then chunks
    assert ("c/0/0", 0, None) in store.calls[0] and len(store.calls) == 2
    assert "c/0/0" not in {r[0] for r in store.calls[1]}


def test_local_store_is_never_read_whole(tmp_path, monkeypatch):
    data = _image((256, 256))
    _write(tmp_path / "a", data, (64, 64), (16, 16))
    seen = []
    real = LocalStore.read_indexes

    def spy(self, ranges):
        seen.extend(ranges)
        return real(self, ranges)

    monkeypatch.setattr(LocalStore, "read_indexes", spy)
    arr = gpuzarr.open(str(tmp_path / "a"), device="cpu")
    assert isinstance(arr.store, LocalStore)
    np.testing.assert_array_equal(arr[...], data)
    assert len(seen) == 16 and not any(_whole(r) for r in seen)


def test_fill_chunks_inside_a_whole_shard(tmp_path):
    """Inner chunks never written (the fill value) have no bytes in the shard; the rest read."""
    data = _image((128, 128))
    data[0:16, 0:32] = 0  # two inner chunks of fill: zarr-python leaves them out
    a = _write(tmp_path / "a", data, (64, 64), (16, 16))
    store = _counting(tmp_path / "a", "memory", f"fill-{tmp_path.name}")
    arr = _open(store)
    assert arr[...].tobytes() == a[...].tobytes()
    assert len(store.calls) == 1


def test_raw_chunks_through_local_fsspec_bit_identical(tmp_path):
    data = _image((96, 200))
    a = _write(tmp_path / "a", data, (32, 64), (8, 16), codec="raw")
    store = _counting(tmp_path / "a", "local-fsspec", "unused")
    arr = _open(store)
    assert arr[...].tobytes() == a[...].tobytes()
    assert len(store.calls) == 1
    assert arr[::3, 7::2].tobytes() == a[::3, 7::2].tobytes()


def test_a_shard_reads_the_same_whole_or_in_two_steps(tmp_path):
    """The same array read whole-shard (memory) and two-step (LocalStore) gives the same bits."""
    path = make_sharded(tmp_path / "a", inner="zstd")
    shutil.copytree(path, tmp_path / "b")
    whole = _open(_counting(path, "memory", f"same-{tmp_path.name}"))[...]
    local = gpuzarr.open(str(tmp_path / "b"), device="cpu")[...]
    assert whole.tobytes() == local.tobytes() == expected().tobytes()
