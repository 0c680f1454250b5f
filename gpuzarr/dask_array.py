"""`gpuzarr.to_dask`: a dask array whose blocks are batched gpuzarr reads, on any scheduler."""

from __future__ import annotations

from typing import Any

import dask.array as da
import numpy as np
from dask.array.core import getter, graph_from_arraylike, normalize_chunks
from dask.base import tokenize

from .api import open as open_path
from .array import Array
from .devices.base import Device
from .group import Group

Chunks = tuple[tuple[int, ...], ...]


def to_dask(array_or_url: Any, chunks: Any = None, *, device: str | Device | None = None,
            storage_options: dict | None = None) -> da.Array:
    """A lazy dask array over a gpuzarr `Array` (or the array `gpuzarr.open` finds at a path,
    URL or fsspec mapper); each block is one batched `read`, and a slice of the dask array that
    lies in one block (`x[5, 10:40]`) is one read of just that slice.

    `chunks=None` makes blocks of whole shards (whole chunks when unsharded), as many as fit
    dask's `array.chunk-size`, so no shard is decoded by two tasks. Any other `chunks` dask
    takes is used as given: a block boundary inside a shard makes both blocks fetch and decode
    that shard. `device=None` reads on the array's device ("auto" picks per worker, at its first
    read); "cpu" gives NumPy blocks, "gpu" CuPy blocks (built where a GPU is usable: the dask
    array's meta is a CuPy array). The graph holds the array once, as its metadata, store,
    device and settings (a `memory://` store cannot reach worker processes)."""
    arr = _array(array_or_url, device, storage_options)
    dtype = arr.dtype
    if arr.device == "gpu":
        import cupy

        from .devices.gpu import gpu_dtype

        dtype = gpu_dtype(dtype)  # GPU blocks are native-endian; a CPU-only dtype fails here
        meta = cupy.empty((0,) * arr.ndim, dtype=dtype)
    else:
        meta = np.empty((0,) * arr.ndim, dtype=dtype)
    unit = arr.shards or arr.chunks
    if chunks is None:
        chunks = _shard_aligned(arr.shape, unit, dtype)
    else:
        chunks = normalize_chunks(chunks, arr.shape, dtype=dtype, previous_chunks=unit)
    fs = arr.store.fs  # by its class and arguments: fsspec's own token holds the process id
    name = "gpuzarr-" + tokenize(type(fs), fs.storage_args, fs.storage_options, arr.store.url, arr.meta.raw,
                                 arr.device, device, chunks)
    # dask's own getter: dask fuses a slice of a block into the block's read
    graph = graph_from_arraylike(arr, chunks, arr.shape, name, getitem=getter, dtype=dtype)
    return da.Array(graph, name, chunks, meta=meta, dtype=dtype)


def _array(array_or_url: Any, device: str | Device | None, storage_options: dict | None) -> Array:
    """The array whose device is the blocks' (a bad device name or an unusable GPU fails here)."""
    if isinstance(array_or_url, (Array, Group)):
        if storage_options is not None:
            raise ValueError("storage_options open a URL; this gpuzarr node's store is already open")
        node = array_or_url
    else:  # opened on the device it will read on: device="cpu" never initialises CUDA here
        node = open_path(array_or_url, device="auto" if device is None else device, storage_options=storage_options)
    if isinstance(node, Group):
        raise TypeError(f"{node.store.url} is a Zarr group, not an array: pass the path of one of its arrays "
                        f"(gpuzarr.open(url).keys() lists its members)")
    if node is array_or_url and device is not None:
        return Array(node.meta, node.store, device, node._settings)
    return node


def _shard_aligned(shape: tuple[int, ...], unit: tuple[int, ...], dtype: np.dtype) -> Chunks:
    """dask's "auto" blocks near `array.chunk-size`, rounded down to whole shards per axis (at
    least one: a shard bigger than the target is still read whole). dask cannot size object
    items, so those get one shard per block."""
    if dtype.hasobject:
        return normalize_chunks(unit, shape)
    auto = normalize_chunks("auto", shape, dtype=dtype, previous_chunks=unit)
    sizes = tuple(c[0] if len(c) == 1 else max(1, c[0] // u) * u for c, u in zip(auto, unit))
    return normalize_chunks(sizes, shape)
