"""spread_pool.SpreadPool, the CPU device's threads: a pool like any other, and work submitted
beside the caller runs on none of the CPUs the caller is on, its worker's CPU mask whole again
once the task ends."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from concurrent.futures import wait

import numpy as np
import pytest

from gpuzarr import spread_pool
from gpuzarr.spread_pool import SpreadPool, current_cpu

AFFINITY = hasattr(os, "sched_setaffinity") and current_cpu() is not None
needs_two_cpus = pytest.mark.skipif(not AFFINITY or len(os.sched_getaffinity(0)) < 2,
                                    reason="needs per-thread CPU affinity (Linux) and 2 CPUs allowed")


def _workers(name: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(name + "_")]


def test_a_spread_pool_runs_work_as_a_pool_does():
    """Results and errors through the futures; threads started only when work finds none idle,
    never more than its size, daemons; work finding all busy waits, cancellable, and runs once
    a worker is free; after shutdown, work given before it ends, and no more is taken."""
    pool = SpreadPool(2, "test-spread")
    assert pool.submit(lambda a, b: a + b, 2, 3).result(5) == 5
    assert len(_workers("test-spread")) == 1  # the one worker was idle again for the next
    assert pool.submit_beside(lambda: 4).result(5) == 4
    assert len(_workers("test-spread")) == 1
    with pytest.raises(KeyError):
        pool.submit_beside({}.__getitem__, "x").result(5)
    gate = threading.Event()
    running = [pool.submit(gate.wait, 5) for _ in range(2)]
    waiting = [pool.submit(lambda k=k: k) for k in range(3)]
    time.sleep(0.2)
    assert len(_workers("test-spread")) == 2 and all(t.daemon for t in _workers("test-spread"))
    assert not any(f.done() for f in waiting)
    assert waiting[0].cancel()
    gate.set()
    wait(running + waiting[1:], 5)
    assert [f.result() for f in running + waiting[1:]] == [True, True, 1, 2]
    last = pool.submit(time.sleep, 0.2)
    pool.shutdown(wait=True)
    assert last.done() and not _workers("test-spread")
    with pytest.raises(RuntimeError, match="shut down"):
        pool.submit(lambda: 1)


@needs_two_cpus
def test_work_beside_the_caller_runs_off_its_cpu_and_the_worker_gets_its_mask_back():
    allowed = os.sched_getaffinity(0)
    pool = SpreadPool(1, "test-beside")

    def probe() -> tuple:
        return current_cpu(), os.sched_getaffinity(0)

    pool.submit(probe).result(5)  # the worker started (a new thread is placed as the kernel likes)
    here = current_cpu()
    os.sched_setaffinity(0, {here})  # this thread stays on `here` while the worker wakes
    try:
        cpu, mask = pool.submit_beside(probe).result(5)
        assert here not in mask and mask == allowed - {here}
        assert cpu != here
        # a plain submit keeps no CPU free: the worker's mask is whole again
        assert pool.submit(probe).result(5)[1] == allowed
    finally:
        os.sched_setaffinity(0, allowed)
        pool.shutdown()


@needs_two_cpus
def test_work_beside_the_caller_leaves_out_the_cpus_of_busy_workers():
    """With the caller on one CPU and a busy worker on another, a second worker is kept off
    both; with 2 CPUs nothing would be left, so its mask stays whole."""
    allowed = os.sched_getaffinity(0)
    pool = SpreadPool(2, "test-busy")
    gate = threading.Event()
    both = [pool.submit(gate.wait, 5) for _ in range(2)]  # both workers started, then idle
    gate.set()
    wait(both, 5)
    time.sleep(0.1)
    gate.clear()
    here = current_cpu()
    os.sched_setaffinity(0, {here})
    began = threading.Event()
    try:
        first = pool.submit_beside(lambda: (current_cpu(), began.set(), gate.wait(5)))  # kept off `here`
        assert began.wait(5)  # busy now, its CPU known to the pool
        mask = pool.submit_beside(lambda: os.sched_getaffinity(0)).result(5)
        gate.set()
        busy_cpu = first.result(5)[0]
        assert busy_cpu != here
        assert mask == (allowed - {here, busy_cpu} or allowed)
    finally:
        gate.set()
        os.sched_setaffinity(0, allowed)
        pool.shutdown()


def test_the_cpu_device_decodes_beside_its_pool(tmp_path, monkeypatch):
    """A read the caller decodes beside the pool (its groups, or its parts) wakes its workers
    through submit_beside: the CPU device's pool is a SpreadPool."""
    zarr = pytest.importorskip("zarr")
    from gpuzarr.devices.cpu import CpuDevice

    import gpuzarr

    data = np.arange(512 * 512, dtype="uint16").reshape(512, 512)
    z = zarr.create_array(str(tmp_path / "a.zarr"), shape=data.shape, chunks=(32, 32), shards=(128, 128),
                          dtype=data.dtype, compressors=zarr.codecs.ZstdCodec())
    z[...] = data
    beside = []
    original = SpreadPool.submit_beside
    monkeypatch.setattr(SpreadPool, "submit_beside", lambda self, fn, *a: beside.append(fn) or original(self, fn, *a))
    arr = gpuzarr.open(str(tmp_path / "a.zarr"), device=CpuDevice(threads=2))
    assert np.array_equal(arr[...], data)
    assert beside  # the full read's groups
    assert isinstance(arr._device.pool._pool, SpreadPool)


def test_exit_waits_for_work_under_way_and_not_for_idle_workers(tmp_path):
    """The workers are daemons: an idle pool never holds up the exit, while a task still running
    (work a caller's daemon thread left) ends before the interpreter goes."""
    done = tmp_path / "done"
    script = f"""
import time
from gpuzarr.spread_pool import SpreadPool
idle = SpreadPool(2, "idle")
idle.submit(lambda: None).result()
busy = SpreadPool(1, "busy")
def late():
    time.sleep(0.3)
    open({str(done)!r}, "w").write("ok")
busy.submit(late)
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert done.read_text() == "ok"


def test_without_affinities_nothing_is_kept_off(monkeypatch):
    """Where the OS has no per-thread affinity (or the CPU is unknown), work beside the caller
    runs as any other."""
    monkeypatch.setattr(spread_pool, "_CPU", None)
    assert spread_pool.current_cpu() is None
    assert spread_pool._keep_off(threading.get_native_id(), set()) is None
    pool = SpreadPool(1, "test-plain")
    try:
        pool.submit(lambda: None).result(5)
        assert pool.submit_beside(lambda: 6).result(5) == 6
    finally:
        pool.shutdown()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork() is POSIX only")
def test_a_forked_child_exits_without_waiting_on_the_parents_workers(tmp_path):
    """A child forked while a worker of the parent held its pool's lock exits at once: the
    parent's pools are forgotten there (their workers are not in the child)."""
    script = """
import os, sys
from gpuzarr.spread_pool import SpreadPool, _pools
pool = SpreadPool(2, "parent")
pool.submit(lambda: None).result()
pool._lock.acquire()  # as a worker of the parent's might hold it at the fork
pid = os.fork()
if pid == 0:
    sys.exit(3 if len(_pools) == 0 else 4)  # runs the child's exit hooks
pool._lock.release()
_, status = os.waitpid(pid, 0)
print(os.waitstatus_to_exitcode(status))
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "3"
