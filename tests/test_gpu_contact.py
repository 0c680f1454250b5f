"""What the first real GPU run must prove (issue: "GPU path right on first contact"): big chunks
of every codec, an LZ4 chunk over 16 MiB, zstd frames without a content size, short streams of
each codec refused, a corrupt crc32c codec and gzip CRC-32 refused (checked on the device), the
crc32c codec over many batches, device memory bounded over many batches, the SM count,
`out=` and a user's stream, DLPack to torch. Each test runs on the GPU orchestration's CPU
stand-in in the default run (which checks the test itself and the host half) and, with
`pytest -m gpu`, on the real device; there it is skipped, with the reason, where no GPU is usable."""

from __future__ import annotations

import gzip
import os
import struct
import zlib

import numcodecs
import numpy as np
import pytest
import zstandard
from gpu_standin import StandinEngine

import gpuzarr
from gpuzarr.devices.gpu import GpuDevice, usable_gpu
from gpuzarr.sample import sample_data, write_sharded
from gpuzarr.selfcheck import V2_CODECS, write_v2, write_v3_crc32c

GPU_OK, WHY = usable_gpu()


@pytest.fixture(params=["standin", pytest.param("gpu", marks=pytest.mark.gpu)])
def device(request):
    if request.param == "standin":
        return GpuDevice(StandinEngine())
    if not GPU_OK:
        pytest.skip(WHY)
    return gpuzarr.devices.get_device("gpu")


def _host(x):
    return x.get() if hasattr(x, "get") else np.asarray(x)


def _same(device, path, sel=...):
    got = _host(gpuzarr.open(str(path), device=device)[sel])
    want = gpuzarr.open(str(path), device="cpu")[sel]
    assert got.dtype == want.dtype and got.tobytes() == want.tobytes()


@pytest.mark.parametrize("codec", sorted(V2_CODECS))
def test_chunks_of_a_mebibyte_for_every_codec(tmp_path, device, codec):
    data = sample_data((1024, 1024))  # chunks 512x1024 uint16: 1 MiB each
    write_v2(str(tmp_path / "a"), data, (512, 1024), V2_CODECS[codec])
    _same(device, tmp_path / "a")
    _same(device, tmp_path / "a", (slice(300, 800), slice(None, None, 3)))


def test_sharded_zstd_chunks_of_a_mebibyte(tmp_path, device):
    write_sharded(str(tmp_path / "a"), sample_data((2048, 1024)), (1024, 1024), (512, 1024))
    _same(device, tmp_path / "a")


def test_an_lz4_chunk_over_16_mib(tmp_path, device):
    data = sample_data((4096, 2112))  # one chunk of 17.3 MB
    write_v2(str(tmp_path / "a"), data, data.shape, numcodecs.LZ4())
    _same(device, tmp_path / "a")


def _v2_with_frames(path, data, chunks, codec, frames: dict) -> None:
    """A v2 array whose chunk files are the given bytes (frames a writer would not make)."""
    write_v2(str(path), data, chunks, codec)
    for key, frame in frames.items():
        (path / key).write_bytes(frame)


def test_zstd_frames_without_a_content_size(tmp_path, device):
    data = sample_data((256, 256))
    cctx = zstandard.ZstdCompressor(write_content_size=False)
    frames = {f"{i}.0": cctx.compress(data[i * 128:(i + 1) * 128].tobytes()) for i in range(2)}
    _v2_with_frames(tmp_path / "a", data, (128, 256), numcodecs.Zstd(1), frames)
    np.testing.assert_array_equal(_host(gpuzarr.open(str(tmp_path / "a"), device=device)[...]), data)


def _short_frames(kind: str, chunk: bytes) -> bytes:
    """A stream of `kind` that passes every check the host can make but decodes to half the chunk."""
    half = chunk[:len(chunk) // 2]
    if kind == "zstd":
        return zstandard.ZstdCompressor(write_content_size=False).compress(half)
    if kind == "lz4":  # numcodecs' prefix says the whole chunk; the block holds half
        return struct.pack("<I", len(chunk)) + numcodecs.lz4.compress(half)[4:]
    if kind == "zlib":
        return zlib.compress(half)
    body = gzip.compress(half)  # ISIZE made to say the whole chunk: the host accepts it
    return body[:-4] + struct.pack("<I", len(chunk))


@pytest.mark.parametrize("kind, codec", [("zstd", numcodecs.Zstd(1)), ("lz4", numcodecs.LZ4()),
                                         ("zlib", numcodecs.Zlib(1)), ("gzip", numcodecs.GZip(1))])
def test_a_short_stream_of_each_codec_is_refused(tmp_path, device, kind, codec):
    data = sample_data((128, 128))
    _v2_with_frames(tmp_path / "a", data, (64, 128), codec, {"1.0": _short_frames(kind, data[64:].tobytes())})
    with pytest.raises(gpuzarr.CorruptDataError, match="1.0"):
        _host(gpuzarr.open(str(tmp_path / "a"), device=device)[...])
    with pytest.raises(gpuzarr.CorruptDataError):  # the CPU path agrees
        gpuzarr.open(str(tmp_path / "a"), device="cpu")[...]


def test_a_corrupt_crc32c_codec_is_refused(tmp_path, device):
    zarr = pytest.importorskip("zarr", reason="zarr-python writes the crc32c codec here")
    data = sample_data((128, 128))
    z = zarr.create_array(str(tmp_path / "a"), shape=data.shape, chunks=(64, 128), dtype=data.dtype,
                          compressors=[zarr.codecs.ZstdCodec(level=1), zarr.codecs.Crc32cCodec()])
    z[...] = data
    chunk = tmp_path / "a" / "c" / "1" / "0"
    raw = bytearray(chunk.read_bytes())
    raw[-1] ^= 0xFF
    chunk.write_bytes(bytes(raw))
    with pytest.raises(gpuzarr.CorruptDataError, match="c/1/0.*checksum"):
        _host(gpuzarr.open(str(tmp_path / "a"), device=device)[...])


def test_a_gzip_member_whose_crc_does_not_match_is_refused(tmp_path, device):
    """It decodes to the right size; only its CRC-32, checked on the device, tells."""
    data = sample_data((128, 128))
    write_v2(str(tmp_path / "a"), data, (64, 128), numcodecs.GZip(1))
    chunk = tmp_path / "a" / "1.0"
    raw = bytearray(chunk.read_bytes())
    raw[-8] ^= 1  # the CRC-32's first byte
    chunk.write_bytes(bytes(raw))
    with pytest.raises(gpuzarr.CorruptDataError, match=r"1\.0: bad gzip stream .CRC-32 mismatch"):
        _host(gpuzarr.open(str(tmp_path / "a"), device=device)[...])


def test_the_crc32c_codec_over_many_batches(tmp_path, device):
    data = sample_data((512, 512))
    write_v3_crc32c(str(tmp_path / "a"), data, (64, 64))
    got = gpuzarr.open(str(tmp_path / "a"), device=device, settings=gpuzarr.Settings(batch_bytes=64 << 10))
    report = gpuzarr.ReadReport()
    np.testing.assert_array_equal(_host(got.read(..., report=report)), data)
    assert report.batches > 2 and report.codec_calls["nvcomp:crc32c"] == report.batches


@pytest.fixture
def cupy():
    """CuPy on a usable GPU (the tests below need the device itself, not the stand-in)."""
    if not GPU_OK:
        pytest.skip(WHY)
    import cupy

    return cupy


def _written(tmp_path, shape, shard, chunk) -> np.ndarray:
    data = sample_data(shape)
    write_sharded(str(tmp_path / "a"), data, shard, chunk)
    return data


@pytest.mark.gpu
def test_device_memory_stays_bounded_over_many_batches(tmp_path, cupy):
    """Device memory does not grow with the number of batches (6, then 24), and stays within a
    few batches' staging, decoded bytes and nvCOMP temp (its own query: ~4.5 MB for a batch of
    43 zstd chunks of 32 KiB, more than the batch's bytes; measured on an H200, 20.7 MB for
    both reads, three batches' worth)."""
    import ctypes

    from gpuzarr.devices.nvcomp_capi import BACKEND_CUDA, DecompressOpts, load

    data = _written(tmp_path, (4096, 4096), (1024, 1024), (128, 128))
    write_sharded(str(tmp_path / "b"), data[:2048, :2048], (1024, 1024), (128, 128))
    batch = 1 << 20
    pool = cupy.get_default_memory_pool()
    peaks, reports = [], []
    for name, shape in (("b", (2048, 2048)), ("a", data.shape)):
        arr = gpuzarr.open(str(tmp_path / name), device="gpu", settings=gpuzarr.Settings(batch_bytes=batch))
        out = cupy.empty(shape, data.dtype)
        pool.free_all_blocks()
        before = pool.used_bytes()
        report = gpuzarr.ReadReport()
        arr.read(..., out=out, report=report)
        peaks.append(pool.total_bytes() - before)
        reports.append(report)
        np.testing.assert_array_equal(out.get(), data[:shape[0], :shape[1]])
    assert reports[0].batches >= 4 and reports[1].batches >= 4 * reports[0].batches
    assert peaks[1] <= 1.1 * peaks[0] + (1 << 20), f"device memory grew with the batches: {peaks}"
    chunks = -(-reports[1].chunks // reports[1].batches)
    temp = ctypes.c_size_t()
    assert load()[("Zstd", "DecompressGetTempSize")](chunks, 128 * 128 * 2, DecompressOpts(backend=BACKEND_CUDA),
                                                      ctypes.byref(temp), chunks * 128 * 128 * 2, 0) == 0
    decoded = reports[1].bytes_decoded / reports[1].batches
    assert peaks[1] < 4 * (batch + decoded + temp.value), f"device memory {peaks} for batches of {batch} + " \
                                                          f"{decoded} decoded + {temp.value} nvCOMP temp"


@pytest.mark.gpu
def test_the_sm_count_and_the_crc_kernel_configuration_come_from_the_device(cupy):
    import ctypes

    from gpuzarr.devices import nvcomp_capi
    from gpuzarr.devices.gpu import STREAMS_PER_SM

    device = gpuzarr.devices.get_device("gpu")
    sms = cupy.cuda.Device().attributes["MultiProcessorCount"]
    assert device.engine.sm_count == sms > 0 and device.batch_streams == STREAMS_PER_SM * sms
    conf = nvcomp_capi.CRC32KernelConf()
    status = nvcomp_capi.load()[("CRC32", "GetHeuristicConf")](None, 4 * sms, ctypes.byref(conf), 1 << 20, None)
    assert status == 0 and conf.bytes_per_read > 0


@pytest.mark.gpu
def test_out_and_a_users_stream(tmp_path, cupy):
    data = _written(tmp_path, (512, 512), (256, 256), (64, 64))
    arr = gpuzarr.open(str(tmp_path / "a"), device="gpu")
    stream = cupy.cuda.Stream(non_blocking=True)
    out = cupy.zeros((200, 300), data.dtype)
    with stream:
        got = arr.read((slice(100, 300), slice(7, 307)), out=out)
    stream.synchronize()
    assert got is out
    np.testing.assert_array_equal(out.get(), data[100:300, 7:307])


@pytest.mark.gpu
def test_dlpack_to_torch(tmp_path, cupy):
    torch = pytest.importorskip("torch", reason="torch is not installed")
    data = sample_data((256, 256)).astype(np.int16)
    write_sharded(str(tmp_path / "a"), data.view(np.uint16), (128, 128), (64, 64))
    got = gpuzarr.open(str(tmp_path / "a"), device="gpu")[...]
    tensor = torch.from_dlpack(got)
    assert tensor.is_cuda and tensor.data_ptr() == got.data.ptr
    assert np.array_equal(tensor.cpu().numpy().view(np.uint16), data.view(np.uint16))


def test_the_short_streams_pass_the_host_checks():
    """The point of the short-stream cases: only the decoder's reported size can catch them."""
    chunk = os.urandom(1 << 14)
    gz = _short_frames("gzip", chunk)
    assert struct.unpack("<I", gz[-4:])[0] == len(chunk)
    assert struct.unpack("<I", _short_frames("lz4", chunk)[:4])[0] == len(chunk)
    assert zstandard.ZstdDecompressor().decompress(_short_frames("zstd", chunk), max_output_size=1 << 15) \
        == chunk[:len(chunk) // 2]
