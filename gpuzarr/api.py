"""`gpuzarr.open`: find the node at a path (v3 zarr.json, else v2 .zarray/.zgroup) and build it."""

from __future__ import annotations

import warnings
from typing import Any


def _import_numcodecs() -> None:
    """numcodecs >= 0.16.4 warns, when imported where the `crc32c` package (a gpuzarr dependency)
    is installed and google_crc32c is not, that its own use of crc32c is deprecated: advice for
    numcodecs' users that gpuzarr's users would see on every run. Its own 'once' filter outranks
    any filter set before the import, so the import's warnings are caught and all others re-issued."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import numcodecs  # noqa: F401
    for w in caught:
        if not (issubclass(w.category, DeprecationWarning) and str(w.message).startswith(_CRC32C_ADVICE)):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)


_CRC32C_ADVICE = "crc32c usage is deprecated"
_import_numcodecs()  # `import gpuzarr` runs this module first: before anything else imports numcodecs

from .array import Array  # noqa: E402
from .errors import GpuzarrError  # noqa: E402
from .group import Group  # noqa: E402
from .metadata import GroupMetadata, check_consolidated, load_json, parse_v2_array, parse_v3  # noqa: E402
from .pipeline import Settings  # noqa: E402
from .store import Store, open_store  # noqa: E402

_V2_FILES = (".zarray", ".zgroup", ".zattrs", ".zmetadata")


class NodeNotFoundError(GpuzarrError, FileNotFoundError):
    """No zarr.json, .zarray or .zgroup at the path."""


def open(store: Any, path: str | None = None, *, device: Any = "auto",
         storage_options: dict | None = None, settings: Settings | None = None) -> Array | Group:
    """Open the array or group at `store` (a path, URL, fsspec mapper or filesystem) / `path`.
    `path` is a node path below the store's root (for a filesystem: the root inside it); one with
    a '..', '.' or empty segment raises ValueError, so no path leads out of the root.
    `settings` bounds batches (compressed and decoded bytes, chunks) and the shard index cache,
    and times out object storage requests."""
    timeout = None if settings is None else settings.request_timeout_seconds
    return open_node(open_store(store, path, storage_options, timeout), device, settings=settings)


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
            members = {k: v for k, v in zmeta["metadata"].items() if isinstance(v, dict)}
            consolidated = check_consolidated(members, store.path(".zmetadata"))
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
