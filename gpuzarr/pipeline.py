"""One read, start to end: plan → locate → (fetch → decode → place) per batch.
The same code drives every device; only `decode_and_place` differs, and where the fetch runs:
staged ahead of the device (the GPU, remote stores) or inside the CPU's decoding tasks (local
files, whose reads are syscalls best run on the core that decodes the bytes next)."""

from __future__ import annotations

import contextlib
import math
import queue
import threading
from concurrent.futures import FIRST_COMPLETED
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass
from collections.abc import Iterator
from typing import Any

import numpy as np

from . import forksafe
from .devices.base import AutoDevice, Device, check_gpu_chain, check_gpu_usable, gpu_refusal, settle
from .fetch import (
    FetchedBatch,
    IndexCache,
    Landing,
    Locations,
    Locator,
    PendingBatch,
    Slot,
    fetch,
    on_disk,
    prefetch,
    shards_batch,
    thread_slot,
)
from .errors import CorruptDataError, DeviceMemoryError, SettingsError, StoreError, UnsupportedFeatureError
from .metadata import ArrayMetadata
from .plan import Boxes, Plan, make_plan
from .report import ReadReport
from .selection import DimSelection, out_shape
from .small_read import SmallReads
from .store import ChangedError, LocalStore, ReadIO, Store, counted


@dataclass(frozen=True)
class Settings:
    batch_bytes: int | None = None  # compressed bytes per batch; None: the device's preference
    batch_chunks: int = 1 << 16  # and at most this many chunks
    batch_decoded_bytes: int = 1 << 30  # and at most this many decoded bytes (the GPU's scratch)
    index_cache_bytes: int = 64 << 20  # decoded shard indexes kept per array
    threads: int | None = None  # the CPU device's pool; None: $GPUZARR_THREADS, else the CPU
    #                             affinity (a DataLoader worker's share of it)
    deadline_seconds: float | None = None  # a read still fetching after this long raises DeadlineError
    bytes_in_flight: int = 256 << 20  # a remote read's compressed bytes requested or held undecoded
    #                                   (see Reader._run_pieces), about
    requests_in_flight: int | None = None  # a read's requests to object storage at once (obstore);
    #                                        None: $GPUZARR_REQUESTS, else 64, for the whole process
    request_timeout_seconds: float | None = None  # each request to object storage, connect to last body
    #   byte, before it fails (and is retried); None: the backend's default (obstore: 25 s). Set on
    #   the obstore client gpuzarr.open makes from a URL (and a forked child's s3fs fallback); an
    #   obstore store or fsspec filesystem passed in, or a URL fsspec opens, keeps its own timeouts:
    #   fsspec has none common to its filesystems (s3fs: config_kwargs read_timeout; HTTP:
    #   client_kwargs timeout), so give them in storage_options

    def __post_init__(self) -> None:
        for name in ("deadline_seconds", "request_timeout_seconds"):
            seconds = getattr(self, name)
            if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, (int, float))
                                        or not math.isfinite(seconds) or seconds <= 0):
                raise SettingsError(f"Settings.{name} must be a number of seconds > 0 or None, not {seconds!r}")
        for name, least, optional in (("batch_bytes", 1, True), ("batch_chunks", 1, False),
                                      ("batch_decoded_bytes", 1, False), ("index_cache_bytes", 0, False),
                                      ("threads", 1, True), ("bytes_in_flight", 1, False),
                                      ("requests_in_flight", 1, True)):
            value = getattr(self, name)
            if value is None and optional:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise SettingsError(f"Settings.{name} must be an integer >= {least}"
                                    f"{' or None' if optional else ''}, not {value!r}")


CHANGED_RETRIES = 2  # reads made again when a shard changes under them (see Reader.read)
_IO = forksafe.LazyPool(4, "gpuzarr-io")  # fetches ahead in staged reads
# a batch from a store whose requests take a round trip: one batch's requests all go out at
# once, the next batch's only when a slot frees, so a read of a few batches pays a few round
# trips (a 4.4 MiB read in two 4 MiB batches at 20 ms: 17 GETs in two round trips, 1.3x
# tensorstore's time); compressed bytes in hand stay bounded by two of these
REMOTE_BATCH_BYTES = 64 << 20
# a remote read of at least two of these (estimated as decoded bytes) runs in about PIECES
# pieces whose requests are in flight together (see Reader._run_pieces), on threads that wait
PIECE_BYTES = 16 << 20
# A remote batch read range by range (Reader._landed) hands the ranges that landed to the device
# once none has landed for this long: ranges landing together decode as one part, not one part
# each. Sharded set at 20 ms, 16 shard GETs landing within ~3 ms, against the whole batch at once,
# alternated in-process: each range alone 1.03-1.11x, 1 ms 0.99-1.01x (3 ms alike); with an
# exponential jitter of mean 10 ms on every request 0.82-0.85x (full read and read_batch)
LANDING_SETTLE = 1e-3
PIECES = 8
PIECE_THREADS = 16
# compressed bytes of a cold local read handed to the kernel past the parts its tasks have started
# (see _Ahead), and before they start (64 cold 2-D windows in one read_batch: 1, 2, 4 or 8 MiB
# ahead alike within the noise; the whole read handed over at once, as before, 1.01-1.13x)
AHEAD_BYTES = 4 << 20
_PIECES = forksafe.LazyPool(PIECE_THREADS, "gpuzarr-pieces")


class Reader:
    """Everything a read of one array needs that does not depend on the selection."""

    def __init__(self, meta: ArrayMetadata, store: Store, settings: Settings = Settings()):
        self.meta, self.store, self.settings = meta, store, settings
        self.locator = Locator(meta, store, IndexCache(settings.index_cache_bytes))
        self.small = SmallReads(self.locator)

    def read(self, windows: list[list[DimSelection]] | Boxes, batched: bool, device: Device, out: Any = None,
             report: ReadReport | None = None) -> Any:
        """The read; made again, up to CHANGED_RETRIES times, where a shard changed under it (its
        index had been read from an older version of the object: see ChangedError), or where
        local files read as corrupt: zarr-python replaces a file by a rename, so a read racing a
        writer may meet a shard's index and its chunks, or a chunk file's size and its bytes, of
        two versions (what is corrupt stays so, and is raised after the last attempt)."""
        attempts, whole = 0, False
        while True:
            try:
                return self._read(windows, batched, device, out, report, whole)
            except (ChangedError, CorruptDataError) as exc:
                again = isinstance(exc, ChangedError) or type(self.store) is LocalStore
                whole = again  # the next attempt: every shard in one GET, or one read of its file
                attempts += 1
                if again and attempts <= CHANGED_RETRIES:
                    if report is not None:  # its counts add up every attempt's
                        report.notes.append(f"read again: {exc}")
                    continue
                if isinstance(exc, ChangedError):
                    exc.args = (f"{exc.args[0]}; {attempts} reads in a row",)
                elif attempts > 1:
                    exc.args = (f"{exc.args[0]}; the same in {attempts} reads",)
                _name_array(exc, self.store)
                raise
            except (StoreError, CorruptDataError, DeviceMemoryError, UnsupportedFeatureError) as exc:
                _name_array(exc, self.store)
                raise

    def _read(self, windows: list[list[DimSelection]] | Boxes, batched: bool, device: Device, out: Any,
              report: ReadReport | None, whole: bool = False) -> Any:
        """The read, through a counted view of the store (see gpuzarr.store.counted) when it is
        reported or has a deadline; the bare store, at no cost, otherwise. `whole`: every shard
        read whole where the store reads shards so (see Locator.every_shard_whole)."""
        if device.name == "gpu":
            check_gpu_usable()
            why = gpu_refusal(self.locator.leaf_chain)
            if why is not None and isinstance(device, AutoDevice):  # the GPU's result, the CPU's work
                host = self._read(windows, batched, device.cpu, None, report, whole)
                if report is not None:
                    report.notes.append(f"auto: {why}: decoded on the CPU and copied to the GPU")
                return device.upload(host, out)
            if why is not None:
                check_gpu_chain(self.locator.leaf_chain)  # raises, saying why
        seconds = self.settings.deadline_seconds
        io = None
        store, locator = self.store, self.locator
        requests = self.settings.requests_in_flight
        whole = whole and self.locator.can_read_whole
        small = self.small.applies and out is None and not whole
        if report is not None or seconds is not None or requests is not None:
            small = False  # counted, or bounded: the general path's business
            report = report if report is not None else ReadReport()
            io = ReadIO(report, self.store, seconds, requests)
            store = counted(self.store, io)
            locator = _with_store(self.locator, store)
        else:
            report = ReadReport()
        if whole:
            locator = _with_store(locator, locator.store)
            locator.every_shard_whole = True
        dtype = self.meta.data_type.dtype
        if isinstance(windows, Boxes):
            shape = (windows.starts.shape[0],) + windows.out_shape
        else:
            shape = ((len(windows),) if batched else ()) + out_shape(windows[0])
        if 0 in shape:  # nothing selected: no runs to plan, however long the other axes
            report.device = device.name
            return _output(device, shape, dtype, out)
        if small and (got := self.small.read(windows, batched, device, shape)) is not None:
            return got
        auto = isinstance(device, AutoDevice)  # its output's device is chosen after locating
        if not auto:  # an output that cannot be had fails now, not after a plan of it
            out = _output(device, shape, dtype, out)
        with report.timed("plan"):
            plan = make_plan(windows, locator.leaf_shape, batched)
            pieces = None
            if not isinstance(self.store, LocalStore) and not auto:
                pieces = _pieces(plan, locator)
        if pieces is not None:
            return self._run_pieces(*pieces, device, out, report, store, locator, io)
        if (not auto and self.store.lands_ranges and device.takes_landed(plan.n_chunks, locator.leaf_chain)
                and (shards := locator.whole_shards(plan.chunks)) is not None):
            return self._shards_landed(plan, *shards, device, out, report, store, locator, io)
        with report.timed("locate"):
            loc = locator.locate(plan.chunks)
            order = loc.storage_order()
            if order is not None:
                plan, loc = plan.reorder(order), loc.take(order)
        chain = locator.leaf_chain
        if auto:
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
        bounds = self._bounds(loc, chain.raw_nbytes, device)
        # local files: each task reads its own chunks just before decoding them, on every core at
        # once; no staging slots, no I/O thread. Also a batch of a few compressed bytes that the
        # pool decodes (not inline; reads_in_tasks: the CPU device): read on this thread first,
        # its tasks then took ~15 us a chunk of 8 KiB against ~10.5 read in tasks (2-D windows of
        # 81-169 such chunks: 0.69-0.74 of the time, 0.89-0.97 of tensorstore's, against 1.2-1.4)
        in_tasks = (device.reads_in_tasks and isinstance(self.store, LocalStore) and not loc.prefetched
                    and (len(bounds) > 1 or _large(loc, chain) or not device.inline(plan.n_chunks, chain)))
        ahead = _Ahead(store, loc, chain.raw_nbytes) if in_tasks else None  # probed before any task competes for the GIL
        if in_tasks and not ahead.pending and self.settings.batch_bytes is None:
            # warm: batches would only group the tasks (nothing is fetched ahead of them); as one,
            # this thread decodes beside the pool instead of waiting on it, and no thread is woken
            # to start (against batches, in-process, two runs: v2 full 0.91-0.93x, ML full 0.90-0.95x,
            # 3-D read_batch 0.94-0.95x, ML read_batch 0.97-0.98x, 64 2-D windows 0.97-1.0x, 3-D full
            # 1.01-1.05x)
            bounds = [(0, bounds[-1][1])]
        report.batches += len(bounds)
        fill = self.meta.fill_value
        started: list = []  # every task queued: none may still write into `out` once the read ends
        with _changed_first(self.locator, loc), _finished(device, started, report, io):
            if in_tasks:
                sole = len(bounds) == 1
                hand = ahead.reached if ahead.pending else None
                if hand is not None:
                    ahead.start(feeder=not sole)
                for lo, hi in bounds:
                    pending = PendingBatch(store, loc, np.arange(lo, hi), report.missing_keys, hand)
                    started += self._decode(device, pending, chain, out, plan, lo, fill, report, sole=sole)
                if hand is not None and not sole:
                    ahead.feed(started, io)
            elif (len(bounds) == 1 and device.takes_landed(plan.n_chunks, chain)
                  and (landing := Landing.of(store, loc, np.arange(*bounds[0])))):
                self._landed(landing, plan, chain, device, out, fill, report, started, io)
            elif len(bounds) == 1:  # nothing to overlap with: no thread hand-off; small: one read
                with report.timed("fetch"):
                    batch = fetch(store, loc, np.arange(*bounds[0]), device.staging_alloc or _reused_staging,
                                  device.staging_align(chain), report.missing_keys)
                started += self._decode(device, batch, chain, out, plan, 0, fill, report, sole=True)
            else:
                self._staged(bounds, plan, loc, chain, device, out, fill, report, started, store, io)
        self.locator.check_unchanged(loc.versions, loc.prefetched)
        return out

    def _staged(self, bounds: list, plan: Plan, loc: Locations, chain: Any, device: Device, out: Any, fill: Any,
                report: ReadReport, started: list, store: Store, io: ReadIO | None, base: int = 0) -> None:
        """Batch k starts decoding before the last tasks of batch k-1 end, so no core idles at a
        batch boundary; batch k+1 is fetched into batch k-1's slot once batch k-1 is done, while
        batch k decodes: two slots of staging per read. `loc`'s row 0 is plan chunk `base` (a piece,
        see _run_pieces). Tasks are appended to `started` as they
        are queued, so a failure settles every one of them. The fetch in flight is waited for
        where it writes into the device's staging, which a later read reuses (a remote fetch ends
        by the deadline, see ReadIO); this read's own slots it may fill after the read is over."""
        cost = np.where(loc.sizes >= 0, loc.sizes, 0)
        reserve = max(int(cost[lo:hi].sum()) for lo, hi in bounds)
        slots = (device.staging_alloc,) * 2 if device.staging_alloc else (Slot(reserve), Slot(reserve))
        align = device.staging_align(chain)
        pending = _IO.submit(fetch, store, loc, np.arange(*bounds[0]), slots[0], align, report.missing_keys)
        done = len(started)  # started[:done]: the tasks of batches before k-1
        try:
            for k, (lo, _) in enumerate(bounds):
                with report.timed("fetch"):
                    batch = _result(pending, io)
                before = len(started)
                started += self._decode(device, batch, chain, out, plan, base + lo, fill, report)
                _wait(started[done:before], report, io)
                done = before
                if k + 1 < len(bounds):
                    pending = _IO.submit(fetch, store, loc, np.arange(*bounds[k + 1]), slots[(k + 1) % 2], align,
                                         report.missing_keys)
        except BaseException:
            if device.staging_alloc:
                settle([pending])
            else:
                pending.cancel()
            raise

    def _landed(self, landing: Landing, plan: Plan, chain: Any, device: Device, out: Any, fill: Any,
                report: ReadReport, started: list, io: ReadIO | None) -> None:
        """A remote batch decoded range by range as its requests land (see Landing), its ranges
        read on an I/O thread. Whatever the ranges' bytes say, a shard that changed since its
        index was read (ChangedError, known once every range is in) is what this raises: the
        read is then made again. Tasks are appended to `started` as they are queued."""
        arrived: queue.SimpleQueue = queue.SimpleQueue()
        future = _IO.submit(landing.store.read_ranges, landing.ranges,
                            lambda k, blob: arrived.put((k, landing.land(k, blob))))
        future.add_done_callback(lambda _: arrived.put(None))
        try:
            for runs, left in _arrivals(arrived, landing.store, landing.ranges, future, report, io):
                for j, run in enumerate(runs, 1):
                    first = run[0][0]
                    batch = landing.batch(first, [blob for _, blob in run], report.missing_keys)
                    # the last: this thread, with nothing left to wait for, decodes beside the pool
                    started += self._decode(device, batch, chain, out, plan, landing.bounds[first][0], fill, report,
                                            sole=not left and j == len(runs))
            _result(future, io)
        except (CorruptDataError, StoreError) as exc:
            if not isinstance(exc, ChangedError) and (changed := _changed(future, io)) is not None:
                raise changed from None
            raise

    def _shards_landed(self, plan: Plan, group: np.ndarray, keys: list[str], device: Device, out: Any,
                       report: ReadReport, store: Store, locator: Locator, io: ReadIO | None) -> Any:
        """A cold remote read that reads each of its shards whole (see Locator.whole_shards): the
        shards are requested together, and each is located and decoded as it lands, while later
        ones are on their way, not once the slowest has landed. `group`: each plan chunk's
        shard, a number in `keys`. On failure every decoding task is settled."""
        order = np.argsort(group, kind="stable")
        if (np.diff(order) != 1).any():
            plan, group = plan.reorder(order), group[order]
        edges = np.searchsorted(group, np.arange(len(keys) + 1)).tolist()  # shard k: rows edges[k]..edges[k+1]-1
        chain = locator.leaf_chain
        report.device = device.name
        report.chunks += plan.n_chunks
        report.placements += plan.place_chunk.size
        fill = self.meta.fill_value
        ranges = [(key, 0, None) for key in keys]
        arrived: queue.SimpleQueue = queue.SimpleQueue()
        future = _IO.submit(store.read_indexes, ranges, lambda k, blob: arrived.put((k, blob)))
        future.add_done_callback(lambda _: arrived.put(None))
        started: list = []
        with _finished(device, started, report, io):
            for runs, left in _arrivals(arrived, store, ranges, future, report, io):
                for j, run in enumerate(runs, 1):
                    lo = edges[run[0][0]]
                    hi = edges[run[-1][0] + 1]
                    with report.timed("locate"):
                        loc = locator.locate(plan.chunks[lo:hi], {keys[k]: b for k, b in run})
                        order = loc.storage_order()  # (shard by shard still: keys are in grid order)
                        if order is not None:
                            perm = np.arange(plan.n_chunks)
                            perm[lo:hi] = lo + order
                            plan, loc = plan.reorder(perm), loc.take(order)
                    report.chunks_absent += int((~loc.present).sum())
                    report.missing_keys += loc.missing
                    report.batches += 1
                    batch = shards_batch(loc, [blob for _, blob in run], [edges[k] - lo for k, _ in run])
                    started += self._decode(device, batch, chain, out, plan, lo, fill, report,
                                            sole=not left and j == len(runs))
            _result(future, io)
        return out

    def _run_pieces(self, plan: Plan, pieces: list[tuple[int, int]], device: Device, out: Any, report: ReadReport,
                    store: Store, locator: Locator, io: ReadIO | None) -> Any:
        """A remote read in pieces (see `_pieces`): each piece is located and fetched on its own
        thread, several at once, so their requests (index, whole-shard and data GETs alike) are
        in flight together, and a piece is decoded as soon as it lands, while later ones still
        arrive. Pieces held (in flight, or fetched and not yet decoded) stay within
        Settings.bytes_in_flight by their estimate (decoded size, a bound on compressed bytes),
        and never fewer than two. On failure every decoding task is settled and pieces not
        started are dropped; those under way end by the deadline, into buffers of their own."""
        chain = locator.leaf_chain
        report.device = device.name
        report.chunks += plan.n_chunks
        report.placements += plan.place_chunk.size
        largest = max(hi - lo for lo, hi in pieces) * chain.raw_nbytes
        depth = min(max(2, self.settings.bytes_in_flight // largest), PIECE_THREADS)
        fill = self.meta.fill_value
        queued = list(reversed(pieces))
        running: dict = {}  # future of a piece → its first plan row
        held: list[list] = []  # per piece handed to the device: its decoding tasks
        started: list = []
        with _finished(device, started, report, io):
            try:
                while queued or running:
                    held = [tasks for tasks in held if not all(t.done() for t in tasks)]
                    while queued and held and len(running) + len(held) >= depth:
                        _wait(held.pop(0), report, io)
                    while queued and len(running) + len(held) < depth:
                        lo, hi = queued.pop()
                        running[_PIECES.submit(self._piece, plan, lo, hi, locator, store, device,
                                               report.missing_keys)] = lo
                    with report.timed("fetch"):
                        done = _first_done(list(running), io)
                    for future in done:
                        lo = running.pop(future)
                        piece_plan, loc, bounds, batch = future.result()
                        report.chunks_absent += int((~loc.present).sum())
                        report.missing_keys += loc.missing
                        report.batches += len(bounds)
                        tasks: list = []
                        if batch is not None:
                            tasks += self._decode(device, batch, chain, out, piece_plan, lo, fill, report)
                        else:  # a piece of more than a batch (one large shard): its batches in turn
                            self._staged(bounds, piece_plan, loc, chain, device, out, fill, report, tasks, store,
                                         io, lo)
                        started += tasks
                        held.append(tasks)
            except BaseException:
                for future in running:  # pieces not started are dropped
                    future.cancel()
                raise
        return out

    def _piece(self, plan: Plan, lo: int, hi: int, locator: Locator, store: Store, device: Device,
               missing: list) -> tuple[Plan, Locations, list[tuple[int, int]], FetchedBatch | None]:
        """Locate plan chunks lo..hi-1 and fetch them if they make one batch: (the plan with these
        rows in storage order, their locations, their batches, the batch or None)."""
        loc = locator.locate(plan.chunks[lo:hi])
        order = loc.storage_order()
        if order is not None:
            perm = np.arange(plan.n_chunks)
            perm[lo:hi] = lo + order
            plan, loc = plan.reorder(perm), loc.take(order)
        bounds = self._bounds(loc, locator.leaf_chain.raw_nbytes, device)
        batch = fetch(store, loc, np.arange(*bounds[0]), missing=missing) if len(bounds) == 1 else None
        return plan, loc, bounds, batch

    @staticmethod
    def _decode(device: Device, batch: Any, chain: Any, out: Any, plan: Plan, first: int, fill: Any,
                report: ReadReport, sole: bool = False) -> list:
        if isinstance(batch, FetchedBatch):  # a PendingBatch is counted by the tasks that read it
            report.add(compressed=batch.staging.nbytes, decoded=int(batch.present.sum()) * (chain.raw_nbytes or 0))
        with report.timed("decode"):
            return device.decode_and_place(batch, chain, out, plan, first, fill, report, sole)

    def _bounds(self, loc: Locations, raw_nbytes: int | None, device: Device) -> list[tuple[int, int]]:
        """The batches of a read on `device`: of its preferred compressed size (at least
        REMOTE_BATCH_BYTES from a store whose requests take a round trip), each of at least its
        batch_streams chunks (a GPU's parallelism is the streams of a call: that floor outweighs
        its preferred size), unless Settings.batch_bytes says otherwise."""
        batch_bytes = self.settings.batch_bytes or device.batch_bytes
        if not isinstance(self.store, LocalStore) and not self.settings.batch_bytes:
            batch_bytes = max(batch_bytes, REMOTE_BATCH_BYTES)
        streams = 1 if self.settings.batch_bytes else device.batch_streams
        return self._batches(loc, raw_nbytes, batch_bytes, streams)

    def _batches(self, loc: Locations, raw_nbytes: int | None, batch_bytes: int,
                 streams: int = 1) -> list[tuple[int, int]]:
        """Split chunks (in storage order) into batches of bounded compressed size, each of at
        least `streams` chunks where the chunk and decoded-bytes bounds allow."""
        guess = raw_nbytes or (1 << 20)  # whole objects: their size is known only once read
        cost = np.where(loc.sizes >= 0, loc.sizes, guess).cumsum()
        bounds, lo, n = [], 0, cost.size
        most = min(self.settings.batch_chunks, max(1, self.settings.batch_decoded_bytes // max(raw_nbytes or 1, 1)))
        if n <= most and int(cost[-1]) <= batch_bytes:  # one batch, the common small read
            return [(0, n)]
        firsts = np.flatnonzero(loc.key_ids[1:] != loc.key_ids[:-1]) + 1  # each key's first chunk
        while lo < n:
            base = cost[lo - 1] if lo else 0
            hi = max(int(np.searchsorted(cost, base + batch_bytes, side="right")), lo + streams)
            hi = min(max(hi, lo + 1), lo + most, n)
            if hi < n and firsts.size:
                # end at a shard's first chunk where that keeps at least half the batch: its
                # parts then hold whole shards, each read in one range and placed by one copy
                # (a shard's chunks in Morton order included: placement.place_block). 2-D set,
                # A/B alternated: full read 0.97x (one thread 0.92x), read_batch 0.95x, ML 0.93x
                j = int(np.searchsorted(firsts, hi, side="right")) - 1
                if j >= 0 and int(firsts[j]) >= lo + max(streams, (hi - lo) // 2):
                    hi = int(firsts[j])
            bounds.append((lo, hi))
            lo = hi
        return bounds


class _Ahead:
    """A cold local read's chunks handed to the kernel (fetch.prefetch) in storage order, up to
    AHEAD_BYTES past the end of the furthest part a task has started reading, not the whole
    read at once: with all of it in flight the first parts' bytes came in one burst with the
    rest (the disk's queue sorts what it holds by sector), a first part of 64 chunks waiting
    4.1 ms for its bytes. 64 cold 2-D windows in one read_batch against the whole read at once,
    alternated in-process, 15-25 rounds: 0.89-0.92x in four runs, 0.99x in one; a cold full read
    0.90-0.92x. (Also measured, and alike within the noise so not kept: first parts of 8 or 16
    chunks, 256 KiB handed over first, and a paced hand-over waiting for each 256 KiB to land
    with 0.5-2 MiB in flight.) The first AHEAD_BYTES go before any task starts (tasks started
    first each read their own ranges beside that hand-over of the same ones). Tasks only say how
    far they are; the calling thread, idle while they run, hands over (`feed`): a hand-over
    blocked for up to 8 ms while the disk's queue was full, time a task would not decode. Where
    the calling thread runs parts itself (one batch), each part's thread hands over. A warm read
    (the first window's last chunk in the page cache: one probe, ~36 us) hands nothing over."""

    def __init__(self, store: Store, loc: Locations, guess: int | None):
        self.store, self.loc = store, loc
        self.cost = np.where(loc.present, np.where(loc.sizes >= 0, loc.sizes, guess or (1 << 20)), 0).cumsum()
        self.next = 0  # the first row not handed over
        self.frontier = 0  # the furthest row a task has started reading up to
        self.feeder: int | None = None  # the thread that hands over for the tasks (see feed)
        self._lock = threading.Lock()
        self._moved = threading.Event()
        self.pending = on_disk(store, loc, np.arange(self._stop(0)))

    def _stop(self, row: int) -> int:
        """The row AHEAD_BYTES of compressed bytes past `row` (at least one row past it)."""
        base = int(self.cost[row - 1]) if row else 0
        return min(max(int(np.searchsorted(self.cost, base + AHEAD_BYTES, side="right")), row + 1), self.cost.size)

    def start(self, feeder: bool) -> None:
        """Before any task starts; `feeder`: this thread will `feed` the tasks (see there)."""
        self._hand_over()
        self.feeder = threading.get_ident() if feeder else None

    def reached(self, row: int) -> None:
        """A task is about to read the chunks before `row`."""
        with self._lock:
            self.frontier = max(self.frontier, row)
        self._moved.set()
        if self.feeder is None:
            self._hand_over()

    def _hand_over(self) -> bool:
        """Hand over the rows up to AHEAD_BYTES past the frontier not handed over yet (False: none)."""
        with self._lock:
            lo, stop = self.next, self._stop(self.frontier)
            if stop <= lo:
                return False
            self.next = stop
        prefetch(self.store, self.loc, np.arange(lo, stop))
        return True

    def feed(self, futures: list, io: ReadIO | None) -> None:
        """On the calling thread, once every task is queued: hand over as the tasks move on,
        until everything is handed over, every task has ended, or the read's deadline passed
        (the wait for the tasks that follows says what happened)."""
        for future in futures:
            future.add_done_callback(lambda _: self._moved.set())
        while self.next < self.cost.size:
            self._moved.clear()
            if self._hand_over():
                continue
            if all(future.done() for future in futures):
                return
            timeout = None if io is None or io.deadline is None else io.remaining()
            if timeout is not None and timeout <= 0:
                return
            self._moved.wait(timeout)


def _pieces(plan: Plan, locator: Locator) -> tuple[Plan, list[tuple[int, int]]] | None:
    """A remote read large enough to gain from pipelining (see Reader._run_pieces), cut into
    about PIECES pieces of at least PIECE_BYTES (estimated as decoded sizes), each made of whole
    shards (the plan reordered shard by shard) or of runs of chunk objects: (that plan, the
    pieces' row ranges). None for a smaller read, or where chunk sizes vary (strings). Cutting on
    shard boundaries keeps every request as it was: a shard's index and whole-shard GETs, and
    the coalescing of its chunks, all fall in one piece."""
    raw, n = locator.leaf_chain.raw_nbytes, plan.n_chunks
    if raw is None or n * raw < 2 * PIECE_BYTES:
        return None
    per_piece = max(-(-PIECE_BYTES // raw), -(-n // PIECES))
    cuts = np.arange(per_piece, n, per_piece)
    if locator.levels:
        shard = locator.shard_ids(plan.chunks)
        order = np.argsort(shard, kind="stable")
        if (np.diff(order) != 1).any():
            plan, shard = plan.reorder(order), shard[order]
        firsts = np.flatnonzero(np.diff(shard)) + 1  # each shard's first row
        if not firsts.size:
            return None
        cuts = np.unique(firsts[np.minimum(np.searchsorted(firsts, cuts), firsts.size - 1)])
    if not cuts.size:
        return None
    edges = [0, *cuts.tolist(), n]
    return plan, list(zip(edges[:-1], edges[1:]))


def _first_done(futures: list, io: ReadIO | None) -> set:
    """The futures done once the first is, waiting no longer than the read's deadline."""
    done, _ = wait_futures(futures, None if io is None else io.remaining(), return_when=FIRST_COMPLETED)
    if not done:
        raise io.expired()
    return done


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
        if future.done():  # the task's own TimeoutError, or it ended just after the wait did
            return future.result()
        raise io.expired() from None


@contextlib.contextmanager
def _finished(device: Device, started: list, report: ReadReport, io: ReadIO | None) -> Iterator[None]:
    """Around a read's queueing of its decoding tasks into `started`: then they are waited for
    and the device finished; on any failure, the deadline's included, every task queued is
    settled and the device's work dropped before the error goes on, so nothing writes into the
    output after the read ends."""
    try:
        yield
        _wait(started, report, io)
        with report.timed("finish"):
            device.finish()
    except BaseException:
        settle(started)
        device.abort()
        raise


@contextlib.contextmanager
def _changed_first(locator: Locator, loc: Locations) -> Iterator[None]:
    """A read's data found corrupt where a local shard changed under it is the change
    (ChangedError), not corruption: the chunks may be the new file's at the old index's offsets."""
    try:
        yield
    except CorruptDataError:
        locator.check_unchanged(loc.versions, loc.prefetched)
        raise


def _arrivals(arrived: queue.SimpleQueue, store: Store, ranges: list, future: Any, report: ReadReport,
              io: ReadIO | None) -> Any:
    """The ranges of a read handed over by `future` (through `arrived`: (range, bytes), then
    None at its end) as they land: per wake, runs of consecutive (range, bytes) pairs, and how
    many ranges are still to come. Ranges landing within LANDING_SETTLE of each other come
    together, as one wake, not one each."""
    left = len(ranges)
    while left:
        with report.timed("fetch"):
            try:
                got = arrived.get(timeout=None if io is None else io.remaining())
            except queue.Empty:
                raise io.expired() from None
        landed = [got]
        while got is not None and len(landed) < left:
            try:
                got = arrived.get(timeout=LANDING_SETTLE)
            except queue.Empty:
                break
            landed.append(got)
        ended = None in landed  # the read's end: its error, if it failed
        landed = [item for item in landed if item is not None]
        left -= len(landed)
        if ended and left:
            future.result()
            raise StoreError(f"{store.url}: {left} of {len(ranges)} ranges were not handed over", ranges[0][0])
        yield _runs(sorted(landed, key=lambda kb: kb[0])), left


def _runs(landed: list[tuple[int, Any]]) -> list[list[tuple[int, Any]]]:
    """(range, bytes) pairs sorted by range, as runs of consecutive ranges."""
    runs: list[list] = []
    for k, blob in landed:
        if runs and runs[-1][-1][0] == k - 1:
            runs[-1].append((k, blob))
        else:
            runs.append([(k, blob)])
    return runs


def _changed(future: Any, io: ReadIO | None) -> ChangedError | None:
    """The ChangedError a store read ends with (waited for up to the read's deadline), if any."""
    try:
        future.result(None if io is None else io.remaining())
    except ChangedError as exc:
        return exc
    except BaseException:  # its own error, or still running at the deadline: not the read's to raise
        return None
    return None


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
