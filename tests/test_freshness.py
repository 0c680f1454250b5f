"""A shard rewritten after its index was cached is read anew, never with stale offsets."""

from __future__ import annotations

import numpy as np
import zarr

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
