"""The GPU device's orchestration and host half (gpu_layout), run against a CPU STAND-IN for the
device calls (tests/gpu_standin.py). This tests our batching, framing, alignment, copy/unshuffle
tables and placement records on every numeric corpus array; it is not a claim about the GPU
(that is `pytest -m gpu`, tests/test_gpu.py)."""

from __future__ import annotations

import numpy as np
import pytest

import gpuzarr
from checks import selections
from corpus import ARRAY_CASES
from gpu_standin import StandinEngine
from gpuzarr.devices.gpu import GpuDevice

LABELS = ("full", "window", "strided", "negative", "point", "edge")


def _bits(a: np.ndarray) -> np.ndarray:
    """Native-order bytes of `a`, so NaN payloads and -0.0 compare exactly."""
    return np.ascontiguousarray(a.astype(a.dtype.newbyteorder("="))).reshape(-1).view(np.uint8)


def _gpu_readable(arr: gpuzarr.Array) -> bool:
    from gpuzarr.codecs.array_to_array import NumcodecsArray

    chain = arr._reader.locator.leaf_chain
    return (arr.dtype.kind in "biufc" and arr.dtype.fields is None and chain.raw_nbytes is not None
            and not any(isinstance(c, NumcodecsArray) for c in chain.array_to_array))


@pytest.mark.parametrize("target", [c.name for c in ARRAY_CASES])
def test_standin_gpu_matches_cpu(corpus, target):
    arr = gpuzarr.open(str(corpus.path(target)), device="cpu")
    if not _gpu_readable(arr):
        pytest.skip(f"{arr.dtype} / {arr.meta.chain.describe()} is read on the CPU only")
    engine = StandinEngine()
    gpu = GpuDevice(engine)
    chunks = arr.chunks
    sels = selections(arr.shape, chunks, arr.shards)
    for label in LABELS:
        sel = sels.get(label)
        if sel is None:
            continue
        expected = arr.read(sel, device="cpu")
        got = arr.read(sel, device=gpu)
        assert got.dtype == expected.dtype.newbyteorder("="), label
        assert got.shape == expected.shape, label
        np.testing.assert_array_equal(_bits(got), _bits(expected), err_msg=f"{target} {label}")
    if arr.ndim:
        windows = [tuple(slice(0, min(2, n)) for n in arr.shape), tuple(slice(n - min(2, n), n) for n in arr.shape)]
        got = arr.read_batch(windows, device=gpu)
        expected = arr.read_batch(windows, device="cpu")
        np.testing.assert_array_equal(_bits(got), _bits(expected))
    # one nvCOMP call per algorithm per batch, one upload per batch, however many chunks
    uploads = engine.calls["upload"]
    for key, count in engine.calls.items():
        if key.startswith("decompress:"):
            assert count <= uploads


def test_standin_batches_many_chunks_into_few_calls(tmp_path):
    """A read of 1,024 chunks is one upload, one zstd decode call, one scatter launch."""
    from gpuzarr.sample import sample_data, write_sharded

    data = sample_data((512, 512))
    write_sharded(str(tmp_path / "a"), data, (256, 256), (16, 16))
    arr = gpuzarr.open(str(tmp_path / "a"), device="cpu")
    engine = StandinEngine()
    got = arr.read(..., device=GpuDevice(engine))
    np.testing.assert_array_equal(got, data)
    assert engine.calls == {"upload": 1, "decompress:zstd": 1, "scatter": 1}


def test_standin_reports_corrupt_sizes(tmp_path):
    """A frame whose header claims the wrong size is refused on the host, naming the shard."""
    import numcodecs

    from gpuzarr.sample import write_sharded

    data = np.arange(64, dtype="<u2").reshape(8, 8)
    write_sharded(str(tmp_path / "a"), data, (8, 8), (4, 4))
    shard = tmp_path / "a" / "c" / "0" / "0"
    raw = bytearray(shard.read_bytes())
    frame = numcodecs.Zstd().encode(np.zeros(8, "<u2").tobytes())  # 16 bytes, the chunk needs 32
    index = np.frombuffer(bytes(raw[-68:-4]), "<u8").reshape(4, 2).copy()
    start = int(index[0, 0])
    raw[start:start + int(index[0, 1])] = frame.ljust(int(index[0, 1]), b"\0")[:int(index[0, 1])]
    shard.write_bytes(bytes(raw))
    with pytest.raises(gpuzarr.CorruptDataError, match="c/0/0"):
        gpuzarr.open(str(tmp_path / "a"), device="cpu").read(..., device=GpuDevice(StandinEngine()))


def test_auto_sends_small_reads_to_the_cpu_and_says_so(tmp_path):
    from gpuzarr.devices.base import AutoDevice, get_device
    from gpuzarr.sample import sample_data, write_sharded

    data = sample_data((256, 256))
    write_sharded(str(tmp_path / "a"), data, (128, 128), (32, 32))
    arr = gpuzarr.open(str(tmp_path / "a"), device="cpu")
    engine = StandinEngine()
    auto = AutoDevice(GpuDevice(engine), get_device("cpu"), cpu_below=20_000)
    small = gpuzarr.ReadReport()
    np.testing.assert_array_equal(arr.read((slice(0, 10), slice(0, 10)), device=auto, report=small), data[:10, :10])
    assert small.device == "cpu" and "decoded on the CPU and copied to the GPU" in small.notes[0]
    assert not engine.calls
    big = gpuzarr.ReadReport()
    np.testing.assert_array_equal(arr.read(..., device=auto, report=big), data)
    assert big.device == "gpu" and big.codec_calls == {"nvcomp:zstd": 1} and big.kernel_launches == 1
    assert engine.calls["decompress:zstd"] == 1
