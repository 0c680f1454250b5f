"""Large CPU outputs come from blocks the pool reuses once no array refers to them (views of
views included), never while one does; small ones are NumPy's own."""

from __future__ import annotations

import gc
import os

import numpy as np
import pytest

import gpuzarr
from gpuzarr import output_pool
from gpuzarr.output_pool import OutputPool
from gpuzarr.sample import sample_data, write_sharded

pytestmark = pytest.mark.skipif(output_pool._free_count() is None,
                                reason="this interpreter defers reference counts: the pool is off")


def _address(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


@pytest.fixture
def small_pool(monkeypatch):
    monkeypatch.setattr(output_pool, "POOLED_BYTES", 1 << 12)
    return OutputPool()


def test_a_block_is_reused_once_its_arrays_are_gone_and_only_then(small_pool):
    a = small_pool.empty((64, 64), "<u2")
    assert a.shape == (64, 64) and a.dtype == np.dtype("<u2") and a.flags.c_contiguous and a.flags.writeable
    where = _address(a)
    view = a[3:9][:, 2:5]  # a view of a view: its base is the block too
    del a
    b = small_pool.empty((64, 64), "<u2")
    assert _address(b) != where  # the view still holds the block
    view[...] = 7
    b[...] = 9
    assert (view == 7).all()
    del view
    gc.collect()
    c = small_pool.empty((32, 64), "<f4")  # the same bytes, another dtype and shape
    assert _address(c) == where and c.shape == (32, 64) and c.dtype == np.float32


def test_the_smallest_free_block_that_fits_is_taken_and_at_most_BLOCKS_are_kept(small_pool):
    held = [small_pool.empty((n,), "u1") for n in (1 << 14, 1 << 13, 1 << 15)]
    assert len(small_pool._blocks) == output_pool.BLOCKS == 3
    extra = small_pool.empty((1 << 13,), "u1")  # every tracked block in use: a block of its own, not kept
    assert all(extra.base is not block for block in small_pool._blocks)
    where = [_address(h) for h in held]
    held.clear()
    assert _address(small_pool.empty((1 << 13,), "u1")) == where[1]
    big = small_pool.empty((1 << 16,), "u1")  # none fits: a new block in place of a free one too small
    assert len(small_pool._blocks) == 3 and any(block is big.base for block in small_pool._blocks)


def test_small_huge_and_object_outputs_are_numpys_own(small_pool, monkeypatch):
    monkeypatch.setattr(output_pool, "POOLED_MAX", 1 << 16)
    small = small_pool.empty((16, 16), "<u2")  # 512 bytes, below POOLED_BYTES
    huge = small_pool.empty((1 << 17,), "u1")  # above POOLED_MAX: not held on to once gone
    objects = small_pool.empty((4096,), object)  # NumPy fills them with None: its own
    assert all(a.base is None and a.flags.owndata for a in (small, huge, objects)) and (objects == None).all()  # noqa: E711
    assert not small_pool._blocks


def test_a_loop_of_large_batches_gets_its_memory_back_and_every_batch_reads_right(tmp_path, monkeypatch):
    monkeypatch.setattr(output_pool, "POOLED_BYTES", 1 << 16)
    output_pool.OUTPUTS.clear()
    data = sample_data((256, 256))
    write_sharded(str(tmp_path / "a"), data, (64, 64), (16, 16))
    arr = gpuzarr.open(str(tmp_path / "a"), device="cpu")
    windows = [[(slice(k, k + 100), slice(2 * k, 2 * k + 120)) for k in range(j, j + 8)] for j in range(0, 40, 8)]
    first = arr.read_batch(windows[0])
    kept = first.copy()
    seen = {_address(first)}
    for batch in windows[1:]:
        out = arr.read_batch(batch)
        assert any(out.base is block for block in output_pool.OUTPUTS._blocks)
        seen.add(_address(out))
        for got, w in zip(out, batch):
            np.testing.assert_array_equal(got, data[w])
        del out
    np.testing.assert_array_equal(first, kept)  # held all along: never written into
    assert _address(first) not in seen - {_address(first)} and len(seen) <= 3


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_reads_into_pooled_outputs(tmp_path, monkeypatch):
    monkeypatch.setattr(output_pool, "POOLED_BYTES", 1 << 16)
    data = sample_data((256, 256))
    write_sharded(str(tmp_path / "a"), data, (64, 64), (16, 16))
    arr = gpuzarr.open(str(tmp_path / "a"), device="cpu")
    parent = arr[...]  # a pooled block in use at the fork
    pid = os.fork()
    if pid == 0:
        ok = all(np.array_equal(arr[...], data) for _ in range(3)) and np.array_equal(parent, data)
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    np.testing.assert_array_equal(parent, data)
