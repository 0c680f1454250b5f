"""Store edge cases and the batching of reads (how many requests a read makes)."""

from __future__ import annotations

import os

import fsspec
import numpy as np
import pytest
import zarr
from checks import to_memory
from corrupt import expected, make_sharded, put_index, read_index

import gpuzarr
from gpuzarr.sample import sample_data, write_sharded
from gpuzarr.store import Store, open_store


def test_directory_where_a_chunk_file_would_be_reads_as_fill(tmp_path):
    a = zarr.create_array(tmp_path / "a", shape=(8,), chunks=(4,), dtype="i4", zarr_format=2, fill_value=-1)
    a[:] = np.arange(8)
    os.remove(tmp_path / "a" / "1")
    os.mkdir(tmp_path / "a" / "1")
    np.testing.assert_array_equal(gpuzarr.open(str(tmp_path / "a"), device="cpu")[:], [0, 1, 2, 3, -1, -1, -1, -1])


def test_a_read_goes_out_as_one_coalesced_request_per_shard(tmp_path, monkeypatch):
    """Through a generic fsspec store: one cat_ranges call for the indexes, one for the chunks,
    and neighbouring inner chunks of a shard merged into one range."""
    a = zarr.create_array(tmp_path / "a", shape=(64, 64), chunks=(8, 8), shards=(32, 64), dtype="u2")
    a[:] = np.arange(64 * 64, dtype="u2").reshape(64, 64)
    url = to_memory(tmp_path / "a", f"coalesce-{tmp_path.name}")
    calls = []
    real = Store.read_ranges

    def counting(self, ranges):
        calls.append(list(ranges))
        return real(self, ranges)

    monkeypatch.setattr(Store, "read_ranges", counting)
    # the two-step read (index, then chunks); whole-shard reads are tests/test_whole_shard.py's
    monkeypatch.setattr(gpuzarr.fetch, "WHOLE_SHARD_FRACTION", 2.0)
    arr = gpuzarr.open(url, device="cpu")
    calls.clear()
    np.testing.assert_array_equal(arr[...], a[...])
    index_reads, chunk_reads = calls
    assert len(index_reads) == 2  # the two shards' indexes, in one call
    assert len(chunk_reads) == 2  # 32 inner chunks per shard, stored back to back: one range each
    calls.clear()
    arr[0:8, 0:8]
    assert len(calls) == 1, "the index cache spares the second index read"


def test_open_store_accepts_every_form(tmp_path):
    (tmp_path / "x").mkdir()
    for form in (str(tmp_path / "x"), f"file://{tmp_path}/x", fsspec.get_mapper(str(tmp_path / "x")), tmp_path / "x"):
        store = open_store(form)
        assert store.root.rstrip("/").endswith("x"), form


@pytest.mark.parametrize("where", ["local", "fsspec"])
def test_index_entries_are_read_where_they_point(tmp_path, where):
    """Two entries pointing at the same bytes (a writer may deduplicate chunks) and entries out
    of storage order: the coalesced ranges must still give every chunk its own bytes."""
    path = make_sharded(tmp_path / "a", index_crc=True, inner="raw")
    shard = path / "c" / "0" / "0"
    buf = shard.read_bytes()
    idx = read_index(buf)
    idx[1] = idx[0]  # inner chunk 1 (rows 0-1, cols 2-3) now holds chunk 0's bytes
    idx[[2, 3]] = idx[[3, 2]]  # chunks 2 and 3 swap places
    shard.write_bytes(put_index(buf, idx))
    want = expected()
    want[0:2, 2:4] = want[0:2, 0:2]
    want[2:4, 0:2], want[2:4, 2:4] = expected()[2:4, 2:4], expected()[2:4, 0:2]
    url = str(path) if where == "local" else to_memory(path, f"dedup-{tmp_path.name}")
    arr = gpuzarr.open(url, device="cpu")
    np.testing.assert_array_equal(arr[...], want)
    np.testing.assert_array_equal(arr[1:3, 1:4], want[1:3, 1:4])


def test_reads_the_page_cache_lacks_are_handed_to_the_kernel_then_land_where_they_belong(tmp_path, monkeypatch):
    """Cold data: every read with RWF_NOWAIT 'would block', so each range is handed to the kernel
    at once (POSIX_FADV_WILLNEED: all of them in flight together), then read again, blocking, on
    the calling thread; the results are those of a warm read, a missing file still reads as None
    and a short file is still seen as short."""
    from gpuzarr import store as store_module

    data = sample_data((256, 256))
    write_sharded(str(tmp_path / "a"), data, (64, 256), (16, 16))
    warm = gpuzarr.open(str(tmp_path / "a"), device="cpu")
    expected = warm[...]
    real = store_module.os.preadv
    events = []

    def cold(fd, buffers, offset, flags=0):
        if flags:
            events.append(("nowait", offset))
            raise BlockingIOError
        events.append(("read", offset))
        return real(fd, buffers, offset)

    def advise(fd, offset, length, advice):
        if advice == store_module.os.POSIX_FADV_WILLNEED:
            events.append(("advise", offset))

    monkeypatch.setattr(store_module.os, "preadv", cold)
    monkeypatch.setattr(store_module.os, "posix_fadvise", advise)
    arr = gpuzarr.open(str(tmp_path / "a"), device="cpu")
    np.testing.assert_array_equal(arr[...], expected)
    reads = [i for i, (kind, _) in enumerate(events) if kind == "read"]
    assert reads and all(("advise", events[i][1]) in events[:i] for i in reads)  # each advised first
    got = arr.store.read_ranges([("c/0/0", 0, 10), ("c/9/9", 0, 10), ("c/1/0", -4, None)])
    assert got[1] is None and len(got[0]) == 10 and len(got[2]) == 4


def test_a_filesystem_that_refuses_rwf_nowait_is_read_blocking(tmp_path, monkeypatch):
    """tmpfs and procfs answer RWF_NOWAIT with EOPNOTSUPP: the store then reads without it."""
    import errno

    from gpuzarr import store as store_module

    data = sample_data((128, 128))
    write_sharded(str(tmp_path / "a"), data, (64, 128), (16, 16))
    real = store_module.os.preadv
    flagged = []

    def no_nowait(fd, buffers, offset, flags=0):
        if flags:
            flagged.append(offset)
            raise OSError(errno.EOPNOTSUPP, "Operation not supported")
        return real(fd, buffers, offset)

    monkeypatch.setattr(store_module.os, "preadv", no_nowait)
    arr = gpuzarr.open(str(tmp_path / "a"), device="cpu")
    np.testing.assert_array_equal(arr[...], data)
    asked = len(flagged)
    np.testing.assert_array_equal(arr[...], data)
    assert asked == 1 and len(flagged) == 1  # asked once, then never again on this store


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no /dev/shm (tmpfs) on this machine")
def test_an_array_on_tmpfs_reads(tmp_path):
    import tempfile

    data = sample_data((96, 96))
    with tempfile.TemporaryDirectory(dir="/dev/shm") as shm:
        write_sharded(os.path.join(shm, "a"), data, (48, 96), (16, 16))
        np.testing.assert_array_equal(gpuzarr.open(os.path.join(shm, "a"), device="cpu")[...], data)
