"""gs:// through obstore, against a local Google Cloud Storage emulator (gcp-storage-emulator,
answering the XML API's GET /bucket/object that obstore's GCS client sends): arrays written by
zarr-python read bit for bit (missing shards and chunk objects as the fill value), a rewritten
shard read fresh (its generation changed), a missing array a GpuzarrError (remote_arrays'
ObjectStoreContract), and a forked child reading through gcsfs. The emulator's
download lacks three things real GCS does (documented in GCS's XML API reference), added here
before its handler runs: Last-Modified, ETag and x-goog-generation response headers (obstore
refuses a response without Last-Modified) and suffix ranges (`bytes=-N`, which it would answer
with the whole object)."""

from __future__ import annotations

import datetime
import email.utils
import http.client
import importlib
import socket
from pathlib import Path

import pytest

pytest.importorskip("obstore", reason="obstore is not installed (the [remote] extra)")
emulator = pytest.importorskip("gcp_storage_emulator.server", reason="gcp-storage-emulator is not installed")
zarr = pytest.importorskip("zarr")

import gpuzarr  # noqa: E402
from remote_arrays import ObjectStoreContract, objects, served  # noqa: E402

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
    return served(tmp_path_factory.mktemp("gcs"), lambda local, name: _upload(endpoint, local, name))


def _open(endpoint: str, name: str, **settings) -> gpuzarr.Array:
    """The emulator answers one connection at a time (http.server's HTTPServer, a listen backlog
    of 5): more requests at once overflow the backlog, and dropped connections are retried only
    after seconds (one timed out at 30 s under CI's load). Reads keep 4 in flight."""
    return gpuzarr.open(f"gs://{BUCKET}/{name}", storage_options={"token": "anon", "endpoint_url": endpoint},
                        device="cpu", settings=gpuzarr.Settings(requests_in_flight=4, **settings))


class TestGcs(ObjectStoreContract):
    root = f"gs://{BUCKET}"
    fsspec_backend = "gcsfs.core"

    def before_fork(self, monkeypatch):
        """gcsfs's JSON API filesystem, not the one it picks by default
        (GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT), which first asks the bucket's type over gRPC and
        TLS, which the emulator does not speak, and retries for minutes."""
        registry = importlib.import_module("fsspec.registry")  # the module: fsspec.registry is its mapping
        monkeypatch.setitem(registry._registry, "gs", importlib.import_module("gcsfs.core").GCSFileSystem)

    def open(self, endpoint, name, **settings):
        return _open(endpoint, name, **settings)

    def upload(self, endpoint, local, name):
        _upload(endpoint, local, name)
