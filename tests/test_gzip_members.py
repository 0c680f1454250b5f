"""gzip chunks of several members, or padded with zero bytes, read as numcodecs (so zarr-python)
reads them: on the CPU, and on the GPU path, which hands such chunks to the host."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
import zarr
from gpu_standin import StandinEngine

import gpuzarr
from gpuzarr.devices.gpu import GpuDevice
from gpuzarr.errors import CorruptDataError

DATA = np.arange(64, dtype="<u2").reshape(8, 8)
RAW = DATA.tobytes()


def _array(path, chunk: bytes) -> str:
    path.mkdir()
    (path / "0.0").write_bytes(chunk)
    (path / ".zarray").write_text(json.dumps({
        "zarr_format": 2, "shape": [8, 8], "chunks": [8, 8], "dtype": "<u2", "fill_value": 0, "order": "C",
        "compressor": {"id": "gzip", "level": 1}, "filters": None}))
    return str(path)


CHUNKS = {
    "two members": gzip.compress(RAW[:50]) + gzip.compress(RAW[50:]),
    "three members, one empty": gzip.compress(RAW[:7]) + gzip.compress(b"") + gzip.compress(RAW[7:]),
    "zero padding": gzip.compress(RAW) + b"\0" * 9,
    "members and padding": gzip.compress(RAW[:64]) + b"\0\0" + gzip.compress(RAW[64:]) + b"\0",
}


@pytest.mark.parametrize("case", sorted(CHUNKS))
@pytest.mark.parametrize("device", ["cpu", "gpu-standin"])
def test_read_as_zarr_python_reads_them(tmp_path, case, device):
    path = _array(tmp_path / "a", CHUNKS[case])
    np.testing.assert_array_equal(zarr.open_array(path, mode="r")[...], DATA)
    dev = "cpu" if device == "cpu" else GpuDevice(StandinEngine())
    np.testing.assert_array_equal(gpuzarr.open(path, device="cpu").read(..., device=dev), DATA)


@pytest.mark.parametrize("device", ["cpu", "gpu-standin"])
def test_bytes_after_a_member_that_are_not_one_are_corrupt(tmp_path, device):
    path = _array(tmp_path / "a", gzip.compress(RAW) + b"junk")
    with pytest.raises(Exception):  # numcodecs refuses it too ("Not a gzipped file")
        zarr.open_array(path, mode="r")[...]
    dev = "cpu" if device == "cpu" else GpuDevice(StandinEngine())
    with pytest.raises(CorruptDataError, match=r"0\.0: bad gzip stream"):
        gpuzarr.open(path, device="cpu").read(..., device=dev)


@pytest.mark.parametrize("members", [1, 2])
def test_a_gzip_before_another_codec_reads_as_zarr_python(tmp_path, monkeypatch, members):
    """A gzip codec outside another (zstd, then gzip) is decoded without the chunk's size to
    decode into: one member, whose stated size (ISIZE) is all it holds, is inflated as a chunk's
    gzip is (libdeflate, or libz); several, through Python's zlib, as before."""
    from gpuzarr.codecs import bytes_to_bytes

    calls = []
    real = bytes_to_bytes.Gzip._inflate
    monkeypatch.setattr(bytes_to_bytes.Gzip, "_inflate", lambda *a: (lambda r: calls.append(r) or r)(real(*a)))
    data = np.random.default_rng(9).integers(0, 900, (300, 200)).astype("<u2")
    z = zarr.create_array(str(tmp_path / "a.zarr"), shape=data.shape, chunks=(128, 128), dtype=data.dtype,
                          compressors=[zarr.codecs.ZstdCodec(level=1), zarr.codecs.GzipCodec(level=1)])
    z[...] = data
    if members == 2:  # every chunk object made again as two gzip members of its zstd frame
        for path in (tmp_path / "a.zarr" / "c").rglob("*"):
            if path.is_file():
                inner = gzip.decompress(path.read_bytes())
                path.write_bytes(gzip.compress(inner[:10]) + gzip.compress(inner[10:]))
    arr = gpuzarr.open(str(tmp_path / "a.zarr"), device="cpu")
    np.testing.assert_array_equal(arr[...], data)
    np.testing.assert_array_equal(arr[100:230, 7:150], data[100:230, 7:150])
    assert calls and all(calls) if members == 1 else not any(calls)
