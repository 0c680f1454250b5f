"""Fuzz target: real Zarr arrays and groups with mutated metadata, shard indexes and codec frames,
opened and read by gpuzarr (device="cpu") in a worker process with a time and memory limit.

A case is one base node of the test corpus (tests/corpus.py) plus 1-3 mutations. Each mutation is
a list of byte-level edits of files below the node, so a case replays exactly:
- JSON metadata (zarr.json, .zarray, .zattrs, .zgroup, .zmetadata): a value replaced by another
  type, a huge/negative/zero number, an unknown codec or data type, deep nesting; a key deleted or
  added; or the text itself broken (truncated, not UTF-8, nested 100 000 deep).
- shard indexes (nested ones too): offsets/sizes past the end, overlapping, into the index,
  2**63 and other huge sizes, the empty marker in one half of a pair, overflowing pairs; the
  checksum recomputed (so the bounds checks are reached) or left wrong.
- chunk frames: bit flips, truncation, extension, and header fields of zstd, gzip, zlib, blosc
  and lz4 frames set to huge declared sizes; trailing checksums recomputed or not; a frame inside
  a shard is re-laid out with a correct index when its length changes.
- files: emptied, deleted, filled with garbage, or replaced by a directory.

Every case is opened, described (`gpuzarr.info`) and read: the whole node (or a bounded window of
a huge one), a window with steps, `read_batch`/`read_windows`, an `oindex` and a `vindex`
selection; groups are walked member by member. The oracle: each call returns an array of the
right shape and dtype, or raises a `GpuzarrError`. Anything else is a finding: another exception
type (MemoryError included: the worker's address space is capped at its start-up size + 1 GiB),
a hang (a case past its time limit; faulthandler's dump says where), a crash, data that differs
from the unmutated node after a mutation that cannot change values (attributes, dimension
names), or data returned where a crc32c checksum covers the change.

On demand (summary on stdout; every finding written to --out for replay):

    python tests/fuzz.py --minutes 60 --seed 7 [--out fuzz-findings] [--jobs 2] [--corpus DIR]
    python tests/fuzz.py --replay fuzz-findings/<finding>     # the case again, in this process

Without --corpus the corpus is written to a temporary directory first (~10 s). Each finding is
printed when found, a progress line every minute, and the summary at the end; the exit status is
1 if there were findings. `--waive PATTERN` (a finding's "kind type file:line (function)", e.g.
"memory MemoryError bytes_to_bytes.py:* (_numcodecs_call)") leaves known findings out;
`--exclude TAG` never draws mutations of a tag ("json:set:shape", "index:size-huge",
"frame:zstd:content-size-huge", ...).
tests/test_fuzz.py runs a fixed-seed, bounded budget of this in the normal test run.
"""

from __future__ import annotations

import argparse
import base64
import fnmatch
import json
import math
import os
import pickle
import random
import re
import select
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import crc32c as _crc32c
import numpy as np

import gpuzarr
from gpuzarr.errors import CorruptDataError

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # tests/ helpers import by name
PACKAGE = os.path.dirname(os.path.abspath(gpuzarr.__file__)) + os.sep  # frames in here locate a finding

META_FILES = ("zarr.json", ".zarray", ".zattrs", ".zgroup", ".zmetadata")
CHECKSUMS = ("crc32c", "crc32", "adler32", "fletcher32", "jenkins_lookup3")
EMPTY = 2**64 - 1
CASE_TIMEOUT = 10.0  # seconds per case before it counts as a hang
MEMORY_HEADROOM = 1 << 30  # bytes of address space a worker may add to its start-up size
FULL_READ_BYTES = 64 << 20  # a larger node is read through a bounded window instead
FULL_READ_ITEMS = 1 << 18  # so is one of more items (each may be a chunk: bookkeeping per chunk)
WINDOW_ITEMS = 1 << 16  # items of the other reads at most
WINDOW_SPAN = 48  # elements per axis of the random windows


# ---------------------------------------------------------------------------------------------
# Edits and mutations: what a case changes, as bytes, so that it replays exactly


@dataclass(frozen=True)
class Edit:
    """One change to a file below the node root: `splice` replaces bytes [start, stop) (stop
    None: to the end) with `data`; `dir` replaces the file by a directory; `delete` removes it."""

    file: str
    op: str
    start: int = 0
    stop: int | None = None
    data: bytes = b""

    def to_json(self) -> dict:
        return {**asdict(self), "data": base64.b64encode(self.data).decode()}

    @classmethod
    def from_json(cls, d: dict) -> Edit:
        return cls(**{**d, "data": base64.b64decode(d["data"])})


@dataclass(frozen=True)
class Mutation:
    """`tag` names the kind of mutation (exclusions match it); `what` says exactly what changed.
    `neutral`: the decoded values cannot change; `must_fail`: a crc32c covers the change, so a
    full read must raise."""

    tag: str
    what: str
    edits: tuple[Edit, ...]
    neutral: bool = False
    must_fail: bool = False

    def to_json(self) -> dict:
        return {**asdict(self), "edits": [e.to_json() for e in self.edits]}

    @classmethod
    def from_json(cls, d: dict) -> Mutation:
        return cls(**{**d, "edits": tuple(Edit.from_json(e) for e in d["edits"])})


def apply_edit(root: Path, edit: Edit) -> None:
    """Apply `edit` below `root`; a file replaced first (hard links: never written in place)."""
    path = root / edit.file
    if edit.op == "splice":
        if not path.is_file():
            return  # an earlier edit of the case removed it
        data = path.read_bytes()
        new = data[:edit.start] + edit.data + (b"" if edit.stop is None else data[edit.stop:])
        path.unlink()
        path.write_bytes(new)
        return
    _remove(path)
    if edit.op == "dir":
        path.mkdir(parents=True)
        (path / "x").write_bytes(b"\0")


def _link(src: str, dst: str) -> None:
    """A hard link (cheap; edits replace files, never write them), a copy across filesystems."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def materialise(base: Path, mutations: list[Mutation], dest: Path, link: bool = True) -> None:
    """A copy of `base` at `dest` (hard links when `link`) with the mutations applied in order."""
    shutil.copytree(base, dest, copy_function=_link if link else shutil.copy2)
    for m in mutations:
        for e in m.edits:
            apply_edit(dest, e)


class Overlay:
    """The files of a base as the mutations drawn so far leave them, held in memory, so each
    mutation is drawn against the state the previous ones made."""

    def __init__(self, root: Path):
        self.root, self.changed = root, {}

    def read(self, rel: str) -> bytes | None:
        if rel in self.changed:
            return self.changed[rel]
        path = self.root / rel
        return path.read_bytes() if path.is_file() else None

    def apply(self, edits: tuple[Edit, ...]) -> None:
        for e in edits:
            if e.op != "splice":
                self.changed[e.file] = None
                continue
            data = self.read(e.file)
            if data is not None:
                self.changed[e.file] = data[:e.start] + e.data + (b"" if e.stop is None else data[e.stop:])


# ---------------------------------------------------------------------------------------------
# Survey: where a base's metadata, shard indexes and chunk frames are


@dataclass(frozen=True)
class IndexSite:
    """A shard index: `raw` at byte `start` of `file`, in a (sub-)shard of `size` bytes at
    `base`; `entries` (n, 2) are relative to the (sub-)shard, as stored."""

    file: str
    start: int
    raw: bytes
    entries: np.ndarray
    base: int
    size: int
    sharding: Any
    shard_shape: tuple
    depth: int
    inside: bool  # the (sub-)shard holds elements of the array: a full read decodes its index

    @property
    def checksummed(self) -> bool:
        return any(c.name in CHECKSUMS for c in self.sharding.index_chain.bytes_to_bytes)


@dataclass(frozen=True)
class FrameSite:
    """A stored chunk: bytes [start, stop) of `file`, decoded by `codecs` (bytes→bytes, innermost
    first); `index`/`entry` locate it in a shard index (None: a whole file)."""

    file: str
    start: int
    stop: int
    codecs: tuple
    index: IndexSite | None = None
    entry: int = -1
    inside: bool = True  # the chunk holds elements of the array: a full read decodes it


@dataclass
class Survey:
    name: str
    root: Path
    kind: str  # "array" | "group"
    files: list[str]
    json_files: list[str]
    indexes: list[IndexSite] = field(default_factory=list)
    frames: list[FrameSite] = field(default_factory=list)


def survey(name: str, root: Path) -> Survey:
    """Take a valid base apart with gpuzarr's own metadata and index parsers."""
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    node = gpuzarr.open(str(root), device="cpu")
    kind = "group" if isinstance(node, gpuzarr.Group) else "array"
    out = Survey(name, root, kind, files, [f for f in files if f.rsplit("/", 1)[-1] in META_FILES])
    nodes = [f.rsplit("/", 1)[0] if "/" in f else "" for f in files if f.rsplit("/", 1)[-1] in ("zarr.json", ".zarray")]
    for prefix in nodes:
        sub = gpuzarr.open(str(root / prefix) if prefix else str(root), device="cpu")
        if isinstance(sub, gpuzarr.Array):
            _survey_array(out, sub, prefix, files)
    return out


def _survey_array(out: Survey, arr: Any, prefix: str, files: list[str]) -> None:
    lead = f"{prefix}/" if prefix else ""
    others = {f.rsplit("/", 1)[0] + "/" for f in files if f.rsplit("/", 1)[-1] in ("zarr.json", ".zarray", ".zgroup")
              and f.startswith(lead) and f.count("/") > lead.count("/")}
    chunks = [f for f in files if f.startswith(lead) and f.rsplit("/", 1)[-1] not in META_FILES
              and not any(f.startswith(o) for o in others)]
    chain = arr.meta.chain
    for rel in chunks:
        data = (out.root / rel).read_bytes()
        if chain.sharding is None:
            out.frames.append(FrameSite(rel, 0, len(data), chain.bytes_to_bytes))
        else:
            coords = [int(c) for c in rel[len(lead):].replace(".", "/").split("/") if c.isdigit()]
            origin = tuple(c * s for c, s in zip(coords, arr.meta.chunk_shape))
            shard = Shard(rel, data, 0, len(data), arr.meta.chunk_shape, origin, tuple(arr.shape))
            _survey_shard(out, shard, chain.sharding, 1)


@dataclass(frozen=True)
class Shard:
    """A (sub-)shard being surveyed: `size` bytes at `base` of `file`, covering elements from
    `origin` of an array of shape `array`."""

    file: str
    data: bytes
    base: int
    size: int
    shape: tuple
    origin: tuple
    array: tuple

    @property
    def inside(self) -> bool:
        return all(o < n for o, n in zip(self.origin, self.array))


def _survey_shard(out: Survey, shard: Shard, sharding: Any, depth: int) -> None:
    n_index = sharding.index_nbytes(shard.shape)
    start = shard.base if sharding.index_location == "start" else shard.base + shard.size - n_index
    raw = shard.data[start:start + n_index]
    entries = sharding.decode_index(raw, shard.shape, shard.file, shard.size)
    site = IndexSite(shard.file, start, raw, entries, shard.base, shard.size, sharding, shard.shape, depth,
                     shard.inside)
    assert encode_index(site, entries) == raw, f"{shard.file}: the harness cannot re-encode this index"
    out.indexes.append(site)
    inner, grid = sharding.inner, sharding.chunks_per_shard(shard.shape)
    for i, (off, nbytes) in enumerate(entries.tolist()):
        if nbytes == EMPTY:
            continue
        at = np.unravel_index(i, grid)
        origin = tuple(o + int(c) * s for o, c, s in zip(shard.origin, at, sharding.chunk_shape))
        sub = Shard(shard.file, shard.data, shard.base + off, nbytes, sharding.chunk_shape, origin, shard.array)
        if inner.sharding is not None:
            _survey_shard(out, sub, inner.sharding, depth + 1)
        else:
            out.frames.append(FrameSite(shard.file, sub.base, sub.base + nbytes, inner.bytes_to_bytes, site, i,
                                        sub.inside))


def encode_index(site: IndexSite, entries: np.ndarray, checksums: bool = True) -> bytes:
    """The index chain run forwards over `entries`; without `checksums` the stored checksum
    bytes are kept (now wrong, if the entries changed)."""
    chain = site.sharding.index_chain
    arr = entries.reshape(*site.sharding.chunks_per_shard(site.shard_shape), 2)
    for codec in chain.array_to_array:
        arr = np.transpose(arr, codec.order)
    body = np.ascontiguousarray(arr).astype(">u8" if chain.array_to_bytes.endian == "big" else "<u8").tobytes()
    if not checksums:
        return body + site.raw[len(body):]
    for codec in chain.bytes_to_bytes:
        body = wrap_checksum(codec, body)
    return body


def wrap_checksum(codec: Any, body: bytes) -> bytes:
    """Encode `body` with a checksum codec (crc32c: 4 bytes LE after it; others: numcodecs')."""
    if codec.name == "crc32c":
        return body + _crc32c.crc32c(body).to_bytes(4, "little")
    import numcodecs

    return bytes(numcodecs.get_codec(dict(codec.config)).encode(np.frombuffer(body, np.uint8)))


def peel_checksum(codec: Any, data: bytes) -> bytes:
    """The bytes a checksum codec protects (the stored checksum is not verified here)."""
    if codec.name == "crc32c":
        return data[:-4]
    return bytes(np.asarray(codec.decode(data)).reshape(-1).view(np.uint8))


# ---------------------------------------------------------------------------------------------
# JSON metadata mutations

_INTS = [0, 1, -1, 2, 3, 7, 255, 256, 2**31 - 1, 2**31, 2**32, 2**53 + 1, 2**62, 2**63 - 1, 2**63, 2**64 - 1,
         2**64, 10**30, -2**31, -2**63, -2**64]
_SCALARS = [None, True, False, 0.5, -0.0, 1e308, math.inf, -math.inf, math.nan, "", "x", "NaN", "Infinity",
            "-Infinity", "0x", "0x7fc00000", "0xZZ", "0x" + "f" * 40, "\x00", "/", ".", "..", "../..", "é" * 3,
            "x" * 5000, "AAAA", "====", "YWJj"]
_CONTAINERS = [[], {}, [0], [1], [0, 0], [-1], [1.5], [2**62], [2**62, 2**62], [2**31, 2**31, 2**31], [[1]],
               ["x"], [None], {"name": "x"}, {"must_understand": False}, {"must_understand": True}]
_DTYPES = [
    "int4", "int2", "bfloat16", "float8_e8m0fnu", "float8_e4m3fn", "float128", "complex256", "r0", "r7", "r24",
    "r" + "9" * 30, "string", "bytes", "variable_length_utf8", "raw_bytes", "<f16", "<c32", "|V0", "|S0", "<U0",
    "|V2147483648", "<U1073741824", "|S9223372036854775807", "O", "|O", "<M8[fortnight]", "<m8[7s]", ">m8", "|b1",
    "<i9", "i4", "x",
    {"name": "raw_bytes", "configuration": {"length_bytes": 2**40}},
    {"name": "fixed_length_utf32", "configuration": {"length_bytes": 2**62}},
    {"name": "null_terminated_bytes", "configuration": {"length_bytes": 0}},
    {"name": "numpy.datetime64", "configuration": {"unit": "fortnight", "scale_factor": 1}},
    {"name": "numpy.datetime64", "configuration": {"unit": "s", "scale_factor": 2**62}},
    {"name": "structured", "configuration": {"fields": [["a", "int32"], ["a", "int32"]]}},
    {"name": "struct", "configuration": {"fields": [{"name": "a", "data_type": "string"}]}},
    {"name": "struct", "configuration": {"fields": [{"name": "a", "data_type": {"name": "struct"}}]}},
    [["a", "<i4"], ["b", "<f8", [2**31]]], [["a", "<i4", [0]]], [["a", "<i4", [2**40, 2**40]]],
    [["a", "<i4"], ["a", "<i4"]], [["", "<i4"]], [[1, "<i4"]], [["a"]],
]
_V3_CODECS = [
    {"name": "zstd"}, {"name": "zstd", "configuration": {"level": "x"}},
    {"name": "gzip", "configuration": {"level": 99}},
    {"name": "crc32c"}, {"name": "bytes"}, {"name": "bytes", "configuration": {"endian": "middle"}},
    {"name": "blosc", "configuration": {"cname": "nope"}},
    {"name": "blosc", "configuration": {"typesize": -1, "blocksize": 2**62}},
    {"name": "transpose", "configuration": {"order": [0, 0]}}, {"name": "transpose", "configuration": {"order": "F"}},
    {"name": "transpose", "configuration": {"order": [2**62]}},
    {"name": "sharding_indexed", "configuration": {"chunk_shape": [1], "codecs": [{"name": "bytes"}]}},
    {"name": "sharding_indexed", "configuration": {"chunk_shape": [0, 0], "codecs": []}},
    {"name": "sharding_indexed", "configuration": {"chunk_shape": [2**62, 2**62], "index_codecs": [{"name": "zstd"}]}},
    {"name": "vlen-utf8"}, {"name": "vlen-bytes"}, {"name": "numcodecs.delta", "configuration": {"dtype": "<i4"}},
    {"name": "numcodecs.astype", "configuration": {"encode_dtype": "float128"}},
    {"name": "numcodecs.astype", "configuration": {"encode_dtype": "<U2"}}, {"name": "numcodecs.packbits"},
    {"name": "numcodecs.fixedscaleoffset", "configuration": {"scale": 0, "offset": "x"}},
    {"name": "numcodecs.pickle"}, {"name": "numcodecs.json2"},
    {"name": "numcodecs.zlib", "configuration": {"level": -5}},
    {"name": "numcodecs.lz4", "configuration": {"acceleration": 2**62}},
    {"name": "numcodecs.shuffle", "configuration": {"elementsize": 0}},
    {"name": "numcodecs.bitround", "configuration": {"keepbits": -1}},
    {"name": "numcodecs.quantize", "configuration": {"digits": 2**62}},
    {"name": "nope"}, "zstd", "crc32c", {"name": "zstd", "must_understand": False},
]
_V2_CODECS = [
    {"id": "zstd", "level": 1}, {"id": "zstd", "level": "x"}, {"id": "blosc", "cname": "nope"},
    {"id": "blosc", "cname": "lz4", "clevel": 99}, {"id": "pickle"}, {"id": "json2"}, {"id": "vlen-utf8"},
    {"id": "vlen-bytes"}, {"id": "vlen-array", "dtype": "<i4"}, {"id": "lz4"}, {"id": "zlib", "level": -5},
    {"id": "gzip", "level": 99}, {"id": "crc32c"}, {"id": "crc32"},
    {"id": "delta", "dtype": "<i4", "astype": "float128"},
    {"id": "astype", "encode_dtype": "<U3", "decode_dtype": "<i4"}, {"id": "packbits"},
    {"id": "categorize", "labels": ["a"], "dtype": "<U1"}, {"id": "shuffle", "elementsize": 0},
    {"id": "fixedscaleoffset", "scale": 0, "offset": 0, "dtype": "<f8", "astype": "<i4"}, {"id": "nope"}, {"id": 5},
]
_FILLS = [None, 0, -1, 1.5, 2**64, -2**63 - 1, "NaN", "Infinity", "0x7fc00000", "0x7ff8000000000000", "0x1", "0xZZ",
          [0, 0], [0, "NaN"], ["x", 1], [1, 2, 3], "", "AAAA", "x", True, {}, {"a": 1}, "NaT", "2020-01-01", [255, 255],
          [256]]
_EXTRA_KEYS = ["zz_unknown", "storage_transformers", "chunk_grid", "zarr_format", "node_type", "must_understand", "id",
               "configuration", "name"]


class _Deep:
    """A placeholder for a JSON value nested `depth` lists deep (json.dumps would recurse)."""

    def __init__(self, depth: int):
        self.depth = depth


def _dumps(doc: Any) -> bytes:
    """JSON text of `doc`, _Deep placeholders written out as nested lists."""
    deep: list[_Deep] = []

    def default(o: Any) -> str:
        deep.append(o)
        return f"\x00DEEP{len(deep) - 1}\x00"

    text = json.dumps(doc, default=default)
    for k, d in enumerate(deep):
        text = text.replace(json.dumps(f"\x00DEEP{k}\x00"), "[" * d.depth + "]" * d.depth)
    return text.encode()


def _json_paths(doc: Any, path: tuple = ()) -> list[tuple]:
    paths = [path]
    if isinstance(doc, dict):
        for k, v in doc.items():
            paths += _json_paths(v, path + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            paths += _json_paths(v, path + (i,))
    return paths


def _get(doc: Any, path: tuple) -> Any:
    for p in path:
        doc = doc[p]
    return doc


def _pool_for(path: tuple) -> list:
    """Replacement values that fit the key being replaced (then any value at all)."""
    keys = [p for p in path if isinstance(p, str)]
    last = keys[-1] if keys else ""
    if last in ("data_type", "dtype") or (len(path) > 1 and path[-2] == "fields"):
        return _DTYPES
    if last in ("codecs", "index_codecs"):
        return _V3_CODECS
    if last in ("compressor", "filters"):
        return _V2_CODECS
    if last == "fill_value":
        return _FILLS
    if last in ("shape", "chunks", "chunk_shape", "order", "level", "clevel", "typesize", "blocksize", "length_bytes"):
        return _INTS + [[0], [2**62], [-1], [2**62, 2**62]]
    if last in ("name", "endian", "index_location", "separator", "dimension_separator", "cname", "shuffle", "id"):
        return ["", "x", "little", "big", "start", "end", "default", "v2", "regular", "rectilinear", "/", ".", "\\",
                "zstd", "blosc", "bytes", "sharding_indexed", "bitshuffle", "noshuffle", "snappy", "C", "F"]
    return []


def _new_value(rng: random.Random, path: tuple, old: Any) -> Any:
    fitting = _pool_for(path)
    roll = rng.random()
    if fitting and roll < 0.45:
        return rng.choice(fitting)
    if roll < 0.65:
        return _tweak(rng, old)
    if roll < 0.7:
        return _Deep(rng.choice([50, 100_000]))
    return rng.choice(_INTS + _SCALARS + _CONTAINERS)


def _tweak(rng: random.Random, old: Any) -> Any:
    """A change that keeps the value's type (or nearly): off by one, scaled, reordered, shortened."""
    if isinstance(old, bool):
        return not old
    if isinstance(old, int):
        return rng.choice([old + 1, old - 1, -old, 0, old * 2**rng.randrange(1, 40), 2**62 - old, str(old), float(old)])
    if isinstance(old, float):
        return rng.choice([-old, old * 1e300, int(old) if math.isfinite(old) else 0, str(old)])
    if isinstance(old, str):
        return rng.choice([old[:-1], old + old, old.upper(), old + "\x00", [old], ""])
    if isinstance(old, list):
        if not old:
            return [rng.choice(_INTS + _SCALARS)]
        return rng.choice([old[:-1], old + old[-1:], old[::-1], [old], dict(enumerate(old)), old[:1] * 40])
    if isinstance(old, dict):
        return rng.choice([list(old.values()), {k: v for k, v in list(old.items())[:-1]}, {**old, "zz_extra": 1}])
    return rng.choice(_INTS)


def _is_neutral(file: str, path: tuple, op: str, value: Any = None) -> bool:
    """Whether a JSON edit cannot change the decoded values: attributes and dimension names, and
    an unknown key marked must_understand: false."""
    if file.endswith(".zattrs") or any(isinstance(p, str) and p.endswith(".zattrs") for p in path):
        return True
    if any(p in ("attributes", "dimension_names") for p in path):
        return True
    return op == "insert" and value == {"must_understand": False} and path == ("zz_unknown",)


def mutate_json(rng: random.Random, sv: Survey, ov: Overlay) -> Mutation | None:
    """Replace, delete or add one value of one metadata document."""
    rel = rng.choice(sv.json_files)
    text = ov.read(rel)
    try:
        doc = json.loads(text) if text is not None else None
    except (ValueError, RecursionError):
        return None
    if doc is None:
        return None
    path = rng.choice(_json_paths(doc))
    op = rng.choice(["set", "set", "set", "delete", "insert"])
    value: Any = None
    if op == "delete" and path:
        parent = _get(doc, path[:-1])
        del parent[path[-1]]
        what = f"{rel}: delete {_show(path)}"
    elif op == "insert" and isinstance(_get(doc, path), (dict, list)):
        target = _get(doc, path)
        value = rng.choice(_pool_for(path) or [{"must_understand": False}, *_INTS[:6], *_CONTAINERS])
        if isinstance(target, dict):
            key = rng.choice(_EXTRA_KEYS)
            target[key] = value
            path = path + (key,)
        else:
            pos = rng.randrange(len(target) + 1)
            target.insert(pos, value)
            path = path + (pos,)
        what = f"{rel}: insert {_show(path)} = {_short(value)}"
    else:
        op = "set"
        value = _new_value(rng, path, _get(doc, path))
        if path:
            _get(doc, path[:-1])[path[-1]] = value
        else:
            doc = value
        what = f"{rel}: set {_show(path)} = {_short(value)}"
    key = next((p for p in reversed(path) if isinstance(p, str)), "")
    tag = f"json:{op}:{key}"
    return Mutation(tag, what, (Edit(rel, "splice", 0, None, _dumps(doc)),), _is_neutral(rel, path, op, value))


def mutate_json_text(rng: random.Random, sv: Survey, ov: Overlay) -> Mutation | None:
    """Break the JSON text itself."""
    rel = rng.choice(sv.json_files)
    text = ov.read(rel)
    if text is None:
        return None
    choices: dict[str, Callable[[], bytes]] = {
        "truncate": lambda: text[:rng.randrange(len(text) + 1)],
        "flip": lambda: _flip(rng, text),
        "not-utf8": lambda: text + b"\xff\xfe",
        "null": lambda: b"null",
        "list": lambda: b"[]",
        "deep": lambda: b"[" * 100_000 + b"]" * 100_000,
        "deep-object": lambda: b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
        "huge-int": lambda: re.sub(rb"\d+", lambda m: b"9" * 5000, text, count=1),
        "huge-float": lambda: re.sub(rb"\d+", lambda m: b"1e999", text, count=1),
        "duplicate-key": lambda: text.replace(b"{", b'{"shape": [2305843009213693952], "chunks": [1], ', 1),
        "bom": lambda: b"\xef\xbb\xbf" + text,
    }
    op = rng.choice(sorted(choices))
    neutral = rel.endswith(".zattrs")
    return Mutation(f"json-text:{op}", f"{rel}: text {op}", (Edit(rel, "splice", 0, None, choices[op]()),), neutral)


def _show(path: tuple) -> str:
    return "".join(f"[{p!r}]" for p in path) or "<document>"


def _short(value: Any) -> str:
    if isinstance(value, _Deep):
        return f"<{value.depth} nested lists>"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _flip(rng: random.Random, data: bytes, bits: int = 1) -> bytes:
    b = bytearray(data)
    for _ in range(bits):
        if b:
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
    return bytes(b)


# ---------------------------------------------------------------------------------------------
# Shard index mutations


def _index_ops(rng: random.Random, site: IndexSite, entries: np.ndarray, i: int) -> str:
    """Change entry `i` (or the table) in place; returns what changed."""
    n = len(entries)
    live = [k for k in range(n) if entries[k, 1] != EMPTY]
    other = rng.choice(live) if live else i
    off, size = int(entries[i, 0]), int(entries[i, 1])
    choices = {
        "offset-past-end": lambda: (0, site.size + rng.choice([0, 1, 4096, 2**40])),
        "size-past-end": lambda: (1, site.size - min(off, site.size) + rng.choice([1, 100])),
        "size-huge": lambda: (1, rng.choice([2**63, 2**63 - 1, 2**64 - 2, 2**40, 2**32, 2**31])),
        "offset-huge": lambda: (0, rng.choice([2**63, 2**64 - 2, 2**62, 2**40])),
        "overflow": lambda: (2, (2**64 - 16, 32)),
        "offset-empty-marker": lambda: (0, EMPTY),
        "size-empty-marker": lambda: (1, EMPTY),
        "size-zero": lambda: (1, 0),
        "overlap": lambda: (2, (int(entries[other, 0]), max(size, 1) if size != EMPTY else 16)),
        "into-index": lambda: (0, site.start - site.base),
        "size-minus-one": lambda: (1, max(size, 1) - 1),
        "size-plus-one": lambda: (1, size + 1 if size != EMPTY else 1),
        "swap": lambda: (3, other),
        "all-empty": lambda: (4, None),
        "empty-one": lambda: (2, (EMPTY, EMPTY)),
    }
    op = rng.choice(sorted(choices))
    fld, value = choices[op]()
    if fld in (0, 1):
        entries[i, fld] = np.uint64(value % 2**64)
    elif fld == 2:
        entries[i] = np.array(value, dtype=np.uint64)
    elif fld == 3:
        entries[[i, value]] = entries[[value, i]]
    else:
        entries[:] = np.uint64(EMPTY)
    return op


def mutate_index(rng: random.Random, sv: Survey, ov: Overlay) -> Mutation | None:
    """Change one entry of a shard index (or the checksum), with the checksum fixed or not."""
    if not sv.indexes:
        return None
    site = rng.choice(sv.indexes)
    data = ov.read(site.file)
    if data is None or data[site.start:site.start + len(site.raw)] != site.raw:
        return None  # an earlier mutation changed this shard
    entries = site.entries.copy()
    i = rng.randrange(len(entries))
    if site.checksummed and rng.random() < 0.1:
        new, op, fixed = _flip(rng, site.raw[len(site.raw) - 4:]), "checksum-flip", False
        new = site.raw[:len(site.raw) - 4] + new
    else:
        op = _index_ops(rng, site, entries, i)
        fixed = not site.checksummed or rng.random() < 0.8
        new = encode_index(site, entries, checksums=fixed)
    if new == site.raw:
        return None
    where = f"{site.file} index at byte {site.start} (depth {site.depth}) entry {i}"
    what = f"{where}: {op} -> {entries[i].tolist()}" + ("" if fixed else ", checksum left stale")
    tag = f"index:{op}" + ("" if fixed else ":stale-checksum")
    must_fail = site.checksummed and not fixed and site.inside
    return Mutation(tag, what, (Edit(site.file, "splice", site.start, site.start + len(site.raw), new),),
                    must_fail=must_fail)


# ---------------------------------------------------------------------------------------------
# Chunk frame mutations


def _generic_frame_ops(rng: random.Random, frame: bytes) -> dict[str, Callable[[], bytes]]:
    return {
        "flip": lambda: _flip(rng, frame, rng.choice([1, 1, 2, 8])),
        "byte": lambda: _set(frame, rng.randrange(max(len(frame), 1)), bytes([rng.randrange(256)])),
        "truncate": lambda: frame[:rng.randrange(len(frame) + 1)],
        "truncate-1": lambda: frame[:-1],
        "extend": lambda: frame + bytes(rng.randrange(1, 64)),
        "extend-random": lambda: frame + rng.randbytes(rng.randrange(1, 64)),
        "empty": lambda: b"",
        "doubled": lambda: frame + frame,
        "zeros": lambda: bytes(len(frame)),
    }


def _set(data: bytes, pos: int, value: bytes) -> bytes:
    """`data` with `value` written at `pos` (ignored where it would fall past the end)."""
    if pos >= len(data):
        return data
    return data[:pos] + value[:len(data) - pos] + data[pos + len(value):]


def _zstd_ops(rng: random.Random, frame: bytes) -> dict[str, Callable[[], bytes]]:
    """Header fields of a zstd frame (RFC 8878 §3.1.1): magic, content size, window, block headers."""
    if len(frame) < 6 or frame[:4] != b"\x28\xb5\x2f\xfd":
        return {}
    fhd = frame[4]
    single, did = (fhd >> 5) & 1, (0, 1, 2, 4)[fhd & 3]
    pos = 5 + (0 if single else 1) + did
    fcs = (1 if single else 0, 2, 4, 8)[fhd >> 6]
    blocks = frame[pos + fcs:]

    def with_fcs(size: int) -> bytes:  # an 8-byte field: a size past it wraps, as the field would
        return frame[:4] + bytes([0xE0 | (fhd & 0x04)]) + (size % 2**64).to_bytes(8, "little") + blocks

    def block(header: int) -> bytes:
        return frame[:pos + fcs] + header.to_bytes(3, "little") + blocks[3:]

    return {
        "zstd:content-size-huge": lambda: with_fcs(rng.choice([2**62, 2**40, 2**64 - 1, 2**32 + 1])),
        "zstd:content-size-off": lambda: with_fcs(max(0, _zstd_declared(frame) + rng.choice([-1, 1, 4096]))),
        "zstd:window-huge": lambda: frame[:4] + bytes([fhd & 0x07, 0xF8]) + blocks,
        "zstd:magic": lambda: b"\x28\xb5\x2f\xfe" + frame[4:],
        "zstd:skippable": lambda: b"\x50\x2a\x4d\x18" + (2**32 - 1).to_bytes(4, "little") + frame[8:],
        "zstd:checksum-flag": lambda: frame[:4] + bytes([fhd ^ 0x04]) + frame[5:],
        "zstd:rle-block-huge": lambda: block(1 | (1 << 1) | ((2**21 - 1) << 3)),
        "zstd:raw-block-huge": lambda: block(1 | ((2**21 - 1) << 3)),
        "zstd:reserved-block": lambda: block(1 | (3 << 1) | (16 << 3)),
        "zstd:second-frame": lambda: frame + frame,
    }


def _zstd_declared(frame: bytes) -> int:
    fhd = frame[4]
    single, did = (fhd >> 5) & 1, (0, 1, 2, 4)[fhd & 3]
    pos = 5 + (0 if single else 1) + did
    fcs = (1 if single else 0, 2, 4, 8)[fhd >> 6]
    return int.from_bytes(frame[pos:pos + fcs], "little") + (256 if fcs == 2 else 0) if fcs else len(frame) * 4


def _gzip_ops(rng: random.Random, frame: bytes) -> dict[str, Callable[[], bytes]]:
    if len(frame) < 18 or frame[:2] != b"\x1f\x8b":
        return {}
    return {
        "gzip:isize-huge": lambda: frame[:-4] + (2**32 - 1).to_bytes(4, "little"),
        "gzip:crc": lambda: frame[:-8] + _flip(rng, frame[-8:-4]) + frame[-4:],
        "gzip:method": lambda: frame[:2] + b"\x07" + frame[3:],
        "gzip:fextra-huge": lambda: frame[:3] + bytes([frame[3] | 0x04]) + frame[4:10] + b"\xff\xff" + frame[10:],
        "gzip:fname-unterminated": lambda: frame[:3] + bytes([frame[3] | 0x08]) + frame[4:10] + b"name" * 8,
        "gzip:second-member": lambda: frame + frame,
        "gzip:trailing-garbage": lambda: frame + b"\x00garbage",
    }


def _zlib_ops(rng: random.Random, frame: bytes) -> dict[str, Callable[[], bytes]]:
    if len(frame) < 6:
        return {}
    return {
        "zlib:header": lambda: b"\x78\x00" + frame[2:],
        "zlib:fdict": lambda: bytes([frame[0], 0xBB]) + b"\x00\x00\x00\x01" + frame[2:],
        "zlib:adler": lambda: frame[:-4] + _flip(rng, frame[-4:]),
        "zlib:window": lambda: b"\xf8" + frame[1:],
    }


def _blosc_ops(rng: random.Random, frame: bytes) -> dict[str, Callable[[], bytes]]:
    """Header fields of a blosc 1.x frame: version, flags, typesize, nbytes, blocksize, cbytes,
    block start table, stream sizes."""
    if len(frame) < 16:
        return {}
    u32 = lambda v: struct.pack("<I", v % 2**32)  # noqa: E731
    nbytes = struct.unpack_from("<I", frame, 4)[0]
    return {
        "blosc:nbytes-huge": lambda: _set(frame, 4, u32(rng.choice([2**31 - 1, 2**32 - 1, 2**31, 2**30]))),
        "blosc:nbytes-off": lambda: _set(frame, 4, u32(nbytes + rng.choice([-1, 1, 8, -nbytes]))),
        "blosc:blocksize": lambda: _set(frame, 8, u32(rng.choice([0, 1, 3, 2**31 - 1, 2**32 - 1, nbytes * 2]))),
        "blosc:cbytes": lambda: _set(frame, 12, u32(rng.choice([0, 15, len(frame) - 1, len(frame) + 1, 2**31 - 1]))),
        "blosc:typesize": lambda: _set(frame, 3, bytes([rng.choice([0, 3, 255])])),
        "blosc:flags": lambda: _set(frame, 2, bytes([frame[2] ^ (1 << rng.randrange(8))])),
        "blosc:version": lambda: _set(frame, 0, bytes([rng.choice([0, 1, 3, 255])])),
        "blosc:versionlz": lambda: _set(frame, 1, bytes([rng.choice([0, 2, 255])])),
        "blosc:bstart": lambda: _set(frame, 16, u32(rng.choice([0, 15, len(frame), 2**31 - 1, 2**32 - 1]))),
        "blosc:stream-size": lambda: _blosc_stream_size(rng, frame),
    }


def _blosc_stream_size(rng: random.Random, frame: bytes) -> bytes:
    if len(frame) < 20:
        return frame
    start = struct.unpack_from("<i", frame, 16)[0]
    if not 0 <= start <= len(frame) - 4:
        return frame
    return _set(frame, start, struct.pack("<I", rng.choice([0, 2**31 - 1, 2**32 - 1, len(frame)])))


def _lz4_ops(rng: random.Random, frame: bytes) -> dict[str, Callable[[], bytes]]:
    if len(frame) < 4:
        return {}
    size = int.from_bytes(frame[:4], "little")
    return {
        "lz4:size-huge": lambda: rng.choice([2**31 - 1, 2**32 - 1, 2**31]).to_bytes(4, "little") + frame[4:],
        "lz4:size-off": lambda: ((size + rng.choice([-1, 1, 4096])) % 2**32).to_bytes(4, "little") + frame[4:],
        "lz4:size-zero": lambda: bytes(4) + frame[4:],
    }


_FRAME_OPS = {"zstd": _zstd_ops, "gzip": _gzip_ops, "zlib": _zlib_ops, "blosc": _blosc_ops, "lz4": _lz4_ops}


def mutate_frame(rng: random.Random, sv: Survey, ov: Overlay) -> Mutation | None:
    """Change one stored chunk: its codec's header fields or its bytes, checksums recomputed (so
    the decompressor sees the change) or not."""
    if not sv.frames:
        return None
    site = rng.choice(sv.frames)
    data = ov.read(site.file)
    if data is None or len(data) < site.stop:
        return None
    stored = data[site.start:site.stop]
    codecs = list(site.codecs)
    peeled: list = []
    while codecs and codecs[-1].name in CHECKSUMS and rng.random() < 0.8:
        try:
            stored = peel_checksum(codecs[-1], stored)
        except CorruptDataError:  # an earlier mutation broke it: mutate the bytes as they are
            break
        peeled.append(codecs.pop())
    ops = _generic_frame_ops(rng, stored)
    if codecs and codecs[-1].name in _FRAME_OPS and rng.random() < 0.6:
        ops = _FRAME_OPS[codecs[-1].name](rng, stored) or ops
    op = rng.choice(sorted(ops))
    frame = ops[op]()
    try:
        for codec in reversed(peeled):
            frame = wrap_checksum(codec, frame)
    except (IndexError, ValueError):  # numcodecs' fletcher32 cannot encode b""
        return None
    if frame == data[site.start:site.stop]:
        return None
    edit = _frame_edit(site, data, frame)
    if edit is None:
        return None
    covered = not peeled and bool(codecs) and codecs[-1].name == "crc32c" and site.inside
    what = (f"{site.file} bytes {site.start}..{site.stop} ({'+'.join(c.name for c in site.codecs) or 'raw'}): {op}"
            + (f", {'+'.join(c.name for c in peeled)} recomputed" if peeled else ""))
    tag = f"frame:{op}" if ":" in op else f"frame:{(codecs[-1].name if codecs else 'raw')}:{op}"
    return Mutation(tag, what, (edit,), must_fail=covered)


def _frame_edit(site: FrameSite, data: bytes, frame: bytes) -> Edit | None:
    """Where `frame` replaces the chunk: in place; in a one-level shard whose length changed, the
    shard re-laid out with a correct index; None for a nested shard (its indexes would go stale)."""
    if len(frame) == site.stop - site.start:
        return Edit(site.file, "splice", site.start, site.stop, frame)
    if site.index is None:
        return Edit(site.file, "splice", 0, None, frame)
    if site.index.depth > 1 or data[site.index.start:site.index.start + len(site.index.raw)] != site.index.raw:
        return None
    return Edit(site.file, "splice", 0, None, rebuild_shard(site.index, data, site.entry, frame))


def rebuild_shard(site: IndexSite, data: bytes, entry: int, frame: bytes) -> bytes:
    """The shard with chunk `entry` replaced by `frame`: chunks in their stored order, then the
    index (or the index first), checksums correct."""
    entries = site.entries.copy()
    n_index = len(site.raw)
    first = n_index if site.sharding.index_location == "start" else 0
    live = [k for k in np.argsort(entries[:, 0], kind="stable").tolist() if entries[k, 1] != EMPTY]
    body = bytearray()
    for k in live:
        off, size = int(entries[k, 0]), int(entries[k, 1])
        chunk = frame if k == entry else data[off:off + size]
        entries[k] = (first + len(body), len(chunk))
        body += chunk
    index = encode_index(site, entries)
    return index + bytes(body) if first else bytes(body) + index


# ---------------------------------------------------------------------------------------------
# File mutations


def mutate_file(rng: random.Random, sv: Survey, ov: Overlay) -> Mutation | None:
    """Empty, delete, garble, or replace by a directory, one file of the node."""
    rel = rng.choice(sv.files)
    data = ov.read(rel)
    if data is None:
        return None
    op = rng.choice(["empty", "dir", "delete", "garbage"])
    edit = {"empty": Edit(rel, "splice", 0, None, b""), "dir": Edit(rel, "dir"), "delete": Edit(rel, "delete"),
            "garbage": Edit(rel, "splice", 0, None, rng.randbytes(len(data)))}[op]
    neutral = rel.endswith(".zattrs") and op in ("delete", "dir")
    frame = next((f for f in sv.frames if f.file == rel and f.index is None), None)
    crc_file = frame is not None and bool(frame.codecs) and frame.codecs[-1].name == "crc32c"
    crc_index = any(s.file == rel and s.depth == 1 and s.checksummed for s in sv.indexes)
    must_fail = op in ("empty", "garbage") and (crc_file or crc_index) and bool(data)
    kind = "metadata" if rel.rsplit("/", 1)[-1] in META_FILES else "chunk"
    return Mutation(f"file:{kind}:{op}", f"{rel}: {op}", (edit,), neutral, must_fail)


MUTATORS: dict[str, tuple[Callable[[random.Random, Survey, Overlay], Mutation | None], float]] = {
    "json": (mutate_json, 0.33),
    "json-text": (mutate_json_text, 0.05),
    "index": (mutate_index, 0.22),
    "frame": (mutate_frame, 0.30),
    "file": (mutate_file, 0.10),
}


# ---------------------------------------------------------------------------------------------
# Cases


@dataclass(frozen=True)
class Case:
    """A base node, its mutations, and how it is read (`seed` draws the selections)."""

    id: int
    base: str  # name of the base
    root: str  # its directory
    kind: str
    mutations: tuple[Mutation, ...]
    seed: int
    store: str = "local"  # "local" | "memory"
    settings: tuple = ()  # gpuzarr.Settings fields

    @property
    def neutral(self) -> bool:
        return all(m.neutral for m in self.mutations)

    @property
    def must_fail(self) -> bool:
        return len(self.mutations) == 1 and self.mutations[0].must_fail

    def describe(self) -> str:
        how = f"store={self.store}" + "".join(f", {k}={v}" for k, v in self.settings)
        return f"{self.base} [{how}, seed {self.seed}]: " + "; ".join(m.what for m in self.mutations)

    def to_json(self) -> dict:
        return {**asdict(self), "mutations": [m.to_json() for m in self.mutations],
                "settings": [list(s) for s in self.settings]}

    @classmethod
    def from_json(cls, d: dict) -> Case:
        return cls(**{**d, "mutations": tuple(Mutation.from_json(m) for m in d["mutations"]),
                      "settings": tuple(tuple(s) for s in d["settings"])})

    def with_mutations(self, mutations: tuple[Mutation, ...]) -> Case:
        return Case(self.id, self.base, self.root, self.kind, mutations, self.seed, self.store, self.settings)


def excluded(tag: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(tag, p) for p in patterns)


def make_case(rng: random.Random, sv: Survey, case_id: int, exclude: tuple[str, ...] = ()) -> Case:
    """Draw 1-3 mutations (each against the state the previous ones left) and a way to read."""
    want = rng.choices([1, 2, 3], [7, 2, 1])[0]
    ov = Overlay(sv.root)
    mutations: list[Mutation] = []
    kinds, weights = zip(*((k, w) for k, (_, w) in MUTATORS.items()))
    for _ in range(100):
        if len(mutations) == want:
            break
        mutator = MUTATORS[rng.choices(kinds, weights)[0]][0]
        m = mutator(rng, sv, ov)
        if m is None or excluded(m.tag, exclude):
            continue
        ov.apply(m.edits)
        mutations.append(m)
    settings = []
    if rng.random() < 0.25:
        settings.append(("batch_bytes", rng.choice([1, 4096])))
    if rng.random() < 0.1:
        settings.append(("index_cache_bytes", 0))
    store = "memory" if rng.random() < 0.2 else "local"
    return Case(case_id, sv.name, str(sv.root), sv.kind, tuple(mutations), rng.randrange(2**32), store, tuple(settings))


# ---------------------------------------------------------------------------------------------
# Worker side: open and read a case, judge each call


def _selections(rng: random.Random, shape: tuple, span: int) -> dict[str, Any]:
    """Valid selections for an array of `shape`, at most `span` elements along each axis: a
    window with steps, a few same-shaped windows, orthogonal and pointwise integer arrays (the
    last two only where no axis is empty)."""
    window = tuple(_slice(rng, n, span) for n in shape)
    extent = [rng.randrange(0, min(n, 16, span) + 1) for n in shape]
    starts = [[rng.randrange(0, n - e + 1) for n, e in zip(shape, extent)] for _ in range(rng.choice([1, 2, 3]))]
    sels: dict[str, Any] = {"window": window, "batch": (starts, extent)}
    if shape and all(n > 0 for n in shape):
        sels["oindex"] = tuple(np.array([rng.randrange(-n, n) for _ in range(rng.randrange(1, 4))], np.int64)
                               for n in shape)
        k = rng.randrange(1, 5)
        sels["vindex"] = tuple(np.array([rng.randrange(n) for _ in range(k)], np.int64) for n in shape)
    return sels


def _slice(rng: random.Random, n: int, span: int) -> slice:
    if n == 0:
        return slice(0, 0)
    start = rng.randrange(n)
    stop = min(n, start + rng.randrange(1, span + 1))
    step = rng.choice([1, 1, 1, 2, 3, -1, -2])
    if step > 0:
        return slice(start, stop, step)
    return slice(stop - 1, start - 1 if start > 0 else None, step)


def _dummy(shape: tuple) -> np.ndarray | None:
    """A zero-strided stand-in of `shape`, to learn a selection's result shape; None if NumPy
    cannot even describe one that large."""
    try:
        return np.lib.stride_tricks.as_strided(np.zeros(1, np.uint8), shape, (0,) * len(shape))
    except (ValueError, OverflowError):
        return None


def array_ops(arr: Any, rng: random.Random) -> list[tuple[str, Callable, Callable, bool]]:
    """(name, call on the gpuzarr array, the same selection of a NumPy array, whether it reads
    the whole array). The full read becomes a window when the array is too large to hold."""
    from gpuzarr.info import describe

    shape = tuple(arr.shape)
    elements = max(1, min(FULL_READ_BYTES // max(arr.dtype.itemsize, 1), FULL_READ_ITEMS))  # what a read may return
    span = min(WINDOW_SPAN, max(1, int(min(elements, WINDOW_ITEMS) ** (1 / max(len(shape), 1)))))
    sels = _selections(rng, shape, span)
    whole = math.prod(shape) <= elements
    first = ... if whole else tuple(slice(0, min(n, span)) for n in shape)
    ops = [("info", lambda a: describe(a), None, False),
           ("full", lambda a: a[first], lambda r: r[first], whole),
           ("window", lambda a: a[sels["window"]], lambda r: r[sels["window"] + (...,)], False)]
    starts, extent = sels["batch"]
    boxes = [tuple(slice(s, s + e) for s, e in zip(st, extent)) + (...,) for st in starts]
    if rng.random() < 0.5 or not shape:
        ops.append(("read_batch", lambda a: a.read_batch(boxes), lambda r: _stack([r[b] for b in boxes]), False))
    else:
        ops.append(("read_windows", lambda a: a.read_windows(np.array(starts, np.int64), tuple(extent)),
                    lambda r: _stack([r[b] for b in boxes]), False))
    if "oindex" in sels:
        ix = sels["oindex"]
        ops.append(("oindex", lambda a: a.oindex[ix], lambda r: r[np.ix_(*ix)], False))
        pts = sels["vindex"]
        ops.append(("vindex", lambda a: a.vindex[pts], lambda r: r[pts], False))
    return ops


def _stack(parts: list[np.ndarray]) -> np.ndarray:
    """np.stack keeping the dtype as it is (np.stack makes big-endian types native)."""
    out = np.empty((len(parts), *parts[0].shape), dtype=parts[0].dtype)
    for i, part in enumerate(parts):
        out[i] = part
    return out


@dataclass
class Verdict:
    """What one case did: per call, "ok" or the allowed exception's type; and the findings."""

    calls: list[tuple[str, str]] = field(default_factory=list)
    findings: list[dict] = field(default_factory=list)


def _where(tb: Any) -> str:
    """The innermost frame in gpuzarr (else the innermost): a finding's location."""
    frames = traceback.extract_tb(tb)
    ours = [f for f in frames if f.filename.startswith(PACKAGE)] or frames
    f = ours[-1] if ours else None
    return f"{Path(f.filename).name}:{f.lineno} ({f.name})" if f else "?"


def judge_call(verdict: Verdict, name: str, call: Callable[[], Any], check: Callable[[Any], str | None]) -> Any:
    """Run one call: a GpuzarrError is allowed; any other exception is a finding; a result must
    pass `check` (which returns what is wrong, or None)."""
    try:
        result = call()
    except gpuzarr.GpuzarrError as exc:
        verdict.calls.append((name, type(exc).__name__))
        return None
    except Exception as exc:  # noqa: BLE001 - every other type is what the fuzzer looks for
        kind = "memory" if isinstance(exc, MemoryError) else "exception"
        verdict.calls.append((name, f"FINDING {type(exc).__name__}"))
        verdict.findings.append({"kind": kind, "op": name, "type": type(exc).__name__, "message": str(exc)[:500],
                                 "where": _where(exc.__traceback__), "traceback": traceback.format_exc()[-6000:]})
        return None
    problem = check(result)
    verdict.calls.append((name, "ok" if problem is None else "FINDING"))
    if problem is not None:
        verdict.findings.append({"kind": problem.split(":", 1)[0], "op": name, "type": "", "message": problem,
                                 "where": name, "traceback": ""})
    return result


def _result_problem(result: Any, arr: Any, must_fail: bool, ref: np.ndarray | None, ref_sel: Callable,
                    shape_of: Callable[[], tuple | None]) -> str | None:
    """What is wrong with a read's result: not an array, wrong dtype or shape, data after a
    checksummed change, or data that differs from the unmutated node's."""
    from checks import assert_identical

    if not isinstance(result, np.ndarray):
        return f"bad-result: returned {type(result).__name__}, not a numpy.ndarray"
    if result.dtype != arr.dtype:
        return f"bad-result: dtype {result.dtype}, the array says {arr.dtype}"
    want = shape_of()
    if want is not None and result.shape != want:
        return f"bad-result: shape {result.shape}, the selection gives {want}"
    if must_fail:
        return "accepted-corrupt: a full read returned data although a crc32c covers the changed bytes"
    if ref is not None:
        try:
            assert_identical(result, ref_sel(ref))
        except AssertionError as exc:
            return f"wrong-data: differs from the unmutated node after a mutation that cannot change values: {exc}"
    return None


def _shape_of(arr: Any, sel_fn: Callable) -> Callable[[], tuple | None]:
    """The shape NumPy gives the selection of an array of `arr`'s shape (None: too large to say)."""

    def shape() -> tuple | None:
        dummy = _dummy(tuple(arr.shape))
        if dummy is None:
            return None
        try:
            return sel_fn(dummy).shape
        except (IndexError, ValueError):
            return None
    return shape


def read_array(verdict: Verdict, arr: Any, rng: random.Random, label: str, ref: np.ndarray | None,
               must_fail: bool, every_op: bool = True) -> None:
    """Every read of `arr`, each judged; `ref` (the unmutated data) when values cannot change."""
    if ref is not None and (tuple(arr.shape) != ref.shape or arr.dtype != ref.dtype):
        verdict.findings.append({"kind": "wrong-metadata", "op": f"{label}open", "type": "", "where": "open",
                                 "message": f"shape/dtype {arr.shape} {arr.dtype} != unmutated {ref.shape} {ref.dtype}",
                                 "traceback": ""})
        return
    for name, call, ref_sel, whole in array_ops(arr, rng):
        if not every_op and name not in ("full", "window"):
            continue
        if ref_sel is None:
            judge_call(verdict, label + name, lambda: call(arr), lambda r: None)
            continue
        judge_call(verdict, label + name, lambda: call(arr),
                   lambda r: _result_problem(r, arr, must_fail and whole, ref, ref_sel, _shape_of(arr, ref_sel)))


def walk_group(verdict: Verdict, group: Any, rng: random.Random, refs: dict | None, prefix: str = "",
               depth: int = 0) -> None:
    """List a group's members and read each array member (a few levels deep)."""
    names = judge_call(verdict, f"{prefix}keys", group.keys, lambda r: None) or []
    for name in list(names)[:12]:
        member = judge_call(verdict, f"{prefix}{name}:open", lambda: group[name], lambda r: None)
        path = f"{prefix}{name}"
        if isinstance(member, gpuzarr.Group) and depth < 4:
            walk_group(verdict, member, rng, refs, path + "/", depth + 1)
        elif isinstance(member, gpuzarr.Array):
            ref = None if refs is None else refs.get(path)
            read_array(verdict, member, rng, f"{path}:", ref, False, every_op=False)


def node_url(root: Path, store: str, case_id: int) -> str:
    """Where the case is opened: the directory, or a copy in fsspec's memory filesystem."""
    if store != "memory":
        return str(root)
    import fsspec

    fs = fsspec.filesystem("memory")
    url = f"/fuzz{os.getpid()}/case{case_id}"
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_dir():
            fs.mkdir(f"{url}/{rel}")
        else:
            fs.pipe(f"{url}/{rel}", path.read_bytes())
    return f"memory://{url}"


def reference(root: str, kind: str) -> Any:
    """The unmutated node's data: an array, or {member path: array} for a group."""
    node = gpuzarr.open(root, device="cpu")
    if kind == "array":
        return node[...]
    refs: dict[str, np.ndarray] = {}

    def walk(g: Any, prefix: str) -> None:
        for name in g.keys():
            m = g[name]
            if isinstance(m, gpuzarr.Group):
                walk(m, f"{prefix}{name}/")
            else:
                refs[f"{prefix}{name}"] = m[...]
    walk(node, "")
    return refs


def run_case(case: Case, scratch: Path, refs: dict) -> Verdict:
    """Materialise the case under `scratch`, open it and read it every way; `refs` caches the
    unmutated data per base."""
    root = scratch / f"case{case.id}"
    _remove(root)
    materialise(Path(case.root), list(case.mutations), root)
    verdict = Verdict()
    try:
        url = node_url(root, case.store, case.id)
        if case.neutral and case.root not in refs:
            refs[case.root] = reference(case.root, case.kind)
        ref = refs.get(case.root) if case.neutral else None
        rng = random.Random(case.seed)
        settings = gpuzarr.Settings(**dict(case.settings))
        node = judge_call(verdict, "open", lambda: gpuzarr.open(url, device="cpu", settings=settings), lambda r: None)
        if isinstance(node, gpuzarr.Group):
            walk_group(verdict, node, rng, ref if isinstance(ref, dict) else None)
        elif node is not None:
            read_array(verdict, node, rng, "", ref if isinstance(ref, np.ndarray) else None, case.must_fail)
    finally:
        _remove(root)
        if case.store == "memory":
            import fsspec

            fs = fsspec.filesystem("memory")
            if fs.exists(f"/fuzz{os.getpid()}"):
                fs.rm(f"/fuzz{os.getpid()}", recursive=True)
    return verdict


def _send(stream: Any, obj: Any) -> None:
    data = pickle.dumps(obj)
    stream.write(struct.pack("<Q", len(data)) + data)
    stream.flush()


def _recv(stream: Any) -> Any:
    head = stream.read(8)
    if len(head) < 8:
        raise EOFError
    (n,) = struct.unpack("<Q", head)
    return pickle.loads(stream.read(n))


def cap_memory() -> None:
    """Cap this process's address space at its size now plus MEMORY_HEADROOM: an allocation
    sized by untrusted bytes fails with MemoryError instead of succeeding lazily."""
    import resource

    vm = int(re.search(r"VmSize:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (vm + MEMORY_HEADROOM, vm + MEMORY_HEADROOM))


def worker_main(scratch: Path, timeout: float) -> None:
    """A worker: cases in on stdin, verdicts out on (a private copy of) stdout. Its memory is
    capped, and faulthandler dumps every thread's stack to `hang.txt` and exits when a case runs
    past `timeout`."""
    import faulthandler

    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # stray prints go to the log, not into the protocol
    scratch.mkdir(parents=True, exist_ok=True)
    hang = open(scratch / "hang.txt", "w+")
    faulthandler.enable(file=hang)
    cap_memory()
    refs: dict = {}
    _send(out, "ready")
    while True:
        try:
            case = Case.from_json(_recv(sys.stdin.buffer))
        except EOFError:
            return
        hang.seek(0)
        hang.truncate()
        faulthandler.dump_traceback_later(timeout, exit=True, file=hang)
        try:
            verdict = run_case(case, scratch, refs)
        except Exception:  # noqa: BLE001 - the harness itself failed on this case
            verdict = Verdict(findings=[{"kind": "harness", "op": "-", "type": "", "where": "harness",
                                         "message": "the harness failed", "traceback": traceback.format_exc()}])
        faulthandler.cancel_dump_traceback_later()
        _send(out, asdict(verdict))


# ---------------------------------------------------------------------------------------------
# Parent side: workers, the run, findings


class Worker:
    """A worker process and the case it runs."""

    def __init__(self, scratch: Path, timeout: float):
        self.scratch, self.timeout = scratch, timeout
        env = {**os.environ, "MALLOC_ARENA_MAX": "2", "PYTHONFAULTHANDLER": "1"}
        self.log = open(scratch.with_suffix(".log"), "ab")
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker", str(scratch),
                                      "--timeout", str(timeout)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.log, env=env)
        self.case: Case | None = None
        self.deadline = 0.0
        if self._read(60.0) != "ready":
            raise RuntimeError(f"fuzz worker did not start; see {self.log.name}")

    def _read(self, wait: float) -> Any:
        ready, _, _ = select.select([self.proc.stdout], [], [], wait)
        return _recv(self.proc.stdout) if ready else None

    def start(self, case: Case) -> None:
        self.case, self.deadline = case, time.monotonic() + self.timeout + 5
        _send(self.proc.stdin, case.to_json())

    def finish(self) -> tuple[Case, Verdict]:
        """The verdict of the running case; a worker that died or hung is replaced by the caller."""
        case, self.case = self.case, None
        try:
            verdict = Verdict(**_recv(self.proc.stdout))
        except (EOFError, pickle.UnpicklingError):
            verdict = self._death()
        return case, verdict

    def expired(self) -> bool:
        return self.case is not None and time.monotonic() > self.deadline

    def kill(self) -> tuple[Case, Verdict]:
        case, self.case = self.case, None
        self.proc.kill()
        self.proc.wait()
        return case, self._death()

    def _death(self) -> Verdict:
        """A hang (faulthandler's timeout dump) or a crash, with whatever stack was dumped."""
        self.proc.wait()
        dump = (self.scratch / "hang.txt").read_text(errors="replace") if (self.scratch / "hang.txt").exists() else ""
        hung = "Timeout (" in dump or self.proc.returncode == -9
        code = self.proc.returncode
        where = next((line.strip() for line in dump.splitlines() if PACKAGE in line), "?")
        message = f"case ran past {self.timeout:g} s (exit {code})" if hung else f"worker crashed (exit {code})"
        return Verdict(findings=[{"kind": "hang" if hung else "crash", "op": "-", "type": f"exit {code}",
                                  "where": where, "message": message, "traceback": dump[-6000:]}])

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


@dataclass
class Finding:
    case: Case
    detail: dict

    @property
    def signature(self) -> tuple:
        return self.detail["kind"], self.detail["type"], self.detail["where"]

    @property
    def label(self) -> str:
        """"kind type where", e.g. "memory MemoryError fetch.py:245 (__call__)": what waivers match."""
        return " ".join(self.detail[k] for k in ("kind", "type", "where"))

    def summary(self) -> str:
        d = self.detail
        head = f"[{d['kind']}] {d['type']} at {d['where']} in {d['op']}: {d['message'][:300]}"
        return f"{head}\n    case: {self.case.describe()}"


@dataclass
class Result:
    """What a run saw. `waive`: fnmatch patterns of finding labels (known findings, each fixed
    elsewhere) that are counted in `waived` instead of failing the run."""

    waive: tuple[str, ...] = ()
    cases: int = 0
    seconds: float = 0.0
    calls: Counter = field(default_factory=Counter)
    tags: Counter = field(default_factory=Counter)
    findings: dict = field(default_factory=dict)  # signature -> first Finding
    repeats: Counter = field(default_factory=Counter)
    waived: Counter = field(default_factory=Counter)

    def add(self, case: Case, verdict: Verdict) -> list[Finding]:
        self.cases += 1
        self.tags.update(m.tag for m in case.mutations)
        self.calls.update(outcome for _, outcome in verdict.calls)
        new = []
        for d in verdict.findings:
            f = Finding(case, d)
            hit = next((p for p in self.waive if fnmatch.fnmatchcase(f.label, p)), None)
            if hit is not None:
                self.waived[hit] += 1
                continue
            self.repeats[f.signature] += 1
            if f.signature not in self.findings:
                self.findings[f.signature] = f
                new.append(f)
        return new

    def report(self) -> str:
        lines = [f"{self.cases} cases in {self.seconds:.1f} s ({self.cases / max(self.seconds, 1e-9):.0f}/s); "
                 f"calls: {dict(self.calls.most_common())}",
                 f"mutations by kind: {dict(Counter(t.split(':')[0] for t in self.tags.elements()).most_common())}",
                 f"waived (known findings): {dict(self.waived)}" if self.waived else "no finding waived",
                 f"{len(self.findings)} distinct findings"]
        for sig, f in self.findings.items():
            lines.append(f"- ({self.repeats[sig]}x) {f.summary()}")
        return "\n".join(lines)


class Fuzzer:
    """Runs cases over `jobs` workers, each case under a time limit; replaces dead workers."""

    def __init__(self, scratch: Path, jobs: int = 2, timeout: float = CASE_TIMEOUT):
        self.scratch, self.timeout = scratch, timeout
        scratch.mkdir(parents=True, exist_ok=True)
        self.workers = [self._spawn(k) for k in range(jobs)]

    def _spawn(self, k: int) -> Worker:
        return Worker(self.scratch / f"worker{k}", self.timeout)

    def run(self, cases: Any, on_result: Callable[[Case, Verdict], None]) -> None:
        """Feed `cases` (an iterator) to the workers until it ends; every verdict to `on_result`."""
        cases = iter(cases)
        exhausted = False
        while True:
            for w in self.workers:
                if w.case is None and not exhausted:
                    case = next(cases, None)
                    if case is None:
                        exhausted = True
                    else:
                        w.start(case)
            busy = [w for w in self.workers if w.case is not None]
            if not busy:
                return
            wait = max(0.0, min(w.deadline for w in busy) - time.monotonic())
            ready, _, _ = select.select([w.proc.stdout for w in busy], [], [], wait)
            for w in busy:
                if w.proc.stdout in ready:
                    on_result(*w.finish())
                elif w.expired():
                    on_result(*w.kill())
                if w.proc.poll() is not None:
                    self._replace(w)

    def _replace(self, dead: Worker) -> None:
        k = self.workers.index(dead)
        dead.close()
        self.workers[k] = self._spawn(k)

    def verdict(self, case: Case) -> Verdict:
        result: list = []
        self.run([case], lambda c, v: result.append(v))
        return result[0]

    def close(self) -> None:
        for w in self.workers:
            w.close()


def minimise(fuzzer: Fuzzer, finding: Finding) -> Finding:
    """The fewest of the case's mutations that still produce the same finding."""
    muts = finding.case.mutations
    if len(muts) == 1:
        return finding
    for size in range(1, len(muts)):
        for keep in _subsets(len(muts), size):
            if not _droppable(muts, keep):
                continue
            case = finding.case.with_mutations(tuple(muts[i] for i in keep))
            for d in fuzzer.verdict(case).findings:
                if Finding(case, d).signature == finding.signature:
                    return Finding(case, d)
    return finding


def _subsets(n: int, size: int) -> list[tuple[int, ...]]:
    import itertools

    return list(itertools.combinations(range(n), size))


def _droppable(muts: tuple[Mutation, ...], keep: tuple[int, ...]) -> bool:
    """Whether the mutations not in `keep` can go: not if a later kept one rewrites a file they
    edit whole (its text holds their change, so the description would hide it)."""
    for i in set(range(len(muts))) - set(keep):
        files = {e.file for e in muts[i].edits}
        if any(e.file in files and e.op == "splice" and e.start == 0 and e.stop is None
               for j in keep if j > i for e in muts[j].edits):
            return False
    return True


def save_finding(finding: Finding, out: Path, number: int) -> Path:
    """case.json (to replay), node/ (the mutated copy), report.txt (what went wrong, traceback)."""
    slug = re.sub(r"[^A-Za-z0-9]+", "-", f"{finding.detail['kind']}-{finding.detail['type']}-{finding.detail['where']}")
    folder = out / f"{number:03d}-{slug.strip('-')[:80]}"
    _remove(folder)
    folder.mkdir(parents=True)
    (folder / "case.json").write_text(json.dumps(finding.case.to_json(), indent=1))
    materialise(Path(finding.case.root), list(finding.case.mutations), folder / "node", link=False)
    (folder / "report.txt").write_text(finding.summary() + "\n\n" + finding.detail["traceback"])
    return folder


# ---------------------------------------------------------------------------------------------
# Bases and the whole run


def bases(root: Path, names: list[str] | None = None) -> list[Survey]:
    """Surveys of the corpus nodes written under `root` (all of them, or `names`)."""
    chosen = names if names is not None else sorted(p.name for p in root.iterdir() if p.is_dir())
    return [survey(n, root / n) for n in chosen if (root / n).is_dir()]


def case_stream(surveys: list[Survey], seed: int, exclude: tuple[str, ...] = (), limit: int | None = None,
                until: float | None = None) -> Any:
    """Cases over random bases, drawn from `seed`, until `limit` cases or time `until`. Sharded
    bases are drawn 4 times as often: they are a tenth of the corpus, and hold its indexes."""
    rng = random.Random(seed)
    weights = [4 if sv.indexes else 1 for sv in surveys]
    k = 0
    while (limit is None or k < limit) and (until is None or time.monotonic() < until):
        yield make_case(rng, rng.choices(surveys, weights)[0], k, exclude)
        k += 1


def fuzz(surveys: list[Survey], seed: int, scratch: Path, *, cases: int | None = None, seconds: float | None = None,
         jobs: int = 2, exclude: tuple[str, ...] = (), waive: tuple[str, ...] = (), timeout: float = CASE_TIMEOUT,
         on_finding: Callable[[Finding], None] | None = None, log: Callable[[str], None] | None = None) -> Result:
    """Run cases (a count, or for a time) and minimise each distinct finding. `exclude`: tags
    of mutations never drawn; `waive`: labels of known findings not reported; `log` hears of
    each new finding at once, and of the progress every minute."""
    result = Result(waive)
    start = time.monotonic()
    fuzzer = Fuzzer(scratch, jobs, timeout)
    new: list[Finding] = []
    ticks = [start + 60]

    def on_result(case: Case, verdict: Verdict) -> None:
        found = result.add(case, verdict)
        new.extend(found)
        if log is None:
            return
        for f in found:
            log(f"new finding: {f.summary()}")
        if time.monotonic() > ticks[0]:
            ticks[0] += 60
            log(f"{result.cases} cases, {len(result.findings)} findings, {sum(result.waived.values())} waived")

    try:
        until = None if seconds is None else start + seconds
        fuzzer.run(case_stream(surveys, seed, exclude, cases, until), on_result)
        for f in new:
            small = minimise(fuzzer, f)
            result.findings[f.signature] = small
            if on_finding is not None:
                on_finding(small)
    finally:
        fuzzer.close()
    result.seconds = time.monotonic() - start
    return result


def replay(folder: Path) -> Verdict:
    """Run a saved finding's case again in this process (attach a debugger here)."""
    case = Case.from_json(json.loads((folder / "case.json").read_text()))
    print(case.describe())
    if not Path(case.root).is_dir():  # the corpus is gone: read the saved copy, without the data check
        case = Case(case.id, case.base, str(folder / "node"), case.kind, (), case.seed, case.store, case.settings)
    with tempfile.TemporaryDirectory() as tmp:
        verdict = run_case(case, Path(tmp), {})
    for name, outcome in verdict.calls:
        print(f"  {name}: {outcome}")
    for d in verdict.findings:
        print(f"[{d['kind']}] {d['type']} at {d['where']}: {d['message']}\n{d['traceback']}")
    return verdict


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=1.0)
    p.add_argument("--cases", type=int, default=None, help="stop after this many cases (instead of --minutes)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 2)
    p.add_argument("--out", type=Path, default=Path("fuzz-findings"))
    p.add_argument("--corpus", type=Path, default=None, help="a corpus already written by tests/corpus.py")
    p.add_argument("--timeout", type=float, default=CASE_TIMEOUT)
    p.add_argument("--exclude", action="append", default=[], help="mutation tags to skip (fnmatch patterns)")
    p.add_argument("--waive", action="append", default=[], help="finding labels not to report (fnmatch patterns)")
    p.add_argument("--replay", type=Path, default=None)
    p.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker is not None:
        worker_main(args.worker, args.timeout)
        return 0
    if args.replay is not None:
        cap_memory()  # as in the workers
        return 1 if replay(args.replay).findings else 0
    with tempfile.TemporaryDirectory(prefix="gpuzarr-fuzz-") as tmp:
        corpus_root = args.corpus or _write_corpus(Path(tmp) / "corpus")
        surveys = bases(corpus_root)
        saved: list[Path] = []
        result = fuzz(surveys, args.seed, Path(tmp) / "scratch", cases=args.cases,
                      seconds=None if args.cases else args.minutes * 60, jobs=args.jobs,
                      exclude=tuple(args.exclude), waive=tuple(args.waive), timeout=args.timeout,
                      on_finding=lambda f: saved.append(save_finding(f, args.out, len(saved) + 1)),
                      log=lambda line: print(line, file=sys.stderr, flush=True))
    print(result.report())
    for folder in saved:
        print(f"saved {folder} (replay: python {sys.argv[0]} --replay {folder})")
    return 1 if result.findings else 0


def _write_corpus(root: Path) -> Path:
    import corpus

    errors = corpus.write_corpus(root)
    for name in errors:  # a writer that fails here (another library version) leaves no base
        _remove(root / name)
    print(f"corpus: {len(corpus.CASES) - len(errors)} nodes under {root}", flush=True)
    return root


if __name__ == "__main__":
    sys.exit(main())
