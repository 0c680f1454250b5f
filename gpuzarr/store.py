"""Key-value access to a Zarr hierarchy over fsspec, with many byte ranges read in one call.
A missing key is `None` (fill value), never an error; any other failure is a StoreError."""

from __future__ import annotations

import bisect
import errno
import itertools
import os
import re
import stat
import sys
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import fsspec
import numpy as np
from fsspec.implementations.local import LocalFileSystem

from . import forksafe, host_lib
from .cores import default_threads
from .errors import DeadlineError, SettingsError, StoreError
from .metadata import node_path_problem

_NOWAIT = getattr(os, "RWF_NOWAIT", 0)  # Linux: read only what the page cache holds, else EAGAIN
Range = tuple[str, int, int | None]  # key, start (negative: suffix), stop (None: to the end)
Landed = Callable[[int, Any], None]  # called with (i, range i's bytes or None) as each range arrives
_MISSING = (FileNotFoundError, KeyError, NotADirectoryError, IsADirectoryError)
_REASON_CHARS = 200  # of an underlying error's text in a StoreError message


# why remote reads went through another path than one GET per range: "fork" (obstore's reads in
# a forked child, through fsspec), "ignored_range" (a server answered a ranged GET with the whole
# object: sliced, or read whole once and sliced)
FALLBACKS: Counter = Counter()
# what a read's ReadReport.notes say of the latter, once per read
IGNORED_RANGE_NOTE = "ignored Range: the server answered ranged GETs with whole objects, read whole and sliced"



def slice_whole(data: Any, start: int, stop: int | None) -> memoryview:
    """Bytes start..stop of a whole object (start < 0: its last -start), as a ranged GET would
    have answered: what a server that ignores Range sent, cut to the range."""
    view = memoryview(data)
    size = len(view)
    begin = max(0, size + start) if start < 0 else min(start, size)
    end = size if stop is None else min(max(stop, begin), size)
    return view[begin:end]

class ChangedError(StoreError):
    """A shard changed between the read of its index and the read of its chunks (its ETag or
    generation differs): the read is made again from fresh indexes (see pipeline.Reader.read)."""


class CannotListError(StoreError):
    """The store cannot list a directory (an HTTP server, most often), so what only a listing
    tells (a group's members without consolidated metadata, an array's stored chunks) is unknown."""


REQUESTS_ENV = "GPUZARR_REQUESTS"
DEFAULT_REQUESTS = 64


def requests_in_flight() -> int:
    """Requests in flight at once to object storage, process-wide: $GPUZARR_REQUESTS, else 64
    (a read's Settings.requests_in_flight bounds its own)."""
    value = os.environ.get(REQUESTS_ENV, str(DEFAULT_REQUESTS)).strip()
    if not value.isdigit() or int(value) < 1:
        raise SettingsError(f"{REQUESTS_ENV}={value!r}: expected a positive integer")
    return int(value)


def pooled(protocol: str, options: dict | None) -> dict:
    """storage_options for fsspec with s3fs's connection pool (botocore's: 10 by default) sized to
    the requests gpuzarr keeps in flight, unless the options size it. The aiohttp sessions of
    HTTP, gcsfs and adlfs hold 100 connections by default (aiohttp's TCPConnector limit), above
    the default 64 in flight; a connector of another size is the user's, in their client or
    session kwargs (an aiohttp connector belongs to the event loop fsspec makes it in)."""
    options = dict(options or {})
    if protocol.lower() in ("s3", "s3a"):
        conf = dict(options.get("config_kwargs") or {})
        conf.setdefault("max_pool_connections", requests_in_flight())
        options["config_kwargs"] = conf
    return options


class ReadIO:
    """One read's store I/O: what it counts (into a ReadReport, through `add_io`) and its deadline.

    Passed explicitly, never through a thread-local or a context variable: a read's store calls
    run on the caller's thread (locating, single-batch fetches), on the I/O thread (staged
    fetches), on the CPU pool (tasks reading their own local chunks) and on obstore's loop
    thread, and two reads of one array may run at once. The Reader hands fetch and its Locator a
    `counted` view of the store carrying this object; the stores themselves keep no per-read state."""

    __slots__ = ("report", "store", "seconds", "started", "deadline", "requests")

    def __init__(self, report: Any, store: Store, seconds: float | None = None, requests: int | None = None):
        self.report, self.store, self.seconds = report, store, seconds
        self.requests = requests  # Settings.requests_in_flight: None, the process's bound
        self.started = time.monotonic()
        self.deadline = None if seconds is None else self.started + seconds

    def remaining(self) -> float | None:
        """Seconds left before the deadline (0 once past it); None without one."""
        return None if self.deadline is None else max(0.0, self.deadline - time.monotonic())

    def expired(self) -> DeadlineError:
        ran = time.monotonic() - self.started
        return DeadlineError(f"{self.store.url}: the read was still fetching after {ran:.3g} s, past its "
                             f"deadline of {self.seconds:g} s (Settings.deadline_seconds)")

    def check(self) -> None:
        """Raise DeadlineError once the deadline has passed: no request starts after it."""
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise self.expired()

    def add(self, requests: int, nbytes: int, retries: int = 0) -> None:
        self.report.add_io(requests, nbytes, retries)

    def note(self, text: str) -> None:
        """Into the report's notes, once: how the store read differently (see store_obstore)."""
        self.report.note(text)

    def count(self, ranges: Sequence[Range], results: Sequence[Any] | None = None) -> None:
        """One request per range that asks for bytes (an empty one asks nothing: obstore sends
        none); its bytes: stop - start, a suffix's length, a whole object's size as read."""
        requests = nbytes = 0
        for i, (_, start, stop) in enumerate(ranges):
            if stop is not None:
                if stop > start:
                    requests += 1
                    nbytes += stop - start
                continue
            requests += 1
            if start < 0:
                nbytes -= start
            elif results is not None and results[i] is not None:
                nbytes += len(results[i])
        self.add(requests, nbytes)

    def call(self, read: Callable[[Sequence[Range]], list], ranges: Sequence[Range]) -> list:
        """`read(ranges)`, counted; with a deadline, run on a helper thread and waited for no longer
        than the time left: a store that cannot bound its own calls (fsspec, zarr-python stores)
        never holds the read past its deadline. A call left behind returns new bytes objects that
        nobody reads: it writes into no buffer of the read's."""
        if self.deadline is None:
            results = read(ranges)
        else:
            self.check()
            calls = _calls(self.store)
            future = calls.submit(read, ranges)
            try:
                results = future.result(self.remaining())
            except FutureTimeout:
                if not future.done():
                    if not future.cancel():  # under way: it may hang (a store that never answers)
                        calls.abandon([future], 2 * CALLS)
                    raise self.expired() from None
                results = future.result()  # the store's own timeout, or it ended just after the wait did
        self.count(ranges, results)
        return results


class _Counted:
    """A per-read view of a store (see `counted`): the methods fetch and the Locator call go to
    the store's `*_with` methods with the read's ReadIO; anything else is the store's own."""

    _target: Store
    _io: ReadIO

    def __getattr__(self, name: str) -> Any:  # the store's data (root, client, flags)
        if name in ("_target", "_io"):
            raise AttributeError(name)
        return getattr(self._target, name)

    def read_ranges(self, ranges: Sequence[Range], landed: Landed | None = None) -> list[bytes | None]:
        if landed is None:
            return self._target.read_ranges_with(ranges, self._io)
        return self._target.read_ranges_with(ranges, self._io, landed=landed)

    def read_indexes(self, ranges: Sequence[Range], landed: Landed | None = None) -> list[bytes | None]:
        if landed is None:
            return self._target.read_ranges_with(ranges, self._io, indexes=True)
        return self._target.read_ranges_with(ranges, self._io, indexes=True, landed=landed)

    def read_ranges_into(self, ranges: Sequence[tuple[str, int, int]], pieces: Sequence[list]) -> list[int | None]:
        return self._target.read_ranges_into_with(ranges, pieces, self._io)  # type: ignore[attr-defined]

    def read_files_into(self, keys: Sequence[str], place: Callable[[list], list]) -> list[int | None]:
        return self._target.read_files_into_with(keys, place, self._io)  # type: ignore[attr-defined]

    def get(self, key: str) -> bytes | None:
        return self.read_ranges([(key, 0, None)])[0]

    def version(self, key: str) -> Any:
        return self._target.version(key)

    def size(self, key: str, version: Any = None) -> int | None:
        return self._target.size(key, version)  # type: ignore[attr-defined]

    @property
    def url(self) -> str:
        return self._target.url

    @property
    def fs(self) -> Any:
        return self._target.fs

    def __repr__(self) -> str:
        return f"counted({self._target!r})"

    def __reduce__(self) -> tuple:
        return self._target.__reduce__()


_VIEW_CLASSES: dict[type, type] = {}


def read_io(store: Store) -> ReadIO | None:
    """The ReadIO of a read's counted view of a store (see counted); None for a store itself.
    For reads made outside the store's methods (host_lib.read_decode_scatter), to count them and
    keep to the read's deadline."""
    return store._io if isinstance(store, _Counted) else None


def counted(store: Store, io: ReadIO) -> Store:
    """A view of `store` for one read, counting into `io` and bounded by its deadline. It is an
    instance of a subclass of the store's own class, so `isinstance(view, LocalStore)` (fetch's
    and the Locator's test for reading into staging) answers as for the store; its methods
    run the store's, whose state (forked-child fallbacks, a server found to ignore Range) stays
    on the store. Cheap: one object, no copy of the store."""
    cls = _VIEW_CLASSES.get(type(store))
    if cls is None:
        cls = _VIEW_CLASSES.setdefault(type(store), type(f"Counted{type(store).__name__}", (_Counted, type(store)), {}))
    view = object.__new__(cls)
    view._target, view._io = store, io
    return view


class Store:
    """A root inside an fsspec filesystem; keys are '/'-separated paths below it."""

    # a shard deleted between the read of its index and the read of its chunks: an error here
    # (the read saw two states of the array), its chunks' fill values where zarr-python's
    # semantics rule (gpuzarr.CodecPipeline's stores)
    vanished_is_missing = False
    # a shard a read wants most of is read whole, index included, in one request (see
    # fetch.WHOLE_SHARD_FRACTION): where a request costs more than the bytes it brings
    reads_whole_shards = True
    # a directory's listing holds every file in it (local files): a node's directory missing,
    # or lacking the metadata file, holds nothing; elsewhere (HTTP pages) it says the store
    # cannot list
    lists_fully = False

    def __init__(self, fs: fsspec.AbstractFileSystem, root: str):
        self._fs = fs
        self._forked = False
        self.root = root.rstrip("/")
        if getattr(fs, "async_impl", False):
            forksafe.register(self)

    def _after_fork(self) -> None:
        self._forked = True  # not rebuilt here: a fork handler must not start threads

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        """An fsspec async filesystem refuses to run in a forked child ("not fork-safe"): the
        child makes its own from the same arguments (fsspec's instance cache is per process)."""
        if self._forked:
            self._fs = type(self._fs)(*self._fs.storage_args, **self._fs.storage_options)
            self._forked = False
        return self._fs

    def __reduce__(self) -> tuple:
        return _unpickle_store, (type(self), self.fs, self.root)

    def __repr__(self) -> str:
        return f"Store({self.url!r})"

    @property
    def url(self) -> str:
        """The root as a URL; filesystems whose paths keep their scheme (HTTP) get no second one."""
        protocols = _protocols(self.fs)
        if protocols[0] == "file" or self.root.startswith(tuple(f"{p}://" for p in protocols)):
            return self.root
        return f"{protocols[0]}://{self.root}"

    def path(self, key: str) -> str:
        return f"{self.root}/{key}" if key else self.root

    def child(self, path: str) -> Store:
        """The store rooted at node path `path` below this root. Leading and trailing '/' are
        ignored, as zarr-python does; a path that could lead out of the root ('..', '.', an empty
        segment) raises ValueError."""
        path = path.strip("/")
        problem = node_path_problem(path) if path else None
        if problem:
            raise ValueError(f"{path!r} is not a node path below {self.url} ({problem}): a node path is "
                             f"names joined by '/', none of them empty, '.' or '..'")
        return type(self)(self.fs, self.path(path))

    def get(self, key: str) -> bytes | None:
        return self.read_ranges([(key, 0, None)])[0]

    def read_ranges(self, ranges: Sequence[Range]) -> list[bytes | None]:
        """Read many (key, start, stop) ranges in one call; fsspec runs them concurrently. Results
        are bytes-like: bytes here, views of the client's buffers from an obstore store."""
        return self._cat_ranges(ranges, None)

    def _cat_ranges(self, ranges: Sequence[Range], io: ReadIO | None) -> list[bytes | None]:
        """read_ranges, its retries (see `retries`) counted in `io` and none started past its deadline."""
        if not ranges:
            return []
        paths = [self.path(k) for k, _, _ in ranges]
        starts = [s for _, s, _ in ranges]
        stops = [e for _, _, e in ranges]

        def cat(items: list[int]) -> list:
            try:
                return self.fs.cat_ranges([paths[i] for i in items], [starts[i] for i in items],
                                          [stops[i] for i in items], on_error="return")
            except Exception as exc:  # the filesystem failed as a whole
                raise StoreError(f"{self.url}: reading {len(items)} ranges failed ({_reason(exc)})",
                                 ranges[items[0]][0], exc) from exc

        if self.retries is None:
            results, attempts = cat(list(range(len(ranges)))), None
        else:
            from .obstore_retries import aiohttp_retryable, retry_failed

            results, attempts = retry_failed(self.retries, cat, len(ranges), aiohttp_retryable,
                                             (lambda k: io.add(0, 0, k)) if io is not None else (lambda k: None),
                                             None if io is None else io.deadline)
        out: list[bytes | None] = []
        for i, ((key, _, _), result) in enumerate(zip(ranges, results)):
            if isinstance(result, _MISSING):
                out.append(None)
            elif isinstance(result, BaseException):
                tries = f"; {attempts[i]} attempts" if attempts is not None and attempts[i] > 1 else ""
                raise StoreError(f"{self.path(key)}: read failed ({_reason(result)}{tries})", key, result)
            else:
                out.append(self._as_asked(key, starts[i], stops[i], result, io))
        return out

    def _as_asked(self, key: str, start: int, stop: int | None, body: Any, io: ReadIO | None) -> Any:
        """A range's body, sliced to the range where the server sent more than it asked for:
        it ignored the Range header and sent the whole object (fsspec's HTTP hands over whatever
        came), counted and noted as obstore's reads do; a body longer than the range but short
        of its end is no object's bytes there, and raises."""
        asked = -start if start < 0 else None if stop is None else stop - start
        if asked is None or len(body) <= asked:
            return body
        if stop is not None and len(body) < stop:
            raise StoreError(f"{self.path(key)}: {len(body)} bytes came for the {asked} bytes at {start}..{stop}: "
                             f"neither the range nor the whole object", key)
        FALLBACKS["ignored_range"] += 1
        if io is not None:
            io.note(f"{IGNORED_RANGE_NOTE} ({self.url})")
        return slice_whole(body, start, stop)

    # whether read_ranges takes `landed`, a callback per range as it arrives (see fetch.Landing)
    lands_ranges = False

    # how failed requests are made again (an obstore_retries.RetryPolicy) by a filesystem with no
    # retries of its own standing in for an obstore client (fsspec's HTTP in a forked child);
    # None: as the filesystem itself does, if at all
    retries: Any = None

    # whether `version` asks the store, so that None says the object is absent (its absence may be
    # cached like an index); not where it tells what the last GET answered (obstore's ETags)
    version_asks = True

    @property
    def keeps_indexes(self) -> bool:
        """Whether shard indexes are cached across reads: where `version` tells, for the cost of
        a call in this process, whether a shard changed (memory, local files through fsspec).
        Not for filesystems whose calls are requests (s3fs, gcsfs, HTTP: async in fsspec), where
        asking costs the round trip the cache would save: their indexes are read anew each read,
        as zarr-python reads them (gpuzarr's obstore stores check ETags instead)."""
        return not getattr(self.fs, "async_impl", False)

    def version(self, key: str) -> Any:
        """What the object at `key` is now, for telling a changed object from the one a cached
        shard index came from: its size and times as fsspec's info gives them; None if absent."""
        if not self.keeps_indexes:
            return None
        try:
            info = self.fs.info(self.path(key))
        except (FileNotFoundError, NotADirectoryError):
            return None
        return tuple(info.get(k) for k in ("size", "mtime", "created", "LastModified", "ino"))

    def read_ranges_with(self, ranges: Sequence[Range], io: ReadIO, indexes: bool = False,
                         landed: Landed | None = None) -> list[bytes | None]:
        """`read_ranges` (`read_indexes` with `indexes`) for one read: counted in `io` and bounded
        by its deadline (see ReadIO.call). A store that issues its requests itself overrides it
        to count what it sends and to stop at the deadline on its own."""
        read = self.read_indexes if indexes else self.read_ranges
        if landed is not None:
            return io.call(lambda some: read(some, landed), ranges)  # type: ignore[call-arg]
        if type(self).read_ranges is Store.read_ranges:  # its retries and notes in `io` (read_indexes is read_ranges)
            return io.call(lambda some: self._cat_ranges(some, io), ranges)
        return io.call(read, ranges)

    def read_indexes(self, ranges: Sequence[Range], landed: Landed | None = None) -> list[bytes | None]:
        """Shard indexes, one small range per shard, and whole shards: a store that reads chunk
        data by other means (zarr-python's get_ranges) reads these as single gets."""
        if landed is None:
            return self.read_ranges(ranges)
        return self.read_ranges(ranges, landed)  # type: ignore[call-arg]

    def list_dirs(self, key: str, marker: str) -> list[str]:
        """Names of the sub-directories of node directory `key`, whose metadata file is `marker`
        (see `_listing`)."""
        entries = self._listing(key, marker, lambda path: self.fs.ls(path, detail=True))
        return sorted(name for name, entry in entries.items() if entry.get("type") == "directory")

    def find(self, key: str, marker: str) -> dict[str, int]:
        """Every file below node directory `key`, whose metadata file is `marker`: its path
        relative to `key` → its size (0 where the store does not say)."""
        entries = self._listing(key, marker, lambda path: self.fs.find(path, detail=True).values())
        return {name: int(entry.get("size") or 0) for name, entry in entries.items()}

    def _listing(self, key: str, marker: str, entries: Callable[[str], Iterable[dict]]) -> dict[str, dict]:
        """`entries(path)` of node directory `key`, by path relative to it. A filesystem that
        cannot list (ls not implemented, or a listing without `marker`, the metadata file just
        read from there: an HTTP server answers a directory with 404 or a page without links)
        raises CannotListError: an empty answer would pass for an empty directory."""
        path = self.path(key)
        try:
            found = self._listed(entries, path)
        except _MISSING if self.lists_fully else ():  # a node known from consolidated metadata alone
            return {}
        except (NotImplementedError, *_MISSING) as exc:
            raise CannotListError(f"{path}: this store cannot list directories ({_reason(exc)})", key, exc) from exc
        except Exception as exc:
            raise StoreError(f"{path}: listing failed ({_reason(exc)})", key, exc) from exc
        prefix = path.rstrip("/") + "/"
        names = {e["name"].rstrip("/").removeprefix(prefix): e for e in found}
        if marker not in names and not self.lists_fully:
            raise CannotListError(f"{path}: this store cannot list directories (its listing lacks the node's "
                                  f"{marker})", key)
        return names

    def _listed(self, entries: Callable[[str], Iterable[dict]], path: str) -> list[dict]:
        """list(entries(path)), made again as `retries` says where it is set (a filesystem that
        retries nothing itself); the last failure is raised."""
        if self.retries is None:
            return list(entries(path))
        from .obstore_retries import aiohttp_retryable, retry_failed

        def attempt(_: list[int]) -> list:
            try:
                return [list(entries(path))]
            except Exception as exc:  # (given back to be retried or raised)
                return [exc]

        (found,), _ = retry_failed(self.retries, attempt, 1, aiohttp_retryable, lambda _: None)
        if isinstance(found, BaseException):
            raise found
        return found


class LocalStore(Store):
    """Local files through plain os calls: page-cache reads cost a syscall, not an event loop.
    Sizes are a stat away here, so ranges of known size are read straight into staging."""

    reads_whole_shards = False  # a request is a syscall: the index, then just the chunks wanted
    lists_fully = True

    _nowait = _NOWAIT  # set to 0 on a store whose filesystem refuses RWF_NOWAIT

    @property
    def cache_only(self) -> int:
        """The flags of a read from the page cache only (RWF_NOWAIT); 0 once this store's
        filesystem has refused them."""
        return self._nowait

    def read_ranges(self, ranges: Sequence[Range]) -> list[bytes | None]:
        return self._per_file(ranges, lambda fd, i, start, stop, flags: _pread_range(fd, start, stop, flags))

    def read_ranges_into(self, ranges: Sequence[tuple[str, int, int]], pieces: Sequence[list]) -> list[int | None]:
        """Read each range straight from the page cache into its buffers (one `os.preadv` per
        range, scattering it: each chunk lands where its decoder wants it, gaps in a scratch
        buffer); the bytes read per range (fewer only at the end of the file). A read of
        SPLIT_BYTES or more is split into parts of consecutive ranges read on several threads
        at once (see _split)."""
        parts = _split([stop - start for _, start, stop in ranges])
        if len(parts) == 1:
            return self._per_file(ranges, lambda fd, i, start, stop, flags:
                                  _preadv_all(fd, pieces[i], start, stop - start, flags))
        counts: list[int | None] = [None] * len(ranges)

        def read_part(which: range) -> None:
            got = self._per_file(ranges[which.start:which.stop], lambda fd, i, start, stop, flags:
                                 _preadv_all(fd, pieces[which.start + i], start, stop - start, flags))
            counts[which.start:which.stop] = got

        _READERS.run_parts(read_part, parts)
        return counts

    def read_ranges_with(self, ranges: Sequence[Range], io: ReadIO, indexes: bool = False) -> list[bytes | None]:
        """Local reads on the calling thread, as without a deadline: a pread is not left behind
        on another thread (no hop costs a local read a thread hand-off); none starts after the
        deadline, and the read's waits stop at it."""
        io.check()
        results = self.read_indexes(ranges) if indexes else self.read_ranges(ranges)
        io.count(ranges, results)
        return results

    def read_ranges_into_with(self, ranges: Sequence[tuple[str, int, int]], pieces: Sequence[list],
                              io: ReadIO) -> list[int | None]:
        """`read_ranges_into`, counted: never left running behind a deadline, since it writes into
        the read's staging (a buffer a later read may reuse)."""
        io.check()
        counts = self.read_ranges_into(ranges, pieces)
        io.count(ranges)
        return counts

    def read_files_into(self, keys: Sequence[str], place: Callable[[list], list]) -> list[int | None]:
        """Whole files, each read by one preadv straight into the buffer `place(sizes)` gives it
        (sizes: None where there is no file, a directory included); the bytes read per file
        (None where there is none). Each file is opened once and sized by fstat on that
        descriptor: no second lookup of its path, and its size and its bytes are of one file
        even if it is replaced meanwhile. At most FILES_OPEN are held open; files beyond them
        are sized by a stat of their path and opened when read. One tight loop, four syscalls
        a file and no readahead hint (a whole file is read): the per-file Python is what a
        read of many small chunk files costs beyond decoding, under the GIL. With the host
        library, FILES_AT_ONCE files or more in three calls in all (_read_files_at_once)."""
        n = len(keys)
        paths = [f"{self.root}/{key}" for key in keys]
        if n >= FILES_AT_ONCE and host_lib.available("files"):
            return self._read_files_at_once(paths, keys, place)
        fds: list[int | None] = [None] * n
        sizes: list[int | None] = [None] * n
        try:
            for k in range(n):
                try:
                    if k < FILES_OPEN:
                        fd = fds[k] = os.open(paths[k], os.O_RDONLY)
                        info = os.fstat(fd)
                    else:
                        info = os.stat(paths[k])
                except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                    continue
                except OSError as exc:
                    raise StoreError(f"{paths[k]}: open failed ({_reason(exc)})", keys[k], exc) from exc
                if stat.S_ISREG(info.st_mode):
                    sizes[k] = info.st_size
            buffers = place(sizes)
            counts: list[int | None] = [None] * n
            deferred = self._read_files(paths, keys, fds, sizes, buffers, counts, range(n), self._nowait)
            if deferred:
                self._read_files(paths, keys, fds, sizes, buffers, counts, deferred, 0)
        finally:
            for fd in fds:
                if fd is not None:
                    os.close(fd)
        return counts

    def _read_files_at_once(self, paths: list, keys: Sequence[str], place: Callable[[list], list]) -> list[int | None]:
        """read_files_into through the host library (host_lib.FileBatch): the files opened and
        sized in one call, read in one, closed in one, the GIL released once each, not four
        syscalls a file; the same descriptors held, errors and RWF_NOWAIT deferrals (those read
        blocking after _willneed) as there."""
        files = host_lib.FileBatch(paths, FILES_OPEN)
        try:
            self._check_opened(files, paths, keys)
            sizes = [None if size < 0 else size for size in files.sizes.tolist()]
            addresses = np.array([host_lib.address(buf) for buf in place(sizes)], dtype=np.int64)
            counts = self._read_batch(files, paths, keys, np.zeros(len(paths), np.int64), files.sizes, addresses)
            return [None if count < 0 else count for count in counts.tolist()]
        finally:
            files.close()

    @staticmethod
    def _check_opened(files: host_lib.FileBatch, paths: list, keys: Sequence[str]) -> None:
        for k in np.flatnonzero(files.errors).tolist():
            _raise_unless_missing(int(files.errors[k]), paths[k], keys[k], "open")

    def _read_batch(self, files: host_lib.FileBatch, paths: list, keys: Sequence[str], offsets: np.ndarray,
                    sizes: np.ndarray, addresses: np.ndarray) -> np.ndarray:
        """files.read of sizes[i] bytes at offsets[i] (none where sizes[i] < 0): first from the
        page cache only (RWF_NOWAIT), then what must come from the disk handed to the kernel at
        once (_willneed) and read blocking, as _per_file does; the bytes read per file (-1 where
        there is no file, STALE where it was replaced since it was sized). A file gone since it
        was sized is absent; other failures raise."""
        counts, errors = _read_split(files, offsets, sizes, addresses, self._nowait)
        stale = errors == errno.ESTALE
        if self._nowait and errors.any():
            unknown = np.isin(errors, (errno.EOPNOTSUPP, errno.EINVAL))
            if unknown.any():  # this filesystem (tmpfs, procfs, ...) cannot say what is cached
                self._nowait = 0
            later = (errors == errno.EAGAIN) | unknown
            for k in np.flatnonzero(errors == errno.EAGAIN).tolist():
                _willneed(files.fd(k), int(offsets[k]), int(offsets[k] + sizes[k]))
            again, errors_again = files.read(offsets, np.where(later, sizes, -1), addresses, 0)
            counts, errors = np.where(later, again, counts), np.where(later, errors_again, errors)
        for k in np.flatnonzero((errors != 0) & ~stale).tolist():
            _raise_unless_missing(int(errors[k]), paths[k], keys[k], "read")  # gone since it was sized
        return np.where(stale, STALE, counts)

    def read_indexes(self, ranges: Sequence[Range]) -> list[bytes | None]:
        """Shard indexes, the same number of bytes at the start or at the end of each shard file:
        FILES_AT_ONCE of them or more through the host library (opened and sized in one call,
        read in one, closed in one, the GIL released once each; a read with an empty index cache
        of 256 shards: its planning 10.5 -> 9.4 ms), else as any ranges."""
        span = _index_span(ranges)
        if span is None or len(ranges) < FILES_AT_ONCE or not host_lib.available("files"):
            return self.read_ranges(ranges)
        nbytes, at_end = span
        keys = [key for key, _, _ in ranges]
        paths = [self.path(key) for key in keys]
        files = host_lib.FileBatch(paths, FILES_OPEN)
        try:
            self._check_opened(files, paths, keys)
            sizes = files.sizes
            offsets = np.maximum(sizes - nbytes, 0) if at_end else np.zeros_like(sizes)
            lengths = np.where(sizes < 0, -1, np.minimum(sizes, nbytes))  # fewer in a shorter file
            buffer = bytearray(len(ranges) * nbytes)
            starts = np.arange(len(ranges), dtype=np.int64) * nbytes
            counts = self._read_batch(files, paths, keys, offsets, lengths, host_lib.address(buffer) + starts)
        finally:
            files.close()
        for k in np.flatnonzero(counts == STALE).tolist():  # its index was found from the old file's size
            raise ChangedError(f"{keys[k]}: the shard file changed while its index was read", keys[k])
        view = memoryview(buffer)
        return [None if count < 0 else view[at:at + count] for at, count in zip(starts.tolist(), counts.tolist())]

    def _read_files(self, paths: list, keys: Sequence[str], fds: list, sizes: list, buffers: list, counts: list,
                    which: Sequence[int], flags: int) -> list[int]:
        """Read the files `which` that have a size into their buffers (opening those not held
        open); with RWF_NOWAIT, those not wholly in the page cache are handed to the kernel to
        read (_willneed) and returned, as _read_each does for ranges."""
        deferred: list[int] = []
        for k in which:
            size = sizes[k]
            if size is None:
                continue
            fd = fds[k]
            if fd is None:
                try:
                    fd = fds[k] = os.open(paths[k], os.O_RDONLY)
                except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                    continue  # gone since it was sized: counts[k] stays None
                except OSError as exc:
                    raise StoreError(f"{paths[k]}: open failed ({_reason(exc)})", keys[k], exc) from exc
                if os.fstat(fd).st_size != size:
                    continue  # replaced since it was sized (see gpz_read_files): counts[k] stays None
            try:
                if size > PREADV_MAX:
                    counts[k] = _preadv_all(fd, [buffers[k]], 0, size, flags)
                    continue
                got = os.preadv(fd, [buffers[k]], 0, flags)
                if got != size and flags:
                    raise BlockingIOError  # in part from the disk (or shorter now): read it blocking
                counts[k] = got
            except BlockingIOError:
                deferred.append(k)
                _willneed(fd, 0, size)
            except OSError as exc:
                if not flags or exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                    raise StoreError(f"{paths[k]}: read failed ({_reason(exc)})", keys[k], exc) from exc
                # this filesystem (tmpfs, procfs, ...) cannot say what is cached: blocking reads
                self._nowait = flags = 0
                deferred.append(k)
        return deferred

    def read_files_into_with(self, keys: Sequence[str], place: Callable[[list], list],
                             io: ReadIO) -> list[int | None]:
        """`read_files_into`, counted as one request per file that has bytes (as its range
        (key, 0, size) would be); never left running behind a deadline (see read_ranges_into_with)."""
        io.check()
        counts = self.read_files_into(keys, place)
        io.count([(key, 0, count or 0) for key, count in zip(keys, counts)])
        return counts

    def _open(self, key: str) -> int | None:
        """A read-only descriptor of the file at `key` (close-on-exec, as Python opens every
        file; no readahead: see _RANDOM); None where there is no such file."""
        path = self.path(key)
        try:
            fd = os.open(path, os.O_RDONLY)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None
        except OSError as exc:
            raise StoreError(f"{path}: open failed ({_reason(exc)})", key, exc) from exc
        if _RANDOM is not None:
            try:
                os.posix_fadvise(fd, 0, 0, _RANDOM)
            except OSError:
                pass  # a hint only
        return fd

    def cached(self, key: str, start: int, stop: int | None) -> bool:
        """Whether the range's last byte is in the page cache (one RWF_NOWAIT read of it): a
        cheap guess at a whole read's, for hinting reads ahead only where the disk is read."""
        fd = self._open(key) if self._nowait else None
        if fd is None:
            return True  # no way to tell, or nothing to read ahead
        try:
            start, stop = _absolute(fd, start, stop)
            if stop > start:
                os.preadv(fd, [bytearray(1)], stop - 1, self._nowait)
        except BlockingIOError:
            return False
        except OSError:
            pass  # a hint only: the reads that follow say what is wrong
        finally:
            os.close(fd)
        return True

    def prefetch(self, ranges: Sequence[Range]) -> None:
        """Hand `ranges` to the kernel to read into the page cache, all at once and without
        waiting (see _willneed)."""
        self._read_each(ranges, range(len(ranges)), lambda fd, i, start, stop, flags: _willneed(fd, start, stop),
                        [None] * len(ranges), 0)

    def _per_file(self, ranges: Sequence[Range], read: Any, fds: Sequence[int | None] | None = None) -> list:
        """read(fd, i, start, stop, flags) for every range; None where there is no such file (a
        directory included). `fds`: a descriptor already open per range (None: open its path).
        Ranges are first read on this thread from the page cache only (RWF_NOWAIT: a warm read
        costs what it always did); each that would wait for the disk is handed to the kernel
        there and then (_willneed), so all of them are in flight at once, then read in order on
        this thread, each waiting only for its own bytes: the disk's queue depth without a
        thread hand-off per read (64 cold 2-D windows in one read_batch: 59.6 ms, 69.4 with an
        I/O pool of 32 threads reading them, one by one unchanged; same runs)."""
        results: list = [None] * len(ranges)
        deferred = self._read_each(ranges, range(len(ranges)), read, results, self._nowait, fds)
        if deferred:
            self._read_each(ranges, deferred, read, results, 0, fds)
        return results

    def _read_each(self, ranges: Sequence[Range], which: Sequence[int], read: Any, results: list,
                   flags: int, fds: Sequence[int | None] | None = None) -> list[int]:
        """Read the ranges `which` (opening each file once for a run of ranges with the same key,
        unless `fds` holds it open) into `results`; with RWF_NOWAIT, the ones not (wholly) in the
        page cache are returned."""
        deferred: list[int] = []
        i = 0
        while i < len(which):
            key = ranges[which[i]][0]
            j = i + 1
            while j < len(which) and ranges[which[j]][0] == key:
                j += 1
            given = fds[which[i]] if fds is not None else None
            fd = self._open(key) if given is None else given
            if fd is None:
                i = j
                continue
            try:
                for k in which[i:j]:
                    try:
                        results[k] = read(fd, k, ranges[k][1], ranges[k][2], flags)
                    except BlockingIOError:
                        deferred.append(k)
                        _willneed(fd, ranges[k][1], ranges[k][2])
                    except OSError as exc:
                        if not flags or exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                            raise
                        # this filesystem (tmpfs, procfs, ...) cannot say what is cached: blocking reads
                        self._nowait = flags = 0
                        results[k] = read(fd, k, ranges[k][1], ranges[k][2], 0)
            except IsADirectoryError:  # opening a directory read-only succeeds; reading it does not
                pass
            except OSError as exc:
                raise StoreError(f"{self.path(key)}: read failed ({_reason(exc)})", key, exc) from exc
            finally:
                if given is None:
                    os.close(fd)
            i = j
        return deferred

    def size(self, key: str, version: Any = None) -> int | None:
        """The file's size; None if there is no file (a directory where a chunk would be included).
        `version`: the file's `version`, if just taken (its size is in it)."""
        version = version or self.version(key)
        return None if version is None else version[1]

    def version(self, key: str) -> tuple[int, int, int, int] | None:
        """(inode, size, mtime, ctime in ns) of the file, None if there is none: a file rewritten
        in place or replaced by a rename has another."""
        try:
            info = os.stat(self.path(key))
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not stat.S_ISREG(info.st_mode):
            return None
        return info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns


# a local read of this many bytes or more in several ranges is read by several threads at once,
# in parts of at least SPLIT_BYTES / 2: a copy out of the page cache is bound by one core (the
# 2-D set's 16 shard files, 17 MB: one thread 5.3-5.8 GB/s, two 8.5-11.3 on this 2-core machine)
SPLIT_BYTES = 4 << 20
READERS = 4  # at most this many threads read one read's parts
_READERS = forksafe.LazyPool(READERS - 1, "gpuzarr-read")


def _split(nbytes: Sequence[int]) -> list[range]:
    """Consecutive runs of reads of `nbytes` each (ranges, or whole files), of about equal bytes,
    one per thread that will read them: as many as the bytes allow (SPLIT_BYTES / 2 each), the
    cores (cores.default_threads) and READERS; one run for a small read."""
    if len(nbytes) < 2:
        return [range(len(nbytes))]
    ends = list(itertools.accumulate(nbytes))
    n = min(READERS, len(nbytes), ends[-1] // (SPLIT_BYTES // 2))
    if n < 2 or (n := min(n, default_threads())) < 2:
        return [range(len(nbytes))]
    cuts = [bisect.bisect_left(ends, ends[-1] * k // n) + 1 for k in range(1, n)]
    edges = sorted({0, *cuts, len(nbytes)})
    return [range(a, b) for a, b in zip(edges[:-1], edges[1:])]


def _read_split(files: host_lib.FileBatch, offsets: np.ndarray, sizes: np.ndarray, addresses: np.ndarray,
                flags: int) -> tuple[np.ndarray, np.ndarray]:
    """files.read, its files in parts (_split) read by several threads at once where the bytes
    are many: as read_ranges_into's ranges, a copy out of the page cache is bound by one core."""
    parts = _split(np.maximum(sizes, 0).tolist())
    if len(parts) == 1:
        return files.read(offsets, sizes, addresses, flags)
    counts, errors = np.empty(files.n, np.int64), np.empty(files.n, np.intc)

    def read_part(which: range) -> None:
        counts[which.start:which.stop], errors[which.start:which.stop] = files.read(offsets, sizes, addresses, flags,
                                                                                      which)

    _READERS.run_parts(read_part, parts)
    return counts, errors


IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024  # buffers one preadv takes
PREADV_MAX = 1 << 30  # a file read by one preadv up to this size (Linux returns at most ~2 GiB a call)
# whole files one read_files_into call holds open at once: the files of a small read (where the
# stat a descriptor saves counts), while a dozen threads reading at once stay well inside the
# usual limit of 1024 descriptors per process
FILES_OPEN = 64
STALE = -2  # LocalStore._read_batch's count of a file replaced since it was sized
# chunk files read_files_into reads through the host library's three calls from this many on:
# those cost ~50 us of fixed Python (arrays, ctypes) beside the syscalls, ~14-20 us a file here
# either way; they pay where threads would contend for the GIL between syscalls (2-D 64^2 chunk
# files, parts of 256: full read 1.09 -> 0.78 of tensorstore's time), not for a window of 4-9
# files on one thread (v2: 58 -> 116 us for 4 files, 130 -> 204 for 9)
FILES_AT_ONCE = 16


# Files are opened for random access (no readahead): gpuzarr reads just the ranges it wants, and
# hands the kernel at once those that must come from the disk (_willneed); readahead only added
# bytes around them (64 cold 2-D windows one by one: 13.1 MB from the disk, 9.8 without, 1.39x
# -> 1.31x tensorstore's time; warm reads unchanged)
_RANDOM = getattr(os, "POSIX_FADV_RANDOM", None)


def _willneed(fd: int, start: int, stop: int | None) -> None:
    """Ask the kernel to read bytes start..stop of the file into the page cache, without
    waiting: every range handed over so is in flight at once (the disk's queue depth)."""
    try:
        start, stop = _absolute(fd, start, stop)
        if stop > start:
            os.posix_fadvise(fd, start, stop - start, os.POSIX_FADV_WILLNEED)
    except OSError:
        pass  # a hint only: the read that follows says what is wrong


def _absolute(fd: int, start: int, stop: int | None) -> tuple[int, int]:
    """A range's bytes (start < 0: from the end; stop None: to the end) as offsets in the file."""
    if start < 0 or stop is None:
        size = os.fstat(fd).st_size
        start = max(0, size + start) if start < 0 else start
        stop = size if stop is None else stop
    return start, stop


# store calls of reads with a deadline (ReadIO.call); a call hung past its deadline holds a thread
# until the store's own timeout ends it
CALLS = 32
_CALLS: dict[str, forksafe.LazyPool] = {}
_CALLS_LOCK = forksafe.Lock()


def _calls(store: Store) -> forksafe.LazyPool:
    """The threads that run the deadline-bounded calls to `store`'s host (scheme and network
    location): a host that never answers holds up its own reads alone (with one pool for all, 32
    hung calls made every read with a deadline fail, whatever its store)."""
    parts = urllib.parse.urlsplit(store.url)
    host = f"{parts.scheme}://{parts.netloc}"
    pool = _CALLS.get(host)
    if pool is None:
        with _CALLS_LOCK:
            pool = _CALLS.setdefault(host, forksafe.LazyPool(CALLS, "gpuzarr-deadline"))
    return pool


def _preadv_all(fd: int, buffers: list, offset: int, want: int, flags: int = 0) -> int:
    """Fill `buffers` (`want` bytes in all) in order from the file at `offset`; stops early only
    at the end of the file. With RWF_NOWAIT, BlockingIOError unless all of it is in the page cache."""
    if len(buffers) <= IOV_MAX:
        got = os.preadv(fd, buffers, offset, flags)
        if got == want:  # the usual case: one call
            return got
        if flags:
            raise BlockingIOError  # in part from the disk, or past the end: read it blocking
        if got == 0:
            return 0
    elif flags:
        raise BlockingIOError
    done = k = 0
    while k < len(buffers):
        batch = buffers[k:k + IOV_MAX]
        got = os.preadv(fd, batch, offset + done)
        if got == 0:
            break
        done += got
        while k < len(buffers) and got >= len(buffers[k]):  # skip the buffers filled
            got -= len(buffers[k])
            k += 1
        if got:  # one filled in part (a signal, or the end of the file): the rest of it next
            buffers = [memoryview(buffers[k])[got:], *buffers[k + 1:]]  # a view: a bytearray slice would copy
            k = 0
    return done


def _unpickle_store(cls: type, fs: fsspec.AbstractFileSystem, root: str) -> Store:
    """A store arriving in another process; a memory:// store exists only in the process (and
    the forked children) that wrote it: elsewhere every chunk would read as the fill value."""
    if _protocols(fs)[0] == "memory" and not fs.exists(root):
        raise StoreError(f"memory://{root}: a memory:// store lives in one process; it is not here "
                         f"(use a forked child, or a store on disk, to read it in another process)", None)
    return cls(fs, root)


def _protocols(fs: fsspec.AbstractFileSystem) -> tuple[str, ...]:
    return (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)


def _index_span(ranges: Sequence[Range]) -> tuple[int, bool] | None:
    """(n, at the end) where every range is the last n bytes of a file (start -n, no stop), or
    every one its first n; None for anything else, or a file named twice."""
    if not ranges:
        return None
    _, start, stop = ranges[0]
    if any((s, e) != (start, stop) for _, s, e in ranges) or len({key for key, _, _ in ranges}) < len(ranges):
        return None
    if start < 0 and stop is None:
        return -start, True
    return (stop, False) if start == 0 and stop else None


def _raise_unless_missing(code: int, path: str, key: str, what: str) -> None:
    """A StoreError for errno `code` of a file's open (or read), unless it says the file is not
    there (a directory where a chunk would be included): then the chunk is absent."""
    if code not in (errno.ENOENT, errno.EISDIR, errno.ENOTDIR):
        exc = OSError(code, os.strerror(code), path)
        raise StoreError(f"{path}: {what} failed ({_reason(exc)})", key, exc)


def _reason(exc: BaseException) -> str:
    """An underlying failure in a few words: the HTTP status and reason phrase where the error
    has them (aiohttp's repr carries every request and response header), else the exception's
    type and the first line of its text. StoreError.cause keeps the whole exception."""
    status = getattr(exc, "status", None)
    text = f"HTTP {status} {getattr(exc, 'message', '') or ''}" if isinstance(status, int) else str(exc)
    lines = text.strip().splitlines()
    text = lines[0].strip() if lines else ""
    if len(text) > _REASON_CHARS:
        text = text[:_REASON_CHARS] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _pread_range(fd: int, start: int, stop: int | None, flags: int = 0) -> bytes:
    """Bytes start..stop (start < 0: from the end; stop None: to the end) of the file, as many as
    exist; with RWF_NOWAIT, BlockingIOError unless they are all in the page cache."""
    size = os.fstat(fd).st_size
    start = max(0, size + start) if start < 0 else min(start, size)
    stop = size if stop is None else min(max(stop, start), size)
    data = bytearray(stop - start)
    got = _preadv_all(fd, [data], start, len(data), flags)
    return bytes(data if got == len(data) else data[:got])  # (a file cut short since its fstat: what is there)


def open_store(store: Any, path: str | None = None, storage_options: dict | None = None,
               request_timeout: float | None = None) -> Store:
    """A path, URL, pathlib.Path, fsspec mapper or filesystem, obstore store or zarr-python
    ObjectStore → Store. s3://, gs://, az://, abfs(s)://, http(s):// URLs are read through obstore
    where it is installed (gpuzarr.store_obstore), through fsspec otherwise. `request_timeout`
    (Settings.request_timeout_seconds) is set on the obstore client made for a URL only: see
    Settings."""
    if isinstance(store, Store):
        result = store
    elif isinstance(store, fsspec.AbstractFileSystem):
        return _make(store, path or "")
    elif isinstance(store, fsspec.FSMap):
        result = _make(store.fs, store.root)
    elif isinstance(store, (str, os.PathLike)):
        url = os.fspath(store)
        remote = _open_obstore(url, storage_options, request_timeout) if _OBSTORE_URL.match(url) else None
        if remote is not None:
            result = remote
        else:
            try:
                fs, root = fsspec.core.url_to_fs(url, **pooled(url.split("://", 1)[0], storage_options))
            except Exception as exc:  # any filesystem's failure to start (a missing zip, a refused connection)
                raise StoreError(f"{store}: cannot open this store ({_reason(exc)})", None, exc) from exc
            result = _make(fs, root)
    else:
        result = _object_store(store) if type(store).__module__.startswith(("obstore", "zarr")) else None
        if result is None:
            raise TypeError(f"store must be a path, URL, fsspec mapper or filesystem, or an obstore store, not "
                            f"{type(store).__name__}")
    return result.child(path) if path else result


# URLs obstore reads (where it is installed); imported only when one is opened
_OBSTORE_URL = re.compile(r"(?i)(s3a?|gs|gcs|az|azure|abfss?|https?)://")  # store_obstore.SCHEMES
OBSTORE_FORKED = False  # set in a child forked after obstore was imported: obstore hangs there


def _open_obstore(url: str, storage_options: dict | None, request_timeout: float | None) -> Store | None:
    try:
        from .store_obstore import open_url
    except ImportError:
        return None
    return open_url(url, storage_options, request_timeout)


def _object_store(obj: Any) -> Store | None:
    from .store_obstore import from_object

    return from_object(obj)


@forksafe.call_in_child
def _note_fork() -> None:
    """obstore's Rust runtime does not survive fork(): once obstore is loaded (it may have run),
    a forked child's remote stores read through fsspec instead."""
    global OBSTORE_FORKED
    OBSTORE_FORKED = OBSTORE_FORKED or "obstore" in sys.modules


def _make(fs: fsspec.AbstractFileSystem, root: str) -> Store:
    if isinstance(fs, LocalFileSystem):
        return LocalStore(fs, os.path.abspath(root) if root else os.getcwd())
    return Store(fs, root)
