"""From chunk coordinates to compressed bytes: resolve where each chunk lives (its key, or its
byte range through one or more shard indexes), then read whole batches of ranges at once,
coalesced, into ONE staging buffer with an offsets/sizes table.

A shard whose index is not cached and of which a read wants most of the chunks is read whole
instead, in the same call that reads the other shards' indexes, on stores where a request costs
far more than its bytes (object storage: a round trip is 20+ ms): its index is decoded from the
bytes in hand and cached, and its chunks are served from them, so a cold read of it takes one
request, not two round trips (index, then data). See WHOLE_SHARD_FRACTION and WHOLE_SHARD_BYTES."""

from __future__ import annotations

import itertools
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import forksafe
from .codecs.chain import CodecChain
from .codecs.sharding import EMPTY, Sharding
from .errors import CorruptDataError, DeviceMemoryError
from .metadata import ArrayMetadata
from .store import ChangedError, LocalStore, Range, Store

Shape = tuple[int, ...]
COALESCE_GAP = 1 << 16  # bytes of gap worth reading to save a request (a round trip)
# and in a batch from local files, where a request is a syscall (~1-2 us) and a gap's bytes are
# copied out of the page cache about as fast: 64 windows of an uncompressed sharded set read 20.5
# MB with gaps of 64 KiB (tensorstore 17.2), 17.2 with 8 KiB, 0.945x the time (2-D, 3-D, crc32c
# sets: 0.99-1.01x). What goes to a disk keeps COALESCE_GAP: fetch.prefetch, and a small read's
# window (64 cold 2-D windows one by one: 0.95-1.24 of tensorstore's time with 8 KiB, 0.88-1.01)
LOCAL_GAP = 8 << 10
COALESCE_ARRAYS = 48  # from this many chunks a batch is coalesced with array operations
LOCATE_ARRAYS = 64  # up to this many chunks are located with Python integers (see _locate_small)
LANDING_ARRAYS = 64  # from more chunks than this, where chunks land in staging is one array program (_landing)
# A shard is read whole (index included, one request) when its index is not cached and the read
# wants at least this fraction of its chunks (of those inside the array: an edge shard read in
# full qualifies). The shard's chunks are then usually stored back to back and coalescing would
# read most of the shard anyway, in a second round trip after the index's; at 1/2 the whole read
# fetches at most about twice the wanted bytes (less the gaps coalescing reads too), which at
# object-storage bandwidth costs less than the 20+ ms round trip it saves for shards up to several
# MiB, and the read never has more bytes in hand than WHOLE_SHARD_BYTES allows. Not for LocalStore,
# whose requests cost a syscall: there each decoding task reads its own chunks (see pipeline.py).
WHOLE_SHARD_FRACTION = 0.5
# What one read may hold in whole shards: each is held from `locate` until the read returns (its
# chunks may fall in any batch), so the whole shards of a read are taken, in plan order, while the
# sum of their estimated sizes stays within this; the others are read as before (index, then their
# chunks in batches, whose staging is bounded by Settings.batch_bytes). A shard's size is not known
# before it is read (a HEAD would cost the round trip saved): the estimate is its decoded size
# (its chunks inside the array × the innermost chunk's encoded bytes) plus its index, an upper
# bound for compressed data; a shard stored larger (incompressible chunks plus codec framing, or
# bytes no index entry points to) is read whole all the same. Chains whose chunk size is not
# fixed (variable-length strings) are never read whole.
WHOLE_SHARD_BYTES = 64 << 20
# A range of more than this many bytes is read as parts of this size, all in the same call: one
# GET streams at one connection's speed (a local S3-style server with 20 ms latency: 155 MiB in
# 8 GETs of whole shards took 421 ms, in parts of 2/4/8/16 MiB 119/100/118/224 ms; object stores
# advise ranged GETs of 8-16 MiB). A shard estimated larger is not read whole (its size is not
# known before it is read, so it could not be cut): its index first, then its chunks in parts.
PART_BYTES = 8 << 20
RANGE_BYTES_MAX = 1 << 37  # 128 GiB: no batch is near it, and no machine here decodes such a chunk


@dataclass(frozen=True)
class Locations:
    """Where each chunk of a plan is stored (rows in the plan's chunk order)."""

    keys: np.ndarray  # (M,) object: store key holding the chunk
    offsets: np.ndarray  # (M,) int64 byte offset in the key (0 for whole objects)
    sizes: np.ndarray  # (M,) int64 byte count, -1 = the whole object
    present: np.ndarray  # (M,) bool: False = fill value (missing shard or empty inner chunk)
    key_ids: np.ndarray  # (M,) int64: chunks with the same key share an id
    missing: tuple = ()  # shard objects found absent (their chunks read as the fill value)
    # whole shard objects read while locating (see WHOLE_SHARD_FRACTION): key → their bytes, which
    # `fetch` slices instead of requesting that key's ranges
    prefetched: dict = field(default_factory=dict)
    # each shard key's version when its index was looked up (see Locator.check_unchanged)
    versions: dict = field(default_factory=dict)

    def storage_order(self) -> np.ndarray | None:
        """Order reading keys one after the other, each front to back; None if already so."""
        ids, offsets = self.key_ids, self.offsets
        if ids.size <= LOCATE_ARRAYS:  # plain integers: cheaper than array calls for a few
            pairs = list(zip(ids.tolist(), offsets.tolist()))
            if all(a < b for a, b in zip(pairs, pairs[1:])):
                return None
            return np.array(sorted(range(len(pairs)), key=pairs.__getitem__), dtype=np.int64)
        if ((np.diff(ids) >= 0).all() and ((np.diff(offsets) > 0) | (np.diff(ids) > 0)).all()):
            return None
        span = int(offsets.max()) + 1
        if (int(ids.max()) + 1) * span < 1 << 62:  # one int64 key: 7x faster than lexsort (3136 chunks: 27 us)
            return np.argsort(ids * span + offsets)
        return np.lexsort((offsets, ids))

    def take(self, order: np.ndarray) -> Locations:
        return Locations(self.keys[order], self.offsets[order], self.sizes[order], self.present[order],
                         self.key_ids[order], self.missing, self.prefetched, self.versions)


@dataclass(frozen=True)
class FetchedBatch:
    """Compressed bytes of a batch of chunks in one buffer; absent chunks have size 0."""

    staging: np.ndarray  # uint8
    offsets: np.ndarray  # int64 per chunk
    sizes: np.ndarray  # int64 per chunk
    present: np.ndarray  # bool per chunk
    labels: list  # per chunk: the store key, for error messages
    token: Any = None  # what the staging buffer's allocator gave with it (a pinned slot's event)

    @property
    def n(self) -> int:
        return self.offsets.size

    def chunk(self, i: int) -> memoryview:
        start = int(self.offsets[i])
        return memoryview(self.staging)[start:start + int(self.sizes[i])]

    def part(self, lo: int, hi: int, alloc: Any = None) -> FetchedBatch:
        """Chunks lo..hi-1, their bytes where they are (`alloc` is PendingBatch's: nothing is read here)."""
        if lo == 0 and hi == self.n:
            return self
        return FetchedBatch(self.staging, self.offsets[lo:hi], self.sizes[lo:hi], self.present[lo:hi],
                            self.labels[lo:hi])


@dataclass(frozen=True)
class PendingBatch:
    """A batch not read yet: whoever decodes a part of it reads that part first, just before,
    so the compressed bytes are still in cache when decoded (local files on the CPU)."""

    store: Store
    loc: Locations
    rows: np.ndarray
    missing: list | None = None  # see fetch
    ahead: Any = None  # called with the row a part's read ends at, before it reads (a cold read's hand-over)

    @property
    def n(self) -> int:
        return self.rows.size

    def part(self, lo: int, hi: int, alloc: Any = None) -> FetchedBatch:
        """Read chunks lo..hi-1 now, into `alloc(nbytes)` (default: a new buffer), back to back
        (fetch's `compact`: a part's frames decode in one call)."""
        if self.ahead is not None and hi > lo:
            self.ahead(int(self.rows[hi - 1]) + 1)
        return fetch(self.store, self.loc, self.rows[lo:hi], alloc or _new_staging, missing=self.missing,
                     compact=True)


class IndexCache:
    """Bounded LRU of decoded shard indexes, keyed by (key, byte offset of the index owner, its
    nesting level, the key's version: see Store.version). 0 bytes: nothing is kept."""

    def __init__(self, max_bytes: int = 64 << 20):
        self.max_bytes = max_bytes
        self._items: OrderedDict = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        forksafe.register(self)

    def _after_fork(self) -> None:
        self._lock = threading.Lock()  # a reader on another thread may have held it at the fork
        self._bytes = sum(0 if v is None else v.nbytes for v in self._items.values())  # maybe mid-put

    def get(self, key: tuple) -> np.ndarray | None | bool:
        with self._lock:
            if key not in self._items:
                return False
            self._items.move_to_end(key)
            return self._items[key]

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0

    def put(self, key: tuple, index: np.ndarray | None) -> None:
        size = 0 if index is None else index.nbytes
        with self._lock:
            if key in self._items:
                return
            if not self.max_bytes:
                return
            self._items[key] = index
            self._bytes += size
            while self._bytes > self.max_bytes and len(self._items) > 1:
                _, old = self._items.popitem(last=False)
                self._bytes -= 0 if old is None else old.nbytes


class Locator:
    """Resolves chunk coordinates of the leaf grid (the innermost chunks of nested sharding
    whose chains are pure sharding) to byte ranges."""

    # every shard a read touches is read whole where it can be (can_read_whole, up to
    # WHOLE_SHARD_BYTES): set on a read's own copy when it is made again because a shard changed
    # under it, since one GET of a whole shard, or one open of a local file, is one version of
    # it, where a writer may replace it between the reads of its index and of its chunks again
    every_shard_whole = False

    def __init__(self, meta: ArrayMetadata, store: Store, cache: IndexCache):
        self.meta, self.store, self.cache = meta, store, cache
        levels: list[tuple[Shape, Sharding]] = []
        shape, chain = meta.chunk_shape, meta.chain
        while chain.sharding is not None:
            levels.append((shape, chain.sharding))
            shape, chain = chain.sharding.chunk_shape, chain.sharding.inner
        self.levels = levels
        self.leaf_shape: Shape = shape
        self.leaf_chain: CodecChain = chain
        self._grid_strides = _strides(meta.grid_shape)
        self._level_strides = [_strides(sharding.chunks_per_shard(owner)) for owner, sharding in levels]
        self._per_shard = np.array(meta.chunk_shape, np.int64) // np.array(shape, np.int64)  # leaf chunks
        # the same as Python integers, for locate_few (one level of sharding)
        self._per_shard_ints, self._grid_ints = self._per_shard.tolist(), self._grid_strides.tolist()
        self._inner_ints = self._level_strides[0].tolist() if levels else []
        # reading shards whole (see WHOLE_SHARD_FRACTION): where it can be, where the store prefers
        # it, and what a shard is estimated at
        self.can_read_whole = bool(levels) and self.leaf_chain.raw_nbytes is not None
        self._whole = self.can_read_whole and store.reads_whole_shards
        if self.can_read_whole:
            self._leaf_grid = np.array([-(-s // c) for s, c in zip(meta.shape, shape)], dtype=np.int64)
            self._index_bytes = sum(math.prod(meta.chunk_shape) // math.prod(owner) * sharding.index_nbytes(owner)
                                    for owner, sharding in levels)  # every level's indexes in a shard
            # leaf chunks inside the array of its smallest shard (the last along every axis): a
            # read of fewer than WHOLE_SHARD_FRACTION of these wants no shard mostly
            last = self._leaf_grid - (self._leaf_grid - 1) // self._per_shard * self._per_shard
            self._fewest_inside = int(np.minimum(self._per_shard, last).prod())

    def shard_ids(self, coords: np.ndarray) -> np.ndarray:
        """The outermost shard of each leaf chunk at `coords`, as a linear index of the grid."""
        return (coords // self._per_shard) @ self._grid_strides

    def locate(self, coords: np.ndarray, given: dict | None = None) -> Locations:
        """`given`: shard objects already read whole (key → their bytes, None if absent; see
        whole_shards), whose indexes are read from those bytes, not the cache or the store."""
        n = coords.shape[0]
        whole_wanted = self._whole or self.every_shard_whole
        # (a few chunks of a remote array, whose shards may be read whole: none is mostly wanted;
        # a warm 256^2 window of the remote sharded set: located in ~70 us instead of ~120, read at
        # 0 ms latency in 0.92-0.93 of the time, alternated in-process)
        if n <= LOCATE_ARRAYS and len(self.levels) == 1 and given is None and (
                not whole_wanted or (not self.every_shard_whole and n < WHOLE_SHARD_FRACTION * self._fewest_inside)):
            return self._locate_small(coords)
        if not self.levels:
            encode = self.meta.key_encoding.key
            keys = np.array([encode(tuple(c)) for c in coords.tolist()], dtype=object)
            return Locations(keys, np.zeros(n, np.int64), np.full(n, -1, np.int64), np.ones(n, bool),
                             np.arange(n, dtype=np.int64))
        shard_shape = np.array(self.meta.chunk_shape, dtype=np.int64)
        leaf = np.array(self.leaf_shape, dtype=np.int64)
        shard_coords = coords // self._per_shard
        shard_first, inverse = _group(shard_coords @ self._grid_strides)
        encode = self.meta.key_encoding.key
        keys = np.array([encode(tuple(c)) for c in shard_coords[shard_first].tolist()], dtype=object)[inverse]
        offsets = np.zeros(n, np.int64)
        sizes = np.full(n, -1, np.int64)  # whole key: the outermost shard
        present = np.ones(n, bool)
        element = coords * leaf  # first element of each leaf chunk, relative to the array
        origin = shard_coords * shard_shape
        owner = inverse  # which index (a shard, or an inner chunk that is a shard) holds each row
        missing: tuple = ()
        # what each shard object is now (local files: inode, size, times): cached indexes of an
        # object that changed since are not used
        versions = {k: self.store.version(k) for k in keys[shard_first].tolist()}
        # shards the read wants most of, with their estimated sizes: read whole if their index is
        # not cached; `blobs` gets the bytes of those read whole
        whole = self._mostly_wanted(keys[shard_first], shard_coords[shard_first], np.bincount(inverse)) \
            if whole_wanted else {}
        blobs: dict = {}
        for level, ((owner_shape, sharding), strides) in enumerate(zip(self.levels, self._level_strides)):
            inner = np.array(sharding.chunk_shape, dtype=np.int64)
            within = (element - origin) // inner
            cps = sharding.chunks_per_shard(owner_shape)
            flat = within @ strides
            if level == 0:  # every row live, owned by its shard: grouped already
                live, first, group_of = np.arange(n), shard_first, inverse
            else:
                live = np.flatnonzero(present)
                first, group_of = _group(owner[live])
            rows = live[first]
            tables = self._indexes(list(zip(keys[rows].tolist(), offsets[rows].tolist(), sizes[rows].tolist())),
                                   owner_shape, sharding, level, versions, whole if level == 0 else {}, blobs,
                                   given if level == 0 else None)
            if level == 0:  # whole shard objects
                missing = tuple(k for k, t in zip(keys[rows].tolist(), tables) if t is None)
            per = math.prod(cps)
            if tables and len(tables) * per <= STACKED_ENTRIES:  # every index at once: one gather, no mask per shard
                stacked = np.concatenate([np.full((per, 2), EMPTY, np.uint64) if t is None else t for t in tables])
                if live.size == n:
                    entry = stacked[group_of * per + flat]
                else:
                    entry = np.full((n, 2), EMPTY, dtype=np.uint64)
                    entry[live] = stacked[group_of * per + flat[live]]
            else:  # indexes too large to copy for the chunks wanted: shard by shard
                entry = np.full((n, 2), EMPTY, dtype=np.uint64)
                for g, table in enumerate(tables):
                    if table is not None:
                        members = live if len(tables) == 1 else live[group_of == g]
                        entry[members] = table[flat[members]]
            present &= entry[:, 1] != EMPTY
            offsets = np.where(present, entry[:, 0].astype(np.int64), 0)  # indexes hold absolute offsets
            sizes = np.where(present, entry[:, 1].astype(np.int64), 0)
            origin = origin + within * inner
            owner = owner * math.prod(cps) + flat
        return Locations(keys, offsets, sizes, present, inverse, missing, blobs, versions)

    def _locate_small(self, coords: np.ndarray) -> Locations:
        """locate() of a handful of chunks under one level of sharding: locate_few's lists as arrays."""
        shard, inner = np.divmod(coords, self._per_shard)
        linears = (shard @ self._grid_strides).tolist()
        rows = list(zip(linears, (inner @ self._level_strides[0]).tolist()))
        keys, ids, offsets, sizes, present, missing, versions = self.locate_few(
            dict(zip(linears, map(tuple, shard.tolist()))), rows)
        return Locations(np.array([keys[i] for i in ids], dtype=object), np.array(offsets, dtype=np.int64),
                         np.array(sizes, dtype=np.int64), np.array(present, dtype=bool),
                         np.array(ids, dtype=np.int64), missing, versions=versions)

    def shard_terms(self, axis: int, k: int) -> tuple[int, int, int]:
        """Leaf chunk k of an axis, as its terms in locate_few's numbers: (its shard's coordinate,
        that times the grid's stride, its index entry's stride term); one level of sharding."""
        per = self._per_shard_ints[axis]
        return k // per, k // per * self._grid_ints[axis], k % per * self._inner_ints[axis]

    def locate_few(self, shards: dict[int, tuple], rows: list[tuple[int, int]]) -> tuple[list, list, list, list,
                                                                                         list, tuple, dict]:
        """The locations of a handful of chunks under one level of sharding, in plain integers,
        without the dozens of array calls on tiny arrays the general path makes. `rows`: per
        chunk, its shard's linear number in the grid and its entry in the shard's index;
        `shards`: each shard's grid coordinates by linear number. Returns (the shard keys in grid
        order; per chunk the number of its shard's key, its offset, its size and whether it is
        present (0, 0, False where absent); the keys of missing shards; the shards' versions, see
        check_unchanged)."""
        (shard_shape, sharding), = self.levels
        order = sorted(shards)
        rank = {linear: i for i, linear in enumerate(order)}
        encode = self.meta.key_encoding.key
        keys = [encode(shards[linear]) for linear in order]
        versions = {key: self.store.version(key) for key in keys}
        tables = self._indexes([(key, 0, -1) for key in keys], shard_shape, sharding, 0, versions)
        ids = [rank[linear] for linear, _ in rows]
        wanted: list[list[int]] = [[] for _ in keys]
        for i, (_, entry) in zip(ids, rows):
            wanted[i].append(entry)
        found = [iter(t[w].tolist()) if t is not None else None for t, w in zip(tables, wanted)]
        empty = int(EMPTY)
        offsets, sizes, present = [], [], []
        for i in ids:
            entries = found[i]
            offset, size = next(entries) if entries is not None else (0, empty)
            live = size != empty
            present.append(live)
            offsets.append(offset if live else 0)
            sizes.append(size if live else 0)
        return keys, ids, offsets, sizes, present, tuple(k for k, t in zip(keys, tables) if t is None), versions

    def check_unchanged(self, versions: dict, whole: Any = ()) -> None:
        """Raise ChangedError where a local shard file is no longer the one whose index a read
        used (replaced, as zarr-python writes a shard: a new file renamed over the old; or
        rewritten in place): its chunks may have been read from the new file at the old index's
        offsets. Called once a read has read every chunk (a stat per shard; object stores check
        the ETag of every GET instead); the read is then made again (Reader.read). Not the
        shards read `whole` (Locations.prefetched): one open, one version, whatever the path
        holds now."""
        if type(self.store) is not LocalStore:
            return
        for key, version in versions.items():
            if version is not None and key not in whole and self.store.version(key) != version:
                raise ChangedError(f"{key}: the shard file changed while it was read", key)

    def whole_shards(self, coords: np.ndarray) -> tuple[np.ndarray, list[str]] | None:
        """Where a read of the leaf chunks at `coords` would read each of its two or more shards
        whole (see WHOLE_SHARD_FRACTION), none with a cached index: per chunk the number of its
        shard, and the shards' keys in grid order. None otherwise."""
        if not self._whole:
            return None
        shard_coords = coords // self._per_shard
        first, group = _group(shard_coords @ self._grid_strides)
        if first.size < 2:
            return None
        encode = self.meta.key_encoding.key
        keys = [encode(tuple(c)) for c in shard_coords[first].tolist()]
        whole = self._mostly_wanted(np.array(keys, dtype=object), shard_coords[first], np.bincount(group))
        if len(whole) < len(keys) or sum(whole.values()) > WHOLE_SHARD_BYTES:
            return None
        if self.store.keeps_indexes and not self.every_shard_whole and \
                any(self.cache.get((k, 0, 0, self.store.version(k))) is not False for k in keys):
            return None
        return group, keys

    def _mostly_wanted(self, keys: np.ndarray, shard_coords: np.ndarray, touched: np.ndarray) -> dict[str, int]:
        """Of the shards `keys` (at `shard_coords`, with `touched` of their innermost chunks
        wanted), those wanted at least WHOLE_SHARD_FRACTION (of their chunks inside the array),
        each with its estimated stored size (see WHOLE_SHARD_BYTES)."""
        per = self._per_shard
        inside = np.minimum(per, self._leaf_grid - shard_coords * per).prod(axis=1)
        estimate = inside * self.leaf_chain.raw_nbytes + self._index_bytes
        fraction = 0.0 if self.every_shard_whole else WHOLE_SHARD_FRACTION
        # a store that reads a whole object in one call, not in parts (local files): any shard
        # within WHOLE_SHARD_BYTES, when a read made again wants every shard in one version
        most = WHOLE_SHARD_BYTES if self.every_shard_whole and not self.store.reads_whole_shards else PART_BYTES
        mostly = (touched >= fraction * inside) & (estimate <= most)
        return {k: e for k, e, m in zip(keys.tolist(), estimate.tolist(), mostly.tolist()) if m}

    def _indexes(self, owners: list[tuple[str, int, int]], owner_shape: Shape, sharding: Sharding,
                 level: int, versions: dict, whole: dict | None = None, blobs: dict | None = None,
                 given: dict | None = None) -> list:
        """Decoded index of each owner (key, byte offset, byte size; size -1 for a whole shard
        object), from the cache or read together in one call; None for a missing shard.
        `whole`: shard objects to read whole where their index is not cached (key → estimated
        size), while their estimates fit WHOLE_SHARD_BYTES: their bytes go to `blobs`, where
        the indexes of owners inside them (nested sharding) are then read from. `given`: whole
        shard objects in hand (see `locate`), read from whatever the cache holds."""
        # the level too: a shard's first inner chunk, itself a shard of the same shape, has the
        # shard's key and offset
        whole = whole or {}
        blobs = {} if blobs is None else blobs
        names = [(key, base, level, versions[key]) for key, base, _ in owners]
        keep = self.store.keeps_indexes
        given = given or {}
        looked_up = keep and not self.every_shard_whole  # (read whole anyway: the cache may be a version behind)
        found = [False if name[0] in given or not looked_up else self.cache.get(name) for name in names]
        wanted = [i for i, hit in enumerate(found) if hit is False]
        n_index = sharding.index_nbytes(owner_shape)
        budget = WHOLE_SHARD_BYTES
        ranges: list = []
        jobs = []  # (owner, its size if known, read whole, its raw index or the number of its range)
        for i in wanted:
            key, base, size = owners[i]
            if size < 0 and key in given:  # read whole already
                jobs.append((i, None, True, given[key]))
                continue
            if size < 0:  # a whole shard object: the index sits at a known end
                estimate = whole.get(key)
                if estimate is not None and estimate <= budget:  # read whole: index and chunks at once
                    budget -= estimate
                    jobs.append((i, None, True, len(ranges)))
                    ranges.append((key, 0, None))
                    continue
                total = self.store.size(key, versions[key]) if isinstance(self.store, LocalStore) else None
                jobs.append((i, total, False, len(ranges)))
                ranges.append((key, 0, n_index) if sharding.index_location == "start" else (key, -n_index, None))
                continue
            if size < n_index:
                raise CorruptDataError(f"{key}: nested shard at offset {base} is {size} bytes, "
                                       f"shorter than its {n_index}-byte index")
            start = base if sharding.index_location == "start" else base + size - n_index
            if key in blobs:  # inside a shard read whole: no request (the outer index keeps it inside)
                jobs.append((i, size, False, memoryview(blobs[key])[start:start + n_index]))
                continue
            jobs.append((i, size, False, len(ranges)))
            ranges.append((key, start, start + n_index))
        got = self.store.read_indexes(ranges) if ranges else []
        raws, totals = [], []  # per job
        for i, total, read_whole, source in jobs:
            key, base, _ = owners[i]
            if versions[key] is None:  # a store that learns versions as it reads (object storage)
                names[i] = (key, base, level, self.store.version(key))
            elif read_whole and not self.store.version_asks:  # the version this GET answered: the
                versions[key] = self.store.version(key)  # inner indexes too are of these bytes
                names[i] = (key, base, level, versions[key])
            raw = got[source] if isinstance(source, int) else source
            if read_whole and raw is not None:
                blobs[key] = raw
                total = len(raw)
                # a shard shorter than its index gives a short index: decode_index says "truncated"
                raw = memoryview(raw)[:n_index] if sharding.index_location == "start" else \
                    memoryview(raw)[max(total - n_index, 0):]
            raws.append(raw)
            totals.append(total)
        read = [k for k, raw in enumerate(raws) if raw is not None]
        decoded = iter(sharding.decode_indexes([raws[k] for k in read], owner_shape,
                                               [owners[jobs[k][0]][0] for k in read], [totals[k] for k in read]))
        for (i, _, _, _), raw in zip(jobs, raws):
            key, base, _ = owners[i]
            index = None if raw is None else next(decoded)
            if index is not None and base:
                index = index.copy()
                live = index[:, 1] != EMPTY
                index[live, 0] += np.uint64(base)  # make nested offsets absolute within the key
            # kept where a later read can tell it is stale: under a version, or under the None of a
            # store that asked and found nothing; not under an object store's None (no GET has
            # answered: a missing shard, a server without ETags), found by every read for good
            if keep and (names[i][3] is not None or self.store.version_asks):
                self.cache.put(names[i], index)
            found[i] = index
        return found


# decoded index entries a locate copies into one table to look up every chunk at once (16 bytes
# each): 2-D read_batch of 256 patches, 896 chunks in 16 shards, locate 417 -> 358 us (medians of
# 30 alternated runs; a boolean mask per shard before)
STACKED_ENTRIES = 1 << 16


def _strides(shape: Shape) -> np.ndarray:
    """C-order strides of a grid, in elements, for linear indices as one matrix product."""
    return np.array([math.prod(shape[d + 1:]) for d in range(len(shape))], dtype=np.int64)


def _group(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row of each distinct value's first occurrence, group number of every row), groups in
    order of value, of values >= 0. Values within a few times the rows (shard numbers, index
    owners): a table of first rows by value, no sort (896 rows: 44 -> 17 us); else np.unique."""
    if values.size <= 1 or (values == values[0]).all():
        return np.zeros(min(values.size, 1), np.int64), np.zeros(values.size, np.int64)
    bound = int(values.max()) + 1
    if bound > 4 * values.size + 4096:
        _, first, inverse = np.unique(values, return_index=True, return_inverse=True)
        return first, inverse.reshape(-1)
    firsts = np.full(bound, values.size, np.int64)
    np.minimum.at(firsts, values, np.arange(values.size, dtype=np.int64))
    seen = firsts < values.size
    return firsts[seen], (np.cumsum(seen) - 1)[values]


def _new_staging(nbytes: int) -> np.ndarray:
    """A buffer for `nbytes` of compressed bytes; one too large for memory is named as such."""
    try:
        return np.empty(nbytes, dtype=np.uint8)
    except MemoryError:
        raise DeviceMemoryError(f"{nbytes} bytes of staging for compressed chunks cannot be allocated here (the "
                                f"array's chunk shape and dtype make its chunks that large, or the batch is: "
                                f"see Settings.batch_bytes)") from None


class Slot:
    """A buffer that use after use refills, grown when one needs more: memory stays at the slot
    (fresh buffers per use leave the allocator holding freed ones, and fault in new pages)."""

    def __init__(self, reserve: int = 0) -> None:
        self.buffer: np.ndarray | None = None
        self.reserve = reserve  # the largest known need: one allocation serves every use

    def __call__(self, nbytes: int) -> np.ndarray:
        if self.buffer is None or self.buffer.size < nbytes:
            self.buffer = None  # freed before its successor is allocated: never two at once
            self.buffer = _new_staging(max(nbytes, self.reserve))
        return self.buffer[:nbytes]


def thread_slot(local: threading.local, name: str, nbytes: int, kept: int | None = None) -> np.ndarray:
    """`nbytes` of this thread's slot `name`, kept across reads; a fresh buffer when more than
    `kept` bytes are asked for (a thread does not hold on to a huge one)."""
    if kept is not None and nbytes > kept:
        return _new_staging(nbytes)
    slot = getattr(local, name, None)
    if slot is None:
        slot = Slot()
        setattr(local, name, slot)
    return slot(nbytes)


def fetch(store: Store, loc: Locations, rows: np.ndarray, alloc: Any = _new_staging, align: int = 1,
          missing: list | None = None, compact: bool = False) -> FetchedBatch:
    """Read the chunks `rows` (in storage order) into one staging buffer, coalescing neighbours.
    `alloc(nbytes)` gives the staging buffer of a local read (default: a new one), or (it, a
    token); `align`: where chunks of a local read start (see `fetch_bounded`); `missing`, if
    given, gets the key of every chunk object found absent (zarr-python's read results);
    `compact`: a local read's chunks lie back to back, gaps skipped (see `fetch_bounded`)."""
    n = rows.size
    if isinstance(store, LocalStore) and n and loc.sizes[rows[0]] < 0:  # chunk files (all or none of a read's)
        return fetch_files(store, loc.keys[rows].tolist(), alloc, align, missing)
    keys, offsets, sizes, present = loc.keys[rows], loc.offsets[rows], loc.sizes[rows], loc.present[rows].copy()
    key_list = keys.tolist()
    ranges, members = _ranges(store, loc, rows, keys, offsets, sizes, present, key_list)
    if ranges and isinstance(store, LocalStore) and not loc.prefetched:
        return fetch_bounded(store, ranges, members, offsets, sizes, present, key_list, alloc, align, compact)
    # other stores return what exists, so nothing is allocated from an unchecked index size;
    # the ranges of shards read whole while locating are slices of the bytes in hand
    blobs = _read_or_slice(store, ranges, loc.prefetched)
    staging = np.empty(sum(len(b) for b in blobs if b is not None), dtype=np.uint8)
    positions, starts = [], []  # per range: where it lands in staging, its first byte
    pos = 0
    for rng, idx, blob in zip(ranges, members, blobs):
        positions.append(pos)
        starts.append(rng[1])
        if not _arrived(store, rng, blob, missing):
            present[idx] = False
            continue
        _copy_into(staging, pos, blob)
        pos += len(blob)
    # a whole object (one chunk) lands at its range's position, its size what was read
    lengths = [0 if b is None else len(b) for b in blobs]
    out_off = _landing(members, positions, starts, np.where(sizes < 0, 0, offsets), n)
    out_size = np.where(sizes < 0, _landing(members, lengths, [0] * len(ranges), np.zeros(n, np.int64), n), sizes)
    return FetchedBatch(staging, np.where(present, out_off, 0), np.where(present, out_size, 0), present, list(keys))


def _ranges(store: Store, loc: Locations, rows: np.ndarray, keys: np.ndarray, offsets: np.ndarray,
            sizes: np.ndarray, present: np.ndarray, key_list: list) -> tuple[list, list]:
    """The coalesced ranges of chunks `rows` (in storage order), and the rows of each."""
    gap = LOCAL_GAP if isinstance(store, LocalStore) else COALESCE_GAP
    if np.count_nonzero(present) < COALESCE_ARRAYS:
        live = np.flatnonzero(present).tolist()
        return coalesce_small(key_list, offsets.tolist(), sizes.tolist(), live, gap)
    return _coalesce(keys, loc.key_ids[rows], offsets, sizes, present, gap)


def _arrived(store: Store, rng: Range, blob: Any, missing: list | None) -> bool:
    """Whether a range's object was there (its key into `missing` if not); a shard gone since
    its index was read, or shorter than its index says, raises."""
    key, start, stop = rng
    if blob is None:
        if stop is not None and not store.vanished_is_missing:  # read again, from a fresh index
            raise ChangedError(f"{key}: shard disappeared between reading its index and its chunks", key)
        if missing is not None:
            missing.append(key)
        return False
    if stop is not None and len(blob) != stop - start:
        raise CorruptDataError(f"{key}: shard index points past the end of the shard (bytes {start}..{stop} "
                               f"requested, {start + len(blob)} exist)")
    return True


PLACED = object()  # what Landing.land returns for bytes it copied into the batch's staging


class Landing:
    """A remote batch read range by range: the chunks of ranges that have landed become a
    FetchedBatch of their own, decoded while later ranges are still on their way (their bytes
    placed in one buffer as they land: see land). Range k's rows are `bounds[k]` of the
    read: its chunks and the absent chunks before them (the last range's, those after it too),
    so every row is in exactly one. Where requests take unequal times, as in the cloud, the read
    ends soon after its last range lands, not a whole decode later (see Reader._landed)."""

    def __init__(self, store: Store, loc: Locations, rows: np.ndarray):
        self.store = store
        self.keys, self.offsets, self.sizes = loc.keys[rows], loc.offsets[rows], loc.sizes[rows]
        self.ranges, self.members = _ranges(store, loc, rows, self.keys, self.offsets, self.sizes, loc.present[rows],
                                            self.keys.tolist())
        ends = [int(idx[-1]) + 1 for idx in self.members[:-1]] + [rows.size]
        self.bounds = list(zip([0] + ends[:-1], ends))
        # ranges of a known size land back to back in one buffer, each copied there by the
        # thread it landed on (see land); a whole object's size is known only once it is in
        known = [0 if stop is None else stop - start for _, start, stop in self.ranges]
        self.at = np.concatenate([[0], np.cumsum(known)]).tolist()  # range k: staging[at[k]:at[k + 1]]
        self.staging = np.empty(0, np.uint8)  # (see `of`)

    @classmethod
    def of(cls, store: Store, loc: Locations, rows: np.ndarray) -> Landing | None:
        """A Landing where it applies: a store that hands over ranges as they land, two ranges or
        more, none read as parts (see PART_BYTES) or sliced from a shard read whole."""
        if not store.lands_ranges or (loc.prefetched and loc.prefetched.keys() & set(loc.keys[rows].tolist())):
            return None
        landing = cls(store, loc, rows)
        long = any(stop is not None and stop - start > PART_BYTES for _, start, stop in landing.ranges)
        if len(landing.ranges) < 2 or long:
            return None
        # sized by the index, as the batch's bounds are (a batch: at most its batch_bytes); only
        # what lands is written
        landing.staging = np.empty(landing.at[-1], np.uint8)
        return landing

    def land(self, k: int, blob: Any) -> Any:
        """Range k's bytes as they land, on the thread that read them: copied into their place
        in `staging` (PLACED is then returned in their stead) where their size is known and is
        what was asked for; else as they are (an absent object, a short body: `batch` says
        which). A run of ranges landing together is then a view of `staging`, not copied in one
        thread once the last is in (16 ranges of the sharded set at 20 ms, 4.4 MB: 0.55 ms
        between the last landing and the decode's start)."""
        _, start, stop = self.ranges[k]
        if blob is None or stop is None or len(blob) != stop - start:
            return blob
        _copy_into(self.staging, self.at[k], blob)
        return PLACED

    def batch(self, first: int, blobs: list, missing: list | None) -> FetchedBatch:
        """Rows bounds[first]..bounds[first + len(blobs) - 1] of the read, the bytes of ranges
        first.. in hand: those placed by `land`, a view of their run of staging; others, one
        range's where they are, several copied into one buffer."""
        lo, hi = self.bounds[first][0], self.bounds[first + len(blobs) - 1][1]
        ranges = self.ranges[first:first + len(blobs)]
        at = self.at
        placed = all(blob is PLACED for blob in blobs)
        blobs = [self.staging[at[k]:at[k + 1]] if blob is PLACED else blob for k, blob in enumerate(blobs, first)]
        there = [_arrived(self.store, rng, blob, missing) for rng, blob in zip(ranges, blobs)]
        lengths = np.array([len(blob) if ok else 0 for blob, ok in zip(blobs, there)], np.int64)
        if placed:  # back to back in staging already
            staging = self.staging[at[first]:at[first + len(blobs)]]
        elif len(blobs) == 1:
            staging = np.frombuffer(blobs[0], np.uint8) if there[0] else np.empty(0, np.uint8)
        else:
            staging = np.empty(int(lengths.sum()), np.uint8)
            for blob, ok, pos in zip(blobs, there, (np.cumsum(lengths) - lengths).tolist()):
                if ok:
                    _copy_into(staging, pos, blob)
        live = [k for k, ok in enumerate(there) if ok]
        members = [self.members[first + k] for k in live]
        counts = np.fromiter(map(len, members), np.int64, len(members))
        idx = np.fromiter(itertools.chain.from_iterable(members), np.int64, int(counts.sum()))
        where = np.repeat((np.cumsum(lengths) - lengths)[live], counts)  # the chunk's range's place in staging
        start = np.repeat(np.array([ranges[k][1] for k in live], np.int64), counts)
        whole = self.sizes[idx] < 0  # a chunk object read whole: all of its bytes
        present = np.zeros(hi - lo, bool)
        offsets = np.zeros(hi - lo, np.int64)
        sizes = np.zeros(hi - lo, np.int64)
        present[idx - lo] = True
        offsets[idx - lo] = where + np.where(whole, 0, self.offsets[idx] - start)
        sizes[idx - lo] = np.where(whole, np.repeat(lengths[live], counts), self.sizes[idx])
        return FetchedBatch(staging, offsets, sizes, present, self.keys[lo:hi].tolist())


def shards_batch(loc: Locations, blobs: list, firsts: list[int]) -> FetchedBatch:
    """The chunks at `loc` of consecutive shards read whole (`blobs`, None for a missing shard;
    shard k's chunks from row firsts[k]): one shard's bytes where they landed, several copied
    into one buffer (decoded as one batch: a batch each cost more than the copy, 16 shards of
    the 2-D remote set landing together)."""
    if len(blobs) == 1:
        staging = np.empty(0, np.uint8) if blobs[0] is None else np.frombuffer(blobs[0], np.uint8)
        return FetchedBatch(staging, loc.offsets, loc.sizes, loc.present, loc.keys.tolist())
    lengths = [0 if blob is None else len(blob) for blob in blobs]
    starts = np.cumsum([0] + lengths[:-1])
    staging = np.empty(sum(lengths), np.uint8)
    for blob, start in zip(blobs, starts.tolist()):
        if blob is not None:
            _copy_into(staging, start, blob)
    offsets = np.where(loc.present, loc.offsets + np.repeat(starts, np.diff(firsts + [loc.present.size])), 0)
    return FetchedBatch(staging, offsets, loc.sizes, loc.present, loc.keys.tolist())


def on_disk(store: LocalStore, loc: Locations, rows: np.ndarray) -> bool:
    """Whether the last chunk of `rows` (in storage order) is missing from the page cache: one
    probe (see LocalStore.cached), a guess at whether the read of them will wait for the disk."""
    live = rows[loc.present[rows]]
    if not live.size:
        return False
    last = live[-1]
    start, size = int(loc.offsets[last]), int(loc.sizes[last])
    return not store.cached(loc.keys[last], start, start + size if size >= 0 else None)


def prefetch(store: LocalStore, loc: Locations, rows: np.ndarray) -> None:
    """Hand the coalesced ranges of chunks `rows` (in storage order) to the kernel to read ahead,
    all at once (see LocalStore.prefetch)."""
    live = rows[loc.present[rows]]
    # not LOCAL_GAP: a disk serves fewer, larger reads faster (64 cold 2-D windows in one
    # read_batch: 0.82-0.91 of tensorstore's time so, 0.93-1.02 with 8 KiB gaps)
    ranges, _ = _coalesce(loc.keys[live], loc.key_ids[live], loc.offsets[live], loc.sizes[live], loc.present[live])
    store.prefetch(ranges)


def _read_or_slice(store: Store, ranges: list, prefetched: dict) -> list:
    """store.read_ranges(ranges), but the ranges of keys in `prefetched` (whole objects in hand)
    are views of those bytes, not requests (cut short where the object is: fetch checks lengths)."""
    if not prefetched:
        return _read_in_parts(store, ranges)
    read = iter(_read_in_parts(store, [r for r in ranges if r[0] not in prefetched]))
    return [memoryview(prefetched[key])[start:stop] if key in prefetched else next(read)
            for key, start, stop in ranges]


class Parts(tuple):
    """The bytes of one range read as several (see PART_BYTES); len() is their total."""

    def __len__(self) -> int:
        return sum(len(p) for p in self)


def _read_in_parts(store: Store, ranges: list) -> list:
    """store.read_ranges(ranges) in one call, each range longer than PART_BYTES asked for as parts
    of that size (given back as Parts; None where a part is missing: the object vanished). A
    range of more than RANGE_BYTES_MAX is one chunk whose shard index claims it (a batch holds
    far less): refused before its parts are listed."""
    if not any(stop is not None and stop - start > PART_BYTES for _, start, stop in ranges):
        return store.read_ranges(ranges) if ranges else []
    for key, start, stop in ranges:
        if stop is not None and stop - start > RANGE_BYTES_MAX:
            raise CorruptDataError(f"{key}: its shard index puts a chunk at bytes {start}..{stop}, "
                                   f"{stop - start} bytes: more than any chunk read here can be ({RANGE_BYTES_MAX})")
    asked, spans = [], []
    for key, start, stop in ranges:
        cuts = range(start, stop, PART_BYTES) if stop is not None and stop - start > PART_BYTES else None
        spans.append((len(asked), 0 if cuts is None else len(cuts)))
        asked += [(key, start, stop)] if cuts is None else [(key, a, min(a + PART_BYTES, stop)) for a in cuts]
    got = store.read_ranges(asked)
    return [got[i] if not n else None if any(p is None for p in got[i:i + n]) else Parts(got[i:i + n])
            for i, n in spans]


def _copy_into(staging: np.ndarray, pos: int, blob: Any) -> None:
    for part in blob if type(blob) is Parts else (blob,):
        staging[pos:pos + len(part)] = np.frombuffer(part, dtype=np.uint8)
        pos += len(part)


def coalesce_small(keys: list, offsets: list, sizes: list, live: list[int],
                   gap: int = COALESCE_GAP) -> tuple[list, list]:
    """(key, start, stop) ranges (stop None: the whole object) and the chunks each holds, of the
    chunks `live` (in storage order): a chunk joins the previous range if it starts at most
    `gap` bytes after its end. Python integers: cheaper than array calls for a few chunks."""
    ranges: list[tuple[str, int, int | None]] = []
    members: list[list[int]] = []
    for i in live:
        key, off, size = keys[i], offsets[i], sizes[i]
        if size < 0:
            ranges.append((key, 0, None))
            members.append([i])
            continue
        if ranges and ranges[-1][0] == key and ranges[-1][2] is not None and 0 <= off - ranges[-1][2] <= gap:
            k, start, stop = ranges[-1]
            ranges[-1] = (k, start, max(stop, off + size))
            members[-1].append(i)
        else:
            ranges.append((key, off, off + size))
            members.append([i])
    return ranges, members


def _coalesce(keys: np.ndarray, key_ids: np.ndarray, offsets: np.ndarray, sizes: np.ndarray,
              present: np.ndarray, gap: int = COALESCE_GAP) -> tuple[list, list]:
    """The same ranges as `coalesce_small`, found with whole-batch array operations. Within a
    range chunks follow each other (a chunk starting before the previous one's end starts a new
    range), so a range's running end is its previous chunk's end."""
    live = np.flatnonzero(present)
    if not live.size:
        return [], []
    ids, off, size = key_ids[live], offsets[live], sizes[live]
    end = off + size
    whole = size < 0
    new = np.ones(live.size, dtype=bool)
    apart = off[1:] - end[:-1]
    new[1:] = (ids[1:] != ids[:-1]) | (apart < 0) | (apart > gap) | whole[1:] | whole[:-1]
    firsts = np.flatnonzero(new)
    lasts = np.append(firsts[1:], live.size) - 1
    ranges = [(k, 0, None) if w else (k, a, b) for k, a, b, w in
              zip(keys[live[firsts]].tolist(), off[firsts].tolist(), end[lasts].tolist(), whole[firsts].tolist())]
    rows, edges = live.tolist(), firsts.tolist() + [live.size]
    return ranges, [rows[a:b] for a, b in zip(edges[:-1], edges[1:])]  # slices of one list: np.split costs ~5 us a range


def fetch_files(store: LocalStore, keys: list, alloc: Any, align: int, missing: list | None) -> FetchedBatch:
    """Whole chunk files, each sized on its open descriptor and read straight into its place in
    one staging buffer (at `align`-ed offsets); a file that is not there reads as the fill value.
    A file replaced or deleted between being sized and read (zarr-python writes a file as a new
    one renamed over the old, and deletes one that holds only the fill value) is read again,
    whole and alone, and the batch laid out anew: each chunk is one version of its file."""
    layout: list = []

    def place(sizes: list) -> list:
        staging, token, positions, views = _lay_out(sizes, alloc, align)
        layout.extend((staging, token, positions, sizes))
        return views

    counts = store.read_files_into(keys, place)
    staging, token, positions, sizes = layout
    changed = [i for i, (size, count) in enumerate(zip(sizes, counts)) if size is not None and count != size]
    if changed:
        again = dict(zip(changed, store.read_ranges([(keys[i], 0, None) for i in changed])))
        blobs = [again[i] if i in again else None if size is None else bytes(staging[pos:pos + size])
                 for i, (pos, size) in enumerate(zip(positions, sizes))]  # (copied: alloc may give the same memory)
        sizes = [None if blob is None else len(blob) for blob in blobs]
        staging, token, positions, views = _lay_out(sizes, alloc, align)
        for view, blob in zip(views, blobs):
            if blob:
                view[:] = blob
    if missing is not None:
        missing.extend(key for key, size in zip(keys, sizes) if size is None)
    return FetchedBatch(staging, np.array(positions, np.int64), np.array([size or 0 for size in sizes], np.int64),
                        np.array([size is not None for size in sizes], dtype=bool), keys, token)


def _lay_out(sizes: list, alloc: Any, align: int) -> tuple[np.ndarray, Any, list[int], list[memoryview]]:
    """Staging for files of `sizes` (None: no file) back to back at `align`-ed offsets: (the
    buffer, its allocator's token, each file's position, a view of each file's place)."""
    stored = [size or 0 for size in sizes]
    padded = stored if align <= 1 else [-(-size // align) * align for size in stored]
    positions = list(itertools.accumulate(padded, initial=0))
    staging, token = _allocated(alloc, positions[-2] + stored[-1] if stored else 0)
    view = memoryview(staging)
    return staging, token, positions[:-1], [view[pos:pos + size] for pos, size in zip(positions, stored)]


def fetch_bounded(store: LocalStore, ranges: list, members: list, offsets: np.ndarray, sizes: np.ndarray,
                   present: np.ndarray, labels: list, alloc: Any, align: int, compact: bool = False) -> FetchedBatch:
    """Byte ranges of known size (from shard indexes checked against the shard's size, or from
    the file's size): the staging buffer is allocated once and read into directly. With `align`
    > 1 every chunk starts at a multiple of it (the GPU decoder's input alignment), read there
    by the range's one scattering preadv: no second copy to line chunks up. With `compact` the
    chunks of ranges with gaps (bytes coalescing reads anyway) land back to back, the gaps read
    into a scratch buffer: a CPU task's part (PendingBatch.part), so that zstd decodes it in one
    libzstd call (Zstd._decode_runs), not a group call whose frames are copied into rows under
    the GIL (64 unaligned 256^2 windows of the 2-D set in one read_batch: warm 0.95x, cold
    0.84-0.88x). Not for the few chunks of a small read, decoded one by one (16 windows one by
    one: 1.07x), nor for the GPU, whose decoder takes a pointer per chunk wherever it lies."""
    if align > 1 or (compact and sum(stop - start for _, start, stop in ranges) != int(sizes[present].sum())):
        staging, token, pieces, out_off = _scattered_pieces(ranges, members, offsets, sizes, alloc, align)
    else:
        positions = list(itertools.accumulate((stop - start for _, start, stop in ranges), initial=0))
        staging, token = _allocated(alloc, positions.pop())
        view = memoryview(staging)
        pieces = [[view[pos:pos + stop - start]] for (_, start, stop), pos in zip(ranges, positions)]
        out_off = _landing(members, positions, [start for _, start, _ in ranges], offsets, present.size)
    counts = store.read_ranges_into(ranges, pieces)
    for (key, start, stop), idx, count in zip(ranges, members, counts):
        if stop == 0 and not present[idx[0]]:
            continue  # a missing chunk file
        if count is None:
            raise CorruptDataError(f"{key}: disappeared while being read")
        if count != stop - start:
            raise CorruptDataError(f"{key}: bytes {start}..{stop} were expected (from the shard index or the "
                                   f"file size), {start + count} exist")
    return FetchedBatch(staging, np.asarray(out_off, np.int64), np.where(present, sizes, 0), present, labels, token)


def _landing(members: list, positions: list, starts: list, offsets: np.ndarray, n: int) -> np.ndarray:
    """Where each of n chunks lands in staging: its range's position there, plus its offset less
    the range's first byte (0 for chunks in no range). Python integers for a few chunks (array
    calls cost more), one scatter for many (a per-chunk loop took ~0.1 us a chunk, 0.4 ms for
    4096)."""
    if n <= LANDING_ARRAYS:
        out = [0] * n
        offs = offsets.tolist()
        for idx, pos, start in zip(members, positions, starts):
            for i in idx:
                out[i] = pos + offs[i] - start
        return np.array(out, np.int64)
    counts = np.fromiter(map(len, members), np.int64, len(members))
    order = np.fromiter(itertools.chain.from_iterable(members), np.int64, int(counts.sum()))
    out = np.zeros(n, np.int64)
    out[order] = offsets[order] + np.repeat(np.array(positions, np.int64) - np.array(starts, np.int64), counts)
    return out


def _scattered_pieces(ranges: list, members: list, offsets: np.ndarray, sizes: np.ndarray, alloc: Any,
                      align: int) -> tuple[np.ndarray, Any, list, np.ndarray]:
    """Staging with each chunk at a multiple of `align` (1: the chunks back to back), and per
    range the buffers its preadv fills: a slice of staging per run of chunks that lie back to
    back both in the file and in staging, each gap between them (bytes coalescing reads anyway)
    in a scratch buffer. Offsets are whole-batch array operations; the buffers, one slice a run
    (not a chunk: 64 windows of 2d-64's 8 KiB chunks read with 1 ms less CPU so)."""
    order = np.fromiter(itertools.chain.from_iterable(members), np.int64)  # chunks in file order, range by range
    size, offs = sizes[order], offsets[order]
    padded = -(-size // align) * align
    pos = np.cumsum(padded) - padded
    out_off = np.zeros(offsets.size, np.int64)
    out_off[order] = pos
    staging, token = _allocated(alloc, int(pos[-1] + size[-1]) if order.size else 0)
    firsts = np.fromiter(itertools.accumulate(map(len, members[:-1]), initial=0), np.int64, len(members))
    gaps = np.zeros(order.size, np.int64)
    gaps[1:] = offs[1:] - (offs[:-1] + size[:-1])
    gaps[firsts] = 0  # a range starts at its first chunk (within a range chunks follow each other: see fetch)
    runs = gaps > 0
    runs[firsts] = True
    runs[1:] |= padded[:-1] != size[:-1]  # padding before the chunk in staging
    lo = np.flatnonzero(runs)  # each run's first chunk
    hi = np.append(lo[1:], order.size) - 1  # and its last
    owner = np.searchsorted(firsts, lo, side="right") - 1  # the range of each run
    view = memoryview(staging)
    scratch = memoryview(bytearray(int(gaps.max()))) if order.size else None
    pieces: list[list] = [[] for _ in ranges]
    for k, gap, a, b in zip(owner.tolist(), gaps[lo].tolist(), pos[lo].tolist(), (pos[hi] + size[hi]).tolist()):
        if gap:
            pieces[k].append(scratch[:gap])
        pieces[k].append(view[a:b])
    return staging, token, pieces, out_off


def _allocated(alloc: Any, nbytes: int) -> tuple[np.ndarray, Any]:
    """`alloc(nbytes)`: a buffer, or (a buffer, a token its device wants back with it)."""
    got = alloc(nbytes)
    return got if isinstance(got, tuple) else (got, None)
