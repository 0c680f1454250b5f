"""One read, start to end: plan → locate → (fetch → decode → place) per batch.
The same code drives every device; only `decode_and_place` differs."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
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
    batch_bytes: int | None = None  # compressed bytes per batch; None: the device's preference
    batch_chunks: int = 1 << 16  # and at most this many chunks
    index_cache_bytes: int = 64 << 20  # decoded shard indexes kept per array


_IO = ThreadPoolExecutor(4, thread_name_prefix="gpuzarr-io")


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
        bounds = self._batches(loc, chain.raw_nbytes, self.settings.batch_bytes or device.batch_bytes)
        if len(bounds) == 1:  # nothing to overlap with: no thread hand-off
            device.decode_and_place(fetch(self.store, loc, np.arange(*bounds[0])), chain, out, plan, 0,
                                    self.meta.fill_value)
            device.finish()
            return out
        # double buffering: batch k+1 is fetched while batch k decodes
        pending = _IO.submit(fetch, self.store, loc, np.arange(*bounds[0]))
        for k, (lo, hi) in enumerate(bounds):
            batch = pending.result()
            if k + 1 < len(bounds):
                pending = _IO.submit(fetch, self.store, loc, np.arange(*bounds[k + 1]))
            device.decode_and_place(batch, chain, out, plan, lo, self.meta.fill_value)
        device.finish()
        return out

    def _batches(self, loc: Locations, raw_nbytes: int | None, batch_bytes: int) -> list[tuple[int, int]]:
        """Split chunks (in storage order) into batches of bounded compressed size."""
        guess = raw_nbytes or (1 << 20)  # whole objects: their size is known only once read
        cost = np.where(loc.sizes >= 0, loc.sizes, guess).cumsum()
        bounds, lo, n = [], 0, cost.size
        while lo < n:
            base = cost[lo - 1] if lo else 0
            hi = int(np.searchsorted(cost, base + batch_bytes, side="right"))
            hi = min(max(hi, lo + 1), lo + self.settings.batch_chunks, n)
            bounds.append((lo, hi))
            lo = hi
        return bounds
