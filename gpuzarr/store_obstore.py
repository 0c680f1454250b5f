"""Object storage (s3://, gs://, az://, http(s)://) through obstore, the Python bindings of
Rust's `object_store`: every range of a call is requested at once from obstore's own runtime
(timeouts, connection pooling in Rust), a bounded number in flight, each retried by gpuzarr
with obstore's backoff (obstore_retries: so retries are counted) where gpuzarr made the client.

Requests are made by a pool of threads through obstore's blocking calls, which release the GIL
while they wait (see _gets); no event loop is involved, so reads work where the caller already
runs one (a notebook's). Requests in flight are bounded process-wide by `$GPUZARR_REQUESTS`
(default 64).

obstore's runtime hangs in a child forked after it ran: there, stores never touch obstore again
and read through a freshly made fsspec filesystem (s3fs, gcsfs, adlfs, HTTP) of the same URL and
options, counted in `FALLBACKS`, logged at debug level (logger `gpuzarr.store`) and noted in a
reported read's ReadReport.notes (as is a server found to ignore Range headers). Stores pickle
to their URL and options (or their obstore store object), so a spawned worker makes its own.

obstore is imported only when a remote URL is opened; `import gpuzarr` never imports it."""

from __future__ import annotations

import concurrent.futures
import json
import logging
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from datetime import timedelta
from typing import Any
from urllib.parse import unquote, urlsplit

import fsspec

from . import forksafe
from . import store as _store_module
from .errors import StoreError
from .obstore_retries import RetryPolicy, with_retries
from .store import (  # FALLBACKS, IGNORED_RANGE_NOTE: this module's too, as before
    _REASON_CHARS,
    FALLBACKS,
    IGNORED_RANGE_NOTE,
    ChangedError,
    Landed,
    Range,
    ReadIO,
    Store,
    _reason,
    pooled,
    requests_in_flight,
    slice_whole,
)

log = logging.getLogger("gpuzarr.store")

# what gpuzarr sets on obstore's client unless storage_options say otherwise: a request (connect
# to last body byte) may take 25 s; a failed one (5xx, 429, reset, timeout) is retried with
# exponential backoff and jitter (100 ms doubling to 5 s), no new attempt starting more than 30 s
# after the first: a request that never answers fails within 55 s, under a minute
CLIENT_OPTIONS: dict[str, Any] = {"timeout": timedelta(seconds=25), "connect_timeout": timedelta(seconds=5)}
RETRY_CONFIG: dict[str, Any] = {"max_retries": 10, "retry_timeout": timedelta(seconds=30),
                                "backoff": {"init_backoff": timedelta(milliseconds=100),
                                            "max_backoff": timedelta(seconds=5), "base": 2}}

VERSIONS_KEPT = 1 << 16  # object versions a store keeps (see ObstoreStore.version): a shard
# past them is a cache miss, its index read again

# what a read's ReadReport.notes say of a read through fsspec in a forked child (counted as
# FALLBACKS["fork"]), once per read
FORK_NOTE = "fork: read through fsspec, not obstore (obstore's runtime hangs in a process forked after it ran)"

SCHEMES = {"s3": "s3", "s3a": "s3", "gs": "gs", "gcs": "gs", "az": "az", "azure": "az", "abfs": "abfs",
           "abfss": "abfss", "http": "http", "https": "https"}
_416 = re.compile(r"status code: 416\b")  # a range starting past the end (an empty object's too)
# the end of a range meaning "to the end of the object": obstore returns what exists up to it
# (a whole object read by get_range, as any other range, not by get and its body)
_TO_THE_END = 1 << 62


class _NotMapped(Exception):
    """A storage option obstore has no equivalent for: the URL is opened through fsspec."""


def _obs() -> Any:
    import obstore

    return obstore


# ---------------------------------------------------------------- the request threads


_GETS: dict[int, forksafe.LazyPool] = {}
_GETS_LOCK = threading.Lock()


def _gets(n: int) -> forksafe.LazyPool:
    """The n threads that make requests through obstore's blocking calls, shared by every read
    with that bound (the process's $GPUZARR_REQUESTS, and each Settings.requests_in_flight a
    read gives): at most n of their requests are in flight at once. Blocking calls on threads,
    not obstore's coroutines on an event loop: each answer wakes one thread, not the loop twice
    (a GET with its metadata) or once, and the loop's wake-ups were the cost. The 16 shard GETs
    of the sharded set at 20 ms: 22.6 ms and 2.7 ms of CPU against 24.5 and 5.0 through the loop;
    256 chunk objects, 64 at once: 94 ms and 20-27 ms of CPU against 100 and 36."""
    pool = _GETS.get(n)
    if pool is None:
        with _GETS_LOCK:
            pool = _GETS.setdefault(n, forksafe.LazyPool(n, "gpuzarr-get", daemon=True))
    return pool


# ---------------------------------------------------------------- one client per bucket or host


class Remote:
    """One obstore client (a bucket, container or HTTP host), shared by the stores of a
    hierarchy. Stands where `Store.fs` stands for fsspec stores: `child` passes it on, and
    `storage_args`/`storage_options` name it (dask's tokens)."""

    def __init__(self, protocol: str, label: str, options: dict | None, ostore: Any, pickled: Any,
                 retry: dict | None = None, retries: RetryPolicy | None = None):
        self.protocol = protocol  # fsspec's name for the scheme (s3, gs, az, abfs, http, https)
        self.label = label  # what store roots start with: a bucket, or the URL of an HTTP host
        self.storage_args = (label,)
        self.storage_options = dict(options or {})
        self.obstore = ostore
        self.pickled = pickled  # how the store travels to another process
        # the retry_config of a client gpuzarr made (its own retries off): gpuzarr retries its
        # requests so; None for a store the caller made, which retries as it was configured
        self.retry_config = retry
        self.retries = retries
        # an HTTP store's URL path as given, percent-encoded: its objects are that path decoded
        # (as zarr-python and tensorstore read it), then member keys as they are (see _object)
        self.encoded_path = ""
        self.ignores_range = False  # the server answered a ranged GET with the whole object
        # Azure's Get Blob takes no suffix range (`bytes=-N`; obstore refuses to send one): the
        # last bytes of an object (a shard index) are found from its size, a HEAD first
        self.suffix_ranges = protocol not in ("az", "abfs", "abfss")
        self._after_fork()
        forksafe.register(self)

    def _after_fork(self) -> None:
        self._fallback_fs: Any = None  # one made in the parent refuses to run in the child
        self._fallback_lock = threading.Lock()

    def fallback_fs(self, why: str) -> Any:
        """A new fsspec filesystem of this client's URL and options, for `why` (a forked child's
        reads, an HTTP host's listings)."""
        with self._fallback_lock:
            if self._fallback_fs is None:
                options = pooled(self.protocol, fsspec_options(self.protocol, self.obstore, self.retry_config))
                try:
                    self._fallback_fs = fsspec.filesystem(self.protocol, skip_instance_cache=True, **options)
                except (ImportError, ValueError) as exc:
                    raise StoreError(f"{self.label}: {why} go through fsspec, which cannot open {self.protocol}:// "
                                     f"here ({_reason(exc)}): install its backend "
                                     f"(gpuzarr[s3], [gcs], [azure], [http])",
                                     None, exc) from exc
            return self._fallback_fs


def _forked_after_obstore() -> bool:
    return _store_module.OBSTORE_FORKED


class ObstoreStore(Store):
    """A root (a bucket and path, or an HTTP URL, as fsspec names it) read through obstore."""

    version_asks = False  # None: no GET has told it (a missing object, a server without ETags)
    lands_ranges = True

    def __init__(self, fs: Remote, root: str):
        self._fs = fs
        self._forked = False
        self.root = root.rstrip("/")
        self.fallback: str | None = None  # why this store reads through fsspec, once it does
        self._fsspec_store: Store | None = None  # a forked child's
        self._http_lister: Store | None = None
        # key → the ETag (or generation) its last GET answered with, for the shards whose indexes
        # were read: see `version`; written by the request threads, under the lock
        self._versions: OrderedDict[str, str] = OrderedDict()
        self._versions_lock = threading.Lock()

    @property
    def fs(self) -> Remote:
        return self._fs

    def __reduce__(self) -> tuple:
        return _unpickle, (self._fs.pickled, self.root)

    def __repr__(self) -> str:
        return f"ObstoreStore({self.url!r})"

    @property
    def url(self) -> str:
        return self.root if "://" in self.root else f"{self._fs.protocol}://{self.root}"

    def _object(self, key: str) -> str:
        """The object's path inside the obstore store (which percent-encodes it as it asks)."""
        path = self.path(key)[len(self._fs.label):].lstrip("/")
        encoded = self._fs.encoded_path
        if encoded and path.startswith(encoded):  # "my%20data.zarr/c/0" is "my data.zarr/c/0"
            path = unquote(encoded) + path[len(encoded):]
        return path

    def _via_fsspec(self) -> Store:
        if self._fsspec_store is None:
            why = "in a process forked after obstore ran (obstore hangs there; spawn/forkserver workers use it), reads"
            store = Store(self._fs.fallback_fs(why), self.root)
            if self._fs.protocol in ("http", "https"):  # fsspec's HTTP retries nothing: as obstore would
                store.retries = self._fs.retries or RetryPolicy()  # (reads and listings)
            self._fsspec_store = store
            self.fallback = "fork: obstore's runtime does not survive fork(); read through fsspec"
            log.debug("%s: read through fsspec (%s) in this forked child: obstore hangs after fork",
                      self.url, type(self._fsspec_store.fs).__name__)
        FALLBACKS["fork"] += 1
        return self._fsspec_store

    def version(self, key: str) -> str | None:
        """The ETag (GCS: generation) that the last GET of `key` answered with, for objects read
        as shards (their indexes: `read_indexes`); None for others. Not a request: a cached index
        is used under the version it was read at, and the GETs of its chunks check that the
        object still has it (see `_read`), so a changed shard is read again, not misread."""
        return self._versions.get(key)

    def read_ranges(self, ranges: Sequence[Range], landed: Landed | None = None) -> list[bytes | None]:
        """Every range at once, at most $GPUZARR_REQUESTS in flight in the process: one GET per
        range (a Range header for all but whole objects), missing objects None. `landed(i, bytes)`
        is called on the thread that read range i as it arrives (see fetch.Landing)."""
        if not ranges:
            return []
        if _forked_after_obstore():
            return _each_landed(self._via_fsspec().read_ranges(ranges), landed)
        return self._read(list(ranges), requests_in_flight(), None, landed=landed)

    def read_indexes(self, ranges: Sequence[Range], landed: Landed | None = None) -> list[bytes | None]:
        """Shard indexes and whole shards (see `version`), handed to `landed` as read_ranges does."""
        if not ranges:
            return []
        if _forked_after_obstore():
            return _each_landed(self._via_fsspec().read_indexes(ranges), landed)
        return self._read(list(ranges), requests_in_flight(), None, indexes=True, landed=landed)

    def read_ranges_with(self, ranges: Sequence[Range], io: ReadIO, indexes: bool = False,
                         landed: Landed | None = None) -> list[bytes | None]:
        """read_ranges for one read: the GETs actually sent are counted (a server that ignores
        Range gets one whole GET per object), and the deadline bounds the wait: requests not
        started then are dropped; those under way end by the client's request timeout (25 s
        unless set), their bytes unread and their threads busy until then (see _read)."""
        if not ranges:
            return []
        if _forked_after_obstore():
            io.note(FORK_NOTE)
            return _each_landed(self._via_fsspec().read_ranges_with(ranges, io, indexes), landed)
        io.check()
        try:
            return self._read(list(ranges), io.requests or requests_in_flight(), io, indexes, landed, io.remaining())
        except concurrent.futures.TimeoutError:
            if io.deadline is None:
                raise
            raise io.expired() from None

    def _read(self, ranges: list[Range], limit: int, io: ReadIO | None, indexes: bool = False,
              landed: Landed | None = None, timeout: float | None = None) -> list[bytes | None]:
        """Every range at once, each request made by a thread of the pool of `limit` (see _gets)
        through obstore's blocking calls, which release the GIL while they wait. `indexes`: shard
        indexes and whole shards, whose versions are kept (see `version`); every range of an
        object with a kept version is checked against it: a read whose shard changed since its
        index was read raises ChangedError once every range is in. Past `timeout` seconds (a
        read's deadline) concurrent.futures.TimeoutError: requests not started are dropped, those
        under way end by the client's own timeout, their bytes unread, on threads the pool
        gives up (so the bound in flight may be passed until they end). The first failure drops
        the requests not started and is raised."""
        obs = _obs()
        ostore = self._fs.obstore
        policy = self._fs.retries
        ended = threading.Event()  # the call returned or raised: no request starts another attempt
        lock = threading.Lock()
        whole: dict[str, concurrent.futures.Future] = {}  # a server that ignores Range: each object read once
        tally = [0, 0, 0]  # GETs sent, bytes they asked for, retries: into `io` once, at the end
        changed: list[str] = []

        def count(requests: int = 0, nbytes: int = 0, retries: int = 0) -> None:
            with lock:
                tally[0] += requests
                tally[1] += nbytes
                tally[2] += retries

        def attempt(request: Any, tries: list[int]) -> Any:
            """request(), retried as the client's policy says (a store the caller made retries
            inside obstore, as configured); tries[0] counts the attempts."""
            if policy is None:
                return request()

            def again() -> None:
                tries[0] += 1
                count(retries=1)
            return with_retries(policy, request, ended, again)

        def from_the_end(path: str, start: int, tries: list[int]) -> tuple[int, int]:
            """The range of an object's last -start bytes, from its size (a HEAD: see suffix_ranges)."""
            count(1)
            size = int(attempt(lambda: obs.head(ostore, path), tries)["size"])
            return max(0, size + start), size

        def versioned(key: str, path: str, start: int, stop: int | None, tries: list[int]) -> Any:
            """The GET with its response's metadata: the object's version is kept, or checked
            against the one kept."""
            count(1, -start if start < 0 else 0 if stop is None else stop - start)
            options: dict = {}
            if start < 0:
                options["range"] = {"suffix": -start}
            elif stop is not None:
                options["range"] = (start, stop)
            elif start:
                options["range"] = {"offset": start}

            def get() -> tuple[Any, dict]:
                response = obs.get(ostore, path, options=options)
                return response.bytes(), response.meta
            data, meta = attempt(get, tries)
            if stop is None and start >= 0:
                count(0, len(data))
            # a whole shard is one version of it, whatever was kept: nothing of it is read apart
            whole = start == 0 and stop is None
            self._keep_version(key, meta.get("version") or meta.get("e_tag"), None if whole else changed)
            return data

        def get_whole(path: str) -> Any:
            count(1)
            data = attempt(lambda: obs.get(ostore, path).bytes(), [1])
            count(0, len(data))
            return data

        def whole_once(path: str) -> Any:
            with lock:
                future = whole.get(path)
                mine = future is None
                if mine:
                    future = whole[path] = concurrent.futures.Future()
                    FALLBACKS["ignored_range"] += 1
            if mine:
                if io is not None:
                    io.note(f"{IGNORED_RANGE_NOTE} ({self._fs.label})")
                try:
                    future.set_result(get_whole(path))
                except BaseException as exc:
                    future.set_exception(exc)
            return future.result()

        def refused_suffix(key: str, path: str, start: int, stop: int | None, tries: list[int]) -> Any:
            """A 416 to a suffix range: an empty object, or a server that refuses suffix ranges
            (RFC 9110 lets it): then the last bytes of its objects are found from their size."""
            try:
                if from_the_end(path, start, tries)[1] == 0:
                    return b""
            except obs.exceptions.BaseError as exc:
                raise StoreError(f"{self.url}/{key}: the server refused a suffix range (HTTP 416), and the "
                                 f"object's size is unknown ({obstore_reason(exc)})", key, exc) from exc
            if self._fs.suffix_ranges:
                log.debug("%s: the server refuses suffix ranges; an object's last bytes are found from its size",
                          self._fs.label)
            self._fs.suffix_ranges = False
            return one(key, start, stop)

        def one(key: str, start: int, stop: int | None) -> memoryview | bytes | None:
            path = self._object(key)
            if stop is not None and stop <= max(start, 0):
                return b""
            tries = [1]
            try:
                try:
                    if start < 0 and not self._fs.suffix_ranges and not self._fs.ignores_range:
                        start, stop = from_the_end(path, start, tries)
                    if self._fs.ignores_range:
                        data = slice_whole(whole_once(path), start, stop)
                    elif stop == start:  # an empty object's last bytes
                        data = b""
                    elif indexes or key in self._versions:
                        data = versioned(key, path, start, stop, tries)
                    elif start < 0:  # the last -start bytes (a shard index)
                        count(1, -start)
                        data = attempt(lambda: obs.get(ostore, path, options={"range": {"suffix": -start}}).bytes(),
                                       tries)
                    else:  # whole objects too, as a range to past the end
                        count(1, 0 if stop is None else stop - start)
                        end = _TO_THE_END if stop is None else stop
                        data = attempt(lambda: obs.get_range(ostore, path, start=start, end=end), tries)
                        if stop is None:
                            count(0, len(data))
                except obs.exceptions.BaseError as exc:
                    if not _ignored_range(exc):
                        raise
                    # the server sent the whole object for a ranged GET (obstore refuses it):
                    # read the object whole, once per call, and slice (a request repeated)
                    if not self._fs.ignores_range:
                        log.debug("%s: the server ignores Range headers (%s); whole objects are read and "
                                  "sliced", self._fs.label, obstore_reason(exc))
                    self._fs.ignores_range = True
                    count(retries=1)
                    data = slice_whole(whole_once(path), start, stop)
            except FileNotFoundError:
                with self._versions_lock:  # an index cached under it is not looked up again
                    self._versions.pop(key, None)
                return None
            except Exception as exc:
                if _416.search(str(exc)):  # the range starts past the end: nothing there
                    return refused_suffix(key, path, start, stop, tries) if start < 0 else b""
                if policy is None:  # obstore's own, said only by the error of a request that failed
                    count(retries=_retries(exc))
                reason = obstore_reason(exc, None if policy is None else tries[0])
                raise StoreError(f"{self.url}/{key}: read failed ({reason})", key, exc) from exc
            # a view of obstore's buffer, not a copy: bytes() of a shard's span is a fresh mmap
            # whose pages fault in while a thread holds the GIL (16 ranges of the sharded set,
            # 4.4 MB: 29.6 against 25.5 ms at 20 ms latency)
            view = memoryview(data)
            return view[:stop - start] if stop is not None and len(view) > stop - start else view

        def handed(i: int, key: str, start: int, stop: int | None) -> memoryview | bytes | None:
            data = one(key, start, stop)
            landed(i, data)
            return data

        pool = _gets(limit)
        if landed is None:
            futures = [pool.submit(one, *r) for r in ranges]
        else:
            futures = [pool.submit(handed, i, *r) for i, r in enumerate(ranges)]
        try:
            done, pending = concurrent.futures.wait(futures, timeout, concurrent.futures.FIRST_EXCEPTION)
            for future in futures:  # the first failure, in the ranges' order
                if future in done and future.exception() is not None:
                    raise future.exception()
            if pending:
                # requests under way may hang until the client's timeout (one hung store grew 32
                # threads a read): later reads get threads of their own while they are few
                pool.abandon([future for future in pending if not future.cancel()], 2 * limit)
                raise concurrent.futures.TimeoutError()
            if changed:
                raise ChangedError(f"{self.url}/{changed[0]}: the object changed since its shard index was read "
                                   f"({len(changed)} object{'s' if len(changed) > 1 else ''} of this read)",
                                   changed[0])
            return [future.result() for future in futures]
        finally:
            ended.set()
            for future in futures:  # a failed or expired call starts no more requests
                future.cancel()
            if io is not None:
                with lock:
                    io.add(*tally)

    def _keep_version(self, key: str, now: str | None, changed: list[str] | None) -> None:
        """Keep the version a GET of `key` answered with (None: the server sent none); where one
        was kept and this differs, `key` goes into `changed` (a nested index or chunks under a
        stale index, or an index read anew after its entry was evicted: read again), if given."""
        with self._versions_lock:
            kept = self._versions.get(key)
            if kept is not None and now != kept and changed is not None:
                changed.append(key)
            if now is not None:
                self._versions[key] = now
                self._versions.move_to_end(key)
                while len(self._versions) > VERSIONS_KEPT:
                    self._versions.popitem(last=False)

    def list_dirs(self, key: str, marker: str) -> list[str]:
        lister = self._fsspec_lister()
        if lister is not None:
            return lister.list_dirs(key, marker)
        entries = self._listing(key, marker, lambda path: self._list(path, delimited=True))
        return sorted(name for name, entry in entries.items() if entry.get("type") == "directory")

    def find(self, key: str, marker: str) -> dict[str, int]:
        lister = self._fsspec_lister()
        if lister is not None:
            return lister.find(key, marker)
        entries = self._listing(key, marker, lambda path: self._list(path, delimited=False))
        return {name: int(entry.get("size") or 0) for name, entry in entries.items()}

    def _fsspec_lister(self) -> Store | None:
        """Where listings go through fsspec: in a forked child, and for HTTP hosts (fsspec's
        HTTPFileSystem lists the links of a directory page; obstore lists with WebDAV's
        PROPFIND, which plain servers refuse, after its retries)."""
        if _forked_after_obstore():
            return self._via_fsspec()
        if self._fs.protocol not in ("http", "https"):
            return None
        if self._http_lister is None:
            lister = Store(self._fs.fallback_fs("listings of an HTTP host"), self.root)
            lister.retries = self._fs.retries or RetryPolicy()  # fsspec's HTTP retries nothing
            self._http_lister = lister
        return self._http_lister

    def _list(self, path: str, delimited: bool) -> list[dict]:
        """Objects (and, delimited, common prefixes) below `path`, in fsspec's form (name, type,
        size) and named as `path` names them."""
        obs = _obs()
        label = self._fs.label
        prefix = path[len(label):].strip("/")

        ostore, where = self._fs.obstore, prefix + "/" if prefix else None

        def listed() -> tuple[list, list]:
            if delimited:
                found = obs.list_with_delimiter(ostore, prefix=where)
                return found["objects"], found["common_prefixes"]
            return obs.list(ostore, prefix=where).collect(), []
        try:
            if self._fs.retries is None:
                objects, dirs = listed()
            else:
                objects, dirs = with_retries(self._fs.retries, listed, threading.Event(), lambda: None)
        except obs.exceptions.NotSupportedError as exc:
            raise NotImplementedError(obstore_reason(exc)) from exc
        except obs.exceptions.BaseError as exc:  # said in a few words, not obstore's page of text
            raise OSError(obstore_reason(exc)) from exc
        return ([{"name": f"{label}/{o['path']}", "type": "file", "size": o["size"]} for o in objects]
                + [{"name": f"{label}/{d.rstrip('/')}", "type": "directory", "size": 0} for d in dirs])


def _ignored_range(exc: BaseException) -> bool:
    """obstore refused a whole object sent for a ranged GET (S3: NotPartial; HTTP: RangeNotSupported)."""
    text = str(exc)
    return "NotPartial" in text or "non-partial response" in text or "RangeNotSupported" in text


def obstore_reason(exc: BaseException, attempts: int | None = None) -> str:
    """An obstore error in a few words: what failed, the HTTP status or the kind of connection
    failure, and the attempts made (`attempts`, else as obstore's text says them: it holds the
    URL, the response body and a Rust debug dump); other errors as `_reason` says them."""
    text = str(exc)
    first = text.strip().splitlines()[0] if text.strip() else ""
    if "Error performing" not in first:
        return _reason(exc) + (f"; {attempts} attempts" if attempts and attempts > 1 else "")
    lead = re.split(r":? Error performing", first, maxsplit=1)[0].strip()
    parts = [lead] if lead else []
    status = re.search(r"status code: (\d{3}[^:]*)", first)
    kind = re.search(r"HttpError \{\s*kind: (\w+)", text)
    if status:
        parts.append(f"HTTP {status.group(1).strip()}")
    elif kind:
        cause = re.search(r'message: "([^"]+)"', text)
        parts.append(f"{kind.group(1).lower()} error" + (f" ({cause.group(1)})" if cause else ""))
    timing = re.search(r" in (\d+(?:\.\d+)?)([a-zµ]+)", first)
    took = f"{float(timing.group(1)):.3g} {timing.group(2)}" if timing else None
    if attempts is None and took:  # obstore's retries: its time is the whole request's
        attempts = _retries(exc) + 1
        parts.append(f"{attempts} attempt{'s' if attempts > 1 else ''} in {took}")
    elif attempts is not None and attempts > 1:  # gpuzarr's: the time is the last attempt's
        parts.append(f"{attempts} attempts" + (f", the last in {took}" if took else ""))
    elif took:
        parts.append(f"1 attempt in {took}")
    reason = "; ".join(parts)
    if len(reason) > _REASON_CHARS:
        reason = reason[:_REASON_CHARS] + "..."
    return f"{type(exc).__name__}: {reason}"


def _retries(exc: BaseException) -> int:
    """Retries obstore made before giving up on a request, as its error says them (obstore 0.12
    exposes no count otherwise, nor any for a request that succeeded after retries)."""
    found = re.search(r"\bretries: (\d+)", str(exc)) or re.search(r", after (\d+) retries", str(exc))
    return int(found.group(1)) if found else 0


def _each_landed(results: list, landed: Landed | None) -> list:
    """Results read all at once (fsspec's), handed to `landed` as if each had just arrived."""
    if landed is not None:
        for i, data in enumerate(results):
            landed(i, data)
    return results


def _unpickle(pickled: Any, root: str) -> Store:
    """In another process: the same URL and options (a new obstore client; fsspec where obstore
    is not installed), or the obstore store object a user passed (obstore pickles its stores)."""
    if isinstance(pickled, tuple):
        url, options, timeout = pickled
        store = open_url(url, options, timeout)
        if store is None:
            fs, _ = fsspec.core.url_to_fs(url, **(options or {}))
            return Store(fs, root)
        return ObstoreStore(store.fs, root)
    return ObstoreStore(_remote_of(pickled), root)


# ---------------------------------------------------------------- opening


def open_url(url: str, storage_options: dict | None, request_timeout: float | None = None) -> ObstoreStore | None:
    """The ObstoreStore of a remote URL, or None where fsspec must open it: obstore is not
    installed, the URL has a query or fragment, or an option has no obstore equivalent.
    `request_timeout` (Settings.request_timeout_seconds) outranks the options' client timeout."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES or parts.query or parts.fragment or not parts.netloc:
        return None
    try:
        obs = _obs()
    except ImportError:
        return None
    requests_in_flight()  # a bad $GPUZARR_REQUESTS fails at open, not at the first read
    options = dict(storage_options or {})
    try:
        config, client, retry = _obstore_options(SCHEMES[scheme], dict(options))
    except _NotMapped as exc:
        log.debug("%s: opened through fsspec, not obstore (%s)", url, exc)
        return None
    kind = SCHEMES[scheme]
    # the obstore client's root: a bucket, container or host (gcsfs's gcs:// is obstore's gs://)
    base = f"{'gs' if kind == 'gs' else scheme}://{parts.netloc}"
    if kind in ("http", "https"):  # roots named as fsspec names them: the URL itself
        label, root = base, url.rstrip("/")
    else:  # the bucket (container) and the path
        label = parts.netloc.split("@", 1)[0] if kind in ("az", "abfs", "abfss") else parts.netloc
        root = (label + "/" + parts.path.strip("/")).rstrip("/")
    client = {**CLIENT_OPTIONS, **client}
    if request_timeout is not None:
        client["timeout"] = timedelta(seconds=request_timeout)
    retry = {**RETRY_CONFIG, **retry}
    if kind in ("http", "https") or any(str(config.get(k, "")).startswith("http://") for k in ("endpoint", "base_url")):
        client.setdefault("allow_http", True)
    retries = RetryPolicy.of(retry)
    try:
        ostore = _construct(kind, base, config, client, {**retry, "max_retries": 0})  # see Remote.retries
    except (obs.exceptions.UnknownConfigurationKeyError, TypeError) as exc:
        log.debug("%s: opened through fsspec, not obstore (%s)", url, _reason(exc))
        return None
    except Exception as exc:
        raise StoreError(f"{url}: cannot open this store ({_reason(exc)})", None, exc) from exc
    remote = Remote(kind, label, options, ostore, (url, options, request_timeout), retry, retries)
    if kind in ("http", "https"):
        remote.encoded_path = parts.path.strip("/")
    return ObstoreStore(remote, root)


_CLIENTS: OrderedDict[str, Any] = OrderedDict()  # obstore clients by what made them, see _construct
CLIENTS_KEPT = 64


def _construct(kind: str, base: str, config: dict, client: dict, retry: dict) -> Any:
    """The obstore client of these arguments, made once per process: making one costs ~10 ms
    of CPU (its TLS roots), every `gpuzarr.open` of a URL would pay it, and one client shared
    also shares its connection pool. Clients are thread-safe; a forked child never uses them."""
    key = repr((kind, base, sorted(config.items()), sorted(client.items()), sorted(retry.items())))
    ostore = _CLIENTS.get(key)
    if ostore is None:
        ostore = _CLIENTS[key] = _make_client(kind, base, config, client, retry)
        while len(_CLIENTS) > CLIENTS_KEPT:
            _CLIENTS.popitem(last=False)
    return ostore


def _make_client(kind: str, base: str, config: dict, client: dict, retry: dict) -> Any:
    from obstore.store import AzureStore, GCSStore, HTTPStore, S3Store

    if kind in ("http", "https"):
        return HTTPStore.from_url(base, client_options=client, retry_config=retry)
    cls = {"s3": S3Store, "gs": GCSStore}.get(kind, AzureStore)
    return cls.from_url(base, config=config, client_options=client, retry_config=retry)


def from_object(obj: Any) -> ObstoreStore | None:
    """An obstore store object, or zarr-python's ObjectStore (its `.store`), as a gpuzarr store
    rooted at the obstore store's own prefix; None for anything else."""
    module = type(obj).__module__
    if module.startswith("zarr"):
        from zarr.storage import ObjectStore

        if not isinstance(obj, ObjectStore):
            return None
        obj = obj.store
        module = type(obj).__module__
    if not module.startswith("obstore"):
        return None
    remote = _remote_of(obj)
    return ObstoreStore(remote, remote.label)


def _remote_of(ostore: Any) -> Remote:
    name = type(ostore).__name__
    config = dict(getattr(ostore, "config", None) or {})
    prefix = str(getattr(ostore, "prefix", None) or "").strip("/")
    if name == "S3Store":
        protocol, label = "s3", config.get("bucket", "")
    elif name == "GCSStore":
        protocol, label = "gs", config.get("bucket", "")
    elif name == "AzureStore":
        protocol, label = "az", config.get("container_name", "")
    elif name == "HTTPStore":
        url = str(getattr(ostore, "url", "")).rstrip("/")
        protocol, label = urlsplit(url).scheme or "https", url
        prefix = ""
    else:
        protocol, label = "obstore", repr(ostore)
    label = "/".join(p for p in (label, prefix) if p)
    return Remote(protocol, label, config, ostore, ostore)


# ---------------------------------------------------------------- storage_options, both ways


_IGNORED = {  # fsspec options that change nothing in how gpuzarr reads
    "skip_instance_cache", "use_listings_cache", "listings_expiry_time", "max_paths", "default_block_size",
    "default_fill_cache", "default_cache_type", "cache_regions", "max_concurrency", "fixed_upload_size",
    "local_expiry_check", "block_size", "simple_links", "same_scheme", "size_policy", "cache_type",
    "cache_options", "encoded", "project", "access", "consistency", "cache_timeout",
}


def _seconds(value: Any) -> timedelta:
    if isinstance(value, timedelta):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return timedelta(seconds=value)
    raise _NotMapped(f"timeout {value!r}")


def _obstore_options(kind: str, options: dict) -> tuple[dict, dict, dict]:
    """fsspec's storage_options (as s3fs, gcsfs, adlfs or HTTPFileSystem take them), obstore's
    own config keys, `client_options` and `retry_config` → obstore's (config, client, retry).
    An option with no equivalent raises _NotMapped (the URL is opened through fsspec)."""
    config: dict = {}
    client: dict = dict(options.pop("client_options", None) or {})
    retry: dict = dict(options.pop("retry_config", None) or {})
    for name in _IGNORED:
        options.pop(name, None)
    if options.pop("asynchronous", False) or options.pop("version_aware", False):
        raise _NotMapped("asynchronous or version_aware")
    if kind == "s3":
        _s3_options(options, config, client, retry)
        if not _has_s3_credentials(config):
            _check_no_aws_profile()
    elif kind == "gs":
        token = options.pop("token", None)
        if token in (None, "google_default"):  # obstore too finds Google's default credentials
            pass
        elif token == "anon":
            config["skip_signature"] = True
        elif isinstance(token, str) and os.path.exists(token):
            config["service_account"] = token
        elif isinstance(token, dict):
            config["service_account_key"] = json.dumps(token)
        else:
            raise _NotMapped(f"token {token!r}")
        if "endpoint_url" in options:
            config["base_url"] = options.pop("endpoint_url")
    elif kind in ("az", "abfs", "abfss"):
        if options.pop("anon", False):
            config["skip_signature"] = True
        if "connection_string" in options or "credential" in options:
            raise _NotMapped("connection_string/credential")
        if "sas_token" in options:
            config["sas_key"] = options.pop("sas_token")
    else:  # http(s)
        kwargs = dict(options.pop("client_kwargs", None) or {})
        headers = {**(kwargs.pop("headers", None) or {}), **(options.pop("headers", None) or {})}
        if kwargs:
            raise _NotMapped(f"client_kwargs {sorted(kwargs)}")
        if headers:
            client["default_headers"] = {str(k): str(v) for k, v in headers.items()}
        if options:
            raise _NotMapped(f"options {sorted(options)}")
    for name, value in options.items():  # obstore's own keys: obstore checks them
        if not isinstance(value, (str, bool, int, float)):
            raise _NotMapped(f"{name}={type(value).__name__}")
        config[name] = value
    return config, client, retry


def _s3_options(options: dict, config: dict, client: dict, retry: dict) -> None:
    """s3fs's names → obstore's (what is left in `options` is passed on as obstore keys)."""
    if options.pop("anon", False):
        config["skip_signature"] = True
    for ours, theirs in (("key", "access_key_id"), ("username", "access_key_id"), ("secret", "secret_access_key"),
                         ("password", "secret_access_key"), ("token", "session_token"),
                         ("endpoint_url", "endpoint")):
        value = options.pop(ours, None)
        if value is not None:
            config[theirs] = value
    if options.pop("requester_pays", False):
        config["request_payer"] = True
    options.pop("use_ssl", None)  # the endpoint's scheme says it
    kwargs = dict(options.pop("client_kwargs", None) or {})
    for ours, theirs in (("endpoint_url", "endpoint"), ("region_name", "region"), ("aws_access_key_id", "access_key_id"),
                         ("aws_secret_access_key", "secret_access_key"), ("aws_session_token", "session_token")):
        value = kwargs.pop(ours, None)
        if value is not None:
            config[theirs] = value
    if kwargs.pop("verify", True) is False:
        client["allow_invalid_certificates"] = True
    if kwargs:
        raise _NotMapped(f"client_kwargs {sorted(kwargs)}")
    conf = dict(options.pop("config_kwargs", None) or {})
    if conf.get("region_name"):
        config["region"] = conf.pop("region_name")
    conf.pop("region_name", None)
    if "connect_timeout" in conf:
        client["connect_timeout"] = _seconds(conf.pop("connect_timeout"))
    if "read_timeout" in conf:
        client["read_timeout"] = _seconds(conf.pop("read_timeout"))
    retries = dict(conf.pop("retries", None) or {})
    attempts = retries.pop("max_attempts", retries.pop("total_max_attempts", None))
    retries.pop("mode", None)
    if attempts is not None:
        retry["max_retries"] = max(0, int(attempts) - 1)
    if retries:
        raise _NotMapped(f"config_kwargs retries {sorted(retries)}")
    if str(conf.pop("signature_version", "")).upper() == "UNSIGNED":
        config["skip_signature"] = True
    style = (conf.pop("s3", None) or {}).get("addressing_style")
    if style == "virtual":
        config["virtual_hosted_style_request"] = True
    conf.pop("max_pool_connections", None)
    if conf:
        raise _NotMapped(f"config_kwargs {sorted(conf)}")
    for name in ("s3_additional_kwargs", "session", "profile", "loop"):
        if options.get(name):
            raise _NotMapped(name)
        options.pop(name, None)


def _has_s3_credentials(config: dict) -> bool:
    keys = {k.lower().removeprefix("aws_") for k in config}
    return bool(keys & {"skip_signature", "access_key_id", "secret_access_key", "session_token", "token"}) or \
        bool(os.environ.get("AWS_ACCESS_KEY_ID") or os.environ.get("AWS_SKIP_SIGNATURE")
             or os.environ.get("AWS_WEB_IDENTITY_TOKEN_FILE") or os.environ.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
             or os.environ.get("AWS_CONTAINER_CREDENTIALS_FULL_URI"))


def _check_no_aws_profile() -> None:
    """obstore takes credentials from the environment, a container or an instance role, not from
    ~/.aws profiles (or SSO) as botocore does: with no credentials given, a profile means s3fs."""
    home = os.path.expanduser("~")
    files = (os.environ.get("AWS_SHARED_CREDENTIALS_FILE") or os.path.join(home, ".aws", "credentials"),
             os.environ.get("AWS_CONFIG_FILE") or os.path.join(home, ".aws", "config"))
    if os.environ.get("AWS_PROFILE") or any(os.path.exists(f) for f in files):
        raise _NotMapped("credentials may come from an AWS profile, which only botocore reads")


def fsspec_options(protocol: str, ostore: Any, retry: dict | None = None) -> dict:
    """An obstore store's configuration as fsspec's storage_options for `protocol` (`retry`: the
    retry_config to use instead of the store's own)."""
    config = {k.lower(): v for k, v in dict(getattr(ostore, "config", None) or {}).items()}
    client = dict(getattr(ostore, "client_options", None) or {})
    retry = dict(retry if retry is not None else getattr(ostore, "retry_config", None) or {})
    out: dict = {}
    if protocol == "s3":
        for theirs, ours in (("access_key_id", "key"), ("secret_access_key", "secret"), ("session_token", "token"),
                             ("token", "token"), ("endpoint", "endpoint_url")):
            if config.get(theirs):
                out[ours] = config[theirs]
        if _true(config.get("skip_signature")):
            out["anon"] = True
        if _true(config.get("request_payer")):
            out["requester_pays"] = True
        kwargs: dict = {}
        if config.get("region"):
            kwargs["region_name"] = config["region"]
        if _true(client.get("allow_invalid_certificates")):
            kwargs["verify"] = False
        if kwargs:
            out["client_kwargs"] = kwargs
        conf: dict = {}
        for theirs, ours in (("connect_timeout", "connect_timeout"), ("timeout", "read_timeout"),
                             ("read_timeout", "read_timeout")):
            seconds = _duration(client.get(theirs))
            if seconds:
                conf[ours] = seconds
        if retry.get("max_retries") is not None:
            conf["retries"] = {"max_attempts": int(retry["max_retries"]) + 1}
        if _true(config.get("virtual_hosted_style_request")):
            conf["s3"] = {"addressing_style": "virtual"}
        if conf:
            out["config_kwargs"] = conf
    elif protocol == "gs":
        if _true(config.get("skip_signature")):
            out["token"] = "anon"
        elif config.get("service_account"):
            out["token"] = config["service_account"]
        elif config.get("service_account_key"):
            out["token"] = json.loads(config["service_account_key"])
        if config.get("base_url"):
            out["endpoint_url"] = config["base_url"]
    elif protocol in ("az", "abfs", "abfss"):
        for theirs, ours in (("account_name", "account_name"), ("account_key", "account_key"),
                             ("sas_key", "sas_token"), ("client_id", "client_id"),
                             ("client_secret", "client_secret"), ("tenant_id", "tenant_id")):
            if config.get(theirs):
                out[ours] = config[theirs]
        if _true(config.get("skip_signature")):
            out["anon"] = True
        endpoint = config.get("endpoint")
        if endpoint and (out.get("account_key") or out.get("sas_token")):
            # a blob endpoint of its own (an emulator, a private link): adlfs takes one only in a
            # connection string (its account_host is https://-only)
            scheme = endpoint.split("://", 1)[0]
            secret = (f"AccountKey={out.pop('account_key')}" if out.get("account_key") else
                      f"SharedAccessSignature={out.pop('sas_token').lstrip('?')}")
            out["connection_string"] = (f"DefaultEndpointsProtocol={scheme};AccountName={out.get('account_name', '')};"
                                        f"{secret};BlobEndpoint={endpoint};")
    elif protocol in ("http", "https"):
        if client.get("default_headers"):
            out["headers"] = dict(client["default_headers"])
    else:
        raise StoreError(f"{ostore!r}: no fsspec filesystem reads this obstore store in a forked child "
                         f"(obstore hangs there): start workers with spawn/forkserver", None)
    return out


def _true(value: Any) -> bool:
    return value is True or str(value).lower() == "true"


def _duration(value: Any) -> float | None:
    """Seconds of a timedelta or a simple duration string ("30s", "500ms", "2 minutes")."""
    if value is None:
        return None
    if isinstance(value, timedelta):
        return value.total_seconds()
    units = {"ms": 1e-3, "msec": 1e-3, "s": 1, "sec": 1, "second": 1, "seconds": 1, "m": 60, "min": 60,
             "minute": 60, "minutes": 60, "h": 3600, "hour": 3600, "hours": 3600}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]+)", str(value).lower()):
        if unit not in units:
            return None
        total += float(number) * units[unit]
    return total or None


__all__ = ["ObstoreStore", "Remote", "FALLBACKS", "open_url", "from_object", "requests_in_flight"]
