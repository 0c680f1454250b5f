"""A small writer of sharded zstd Zarr v3 arrays, so `gpuzarr demo` needs nothing but gpuzarr.
It writes what zarr-python writes for the same settings (bytes little + zstd inside
sharding_indexed, index bytes + crc32c at the end)."""

from __future__ import annotations

import itertools
import json
import math
import os
from collections.abc import Callable

import crc32c
import numcodecs
import numpy as np


def sample_data(shape: tuple[int, ...], dtype: str = "uint16", seed: int = 0) -> np.ndarray:
    """Smooth structure plus noise: compresses like real images, unlike zeros or white noise."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*(np.linspace(0, 6 * math.pi, n, dtype=np.float32) for n in shape), indexing="ij")
    smooth = sum(np.sin(g * (1 + i / 3)) for i, g in enumerate(grids)) / max(1, len(shape))
    info = np.iinfo(dtype)
    span = min(info.max, 4095)
    values = (smooth + 1) / 2 * span * 0.9 + rng.integers(0, 16, shape)
    return values.astype(dtype)


def write_sharded(path: str, data: np.ndarray, shard: tuple[int, ...], chunk: tuple[int, ...],
                  level: int = 3, fill_value: int = 0,
                  progress: Callable[[int, int], None] | None = None) -> None:
    """Write `data` as a Zarr v3 array with sharding_indexed + zstd, index at the end."""
    if any(s % c for s, c in zip(shard, chunk)):
        raise ValueError("shard shape must be a multiple of the chunk shape")
    os.makedirs(path, exist_ok=True)
    codec = numcodecs.Zstd(level=level)
    dtype = data.dtype.newbyteorder("<")
    cps = tuple(s // c for s, c in zip(shard, chunk))
    grid = tuple(math.ceil(n / s) for n, s in zip(data.shape, shard))
    shards = list(itertools.product(*(range(g) for g in grid)))
    for done, scoords in enumerate(shards):
        parts, index, offset = [], np.full((math.prod(cps), 2), 2**64 - 1, dtype="<u8"), 0
        for flat, icoords in enumerate(itertools.product(*(range(c) for c in cps))):
            lo = [s * sh + i * c for s, sh, i, c in zip(scoords, shard, icoords, chunk)]
            if any(a >= n for a, n in zip(lo, data.shape)):
                continue  # wholly outside the array: left empty
            block = np.full(chunk, fill_value, dtype=dtype)
            src = data[tuple(slice(a, a + c) for a, c in zip(lo, chunk))]
            block[tuple(slice(0, n) for n in src.shape)] = src
            frame = codec.encode(block.tobytes())
            parts.append(frame)
            index[flat] = (offset, len(frame))
            offset += len(frame)
        raw_index = index.tobytes()
        raw_index += crc32c.crc32c(raw_index).to_bytes(4, "little")
        key = os.path.join(path, "c", *map(str, scoords))
        os.makedirs(os.path.dirname(key), exist_ok=True)
        with open(key, "wb") as f:
            f.write(b"".join(parts) + raw_index)
        if progress:
            progress(done + 1, len(shards))
    meta = {
        "zarr_format": 3, "node_type": "array", "shape": list(data.shape), "data_type": str(dtype.name),
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(shard)}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": fill_value,
        "codecs": [{"name": "sharding_indexed", "configuration": {
            "chunk_shape": list(chunk),
            "codecs": [{"name": "bytes", "configuration": {"endian": "little"}},
                       {"name": "zstd", "configuration": {"level": level, "checksum": False}}],
            "index_codecs": [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "crc32c"}],
            "index_location": "end"}}],
        "attributes": {"written_by": "gpuzarr.sample"},
    }
    with open(os.path.join(path, "zarr.json"), "w") as f:
        json.dump(meta, f, indent=2)
