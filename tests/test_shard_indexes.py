"""Shard indexes decoded together (Sharding.decode_indexes, what a read with an empty index cache
does for every shard it touches) against one by one (decode_index), on shards zarr-python wrote:
both index locations, either byte order, with and without crc32c, shard sizes known or not; a
corrupt index among good ones raises the error decode_index gives for it alone."""

from __future__ import annotations

import crc32c
import numpy as np
import pytest
import zarr
from zarr.codecs import BytesCodec, Crc32cCodec, ShardingCodec

import gpuzarr
from gpuzarr.codecs.sharding import EMPTY
from gpuzarr.errors import CorruptDataError


def _shards(root, location: str, endian: str, crc: bool):
    """(Sharding, raw index per shard, shard sizes, keys) of a 64^2 array in 2x2 shards, some
    chunks unwritten (empty entries)."""
    codecs = [BytesCodec(endian=endian)] + ([Crc32cCodec()] if crc else [])
    sharding = ShardingCodec(chunk_shape=(8, 8), codecs=[BytesCodec()], index_codecs=codecs,
                             index_location=location)
    arr = zarr.create_array(str(root), shape=(64, 64), chunks=(32, 32), dtype="u2", serializer=sharding,
                            compressors=None)
    arr[:40, :50] = np.arange(40 * 50, dtype="u2").reshape(40, 50)
    (_, sharding), = gpuzarr.open(str(root))._reader.locator.levels
    n = sharding.index_nbytes((32, 32))
    raws, sizes, keys = [], [], []
    for i in range(2):
        for j in range(2):
            blob = (root / "c" / str(i) / str(j)).read_bytes()
            raws.append(blob[:n] if location == "start" else blob[-n:])
            sizes.append(len(blob))
            keys.append(f"c/{i}/{j}")
    return sharding, raws, sizes, keys


def _with_crc(body: bytes) -> bytes:
    return body + crc32c.crc32c(body).to_bytes(4, "little")


@pytest.mark.parametrize("location", ["start", "end"])
@pytest.mark.parametrize("endian", ["little", "big"])
@pytest.mark.parametrize("crc", [True, False])
def test_indexes_decoded_together_equal_one_by_one(tmp_path, location, endian, crc):
    sharding, raws, sizes, keys = _shards(tmp_path / "a.zarr", location, endian, crc)
    for known in (sizes, [None] * len(sizes)):
        together = sharding.decode_indexes(raws, (32, 32), keys, known)
        alone = [sharding.decode_index(r, (32, 32), k, s) for r, k, s in zip(raws, keys, known)]
        assert len(together) == len(alone) == 4
        for a, b in zip(together, alone):
            assert a.dtype == b.dtype == np.uint64 and a.flags.writeable
            np.testing.assert_array_equal(a, b)
        # shard 0/0 written whole; the others in part (their other entries empty)
        assert (together[0][:, 1] != EMPTY).all()
        assert all((t[:, 1] == EMPTY).any() and (t[:, 1] != EMPTY).any() for t in together[1:])


def _corrupt(raw: bytes, endian: str, crc: bool, entry: int, offset: int, size: int) -> bytes:
    body = bytearray(raw[:-4] if crc else raw)
    body[16 * entry:16 * entry + 16] = np.array([offset, size], np.dtype("u8").newbyteorder(
        "<" if endian == "little" else ">")).tobytes()
    return _with_crc(bytes(body)) if crc else bytes(body)


@pytest.mark.parametrize("location", ["start", "end"])
@pytest.mark.parametrize("crc", [True, False])
@pytest.mark.parametrize("fault", ["marker", "overflow", "past 2**63", "past the end", "inside the index",
                                   "checksum", "truncated"])
def test_a_corrupt_index_among_good_ones_raises_its_own_error(tmp_path, location, crc, fault):
    sharding, raws, sizes, keys = _shards(tmp_path / "a.zarr", location, "little", crc)
    big = 2**64 - 1
    bad = {"marker": (big, 10), "overflow": (2**63, 2**63 + 5), "past 2**63": (2**62, 2**62 + 7),
           "past the end": (sizes[2] - 3, 100), "inside the index": (0, 8)}
    if fault == "inside the index" and location == "end":
        pytest.skip("an index at the end has no bytes before it that chunks may not use")
    if fault == "checksum":
        if not crc:
            pytest.skip("no checksum to break")
        raws[2] = raws[2][:-1] + bytes([raws[2][-1] ^ 1])
    elif fault == "truncated":
        raws[2] = raws[2][:-1]
    else:
        raws[2] = _corrupt(raws[2], "little", crc, 5, *bad[fault])
    with pytest.raises(CorruptDataError) as alone:
        sharding.decode_index(raws[2], (32, 32), keys[2], sizes[2])
    with pytest.raises(CorruptDataError) as together:
        sharding.decode_indexes(raws, (32, 32), keys, sizes)
    assert str(together.value) == str(alone.value) and keys[2] in str(together.value)
