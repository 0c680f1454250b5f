"""Zarr v3 (`zarr.json`) and v2 (`.zarray`, `.zgroup`, `.zattrs`) metadata, parsed once into
immutable objects. Everything unsupported is refused here, at open time."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .codecs.chain import CodecChain, build_chain_v2, build_chain_v3, check_fill
from .dtypes import DataType, _name_and_config, parse_data_type_v3, parse_dtype_v2, parse_fill_value
from .errors import MetadataError, UnsupportedFeatureError

Shape = tuple[int, ...]
_DIGITS = re.compile(r"[0-9]+")
_V3_ARRAY_KEYS = {"zarr_format", "node_type", "shape", "data_type", "chunk_grid", "chunk_key_encoding",
                  "fill_value", "codecs", "attributes", "dimension_names", "storage_transformers"}
_V3_GROUP_KEYS = {"zarr_format", "node_type", "attributes", "consolidated_metadata"}
MAX_EXTENT = 2**62  # the largest dimension (as tensorstore's): sums of indices stay inside int64
MAX_INT64 = 2**63 - 1  # chunk numbers and a chunk's bytes are int64 in reads


@dataclass(frozen=True)
class KeyEncoding:
    """Maps grid coordinates to store keys: `default` (c/1/2) or `v2` (1.2)."""

    kind: str  # "default" | "v2"
    separator: str

    def key(self, coords: tuple[int, ...]) -> str:
        if self.kind == "default":
            return self.separator.join(("c", *map(str, coords)))
        return self.separator.join(map(str, coords)) if coords else "0"

    def coords(self, key: str, ndim: int) -> tuple[int, ...] | None:
        """The grid coordinates of the chunk `key` names in an array of `ndim` dimensions (the
        inverse of key), None for a name no chunk has."""
        if ndim == 0:
            return () if key == self.key(()) else None
        parts = key.split(self.separator)
        if self.kind == "default":
            if parts[0] != "c":
                return None
            parts = parts[1:]
        if len(parts) != ndim or not all(_DIGITS.fullmatch(p) for p in parts):
            return None
        coords = tuple(map(int, parts))
        return coords if self.key(coords) == key else None  # "01" is no chunk's name


@dataclass(frozen=True)
class ArrayMetadata:
    zarr_format: int
    shape: Shape
    chunk_shape: Shape  # the grid's chunk shape (the shard shape when sharded)
    data_type: DataType
    fill_value: Any
    chain: CodecChain
    key_encoding: KeyEncoding
    attributes: dict = field(default_factory=dict)
    dimension_names: tuple | None = None
    order: str = "C"
    raw: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def grid_shape(self) -> Shape:
        return tuple(math.ceil(s / c) for s, c in zip(self.shape, self.chunk_shape))


@dataclass(frozen=True)
class GroupMetadata:
    zarr_format: int
    attributes: dict = field(default_factory=dict)
    consolidated: dict | None = None  # relative path -> raw metadata document(s) of each member


def node_path_problem(path: str) -> str | None:
    """Why `path` cannot name a node below a hierarchy's root, or None when it can. The Zarr v3
    spec's node names are not empty and not made of periods only ('.', '..'); a path joins them
    with '/'. A '\\' separates too (zarr-python reads it as '/', and so does a Windows
    filesystem), so no spelling of '..' leads out of the store root."""
    if path.startswith(("/", "\\")):
        return "an absolute path"
    for segment in re.split(r"[/\\]", path):
        if not segment:
            return "an empty path segment"
        if not segment.strip("."):
            return f"a {segment!r} path segment"
    return None


def check_consolidated(consolidated: dict, where: str) -> dict:
    """Consolidated metadata's keys are paths below the group; the group's members are opened at
    them, so a key that could lead out of the store root is refused when the group is opened."""
    for key in consolidated:
        problem = node_path_problem(key)
        if problem:
            raise MetadataError(f"{where}: consolidated metadata key {key!r} is not a path below the group "
                                f"({problem})")
    return consolidated


def load_json(raw: bytes | memoryview, where: str) -> dict:
    try:
        doc = json.loads(raw if isinstance(raw, (bytes, bytearray)) else bytes(raw))
    except (ValueError, UnicodeDecodeError) as exc:
        raise MetadataError(f"{where}: not valid JSON ({exc})") from None
    except RecursionError:  # json recurses once per nesting level
        raise MetadataError(f"{where}: JSON nested too deeply") from None
    if not isinstance(doc, dict):
        raise MetadataError(f"{where}: expected a JSON object, got {type(doc).__name__}")
    return doc


def _int_list(value: Any, name: str, where: str, minimum: int) -> Shape:
    if not isinstance(value, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= minimum for v in value
    ):
        raise MetadataError(f"{where}: {name!r} must be a list of integers ≥ {minimum}, got {value!r}")
    return tuple(value)


def _check_sizes(shape: Shape, chunk_shape: Shape, dtype: np.dtype, where: str) -> None:
    """Sizes gpuzarr can index with 64-bit integers: every dimension, the number of chunks in
    the grid, and a chunk's bytes (NumPy's own limit). Refused at open, before any read does
    arithmetic on them."""
    for name, dims in (("shape", shape), ("chunk shape", chunk_shape)):
        if any(n > MAX_EXTENT for n in dims):
            raise UnsupportedFeatureError(f"{where}: {name} {list(dims)} has a dimension above 2**62, the "
                                          f"largest gpuzarr indexes")
    n_chunks = math.prod(-(-s // c) for s, c in zip(shape, chunk_shape))
    if n_chunks > MAX_INT64:
        raise UnsupportedFeatureError(f"{where}: the grid has {n_chunks} chunks, more than 64-bit chunk numbers count")
    nbytes = math.prod(chunk_shape) * dtype.itemsize
    if nbytes > MAX_INT64:
        raise UnsupportedFeatureError(f"{where}: a chunk of {list(chunk_shape)} {dtype} items is {nbytes} bytes, more "
                                      f"than 64-bit sizes hold")


def _require(doc: dict, key: str, where: str) -> Any:
    if key not in doc:
        raise MetadataError(f"{where}: required field {key!r} is missing")
    return doc[key]


def _check_extensions(doc: dict, known: set, where: str) -> None:
    for key, value in doc.items():
        if key in known:
            continue
        if isinstance(value, dict) and value.get("must_understand") is False:
            continue
        raise MetadataError(f"{where}: unknown field {key!r} (not marked must_understand: false)")


def parse_v3(doc: dict, where: str) -> ArrayMetadata | GroupMetadata:
    if doc.get("zarr_format") != 3:
        raise MetadataError(f"{where}: zarr_format must be 3, got {doc.get('zarr_format')!r}")
    node_type = _require(doc, "node_type", where)
    attributes = doc.get("attributes", {})
    if not isinstance(attributes, dict):
        raise MetadataError(f"{where}: 'attributes' must be an object")
    if node_type == "group":
        _check_extensions(doc, _V3_GROUP_KEYS, where)
        cm = doc.get("consolidated_metadata")
        consolidated = None
        if isinstance(cm, dict) and isinstance(cm.get("metadata"), dict):
            members = {k: v for k, v in cm["metadata"].items() if isinstance(v, dict)}
            consolidated = check_consolidated(members, where)
        return GroupMetadata(3, attributes, consolidated)
    if node_type != "array":
        raise MetadataError(f"{where}: node_type must be 'array' or 'group', got {node_type!r}")
    _check_extensions(doc, _V3_ARRAY_KEYS, where)
    shape = _int_list(_require(doc, "shape", where), "shape", where, 0)
    dt = parse_data_type_v3(_require(doc, "data_type", where), where)
    grid_name, grid_config = _name_and_config(_require(doc, "chunk_grid", where), where)
    if grid_name != "regular":
        raise UnsupportedFeatureError(f"{where}: chunk grid {grid_name!r} is not supported (only 'regular')")
    chunk_shape = _int_list(grid_config.get("chunk_shape"), "chunk_shape", where, 1)
    if len(chunk_shape) != len(shape):
        raise MetadataError(f"{where}: chunk_shape {list(chunk_shape)} has a different rank from shape {list(shape)}")
    _check_sizes(shape, chunk_shape, dt.dtype, where)
    key_name, key_config = _name_and_config(_require(doc, "chunk_key_encoding", where), where)
    if key_name not in ("default", "v2"):
        raise UnsupportedFeatureError(f"{where}: chunk key encoding {key_name!r} is not supported")
    separator = key_config.get("separator", "/" if key_name == "default" else ".")
    if separator not in ("/", "."):
        raise MetadataError(f"{where}: chunk key separator {separator!r} must be '/' or '.'")
    transformers = doc.get("storage_transformers", [])
    if not isinstance(transformers, list):
        raise MetadataError(f"{where}: storage_transformers must be a list, got {transformers!r}")
    if transformers:
        raise UnsupportedFeatureError(f"{where}: storage transformers are not supported: {transformers!r}")
    names = doc.get("dimension_names")
    if names is not None:
        if (not isinstance(names, list) or len(names) != len(shape)
                or not all(n is None or isinstance(n, str) for n in names)):
            raise MetadataError(f"{where}: dimension_names must list a string or null per dimension")
        names = tuple(names)
    fill = parse_fill_value(_require(doc, "fill_value", where), dt, where, 3)
    chain = build_chain_v3(_require(doc, "codecs", where), chunk_shape, dt, where)
    check_fill(chain, fill, where)
    return ArrayMetadata(3, shape, chunk_shape, dt, fill, chain, KeyEncoding(key_name, separator),
                         attributes, names, "C", doc)


def parse_v2_array(doc: dict, attrs: dict, where: str) -> ArrayMetadata:
    if doc.get("zarr_format") != 2:
        raise MetadataError(f"{where}: zarr_format must be 2, got {doc.get('zarr_format')!r}")
    shape = _int_list(_require(doc, "shape", where), "shape", where, 0)
    chunks = _int_list(_require(doc, "chunks", where), "chunks", where, 1)
    if len(chunks) != len(shape):
        raise MetadataError(f"{where}: chunks {list(chunks)} has a different rank from shape {list(shape)}")
    dt = parse_dtype_v2(_require(doc, "dtype", where), where)
    _check_sizes(shape, chunks, dt.dtype, where)
    order = doc.get("order", "C")
    if order not in ("C", "F"):
        raise MetadataError(f"{where}: order must be 'C' or 'F', got {order!r}")
    separator = doc.get("dimension_separator", ".")
    if separator not in ("/", "."):
        raise MetadataError(f"{where}: dimension_separator {separator!r} must be '/' or '.'")
    filters = doc.get("filters")
    if filters is not None and not isinstance(filters, list):
        raise MetadataError(f"{where}: filters must be a list or null")
    if dt.vlen is not None and filters and isinstance(filters[0], dict) and filters[0].get("id") == "vlen-bytes":
        dt = DataType(dt.name, np.dtype(object), "bytes")
    fill = parse_fill_value(doc.get("fill_value"), dt, where, 2)
    chain = build_chain_v2(doc.get("compressor"), filters, chunks, dt, order, where)
    return ArrayMetadata(2, shape, chunks, dt, fill, chain, KeyEncoding("v2", separator), attrs, None, order, doc)
