"""The `gpuzarr` command: info on arrays and groups, the demo, and errors as messages."""

from __future__ import annotations

import pytest
import zarr

from gpuzarr.cli import main


def test_info_describes_a_sharded_array(tmp_path, capsys):
    a = zarr.create_array(tmp_path / "a", shape=(100, 60), chunks=(10, 10), shards=(50, 30), dtype="u2",
                          dimension_names=["y", "x"], fill_value=0)
    a[:40] = 7
    assert main(["info", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert "shape       (100, 60)" in out and "chunks      (10, 10)" in out and "shards      (50, 30)" in out
    assert "sharding_indexed" in out and "zstd" in out and "dim names   ['y', 'x']" in out
    # rows 0..39 lie in shard row 0 (of 2), in both shard columns: 2 of the 4 shards are stored
    assert "stored      2 of 4 chunk objects" in out


def test_info_walks_a_group_tree(tmp_path, capsys):
    root = zarr.open_group(tmp_path / "g", mode="w")
    root.create_group("sub").create_array("b", shape=(4,), chunks=(2,), dtype="i4")
    root.create_array("a", shape=(3,), chunks=(3,), dtype="f8")
    assert main(["info", str(tmp_path / "g"), "--no-count"]) == 0
    out = capsys.readouterr().out
    assert "group" in out and "a  array" in out and "sub/b  array" in out


def test_info_reports_errors_without_a_traceback(tmp_path, capsys):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "zarr.json").write_text("{not json")
    assert main(["info", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gpuzarr: error:") and "zarr.json" in err


def test_demo_verifies_and_times(capsys):
    assert main(["demo", "--size", "512", "--repeats", "1", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "bit-identical to the source" in out and "GB/s" in out


def test_demo_on_gpu_without_one_says_why(capsys):
    from gpuzarr.devices.gpu import usable_gpu

    if usable_gpu()[0]:
        pytest.skip("a GPU is usable here: the GPU demo is exercised by `pytest -m gpu` users")
    assert main(["demo", "--size", "256", "--repeats", "1", "--device", "gpu"]) == 2
    assert "not available" in capsys.readouterr().err
