"""Blosc frames of the zlib format, inflated by libdeflate in the host library and unshuffled
there (kernels/host_blosc.cpp), against c-blosc and zarr-python bit for bit: byte shuffle, bit
shuffle and none, typesizes 1 to 24, frames of several blocks (a shorter last one), split streams,
streams and frames stored raw (incompressible data); only the blocks a window reads decoded;
corrupt frames named by their chunk; the fallback to c-blosc counted."""

from __future__ import annotations

import ctypes
import os

import numcodecs
import numpy as np
import pytest
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from zarr.codecs import BloscCodec

import gpuzarr
from gpuzarr import host_lib
from gpuzarr.blosc_frames import parse_blosc_frame
from gpuzarr.codecs import bytes_to_bytes, libdeflate
from gpuzarr.codecs.bytes_to_bytes import DIRECT_LIMITS, Blosc
from gpuzarr.devices import cpu as cpu_device
from gpuzarr.errors import CorruptDataError

pytestmark = pytest.mark.skipif(not (host_lib.built() and libdeflate.available()
                                     and bytes_to_bytes._blosc_calls() is not None),
                                reason="needs the host library, libdeflate and c-blosc's exports")
SHUFFLES = {"noshuffle": numcodecs.Blosc.NOSHUFFLE, "shuffle": numcodecs.Blosc.SHUFFLE,
            "bitshuffle": numcodecs.Blosc.BITSHUFFLE}
DTYPES = ["u1", "<u2", "<i4", "<f4", "<f8", "<c16", "S3", "S12", "S24"]
REFUSED = "blosc-zlib:refused"


def _values(dtype: str, n: int, kind: str, seed: int = 0) -> np.ndarray:
    """n items of `dtype`: smooth (compressible) or random bytes (incompressible: streams, or the
    whole frame, stored raw)."""
    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    if kind == "random":
        return rng.integers(0, 256, n * dt.itemsize, dtype=np.uint8).view(dt)
    ramp = np.cumsum(rng.integers(0, 3, n * dt.itemsize)).astype(np.uint8)  # long runs, small steps
    if dt.kind in "fc":
        return (np.sin(np.arange(n) / 50.0) * 100 + rng.integers(0, 4, n) * 1e-3).astype(dt)
    return ramp.view(dt)


class _Counting:
    """A table of blosc's calls whose c-blosc decompress counts its calls (then calls c-blosc)."""

    def __init__(self, zlib: object = "keep"):
        calls = bytes_to_bytes._blosc_calls()
        real = bytes_to_bytes._blosc_ctx()
        self.calls = 0

        def decompress(src, dst, size, threads):
            self.calls += 1
            return real(src, dst, size, threads)

        self.decompress = decompress  # (for Python's calls)

        self._keep = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t,
                                      ctypes.c_int)(decompress)
        entries = list(calls)
        entries[0] = ctypes.cast(self._keep, ctypes.c_void_p).value
        if zlib != "keep":
            entries[4] = zlib
        self.table = (ctypes.c_void_p * 5)(*entries)


def _each(table, frame: bytes, nbytes: int) -> tuple[int, np.ndarray]:
    src = np.frombuffer(frame, np.uint8)
    out = np.full(nbytes, 0xCD, np.uint8)
    got = host_lib.each_blosc(table, np.array([src.ctypes.data]), np.array([out.ctypes.data]), nbytes)
    return int(got[0]), out


def _blocksize(frame: bytes) -> int:
    return int.from_bytes(frame[8:12], "little")


@pytest.mark.parametrize("kind", ["smooth", "random"])
@pytest.mark.parametrize("clevel", [1, 5])
@pytest.mark.parametrize("shuffle", list(SHUFFLES))
@pytest.mark.parametrize("dtype", DTYPES)
def test_frames_equal_c_blosc_without_calling_it(dtype, shuffle, clevel, kind):
    """Every frame (of several blocks, the last one shorter, where c-blosc cuts 300 KiB at level
    1 into blocks of 128 KiB) decodes to numcodecs' bytes, and c-blosc is never called for it."""
    counting = _Counting()
    itemsize = np.dtype(dtype).itemsize
    for nbytes in (1, 5 * itemsize, 3001, (300 << 10) + 13):
        raw = _values(dtype, max(1, nbytes // itemsize), kind, seed=nbytes)
        frame = numcodecs.Blosc("zlib", clevel, shuffle=SHUFFLES[shuffle]).encode(raw)
        if clevel == 1 and kind == "smooth" and itemsize <= 8 and nbytes > 300 << 10:
            assert _blocksize(frame) < raw.nbytes, "a frame of several blocks"
        got, out = _each(counting.table, frame, raw.nbytes)
        assert got == raw.nbytes
        assert out.tobytes() == raw.tobytes() == bytes(numcodecs.Blosc().decode(frame))
    assert counting.calls == 0


@settings(max_examples=60, deadline=None)
@given(typesize=st.integers(1, 33), n=st.integers(1, 12000), shuffle=st.sampled_from(list(SHUFFLES)),
       clevel=st.integers(0, 9), seed=st.integers(0, 99))
def test_any_frame_equals_c_blosc(typesize, n, shuffle, clevel, seed):
    """Typesizes 1-33 (split streams up to 16, every unshuffle width), any length up to 396 KB
    (several blocks at low levels) and any level: what c-blosc decodes, this path decodes to the
    same bytes, without c-blosc."""
    rng = np.random.default_rng(seed)
    raw = np.repeat(rng.integers(0, 256, (n * typesize + 7) // 8, dtype=np.uint8), 8)[:n * typesize]
    raw ^= rng.integers(0, 2, raw.size, dtype=np.uint8)  # compressible, not trivially
    frame = numcodecs.blosc.compress(raw, b"zlib", clevel, SHUFFLES[shuffle], 0, typesize)
    counting = _Counting()
    got, out = _each(counting.table, frame, raw.size)
    assert (got, out.tobytes()) == (raw.size, raw.tobytes())
    assert counting.calls == 0


def test_only_the_blocks_a_span_reads_are_decoded():
    """decode_span of bytes lo..hi decodes the blocks that hold them and no other (their bytes
    stay as they were), for each shuffle: 400 KiB of float32, blocks of 128 KiB and a last one
    of 16."""
    raw = _values("<f4", 100 << 10, "smooth")
    for shuffle in SHUFFLES.values():
        frame = np.frombuffer(numcodecs.Blosc("zlib", 1, shuffle=shuffle).encode(raw), np.uint8)
        block = _blocksize(frame.tobytes())
        assert block == 128 << 10
        for lo, hi in ((0, 10), (block - 1, block + 1), (block + 9, 2 * block + 5), (raw.nbytes - 1, raw.nbytes)):
            out = np.full(raw.nbytes, 0xCD, np.uint8)
            assert host_lib.decode_span(Blosc.decoder(raw.nbytes), frame.ctypes.data, frame.size, out, lo, hi,
                                        DIRECT_LIMITS)
            first, last = lo // block * block, -(-hi // block) * block
            assert out[first:last].tobytes() == raw.view(np.uint8)[first:last].tobytes()
            assert (out[:first] == 0xCD).all() and (out[last:] == 0xCD).all()


ARRAYS = {  # name: (zarr format, dtype, shuffle, shape, chunks, clevel, kind)
    "v3_u1_noshuffle": (3, "u1", "noshuffle", (200, 300), (64, 96), 5, "smooth"),
    "v3_u2_shuffle": (3, "<u2", "shuffle", (200, 300), (64, 96), 5, "smooth"),
    "v3_f4_bitshuffle": (3, "<f4", "bitshuffle", (200, 300), (64, 96), 5, "smooth"),
    "v3_f8_shuffle_random": (3, "<f8", "shuffle", (200, 300), (64, 96), 5, "random"),
    "v3_i4_bitshuffle_big_endian": (3, ">i4", "bitshuffle", (200, 300), (64, 96), 5, "smooth"),
    "v2_c16_noshuffle": (2, "<c16", "noshuffle", (200, 300), (64, 96), 5, "smooth"),
    "v2_S3_shuffle": (2, "S3", "shuffle", (200, 300), (64, 96), 5, "smooth"),
    # chunks of 320 KiB at level 1: blocks of 128 KiB and a last one of 64
    "v2_u2_shuffle_blocks": (2, "<u2", "shuffle", (700, 900), (400, 410), 1, "smooth"),
    "v3_f8_bitshuffle_blocks": (3, "<f8", "bitshuffle", (450, 500), (200, 205), 1, "smooth"),
}


def _write(path: str, spec: tuple) -> np.ndarray:
    fmt, dtype, shuffle, shape, chunks, clevel, kind = spec
    data = _values(dtype, shape[0] * shape[1], kind, seed=3).reshape(shape)
    if fmt == 3:
        endian = "big" if dtype.startswith(">") else "little"
        z = zarr.create_array(path, shape=data.shape, chunks=chunks, dtype=data.dtype, zarr_format=3,
                              serializer=zarr.codecs.BytesCodec(endian=endian),
                              compressors=[BloscCodec(cname="zlib", clevel=clevel, shuffle=shuffle)])
    else:
        z = zarr.create_array(path, shape=data.shape, chunks=chunks, dtype=data.dtype, zarr_format=2,
                              compressors=numcodecs.Blosc("zlib", clevel, shuffle=SHUFFLES[shuffle]), filters=None)
    z[...] = data
    return z[...]


@pytest.fixture(scope="module")
def arrays(tmp_path_factory):
    root = tmp_path_factory.mktemp("blosc_zlib")
    return {name: (str(root / f"{name}.zarr"), _write(str(root / f"{name}.zarr"), spec))
            for name, spec in ARRAYS.items()}


SELECTIONS = [(Ellipsis,), (slice(13, 150), slice(21, 290)), (slice(None, None, 3), slice(None, None, 3)),
              (slice(70, 75), slice(100, 103)), (7, slice(None))]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("name", list(ARRAYS))
def test_reads_equal_zarr_python(arrays, name, threads):
    """Full reads, windows, strided reads and batches of zarr-python-written arrays equal its own
    reads, with no fallback to c-blosc."""
    path, data = arrays[name]
    before = bytes_to_bytes.FALLBACKS[REFUSED]
    arr = gpuzarr.open(path, device="cpu", settings=gpuzarr.Settings(threads=threads))
    for sel in SELECTIONS:
        np.testing.assert_array_equal(arr[sel], data[sel], err_msg=str(sel))
    batch = [(slice(r, r + 37), slice(c, c + 53)) for r, c in ((0, 0), (60, 90), (130, 7), (163, 247), (5, 150))]
    for got, sel in zip(arr.read_batch(batch), batch):
        np.testing.assert_array_equal(got, data[sel], err_msg=str(sel))
    assert bytes_to_bytes.FALLBACKS[REFUSED] == before


@pytest.mark.parametrize("rows", [False, True], ids=["decode-scatter", "rows"])
def test_a_refused_frame_goes_to_c_blosc_counted(arrays, monkeypatch, rows):
    """Where libdeflate refuses every stream, each frame is handed to c-blosc, which decodes it,
    and counted; reads stay right."""
    if rows:  # chunks decoded into rows (Blosc.decode_rows), not each placed at once
        monkeypatch.setattr(cpu_device, "ROWS_MAX", 1 << 30)
    refuse = ctypes.CFUNCTYPE(ctypes.c_int, *[ctypes.c_void_p] * 7)(lambda *args: 1)
    counting = _Counting(zlib=ctypes.cast(refuse, ctypes.c_void_p).value)
    monkeypatch.setattr(bytes_to_bytes, "_blosc_calls", lambda: counting.table)
    monkeypatch.setattr(bytes_to_bytes, "_blosc_ctx", lambda: counting.decompress)
    path, data = arrays["v3_u2_shuffle"]
    arr = gpuzarr.open(path, device="cpu", settings=gpuzarr.Settings(threads=1))
    before = bytes_to_bytes.FALLBACKS[REFUSED]
    for sel in SELECTIONS:
        np.testing.assert_array_equal(arr[sel], data[sel], err_msg=str(sel))
    assert bytes_to_bytes.FALLBACKS[REFUSED] > before
    assert counting.calls == bytes_to_bytes.FALLBACKS[REFUSED] - before


def test_without_libdeflate_c_blosc_decodes(arrays, monkeypatch):
    """Without the deflate package, zlib frames go through c-blosc as any other: not a fallback."""
    monkeypatch.setattr(libdeflate, "zlib_calls", lambda: None)
    bytes_to_bytes._blosc_calls.cache_clear()
    try:
        assert bytes_to_bytes._blosc_calls()[4] is None
        for name in ("v3_f4_bitshuffle", "v2_u2_shuffle_blocks"):
            path, data = arrays[name]
            before = bytes_to_bytes.FALLBACKS[REFUSED]
            np.testing.assert_array_equal(gpuzarr.open(path, device="cpu")[...], data)
            assert bytes_to_bytes.FALLBACKS[REFUSED] == before
    finally:
        bytes_to_bytes._blosc_calls.cache_clear()


def test_a_stream_is_as_long_as_zlib_says_within_its_stated_size():
    """libdeflate is handed the rest of the frame past a stream (its fast loop then decodes
    small streams too): a stream whose stated size holds bytes past its zlib data decodes, as
    c-blosc decodes it; one whose zlib data runs past its stated size is refused, as c-blosc
    refuses it, though the frame goes on."""
    raw = (np.arange(5000) % 7).astype(np.uint8)
    frame = bytes(numcodecs.Blosc("zlib", 5, shuffle=0).encode(raw))
    at = int.from_bytes(frame[16:20], "little")  # the one block's one stream: its size, then its bytes
    size = int.from_bytes(frame[at:at + 4], "little")
    assert at + 4 + size == len(frame)

    def restated(extra: bytes, stated: int) -> bytes:
        out = bytearray(frame) + extra
        out[at:at + 4] = stated.to_bytes(4, "little")
        out[12:16] = len(out).to_bytes(4, "little")
        return bytes(out)

    padded, short = restated(b"\x00\x11\x22\x33\x44", size + 5), restated(bytes(8), size - 3)
    assert bytes(numcodecs.Blosc().decode(padded)) == raw.tobytes()
    with pytest.raises(RuntimeError):
        numcodecs.Blosc().decode(short)
    counting = _Counting()
    got, out = _each(counting.table, padded, raw.size)
    assert (got, out.tobytes()) == (raw.size, raw.tobytes())
    assert _each(counting.table, short, raw.size)[0] < 0
    assert counting.calls == 0


def _stream(raw: bytearray) -> int:
    """Where the bytes of a frame's first stream that is not stored raw start."""
    info = parse_blosc_frame(bytes(raw))
    return int(info.stream_offsets[np.flatnonzero(~info.stream_stored)[0]])


@pytest.mark.parametrize("surgery", ["payload", "checksum", "stream_size", "block_start", "truncated"])
@pytest.mark.parametrize("name", ["v3_u2_shuffle", "v3_f8_bitshuffle_blocks", "v2_u2_shuffle_blocks"])
def test_a_corrupt_frame_names_its_chunk(tmp_path, name, surgery):
    """A frame whose zlib stream does not inflate (garbled, its Adler-32 wrong), whose stream size
    or block start points outside it, or cut short: a CorruptDataError naming the chunk, in a
    full read, a window and a batch; the other chunks still read right."""
    path = str(tmp_path / "a.zarr")
    data = _write(path, ARRAYS[name])
    key = "c/0/1" if ARRAYS[name][0] == 3 else "0.1"
    chunk = os.path.join(path, *key.split("/"))
    raw = bytearray(open(chunk, "rb").read())
    at = _stream(raw)
    if surgery == "payload":
        raw[at + 10:at + 30] = bytes(20)
    elif surgery == "checksum":  # the first stream's last byte: its Adler-32
        end = at + int.from_bytes(raw[at - 4:at], "little")
        raw[end - 1] ^= 0xFF
    elif surgery == "stream_size":
        raw[at - 4:at] = (len(raw)).to_bytes(4, "little")
    elif surgery == "block_start":
        raw[16:20] = (len(raw) + 8).to_bytes(4, "little")
    else:
        raw = raw[:-9]
        raw[12:16] = len(raw).to_bytes(4, "little")
    open(chunk, "wb").write(bytes(raw))
    with pytest.raises(RuntimeError):
        numcodecs.Blosc().decode(bytes(raw))
    arr = gpuzarr.open(path, device="cpu", settings=gpuzarr.Settings(threads=1))
    rows, cols = ARRAYS[name][4]
    inside = (slice(1, rows), slice(cols + 1, 2 * cols))  # all its blocks (a window decodes only those it reads)
    for read in (lambda: arr[...], lambda: arr[inside], lambda: arr.read_batch([inside, (slice(0, rows - 1),
                                                                                         slice(0, cols - 1))])):
        with pytest.raises(CorruptDataError, match=key.replace(".", r"\.")):
            read()
    np.testing.assert_array_equal(arr[rows:, :], data[rows:, :])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_window_of_multi_block_chunks_reads_right(arrays, data):
    """Windows with steps anywhere in chunks of several blocks (each decoded only in the blocks
    the window reads), shuffled and bit-shuffled, one thread and two."""
    name = data.draw(st.sampled_from(["v2_u2_shuffle_blocks", "v3_f8_bitshuffle_blocks"]))
    path, expected = arrays[name]
    sel = []
    for n in expected.shape:
        start = data.draw(st.integers(0, n - 1))
        stop = data.draw(st.integers(start + 1, n))
        sel.append(slice(start, stop, data.draw(st.integers(1, 5))))
    arr = gpuzarr.open(path, device="cpu", settings=gpuzarr.Settings(threads=data.draw(st.sampled_from([1, 2]))))
    np.testing.assert_array_equal(arr[tuple(sel)], expected[tuple(sel)])
    np.testing.assert_array_equal(arr.read_batch([tuple(sel)])[0], expected[tuple(sel)])
