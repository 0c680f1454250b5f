"""`gpuzarr.open`: find the node at a path (v3 zarr.json, else v2 .zarray/.zgroup) and build it."""

from __future__ import annotations

from typing import Any

from .array import Array
from .errors import GpuzarrError
from .group import Group
from .metadata import GroupMetadata, load_json, parse_v2_array, parse_v3
from .pipeline import Settings
from .store import Store, open_store

_V2_FILES = (".zarray", ".zgroup", ".zattrs", ".zmetadata")


class NodeNotFoundError(GpuzarrError, FileNotFoundError):
    """No zarr.json, .zarray or .zgroup at the path."""


def open(store: Any, path: str | None = None, *, device: Any = "auto",
         storage_options: dict | None = None, settings: Settings | None = None) -> Array | Group:
    """Open the array or group at `store` (a path, URL, fsspec mapper or filesystem) / `path`.
    `settings` bounds batches (compressed and decoded bytes, chunks) and the shard index cache."""
    return open_node(open_store(store, path, storage_options), device, settings=settings)


def open_node(store: Store, device: Any = "auto", docs: dict | None = None,
              settings: Settings | None = None) -> Array | Group:
    """`docs` holds the node's metadata documents when they come from consolidated metadata."""
    if docs is None:
        docs = _read_docs(store)
    if "zarr.json" in docs:
        where = store.path("zarr.json")
        meta = parse_v3(docs["zarr.json"], where)
        if isinstance(meta, GroupMetadata):
            return Group(meta, store, device, settings)
        return Array(meta, store, device, settings or Settings())
    attrs = docs.get(".zattrs", {})
    if ".zarray" in docs:
        return Array(parse_v2_array(docs[".zarray"], attrs, store.path(".zarray")), store, device,
                     settings or Settings())
    if ".zgroup" in docs:
        zgroup = docs[".zgroup"]
        if zgroup.get("zarr_format") != 2:
            from .errors import MetadataError

            raise MetadataError(f"{store.path('.zgroup')}: zarr_format must be 2")
        consolidated = None
        zmeta = docs.get(".zmetadata")
        if zmeta is not None and isinstance(zmeta.get("metadata"), dict):
            consolidated = {k: v for k, v in zmeta["metadata"].items() if isinstance(v, dict)}
        return Group(GroupMetadata(2, attrs, consolidated), store, device, settings)
    raise NodeNotFoundError(f"{store.url}: no Zarr array or group here (no zarr.json, .zarray or .zgroup)")


def _read_docs(store: Store) -> dict:
    raw = store.get("zarr.json")
    if raw is not None:
        return {"zarr.json": load_json(raw, store.path("zarr.json"))}
    blobs = store.read_ranges([(name, 0, None) for name in _V2_FILES])
    return {name: load_json(b, store.path(name)) for name, b in zip(_V2_FILES, blobs) if b is not None}


def has_node(store: Store, zarr_format: int) -> bool:
    """Whether `store` holds an array or group of this format (groups hold members of their own)."""
    names = ("zarr.json",) if zarr_format == 3 else (".zarray", ".zgroup")
    return any(b is not None for b in store.read_ranges([(n, 0, None) for n in names]))


__all__ = ["open", "open_node", "has_node", "NodeNotFoundError"]
