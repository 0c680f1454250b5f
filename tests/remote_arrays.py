"""The arrays the object-storage tests serve (tests/test_obstore.py over S3, tests/test_gcs.py
over GCS): written by zarr-python into a local directory, then uploaded."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np


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
