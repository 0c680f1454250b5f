"""Object storage through obstore (gpuzarr.store_obstore), against a local S3 server (moto): reads
bit-identical to zarr-python's of the local copy, groups with and without consolidated
metadata, spawn and fork workers, failures within a bounded time, the bound on requests in
flight, and servers that ignore Range. `python tests/test_obstore.py` times a full read of 256
chunk objects through obstore, s3fs and tensorstore."""

from __future__ import annotations

import contextlib
import functools
import http.client
import http.server
import multiprocessing as mp
import os
import pickle
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import warnings
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

obstore = pytest.importorskip("obstore", reason="obstore is not installed (the [remote] extra)")
moto_server = pytest.importorskip("moto.server", reason="moto[server] is not installed (a local S3 server)")
zarr = pytest.importorskip("zarr")

import gpuzarr  # noqa: E402
from gpuzarr import fetch as fetch_module  # noqa: E402
from gpuzarr import store_obstore  # noqa: E402
from gpuzarr.store import Store, open_store, pooled  # noqa: E402
from gpuzarr.store_obstore import ObstoreStore  # noqa: E402

from remote_arrays import image as _image  # noqa: E402
from remote_arrays import in_forked_child, objects, write_arrays  # noqa: E402

BUCKET = "gpuzarr-test"
TIMEOUT = 30  # seconds a forked or spawned child may take before the test fails (a hang)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def endpoint():
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=_free_port(), verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def _options(endpoint: str) -> dict:
    """storage_options as s3fs takes them."""
    return {"key": "testing", "secret": "testing", "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"}}


def _s3(endpoint: str) -> obstore.store.S3Store:
    return obstore.store.S3Store(BUCKET, endpoint=endpoint, access_key_id="testing", secret_access_key="testing",
                                 region="us-east-1", client_options={"allow_http": True})


def _upload(s3, local: Path, name: str) -> None:
    for key, data in objects(local, name):
        obstore.put(s3, key, data)


@pytest.fixture(scope="module")
def bucket(endpoint, tmp_path_factory):
    """Arrays written by zarr-python locally, uploaded to the bucket: name → local path."""
    local = tmp_path_factory.mktemp("obstore")
    s3 = _s3(endpoint)
    _create_bucket(endpoint)
    write_arrays(local)
    for name in ("group_plain.zarr", "group_consolidated.zarr"):
        group = zarr.open_group(local / name, mode="w")
        group.attrs["title"] = name
        a = group.create_array("a", shape=(100, 80), chunks=(32, 32), dtype="f4", fill_value=np.nan)
        a[:50] = np.arange(50 * 80, dtype="f4").reshape(50, 80)
        b = group.create_array("sub/b", shape=(64,), chunks=(16,), dtype="i2")
        b[...] = np.arange(64, dtype="i2")
        if name == "group_consolidated.zarr":
            with warnings.catch_warnings():  # "not part of the v3 specification": gpuzarr reads it
                warnings.simplefilter("ignore")
                zarr.consolidate_metadata(local / name)
    for name in ("sharded.zarr", "chunked.zarr", "v2.zarr", "group_plain.zarr", "group_consolidated.zarr"):
        _upload(s3, local / name, name)
    obstore.delete(s3, "chunked.zarr/c/3/4")  # a missing chunk object: the fill value
    os.remove(local / "chunked.zarr" / "c" / "3" / "4")
    return local


def _create_bucket(endpoint: str) -> None:
    conn = http.client.HTTPConnection(endpoint.removeprefix("http://"), timeout=10)
    conn.request("PUT", f"/{BUCKET}")
    response = conn.getresponse()
    response.read()
    assert response.status in (200, 409), response.status


def _open(endpoint, name, **kw):
    return gpuzarr.open(f"s3://{BUCKET}/{name}", storage_options=_options(endpoint), device="cpu", **kw)


def _reference(local: Path, name: str):
    return zarr.open_array(local / name, mode="r")


# ---------------------------------------------------------------- reads


@pytest.mark.parametrize("name", ["sharded.zarr", "chunked.zarr", "v2.zarr"])
def test_reads_are_bit_identical_to_zarr_python(endpoint, bucket, name):
    arr = _open(endpoint, name)
    assert isinstance(arr.store, ObstoreStore) and arr.store.url == f"s3://{BUCKET}/{name}"
    ref = _reference(bucket, name)
    want = ref[...]
    got = arr[...]
    assert got.dtype == want.dtype and np.array_equal(got, want)
    window = (slice(37, 211), slice(5, 190))
    assert np.array_equal(arr[window], want[window])
    rng = np.random.default_rng(5)
    corners = rng.integers(0, np.array(arr.shape) - 32, size=(64, 2))
    windows = [(slice(y, y + 32), slice(x, x + 32)) for y, x in corners.tolist()]
    assert np.array_equal(arr.read_batch(windows), np.stack([want[w] for w in windows]))


def test_missing_chunks_and_shards_read_as_the_fill_value(endpoint, bucket):
    report = gpuzarr.ReadReport()
    arr = _open(endpoint, "chunked.zarr")
    got = arr.read((slice(192, 256), slice(256, 320)), report=report)
    assert (got == 7).all() and report.missing_keys == ["c/3/4"]
    sharded = _open(endpoint, "sharded.zarr")
    report = gpuzarr.ReadReport()
    assert (sharded.read((slice(256, 512), slice(256, 512)), report=report) == 0).all()
    assert report.missing_keys == ["c/1/1"]


@pytest.mark.parametrize("past", [0, 1000])
def test_a_shard_index_pointing_past_the_end_is_corrupt_data_not_a_store_error(endpoint, bucket, tmp_path, past):
    """A chunk range beyond the object's end: a short body (past=0: the range runs over the end)
    or HTTP 416 (it starts past the end); either way fetch's length check names the shard."""
    from corrupt import make_sharded, put_index, read_index

    path = make_sharded(tmp_path / "a", index_crc=True, inner="raw")
    shard = path / "c" / "0" / "0"
    buf = shard.read_bytes()
    idx = read_index(buf)
    idx[3] = (len(buf) - 8 + past, 16)  # the last inner chunk now runs past the end of the shard
    shard.write_bytes(put_index(buf, idx))
    name = f"past-{past}.zarr"
    _upload(_s3(endpoint), path, name)
    arr = gpuzarr.open(f"s3://{BUCKET}/{name}", storage_options=_options(endpoint), device="cpu")
    with pytest.raises(gpuzarr.CorruptDataError, match="c/0/0"):
        arr[...]


def test_the_same_storage_options_work_in_obstores_own_words(endpoint, bucket):
    options = {"access_key_id": "testing", "secret_access_key": "testing", "endpoint": endpoint,
               "region": "us-east-1", "client_options": {"timeout": "10s"}}
    arr = gpuzarr.open(f"s3://{BUCKET}/v2.zarr", storage_options=options, device="cpu")
    assert isinstance(arr.store, ObstoreStore)
    assert np.array_equal(arr[...], _reference(bucket, "v2.zarr")[...])
    # s3fs's endpoint_url at the top level; anonymous requests the private bucket refuses
    top = gpuzarr.open(f"s3://{BUCKET}/v2.zarr", device="cpu",
                       storage_options={"key": "testing", "secret": "testing", "endpoint_url": endpoint})
    assert np.array_equal(top[...], _reference(bucket, "v2.zarr")[...])
    with pytest.raises(gpuzarr.StoreError, match="403") as caught:
        gpuzarr.open(f"s3://{BUCKET}/v2.zarr", storage_options={"anon": True, "endpoint_url": endpoint})
    assert len(str(caught.value)) < 400, str(caught.value)


def test_obstore_stores_and_zarr_object_stores_are_accepted(endpoint, bucket):
    want = _reference(bucket, "sharded.zarr")[...]
    s3 = _s3(endpoint)
    for store in (s3, zarr.storage.ObjectStore(s3)):
        arr = gpuzarr.open(store, "sharded.zarr", device="cpu")
        assert isinstance(arr.store, ObstoreStore) and arr.store.url == f"s3://{BUCKET}/sharded.zarr"
        assert np.array_equal(arr[...], want)
    prefixed = obstore.store.S3Store(BUCKET, prefix="sharded.zarr", endpoint=endpoint, access_key_id="testing",
                                     secret_access_key="testing", region="us-east-1",
                                     client_options={"allow_http": True})
    assert np.array_equal(gpuzarr.open(prefixed, device="cpu")[...], want)
    assert np.array_equal(pickle.loads(pickle.dumps(gpuzarr.open(prefixed, device="cpu")))[...], want)


def test_ranges_come_back_as_views_of_obstores_buffers_not_copies(endpoint, bucket):
    """bytes() of a large body is a fresh mapping whose pages fault in under the GIL: results
    are views, equal to the object's bytes, and metadata parses from one."""
    arr = _open(endpoint, "sharded.zarr")
    shard = (bucket / "sharded.zarr" / "c" / "0" / "0").read_bytes()
    got = arr.store.read_ranges([("c/0/0", 0, None), ("c/0/0", 100, 5000), ("c/0/0", -20, None), ("nope", 0, None)])
    assert [type(g) for g in got[:3]] == [memoryview] * 3 and got[3] is None
    assert [bytes(g) for g in got[:3]] == [shard, shard[100:5000], shard[-20:]]
    from gpuzarr.metadata import load_json

    assert load_json(arr.store.read_ranges([("zarr.json", 0, None)])[0], "zarr.json")["node_type"] == "array"


def test_opening_a_url_again_reuses_its_obstore_client(endpoint, bucket):
    a, b = _open(endpoint, "sharded.zarr"), _open(endpoint, "chunked.zarr")
    assert a.store.fs.obstore is b.store.fs.obstore, "one client (and connection pool) per bucket and options"
    other = gpuzarr.open(f"s3://{BUCKET}/sharded.zarr", device="cpu",
                         storage_options={**_options(endpoint), "config_kwargs": {"read_timeout": 7}})
    assert other.store.fs.obstore is not a.store.fs.obstore
    assert np.array_equal(other[...], a[...])


def test_routing_obstore_fsspec_and_their_absence(endpoint, bucket, monkeypatch):
    import fsspec

    pytest.importorskip("s3fs", reason="fsspec reads S3 through s3fs")
    url = f"s3://{BUCKET}/v2.zarr"
    assert isinstance(open_store(url, storage_options=_options(endpoint)), ObstoreStore)
    mapper = fsspec.get_mapper(url, **_options(endpoint))
    assert type(open_store(mapper)) is Store  # an fsspec object stays fsspec
    assert type(open_store("memory://x")) is Store
    for scheme in ("s3a", "gs", "gcs", "az", "azure", "abfs", "abfss", "https", "GS"):  # every scheme obstore reads
        azure = scheme[0] == "a"
        opened = open_store(f"{scheme}://bucket/a.zarr", storage_options={"anon": True, "account_name": "acct"} if azure
                            else {"anon": True} if scheme[0] == "s" else {})
        assert isinstance(opened, ObstoreStore), scheme
    # an option obstore has no equivalent for: fsspec opens the URL, as before
    assert type(open_store(url, storage_options={**_options(endpoint), "s3_additional_kwargs": {"x": 1}})) is Store
    monkeypatch.setitem(sys.modules, "obstore", None)  # not installed
    store = open_store(url, storage_options=_options(endpoint))
    assert type(store) is Store
    assert np.array_equal(gpuzarr.open(store, device="cpu")[...], _reference(bucket, "v2.zarr")[...])


def test_reads_work_where_an_event_loop_already_runs(endpoint, bucket):
    """A notebook's thread runs an asyncio loop: gpuzarr's requests run on a loop of its own."""
    import asyncio

    async def inside():
        return _open(endpoint, "v2.zarr")[...]

    assert np.array_equal(asyncio.run(inside()), _reference(bucket, "v2.zarr")[...])


def test_import_gpuzarr_does_not_import_obstore():
    code = ("import sys, gpuzarr; gpuzarr.open; from gpuzarr import store\n"
            "assert 'obstore' not in sys.modules and 'gpuzarr.store_obstore' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_dask_blocks_read_concurrently_on_threads(endpoint, bucket):
    pytest.importorskip("dask")
    url = f"s3://{BUCKET}/chunked.zarr"
    x = gpuzarr.to_dask(url, chunks=(128, 128), device="cpu", storage_options=_options(endpoint))
    assert x.name == gpuzarr.to_dask(url, chunks=(128, 128), device="cpu", storage_options=_options(endpoint)).name
    assert np.array_equal(x.compute(scheduler="threads", num_workers=8), _reference(bucket, "chunked.zarr")[...])


# ---------------------------------------------------------------- freshness


def _write_sharded(local: Path, data: np.ndarray) -> None:
    a = zarr.create_array(local, shape=data.shape, chunks=(32, 32), shards=(128, 128), dtype=data.dtype,
                          compressors=zarr.codecs.ZstdCodec(level=3), fill_value=0, overwrite=True)
    a[...] = data


@pytest.mark.parametrize("what", ["window", "full"])
def test_a_shard_rewritten_after_its_index_was_cached_is_read_fresh(endpoint, bucket, tmp_path, what):
    """The cached index of a rewritten shard would point into the new object at old offsets; the
    chunks' GETs see the object's new ETag, and the read is made again from a fresh index."""
    name = f"fresh-{what}.zarr"
    old, new = _image((256, 256), 10), _image((256, 256), 11)
    new[:, :100] = 3  # compresses far better: every offset after it moves
    _write_sharded(tmp_path / "old", old)
    _write_sharded(tmp_path / "new", new)
    s3 = _s3(endpoint)
    _upload(s3, tmp_path / "old", name)
    arr = _open(endpoint, name)
    sel = (slice(10, 200), slice(20, 240)) if what == "window" else (slice(None), slice(None))
    assert np.array_equal(arr[sel], old[sel])  # the shards' indexes and versions are kept
    before = {k: arr.store.version(k) for k in ("c/0/0", "c/1/1")}
    assert all(v for v in before.values())
    _upload(s3, tmp_path / "new", name)
    report = gpuzarr.ReadReport()
    got = arr.read(sel, report=report)
    assert np.array_equal(got, new[sel])
    assert any("read again" in n and "changed since its shard index was read" in n for n in report.notes)
    assert all(arr.store.version(k) != v for k, v in before.items())
    report = gpuzarr.ReadReport()
    assert np.array_equal(arr.read(sel, report=report), new[sel]) and not report.notes  # fresh indexes cached


def _small_sharded(local: Path) -> Any:
    """16 int32 in shards of 8 (chunks of 4), fill -1: shard c/0 written, c/1 absent."""
    a = zarr.create_array(local, shape=(16,), chunks=(4,), shards=(8,), dtype="i4", fill_value=-1,
                          compressors=zarr.codecs.ZstdCodec(), overwrite=True)
    a[0:8] = np.arange(8)
    return a


def test_a_shard_written_after_a_read_found_it_missing_is_read(endpoint, bucket, tmp_path):
    """A missing shard answers no GET, so it has no version: its absence was cached under None
    and looked up, without a request, by every later read (the shard, written since, stayed
    fill). Entries of no version are not kept."""
    s3 = _s3(endpoint)
    local = _small_sharded(tmp_path / "a")
    _upload(s3, tmp_path / "a", "created.zarr")
    arr = _open(endpoint, "created.zarr")
    assert np.array_equal(arr[...], np.r_[np.arange(8), [-1] * 8])
    local[8:16] = np.arange(100, 108)
    _upload(s3, tmp_path / "a", "created.zarr")
    assert np.array_equal(arr[...], np.r_[np.arange(8), np.arange(100, 108)])


def test_a_shard_deleted_after_its_index_was_cached_reads_as_the_fill_value(endpoint, bucket, tmp_path):
    """Its chunks' GETs find nothing: the read is made again from fresh indexes (it raised
    'shard disappeared' at every read before), as zarr-python reads a missing shard."""
    s3 = _s3(endpoint)
    _small_sharded(tmp_path / "a")
    _upload(s3, tmp_path / "a", "deleted.zarr")
    arr = _open(endpoint, "deleted.zarr")
    assert np.array_equal(arr[...], np.r_[np.arange(8), [-1] * 8])  # c/0's index cached
    obstore.delete(s3, "deleted.zarr/c/0")
    report = gpuzarr.ReadReport()
    assert np.array_equal(arr.read(report=report), np.full(16, -1))
    assert any("read again" in n and "shard disappeared" in n for n in report.notes)
    assert np.array_equal(arr[...], np.full(16, -1))


def test_a_shard_changing_under_every_read_is_read_whole_or_a_changed_error(endpoint, bucket, monkeypatch):
    from gpuzarr.store import ChangedError

    class Moving(dict):
        """Every version the store kept is one the object no longer has."""

        def get(self, key, default=None):
            return '"gone"'

        def __contains__(self, key):
            return True

        def __setitem__(self, key, value):
            pass

        def move_to_end(self, key):
            pass

    arr = _open(endpoint, "sharded.zarr")
    arr.store._versions = Moving()
    report = gpuzarr.ReadReport()
    # made again with each shard in one GET, one version of it whatever was kept: read
    assert np.array_equal(arr.read((slice(0, 100), slice(0, 100)), report=report),
                          _reference(bucket, "sharded.zarr")[:100, :100])
    assert len(report.notes) == 1 and "the object changed" in report.notes[0]
    with monkeypatch.context() as m:  # no shard read whole: index, then chunks, each time
        m.setattr(fetch_module, "WHOLE_SHARD_BYTES", 0)
        with pytest.raises(ChangedError, match=r"sharded\.zarr/c/\d/\d: the object changed .*; 3 reads in a row"):
            arr[:100, :100]


# ---------------------------------------------------------------- groups and listing


@pytest.mark.parametrize("name", ["group_plain.zarr", "group_consolidated.zarr"])
def test_groups_with_and_without_consolidated_metadata(endpoint, bucket, name):
    group = _open(endpoint, name)
    assert isinstance(group, gpuzarr.Group) and group.attrs["title"] == name
    assert group.keys() == ["a", "sub"]
    assert group["sub"].keys() == ["b"]
    ref = zarr.open_group(bucket / name, mode="r")
    assert np.array_equal(group["a"][...], ref["a"][...], equal_nan=True)
    assert np.array_equal(group["sub/b"][...], ref["sub/b"][...])


def test_listing_finds_every_chunk_object(endpoint, bucket):
    from gpuzarr.info import stored_chunks

    arr = _open(endpoint, "chunked.zarr")
    local = bucket / "chunked.zarr" / "c"
    files = [p for p in local.rglob("*") if p.is_file()]
    assert stored_chunks(arr) == (len(files), sum(p.stat().st_size for p in files))
    with pytest.raises(gpuzarr.StoreError, match="cannot list"):  # no such node: its marker is not listed
        _open(endpoint, "group_plain.zarr").store.list_dirs("nothing", "zarr.json")


def test_a_failed_listing_is_retried(endpoint, bucket):
    from gpuzarr.info import stored_chunks

    with _proxy(endpoint, where="list-type=") as proxy:
        arr = _one_chunk_array(endpoint, proxy.url)
        proxy.faults = ["503", "reset"]
        files = [p for p in (bucket / "chunked.zarr" / "c").rglob("*") if p.is_file()]
        assert stored_chunks(arr)[0] == len(files)
        assert [f for f, path in proxy.met] == ["503", "reset"] and "list-type" in proxy.met[0][1]


# ---------------------------------------------------------------- processes


def _read_in_worker(blob: bytes, window) -> tuple:
    arr = pickle.loads(blob)
    return arr[window], type(arr.store).__name__, store_obstore.FALLBACKS["fork"]


def test_a_spawned_worker_reads_a_pickled_array_through_its_own_obstore_client(endpoint, bucket):
    arr = _open(endpoint, "sharded.zarr")
    assert arr[:8, :8].shape == (8, 8)
    window = (slice(100, 300), slice(50, 120))
    with mp.get_context("spawn").Pool(1) as pool:
        got, kind, fallbacks = pool.apply_async(_read_in_worker, (pickle.dumps(arr), window)).get(TIMEOUT * 2)
    assert kind == "ObstoreStore" and fallbacks == 0
    assert np.array_equal(got, _reference(bucket, "sharded.zarr")[window])


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the platform has no fork()")
def test_a_forked_child_reads_through_fsspec_and_never_hangs(endpoint, bucket):
    pytest.importorskip("s3fs", reason="a forked child reads S3 through s3fs")
    by_url = _open(endpoint, "sharded.zarr")
    by_object = gpuzarr.open(_s3(endpoint), "v2.zarr", device="cpu")
    assert by_url[:4, :4].shape == by_object[:4, :4].shape == (4, 4)  # obstore's runtime runs in the parent
    want = _reference(bucket, "sharded.zarr")[...]
    want_v2 = _reference(bucket, "v2.zarr")[...]

    def child():
        fresh = _open(endpoint, "chunked.zarr")  # opened in the child: fsspec too
        report = gpuzarr.ReadReport()
        return (np.array_equal(by_url.read(report=report), want), np.array_equal(by_object[...], want_v2),
                np.array_equal(fresh[...], _reference(bucket, "chunked.zarr")[...]),
                by_url.store.fallback is not None, store_obstore.FALLBACKS["fork"] > 0, report.notes)

    value = in_forked_child(child, TIMEOUT)
    assert value == (True, True, True, True, True, [store_obstore.FORK_NOTE])  # once, however many calls
    assert by_url.store.fallback is None  # the parent still reads through obstore
    report = gpuzarr.ReadReport()
    assert np.array_equal(by_url.read((slice(0, 64), slice(0, 64)), report=report), want[:64, :64])
    assert report.notes == []


# ---------------------------------------------------------------- failures and bounds


def test_an_unreachable_endpoint_is_a_store_error_within_seconds():
    options = {"anon": True, "endpoint_url": "http://127.0.0.1:1",
               "config_kwargs": {"connect_timeout": 1, "retries": {"max_attempts": 2}}}
    start = time.monotonic()
    with pytest.raises(gpuzarr.StoreError) as caught:
        gpuzarr.open(f"s3://{BUCKET}/nothing.zarr", storage_options=options)
    assert time.monotonic() - start < 10
    message = str(caught.value)
    assert "zarr.json" in message and len(message) < 400, message


def test_a_server_that_never_answers_fails_within_the_request_timeout():
    with socket.socket() as silent:  # accepts connections (the kernel's backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        options = {"anon": True, "endpoint_url": f"http://127.0.0.1:{silent.getsockname()[1]}",
                   "client_options": {"timeout": "1s"}, "retry_config": {"max_retries": 0}}
        start = time.monotonic()
        with pytest.raises(gpuzarr.StoreError, match="zarr.json"):
            gpuzarr.open(f"s3://{BUCKET}/hang.zarr", storage_options=options)
        assert time.monotonic() - start < 10


def test_a_bad_requests_setting_is_refused(monkeypatch, endpoint):
    monkeypatch.setenv("GPUZARR_REQUESTS", "0")
    with pytest.raises(gpuzarr.SettingsError, match="GPUZARR_REQUESTS"):
        open_store(f"s3://{BUCKET}/v2.zarr", storage_options=_options(endpoint))


class _QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):  # clients hanging up mid-answer, on purpose
        pass


class _Proxy:
    """An HTTP proxy in front of the S3 server, counting requests in flight (each held `delay`
    seconds, so concurrent ones overlap); with `ignore_range`, it drops Range headers, as a server
    that does not do ranges would answer. `faults`: what the next GETs whose decoded URL holds
    `where` (chunk or shard objects: keys under c/) meet, one each: "503" (SlowDown), "429",
    "403", "reset" (the connection closed unanswered), "cut" (the full Content-Length, half the body, then closed), "stall" (no answer for `stall` s)."""

    def __init__(self, target: str, delay: float = 0.0, ignore_range: bool = False, faults: tuple = (),
                 stall: float = 3.0, where: str = "/c/"):
        self.target, self.delay, self.ignore_range = target.removeprefix("http://"), delay, ignore_range
        self.stall, self.where = stall, where
        self.faults = list(faults)
        self.met: list = []  # (fault, path) as they happened
        self.active = self.peak = self.requests = 0
        self.lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                with proxy.lock:
                    proxy.active += 1
                    proxy.requests += 1
                    proxy.peak = max(proxy.peak, proxy.active)
                fault = None
                with proxy.lock:
                    if proxy.faults and proxy.where in urllib.parse.unquote(self.path) and self.command == "GET":
                        fault = proxy.faults.pop(0)
                        proxy.met.append((fault, self.path))
                if fault in ("503", "429", "403", "reset", "stall"):
                    with proxy.lock:
                        proxy.active -= 1
                    if fault == "stall":
                        time.sleep(proxy.stall)
                    if fault in ("503", "429", "403"):
                        body = b"<Error><Code>SlowDown</Code><Message>Reduce your request rate.</Message></Error>"
                        self.send_response(int(fault))
                        self.send_header("Content-Length", str(len(body)))
                        self.end_headers()
                        self.wfile.write(body)
                    else:
                        self.close_connection = True
                        self.connection.shutdown(socket.SHUT_RDWR)
                    return
                try:
                    time.sleep(proxy.delay)
                    conn = http.client.HTTPConnection(proxy.target, timeout=30)
                    headers = {k: v for k, v in self.headers.items()
                               if k.lower() not in ("connection",) and not (proxy.ignore_range and k.lower() == "range")}
                    conn.request(self.command, self.path, headers=headers)
                    response = conn.getresponse()
                    body = response.read()
                    conn.close()
                finally:
                    with proxy.lock:
                        proxy.active -= 1
                if fault == "cut" and response.status >= 300:  # cut only data: put it back for the next GET
                    with proxy.lock:
                        proxy.met.remove((fault, self.path))
                        proxy.faults.insert(0, fault)
                    fault = None
                self.send_response(response.status)
                for k, v in response.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                with contextlib.suppress(OSError):  # a client that hung up (obstore, on a refused body)
                    if fault == "cut" and len(body) > 1:
                        self.wfile.write(body[:len(body) // 2])
                        self.wfile.flush()
                        self.close_connection = True
                        self.connection.shutdown(socket.SHUT_RDWR)
                        return
                    self.wfile.write(body)

            do_HEAD = do_GET

        self.server = _QuietServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@contextlib.contextmanager
def _proxy(endpoint, **kw):
    proxy = _Proxy(endpoint, **kw)
    try:
        yield proxy
    finally:
        proxy.close()


@pytest.mark.parametrize("bound", [4, 16])
def test_requests_in_flight_stay_within_the_bound(endpoint, bucket, monkeypatch, bound):
    monkeypatch.setenv("GPUZARR_REQUESTS", str(bound))
    with _proxy(endpoint, delay=0.01) as proxy:
        arr = gpuzarr.open(f"s3://{BUCKET}/chunked.zarr", device="cpu",
                           storage_options={**_options(endpoint), "client_kwargs": {"endpoint_url": proxy.url}})
        proxy.peak = proxy.requests = 0
        got = arr[...]  # 64 chunk objects in one call (one missing)
        assert proxy.requests == 64
        assert bound // 2 < proxy.peak <= bound, (proxy.peak, bound)  # concurrent, and never above the bound
    assert np.array_equal(got, _reference(bucket, "chunked.zarr")[...])


def test_settings_bound_a_reads_requests_in_flight(endpoint, bucket):
    with _proxy(endpoint, delay=0.01) as proxy:
        arr = gpuzarr.open(f"s3://{BUCKET}/chunked.zarr", device="cpu",
                           settings=gpuzarr.Settings(requests_in_flight=3),
                           storage_options={**_options(endpoint), "client_kwargs": {"endpoint_url": proxy.url}})
        proxy.peak = proxy.requests = 0
        got = arr[...]
        assert proxy.requests == 64 and 1 < proxy.peak <= 3, proxy.peak
    assert np.array_equal(got, _reference(bucket, "chunked.zarr")[...])


def test_s3fs_pools_are_sized_to_the_requests_in_flight(monkeypatch):
    monkeypatch.setenv("GPUZARR_REQUESTS", "48")
    assert pooled("s3", {"anon": True}) == {"anon": True, "config_kwargs": {"max_pool_connections": 48}}
    mine = {"config_kwargs": {"max_pool_connections": 7, "read_timeout": 3}}
    assert pooled("s3", mine) == mine, "the caller's own size stays"
    assert pooled("gs", {"token": "anon"}) == {"token": "anon"}
    # an option obstore has no equivalent for: the URL is opened by s3fs
    store = open_store("s3://bucket/a.zarr", storage_options={"anon": True, "s3_additional_kwargs": {"A": "b"}})
    assert type(store) is Store and store.fs.config_kwargs["max_pool_connections"] == 48


def test_aiohttp_filesystems_hold_more_connections_than_the_default_requests_in_flight(monkeypatch):
    """HTTP, gcsfs and adlfs talk through aiohttp sessions, whose connector holds `limit`
    connections (see store.pooled): the default bound in flight fits in it unsized."""
    import inspect

    from gpuzarr.store import requests_in_flight

    aiohttp = pytest.importorskip("aiohttp")  # comes with fsspec's HTTP, gcsfs and adlfs
    monkeypatch.delenv("GPUZARR_REQUESTS", raising=False)
    limit = inspect.signature(aiohttp.TCPConnector.__init__).parameters["limit"].default
    assert requests_in_flight() <= limit


def test_a_request_timeout_reaches_the_client_and_a_forked_childs_s3fs():
    """Settings.request_timeout_seconds (see tests/test_io_accounting.py for a request it ends)
    outranks the options' own client timeout, and a forked child's s3fs reads with it."""
    options = {"anon": True, "client_options": {"timeout": "60s"}}
    store = open_store("s3://bucket/a.zarr", storage_options=options, request_timeout=0.5)
    assert store.fs.obstore.client_options["timeout"] == "500ms"
    assert store_obstore.fsspec_options("s3", store.fs.obstore)["config_kwargs"]["read_timeout"] == 0.5
    assert open_store("s3://bucket/a.zarr", storage_options=options).fs.obstore.client_options["timeout"] == "60s"
    default = open_store("s3://bucket/a.zarr", storage_options={"anon": True})
    assert default.fs.obstore.client_options["timeout"] == "25s"


def test_a_request_that_never_answers_fails_within_a_minute_by_default():
    """The last attempt starts no later than retry_timeout after the first and ends by its own
    timeout: a hung GET ends a read within 60 s with no deadline set."""
    worst = store_obstore.RETRY_CONFIG["retry_timeout"] + store_obstore.CLIENT_OPTIONS["timeout"]
    assert worst.total_seconds() < 60
    assert store_obstore.CLIENT_OPTIONS["connect_timeout"] <= store_obstore.CLIENT_OPTIONS["timeout"]


@pytest.mark.parametrize("name", ["sharded.zarr", "chunked.zarr"])
@pytest.mark.parametrize("fault", ["503", "429", "reset", "cut"])
def test_failed_requests_are_retried_and_the_data_is_right(endpoint, bucket, name, fault):
    """Each GET of the read's first few chunk or shard objects fails once: gpuzarr's retries
    (with backoff) bring the right bytes, never a short or wrong chunk, and the read's report
    counts each retry though every request ended well."""
    with _proxy(endpoint, faults=(fault,) * 3) as proxy:
        arr = gpuzarr.open(f"s3://{BUCKET}/{name}", device="cpu",
                           storage_options={**_options(endpoint), "client_kwargs": {"endpoint_url": proxy.url}})
        report = gpuzarr.ReadReport()
        proxy.requests = 0  # those of the open
        got = arr.read(report=report)
        assert [f for f, _ in proxy.met] == [fault] * 3, "every fault was met"
        assert report.retries == 3
        assert proxy.requests == report.requests + 3
    assert np.array_equal(got, _reference(bucket, name)[...])


def _one_chunk_array(endpoint: str, url: str, **retry: Any) -> Any:
    """chunked.zarr through the proxy at `url`, retrying as `retry` says, 10 ms apart."""
    retry = {"backoff": {"init_backoff": timedelta(milliseconds=10), "max_backoff": timedelta(milliseconds=10)},
             **retry}
    return gpuzarr.open(f"s3://{BUCKET}/chunked.zarr", device="cpu",
                        storage_options={**_options(endpoint), "client_kwargs": {"endpoint_url": url},
                                         "retry_config": retry})


def test_a_request_failing_past_its_retries_names_the_attempts(endpoint, bucket):
    with _proxy(endpoint, faults=("503",) * 5) as proxy:
        arr = _one_chunk_array(endpoint, proxy.url, max_retries=2)
        report = gpuzarr.ReadReport()
        with pytest.raises(gpuzarr.StoreError, match=r"chunked.zarr/c/0/0: read failed .*HTTP 503.*3 attempts"):
            arr.read((slice(0, 1), slice(0, 1)), report=report)
        assert len(proxy.met) == 3 and report.retries == 2


def test_an_answer_no_attempt_can_cure_is_not_retried(endpoint, bucket):
    with _proxy(endpoint, faults=("403",) * 5) as proxy:
        arr = _one_chunk_array(endpoint, proxy.url)
        report = gpuzarr.ReadReport()
        with pytest.raises(gpuzarr.StoreError, match="chunked.zarr/c/0/0: read failed"):
            arr.read((slice(0, 1), slice(0, 1)), report=report)
        assert len(proxy.met) == 1 and report.retries == 0


def test_a_read_past_its_deadline_starts_no_new_attempt(endpoint, bucket):
    """Requests backing off when the read ends (its deadline) give up rather than try again."""
    with _proxy(endpoint, faults=("503",) * 64) as proxy:
        arr = gpuzarr.open(f"s3://{BUCKET}/chunked.zarr", device="cpu", settings=gpuzarr.Settings(deadline_seconds=0.5),
                           storage_options={**_options(endpoint), "client_kwargs": {"endpoint_url": proxy.url},
                                            "retry_config": {"backoff": {"init_backoff": timedelta(seconds=1),
                                                                         "max_backoff": timedelta(seconds=1)}}})
        with pytest.raises(gpuzarr.DeadlineError):
            arr[...]
        met = len(proxy.met)
        time.sleep(1.5)  # past the backoff
        assert len(proxy.met) == met, "no attempt after the read ended"


def test_a_store_the_caller_made_retries_as_configured(endpoint, bucket):
    """gpuzarr adds no retries of its own to an obstore store it did not make."""
    with _proxy(endpoint, faults=("503",) * 3) as proxy:
        ostore = obstore.store.S3Store(BUCKET, endpoint=proxy.url, access_key_id="testing",
                                       secret_access_key="testing", region="us-east-1",
                                       client_options={"allow_http": True}, retry_config={"max_retries": 0})
        arr = gpuzarr.open(ostore, path="chunked.zarr", device="cpu")
        with pytest.raises(gpuzarr.StoreError, match="HTTP 503"):
            arr.read((slice(0, 1), slice(0, 1)))
        assert len(proxy.met) == 1


def test_a_stalled_request_ends_at_the_deadline(endpoint, bucket):
    with _proxy(endpoint, faults=("stall",) * 64) as proxy:
        arr = gpuzarr.open(f"s3://{BUCKET}/chunked.zarr", device="cpu",
                           settings=gpuzarr.Settings(deadline_seconds=0.5),
                           storage_options={**_options(endpoint), "client_kwargs": {"endpoint_url": proxy.url}})
        start = time.monotonic()
        with pytest.raises(gpuzarr.DeadlineError, match="chunked.zarr: the read was still fetching"):
            arr[...]
        assert time.monotonic() - start < 2.5


def test_requests_left_hanging_at_a_deadline_hold_up_no_later_read(endpoint, bucket):
    """A read ending at its deadline leaves its stalled requests (3 s) to end by the client's
    timeout: later reads with the same bound get threads of their own, not a place behind them."""
    settings = gpuzarr.Settings(deadline_seconds=1, requests_in_flight=2)
    with _proxy(endpoint, faults=("stall",) * 64) as proxy:
        hung = gpuzarr.open(f"s3://{BUCKET}/chunked.zarr", device="cpu", settings=settings,
                            storage_options={**_options(endpoint), "client_kwargs": {"endpoint_url": proxy.url}})
        with pytest.raises(gpuzarr.DeadlineError):
            hung[...]
        healthy = gpuzarr.open(f"s3://{BUCKET}/chunked.zarr", device="cpu", settings=settings,
                               storage_options=_options(endpoint))
        start = time.monotonic()
        got = healthy[...]
        assert time.monotonic() - start < 1
    assert np.array_equal(got, _reference(bucket, "chunked.zarr")[...])


def test_requests_left_hanging_at_a_deadline_do_not_hold_up_the_process_exit(endpoint, bucket):
    code = f"""
import gpuzarr
arr = gpuzarr.open("s3://{BUCKET}/chunked.zarr", device="cpu", settings=gpuzarr.Settings(deadline_seconds=1),
                   storage_options={{"key": "testing", "secret": "testing",
                                     "client_kwargs": {{"endpoint_url": "{{url}}", "region_name": "us-east-1"}}}})
try:
    arr[...]
except gpuzarr.DeadlineError:
    print("deadline")
"""
    with _proxy(endpoint, faults=("stall",) * 64, stall=20) as proxy:
        start = time.monotonic()
        done = subprocess.run([sys.executable, "-c", code.replace("{url}", proxy.url)], capture_output=True,
                              text=True, timeout=60)
        took = time.monotonic() - start
    assert done.stdout.strip() == "deadline", done.stderr
    assert took < 10, took  # not the 20 s the stalled requests hang


def test_a_server_that_ignores_range_is_read_whole_and_sliced(endpoint, bucket):
    before = store_obstore.FALLBACKS["ignored_range"]
    with _proxy(endpoint, ignore_range=True) as proxy:
        arr = gpuzarr.open(f"s3://{BUCKET}/sharded.zarr", device="cpu",
                           storage_options={**_options(endpoint), "client_kwargs": {"endpoint_url": proxy.url}})
        want = _reference(bucket, "sharded.zarr")[...]
        report = gpuzarr.ReadReport()
        assert np.array_equal(arr.read(report=report), want)
        assert report.notes == [f"{store_obstore.IGNORED_RANGE_NOTE} ({BUCKET})"]  # once, for every shard
        assert np.array_equal(arr[70:90, 300:333], want[70:90, 300:333])
    assert arr.store.fs.ignores_range and store_obstore.FALLBACKS["ignored_range"] > before
    report = gpuzarr.ReadReport()
    assert np.array_equal(_open(endpoint, "sharded.zarr").read(report=report), want)  # ranges answered
    assert report.notes == []


class _Quiet(http.server.SimpleHTTPRequestHandler):
    """Python's file server, silent: no ETag, Range ignored (whole files), the path decoded."""

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def _files_over_http(directory: Path):
    """The files under `directory` served over HTTP; yields the server's base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(directory)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_http_urls_read_through_obstore_and_list_through_fsspec(bucket):
    pytest.importorskip("aiohttp", reason="HTTP listings go through fsspec's HTTPFileSystem (aiohttp)")
    with _files_over_http(bucket) as base:  # Range ignored: whole files, sliced
        arr = gpuzarr.open(f"{base}/sharded.zarr", device="cpu")
        assert isinstance(arr.store, ObstoreStore) and arr.store.url == f"{base}/sharded.zarr"
        assert np.array_equal(arr[...], _reference(bucket, "sharded.zarr")[...])
        group = gpuzarr.open(f"{base}/group_plain.zarr", device="cpu")
        assert group.keys() == ["a", "sub"]
        assert np.array_equal(group["sub/b"][...], np.arange(64, dtype="i2"))


def test_a_server_that_ignores_range_is_sliced_through_an_fsspec_mapper(bucket):
    """fsspec's HTTP hands over whatever body came: a server that ignores Range sends whole
    objects, which were read as the range (a shard index of the whole shard's length: a
    CorruptDataError saying "truncated shard?"). A body longer than its range is sliced to it,
    counted and noted, as obstore's reads are."""
    fsspec = pytest.importorskip("fsspec")
    pytest.importorskip("aiohttp", reason="fsspec's HTTPFileSystem needs aiohttp")
    before = store_obstore.FALLBACKS["ignored_range"]
    with _files_over_http(bucket) as base:
        arr = gpuzarr.open(fsspec.get_mapper(f"{base}/sharded.zarr"), device="cpu")
        assert not isinstance(arr.store, ObstoreStore)
        want = _reference(bucket, "sharded.zarr")[...]
        assert np.array_equal(arr[...], want)  # (its shards read whole: no range to slice)
        report = gpuzarr.ReadReport()
        assert np.array_equal(arr.read((slice(70, 90), slice(300, 333)), report=report), want[70:90, 300:333])
    assert store_obstore.FALLBACKS["ignored_range"] > before
    assert any(note.startswith(store_obstore.IGNORED_RANGE_NOTE) for note in report.notes), report.notes


def test_a_server_without_etags_has_its_shard_indexes_read_anew(tmp_path):
    """Python's http.server sends no ETag (and ignores Range): no version to revalidate a cached
    index by, so none is kept; a shard rewritten (or written) since the last read is read as it
    is now, not through the old index (a CorruptDataError, or the old absence)."""
    local = _small_sharded(tmp_path / "a")
    with _files_over_http(tmp_path) as base:
        arr = gpuzarr.open(f"{base}/a", device="cpu")
        assert np.array_equal(arr[...], np.r_[np.arange(8), [-1] * 8])
        local[0:4] = -1  # c/0 rewritten: its chunks at other offsets
        local[8:16] = np.arange(100, 108)  # c/1 written
        assert np.array_equal(arr[...], np.r_[[-1] * 4, np.arange(4, 8), np.arange(100, 108)])


def test_an_azure_endpoint_of_its_own_reaches_adlfs_as_a_connection_string():
    """A forked child's adlfs takes a custom blob endpoint (an emulator, a private link) only in a
    connection string: built from obstore's endpoint with its key or its SAS token; without an
    endpoint the account's options pass as they are."""
    from obstore.store import AzureStore

    from gpuzarr.store_obstore import fsspec_options

    key = "a2V5" * 22  # any base64 key of the right length
    with_key = AzureStore("c", account_name="acct", account_key=key, endpoint="http://127.0.0.1:10000/acct",
                          client_options={"allow_http": True})
    assert fsspec_options("az", with_key) == {
        "account_name": "acct",
        "connection_string": f"DefaultEndpointsProtocol=http;AccountName=acct;AccountKey={key};"
                             f"BlobEndpoint=http://127.0.0.1:10000/acct;"}
    with_sas = AzureStore("c", account_name="acct", sas_key="sv=2024&sig=abc", endpoint="https://blobs.example/acct")
    assert fsspec_options("az", with_sas) == {
        "account_name": "acct",
        "connection_string": "DefaultEndpointsProtocol=https;AccountName=acct;SharedAccessSignature=sv=2024&sig=abc;"
                             "BlobEndpoint=https://blobs.example/acct;"}
    assert fsspec_options("az", AzureStore("c", account_name="acct", account_key=key)) == {
        "account_name": "acct", "account_key": key}


# ---------------------------------------------------------------- a measurement, not a test


def _bench(repeats: int = 5) -> None:
    """Full read of 256 chunk objects of 64² uint16 from moto (in its own process), medians of
    `repeats`: gpuzarr through obstore, through s3fs, and tensorstore."""
    import statistics
    import tempfile

    import fsspec

    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                _create_bucket(endpoint)
                break
            except OSError:
                time.sleep(0.1)
        local = Path(tempfile.mkdtemp())
        data = _image((1024, 1024), 1)
        a = zarr.create_array(local / "chunked.zarr", shape=data.shape, chunks=(64, 64), dtype="u2",
                              compressors=zarr.codecs.ZstdCodec(level=1))
        a[...] = data
        _upload(_s3(endpoint), local / "chunked.zarr", "chunked.zarr")
        url = f"s3://{BUCKET}/chunked.zarr"
        readers = {"gpuzarr obstore": gpuzarr.open(url, storage_options=_options(endpoint), device="cpu"),
                   "gpuzarr s3fs": gpuzarr.open(fsspec.get_mapper(url, **_options(endpoint)), device="cpu")}
        try:
            import tensorstore as ts

            os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
            readers["tensorstore"] = ts.open({"driver": "zarr3", "kvstore": {
                "driver": "s3", "bucket": BUCKET, "path": "chunked.zarr/", "endpoint": endpoint,
                "aws_region": "us-east-1", "aws_credentials": {"type": "environment"}}}).result()
        except Exception as exc:  # noqa: BLE001
            print(f"tensorstore: {type(exc).__name__}: {exc}")
        for name, reader in readers.items():
            read = (lambda r=reader: r.read().result()) if name == "tensorstore" else (lambda r=reader: r[...])
            assert np.array_equal(read(), data), name
            walls, cpus = [], []
            for _ in range(repeats):
                wall, cpu = time.perf_counter(), time.process_time()
                read()
                walls.append(time.perf_counter() - wall)
                cpus.append(time.process_time() - cpu)
            print(f"{name:16s} wall {statistics.median(walls) * 1e3:7.1f} ms   "
                  f"client CPU {statistics.median(cpus) * 1e3:7.1f} ms")
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    _bench()



@pytest.mark.parametrize("retry", [{"max_retries": "3"}, {"max_retries": -1}, {"retry_timeout": 30},
                                   {"backoff": {"init_backoff": "1s"}}, {"backoff": {"base": "2"}}])
def test_a_bad_retry_config_is_a_settings_error(retry):
    with pytest.raises(gpuzarr.SettingsError, match="retry_config"):
        open_store("s3://bucket/a.zarr", storage_options={"anon": True, "retry_config": retry})


def test_retry_waits_grow_within_the_configured_bounds():
    from gpuzarr.obstore_retries import RetryPolicy

    policy = RetryPolicy.of({"backoff": {"init_backoff": timedelta(milliseconds=100),
                                         "max_backoff": timedelta(seconds=1), "base": 3}})
    waits = [policy.next_wait(0)]
    for _ in range(50):
        waits.append(policy.next_wait(waits[-1]))
    assert waits[0] == 0.1 and all(0.1 <= w <= 1 for w in waits)
    assert max(waits) > 0.5, "the waits grow toward the cap"


class _NoSuffixRanges(http.server.SimpleHTTPRequestHandler):
    """Serves `bytes=a-b` ranges but answers a suffix range (`bytes=-N`) 416, as RFC 9110 lets a
    server; HEAD unless `no_head`."""

    no_head = False

    def log_message(self, *args):
        pass

    def do_HEAD(self):
        if self.no_head:
            self.send_error(501)
            return
        super().do_HEAD()

    def do_GET(self):
        try:
            body = (Path(self.directory) / self.path.lstrip("/")).read_bytes()
        except OSError:
            self.send_error(404)
            return
        ranged = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", ""))
        if ranged and not ranged.group(1):
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(body)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        start, stop = (int(ranged.group(1)), int(ranged.group(2) or len(body) - 1) + 1) if ranged else (0, len(body))
        stop = min(stop, len(body))
        self.send_response(206 if ranged else 200)
        if ranged:
            self.send_header("Content-Range", f"bytes {start}-{stop - 1}/{len(body)}")
        self.send_header("Content-Length", str(stop - start))
        self.end_headers()
        self.wfile.write(body[start:stop])


@pytest.mark.parametrize("no_head", [False, True])
def test_a_server_refusing_suffix_ranges_has_shard_indexes_found_from_the_size(tmp_path, no_head):
    """A 416 to `bytes=-N` was taken for an empty object: a healthy shard read cold raised
    CorruptDataError ("shard index is 0 bytes"; found by a differential run). Now the size comes
    from a HEAD, and the host's shard indexes are read by plain ranges from then on; a server
    with no HEAD either is a StoreError saying so."""
    data = np.arange(64 * 64, dtype="u2").reshape(64, 64)
    zarr.create_array(str(tmp_path / "a.zarr"), shape=data.shape, chunks=(16, 16), shards=(32, 32),
                      dtype="u2")[...] = data
    handler = type("Handler", (_NoSuffixRanges,), {"no_head": no_head})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(tmp_path)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        arr = gpuzarr.open(f"http://127.0.0.1:{server.server_address[1]}/a.zarr", device="cpu")
        if no_head:  # (a window of one chunk of a shard: its index is read alone, by its last bytes)
            with pytest.raises(gpuzarr.StoreError, match=r"refused a suffix range \(HTTP 416\).*HTTP 501"):
                arr[:8, :8]
        else:
            assert np.array_equal(arr[:8, :8], data[:8, :8])
            assert arr.store.fs.suffix_ranges is False
            assert np.array_equal(arr[40:, 8:], data[40:, 8:])
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("text, again", [
    ("Generic S3 error: Error performing GET http://h/b/k in 41ms - Server returned non-2xx status code: "
     "503 Service Unavailable: <Error/>", True),
    ("Generic S3 error: Error performing GET http://h/b/k in 4ms - Server returned non-2xx status code: "
     "429 Too Many Requests", True),
    ("Generic S3 error: Error performing GET http://h/b/k in 4ms - Server returned non-2xx status code: "
     "403 Forbidden", False),
    ("Generic S3 error: Error performing GET http://h/b/k in 808us - HTTP error: error sending request", True),
    ("Generic S3 error: HTTP error: request or response body error", True),
    # the store's kind and the object's URL say nothing of the failure
    ("Generic HTTP error: Error performing GET http://h/connection/k in 1ms - invalid range", False),
])
def test_retryable_failures_are_told_by_status_or_transport_failure(text, again):
    from gpuzarr.obstore_retries import retryable

    assert retryable(obstore.exceptions.GenericError(text)) is again
    assert not retryable(obstore.exceptions.NotFoundError(text))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the platform has no fork()")
def test_a_forked_childs_http_reads_are_retried_as_obstores_would_be(bucket):
    """fsspec's HTTP filesystem, which reads for obstore in a forked child, retries nothing
    itself: gpuzarr retries its failed GETs with the client's policy, counted in the report; an
    answer no attempt can cure is not retried."""
    pytest.importorskip("aiohttp", reason="a forked child reads HTTP through fsspec's HTTPFileSystem")
    want = _reference(bucket, "chunked.zarr")[...]

    def read_all():
        report = gpuzarr.ReadReport()
        return np.array_equal(arr.read(report=report), want), report.retries, arr.store.fallback is not None

    def refused():
        with pytest.raises(gpuzarr.StoreError, match=r"c/0/0: read failed .*403") as caught:
            arr[:1, :1]
        return str(caught.value)

    with _files_over_http(bucket) as base, _proxy(base) as proxy:
        arr = gpuzarr.open(f"{proxy.url}/chunked.zarr", device="cpu")
        assert np.array_equal(arr[:4, :4], want[:4, :4])  # obstore's runtime runs in the parent
        # (a reset is not among them: aiohttp itself sends a GET again whose reused connection
        # was closed, uncounted)
        proxy.faults = ["503", "429", "cut"]
        assert in_forked_child(read_all, TIMEOUT) == (True, 3, True)
        assert [fault for fault, _ in proxy.met] == ["503", "429", "cut"]
        proxy.faults = ["403"]
        assert "attempts" not in in_forked_child(refused, TIMEOUT)
        assert len(proxy.met) == 4


def test_failed_items_are_read_again_together_within_the_policy_and_the_deadline():
    """retry_failed (a forked child's HTTP reads): only failures a new attempt may cure are read
    again, all of a round in one call, at most max_retries times and none past the deadline."""
    import aiohttp

    from gpuzarr.obstore_retries import RetryPolicy, aiohttp_retryable, retry_failed

    def response(status: int) -> aiohttp.ClientResponseError:
        return aiohttp.ClientResponseError(None, (), status=status)

    assert [aiohttp_retryable(e) for e in (response(503), response(429), response(408), response(403),
                                           response(404), aiohttp.ClientPayloadError("cut"),
                                           aiohttp.ServerDisconnectedError(), TimeoutError(), ValueError())] == \
        [True, True, True, False, False, True, True, True, False]
    fails = {0: 2, 1: 99, 2: 0, 3: 1}  # item → failures before it succeeds (3: not retryable)
    calls, rounds = [], []

    def read(items):
        calls.append(items)
        out = []
        for i in items:
            left = fails[i]
            fails[i] = left - 1
            out.append((response(403) if i == 3 else response(503)) if left > 0 else f"bytes {i}")
        return out

    policy = RetryPolicy(max_retries=3, init_backoff=0.001, max_backoff=0.001)
    results, attempts = retry_failed(policy, read, 4, aiohttp_retryable, rounds.append)
    assert results[0] == "bytes 0" and results[2] == "bytes 2" and isinstance(results[1], aiohttp.ClientResponseError)
    assert isinstance(results[3], aiohttp.ClientResponseError) and results[3].status == 403
    assert calls == [[0, 1, 2, 3], [0, 1], [0, 1], [1]] and rounds == [2, 2, 1] and attempts == [3, 4, 1, 1]
    fails.update({0: 5})
    start = time.monotonic()
    _, attempts = retry_failed(RetryPolicy(init_backoff=0.2, max_backoff=0.2), read, 1, aiohttp_retryable,
                               lambda k: None, deadline=time.monotonic() + 0.5)
    assert 2 <= attempts[0] <= 3 and time.monotonic() - start < 0.7  # no wait ends past the deadline (+ slack)


def test_an_http_url_is_percent_decoded_as_zarr_python_and_tensorstore_read_it(tmp_path):
    """The URL names its path percent-encoded; obstore encodes the object paths it is given, so
    gpuzarr asked for "my%2520data.zarr" (not found) and read "x%20y.zarr" literally where
    zarr-python and tensorstore read "x y.zarr" (found by a differential run)."""
    for value, name in enumerate(["my data.zarr", "x y.zarr", "x%20y.zarr", "ü.zarr"], 1):
        zarr.create_array(str(tmp_path / name), shape=(4,), chunks=(2,), dtype="i2")[...] = value
    with _files_over_http(tmp_path) as base:  # (the server decodes the request's path)
        for path, value in [("my%20data.zarr", 1), ("x%20y.zarr", 2), ("x%2520y.zarr", 3), ("%C3%BC.zarr", 4),
                            ("ü.zarr", 4)]:
            arr = gpuzarr.open(f"{base}/{path}", device="cpu")
            assert isinstance(arr.store, ObstoreStore)
            got = arr[...]
            assert got.tolist() == [value] * 4, path
            if path.isascii():
                assert np.array_equal(got, zarr.open_array(f"{base}/{path}", mode="r")[...])


def test_http_listings_through_fsspec_are_retried(bucket):
    """An HTTP host's listings go through fsspec's HTTPFileSystem, which retries nothing: a
    directory page answered 503 failed the listing (StoreError); it is asked for again."""
    pytest.importorskip("aiohttp", reason="HTTP listings go through fsspec's HTTPFileSystem (aiohttp)")

    with _files_over_http(bucket) as base, _proxy(base, where="group_plain.zarr") as proxy:
        group = gpuzarr.open(f"{proxy.url}/group_plain.zarr", device="cpu")
        proxy.faults = ["503", "503"]  # the listing's first two answers
        assert group.keys() == ["a", "sub"]
        assert [fault for fault, _ in proxy.met] == ["503", "503"]
        assert all(path.rstrip("/").endswith("group_plain.zarr") for _, path in proxy.met)
