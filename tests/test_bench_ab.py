"""bench.ab compares the working tree with a git revision in one process: the revision must be
importable beside the working tree's package, and read the same data."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import gpuzarr
from gpuzarr.sample import sample_data, write_sharded

ROOT = Path(__file__).resolve().parent.parent


def _in_git_checkout() -> bool:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], check=False, cwd=ROOT, capture_output=True).returncode == 0
    except OSError:
        return False


@pytest.mark.skipif(not _in_git_checkout(), reason="bench.ab snapshots a git revision: needs git and a checkout")
def test_a_revision_imports_beside_the_working_tree(tmp_path):
    sys.path.insert(0, str(ROOT))
    try:
        from bench.ab import BASE, snapshot
    finally:
        sys.path.remove(str(ROOT))
    snap = tmp_path / "snap"
    snap.mkdir()
    commit = snapshot("HEAD", snap)
    assert len(commit) == 40
    sys.path.insert(0, str(snap))
    try:
        base = importlib.import_module(BASE)
        assert Path(base.__file__).is_relative_to(snap)
        blosc_frames = importlib.import_module(f"{BASE}.blosc_frames")  # imports gpuzarr.errors absolutely
        assert blosc_frames.CorruptDataError is base.CorruptDataError is not gpuzarr.CorruptDataError
        data = sample_data((64, 96))
        write_sharded(str(tmp_path / "a"), data, (32, 32), (16, 16))
        np.testing.assert_array_equal(base.open(str(tmp_path / "a"), device="cpu")[5:60, 7:90], data[5:60, 7:90])
        assert base.open is not gpuzarr.open
        if shutil.which("c++"):  # the revision's host library built beside it, as pip install builds it
            host = importlib.import_module(f"{BASE}.host_lib")
            assert host.built() and Path(host.__file__).parent == Path(base.__file__).parent
    finally:
        sys.path.remove(str(snap))
        for name in [n for n in sys.modules if n == BASE or n.startswith(BASE + ".")]:
            del sys.modules[name]


def test_the_gpu_host_benchmark_runs_the_real_orchestration_and_reports_ratios(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    from bench import gpu_host

    assert gpu_host.main(["--size-2d", "256", "--size-3d", "64", "--repeats", "1", "--patches", "4",
                          "--datasets", "2d-64,v2", "--cache", str(tmp_path / "c"), "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "NOTHING IS DECODED" in out
    rows = json.loads(next((tmp_path / "o").glob("gpu-host-*.json")).read_text())["rows"]
    assert [(r["dataset"], r["workload"]) for r in rows] == [("2d-64", "full"), ("2d-64", "batch 4"),
                                                              ("v2", "full"), ("v2", "batch 4")]
    full = rows[0]
    assert full["chunks"] == 16 and 0 < full["compressed_bytes"] < 256 * 256 * 2 and full["ratio"] > 0
    assert all(0 <= r["gil_us_per_chunk"] <= r["samples"]["one_cpu"][0] * 1e6 / r["chunks"] * 3 for r in rows)
    assert "GIL us/chunk" in out
    assert "1 reader ms" in out and all(r["one_reader_ms"] > 0 and len(r["samples"]["one_reader"]) == 1 for r in rows)


def test_one_reader_turns_the_stores_split_reads_off_and_back_on(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    import gpuzarr.store as store
    from bench.gpu_host import one_reader

    monkeypatch.setattr(store, "default_threads", lambda: 4)
    sizes = [4 << 20] * 4  # four reads' bytes
    assert len(store._split(sizes)) == 4
    with one_reader():
        assert store._split(sizes) == [range(4)]
    assert len(store._split(sizes)) == 4


def test_gil_seconds_counts_python_and_not_reads(tmp_path, monkeypatch):
    """The GIL-held bound is the CPU time outside os.preadv: all of a Python loop's, little of a
    read's (a file read back many times, its bytes copied by the kernel with the GIL released)."""
    monkeypatch.syspath_prepend(str(ROOT))
    from bench.gil import gil_seconds

    def loop():
        total = 0
        for i in range(300_000):
            total += i

    cpu, held = gil_seconds(loop)
    assert cpu > 0 and held == pytest.approx(cpu, rel=0.05)
    path = tmp_path / "f"
    path.write_bytes(bytes(8 << 20))
    buffer = bytearray(8 << 20)

    def reads():
        fd = os.open(path, os.O_RDONLY)
        try:
            for _ in range(20):
                assert os.preadv(fd, [buffer], 0) == len(buffer)
        finally:
            os.close(fd)

    cpu, held = gil_seconds(reads)
    assert held < 0.5 * cpu
    assert os.preadv.__name__ == "preadv"  # put back


def test_the_cold_benchmark_drops_the_page_cache_or_says_why(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    from bench import cold

    args = ["--size-2d", "512", "--windows", "3", "--repeats", "1", "--cache", str(tmp_path / "c"),
            "--out", str(tmp_path / "o")]
    why = cold.can_drop()
    if why:
        assert cold.main(args) == 2 and why in capsys.readouterr().err
        return
    assert cold.main(args) == 0
    out = capsys.readouterr().out
    assert "page cache dropped" in out and "one by one" in out and "one batch" in out
    saved = json.loads(next((tmp_path / "o").glob("cold-*.json")).read_text())
    assert set(saved["seconds"]) == {"gpuzarr", "tensorstore"} and len(saved["seconds"]["gpuzarr"]["one"]) == 1


def test_a_run_records_the_share_of_cpu_time_stolen_from_it(monkeypatch):
    """Steal over a run comes from /proc/stat's counters at its start and end, and the header line
    says so, flagging a noisy run; where there are no counters, it says nothing of steal."""
    from bench import report

    ticks = iter([(1000, 100), (2000, 300)])  # 200 of 1000 ticks stolen over the run
    monkeypatch.setattr(report, "_cpu_ticks", lambda: next(ticks))
    doc = report.run_started()
    report.close_run(doc, 0.0)
    assert doc["steal"]["share"] == 0.2
    assert "steal 20% (a shared machine: noisy)" in report.machine_load(doc)
    monkeypatch.setattr(report, "_cpu_ticks", lambda: None)
    doc = report.run_started()
    report.close_run(doc, 0.0)
    assert doc["steal"]["share"] is None and "steal" not in report.machine_load(doc)
    monkeypatch.undo()
    total, stolen = report._cpu_ticks()  # this machine's own counters (Linux)
    assert 0 <= stolen <= total


def test_a_run_records_each_cores_speed_and_flags_unequal_cores(monkeypatch):
    """Each core this process may use is timed at a run's start (one fixed libzstd decode on a
    thread pinned there); the header line says when the slowest took 1.15x the fastest's time or more."""
    import os

    from bench import report

    got = report.core_seconds(rounds=1)
    assert set(got) == (set(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else set())
    assert all(0 < s < 1 for s in got.values())
    assert os.sched_getaffinity(0) == set(got) or not got  # the probe pinned its own threads, not this one
    together = report.core_seconds(rounds=1, at_once=True)
    assert set(together) == set(got) and all(0 < s < 1 for s in together.values())
    for seconds, flagged in (({0: 0.001, 1: 0.00155}, True), ({0: 0.001, 1: 0.00105}, False), ({}, False)):
        monkeypatch.setattr(report, "core_seconds", lambda seconds=seconds, at_once=False: seconds)
        doc = report.run_started()
        report.close_run(doc, 0.0)
        line = report.machine_load(doc)
        assert ("cores unequal" in line) == flagged and (not flagged or "the slowest took 1.55x" in line)
        assert "cores at once" not in line  # the same times alone and at once


def test_a_run_flags_cores_slower_at_once_than_alone(monkeypatch):
    """Two threads at once each 1.76x slower than alone (one physical core, or a busy host):
    parallel gains shrink, and the header says so; 1.06x is not flagged."""
    from bench import report

    for slowed, flagged in ((1.76, True), (1.06, False)):
        monkeypatch.setattr(report, "core_seconds", lambda at_once=False, slowed=slowed:
                            {0: 0.001 * (slowed if at_once else 1), 1: 0.001 * (slowed if at_once else 1)})
        doc = report.run_started()
        report.close_run(doc, 0.0)
        line = report.machine_load(doc)
        assert ("cores at once: each took 1.76x its time alone" in line) == flagged
