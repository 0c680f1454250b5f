"""Smoke test of `python -m bench --scaling` (bench/scaling.py) at small sizes, in-process: a row
per dataset and thread count, each reader timed after gpuzarr's read was checked against
tensorstore's. No timing is asserted."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("zarr")
pytest.importorskip("tensorstore")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import __main__ as bench_main  # noqa: E402


def test_scaling_bench_writes_a_row_per_dataset_and_thread_count(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    rc = bench_main.main(["--scaling", "--size-2d", "512", "--size-3d", "128", "--threads", "1,2", "--repeats", "1",
                          "--patches", "3", "--cache", str(tmp_path / "cache"), "--out", str(out)])
    assert rc == 0
    (result,) = out.glob("scaling-*.json")
    rows = json.loads(result.read_text())["rows"]
    assert [(r["dataset"], r["threads"]) for r in rows] == [("2d", 1), ("2d", 2), ("3d", 1), ("3d", 2)]
    assert all(r[k] > 0 for r in rows for k in ("gz full", "ts full", "gz batch", "ts batch"))
    assert "gz/ts" in capsys.readouterr().out


def test_scaling_bench_refuses_bad_thread_counts(capsys) -> None:
    with pytest.raises(SystemExit):
        bench_main.main(["--scaling", "--threads", "0,2"])
    assert "must be >= 1" in capsys.readouterr().err
