"""`gpuzarr selfcheck`: without a GPU it says why and fails; its checks, run through the GPU
orchestration's CPU stand-in, pass on a sound device and catch an unsound one."""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest
from gpu_standin import StandinEngine

from gpuzarr.devices.gpu import GpuDevice, usable_gpu
from gpuzarr.selfcheck import check, sweep


def test_without_a_gpu_it_says_why_and_exits_non_zero():
    if usable_gpu()[0]:
        pytest.skip("a GPU is usable here: `gpuzarr selfcheck` runs the checks instead")
    result = subprocess.run([sys.executable, "-m", "gpuzarr.cli", "selfcheck"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 1
    assert "no usable GPU:" in result.stdout and usable_gpu()[1] in result.stdout


def test_the_checks_pass_on_a_sound_device_and_print_a_line_per_codec():
    out = io.StringIO()
    assert check(GpuDevice(StandinEngine()), size=128, out=out) == []
    lines = out.getvalue().splitlines()
    assert len(lines) == 8 and all("bit-identical on 5 selections" in line for line in lines)


class _NoChecksums(StandinEngine):
    """A device that skips its checksum calls (what the GPU path did before it verified them)."""

    def checksum(self, model, area, table, layout) -> None:
        pass


def test_the_checks_catch_a_device_that_does_not_verify_checksums():
    failures = check(GpuDevice(_NoChecksums()), size=128, out=io.StringIO())
    assert failures == ["a crc32c codec that does not match was not refused on the GPU",
                        "a gzip CRC-32 that does not match was not refused on the GPU"]


class _OneBitOff(StandinEngine):
    """A device that places every chunk with one bit flipped (a faulty kernel)."""

    def scatter(self, decoded, out, records, itemsize, ndim) -> None:
        super().scatter(decoded, out, records, itemsize, ndim)
        if out.size:
            out.reshape(-1).view(np.uint8)[0] ^= 1


def test_the_checks_catch_a_device_that_gets_the_bits_wrong():
    failures = check(GpuDevice(_OneBitOff()), size=128, out=io.StringIO())
    assert failures and all("differs from the CPU read" in f for f in failures)


def test_the_corpus_sweep_reads_every_array_on_both_devices(corpus):
    """`selfcheck --corpus DIR` on the conformance corpus, through the stand-in: every array is
    bit-identical or skipped with its reason; a device that gets data wrong is caught."""
    out = io.StringIO()
    assert sweep(GpuDevice(StandinEngine()), str(corpus.root), out=out) == []
    text = out.getvalue()
    same = int(text.split("arrays bit-identical")[0].rsplit(":", 1)[1])
    assert same > 100 and ", 0 failed," in text

    class _Wrong(StandinEngine):
        def scatter(self, decoded, out, records, itemsize, ndim) -> None:
            super().scatter(decoded, out, records, itemsize, ndim)
            out.reshape(-1).view(np.uint8)[:1] ^= 1  # one bit of every batch's output

    failures = sweep(GpuDevice(_Wrong()), str(corpus.root), out=io.StringIO())
    assert failures and all("the GPU read differs from the CPU read" in f or "failed" in f for f in failures)


def test_without_a_cuda_driver_cupy_is_never_imported(tmp_path):
    """No CUDA driver to load: device "auto" settles on the CPU without importing CuPy (~0.8 s
    and its memory in every process that opens an array), and says why."""
    import zarr  # it imports CuPy itself where installed: the array is written here

    zarr.create_array(str(tmp_path / "a.zarr"), shape=(8,), chunks=(4,), dtype="u1", fill_value=0)[...] = np.arange(8)
    script = f"""
import sys
import numpy as np
import gpuzarr
from gpuzarr.devices import gpu
gpu._CUDA_DRIVER = "libcuda-not-here.so.404"
a = gpuzarr.open({str(tmp_path / 'a.zarr')!r}, device="auto")
assert a[...].tolist() == list(range(8)) and isinstance(a[...], np.ndarray)
ok, why = gpu.usable_gpu()
print(ok, "cupy" in sys.modules, why)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    ok, imported, why = out.stdout.split(" ", 2)
    assert (ok, imported) == ("False", "False")
    assert why.startswith("no usable GPU: no CUDA driver (") and "libcuda-not-here.so.404" in why


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="loads libc.so.6 as a stand-in driver")
def test_with_a_driver_to_load_cupy_decides(monkeypatch):
    from gpuzarr.devices import gpu

    monkeypatch.setattr(gpu, "_CUDA_DRIVER", "libc.so.6")
    assert gpu._cuda_driver_missing() is None
    assert "no CUDA driver" not in gpu.usable_gpu()[1]
