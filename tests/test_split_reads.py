"""A large local read split across threads (store._split, forksafe.LazyPool.run_parts): the same bytes land
where a one-thread read puts them, every part has ended before the read returns or raises, parts
no reader has started are read by the caller, and dropped once a part has failed."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from gpu_standin import StandinEngine
from hypothesis import given, settings
from hypothesis import strategies as st

import gpuzarr
import gpuzarr.store as store_mod
from gpuzarr import host_lib
from gpuzarr.devices.gpu import GpuDevice
from gpuzarr.sample import sample_data, write_sharded
from gpuzarr.store import LocalStore, open_store


@given(st.lists(st.integers(0, 3 << 20), min_size=0, max_size=40), st.integers(1, 8))
@settings(max_examples=200, deadline=None)
def test_parts_cover_every_range_once_in_order(sizes, cores):
    ranges = [("k", 0, n) for n in sizes]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(store_mod, "default_threads", lambda: cores)
        parts = store_mod._split(sizes)
    assert [i for part in parts for i in part] == list(range(len(ranges)))
    assert all(len(part) > 0 for part in parts) or not ranges
    assert len(parts) <= max(1, min(store_mod.READERS, cores))
    total = sum(sizes)
    if len(parts) > 1:
        assert total >= store_mod.SPLIT_BYTES
    elif cores >= 2 and len(ranges) >= 2 and total >= store_mod.SPLIT_BYTES:
        # one range may hold nearly every byte; otherwise there is more than one part
        assert max(sizes) * 2 > total


def _files(tmp_path, n=12, size=700_000):
    rng = np.random.default_rng(5)
    blobs = {}
    for k in range(n):
        blobs[f"f{k}"] = rng.integers(0, 256, size + 1000 * k, dtype=np.uint8).tobytes()
        (tmp_path / f"f{k}").write_bytes(blobs[f"f{k}"])
    return blobs


def _buffers(ranges):
    out = [bytearray(stop - start) for _, start, stop in ranges]
    return out, [[memoryview(b)] for b in out]


def test_a_split_read_lands_the_bytes_a_single_read_does(tmp_path, monkeypatch):
    blobs = _files(tmp_path)
    ranges = [(key, 1000, len(blob) - 5) for key, blob in blobs.items()]
    ranges.insert(3, ("absent", 0, 10))
    store = open_store(str(tmp_path))
    assert isinstance(store, LocalStore)
    seen = set()
    real = store_mod._preadv_all

    def spy(*args, **kw):
        seen.add(threading.current_thread().name)
        return real(*args, **kw)

    monkeypatch.setattr(store_mod, "_preadv_all", spy)
    monkeypatch.setattr(store_mod, "default_threads", lambda: 2)
    assert len(store_mod._split([stop - start for _, start, stop in ranges])) == 2
    split, pieces = _buffers(ranges)
    counts = store.read_ranges_into(ranges, pieces)
    assert len(seen) == 2  # read on two threads
    monkeypatch.setattr(store_mod, "SPLIT_BYTES", 1 << 60)
    one, pieces = _buffers(ranges)
    assert store.read_ranges_into(ranges, pieces) == counts
    assert counts[3] is None and counts[:3] + counts[4:] == [stop - start for _, start, stop in ranges[:3] + ranges[4:]]
    assert split == one
    for (key, start, stop), got in zip(ranges, split):
        if key != "absent":
            assert bytes(got) == blobs[key][start:stop]


@pytest.mark.skipif(not host_lib.built(), reason="chunk files are read through the host library's FileBatch")
def test_whole_files_are_read_in_parts_on_several_threads_as_one_thread_reads_them(tmp_path, monkeypatch):
    """read_files_into (chunk files, FILES_AT_ONCE or more) splits its files by bytes as
    read_ranges_into splits ranges: each part one FileBatch.read on its own thread, the same
    bytes and counts; files not there stay absent."""
    blobs = _files(tmp_path, n=20, size=300_000)
    keys = list(blobs)
    keys.insert(5, "absent")
    store = open_store(str(tmp_path))
    threads, real = [], host_lib.FileBatch.read

    def spy(self, *args, **kw):
        threads.append((threading.current_thread().name, kw.get("part", args[4] if len(args) > 4 else None)))
        return real(self, *args, **kw)

    def read_all() -> tuple[list, list]:
        out: list = []

        def place(sizes):
            out.extend(bytearray(size or 0) for size in sizes)
            return [memoryview(b) for b in out]

        return store.read_files_into(keys, place), out

    monkeypatch.setattr(host_lib.FileBatch, "read", spy)
    monkeypatch.setattr(store_mod, "default_threads", lambda: 2)
    counts, split = read_all()
    assert len({name for name, _ in threads}) == 2 and all(part is not None for _, part in threads)
    assert sorted(i for _, part in threads for i in part) == list(range(len(keys)))
    threads.clear()
    monkeypatch.setattr(store_mod, "SPLIT_BYTES", 1 << 60)
    one_counts, one = read_all()
    assert threads == [(threading.current_thread().name, None)]
    assert counts == one_counts and split == one
    assert counts[5] is None and [bytes(b) for k, b in zip(keys, split) if k != "absent"] == list(blobs.values())


def test_a_failing_part_is_raised_after_every_other_part_has_ended(tmp_path, monkeypatch):
    blobs = _files(tmp_path)
    ranges = [(key, 0, len(blob)) for key, blob in blobs.items()]
    store = open_store(str(tmp_path))
    real = store_mod._preadv_all
    out, pieces = _buffers(ranges)
    parts = None
    started = {}

    def failing(fd, buffers, offset, want, flags=0):
        if buffers is pieces[0]:  # the caller's own part fails once every other part is under way
            for event in started.values():
                event.wait(5)
            raise OSError(5, "Input/output error")
        first = next((p.start for p in parts[1:] if buffers is pieces[p.start]), None)
        if first is not None:
            started[first].set()
            time.sleep(0.01)  # and they end well after it
        return real(fd, buffers, offset, want, flags)

    monkeypatch.setattr(store_mod, "_preadv_all", failing)
    monkeypatch.setattr(store_mod, "default_threads", lambda: 4)
    parts = store_mod._split([stop - start for _, start, stop in ranges])
    assert len(parts) == 4
    started = {p.start: threading.Event() for p in parts[1:]}
    with pytest.raises(gpuzarr.StoreError, match="f0: read failed"):
        store.read_ranges_into(ranges, pieces)
    for part in parts[1:]:  # whole when it raised
        assert [bytes(out[k]) for k in part] == [blobs[ranges[k][0]] for k in part]


def test_after_a_failure_parts_no_reader_started_are_dropped(tmp_path, monkeypatch):
    blobs = _files(tmp_path)
    ranges = [(key, 0, len(blob)) for key, blob in blobs.items()]
    store = open_store(str(tmp_path))
    release = threading.Event()
    blockers = [store_mod._READERS.submit(release.wait, 60) for _ in range(store_mod.READERS - 1)]
    read = []
    real = store_mod._preadv_all
    out, pieces = _buffers(ranges)

    def failing(fd, buffers, offset, want, flags=0):
        read.append(next(i for i, p in enumerate(pieces) if p is buffers))
        if buffers is pieces[0]:
            raise OSError(5, "Input/output error")
        return real(fd, buffers, offset, want, flags)

    monkeypatch.setattr(store_mod, "_preadv_all", failing)
    monkeypatch.setattr(store_mod, "default_threads", lambda: 4)
    try:
        with pytest.raises(gpuzarr.StoreError, match="f0: read failed"):
            store.read_ranges_into(ranges, pieces)
        first_part = store_mod._split([stop - start for _, start, stop in ranges])[0]
        assert all(i in first_part for i in read)  # nothing past the failed part was read
    finally:
        release.set()
        for future in blockers:
            future.result()


def test_parts_no_reader_took_are_read_by_the_caller(tmp_path, monkeypatch):
    """Every reader busy (other reads' parts): the caller reads its whole read itself rather
    than waiting behind them."""
    blobs = _files(tmp_path)
    ranges = [(key, 0, len(blob)) for key, blob in blobs.items()]
    store = open_store(str(tmp_path))
    release = threading.Event()
    blockers = [store_mod._READERS.submit(release.wait, 60) for _ in range(store_mod.READERS - 1)]
    monkeypatch.setattr(store_mod, "default_threads", lambda: 4)
    out, pieces = _buffers(ranges)
    result = []
    reader = threading.Thread(target=lambda: result.append(store.read_ranges_into(ranges, pieces)))
    try:
        reader.start()
        reader.join(10)
        assert not reader.is_alive(), "the read waited for the busy readers"
        assert result == [[len(blob) for blob in blobs.values()]]
        assert [bytes(b) for b in out] == list(blobs.values())
    finally:
        release.set()
        reader.join()
        for future in blockers:
            future.result()


def test_a_staged_gpu_read_is_bit_identical_through_split_fetches(tmp_path, monkeypatch):
    """The GPU's host half fetches a batch into one staging buffer (here the CPU stand-in of
    tests/gpu_standin.py decodes it): a batch past SPLIT_BYTES read in parts equals the data."""
    data = sample_data((1024, 1024))
    path = str(tmp_path / "a")
    write_sharded(path, data, (256, 256), (32, 32), level=1)
    monkeypatch.setattr(store_mod, "SPLIT_BYTES", 64 << 10)
    monkeypatch.setattr(store_mod, "default_threads", lambda: 3)
    calls = []
    real = store_mod._split
    monkeypatch.setattr(store_mod, "_split", lambda ranges: calls.append(real(ranges)) or calls[-1])
    arr = gpuzarr.open(path, device="cpu")
    device = GpuDevice(StandinEngine())
    np.testing.assert_array_equal(arr.read(..., device=device), data)
    np.testing.assert_array_equal(arr.read((slice(7, 900), slice(3, 1001)), device=device), data[7:900, 3:1001])
    assert max(len(parts) for parts in calls) == 3
