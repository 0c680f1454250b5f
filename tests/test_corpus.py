"""The corpus itself: every case writes, and zarr-python reads back exactly what was written.

This needs no gpuzarr: it checks that the fixtures the conformance tests rely on are what they
claim to be (including the hand-made zstd frames without a content size).
"""

from __future__ import annotations

import collections
import os

import numpy as np
import pytest

from checks import assert_identical, open_zarr_array
from corpus import ARRAY_CASES, CASES, GROUP_CASES, WRITERS, ZSTD_MAGIC


@pytest.mark.parametrize("case", CASES, ids=str)
def test_corpus_roundtrip_zarr_python(corpus, case):
    import zarr

    path = corpus.path(case.name)
    if case.kind == "group":
        zg = zarr.open_group(str(path), mode="r")
        for member, want in case.expected().items():
            assert_identical(zg[member][...], want, f"{case.name}/{member}")
        return
    if case.reference == "source":
        import tensorstore as ts

        spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": str(path)}}
        want = case.expected()
        for field in want.dtype.names or [None]:  # tensorstore opens a struct one field at a time
            t = ts.open({**spec, "field": field} if field else spec).result()
            assert_identical(t.read().result(), want[field] if field else want,
                             f"{case.name}{'.' + field if field else ''} (read by tensorstore)")
        try:
            z = open_zarr_array(path)
        except Exception:
            return  # zarr-python refuses it: why the source is the reference for this case
    else:
        z = open_zarr_array(path)
    assert_identical(z[...], case.expected(), case.name)


def test_corpus_covers_every_writer():
    counts = collections.Counter(c.writer for c in CASES)
    assert set(counts) == set(WRITERS), counts
    assert len({c.name for c in CASES}) == len(CASES)
    assert len(GROUP_CASES) >= 4 and len(ARRAY_CASES) >= 250


def _frame_has_content_size(frame: bytes) -> bool:
    fhd = frame[4]
    return bool(fhd >> 6) or bool((fhd >> 5) & 1)  # FCS flag, or single segment (then FCS is there)


@pytest.mark.parametrize("case", [c for c in CASES if "zstd-no-fcs" in c.tags], ids=str)
def test_hand_zstd_frames_have_no_content_size(corpus, case):
    frames = 0
    for root, _dirs, files in os.walk(corpus.path(case.name)):
        for f in files:
            blob = open(os.path.join(root, f), "rb").read()
            starts = [i for i in range(len(blob) - 4) if blob[i:i + 4] == ZSTD_MAGIC]
            for i in starts:
                assert not _frame_has_content_size(blob[i:]), f"{f}@{i} still has a content size"
                frames += 1
    assert frames > 0


def test_sharded_partial_cases_leave_inner_chunks_empty(corpus):
    """The 'empty inner chunk' cases really hold index entries of 2^64-1 (index at the end, crc32c)."""
    path = corpus.path("zp3_shard_partial_empty_inner")
    blob = (path / "c" / "0" / "0").read_bytes()
    index = np.frombuffer(blob[-(16 * 16 + 4):-4], "<u8").reshape(-1, 2)
    empty = (index == np.iinfo(np.uint64).max).all(axis=1)
    assert empty.any() and not empty.all()
