"""numcodecs-LZ4 frames decoded straight into place on the CPU: one LZ4_decompress_safe call per
frame (Lz4.decode_rows, Lz4.decode_into) against numcodecs' codec, named errors, and the
counted fallback to numcodecs where the symbol is missing."""

from __future__ import annotations

import numcodecs
import numpy as np
import pytest
import zarr

import gpuzarr
from gpuzarr.codecs import bytes_to_bytes
from gpuzarr.codecs.bytes_to_bytes import Lz4
from gpuzarr.devices import cpu
from gpuzarr.devices.cpu import CpuDevice
from gpuzarr.errors import CorruptDataError

NBYTES = 8192
CODEC = numcodecs.LZ4()


def _raws(n: int = 6) -> list[bytes]:
    rng = np.random.default_rng(5)
    return [(rng.integers(0, 60, NBYTES // 2).astype("<u2") + i).tobytes() for i in range(n)]


def _decode_rows(frames: list[bytes]) -> np.ndarray:
    staging = np.frombuffer(b"".join(frames), np.uint8).copy()
    sizes = np.array([len(f) for f in frames], np.int64)
    rows = np.full((len(frames), NBYTES), 0xCD, np.uint8)
    Lz4("lz4").decode_rows(staging, np.cumsum(sizes) - sizes, sizes, rows, [f"c{i}" for i in range(len(frames))])
    return rows


@pytest.mark.parametrize("direct", [True, False])
def test_decode_rows_and_decode_into_equal_numcodecs(monkeypatch, direct):
    if not direct:
        monkeypatch.setattr(bytes_to_bytes, "_lz4_safe", lambda: None)
    else:
        assert bytes_to_bytes._lz4_safe() is not None, "numcodecs.lz4 exports no LZ4_decompress_safe"
    raws = _raws()
    frames = [CODEC.encode(r) for r in raws]
    before = bytes_to_bytes.FALLBACKS["lz4:no-liblz4"]
    assert [r.tobytes() for r in _decode_rows(frames)] == raws
    one = np.zeros(NBYTES, np.uint8)
    Lz4("lz4").decode_into(memoryview(frames[3]), one)
    assert one.tobytes() == raws[3] == bytes(CODEC.decode(frames[3]))
    assert bytes_to_bytes.FALLBACKS["lz4:no-liblz4"] == before + (0 if direct else len(frames) + 1)


def _shorter_block(frame: bytes) -> bytes:
    """The block of 8190 bytes behind a prefix saying 8192: LZ4 decodes it, to too few bytes."""
    block = CODEC.encode(_raws(1)[0][:-2])
    return frame[:4] + block[4:]


@pytest.mark.parametrize("fault, message", [
    ("short", "c2: lz4 frame is shorter than its 4-byte size prefix"),
    ("prefix", "c2: lz4 frame header says it decodes to 8200 bytes, the chunk needs 8192"),
    ("payload", "c2: cannot decode lz4 frame"),
    ("decodes_short", "c2: cannot decode lz4 frame"),
    ("truncated", "c2: cannot decode lz4 frame"),
])
def test_decode_rows_names_the_bad_frame(fault, message):
    frames = [CODEC.encode(r) for r in _raws()]
    bad = frames[2]
    frames[2] = {"short": bad[:3], "prefix": (8200).to_bytes(4, "little") + bad[4:],
                 "payload": bad[:4] + b"\xff" * 16 + bad[20:], "decodes_short": _shorter_block(bad),
                 "truncated": bad[:len(bad) // 2]}[fault]
    before = bytes_to_bytes.FALLBACKS["lz4:refused"]
    with pytest.raises(CorruptDataError, match=message):
        _decode_rows(frames)
    refused = fault in ("payload", "decodes_short", "truncated")  # numcodecs' call says why
    assert bytes_to_bytes.FALLBACKS["lz4:refused"] == before + refused


def test_reads_of_numcodecs_lz4_chunks_equal_the_source(tmp_path, monkeypatch):
    path = tmp_path / "a.zarr"
    data = np.arange(48 * 40, dtype="<u2").reshape(48, 40) * 3
    z = zarr.create_array(str(path), shape=data.shape, chunks=(8, 8), dtype="<u2", zarr_format=2,
                          compressors=numcodecs.LZ4(), fill_value=0)
    z[...] = data
    monkeypatch.setattr(cpu, "SPLIT_SECONDS", 0.0)
    monkeypatch.setattr(cpu, "GROUP_BYTES", 7 * 8 * 8 * 2)
    arr = gpuzarr.open(str(path), device=CpuDevice(2))
    for sel in [(slice(None),) * 2, (slice(3, 45), slice(8, 40)), (slice(0, 48, 3), slice(None))]:
        np.testing.assert_array_equal(arr[sel], data[sel])
    (path / "1.2").write_bytes(_shorter_block((path / "1.2").read_bytes()))
    with pytest.raises(CorruptDataError, match=r"1\.2.*cannot decode lz4 frame"):
        gpuzarr.open(str(path), device=CpuDevice(2))[...]
