"""What the GPU path gives nvCOMP, which (6.0, measured on an H200) writes a stream's whole output
whatever buffer size it is told (zstd, LZ4, Deflate) and does not verify zstd content checksums:
streams whose framing states no size are bounded (zstd frames from their block headers, zlib
streams by Deflate's most expansion) and given room behind work, checksummed zstd frames decoded
on the host. Run through
the GPU orchestration with the stand-in (tests/gpu_standin.py), which models those decoders
and fails on any write past the end of work, as the GPU faults there."""

from __future__ import annotations

from pathlib import Path

import numcodecs
import numpy as np
import pytest
import zarr
import zstandard
from gpu_standin import StandinEngine

import gpuzarr
from gpuzarr.devices.gpu import GpuDevice, usable_gpu

SHAPE, CHUNKS = (64, 64), (16, 16)


def _written(tmp_path: Path, checksum: bool = False) -> tuple[Path, np.ndarray]:
    data = np.arange(np.prod(SHAPE), dtype="<u2").reshape(SHAPE) * 7
    z = zarr.create_array(str(tmp_path / "a"), shape=SHAPE, chunks=CHUNKS, dtype="<u2",
                          compressors=zarr.codecs.ZstdCodec(level=3, checksum=checksum), fill_value=0)
    z[...] = data
    return tmp_path / "a", data


def _chunk_files(path: Path) -> list[Path]:
    return sorted(p for p in (path / "c").rglob("*") if p.is_file())


def _streamed(raw: bytes) -> bytes:
    """As a streaming writer frames it: no content size, a window descriptor."""
    c = zstandard.ZstdCompressor(level=3).compressobj()
    return c.compress(raw) + c.flush()


@pytest.fixture(params=["standin", pytest.param("gpu", marks=pytest.mark.gpu)])
def device(request):
    """The stand-in everywhere; with `pytest -m gpu`, nvCOMP on a GPU too."""
    if request.param == "gpu":
        ok, why = usable_gpu()
        if not ok:
            pytest.skip(why)
        return "gpu"
    return GpuDevice(StandinEngine())


def _read(path: Path, device, **kw):
    report = gpuzarr.ReadReport()
    got = gpuzarr.open(str(path), device=device).read(..., report=report, **kw)
    return (got if isinstance(got, np.ndarray) else got.get()), report


def test_frames_without_a_content_size_are_decoded_on_the_device(tmp_path, device):
    path, data = _written(tmp_path)
    for f in _chunk_files(path):
        f.write_bytes(_streamed(zstandard.ZstdDecompressor().decompress(f.read_bytes())))
    got, report = _read(path, device)
    np.testing.assert_array_equal(got, data)
    assert report.cpu_fallback == [] and report.codec_calls.get("nvcomp:zstd")


def test_checksummed_frames_are_verified_on_the_host(tmp_path, device):
    path, data = _written(tmp_path, checksum=True)
    got, report = _read(path, device)
    np.testing.assert_array_equal(got, data)
    assert len(report.cpu_fallback) == 16  # every chunk: nvCOMP would not check the checksum
    last = _chunk_files(path)[-1]
    frame = bytearray(last.read_bytes())
    frame[-1] ^= 1
    last.write_bytes(bytes(frame))
    with pytest.raises(gpuzarr.CorruptDataError, match="c/3/3"):
        _read(path, device)


@pytest.mark.parametrize("extra", [1, 100_000, 3 << 20])
@pytest.mark.parametrize("which", [0, 9, 15])
def test_a_frame_decoding_past_its_chunk_fails_the_read_inside_work(tmp_path, device, which, extra):
    """Its bytes land in later rows or the room behind work (never past it: the stand-in
    would fail), and its decoded size fails the read; the first and last chunk of the batch too."""
    path, _ = _written(tmp_path)
    f = _chunk_files(path)[which]
    f.write_bytes(_streamed(b"\x01" * (np.prod(CHUNKS) * 2 + extra)))
    with pytest.raises(gpuzarr.CorruptDataError, match=f.relative_to(path).as_posix()):
        _read(path, device)


@pytest.mark.parametrize("which", [0, 9, 15])
@pytest.mark.parametrize("extra", [1, 200_000])
def test_zlib_streams_decoding_past_their_chunk_fail_the_read_inside_work(tmp_path, device, which, extra):
    """v2 zlib chunks (whose framing states no size) that decode to more than the chunk, as a
    chunk of another array's shape would; first, middle and last of the batch."""
    compressor = numcodecs.Zlib(level=6)
    data = np.arange(np.prod(SHAPE), dtype="<u2").reshape(SHAPE)
    z = zarr.create_array(str(tmp_path / "a"), shape=SHAPE, chunks=CHUNKS, dtype="<u2", zarr_format=2,
                          compressors=compressor, fill_value=0)
    z[...] = data
    f = sorted(p for p in (tmp_path / "a").iterdir() if p.name[0].isdigit())[which]
    f.write_bytes(compressor.encode(b"\x01" * (int(np.prod(CHUNKS)) * 2 + extra)))
    with pytest.raises(gpuzarr.CorruptDataError, match=f.name.replace(".", r"\.")):
        _read(tmp_path / "a", device)


def test_large_zlib_chunks_beyond_the_room_are_decoded_on_the_host(tmp_path, device):
    """A zlib stream's bound (1032 bytes a stored byte) past the room work may keep: decoded on
    the host, counted, the data the same."""
    data = np.random.default_rng(0).integers(0, 4, (1024, 1024)).astype("<u2")  # 1 MiB chunks, ~4:1
    z = zarr.create_array(str(tmp_path / "a"), shape=data.shape, chunks=(512, 1024), dtype="<u2", zarr_format=2,
                          compressors=numcodecs.Zlib(level=6), fill_value=0)
    z[...] = data
    got, report = _read(tmp_path / "a", device)
    np.testing.assert_array_equal(got, data)
    assert len(report.cpu_fallback) == 2


def test_a_zstd_chunk_of_more_blocks_than_the_batch_walk_takes_stays_on_the_device(tmp_path, device):
    """A frame of more than _ZSTD_BLOCK_STEPS blocks (a chunk past 8 MiB) is bounded by the walk
    of that one frame, and decoded by nvCOMP like any other."""
    from gpuzarr.codecs.bytes_to_bytes import _ZSTD_BLOCK_STEPS, ZSTD_BLOCK_MAX

    shape = (_ZSTD_BLOCK_STEPS * ZSTD_BLOCK_MAX // 2048 + 64, 1024)  # uint16: past the walk's blocks
    data = (np.arange(np.prod(shape), dtype="<u4") * 2654435761 >> 20).astype("<u2").reshape(shape)
    z = zarr.create_array(str(tmp_path / "a"), shape=shape, chunks=shape, dtype="<u2",
                          compressors=zarr.codecs.ZstdCodec(level=1), fill_value=0)
    z[...] = data
    got, report = _read(tmp_path / "a", device)
    np.testing.assert_array_equal(got, data)
    assert report.cpu_fallback == [] and report.codec_calls.get("nvcomp:zstd")


@pytest.mark.parametrize("codec", ["lz4", "gzip"])
@pytest.mark.parametrize("which", [0, 15])
def test_a_corrupt_stream_of_stated_size_overrunning_a_little_fails_the_read_inside_work(tmp_path, device, codec,
                                                                                         which):
    """v2 LZ4 and gzip chunks whose framing states the chunk's size (the LZ4 prefix, ISIZE) but
    whose stream decodes 200 kB more: corrupt, which nvCOMP leaves undefined; the slack behind
    every batch keeps such an overrun inside work, and the read fails on the decoded size."""
    compressor = {"lz4": numcodecs.LZ4(), "gzip": numcodecs.GZip(level=6)}[codec]
    data = np.arange(np.prod(SHAPE), dtype="<u2").reshape(SHAPE)
    z = zarr.create_array(str(tmp_path / "a"), shape=SHAPE, chunks=CHUNKS, dtype="<u2", zarr_format=2,
                          compressors=compressor, fill_value=0)
    z[...] = data
    raw = int(np.prod(CHUNKS)) * 2
    f = sorted(p for p in (tmp_path / "a").iterdir() if p.name[0].isdigit())[which]
    body = compressor.encode(b"\x01" * (raw + 200_000))
    body = raw.to_bytes(4, "little") + body[4:] if codec == "lz4" else body[:-4] + raw.to_bytes(4, "little")
    f.write_bytes(body)
    with pytest.raises(gpuzarr.CorruptDataError, match=f.name.replace(".", r"\.")):
        _read(tmp_path / "a", device)
