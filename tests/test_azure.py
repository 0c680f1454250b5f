"""az:// through obstore, against Azurite (Microsoft's Azure Storage emulator, an npm package:
`npm install azurite`; .ci/run installs it under .ci/node where npm is present): arrays written by
zarr-python read bit for bit (missing shards and chunk objects as the fill value), a rewritten
shard read fresh (its ETag changed), a missing array a GpuzarrError, and a child forked after
obstore ran reads through adlfs. Skipped, saying why, where Azurite or the Azure SDK is absent."""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import socket
import subprocess
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("obstore", reason="obstore is not installed (the [remote] extra)")
blob = pytest.importorskip("azure.storage.blob", reason="the Azure SDK is not installed (adlfs, in the [test] extra)")
zarr = pytest.importorskip("zarr")

import gpuzarr  # noqa: E402
from gpuzarr import store_obstore  # noqa: E402
from gpuzarr.store_obstore import FALLBACKS, ObstoreStore  # noqa: E402
from remote_arrays import image, objects, write_arrays  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONTAINER = "gpuzarr"
ACCOUNT = "devstoreaccount1"  # Azurite's account and its published key
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
TIMEOUT = 60  # seconds a forked child may take before the test fails (a hang)


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
    local = tmp_path_factory.mktemp("azure")
    write_arrays(local)
    os.remove(local / "chunked.zarr" / "c" / "1" / "1")  # a missing chunk object: the fill value
    for name in ("sharded.zarr", "chunked.zarr", "v2.zarr"):
        _upload(endpoint, local / name, name)
    return local


def _open(endpoint: str, name: str, **settings) -> gpuzarr.Array:
    """adlfs's option names, and obstore's `endpoint` (an http:// one allows plain HTTP)."""
    return gpuzarr.open(f"az://{CONTAINER}/{name}",
                        storage_options={"account_name": ACCOUNT, "account_key": KEY, "endpoint": endpoint},
                        device="cpu", settings=gpuzarr.Settings(**settings))


@pytest.mark.parametrize("name", ["sharded.zarr", "chunked.zarr", "v2.zarr"])
def test_az_urls_read_through_obstore_bit_identical_to_zarr_python(endpoint, bucket, name):
    want = zarr.open_array(bucket / name, mode="r")[...]
    ignored = FALLBACKS["ignored_range"]
    for settings in ({}, {"index_cache_bytes": 0}):  # indexes cached, and read every time
        arr = _open(endpoint, name, **settings)
        assert isinstance(arr.store, ObstoreStore) and arr.store.url == f"az://{CONTAINER}/{name}"
        assert np.array_equal(arr[...], want)
        assert np.array_equal(arr[30:290, 40:190], want[30:290, 40:190])  # across chunks, and shards
        windows = [(slice(a, a + 20), slice(b, b + 30)) for a, b in [(0, 0), (120, 50), (250, 160), (270, 170)]]
        assert np.array_equal(arr.read_batch(windows), np.stack([want[w] for w in windows]))
    assert FALLBACKS["ignored_range"] == ignored, "ranged GETs were answered as asked"


def test_a_rewritten_shard_is_read_fresh(endpoint, bucket, tmp_path):
    """The cached index is kept with the blob's ETag; a shard rewritten since is read under its
    new index, not the old offsets."""
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
def test_a_forked_child_reads_az_through_adlfs_and_never_hangs(endpoint, bucket):
    """obstore hangs in a child forked after it ran: there az:// reads go through a fresh adlfs
    filesystem of the same account, key and endpoint (a connection string: see
    store_obstore.fsspec_options)."""
    pytest.importorskip("adlfs", reason="a forked child reads az:// through adlfs (the [azure] extra)")
    arr = _open(endpoint, "sharded.zarr")
    want = zarr.open_array(bucket / "sharded.zarr", mode="r")[...]
    assert np.array_equal(arr[:4, :4], want[:4, :4])  # obstore's runtime runs in the parent
    ctx = mp.get_context("fork")
    parent_end, child_end = ctx.Pipe(duplex=False)

    def run():
        try:
            fresh = _open(endpoint, "v2.zarr")  # opened in the child: through adlfs too
            child_end.send(("ok", (np.array_equal(arr[...], want), arr.store.fallback is not None,
                                   np.array_equal(fresh[...], zarr.open_array(bucket / "v2.zarr", mode="r")[...]),
                                   store_obstore.FALLBACKS["fork"] > 0)))
        except BaseException as exc:
            child_end.send(("error", repr(exc)))

    proc = ctx.Process(target=run)
    proc.start()
    try:
        if not parent_end.poll(TIMEOUT):
            pytest.fail(f"the forked child hung for {TIMEOUT} s")
        status, value = parent_end.recv()
    finally:
        proc.join(5)
        if proc.is_alive():
            proc.kill()
            proc.join()
    assert status == "ok", value
    assert value == (True, True, True, True)
