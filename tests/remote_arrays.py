"""The arrays the object-storage tests serve (tests/test_obstore.py over S3, tests/test_gcs.py
over GCS, tests/test_azure.py over Azure): written by zarr-python into a local directory, then
uploaded; and the checks those tests share."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest


def objects(local: Path, name: str) -> Iterator[tuple[str, bytes]]:
    """(object key, bytes) of every file of the directory `local`, uploaded as `name`."""
    for root, _, files in os.walk(local):
        for file in files:
            path = Path(root, file)
            yield f"{name}/{path.relative_to(local).as_posix()}", path.read_bytes()


def image(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    """A smooth ramp plus noise: compresses, and no two chunks are alike."""
    rng = np.random.default_rng(seed)
    data = (np.add.outer(np.arange(shape[0]), np.arange(shape[1])) % 4096).astype("u2")
    data += rng.integers(0, 64, size=shape, dtype="u2")
    return data


def write_arrays(local: Path) -> None:
    """sharded.zarr (zstd, a shard and chunks of fill not written), chunked.zarr (one object per
    chunk, fill value 7) and v2.zarr (blosc-lz4 + shuffle, int32) under `local`."""
    import numcodecs
    import zarr

    data = image((512, 512))
    data[256:, 256:] = 0  # a whole shard, and chunks, of fill: not written
    sharded = zarr.create_array(local / "sharded.zarr", shape=data.shape, chunks=(64, 64), shards=(256, 256),
                                dtype="u2", compressors=zarr.codecs.ZstdCodec(level=3), fill_value=0)
    sharded[...] = data
    chunked = zarr.create_array(local / "chunked.zarr", shape=(512, 512), chunks=(64, 64), dtype="u2",
                                compressors=zarr.codecs.ZstdCodec(level=1), fill_value=7)
    chunked[...] = image((512, 512), 1)
    v2 = zarr.create_array(local / "v2.zarr", shape=(300, 200), chunks=(64, 64), dtype="i4", zarr_format=2,
                           compressors=numcodecs.Blosc("lz4", 5, numcodecs.Blosc.SHUFFLE), fill_value=-1)
    v2[...] = image((300, 200), 2).astype("i4") - 2000


def served(local: Path, upload: Callable[[Path, str], None]) -> Path:
    """write_arrays' arrays under `local`, a chunk object of chunked.zarr removed (the fill
    value), each uploaded by `upload(its directory, its name)`: `local`."""
    write_arrays(local)
    os.remove(local / "chunked.zarr" / "c" / "1" / "1")
    for name in ("sharded.zarr", "chunked.zarr", "v2.zarr"):
        upload(local / name, name)
    return local


class ObjectStoreContract:
    """What every object store's tests check (a Test class of their module, whose `endpoint`
    and `bucket` fixtures serve the arrays of write_arrays): arrays read bit for bit, a rewritten
    shard read fresh, a missing array named. Subclasses say how to open and to upload."""

    root = ""  # the URL the arrays lie under, e.g. gs://bucket

    def open(self, endpoint: str, name: str, **settings: Any) -> Any:
        raise NotImplementedError

    def upload(self, endpoint: str, local: Path, name: str) -> None:
        raise NotImplementedError

    @pytest.mark.parametrize("name", ["sharded.zarr", "chunked.zarr", "v2.zarr"])
    def test_reads_are_bit_identical_to_zarr_python(self, endpoint: str, bucket: Path, name: str) -> None:
        """Whole, a window across chunks and shards, and read_batch, with the index cache on and
        off, through obstore; no ranged GET answered whole."""
        import zarr

        from gpuzarr.store_obstore import FALLBACKS, ObstoreStore

        want = zarr.open_array(bucket / name, mode="r")[...]
        ignored = FALLBACKS["ignored_range"]
        for settings in ({}, {"index_cache_bytes": 0}):  # indexes cached, and read every time
            arr = self.open(endpoint, name, **settings)
            assert isinstance(arr.store, ObstoreStore) and arr.store.url == f"{self.root}/{name}"
            assert np.array_equal(arr[...], want)
            assert np.array_equal(arr[30:290, 40:190], want[30:290, 40:190])  # across chunks, and shards
            windows = [(slice(a, a + 20), slice(b, b + 30)) for a, b in [(0, 0), (120, 50), (250, 160), (270, 170)]]
            assert np.array_equal(arr.read_batch(windows), np.stack([want[w] for w in windows]))
        assert FALLBACKS["ignored_range"] == ignored, "ranged GETs were answered as asked"

    def test_a_rewritten_shard_is_read_fresh(self, endpoint: str, bucket: Path, tmp_path: Path) -> None:
        """The cached index is kept with the object's version (ETag, GCS's generation); a shard
        rewritten since is read under its new index, not the old offsets."""
        import zarr

        name = "rewritten.zarr"
        first = zarr.create_array(tmp_path / name, shape=(64, 64), chunks=(16, 16), shards=(64, 64), dtype="u2",
                                  compressors=zarr.codecs.ZstdCodec(level=1))
        first[...] = image((64, 64), 3)
        self.upload(endpoint, tmp_path / name, name)
        arr = self.open(endpoint, name)
        assert np.array_equal(arr[:16, :16], first[:16, :16])  # the index is cached now
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            second = zarr.open_array(tmp_path / name, mode="r+")
            second[:40, :40] = np.arange(1600, dtype="u2").reshape(40, 40)  # chunks change size and place
        self.upload(endpoint, tmp_path / name, name)
        assert np.array_equal(arr[...], second[...])

    def test_a_missing_array_is_a_gpuzarr_error_naming_it(self, endpoint: str, bucket: Path) -> None:
        import gpuzarr

        with pytest.raises(gpuzarr.GpuzarrError, match="nothing-here.zarr"):
            self.open(endpoint, "nothing-here.zarr")

    fsspec_backend = ""  # the fsspec filesystem's module a forked child reads through

    def before_fork(self, monkeypatch: Any) -> None:
        """What the forked child's fsspec filesystem needs to reach this test's server."""

    @pytest.mark.skipif(not hasattr(os, "fork"), reason="the platform has no fork()")
    def test_a_forked_child_reads_through_fsspec_and_never_hangs(self, endpoint: str, bucket: Path,
                                                                  monkeypatch: Any) -> None:
        """obstore hangs in a child forked after it ran: there reads go through a fresh fsspec
        filesystem of the same URL and options (store_obstore.fsspec_options), for arrays opened
        in the parent and in the child alike."""
        import zarr

        from gpuzarr import store_obstore

        pytest.importorskip(self.fsspec_backend, reason=f"a forked child reads {self.root} through "
                                                        f"{self.fsspec_backend}")
        self.before_fork(monkeypatch)
        arr = self.open(endpoint, "sharded.zarr")
        want = zarr.open_array(bucket / "sharded.zarr", mode="r")[...]
        assert np.array_equal(arr[:4, :4], want[:4, :4])  # obstore's runtime runs in the parent

        def child() -> tuple:
            fresh = self.open(endpoint, "v2.zarr")  # opened in the child: through fsspec too
            return (np.array_equal(arr[...], want), arr.store.fallback is not None,
                    np.array_equal(fresh[...], zarr.open_array(bucket / "v2.zarr", mode="r")[...]),
                    store_obstore.FALLBACKS["fork"] > 0)

        assert in_forked_child(child, 60) == (True, True, True, True)


def in_forked_child(child: Callable[[], Any], timeout: float) -> Any:
    """child()'s result, computed in a forked process; the test fails if it raised, or hung for
    `timeout` seconds (it is then killed)."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    parent_end, child_end = ctx.Pipe(duplex=False)

    def run() -> None:
        try:
            child_end.send(("ok", child()))
        except BaseException as exc:
            child_end.send(("error", repr(exc)))

    proc = ctx.Process(target=run)
    proc.start()
    try:
        if not parent_end.poll(timeout):
            pytest.fail(f"the forked child hung for {timeout} s")
        status, value = parent_end.recv()
    finally:
        proc.join(5)
        if proc.is_alive():
            proc.kill()
            proc.join()
    assert status == "ok", value
    return value
