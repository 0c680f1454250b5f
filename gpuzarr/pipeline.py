"""One read, start to end: plan → locate → (fetch → decode → place) per batch.
The same code drives every device; only `decode_and_place` differs, and where the fetch runs:
staged ahead of the device (the GPU, remote stores) or inside the CPU's decoding tasks (local
files, whose reads are syscalls best run on the core that decodes the bytes next)."""

from __future__ import annotations

import math
import threading
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import forksafe
from .devices.base import AutoDevice, Device, check_gpu_usable, settle
from .fetch import (
    FetchedBatch,
    IndexCache,
    Locations,
    Locator,
    PendingBatch,
    Slot,
    fetch,
    thread_slot,
)
from .errors import CorruptDataError, SettingsError, StoreError
from .metadata import ArrayMetadata
from .plan import Boxes, Plan, make_plan
from .report import ReadReport
from .selection import DimSelection, out_shape
from .store import LocalStore, ReadIO, Store, counted


@dataclass(frozen=True)
class Settings:
    batch_bytes: int | None = None  # compressed bytes per batch; None: the device's preference
    batch_chunks: int = 1 << 16  # and at most this many chunks
    batch_decoded_bytes: int = 1 << 30  # and at most this many decoded bytes (the GPU's scratch)
    index_cache_bytes: int = 64 << 20  # decoded shard indexes kept per array
    threads: int | None = None  # the CPU device's pool; None: $GPUZARR_THREADS, else the CPU
    #                             affinity (a DataLoader worker's share of it)
    deadline_seconds: float | None = None  # a read still fetching after this long raises DeadlineError

    def __post_init__(self) -> None:
        seconds = self.deadline_seconds
        if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, (int, float))
                                    or not math.isfinite(seconds) or seconds <= 0):
            raise SettingsError(f"Settings.deadline_seconds must be a number of seconds > 0 or None, not {seconds!r}")
        for name, least, optional in (("batch_bytes", 1, True), ("batch_chunks", 1, False),
                                      ("batch_decoded_bytes", 1, False), ("index_cache_bytes", 0, False),
                                      ("threads", 1, True)):
            value = getattr(self, name)
            if value is None and optional:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise SettingsError(f"Settings.{name} must be an integer >= {least}"
                                    f"{' or None' if optional else ''}, not {value!r}")


_IO = forksafe.LazyPool(4, "gpuzarr-io")  # fetches ahead in staged reads
# a batch from a store whose requests take a round trip: one batch's requests all go out at
# once, the next batch's only when a slot frees, so a read of a few batches pays a few round
# trips (a 4.4 MiB read in two 4 MiB batches at 20 ms: 17 GETs in two round trips, 1.3x
# tensorstore's time); compressed bytes in hand stay bounded by two of these
REMOTE_BATCH_BYTES = 64 << 20


class Reader:
    """Everything a read of one array needs that does not depend on the selection."""

    def __init__(self, meta: ArrayMetadata, store: Store, settings: Settings = Settings()):
        self.meta, self.store, self.settings = meta, store, settings
        self.locator = Locator(meta, store, IndexCache(settings.index_cache_bytes))

    def read(self, windows: list[list[DimSelection]] | Boxes, batched: bool, device: Device, out: Any = None,
             report: ReadReport | None = None) -> Any:
        try:
            return self._read(windows, batched, device, out, report)
        except (StoreError, CorruptDataError) as exc:
            _name_array(exc, self.store)
            raise

    def _read(self, windows: list[list[DimSelection]] | Boxes, batched: bool, device: Device, out: Any,
              report: ReadReport | None) -> Any:
        """The read, through a counted view of the store (see gpuzarr.store.counted) when it is
        reported or has a deadline; the bare store, at no cost, otherwise."""
        if device.name == "gpu":
            check_gpu_usable()
        seconds = self.settings.deadline_seconds
        io = None
        store, locator = self.store, self.locator
        if report is not None or seconds is not None:
            report = report if report is not None else ReadReport()
            io = ReadIO(report, self.store, seconds)
            store = counted(self.store, io)
            locator = _with_store(self.locator, store)
        else:
            report = ReadReport()
        dtype = self.meta.data_type.dtype
        if isinstance(windows, Boxes):
            shape = (windows.starts.shape[0],) + windows.out_shape
        else:
            shape = ((len(windows),) if batched else ()) + out_shape(windows[0])
        if 0 in shape:  # nothing selected: no runs to plan, however long the other axes
            report.device = device.name
            return _output(device, shape, dtype, out)
        with report.timed("plan"):
            plan = make_plan(windows, locator.leaf_shape, batched)
        with report.timed("locate"):
            loc = locator.locate(plan.chunks)
            order = loc.storage_order()
            if order is not None:
                plan, loc = plan.reorder(order), loc.take(order)
        chain = locator.leaf_chain
        if isinstance(device, AutoDevice):
            estimate = _stored_bytes(loc, chain)
            chosen = device.choose(estimate)
            if chosen is not device.gpu:  # small: decode on the CPU, then one copy up
                report.notes.append(f"auto: {estimate} compressed bytes is below {device.cpu_below}; "
                                    f"decoded on the CPU and copied to the GPU")
                host = self._run(plan, loc, chain, chosen, _output(chosen, shape, dtype, None), report, store, io)
                return device.upload(host, out)
            device = chosen
        out = _output(device, shape, dtype, out)
        return self._run(plan, loc, chain, device, out, report, store, io)

    def _run(self, plan: Plan, loc: Locations, chain: Any, device: Device, out: Any, report: ReadReport,
             store: Store, io: ReadIO | None) -> Any:
        """`store`: the store or the read's counted view of it; `io` bounds the waits (a deadline).
        On any failure, the deadline's included, every task queued is settled before the error
        is raised: nothing writes into `out` after the read ends."""
        report.device = device.name
        report.chunks += plan.n_chunks
        report.chunks_absent += int((~loc.present).sum())
        report.missing_keys += loc.missing
        report.placements += plan.place_chunk.size
        batch_bytes = self.settings.batch_bytes or device.batch_bytes
        if not isinstance(self.store, LocalStore) and not self.settings.batch_bytes:
            batch_bytes = max(batch_bytes, REMOTE_BATCH_BYTES)
        bounds = self._batches(loc, chain.raw_nbytes, batch_bytes)
        report.batches += len(bounds)
        fill = self.meta.fill_value
        started: list = []  # every task queued: none may still write into `out` once the read ends
        try:
            if device.reads_in_tasks and isinstance(self.store, LocalStore) and (len(bounds) > 1 or _large(loc, chain)):
                # local files: each task reads its own chunks just before decoding them, on every
                # core at once; no staging slots, no I/O thread
                for lo, hi in bounds:
                    pending = PendingBatch(store, loc, np.arange(lo, hi), report.missing_keys)
                    started += self._decode(device, pending, chain, out, plan, lo, fill, report, sole=len(bounds) == 1)
            elif len(bounds) == 1:  # nothing to overlap with: no thread hand-off; small: one read
                with report.timed("fetch"):
                    batch = fetch(store, loc, np.arange(*bounds[0]), device.staging_alloc or _reused_staging,
                                  device.staging_align, report.missing_keys)
                started += self._decode(device, batch, chain, out, plan, 0, fill, report, sole=True)
            else:
                self._staged(bounds, plan, loc, chain, device, out, fill, report, started, store, io)
            _wait(started, report, io)
            with report.timed("finish"):
                device.finish()
        except BaseException:
            settle(started)
            device.abort()
            raise
        return out

    def _staged(self, bounds: list, plan: Plan, loc: Locations, chain: Any, device: Device, out: Any, fill: Any,
                report: ReadReport, started: list, store: Store, io: ReadIO | None) -> None:
        """Batch k starts decoding before the last tasks of batch k-1 end, so no core idles at a
        batch boundary; batch k+1 is fetched into batch k-1's slot once batch k-1 is done, while
        batch k decodes: two slots of staging per read. Tasks are appended to `started` as they
        are queued, so a failure settles every one of them. The fetch in flight is waited for
        where it writes into the device's staging, which a later read reuses (a remote fetch ends
        by the deadline, see ReadIO); this read's own slots it may fill after the read is over."""
        cost = np.where(loc.sizes >= 0, loc.sizes, 0)
        reserve = max(int(cost[lo:hi].sum()) for lo, hi in bounds)
        slots = (device.staging_alloc,) * 2 if device.staging_alloc else (Slot(reserve), Slot(reserve))
        pending = _IO.submit(fetch, store, loc, np.arange(*bounds[0]), slots[0], device.staging_align,
                             report.missing_keys)
        done = len(started)  # started[:done]: the tasks of batches before k-1
        try:
            for k, (lo, _) in enumerate(bounds):
                with report.timed("fetch"):
                    batch = _result(pending, io)
                before = len(started)
                started += self._decode(device, batch, chain, out, plan, lo, fill, report)
                _wait(started[done:before], report, io)
                done = before
                if k + 1 < len(bounds):
                    pending = _IO.submit(fetch, store, loc, np.arange(*bounds[k + 1]), slots[(k + 1) % 2],
                                         device.staging_align, report.missing_keys)
        except BaseException:
            if device.staging_alloc:
                settle([pending])
            else:
                pending.cancel()
            raise

    @staticmethod
    def _decode(device: Device, batch: Any, chain: Any, out: Any, plan: Plan, first: int, fill: Any,
                report: ReadReport, sole: bool = False) -> list:
        if isinstance(batch, FetchedBatch):  # a PendingBatch is counted by the tasks that read it
            report.add(compressed=batch.staging.nbytes, decoded=int(batch.present.sum()) * (chain.raw_nbytes or 0))
        with report.timed("decode"):
            return device.decode_and_place(batch, chain, out, plan, first, fill, report, sole)

    def _batches(self, loc: Locations, raw_nbytes: int | None, batch_bytes: int) -> list[tuple[int, int]]:
        """Split chunks (in storage order) into batches of bounded compressed size."""
        guess = raw_nbytes or (1 << 20)  # whole objects: their size is known only once read
        cost = np.where(loc.sizes >= 0, loc.sizes, guess).cumsum()
        bounds, lo, n = [], 0, cost.size
        while lo < n:
            base = cost[lo - 1] if lo else 0
            hi = int(np.searchsorted(cost, base + batch_bytes, side="right"))
            by_decoded = self.settings.batch_decoded_bytes // max(raw_nbytes or 1, 1)
            hi = min(max(hi, lo + 1), lo + self.settings.batch_chunks, lo + max(1, by_decoded), n)
            bounds.append((lo, hi))
            lo = hi
        return bounds


def _large(loc: Locations, chain: Any) -> bool:
    """More compressed bytes than a reused staging slot holds (sizes summed only if they might)."""
    return loc.present.size * (chain.raw_nbytes or 0) > REUSED_STAGING and _stored_bytes(loc, chain) > REUSED_STAGING


def _stored_bytes(loc: Locations, chain: Any) -> int:
    """Compressed bytes of the chunks present (a whole chunk file counts as its decoded size)."""
    return int(np.where(loc.sizes >= 0, loc.sizes, chain.raw_nbytes or 0)[loc.present].sum())


def _wait(futures: list, report: ReadReport, io: ReadIO | None = None) -> None:
    with report.timed("decode"):
        for future in futures:
            _result(future, io)  # instant for those already waited for


def _result(future: Any, io: ReadIO | None) -> Any:
    """future.result(), waiting no longer than the read's deadline (DeadlineError past it)."""
    if io is None or io.deadline is None:
        return future.result()
    try:
        return future.result(io.remaining())
    except FutureTimeout:
        if future.done():  # the task's own TimeoutError
            raise
        raise io.expired() from None


def _with_store(locator: Locator, store: Store) -> Locator:
    """A shallow copy of `locator` reading through `store` (a read's counted view): everything
    else, the index cache included, is shared. Not copy.copy: this is 5x cheaper (0.35 us)."""
    view = object.__new__(type(locator))
    view.__dict__.update(locator.__dict__)
    view.store = store
    return view


def _name_array(exc: BaseException, store: Store) -> None:
    """Put the array's URL in front of a store or data error's message, once: not where the
    message names it already (a store's errors name the full path of the key)."""
    if len(exc.args) != 1 or not isinstance(exc.args[0], str):
        return
    text, url, root = exc.args[0], store.url, getattr(store, "root", "")
    if url in text or (root and f"{root}/" in text):
        return
    exc.args = (f"{url}: {text}",)


_thread = threading.local()
REUSED_STAGING = 1 << 20  # staging up to this size is this thread's reused slot, not a new buffer


def _reused_staging(nbytes: int) -> np.ndarray:
    """Staging for a single-batch read on this thread: every use of it ends before the read
    returns, so the next read on the thread may reuse it (sparing fresh, page-faulting memory)."""
    return thread_slot(_thread, "staging", nbytes, REUSED_STAGING)


def _output(device: Device, shape: tuple, dtype: Any, out: Any) -> Any:
    if out is None:
        return device.empty(shape, dtype)
    device.check_output(out, shape, dtype)
    return out
