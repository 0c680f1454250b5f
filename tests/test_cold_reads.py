"""Cold local reads: chunk ranges are handed to the kernel (WILLNEED) in storage order, a bounded
way ahead of the decoding tasks that read them (pipeline.AHEAD_BYTES), whether a task fetches its
part or the host library reads it in its one call; a warm read hands nothing; files are opened
without readahead."""

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import gpuzarr
from gpuzarr import host_lib, pipeline
from gpuzarr import store as store_module
from gpuzarr.devices import cpu as cpu_device
from gpuzarr.sample import sample_data, write_sharded


@pytest.fixture
def sharded(tmp_path):
    data = sample_data((256, 256))
    write_sharded(str(tmp_path / "a"), data, (64, 256), (16, 16))
    return str(tmp_path / "a"), data


@pytest.fixture(params=["fetched", "in-call"])
def parts(request, monkeypatch):
    """How a task reads its part: through fetch (os.preadv, RWF_NOWAIT first: a range not in the
    page cache is advised again by the task), or in the host library's one call a part
    (cpu._PartReads: blocking reads of what the hand-over put in flight)."""
    if request.param == "fetched":
        monkeypatch.setattr(cpu_device._PartReads, "make", lambda *a: None)
    return request.param


def _advice(monkeypatch, cold: bool, reads: list | None = None) -> list:
    """(offset, length) of every WILLNEED; with `cold`, every RWF_NOWAIT read would block.
    `reads`, if given, gets how many WILLNEEDs came before each read (os.preadv, or a part read
    by the host library)."""
    advised = []
    real = store_module.os.preadv

    def preadv(fd, buffers, offset, flags=0):
        if reads is not None:
            reads.append(len(advised))
        if flags and cold:
            raise BlockingIOError
        return real(fd, buffers, offset, flags)

    real_call = host_lib.read_decode_scatter
    monkeypatch.setattr(host_lib, "read_decode_scatter",
                        lambda *a: (reads.append(len(advised)) if reads is not None else None, real_call(*a))[1])
    monkeypatch.setattr(store_module.os, "preadv", preadv)
    monkeypatch.setattr(store_module.os, "posix_fadvise", lambda fd, offset, length, advice:
                        advised.append((offset, length)) if advice == store_module.os.POSIX_FADV_WILLNEED else None)
    return advised


@pytest.mark.parametrize("ahead", [4096, 8192, 1 << 30])
def test_a_cold_read_of_many_batches_hands_its_ranges_over_ahead_and_reads_right(sharded, monkeypatch, ahead, parts):
    """Batches of ~4 KiB, AHEAD_BYTES of ~one, two batches or all of them in flight; each range
    is advised ahead, and again by a task that fetches it and finds it missing from the page
    cache. The output is the warm read's."""
    path, data = sharded
    monkeypatch.setattr(pipeline, "AHEAD_BYTES", ahead)
    settings = gpuzarr.Settings(batch_bytes=4096, threads=2)
    arr = gpuzarr.open(path, device="cpu", settings=settings)
    report = gpuzarr.ReadReport()
    arr.read(..., report=report)  # indexes cached: only chunk ranges are advised below
    assert report.batches > 4
    advised = _advice(monkeypatch, cold=True)
    np.testing.assert_array_equal(arr[...], data)
    assert sum(length for _, length in advised) == (2 if parts == "fetched" else 1) * report.bytes_compressed


def _handovers(monkeypatch) -> list:
    """(rows handed over, thread) of every hand-over of a read, in the order made."""
    import threading

    made = []
    real = pipeline.prefetch
    monkeypatch.setattr(pipeline, "prefetch", lambda store, loc, rows: (
        made.append((rows, threading.current_thread())), real(store, loc, rows))[1])
    return made


def test_the_first_bytes_are_handed_over_before_any_task_reads(sharded, monkeypatch, parts):
    """Tasks started first would each hand over and read their own ranges beside the calling
    thread's hand-over of the same ones (64 cold 2-D windows in one read_batch: 0.79-0.87x so)."""
    path, data = sharded
    monkeypatch.setattr(pipeline, "AHEAD_BYTES", 8192)
    arr = gpuzarr.open(path, device="cpu", settings=gpuzarr.Settings(batch_bytes=4096, threads=2))
    arr[...]  # indexes cached: only chunk ranges are advised below
    reads: list = []
    advised = _advice(monkeypatch, cold=True, reads=reads)
    after_first: list = []  # advices made once the first hand-over returned
    real = pipeline.prefetch

    def prefetch(store, loc, rows):
        real(store, loc, rows)
        after_first.append(len(advised))

    monkeypatch.setattr(pipeline, "prefetch", prefetch)
    np.testing.assert_array_equal(arr[...], data)
    assert len(after_first) > 1 and after_first[0] > 0  # several hand-overs, the first of some ranges
    assert reads[0] == 0  # the one-byte probe of whether the read is cold (LocalStore.cached)
    assert len(reads) > 1 and reads[1] >= after_first[0]  # then no read before the first hand-over ended


@pytest.mark.parametrize("ahead", [2048, 16384])
def test_hand_overs_run_in_storage_order_a_bounded_way_ahead_of_the_tasks(sharded, monkeypatch, ahead, parts):
    """Every chunk is handed over once, in storage order; when a task starts reading a part, what
    was handed over ends at most AHEAD_BYTES (and one chunk) past the furthest part started; the
    calling thread hands over, not the tasks (a hand-over blocks while the disk's queue is full)."""
    import threading

    from gpuzarr import fetch as fetch_module

    path, data = sharded
    monkeypatch.setattr(pipeline, "AHEAD_BYTES", ahead)
    arr = gpuzarr.open(path, device="cpu", settings=gpuzarr.Settings(batch_bytes=8192, threads=2))
    arr[...]  # indexes cached
    _advice(monkeypatch, cold=True)
    made = _handovers(monkeypatch)
    aheads = []
    real_ahead = pipeline._Ahead
    monkeypatch.setattr(pipeline, "_Ahead", lambda *a: aheads.append(real_ahead(*a)) or aheads[-1])
    seen = []  # (end row of a part a task starts reading, rows handed over by then)
    real_part, real_run = fetch_module.PendingBatch.part, cpu_device._PartReads.run

    def part(self, lo, hi, alloc=None):
        seen.append((int(self.rows[hi - 1]) + 1, sum(rows.size for rows, _ in made)))
        return real_part(self, lo, hi, alloc)

    def run(self, lo, hi, *a):
        seen.append((int(self.rows[hi - 1]) + 1, sum(rows.size for rows, _ in made)))
        return real_run(self, lo, hi, *a)

    monkeypatch.setattr(fetch_module.PendingBatch, "part", part)
    monkeypatch.setattr(cpu_device._PartReads, "run", run)
    np.testing.assert_array_equal(arr[...], data)
    handed = np.concatenate([rows for rows, _ in made])
    assert handed.size == (256 // 16) * (256 // 16)  # every chunk of the array
    np.testing.assert_array_equal(handed, np.arange(handed.size))  # each row once, in order
    # the first hand-over, then the calling thread's: under load every task may have started
    # before that thread feeds, so it hands over the rest in one
    assert len(made) >= 2 and {thread for _, thread in made} == {threading.current_thread()}
    (ahead_of,) = aheads
    cost = ahead_of.cost
    furthest = 0  # the furthest part end any task had reached: the two threads start parts in any order
    for end, by_then in seen:
        furthest = max(furthest, end)
        stop = ahead_of._stop(furthest)
        assert by_then <= stop  # handed over for the parts started before
        assert stop == furthest + 1 or cost[stop - 1] - cost[furthest - 1] <= ahead  # AHEAD_BYTES past them
    assert any(by_then < handed.size for _, by_then in seen)  # not all at once


def test_a_failing_task_ends_a_cold_read_with_its_error(sharded, monkeypatch):
    """The calling thread stops handing over once every task has ended: the error comes out,
    no wait outlives the tasks."""
    from gpuzarr.errors import CorruptDataError

    path, _ = sharded
    monkeypatch.setattr(pipeline, "AHEAD_BYTES", 2048)
    arr = gpuzarr.open(path, device="cpu", settings=gpuzarr.Settings(batch_bytes=4096, threads=2))
    arr[...]
    _advice(monkeypatch, cold=True)
    calls = []

    def broken(self, part, *a, **k):
        calls.append(part.n)
        raise CorruptDataError("bad chunk")

    monkeypatch.setattr(cpu_device.CpuDevice, "_decode_by_blocks", broken)
    monkeypatch.setattr(cpu_device._PartReads, "run", lambda self, lo, hi, *a: broken(self, SimpleNamespace(n=hi - lo)))
    with pytest.raises(CorruptDataError, match="bad chunk"):
        arr[...]
    assert calls


def test_a_warm_read_of_many_batches_hands_nothing_over(sharded, monkeypatch):
    path, data = sharded
    arr = gpuzarr.open(path, device="cpu", settings=gpuzarr.Settings(batch_bytes=4096, threads=2))
    arr[...]
    advised = _advice(monkeypatch, cold=False)
    np.testing.assert_array_equal(arr[...], data)
    assert advised == []


@pytest.mark.parametrize("cold", [False, True])
def test_a_warm_read_is_one_batch_the_calling_thread_decodes_in_and_a_cold_one_keeps_its_batches(
        sharded, monkeypatch, cold):
    """The device's own batch size (no Settings.batch_bytes) cuts the read into batches; warm, they
    are one, whose parts the calling thread decodes beside the pool; cold, the batches pace what is
    handed to the kernel ahead."""
    import threading


    path, data = sharded
    monkeypatch.setattr(cpu_device.CpuDevice, "batch_bytes", 4096)
    monkeypatch.setattr(cpu_device, "SPLIT_SECONDS", 0.0)  # never one inline task (the read is small)
    monkeypatch.setattr(cpu_device, "GROUP_BYTES", 8192)  # parts of 16 chunks
    arr = gpuzarr.open(path, device=cpu_device.CpuDevice(threads=2))
    arr[...]  # indexes cached
    threads = []  # the thread of each part: read whole by the host library (_PartReads), or decoded by blocks
    for cls, name in ((cpu_device.CpuDevice, "_decode_by_blocks"), (cpu_device._PartReads, "run")):
        real = getattr(cls, name)
        monkeypatch.setattr(cls, name, lambda *a, _real=real, **k: (threads.append(threading.current_thread()),
                                                                    _real(*a, **k))[1])
    advised = _advice(monkeypatch, cold=cold)
    report = gpuzarr.ReadReport()
    np.testing.assert_array_equal(arr.read(..., report=report), data)
    if cold:
        assert report.batches > 4 and advised
    else:
        assert report.batches == 1 and not advised
        assert threading.current_thread() in threads and len(threads) == 16


def test_files_are_opened_for_random_access(sharded, monkeypatch):
    """No readahead around the ranges read (see store._RANDOM): one POSIX_FADV_RANDOM per file opened."""
    path, data = sharded
    opened, advised = [], []
    real_open = store_module.os.open
    monkeypatch.setattr(store_module.os, "open", lambda *a, **k: opened.append(a[0]) or real_open(*a, **k))
    monkeypatch.setattr(store_module.os, "posix_fadvise", lambda fd, offset, length, advice:
                        advised.append(advice) if advice == store_module.os.POSIX_FADV_RANDOM else None)
    np.testing.assert_array_equal(gpuzarr.open(path, device="cpu")[...], data)
    assert opened and len(advised) == len(opened)


def test_the_cold_benchmark_counts_what_a_read_asks_of_the_disk(tmp_path, monkeypatch):
    """bench --cold reports the bytes each reader had read from the disk (readahead included)."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1]))
    from bench.cold import disk_bytes

    before = disk_bytes(tmp_path)
    assert before is None or (isinstance(before, int) and before >= 0)
