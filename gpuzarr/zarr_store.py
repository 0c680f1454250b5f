"""A zarr-python store as a gpuzarr Store: local directories become gpuzarr's own local store
(reads into staging, in the decoding tasks); every other store (memory, fsspec, object
stores, wrappers) is read through its own async API on zarr-python's event loop, each batch's
ranges at once, as zarr-python's own pipeline reads them: whole chunks and shard indexes with
`get`, a shard's coalesced chunk ranges with one `get_ranges` per shard (zarr-python >= 3.2)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from fsspec.implementations.local import LocalFileSystem
from zarr.abc.store import OffsetByteRequest, RangeByteRequest, SuffixByteRequest
from zarr.core.buffer import default_buffer_prototype
from zarr.core.config import config
from zarr.storage import LocalStore as ZarrLocalStore

from .errors import StoreError
from .store import LocalStore, Range, Store, _reason


def gpuzarr_store(store: Any, prefix: str) -> Store:
    """The gpuzarr Store of the array at `prefix` in zarr-python store `store`."""
    if type(store) is ZarrLocalStore:  # a subclass may change what get returns: its own get then
        root = store.root / prefix if prefix else store.root
        return LocalStore(LocalFileSystem(), str(root))
    return ZarrStore(store, prefix)


class ZarrStore(Store):
    """Reads through a zarr-python store from a pipeline thread. `loop` is the event loop the
    read was called on (zarr-python's), which awaits that thread meanwhile; `coalesce` the
    array's get_ranges limits (its config's sharding_coalesce_* where zarr-python has them)."""

    vanished_is_missing = True  # as zarr-python's sharding codec reads a shard gone after its index
    reads_whole_shards = False  # as zarr-python reads shards: the index, then the chunks' ranges
    keeps_indexes = False  # read anew each read, as zarr-python's own pipeline does: another
    #                        writer may have changed them since

    def __init__(self, store: Any, prefix: str):
        self.store, self.root, self.loop = store, prefix, None
        self.coalesce: dict[str, int] = {}
        self._forked = False

    def __reduce__(self) -> tuple:
        raise TypeError("a gpuzarr view of a zarr-python store does not pickle: pickle the zarr array")

    @property
    def url(self) -> str:
        return f"{self.store}/{self.root}" if self.root else str(self.store)

    def path(self, key: str) -> str:
        return f"{self.root}/{key}" if self.root and key else key or self.root

    def read_indexes(self, ranges: Sequence[Range]) -> list[bytes | None]:
        return self._run(ranges, by_key=False)

    def read_ranges(self, ranges: Sequence[Range]) -> list[bytes | None]:
        return self._run(ranges, by_key=hasattr(self.store, "get_ranges"))

    def _run(self, ranges: Sequence[Range], by_key: bool) -> list[bytes | None]:
        if not ranges:
            return []
        if self.loop is None:
            raise StoreError(f"{self.url}: read outside a zarr-python read", ranges[0][0])
        return asyncio.run_coroutine_threadsafe(self._read(ranges, by_key), self.loop).result()

    async def _read(self, ranges: Sequence[Range], by_key: bool) -> list[bytes | None]:
        limit = asyncio.Semaphore(_concurrency())
        results: list[bytes | None] = [None] * len(ranges)
        singles, per_key = [], {}
        for i, (key, start, stop) in enumerate(ranges):
            if by_key and stop is not None:
                per_key.setdefault(key, []).append(i)
            else:
                singles.append(i)

        async def get(i: int) -> None:
            key, start, stop = ranges[i]
            async with limit:
                try:
                    buf = await self.store.get(self.path(key), default_buffer_prototype(),
                                               byte_range=_request(start, stop))
                except Exception as exc:
                    raise self._error(key, exc) from exc
            results[i] = None if buf is None else buf.to_bytes()

        async def get_ranges(key: str, rows: list[int]) -> None:
            requests = [RangeByteRequest(ranges[i][1], ranges[i][2]) for i in rows]
            async with limit:
                try:
                    async for group in self.store.get_ranges(self.path(key), requests,
                                                             prototype=default_buffer_prototype(),
                                                             max_concurrency=_concurrency(), **self.coalesce):
                        for j, buf in group:
                            results[rows[j]] = None if buf is None else buf.to_bytes()
                except Exception as exc:
                    if not _absent(exc):
                        raise self._error(key, exc) from exc
                    for i in rows:  # the key is gone: every range of it reads as absent
                        results[i] = None

        await asyncio.gather(*(get(i) for i in singles), *(get_ranges(k, rows) for k, rows in per_key.items()))
        return results

    def _error(self, key: str, exc: BaseException) -> StoreError:
        return StoreError(f"{self.url}/{key}: read failed ({_reason(exc)})", key, exc)


def _concurrency() -> int:
    return max(1, int(config.get("async.concurrency") or 1))


def _absent(exc: BaseException) -> bool:
    """A missing key, alone or inside get_ranges' exception group."""
    return isinstance(exc, FileNotFoundError) or any(_absent(e) for e in getattr(exc, "exceptions", ()))


def _request(start: int, stop: int | None) -> Any:
    if stop is not None:
        return RangeByteRequest(start, stop)
    if start < 0:
        return SuffixByteRequest(-start)
    return OffsetByteRequest(start) if start else None
