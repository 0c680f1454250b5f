"""What a read asks of its store, as ReadReport counts it (requests, bytes requested, retries),
per-read deadlines (Settings.deadline_seconds), request timeouts and errors that name the array: local files, a
memory:// store, obstore against a local S3 server (moto) and against HTTP servers that hang."""

from __future__ import annotations

import contextlib
import http.server
import os
import pickle
import socket
import threading
import time
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path

import fsspec
import numpy as np
import pytest
import zarr
from checks import to_memory
from corrupt import make_sharded

import gpuzarr
from gpuzarr import host_lib
from gpuzarr import store as store_module
from gpuzarr.errors import DeadlineError
from gpuzarr.store import LocalStore, Store


def _image(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return ((np.add.outer(np.arange(shape[0]), np.arange(shape[1])) % 4096)
            + rng.integers(0, 64, size=shape)).astype("u2")


def _sharded(path: Path) -> Path:
    """512² uint16, shards 256², inner chunks 64², zstd: 4 shard files, every chunk stored."""
    a = zarr.create_array(path, shape=(512, 512), chunks=(64, 64), shards=(256, 256), dtype="u2",
                          compressors=zarr.codecs.ZstdCodec(level=1), fill_value=0)
    a[...] = _image((512, 512)) + 1
    return path


def _chunked(path: Path) -> Path:
    """512² uint16 in 64 chunk objects of 64², one of them left unwritten (all fill)."""
    a = zarr.create_array(path, shape=(512, 512), chunks=(64, 64), dtype="u2",
                          compressors=zarr.codecs.ZstdCodec(level=1), fill_value=7)
    data = _image((512, 512), 1)
    data[:64, :64] = 7  # chunk c/0/0: not written
    a[...] = data
    return path


def _stored(path: Path, prefix: str = "c") -> dict[str, int]:
    """Chunk or shard objects under the array: key → size."""
    root = path / prefix
    return {f"{prefix}/{p.relative_to(root).as_posix()}": p.stat().st_size for p in root.rglob("*") if p.is_file()}


class _Spy:
    """The ranges a store class is asked for, through any path (counted views included)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, cls: type, *names: str):
        self.calls: list[tuple[str, list]] = []
        lock = threading.Lock()
        for name in names:
            real = getattr(cls, name)

            def spy(store, ranges, *args, _real=real, _name=name):
                with lock:
                    self.calls.append((_name, list(ranges)))
                return _real(store, ranges, *args)

            monkeypatch.setattr(cls, name, spy)

    def ranges(self, name: str | None = None) -> list:
        return [r for n, rs in self.calls if name in (None, n) for r in rs if r[2] is None or r[2] > r[1]]


# ---------------------------------------------------------------- counts


@pytest.mark.parametrize("batch_bytes", [None, 48 << 10], ids=["one-batch", "tasks-read-their-chunks"])
def test_a_local_sharded_read_counts_one_request_per_coalesced_range_and_index(tmp_path, monkeypatch, batch_bytes):
    path = _sharded(tmp_path / "a.zarr")
    arr = gpuzarr.open(path, device="cpu", settings=gpuzarr.Settings(batch_bytes=batch_bytes))
    spy = _Spy(monkeypatch, LocalStore, "read_ranges", "read_ranges_into")
    by_parts = []  # (reads, bytes) of parts read by the host library, warm (see cpu._PartReads)
    real = host_lib.read_decode_scatter
    monkeypatch.setattr(host_lib, "read_decode_scatter", lambda *a: (lambda r: by_parts.append(r[1:]) or r)(real(*a)))
    report = gpuzarr.ReadReport()
    np.testing.assert_array_equal(arr.read(report=report), _image((512, 512)) + 1)
    indexes, chunks = spy.ranges("read_ranges"), spy.ranges("read_ranges_into")
    assert len(indexes) == 4  # a cold read: one index read per shard
    assert report.batches > (1 if batch_bytes else 0)
    assert report.requests == len(indexes) + len(chunks) + sum(reads for reads, _ in by_parts)
    asked = sum((stop - start) if stop is not None else -start for _, start, stop in indexes + chunks)
    assert report.bytes_requested == asked + sum(nbytes for _, nbytes in by_parts)
    # every chunk of every shard, and the shards' indexes: the whole of each shard file
    assert report.bytes_requested == sum(_stored(path).values())
    assert report.bytes_requested >= report.bytes_compressed > 0
    assert report.retries == 0
    assert f"{report.requests} requests, {report.bytes_requested} bytes requested, 0 retries" in str(report)
    # warm: the indexes come from the cache, only the chunks' ranges are requested
    spy.calls.clear()
    warm = gpuzarr.ReadReport()
    arr.read((slice(0, 64), slice(0, 64)), report=warm)
    assert warm.requests == len(spy.ranges()) == 1 and warm.bytes_requested == warm.bytes_compressed


def test_a_memory_read_counts_every_object_asked_for(tmp_path, monkeypatch):
    path = _chunked(tmp_path / "a.zarr")
    url = to_memory(path, f"acct-{tmp_path.name}")
    arr = gpuzarr.open(url, device="cpu")
    report = gpuzarr.ReadReport()
    got = arr.read(report=report)
    assert got[0, 0] == 7 and report.missing_keys == ["c/0/0"]
    stored = _stored(path)
    assert len(stored) == 63
    assert report.requests == 64  # every chunk object asked for, the missing one's GET included
    assert report.bytes_requested == sum(stored.values()) == report.bytes_compressed
    # a sharded array through the same generic path: indexes as suffix ranges or shards read whole
    sharded = _sharded(tmp_path / "s.zarr")
    arr = gpuzarr.open(to_memory(sharded, f"acct-s-{tmp_path.name}"), device="cpu")
    spy = _Spy(monkeypatch, Store, "_cat_ranges")  # (read_ranges, or a read's own call with its io)
    report = gpuzarr.ReadReport()
    np.testing.assert_array_equal(arr.read(report=report), _image((512, 512)) + 1)
    assert report.requests == len(spy.ranges()) >= 4
    assert report.bytes_requested == sum(_stored(sharded).values())


def test_reads_without_a_report_or_deadline_use_the_bare_store(tmp_path, monkeypatch):
    """The counted view costs nothing where nobody looks: without a report and a deadline the
    store is called as it always was."""
    path = _sharded(tmp_path / "a.zarr")
    arr = gpuzarr.open(path, device="cpu")
    seen = []
    real = LocalStore.read_ranges_into

    def into(store, ranges, pieces):
        seen.append(type(store))
        return real(store, ranges, pieces)

    monkeypatch.setattr(LocalStore, "read_ranges_into", into)
    arr[0:10, 0:10]
    arr.read((slice(0, 10), slice(0, 10)), report=gpuzarr.ReadReport())
    assert seen == [LocalStore, LocalStore]  # the view calls the store's own method
    # the view still answers isinstance as the store (fetch reads local files into staging)
    from gpuzarr.store import ReadIO, counted

    view = counted(arr.store, ReadIO(gpuzarr.ReadReport(), arr.store))
    assert isinstance(view, LocalStore) and view.url == arr.store.url and view.root == arr.store.root


# ---------------------------------------------------------------- obstore against moto


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """(endpoint, local dir, test_obstore's helpers) with the sharded and chunked arrays uploaded."""
    pytest.importorskip("obstore", reason="obstore is not installed (the [remote] extra)")
    moto_server = pytest.importorskip("moto.server", reason="moto[server] is not installed (a local S3 server)")
    import test_obstore as helpers

    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=helpers._free_port(), verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        helpers._create_bucket(endpoint)
        local = tmp_path_factory.mktemp("acct-s3")
        for name, make in (("acct-sharded.zarr", _sharded), ("acct-chunked.zarr", _chunked)):
            make(local / name)  # names of their own: moto's buckets are shared by its servers in a process
            helpers._upload(helpers._s3(endpoint), local / name, name)
        yield endpoint, local, helpers
    finally:
        server.stop()


@pytest.mark.parametrize("name", ["acct-sharded.zarr", "acct-chunked.zarr"])
@pytest.mark.parametrize("ignore_range", [False, True], ids=["ranges", "server-ignores-range"])
def test_obstore_counts_the_requests_the_server_sees(s3, name, ignore_range):
    endpoint, local, helpers = s3
    with helpers._proxy(endpoint, ignore_range=ignore_range) as proxy:
        options = {**helpers._options(endpoint), "client_kwargs": {"endpoint_url": proxy.url}}
        arr = gpuzarr.open(f"s3://{helpers.BUCKET}/{name}", storage_options=options, device="cpu")
        proxy.requests = 0  # the metadata's
        arr.store.fs.ignores_range = False  # as if the metadata had not told: the read finds out
        report = gpuzarr.ReadReport()
        got = arr.read(report=report)
        assert report.requests == proxy.requests > 0
    np.testing.assert_array_equal(got, zarr.open_array(local / name, mode="r")[...])
    if ignore_range and name == "acct-sharded.zarr":  # whole shards, asked for with no Range: none refused
        assert report.retries == 0 and report.requests == len(_stored(local / name))
        assert report.bytes_requested == sum(_stored(local / name).values())
    elif ignore_range:  # each refused ranged GET is repeated as a whole GET: a retry of gpuzarr's own
        assert report.retries >= 1 and report.bytes_requested >= sum(_stored(local / name).values())
    else:
        assert report.retries == 0
        assert report.bytes_requested == sum(_stored(local / name).values())
    assert report.bytes_requested >= report.bytes_compressed


# ---------------------------------------------------------------- deadlines

class _EndsJustAfterTheWait:
    """A future whose wait times out, done by the time anyone asks: the task ended between the
    two (a window of a few bytecodes, made certain here)."""

    def __init__(self, value):
        self.value, self.waited = value, False

    def result(self, timeout=None):
        if timeout is not None and not self.waited:
            self.waited = True
            raise FutureTimeout()
        return self.value

    def done(self):
        return self.waited

    def cancel(self):
        return False


def test_a_fetch_that_ends_just_as_its_wait_times_out_is_its_result_not_an_error(tmp_path, monkeypatch):
    """Not the wait's own TimeoutError (no GpuzarrError), nor a DeadlineError for bytes in hand:
    the staged fetch's wait (pipeline._result) and a bounded store call's (ReadIO.call)."""
    import gpuzarr.store as store_module
    from gpuzarr.pipeline import _result
    from gpuzarr.report import ReadReport
    from gpuzarr.store import ReadIO

    store = Store(fsspec.filesystem("memory"), "/just_after")
    io = ReadIO(ReadReport(), store, seconds=30)
    assert _result(_EndsJustAfterTheWait("batch"), io) == "batch"

    class Pool:
        def submit(self, fn, *args):
            return _EndsJustAfterTheWait(fn(*args))

    monkeypatch.setattr(store_module, "_calls", lambda store: Pool())
    ranges = [("k", 0, 3)]
    assert io.call(lambda r: [b"abc"], ranges) == [b"abc"]
    assert io.report.requests == 1 and io.report.bytes_requested == 3



def _slow_store(hang_after: int = 0) -> tuple[type, threading.Event]:
    """A Store class over fsspec whose chunk and shard reads (keys under c/) hang until the event
    is set, from the (hang_after+1)-th such call on: a request that never answers."""
    gate = threading.Event()
    calls = []

    class SlowStore(Store):
        def read_ranges(self, ranges):
            if any(key.startswith("c/") for key, _, _ in ranges):
                calls.append(1)
                if len(calls) > hang_after:
                    gate.wait(30)
            return super().read_ranges(ranges)

    return SlowStore, gate


@pytest.mark.parametrize("case", ["index", "single-batch", "staged"])
def test_a_hung_store_call_fails_the_read_at_its_deadline(tmp_path, case):
    path = (_sharded if case == "index" else _chunked)(tmp_path / "a.zarr")
    name = f"deadline-{case}-{tmp_path.name}"
    to_memory(path, name)
    cls, gate = _slow_store(hang_after=2 if case == "staged" else 0)
    settings = gpuzarr.Settings(deadline_seconds=1, batch_bytes=(16 << 10) if case == "staged" else None)
    arr = gpuzarr.open(cls(fsspec.filesystem("memory"), f"/{name}"), device="cpu", settings=settings)
    out = np.full(arr.shape, 12345, dtype=arr.dtype)
    start = time.monotonic()
    try:
        with pytest.raises(DeadlineError) as caught:
            arr.read(out=out)
        took = time.monotonic() - start
        after = out.copy()
    finally:
        gate.set()  # the hung calls return: nothing may land in `out` now
    assert 0.9 < took < 3, took
    message = str(caught.value)
    assert isinstance(caught.value, gpuzarr.StoreError)
    assert message.startswith(f"{arr.store.url}: ") and message.count(name) == 1, message
    assert "deadline of 1 s" in message and "Settings.deadline_seconds" in message, message
    if case == "staged":
        assert (after != 12345).any()  # earlier batches were placed before the deadline
    time.sleep(0.3)
    np.testing.assert_array_equal(out, after)
    # the same array reads in full once the store answers
    np.testing.assert_array_equal(arr.read(), zarr.open_array(path, mode="r")[...])


def test_a_deadline_not_reached_changes_nothing(tmp_path):
    path = _sharded(tmp_path / "a.zarr")
    want = _image((512, 512)) + 1
    for store in (str(path), to_memory(path, f"deadline-ok-{tmp_path.name}")):
        arr = gpuzarr.open(store, device="cpu", settings=gpuzarr.Settings(deadline_seconds=30, batch_bytes=64 << 10))
        report = gpuzarr.ReadReport()
        np.testing.assert_array_equal(arr.read(report=report), want)
        assert report.requests > 0 and report.batches > 1
        np.testing.assert_array_equal(arr.read_batch([(slice(10, 20), slice(30, 40))] * 3), np.stack([want[10:20, 30:40]] * 3))


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf"), "1", True])
def test_a_bad_deadline_is_refused(bad):
    with pytest.raises(gpuzarr.SettingsError, match="deadline_seconds"):
        gpuzarr.Settings(deadline_seconds=bad)
    assert gpuzarr.Settings(deadline_seconds=0.25).deadline_seconds == 0.25
    assert gpuzarr.Settings(deadline_seconds=2).deadline_seconds == 2


@contextlib.contextmanager
def _hanging_http(directory: Path):
    """An HTTP server that serves the metadata files under `directory` and never answers a
    request for anything else (until the block ends)."""
    gate = threading.Event()

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            rel = self.path.lstrip("/")
            if not rel.endswith(("zarr.json", ".zarray", ".zattrs")):
                gate.wait(30)  # a request that never answers
                with contextlib.suppress(OSError):
                    self.send_error(404)
                return
            file = directory / rel
            if not file.is_file():
                self.send_error(404)
                return
            body = file.read_bytes()
            self.send_response(200)  # whole, Range or not: obstore then reads whole and slices
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    class Server(http.server.ThreadingHTTPServer):
        daemon_threads = True

        def handle_error(self, request, client_address):
            pass

    server = Server(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        gate.set()
        server.shutdown()
        server.server_close()


def test_obstore_requests_that_never_answer_fail_the_read_at_its_deadline(tmp_path):
    pytest.importorskip("obstore", reason="obstore is not installed (the [remote] extra)")
    _chunked(tmp_path / "a.zarr")
    with _hanging_http(tmp_path) as base:
        arr = gpuzarr.open(f"{base}/a.zarr", device="cpu", settings=gpuzarr.Settings(deadline_seconds=1))
        assert type(arr.store).__name__ == "ObstoreStore"
        out = np.full(arr.shape, 12345, dtype=arr.dtype)
        start = time.monotonic()
        with pytest.raises(DeadlineError) as caught:
            arr.read((slice(64, 200), slice(0, 300)), out=out[64:200, :300])
        took = time.monotonic() - start
        assert 0.9 < took < 3, took
        assert str(caught.value).startswith(f"{base}/a.zarr: ") and "deadline of 1 s" in str(caught.value)
        assert (out == 12345).all()  # nothing was fetched, nothing placed


def _threads(prefix: str) -> int:
    return sum(t.name.startswith(prefix) for t in threading.enumerate())


def test_reads_ending_at_their_deadline_against_a_host_that_never_answers_leave_threads_bounded(tmp_path):
    """Each read at its deadline leaves its requests under way (they end by the client's
    timeout): later reads got threads of their own every time, 32 more threads and sockets a
    read without bound (found by a concurrency run); now while fewer than twice the bound are so
    left, then later reads wait behind them, each no longer than its deadline."""
    pytest.importorskip("obstore", reason="obstore is not installed (the [remote] extra)")
    _chunked(tmp_path / "a.zarr")
    with _hanging_http(tmp_path) as base:
        arr = gpuzarr.open(f"{base}/a.zarr", device="cpu",
                           settings=gpuzarr.Settings(deadline_seconds=0.05, requests_in_flight=3))
        before = _threads("gpuzarr-get")
        for _ in range(12):
            start = time.monotonic()
            with pytest.raises(DeadlineError):
                arr[...]
            assert time.monotonic() - start < 1
        assert _threads("gpuzarr-get") - before <= 3 * 3  # the pool's own 3 and 6 left under way


def test_a_host_that_never_answers_holds_up_no_deadline_read_of_another(tmp_path, monkeypatch):
    """Store calls of reads with a deadline run on threads; calls hung on one host held them
    all (one pool of 32 for the process), and every later read with a deadline failed, whatever
    its store (found by a concurrency run): each host has threads of its own."""
    pytest.importorskip("aiohttp", reason="fsspec's HTTP filesystem needs aiohttp")
    monkeypatch.setattr(store_module, "CALLS", 2)  # so that a few hung calls fill a pool
    monkeypatch.setattr(store_module, "_CALLS", {})
    _chunked(tmp_path / "a.zarr")
    healthy = gpuzarr.open(to_memory(_chunked(tmp_path / "b.zarr"), f"healthy-{tmp_path.name}"), device="cpu",
                           settings=gpuzarr.Settings(deadline_seconds=5))
    want = healthy[...]
    with _hanging_http(tmp_path) as base:
        hung = gpuzarr.open(fsspec.get_mapper(f"{base}/a.zarr"), device="cpu",
                            settings=gpuzarr.Settings(deadline_seconds=0.05))
        for _ in range(10):
            with pytest.raises(DeadlineError):
                hung[...]
        start = time.monotonic()
        np.testing.assert_array_equal(healthy[...], want)
        assert time.monotonic() - start < 1


def test_a_request_timeout_fails_requests_that_never_answer_within_it(tmp_path):
    pytest.importorskip("obstore", reason="obstore is not installed (the [remote] extra)")
    _chunked(tmp_path / "a.zarr")
    with _hanging_http(tmp_path) as base:
        # no retries: the one attempt's timeout is the whole wait (obstore's default: 30 s)
        arr = gpuzarr.open(f"{base}/a.zarr", device="cpu", storage_options={"retry_config": {"max_retries": 0}},
                           settings=gpuzarr.Settings(request_timeout_seconds=0.3))
        assert arr.store.fs.obstore.client_options["timeout"] == "300ms"
        start = time.monotonic()
        with pytest.raises(gpuzarr.StoreError, match="a.zarr/c/"):
            arr[64:128, 0:64]
        took = time.monotonic() - start
        assert 0.25 < took < 1.5, took
        # a pickled array (a spawned worker's) keeps it
        assert pickle.loads(pickle.dumps(arr)).store.fs.obstore.client_options["timeout"] == "300ms"


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf"), "30s", True])
def test_a_bad_request_timeout_is_refused(bad):
    with pytest.raises(gpuzarr.SettingsError, match="request_timeout_seconds"):
        gpuzarr.Settings(request_timeout_seconds=bad)
    assert gpuzarr.Settings(request_timeout_seconds=2.5).request_timeout_seconds == 2.5


# ---------------------------------------------------------------- errors name the array


def test_a_truncated_shard_error_names_the_array_and_the_key(tmp_path):
    path = make_sharded(tmp_path / "a.zarr", index_crc=True, inner="raw")
    shard = path / "c" / "0" / "0"
    shard.write_bytes(shard.read_bytes()[:-5])
    for store, url in ((str(path), str(path)), (to_memory(path, f"trunc-{tmp_path.name}"), None)):
        arr = gpuzarr.open(store, device="cpu")
        url = url or arr.store.url
        with pytest.raises(gpuzarr.CorruptDataError) as caught:
            arr[...]
        message = str(caught.value)
        assert message.startswith(f"{url}: ") and "c/0/0" in message and message.count(url) == 1, message
        # the other shards read, and the next error is named once again, not twice
        assert arr[4:, 4:].shape == (4, 4)
        with pytest.raises(gpuzarr.CorruptDataError) as again:
            arr[:4, :4]
        assert str(again.value).count(url) == 1


def test_store_errors_name_the_array_once(tmp_path):
    path = _chunked(tmp_path / "a.zarr")
    name = f"failing-{tmp_path.name}"
    to_memory(path, name)

    class Failing(Store):
        full_path = False

        def read_ranges(self, ranges):
            key = next((k for k, _, _ in ranges if k.startswith("c/")), None)
            if key is not None:
                raise gpuzarr.StoreError(f"{self.path(key) if self.full_path else key}: injected failure", key)
            return super().read_ranges(ranges)

    arr = gpuzarr.open(Failing(fsspec.filesystem("memory"), f"/{name}"), device="cpu")
    with pytest.raises(gpuzarr.StoreError) as caught:
        arr[:64, 64:128]
    assert str(caught.value) == f"{arr.store.url}: c/0/1: injected failure" and caught.value.key == "c/0/1"
    Failing.full_path = True  # the key's full path names the array already
    with pytest.raises(gpuzarr.StoreError) as caught:
        arr[:64, 64:128]
    assert str(caught.value) == f"/{name}/c/0/1: injected failure"


def test_obstore_errors_say_the_attempts_made():
    pytest.importorskip("obstore", reason="obstore is not installed (the [remote] extra)")
    from gpuzarr.store_obstore import obstore_reason

    text = ("Generic S3 error: Error performing GET http://127.0.0.1:1/b/a.zarr/zarr.json in 209.5ms, after 2 retries,"
            " max_retries: 2, retry_timeout: 30s  - HTTP error: error sending request\n\nDebug source:\nGeneric {\n"
            "    source: RetryError(\n        RetryErrorImpl {\n            retries: 2,\n            max_retries: 2,\n"
            "            inner: Http(\n                HttpError {\n                    kind: Connect,\n")
    assert "3 attempts in 210 ms" in obstore_reason(RuntimeError(text))
    once = text.replace(", after 2 retries", "").replace("retries: 2,", "retries: 0,")
    assert "1 attempt in 210 ms" in obstore_reason(RuntimeError(once))
    # end to end: a refused connection, tried twice
    options = {"anon": True, "endpoint_url": f"http://127.0.0.1:{_closed_port()}",
               "config_kwargs": {"connect_timeout": 1, "retries": {"max_attempts": 2}}}
    with pytest.raises(gpuzarr.StoreError) as caught:
        gpuzarr.open("s3://bucket/nothing.zarr", storage_options=options)
    assert "2 attempts" in str(caught.value) and "s3://bucket/nothing.zarr/zarr.json" in str(caught.value)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(pytest.main([os.path.abspath(__file__), "-q"]))


def test_local_reads_coalesce_smaller_gaps_than_remote_ones(tmp_path):
    """Two chunks of one shard 19 KiB apart: a local read asks for each (a syscall costs less than
    copying the gap out of the page cache: fetch.LOCAL_GAP), a store whose requests take a round
    trip asks for both and the gap between at once (fetch.COALESCE_GAP)."""
    from gpuzarr.fetch import COALESCE_GAP, LOCAL_GAP

    path = tmp_path / "gaps.zarr"
    z = zarr.create_array(path, shape=(64 * 1024,), chunks=(1024,), shards=(64 * 1024,), dtype="u1",
                          compressors=None, fill_value=0)
    values = (np.arange(64 * 1024) % 251 + 1).astype("u1")
    z[...] = values
    assert LOCAL_GAP < 19 * 1024 <= COALESCE_GAP
    picked = np.array([5, 20 * 1024 + 7])
    reports = {}
    for name, url in (("local", str(path)), ("memory", to_memory(path, f"gaps-{tmp_path.name}"))):
        report = gpuzarr.ReadReport()
        np.testing.assert_array_equal(gpuzarr.open(url, device="cpu").read(picked, report=report), values[picked])
        reports[name] = report
    assert reports["local"].requests == reports["memory"].requests + 1
    assert reports["memory"].bytes_requested - reports["local"].bytes_requested == 19 * 1024
