"""Compressed bytes stay where fetch put them (issue 10): the GPU layout hands nvCOMP each stream
in place wherever nvCOMP's own alignment query allows (zstd, LZ4, Snappy: any byte; deflate: a
multiple of 4), moves only the streams that miss it, and the CPU stand-in holds every call to
that query's answer. Each read here is checked bit for bit against device="cpu"."""

from __future__ import annotations

import numcodecs
import numpy as np
import pytest
import zarr
from gpu_standin import StandinEngine, nvcomp_alignments

import gpuzarr
from gpuzarr.devices import gpu as gpu_module
from gpuzarr.devices import gpu_layout
from gpuzarr.devices.gpu import GpuDevice
from gpuzarr.errors import CorruptDataError

COMPRESSORS = {
    "blosc-lz4": numcodecs.Blosc("lz4", 5, numcodecs.Blosc.SHUFFLE, blocksize=2048),
    "blosc-zstd": numcodecs.Blosc("zstd", 3, numcodecs.Blosc.BITSHUFFLE, blocksize=2048),
    "blosc-zlib": numcodecs.Blosc("zlib", 5, numcodecs.Blosc.NOSHUFFLE, blocksize=2048),
    "zlib": numcodecs.Zlib(5),
    "gzip": numcodecs.GZip(5),
    "lz4": numcodecs.LZ4(),
    "zstd": numcodecs.Zstd(3),
}


def _nvcomp_library() -> str | None:
    """Why nvCOMP's library cannot answer its alignment query here, or None."""
    try:
        from gpuzarr.devices import nvcomp_capi

        nvcomp_capi.load()
    except (ImportError, OSError, AttributeError) as exc:
        return f"nvCOMP's library is not loadable ({exc}): gpu_layout lays out at ALIGN everywhere"
    return None


# the tests that rest on nvCOMP's own answer (1 but for deflate's 4), not on the fallback
needs_nvcomp = pytest.mark.skipif(_nvcomp_library() is not None, reason=str(_nvcomp_library()))


def _v2(tmp_path, name: str, data: np.ndarray | None = None, chunks=(16, 64)) -> tuple[str, np.ndarray]:
    if data is None:
        data = (np.arange(64 * 64, dtype="<u2").reshape(64, 64) % 251).astype("<u2")
    path = str(tmp_path / name)
    z = zarr.create_array(path, shape=data.shape, chunks=chunks, dtype=data.dtype, zarr_format=2,
                          compressors=COMPRESSORS[name])
    z[...] = data
    return path, data


def _read_spied(path: str, monkeypatch) -> tuple[np.ndarray, list, StandinEngine]:
    """The array read through the GPU orchestration's stand-in, and (batch, layout) of each batch."""
    seen = []
    real = gpu_module.build_layout

    def spy(batch, *args, **kw):
        seen.append((batch, real(batch, *args, **kw)))
        return seen[-1][1]

    monkeypatch.setattr(gpu_module, "build_layout", spy)
    engine = StandinEngine()
    got = gpuzarr.open(path, device=GpuDevice(engine)).read()
    return got, seen, engine


def _cpu(path: str) -> np.ndarray:
    return gpuzarr.open(path, device="cpu").read()


@needs_nvcomp
@pytest.mark.parametrize("name", ["blosc-lz4", "blosc-zstd", "lz4", "zstd"])
def test_streams_nvcomp_reads_at_any_byte_are_uploaded_where_fetch_put_them(tmp_path, monkeypatch, name):
    path, data = _v2(tmp_path, name)
    got, seen, _ = _read_spied(path, monkeypatch)
    np.testing.assert_array_equal(got, _cpu(path))
    np.testing.assert_array_equal(got, data)
    for batch, layout in seen:
        assert layout.staging is batch.staging  # no repack, no copy: the fetched buffer is uploaded
        for table in layout.streams.values():  # each stream points into its frame
            assert (table["src"] >= 0).all() and (table["src"] + table["src_size"] <= batch.staging.size).all()
    if name.startswith("blosc"):  # blosc's streams sit after headers and size prefixes: not at multiples of 16
        srcs = np.concatenate([t["src"] for _, layout in seen for t in layout.streams.values()])
        assert (srcs % gpu_layout.ALIGN != 0).any()


@needs_nvcomp
@pytest.mark.parametrize("name", ["zlib", "gzip"])
def test_deflate_streams_are_moved_to_multiples_of_four_and_nothing_else_is_copied(tmp_path, monkeypatch, name):
    """nvCOMP's deflate input alignment is 4; a zlib body starts 2 bytes into its chunk, a gzip
    body 10: each is moved, and staging holds those bodies alone (no copy of the fetched buffer)."""
    path, data = _v2(tmp_path, name)
    got, seen, engine = _read_spied(path, monkeypatch)
    np.testing.assert_array_equal(got, _cpu(path))
    np.testing.assert_array_equal(got, data)
    align = nvcomp_alignments()["deflate"][0]
    for batch, layout in seen:
        table = layout.streams["deflate"]
        assert not (table["src"] % align).any()
        assert layout.staging is not batch.staging
        assert layout.staging.size <= int(table["src_size"].sum()) + align * table["src_size"].size
    assert engine.calls["decompress:deflate"] == len(seen)


@needs_nvcomp
def test_blosc_zlib_streams_are_moved_only_where_misaligned(tmp_path, monkeypatch):
    """blosc's zlib streams lie at any offset: those at multiples of 4 are read in place, the others
    moved after a copy of the fetched bytes (which the in-place ones point into)."""
    data = np.random.default_rng(1).integers(0, 16, (64, 64)).astype("<u2")
    path, _ = _v2(tmp_path, "blosc-zlib", data)
    got, seen, _ = _read_spied(path, monkeypatch)
    np.testing.assert_array_equal(got, _cpu(path))
    np.testing.assert_array_equal(got, data)
    [(batch, layout)] = seen
    src = layout.streams["deflate"]["src"]
    assert not (src % 4).any()
    assert (src < batch.staging.size).any() and (src >= batch.staging.size).any()  # in place, and moved
    assert (layout.staging[:batch.staging.size] == batch.staging).all()  # the fetched bytes first


@pytest.mark.parametrize("name", sorted(COMPRESSORS))
def test_with_nvcomp_asking_sixteen_everywhere_every_stream_moves_and_decodes_the_same(tmp_path, monkeypatch,
                                                                                       name):
    """What gpu_layout does without nvCOMP's library (ALIGN for every buffer): the moved path for
    every stream kind and the temp path for every output, bit-identical still."""
    monkeypatch.setattr(gpu_layout, "decode_alignments",
                        lambda: {kind: (gpu_layout.ALIGN, gpu_layout.ALIGN) for kind in ("zstd", "deflate", "lz4",
                                                                                          "snappy")})
    path, data = _v2(tmp_path, name, np.arange(50 * 50, dtype="<u2").reshape(50, 50) % 97, chunks=(7, 50))
    got, seen, _ = _read_spied(path, monkeypatch)
    np.testing.assert_array_equal(got, _cpu(path))
    np.testing.assert_array_equal(got, data)
    for _, layout in seen:
        for table in layout.streams.values():
            assert not (table["src"] % gpu_layout.ALIGN).any() and not (table["dst"] % gpu_layout.ALIGN).any()


@needs_nvcomp
def test_a_chunk_decoded_on_the_host_joins_a_batch_read_in_place(tmp_path, monkeypatch):
    """A blosclz chunk (no nvCOMP decoder: decoded on the CPU, its bytes staged) among lz4 ones:
    staging is the fetched bytes, then the host's; every chunk right."""
    data = (np.arange(64 * 64, dtype="<u2").reshape(64, 64) % 251).astype("<u2")
    data[16:32] = np.arange(64, dtype="<u2") // 4  # compressible by blosclz: not stored memcpyed
    path, _ = _v2(tmp_path, "blosc-lz4", data)
    odd = numcodecs.Blosc("blosclz", 5, numcodecs.Blosc.SHUFFLE).encode(np.ascontiguousarray(data[16:32]).tobytes())
    assert not odd[2] & 2  # not memcpyed
    with open(f"{path}/1.0", "wb") as f:
        f.write(odd)
    got, seen, _ = _read_spied(path, monkeypatch)
    np.testing.assert_array_equal(got, data)
    [(batch, layout)] = seen
    assert [batch.labels[i] for i in layout.cpu_fallback] == ["1.0"]
    assert (layout.staging[:batch.staging.size] == batch.staging).all()
    assert (layout.copies["src"] >= batch.staging.size).any()


def test_a_corrupt_stream_read_in_place_fails_naming_its_chunk(tmp_path, monkeypatch):
    data = (np.arange(64 * 64, dtype="<u2").reshape(64, 64) % 251).astype("<u2")
    path, _ = _v2(tmp_path, "lz4", data)
    chunk = tmp_path / "lz4" / "2.0"
    raw = bytearray(chunk.read_bytes())
    raw[4:] = b"\xff" * (len(raw) - 4)  # the size prefix holds; the LZ4 block does not
    chunk.write_bytes(bytes(raw))
    with pytest.raises(CorruptDataError):
        _cpu(path)
    with pytest.raises(CorruptDataError, match="2.0"):
        _read_spied(path, monkeypatch)


@needs_nvcomp
def test_the_standin_refuses_a_stream_nvcomp_could_not_read_there(tmp_path):
    """The stand-in holds each call to nvCOMP's queried alignment: a deflate stream 2 bytes past a
    multiple of 4 (where a zlib body starts) fails the layout, as nvCOMP would refuse it."""
    path, _ = _v2(tmp_path, "zlib")
    arr = gpuzarr.open(path, device="cpu")
    from gpuzarr.fetch import fetch

    reader = arr._reader
    loc = reader.locator.locate(np.array([[0, 0]]))
    batch = fetch(arr.store, loc, np.arange(1), align=gpu_layout.ALIGN)
    layout = gpu_layout.build_layout(batch, reader.locator.leaf_chain, lambda i: None)
    table = dict(layout.streams["deflate"])
    assert nvcomp_alignments()["deflate"][0] > 1, "nvCOMP no longer asks deflate inputs for alignment"
    table["src"] = table["src"] + 2
    staging = np.concatenate([layout.staging, np.zeros(2, np.uint8)])
    with pytest.raises(AssertionError, match="deflate inputs not at multiples of 4"):
        StandinEngine().decompress("deflate", staging, np.zeros(layout.work_nbytes, np.uint8), table, layout)


@needs_nvcomp
def test_sharded_zstd_chunks_land_back_to_back_and_are_read_there(tmp_path, monkeypatch):
    """nvCOMP reads zstd frames at any byte: fetch reads each coalesced range of a shard into one
    buffer (no per-chunk padding), and that buffer is uploaded as is (fetch_align)."""
    data = (np.arange(96 * 80, dtype="<u2").reshape(96, 80) * 7 % 1009).astype("<u2")
    path = str(tmp_path / "sharded.zarr")
    z = zarr.create_array(path, shape=data.shape, chunks=(8, 16), shards=(32, 80), dtype=data.dtype,
                          compressors=zarr.codecs.ZstdCodec(level=1), zarr_format=3)
    z[...] = data
    chain = gpuzarr.open(path, device="cpu")._reader.locator.leaf_chain
    assert gpu_layout.fetch_align(chain) == nvcomp_alignments()["zstd"][0] == 1
    got, seen, _ = _read_spied(path, monkeypatch)
    np.testing.assert_array_equal(got, data)
    for batch, layout in seen:
        assert layout.staging is batch.staging
        assert batch.staging.size == int(batch.sizes.sum())  # no padding between chunks
        assert (batch.offsets % 16 != 0).any()  # frames at odd offsets, read there


def test_fetch_align_pads_only_stored_chunks(tmp_path):
    """Chunks with no compressor start at ALIGN (the copy kernel's 16-byte words); streams behind
    a header (blosc, gzip, zlib, LZ4's size prefix) are not aligned by their chunk's start: 1."""
    def chain_of(compressor):
        path = str(tmp_path / f"{compressor}.zarr")
        zarr.create_array(path, shape=(8,), chunks=(4,), dtype="<u2", zarr_format=2, compressors=compressor)
        return gpuzarr.open(path, device="cpu")._reader.locator.leaf_chain

    assert gpu_layout.fetch_align(chain_of(None)) == gpu_layout.ALIGN
    for name in ("blosc-lz4", "gzip", "zlib", "lz4"):
        assert gpu_layout.fetch_align(chain_of(COMPRESSORS[name])) == 1
