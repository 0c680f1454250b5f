"""The fuzz target (tests/fuzz.py) on a fixed seed and budget, and regression tests for what it found.

`test_fuzz_corpus` mutates the corpus's metadata, shard indexes and chunk frames, reads each
mutated node in worker processes (time and memory capped) and fails with every finding: its
minimised mutations and the exception. Longer hunts: `python tests/fuzz.py --minutes 60 --seed N`.
"""

from __future__ import annotations

import json
import shutil
import struct
import tracemalloc
from pathlib import Path

import numcodecs
import numpy as np
import pytest
import zarr
import zstandard
from corpus import zstd_drop_content_size

import fuzz
import gpuzarr
from gpuzarr import CorruptDataError, MetadataError, UnsupportedFeatureError
from gpuzarr.codecs.array_to_bytes import Vlen
from gpuzarr.codecs.bytes_to_bytes import Blosc, Lz4, NumcodecsBytes, Zstd
from gpuzarr.dtypes import parse_data_type_v3, parse_dtype_v2

SEED = 20240611
CASES = 5000  # ~20 s on 2 cores


def test_fuzz_corpus(corpus, tmp_path):
    surveys = fuzz.bases(corpus.root, [c for c in sorted(p.name for p in corpus.root.iterdir())
                                       if c not in corpus.errors])
    result = fuzz.fuzz(surveys, SEED, tmp_path / "scratch", cases=CASES, jobs=2)
    print(result.report())
    assert result.cases == CASES
    assert not result.findings, result.report()


def test_a_case_past_its_time_limit_is_a_hang(corpus, tmp_path):
    """The time limit works: with 1 ms per case every case is a hang, with faulthandler's stacks."""
    sv = fuzz.survey("zp3_1d", corpus.path("zp3_1d"))
    case = fuzz.Case(0, sv.name, str(sv.root), sv.kind, (), seed=1)
    fuzzer = fuzz.Fuzzer(tmp_path, jobs=1, timeout=0.001)
    try:
        verdict = fuzzer.verdict(case)
        assert fuzzer.verdict(case).findings[0]["kind"] == "hang"  # a replaced worker runs the next case
    finally:
        fuzzer.close()
    [finding] = verdict.findings
    assert finding["kind"] == "hang" and "Timeout" in finding["traceback"]


def test_a_saved_finding_replays(corpus, tmp_path):
    """case.json round-trips, node/ is the mutated copy, and the replay runs the same calls."""
    sv = fuzz.survey("zp3_shard_end", corpus.path("zp3_shard_end"))
    case = next(c for c in fuzz.case_stream([sv], 3, limit=50) if any(m.tag.startswith("index:") for m in c.mutations))
    finding = fuzz.Finding(case, {"kind": "test", "type": "", "where": "-", "op": "-", "message": "", "traceback": ""})
    folder = fuzz.save_finding(finding, tmp_path / "out", 1)
    assert fuzz.Case.from_json(json.loads((folder / "case.json").read_text())) == case
    edited = {e.file for m in case.mutations for e in m.edits}
    assert any((folder / "node" / f).read_bytes() != (sv.root / f).read_bytes()
               for f in edited if (sv.root / f).is_file())
    assert fuzz.replay(folder).calls == fuzz.run_case(case, tmp_path / "scratch", {}).calls


# ---------------------------------------------------------------------------------------------
# Regression tests: each finding the fuzzer made and gpuzarr now refuses


def _copy(corpus, name: str, tmp_path: Path) -> Path:
    dst = tmp_path / "bad_arr"
    shutil.copytree(corpus.path(name), dst)
    return dst


def _edit(path: Path, **changes) -> None:
    meta = json.loads(path.read_text())
    meta.update(changes)
    path.write_text(json.dumps(meta))


def test_deeply_nested_json_is_a_metadata_error(corpus, tmp_path):
    root = _copy(corpus, "zp3_1d", tmp_path)
    (root / "zarr.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(MetadataError, match=r"bad_arr/zarr\.json: JSON nested too deeply"):
        gpuzarr.open(str(root), device="cpu")


@pytest.mark.parametrize("case, file, changes, match", [
    ("zp3_1d", "zarr.json", {"shape": [2**63]}, "dimension above 2"),
    ("zp3_1d", "zarr.json", {"shape": [10**30]}, "dimension above 2"),
    ("zp2_1d", ".zarray", {"chunks": [2**64]}, "dimension above 2"),
    ("zp2_4d", ".zarray", {"shape": [2**62] * 4, "chunks": [1] * 4}, "more than 64-bit chunk numbers"),
    ("zp3_1d", "zarr.json", {"chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [2**62]}}},
     "more than 64-bit sizes"),
])
def test_sizes_beyond_64_bit_indexing_are_refused_at_open(corpus, tmp_path, case, file, changes, match):
    root = _copy(corpus, case, tmp_path)
    _edit(root / file, **changes)
    with pytest.raises(UnsupportedFeatureError, match=match) as info:
        gpuzarr.open(str(root), device="cpu")
    assert f"bad_arr/{file}" in str(info.value)


def test_an_axis_of_2_62_still_reads(corpus, tmp_path):
    root = _copy(corpus, "zp3_1d", tmp_path)
    _edit(root / "zarr.json", shape=[2**62])
    arr = gpuzarr.open(str(root), device="cpu")
    assert arr[-3:].tolist() == [0.0] * 3
    assert arr.read_windows(np.array([[2**62 - 4]]), (4,)).shape == (1, 4)


def _zstd_frame(data: bytes) -> bytes:
    return zstandard.ZstdCompressor(write_content_size=True).compress(data)


def _with_content_size(frame: bytes, size: int) -> bytes:
    """The zstd frame (no dictionary) with an 8-byte Frame_Content_Size of `size`."""
    fhd = frame[4]
    pos = 5 + (0 if fhd & 0x20 else 1)
    fcs = (1 if fhd & 0x20 else 0, 2, 4, 8)[fhd >> 6]
    return frame[:4] + bytes([0xE0 | (fhd & 0x04)]) + size.to_bytes(8, "little") + frame[pos + fcs:]


def test_zstd_content_size_beyond_any_frame_is_refused_before_allocating():
    huge = _with_content_size(_zstd_frame(b"abc" * 100), 2**62)
    with pytest.raises(CorruptDataError, match="claims 4611686018427387904 decoded bytes"):
        Zstd("zstd", {}).decode(huge)


def test_zstd_frame_without_content_size_decodes_without_a_2_gib_buffer():
    frame = zstd_drop_content_size(_zstd_frame(b"abc" * 1000))
    tracemalloc.start()
    try:
        assert bytes(Zstd("zstd", {}).decode(frame)) == b"abc" * 1000
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20
    with pytest.raises(CorruptDataError, match="truncated zstd frame"):
        Zstd("zstd", {}).decode(frame[:-3])


def test_vlen_strings_behind_zstd_with_a_huge_content_size_are_corrupt(corpus, tmp_path):
    """The same through a read: a vlen chain decodes its zstd frame without a known size."""
    root = _copy(corpus, "zp3_string_shard_then_zstd", tmp_path)
    shard = root / "c" / "0"
    shard.write_bytes(_with_content_size(shard.read_bytes(), 2**40))
    with pytest.raises(CorruptDataError, match=r"c/0: zstd frame header claims 1099511627776 decoded bytes"):
        gpuzarr.open(str(root), device="cpu")[...]


def test_blosc_header_claiming_gigabytes_is_refused():
    frame = bytes([2, 1, 0x21, 4]) + struct.pack("<III", 2**31 - 1, 2**16, 32) + bytes(16)
    with pytest.raises(CorruptDataError, match="blosc frame header claims 2147483647 decoded bytes"):
        Blosc("blosc", {}).decode(frame)


def test_lz4_size_prefix_claiming_gigabytes_is_refused():
    with pytest.raises(CorruptDataError, match="lz4 frame header claims 4294967295 decoded bytes"):
        Lz4("lz4", {}).decode(b"\xff\xff\xff\xff" + bytes(12))


def test_vlen_item_count_other_than_the_chunk_is_refused_before_decoding():
    with pytest.raises(CorruptDataError, match="holds 4247762216 items, the chunk needs 4"):
        Vlen("utf8").decode_one(struct.pack("<I", 4247762216) + bytes(16), (4,), np.dtype(object))


def test_expanding_filters_repeated_are_corrupt_data_not_a_memory_error(tmp_path):
    """F3: v2 filters [packbits] * 4 on a bool array (8**4 times the stored bytes) once raised
    MemoryError from numcodecs; each stage's growth is now bounded (decode_through)."""
    z = zarr.create_array(str(tmp_path / "a.zarr"), shape=(8 * 4096,), chunks=(4096,), dtype="bool", zarr_format=2,
                          filters=[numcodecs.PackBits()], compressors=numcodecs.Zstd(), fill_value=False)
    z[...] = np.random.default_rng(0).integers(0, 2, z.shape).astype(bool)
    meta = json.loads((tmp_path / "a.zarr" / ".zarray").read_text())
    meta["filters"] = [{"id": "packbits"}] * 4
    (tmp_path / "a.zarr" / ".zarray").write_text(json.dumps(meta))
    arr = gpuzarr.open(str(tmp_path / "a.zarr"), device="cpu")
    for read in (lambda: arr[...], lambda: arr[100:200], lambda: arr.read(report=gpuzarr.ReadReport())):
        with pytest.raises(CorruptDataError, match="codec 'packbits' decodes to .* more than 16x the chunk's 4096"):
            read()


def test_numcodecs_index_error_is_corrupt_data():
    with pytest.raises(CorruptDataError, match="cannot decode packbits frame"):
        NumcodecsBytes("packbits", {"id": "packbits"}).decode(b"")


@pytest.mark.parametrize("spec, error", [
    ({"name": "raw_bytes", "configuration": {"length_bytes": 2**40}}, UnsupportedFeatureError),
    ({"name": "fixed_length_utf32", "configuration": {"length_bytes": 2**62}}, UnsupportedFeatureError),
    ({"name": "numpy.datetime64", "configuration": {"unit": "s", "scale_factor": 2**62}}, UnsupportedFeatureError),
    ({"name": "numpy.datetime64", "configuration": {"unit": ["ms"]}}, MetadataError),
    ({"name": "null_terminated_bytes", "configuration": {"length_bytes": 0}}, UnsupportedFeatureError),
    ("r" + "8" * 30, UnsupportedFeatureError),
])
def test_v3_data_types_numpy_cannot_hold_are_refused(spec, error):
    with pytest.raises(error, match="zarr.json"):
        parse_data_type_v3(spec, "zarr.json")


@pytest.mark.parametrize("spec, error", [
    ("|S0", UnsupportedFeatureError),
    ([["a", "<i4"], ["b", "|O"]], UnsupportedFeatureError),
    ([["a", "<i4", [2**31]]], MetadataError),
    (",c8", MetadataError),  # NumPy parses comma strings with ast.literal_eval: SyntaxError
    ([["a", ">i2"], ["b", ",f4"]], MetadataError),
])
def test_v2_dtypes_numpy_cannot_read_into_are_refused(spec, error):
    with pytest.raises(error, match=r"\.zarray"):
        parse_dtype_v2(spec, ".zarray")


@pytest.mark.parametrize("order", [[1.0, 0], [[1], 0], [True, False]])
def test_transpose_order_of_non_integers_is_a_metadata_error(corpus, tmp_path, order):
    root = _copy(corpus, "zp3_transpose_10", tmp_path)
    meta = json.loads((root / "zarr.json").read_text())
    meta["codecs"][0]["configuration"]["order"] = order
    _edit(root / "zarr.json", codecs=meta["codecs"])
    with pytest.raises(MetadataError, match="transpose order"):
        gpuzarr.open(str(root), device="cpu")


def test_numcodecs_filter_decoding_to_another_size_is_corrupt(corpus, tmp_path):
    """delta declared on 1-byte items of an int32 array: 4 times the items, never reshaped."""
    root = _copy(corpus, "zp3_numcodecs_delta", tmp_path)
    meta = json.loads((root / "zarr.json").read_text())
    meta["codecs"][0]["configuration"]["dtype"] = "|i1"
    _edit(root / "zarr.json", codecs=meta["codecs"])
    with pytest.raises(CorruptDataError, match="delta decodes a chunk to 320 int8 items, the chunk holds 80"):
        gpuzarr.open(str(root), device="cpu")[...]


@pytest.mark.parametrize("changes, error, match", [
    ({"compressor": {"id": "vlen-bytes"}}, UnsupportedFeatureError, "yields Python objects"),
    ({"filters": ["vlen-utf8"]}, MetadataError, "must be an object with an 'id'"),
])
def test_v2_object_codecs_out_of_place_are_refused_at_open(corpus, tmp_path, changes, error, match):
    root = _copy(corpus, "zp2_dtype_vlen_utf8", tmp_path)
    _edit(root / ".zarray", **changes)
    with pytest.raises(error, match=match):
        gpuzarr.open(str(root), device="cpu")


def test_an_empty_selection_over_a_huge_axis_plans_nothing(tmp_path):
    """F2: shape [2**40, 0] read whole is an empty array at once, not runs of 2**40 elements."""
    import json

    import gpuzarr

    path = tmp_path / "a"
    path.mkdir()
    (path / ".zarray").write_text(json.dumps({"zarr_format": 2, "shape": [2**40, 0], "chunks": [8, 8], "dtype": "<u1",
                                              "compressor": None, "fill_value": 0, "order": "C", "filters": None}))
    arr = gpuzarr.open(str(path), device="cpu")
    assert arr[...].shape == (2**40, 0) and arr[::7, :].shape == (-(-2**40 // 7), 0)


def test_a_chunk_too_large_for_memory_is_a_gpuzarr_error(tmp_path):
    """F1: chunks [2**37, 10] of <f8 (10 TiB): the decode buffer cannot be had; the read says so."""
    import json

    import gpuzarr

    path = tmp_path / "a"
    path.mkdir()
    (path / ".zarray").write_text(json.dumps({"zarr_format": 2, "shape": [2**37, 10], "chunks": [2**37, 10],
                                              "dtype": "<f8", "compressor": {"id": "zstd", "level": 1},
                                              "fill_value": 0, "order": "C", "filters": None}))
    (path / "0.0").write_bytes(b"\x28\xb5\x2f\xfd" + bytes(8))
    with pytest.raises(gpuzarr.GpuzarrError) as info:  # CorruptDataError where the OS overcommits 10 TiB
        gpuzarr.open(str(path), device="cpu")[:4, :]
    if isinstance(info.value, MemoryError):
        assert isinstance(info.value, gpuzarr.DeviceMemoryError) and "10995116277760 bytes" in str(info.value)



def test_staging_too_large_for_memory_is_a_gpuzarr_error():
    """F2 (seed 1205: a v2 .zarray claiming chunks of 10,485,760 columns, its files small): each
    chunk file's staging is reserved at its codec's bound before the file is read, 643 MiB for a
    part, past the fuzz worker's cap: a DeviceMemoryError naming the size, not NumPy's MemoryError."""
    import gpuzarr
    from gpuzarr.fetch import Slot, _new_staging

    for allocate in (_new_staging, Slot()):
        with pytest.raises(gpuzarr.DeviceMemoryError, match=f"{1 << 62} bytes of staging"):
            allocate(1 << 62)
