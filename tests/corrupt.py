"""Builders of small valid Zarr arrays (written by zarr-python) and byte-level surgery on them.

Used by tests/test_bad_input.py. Everything here is independent of gpuzarr, so the fixtures can be
checked against zarr-python alone.

Layout of every array built here: shape (8, 8), int32, fill value -1, values 1..64 (never the fill
value, so no chunk is elided on write). Unsharded arrays use (4, 4) chunks; sharded arrays use
(4, 4) shards of (2, 2) inner chunks, i.e. 4 inner chunks of 16 raw bytes per shard, and a shard
index of 4 (offset, nbytes) uint64 pairs = 64 bytes (+ 4 bytes of crc32c when the index codecs
have it).
"""

from __future__ import annotations

import json
import shutil
import struct
import warnings
from pathlib import Path

import crc32c as _crc32c
import numpy as np

MAX_U64 = 2**64 - 1
SHAPE = (8, 8)
CHUNKS = (4, 4)
INNER = (2, 2)
DTYPE = "int32"
FILL = -1
N_INNER = 4  # inner chunks per shard
CHUNK_NBYTES = 4 * 4 * 4  # one (4, 4) int32 chunk
INNER_NBYTES = 2 * 2 * 4  # one (2, 2) int32 inner chunk


def expected() -> np.ndarray:
    return (np.arange(64, dtype=DTYPE) + 1).reshape(SHAPE)


def crc32c_le(data: bytes) -> bytes:
    return struct.pack("<I", _crc32c.crc32c(bytes(data)))


# ---------------------------------------------------------------------------------------------
# builders (zarr-python)


def _zarr():
    import zarr

    return zarr


def _write(arr) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        arr[...] = expected()


def make_v3(path: Path, codecs: str = "zstd", key_encoding: str = "default") -> Path:
    """Unsharded v3 array with (4, 4) chunks. `codecs` picks the bytes->bytes chain:
    raw | crc32c | zstd | zstd_checksum | zstd+crc32c | gzip | blosc. `key_encoding`: default
    (keys c/0/1) or v2 (keys 0.1)."""
    zarr = _zarr()
    from zarr.codecs import BloscCodec, Crc32cCodec, GzipCodec, ZstdCodec

    chains = {
        "raw": [],
        "crc32c": [Crc32cCodec()],
        "zstd": [ZstdCodec(level=1)],
        "zstd_checksum": [ZstdCodec(level=1, checksum=True)],
        "zstd+crc32c": [ZstdCodec(level=1), Crc32cCodec()],
        "gzip": [GzipCodec(level=1)],
        "blosc": [BloscCodec(cname="lz4", clevel=1, shuffle="shuffle")],
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        arr = zarr.create_array(
            str(path), shape=SHAPE, chunks=CHUNKS, dtype=DTYPE, fill_value=FILL,
            compressors=chains[codecs], filters=None, dimension_names=["y", "x"],
            chunk_key_encoding={"name": key_encoding, "separator": "/" if key_encoding == "default" else "."},
        )
    _write(arr)
    return path


def make_sharded(path: Path, *, index_crc: bool = True, index_location: str = "end",
                 inner: str = "raw") -> Path:
    """v3 array of (4, 4) shards of (2, 2) inner chunks. `inner` picks the inner bytes->bytes chain:
    raw | crc32c | zstd."""
    zarr = _zarr()
    from zarr.codecs import BytesCodec, Crc32cCodec, ShardingCodec, ZstdCodec

    inner_chain = {"raw": [], "crc32c": [Crc32cCodec()], "zstd": [ZstdCodec(level=1)]}[inner]
    index_codecs = [BytesCodec(endian="little")] + ([Crc32cCodec()] if index_crc else [])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        arr = zarr.create_array(
            str(path), shape=SHAPE, chunks=CHUNKS, dtype=DTYPE, fill_value=FILL,
            serializer=ShardingCodec(chunk_shape=INNER, codecs=[BytesCodec(endian="little"), *inner_chain],
                                     index_codecs=index_codecs, index_location=index_location),
            compressors=None, filters=None,
        )
    _write(arr)
    return path


def make_nested(path: Path) -> Path:
    """v3 array of (4, 4) shards of (2, 2) sub-shards of (1, 1) raw chunks; both indexes have crc32c.
    Each sub-shard is 4 * 4 data bytes + 68 index bytes = 84 bytes."""
    zarr = _zarr()
    from zarr.codecs import BytesCodec, Crc32cCodec, ShardingCodec

    idx = [BytesCodec(endian="little"), Crc32cCodec()]
    inner = ShardingCodec(chunk_shape=(1, 1), codecs=[BytesCodec(endian="little")], index_codecs=idx)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        arr = zarr.create_array(
            str(path), shape=SHAPE, chunks=CHUNKS, dtype=DTYPE, fill_value=FILL,
            serializer=ShardingCodec(chunk_shape=INNER, codecs=[inner], index_codecs=idx),
            compressors=None, filters=None,
        )
    _write(arr)
    return path


def make_v2(path: Path, compressor: str | None = "zlib", separator: str = ".") -> Path:
    """v2 array with (4, 4) chunks; compressor: None | zlib | blosc."""
    zarr = _zarr()
    import numcodecs

    comp = {None: None, "zlib": numcodecs.Zlib(level=1),
            "blosc": numcodecs.Blosc(cname="lz4", clevel=1, shuffle=numcodecs.Blosc.SHUFFLE)}[compressor]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        arr = zarr.create_array(
            str(path), shape=SHAPE, chunks=CHUNKS, dtype=DTYPE, fill_value=FILL,
            compressors=comp, filters=None, zarr_format=2, chunk_key_encoding={"name": "v2", "separator": separator},
        )
    _write(arr)
    return path


def copy_array(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def read_with_zarr_python(path: Path, sel=...):
    """Read with zarr-python (used to check fixtures, not gpuzarr)."""
    zarr = _zarr()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return zarr.open_array(str(path), mode="r")[sel]


# ---------------------------------------------------------------------------------------------
# encoders matching the codecs above (for re-encoding a chunk from a wrong-sized array)


def encode(codec: str, raw: bytes) -> bytes:
    import gzip as _gzip

    import numcodecs

    if codec == "zstd":
        return bytes(numcodecs.Zstd(level=1).encode(raw))
    if codec == "gzip":
        return _gzip.compress(raw, compresslevel=1)
    if codec == "zlib":
        return bytes(numcodecs.Zlib(level=1).encode(raw))
    if codec == "blosc":
        a = np.frombuffer(raw, dtype="<i4")
        return bytes(numcodecs.Blosc(cname="lz4", clevel=1, shuffle=numcodecs.Blosc.SHUFFLE).encode(a))
    raise ValueError(codec)


def int32_bytes(n_items: int) -> bytes:
    return (np.arange(n_items, dtype="<i4") + 1000).tobytes()


def zstd_strip_content_size(frame: bytes) -> bytes:
    """Rewrite a single-segment zstd frame header so it carries no Frame_Content_Size (the form
    tensorstore writes). The blocks are unchanged and decode the same."""
    assert frame[:4] == b"\x28\xb5\x2f\xfd", "not a zstd frame"
    fhd = frame[4]
    fcs_flag, single, did_flag = fhd >> 6, (fhd >> 5) & 1, fhd & 3
    pos = 6 if not single else 5  # skip the window descriptor when present
    did_size = {0: 0, 1: 1, 2: 2, 3: 4}[did_flag]
    did = frame[pos:pos + did_size]
    pos += did_size
    pos += {0: 1 if single else 0, 1: 2, 2: 4, 3: 8}[fcs_flag]
    new_fhd = fhd & 0b00000111  # keep checksum flag + dict id flag; FCS flag 0, single segment 0
    window_desc = bytes([(17 - 10) << 3])  # 128 KiB window, more than any frame here
    return frame[:4] + bytes([new_fhd]) + window_desc + did + frame[pos:]


# ---------------------------------------------------------------------------------------------
# surgery


def flip_byte(path: Path, pos: int) -> None:
    b = bytearray(path.read_bytes())
    b[pos] ^= 0xFF
    path.write_bytes(bytes(b))


def edit_json(path: Path, fn) -> None:
    meta = json.loads(path.read_text())
    out = fn(meta)
    path.write_text(json.dumps(meta if out is None else out))


def index_size(index_crc: bool, n: int = N_INNER) -> int:
    return 16 * n + (4 if index_crc else 0)


def read_index(buf: bytes, *, index_crc: bool = True, index_location: str = "end", n: int = N_INNER) -> np.ndarray:
    size = index_size(index_crc, n)
    raw = buf[-size:] if index_location == "end" else buf[:size]
    if index_crc:
        assert raw[-4:] == crc32c_le(raw[:-4]), "index checksum of the fixture is already wrong"
    return np.frombuffer(raw[: 16 * n], dtype="<u8").reshape(n, 2).copy()


def encode_index(idx, *, index_crc: bool = True) -> bytes:
    raw = np.asarray(idx, dtype="<u8").reshape(-1, 2).tobytes()
    return raw + crc32c_le(raw) if index_crc else raw


def put_index(buf: bytes, idx, *, index_crc: bool = True, index_location: str = "end") -> bytes:
    """Replace the index of a shard (same size), with a correct crc32c when index_crc."""
    raw = encode_index(idx, index_crc=index_crc)
    if index_location == "end":
        return buf[: len(buf) - len(raw)] + raw
    return raw + buf[len(raw):]


def data_region(buf_len: int, *, index_crc: bool = True, index_location: str = "end") -> tuple[int, int]:
    """[start, stop) of the shard bytes outside the index."""
    size = index_size(index_crc)
    return (0, buf_len - size) if index_location == "end" else (size, buf_len)


# ---------------------------------------------------------------------------------------------
# an fsspec filesystem over local files that fails chosen reads with EIO (not a LocalFileSystem,
# so a reader cannot bypass it with plain os calls)

FAILING_PROTOCOL = "gzflaky"


def failing_filesystem(failing_suffixes):
    """Register (again) the `gzflaky://` protocol: local files, except that reading any path ending
    with one of `failing_suffixes` raises OSError(EIO). Returns the class."""
    import errno
    import os
    import stat as _stat

    import fsspec
    from fsspec.spec import AbstractFileSystem

    suffixes = tuple(failing_suffixes)

    class FailingFileSystem(AbstractFileSystem):
        protocol = FAILING_PROTOCOL
        root_marker = "/"
        cachable = False

        def _check(self, path):
            if path.endswith(suffixes):
                raise OSError(errno.EIO, f"injected I/O error reading {path}")

        def info(self, path, **kwargs):
            path = self._strip_protocol(path)
            st = os.stat(path)
            kind = "directory" if _stat.S_ISDIR(st.st_mode) else "file"
            return {"name": path, "size": st.st_size, "type": kind}

        def ls(self, path, detail=True, **kwargs):
            path = self._strip_protocol(path)
            entries = [self.info(path.rstrip("/") + "/" + n) for n in sorted(os.listdir(path))]
            return entries if detail else [e["name"] for e in entries]

        def _open(self, path, mode="rb", **kwargs):
            path = self._strip_protocol(path)
            self._check(path)
            return open(path, mode)

        def cat_file(self, path, start=None, end=None, **kwargs):
            path = self._strip_protocol(path)
            self._check(path)
            with open(path, "rb") as f:
                data = f.read()
            return data[start:end]

    fsspec.register_implementation(FAILING_PROTOCOL, FailingFileSystem, clobber=True)
    return FailingFileSystem
