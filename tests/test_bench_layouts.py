"""Smoke test of `python -m bench --layouts` (bench/layouts.py) in quick mode, one round, two small
layouts, in-process: every workload of each layout is a row, every reader was checked equal to
zarr-python's read and timed, and a reader returning wrong data is reported as a mismatch with exit
status 1. No timing is asserted."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("zarr")
pytest.importorskip("tensorstore")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import __main__ as bench_main  # noqa: E402
from bench import layouts  # noqa: E402
from bench.readers import GpuzarrReader  # noqa: E402

# the first --layouts picks the mode (as in python -m bench --layouts), the second the subset
ARGS = ["--layouts", "--quick", "--repeats", "1", "--layouts", "v3-gzip", "v3-transpose"]


def _run(tmp_path: Path, *extra: str) -> tuple[int, dict]:
    out = tmp_path / "out"
    for f in out.glob("*.json"):
        f.unlink()
    rc = bench_main.main([*ARGS, "--cache", str(tmp_path / "cache"), "--out", str(out), *extra])  # as python -m bench
    (result,) = out.glob("layouts-*.json")
    return rc, json.loads(result.read_text())


def test_layouts_bench_checks_every_reader(tmp_path: Path, capsys: pytest.CaptureFixture,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    rc, doc = _run(tmp_path)
    table = capsys.readouterr().out
    assert rc == 0, table
    expected = [(name, w) for name in ("v3-gzip", "v3-transpose") for w in layouts.WORKLOADS]
    assert [(r["layout"], r["workload"]) for r in doc["results"]] == expected
    for row in doc["results"]:
        assert set(row["readers"]) == {"gpuzarr", "tensorstore"}
        for name, entry in row["readers"].items():
            assert entry["error"] is None and entry["checked"], (row["layout"], row["workload"], name, entry)
            assert len(entry["samples"]) == (layouts.WINDOWS if row["workload"] == "window" else 1)
        assert row["ratio"] > 0
    assert doc["layouts"]["v3-transpose"]["spec"]["shape"] == [256, 256, 16]  # quick: a quarter of the long sides
    lines = table.splitlines()
    for name, w in expected:
        assert any(line.split()[:2] == [name, w] for line in lines), (name, w)
    assert len(sorted((tmp_path / "cache").glob("layout-*.json"))) == 2  # one cached layout each

    # a reader that returns wrong data is a mismatch, never a time, and the exit status is 1
    real = GpuzarrReader.read_many
    monkeypatch.setattr(GpuzarrReader, "read_many", lambda self, sels: np.asarray(real(self, sels)) + 1)
    rc, doc = _run(tmp_path, "--layouts", "v3-gzip")
    assert rc == 1
    bad = {r["workload"]: r["readers"]["gpuzarr"] for r in doc["results"]}
    assert bad["batch"]["error"].startswith("MISMATCH") and not bad["batch"]["samples"]
    assert not bad["batch"]["checked"] and bad["full"]["checked"]
    assert all(r["readers"]["tensorstore"]["error"] is None for r in doc["results"])
    assert "MISMATCH" in capsys.readouterr().out
