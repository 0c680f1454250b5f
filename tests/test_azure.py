"""az:// through obstore, against Azurite (Microsoft's Azure Storage emulator, an npm package:
`npm install azurite`; .ci/run installs it under .ci/node where npm is present): arrays written by
zarr-python read bit for bit (missing shards and chunk objects as the fill value), a rewritten
shard read fresh (its ETag changed), a missing array a GpuzarrError (remote_arrays'
ObjectStoreContract), and a child forked after obstore ran reads through adlfs. Skipped, saying why, where Azurite or the Azure SDK is absent."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

pytest.importorskip("obstore", reason="obstore is not installed (the [remote] extra)")
blob = pytest.importorskip("azure.storage.blob", reason="the Azure SDK is not installed (adlfs, in the [test] extra)")
zarr = pytest.importorskip("zarr")

import gpuzarr  # noqa: E402
from remote_arrays import ObjectStoreContract, objects, served  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONTAINER = "gpuzarr"
ACCOUNT = "devstoreaccount1"  # Azurite's account and its published key
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def _azurite() -> str | None:
    return shutil.which("azurite-blob") or shutil.which("azurite-blob", path=str(ROOT / ".ci/node/node_modules/.bin"))


@pytest.fixture(scope="module")
def endpoint():
    """Azurite's blob service on a free port, in memory; the account's URL."""
    program = _azurite()
    if program is None:
        pytest.skip("Azurite is not installed (npm install azurite; .ci/run puts it under .ci/node)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([program, "--inMemoryPersistence", "--blobHost", "127.0.0.1", "--blobPort", str(port),
                             "--skipApiVersionCheck", "--silent"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"Azurite did not start (exit status {proc.poll()})")
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}/{ACCOUNT}"
    finally:
        proc.terminate()
        proc.wait(10)


def _container(endpoint: str):
    service = blob.BlobServiceClient.from_connection_string(
        f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};BlobEndpoint={endpoint};")
    return service.get_container_client(CONTAINER)


def _upload(endpoint: str, local: Path, name: str) -> None:
    container = _container(endpoint)
    for key, data in objects(local, name):
        container.upload_blob(key, data, overwrite=True)


@pytest.fixture(scope="module")
def bucket(endpoint, tmp_path_factory):
    """Arrays written by zarr-python, uploaded: the local copies' directory."""
    _container(endpoint).create_container()
    return served(tmp_path_factory.mktemp("azure"), lambda local, name: _upload(endpoint, local, name))


def _open(endpoint: str, name: str, **settings) -> gpuzarr.Array:
    """adlfs's option names, and obstore's `endpoint` (an http:// one allows plain HTTP)."""
    return gpuzarr.open(f"az://{CONTAINER}/{name}",
                        storage_options={"account_name": ACCOUNT, "account_key": KEY, "endpoint": endpoint},
                        device="cpu", settings=gpuzarr.Settings(**settings))


class TestAzure(ObjectStoreContract):
    root = f"az://{CONTAINER}"
    fsspec_backend = "adlfs"  # given obstore's endpoint and key as a connection string

    def open(self, endpoint, name, **settings):
        return _open(endpoint, name, **settings)

    def upload(self, endpoint, local, name):
        _upload(endpoint, local, name)
