"""xarray backend `engine="gpuzarr"`: the datasets `engine="zarr"` opens, read through gpuzarr's
batched pipeline. Dimension names, attributes, fill values and encodings are derived from the Zarr
metadata as xarray's zarr backend derives them (xarray/backends/zarr.py, `ZarrStore`), and CF
decoding is xarray's own, so both engines return identical datasets.

Only this module imports xarray; `gpuzarr` itself never does."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import replace
from functools import partial
from typing import Any

import numpy as np
from xarray import Dataset, Variable
from xarray.backends import BackendArray, BackendEntrypoint
from xarray.backends.common import AbstractDataStore
from xarray.backends.store import StoreBackendEntrypoint
from xarray.backends.zarr import FillValueCoder
from xarray.coding.variables import _apply_mask, _scale_offset_decoding
from xarray.core import indexing

from . import api
from .array import Array
from .devices.base import Device, get_device
from .errors import MetadataError, SettingsError
from .group import Group

_DIMENSION_KEY = "_ARRAY_DIMENSIONS"  # where Zarr v2 arrays written by xarray name their dimensions


class GpuzarrBackendArray(BackendArray):
    """A lazily indexed gpuzarr Array: each xarray key becomes one batched read (basic, `oindex`
    or `vindex`); nothing is read before xarray asks for values."""

    __slots__ = ("_array", "dtype", "shape")

    def __init__(self, array: Array):
        self._array = array
        self.shape = array.shape
        self.dtype = array.dtype

    def __getitem__(self, key: indexing.ExplicitIndexer) -> Any:
        if isinstance(key, indexing.VectorizedIndexer):
            method = self._vindex
        elif isinstance(key, indexing.OuterIndexer):
            method = self._array.oindex.__getitem__
        else:
            method = self._array.__getitem__
        return indexing.explicit_indexing_adapter(key, self.shape, indexing.IndexingSupport.VECTORIZED, method)

    def _vindex(self, key: tuple) -> Any:
        """xarray's vectorized indexing puts the broadcast axes first even where NumPy's (and
        gpuzarr's) leaves adjacent index arrays in place behind leading slices."""
        result = self._array.vindex[key]
        arrays = [i for i, k in enumerate(key) if not isinstance(k, slice)]
        first = arrays[0] if arrays else 0
        if first == 0 or arrays != list(range(first, first + len(arrays))):
            return result
        ndim = len(np.broadcast_shapes(*(key[i].shape for i in arrays)))
        return result.transpose([*range(first, first + ndim), *range(first), *range(first + ndim, result.ndim)])


class GpuzarrStore(AbstractDataStore):
    """A Zarr group's arrays as xarray variables, as `xarray.backends.zarr.ZarrStore` reads them."""

    __slots__ = ("group", "_fill_value_is_mask")

    def __init__(self, group: Group, fill_value_is_mask: bool | None = None):
        self.group = group
        # xarray's default `use_zarr_fill_value_as_mask`: v2 data written before _FillValue
        # attributes existed relies on the zarr fill_value; v3 keeps it in the encoding instead
        self._fill_value_is_mask = group.zarr_format == 2 if fill_value_is_mask is None else fill_value_is_mask

    @classmethod
    def open(cls, store: Any, group: str | None = None, consolidated: bool | None = None,
             storage_options: dict | None = None, zarr_format: int | None = None,
             fill_value_is_mask: bool | None = None) -> GpuzarrStore:
        """The group at `group` below the store's root, found as zarr-python finds it: through the
        root's consolidated metadata (required with `consolidated=True`, ignored with False); of
        `zarr_format` where one is given."""
        if zarr_format not in (None, 2, 3):
            raise SettingsError(f"zarr_format must be 2, 3 or None, not {zarr_format!r}")
        node = api.open(store, storage_options=storage_options, device="cpu")
        if not isinstance(node, Group):
            raise api.NodeNotFoundError(f"{node.store.url}: an array, not a group: xarray opens groups")
        if zarr_format is not None and node.zarr_format != zarr_format:
            raise api.NodeNotFoundError(f"{node.store.url}: a Zarr v{node.zarr_format} group, not the v{zarr_format} "
                                        f"one asked for (zarr_format={zarr_format})")
        if consolidated is False:
            node.meta = replace(node.meta, consolidated=None)
        elif consolidated and node.meta.consolidated is None:
            raise MetadataError(f"{node.store.url}: consolidated=True, but the group has no consolidated metadata")
        path = (group or "").strip("/")
        if path:
            try:
                node = node[path]
            except KeyError:
                raise api.NodeNotFoundError(f"{node.store.path(path)}: no Zarr group {path!r} here") from None
            if not isinstance(node, Group):
                raise api.NodeNotFoundError(f"{node.store.url}: an array, not a group: xarray opens groups")
            if consolidated is False:
                node.meta = replace(node.meta, consolidated=None)
        return cls(node, fill_value_is_mask)

    def get_variables(self) -> dict[str, Variable]:
        return {name: self._variable(node) for name, node in self.group.members() if isinstance(node, Array)}

    def get_attrs(self) -> dict:
        return {k: v for k, v in self.group.attrs.items() if not k.lower().startswith("_nc")}

    def _variable(self, array: Array) -> Variable:
        """As `ZarrStore.open_store_variable`; the encoding leaves out zarr-python's codec objects
        (`compressors`, `filters`, `serializer`), which gpuzarr does not build."""
        dims, attrs = _dims_and_attrs(array)
        data = GpuzarrBackendArray(array)
        encoding: dict[str, Any] = {"chunks": array.chunks, "preferred_chunks": dict(zip(dims, array.chunks)),
                                    "shards": array.shards}
        if data.dtype.kind == "T":
            encoding["dtype"] = data.dtype
        if self._fill_value_is_mask:
            if array.fill_value is not None:
                attrs["_FillValue"] = array.fill_value
        else:
            if self.group.zarr_format == 3:  # zarr_format 2 writes it from _FillValue (xarray issue 10269)
                encoding["fill_value"] = array.fill_value
            if "_FillValue" in attrs:
                attrs["_FillValue"] = FillValueCoder.decode(attrs["_FillValue"], array.dtype)
        return Variable(dims, indexing.LazilyIndexedArray(data), attrs, encoding)


def _dims_and_attrs(array: Array) -> tuple[tuple, dict]:
    """v3 names dimensions in its metadata, v2 (as xarray writes it) in a hidden attribute."""
    where = array.store.url
    if array.zarr_format == 3:
        dims = array.dimension_names or ()
        if len(dims) != array.ndim:
            raise MetadataError(f"{where}: no dimension_names, which xarray needs to name the dimensions")
        return tuple(dims), dict(array.attrs)
    if _DIMENSION_KEY not in array.attrs:
        raise MetadataError(f"{where}: no {_DIMENSION_KEY!r} attribute, which xarray needs to name the "
                            f"dimensions (NCZarr's dimension references are not read)")
    attrs = {k: v for k, v in array.attrs.items() if k != _DIMENSION_KEY and not k.lower().startswith("_nc")}
    return tuple(array.attrs[_DIMENSION_KEY]), attrs


def _mask(data: Any, encoded_fill_values: set, decoded_fill_value: Any, dtype: Any) -> Any:
    """xarray's `_apply_mask` without its `np.array` call, which CuPy arrays refuse."""
    data = data.astype(dtype, copy=True)
    if encoded_fill_values:
        condition = False
        for fv in encoded_fill_values:
            condition |= data == fv
        data[condition] = decoded_fill_value
    return data


def _to_device(variable: Variable, device: Device) -> None:
    """Read `variable` on `device` when every step of its decoding works on device arrays: the
    raw array, masking (with `_mask`) and scaling; times, strings and the rest stay NumPy."""
    data, masks = variable._data, []
    while not isinstance(data, GpuzarrBackendArray):
        step = getattr(getattr(data, "func", None), "func", None)
        if isinstance(data, indexing.LazilyIndexedArray) or step is _scale_offset_decoding:
            data = data.array
        elif step is _apply_mask:
            masks.append(data)
            data = data.array
        else:
            return
    if data.dtype.kind not in "biufc":
        return
    for node in masks:
        node.func = partial(_mask, **node.func.keywords)
    data._array = Array(data._array.meta, data._array.store, device)


class GpuzarrBackendEntrypoint(BackendEntrypoint):
    """`xr.open_dataset(store, engine="gpuzarr", device="cpu" | "gpu" | "auto")`.

    The default device is "cpu": xarray's decoding (times, masks, strings), its indexes and most of
    its operations expect NumPy. With "gpu" (or "auto" where a GPU is usable), data variables whose
    decoding is elementwise arithmetic (none, `scale_factor`/`add_offset`, `_FillValue` masking)
    are read into CuPy arrays; coordinates and variables decoded as times or strings stay NumPy.
    Use it without `chunks=`: dask would see CuPy blocks behind NumPy metadata."""

    description = "Open Zarr v2/v3 stores with gpuzarr's batched reader (CPU threads or nvCOMP on the GPU)"
    open_dataset_parameters = ("filename_or_obj", "mask_and_scale", "decode_times", "concat_characters",
                               "decode_coords", "drop_variables", "use_cftime", "decode_timedelta", "group",
                               "consolidated", "device", "storage_options", "zarr_format",
                               "use_zarr_fill_value_as_mask", "cache_members")

    def guess_can_open(self, filename_or_obj: Any) -> bool:
        """Never: a store engine="zarr" opens stays its; gpuzarr is chosen by name."""
        return False

    def open_dataset(self, filename_or_obj: str | os.PathLike | Any, *, mask_and_scale: bool = True,
                     decode_times: bool = True, concat_characters: bool = True, decode_coords: bool = True,
                     drop_variables: str | Iterable[str] | None = None, use_cftime: bool | None = None,
                     decode_timedelta: bool | None = None, group: str | None = None,
                     consolidated: bool | None = None, device: str | Device = "cpu",
                     storage_options: dict | None = None, zarr_format: int | None = None,
                     use_zarr_fill_value_as_mask: bool | None = None, cache_members: bool = True) -> Dataset:
        """engine="zarr"'s arguments, and `device`. `use_zarr_fill_value_as_mask` as xarray
        documents it (its zarr engine ignores it in open_dataset: xarray 2026.9); `cache_members`
        is taken for engine="zarr"'s signature: the group's members are listed once per open."""
        device = get_device(device)  # device="gpu" without a usable GPU fails here, at open
        store = GpuzarrStore.open(filename_or_obj, group, consolidated, storage_options, zarr_format,
                                  use_zarr_fill_value_as_mask)
        ds = StoreBackendEntrypoint().open_dataset(
            store, mask_and_scale=mask_and_scale, decode_times=decode_times, concat_characters=concat_characters,
            decode_coords=decode_coords, drop_variables=drop_variables, use_cftime=use_cftime,
            decode_timedelta=decode_timedelta)
        if device.name != "cpu":
            for name in ds.data_vars:
                _to_device(ds.variables[name], device)
        return ds
