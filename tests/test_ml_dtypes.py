"""The ML data types tensorstore writes (bfloat16, float8_*, float4_e2m1fn, int2, int4), read through
the optional ml_dtypes package: tensorstore-written arrays (v3 plain and sharded + zstd, v2 with
blosc) compared bit for bit with tensorstore's own read and with the source data; fill values
parsed as tensorstore parses them; big-endian bfloat16; the refusals (no ml_dtypes, GPU types).

zarr-python 3.1.6 cannot read any of these (`No Zarr data type found that matches 'bfloat16'`, with
or without ml_dtypes imported), so tensorstore is the reference throughout."""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path

import numpy as np
import pytest

import gpuzarr
from checks import assert_identical
from gpu_standin import StandinEngine
from gpuzarr.devices.gpu import GpuDevice, gpu_dtype

ml_dtypes = pytest.importorskip("ml_dtypes")
ts = pytest.importorskip("tensorstore")

FLOATS = ("bfloat16", "float8_e4m3fn", "float8_e4m3fnuz", "float8_e4m3b11fnuz", "float8_e5m2",
          "float8_e5m2fnuz", "float8_e3m4", "float4_e2m1fn")
INTS = {"int2": 2, "int4": 4}  # bits
TYPES = FLOATS + tuple(INTS)

# Fill values of the write cases: (v3 JSON, its bits, v2 JSON, its bits), as tensorstore 0.1.86
# reads them (checked again below against tensorstore's read of every case).
FILLS = {
    "bfloat16": ("0xffc1", 0xFFC1, -1.5, 0xBFC0),  # a negative NaN with a payload
    "float8_e4m3fn": ("0xff", 0xFF, "NaN", 0x7F),
    "float8_e4m3fnuz": (-1.5, 0xC4, "NaN", 0x80),
    "float8_e4m3b11fnuz": ("0x80", 0x80, 0.1, 0x3D),
    "float8_e5m2": ("-Infinity", 0xFC, "Infinity", 0x7C),
    "float8_e5m2fnuz": (0.1, 0x32, -0.0, 0x00),  # fnuz types have no -0
    "float8_e3m4": ("0xfa", 0xFA, -3.0, 0xC8),
    "float4_e2m1fn": (-0.0, 0x08, "DQ==", 0x0D),  # tensorstore's v2 writes this one as base64
    "int2": (-2, 0xFE, 1, 0x01),
    "int4": (-3, 0xFD, -8, 0xF8),  # sign-extended to the byte, as tensorstore and zarrs store them
}

SHAPE, CHUNKS, SHARD = (29, 31), (8, 10), (16, 20)
# Chunk columns 2-3 stay missing except chunk row 2: whole missing chunks, a whole missing shard
# (rows 0-15, columns 20-30), and missing inner chunks in a present shard; edge chunks are partial.
REGIONS = (np.s_[:, :20], np.s_[16:24, 20:])
SELECTIONS = {"full": ..., "window": np.s_[5:27, 7:30], "strided": np.s_[::3, 29:3:-2],
              "missing_edge": np.s_[24:, 28:], "point": (28, 30)}
LE = {"name": "bytes", "configuration": {"endian": "little"}}
BE = {"name": "bytes", "configuration": {"endian": "big"}}
ZSTD = {"name": "zstd", "configuration": {"level": 3, "checksum": False}}


def _dtype(name: str) -> np.dtype:
    return np.dtype(getattr(ml_dtypes, name))


def _bits(a: np.ndarray) -> np.ndarray:
    """The items as unsigned integers of their size: what "bit for bit" compares."""
    a = np.ascontiguousarray(a)
    return a.view(f"u{a.dtype.itemsize}")


def _source(name: str, seed: int) -> np.ndarray:
    """Every bit pattern the type has (NaN payloads, ±0, ±inf): floats from random bits, the
    integers (and float4, a nibble) in ml_dtypes' own encoding of their values."""
    dtype, rng = _dtype(name), np.random.default_rng(seed)
    if name in INTS:
        half = 1 << (INTS[name] - 1)
        return rng.integers(-half, half, SHAPE, dtype=np.int8).astype(dtype)
    if name == "float4_e2m1fn":
        return rng.integers(0, 16, SHAPE, dtype=np.uint8).view(dtype)
    return rng.integers(0, 1 << (8 * dtype.itemsize), SHAPE, dtype=f"u{dtype.itemsize}").view(dtype)


def _expected(src: np.ndarray, fill_bits: int) -> np.ndarray:
    """The source inside REGIONS, the fill value's exact bits elsewhere."""
    out = np.empty(SHAPE, dtype=src.dtype)
    _bits(out)[...] = fill_bits
    for r in REGIONS:
        out[r] = src[r]
    return out


def _create(path: Path, driver: str, meta: dict, field: str | None = None, create: bool = True):
    spec = {"driver": driver, "kvstore": {"driver": "file", "path": str(path)}}
    spec.update({"metadata": meta, "create": True, "delete_existing": True} if create else {"open": True})
    if field is not None:
        spec["field"] = field
    return ts.open(spec).result()


def _write(path: Path, driver: str, meta: dict, src: np.ndarray) -> np.ndarray:
    """Write REGIONS of `src` with tensorstore; returns tensorstore's read of the whole array."""
    t = _create(path, driver, meta)
    for r in REGIONS:
        t[r].write(src[r]).result()
    return _create(path, driver, {}, create=False).read().result()


def _v3_meta(name: str, fill: object, codecs: list) -> dict:
    return {"shape": list(SHAPE), "data_type": name, "fill_value": fill, "codecs": codecs,
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(SHARD if _sharded(codecs)
                                                                                   else CHUNKS)}}}


def _sharded(codecs: list) -> bool:
    return codecs[0]["name"] == "sharding_indexed"


def _shard(codecs: list) -> dict:
    return {"name": "sharding_indexed", "configuration": {"chunk_shape": list(CHUNKS), "codecs": codecs}}


def _layout_meta(layout: str, name: str) -> tuple[str, dict, int]:
    """(tensorstore driver, metadata, the fill value's bits) of one write case."""
    v3_fill, v3_bits, v2_fill, v2_bits = FILLS[name]
    multibyte = _dtype(name).itemsize > 1
    inner = [LE if multibyte else {"name": "bytes"}]
    if layout == "v3":
        return "zarr3", _v3_meta(name, v3_fill, inner), v3_bits
    if layout == "v3_sharded_zstd":
        return "zarr3", _v3_meta(name, v3_fill, [_shard(inner + [ZSTD])]), v3_bits
    return "zarr", {"shape": list(SHAPE), "chunks": list(CHUNKS), "dtype": name, "fill_value": v2_fill}, v2_bits


def _check_reads(path: Path, reference: np.ndarray, expected: np.ndarray, what: str) -> None:
    """gpuzarr's CPU reads of every selection against tensorstore's read and the expected data."""
    arr = gpuzarr.open(str(path), device="cpu")
    assert arr.dtype == expected.dtype
    assert_identical(reference, expected, f"{what}: tensorstore's read")
    for label, sel in SELECTIONS.items():
        got = arr.read(sel)
        assert_identical(_bits(got), _bits(reference[sel]), f"{what} {label}")
        assert_identical(got, expected[sel], f"{what} {label}")


# ----------------------------------------------------------------------------- tensorstore arrays

@pytest.mark.parametrize("layout", ["v3", "v3_sharded_zstd", "v2"])
@pytest.mark.parametrize("name", TYPES)
def test_tensorstore_array_reads_bit_identical(tmp_path, name, layout):
    driver, meta, fill_bits = _layout_meta(layout, name)
    src = _source(name, seed=TYPES.index(name))
    reference = _write(tmp_path / "a", driver, meta, src)
    _check_reads(tmp_path / "a", reference, _expected(src, fill_bits), f"{name} {layout}")


@pytest.mark.parametrize("codecs", [
    [BE],
    [BE, ZSTD],
    [{"name": "transpose", "configuration": {"order": [1, 0]}}, BE],
    [_shard([BE, ZSTD])],
], ids=["bytes", "zstd", "transpose", "sharded"])
def test_big_endian_bfloat16(tmp_path, codecs):
    src = _source("bfloat16", seed=99)
    reference = _write(tmp_path / "a", "zarr3", _v3_meta("bfloat16", "NaN", codecs), src)
    _check_reads(tmp_path / "a", reference, _expected(src, 0x7FC0), "bfloat16 big-endian")


def test_big_endian_bfloat16_is_stored_big_endian(tmp_path):
    """The swap is real: the stored bytes of chunk (0, 0) are the source's bytes reversed per item."""
    src = _source("bfloat16", seed=7)
    _write(tmp_path / "a", "zarr3", _v3_meta("bfloat16", 0.0, [BE]), src)
    stored = np.frombuffer((tmp_path / "a" / "c" / "0" / "0").read_bytes(), dtype=">u2").reshape(CHUNKS)
    np.testing.assert_array_equal(stored, _bits(src[:8, :10]))
    got = gpuzarr.open(str(tmp_path / "a"), device="cpu")[:8, :10]
    assert_identical(got, src[:8, :10])


def test_v2_has_no_big_endian_ml_types(tmp_path):
    """tensorstore's zarr driver takes these names without a byte order only (NumPy knows none
    either): '>bfloat16' is refused by both."""
    with pytest.raises(ValueError, match="Unsupported zarr dtype"):
        _create(tmp_path / "ts", "zarr", {"shape": [4], "chunks": [2], "dtype": ">bfloat16"})
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / ".zarray").write_text(json.dumps(
        {"zarr_format": 2, "shape": [4], "chunks": [2], "dtype": ">bfloat16", "compressor": None,
         "fill_value": None, "filters": None, "order": "C"}))
    with pytest.raises(gpuzarr.MetadataError, match="bfloat16"):
        gpuzarr.open(str(tmp_path / "a"), device="cpu")


@pytest.mark.parametrize("fmt, endian", [(2, None), (3, "little"), (3, "big")])
def test_struct_with_ml_fields(tmp_path, fmt, endian):
    """tensorstore writes ml_dtypes' names as struct (v3) and structured-dtype (v2) field types;
    it opens such an array one field at a time."""
    fields = [("a", "bfloat16"), ("b", "int16"), ("c", "float8_e4m3fn")]
    dtype = np.dtype([(f, _dtype(t) if t in TYPES else np.dtype(t)) for f, t in fields])
    if fmt == 2:
        driver = "zarr"
        meta = {"shape": list(SHAPE), "chunks": list(CHUNKS), "dtype": [[f, t if t in TYPES else "<i2"]
                                                                        for f, t in fields]}
    else:
        driver = "zarr3"
        meta = {"shape": list(SHAPE), "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(CHUNKS)}},
                "data_type": {"name": "struct", "configuration": {"fields": [{"name": f, "data_type": t}
                                                                            for f, t in fields]}},
                "codecs": [{"name": "bytes", "configuration": {"endian": endian}}]}
    src = np.empty(SHAPE, dtype=dtype)
    for k, (f, t) in enumerate(fields):
        src[f] = _source(t, seed=k) if t in TYPES else np.arange(np.prod(SHAPE), dtype=t).reshape(SHAPE)
    path = tmp_path / "a"
    for k, (f, _) in enumerate(fields):
        t = _create(path, driver, meta, field=f, create=k == 0)
        for r in REGIONS:
            t[r].write(np.ascontiguousarray(src[f][r])).result()
    expected = np.zeros(SHAPE, dtype=dtype)  # tensorstore's fill: null in v2, zero per field in v3
    for r in REGIONS:
        expected[r] = src[r]
    got = gpuzarr.open(str(path), device="cpu")[...]
    assert_identical(got, expected, f"v{fmt} struct")
    for f, _ in fields:
        assert_identical(_bits(got[f]), _bits(_create(path, driver, {}, field=f, create=False).read().result()), f)


# ----------------------------------------------------------------------------- fill values

def _neighbours(name: str) -> list[float]:
    """Numbers that test rounding: the midpoint between neighbouring values (ties), a hair either
    side of it (a double rounding through float32 gets these wrong), beyond the largest value and
    below the smallest subnormal."""
    dtype = _dtype(name)
    with np.errstate(invalid="ignore"):  # NaNs, dropped below
        values = np.unique(np.arange(1 << (8 * dtype.itemsize), dtype=f"u{dtype.itemsize}").view(dtype)
                           .astype(np.float64))
    values = values[np.isfinite(values)]
    picks = np.random.default_rng(5).choice(len(values) - 1, size=8, replace=False)
    out = []
    for i in sorted(picks):
        lo, hi = values[i], values[i + 1]
        mid = (lo + hi) / 2
        out += [float(mid), float(mid + (hi - lo) * 2**-30), float(mid - (hi - lo) * 2**-30)]
    top, tiny = float(values.max()), float(values[values > 0].min())
    return out + [top * 1.01, top * 4, -top * 4, 1e300, -1e300, tiny / 2, tiny * 0.51, 5e-324, 1 + 2**-8 + 2**-30]


def _fill_cases(name: str, fmt: int) -> list:
    """JSON fill values tensorstore accepts for `name` in format `fmt`."""
    dtype = _dtype(name)
    if name in INTS:
        half = 1 << (INTS[name] - 1)
        return list(range(-half, half)) + [float(half - 1), -0.0]
    if fmt == 2 and name == "float4_e2m1fn":  # tensorstore's zarr driver takes base64 only here
        return [base64.b64encode(bytes([b])).decode() for b in range(16)]
    specials = ["NaN", "Infinity", "-Infinity", 0.0, -0.0, 1.5, 0.1, -3.0]
    if fmt == 2:
        return specials + _neighbours(name)
    width = 2 * dtype.itemsize
    hexes = [f"0x{b:0{width}x}" for b in (0, 1, 0x7F, 0x80, 0xFF, (1 << 4 * width) - 1)] + ["0x1"]
    return specials + hexes + _neighbours(name)


def _empty_array(path: Path, name: str, fmt: int, fill: object) -> None:
    """Metadata only (every chunk missing), written by hand so the fill value reaches both readers
    exactly as given (tensorstore would normalise it on create)."""
    path.mkdir()
    if fmt == 3:
        doc = {"zarr_format": 3, "node_type": "array", "shape": [3], "data_type": name, "fill_value": fill,
               "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [2]}},
               "chunk_key_encoding": {"name": "default"},
               "codecs": [LE if _dtype(name).itemsize > 1 else {"name": "bytes"}]}
        (path / "zarr.json").write_text(json.dumps(doc))
    else:
        doc = {"zarr_format": 2, "shape": [3], "chunks": [2], "dtype": name, "fill_value": fill,
               "compressor": None, "filters": None, "order": "C"}
        (path / ".zarray").write_text(json.dumps(doc))


@pytest.mark.parametrize("fmt", [3, 2])
@pytest.mark.parametrize("name", TYPES)
def test_fill_values_match_tensorstore(tmp_path, name, fmt):
    """Every JSON spelling tensorstore accepts (numbers, "NaN", "±Infinity", "0x…" bits in v3,
    base64 for v2 float4_e2m1fn) decodes to the bits tensorstore's read gives."""
    driver = "zarr3" if fmt == 3 else "zarr"
    for k, fill in enumerate(_fill_cases(name, fmt)):
        path = tmp_path / str(k)
        _empty_array(path, name, fmt, fill)
        reference = _create(path, driver, {}, create=False).read().result()
        got = gpuzarr.open(str(path), device="cpu")[...]
        assert_identical(_bits(got), _bits(reference), f"{name} v{fmt} fill {fill!r}")


@pytest.mark.parametrize("name, fill", [
    ("int4", 8), ("int4", -9), ("int4", 1.5), ("int4", "NaN"), ("int4", "0x1"), ("int4", True), ("int2", 2),
    ("bfloat16", "0x1ffff"), ("bfloat16", "AAA="), ("bfloat16", [1, 2]), ("float8_e5m2", "0x"),
    ("float8_e5m2", "nan"), ("float4_e2m1fn", True),
])
def test_bad_fill_values_are_refused(tmp_path, name, fill):
    _empty_array(tmp_path / "a", name, 3, fill)
    with pytest.raises(gpuzarr.MetadataError, match="fill value"):
        gpuzarr.open(str(tmp_path / "a"), device="cpu")


def test_v2_base64_fill_must_be_one_byte(tmp_path):
    _empty_array(tmp_path / "a", "float4_e2m1fn", 2, "AAA=")
    with pytest.raises(gpuzarr.MetadataError, match="2 bytes"):
        gpuzarr.open(str(tmp_path / "a"), device="cpu")


def test_bfloat16_bytes_codec_needs_endian(tmp_path):
    """A 2-byte number: the bytes codec must say its byte order (tensorstore always writes it)."""
    _empty_array(tmp_path / "a", "bfloat16", 3, 0.0)
    doc = json.loads((tmp_path / "a" / "zarr.json").read_text())
    doc["codecs"] = [{"name": "bytes"}]
    (tmp_path / "a" / "zarr.json").write_text(json.dumps(doc))
    with pytest.raises(gpuzarr.MetadataError, match="endian"):
        gpuzarr.open(str(tmp_path / "a"), device="cpu")


# ----------------------------------------------------------------------------- refusals

@pytest.mark.parametrize("fmt", [3, 2])
def test_missing_ml_dtypes_is_explained(tmp_path, monkeypatch, fmt):
    _empty_array(tmp_path / "a", "bfloat16", fmt, 0.0)
    monkeypatch.setitem(sys.modules, "ml_dtypes", None)  # `import ml_dtypes` now raises ImportError
    with pytest.raises(gpuzarr.UnsupportedFeatureError, match=r"'bfloat16'.*pip install \"gpuzarr\[ml\]\""):
        gpuzarr.open(str(tmp_path / "a"), device="cpu")


def test_missing_ml_dtypes_in_a_v2_struct_field(tmp_path, monkeypatch):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / ".zarray").write_text(json.dumps(
        {"zarr_format": 2, "shape": [4], "chunks": [2], "dtype": [["a", "<i2"], ["b", "int4"]],
         "compressor": None, "fill_value": None, "filters": None, "order": "C"}))
    monkeypatch.setitem(sys.modules, "ml_dtypes", None)
    with pytest.raises(gpuzarr.UnsupportedFeatureError, match=r"'int4'.*gpuzarr\[ml\]"):
        gpuzarr.open(str(tmp_path / "a"), device="cpu")


def test_float8_e8m0fnu_is_refused(tmp_path):
    """tensorstore writes float8_e8m0fnu, but its numeric fill values wrongly (1.0 as 2**64, which
    only tensorstore reads back as 1.0), so gpuzarr does not guess: the type is unknown to it."""
    one = np.array(1.0, dtype=_dtype("float8_e8m0fnu"))
    ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": str(tmp_path / "a")},
             "metadata": {"shape": [4], "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [2]}}}},
            create=True, dtype="float8_e8m0fnu", fill_value=one).result()
    assert json.loads((tmp_path / "a" / "zarr.json").read_text())["fill_value"] == 2.0**64
    with pytest.raises(gpuzarr.UnsupportedFeatureError, match="float8_e8m0fnu"):
        gpuzarr.open(str(tmp_path / "a"), device="cpu")


# ----------------------------------------------------------------------------- the GPU

@pytest.mark.parametrize("name", [n for n in TYPES if n != "bfloat16"])
def test_gpu_refuses_types_cupy_cannot_copy(tmp_path, name):
    """CuPy 14 holds any dtype but has C types (so copies, casts, reductions) for bfloat16 only of
    ml_dtypes' types: cupy._core._scalar.get_typename raises 'Unsupported dtype' for the rest."""
    with pytest.raises(gpuzarr.UnsupportedFeatureError, match=rf"{name}.*device='cpu'"):
        gpu_dtype(_dtype(name))
    driver, meta, _ = _layout_meta("v3", name)
    _write(tmp_path / "a", driver, meta, _source(name, seed=1))
    arr = gpuzarr.open(str(tmp_path / "a"), device="cpu")
    with pytest.raises(gpuzarr.UnsupportedFeatureError, match=name):
        arr.read(device=GpuDevice(StandinEngine()))


def test_gpu_dtype_keeps_bfloat16_native():
    bf16 = _dtype("bfloat16")
    assert gpu_dtype(bf16) == bf16
    assert gpu_dtype(bf16.newbyteorder(">")) == bf16


@pytest.mark.parametrize("codecs", [
    [LE], [BE], [{"name": "transpose", "configuration": {"order": [1, 0]}}, BE], [_shard([BE, ZSTD])],
], ids=["le", "be", "transpose_be", "sharded_be"])
def test_gpu_standin_reads_bfloat16(tmp_path, codecs):
    """The GPU orchestration (run by the CPU stand-in of tests/gpu_standin.py) gives the CPU's bits."""
    src = _source("bfloat16", seed=3)
    _write(tmp_path / "a", "zarr3", _v3_meta("bfloat16", "0x7fc1", codecs), src)
    arr = gpuzarr.open(str(tmp_path / "a"), device="cpu")
    gpu = GpuDevice(StandinEngine())
    for label, sel in SELECTIONS.items():
        assert_identical(arr.read(sel, device=gpu), arr.read(sel), f"bfloat16 {label}")
