"""What a new user hit: a lone window given to read_batch, HTTP URLs printed with two schemes,
`gpuzarr info` over a store that cannot list, CLI arguments below 1, numcodecs' crc32c warning
on every run, kilobytes of HTTP headers in a StoreError, extras missing for s3/http and GPU test
extras that have no macOS wheels, and a link to a file outside the repository."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
import tomllib
import warnings
from pathlib import Path

import fsspec
import numpy as np
import pytest
import zarr
from checks import to_memory
from fsspec.implementations.memory import MemoryFileSystem
from fsspec.spec import AbstractFileSystem
from packaging.requirements import Requirement

import gpuzarr
from gpuzarr import StoreError
from gpuzarr.cli import main
from gpuzarr.info import describe
from gpuzarr.store import CannotListError, Store, open_store

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def small(tmp_path) -> Path:
    a = zarr.create_array(tmp_path / "a", shape=(8, 8), chunks=(4, 4), dtype="u2", zarr_format=3)
    a[:] = np.arange(64, dtype="u2").reshape(8, 8)
    return tmp_path / "a"


# read_batch

def test_read_batch_refuses_one_window_given_alone(small):
    arr = gpuzarr.open(str(small), device="cpu")
    for lone in ((slice(0, 4), slice(0, 4)), slice(0, 4), Ellipsis, 3):
        with pytest.raises(TypeError, match=r"read_batch takes a list of windows, not a \w+: for one window pass "
                                            r"\[window\]"):
            arr.read_batch(lone)
    np.testing.assert_array_equal(arr.read_batch([(slice(0, 4), slice(0, 4))])[0], arr[0:4, 0:4])


def _read_only_outs(tmp_path, shape, dtype):
    """Outputs a read must refuse, each with how to tell it was left alone."""
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    raw = bytes(nbytes)  # immutable: gpuzarr once wrote into it through its address
    mapped = tmp_path / "out.bin"
    np.zeros(shape, dtype).tofile(mapped)
    outs = {"bytes": (np.frombuffer(raw, dtype).reshape(shape), lambda: raw == bytes(nbytes)),
            # a memmap opened "r": the host library's write through its address faulted (SIGSEGV)
            "memmap r": (np.memmap(mapped, dtype=dtype, mode="r", shape=shape),
                         lambda: not np.fromfile(mapped, dtype).any()),
            # read-only, each row's elements one memory: it read back garbage
            "broadcast": (np.broadcast_to(np.zeros(shape[:-1] + (1,), dtype), shape), lambda: True)}
    rows = np.zeros(shape[:-1], dtype)
    overlapping = np.lib.stride_tricks.as_strided(rows, shape, rows.strides + (0,))  # writable
    outs["zero stride"] = (overlapping, lambda: not rows.any())
    return outs


@pytest.mark.parametrize("how", ["read", "read_batch", "read_windows"])
def test_a_read_refuses_an_out_it_cannot_write(small, tmp_path, how):
    arr = gpuzarr.open(str(small), device="cpu")
    shape = (6, 5) if how == "read" else (1, 6, 5)
    for name, (out, untouched) in _read_only_outs(tmp_path, shape, arr.dtype).items():
        with pytest.raises(ValueError, match=r"out is read-only|out's elements overlap"):
            if how == "read":
                arr.read((slice(1, 7), slice(2, 7)), out=out)
            elif how == "read_batch":
                arr.read_batch([(slice(1, 7), slice(2, 7))], out=out)
            else:
                arr.read_windows(np.array([[1, 2]]), (6, 5), out=out)
        assert untouched(), f"{how} wrote into a {name} out it refused"
    out = np.zeros((6, 5), arr.dtype)
    np.testing.assert_array_equal(arr.read((slice(1, 7), slice(2, 7)), out=out), arr[1:7, 2:7])


def test_an_empty_out_with_zero_strides_is_taken():
    """NumPy 2.4's np.empty((3, 0)) has strides (0, 0): no elements, so none overlap (it was
    refused as overlapping; found by a differential run)."""
    from gpuzarr.devices.cpu import CpuDevice

    out = np.lib.stride_tricks.as_strided(np.empty(0, "i4"), (3, 0), (0, 0))
    CpuDevice.shared().check_output(out, (3, 0), np.dtype("i4"))
    with pytest.raises(ValueError, match="overlap"):
        CpuDevice.shared().check_output(np.lib.stride_tricks.as_strided(np.zeros(3, "i4"), (3, 2), (4, 0)),
                                        (3, 2), np.dtype("i4"))


# Store.url

class _HttpLike(AbstractFileSystem):
    """Paths keep their scheme, as fsspec's HTTPFileSystem's do (its _strip_protocol returns the
    URL unchanged); the protocol is a tuple whose first entry is 'http'."""

    protocol = ("http", "https")

    @classmethod
    def _strip_protocol(cls, path):
        return path


@pytest.mark.parametrize("url", ["http://example.org/data.zarr", "https://example.org/data.zarr"])
def test_http_urls_keep_one_scheme(url):
    store = Store(_HttpLike(), url)
    assert store.url == url and repr(store) == f"Store({url!r})"
    assert store.child("sub").url == f"{url}/sub"


def test_http_urls_keep_one_scheme_through_fsspecs_http_filesystem():
    pytest.importorskip("aiohttp", reason="fsspec's HTTPFileSystem needs aiohttp (the [http] extra)")
    assert open_store("https://example.org/data.zarr").url == "https://example.org/data.zarr"


def test_other_urls_get_their_scheme():
    assert Store(MemoryFileSystem(), "/x").url == "memory:///x"
    assert open_store("/tmp/x").url == "/tmp/x"


# stores that cannot list

class _NoListing(MemoryFileSystem):
    """fsspec's memory filesystem under its own protocol, whose directory listing behaves as
    `_NoListing.listing` says: raise NotImplementedError, 404 (FileNotFoundError, as HTTP), or
    answer nothing (an HTTP page without links)."""

    protocol = "gznolist"
    listing = "not implemented"
    find = AbstractFileSystem.find  # through ls, as most filesystems find (memory's has its own)

    @classmethod
    def _strip_protocol(cls, path):
        return super()._strip_protocol(path.removeprefix("gznolist://"))

    def ls(self, path, detail=True, **kwargs):
        if self.listing == "not implemented":
            raise NotImplementedError("this filesystem cannot list")
        if self.listing == "404":
            raise FileNotFoundError(path)
        return []


@pytest.fixture(params=["not implemented", "404", "empty"])
def no_listing(request, monkeypatch):
    monkeypatch.setattr(_NoListing, "listing", request.param)
    fsspec.register_implementation(_NoListing.protocol, _NoListing, clobber=True)
    return _NoListing


def test_info_says_when_chunks_cannot_be_counted(small, no_listing, tmp_path, capsys):
    name = to_memory(small, f"nolist-{tmp_path.name}").removeprefix("memory://")
    assert main(["info", f"gznolist://{name}"]) == 0
    assert "stored      unknown of 4 chunk objects: this store cannot list files to count them" in capsys.readouterr().out


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_a_group_on_a_store_that_cannot_list_says_so(tmp_path, no_listing, zarr_format, capsys):
    g = zarr.open_group(tmp_path / "g", mode="w", zarr_format=zarr_format)
    g.create_array("x", shape=(2,), chunks=(2,), dtype="i4")[:] = [1, 2]
    name = to_memory(tmp_path / "g", f"nolist-{tmp_path.name}-{zarr_format}").removeprefix("memory://")
    group = gpuzarr.open(f"gznolist://{name}", device="cpu")
    with pytest.raises(CannotListError, match=r"cannot list the members of this group: .*this store cannot list "
                                              r"directories .*; open them by name"):
        group.keys()
    np.testing.assert_array_equal(group["x"][...], [1, 2])  # members open by name all the same
    assert describe(group)[1:] == ["  members     unknown: this store cannot list directories and the group has "
                                   "no consolidated metadata"]
    assert main(["info", f"gznolist://{name}"]) == 0
    assert "members     unknown" in capsys.readouterr().out


def test_an_empty_group_on_a_store_that_lists_has_no_members(tmp_path):
    zarr.open_group(tmp_path / "g", mode="w", zarr_format=3)
    assert gpuzarr.open(to_memory(tmp_path / "g", f"empty-{tmp_path.name}")).keys() == []
    assert gpuzarr.open(str(tmp_path / "g")).keys() == []


# CLI arguments

@pytest.mark.parametrize("args,problem", [(["--repeats", "0"], "argument --repeats: must be at least 1, got 0"),
                                          (["--size", "-5"], "argument --size: must be at least 1, got -5"),
                                          (["--size", "0"], "argument --size: must be at least 1, got 0"),
                                          (["--size", "big"], "argument --size: 'big' is not an integer"),
                                          (["--device", "tpu"], "argument --device: invalid choice")])
def test_demo_refuses_bad_arguments_as_usage_errors(args, problem, capsys):
    with pytest.raises(SystemExit) as ei:
        main(["demo", *args])
    assert ei.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: gpuzarr demo") and problem in err and "Traceback" not in err


# numcodecs' crc32c deprecation warning

_NO_GOOGLE_CRC32C = "import sys; sys.modules['google_crc32c'] = None; "  # numcodecs then takes `crc32c`


def _python(code: str, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *flags, "-c", _NO_GOOGLE_CRC32C + code], capture_output=True,
                          text=True, cwd=REPO, timeout=120)


def test_no_crc32c_deprecation_warning_on_a_cli_run(small):
    bare = _python("import numcodecs")
    if "crc32c usage is deprecated" not in bare.stderr:
        pytest.skip(f"this numcodecs ({bare.stderr.strip() or 'no warning'}) does not warn about crc32c")
    run = _python(f"from gpuzarr.cli import main; sys.exit(main(['info', {str(small)!r}]))")
    assert run.returncode == 0 and "stored      4 of 4" in run.stdout, run.stderr
    assert "DeprecationWarning" not in run.stderr, run.stderr
    strict = _python("import gpuzarr", "-W", "error")
    assert strict.returncode == 0 and strict.stderr == "", strict.stderr


def test_the_numcodecs_import_reissues_its_other_warnings(tmp_path, monkeypatch):
    """Only the crc32c advice is dropped: a stand-in numcodecs warning twice on import."""
    from gpuzarr.api import _import_numcodecs

    (tmp_path / "numcodecs").mkdir()
    (tmp_path / "numcodecs" / "__init__.py").write_text(
        "import warnings\n"
        "warnings.warn('crc32c usage is deprecated since numcodecs v0.16.4.', DeprecationWarning)\n"
        "warnings.warn('something else', UserWarning)\n")
    monkeypatch.delitem(sys.modules, "numcodecs")
    monkeypatch.syspath_prepend(str(tmp_path))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _import_numcodecs()
    assert [(w.category, str(w.message)) for w in caught] == [(UserWarning, "something else")]


# StoreError messages

_HEADERS = "\n".join(f"X-Header-{i}: {'v' * 40}" for i in range(30))


class _ClientResponseError(Exception):
    """Shaped like aiohttp's: status and message attributes, a repr holding every header."""

    status, message = 503, "Service Unavailable"

    def __repr__(self):
        return f"ClientResponseError(status=503, headers=<{_HEADERS}>)"

    def __str__(self):
        return f"503, message='Service Unavailable', headers={_HEADERS}"


class _Failing(AbstractFileSystem):
    protocol = "gzfailing"
    cachable = False

    def __init__(self, error, whole=False):
        super().__init__()
        self.error, self.whole = error, whole

    def cat_file(self, path, start=None, end=None, **kwargs):
        raise self.error

    def cat_ranges(self, paths, starts, ends, **kwargs):
        if self.whole:
            raise self.error
        return super().cat_ranges(paths, starts, ends, **kwargs)


@pytest.mark.parametrize("error,reason", [
    (RuntimeError(f"upstream said no\n{_HEADERS}"), "RuntimeError: upstream said no"),
    (RuntimeError("x" * 5000), "RuntimeError: " + "x" * 200 + "..."),
    (_ClientResponseError(), "_ClientResponseError: HTTP 503 Service Unavailable"),
])
@pytest.mark.parametrize("whole", [False, True])
def test_store_errors_carry_a_short_reason_and_the_whole_cause(error, reason, whole):
    store = Store(_Failing(error, whole), "/root")
    with pytest.raises(StoreError, match=r"read failed|reading 2 ranges failed") as ei:
        store.read_ranges([("c/0", 0, 10), ("c/1", 0, None)])
    message = str(ei.value)
    assert message.endswith(f"({reason})") and "\n" not in message and len(message) < 300, message
    assert ei.value.cause is error
    with pytest.raises(StoreError) as ei:
        gpuzarr.open(_Failing(error, whole), path="/root")
    assert str(ei.value).endswith(f"({reason})") and ei.value.cause is error


# pyproject.toml extras

def _extras() -> dict[str, list[Requirement]]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return {name: [Requirement(r) for r in reqs] for name, reqs in project["optional-dependencies"].items()}


def test_remote_stores_have_extras():
    """Each scheme's fsspec extra (a forked child's reads, the fallback's error message names
    them), one fsspec defines; `remote` is obstore."""
    extras = _extras()
    defined = set(importlib.metadata.metadata("fsspec").get_all("Provides-Extra"))
    for extra, fsspec_extra in (("s3", "s3"), ("http", "http"), ("gcs", "gcs"), ("azure", "abfs")):
        assert fsspec_extra in defined, fsspec_extra
        assert any(r.name == "fsspec" and fsspec_extra in r.extras for r in extras[extra]), extra
    assert [r.name for r in extras["remote"]] == ["obstore"]


@pytest.mark.parametrize("platform", [("darwin", "arm64"), ("darwin", "x86_64"), ("linux", "aarch64"),
                                      ("win32", "AMD64")])
def test_the_test_extra_installs_gpu_wheels_only_where_they_exist(platform):
    """cupy-cuda12x, nvidia-nvcomp-cu12 and nvidia-cuda-nvrtc-cu12 together have wheels only for
    Linux x86_64 (nvcomp has none for aarch64, none of them for macOS; gpuzarr needs POSIX)."""
    sys_platform, machine = platform
    env = {"sys_platform": sys_platform, "platform_system": {"darwin": "Darwin", "linux": "Linux"}.get(
        sys_platform, "Windows"), "platform_machine": machine}
    test = _extras()["test"]
    wanted = {r.name for r in test if r.marker is None or r.marker.evaluate(env)}
    assert {"pytest", "zarr", "tensorstore"} <= wanted
    assert not wanted & {"cupy-cuda12x", "nvidia-nvcomp-cu12", "nvidia-cuda-nvrtc-cu12"}, wanted
    linux = {r.name for r in test if r.marker is None or r.marker.evaluate(
        {"sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64"})}
    assert {"cupy-cuda12x", "nvidia-nvcomp-cu12", "nvidia-cuda-nvrtc-cu12"} <= linux


# bench/README.md

def test_bench_readme_names_only_files_in_the_repository():
    """Every file name, in backticks or not (it once cited a BENCHMARKS.md the repository lacks);
    a name inside a pattern (`results/xarray-<timestamp>.json`) is not one."""
    text = (REPO / "bench" / "README.md").read_text()
    named = set(re.findall(r"(?<![\w./<>-])([\w./-]*\w\.(?:md|py|json|toml))\b", text))
    assert named, "the README names its modules"
    missing = sorted(p for p in named if not (REPO / p).exists() and not (REPO / "bench" / p).exists())
    assert not missing, missing


@pytest.mark.parametrize("fill", [0, 1.5, "x"])
def test_a_v2_vlen_string_fill_given_as_a_number_reads_as_its_text(tmp_path, fill):
    """zarr-python 2 wrote fill_value 0 for every string array; zarr-python 3 reads it as "0".
    gpuzarr refused such arrays (MetadataError; found by a differential run)."""
    import json

    import numcodecs

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / ".zarray").write_text(json.dumps({
        "zarr_format": 2, "shape": [4], "chunks": [2], "dtype": "|O", "fill_value": fill, "order": "C",
        "compressor": None, "filters": [{"id": "vlen-utf8"}]}))
    (tmp_path / "a" / "0").write_bytes(numcodecs.VLenUTF8().encode(np.array(["a", "bc"], dtype=object)))
    got = gpuzarr.open(str(tmp_path / "a"), device="cpu")[...]
    want = zarr.open_array(str(tmp_path / "a"), mode="r")[...]
    assert got.tolist() == want.tolist() == ["a", "bc", str(fill), str(fill)]
