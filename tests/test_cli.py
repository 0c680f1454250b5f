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


@pytest.mark.parametrize("fmt, strays", [(2, ["README.txt", "5", ".hidden", "01"]),
                                         (3, ["notes.md", "c/.hidden/x", "c/9", "c/00"])])
def test_info_counts_only_chunks_of_the_grid(tmp_path, capsys, fmt, strays):
    """A README beside the chunks, a hidden file, a key past the grid or with a leading zero were
    counted as chunks ("4 of 2"; found by a differential run)."""
    a = zarr.create_array(tmp_path / "a", shape=(10,), chunks=(5,), dtype="i1", zarr_format=fmt, fill_value=0)
    a[:] = 1
    for rel in strays:
        (tmp_path / "a" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "a" / rel).write_text("not a chunk")
    assert main(["info", str(tmp_path / "a")]) == 0
    chunk_bytes = sum((tmp_path / "a" / k).stat().st_size for k in (["0", "1"] if fmt == 2 else ["c/0", "c/1"]))
    assert f"stored      2 of 2 chunk objects, {chunk_bytes} bytes" in capsys.readouterr().out


def test_info_counts_no_chunks_of_a_member_known_only_from_consolidated_metadata(tmp_path, capsys):
    import shutil

    group = zarr.open_group(tmp_path / "g", mode="w", zarr_format=3)
    group.create_array("top", shape=(4, 4), chunks=(2, 2), dtype="f4", fill_value=0)[:] = 1
    zarr.consolidate_metadata(tmp_path / "g")
    shutil.rmtree(tmp_path / "g" / "top")
    assert main(["info", str(tmp_path / "g")]) == 0
    assert "stored      0 of 4 chunk objects" in capsys.readouterr().out


@pytest.mark.parametrize("url", ["zip:///nonexistent.zip", "reference://x"])
def test_info_of_a_filesystem_that_cannot_start_is_a_message(url, capsys):
    assert main(["info", url]) == 2
    assert capsys.readouterr().err.startswith(f"gpuzarr: error: {url}: cannot open this store")


def test_demo_of_an_image_that_cannot_fit_is_a_message(capsys):
    assert main(["demo", "--size", str(10**7), "--repeats", "1", "--device", "cpu"]) == 2
    assert "GiB of memory" in capsys.readouterr().err
