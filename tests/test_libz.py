"""gzip and zlib streams inflated straight into place on the CPU, by libdeflate (gpuzarr.codecs.
libdeflate, the deflate package) and by zlib (gpuzarr.codecs.libz) alike: equal to numcodecs'
codecs and zarr-python, members and padding as numcodecs reads them, errors worded by Python's
zlib module, counted fallbacks, and our z_stream checked against zlib.h."""

from __future__ import annotations

import ctypes
import gzip
import shutil
import subprocess
import zlib

import numcodecs
import numpy as np
import pytest
import zarr

import gpuzarr
from gpuzarr.codecs import bytes_to_bytes, libdeflate, libz
from gpuzarr.codecs.bytes_to_bytes import Gzip, Zlib
from gpuzarr.devices import cpu
from gpuzarr.devices.cpu import CpuDevice
from gpuzarr.errors import CorruptDataError

RAW = (np.random.default_rng(3).integers(0, 40, 20000).astype("<u2") * 3).tobytes()
GZ = gzip.compress(RAW)


def _decoded(codec, frame: bytes, nbytes: int = len(RAW)) -> bytes:
    out = np.full(nbytes, 0xCD, np.uint8)
    codec.decode_into(frame, out)
    return out.tobytes()


def _counts() -> dict:
    return {k: v for k, v in bytes_to_bytes.FALLBACKS.items() if k.startswith(("gzip", "zlib"))}


def test_a_zlib_is_found_and_takes_our_z_stream():
    assert libz._api() is not None, "neither numcodecs' blosc extension nor Python's zlib module exports inflate"
    assert libz.inflater(31) is not None and libz.inflater(15) is not None


def test_libdeflate_is_found_in_the_deflate_package():
    """The test extra installs it: where this fails, every stream inflates through zlib, ~2.5x slower."""
    assert libdeflate._api() is not None
    assert libdeflate.decoder(31) is not None and libdeflate.decoder(15) is not None


@pytest.fixture(params=["libdeflate", "zlib"])
def engine(request, monkeypatch):
    """The library that inflates: libdeflate where the deflate package is there, else zlib."""
    if request.param == "zlib":
        monkeypatch.setattr(libdeflate, "_api", lambda: None)
    return libdeflate.Decoder if request.param == "libdeflate" else libz.Inflater


@pytest.mark.parametrize("frame", [
    pytest.param(numcodecs.GZip(5).encode(RAW), id="numcodecs-gzip"),
    pytest.param(gzip.compress(RAW[:7000]) + gzip.compress(RAW[7000:]), id="two-members"),
    pytest.param(gzip.compress(RAW[:7000]) + b"\0" * 9 + gzip.compress(b"") + gzip.compress(RAW[7000:]) + b"\0\0",
                 id="padded-members-and-an-empty-one"),
])
def test_gzip_is_inflated_in_place_as_numcodecs_reads_it(monkeypatch, engine, frame):
    streams = _spy(monkeypatch, engine)
    before = _counts()
    assert _decoded(Gzip("gzip"), frame) == RAW == bytes(numcodecs.GZip().decode(frame))
    assert _counts() == before  # no fallback
    assert streams == [m for m in (1, 2, 3) if frame.count(b"\x1f\x8b\x08") >= m]  # a call per member


def test_zlib_is_inflated_in_place_as_numcodecs_reads_it(monkeypatch, engine):
    streams = _spy(monkeypatch, engine)
    frame = numcodecs.Zlib(3).encode(RAW)
    before = _counts()
    assert _decoded(Zlib("zlib"), frame) == RAW == bytes(numcodecs.Zlib().decode(frame))
    assert _counts() == before
    assert streams == [1]


def _spy(monkeypatch, engine: type) -> list:
    """The calls of `engine`.stream, numbered."""
    calls: list = []
    real = engine.stream

    def stream(self, *args):
        calls.append(len(calls) + 1)
        return real(self, *args)
    monkeypatch.setattr(engine, "stream", stream)
    return calls


@pytest.mark.parametrize("codec, frame, message", [
    (Gzip("gzip"), GZ[:-8] + bytes([GZ[-8] ^ 1]) + GZ[-7:], "bad gzip stream.*incorrect data check"),
    (Gzip("gzip"), GZ[:-3], "truncated gzip stream"),
    (Gzip("gzip"), GZ + b"xyz", "bad gzip stream"),
    (Gzip("gzip"), gzip.compress(RAW + b"ab"), f"decodes to {len(RAW) + 2} bytes, the chunk needs {len(RAW)}"),
    (Gzip("gzip"), gzip.compress(RAW[:-2]), f"decodes to {len(RAW) - 2} bytes, the chunk needs {len(RAW)}"),
    (Zlib("zlib"), zlib.compress(RAW)[:-1] + bytes([zlib.compress(RAW)[-1] ^ 1]), "bad zlib stream"),
])
def test_what_inflate_refuses_is_worded_by_the_zlib_module(engine, codec, frame, message):
    before = bytes_to_bytes.FALLBACKS[f"{codec.name}:refused"]
    with pytest.raises(CorruptDataError, match=message):
        _decoded(codec, frame)
    assert bytes_to_bytes.FALLBACKS[f"{codec.name}:refused"] == before + 1


@pytest.mark.parametrize("fmt", [2, 3])
def test_reads_without_libz_fall_back_counted_and_equal(tmp_path, monkeypatch, fmt):
    data = np.frombuffer(RAW, "<u2")[:19600].reshape(140, 140)
    compressors = numcodecs.GZip(4) if fmt == 2 else zarr.codecs.GzipCodec(level=4)
    path = str(tmp_path / "a.zarr")
    z = zarr.create_array(path, shape=data.shape, chunks=(32, 48), dtype="<u2", zarr_format=fmt,
                          compressors=compressors, fill_value=0)
    z[...] = data
    monkeypatch.setattr(cpu, "SPLIT_SECONDS", 0.0)  # through the pool too
    direct = gpuzarr.open(path, device=CpuDevice(2))[...]
    monkeypatch.setattr(libz, "_local", __import__("threading").local())
    monkeypatch.setattr(libz, "_api", lambda: None)
    monkeypatch.setattr(libdeflate, "_api", lambda: None)
    before = bytes_to_bytes.FALLBACKS["gzip:no-libz"]
    fallen = gpuzarr.open(path, device=CpuDevice(2))[...]
    np.testing.assert_array_equal(direct, data)
    np.testing.assert_array_equal(fallen, data)
    assert bytes_to_bytes.FALLBACKS["gzip:no-libz"] - before == 15  # every chunk, counted


def test_z_stream_matches_zlib_h(tmp_path):
    """Our ctypes z_stream against zlib.h, compiled: every field's offset, and the size."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler to check z_stream against zlib.h")
    source = tmp_path / "z.c"
    fields = [name for name, _ in libz._ZStream._fields_]
    source.write_text("#include <stdio.h>\n#include <stddef.h>\n#include <zlib.h>\nint main(void){"
                      + "".join(f'printf("%zu ", offsetof(z_stream, {f}));' for f in fields)
                      + 'printf("%zu\\n", sizeof(z_stream)); return 0;}\n')
    exe = tmp_path / "z"
    built = subprocess.run([cc, str(source), "-o", str(exe)], capture_output=True, text=True)
    if built.returncode:
        pytest.skip(f"zlib.h not found to check z_stream against ({built.stderr.strip().splitlines()[-1]})")
    printed = [int(v) for v in subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout.split()]
    ours = [getattr(libz._ZStream, f).offset for f in fields] + [ctypes.sizeof(libz._ZStream)]
    assert printed == ours


def test_the_inline_or_pool_guess_paces_gzip_and_zlib_by_their_decoder(engine):
    """cpu.pace predicts a read's decode time (inline below cpu._inline_below, else on the pool):
    libdeflate decodes ~2.3x faster than zlib's inflate, and is paced so."""
    from types import SimpleNamespace

    for codec in (Gzip("gzip"), Zlib("zlib")):
        pace = cpu.pace(SimpleNamespace(bytes_to_bytes=[codec]))
        name = codec.name + (":libdeflate" if engine is libdeflate.Decoder else "")
        assert pace == pytest.approx((cpu.PACE_NS[name] + cpu.PLACE_NS) * 1e-9)
    assert cpu.PACE_NS["gzip:libdeflate"] < cpu.PACE_NS["gzip"] / 2
