"""Checksums verified on the GPU path (nvCOMP's batched CRC32, crc32.h), batch sizing by SM count,
and the engine's release at exit. Without a GPU: the CRC model gpuzarr passes is checked against
the crc32c package, zlib and the header's presets; nvCOMP's CRC entry points are stood in for by
C functions compiled against the wheel's header and called through gpuzarr's own ctypes
prototypes (so the 128-byte options struct crosses the real ABI); whole reads run on the CPU
stand-in and must fail exactly as the CPU path does."""

from __future__ import annotations

import ctypes
import gzip
import re
import shutil
import subprocess
import sys
import threading
import zlib
from contextlib import nullcontext
from pathlib import Path
from types import ModuleType, SimpleNamespace

import crc32c
import numpy as np
import pytest
import zstandard
from gpu_standin import StandinEngine, crc32
from test_gpu_review import LE, ZSTD, _bare_engine, _fake_cupy, _FakeEvent, _write_v3

import gpuzarr
from gpuzarr.devices import gpu_layout, nvcomp_capi
from gpuzarr.devices.gpu import STREAMS_PER_SM, GpuDevice
from gpuzarr.devices.gpu_layout import build_layout
from gpuzarr.errors import CorruptDataError
from gpuzarr.fetch import FetchedBatch
from gpuzarr.pipeline import Settings

CRC32C = {"name": "crc32c"}
GZIP = {"name": "gzip", "configuration": {"level": 1}}
CHECK = b"123456789"
# Greg Cook's CRC catalogue: each model's "check" (its CRC of "123456789"), by crc32.h preset
CATALOGUE = {"nvcompCRC32": 0xCBF43926, "nvcompCRC32_C": 0xE3069283, "nvcompCRC32_D": 0x87315576,
             "nvcompCRC32_Q": 0x3010BF7F, "nvcompCRC32_MEF": 0xD2C22F51, "nvcompCRC32_XFER": 0xBD0BE338,
             "nvcompCRC32_BZIP2": 0xFC891918, "nvcompCRC32_POSIX": 0x765E7680, "nvcompCRC32_JAMCRC": 0x340BC6D9,
             "nvcompCRC32_MPEG_2": 0x0376E6E7, "nvcompCRC32_AUTOSAR": 0x1697D06A,
             "nvcompCRC32_CD_ROM_EDC": 0x6EC2EDC4}


def _include() -> Path:
    pytest.importorskip("nvidia.libnvcomp", reason="the nvCOMP wheel is not installed (the [test] extra installs it)")
    return Path(nvcomp_capi.library_path()).parent.parent / "include"


# ---------------------------------------------------------------- the CRC model

def test_the_standins_crc_follows_the_headers_model_for_every_preset():
    """The stand-in's CRC, fed each crc32.h preset as nvCOMP is, gives the catalogue's check
    value: it reads nvcompCRC32Spec_t's fields as nvCOMP documents them, reflected or not."""
    text = (_include() / "nvcomp" / "crc32.h").read_text()
    found = re.findall(r"static const nvcompCRC32Spec_t (\w+) = \{(0x\w+), (0x\w+), (true|false), (true|false), "
                       r"(0x\w+)", text)
    presets = {name: (int(poly, 16), int(init, 16), ref_in == "true", ref_out == "true", int(xorout, 16))
               for name, poly, init, ref_in, ref_out, xorout in found}
    assert set(presets) == set(CATALOGUE)
    for name, params in presets.items():
        assert crc32(CHECK, *params) == CATALOGUE[name], name


@pytest.mark.parametrize("size", [0, 1, 3, 4, 1000, 65537])
def test_gpuzarrs_crc_parameters_are_the_crc32c_codecs_and_gzips(size):
    data = np.random.default_rng(size).integers(0, 256, size, np.uint8).tobytes()
    assert crc32(data, *nvcomp_capi.CRC32_MODELS["crc32c"]) == crc32c.crc32c(data)
    assert crc32(data, *nvcomp_capi.CRC32_MODELS["crc32"]) == zlib.crc32(data)


# ---------------------------------------------------------------- the C API, stood in for in C

STANDIN_C = r"""
#include <nvcomp.h>

static cudaStream_t last_stream = (cudaStream_t)-1;
cudaStream_t gpz_last_stream(void) { return last_stream; }

static uint32_t reflect(uint32_t v, int bits) {
  uint32_t r = 0;
  for (int i = 0; i < bits; ++i) r |= ((v >> i) & 1u) << (bits - 1 - i);
  return r;
}

/* gpuzarr gives the largest size itself: deducing it from device sizes would synchronise. */
nvcompStatus_t nvcompBatchedCRC32GetHeuristicConf(const size_t *bytes, size_t n, nvcompCRC32KernelConf_t *conf,
                                                  size_t max_bytes, cudaStream_t stream) {
  if (bytes != NULL || max_bytes == 0 || n == 0) return nvcompErrorInvalidValue;
  conf->kernel_kind = nvcompCRC32BlockKernel;
  conf->bytes_per_read = 8;
  conf->blocks_per_msg = 3;
  return nvcompSuccess;
}

/* The textbook bitwise Rocksoft CRC, driven by the spec it is passed (by value). */
nvcompStatus_t nvcompBatchedCRC32Async(const void *const *ptrs, const size_t *bytes, size_t n, uint32_t *crcs,
                                       nvcompBatchedCRC32Opts_t opts, nvcompCRC32SegmentKind_t kind,
                                       nvcompStatus_t *statuses, cudaStream_t stream) {
  last_stream = stream;
  if (kind != nvcompCRC32OnlySegment || opts.kernel_conf.kernel_kind != nvcompCRC32BlockKernel
      || opts.kernel_conf.bytes_per_read != 8 || opts.kernel_conf.blocks_per_msg != 3)
    return nvcompErrorInvalidValue;
  for (size_t i = 0; i < sizeof opts.spec.reserved; ++i) if (opts.spec.reserved[i]) return nvcompErrorInvalidValue;
  for (size_t i = 0; i < sizeof opts.reserved; ++i) if (opts.reserved[i]) return nvcompErrorInvalidValue;
  for (size_t k = 0; k < n; ++k) {
    const uint8_t *p = ptrs[k];
    uint32_t reg = opts.spec.init;
    for (size_t j = 0; j < bytes[k]; ++j) {
      reg ^= (opts.spec.ref_in ? reflect(p[j], 8) : p[j]) << 24;
      for (int bit = 0; bit < 8; ++bit) reg = (reg & 0x80000000u) ? (reg << 1) ^ opts.spec.poly : reg << 1;
    }
    crcs[k] = (opts.spec.ref_out ? reflect(reg, 32) : reg) ^ opts.spec.xorout;
    statuses[k] = nvcompSuccess;
  }
  return nvcompSuccess;
}
"""


@pytest.fixture(scope="module")
def crc_library(tmp_path_factory):
    """nvCOMP's two CRC entry points as C stand-ins compiled against its header, typed by
    gpuzarr's prototypes; host memory stands for device memory."""
    if shutil.which("gcc") is None:
        pytest.skip("no gcc to compile the stand-in with")
    folder = tmp_path_factory.mktemp("crc")
    (folder / "standin.c").write_text(STANDIN_C)
    command = ["gcc", "-std=gnu11", "-shared", "-fPIC", "-O1", "-I", str(_include()), str(folder / "standin.c"),
               "-o", str(folder / "standin.so")]
    built = subprocess.run(command, capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    lib = ctypes.CDLL(str(folder / "standin.so"))
    lib.gpz_last_stream.restype = ctypes.c_void_p
    functions = {("CRC32", suffix): nvcomp_capi.typed(lib, f"nvcompBatchedCRC32{suffix}", params)
                 for suffix, params in nvcomp_capi.CRC32_PROTOTYPES.items()}
    return lib, functions


def _numpy_device(stream_ptr: int) -> ModuleType:
    """NumPy as the engine's array namespace: "device" addresses are host addresses the C
    stand-ins follow; the current stream is `stream_ptr`."""
    xp = ModuleType("numpy_as_device")
    xp.__dict__.update(vars(np))
    xp.cuda = SimpleNamespace(get_current_stream=lambda: SimpleNamespace(ptr=stream_ptr), Event=_FakeEvent,
                              Device=lambda i: nullcontext())
    return xp


def _frame(k: int, nbytes: int = 4096) -> bytes:
    return zstandard.ZstdCompressor().compress(np.random.default_rng(k).integers(0, 4, nbytes, np.uint8).tobytes())


def _with_crc32c(body: bytes, times: int = 1) -> bytes:
    for _ in range(times):
        body += crc32c.crc32c(body).to_bytes(4, "little")
    return body


def _batch(chunks: list[bytes], align: int) -> FetchedBatch:
    staging, offsets = bytearray(), []
    for chunk in chunks:
        staging += bytes(-len(staging) % align)
        offsets.append(len(staging))
        staging += chunk
    return FetchedBatch(np.frombuffer(bytes(staging), np.uint8).copy(), np.array(offsets, np.int64),
                        np.array([len(c) for c in chunks], np.int64), np.ones(len(chunks), bool),
                        [f"c/{k}" for k in range(len(chunks))])


def _chain(tmp_path, codecs: list, nbytes: int = 4096):
    _write_v3(tmp_path / "z", (nbytes,), "uint8", (nbytes,), codecs, {})
    return gpuzarr.open(str(tmp_path / "z"), device="cpu")._reader.locator.leaf_chain


@pytest.mark.parametrize("align", [16, 1], ids=["staged_in_place", "restaged"])
@pytest.mark.parametrize("stream_ptr", [0, 12345], ids=["null_stream", "user_stream"])
def test_the_engine_checks_crc32c_through_the_c_api(tmp_path, monkeypatch, crc_library, align, stream_ptr):
    """CupyEngine.checksum end to end but for nvCOMP: the message table goes up, pointers are
    base + offsets, the C stand-in computes with the spec it is passed by value, the comparison
    with the stored trailers happens in the namespace, finish() reads it back; the caller's
    stream is passed, CuPy's null stream (ptr 0) as cudaStreamLegacy (1)."""
    lib, functions = crc_library
    gpu_layout.decode_alignments()  # asked of nvCOMP itself, once per process, before load is stood in for
    monkeypatch.setattr(nvcomp_capi, "load", lambda: functions)
    chain = _chain(tmp_path, [LE, ZSTD, CRC32C])
    good = [_with_crc32c(_frame(k)) for k in range(3)]
    engine = _bare_engine(_numpy_device(stream_ptr))
    layout = build_layout(_batch(good, align), chain, lambda i: None)
    engine.checksum("crc32c", layout.staging, layout.checksums["crc32c"], layout)
    engine.finish()
    assert lib.gpz_last_stream() == (stream_ptr or 1), "the null stream as cudaStreamLegacy"
    bad = bytearray(good[1])
    bad[20] ^= 1
    layout = build_layout(_batch([good[0], bytes(bad), good[2]], align), chain, lambda i: None)
    engine.checksum("crc32c", layout.staging, layout.checksums["crc32c"], layout)
    with pytest.raises(CorruptDataError) as gpu_error:
        engine.finish()
    with pytest.raises(CorruptDataError) as cpu_error:
        gpuzarr.codecs.bytes_to_bytes.strip_crc32c(memoryview(bytes(bad)), "c/1 (crc32c codec)")
    assert str(gpu_error.value) == str(cpu_error.value)


def test_two_crc32c_codecs_make_two_messages_per_chunk_outermost_first(tmp_path):
    chain = _chain(tmp_path, [LE, ZSTD, CRC32C, CRC32C])
    frames = [_frame(k) for k in range(2)]
    layout = build_layout(_batch([_with_crc32c(f, 2) for f in frames], 1), chain, lambda i: None)
    table = layout.checksums["crc32c"]
    assert table["chunk"].tolist() == [0, 0, 1, 1]
    assert (table["size"] == np.repeat([len(f) for f in frames], 2) + [4, 0, 4, 0]).all()
    for src, size, expected in zip(table["src"], table["size"], table["expected"]):
        body = layout.staging[src:src + size].tobytes()
        assert crc32c.crc32c(body) == expected
    assert layout.streams["zstd"]["src_size"].tolist() == [len(f) for f in frames]


class _DeviceArray(np.ndarray):
    """A NumPy array that counts its copies to the host (CuPy's ndarray.get)."""

    copies = 0

    def get(self) -> np.ndarray:
        _DeviceArray.copies += 1
        return np.asarray(self)


def test_sizes_statuses_and_checksums_come_back_in_one_copy():
    from gpuzarr.devices.nvcomp_batch import BAD_CHECKSUM, Decoded, check, compared

    xp = ModuleType("counting")
    xp.__dict__.update(vars(np))
    xp.stack = lambda arrays: np.stack(arrays).view(_DeviceArray)
    table = {"expected": np.array([7, 9]), "chunk": np.array([0, 1])}
    crcs = compared(xp, np.array([7, 8], np.uint32), np.zeros(2, np.int32), np.array([7, 9], np.uint64), table,
                    ["c/0", "c/1"], "crc32c", ())
    assert crcs.statuses.tolist() == [0, BAD_CHECKSUM]
    sizes = Decoded(np.array([10, 10], np.uint64), np.zeros(2, np.int32), np.array([10, 10]), np.array([0, 1]),
                    ["c/0", "c/1"], ())
    with pytest.raises(CorruptDataError, match=r"^c/1 \(crc32c codec\): checksum mismatch \(stored 0x00000009, "
                                               r"computed 0x00000008\)$"):
        check(xp, [sizes, crcs])
    assert _DeviceArray.copies == 1


# ---------------------------------------------------------------- whole reads on the stand-in

def _array(tmp_path, codecs: list, encode, damage=None) -> tuple[str, np.ndarray]:
    """A 2-chunk uint16 v3 array whose chunks are `encode(bytes)`; `damage(chunk 1's bytes)`."""
    data = np.random.default_rng(7).integers(0, 50, (128, 64)).astype(np.uint16)
    chunks = {(k, 0): encode(data[k * 64:(k + 1) * 64].tobytes()) for k in range(2)}
    if damage is not None:
        chunks[(1, 0)] = damage(chunks[(1, 0)])
    _write_v3(tmp_path / "a", data.shape, "uint16", (64, 64), codecs, chunks)
    return str(tmp_path / "a"), data


def _flip(at: int):
    def damage(raw: bytes) -> bytes:
        out = bytearray(raw)
        out[at] ^= 0x40
        return bytes(out)
    return damage


def _gzip(raw: bytes) -> bytes:
    return gzip.compress(raw, mtime=0)


CASES = {  # codecs, encoder
    "zstd+crc32c": ([LE, ZSTD, CRC32C], lambda raw: _with_crc32c(zstandard.ZstdCompressor().compress(raw))),
    "zstd+crc32c+crc32c": ([LE, ZSTD, CRC32C, CRC32C],
                           lambda raw: _with_crc32c(zstandard.ZstdCompressor().compress(raw), 2)),
    "crc32c": ([LE, CRC32C], _with_crc32c),
    "gzip+crc32c": ([LE, GZIP, CRC32C], lambda raw: _with_crc32c(_gzip(raw))),
}


def _read(path: str, device) -> np.ndarray:
    return gpuzarr.open(path, device="cpu").read(..., device=device)


@pytest.mark.parametrize("case", sorted(CASES))
def test_crc32c_codecs_are_verified_on_the_device_not_the_host(tmp_path, monkeypatch, case):
    codecs, encode = CASES[case]
    path, data = _array(tmp_path, codecs, encode)

    def host_check(*args):
        raise AssertionError("a crc32c codec was verified on the host")

    monkeypatch.setattr(gpu_layout, "strip_crc32c", host_check)
    engine = StandinEngine()
    np.testing.assert_array_equal(_read(path, GpuDevice(engine)), data)
    assert engine.calls["checksum:crc32c"] == 1  # one call for the batch, whatever its chunks


@pytest.mark.parametrize("case, damage", [
    ("zstd+crc32c", _flip(30)),  # in the frame's blocks: it may still decode, to other bytes
    ("zstd+crc32c", _flip(0)),  # the zstd magic number, which the host reads: the checksum is reported first
    ("zstd+crc32c", _flip(-1)),  # the trailer
    ("zstd+crc32c", lambda raw: raw[:2]),  # too short to hold a checksum
    ("zstd+crc32c+crc32c", _flip(-6)),  # the inner trailer, covered by the outer checksum
    ("zstd+crc32c+crc32c", lambda raw: _with_crc32c(bytes(_flip(-1)(raw[:-4])))),  # only the inner one fails
    ("crc32c", _flip(100)),
    ("gzip+crc32c", _flip(40)),
    ("gzip+crc32c", _flip(3)),  # the gzip header's flags, which the host reads
], ids=lambda v: v if isinstance(v, str) else "")
def test_a_crc32c_mismatch_fails_the_gpu_read_as_it_fails_the_cpu_read(tmp_path, case, damage):
    codecs, encode = CASES[case]
    path, _ = _array(tmp_path, codecs, encode, damage)
    with pytest.raises(CorruptDataError) as cpu_error:
        _read(path, "cpu")
    with pytest.raises(CorruptDataError) as gpu_error:
        _read(path, GpuDevice(StandinEngine()))
    assert _problem(gpu_error.value) == _problem(cpu_error.value)


def _problem(error: Exception) -> tuple[str, str]:
    """(the chunk, the checksum's finding) of a crc32c failure. The CPU path words the codec two
    ways ("c/1/0: crc32c: ..." chunk by chunk, "c/1/0 (crc32c codec): ..." in its grouped zstd
    path, which the GPU path follows); the chunk and the finding are the same."""
    found = re.search(r"(c/\d/\d)(?: \(crc32c codec\)|: crc32c): (checksum mismatch \(stored 0x\w+, computed 0x\w+\)"
                      r"|\d+ bytes cannot hold a crc32c checksum)(?:; the same in \d+ reads)?$", str(error))
    assert found, str(error)
    return found.groups()


def _gzip_with_wrong_crc(member: bytes) -> bytes:
    crc = int.from_bytes(member[-8:-4], "little")
    return member[:-8] + (crc ^ 1).to_bytes(4, "little") + member[-4:]


def test_gzips_crc_is_verified_on_the_device_over_the_decoded_bytes(tmp_path):
    path, data = _array(tmp_path, [LE, GZIP], _gzip)
    engine = StandinEngine()
    np.testing.assert_array_equal(_read(path, GpuDevice(engine)), data)
    assert engine.calls["checksum:crc32"] == 1 and engine.calls["decompress:deflate"] == 1


def test_a_gzip_member_whose_crc_does_not_match_fails_both_reads(tmp_path):
    """The member decodes to the right size (ISIZE and nvCOMP's size agree): only its CRC-32
    tells it is not what was written."""
    path, _ = _array(tmp_path, [LE, GZIP], _gzip, _gzip_with_wrong_crc)
    with pytest.raises(CorruptDataError, match="c/1/0: bad gzip stream .CRC-32 mismatch"):
        _read(path, GpuDevice(StandinEngine()))
    with pytest.raises(CorruptDataError, match="c/1/0"):
        _read(path, "cpu")


# ---------------------------------------------------------------- batches sized by SM count

def _many_chunks(tmp_path, n: int = 64) -> tuple[str, np.ndarray]:
    data = np.random.default_rng(3).integers(0, 9, (n, 256)).astype(np.uint16)
    codec = zstandard.ZstdCompressor()
    _write_v3(tmp_path / "m", data.shape, "uint16", (1, 256), [LE, ZSTD],
              {(k, 0): codec.compress(data[k].tobytes()) for k in range(n)})
    return str(tmp_path / "m"), data


@pytest.mark.parametrize("settings, batches", [
    (Settings(), 64 // (STREAMS_PER_SM * StandinEngine.sm_count)),  # the floor outweighs the device's preference
    (Settings(batch_bytes=1), 64),  # a bound the caller sets holds
    (Settings(batch_decoded_bytes=3 * 512), 22),  # so does the decoded-bytes bound (3 chunks)
])
def test_gpu_batches_hold_a_few_streams_per_sm(tmp_path, settings, batches):
    path, data = _many_chunks(tmp_path)
    device = GpuDevice(StandinEngine())
    device.batch_bytes = 1  # a device preferring one chunk per batch by bytes alone
    report = gpuzarr.ReadReport()
    got = gpuzarr.open(path, device="cpu", settings=settings).read(..., device=device, report=report)
    np.testing.assert_array_equal(got, data)
    assert report.batches == batches


def test_the_sm_count_is_the_devices_attribute_asked_once():
    calls = []

    def attribute(attr, device):
        calls.append((attr, device))
        return 132

    engine = _bare_engine(SimpleNamespace(cuda=SimpleNamespace(
        runtime=SimpleNamespace(cudaDevAttrMultiProcessorCount=16, deviceGetAttribute=attribute))))
    assert engine.sm_count == 132 and engine.sm_count == 132
    assert calls == [(16, 0)]
    assert GpuDevice(engine).batch_streams == STREAMS_PER_SM * 132


def test_cupy_has_the_attribute_query_with_cudas_enum_value():
    cupy = pytest.importorskip("cupy", reason="CuPy is not installed")
    runtime = cupy.cuda.runtime
    assert runtime.cudaDevAttrMultiProcessorCount == 16  # cudaDevAttrMultiProcessorCount = 16 (driver_types.h)
    assert "deviceGetAttribute(int attrib, int device)" in runtime.deviceGetAttribute.__doc__


# ---------------------------------------------------------------- release at exit

def test_close_releases_every_threads_buffers():
    engine = _bare_engine(_fake_cupy())
    states = [engine._state()]
    worker = threading.Thread(target=lambda: states.append(engine._state()))
    worker.start()
    worker.join()
    states[0].pending.append(("queued", "layout"))
    engine.close()
    assert all(s.pinned is None and s.pending == [] for s in states)
    fresh = engine._state()
    assert fresh is not states[0] and fresh.pinned is not None  # a later read starts afresh


def test_engines_are_closed_by_an_exit_handler():
    script = ("import gpuzarr.devices.gpu as g\n"
              "class Engine(g.CupyEngine):\n"
              "    def __init__(self): pass\n"
              "    def close(self): print('closed', flush=True)\n"
              "engine = Engine()\n"
              "g._ENGINES.add(engine)\n"
              "g._close_engines_at_exit()\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "closed\n"
