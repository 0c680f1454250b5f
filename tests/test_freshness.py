"""A shard rewritten after its index was cached is read anew, never with stale offsets."""

from __future__ import annotations

import os

import fsspec
import numpy as np
import zarr
from fsspec.implementations.memory import MemoryFileSystem

import gpuzarr
from gpuzarr.fetch import IndexCache


def _write(path, data):
    arr = zarr.create_array(str(path), shape=data.shape, chunks=(8, 8), shards=(32, 32), dtype=data.dtype,
                            compressors=zarr.codecs.ZstdCodec(), fill_value=0, overwrite=True)
    arr[:] = data


def test_a_rewritten_shard_is_read_with_its_new_index(tmp_path):
    rng = np.random.default_rng(1)
    first = rng.integers(0, 3, (64, 64)).astype("u2")  # compresses well: small chunks
    _write(tmp_path, first)
    arr = gpuzarr.open(str(tmp_path), device="cpu")
    np.testing.assert_array_equal(arr[:], first)  # every shard index is cached now
    second = rng.integers(0, 60000, (64, 64)).astype("u2")  # other sizes, other offsets
    second[40:, 40:] = 0  # and one shard of fill values only: written as no object at all
    _write(tmp_path, second)
    np.testing.assert_array_equal(arr[:], second)
    np.testing.assert_array_equal(arr[5:37, 3:50], second[5:37, 3:50])


def test_a_zero_byte_index_cache_keeps_nothing():
    cache = IndexCache(0)
    cache.put(("c/0/0", 0, 0, None), np.zeros((4, 2), np.uint64))
    assert cache.get(("c/0/0", 0, 0, None)) is False


def _copy(fs, local, root):
    """The array's files copied into an fsspec filesystem below `root`."""
    for folder, _, files in os.walk(local):
        for file in files:
            path = os.path.join(folder, file)
            with open(path, "rb") as f:
                fs.pipe(f"{root}/{os.path.relpath(path, local)}", f.read())
    return fs


def test_an_fsspec_store_in_this_process_keeps_indexes_while_their_shard_holds(tmp_path):
    rng = np.random.default_rng(2)
    first, second = rng.integers(0, 3, (64, 64)).astype("u2"), rng.integers(0, 60000, (64, 64)).astype("u2")
    _write(tmp_path / "a", first)
    _write(tmp_path / "b", second)
    fs = _copy(fsspec.filesystem("memory"), tmp_path / "a", "/fresh-a")
    arr = gpuzarr.open(fs.get_mapper("/fresh-a"), device="cpu")
    np.testing.assert_array_equal(arr[:], first)
    assert len(arr._reader.locator.cache._items) == 4, "the four shards' indexes are kept"
    fs.pipe("/fresh-a/c/1/0", (tmp_path / "b" / "c" / "1" / "0").read_bytes())
    want = first.copy()
    want[32:, :32] = second[32:, :32]
    np.testing.assert_array_equal(arr[:], want)


def test_indexes_are_read_anew_through_filesystems_whose_calls_are_requests(tmp_path):
    """An async fsspec filesystem (s3fs, gcsfs, HTTP): asking whether a shard changed costs the
    round trip its cached index would save, so indexes are read each read, as zarr-python does."""
    class Remoteish(MemoryFileSystem):
        async_impl = True  # as fsspec's network filesystems say

    rng = np.random.default_rng(3)
    first, second = rng.integers(0, 3, (64, 64)).astype("u2"), rng.integers(0, 60000, (64, 64)).astype("u2")
    _write(tmp_path / "a", first)
    _write(tmp_path / "b", second)
    fs = _copy(Remoteish(skip_instance_cache=True), tmp_path / "a", "/far-a")
    store = gpuzarr.store.Store(fs, "/far-a")
    assert not store.keeps_indexes and store.version("c/0/0") is None
    arr = gpuzarr.open(store, device="cpu")
    np.testing.assert_array_equal(arr[:], first)
    assert not arr._reader.locator.cache._items
    fs.pipe("/far-a/c/0/1", (tmp_path / "b" / "c" / "0" / "1").read_bytes())
    want = first.copy()
    want[:32, 32:] = second[:32, 32:]
    np.testing.assert_array_equal(arr[:], want)
