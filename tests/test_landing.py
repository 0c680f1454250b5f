"""Remote batches decoded range by range as their requests land (gpuzarr.fetch.Landing,
Reader._landed): whatever order the ranges arrive in, the data is what zarr-python reads; a shard
that changed under the read is read again, not misread or reported corrupt; a store that fails
or stops handing ranges over ends the read with its error or at the deadline. A memory store
stands in for obstore's: it hands each range over on a thread of its own, in a shuffled order."""

from __future__ import annotations

import random
import threading
import time
import warnings
from pathlib import Path

import fsspec
import numpy as np
import pytest
import zarr
from checks import to_memory
from corrupt import expected, make_nested, make_sharded
from test_whole_shard import _image, _write

import gpuzarr
from gpuzarr import fetch as fetch_module
from gpuzarr import pipeline as pipeline_module
from gpuzarr.devices.cpu import CpuDevice
from gpuzarr.errors import CorruptDataError, DeadlineError, StoreError
from gpuzarr.store import ChangedError, Store


class Arriving(Store):
    """Ranges handed over one by one, shuffled, from another thread, as obstore's loop does;
    `fault` (set by a test) changes what the next read hands over."""

    lands_ranges = True

    def __init__(self, fs, root, seed: int = 0, pace: float = 0.0):
        super().__init__(fs, root)
        self.rng = random.Random(seed)
        self.pace = pace  # seconds between two ranges handed over
        self.handed: list[list[int]] = []  # per read_ranges call with `landed`: the order handed over
        self.asked: list[list] = []  # per such call: its ranges
        self.fault: str | None = None

    def read_ranges(self, ranges, landed=None):
        results = super().read_ranges(ranges)
        if landed is None:
            return results
        fault, self.fault = self.fault, None
        order = list(range(len(results)))
        self.rng.shuffle(order)
        self.handed.append(order)
        self.asked.append(list(ranges))
        if fault == "stall":
            landed(order[0], results[order[0]])
            time.sleep(5)
            return results
        if fault == "fail":
            landed(order[0], results[order[0]])
            raise StoreError(f"{self.url}/{ranges[order[1]][0]}: read failed (injected)", ranges[order[1]][0])
        if fault in ("changed", "changed-short"):
            short = fault == "changed-short"
            for i in order:  # bytes of a newer object, under the old index: garbage or cut short
                blob = results[i]
                landed(i, None if blob is None else (bytes(len(blob) // 2) if short else bytes(len(blob))))
            raise ChangedError(f"{self.url}/{ranges[0][0]}: the object changed since its shard index was read",
                               ranges[0][0])
        def hand_over() -> None:
            for i in order:
                landed(i, results[i])
                time.sleep(self.pace)

        thread = threading.Thread(target=hand_over)
        thread.start()
        thread.join()
        return results


def _arriving(path: Path, name: str, seed: int = 0, pace: float = 0.0) -> Arriving:
    to_memory(path, name)
    return Arriving(fsspec.filesystem("memory"), f"/{name}", seed, pace)


@pytest.fixture
def always_landed(monkeypatch):
    """Every batch of more than one range lands range by range, however small (a real read lands
    only where its decode would not run inline: see CpuDevice.takes_landed)."""
    monkeypatch.setattr(CpuDevice, "takes_landed", lambda self, n, chain: True)


def _sharded_with_holes(path: Path) -> np.ndarray:
    """256^2 uint16, shards 64^2 of 16^2 chunks: some chunks at the fill value, a shard missing."""
    data = _image((256, 256), seed=5)
    data[16:48, 0:16] = 0  # two inner chunks written as fill: absent from their shard's index
    _write(path, data, (64, 64), (16, 16))
    (path / "c" / "1" / "2").unlink()
    data[64:128, 128:192] = 0
    return data


def _chunk_objects(path: Path, fmt: int) -> np.ndarray:
    data = _image((200, 190), seed=7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = zarr.create_array(str(path), shape=data.shape, chunks=(32, 32), dtype=data.dtype, fill_value=0,
                              zarr_format=fmt)
        a[...] = data
    (path / ("c/2/3" if fmt == 3 else "2.3")).unlink()  # a chunk object missing: the fill value
    data[64:96, 96:128] = 0
    return data


LAYOUTS = {"sharded": _sharded_with_holes, "v3-chunks": lambda p: _chunk_objects(p, 3),
           "v2-chunks": lambda p: _chunk_objects(p, 2)}


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_ranges_landing_in_any_order_read_what_zarr_python_reads(tmp_path, always_landed, monkeypatch, layout,
                                                                  seed):
    """Seed 0 hands every range over at once (they decode together, one part, or as runs of
    consecutive ranges); the others pace them past the settle time, so ranges decode alone."""
    data = LAYOUTS[layout](tmp_path / "a")
    want = zarr.open_array(str(tmp_path / "a"), mode="r")[...]
    np.testing.assert_array_equal(want, data)
    pace = 0.0 if seed == 0 else 3 * pipeline_module.LANDING_SETTLE
    store = _arriving(tmp_path / "a", f"land-{layout}-{seed}-{tmp_path.name}", seed, pace)
    parts: list[int] = []  # ranges per part decoded
    batch = fetch_module.Landing.batch
    monkeypatch.setattr(fetch_module.Landing, "batch",
                        lambda self, first, blobs, missing: parts.append(len(blobs)) or batch(self, first, blobs, missing))
    arr = gpuzarr.open(store, device="cpu")
    rng = np.random.default_rng(seed)
    for sel in [(slice(None), slice(None)), (slice(5, 170), slice(9, 150)), (slice(1, None, 3), slice(None, None, -2))]:
        np.testing.assert_array_equal(arr[sel], data[sel])
    sels = [tuple(slice(int(a), int(a) + 40) for a in rng.integers(0, 150, 2)) for _ in range(12)]
    got = arr.read_batch(sels)
    for k, sel in enumerate(sels):
        np.testing.assert_array_equal(got[k], data[sel])
    report = gpuzarr.ReadReport()
    arr.read(report=report)
    assert report.missing_keys, "the missing object is reported as the fill value"
    assert any(len(order) > 1 and order != sorted(order) for order in store.handed), \
        "ranges were handed over one by one, out of order"
    if pace:
        assert parts.count(1) > len(parts) // 2, parts  # most ranges decoded alone, as they landed
    else:
        assert max(parts) > 1, parts  # ranges landing together decode as one part


def test_a_read_lands_range_by_range_only_where_its_decode_is_not_inline(tmp_path):
    data = _image((1024, 1024), seed=2)
    _write(tmp_path / "a", data, (256, 256), (64, 64))
    store = _arriving(tmp_path / "a", f"land-size-{tmp_path.name}")
    arr = gpuzarr.open(store, device="cpu")
    np.testing.assert_array_equal(arr[...], data)  # cold: 16 shards read whole, each decoded as it lands
    assert len(store.handed) == 1 and len(store.asked[0]) == 16 and all(r[1:] == (0, None) for r in store.asked[0])
    np.testing.assert_array_equal(arr[10:60, 20:70], data[10:60, 20:70])  # one chunk or a few: inline
    assert len(store.handed) == 1
    np.testing.assert_array_equal(arr[...], data)  # 256 chunks of 8 KiB in 16 shards, indexes cached
    assert len(store.handed) == 2 and len(store.handed[1]) == 16
    assert not any(r[1:] == (0, None) for r in store.asked[1])


@pytest.mark.parametrize("fault", ["changed", "changed-short"])
def test_a_shard_changed_under_landing_ranges_is_read_again(tmp_path, always_landed, fault):
    """Ranges of a changed shard decode to garbage (or are cut short: CorruptDataError where
    they land) before the store says it changed, once every range is in: the read is made again
    from fresh indexes, and its data is right."""
    data = _sharded_with_holes(tmp_path / "a")
    store = _arriving(tmp_path / "a", f"land-{fault}-{tmp_path.name}")
    arr = gpuzarr.open(store, device="cpu")
    arr[...]  # indexes cached
    store.fault = fault
    report = gpuzarr.ReadReport()
    got = arr.read(report=report)
    np.testing.assert_array_equal(got, data)
    assert any(note.startswith("read again:") for note in report.notes), report.notes
    # made again with every shard in one GET (one version each, whatever a writer does between
    # two GETs), the 15 shards there: the others' index answers none
    assert len(store.asked[-1]) == 16 and all(r[1:] == (0, None) for r in store.asked[-1])


def test_a_store_failing_while_ranges_land_raises_its_error(tmp_path, always_landed):
    data = _sharded_with_holes(tmp_path / "a")
    store = _arriving(tmp_path / "a", f"land-fail-{tmp_path.name}")
    arr = gpuzarr.open(store, device="cpu")
    arr[...]
    store.fault = "fail"
    with pytest.raises(StoreError, match="injected") as caught:
        arr.read()
    assert not isinstance(caught.value, (ChangedError, CorruptDataError))
    np.testing.assert_array_equal(arr.read(), data)  # the next read is whole


def test_ranges_that_stop_landing_end_the_read_at_its_deadline(tmp_path, always_landed):
    _sharded_with_holes(tmp_path / "a")
    store = _arriving(tmp_path / "a", f"land-stall-{tmp_path.name}")
    arr = gpuzarr.open(store, device="cpu", settings=gpuzarr.Settings(deadline_seconds=0.5))
    arr[...]
    store.fault = "stall"
    start = time.monotonic()
    with pytest.raises(DeadlineError):
        arr.read()
    assert time.monotonic() - start < 2


def test_a_batch_of_ranges_landing_together_is_one_part(tmp_path):
    """Landing.batch over consecutive ranges: one buffer, each chunk where its range put it;
    ranges placed as they landed (Landing.land) are that buffer already."""
    data = _sharded_with_holes(tmp_path / "a")
    store = _arriving(tmp_path / "a", f"land-parts-{tmp_path.name}")
    arr = gpuzarr.open(store, device="cpu")
    np.testing.assert_array_equal(arr[...], data)  # indexes cached: no shard is read whole
    reader = arr._reader
    plan_chunks = np.stack(np.meshgrid(np.arange(16), np.arange(16), indexing="ij"), -1).reshape(-1, 2)
    loc = reader.locator.locate(plan_chunks)
    order = loc.storage_order()
    if order is not None:
        loc = loc.take(order)
    landing = fetch_module.Landing.of(store, loc, np.arange(loc.present.size))
    assert landing is not None and len(landing.ranges) == 15  # 16 shards, one missing: no range
    blobs = store.read_ranges(landing.ranges)
    together = landing.batch(0, blobs, [])
    apart = [landing.batch(k, [blob], []) for k, blob in enumerate(blobs)]
    assert together.n == loc.present.size == sum(b.n for b in apart)
    assert [landing.bounds[k][0] for k in range(len(blobs))] == list(np.cumsum([0] + [b.n for b in apart[:-1]]))
    lo = 0
    for part in apart:
        for i in range(part.n):
            assert part.present[i] == together.present[lo + i]
            assert bytes(part.chunk(i)) == bytes(together.chunk(lo + i))
        lo += part.n
    assert np.array_equal(together.present, loc.present)
    # placed by the threads they landed on: the same batch, a view of the landing's staging
    placed = [landing.land(k, blob) for k, blob in enumerate(blobs)]
    assert all(p is fetch_module.PLACED for p in placed)
    again = landing.batch(0, placed, [])
    assert np.shares_memory(again.staging, landing.staging)
    assert np.array_equal(again.offsets, together.offsets) and np.array_equal(again.sizes, together.sizes)
    assert bytes(again.staging) == bytes(together.staging)
    short = landing.land(3, bytes(len(blobs[3]) - 1))  # not what was asked for: handed on as it is
    assert short is not fetch_module.PLACED
    with pytest.raises(CorruptDataError, match="points past the end of the shard"):
        landing.batch(3, [short], [])


def _cold(store: Store, **settings) -> gpuzarr.Array:
    """Every read cold: no index cached, so each read whole of its shards lands shard by shard."""
    return gpuzarr.open(store, device="cpu", settings=gpuzarr.Settings(index_cache_bytes=0, **settings))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_shards_read_whole_decode_as_each_lands(tmp_path, always_landed, seed):
    """A cold read wanting most of every shard asks for each whole, all at once, and decodes each
    as it lands (seed 0: all at once, one batch; else paced apart, a batch each), whatever the order:
    the data, the fill where a chunk or a shard is missing, and the report are those of a read
    that waits for every shard (a store that hands nothing over as it lands)."""
    data = _sharded_with_holes(tmp_path / "a")
    pace = 0.0 if seed == 0 else 3 * pipeline_module.LANDING_SETTLE
    store = _arriving(tmp_path / "a", f"cold-{seed}-{tmp_path.name}", seed, pace)
    arr = _cold(store)
    waiting = _cold(Store(store.fs, store.root))  # lands_ranges False: every shard in hand first
    corners = [(y, x) for y in (2, 66, 130, 194) for x in (5, 69, 133, 190)]  # most of each shard
    random.Random(seed).shuffle(corners)
    reads = [lambda a, r: a.read(report=r),
             lambda a, r: a.read((slice(3, None, 3), slice(None, None, -2)), report=r),
             lambda a, r: a.read_batch([(slice(y, y + 60), slice(x, x + 60)) for y, x in corners], report=r)]
    for read in reads:
        got, report = read(arr, landing := gpuzarr.ReadReport()), landing
        want = read(waiting, waited := gpuzarr.ReadReport())
        np.testing.assert_array_equal(got, want)
        asked = store.asked.pop()
        assert len(asked) == 16 and all(r[1:] == (0, None) for r in asked), "one whole GET a shard"
        assert not store.asked, "no second round trip"
        assert waited.batches == 1
        if pace:
            assert report.batches > 8, "most shards decoded alone, as each landed"
        else:
            assert report.batches < 16, "shards landing together decode as one batch"
        assert (report.requests, report.chunks, report.chunks_absent, report.missing_keys) == \
            (waited.requests, waited.chunks, waited.chunks_absent, waited.missing_keys) == \
            (16, report.chunks, report.chunks_absent, ["c/1/2"])
        assert report.chunks_absent > 16  # the missing shard's, and the two chunks written as fill
    np.testing.assert_array_equal(arr[...], data)


def test_nested_shards_read_whole_as_they_land(tmp_path, always_landed):
    """The inner shards' indexes come from the outer shard's bytes as it lands."""
    path = make_nested(tmp_path / "a")
    store = _arriving(path, f"cold-nested-{tmp_path.name}", seed=1)
    arr = _cold(store)
    np.testing.assert_array_equal(arr[...], expected())
    (asked,) = store.asked
    assert len(asked) == 4 and all(r[1:] == (0, None) for r in asked)


def test_a_truncated_shard_landing_whole_is_corrupt_data_naming_it(tmp_path, always_landed):
    path = make_sharded(tmp_path / "a", index_location="start")
    shard = path / "c" / "1" / "0"
    shard.write_bytes(shard.read_bytes()[:-5])
    arr = _cold(_arriving(path, f"cold-trunc-{tmp_path.name}", seed=2))
    with pytest.raises(CorruptDataError, match=r"c/1/0: .*points past the end of the shard"):
        arr[...]


@pytest.mark.parametrize("fault", ["fail", "stall"])
def test_shards_that_fail_or_stop_landing_end_a_cold_read(tmp_path, always_landed, fault):
    """The store's error, or the deadline; then the next read is whole."""
    data = _sharded_with_holes(tmp_path / "a")
    store = _arriving(tmp_path / "a", f"cold-{fault}-{tmp_path.name}")
    arr = _cold(store, deadline_seconds=0.5)
    store.fault = fault
    start = time.monotonic()
    with pytest.raises(StoreError, match="injected") if fault == "fail" else pytest.raises(DeadlineError):
        arr.read()
    assert time.monotonic() - start < 2
    np.testing.assert_array_equal(arr.read(), data)  # (beside the stalled one, still on its thread)
