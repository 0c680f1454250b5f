"""Smoke test of `python -m bench --xarray` at a tiny size, one round, in-process: every row and
floor is there, every row passed the identical-to-engine="zarr" check, and a row whose Dataset
differs is reported as a mismatch with exit status 1. No timing is asserted."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("xarray")
pytest.importorskip("zarr")
pytest.importorskip("zstandard")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import xarray_bench  # noqa: E402

ARGS = ["--mib", "0.25", "--grid", "32,32", "--repeats", "1"]


def _run(tmp_path: Path, *extra: str) -> tuple[int, dict]:
    out = tmp_path / "out"
    rc = xarray_bench.main([*ARGS, "--cache", str(tmp_path / "cache"), "--out", str(out), *extra])
    (result,) = out.glob("xarray-*.json")
    return rc, json.loads(result.read_text())


def test_xarray_bench_rows_checked(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    has_zarrs = importlib.util.find_spec("zarrs") is not None  # the bench extra's, not the test extra's
    rc, doc = _run(tmp_path)
    table = capsys.readouterr().out
    assert rc == 0, table
    assert [fd["format"] for fd in doc["formats"]] == ["v3", "v2"]
    for fd in doc["formats"]:
        assert set(fd["rows"]) == set(xarray_bench.ROW_KEYS)
        assert set(fd["floors"]) == {"floor", "floor:1t"}
        for key, entry in {**fd["rows"], **fd["floors"], "cf": fd["cf_decoding"]}.items():
            if key == "zarr+zarrs" and not has_zarrs:
                assert entry["skipped"] and entry["error"] is None
                continue
            assert entry["error"] is None, (fd["format"], key, entry["error"])
            assert len(entry["samples_s"]) == 1
        # the engine="zarr" rows really ran under the pipeline they are named after
        assert fd["rows"]["zarr"]["pipeline"] == "zarr.core.codec_pipeline.BatchedCodecPipeline"
        if has_zarrs:
            assert fd["rows"]["zarr+zarrs"]["pipeline"] == "zarrs.ZarrsCodecPipeline"
        assert fd["rows"]["zarr+gpuzarr"]["pipeline"] == "gpuzarr.CodecPipeline"
        assert fd["out_nbytes"] > 0 and fd["floor_frames"] > 0
        assert fd["derived"]["zarr"]["vs_zarr"] == pytest.approx(1.0)
    for label in ('engine="zarr" + gpuzarr pipeline', 'engine="gpuzarr"', "floor: read + decompress"):
        assert label in table
    # one cached store (and its info file) per format, keyed by the parameters
    marker = sorted((tmp_path / "cache").glob("xr-*.json"))
    assert len(marker) == 2


def test_xarray_bench_mismatch_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = xarray_bench.open_dataset

    def tampered(row, path):  # engine="gpuzarr" returns one value off
        ds = real(row, path)
        if row.key == "gpuzarr":
            ds = ds.load()
            ds["temperature"].values[0, 0, 0] += 1
        return ds

    monkeypatch.setattr(xarray_bench, "open_dataset", tampered)
    rc, doc = _run(tmp_path, "--formats", "v3", "--rows", "zarr,gpuzarr")
    assert rc == 1
    (fd,) = doc["formats"]
    assert fd["rows"]["gpuzarr"]["error"].startswith("MISMATCH")
    assert fd["rows"]["gpuzarr"]["samples_s"] == []
    assert fd["rows"]["zarr"]["error"] is None
