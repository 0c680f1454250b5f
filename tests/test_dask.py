"""`gpuzarr.to_dask`: blocks read by gpuzarr equal zarr-python's read, the default blocks hold
whole shards, and the graph works pickled, sliced and on worker processes (distributed)."""

from __future__ import annotations

import itertools
import math
import os
import pickle
import subprocess
import sys
import warnings

import dask
import numcodecs
import numpy as np
import pytest
from checks import assert_identical, open_zarr_array
from corpus import make_data
from dask.array.core import normalize_chunks
from zarr.codecs import ZstdCodec

import gpuzarr
from gpuzarr.devices.gpu import usable_gpu

GPU_OK, WHY = usable_gpu()

# name: (shape, dtype, zarr.create_array arguments); no shape is a multiple of its shard or chunk
CASES = {
    "v3_sharded_zstd": ((300, 250), "<f4", dict(chunks=(32, 16), shards=(64, 48),
                                                compressors=ZstdCodec(level=3))),
    "v3_unsharded": ((130, 70), "<i8", dict(chunks=(40, 30))),
    "v2_blosc": ((99, 101), ">u2", dict(chunks=(20, 25), zarr_format=2,
                                        compressors=numcodecs.Blosc(cname="lz4", clevel=5, shuffle=2))),
}


def _write(path, shape, dtype, create) -> None:
    import zarr

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zarr-python's notes on numcodecs codecs and v2
        z = zarr.create_array(str(path), shape=shape, dtype=dtype, **create)
        z[...] = make_data(shape, dtype, seed=7)


@pytest.fixture(scope="module")
def arrays(tmp_path_factory) -> dict:
    """name -> (path, zarr-python's read of the whole array)."""
    root = tmp_path_factory.mktemp("dask")
    out = {}
    for name, (shape, dtype, create) in CASES.items():
        _write(root / name, shape, dtype, create)
        out[name] = (str(root / name), open_zarr_array(root / name)[...])
    return out


def _unit(path: str) -> tuple[int, ...]:
    arr = gpuzarr.open(path, device="cpu")
    return arr.shards or arr.chunks


@pytest.mark.parametrize("name", CASES)
def test_compute_equals_zarr_python(arrays, name):
    path, ref = arrays[name]
    x = gpuzarr.to_dask(path, device="cpu")
    assert x.shape == ref.shape and x.dtype == ref.dtype
    assert type(x._meta) is np.ndarray
    assert_identical(x.compute(), ref, name)


@pytest.mark.parametrize("name", CASES)
def test_default_blocks_are_whole_shards_grown_toward_the_target(arrays, name):
    path, ref = arrays[name]
    unit = _unit(path)
    with dask.config.set({"array.chunk-size": "1KiB"}):  # below one shard: one shard per block, never less
        assert gpuzarr.to_dask(path).chunks == normalize_chunks(unit, ref.shape)
    target = 100 << 10
    with dask.config.set({"array.chunk-size": target}):
        x = gpuzarr.to_dask(path)
    unit_bytes = math.prod(unit) * ref.itemsize
    for blocks, u, n in zip(x.chunks, unit, ref.shape):
        assert sum(blocks) == n
        assert all(edge % u == 0 for edge in np.cumsum(blocks)[:-1]), (blocks, u)
    sizes = [math.prod(block) * ref.itemsize for block in itertools.product(*x.chunks)]
    assert max(sizes) > unit_bytes and max(sizes) <= max(target, unit_bytes)
    assert_identical(x.compute(), ref, name)
    with dask.config.set({"array.chunk-size": "128MiB"}):  # dask's default holds these arrays whole
        assert gpuzarr.to_dask(path).numblocks == (1, 1)


@pytest.mark.parametrize("chunks", [(70, 33), ((50, 49), (1, 100)), (-1, 7), "auto"])
def test_chunks_given_are_used_as_given(arrays, chunks):
    path, ref = arrays["v2_blosc"]
    x = gpuzarr.to_dask(path, chunks)
    assert x.chunks == normalize_chunks(chunks, ref.shape, dtype=ref.dtype, previous_chunks=_unit(path))
    assert_identical(x.compute(), ref)


def test_slices_of_the_dask_array(arrays):
    path, ref = arrays["v3_sharded_zstd"]
    x = gpuzarr.to_dask(path, (50, 60))
    for sel in [np.s_[17:211:3, ::-2], np.s_[5, 10:40], np.s_[-1], np.s_[64:128, 48:96], np.s_[[3, 290, 7], 1:],
                np.s_[5, 7], np.s_[None, 3:5, 120:130]]:
        assert_identical(x[sel].compute(), ref[sel], str(sel))


def test_a_slice_inside_a_block_is_read_alone(arrays, monkeypatch):
    path, ref = arrays["v3_sharded_zstd"]
    x = gpuzarr.to_dask(gpuzarr.open(path), device="cpu")  # one block: the whole array
    reads = []
    read = gpuzarr.Array.read
    monkeypatch.setattr(gpuzarr.Array, "read", lambda self, sel, *a, **k: reads.append(sel) or read(self, sel, *a, **k))
    assert_identical(x[5, 10:40].compute(), ref[5, 10:40])
    assert reads == [(5, slice(10, 40))]  # dask fused the slice into the block's read


def test_graph_holds_the_array_once_and_pickles(arrays):
    path, ref = arrays["v3_sharded_zstd"]
    x = gpuzarr.to_dask(path, (64, 48), device="cpu")
    held = [v for v in dict(x.dask).values() if isinstance(getattr(v, "value", v), gpuzarr.Array)]
    assert len(held) == 1 and x.npartitions == 30
    blob = pickle.dumps(x)
    assert len(blob) < ref.nbytes // 10  # metadata and a path, no data
    y = pickle.loads(blob)
    assert y.name == x.name
    assert_identical(y.compute(), ref)
    assert_identical(pickle.loads(pickle.dumps(y[100:200])).compute(), ref[100:200])


def test_names_are_deterministic(arrays):
    path, _ = arrays["v3_unsharded"]
    with dask.config.set({"tokenize.ensure-deterministic": True}):  # dask raises rather than use a random token
        x = gpuzarr.to_dask(path)
    assert x.name.startswith("gpuzarr-")
    assert gpuzarr.to_dask(path).name == x.name
    assert gpuzarr.to_dask(gpuzarr.open(path)).name == x.name
    code = f"import gpuzarr; print(gpuzarr.to_dask({path!r}).name)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          timeout=60).stdout.strip() == x.name  # no per-process state in the token
    assert gpuzarr.to_dask(path, (40, 30)).name != x.name
    assert gpuzarr.to_dask(path, device="cpu").name != x.name
    assert gpuzarr.to_dask(arrays["v2_blosc"][0]).name != x.name


def test_a_group_url_is_refused_naming_it(tmp_path):
    import zarr

    group = zarr.open_group(str(tmp_path / "g"), mode="w")
    group.create_array("a", shape=(4,), dtype="u1")
    with pytest.raises(TypeError, match=r"g is a Zarr group, not an array: pass the path of one of its arrays"):
        gpuzarr.to_dask(str(tmp_path / "g"))
    with pytest.raises(TypeError, match="is a Zarr group"):
        gpuzarr.to_dask(gpuzarr.open(str(tmp_path / "g")))
    assert gpuzarr.to_dask(str(tmp_path / "g" / "a")).shape == (4,)


def test_bad_arguments_are_refused(arrays):
    path, _ = arrays["v3_unsharded"]
    with pytest.raises(ValueError, match="storage_options"):
        gpuzarr.to_dask(gpuzarr.open(path), storage_options={"anon": True})
    with pytest.raises(ValueError, match="device must be"):
        gpuzarr.to_dask(gpuzarr.open(path), device="tpu")
    with pytest.raises(ValueError, match="device must be"):
        gpuzarr.to_dask(path, device="tpu")


def test_variable_length_strings_get_one_chunk_per_block(tmp_path):
    import zarr

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        z = zarr.create_array(str(tmp_path / "s"), shape=(10,), chunks=(3,), dtype=str)
        z[...] = np.array([f"item {i}" * i for i in range(10)])
    x = gpuzarr.to_dask(str(tmp_path / "s"), device="cpu")  # dask cannot size the items
    assert x.chunks == ((3, 3, 3, 1),)
    assert x.compute().tolist() == z[...].tolist()


@pytest.mark.parametrize("shape", [(), (0, 7)])
def test_zero_dimensional_and_empty_arrays(tmp_path, shape):
    _write(tmp_path / "e", shape, "<i4", dict(chunks=tuple(max(n, 1) for n in shape)))
    x = gpuzarr.to_dask(str(tmp_path / "e"), device="cpu")
    assert_identical(x.compute(), open_zarr_array(tmp_path / "e")[...])


def test_worker_processes_of_a_distributed_cluster(arrays):
    from distributed import Client, LocalCluster, wait

    path, ref = arrays["v3_sharded_zstd"]
    x = gpuzarr.to_dask(path, (64, 48), device="cpu")
    with LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None,
                      silence_logs=40) as cluster, Client(cluster) as client:
        y = x.persist()
        wait(y, timeout=60)
        holders = {w for ws in client.who_has(y).values() for w in ws}
        got = client.compute(y[::-1]).result(timeout=60)
        pids = set(client.run(os.getpid).values())
    assert len(pids) == 2 and len(holders) == 2  # both worker processes read blocks
    assert_identical(got, ref[::-1])


def test_importing_gpuzarr_imports_no_dask():
    code = "import gpuzarr, sys; assert 'dask' not in sys.modules, sorted(m for m in sys.modules if 'dask' in m)"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@pytest.mark.skipif(GPU_OK, reason="there is a usable GPU here")
def test_device_gpu_without_a_gpu_fails_when_building(arrays):
    with pytest.raises(gpuzarr.UnsupportedFeatureError, match="device='gpu' is not available"):
        gpuzarr.to_dask(gpuzarr.open(arrays["v3_unsharded"][0], device="cpu"), device="gpu")


@pytest.mark.gpu
@pytest.mark.parametrize("name", CASES)
def test_gpu_blocks_are_cupy(arrays, name):
    if not GPU_OK:
        pytest.skip(WHY)
    import cupy

    path, ref = arrays[name]
    x = gpuzarr.to_dask(path, (50, 60), device="gpu")
    assert type(x._meta) is cupy.ndarray and x.dtype == ref.dtype.newbyteorder("=")
    got = x.compute()
    assert type(got) is cupy.ndarray
    assert_identical(cupy.asnumpy(got), ref.astype(x.dtype))
