"""Data loaders read one array from many threads at once: every read must stay correct."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from checks import pool_tasks, to_memory

import gpuzarr
from gpuzarr.devices.cpu import CpuDevice
from gpuzarr.sample import sample_data, write_sharded


def test_concurrent_reads_and_batches_from_many_threads(tmp_path):
    data = sample_data((384, 512))
    write_sharded(str(tmp_path / "a"), data, (128, 256), (32, 32))
    arr = gpuzarr.open(str(tmp_path / "a"), device="cpu", settings=gpuzarr.Settings(batch_bytes=1 << 14))
    rng = np.random.default_rng(0)
    jobs = []
    for _ in range(64):
        y, x = (int(v) for v in rng.integers(0, 300, 2))
        step = int(rng.integers(1, 4))
        jobs.append((slice(y, y + 80, step), slice(x, x + 200, -1 if step == 3 else 1)))

    def one(sel):
        if isinstance(sel[0], slice) and sel[0].step == 2:
            windows = [(slice(a, a + 40), slice(b, b + 40)) for a, b in ((sel[0].start, 0), (0, sel[1].start))]
            return arr.read_batch(windows), np.stack([data[w] for w in windows])
        return arr[sel], data[sel]

    with ThreadPoolExecutor(8) as pool:
        for got, expected in pool.map(one, jobs):
            np.testing.assert_array_equal(got, expected)



def _ring_engine():
    """The GPU stand-in with CupyEngine's staging: a ring of two reused slots per thread (a slot
    taken again once its batch is uploaded; uploads here copy at once, so no event waits), the
    gpu-host bench's model of it."""
    from bench.gpu_host import NoopEngine
    from gpu_standin import StandinEngine

    engine = StandinEngine()
    engine.host_ring = NoopEngine().host_ring
    return engine


def test_staged_gpu_reads_from_many_threads_never_share_a_staging_slot(tmp_path):
    """Each read fetches its next batch on an I/O thread into the reading thread's ring: with
    the I/O threads' own rings, one read's fetch took a slot whose batch another read had not
    uploaded yet (3 threads, 20 reads each: 3-5 reads of 60 decoded wrong bytes)."""
    from gpuzarr.devices.gpu import GpuDevice

    data = sample_data((512, 512))
    write_sharded(str(tmp_path / "a"), data, (128, 128), (32, 32))
    arr = gpuzarr.open(str(tmp_path / "a"), device=GpuDevice(_ring_engine()),
                       settings=gpuzarr.Settings(batch_bytes=16 << 10))

    def reads(_):
        report = gpuzarr.ReadReport()
        for _ in range(20):
            np.testing.assert_array_equal(arr.read(report=report), data)
        return report.batches

    with ThreadPoolExecutor(3) as pool:
        batches = list(pool.map(reads, range(3)))
    assert min(batches) >= 20 * 4, batches  # staged: several batches a read


def test_a_failed_read_leaves_no_task_writing_into_out(tmp_path):
    """The first chunk is corrupt: the calling thread's own group fails at once while pool
    threads still decode the rest; the read must not raise before they are settled."""
    data = sample_data((1024, 1024))
    path = str(tmp_path / "a")
    write_sharded(path, data, (1024, 1024), (32, 32))  # 1024 chunks in one shard, index at the end
    shard = tmp_path / "a" / "c" / "0" / "0"
    raw = bytearray(shard.read_bytes())
    raw[0] ^= 0xFF  # the first chunk's zstd magic number
    shard.write_bytes(bytes(raw))
    arr = gpuzarr.open(path, device="cpu")
    out = np.zeros((1024, 1024), np.uint16)
    with pytest.raises(gpuzarr.CorruptDataError, match="zstd"):
        arr.read(out=out)
    snapshot = out.copy()
    time.sleep(0.05)
    np.testing.assert_array_equal(out, snapshot)
    np.testing.assert_array_equal(arr[32:, :], data[32:, :])  # the pool still serves reads


def test_a_corrupt_chunk_read_by_a_pool_task_fails_the_read(tmp_path):
    """A read of many batches of local files: pool tasks read their own chunks; one of them finds
    a corrupt chunk in the middle. The read raises, naming it, after every task has settled."""
    data = sample_data((1024, 1024))
    path = str(tmp_path / "a")
    write_sharded(path, data, (1024, 1024), (32, 32))
    arr = gpuzarr.open(path, device=CpuDevice(threads=2), settings=gpuzarr.Settings(batch_bytes=64 << 10))
    index = arr._reader.locator.locate(np.array([[16, 16]]))
    shard = tmp_path / "a" / "c" / "0" / "0"
    raw = bytearray(shard.read_bytes())
    raw[int(index.offsets[0])] ^= 0xFF  # chunk (16, 16)'s zstd magic number
    shard.write_bytes(bytes(raw))
    report = gpuzarr.ReadReport()
    out = np.zeros((1024, 1024), np.uint16)
    with pytest.raises(gpuzarr.CorruptDataError, match="c/0/0.*zstd"):
        arr.read(out=out, report=report)
    assert report.batches > 4
    snapshot = out.copy()
    time.sleep(0.05)
    np.testing.assert_array_equal(out, snapshot)
    np.testing.assert_array_equal(arr[:512, :], data[:512, :])


@pytest.mark.parametrize("where", ["local", "memory"])
@pytest.mark.parametrize("layout", ["sharded", "v2-files"])
def test_many_batches_reuse_staging_without_overwriting(tmp_path, layout, where):
    """Local files: each pool task reads its own chunks into its thread's buffer. Other stores:
    two staging slots are refilled in turn while the previous batch still decodes on the pool.
    Either way every chunk must come out as written (missing chunks included)."""
    data = sample_data((1024, 2048))
    path = str(tmp_path / "a")
    if layout == "sharded":
        write_sharded(path, data, (512, 512), (128, 128))
    else:
        import zarr

        z = zarr.create_array(path, shape=data.shape, chunks=(128, 128), dtype=data.dtype, zarr_format=2,
                              fill_value=0)
        z[:] = data
        z[256:512, 0:384] = 0  # all-fill chunks: zarr-python leaves their files out
        data = z[:]
    # batches of ~18 chunks (over 512 KiB decoded) go to the pool, whose tasks start 20 ms late
    # here: batch k+1 is surely read while batch k waits to decode
    device = CpuDevice(threads=2)
    submit = device.pool.submit
    device.pool.submit = lambda fn, *args: submit(lambda: (time.sleep(0.02), fn(*args))[1])
    if where == "memory":
        path = to_memory(path, f"{layout}-{tmp_path.name}")
    arr = gpuzarr.open(path, device=device, settings=gpuzarr.Settings(batch_bytes=512 << 10))
    report = gpuzarr.ReadReport()
    np.testing.assert_array_equal(arr.read(report=report), data)
    assert report.batches >= 4
    np.testing.assert_array_equal(arr[7:1000, 3:2021], data[7:1000, 3:2021])


def test_a_read_of_many_batches_holds_two_staging_buffers_at_most(tmp_path):
    """The memory of a read is its output plus two staging slots (sized once, for the largest
    batch), whatever the batches' sizes."""
    import tracemalloc

    import zarr
    from zarr.codecs import GzipCodec

    rng = np.random.default_rng(5)
    data = (sample_data((2048, 2048)) + rng.integers(0, 64, (2048, 2048))).astype("<u2")
    path = str(tmp_path / "a")
    z = zarr.create_array(path, shape=data.shape, shards=(512, 512), chunks=(128, 128), dtype=data.dtype,
                          compressors=GzipCodec(level=1), fill_value=0)
    z[:] = data
    batch = 1 << 20
    arr = gpuzarr.open(path, device=CpuDevice(threads=2), settings=gpuzarr.Settings(batch_bytes=batch))
    arr[:64, :64]  # index cache, thread scratch and pools exist before the measured read
    report = gpuzarr.ReadReport()
    tracemalloc.start()
    try:
        out = arr.read(report=report)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(out, data)
    assert report.batches >= 4
    assert report.bytes_compressed > 3 * batch  # a third buffer would show
    assert peak - out.nbytes <= 2 * batch + (512 << 10), f"{(peak - out.nbytes) / batch:.2f} batches of staging"


def test_a_growing_staging_slot_never_holds_two_buffers():
    import tracemalloc

    from gpuzarr.fetch import Slot

    slot = Slot()
    tracemalloc.start()
    try:
        slot(1 << 20)
        grown = slot(2 << 20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert grown.nbytes == 2 << 20
    assert peak < (2 << 20) + (64 << 10), f"{peak} bytes traced at once: the old buffer outlived the new one's allocation"


@pytest.mark.parametrize("corrupt", [None, "first", "last"])
def test_a_large_single_batch_is_read_by_its_tasks(tmp_path, monkeypatch, corrupt):
    """One batch of over 1 MiB compressed: the calling thread and a pool thread each read and
    decode their half. Data comes out whole; a corrupt chunk in either half fails the read."""
    from gpuzarr.devices import cpu
    from gpuzarr.fetch import PendingBatch

    data = np.random.default_rng(3).integers(0, 1 << 16, (1024, 1024), dtype=np.uint16)
    path = str(tmp_path / "a")
    write_sharded(path, data, (1024, 1024), (128, 128))
    arr = gpuzarr.open(path, device=CpuDevice(threads=2))
    if corrupt:
        coords = np.array([[0, 0]] if corrupt == "first" else [[7, 7]])
        offset = int(arr._reader.locator.locate(coords).offsets[0])
        shard = tmp_path / "a" / "c" / "0" / "0"
        raw = bytearray(shard.read_bytes())
        raw[offset] ^= 0xFF  # that chunk's zstd magic number
        shard.write_bytes(bytes(raw))
    parts = set()  # read by the host library in one call each (cpu._PartReads), or through fetch
    real_part, real_run = PendingBatch.part, cpu._PartReads.run
    monkeypatch.setattr(PendingBatch, "part", lambda self, *a: parts.add(a[:2]) or real_part(self, *a))
    monkeypatch.setattr(cpu._PartReads, "run", lambda self, *a: parts.add(a[:2]) or real_run(self, *a))
    report = gpuzarr.ReadReport()
    if corrupt:
        with pytest.raises(gpuzarr.CorruptDataError, match="zstd"):
            arr.read(report=report)
    else:
        np.testing.assert_array_equal(arr.read(report=report), data)
        assert report.bytes_compressed > 1 << 20
    assert report.batches == (3 if corrupt else 1)  # local data found corrupt is read twice more first
    assert len(parts) >= (1 if corrupt else 2)  # a failed half may cancel the other before it starts


def test_a_small_single_batch_the_pool_decodes_is_read_by_its_tasks(tmp_path, monkeypatch):
    """A batch of under 1 MiB compressed, too many chunks for the small path and predicted past
    an inline decode: its tasks read their own chunks too (each part in one call), as a large
    batch's do, and the data comes out whole."""
    from gpuzarr.devices import cpu
    from gpuzarr.fetch import PendingBatch

    data = sample_data((1024, 1024))
    path = str(tmp_path / "a")
    write_sharded(path, data, (1024, 1024), (64, 64))  # 256 chunks of 8 KiB in one shard
    arr = gpuzarr.open(path, device=CpuDevice(threads=2))
    window = (slice(3, 640), slice(5, 645))  # 100 chunks
    assert not CpuDevice(threads=2).inline(100, arr._reader.locator.leaf_chain)
    parts = set()
    real_part, real_run = PendingBatch.part, cpu._PartReads.run
    monkeypatch.setattr(PendingBatch, "part", lambda self, *a: parts.add(a[:2]) or real_part(self, *a))
    monkeypatch.setattr(cpu._PartReads, "run", lambda self, *a: parts.add(a[:2]) or real_run(self, *a))
    report = gpuzarr.ReadReport()
    np.testing.assert_array_equal(arr.read(window, report=report), data[window])
    assert report.batches == 1 and 0 < report.bytes_compressed < 1 << 20
    assert len(parts) >= 2


def test_a_sole_read_runs_as_many_workers_as_threads_each_taking_the_next_group(tmp_path, monkeypatch):
    """A single-batch read of many groups: the calling thread and threads - 1 pool workers take
    groups as they come free (never more groups at once than threads); each group once; the
    data right."""
    from gpuzarr.devices import cpu

    data = sample_data((512, 512))
    path = str(tmp_path / "a")
    write_sharded(path, data, (512, 512), (32, 32))  # 256 chunks of 2 KiB in one shard
    monkeypatch.setattr(cpu, "GROUP_BYTES", 16 << 10)  # at most 8 chunks a group: 33 groups on 3 threads
    monkeypatch.setattr(cpu, "SPLIT_SECONDS", 0.0)  # split however small
    running, most, seen = [0], [0], []
    lock = threading.Lock()
    real = CpuDevice._decode_by_blocks

    def spy(self, part, chain, as_chunk, out, plan, first, fill, boxes):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
            seen.append(first)
        time.sleep(0.002)
        try:
            return real(self, part, chain, as_chunk, out, plan, first, fill, boxes)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(CpuDevice, "_decode_by_blocks", spy)
    arr = gpuzarr.open(to_memory(path, "sole-groups"), device=CpuDevice(threads=3))  # staged: one batch, decoded as one
    np.testing.assert_array_equal(arr[...], data)
    assert sorted(seen) == [lo for lo, _ in cpu._task_bounds(256, 8, 3)] and len(seen) == 33
    assert most[0] == 3


@pytest.mark.parametrize("n, per_task, threads", [(256, 64, 2), (205, 64, 2), (259, 64, 2), (256, 8, 3), (5, 64, 2),
                                                  (3, 64, 4), (1, 64, 2), (100, 1, 16), (1000, 64, 1), (0, 64, 2)])
def test_the_last_batch_ends_in_parts_that_share_out_the_rest(n, per_task, threads):
    """So the threads end together: parts of per_task, as many as a multiple of the threads (a
    shard's chunks stay one part), then the rest in `threads` parts of equal size. Earlier
    batches keep parts of per_task throughout (their tasks run back to back with the next's)."""
    from gpuzarr.devices.cpu import _task_bounds

    step = min(per_task, max(1, -(-n // threads)))
    for last in (True, False):
        bounds = _task_bounds(n, per_task, threads, last)
        if n == 0:
            assert bounds == []
            continue
        sizes = [hi - lo for lo, hi in bounds]
        assert bounds[0][0] == 0 and bounds[-1][1] == n and all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
        if not last:
            assert sizes[:-1] == [step] * (len(sizes) - 1) and 1 <= sizes[-1] <= step
            continue
        kept = (len(sizes) - 1) // threads * threads  # parts before the last ones
        head, tail = sizes[:kept], sizes[kept:]
        assert all(s == step for s in head) and len(tail) <= threads
        assert min(tail) >= 1 and max(tail) <= step and max(tail) - min(tail) <= 1


def test_a_failing_group_stops_the_handing_out():
    """Groups not yet taken when one fails are never started; the failure reaches the caller."""
    from gpuzarr.devices.cpu import _Groups

    ran = []

    def task(lo, hi):
        ran.append(lo)
        if lo == 2:
            raise ValueError("bad group")

    groups = _Groups([(k, k + 1) for k in range(10)], task)
    with pytest.raises(ValueError, match="bad group"):
        groups.work()
    groups.work()  # another worker finds nothing left
    assert ran == [0, 1, 2]


def test_blocks_of_a_plan_are_computed_once_when_tasks_ask_at_once(monkeypatch):
    from gpuzarr.plan import Plan, make_plan
    from gpuzarr.selection import normalize

    plan = make_plan([normalize((slice(None), slice(None)), (256, 256))], (16, 16), False)
    calls = []
    real = Plan._find_blocks

    def slow(self, chunk_shape):
        calls.append(chunk_shape)
        time.sleep(0.05)
        return real(self, chunk_shape)

    monkeypatch.setattr(Plan, "_find_blocks", slow)
    with ThreadPoolExecutor(4) as pool:
        found = list(pool.map(lambda _: plan.blocks((16, 16)), range(4)))
    assert calls == [(16, 16)]
    assert all(f is found[0] for f in found) and found[0].lo == [0]


def test_a_batch_is_split_over_the_pool_only_where_that_saves_more_than_it_costs(tmp_path, monkeypatch):
    from gpuzarr.devices import cpu

    assert cpu._inline_below(2) == cpu._inline_below(1) == pytest.approx(2 * cpu.SPLIT_SECONDS)
    assert cpu._inline_below(16) == pytest.approx(cpu.SPLIT_SECONDS * 16 / 15)
    data = sample_data((128, 128))
    path = str(tmp_path / "a")
    write_sharded(path, data, (128, 128), (32, 32))  # 16 chunks of 2 KiB: ~0.3 ms predicted
    device = CpuDevice(threads=2)
    submitted = pool_tasks(device, monkeypatch)
    arr = gpuzarr.open(to_memory(path, "split-or-not"), device=device)
    np.testing.assert_array_equal(arr[...], data)
    assert not submitted  # on the calling thread
    monkeypatch.setattr(cpu, "SPLIT_SECONDS", 100e-6)
    np.testing.assert_array_equal(arr[...], data)
    assert submitted  # worth splitting now


def test_many_tiny_chunks_go_to_the_pool_whatever_their_bytes(tmp_path, monkeypatch):
    """256 chunks of 2 KiB are ~0.7 ms by their bytes, but chunk by chunk each costs its Python
    (CHUNK_SECONDS): 4.8-6 ms on the calling thread against ~2 grouped on the pool."""
    from gpuzarr.devices import cpu

    data = sample_data((512, 512))
    path = str(tmp_path / "a")
    write_sharded(path, data, (512, 512), (32, 32))
    device = CpuDevice(threads=2)
    chain = gpuzarr.open(path, device=device)._reader.locator.leaf_chain
    assert 256 * chain.raw_nbytes * cpu.pace(chain) < cpu._inline_below(2)  # inline by its bytes alone
    assert not device.inline(256, chain) and device.inline(16, chain)
    assert device.inline_parts(64, chain) == 1  # 2 KiB a chunk: too little without the GIL to split
    submitted = pool_tasks(device, monkeypatch)
    np.testing.assert_array_equal(gpuzarr.open(path, device=device)[...], data)
    assert submitted


def test_batches_of_a_longer_read_go_to_the_pool_however_small(tmp_path, monkeypatch):
    """Only a read's sole batch may run on the calling thread: a small batch among others (the
    tail of a multi-batch read, a remote piece) decoded there, chunk by chunk, would run beside
    the pool's tasks of the batches before it (a third thread on two cores) while its own chunks
    could decode grouped in one task (a 2048^2 read of 934 + 90 chunks: 0.90-0.97x)."""
    from gpuzarr.devices import cpu

    data = sample_data((512, 512))
    path = str(tmp_path / "a")
    write_sharded(path, data, (512, 512), (32, 32))  # 256 chunks of ~2 KiB, each batch ~0.1 ms predicted
    device = CpuDevice(threads=2)
    submitted, one_by_one = pool_tasks(device, monkeypatch), []
    real_each, real_scatter = cpu._decode_each_and_place, cpu._decode_scatter
    monkeypatch.setattr(cpu, "_decode_each_and_place", lambda *a: one_by_one.append(a) or real_each(*a))
    monkeypatch.setattr(cpu, "_decode_scatter", lambda *a: one_by_one.append(a) or real_scatter(*a))
    report = gpuzarr.ReadReport()
    arr = gpuzarr.open(to_memory(path, "batches"), device=device, settings=gpuzarr.Settings(batch_bytes=64 << 10))
    np.testing.assert_array_equal(arr.read(report=report), data)
    assert report.batches > 2 and len(submitted) >= report.batches and not one_by_one
    np.testing.assert_array_equal(gpuzarr.open(to_memory(path, "sole"), device=device)[:128, :128], data[:128, :128])
    assert one_by_one  # 16 of those chunks as one read's sole batch: on the calling thread
