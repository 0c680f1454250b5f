"""gpuzarr's host cost per chunk, measured by timing its pipeline's own pieces.

`gpuzarr.pipeline.Reader.read` is plan -> locate -> (fetch -> decode_and_place) per batch, with
the fetch of batch k+1 overlapping the decode of batch k (the staged path that feeds a GPU; the
CPU device reads the local files of a multi-batch read inside its decoding tasks instead, so
`fetch` below is what staging costs, not a phase of that path). Here the same calls run one after the
other, each under its own timer, so the host work that will feed a GPU (planning, shard-index
lookup, staging the compressed bytes into one buffer) is separated from decoding:

  plan          make_plan (which chunks, where each lands)
  locate_cold   Locator.locate + storage-order reordering with an empty shard-index cache
                (the indexes are read from the files: what the first read of an array pays)
  locate_warm   the same with the index cache filled (every later read)
  fetch         fetch of every batch: coalesced preads into one staging buffer per batch
  decode        device.decode_and_place of every batch, then device.finish (CPU: decode +
                placement on all cores; GPU: until the device has synchronised)
  host          plan + locate_warm + fetch: the per-chunk host overhead in front of a decoder
  small_host    per read, for windows of a few chunks that Reader.read hands to
                gpuzarr.small_read (none of the phases above run for them): that whole read,
                timed, less the `decode` of the same chunks above

Each is divided by the number of chunks the read touches (unique chunks for read_batch). The
result of this step-by-step path is compared with `Array.read`/`read_batch` so the numbers
describe the code that is really run. If gpuzarr's internals change shape, this reports why
it cannot measure instead of failing the benchmark.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

PHASES = ("plan", "locate_cold", "locate_warm", "fetch", "decode")


def _one_read(arr: Any, windows: list, batched: bool, reader: Any, times: dict) -> tuple[Any, int]:
    from gpuzarr import pipeline as pl

    device = arr._device
    dtype = arr.meta.data_type.dtype
    shape = ((len(windows),) if batched else ()) + pl.out_shape(windows[0])
    t0 = time.perf_counter()
    plan = pl.make_plan(windows, reader.locator.leaf_shape, batched)
    t1 = time.perf_counter()
    out = device.empty(shape, dtype)
    if plan.n_chunks == 0:
        return out, 0
    t1b = time.perf_counter()
    loc = reader.locator.locate(plan.chunks)
    order = loc.storage_order()
    if order is not None:  # as Reader.read does
        plan, loc = plan.reorder(order), loc.take(order)
    t2 = time.perf_counter()
    chain = reader.locator.leaf_chain
    bounds = reader._batches(loc, chain.raw_nbytes, reader.settings.batch_bytes or device.batch_bytes)
    batches = [pl.fetch(reader.store, loc, np.arange(lo, hi)) for lo, hi in bounds]
    t3 = time.perf_counter()
    for (lo, _), batch in zip(bounds, batches):  # a read's sole batch as Reader.read decodes it (inline if small)
        for future in device.decode_and_place(batch, chain, out, plan, lo, arr.meta.fill_value,
                                              sole=len(bounds) == 1):
            future.result()
    finish = getattr(device, "finish", None)  # deferred checks (GPU sizes), as Reader.read does
    if finish is not None:
        finish()
    if device.xp is not np:
        device.xp.cuda.Device().synchronize()
    t4 = time.perf_counter()
    times["plan"] += t1 - t0
    times["locate"] += t2 - t1b
    times["fetch"] += t3 - t2
    times["decode"] += t4 - t3
    return out, plan.n_chunks


def _small_seconds(arr: Any, reads: list, repeats: int) -> float | None:
    """Median seconds of every read through gpuzarr.small_read, where each takes it; else None."""
    from gpuzarr.selection import out_shape

    small, device = arr._reader.small, arr._device
    if not small.applies or any(batched for _, batched in reads):
        return None
    rounds = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for windows, _ in reads:
            if small.read(windows[0], device, out_shape(windows[0])) is None:
                return None
        rounds.append(time.perf_counter() - t0)
    return float(np.median(rounds))


def host_cost(arr: Any, wl: Any, repeats: int) -> dict:
    """Per-chunk host phases of gpuzarr for one workload (medians over repeats)."""
    try:
        from gpuzarr import pipeline as pl
        from gpuzarr.selection import normalize

        shape = arr.shape
        if wl.name == "batch":
            reads = [([normalize(s, shape) for s in wl.items], True)]
        else:
            reads = [([normalize(s, shape)], False) for s in wl.items]

        def one_pass(reader: Any, check: bool) -> tuple[dict, int]:
            times = dict.fromkeys(("plan", "locate", "fetch", "decode"), 0.0)
            chunks = 0
            for i, (windows, batched) in enumerate(reads):
                out, n = _one_read(arr, windows, batched, reader, times)
                chunks += n
                if check:
                    want = arr.read_batch(wl.items) if batched else arr.read(wl.items[i])
                    got_h = out if arr._device.xp is np else arr._device.xp.asnumpy(out)
                    want_h = want if arr._device.xp is np else arr._device.xp.asnumpy(want)
                    if not np.array_equal(got_h, want_h):
                        raise RuntimeError("the step-by-step pipeline disagrees with Array.read: "
                                           "gpuzarr.pipeline.Reader.read has changed, update bench/internals.py")
                del out
            return times, chunks

        settings = arr._reader.settings
        cold, warm = [], []
        chunks = 0
        for k in range(repeats + 1):
            fresh = pl.Reader(arr.meta, arr.store, settings)  # empty shard-index cache
            t_cold, chunks = one_pass(fresh, check=(k == 0))
            t_warm, _ = one_pass(fresh, check=False)
            if k:  # the first round is a warm-up
                cold.append(t_cold)
                warm.append(t_warm)
        if not chunks:
            return {"error": "no chunks"}
        med = lambda rows, key: float(np.median([r[key] for r in rows]))  # noqa: E731
        per = {
            "plan": med(warm, "plan"),
            "locate_cold": med(cold, "locate"),
            "locate_warm": med(warm, "locate"),
            "fetch": med(warm, "fetch"),
            "decode": med(warm, "decode"),
        }
        us = {k: v / chunks * 1e6 for k, v in per.items()}
        us["host"] = us["plan"] + us["locate_warm"] + us["fetch"]
        per_read = {k: v * chunks / len(reads) for k, v in us.items()}
        small = _small_seconds(arr, reads, repeats)
        if small is not None:
            per_read["small_host"] = small / len(reads) * 1e6 - per_read["decode"]
        return {"chunks": chunks, "reads": len(reads), "us_per_chunk": us, "us_per_read": per_read,
                "raw_seconds": {"cold": cold, "warm": warm}}
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
