"""The user-facing Array: metadata properties plus reads through the batched pipeline."""

from __future__ import annotations

import math
import operator
from typing import Any

import numpy as np

from .devices.base import Device, get_device
from .indexing import Query, parse, parse_batch
from .metadata import ArrayMetadata
from .pipeline import Reader, Settings
from .plan import Boxes, window_starts
from .report import ReadReport
from .store import Store


class Array:
    def __init__(self, meta: ArrayMetadata, store: Store, device: str | Device = "auto",
                 settings: Settings = Settings()):
        self.meta = meta
        self.store = store
        self._settings = settings
        self._device_spec = device
        self._resolved: Device | None = get_device(device, settings.threads)  # a bad name fails here
        self._reader = Reader(meta, store, settings)

    def __reduce__(self) -> tuple:
        """To its metadata, store (a path, or an fsspec filesystem with its options), device and
        settings: the receiving process (a spawned or forkserver worker) reads nothing to reopen
        it, keeps its own shard-index cache and threads, and picks its device at its first read."""
        return _unpickle, (self.meta, self.store, self._device_spec, self._settings)

    @property
    def _device(self) -> Device:
        if self._resolved is None:
            self._resolved = get_device(self._device_spec, self._settings.threads)
        return self._resolved

    def _device_for(self, device: str | Device | None) -> Device:
        """The device a read asked for, else the array's."""
        return self._device if device is None else get_device(device, self._settings.threads)

    def __repr__(self) -> str:
        return (f"<gpuzarr.Array {self.store.url!r} shape={self.shape} dtype={self.dtype} "
                f"chunks={self.chunks} shards={self.shards} device={self.device!r}>")

    # ------------------------------------------------------------------ metadata
    @property
    def shape(self) -> tuple[int, ...]:
        return self.meta.shape

    @property
    def ndim(self) -> int:
        return len(self.meta.shape)

    @property
    def dtype(self) -> np.dtype:
        return self.meta.data_type.dtype

    @property
    def chunks(self) -> tuple[int, ...]:
        """The read unit: the inner chunk shape when sharded."""
        sharding = self.meta.chain.sharding  # as zarr-python: only a chain that is sharding alone
        return sharding.chunk_shape if sharding is not None else self.meta.chunk_shape

    @property
    def shards(self) -> tuple[int, ...] | None:
        return self.meta.chunk_shape if self.meta.chain.sharding is not None else None

    @property
    def fill_value(self) -> Any:
        if self.meta.zarr_format == 2 and self.meta.raw.get("fill_value") is None:
            return None  # as zarr-python reports it; missing chunks still read as the type's default
        return self.meta.fill_value

    @property
    def attrs(self) -> dict:
        return self.meta.attributes

    @property
    def dimension_names(self) -> tuple | None:
        return self.meta.dimension_names

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def zarr_format(self) -> int:
        return self.meta.zarr_format

    @property
    def device(self) -> str:
        return self._device.name

    # ------------------------------------------------------------------ reads
    def __getitem__(self, selection: Any) -> Any:
        return self.read(selection)

    def __len__(self) -> int:
        if not self.shape:
            raise TypeError("len() of a 0-d array")
        return self.shape[0]

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        """np.asarray(arr): the whole array in one batched read on the CPU (a new array: never a copy)."""
        data = self.read(device=get_device("cpu", self._settings.threads))
        return data if dtype is None else data.astype(dtype, copy=False)

    @property
    def oindex(self) -> _Indexer:
        """arr.oindex[...]: orthogonal selection, each axis on its own (integer arrays, boolean
        masks, slices, integers), as zarr-python's oindex and np.ix_."""
        return _Indexer(self, "oindex")

    @property
    def vindex(self) -> _Indexer:
        """arr.vindex[...]: pointwise selection, the integer arrays (or a mask) broadcast together
        as in NumPy's advanced indexing; slices may stand beside them (patches around points)."""
        return _Indexer(self, "vindex")

    def read(self, selection: Any = Ellipsis, device: str | Device | None = None, out: Any = None,
             report: ReadReport | None = None) -> Any:
        """Read `selection` into a new or given array, as `arr[selection]` (see `indexing`).
        Pass a `gpuzarr.ReadReport` to learn where the work and the time went."""
        return self._query(parse(selection, self.shape), device, out, report)

    def _query(self, query: Query, device: str | Device | None, out: Any, report: ReadReport | None) -> Any:
        dev = self._device_for(device)
        if out is None or query.plain:
            result = self._reader.read(query.windows, query.batched, dev, out, report)
            return query.result(result, dev.xp)
        dev.check_output(out, query.shape, self.dtype)  # reshaped or moved axes: read, then copy in
        out[...] = query.result(self._reader.read(query.windows, query.batched, dev, None, report), dev.xp)
        return out

    def read_batch(self, selections: list, device: str | Device | None = None, out: Any = None,
                   report: ReadReport | None = None) -> Any:
        """Read many same-shaped windows in one pipeline pass; returns them stacked on axis 0.
        Chunks shared between windows are fetched and decoded once. `selections` is a list of
        windows: a lone window (a tuple, a slice) would otherwise be read as one window per axis."""
        if isinstance(selections, (tuple, slice)) or not hasattr(selections, "__iter__"):
            raise TypeError(f"read_batch takes a list of windows, not a {type(selections).__name__}: for one "
                            f"window pass [window], e.g. [(slice(0, 4), slice(0, 4))]")
        dev = self._device_for(device)
        return self._reader.read(parse_batch(selections, self.shape), True, dev, out, report)

    def read_windows(self, starts: Any, shape: Any, device: str | Device | None = None, out: Any = None,
                     report: ReadReport | None = None) -> Any:
        """read_batch for windows given as an (n, ndim) integer array of their first elements and
        one window `shape`: no Python object per window (a loader's millions of patches)."""
        dev = self._device_for(device)
        shape = tuple(operator.index(s) for s in shape)
        if len(shape) != self.ndim:
            raise ValueError(f"read_windows needs a {self.ndim}-d window shape, got {shape}")
        starts = window_starts(starts, self.ndim, "read_windows")
        room = np.asarray(self.shape, dtype=np.int64) - np.asarray(shape, dtype=np.int64)
        bad = np.flatnonzero(((starts < 0) | (starts > room)).any(axis=1)) if starts.size else ()
        if any(n < 0 for n in shape) or len(bad):
            where = f"window {int(bad[0])} starting at {tuple(starts[bad[0]].tolist())}" if len(bad) else "it"
            raise IndexError(f"windows of shape {shape} must lie inside the array of shape {self.shape}: {where} does not")
        boxes = Boxes(starts, shape, (False,) * self.ndim)
        return self._reader.read(boxes, True, dev, out, report)


class _Indexer:
    """The object behind `arr.oindex[...]` and `arr.vindex[...]`."""

    def __init__(self, array: Array, mode: str):
        self._array, self._mode = array, mode

    def __getitem__(self, selection: Any) -> Any:
        return self._array._query(parse(selection, self._array.shape, self._mode), None, None, None)


def _unpickle(meta: ArrayMetadata, store: Store, device: str | Device, settings: Settings) -> Array:
    arr = Array.__new__(Array)
    arr.meta, arr.store, arr._settings, arr._device_spec, arr._resolved = meta, store, settings, device, None
    arr._reader = Reader(meta, store, settings)
    return arr
