"""What a forked child must rebuild before it reads: threads do not survive fork() (a pool's
workers are gone, and a read waiting on them waits forever), a lock that another thread held at
the fork stays held in the child, and an fsspec async filesystem refuses to run there.

Objects with such state register here; their `_after_fork()` runs in the child, before any code
of the child's own, so every read works after fork whatever the parent did."""

from __future__ import annotations

import os
import queue
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

_objects: weakref.WeakSet = weakref.WeakSet()
_functions: list = []  # module state: called with no arguments
_lock = threading.Lock()


class Lock:
    """A threading.Lock that a forked child gets anew: another thread of the parent may have held
    it at the fork, and that thread is not in the child to release it."""

    def __init__(self) -> None:
        self._after_fork()
        register(self)

    def _after_fork(self) -> None:
        self._lock = threading.Lock()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        return self._lock.acquire(blocking, timeout)

    def release(self) -> None:
        self._lock.release()

    def __enter__(self) -> bool:
        return self._lock.acquire()

    def __exit__(self, *exc: Any) -> None:
        self._lock.release()


def memo(fn: Callable[[Any], Any]) -> Any:
    """A property computed once per instance and kept in its __dict__ (where a value may also be
    put beforehand): functools.cached_property without its lock, which Python 3.10 and 3.11 share
    between every instance of the class and a forked child inherits as it was (a child forked
    while a thread of the parent computed one hung at its own first: 3-6 children in 100). Two
    threads may both compute it at once; they get the same value."""
    name = fn.__name__

    def get(self: Any) -> Any:
        found = self.__dict__.get(name, _MISSING)
        return self.__dict__.setdefault(name, fn(self)) if found is _MISSING else found

    get.__doc__ = fn.__doc__
    return property(get)


_MISSING = object()


def register(obj: Any) -> Any:
    """Rebuild `obj` (through its `_after_fork()`) in every forked child; kept weakly."""
    with _lock:
        _objects.add(obj)
    return obj


class _DaemonPool:
    """Up to `workers` daemon threads taking work in turn, each started when work finds no
    thread idle: unlike ThreadPoolExecutor's, a process ending does not wait for them (a request
    left hanging past a read's deadline ends by its client's timeout, up to a minute later)."""

    def __init__(self, workers: int, name: str):
        self._work: queue.SimpleQueue = queue.SimpleQueue()
        self._workers, self._name = workers, name
        self._started = 0
        self._idle = threading.Semaphore(0)
        self._lock = threading.Lock()

    def _run(self) -> None:
        while (item := self._work.get()) is not None:
            future, fn, args = item
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(*args))
                except BaseException as exc:  # noqa: BLE001 - the future carries it to the caller
                    future.set_exception(exc)
            del item, future, fn, args
            self._idle.release()

    def submit(self, fn: Callable, *args: Any) -> Future:
        future: Future = Future()
        self._work.put((future, fn, args))
        if not self._idle.acquire(blocking=False):
            with self._lock:
                if self._started < self._workers:
                    self._started += 1
                    threading.Thread(target=self._run, name=f"{self._name}_{self._started}", daemon=True).start()
        return future

    def shutdown(self, wait: bool = False) -> None:
        """The threads end once the work queued before this has."""
        with self._lock:
            for _ in range(self._started):
                self._work.put(None)


class LazyPool:
    """A thread pool started at its first use, and started anew in a forked child (the parent's
    threads are not there); `workers` may be a callable, asked then (a child sizes its own).
    `daemon`: its threads never hold up the process's exit (see _DaemonPool); `make(workers,
    name)`: the pool itself, where neither kind fits (see spread_pool)."""

    def __init__(self, workers: int | Callable[[], int], name: str, daemon: bool = False,
                 make: Callable[[int, str], Any] | None = None):
        self._workers, self._name = workers, name
        self._make = make or (_DaemonPool if daemon else ThreadPoolExecutor)
        self._after_fork()
        register(self)

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
        self._pool: Any = None
        self._abandoned: list[Future] = []  # see abandon

    def submit(self, fn: Callable, *args: Any) -> Future:
        return self._started().submit(fn, *args)

    def submit_beside(self, fn: Callable, *args: Any) -> Future:
        """Work this thread does its own part beside: kept off its CPU where the pool can (see
        spread_pool)."""
        pool = self._started()
        return getattr(pool, "submit_beside", pool.submit)(fn, *args)

    def _started(self) -> Any:
        pool = self._pool
        if pool is None:
            with self._lock:
                if self._pool is None:
                    workers = self._workers() if callable(self._workers) else self._workers
                    self._pool = self._make(workers, self._name)
                pool = self._pool
        return pool

    def abandon(self, running: list[Future], most: int) -> None:
        """Work left running by a caller that gave up on it (a read past its deadline), which may
        hang long: later work goes to new threads, not a place behind it, while at most `most`
        such are left running (threads stay bounded however many callers give up); past that,
        later work waits for these threads. The present threads end once their work has."""
        if not running:
            return
        with self._lock:
            self._abandoned = [future for future in self._abandoned if not future.done()]
            if len(self._abandoned) + len(running) > most:
                return
            self._abandoned += running
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False)

    def run_parts(self, work: Callable[[Any], None], parts: list) -> None:
        """work(part) for every part: the first on this thread, the others on the pool, each
        taken back and done here if no worker has started it by then (workers busy with other
        reads), or dropped once a part has failed. Every part has ended before this returns or
        raises: parts write into the caller's buffers."""
        futures = [self.submit_beside(work, part) for part in parts[1:]]
        error: BaseException | None = None
        for k, part in enumerate(parts):
            try:
                if k == 0:
                    work(part)
                elif futures[k - 1].cancel():
                    if error is None:
                        work(part)
                else:
                    futures[k - 1].result()
            except BaseException as exc:  # the other parts still end first
                error = error or exc
        if error is not None:
            raise error


def call_in_child(fn: Any) -> Any:
    """Run `fn()` in every forked child (for module state); usable as a decorator."""
    _functions.append(fn)
    return fn


def _in_child() -> None:
    global _lock
    _lock = threading.Lock()
    for fn in _functions:
        fn()
    for obj in list(_objects):
        obj._after_fork()


if hasattr(os, "register_at_fork"):  # POSIX; Windows has no fork
    # held across the fork, so the child never sees the set half-updated by another thread
    os.register_at_fork(before=lambda: _lock.acquire(), after_in_parent=lambda: _lock.release(),
                        after_in_child=_in_child)
