"""The CPU device's thread pool. Work the submitting thread does its own part beside
(`submit_beside`) wakes one chosen idle worker, kept off the CPUs that the submitting thread and
the busy workers run on until its task ends.

Why: the kernel places a woken thread (at the pool's wake, and at every GIL hand-off after),
and some kernels place it on the waker's busy CPU while another idles, and leave it there for
milliseconds. On this project's 2-vCPU VMs (Firecracker, `kernel.sched_vcpu_pack`), a remote
full read whose decode threads woke after the 20 ms wait for its shards ran all its groups on
one CPU in about one read of three (12 ms of decoding instead of 6; the other CPU idle, as
`perf sched` shows). Workers of a ThreadPoolExecutor share one queue: nobody chooses which one
wakes, so none can be kept off a CPU beforehand. Where the OS has no per-thread affinity (macOS,
Windows), workers are woken as they are."""

from __future__ import annotations

import atexit
import ctypes
import os
import queue
import threading
import weakref
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from . import forksafe

_pools: weakref.WeakSet = weakref.WeakSet()  # this process's: see _exit


@forksafe.call_in_child
def _forget() -> None:
    """A forked child has none of the parent's workers, and a lock of theirs may have been held
    at the fork: its exit must not wait on them (its pools are made anew, forksafe.LazyPool)."""
    _pools.clear()


def _getcpu() -> Callable[[], int] | None:
    """libc's sched_getcpu (the CPU the calling thread runs on), where threads have affinities."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    try:
        fn = ctypes.CDLL(None).sched_getcpu
    except (OSError, AttributeError):
        return None
    fn.restype, fn.argtypes = ctypes.c_int, []
    return fn


_CPU = _getcpu()


def current_cpu() -> int | None:
    """The CPU this thread runs on now (None where unknown)."""
    if _CPU is None:
        return None
    cpu = _CPU()
    return cpu if cpu >= 0 else None


class _Worker:
    __slots__ = ("inbox", "tid", "cpu")

    def __init__(self) -> None:
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        self.tid: int | None = None  # its thread's native id, once started
        self.cpu: int | None = None  # where it started its task, while busy


class SpreadPool:
    """Up to `workers` daemon threads, each started when work finds none idle; work that finds
    every one busy waits in a backlog that the workers take in turn."""

    def __init__(self, workers: int, name: str):
        self._workers, self._name = workers, name
        self._lock = threading.Lock()
        self._all: list[_Worker] = []
        self._threads: list[threading.Thread] = []
        self._idle: list[_Worker] = []  # the last to go idle is woken first: its caches are warm
        self._backlog: deque = deque()
        self._closed = False
        _pools.add(self)

    def submit(self, fn: Callable, *args: Any) -> Future:
        return self._submit(fn, args, False)

    def submit_beside(self, fn: Callable, *args: Any) -> Future:
        """Work the submitting thread does its own part beside: an idle worker that takes it runs
        it on none of the CPUs that thread and the busy workers are on (where it may: see
        _keep_off); a worker started for it, or a busy one taking it from the backlog, runs it
        where the kernel places it."""
        return self._submit(fn, args, True)

    def _submit(self, fn: Callable, args: tuple, beside: bool) -> Future:
        future: Future = Future()
        busy = None
        with self._lock:
            if self._closed:
                raise RuntimeError(f"{self._name}: the pool was shut down")
            if self._idle:
                worker = self._idle.pop()
                if beside:
                    busy = {w.cpu for w in self._all if w.cpu is not None}
            elif len(self._all) < self._workers:
                worker = self._start()
            else:
                self._backlog.append((future, fn, args, None))
                return future
        mask = None if busy is None else _keep_off(worker.tid, busy)
        worker.inbox.put((future, fn, args, mask))
        return future

    def _start(self) -> _Worker:
        worker = _Worker()
        self._all.append(worker)
        thread = threading.Thread(target=self._run, args=(worker,), name=f"{self._name}_{len(self._all)}", daemon=True)
        self._threads.append(thread)
        thread.start()
        return worker

    def shutdown(self, wait: bool = False) -> None:
        """The threads end once the work given them has (`wait`: this waits for that)."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
            threads = list(self._threads)
        for worker in idle:
            worker.inbox.put(None)
        if wait:
            for thread in threads:
                thread.join()

    def _run(self, worker: _Worker) -> None:
        worker.tid = threading.get_native_id()
        while (item := worker.inbox.get()) is not None:
            while item is not None:
                future, fn, args, mask = item
                worker.cpu = current_cpu()
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(fn(*args))
                    except BaseException as exc:  # noqa: BLE001 - the future carries it to the caller
                        future.set_exception(exc)
                if mask is not None:  # kept off busy CPUs for the task: free again
                    _set_mask(0, mask)
                del future, fn, args, item
                with self._lock:
                    item = self._backlog.popleft() if self._backlog else None
                    if item is None:
                        worker.cpu = None
                        if self._closed:
                            return
                        self._idle.append(worker)


def _keep_off(tid: int | None, busy: set) -> set | None:
    """Narrow thread `tid`'s CPU mask to leave out this thread's CPU and `busy`; its mask as it
    was (to take back once its task ends), or None where nothing was narrowed (nothing would be
    left, or the CPUs are unknown). Kept off only until it woke, the worker soon shared a CPU
    with the caller again (a GIL hand-off placed the woken one on the other's): in-process A/B
    of that remote read, kept off to wake 0.87-0.93 of tensorstore's time, for the whole task
    0.85-0.91, not at all 0.98-1.00."""
    here = current_cpu()
    if tid is None or here is None:
        return None
    try:
        mask = os.sched_getaffinity(tid)
    except OSError:
        return None
    away = mask - busy - {here}
    if not away or away == mask or not _set_mask(tid, away):
        return None
    return mask


def _set_mask(tid: int, mask: set) -> bool:
    try:
        os.sched_setaffinity(tid, mask)
    except OSError:  # the thread is gone, or the mask is outside a cpuset changed since
        return False
    return True


@atexit.register
def _exit() -> None:
    """Workers are daemon threads, so that an idle pool never holds up the exit; one still
    decoding into a caller's buffer (work a daemon thread of the caller's left running) is
    waited for before the interpreter frees what it writes into."""
    for pool in list(_pools):
        pool.shutdown(wait=True)
