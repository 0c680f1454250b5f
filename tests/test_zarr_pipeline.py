"""gpuzarr.CodecPipeline inside zarr-python: every read equals zarr-python's own pipeline's,
is one gpuzarr read, says which chunks were missing, and what gpuzarr cannot read is handed
to zarr-python's pipeline, counted (or refused under codec_pipeline.strict)."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pytest
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from zarr.abc.codec import BytesBytesCodec
from zarr.storage import LocalStore, MemoryStore, ZipStore

import gpuzarr
from gpuzarr import zarr_pipeline
from gpuzarr.devices.gpu import usable_gpu
from gpuzarr.metadata import parse_v3
from gpuzarr.pipeline import Reader
from gpuzarr.zarr_selection import Untranslatable, translate

GPU_OK, WHY = usable_gpu()
PIPELINE = {"codec_pipeline.path": "gpuzarr.CodecPipeline"}


@pytest.fixture
def reads(monkeypatch):
    """Counts gpuzarr reads and records each zarr-python read's results."""
    record = {"gpuzarr": 0, "results": []}
    original_read, original_pipeline_read = Reader.read, zarr_pipeline.CodecPipeline.read

    def counted(self, *args, **kwargs):
        record["gpuzarr"] += 1
        return original_read(self, *args, **kwargs)

    async def recorded(self, batch_info, out, drop_axes=()):
        result = await original_pipeline_read(self, batch_info, out, drop_axes)
        record["results"].append(result)
        return result

    monkeypatch.setattr(Reader, "read", counted)
    monkeypatch.setattr(zarr_pipeline.CodecPipeline, "read", recorded)
    return record


def _write(store, data, chunks, shards=None, fill_value=0, path="a", **kwargs):
    arr = zarr.create_array(store, name=path, shape=data.shape, chunks=chunks, shards=shards, dtype=data.dtype,
                            fill_value=fill_value, **kwargs)
    arr[...] = data
    return arr


def _both(store, path="a"):
    """The same array through zarr-python's default pipeline and through gpuzarr's."""
    default = zarr.open_array(store, path=path, mode="r")
    with zarr.config.set(PIPELINE):
        ours = zarr.open_array(store, path=path, mode="r")
    assert type(ours._async_array.codec_pipeline) is gpuzarr.CodecPipeline
    return default, ours


def test_config_path_and_environment_select_the_pipeline(tmp_path):
    _write(LocalStore(tmp_path), np.arange(10, dtype="i4"), (4,))
    code = ("import zarr, gpuzarr; a = zarr.open_array(%r, path='a'); "
            "assert type(a._async_array.codec_pipeline) is gpuzarr.CodecPipeline; print(a[:].sum())") % str(tmp_path)
    env = {"ZARR_CODEC_PIPELINE__PATH": "gpuzarr.CodecPipeline", "PATH": "", "HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "45"


def test_core_imports_no_zarr():
    code = "import gpuzarr, sys; print('zarr' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "False", done.stderr


SELECTIONS = [
    (slice(None),),
    (slice(3, 41), slice(5, 77, 3)),
    (7,),
    (-1, slice(2, 9)),
    ("oindex", ([3, 1, 50, 50], slice(5, 9))),
    ("oindex", (np.arange(60) % 3 == 0, [0, 89, 44])),
    ("oindex", (4, [9, 2])),
    ("vindex", ([3, 1, 50, 3], [2, 3, 4, 2])),
    ("vindex", (np.array([[1, 2], [3, 59]]), np.array([[0, 0], [89, 5]]))),
    ("mask", None),
    ("blocks", (1, slice(0, 2))),
]


def _select(arr, selection, data):
    if selection[0] == "mask":
        return arr.vindex[data % 7 == 0]
    if selection[0] == "oindex":
        return arr.oindex[selection[1]]
    if selection[0] == "vindex":
        return arr.vindex[selection[1]]
    if selection[0] == "blocks":
        return arr.blocks[selection[1]]
    return arr[selection]


@pytest.mark.parametrize("layout", ["sharded", "chunked", "v2"])
@pytest.mark.parametrize("selection", SELECTIONS, ids=lambda s: str(s)[:40])
def test_every_selection_equals_zarr_python_in_one_read(tmp_path, layout, selection, reads):
    data = np.arange(60 * 90, dtype="<u2").reshape(60, 90)
    kwargs = {"zarr_format": 2} if layout == "v2" else {}
    _write(LocalStore(tmp_path), data, (7, 20), (14, 40) if layout == "sharded" else None, **kwargs)
    default, ours = _both(LocalStore(tmp_path))
    want = _select(default, selection, data)
    reads["gpuzarr"] = 0
    got = _select(ours, selection, data)
    np.testing.assert_array_equal(got, want)
    assert got.dtype == want.dtype
    assert reads["gpuzarr"] == 1  # the whole batch: one gpuzarr read


@pytest.mark.parametrize("make_store", [
    lambda p: MemoryStore(),
    lambda p: ZipStore(p / "x.zip", mode="w"),
    lambda p: zarr.storage.FsspecStore.from_url(f"memory://pipeline-{p.name}"),
    lambda p: zarr.storage.LoggingStore(LocalStore(p)),
], ids=["memory", "zip", "fsspec", "wrapper"])
def test_stores_read_through_their_own_get(tmp_path, make_store, reads):
    store = make_store(tmp_path)
    data = np.random.default_rng(0).integers(0, 1000, (50, 33)).astype("i8")
    _write(store, data, (5, 10), (10, 20), fill_value=-1, compressors=zarr.codecs.ZstdCodec())
    with zarr.config.set(PIPELINE):
        arr = zarr.open_array(store, path="a")
        np.testing.assert_array_equal(arr[3:47, 1:30], data[3:47, 1:30])
        np.testing.assert_array_equal(arr.oindex[[0, 49, 2], :], data[[0, 49, 2], :])
    assert reads["gpuzarr"] == 2
    if isinstance(store, ZipStore):
        store.close()


def test_results_name_missing_chunks_and_shards(tmp_path, reads):
    store = MemoryStore()
    arr = zarr.create_array(store, name="a", shape=(40,), chunks=(5,), shards=(10,), dtype="f4", fill_value=2.5)
    arr[0:10] = 1
    arr[20:25] = 3  # shard 2 holds one of its two chunks
    plain = zarr.create_array(store, name="b", shape=(40,), chunks=(10,), dtype="f4", fill_value=2.5)
    plain[10:20] = 7
    with zarr.config.set(PIPELINE):
        got = zarr.open_array(store, path="a", mode="r")[:]
        got_plain = zarr.open_array(store, path="b", mode="r")[:]
    np.testing.assert_array_equal(got, np.r_[np.ones(10), np.full(10, 2.5), np.full(5, 3), np.full(15, 2.5)])
    np.testing.assert_array_equal(got_plain, np.r_[np.full(10, 2.5), np.full(10, 7), np.full(20, 2.5)])
    statuses = [[r["status"] for r in result] for result in reads["results"]]
    assert statuses == [["present", "missing", "present", "missing"], ["missing", "present", "missing", "missing"]]


def test_writes_go_to_zarr_python_and_reads_see_them(tmp_path):
    with zarr.config.set(PIPELINE):
        arr = zarr.create_array(LocalStore(tmp_path), name="a", shape=(20, 20), chunks=(5, 5), shards=(10, 10),
                                dtype="i2", fill_value=0)
        arr[:] = 1
        assert arr[:].sum() == 400
        arr[2:4, 2:4] = 9  # rewrites a shard, and its index: no stale index may be read
        want = np.ones((20, 20), "i2")
        want[2:4, 2:4] = 9
        np.testing.assert_array_equal(arr[:], want)
        other = zarr.open_array(LocalStore(tmp_path), path="a")
        other[15:, 15:] = 4  # another array object writes; the first one reads it
        want[15:, 15:] = 4
        np.testing.assert_array_equal(arr[:], want)


@pytest.mark.parametrize("data_type, fill", [
    ("float32", "0x7fc00001"), ("float64", "0xfff8000000000007"), ("complex128", ["0x7ff8000000000002", "Infinity"]),
    ("complex64", [-1.5, "0xffc00003"]), ("float32", "NaN")])
def test_a_nan_fill_keeps_its_payload(tmp_path, data_type, fill):
    """zarr-python's JSON writes every NaN fill as "NaN": gpuzarr's pipeline takes the fill's
    bits from the array's own metadata object (chunks never written read as those bits)."""
    doc = {"zarr_format": 3, "node_type": "array", "shape": [5], "data_type": data_type,
           "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [2]}},
           "chunk_key_encoding": {"name": "default"}, "fill_value": fill,
           "codecs": [{"name": "bytes", "configuration": {"endian": "big"}}], "attributes": {}}
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "zarr.json").write_text(json.dumps(doc))
    default, ours = _both(LocalStore(tmp_path))
    want, got = default[...], ours[1:]
    assert want.tobytes() == gpuzarr.open(str(tmp_path / "a"), device="cpu")[...].tobytes()  # the payload itself
    assert got.dtype == want.dtype and got.tobytes() == want[1:].tobytes()


def test_out_of_another_dtype_and_order(tmp_path):
    data = np.arange(12 * 10, dtype=">i4").reshape(12, 10)
    _write(LocalStore(tmp_path), data, (5, 4), zarr_format=2, order="F")
    default, ours = _both(LocalStore(tmp_path))
    np.testing.assert_array_equal(ours[:], default[:])
    assert ours[:].dtype == default[:].dtype
    out = zarr.core.buffer.cpu.NDBuffer.from_numpy_array(np.zeros((12, 10), "f8"))
    ours.get_basic_selection(..., out=out)
    np.testing.assert_array_equal(out.as_numpy_array(), data)


@dataclass(frozen=True)
class _Xor(BytesBytesCodec):
    """A codec only zarr-python knows (registered below): gpuzarr refuses the array."""

    is_fixed_size = True

    @classmethod
    def from_dict(cls, data):
        return cls()

    def to_dict(self):
        return {"name": "test.xor"}

    async def _decode_single(self, chunk_bytes, chunk_spec):
        return chunk_spec.prototype.buffer.from_bytes(bytes(b ^ 0x5A for b in chunk_bytes.to_bytes()))

    _encode_single = _decode_single

    def compute_encoded_size(self, input_byte_length, chunk_spec):
        return input_byte_length


def test_what_gpuzarr_cannot_read_is_counted_or_refused(tmp_path):
    zarr.registry.register_codec("test.xor", _Xor)
    data = np.arange(10, dtype="i4")
    _write(LocalStore(tmp_path), data, (4,), compressors=[_Xor()])
    before = zarr_pipeline.FALLBACKS["gpuzarr does not read this array"]
    with zarr.config.set(PIPELINE):
        arr = zarr.open_array(LocalStore(tmp_path), path="a", mode="r")
        np.testing.assert_array_equal(arr[:], data)
        np.testing.assert_array_equal(arr[2:5], data[2:5])
    assert zarr_pipeline.FALLBACKS["gpuzarr does not read this array"] == before + 2
    with zarr.config.set({**PIPELINE, "codec_pipeline.strict": True}):
        arr = zarr.open_array(LocalStore(tmp_path), path="a", mode="r")
        with pytest.raises(gpuzarr.UnsupportedFeatureError, match="test.xor"):
            arr[:]


def test_batches_that_are_not_one_selection_are_refused():
    store = MemoryStore()
    zarr.create_array(store, name="a", shape=(10, 10), chunks=(5, 5), dtype="u1", fill_value=0)
    meta = parse_v3(json.loads(store._store_dict["a/zarr.json"].to_bytes()), "a/zarr.json")
    first, second = (zarr.storage.StorePath(store, f"a/c/0/{j}") for j in (0, 1))
    spec = SimpleNamespace(shape=(5, 5))  # what translate reads of zarr-python's ArraySpec
    whole, left, right, shifted = ((slice(0, 5), slice(a, a + 5)) for a in (0, 0, 5, 4))
    ok = translate([(first, spec, whole, left, True), (second, spec, whole, right, True)], (5, 10), (), meta)
    assert ok.keys == ["c/0/0", "c/0/1"] and ok.prefix == "a" and ok.query.shape == (5, 10)
    with pytest.raises(Untranslatable, match="twice"):
        translate([(first, spec, whole, left, True)] * 2, (5, 10), (), meta)
    with pytest.raises(Untranslatable, match="exactly once"):  # half the output unwritten
        translate([(first, spec, whole, left, True)], (5, 10), (), meta)
    with pytest.raises(Untranslatable, match="one selection"):  # overlapping pieces, a column unwritten
        translate([(first, spec, whole, left, True), (second, spec, whole, shifted, True)], (5, 10), (), meta)
    with pytest.raises(Untranslatable, match="not a chunk key"):
        translate([(zarr.storage.StorePath(store, "a/zarr.json"), spec, whole, left, True)], (5, 5), (), meta)


def test_pickles_with_its_array(tmp_path):
    data = np.arange(100, dtype="f4")
    _write(LocalStore(tmp_path), data, (10,), (50,))
    with zarr.config.set(PIPELINE):
        arr = zarr.open_array(LocalStore(tmp_path), path="a", mode="r")
        again = pickle.loads(pickle.dumps(arr))
        pipeline = pickle.loads(pickle.dumps(arr._async_array.codec_pipeline))
    assert type(again._async_array.codec_pipeline) is gpuzarr.CodecPipeline
    assert type(pipeline) is gpuzarr.CodecPipeline
    np.testing.assert_array_equal(again[:], data)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_property_matches_zarr_python(tmp_path_factory, data):
    ndim = data.draw(st.integers(1, 3))
    shape = tuple(data.draw(st.lists(st.integers(1, 13), min_size=ndim, max_size=ndim)))
    chunks = tuple(data.draw(st.integers(1, s + 2)) for s in shape)
    sharded = data.draw(st.booleans())
    shards = tuple(c * data.draw(st.integers(1, 3)) for c in chunks) if sharded else None
    dtype = data.draw(st.sampled_from(["u1", "<i2", "<f4", "<f8", "bool"]))
    source = (np.arange(int(np.prod(shape))) * 7 % 251).astype(dtype).reshape(shape)
    store = MemoryStore()
    arr = zarr.create_array(store, name="a", shape=shape, chunks=chunks, shards=shards, dtype=dtype, fill_value=0)
    arr[...] = source
    default, ours = _both(store)
    kind = data.draw(st.sampled_from(["basic", "oindex", "vindex"]))
    if kind == "basic":
        sel = tuple(data.draw(st.one_of(
            st.integers(-s, s - 1),
            st.builds(slice, st.integers(0, s), st.integers(0, s), st.integers(1, 3)))) for s in shape)
        np.testing.assert_array_equal(ours[sel], default[sel])
    elif kind == "oindex":
        sel = tuple(np.array(data.draw(st.lists(st.integers(0, s - 1), min_size=1, max_size=5))) for s in shape)
        np.testing.assert_array_equal(ours.oindex[sel], default.oindex[sel])
    else:
        n = data.draw(st.integers(1, 6))
        sel = tuple(np.array(data.draw(st.lists(st.integers(0, s - 1), min_size=n, max_size=n))) for s in shape)
        np.testing.assert_array_equal(ours.vindex[sel], default.vindex[sel])


@pytest.mark.gpu
@pytest.mark.skipif(not GPU_OK, reason=WHY)
def test_enable_gpu_decodes_into_cupy(tmp_path):
    import cupy

    data = np.arange(64 * 64, dtype="u2").reshape(64, 64)
    _write(LocalStore(tmp_path), data, (16, 16), (32, 32), compressors=zarr.codecs.ZstdCodec())
    with zarr.config.enable_gpu(), zarr.config.set(PIPELINE):
        arr = zarr.open_array(LocalStore(tmp_path), path="a", mode="r")
        got = arr[5:60, 3:50]
    assert isinstance(got, cupy.ndarray)
    np.testing.assert_array_equal(cupy.asnumpy(got), data[5:60, 3:50])


def test_reads_from_two_event_loops_each_read_on_their_own(monkeypatch):
    """zarr-python's async API from two event loops at once (a thread each): a store read through
    zarr-python's async API reads on the loop of the read that asks. One array shared by both
    had the loop of whichever read came last: a read held mid-way while another loop read and
    closed got its requests sent to that closed loop."""
    import asyncio
    import threading

    from gpuzarr.zarr_store import ZarrStore

    store = MemoryStore()
    data = np.arange(64 * 64, dtype="u2").reshape(64, 64)
    with zarr.config.set(PIPELINE):
        _write(store, data, (16, 16), shards=(32, 32))
        async_arr = zarr.open_array(store, path="a")._async_array
    sel = (slice(0, 40), slice(3, 50))
    entered, go = threading.Event(), threading.Event()
    original = ZarrStore._run

    def held(self, ranges, by_key):
        if not entered.is_set():  # the first read: held until the other loop has read and closed
            entered.set()
            go.wait(30)
        return original(self, ranges, by_key)

    monkeypatch.setattr(ZarrStore, "_run", held)
    got = {}

    def first():
        loop = asyncio.new_event_loop()
        try:
            got["first"] = loop.run_until_complete(asyncio.wait_for(async_arr.getitem(sel), 30))
        except Exception as exc:
            got["first"] = exc
        finally:
            loop.close()

    thread = threading.Thread(target=first)
    thread.start()
    assert entered.wait(30)
    other = asyncio.new_event_loop()
    np.testing.assert_array_equal(other.run_until_complete(async_arr.getitem(sel)), data[sel])
    other.close()
    go.set()
    thread.join(60)
    assert not isinstance(got["first"], Exception), got["first"]
    np.testing.assert_array_equal(got["first"], data[sel])
