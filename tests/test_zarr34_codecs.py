"""zarr-python 3.4's `scale_offset` and `cast_value` codecs (zarr-extensions), read by gpuzarr.

Arrays are written with zarr-python and read back by both; the reads must agree bit for bit
(dtype, NaN payloads and signed zeros included), and so must the refusals. The cast arithmetic is
also compared with cast-value-rs (what zarr-python casts with) directly, element by element, over
edge values of every pair of types. Skipped where zarr-python lacks these codecs (before 3.4);
the cast_value tests also need cast-value-rs, without which zarr-python cannot use the codec."""

from __future__ import annotations

import importlib
import itertools
import json
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest

zarr = pytest.importorskip("zarr")
zcodecs = pytest.importorskip("zarr.codecs")
if not hasattr(zcodecs, "ScaleOffset") or not hasattr(zcodecs, "CastValue"):
    pytest.skip(f"zarr-python {zarr.__version__} has no scale_offset/cast_value codecs (3.4 added them)",
                allow_module_level=True)

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from zarr.codecs import BytesCodec, CastValue, ScaleOffset, ShardingCodec, ZstdCodec  # noqa: E402

import gpuzarr  # noqa: E402
from gpuzarr.codecs import value_codecs  # noqa: E402
from gpuzarr.codecs.value_codecs import NUMBER_TYPES, ROUNDING_MODES, Unrepresentable  # noqa: E402
from gpuzarr.errors import CorruptDataError, MetadataError, UnsupportedFeatureError  # noqa: E402

try:
    importlib.import_module("cast_value_rs")  # what zarr-python's cast_value casts with
    HAS_CAST_BACKEND = True
except ImportError:
    HAS_CAST_BACKEND = False
needs_cast = pytest.mark.skipif(not HAS_CAST_BACKEND,
                                reason="zarr-python's cast_value needs the cast-value-rs package")
ZARR_PIPELINE = {"codec_pipeline.path": "zarr.core.codec_pipeline.BatchedCodecPipeline"}
NAN_MAP = {"encode": [("NaN", 0)], "decode": [(0, "NaN")]}


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zarr-python's warnings about unstable codec specs
        return fn(*args, **kwargs)


def write(path: Path, data: np.ndarray, chunks: tuple, *, fill_value, filters, shards=None, serializer="auto",
          compressors=None):
    arr = _quiet(zarr.create_array, str(path), shape=data.shape, chunks=chunks, shards=shards, dtype=data.dtype,
                 fill_value=fill_value, filters=filters, serializer=serializer, compressors=compressors)
    _quiet(arr.__setitem__, Ellipsis, data)
    return path


def zarr_read(path: Path, selection=Ellipsis) -> np.ndarray:
    with zarr.config.set(ZARR_PIPELINE), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # NumPy's about NaN and inf in zarr-python's arithmetic too
        return np.asarray(zarr.open_array(str(path), mode="r")[selection])


def assert_same(path: Path, selection=Ellipsis) -> np.ndarray:
    """gpuzarr's read of `selection` is zarr-python's, bit for bit."""
    ours = gpuzarr.open(str(path), device="cpu")[selection]
    theirs = zarr_read(path, selection)
    assert ours.dtype == theirs.dtype
    np.testing.assert_array_equal(ours, theirs)
    assert np.ascontiguousarray(ours).tobytes() == np.ascontiguousarray(theirs).tobytes()
    return ours


def edit_codecs(path: Path, edit) -> None:
    meta = json.loads((path / "zarr.json").read_text())
    edit(meta)
    (path / "zarr.json").write_text(json.dumps(meta))


# --- scale_offset -----------------------------------------------------------------------------------

SCALE_OFFSET_CASES = [  # dtype, offset, scale, fill
    ("float64", 0, 1, 0.0),
    ("float64", 5, 0.1, "NaN"),
    ("float64", -10.5, -3, 1.25),
    ("float32", 1000, 0.01, -0.0),
    ("float32", "Infinity", 2, 0.0),  # every value is stored as -inf, and reads as NaN
    ("float16", 0.5, -4, 2.0),
    ("int8", 3, -1, 3),
    ("int16", -100, 3, 2),
    ("int32", 7, -5, 7),
    ("int64", -(2**40), 4, 0),
    ("uint8", 10, 2, 10),
    ("uint16", 1000, 1, 1000),
    ("uint32", 5, 7, 5),
    ("uint64", 2**63, 1, 2**63),
]


def _values(dtype: np.dtype, shape: tuple, rng: np.random.Generator, offset, scale) -> np.ndarray:
    """Values whose encoding stays in range, so zarr-python writes them."""
    if dtype.kind == "f":
        data = (rng.standard_normal(shape) * 100).astype(dtype)
        specials = [np.nan, -0.0, np.inf][:data.size]
        data.flat[:len(specials)] = specials
        return data
    info = np.iinfo(dtype)
    span = max(1, min(info.max - info.min, 2**62) // (4 * abs(int(scale))))
    # (x - offset) * scale must fit: around the offset, and above it for unsigned types
    low = int(offset) if dtype.kind == "u" else max(info.min, int(offset) - span // 2)
    return rng.integers(low, min(info.max, low + span), size=shape, endpoint=True, dtype=dtype)


@pytest.mark.parametrize("dtype, offset, scale, fill", SCALE_OFFSET_CASES)
def test_scale_offset_reads_as_zarr_python(tmp_path, dtype, offset, scale, fill):
    dtype = np.dtype(dtype)
    offset_value = value_codecs.json_scalar(offset, dtype)
    data = _values(dtype, (13, 7), np.random.default_rng(1), offset_value, value_codecs.json_scalar(scale, dtype))
    data[-3:, -2:] = value_codecs.json_scalar(fill, dtype)  # whole chunks of the fill value: not stored
    path = write(tmp_path / "a", data, (4, 3), fill_value=fill,
                 filters=[ScaleOffset(offset=offset, scale=scale)], compressors=[ZstdCodec()])
    assert_same(path)
    assert_same(path, (slice(1, 12, 2), slice(2, 7)))
    assert_same(path, (12, 6))  # an edge chunk's last item


def test_scale_offset_float_arithmetic_is_the_arrays_own_type(tmp_path):
    """float32 data, float32 arithmetic: decoding in float64 and rounding after would differ."""
    data = np.random.default_rng(2).random(1000).astype(np.float32) * 1000
    path = write(tmp_path / "a", data, (300,), fill_value=0, filters=[ScaleOffset(offset=0.3, scale=0.7)])
    ours = assert_same(path)
    wide = ((np.fromfile(path / "c" / "0", dtype="<f4").astype(np.float64) / np.float64(np.float32(0.7)))
            + np.float64(np.float32(0.3))).astype(np.float32)
    assert (ours[:300] != wide).any()


def test_missing_inner_chunks_of_a_shard_below_scale_offset_decode_the_encoded_fill(tmp_path):
    """zarr-python fills a shard's missing inner chunks with the fill value as scale_offset encoded
    it, then decodes the shard: those items read decode(encode(fill)), a neighbour of the fill."""
    fill = 0.8132702392002724  # (fill * 3) / 3 != fill in float64
    data = np.full((8, 8), fill)
    data[:4, :4] = 5.0
    path = write(tmp_path / "a", data, (8, 8), fill_value=fill, filters=[ScaleOffset(scale=3)],
                 serializer=ShardingCodec(chunk_shape=(4, 4), codecs=[BytesCodec(), ZstdCodec()]))
    ours = assert_same(path)
    assert ours[7, 7] != fill and ours[7, 7] == (fill * 3) / 3
    assert gpuzarr.open(str(path), device="cpu").meta.chain.describe()[0] == "scale_offset(scale=3)"


def test_scale_offset_inside_the_shards(tmp_path):
    data = np.arange(-50, 50, dtype=np.int16).reshape(10, 10) * 3
    data[:5, :5] = 9  # the fill value
    path = write(tmp_path / "a", data, (2, 2), shards=(4, 6), fill_value=9,
                 filters=[ScaleOffset(offset=9, scale=-3)], compressors=[ZstdCodec()])
    assert_same(path)
    assert_same(path, (slice(3, 9), slice(1, 2)))


@pytest.mark.parametrize("dtype", ["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
                                   "float16", "float32", "float64"])
def test_scale_offset_arithmetic_matches_zarr_python(dtype):
    """gpuzarr's decode and fill encoding against zarr-python's own functions, errors included,
    over random stored values and parameters (negative scales, offsets near the type's ends)."""
    so = pytest.importorskip("zarr.codecs.scale_offset")
    dtype = np.dtype(dtype)
    rng = np.random.default_rng(3)
    for _ in range(60):
        if dtype.kind == "f":
            with np.errstate(over="ignore"):
                stored = rng.standard_normal(50).astype(dtype) * dtype.type(rng.choice([1, 1e3, 1e30]))
            offset, scale = (dtype.type(v) for v in rng.standard_normal(2) * 100)
        else:
            info = np.iinfo(dtype)
            scale = dtype.type(rng.choice([1, 2, 3, 7, 64]) * (1 if dtype.kind == "u" else rng.choice([1, -1])))
            offset = dtype.type([0, 1, int(info.max), int(info.min), int(info.max) // 2][rng.integers(5)])
            step = abs(int(scale))
            top = int(info.max) // step  # q * scale stays in range for q in [-top, top]
            quotient = rng.integers(0 if dtype.kind == "u" else -top, top, 50, endpoint=True,
                                    dtype=np.uint64 if dtype.kind == "u" else np.int64)
            stored = (quotient.astype(object) * int(scale)).astype(dtype)
            if rng.random() < 0.2:
                stored[0] = 1  # a remainder, unless scale is ±1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                theirs, their_error = so._decode(stored.copy(), offset, scale, scale_repr=scale), None
            except ValueError as exc:
                theirs, their_error = None, exc
            try:
                their_fill = so._encode(np.asarray(stored[1]), offset, scale)
            except ValueError:
                their_fill = None
        codec = value_codecs.ScaleOffset(offset, scale, {})
        try:
            ours = codec.decode_batch(np, stored[None], stored.shape, dtype)[0]
        except CorruptDataError as exc:
            assert their_error is not None, f"gpuzarr refused what zarr-python decodes: {exc}"
        else:
            assert their_error is None, f"gpuzarr decoded what zarr-python refuses: {their_error}"
            assert ours.dtype == theirs.dtype and ours.tobytes() == theirs.tobytes()
        try:
            our_fill = codec.encode_fill(stored[1], dtype)
        except Unrepresentable:
            assert their_fill is None
        else:
            assert their_fill is not None and np.asarray(our_fill).tobytes() == np.asarray(their_fill).tobytes()


# --- cast_value -------------------------------------------------------------------------------------

CAST_CASES = [  # array dtype, data_type, rounding, out_of_range, scalar_map, fill
    ("float64", "uint8", "nearest-even", "clamp", NAN_MAP, "NaN"),
    ("float64", "int16", "towards-zero", "wrap", None, 0.0),
    ("float32", "int8", "nearest-away", "clamp", None, 1.5),
    ("float32", "uint16", "towards-positive", None, None, 0.0),
    ("float64", "float16", "towards-negative", "clamp", None, "NaN"),
    ("float64", "float32", "nearest-even", None, None, -0.0),
    ("float16", "float64", "nearest-even", None, None, "Infinity"),
    ("int32", "float32", "nearest-away", None, None, 16777217),
    ("int64", "float16", "towards-zero", "clamp", None, -5),
    ("uint16", "uint8", "nearest-even", "wrap", None, 300),
    ("int16", "uint8", "nearest-even", "clamp", {"encode": [(-1, 255)], "decode": [(255, -1)]}, -1),
    ("uint64", "int64", "nearest-even", "wrap", None, 2**64 - 1),
    ("float32", "float32", "nearest-even", None, None, 3.5),
]


def _cast_data(dtype: np.dtype, target: np.dtype, rng: np.random.Generator) -> np.ndarray:
    """Values of all kinds, none of which the cast stores as a value it cannot read back (an
    infinity in place of an integer, say)."""
    if dtype.kind == "f":
        data = rng.standard_normal((11, 9)) * rng.choice([1, 50, 1e3, 1e5], (11, 9))
        data = np.concatenate([data.ravel()[:-8], [0.5, 1.5, 2.5, -2.5, 255.5, -0.0, 70000.0, 1e6]])
        with np.errstate(over="ignore"):
            return data.astype(dtype).reshape(11, 9)
    info = np.iinfo(dtype)
    bound = 60000 if target == np.float16 else 2**40
    return rng.integers(max(info.min, -bound), min(info.max, bound), (11, 9), endpoint=True).astype(dtype)


@needs_cast
@pytest.mark.parametrize("dtype, target, rounding, out_of_range, scalar_map, fill", CAST_CASES)
def test_cast_value_reads_as_zarr_python(tmp_path, dtype, target, rounding, out_of_range, scalar_map, fill):
    dtype = np.dtype(dtype)
    data = _cast_data(dtype, np.dtype(target), np.random.default_rng(4))
    if out_of_range is None:  # keep every value castable, or zarr-python cannot write the array
        data = np.where(np.isfinite(data) if dtype.kind == "f" else True, data, 0).astype(dtype)
        if np.dtype(target).kind in "iu":
            info = np.iinfo(target)
            data = np.clip(data, info.min, info.max).astype(dtype)
    data[0, :3] = value_codecs.json_scalar(fill, dtype)
    if scalar_map is NAN_MAP:
        data[1, 1] = np.nan
    codec = CastValue(data_type=target, rounding=rounding, out_of_range=out_of_range, scalar_map=scalar_map)
    path = write(tmp_path / "a", data, (4, 4), fill_value=fill, filters=[codec], compressors=[ZstdCodec()])
    assert_same(path)
    assert_same(path, (slice(2, 11, 3), slice(5, 9)))


@needs_cast
def test_scale_offset_then_cast_value_with_nan_preserved_and_sharding(tmp_path):
    """The zarr-extensions example: float64 in [0, 2540] as uint8, NaN kept by the scalar map,
    here with sharding and compression after, a partial last shard and missing inner chunks."""
    data = np.random.default_rng(5).uniform(0, 2540, (37, 23))
    data[::5, ::3] = np.nan
    data[:8, :8] = np.nan  # whole inner chunks of the fill value: left out of their shard
    path = write(tmp_path / "a", data, (4, 4), shards=(16, 8), fill_value="NaN",
                 filters=[ScaleOffset(offset=-10, scale=0.1),
                          CastValue(data_type="uint8", rounding="nearest-even", scalar_map=NAN_MAP)],
                 compressors=[ZstdCodec()])
    ours = assert_same(path)
    assert np.isnan(ours[:8, :8]).all() and np.nanmax(np.abs(ours - data)) <= 5
    assert_same(path, (slice(30, 37), slice(None)))


@needs_cast
def test_shard_below_a_cast_fills_its_missing_inner_chunks_with_the_cast_fill(tmp_path):
    """[scale_offset, cast_value, sharding]: missing inner chunks hold the fill value cast to
    uint8, which decodes to another number than the fill value (zarr-python reads it so)."""
    fill = 12.34
    data = np.full((8, 8), fill)
    data[4:, 4:] = np.linspace(0, 20, 16).reshape(4, 4)
    path = write(tmp_path / "a", data, (8, 8), fill_value=fill,
                 filters=[ScaleOffset(offset=0, scale=10), CastValue(data_type="uint8")],
                 serializer=ShardingCodec(chunk_shape=(4, 4), codecs=[BytesCodec(), ZstdCodec()]))
    ours = assert_same(path)
    assert ours[0, 0] == 12.3 and ours[0, 0] != fill


@needs_cast
@pytest.mark.parametrize("endian", ["little", "big"])
def test_cast_value_to_a_multibyte_type_in_either_byte_order(tmp_path, endian):
    data = np.random.default_rng(6).uniform(-1000, 1000, (20,))
    path = write(tmp_path / "a", data, (6,), fill_value=0.0,
                 filters=[CastValue(data_type="int16", rounding="towards-negative", out_of_range="clamp")],
                 serializer=BytesCodec(endian=endian))
    ours = gpuzarr.open(str(path), device="cpu")[...]
    np.testing.assert_array_equal(ours, np.floor(data))
    if endian == "little":
        assert_same(path)  # zarr-python 3.4.2 + cast-value-rs cannot cast a big-endian chunk


# --- the cast arithmetic, element by element against cast-value-rs ----------------------------------


def _edge_values(dtype: np.dtype, rng: np.random.Generator) -> np.ndarray:
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        edges = [info.min, info.max, 0, 1, -1, 127, 128, 255, 256, -129, 32768, 65504, 65520, 65536, 2**24 + 1,
                 2**31, 2**53 + 1, 2**60 + 2**36 + 1, 2**63 - 1, 2049, 100000]
        edges = [v for v in edges if info.min <= v <= info.max]
        return np.concatenate([np.array(edges, dtype), rng.integers(info.min, info.max, 40, dtype, endpoint=True)])
    floats = [0.0, -0.0, 0.5, -2.5, 127.5, 128.0, 255.5, -129.0, 32768.0, 65504.0, 65520.0, 65536.0, 2.0**31,
              2.0**63, 2.0**64, 1e20, 3.4028235e38, 3.5e38, 1e39, np.inf, -np.inf, np.nan, 1 + 2**-11 + 2**-30,
              1 + 2**-24, 2**-25, 5e-324, 2.0**52 + 1, 8388609.5]
    bits = np.dtype(f"u{dtype.itemsize}")
    with np.errstate(all="ignore"):
        snan = np.array([0x7F800001, 0xFFA00000], np.uint32).view(np.float32).astype(dtype)
        return np.concatenate([np.array(floats).astype(dtype), snan,
                               rng.integers(0, np.iinfo(bits).max, 40, bits, endpoint=True).view(dtype),
                               (rng.standard_normal(40) * 1e4).astype(dtype)])


@needs_cast
@pytest.mark.parametrize("src, dst", list(itertools.product(sorted(NUMBER_TYPES), repeat=2)))
def test_cast_matches_cast_value_rs_per_element(src, dst):
    from cast_value_rs import cast_array

    src, dst = np.dtype(src), np.dtype(dst)
    values = _edge_values(src, np.random.default_rng(7))
    maps = [None, [(float("nan"), 7), (float("-inf"), 1), (0.0, 2)] if src.kind == "f" else [(0, 7), (1, 3)]]
    for rounding, out_of_range, entries in itertools.product(ROUNDING_MODES, (None, "clamp", "wrap"), maps):
        if out_of_range == "wrap" and dst.kind == "f":
            continue
        keys = value_codecs._rust_values([k for k, _ in entries or []], src)
        mapped = value_codecs._rust_values([v for _, v in entries or []], dst)
        cast = value_codecs._Cast(src, dst, rounding, out_of_range, keys, mapped)
        for value in values:
            one = value[None]
            try:
                with np.errstate(all="ignore"):
                    theirs = cast_array(one, target_dtype=dst, rounding_mode=rounding,
                                        out_of_range_mode=out_of_range, scalar_map_entries=entries)
            except ValueError:
                theirs = None
            try:
                ours = cast(one)
            except Unrepresentable:
                ours = None
            where = f"{src}->{dst} {rounding} {out_of_range} map={bool(entries)} value={value!r}"
            assert (ours is None) == (theirs is None), where
            if ours is not None:
                assert ours.dtype == theirs.dtype and ours.tobytes() == theirs.tobytes(), where


# --- refusals --------------------------------------------------------------------------------------


def _scale_offset_array(tmp_path: Path, dtype="int8", fill=0, **config) -> Path:
    data = np.full(6, fill, dtype)
    return write(tmp_path / "a", data, (4,), fill_value=fill, filters=[ScaleOffset(**config)])


@pytest.mark.parametrize("dtype, configuration, error, match", [
    ("int8", {"scale": 0}, MetadataError, "must not be zero"),
    ("float32", {"scale": "-0.0"}, MetadataError, "must not be zero"),
    ("int8", {"scale": "-0.0"}, MetadataError, "not representable in int8"),
    ("int8", {"offset": 300}, MetadataError, "not representable in int8"),
    ("uint8", {"scale": -1}, MetadataError, "not representable in uint8"),
    ("int8", {"offset": 1.5}, MetadataError, "not representable in int8"),
    ("float64", {"offset": "0x12"}, MetadataError, "not representable in float64"),
    ("int8", {"offset": [1]}, MetadataError, "must be a number or a string"),
    ("int8", {"offset": 1, "astype": "uint8"}, MetadataError, "unknown configuration"),
])
def test_bad_scale_offset_configurations_are_refused_at_open(tmp_path, dtype, configuration, error, match):
    path = _scale_offset_array(tmp_path, dtype=dtype)
    edit_codecs(path, lambda meta: meta["codecs"][0].update(configuration=configuration))
    with pytest.raises(error, match=match):
        gpuzarr.open(str(path), device="cpu")
    with pytest.raises(Exception):
        _quiet(zarr.open_array, str(path), mode="r")  # zarr-python refuses it too


def test_a_shard_whose_codecs_cannot_encode_zero_is_refused_at_open(tmp_path):
    """zarr-python checks a shard's inner codecs with the zero of the shard's type: uint16 with
    offset 1 stores 0 as -1, so it refuses the array at open (and cannot write one)."""
    path = _scale_offset_array(tmp_path, dtype="uint16", fill=1)
    inner = [{"name": "scale_offset", "configuration": {"offset": 1}},
             {"name": "bytes", "configuration": {"endian": "little"}}]
    edit_codecs(path, lambda meta: meta.update(codecs=[{"name": "sharding_indexed", "configuration": {
        "chunk_shape": [2], "codecs": inner, "index_codecs": [{"name": "bytes", "configuration": {"endian": "little"}}],
        "index_location": "end"}}]))
    with pytest.raises(MetadataError, match="does not pass through the codecs"):
        gpuzarr.open(str(path), device="cpu")
    with pytest.raises(ValueError, match="outside the range"):
        _quiet(zarr.open_array, str(path), mode="r")


def test_scale_offset_on_a_type_without_arithmetic_is_refused(tmp_path):
    path = _scale_offset_array(tmp_path)
    edit_codecs(path, lambda meta: meta.update(data_type="complex64", fill_value=[0.0, 0.0]))
    with pytest.raises(MetadataError, match="integer and floating-point"):
        gpuzarr.open(str(path), device="cpu")


def test_a_fill_value_scale_offset_cannot_encode_is_refused_at_open(tmp_path):
    """zarr-python resolves the fill value through the codecs when it opens the array."""
    path = _scale_offset_array(tmp_path, scale=2)
    edit_codecs(path, lambda meta: meta.update(fill_value=100))  # 200 is no int8
    with pytest.raises(MetadataError, match="fill value"):
        gpuzarr.open(str(path), device="cpu")
    with pytest.raises(ValueError, match="outside the range"):
        _quiet(zarr.open_array, str(path), mode="r")


@pytest.mark.parametrize("stored, match", [
    ([2, 3, 4, 6], "non-zero remainder"),  # 3 is no multiple of 2
    ([2, 4, 100, 6], "outside the range of dtype int8"),  # 100 / 2 + 100
])
def test_stored_values_scale_offset_cannot_decode_are_corrupt_data(tmp_path, stored, match):
    path = _scale_offset_array(tmp_path, offset=100, scale=2, fill=100)
    (path / "c").mkdir(exist_ok=True)
    (path / "c" / "0").write_bytes(np.array(stored, np.int8).tobytes())
    with pytest.raises(CorruptDataError, match=match) as caught:
        gpuzarr.open(str(path), device="cpu")[...]
    assert f"{path}: c/0: " in str(caught.value), "the error names the array and the chunk"
    with pytest.raises(ValueError, match=match):
        zarr_read(path)


def test_int64_scale_offset_wraps_as_zarr_python(tmp_path):
    """zarr-python's int64 decode wraps on overflow instead of failing (its checks widen to
    int64 itself); gpuzarr returns the same values."""
    path = _scale_offset_array(tmp_path, dtype="int64", offset=2**62, scale=1, fill=2**62)
    (path / "c").mkdir(exist_ok=True)
    (path / "c" / "0").write_bytes(np.array([2**62, 0, 1, -5], "<i8").tobytes())
    ours = assert_same(path, slice(0, 4))
    assert ours[0] == -(2**63)


def _cast_array(tmp_path: Path, dtype="float64", fill=0.0, target="uint8", **config) -> Path:
    data = np.zeros(6, dtype)
    return write(tmp_path / "a", data, (4,), fill_value=fill, filters=[CastValue(data_type=target, **config)])


@needs_cast
@pytest.mark.parametrize("configuration, error, match", [
    ({"data_type": "uint8", "rounding": "up"}, MetadataError, "rounding"),
    ({"data_type": "uint8", "out_of_range": "saturate"}, MetadataError, "out_of_range"),
    ({"data_type": "float32", "out_of_range": "wrap"}, MetadataError, "'wrap' needs an integer"),
    ({"data_type": "bool"}, MetadataError, "integer and floating-point"),
    ({"data_type": "complex64"}, MetadataError, "integer and floating-point"),
    ({"data_type": "uint8", "scalar_map": {"decode": [["NaN", 0]]}}, MetadataError, "not representable in uint8"),
    ({"data_type": "uint8", "scalar_map": {"encode": [[1.5, 300]]}}, MetadataError, "not representable in uint8"),
    ({"data_type": "uint8", "scalar_map": {"encode": [[1, 2, 3]]}}, MetadataError, "pairs"),
    ({"data_type": "uint8", "scalar_map": {"encode": [["0x7ff8000000000000", 0]]}}, UnsupportedFeatureError,
     "hex"),
    ({"data_type": "uint8", "extra": 1}, MetadataError, "unknown configuration"),
    ({"rounding": "nearest-even"}, MetadataError, "needs a 'data_type'"),
])
def test_bad_cast_value_configurations_are_refused_at_open(tmp_path, configuration, error, match):
    path = _cast_array(tmp_path)
    edit_codecs(path, lambda meta: meta["codecs"][0].update(configuration=configuration))
    with pytest.raises(error, match=match):
        gpuzarr.open(str(path), device="cpu")
    with pytest.raises(Exception):
        _quiet(zarr.open_array, str(path), mode="r")  # zarr-python cannot open it either


@pytest.mark.parametrize("target", ["bfloat16", "int4", "float8_e4m3"])
def test_cast_value_to_types_zarr_python_cannot_cast_is_unsupported(tmp_path, target):
    path = _scale_offset_array(tmp_path, dtype="float32", fill=0.0)
    edit_codecs(path, lambda meta: meta["codecs"].__setitem__(0, {"name": "cast_value",
                                                                   "configuration": {"data_type": target}}))
    with pytest.raises(UnsupportedFeatureError):
        gpuzarr.open(str(path), device="cpu")


@needs_cast
def test_a_nan_fill_value_a_cast_to_integers_cannot_hold_is_refused_at_open(tmp_path):
    path = _cast_array(tmp_path)
    edit_codecs(path, lambda meta: meta.update(fill_value="NaN"))
    with pytest.raises(MetadataError, match="fill value .*nan.* does not pass"):
        gpuzarr.open(str(path), device="cpu")
    with pytest.raises(ValueError):
        _quiet(zarr.open_array, str(path), mode="r")


@needs_cast
@pytest.mark.parametrize("stored_dtype, stored, array_dtype, target", [
    ("<i2", [1, 2, 300, 4], "int8", "int16"),  # 300 is no int8 and out_of_range is not set
    ("<f4", [1.0, 1e6, 2.0, 3.0], "float16", "float32"),  # beyond float16's finite range
])
def test_stored_values_a_cast_cannot_decode_are_corrupt_data(tmp_path, stored_dtype, stored, array_dtype, target):
    path = write(tmp_path / "a", np.zeros(6, array_dtype), (4,), fill_value=0,
                 filters=[CastValue(data_type=target)], serializer=BytesCodec(endian="little"))
    (path / "c").mkdir(exist_ok=True)
    (path / "c" / "0").write_bytes(np.array(stored, stored_dtype).tobytes())
    with pytest.raises(CorruptDataError, match="cast_value"):
        gpuzarr.open(str(path), device="cpu")[...]
    with pytest.raises(ValueError, match="out of range"):
        zarr_read(path)


def test_the_gpu_device_refuses_these_codecs_with_the_cpu_hint():
    """No GPU decoder: the batch is refused, naming device='cpu' (as for numcodecs filters)."""
    fake_cupy = object()
    codec = value_codecs.ScaleOffset(np.float32(0), np.float32(2), {})
    with pytest.raises(UnsupportedFeatureError, match="device='cpu'"):
        codec.decode_batch(fake_cupy, np.zeros((1, 4), np.float32), (4,), np.dtype(np.float32))
    cast = value_codecs.CastValue.build({"data_type": "uint8"}, np.dtype(np.float32), "zarr.json")
    with pytest.raises(UnsupportedFeatureError, match="device='cpu'"):
        cast.decode_batch(fake_cupy, np.zeros((1, 4), np.uint8), (4,), np.dtype(np.float32))


# --- through zarr-python: gpuzarr.CodecPipeline reads these itself ------------------------------------


@needs_cast
def test_codec_pipeline_reads_them_without_falling_back(tmp_path):
    data = np.random.default_rng(8).uniform(0, 250, (30, 20))
    path = write(tmp_path / "a", data, (8, 8), fill_value=0.0,
                 filters=[ScaleOffset(offset=0, scale=4), CastValue(data_type="uint16", rounding="towards-zero")],
                 compressors=[ZstdCodec()])
    expected = zarr_read(path)
    with zarr.config.set({"codec_pipeline.path": "gpuzarr.CodecPipeline", "codec_pipeline.strict": True}):
        arr = _quiet(zarr.open_array, str(path), mode="r")
        assert type(arr._async_array.codec_pipeline) is gpuzarr.CodecPipeline
        got = arr[3:29, ::3]
    assert got.tobytes() == np.ascontiguousarray(expected[3:29, ::3]).tobytes()


# --- property ---------------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shape=st.lists(st.integers(1, 12), min_size=1, max_size=3),
       chunk_seed=st.integers(0, 2**16),
       dtype=st.sampled_from(["float64", "float32", "int32", "int16", "uint16"]),
       offset=st.integers(-50, 50),
       scale=st.sampled_from([1, 2, -3, 5, -1]),
       float_scale=st.floats(-100, 100, allow_nan=False, allow_infinity=False).filter(lambda s: abs(s) > 1e-6),
       sharded=st.booleans())
def test_property_scale_offset_reads_as_zarr_python(shape, chunk_seed, dtype, offset, scale, float_scale, sharded):
    rng = np.random.default_rng(chunk_seed)
    shape = tuple(shape)
    chunks = tuple(int(rng.integers(1, n + 1)) for n in shape)
    dtype = np.dtype(dtype)
    if dtype.kind == "u":  # unsigned types hold no negative scale or offset
        offset, scale = (0 if sharded else abs(offset)), abs(scale)  # a shard's codecs must encode 0
    scale_value = float_scale if dtype.kind == "f" else scale
    data = _values(dtype, shape, rng, offset, scale_value)
    fill = data.flat[0]
    data.flat[-1] = fill
    with tempfile.TemporaryDirectory() as tmp:
        path = write(Path(tmp) / "a", data, chunks, fill_value=fill.item(),
                     shards=tuple(2 * c for c in chunks) if sharded else None,
                     filters=[ScaleOffset(offset=offset, scale=scale_value)], compressors=[ZstdCodec()])
        ours = assert_same(path)
        if dtype.kind in "iu":
            np.testing.assert_array_equal(ours, data)  # integer scale_offset is lossless


@needs_cast
@settings(max_examples=300, deadline=None)
@given(src=st.sampled_from(sorted(NUMBER_TYPES)), dst=st.sampled_from(sorted(NUMBER_TYPES)),
       rounding=st.sampled_from(ROUNDING_MODES), out_of_range=st.sampled_from([None, "clamp", "wrap"]),
       raw=st.binary(min_size=8, max_size=256), nan_map=st.booleans())
def test_property_cast_matches_cast_value_rs(src, dst, rounding, out_of_range, raw, nan_map):
    """Any bit patterns (NaNs, infinities, subnormals, extremes), one call for the whole array:
    gpuzarr's cast fails exactly when cast-value-rs does, and otherwise returns the same bytes."""
    from cast_value_rs import cast_array

    src, dst = np.dtype(src), np.dtype(dst)
    if out_of_range == "wrap" and dst.kind == "f":
        out_of_range = "clamp"
    values = np.frombuffer(raw[: len(raw) // src.itemsize * src.itemsize], dtype=src)
    entries = [(float("nan"), 1), (float("inf"), 2), (float("-inf"), 3)] if nan_map and src.kind == "f" else None
    cast = value_codecs._Cast(src, dst, rounding, out_of_range,
                              value_codecs._rust_values([k for k, _ in entries or []], src),
                              value_codecs._rust_values([v for _, v in entries or []], dst))
    try:
        with np.errstate(all="ignore"):
            theirs = cast_array(values, target_dtype=dst, rounding_mode=rounding, out_of_range_mode=out_of_range,
                                scalar_map_entries=entries)
    except ValueError:
        with pytest.raises(Unrepresentable):
            cast(values)
        return
    ours = cast(values)
    assert ours.dtype == theirs.dtype and ours.tobytes() == theirs.tobytes()
