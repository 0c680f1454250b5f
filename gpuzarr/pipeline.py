"""One read, start to end: plan → locate → (fetch → decode → place) per batch.
The same code drives every device; only `decode_and_place` differs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .devices.base import Device
from .fetch import IndexCache, Locations, Locator, fetch
from .metadata import ArrayMetadata
from .plan import make_plan
from .selection import DimSelection, out_shape
from .store import Store


@dataclass(frozen=True)
class Settings:
    batch_bytes: int = 64 << 20  # compressed bytes fetched and decoded per batch
    batch_chunks: int = 1 << 16  # and at most this many chunks
    index_cache_bytes: int = 64 << 20  # decoded shard indexes kept per array


class Reader:
    """Everything a read of one array needs that does not depend on the selection."""

    def __init__(self, meta: ArrayMetadata, store: Store, settings: Settings = Settings()):
        self.meta, self.store, self.settings = meta, store, settings
        self.locator = Locator(meta, store, IndexCache(settings.index_cache_bytes))

    def read(self, windows: list[list[DimSelection]], batched: bool, device: Device, out: Any = None) -> Any:
        dtype = self.meta.data_type.dtype
        shape = ((len(windows),) if batched else ()) + out_shape(windows[0])
        if out is None:
            out = device.empty(shape, dtype)
        else:
            device.check_output(out, shape, dtype)
        plan = make_plan(windows, self.locator.leaf_shape, batched)
        if plan.n_chunks == 0:
            return out
        loc = self.locator.locate(plan.chunks)
        order = loc.storage_order()
        plan = plan.reorder(order)
        loc = Locations(loc.keys[order], loc.offsets[order], loc.sizes[order], loc.present[order])
        chain = self.locator.leaf_chain
        for lo, hi in self._batches(loc, chain.raw_nbytes):
            batch = fetch(self.store, loc, np.arange(lo, hi))
            device.decode_and_place(batch, chain, out, plan, lo, self.meta.fill_value)
        return out

    def _batches(self, loc: Locations, raw_nbytes: int | None) -> list[tuple[int, int]]:
        """Split chunks (in storage order) into batches of bounded compressed size."""
        guess = raw_nbytes or (1 << 20)  # whole objects: their size is known only once read
        cost = np.where(loc.sizes >= 0, loc.sizes, guess).cumsum()
        bounds, lo, n = [], 0, cost.size
        while lo < n:
            base = cost[lo - 1] if lo else 0
            hi = int(np.searchsorted(cost, base + self.settings.batch_bytes, side="right"))
            hi = min(max(hi, lo + 1), lo + self.settings.batch_chunks, n)
            bounds.append((lo, hi))
            lo = hi
        return bounds
