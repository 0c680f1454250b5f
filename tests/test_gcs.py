"""gs:// through obstore, against a local Google Cloud Storage emulator (gcp-storage-emulator,
answering the XML API's GET /bucket/object that obstore's GCS client sends): arrays written by
zarr-python read bit for bit (missing shards and chunk objects as the fill value), a rewritten
shard read fresh (its generation changed), a missing array a GpuzarrError. The emulator's
download lacks three things real GCS does (documented in GCS's XML API reference), added here
before its handler runs: Last-Modified, ETag and x-goog-generation response headers (obstore
refuses a response without Last-Modified) and suffix ranges (`bytes=-N`, which it would answer
with the whole object)."""

from __future__ import annotations

import datetime
import email.utils
import http.client
import importlib
import os
import socket
import warnings
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("obstore", reason="obstore is not installed (the [remote] extra)")
emulator = pytest.importorskip("gcp_storage_emulator.server", reason="gcp-storage-emulator is not installed")
zarr = pytest.importorskip("zarr")

import gpuzarr  # noqa: E402
from gpuzarr.store_obstore import FALLBACKS, ObstoreStore  # noqa: E402
from remote_arrays import image, objects, write_arrays  # noqa: E402

BUCKET = "gpuzarrgcs"  # the emulator routes bucket names as sent: obstore percent-encodes "-"


def _as_gcs_answers(real):
    """The emulator's download handler with GCS's headers and suffix ranges (see the module)."""

    def download(request, response, storage, *args, **kwargs):
        try:
            obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
        except Exception:  # not found: the handler answers 404
            return real(request, response, storage, *args, **kwargs)
        when = datetime.datetime.fromisoformat(obj["updated"].replace("Z", "+00:00"))
        response["Last-Modified"] = email.utils.format_datetime(when.astimezone(datetime.timezone.utc), usegmt=True)
        response["ETag"] = f'"{obj["md5Hash"]}"'
        response["x-goog-generation"] = str(obj["generation"])
        wanted = request.get_header("range") or ""
        if wanted.strip().startswith("bytes=-"):
            size = len(storage.get_file(request.params["bucket_name"], request.params["object_id"]))
            tail = int(wanted.split("-", 1)[1])
            request._request_handler.headers.replace_header("Range", f"bytes={max(0, size - tail)}-")
        return real(request, response, storage, *args, **kwargs)

    return download


@pytest.fixture(scope="module")
def endpoint():
    from gcp_storage_emulator.handlers import objects as handlers

    real = handlers.download
    patched = [(methods, method) for _, methods in emulator.HANDLERS for method, h in methods.items() if h is real]
    assert patched, "gcp-storage-emulator's routes changed: its download handler was not found"
    for methods, method in patched:
        methods[method] = _as_gcs_answers(real)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = emulator.create_server("127.0.0.1", port, in_memory=True, default_bucket=BUCKET)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()
        for methods, method in patched:
            methods[method] = real


def _put(endpoint: str, key: str, data: bytes) -> None:
    conn = http.client.HTTPConnection(endpoint.removeprefix("http://"), timeout=10)
    conn.request("PUT", f"/{BUCKET}/{key}", data)
    response = conn.getresponse()
    response.read()
    assert response.status == 200, response.status


def _upload(endpoint: str, local: Path, name: str) -> None:
    for key, data in objects(local, name):
        _put(endpoint, key, data)


@pytest.fixture(scope="module")
def bucket(endpoint, tmp_path_factory):
    """Arrays written by zarr-python, uploaded: the local copies' directory."""
    local = tmp_path_factory.mktemp("gcs")
    write_arrays(local)
    os.remove(local / "chunked.zarr" / "c" / "1" / "1")  # a missing chunk object: the fill value
    for name in ("sharded.zarr", "chunked.zarr", "v2.zarr"):
        _upload(endpoint, local / name, name)
    return local


def _open(endpoint: str, name: str, **settings) -> gpuzarr.Array:
    """The emulator answers one connection at a time (http.server's HTTPServer, a listen backlog
    of 5): more requests at once overflow the backlog, and dropped connections are retried only
    after seconds (one timed out at 30 s under CI's load). Reads keep 4 in flight."""
    return gpuzarr.open(f"gs://{BUCKET}/{name}", storage_options={"token": "anon", "endpoint_url": endpoint},
                        device="cpu", settings=gpuzarr.Settings(requests_in_flight=4, **settings))


@pytest.mark.parametrize("name", ["sharded.zarr", "chunked.zarr", "v2.zarr"])
def test_gs_urls_read_through_obstore_bit_identical_to_zarr_python(endpoint, bucket, name):
    want = zarr.open_array(bucket / name, mode="r")[...]
    ignored = FALLBACKS["ignored_range"]
    for settings in ({}, {"index_cache_bytes": 0}):  # indexes cached, and read every time
        arr = _open(endpoint, name, **settings)
        assert isinstance(arr.store, ObstoreStore) and arr.store.url == f"gs://{BUCKET}/{name}"
        assert np.array_equal(arr[...], want)
        assert np.array_equal(arr[30:290, 40:190], want[30:290, 40:190])  # across chunks, and shards
        windows = [(slice(a, a + 20), slice(b, b + 30)) for a, b in [(0, 0), (120, 50), (250, 160), (270, 170)]]
        assert np.array_equal(arr.read_batch(windows), np.stack([want[w] for w in windows]))
    assert FALLBACKS["ignored_range"] == ignored, "ranged GETs were answered as asked"


def test_a_rewritten_shard_is_read_fresh(endpoint, bucket, tmp_path):
    """The cached index is kept with the object's generation; a shard rewritten since is read
    under its new index, not the old offsets."""
    name = "rewritten.zarr"
    first = zarr.create_array(tmp_path / name, shape=(64, 64), chunks=(16, 16), shards=(64, 64), dtype="u2",
                              compressors=zarr.codecs.ZstdCodec(level=1))
    first[...] = image((64, 64), 3)
    _upload(endpoint, tmp_path / name, name)
    arr = _open(endpoint, name)
    assert np.array_equal(arr[:16, :16], first[:16, :16])  # the index is cached now
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        second = zarr.open_array(tmp_path / name, mode="r+")
        second[:40, :40] = np.arange(1600, dtype="u2").reshape(40, 40)  # chunks change size and place
    _upload(endpoint, tmp_path / name, name)
    assert np.array_equal(arr[...], second[...])


def test_a_missing_array_is_a_gpuzarr_error_naming_it(endpoint, bucket):
    with pytest.raises(gpuzarr.GpuzarrError, match="nothing-here.zarr"):
        _open(endpoint, "nothing-here.zarr")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the platform has no fork()")
def test_a_forked_child_reads_gs_through_gcsfs_and_never_hangs(endpoint, bucket, monkeypatch):
    """obstore hangs in a child forked after it ran: there gs:// reads go through a fresh gcsfs
    filesystem of the same bucket, endpoint and token (store_obstore.fsspec_options). gcsfs's
    JSON API filesystem, not the one it picks by default (GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT:
    it first asks the bucket's type over gRPC and TLS, which the emulator does not speak, and
    retries for minutes)."""
    gcsfs_core = pytest.importorskip("gcsfs.core", reason="a forked child reads gs:// through gcsfs (the [gcs] extra)")
    import multiprocessing as mp

    from gpuzarr import store_obstore

    registry = importlib.import_module("fsspec.registry")  # the module: fsspec.registry is its mapping
    monkeypatch.setitem(registry._registry, "gs", gcsfs_core.GCSFileSystem)

    arr = _open(endpoint, "sharded.zarr")
    want = zarr.open_array(bucket / "sharded.zarr", mode="r")[...]
    assert np.array_equal(arr[:4, :4], want[:4, :4])  # obstore's runtime runs in the parent
    ctx = mp.get_context("fork")
    parent_end, child_end = ctx.Pipe(duplex=False)

    def run():
        try:
            fresh = _open(endpoint, "v2.zarr")  # opened in the child: through gcsfs too
            child_end.send(("ok", (np.array_equal(arr[...], want), arr.store.fallback is not None,
                                   np.array_equal(fresh[...], zarr.open_array(bucket / "v2.zarr", mode="r")[...]),
                                   store_obstore.FALLBACKS["fork"] > 0)))
        except BaseException as exc:
            child_end.send(("error", repr(exc)))

    proc = ctx.Process(target=run)
    proc.start()
    try:
        if not parent_end.poll(60):
            pytest.fail("the forked child hung for 60 s")
        status, value = parent_end.recv()
    finally:
        proc.join(5)
        if proc.is_alive():
            proc.kill()
            proc.join()
    assert status == "ok", value
    assert value == (True, True, True, True)
