"""Issue 10 on the benchmark's own datasets: the gpu-host benchmark's layouts copy no byte into a
staging buffer of their own for sharded zstd (2-D) or v2 blosc-lz4 reads; every batch is
uploaded as fetched."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_the_benchmark_datasets_are_uploaded_as_fetched(tmp_path, capsys, monkeypatch):
    from gpuzarr.devices.gpu_layout import decode_alignments

    if decode_alignments()["zstd"] != (1, 1) or decode_alignments()["lz4"] != (1, 1):
        pytest.skip(f"nvCOMP's alignments here: {decode_alignments()} (its library missing?)")
    monkeypatch.syspath_prepend(str(ROOT))
    from bench import gpu_host

    assert gpu_host.main(["--size-2d", "256", "--size-3d", "64", "--repeats", "1", "--patches", "4",
                          "--datasets", "2d-64,v2", "--cache", str(tmp_path / "c"), "--out", str(tmp_path / "o")]) == 0
    assert "restaged MB" in capsys.readouterr().out
    rows = json.loads(next((tmp_path / "o").glob("gpu-host-*.json")).read_text())["rows"]
    assert {(r["dataset"], r["workload"]): r["restaged_bytes"] for r in rows} == {
        ("2d-64", "full"): 0, ("2d-64", "batch 4"): 0, ("v2", "full"): 0, ("v2", "batch 4"): 0}
