"""Remote reads in pieces and long ranges in parts (gpuzarr.pipeline.PIECE_BYTES,
gpuzarr.fetch.PART_BYTES). A large read from a store whose requests take a round trip is cut into
pieces of whole shards (or runs of chunk objects), located, fetched and decoded on their own so
that their requests are in flight together; a range longer than PART_BYTES is read as parts, all
in one call. Both must leave the data and the bytes asked for exactly as a plain read has them.
The thresholds are lowered here so that small arrays take these paths."""

from __future__ import annotations

import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import zarr
from test_whole_shard import CountingStore, _counting, _image, _whole, _write

import gpuzarr
from gpuzarr import fetch as fetch_module
from gpuzarr import pipeline as pipeline_module
from gpuzarr.errors import CorruptDataError, DeadlineError, SettingsError, StoreError
from gpuzarr.store import Store


def _pieced(monkeypatch, piece_bytes: int = 4096) -> None:
    monkeypatch.setattr(pipeline_module, "PIECE_BYTES", piece_bytes)


def _ranges(store: CountingStore) -> list:
    return sorted((k, a, -1 if b is None else b) for call in store.calls for k, a, b in call)


def _read_counted(path: Path, name: str, selection, batch: bool = False, **settings):
    store = _counting(path, "memory", name)
    arr = gpuzarr.open(store, device="cpu", settings=gpuzarr.Settings(**settings))
    store.calls.clear()
    report = gpuzarr.ReadReport()
    got = arr.read_batch(selection, report=report) if batch else arr.read(selection, report=report)
    return got, store, report


SELECTIONS = {
    "full": (slice(None), slice(None)),
    "window": (slice(37, 201), slice(5, 250)),
    "strided": (slice(3, None, 3), slice(None, None, -2)),
}


@pytest.mark.parametrize("what", sorted(SELECTIONS))
@pytest.mark.parametrize("cached", [False, True], ids=["cold", "cached-indexes"])
def test_a_read_in_pieces_is_bit_identical_and_asks_for_the_same_bytes(tmp_path, monkeypatch, what, cached):
    data = _image((256, 256))
    _write(tmp_path / "a", data, (64, 64), (16, 16))
    sel = SELECTIONS[what]
    want = data[sel]  # zarr-python refuses negative steps
    store = _counting(tmp_path / "a", "memory", f"p-{what}-{cached}-{tmp_path.name}")
    for piece_bytes in (1 << 40, 4096):  # one batch, then pieces
        _pieced(monkeypatch, piece_bytes)
        arr = gpuzarr.open(store, device="cpu")
        if cached:
            arr[...]
        store.calls.clear()
        report = gpuzarr.ReadReport()
        got = arr.read(sel, report=report)
        assert got.tobytes() == want.tobytes() and got.shape == want.shape
        if piece_bytes == 1 << 40:
            plain, plain_calls = _ranges(store), len(store.calls)
            continue
        assert _ranges(store) == plain, "the same ranges, only in more calls"
        assert len(store.calls) > plain_calls, "the read went in pieces"
        assert report.chunks == len(np.unique(np.stack(np.meshgrid(*[np.arange(256)[s] // 16 for s in sel],
                                                                   indexing="ij"), -1).reshape(-1, 2), axis=0))


def test_read_batch_in_pieces_matches_numpy(tmp_path, monkeypatch):
    data = _image((256, 256), seed=3)
    _write(tmp_path / "a", data, (64, 64), (16, 16))
    _pieced(monkeypatch)
    rng = np.random.default_rng(1)
    starts = rng.integers(0, 256 - 40, size=(24, 2))
    windows = [(slice(y, y + 40), slice(x, x + 40)) for y, x in starts.tolist()]
    got, store, _ = _read_counted(tmp_path / "a", f"batch-{tmp_path.name}", windows, batch=True)
    np.testing.assert_array_equal(got, np.stack([data[w] for w in windows]))
    assert len(store.calls) > 1


def test_chunk_objects_in_pieces(tmp_path, monkeypatch):
    """No sharding: pieces are runs of chunk objects, each object read once, whole."""
    data = _image((200, 190), seed=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = zarr.create_array(str(tmp_path / "a"), shape=data.shape, chunks=(16, 16), dtype=data.dtype, fill_value=7)
        a[...] = data
    (tmp_path / "a" / "c" / "3" / "4").unlink()  # a missing chunk: the fill value
    want = a[...]
    _pieced(monkeypatch)
    got, store, report = _read_counted(tmp_path / "a", f"objects-{tmp_path.name}", (slice(None), slice(None)))
    np.testing.assert_array_equal(got, want)
    keys = [k for call in store.calls for k, _, _ in call]
    assert len(store.calls) > 1 and len(keys) == len(set(keys)) == 13 * 12
    assert "c/3/4" in report.missing_keys and report.chunks == 13 * 12


def _reverse_shard(path: Path, n: int) -> None:
    """Rewrite a shard of raw inner chunks (index at the end, no checksum) with its chunks stored
    in the reverse of their order."""
    buf = path.read_bytes()
    index = np.frombuffer(buf[-16 * n:], "<u8").reshape(n, 2).copy()
    body, new = b"", index.copy()
    for i in reversed(range(n)):
        off, size = index[i]
        new[i] = (len(body), size)
        body += buf[off:off + size]
    path.write_bytes(body + new.astype("<u8").tobytes())


def test_a_piece_whose_chunks_are_stored_out_of_order(tmp_path, monkeypatch):
    data = _image((64, 64), seed=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = zarr.create_array(str(tmp_path / "a"), shape=data.shape, chunks=(32, 32), dtype=data.dtype,
                              compressors=None, fill_value=0,
                              serializer=zarr.codecs.ShardingCodec(chunk_shape=(4, 4),
                                                                   codecs=[zarr.codecs.BytesCodec()],
                                                                   index_codecs=[zarr.codecs.BytesCodec()]))
        a[...] = data
    for shard in ("0/0", "1/1"):
        _reverse_shard(tmp_path / "a" / "c" / Path(shard), 64)
    monkeypatch.setattr(fetch_module, "WHOLE_SHARD_FRACTION", 2.0)  # index, then data: coalescing meets the order
    _pieced(monkeypatch, 1024)
    reordered = []
    storage_order = fetch_module.Locations.storage_order
    monkeypatch.setattr(fetch_module.Locations, "storage_order",
                        lambda self: reordered.append(storage_order(self)) or reordered[-1])
    store = _counting(tmp_path / "a", "memory", f"order-{tmp_path.name}")
    arr = gpuzarr.open(store, device="cpu")
    np.testing.assert_array_equal(arr[...], data)
    np.testing.assert_array_equal(arr[3:61, 2:63], data[3:61, 2:63])
    # zarr-python stores a shard's chunks in Morton order, the two rewritten ones backwards: in
    # neither is plan (C) order storage order, so every piece of both reads was reordered
    assert len(reordered) == 8 and all(order is not None for order in reordered)


class SlowStore(CountingStore):
    """Each call waits a little and records how many calls run at once."""

    def __init__(self, fs, root, delay: float = 0.02, hang_on: str | None = None):
        super().__init__(fs, root)
        self.delay, self.hang_on = delay, hang_on
        self.active = self.peak = 0
        self._lock = threading.Lock()

    def read_ranges(self, ranges):
        return self._slowly(super().read_ranges, ranges)

    def read_indexes(self, ranges):  # whole shards and indexes
        return self._slowly(super().read_indexes, ranges)

    def _slowly(self, read, ranges):
        with self._lock:
            self.active += 1
            self.peak = max(self.peak, self.active)
        try:
            time.sleep(self.delay)
            if self.hang_on and any(k == self.hang_on for k, _, _ in ranges):
                time.sleep(30)
            return read(ranges)
        finally:
            with self._lock:
                self.active -= 1


def _slow(path: Path, name: str, **kw) -> SlowStore:
    base = _counting(path, "memory", name)
    return SlowStore(base.fs, base.root, **kw)


@pytest.mark.parametrize("bytes_in_flight, most", [(1, 2), (1 << 30, None)])
def test_pieces_in_flight_stay_within_bytes_in_flight(tmp_path, monkeypatch, bytes_in_flight, most):
    data = _image((256, 256))
    _write(tmp_path / "a", data, (64, 64), (16, 16))
    _pieced(monkeypatch)
    store = _slow(tmp_path / "a", f"slow-{bytes_in_flight}-{tmp_path.name}")
    arr = gpuzarr.open(store, device="cpu", settings=gpuzarr.Settings(bytes_in_flight=bytes_in_flight))
    store.peak = 0
    np.testing.assert_array_equal(arr[...], data)
    assert store.peak >= 2, "pieces fetch at once"
    if most is not None:
        assert store.peak <= most, "never more pieces at once than the bound allows (and two at least)"
    else:
        assert store.peak > 2, "a generous bound lets many pieces fetch at once"


def test_a_failing_piece_fails_the_read_and_the_next_read_works(tmp_path, monkeypatch):
    data = _image((256, 256))
    _write(tmp_path / "a", data, (64, 64), (16, 16))
    _pieced(monkeypatch)
    store = _counting(tmp_path / "a", "memory", f"fail-{tmp_path.name}")
    arr = gpuzarr.open(store, device="cpu")
    real = Store.read_ranges

    def broken(self, ranges):
        if any(k == "c/2/3" for k, _, _ in ranges):
            raise StoreError(f"{self.path('c/2/3')}: read failed (injected)", "c/2/3")
        return real(self, ranges)

    monkeypatch.setattr(Store, "read_ranges", broken)  # whole shards and data alike
    with pytest.raises(StoreError, match="c/2/3: read failed"):
        arr[...]
    monkeypatch.setattr(Store, "read_ranges", real)
    np.testing.assert_array_equal(arr[...], data)


def test_a_hung_piece_ends_at_the_deadline(tmp_path, monkeypatch):
    data = _image((256, 256))
    _write(tmp_path / "a", data, (64, 64), (16, 16))
    _pieced(monkeypatch)
    store = _slow(tmp_path / "a", f"hang-{tmp_path.name}", delay=0, hang_on="c/3/3")
    arr = gpuzarr.open(store, device="cpu", settings=gpuzarr.Settings(deadline_seconds=0.5))
    t0 = time.monotonic()
    with pytest.raises(DeadlineError, match="deadline of 0.5 s"):
        arr[...]
    assert time.monotonic() - t0 < 3


@pytest.mark.parametrize("name", ["bytes_in_flight", "requests_in_flight"])
@pytest.mark.parametrize("value", [0, -1, 1.5, "1", True])
def test_the_bounds_in_flight_are_validated(name, value):
    with pytest.raises(SettingsError, match=name):
        gpuzarr.Settings(**{name: value})


# ---------------------------------------------------------------- long ranges in parts


def test_long_ranges_are_read_in_parts_bit_identical(tmp_path, monkeypatch):
    """Shards estimated larger than a part are not read whole; their chunks' coalesced range is
    read as parts of at most PART_BYTES, all in one call."""
    data = _image((256, 256), seed=4)
    _write(tmp_path / "a", data, (128, 128), (16, 16), codec="raw")
    monkeypatch.setattr(fetch_module, "PART_BYTES", 5000)
    got, store, _ = _read_counted(tmp_path / "a", f"parts-{tmp_path.name}", (slice(None), slice(None)))
    np.testing.assert_array_equal(got, data)
    index_call, data_call = store.calls
    assert not any(_whole(r) for r in index_call), "too large to read whole: index first"
    assert all(b - a <= 5000 for _, a, b in data_call) and len(data_call) > len(index_call)
    for key in {k for k, _, _ in data_call}:  # the parts of each shard tile its data without gaps
        spans = sorted((a, b) for k, a, b in data_call if k == key)
        assert all(spans[i][1] == spans[i + 1][0] for i in range(len(spans) - 1))


def test_a_shard_cut_short_read_in_parts_is_corrupt_data(tmp_path, monkeypatch):
    data = _image((256, 256), seed=4)
    _write(tmp_path / "a", data, (128, 128), (16, 16), codec="raw", index_location="start")
    shard = tmp_path / "a" / "c" / "1" / "0"
    shard.write_bytes(shard.read_bytes()[:-3000])
    monkeypatch.setattr(fetch_module, "PART_BYTES", 5000)
    store = _counting(tmp_path / "a", "memory", f"cut-{tmp_path.name}")
    arr = gpuzarr.open(store, device="cpu")
    with pytest.raises(CorruptDataError, match="c/1/0: shard index points past the end of the shard"):
        arr[...]


def test_parts_of_a_vanished_object_are_missing(tmp_path, monkeypatch):
    data = _image((256, 256), seed=4)
    _write(tmp_path / "a", data, (128, 128), (16, 16), codec="raw")
    monkeypatch.setattr(fetch_module, "PART_BYTES", 5000)
    store = _counting(tmp_path / "a", "memory", f"gone-{tmp_path.name}")
    got = fetch_module._read_in_parts(store, [("c/0/0", 0, 12000), ("nope", 0, 12000), ("c/0/1", 10, 20)])
    whole = store.read_ranges([("c/0/0", 0, 12000)])[0]
    assert type(got[0]) is fetch_module.Parts and len(got[0]) == 12000 and b"".join(got[0]) == whole
    assert got[1] is None and bytes(got[2]) == store.read_ranges([("c/0/1", 10, 20)])[0]
