"""The GPU path on a real GPU: `pytest -m gpu`. Every test here is skipped, with the reason,
where CuPy cannot allocate on a GPU or nvCOMP is missing. On a GPU machine this proves the path:
bit-identity with device="cpu" over the whole corpus, the kernels against their NumPy references,
interop and corrupt-data handling."""

from __future__ import annotations

import numpy as np
import pytest

import gpuzarr
from checks import SELECTION_LABELS, selections
from corpus import ARRAY_CASES
from gpuzarr.devices.gpu import usable_gpu

pytestmark = pytest.mark.gpu
GPU_OK, WHY = usable_gpu()


@pytest.fixture(autouse=True)
def _needs_gpu():
    if not GPU_OK:
        pytest.skip(WHY)


def _gpu_readable(arr: gpuzarr.Array) -> bool:
    from gpuzarr.codecs.array_to_array import NumcodecsArray

    chain = arr._reader.locator.leaf_chain
    return (arr.dtype.kind in "biufc" and arr.dtype.fields is None and chain.raw_nbytes is not None
            and not any(isinstance(c, NumcodecsArray) for c in chain.array_to_array))


def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a.astype(a.dtype.newbyteorder("="))).reshape(-1).view(np.uint8)


@pytest.mark.parametrize("label", SELECTION_LABELS)
@pytest.mark.parametrize("target", [c.name for c in ARRAY_CASES])
def test_gpu_read_is_bit_identical_to_cpu(corpus, target, label):
    import cupy

    arr = gpuzarr.open(str(corpus.path(target)), device="gpu")
    sel = selections(arr.shape, arr.chunks, arr.shards)[label]
    if sel is None:
        pytest.skip(f"{label!r} does not apply to shape {arr.shape}")
    if not _gpu_readable(arr):
        with pytest.raises(gpuzarr.UnsupportedFeatureError):
            arr[sel]
        return
    got = arr[sel]
    assert isinstance(got, cupy.ndarray)
    expected = arr.read(sel, device="cpu")
    assert got.shape == expected.shape
    np.testing.assert_array_equal(_bits(cupy.asnumpy(got)), _bits(expected))


@pytest.mark.parametrize("target", [c.name for c in ARRAY_CASES if c.kind == "array"][:80])
def test_gpu_read_batch_matches_cpu(corpus, target):
    import cupy

    arr = gpuzarr.open(str(corpus.path(target)), device="gpu")
    if arr.ndim == 0 or 0 in arr.shape or not _gpu_readable(arr):
        pytest.skip("no windows, or not GPU-readable")
    windows = [tuple(slice(i % max(1, n - 1), i % max(1, n - 1) + 1) for n in arr.shape) for i in range(16)]
    got = arr.read_batch(windows)
    np.testing.assert_array_equal(_bits(cupy.asnumpy(got)), _bits(arr.read_batch(windows, device="cpu")))


def test_scatter_and_unshuffle_kernels_match_numpy():
    import cupy

    from gpuzarr.blosc_frames import SHUFFLE_BIT, SHUFFLE_BYTE, bit_unshuffle, byte_unshuffle
    from gpuzarr.devices.base import get_device

    engine = get_device("gpu").engine
    rng = np.random.default_rng(0)
    for kind, ref in ((SHUFFLE_BYTE, byte_unshuffle), (SHUFFLE_BIT, bit_unshuffle)):
        sizes = np.array([0, 7, 64, 4099, 65536], dtype=np.int64)
        typesizes = np.array([4, 1, 8, 4, 2], dtype=np.int64)
        src = np.concatenate(([0], np.cumsum(sizes)[:-1])).astype(np.int64)
        total = int(sizes.sum())
        data = rng.integers(0, 256, total, dtype=np.uint8)
        work = cupy.zeros(2 * total, dtype=cupy.uint8)
        work[:total] = cupy.asarray(data)
        engine.unshuffle(kind, work, {"src": src, "dst": src + total, "size": sizes, "typesize": typesizes})
        out = cupy.asnumpy(work[total:])
        for s, n, t in zip(src, sizes, typesizes):
            np.testing.assert_array_equal(out[s:s + n], ref(data[s:s + n], int(t)))


def test_read_into_preallocated_output_on_a_user_stream(tmp_path):
    import cupy

    from gpuzarr.sample import sample_data, write_sharded

    data = sample_data((300, 200))
    write_sharded(str(tmp_path / "a"), data, (128, 128), (32, 32))
    arr = gpuzarr.open(str(tmp_path / "a"), device="gpu")
    out = cupy.empty((100, 150), dtype=data.dtype)
    with cupy.cuda.Stream(non_blocking=True) as stream:
        result = arr.read((slice(50, 150), slice(20, 170)), out=out)
        stream.synchronize()
    assert result is out
    np.testing.assert_array_equal(cupy.asnumpy(out), data[50:150, 20:170])


def test_dlpack_interop_is_zero_copy(tmp_path):
    from gpuzarr.sample import sample_data, write_sharded

    data = sample_data((64, 64))
    write_sharded(str(tmp_path / "a"), data, (64, 64), (32, 32))
    got = gpuzarr.open(str(tmp_path / "a"), device="gpu")[...]
    torch = pytest.importorskip("torch", reason="PyTorch is not installed")
    tensor = torch.from_dlpack(got)
    assert tensor.data_ptr() == got.data.ptr
    np.testing.assert_array_equal(tensor.cpu().numpy(), data)


def test_corrupt_frame_size_is_reported(tmp_path):
    import numcodecs

    from gpuzarr.sample import write_sharded

    data = np.arange(64, dtype="<u2").reshape(8, 8)
    write_sharded(str(tmp_path / "a"), data, (8, 8), (4, 4))
    shard = tmp_path / "a" / "c" / "0" / "0"
    raw = bytearray(shard.read_bytes())
    index = np.frombuffer(bytes(raw[-68:-4]), "<u8").reshape(4, 2)
    start, size = int(index[0, 0]), int(index[0, 1])
    bad = numcodecs.Zstd().encode(np.ones(20, "<u2").tobytes())  # wrong decoded size
    raw[start:start + size] = bad.ljust(size, b"\0")[:size]
    shard.write_bytes(bytes(raw))
    with pytest.raises(gpuzarr.CorruptDataError):
        gpuzarr.open(str(tmp_path / "a"), device="gpu")[...]


def test_dlpack_interop_with_jax(tmp_path):
    from gpuzarr.sample import sample_data, write_sharded

    data = sample_data((64, 64))
    write_sharded(str(tmp_path / "a"), data, (64, 64), (32, 32))
    got = gpuzarr.open(str(tmp_path / "a"), device="gpu")[...]
    jax = pytest.importorskip("jax", reason="JAX is not installed")
    array = jax.dlpack.from_dlpack(got)
    assert array.unsafe_buffer_pointer() == got.data.ptr
    np.testing.assert_array_equal(np.asarray(array), data)
