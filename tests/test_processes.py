"""Every process a data loader makes: a child forked after the parent read (its pools, locks
and filesystems must be rebuilt there), spawn and forkserver workers handed a pickled Array,
and the CPU pool sized by settings, the environment and the CPU affinity."""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from checks import to_memory

import gpuzarr
from gpuzarr.cores import MAX_DEFAULT_THREADS, default_threads
from gpuzarr.devices import base as device_base
from gpuzarr.devices.cpu import CpuDevice
from gpuzarr.sample import sample_data, write_sharded

fork_only = pytest.mark.skipif(not hasattr(os, "fork"), reason="the platform has no fork()")
TIMEOUT = 60  # seconds: a child that hangs (the bug this guards against) fails the test instead


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    """1024² uint16, shards 512², chunks 64²: a full read is 256 chunks, decoded on the pool."""
    path = tmp_path_factory.mktemp("proc") / "a"
    data = sample_data((1024, 1024))
    write_sharded(str(path), data, (512, 512), (64, 64))
    return str(path), data


def _in_fork(fn, *args):
    """fn(*args) in a forked child; its result, or its exception raised here; a hang fails."""
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)

    def run():
        try:
            child.send(("ok", fn(*args)))
        except BaseException as exc:  # sent back, raised in the test
            child.send(("error", exc))

    proc = ctx.Process(target=run)
    proc.start()
    if not parent.poll(TIMEOUT):
        proc.kill()
        proc.join()
        pytest.fail(f"the forked child hung for {TIMEOUT} s")
    status, value = parent.recv()
    proc.join(TIMEOUT)
    if status == "error":
        raise value
    return value


def _held_at_fork(lock_of, child_fn):
    """child_fn() in a child forked while another thread holds lock_of() (read when taken)."""
    holding, release = threading.Event(), threading.Event()

    def hold():
        with lock_of():
            holding.set()
            release.wait(TIMEOUT)

    holder = threading.Thread(target=hold)
    holder.start()
    holding.wait(TIMEOUT)
    try:
        return _in_fork(child_fn)
    finally:
        release.set()
        holder.join()


def _reads(arr, data) -> list[str]:
    """A full read (many batches on the pool), a window, a read_batch: what differs from `data`."""
    bad = []
    if not np.array_equal(arr[...], data):
        bad.append("full")
    if not np.array_equal(arr[100:300, 7:333], data[100:300, 7:333]):
        bad.append("window")
    windows = [(slice(y, y + 64), slice(x, x + 64)) for y, x in ((0, 0), (400, 17), (211, 300))]
    if not np.array_equal(arr.read_batch(windows), np.stack([data[w] for w in windows])):
        bad.append("batch")
    return bad


@fork_only
@pytest.mark.parametrize("where", ["local", "memory"])
def test_a_child_forked_after_the_parent_read_reads_everything(image, where):
    path, data = image
    url = path if where == "local" else to_memory(path, "proc_fork")
    many = gpuzarr.Settings(batch_bytes=64 << 10)  # many batches: the I/O thread fetches ahead (memory://)
    arr = gpuzarr.open(url, device=CpuDevice(threads=2), settings=many)
    shared = gpuzarr.open(url, device="cpu")  # one batch, decoded on the pool
    assert _reads(arr, data) == [] and _reads(shared, data) == []  # the pools' threads exist now
    assert _in_fork(_reads, arr, data) == []
    assert _in_fork(_reads, shared, data) == []
    assert _in_fork(lambda: _reads(gpuzarr.open(url, device="cpu"), data)) == []
    assert _reads(arr, data) == []  # the parent's pools still serve it


@fork_only
def test_a_lock_held_by_another_thread_at_the_fork_does_not_block_the_child(image):
    path, data = image
    arr = gpuzarr.open(path, device=CpuDevice(threads=2))
    assert np.array_equal(arr[:64, :64], data[:64, :64])
    assert _held_at_fork(lambda: arr._reader.locator.cache._lock, lambda: _reads(arr, data)) == []


@fork_only
def test_module_locks_held_by_another_thread_at_the_fork_are_new_in_the_child(image):
    """The shared CPU device's lock (held while a thread makes it), the host library's and the
    codec fallbacks' counters' locks: each held at the fork, each free in the child."""
    from gpuzarr import host_lib
    from gpuzarr.codecs import bytes_to_bytes

    path, data = image
    assert _held_at_fork(lambda: CpuDevice._shared_lock,
                         lambda: _reads(gpuzarr.open(path, device=CpuDevice.shared(3)), data)) == []
    for module, name in ((host_lib, "_LOCK"), (bytes_to_bytes, "_FALLBACKS_LOCK")):
        free = _held_at_fork(lambda: getattr(module, name), lambda: getattr(module, name).acquire(timeout=5))
        assert free, f"{module.__name__}.{name} was still held in the child"


@fork_only
def test_a_child_forked_while_a_thread_computes_a_lazy_property_computes_its_own():
    """functools.cached_property computes under one lock per class attribute (Python 3.10 and
    3.11), which a forked child inherits held: a child forked while a reader thread was inside
    Plan._dim_groups hung at its first read. gpuzarr's lazy properties take no lock."""
    from gpuzarr import forksafe

    inside, release = threading.Event(), threading.Event()

    class Slow:
        def __init__(self, block):
            self.block = block

        @forksafe.memo
        def value(self):
            if self.block:
                inside.set()
                release.wait(TIMEOUT)
            return 7

    computing = threading.Thread(target=lambda: Slow(True).value)
    computing.start()
    inside.wait(TIMEOUT)
    try:
        assert _in_fork(lambda: Slow(False).value) == 7
    finally:
        release.set()
        computing.join()


def test_no_lazy_property_of_gpuzarr_takes_a_lock():
    """Every class of the package: no functools.cached_property (see the test above)."""
    import functools
    import importlib
    import inspect
    import pkgutil

    found = []
    for info in pkgutil.walk_packages(gpuzarr.__path__, "gpuzarr."):
        try:
            module = importlib.import_module(info.name)
        except ImportError:  # an optional integration's dependency missing here
            continue
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == info.name:
                found += [f"{info.name}.{cls.__name__}.{n}" for n, v in vars(cls).items()
                          if isinstance(v, functools.cached_property)]
    assert found == []


@fork_only
def test_an_fsspec_async_filesystem_made_in_the_parent_works_in_the_child(image):
    from fsspec.implementations.asyn_wrapper import AsyncFileSystemWrapper
    from fsspec.implementations.local import LocalFileSystem

    path, data = image
    fs = AsyncFileSystemWrapper(LocalFileSystem())
    arr = gpuzarr.open(fs, path, device="cpu")
    assert type(arr.store) is gpuzarr.store.Store  # the fsspec path, not the os-call one
    assert _reads(arr, data) == []

    def in_child():
        with pytest.raises(RuntimeError, match="fork-safe"):
            fs.cat_file(path + "/zarr.json")  # the parent's filesystem object refuses to run here
        return _reads(arr, data)

    assert _in_fork(in_child) == []


@fork_only
def test_the_gpu_in_a_child_forked_after_cuda_was_used_raises_saying_what_to_do(monkeypatch, image):
    """Models the parent's CUDA use by gpuzarr's own record of it (no GPU here): a GPU read in the
    child must raise before any CUDA call, naming spawn/forkserver."""
    from gpuzarr.devices.gpu import GpuDevice
    from gpu_standin import StandinEngine

    path, _ = image
    monkeypatch.setitem(device_base._cuda, "used", True)
    arr = gpuzarr.open(path, device=GpuDevice(StandinEngine()))
    assert arr[:8, :8].shape == (8, 8)  # the parent still reads

    def in_child():
        messages = []
        for attempt in (lambda: arr[:8, :8], lambda: device_base.get_device("gpu"),
                        lambda: device_base.get_device("auto")):
            with pytest.raises(gpuzarr.GpuzarrError) as info:
                attempt()
            messages.append(str(info.value))
        return messages

    for message in _in_fork(in_child):
        assert "spawn" in message and "forkserver" in message and "device='cpu'" in message


def _read_pickled(blob: bytes, sel: tuple) -> np.ndarray:
    return pickle.loads(blob)[sel]


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_spawn_and_forkserver_workers_read_a_pickled_array(image, method):
    if method not in mp.get_all_start_methods():
        pytest.skip(f"start method {method} is not available on this platform")
    path, data = image
    arr = gpuzarr.open(path, device="cpu")
    assert np.array_equal(arr[:32, :32], data[:32, :32])  # warm pools and caches travel nowhere
    sels = [(slice(0, 1024), slice(0, 1024)), (slice(30, 70), slice(1000, 1024)), (5, slice(None, None, -3))]
    with mp.get_context(method).Pool(2) as pool:
        got = pool.starmap(_read_pickled, [(pickle.dumps(arr), sel) for sel in sels], chunksize=1)
    for sel, result in zip(sels, got):
        np.testing.assert_array_equal(result, data[sel])


def test_a_pickled_array_keeps_its_settings_and_device_and_reads_no_metadata(tmp_path, image):
    path, data = image
    settings = gpuzarr.Settings(batch_bytes=1 << 15, threads=3)
    arr = gpuzarr.open(path, device="cpu", settings=settings)
    clone = pickle.loads(pickle.dumps(arr))
    assert clone._resolved is None  # the device is chosen at the first read, in the receiver
    os.rename(os.path.join(path, "zarr.json"), os.path.join(path, "zarr.json.away"))
    try:
        np.testing.assert_array_equal(clone[...], data)  # metadata came in the pickle
    finally:
        os.rename(os.path.join(path, "zarr.json.away"), os.path.join(path, "zarr.json"))
    assert clone._settings == settings and clone.device == "cpu" and clone._device.threads == 3
    assert (clone.shape, clone.dtype, clone.chunks, clone.shards) == (arr.shape, arr.dtype, arr.chunks, arr.shards)
    own = pickle.loads(pickle.dumps(gpuzarr.open(path, device=CpuDevice(threads=2))))
    assert own._device.threads == 2


def test_a_pickled_group_opens_its_members(tmp_path):
    import zarr

    root = zarr.open_group(str(tmp_path / "g"), mode="w")
    member = root.create_array("scans/a", shape=(40, 30), chunks=(16, 16), dtype="i4", fill_value=-1)
    member[:20] = np.arange(600).reshape(20, 30)
    zarr.consolidate_metadata(str(tmp_path / "g"))
    group = pickle.loads(pickle.dumps(gpuzarr.open(str(tmp_path / "g"), device="cpu")))
    assert group.keys() == ["scans"]
    np.testing.assert_array_equal(group["scans/a"][...], member[...])


def test_a_memory_store_pickled_into_another_process_fails_clearly(image):
    path, _ = image
    blob = pickle.dumps(gpuzarr.open(to_memory(path, "proc_pickle"), device="cpu"))
    code = ("import pickle, sys\nimport gpuzarr\n"
            "try:\n    pickle.loads(sys.stdin.buffer.read())\n"
            "except gpuzarr.StoreError as e:\n    print('StoreError:', e)\n")
    result = subprocess.run([sys.executable, "-c", code], input=blob, capture_output=True, timeout=TIMEOUT)
    assert b"StoreError: memory://" in result.stdout and b"lives in one process" in result.stdout, result


def test_threads_come_from_settings_then_the_environment_then_the_affinity(monkeypatch, image):
    path, _ = image
    assert gpuzarr.open(path, device="cpu", settings=gpuzarr.Settings(threads=3))._device.threads == 3
    monkeypatch.setenv("GPUZARR_THREADS", "5")
    assert default_threads() == 5
    monkeypatch.setenv("GPUZARR_THREADS", "many")
    with pytest.raises(gpuzarr.SettingsError, match="GPUZARR_THREADS='many'"):
        default_threads()
    monkeypatch.delenv("GPUZARR_THREADS")
    if hasattr(os, "sched_getaffinity"):
        assert default_threads() == min(MAX_DEFAULT_THREADS, len(os.sched_getaffinity(0)))
        for n, want in ((3, 3), (8, 8), (16, 8), (64, 8)):  # past 8 threads, tasks queue for the GIL
            monkeypatch.setattr(os, "sched_getaffinity", lambda pid, n=n: set(range(n)))
            assert default_threads() == want
        monkeypatch.setenv("GPUZARR_THREADS", "16")
        assert default_threads() == 16  # asked for: taken


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity on this platform")
def test_the_default_pool_follows_the_cpu_affinity_not_the_machine():
    code = ("import os; os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})\n"
            "from gpuzarr.devices.cpu import CpuDevice; print(CpuDevice.shared().threads)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT,
                            env={k: v for k, v in os.environ.items() if k != "GPUZARR_THREADS"})
    assert result.stdout.strip() == "1", result


def test_a_dataloader_worker_takes_its_share_of_the_cores(monkeypatch):
    """torch's worker info, as torch.utils.data.get_worker_info() gives it inside a worker."""
    import types

    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    fake = types.SimpleNamespace(get_worker_info=lambda: types.SimpleNamespace(num_workers=2, id=0))
    monkeypatch.delenv("GPUZARR_THREADS", raising=False)
    monkeypatch.setitem(sys.modules, "torch.utils.data", fake)
    assert default_threads() == max(1, min(MAX_DEFAULT_THREADS, n // 2))
    fake.get_worker_info = lambda: types.SimpleNamespace(num_workers=4 * n, id=0)
    assert default_threads() == 1


@pytest.mark.parametrize("field, value", [("batch_chunks", 0), ("batch_bytes", -1), ("threads", 0),
                                          ("threads", "4"), ("batch_decoded_bytes", 1.5),
                                          ("index_cache_bytes", -1), ("batch_chunks", True)])
def test_bad_settings_are_refused_where_they_are_made(field, value):
    with pytest.raises(gpuzarr.SettingsError, match=f"Settings.{field}"):
        gpuzarr.Settings(**{field: value})


@fork_only
def test_a_forked_dataloader_worker_sizes_the_pool_after_it_learns_it_is_one(image):
    """torch sets a worker's info after the fork: the shared device's pool, already used in the
    parent, is sized in the child at its first read, when the info is there."""
    import types

    path, data = image
    arr = gpuzarr.open(path, device="cpu")
    assert np.array_equal(arr[...], data)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()

    def in_worker():
        os.environ.pop("GPUZARR_THREADS", None)
        fake = types.SimpleNamespace(get_worker_info=lambda: types.SimpleNamespace(num_workers=cores, id=0))
        sys.modules["torch.utils.data"] = fake  # as torch's worker loop does before fetching
        ok = bool(np.array_equal(arr[...], data))
        return ok, arr._device.threads

    assert _in_fork(in_worker) == (True, 1)


def test_a_daemon_pool_starts_threads_as_work_needs_them_and_holds_no_exit():
    """forksafe.LazyPool(daemon=True), the request threads of object storage: threads started
    only while work finds none idle, never more than its size, results and errors through the
    futures, work not started cancellable, and daemon threads (a process ending does not wait
    for a request left hanging)."""
    from concurrent.futures import wait as _wait

    from gpuzarr import forksafe

    pool = forksafe.LazyPool(4, "test-daemon", daemon=True)
    assert pool.submit(lambda a, b: a + b, 2, 3).result(5) == 5
    gate = threading.Event()
    started = [pool.submit(gate.wait, 5) for _ in range(6)]  # 4 run, 2 wait for a thread
    time.sleep(0.2)
    mine = [t for t in threading.enumerate() if t.name.startswith("test-daemon")]
    assert len(mine) == 4 and all(t.daemon for t in mine)
    assert started[-1].cancel() and not started[0].cancel()
    gate.set()
    _wait(started[:-1], 5)
    assert all(f.result() is True for f in started[:-1])

    def fails():
        raise KeyError("x")

    with pytest.raises(KeyError):
        pool.submit(fails).result(5)
    # work a caller gave up on (a read past its deadline against a store that never answers):
    # later work goes to new threads while at most `most` are so left, then waits behind them
    hang = threading.Event()
    hung = [pool.submit(hang.wait, 10) for _ in range(4)]
    time.sleep(0.2)
    pool.abandon(hung, most=6)
    assert pool.submit(lambda: 7).result(5) == 7  # a new thread
    more = [pool.submit(hang.wait, 10) for _ in range(4)]  # every new thread busy too
    time.sleep(0.2)
    pool.abandon(more, most=6)  # 8 would be left: not renewed
    waiting = pool.submit(lambda: 8)
    time.sleep(0.3)
    assert not waiting.done()
    assert len([t for t in threading.enumerate() if t.name.startswith("test-daemon")]) <= 8
    hang.set()
    assert waiting.result(5) == 8
    time.sleep(0.3)
    assert len([t for t in threading.enumerate() if t.name.startswith("test-daemon")]) <= 4
