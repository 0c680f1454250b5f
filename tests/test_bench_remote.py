"""Smoke test of `python -m bench --remote` (bench/remote.py): its S3 server answers as S3 clients
expect (ranges, suffix ranges, 404/416, HEAD, listings) and counts what it serves; one tiny run
at no added latency checks every reader it runs and writes the JSON; a reader returning wrong data
is reported as a mismatch with exit status 1. No timing is asserted."""

from __future__ import annotations

import http.client
import json
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("obstore")
pytest.importorskip("zarr")
pytest.importorskip("tensorstore")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import remote  # noqa: E402

ARGS = ["--latency-ms", "0", "--repeats", "1", "--patches", "3", "--datasets", "chunked",
        "--readers", "gpuzarr,tensorstore"]


def _get(port: int, path: str, method: str = "GET", headers: dict | None = None) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request(method, path, headers=headers or {})
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body


def test_server_answers_ranges_and_counts(tmp_path: Path) -> None:
    data = bytes(range(256)) * 4
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "sub" / "obj").write_bytes(data)
    (tmp_path / "d" / "top").write_bytes(b"x")
    with remote.Server([(tmp_path / "d", f"{remote.BUCKET}/set")], latency_ms=1) as server:
        port = server.port
        assert _get(port, f"/{remote.BUCKET}/set/sub/obj")[2] == data
        status, head, body = _get(port, f"/{remote.BUCKET}/set/sub/obj", headers={"Range": "bytes=10-19"})
        assert (status, body, head["content-range"]) == (206, data[10:20], f"bytes 10-19/{len(data)}")
        assert _get(port, f"/{remote.BUCKET}/set/sub/obj", headers={"Range": "bytes=-16"})[2] == data[-16:]
        assert _get(port, f"/{remote.BUCKET}/set/sub/obj", headers={"Range": "bytes=1000-"})[2] == data[1000:]
        assert _get(port, f"/{remote.BUCKET}/set/sub/obj", headers={"Range": "bytes=5000-"})[0] == 416
        status, _, body = _get(port, f"/{remote.BUCKET}/set/nothing")
        assert status == 404 and b"NoSuchKey" in body
        status, head, body = _get(port, f"/{remote.BUCKET}/set/sub/obj", method="HEAD")
        assert (status, head["content-length"], body) == (200, str(len(data)), b"")
        status, _, body = _get(port, f"/{remote.BUCKET}?list-type=2&prefix=set/&delimiter=/")
        assert status == 200 and b"<Key>set/top</Key>" in body and b"<Prefix>set/sub/</Prefix>" in body
        counts = server.counters()
        assert counts["requests"] == 8 and counts["get"] == 6 and counts["head"] == 1 and counts["list"] == 1
        assert counts["not_found"] == 1
        assert counts["bytes"] >= len(data) + 10 + 16 + 24


def test_jitter_spreads_answers_over_a_long_tail(tmp_path: Path) -> None:
    import time

    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "obj").write_bytes(b"x")
    with remote.Server([(tmp_path / "d", f"{remote.BUCKET}/set")], latency_ms=2) as server:
        server.jitter_ms = 10
        times = []
        for draw in range(24):
            server.draw = draw  # a new draw: within one, an object's requests wait alike
            start = time.perf_counter()
            assert _get(server.port, f"/{remote.BUCKET}/set/obj")[2] == b"x"
            times.append(time.perf_counter() - start)
        server.jitter_ms = 0
        fixed = []
        for _ in range(8):
            start = time.perf_counter()
            _get(server.port, f"/{remote.BUCKET}/set/obj")
            fixed.append(time.perf_counter() - start)
    assert min(times) >= 0.002 and max(times) - min(times) > 0.01, times  # exponential, mean 10 ms: all 24 within 10 ms ~1e-4
    assert max(fixed) < min(max(times), 0.5), fixed
    same = {remote._State.jitter_us(f"/b/o{q}", 10_000, 3) for q in ("", "?partNumber=1")}
    assert len(same) == 1 and remote._State.jitter_us("/b/o", 10_000, 4) not in same
    with pytest.raises(SystemExit):
        remote.parse_args(["--jitter-ms", "-1"])


def _run(tmp_path: Path, *extra: str) -> tuple[int, dict]:
    out = tmp_path / "out"
    rc = remote.main([*ARGS, "--cache", str(tmp_path / "cache"), "--out", str(out), *extra])
    (result,) = out.glob("remote-*.json")
    return rc, json.loads(result.read_text())


def test_remote_bench_checks_every_reader(tmp_path: Path, capsys: pytest.CaptureFixture,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    rc, doc = _run(tmp_path)
    table = capsys.readouterr().out
    assert rc == 0, table
    assert {(r["dataset"], r["workload"]) for r in doc["results"]} == {("chunked", w) for w in remote.WORKLOADS}
    for row in doc["results"]:
        assert set(row["entries"]) == {"gpuzarr", "tensorstore", "floor"}
        for name, entry in row["entries"].items():
            assert entry["error"] is None, (row["workload"], name, entry["error"])
            assert len(entry["samples"]) == remote.rounds(1, row["workload"])
            assert all(sample["requests"] > 0 for sample in entry["samples"])
        # the floor is one GET per chunk object the workload needs, as the server counted them
        assert row["entries"]["floor"]["samples"][0]["requests"] == row["floor_gets"]
    assert "requests per read" in table and "time / tensorstore's" in table

    # a reader that returns wrong data is a mismatch, never a time, and the exit status is 1
    real = remote.Gpuzarr.read_many
    monkeypatch.setattr(remote.Gpuzarr, "read_many", lambda self, sels: np.asarray(real(self, sels)) + 1)
    for f in (tmp_path / "out").glob("*.json"):
        f.unlink()
    rc, doc = _run(tmp_path, "--workloads", "batch", "--no-floor")
    assert rc == 1
    (row,) = doc["results"]
    assert row["entries"]["gpuzarr"]["error"].startswith("MISMATCH") and not row["entries"]["gpuzarr"]["samples"]
    assert row["entries"]["tensorstore"]["error"] is None
