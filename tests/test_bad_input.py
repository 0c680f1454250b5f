"""Bad input: malformed or unsupported metadata, corrupt chunk and shard bytes, missing keys.

Valid arrays are written with zarr-python (see tests/corrupt.py), copied, then broken precisely.
The contract checked here:
- MetadataError / UnsupportedFeatureError are raised by `gpuzarr.open`, never later;
- CorruptDataError is raised by the read (open succeeds), and other chunks stay readable;
- a missing key or an empty inner chunk reads as the fill value;
- every message names the file or store key involved;
- hostile sizes in a shard index fail fast, without allocating what they claim.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import tracemalloc
from pathlib import Path

import numcodecs
import numpy as np
import pytest
import zarr

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import corrupt as C  # noqa: E402
from gpu_standin import StandinEngine  # noqa: E402

import gpuzarr  # noqa: E402
from gpuzarr import (  # noqa: E402
    CorruptDataError,
    DeviceMemoryError,
    GpuzarrError,
    MetadataError,
    StoreError,
    UnsupportedFeatureError,
)
from gpuzarr.devices.gpu import GpuDevice  # noqa: E402

BAD = "bad_arr"  # directory name of every array under test: messages must name it or its file


# ---------------------------------------------------------------------------------------------
# infrastructure


@pytest.fixture(autouse=True)
def _no_hang():
    """Fail (instead of hanging the suite) when one test runs past 20 s."""
    if not hasattr(signal, "SIGALRM"):
        yield
        return

    def on_alarm(signum, frame):
        raise TimeoutError("test ran past 20 s: gpuzarr hangs on bad input")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(20)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    """Valid arrays, written once per module; tests copy them before breaking them."""
    root = tmp_path_factory.mktemp("bases")
    built = {}

    def get(name: str) -> Path:
        if name not in built:
            kind, _, arg = name.partition(":")
            p = root / f"{len(built)}_{kind}"
            if kind == "v3":
                C.make_v3(p, codecs=arg)
            elif kind == "v3k2":  # v3 with the v2 chunk key encoding: keys 0.1
                C.make_v3(p, codecs=arg, key_encoding="v2")
            elif kind == "nested":
                C.make_nested(p)
            elif kind == "sharded":
                crc, loc, inner = arg.split(",")
                C.make_sharded(p, index_crc=(crc == "crc"), index_location=loc, inner=inner)
            elif kind == "v2":
                comp, sep = arg.split(",")
                C.make_v2(p, compressor=None if comp == "none" else comp, separator=sep)
            else:
                raise ValueError(name)
            built[name] = p
        return built[name]

    return get


def _cuda_usable() -> bool:
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


@pytest.fixture(params=["cpu", "standin", pytest.param("gpu", marks=pytest.mark.gpu)])
def device(request):
    """Data cases run on the CPU path and on the GPU orchestration with nvCOMP's stand-in (as
    nvCOMP 6.0 was measured to behave: tests/gpu_standin.py); with `pytest -m gpu` also on the
    GPU path, where a bad frame must raise the same error instead of crashing nvCOMP or
    returning garbage."""
    if request.param == "gpu" and not _cuda_usable():
        pytest.skip("no usable CUDA GPU (cupy missing or no device)")
    return GpuDevice(StandinEngine()) if request.param == "standin" else request.param


def to_numpy(x) -> np.ndarray:
    return x if isinstance(x, np.ndarray) else (x.get() if hasattr(x, "get") else np.asarray(x))


def copy_base(bases, tmp_path: Path, name: str) -> Path:
    return C.copy_array(bases(name), tmp_path / BAD)


def gz_open(path: Path, device: str = "cpu", **kw):
    return gpuzarr.open(str(path), device=device, **kw)


def assert_names_metadata(exc: BaseException, filename: str) -> None:
    msg = str(exc)
    assert filename in msg or BAD in msg, f"message names neither {filename!r} nor the array path: {msg!r}"


def assert_names_key(exc: BaseException, key: str) -> None:
    msg = str(exc)
    assert key in msg, f"message does not name the store key {key!r}: {msg!r}"


# ---------------------------------------------------------------------------------------------
# v3 metadata


def _set(*path_and_value):
    *path, value = path_and_value

    def fn(m):
        d = m
        for k in path[:-1]:
            d = d[k]
        d[path[-1]] = value

    return fn


def _del(*path):
    def fn(m):
        d = m
        for k in path[:-1]:
            d = d[k]
        del d[path[-1]]

    return fn


def _codecs(*codecs):
    return _set("codecs", list(codecs))


BYTES_LE = {"name": "bytes", "configuration": {"endian": "little"}}
ZSTD = {"name": "zstd", "configuration": {"level": 1, "checksum": False}}
TRANSPOSE = {"name": "transpose", "configuration": {"order": [1, 0]}}

# (id, mutation of the zarr.json dict of an unsharded (8, 8) int32 array, expected error)
V3_META_CASES = [
    # required fields
    *[(f"missing_{k}", _del(k), MetadataError)
      for k in ("zarr_format", "node_type", "shape", "data_type", "chunk_grid", "chunk_key_encoding",
                "fill_value", "codecs")],
    ("zarr_format_2", _set("zarr_format", 2), MetadataError),
    ("zarr_format_4", _set("zarr_format", 4), MetadataError),
    ("zarr_format_string", _set("zarr_format", "3"), MetadataError),
    ("node_type_unknown", _set("node_type", "banana"), MetadataError),
    # shape
    ("shape_string_dim", _set("shape", [8, "8"]), MetadataError),
    ("shape_negative_dim", _set("shape", [-8, 8]), MetadataError),
    ("shape_float_dim", _set("shape", [8.5, 8]), MetadataError),
    ("shape_null_dim", _set("shape", [None, 8]), MetadataError),
    ("shape_not_a_list", _set("shape", 64), MetadataError),
    # chunk grid
    ("chunk_rank_lower", _set("chunk_grid", "configuration", "chunk_shape", [4]), MetadataError),
    ("chunk_rank_higher", _set("chunk_grid", "configuration", "chunk_shape", [4, 4, 4]), MetadataError),
    ("chunk_zero", _set("chunk_grid", "configuration", "chunk_shape", [0, 4]), MetadataError),
    ("chunk_negative", _set("chunk_grid", "configuration", "chunk_shape", [-4, 4]), MetadataError),
    ("chunk_string", _set("chunk_grid", "configuration", "chunk_shape", ["4", 4]), MetadataError),
    ("chunk_grid_no_configuration", _set("chunk_grid", {"name": "regular"}), MetadataError),
    ("chunk_grid_not_an_object", _set("chunk_grid", 5), MetadataError),
    ("chunk_grid_rectilinear",
     _set("chunk_grid", {"name": "rectilinear",
                         "configuration": {"kind": "inline", "chunk_shapes": [[4, 4], [4, 4]]}}),
     UnsupportedFeatureError),
    ("chunk_grid_unknown", _set("chunk_grid", {"name": "hexagonal", "configuration": {}}),
     UnsupportedFeatureError),
    # chunk key encoding
    ("key_encoding_unknown", _set("chunk_key_encoding", {"name": "fancy"}), UnsupportedFeatureError),
    ("key_encoding_bad_separator",
     _set("chunk_key_encoding", {"name": "default", "configuration": {"separator": "-"}}), MetadataError),
    # data type
    ("data_type_unknown", _set("data_type", "frobnicate64"), UnsupportedFeatureError),
    ("data_type_unknown_object", _set("data_type", {"name": "frobnicate", "configuration": {}}),
     UnsupportedFeatureError),
    # fill value
    ("fill_string_for_int", _set("fill_value", "abc"), MetadataError),
    ("fill_float_for_int", _set("fill_value", 1.5), MetadataError),
    ("fill_out_of_range_for_int32", _set("fill_value", 2**40), MetadataError),
    ("fill_list_for_int", _set("fill_value", [1, 2]), MetadataError),
    ("fill_null", _set("fill_value", None), MetadataError),
    # top-level keys
    ("unknown_key_scalar", _set("frobnicate", 1), MetadataError),
    ("unknown_key_object", _set("frobnicate", {"a": 1}), MetadataError),
    ("unknown_key_must_understand_true", _set("frobnicate", {"must_understand": True}), MetadataError),
    ("storage_transformers_nonempty", _set("storage_transformers", [{"name": "frobnicate"}]),
     UnsupportedFeatureError),
    ("storage_transformers_not_a_list", _set("storage_transformers", {"name": "frobnicate"}), MetadataError),
    ("dimension_names_wrong_length", _set("dimension_names", ["y"]), MetadataError),
    ("dimension_names_not_strings", _set("dimension_names", [1, 2]), MetadataError),
    ("attributes_not_an_object", _set("attributes", [1, 2]), MetadataError),
    # codec chain
    ("codecs_empty", _codecs(), MetadataError),
    ("codecs_not_a_list", _set("codecs", BYTES_LE), MetadataError),
    ("codecs_two_array_to_bytes", _codecs(BYTES_LE, BYTES_LE), MetadataError),
    ("codecs_no_array_to_bytes", _codecs(ZSTD), MetadataError),
    ("codecs_only_array_to_array", _codecs(TRANSPOSE), MetadataError),
    ("codecs_bytes_to_bytes_first", _codecs(ZSTD, BYTES_LE), MetadataError),
    ("codecs_array_to_array_last", _codecs(BYTES_LE, TRANSPOSE), MetadataError),
    ("codec_without_name", _codecs({"configuration": {"endian": "little"}}), MetadataError),
    ("bytes_endian_unknown", _codecs({"name": "bytes", "configuration": {"endian": "middle"}}), MetadataError),
    # ZARR_FORMAT.md: the endian may be omitted only for 1-byte types (zarr-python itself is lenient)
    ("bytes_endian_missing_int32", _codecs({"name": "bytes"}), MetadataError),
    ("transpose_repeated_axis",
     _codecs({"name": "transpose", "configuration": {"order": [0, 0]}}, BYTES_LE), MetadataError),
    ("transpose_wrong_rank",
     _codecs({"name": "transpose", "configuration": {"order": [0, 1, 2]}}, BYTES_LE), MetadataError),
    ("zstd_level_string",
     _codecs(BYTES_LE, {"name": "zstd", "configuration": {"level": "high", "checksum": False}}), MetadataError),
    ("codec_unknown", _codecs(BYTES_LE, {"name": "frobnicate", "configuration": {}}), UnsupportedFeatureError),
    ("codec_unknown_bare_name", _codecs(BYTES_LE, "frobnicate"), UnsupportedFeatureError),
    ("codec_unknown_array_to_bytes", _codecs({"name": "frobnicate"}), UnsupportedFeatureError),
]


def _shard_cfg(fn):
    def mutate(m):
        return fn(m["codecs"][0]["configuration"])

    return mutate


V3_SHARD_META_CASES = [
    ("inner_chunk_not_dividing_shard", _shard_cfg(_set("chunk_shape", [3, 4])), MetadataError),
    ("inner_chunk_larger_than_shard", _shard_cfg(_set("chunk_shape", [8, 4])), MetadataError),
    ("inner_chunk_rank_mismatch", _shard_cfg(_set("chunk_shape", [2])), MetadataError),
    ("inner_chunk_zero", _shard_cfg(_set("chunk_shape", [0, 2])), MetadataError),
    ("inner_chunk_missing", _shard_cfg(_del("chunk_shape")), MetadataError),
    ("index_location_unknown", _shard_cfg(_set("index_location", "middle")), MetadataError),
    ("inner_codecs_empty", _shard_cfg(_set("codecs", [])), MetadataError),
    ("inner_codecs_missing", _shard_cfg(_del("codecs")), MetadataError),
    ("inner_codecs_two_array_to_bytes", _shard_cfg(_set("codecs", [BYTES_LE, BYTES_LE])), MetadataError),
    ("inner_codec_unknown", _shard_cfg(_set("codecs", [BYTES_LE, {"name": "frobnicate"}])),
     UnsupportedFeatureError),
    ("index_codec_unknown", _shard_cfg(_set("index_codecs", [BYTES_LE, {"name": "frobnicate"}])),
     UnsupportedFeatureError),
    ("sharding_then_bytes", lambda m: m["codecs"].append(BYTES_LE), MetadataError),
]


@pytest.mark.parametrize("mutate,exc", [c[1:] for c in V3_SHARD_META_CASES],
                         ids=[c[0] for c in V3_SHARD_META_CASES])
def test_v3_sharding_metadata(bases, tmp_path, mutate, exc):
    arr = copy_base(bases, tmp_path, "sharded:crc,end,raw")
    C.edit_json(arr / "zarr.json", mutate)
    with pytest.raises(exc) as ei:
        gz_open(arr)
    assert_names_metadata(ei.value, "zarr.json")


RAW_TEXT_CASES = [
    ("invalid_json", b'{"zarr_format": 3, "node_type": "array", '),
    ("json_list", b"[1, 2, 3]"),
    ("json_string", b'"array"'),
    ("json_null", b"null"),
    ("empty_file", b""),
    ("not_utf8", b'\xff\xfe{"zarr_format": 3}'),
]


@pytest.mark.parametrize("text", [c[1] for c in RAW_TEXT_CASES], ids=[c[0] for c in RAW_TEXT_CASES])
@pytest.mark.parametrize("fmt", ["v3", "v2"])
def test_metadata_not_a_json_object(bases, tmp_path, fmt, text):
    arr = copy_base(bases, tmp_path, "v3:zstd" if fmt == "v3" else "v2:zlib,.")
    name = "zarr.json" if fmt == "v3" else ".zarray"
    (arr / name).write_bytes(text)
    with pytest.raises(MetadataError) as ei:
        gz_open(arr)
    assert_names_metadata(ei.value, name)


def test_group_metadata_invalid_json(tmp_path):
    grp = tmp_path / BAD
    grp.mkdir()
    (grp / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group", "attributes": ')
    with pytest.raises(MetadataError) as ei:
        gz_open(grp)
    assert_names_metadata(ei.value, "zarr.json")


@pytest.mark.parametrize("value", [{"must_understand": False}, {"must_understand": False, "x": [1, 2]}])
def test_unknown_key_with_must_understand_false_opens(bases, tmp_path, value):
    arr = copy_base(bases, tmp_path, "v3:zstd")
    C.edit_json(arr / "zarr.json", _set("frobnicate", value))
    a = gz_open(arr)
    np.testing.assert_array_equal(np.asarray(a[...]), C.expected())


def test_unsupported_feature_raised_at_open_not_read(bases, tmp_path):
    """An unknown codec must fail the open even when every chunk is missing (nothing to decode)."""
    arr = copy_base(bases, tmp_path, "v3:zstd")
    for p in sorted((arr / "c").rglob("*"), reverse=True):
        p.unlink() if p.is_file() else p.rmdir()
    C.edit_json(arr / "zarr.json", _codecs(BYTES_LE, {"name": "frobnicate"}))
    with pytest.raises(UnsupportedFeatureError) as ei:
        gz_open(arr)
    assert "frobnicate" in str(ei.value)
    assert_names_metadata(ei.value, "zarr.json")


# ---------------------------------------------------------------------------------------------
# v2 metadata

V2_META_CASES = [
    ("missing_chunks", _del("chunks"), MetadataError),
    ("missing_shape", _del("shape"), MetadataError),
    ("missing_dtype", _del("dtype"), MetadataError),
    ("missing_zarr_format", _del("zarr_format"), MetadataError),
    ("zarr_format_3", _set("zarr_format", 3), MetadataError),
    # not a dtype at all: malformed, though "unknown data type" is a defensible reading too
    ("dtype_garbage", _set("dtype", "banana"), (MetadataError, UnsupportedFeatureError)),
    ("dtype_bad_width", _set("dtype", "<i3"), (MetadataError, UnsupportedFeatureError)),
    ("dtype_not_a_string", _set("dtype", 5), MetadataError),
    ("order_unknown", _set("order", "X"), MetadataError),
    ("chunks_rank_mismatch", _set("chunks", [4]), MetadataError),
    ("chunks_zero", _set("chunks", [0, 4]), MetadataError),
    ("shape_negative", _set("shape", [-8, 8]), MetadataError),
    ("shape_string_dim", _set("shape", [8, "8"]), MetadataError),
    ("dimension_separator_unknown", _set("dimension_separator", "-"), MetadataError),
    ("fill_string_for_int", _set("fill_value", "abc"), MetadataError),
    ("compressor_not_an_object", _set("compressor", "zlib"), MetadataError),
    ("compressor_without_id", _set("compressor", {"level": 1}), MetadataError),
    ("compressor_unknown", _set("compressor", {"id": "frobnicate"}), UnsupportedFeatureError),
    ("filter_unknown", _set("filters", [{"id": "frobnicate"}]), UnsupportedFeatureError),
    ("filters_not_a_list", _set("filters", {"id": "delta", "dtype": "<i4"}), MetadataError),
]


META_CASES = ([("v3:zstd", "zarr.json", *c) for c in V3_META_CASES]
              + [("v2:zlib,.", ".zarray", *c) for c in V2_META_CASES])


@pytest.mark.parametrize("base,meta_file,mutate,exc", [(b, f, m, e) for b, f, _, m, e in META_CASES],
                         ids=[f"{b[:2]}-{name}" for b, _, name, _, _ in META_CASES])
def test_metadata(bases, tmp_path, base, meta_file, mutate, exc):
    arr = copy_base(bases, tmp_path, base)
    C.edit_json(arr / meta_file, mutate)
    with pytest.raises(exc) as ei:
        gz_open(arr)
    assert_names_metadata(ei.value, meta_file)


# ---------------------------------------------------------------------------------------------
# no metadata at all


def test_open_directory_without_metadata(tmp_path):
    d = tmp_path / "no_meta_here"
    d.mkdir()
    (d / "c").mkdir()
    (d / "c" / "0").write_bytes(b"\0" * 16)  # chunk-like debris, but no zarr.json/.zarray/.zgroup
    with pytest.raises(GpuzarrError) as ei:
        gz_open(d)
    assert "no_meta_here" in str(ei.value)


def test_open_nonexistent_path(tmp_path):
    with pytest.raises(GpuzarrError) as ei:
        gz_open(tmp_path / "does_not_exist")
    assert "does_not_exist" in str(ei.value)


def test_open_missing_member_path(bases, tmp_path):
    arr = copy_base(bases, tmp_path, "v3:zstd")
    with pytest.raises(GpuzarrError) as ei:
        gpuzarr.open(str(tmp_path), path="no_such_member", device="cpu")
    assert "no_such_member" in str(ei.value)
    assert arr.exists()


# ---------------------------------------------------------------------------------------------
# corrupt data: helpers


KEY = "c/0/1"  # rows 0..3, columns 4..7: the chunk or shard every data case breaks
CLEAN = (slice(4, 8), slice(None))  # rows 4..7: chunks/shards c/1/*, untouched


def expect_corrupt(arr: Path, key: str, device: str = "cpu", clean_sel=CLEAN):
    """Open must succeed; reading the whole array must raise CorruptDataError naming `key`;
    the untouched part must still read correctly."""
    a = gz_open(arr, device)
    t0 = time.perf_counter()
    with pytest.raises(CorruptDataError) as ei:
        a[...]
    assert time.perf_counter() - t0 < 10
    assert_names_key(ei.value, key)
    if clean_sel is not None:
        np.testing.assert_array_equal(to_numpy(a[clean_sel]), C.expected()[clean_sel])
    return ei.value


def chunk_path(arr: Path, key: str = KEY) -> Path:
    return arr / key


# ---------------------------------------------------------------------------------------------
# corrupt data: unsharded v3


def _rng_bytes(n: int, seed: int = 1234) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def _flip_at(pos):
    def fn(p: Path):
        C.flip_byte(p, pos if pos >= 0 else p.stat().st_size + pos)

    return fn


def _replace_with(make_bytes):
    def fn(p: Path):
        p.write_bytes(make_bytes(p.read_bytes()))

    return fn


def _reencode(codec: str, n_items: int):
    return _replace_with(lambda old: C.encode(codec, C.int32_bytes(n_items)))


# (id, codecs of the base array, surgery on the chunk file c/0/1)
V3_DATA_CASES = [
    ("crc32c_flip_payload", "zstd+crc32c", _flip_at(5)),
    ("crc32c_flip_checksum", "zstd+crc32c", _flip_at(-1)),
    ("crc32c_only_flip_payload", "crc32c", _flip_at(0)),
    ("crc32c_shorter_than_checksum", "crc32c", _replace_with(lambda b: b[:2])),
    ("raw_too_short", "raw", _replace_with(lambda b: b[:-4])),
    ("raw_too_long", "raw", _replace_with(lambda b: b + b"\0\0\0\0")),
    ("raw_empty_file", "raw", _replace_with(lambda b: b"")),
    ("zstd_content_checksum_mismatch", "zstd_checksum", _flip_at(-1)),
    ("zstd_garbage", "zstd", _replace_with(lambda b: _rng_bytes(len(b)))),
    ("zstd_empty_file", "zstd", _replace_with(lambda b: b"")),
    ("zstd_truncated", "zstd", _replace_with(lambda b: b[: len(b) // 2])),
    ("zstd_decodes_too_short", "zstd", _reencode("zstd", 8)),
    ("zstd_decodes_too_long", "zstd", _reencode("zstd", 32)),
    ("zstd_no_content_size_too_short", "zstd",
     _replace_with(lambda b: C.zstd_strip_content_size(C.encode("zstd", C.int32_bytes(8))))),
    ("zstd_no_content_size_too_long", "zstd",
     _replace_with(lambda b: C.zstd_strip_content_size(C.encode("zstd", C.int32_bytes(32))))),
    ("zstd_no_content_size_much_too_long", "zstd",
     _replace_with(lambda b: C.zstd_strip_content_size(C.encode("zstd", bytes(1 << 20))))),
    ("gzip_garbage", "gzip", _replace_with(lambda b: _rng_bytes(len(b)))),
    ("gzip_truncated_half", "gzip", _replace_with(lambda b: b[: len(b) // 2])),
    ("gzip_truncated_trailer", "gzip", _replace_with(lambda b: b[:-4])),
    ("gzip_decodes_too_short", "gzip", _reencode("gzip", 8)),
    ("gzip_decodes_too_long", "gzip", _reencode("gzip", 32)),
    ("blosc_garbage", "blosc", _replace_with(lambda b: _rng_bytes(len(b)))),
    ("blosc_truncated", "blosc", _replace_with(lambda b: b[: len(b) // 2])),
    ("blosc_truncated_header", "blosc", _replace_with(lambda b: b[:8])),
    ("blosc_decodes_too_short", "blosc", _reencode("blosc", 8)),
    ("blosc_decodes_too_long", "blosc", _reencode("blosc", 32)),
]


@pytest.mark.parametrize("codecs,surgery", [c[1:] for c in V3_DATA_CASES], ids=[c[0] for c in V3_DATA_CASES])
def test_v3_corrupt_chunk(bases, tmp_path, device, codecs, surgery):
    arr = copy_base(bases, tmp_path, f"v3:{codecs}")
    surgery(chunk_path(arr))
    expect_corrupt(arr, KEY, device)


def test_v3_corrupt_chunk_partial_read_names_key(bases, tmp_path):
    """Reading only the broken chunk (via .read with a selection) raises too."""
    arr = copy_base(bases, tmp_path, "v3:zstd+crc32c")
    C.flip_byte(chunk_path(arr), 3)
    a = gz_open(arr)
    with pytest.raises(CorruptDataError) as ei:
        a.read((slice(0, 2), slice(5, 6)), device="cpu")
    assert_names_key(ei.value, KEY)
    np.testing.assert_array_equal(np.asarray(a.read((slice(0, 4), slice(0, 4)), device="cpu")),
                                  C.expected()[:4, :4])


def test_v3_with_v2_key_encoding_names_its_key(bases, tmp_path, device):
    arr = copy_base(bases, tmp_path, "v3k2:zstd")
    (arr / "0.1").write_bytes(_rng_bytes(40))
    expect_corrupt(arr, "0.1", device)


# ---------------------------------------------------------------------------------------------
# corrupt data: v2

V2_DATA_CASES = [
    ("zlib_garbage", "zlib", ".", _replace_with(lambda b: _rng_bytes(len(b)))),
    ("zlib_truncated", "zlib", ".", _replace_with(lambda b: b[: len(b) // 2])),
    ("zlib_decodes_too_short", "zlib", ".", _reencode("zlib", 8)),
    ("zlib_decodes_too_long", "zlib", ".", _reencode("zlib", 32)),
    ("zlib_garbage_slash_separator", "zlib", "/", _replace_with(lambda b: _rng_bytes(len(b)))),
    ("blosc_truncated", "blosc", ".", _replace_with(lambda b: b[: len(b) // 2])),
    ("blosc_decodes_too_long", "blosc", ".", _reencode("blosc", 32)),
    ("uncompressed_too_short", "none", ".", _replace_with(lambda b: b[:-4])),
    ("uncompressed_too_long", "none", ".", _replace_with(lambda b: b + b"\0" * 4)),
]


@pytest.mark.parametrize("comp,sep,surgery", [c[1:] for c in V2_DATA_CASES], ids=[c[0] for c in V2_DATA_CASES])
def test_v2_corrupt_chunk(bases, tmp_path, device, comp, sep, surgery):
    arr = copy_base(bases, tmp_path, f"v2:{comp},{sep}")
    key = f"0{sep}1"
    surgery(arr / key)
    expect_corrupt(arr, key, device)


# ---------------------------------------------------------------------------------------------
# corrupt data: sharded v3

LAYOUTS = {
    "crc_end": dict(index_crc=True, index_location="end"),
    "nocrc_end": dict(index_crc=False, index_location="end"),
    "crc_start": dict(index_crc=True, index_location="start"),
    "nocrc_start": dict(index_crc=False, index_location="start"),
}


def sharded(bases, tmp_path, layout: str, inner: str = "raw") -> Path:
    kw = LAYOUTS[layout]
    return copy_base(bases, tmp_path,
                     f"sharded:{'crc' if kw['index_crc'] else 'nocrc'},{kw['index_location']},{inner}")


def edit_entry(arr: Path, layout: str, entry: int, make):
    """Set index entry `entry` of shard c/0/1 to make(offset, nbytes, shard_len, index_size, at_end) and
    re-encode the index (with a correct crc32c where the layout has one)."""
    kw = LAYOUTS[layout]
    p = chunk_path(arr)
    buf = p.read_bytes()
    idx = C.read_index(buf, **kw)
    off, nb = int(idx[entry, 0]), int(idx[entry, 1])
    idx[entry] = make(off, nb, len(buf), C.index_size(kw["index_crc"]), kw["index_location"] == "end")
    p.write_bytes(C.put_index(buf, idx, **kw))


def _overlap_index(off, nb, n, isz, at_end):
    # index at the end: a chunk straddling the data and the index; at the start: one at offset 0
    return (n - isz - 8, 16) if at_end else (0, 16)


# (id, new (offset, nbytes) of entry 1 from (offset, nbytes, shard_len, index_size, index_at_end))
ENTRY_CASES = [
    ("offset_past_end", lambda off, nb, n, isz, at_end: (n + 100, nb)),
    ("end_past_shard_end", lambda off, nb, n, isz, at_end: (off, n)),
    ("end_one_past_shard_end", lambda off, nb, n, isz, at_end: (n - nb + 1, nb)),
    ("nbytes_2_40", lambda off, nb, n, isz, at_end: (off, 2**40)),
    ("offset_2_63", lambda off, nb, n, isz, at_end: (2**63, nb)),
    ("offset_max_nbytes_normal", lambda off, nb, n, isz, at_end: (C.MAX_U64, nb)),
    ("offset_plus_nbytes_wraps_u64", lambda off, nb, n, isz, at_end: (2**64 - 8, 16)),
    ("overlaps_index", _overlap_index),
    ("nbytes_short_of_chunk", lambda off, nb, n, isz, at_end: (off, nb // 2)),
    ("nbytes_longer_than_chunk", lambda off, nb, n, isz, at_end: (off, nb + 4)),
    ("nbytes_zero", lambda off, nb, n, isz, at_end: (off, 0)),
]


@pytest.mark.parametrize("make", [c[1] for c in ENTRY_CASES], ids=[c[0] for c in ENTRY_CASES])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_shard_index_entry(bases, tmp_path, device, layout, make):
    arr = sharded(bases, tmp_path, layout)
    edit_entry(arr, layout, 1, make)
    expect_corrupt(arr, KEY, device)


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("cut", ["empty", "10_bytes", "index_minus_1", "last_5_bytes"])
def test_truncated_shard(bases, tmp_path, device, layout, cut):
    arr = sharded(bases, tmp_path, layout)
    p = chunk_path(arr)
    buf = p.read_bytes()
    isz = C.index_size(LAYOUTS[layout]["index_crc"])
    new = {"empty": b"", "10_bytes": buf[:10], "index_minus_1": buf[: isz - 1],
           "last_5_bytes": buf[:-5]}[cut]
    if cut == "last_5_bytes" and LAYOUTS[layout]["index_location"] == "end" and not LAYOUTS[layout]["index_crc"]:
        # the index now starts 5 bytes early: its entries are shifted garbage; make sure they are
        # detectably bad (they are: they point far past the end) rather than relying on luck
        idx = np.frombuffer(new[-isz:], "<u8").reshape(-1, 2)
        assert any(int(o) + int(s) > len(new) for o, s in idx if not (o == s == C.MAX_U64))
    p.write_bytes(new)
    expect_corrupt(arr, KEY, device)


@pytest.mark.parametrize("where", ["first_index_byte", "checksum_byte"])
@pytest.mark.parametrize("layout", ["crc_end", "crc_start"])
def test_shard_index_checksum_mismatch(bases, tmp_path, device, layout, where):
    arr = sharded(bases, tmp_path, layout)
    p = chunk_path(arr)
    n = p.stat().st_size
    isz = C.index_size(True)
    start = n - isz if LAYOUTS[layout]["index_location"] == "end" else 0
    C.flip_byte(p, start if where == "first_index_byte" else start + isz - 1)
    expect_corrupt(arr, KEY, device)


@pytest.mark.parametrize("layout", ["crc_end", "crc_start"])
def test_shard_index_checksum_on_a_sane_looking_index(bases, tmp_path, device, layout):
    """Swap two entries (each still valid) without fixing the crc: only the checksum can tell."""
    kw = LAYOUTS[layout]
    arr = sharded(bases, tmp_path, layout)
    p = chunk_path(arr)
    buf = p.read_bytes()
    idx = C.read_index(buf, **kw)
    good = C.encode_index(idx)
    swapped = C.encode_index(idx[[1, 0, 2, 3]], index_crc=False) + good[-4:]
    p.write_bytes(buf[: len(buf) - len(swapped)] + swapped if kw["index_location"] == "end"
                  else swapped + buf[len(swapped):])
    expect_corrupt(arr, KEY, device)


def _inner_chunk_pos(arr: Path, layout: str, entry: int) -> tuple[int, int]:
    idx = C.read_index(chunk_path(arr).read_bytes(), **LAYOUTS[layout])
    return int(idx[entry, 0]), int(idx[entry, 1])


@pytest.mark.parametrize("layout", ["crc_end", "nocrc_start"])
def test_shard_inner_chunk_crc32c_mismatch(bases, tmp_path, device, layout):
    arr = sharded(bases, tmp_path, layout, inner="crc32c")
    off, nb = _inner_chunk_pos(arr, layout, 1)
    assert nb == C.INNER_NBYTES + 4
    C.flip_byte(chunk_path(arr), off + 2)
    expect_corrupt(arr, KEY, device)


@pytest.mark.parametrize("layout", ["crc_end", "nocrc_end"])
def test_shard_inner_zstd_garbage(bases, tmp_path, device, layout):
    arr = sharded(bases, tmp_path, layout, inner="zstd")
    off, nb = _inner_chunk_pos(arr, layout, 1)
    p = chunk_path(arr)
    buf = p.read_bytes()
    p.write_bytes(buf[:off] + _rng_bytes(nb) + buf[off + nb:])
    expect_corrupt(arr, KEY, device)


@pytest.mark.parametrize("n_items", [2, 8], ids=["too_short", "too_long"])
@pytest.mark.parametrize("layout", ["crc_end", "nocrc_start"])
def test_shard_inner_zstd_wrong_size(bases, tmp_path, device, layout, n_items):
    """Append a zstd frame of the wrong decoded size to the data region and point entry 1 at it."""
    kw = LAYOUTS[layout]
    arr = sharded(bases, tmp_path, layout, inner="zstd")
    p = chunk_path(arr)
    buf = p.read_bytes()
    idx = C.read_index(buf, **kw)
    frame = C.encode("zstd", C.int32_bytes(n_items))
    isz = C.index_size(kw["index_crc"])
    if kw["index_location"] == "end":
        data = buf[:-isz] + frame
        idx[1] = (len(buf) - isz, len(frame))
        new = data + C.encode_index(idx, index_crc=kw["index_crc"])
    else:
        idx[1] = (len(buf), len(frame))
        new = C.encode_index(idx, index_crc=kw["index_crc"]) + buf[isz:] + frame
    p.write_bytes(new)
    expect_corrupt(arr, KEY, device)


# nested sharding: shard c/0/1 holds 4 sub-shards of 84 bytes (16 data + 68 index); entry 1 of the
# outer index points at one of them

def _nested_sub_shard(arr: Path) -> tuple[int, int]:
    off, nb = _inner_chunk_pos(arr, "crc_end", 1)
    assert nb == 84
    return off, nb


def test_nested_shard_index_checksum_mismatch(bases, tmp_path, device):
    arr = copy_base(bases, tmp_path, "nested:")
    off, nb = _nested_sub_shard(arr)
    C.flip_byte(chunk_path(arr), off + nb - 68)  # first byte of the sub-shard's index
    expect_corrupt(arr, KEY, device)


@pytest.mark.parametrize("entry", [(2**40, 4), (0, 2**40), (100, 4)], ids=["offset_2_40", "nbytes_2_40",
                                                                           "past_sub_shard_end"])
def test_nested_shard_index_entry_out_of_bounds(bases, tmp_path, device, entry):
    arr = copy_base(bases, tmp_path, "nested:")
    off, nb = _nested_sub_shard(arr)
    p = chunk_path(arr)
    buf = p.read_bytes()
    sub = buf[off:off + nb]
    idx = C.read_index(sub)
    idx[0] = entry
    sub = C.put_index(sub, idx)  # correct crc32c: only the bounds check can catch it
    p.write_bytes(buf[:off] + sub + buf[off + nb:])
    expect_corrupt(arr, KEY, device)


def test_nested_sharding_whose_inner_chunks_do_not_divide_the_middle_shard_is_refused(tmp_path):
    """The sharding spec says inner chunks divide the shard. zarr-python 3.1 checks the outer
    level only: it writes such an array, then reads it back wrong (each middle shard's values
    past its last whole inner chunk come back as others); 3.2+ refuses to write it. gpuzarr
    refuses it at open, naming the file and both shapes. Were zarr-python ever to read it back
    right, this fails, and gpuzarr should read it too."""
    from zarr.codecs import BytesCodec, ShardingCodec

    middle = ShardingCodec(chunk_shape=(16, 16), codecs=[ShardingCodec(chunk_shape=(6, 6), codecs=[BytesCodec()])])
    data = np.arange(40 * 40, dtype="uint16").reshape(40, 40)
    path = tmp_path / BAD
    try:
        written = zarr.create_array(str(path), shape=data.shape, chunks=(32, 32), dtype=data.dtype,
                                    serializer=middle, compressors=None, fill_value=0)
    except ValueError as exc:  # zarr-python 3.2+
        assert "divisible" in str(exc)
        meta = {"zarr_format": 3, "node_type": "array", "shape": [40, 40], "data_type": "uint16",
                "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [32, 32]}},
                "chunk_key_encoding": {"name": "default"}, "fill_value": 0,
                "codecs": [json.loads(json.dumps(middle.to_dict()))]}
        path.mkdir(exist_ok=True)  # (made before the refusal)
        (path / "zarr.json").write_text(json.dumps(meta))
    else:
        written[:] = data
        assert not np.array_equal(zarr.open_array(str(path))[:], data)
    with pytest.raises(MetadataError, match=r"\[6, 6\] must divide the shard shape \[16, 16\]") as info:
        gpuzarr.open(str(path))
    assert str(path / "zarr.json") in str(info.value)


# ---------------------------------------------------------------------------------------------
# hostile sizes: fail fast, allocate nothing like what the index claims

HOSTILE = [
    ("nbytes_2_40", lambda off, nb, n, isz, at_end: (off, 2**40)),
    ("nbytes_2_62", lambda off, nb, n, isz, at_end: (0, 2**62)),
    ("offset_2_63", lambda off, nb, n, isz, at_end: (2**63, nb)),
    ("offset_2_63_nbytes_2_40", lambda off, nb, n, isz, at_end: (2**63, 2**40)),
]


@pytest.mark.parametrize("make", [c[1] for c in HOSTILE], ids=[c[0] for c in HOSTILE])
@pytest.mark.parametrize("layout", ["crc_end", "nocrc_end"])
def test_hostile_index_sizes_fail_fast_without_allocating(bases, tmp_path, layout, make):
    arr = sharded(bases, tmp_path, layout)
    edit_entry(arr, layout, 1, make)
    a = gz_open(arr)
    np.asarray(a[CLEAN])  # warm up: imports, thread pools, caches are not what is measured
    tracemalloc.start()
    try:
        t0 = time.perf_counter()
        with pytest.raises(CorruptDataError) as ei:
            a[...]
        elapsed = time.perf_counter() - t0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert_names_key(ei.value, KEY)
    assert elapsed < 5, f"took {elapsed:.1f} s"
    assert peak < 64 * 2**20, f"peak traced allocation {peak / 2**20:.0f} MiB while reading a 132-byte shard"


@pytest.mark.parametrize("base", ["v3:zstd", "sharded:crc,end,raw", "v2:zlib,."])
def test_huge_shape_opens_and_reads_lazily(bases, tmp_path, base):
    """Valid metadata claiming 2^31 x 2^31 elements (2^58 chunks): open and small reads must not
    build anything per chunk of the grid."""
    arr = copy_base(bases, tmp_path, base)
    meta = ".zarray" if base.startswith("v2") else "zarr.json"
    C.edit_json(arr / meta, _set("shape", [2**31, 2**31]))
    tracemalloc.start()
    try:
        t0 = time.perf_counter()
        a = gz_open(arr)
        corner = to_numpy(a[0:8, 0:8])
        far = to_numpy(a[2**31 - 3:, 2**31 - 2:])
        elapsed = time.perf_counter() - t0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(corner, C.expected())
    np.testing.assert_array_equal(far, np.full((3, 2), C.FILL, dtype=C.DTYPE))
    assert elapsed < 10, f"took {elapsed:.1f} s"
    assert peak < 64 * 2**20, f"peak traced allocation {peak / 2**20:.0f} MiB"


# ---------------------------------------------------------------------------------------------
# what is NOT an error: missing keys and empty inner chunks read as the fill value


def _expected_with_fill(rows, cols):
    e = C.expected().copy()
    e[rows, cols] = C.FILL
    return e


@pytest.mark.parametrize("base,key", [
    ("v3:zstd", "c/0/1"),
    ("v3:zstd+crc32c", "c/0/1"),
    ("sharded:crc,end,raw", "c/0/1"),
    ("sharded:nocrc,start,zstd", "c/0/1"),
    ("v2:zlib,.", "0.1"),
    ("v2:none,/", "0/1"),
    ("v3k2:zstd", "0.1"),
    ("nested:", "c/0/1"),
], ids=["v3", "v3_crc32c", "sharded", "sharded_start", "v2", "v2_slash", "v3_v2_keys", "nested"])
def test_missing_chunk_reads_as_fill(bases, tmp_path, device, base, key):
    arr = copy_base(bases, tmp_path, base)
    (arr / key).unlink()
    got = to_numpy(gz_open(arr, device)[...])
    np.testing.assert_array_equal(got, _expected_with_fill(slice(0, 4), slice(4, 8)))


def test_all_chunks_missing_reads_as_fill(bases, tmp_path):
    arr = copy_base(bases, tmp_path, "sharded:crc,end,raw")
    for p in sorted((arr / "c").rglob("*"), reverse=True):
        p.unlink() if p.is_file() else p.rmdir()
    got = np.asarray(gz_open(arr)[...])
    np.testing.assert_array_equal(got, np.full(C.SHAPE, C.FILL, dtype=C.DTYPE))


# entry 1 of shard c/0/1 is inner chunk (0, 1): rows 0..1, columns 6..7
INNER1 = (slice(0, 2), slice(6, 8))


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_empty_inner_chunk_reads_as_fill(bases, tmp_path, device, layout):
    arr = sharded(bases, tmp_path, layout)
    edit_entry(arr, layout, 1, lambda off, nb, n, isz, at_end: (C.MAX_U64, C.MAX_U64))
    want = _expected_with_fill(*INNER1)
    np.testing.assert_array_equal(C.read_with_zarr_python(arr), want)  # the fixture is what we think
    np.testing.assert_array_equal(to_numpy(gz_open(arr, device)[...]), want)


@pytest.mark.parametrize("layout", ["crc_end", "crc_start"])
def test_nbytes_max_alone_reads_as_fill(bases, tmp_path, device, layout):
    """Old writers shifted empty-chunk offsets with the index at the start: nbytes == 2^64-1 alone
    marks an empty inner chunk."""
    arr = sharded(bases, tmp_path, layout)
    edit_entry(arr, layout, 1, lambda off, nb, n, isz, at_end: (off, C.MAX_U64))
    np.testing.assert_array_equal(to_numpy(gz_open(arr, device)[...]), _expected_with_fill(*INNER1))


def test_all_inner_chunks_empty_reads_as_fill(bases, tmp_path):
    arr = sharded(bases, tmp_path, "crc_end")
    p = chunk_path(arr)
    idx = np.full((C.N_INNER, 2), C.MAX_U64, dtype="<u8")
    p.write_bytes(C.encode_index(idx))  # a shard that is only an index
    np.testing.assert_array_equal(np.asarray(gz_open(arr)[...]), _expected_with_fill(slice(0, 4), slice(4, 8)))


# ---------------------------------------------------------------------------------------------
# store errors: an I/O failure is not "missing"


@pytest.fixture
def failing_fs():
    """`gzflaky://<local path>` URLs: local files, but reads of the chosen keys fail with EIO."""
    def make(*suffixes):
        C.failing_filesystem(suffixes)
        return lambda p: f"{C.FAILING_PROTOCOL}://{p}"

    yield make
    C.failing_filesystem(())  # nothing fails for whoever uses the protocol next


@pytest.mark.parametrize("base", ["v3:zstd", "sharded:crc,end,raw", "v2:zlib,."])
def test_chunk_read_io_error_is_a_store_error(bases, tmp_path, failing_fs, base):
    arr = copy_base(bases, tmp_path, base)
    key = "0.1" if base.startswith("v2") else KEY
    url = failing_fs("/" + key)
    a = gpuzarr.open(url(arr), device="cpu")
    np.testing.assert_array_equal(to_numpy(a[CLEAN]), C.expected()[CLEAN])  # the filesystem works
    with pytest.raises(StoreError) as ei:
        a[...]
    assert_names_key(ei.value, key)


def test_missing_key_through_fsspec_is_fill(bases, tmp_path, failing_fs):
    arr = copy_base(bases, tmp_path, "sharded:crc,end,raw")
    (arr / KEY).unlink()
    url = failing_fs()
    got = to_numpy(gpuzarr.open(url(arr), device="cpu")[...])
    np.testing.assert_array_equal(got, _expected_with_fill(slice(0, 4), slice(4, 8)))


@pytest.mark.parametrize("base,meta", [("v3:zstd", "zarr.json"), ("v2:zlib,.", ".zarray")])
def test_metadata_read_io_error_is_a_store_error(bases, tmp_path, failing_fs, base, meta):
    arr = copy_base(bases, tmp_path, base)
    url = failing_fs("/" + meta)
    with pytest.raises(StoreError) as ei:
        gpuzarr.open(url(arr), device="cpu")
    assert_names_metadata(ei.value, meta)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root ignores file permissions")
def test_unreadable_chunk_is_a_store_error(bases, tmp_path):
    arr = copy_base(bases, tmp_path, "v3:zstd")
    p = chunk_path(arr)
    p.chmod(0)
    try:
        a = gz_open(arr)
        with pytest.raises(StoreError) as ei:
            a[...]
        assert_names_key(ei.value, KEY)
    finally:
        p.chmod(0o644)


def test_error_hierarchy():
    """As README.md says: each GpuzarrError is also the standard exception named there."""
    for cls, standard in ((MetadataError, ValueError), (UnsupportedFeatureError, NotImplementedError),
                          (CorruptDataError, ValueError), (StoreError, OSError),
                          (gpuzarr.DeadlineError, StoreError), (gpuzarr.SettingsError, ValueError),
                          (DeviceMemoryError, MemoryError)):
        assert issubclass(cls, GpuzarrError) and issubclass(cls, standard)
        assert getattr(gpuzarr, cls.__name__) is cls
    assert issubclass(gpuzarr.api.NodeNotFoundError, GpuzarrError)
    assert issubclass(gpuzarr.api.NodeNotFoundError, FileNotFoundError)


def test_mistakes_in_a_call_raise_pythons_own_errors(tmp_path):
    """As README.md says: not GpuzarrError, which is for the data, the store, metadata and settings."""
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    group.create_array("a", shape=(20, 20), chunks=(8, 8), dtype="u2")[...] = 1
    g = gpuzarr.open(str(tmp_path / "g.zarr"), device="cpu")
    arr = g["a"]
    mistakes = [
        (KeyError, lambda: g["nope"]),
        (IndexError, lambda: arr[30, 0]),
        (IndexError, lambda: arr["x"]),
        (ValueError, lambda: gpuzarr.open(str(tmp_path / "g.zarr"), "a", device="tpu")),
        (ValueError, lambda: arr.read(out=np.empty((3, 3), "u2"))),
        (ValueError, lambda: arr.read(out=np.empty((20, 20), "f4"))),
        (ValueError, lambda: arr.read_batch([(slice(0, 2), slice(0, 2)), (slice(0, 3), slice(0, 3))])),
        (ValueError, lambda: gpuzarr.open(str(tmp_path / "g.zarr"), "../a")),
        (TypeError, lambda: gpuzarr.open(42)),
    ]
    for exc, call in mistakes:
        with pytest.raises(exc) as caught:
            call()
        assert not isinstance(caught.value, GpuzarrError), caught.value


@pytest.mark.parametrize("spec,fill", [
    ({"name": "struct", "configuration": {"fields": []}}, {}),
    ({"name": "struct", "configuration": {"fields": [{"name": "a"}]}}, {"a": 1}),
    ({"name": "struct", "configuration": {"fields": [{"name": "a", "data_type": "int8"},
                                                     {"name": "a", "data_type": "int8"}]}}, {"a": 1}),
    ({"name": "struct", "configuration": {"fields": [{"name": "a", "data_type": "int8"}]}}, {"b": 1}),
    ({"name": "struct", "configuration": {"fields": [{"name": "a", "data_type": "int8"}]}}, {"a": 300}),
], ids=["no_fields", "field_without_type", "duplicate_field", "fill_wrong_field", "fill_out_of_range"])
def test_bad_struct_data_type_or_fill(spec, fill):
    from gpuzarr.dtypes import parse_data_type_v3, parse_fill_value

    with pytest.raises(MetadataError, match="zarr.json"):
        parse_fill_value(fill, parse_data_type_v3(spec, "a/zarr.json"), "a/zarr.json", 3)


@pytest.mark.parametrize("store", ["local", "memory"])
@pytest.mark.parametrize("size", [2**63 - 1, 2**40])
def test_a_huge_size_in_a_shard_index_is_refused_before_anything_is_allocated(tmp_path, store, size):
    """An index entry claiming a chunk of 2**63 - 1 or 2**40 bytes (found by the fuzzer: a
    memory:// store listed 2**60 parts of it and ran out of memory) is refused, naming the shard."""
    import fsspec
    import zarr
    from zarr.codecs import BytesCodec, ShardingCodec

    path = tmp_path / "a.zarr"
    z = zarr.create_array(str(path), shape=(32, 32), chunks=(32, 32), dtype="<u2", fill_value=0, compressors=None,
                          serializer=ShardingCodec(chunk_shape=(8, 8), index_codecs=[BytesCodec()]))
    z[...] = np.arange(1024, dtype="<u2").reshape(32, 32)
    shard = path / "c" / "0" / "0"
    raw = bytearray(shard.read_bytes())
    entry = len(raw) - 16 * 16 + 16 * 5  # chunk 5's (offset, size), the index at the end
    raw[entry + 8:entry + 16] = size.to_bytes(8, "little")
    shard.write_bytes(bytes(raw))
    url = str(path)
    if store == "memory":
        fs = fsspec.filesystem("memory")
        url = f"/huge{os.getpid()}-{size}"
        for p in sorted(path.rglob("*")):
            if p.is_file():
                fs.pipe(f"{url}/{p.relative_to(path).as_posix()}", p.read_bytes())
        url = f"memory://{url}"
    tracemalloc.start()
    try:
        with pytest.raises(CorruptDataError, match=r"c/0/0: .*(shard index entry 5|shard index puts a chunk)"):
            gpuzarr.open(url, device="cpu")[8:16, 8:16]  # chunk 5 alone: the shard is not read whole
        assert tracemalloc.get_traced_memory()[1] < 64 << 20
    finally:
        tracemalloc.stop()


def _v2_with(tmp_path, filters, compressor):
    """A v2 array of 8x10 float64 chunks, its .zarray rewritten with these filters and compressor."""
    path = tmp_path / "a.zarr"
    z = zarr.create_array(str(path), shape=(16, 20), chunks=(8, 10), dtype="<f8", zarr_format=2,
                          compressors=numcodecs.Zstd(0), fill_value=0.0)
    z[...] = np.arange(320, dtype="<f8").reshape(16, 20)
    meta = json.loads((path / ".zarray").read_text())
    meta["filters"], meta["compressor"] = filters, compressor if compressor is not None else meta["compressor"]
    (path / ".zarray").write_text(json.dumps(meta))
    return path


def test_a_chain_of_growing_filters_is_refused_before_it_grows_without_bound(tmp_path):
    """Forty astype filters, each doubling what it decodes (a fuzz finding: 640 MiB for a 640-byte
    chunk): refused once a step passes STEP_GROWTH_MAX times the chunk's size."""
    path = _v2_with(tmp_path, [{"id": "astype", "encode_dtype": "<f4", "decode_dtype": "<f8"}] * 40, None)
    tracemalloc.start()
    try:
        with pytest.raises(CorruptDataError, match=r"c?0\.0: codec 'astype' decodes to \d+ bytes, more than 16x the chunk's 640"):
            gpuzarr.open(str(path), device="cpu")[...]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20


def test_a_size_from_a_frame_header_is_said_as_its_claim():
    """A frame refused for the size its header states was not decoded: the message says the
    header claims it; a size that decoding gave is said as decoded."""
    import zstandard

    from gpuzarr.codecs.bytes_to_bytes import Blosc, Lz4, Zstd

    raw, out = bytes(range(256)) * 16, np.zeros(4096, np.uint8)
    for codec, frame in ((Zstd("zstd"), numcodecs.Zstd()), (Blosc("blosc"), numcodecs.Blosc()),
                         (Lz4("lz4"), numcodecs.LZ4())):
        with pytest.raises(CorruptDataError,
                           match=f"^{codec.name} frame header says it decodes to 4094 bytes, the chunk needs 4096$"):
            codec.decode_into(frame.encode(raw[:-2]), out)
    unstated = zstandard.ZstdCompressor(write_content_size=False).compress(raw[:-2])
    with pytest.raises(CorruptDataError, match="^zstd frame decodes to 4094 bytes, the chunk needs 4096$"):
        Zstd("zstd").decode_into(unstated, out)


def test_a_numcodecs_setting_out_of_c_range_is_a_corrupt_data_error(tmp_path):
    """lzma's `format` past a C int (a fuzz finding: an OverflowError from inside numcodecs)."""
    path = _v2_with(tmp_path, None, {"id": "lzma", "format": 2**62, "check": -1, "preset": None, "filters": None})
    with pytest.raises(CorruptDataError, match="cannot decode lzma frame"):
        gpuzarr.open(str(path), device="cpu")[...]


def _v3_edited(tmp_path, edit):
    """A small v3 array, its zarr.json changed by `edit(meta)`."""
    path = tmp_path / "a.zarr"
    zarr.create_array(str(path), shape=(40,), chunks=(16,), dtype="<u2", fill_value=0)[...] = np.arange(40)
    meta = json.loads((path / "zarr.json").read_text())
    edit(meta)
    (path / "zarr.json").write_text(json.dumps(meta))
    return path


def test_an_item_of_gigabytes_is_refused_at_open(tmp_path):
    """length_bytes 2**31 - 1 (a fuzz finding: the fill value alone allocated 2 GiB at open)."""
    path = _v3_edited(tmp_path, lambda m: m.update(
        data_type={"name": "null_terminated_bytes", "configuration": {"length_bytes": 2**31 - 1}}, fill_value=""))
    with pytest.raises(UnsupportedFeatureError, match=r"zarr\.json: .*items of 2147483647 bytes"):
        gpuzarr.open(str(path))


def test_an_output_numpy_cannot_make_is_a_device_memory_error(tmp_path):
    """Shape (2**62, 0) (a fuzz finding: NumPy's ValueError from np.empty, its byte size
    overflowing before the 0 counts); named with the array."""
    def edit(meta):
        meta.update(shape=[2**62, 0], chunk_grid={"name": "regular", "configuration": {"chunk_shape": [16, 1]}})
    path = _v3_edited(tmp_path, edit)
    with pytest.raises(DeviceMemoryError, match=r"a\.zarr: an output of shape \(4611686018427387904, 0\)"):
        gpuzarr.open(str(path), device="cpu")[...]


def test_blosc_frames_of_a_compressor_this_c_blosc_lacks_are_unsupported_not_corrupt(tmp_path):
    """tensorstore writes v2 blosc with cname "snappy"; numcodecs' c-blosc has no snappy, and
    every chunk was called corrupt (found by a differential run)."""
    ts = pytest.importorskip("tensorstore")
    if "snappy" in numcodecs.blosc.list_compressors():
        pytest.skip("this numcodecs' c-blosc has snappy: those frames decode")
    data = np.arange(128 * 128, dtype="<f4").reshape(128, 128) % 7
    store = ts.open({"driver": "zarr", "kvstore": {"driver": "file", "path": str(tmp_path / "s")}, "create": True,
                     "metadata": {"shape": [128, 128], "chunks": [64, 64], "dtype": "<f4", "fill_value": 0,
                                  "compressor": {"id": "blosc", "cname": "snappy", "clevel": 5, "shuffle": 1,
                                                 "blocksize": 0}}}).result()
    store[...] = data
    arr = gpuzarr.open(str(tmp_path / "s"), device="cpu")
    for sel in ((0, slice(0, 4)), Ellipsis):
        with pytest.raises(gpuzarr.UnsupportedFeatureError, match=r"s: .*compressed with snappy.*built without it"):
            arr[sel]


def test_a_window_crossing_2_to_the_30_chunks_fails_at_once_for_its_output(tmp_path):
    """A 4 TiB read was planned chunk by chunk first (a list of 2**30 runs, 25-65 s), then a bare
    MemoryError (found by a differential run): the output is asked for before any plan."""
    zarr.create_array(str(tmp_path / "huge"), shape=(2**40, 2**20), chunks=(1024, 1024), dtype="f4", fill_value=1.5)
    arr = gpuzarr.open(str(tmp_path / "huge"), device="cpu")
    for sel in ((slice(None), -1), (slice(0, 2**34), -1)):
        with pytest.raises(gpuzarr.DeviceMemoryError):
            arr[sel]
    np.testing.assert_array_equal(arr[2**40 - 2:, -3:], np.full((2, 3), 1.5, "f4"))
