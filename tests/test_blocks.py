"""Placement by blocks (Plan.blocks, Plan.block_pieces, placement.place_block) and the CPU's
batched blosc decode (Blosc.decode_rows): the box tables themselves, then reads through them
against reads with blocks switched off (chunk by chunk) and against the NumPy source written
by zarr-python."""

from __future__ import annotations

import contextlib
import itertools
import math

import numcodecs
import numpy as np
import pytest
import zarr
from checks import poisoned_empty, pooled_reads
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from zarr.core.indexing import decode_morton

import gpuzarr
from gpuzarr import host_lib, small_read
from gpuzarr.codecs import bytes_to_bytes
from gpuzarr.codecs.bytes_to_bytes import Blosc
from gpuzarr.devices import cpu
from gpuzarr.devices.cpu import CpuDevice
from gpuzarr.errors import CorruptDataError
from gpuzarr.placement import _zorder, place_block
from gpuzarr.plan import Blocks, Plan, _split_range, make_plan
from gpuzarr.selection import normalize

FILL = 9  # not what fresh memory holds: a chunk left unwritten shows
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _plan(sel, shape, chunks, batched=False):
    windows = [normalize(s, shape) for s in sel] if batched else [normalize(sel, shape)]
    return make_plan(windows, chunks, batched)


@pytest.fixture(scope="module")
def narrow_chunks(tmp_path_factory):
    """Arrays whose chunks are 1-3 wide, so integer arrays pick whole chunks, in any order."""
    made = []
    for k, (shape, chunks) in enumerate([((12, 9), (1, 3)), ((7, 10), (2, 1)), ((5, 6, 4), (1, 2, 1)), ((16,), (1,))]):
        path = str(tmp_path_factory.mktemp("narrow") / f"a{k}")
        data = np.arange(math.prod(shape), dtype=np.int32).reshape(shape)
        z = zarr.create_array(path, shape=shape, chunks=chunks, dtype=data.dtype, fill_value=0)
        z[...] = data
        made.append((path, data))
    return made


@SETTINGS
@given(data=st.data())
def test_chunks_an_integer_array_picks_are_placed_where_it_says(narrow_chunks, monkeypatch, data):
    """Reads on the pool, by parts, where whole chunks are placed as tiles of a box (whole_box):
    chunks picked by an integer array, out of order or repeated, go where the array puts them.
    Before, they were tiled in grid order (wrong values, or a ValueError of a reshape)."""
    monkeypatch.setattr(cpu, "SPLIT_SECONDS", 0.0)  # small reads split over the pool too
    path, source = data.draw(st.sampled_from(narrow_chunks))
    sel = tuple(np.array(data.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=6)))
                if data.draw(st.booleans()) else slice(None) for n in source.shape)
    arr = gpuzarr.open(path, device=CpuDevice(threads=2))
    want = source[np.ix_(*[np.arange(n)[s] for s, n in zip(sel, source.shape)])]
    np.testing.assert_array_equal(arr.oindex[sel], want)


@pytest.mark.parametrize("extent", [(7,), (2, 3), (3, 4, 5), (2, 1, 3, 2)])
def test_split_range_tiles_the_range_with_boxes(extent):
    """Every a..b-1 of every box: the pieces, in order, cover exactly a..b-1, each is a box of
    the grid in C order, and there are at most 2*ndim-1 of them."""
    grid = np.arange(math.prod(extent)).reshape(extent)
    for a, b in itertools.combinations(range(grid.size + 1), 2):
        pieces = _split_range(list(extent), a, b)
        assert len(pieces) <= 2 * len(extent) - 1
        covered = []
        for offset, part in pieces:
            corner = np.unravel_index(offset, extent)
            box = grid[tuple(slice(c, c + e) for c, e in zip(corner, part))]
            assert box.shape == part
            assert box.reshape(-1).tolist() == list(range(offset, offset + box.size))
            covered += box.reshape(-1).tolist()
        assert covered == list(range(a, b))


def test_full_read_is_one_box():
    plan = _plan((slice(None),) * 2, (64, 96), (16, 32))
    found = plan.blocks((16, 32))
    assert (found.lo, found.hi, found.extent, found.out_start) == ([0], [12], [[4, 3]], [[0, 0]])


def test_edge_chunks_and_partial_chunks_are_left_out():
    """An edge chunk cropped by the array, or a window cutting chunks, is placed chunk by chunk."""
    plan = _plan((slice(None),) * 2, (40, 40), (16, 16))  # 3x3 chunks, the last row and column cropped
    found = plan.blocks((16, 16))
    assert (found.lo, found.hi, found.extent) == ([0, 3], [2, 5], [[1, 2], [1, 2]])
    plan = _plan((slice(8, 56), slice(16, 48)), (64, 64), (16, 16))  # rows cut at 8 and 56
    found = plan.blocks((16, 16))
    assert found.extent == [[2, 2]] and found.out_start == [[8, 0]]


@pytest.mark.parametrize("sel", [(slice(None, None, 2), slice(None)), (3, slice(None)), (slice(None, None, -1),) * 2])
def test_steps_integers_and_reversed_windows_make_no_boxes(sel):
    assert _plan(sel, (8, 8), (2, 2)).blocks((2, 2)) == Blocks.none(2)


def test_batch_windows_never_share_a_box():
    """Two aligned windows side by side are two boxes: their chunks land in different windows."""
    plan = _plan([(slice(0, 4), slice(0, 8)), (slice(0, 4), slice(8, 16))], (8, 16), (4, 4), batched=True)
    found = plan.blocks((4, 4))
    assert sorted(zip(found.window, map(tuple, found.extent))) == [(0, (1, 2)), (1, (1, 2))]


def test_a_chunk_read_twice_is_not_in_a_box():
    plan = _plan([(slice(0, 4), slice(0, 8)), (slice(0, 4), slice(4, 12))], (8, 16), (4, 4), batched=True)
    found = plan.blocks((4, 4))
    assert found.lo == [] or all(hi - lo > 1 for lo, hi in zip(found.lo, found.hi))
    shared = int(np.flatnonzero((plan.chunks == [0, 1]).all(axis=1))[0])
    assert not any(lo <= shared < hi for lo, hi in zip(found.lo, found.hi))


def test_a_plan_in_a_shards_morton_order_looks_for_no_boxes():
    """Reordered for storage (sharded: Morton order in each shard), a plan's boxes would be of
    two or four chunks, inside no task's part: none are looked for. The grid check itself: strictly
    increasing C order, in any number of dimensions."""
    from gpuzarr.plan import _c_ordered

    plan = _plan((slice(None),) * 2, (64, 64), (16, 16))
    morton = np.array([decode_morton(i, (4, 4)) for i in range(16)])
    order = np.array([int(np.flatnonzero((plan.chunks == c).all(axis=1))[0]) for c in morton])
    assert plan.blocks((16, 16)).extent == [[4, 4]]
    assert plan.reorder(order).blocks((16, 16)) == Blocks.none(2)
    grid = np.array(np.unravel_index(np.arange(24), (2, 3, 4))).T
    assert _c_ordered(grid) and _c_ordered(grid[::5]) and _c_ordered(np.array([[3], [9]]))
    assert not _c_ordered(grid[::-1]) and not _c_ordered(grid[[0, 2, 1]]) and not _c_ordered(grid[[4, 4]])
    assert _c_ordered(np.array([[0, 2**62], [2**62, 0]]))  # no linear index: grids of any size


def test_block_pieces_cut_a_box_at_a_range():
    plan = _plan((slice(None),) * 2, (64, 64), (16, 16))  # one 4x4 box
    assert plan.block_pieces(5, 14, (16, 16)) == [(0, 3, (1, 3), (16, 16), 0), (3, 7, (1, 4), (32, 0), 0),
                                                  (7, 9, (1, 2), (48, 0), 0)]
    assert plan.block_pieces(3, 5, (16, 16)) == []  # two single chunks: nothing to gain


def test_place_block_matches_chunk_by_chunk_in_3d():
    rng = np.random.default_rng(1)
    chunks = rng.integers(0, 1000, size=(2 * 3 * 2, 2, 3, 4)).astype(np.int32)
    out = np.zeros((3, 9, 12, 10), np.int32)
    place_block(out, chunks, (2, 3, 2), (1, 2, 1), 1)
    want = np.zeros_like(out)
    for k, (a, b, c) in enumerate(itertools.product(range(2), range(3), range(2))):
        want[1, 1 + 2 * a:3 + 2 * a, 2 + 3 * b:5 + 3 * b, 1 + 4 * c:5 + 4 * c] = chunks[k]
    np.testing.assert_array_equal(out, want)


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_place_block_of_tiles_in_any_order_equals_tile_by_tile(data):
    """place_block with `tiles`: zarr's Morton order of a power-of-two box (one strided copy
    through a view of each axis's binary digits) and any other order (an indexed assignment)
    both put each chunk at its tile."""
    ndim = data.draw(st.integers(1, 3))
    extent = tuple(data.draw(st.sampled_from([1, 2, 3, 4, 8])) for _ in range(ndim))
    chunk_shape = tuple(data.draw(st.integers(1, 3)) for _ in range(ndim))
    n = math.prod(extent)
    z = _zorder(extent)
    if z is not None and data.draw(st.booleans()):
        order = [tuple(int(t[i]) for t in z.tiles) for i in range(n)]
        assert order == [decode_morton(i, extent) for i in range(n)]  # zarr's own order
    else:
        order = data.draw(st.permutations(list(itertools.product(*(range(e) for e in extent)))))
        order = order[:data.draw(st.integers(1, n))]
    tiles = tuple(np.array([o[d] for o in order]) for d in range(ndim))
    chunks = np.arange(len(order) * math.prod(chunk_shape), dtype=np.int32).reshape((len(order),) + chunk_shape)
    start = tuple(data.draw(st.integers(0, 2)) for _ in range(ndim))
    out = np.full(tuple(s + e * c + 1 for s, e, c in zip(start, extent, chunk_shape)), -1, np.int32)
    want = out.copy()
    for k, tile in enumerate(order):
        want[tuple(slice(s + t * c, s + (t + 1) * c) for s, t, c in zip(start, tile, chunk_shape))] = chunks[k]
    place_block(out, chunks, extent, start, None, tiles)
    np.testing.assert_array_equal(out, want)


def _no_blocks(monkeypatch):
    monkeypatch.setattr(Plan, "blocks", lambda self, chunk_shape: Blocks.none(len(chunk_shape)))
    monkeypatch.setattr(cpu, "part_boxes", lambda *args: [])  # what the CPU device places boxes by


@st.composite
def _aligned_cases(draw):
    ndim = draw(st.integers(1, 3))
    chunks = tuple(draw(st.integers(1, 4)) for _ in range(ndim))
    shape = tuple(c * draw(st.integers(1, 4)) + draw(st.sampled_from([0, 0, 1])) for c in chunks)

    def window():  # mostly chunk-aligned, sometimes cut
        sel = []
        for n, c in zip(shape, chunks):
            a = draw(st.integers(0, n - 1))
            a = a // c * c if draw(st.booleans()) else a
            b = draw(st.integers(a + 1, n))
            sel.append(slice(a, min(n, -(-b // c) * c) if draw(st.booleans()) else b))
        return tuple(sel)
    return shape, chunks, [window() for _ in range(draw(st.integers(1, 4)))], draw(st.sampled_from([2, 3]))


@SETTINGS
@given(case=_aligned_cases(), group_chunks=st.integers(1, 9), codec=st.sampled_from(["blosc", "zstd", "none"]),
       holes=st.sets(st.integers(0, 63), max_size=3))
def test_reads_by_blocks_equal_chunk_by_chunk_and_the_source(tmp_path_factory, monkeypatch, case, group_chunks, codec,
                                                             holes):
    """Whatever the boxes and however tasks cut them (GROUP_BYTES down to one chunk), a read and
    a read_batch equal the source and the same read with blocks switched off; chunks of the
    fill value (`holes`: zarr-python writes no file for them) read as the fill value."""
    shape, chunks, windows, fmt = case
    path = tmp_path_factory.mktemp("blocks") / "a.zarr"
    data = np.arange(math.prod(shape), dtype="<u2").reshape(shape) * 7 + 3
    grid = tuple(-(-n // c) for n, c in zip(shape, chunks))
    for hole in holes:
        at = np.unravel_index(hole % math.prod(grid), grid)
        data[tuple(slice(i * c, (i + 1) * c) for i, c in zip(at, chunks))] = FILL
    compressors = {"none": None, "zstd": numcodecs.Zstd(level=1) if fmt == 2 else zarr.codecs.ZstdCodec(),
                   "blosc": numcodecs.Blosc("lz4", shuffle=1) if fmt == 2 else zarr.codecs.BloscCodec(cname="lz4")}
    z = zarr.create_array(str(path), shape=shape, chunks=chunks, dtype="<u2", zarr_format=fmt,
                          compressors=compressors[codec], fill_value=FILL)
    z[...] = data
    monkeypatch.setattr(cpu, "GROUP_BYTES", group_chunks * math.prod(chunks) * 2)
    monkeypatch.setattr(cpu, "SPLIT_SECONDS", 0.0)  # through the pool's task split, not inline
    monkeypatch.setattr(CpuDevice, "empty", poisoned_empty)
    got = {}
    for mode in ("blocks", "each"):
        if mode == "each":
            _no_blocks(monkeypatch)
        arr = gpuzarr.open(str(path), device=CpuDevice(2))
        got[mode] = ([arr[w] for w in windows], arr.read_batch(windows) if len({_shape(w) for w in windows}) == 1
                     else None, arr[...])
    for mode, (each, batch, whole) in got.items():
        for w, g in zip(windows, each):
            np.testing.assert_array_equal(g, data[w], err_msg=f"{mode} {w}")
        if batch is not None:
            np.testing.assert_array_equal(batch, np.stack([data[w] for w in windows]), err_msg=mode)
        np.testing.assert_array_equal(whole, data, err_msg=mode)


def _shape(window):
    return tuple(s.stop - s.start for s in window)


def test_a_missing_chunk_inside_a_box_reads_as_fill(tmp_path):
    path = tmp_path / "a.zarr"
    z = zarr.create_array(str(path), shape=(8, 8), chunks=(2, 2), dtype="<u2", zarr_format=2,
                          compressors=numcodecs.Blosc("lz4"), fill_value=9)
    data = np.arange(64, dtype="<u2").reshape(8, 8)
    z[...] = data
    (path / "1.2").unlink()
    data[2:4, 4:6] = 9
    np.testing.assert_array_equal(gpuzarr.open(str(path), device=CpuDevice(1))[...], data)


def _frames(n=6, nbytes=4096):
    rng = np.random.default_rng(3)
    codec = numcodecs.Blosc("lz4", shuffle=numcodecs.Blosc.SHUFFLE, blocksize=1024)
    raws = [(rng.integers(0, 50, nbytes // 2).astype("<u2") + i).tobytes() for i in range(n)]
    frames = [codec.encode(r) for r in raws]
    staging = np.frombuffer(b"".join(frames), np.uint8).copy()
    sizes = np.array([len(f) for f in frames], np.int64)
    return staging, np.cumsum(sizes) - sizes, sizes, raws


@pytest.mark.parametrize("direct", [True, False])
def test_decode_rows_equals_numcodecs(monkeypatch, direct):
    """c-blosc through ctypes and the numcodecs fallback give numcodecs' bytes."""
    if not direct:
        monkeypatch.setattr(bytes_to_bytes, "_blosc_ctx", lambda: None)
    elif bytes_to_bytes._blosc_ctx() is None:
        pytest.skip("this numcodecs build does not export blosc_decompress_ctx")
    staging, offsets, sizes, raws = _frames()
    rows = np.zeros((len(raws), 4096), np.uint8)
    Blosc("blosc").decode_rows(staging, offsets, sizes, rows, [f"c{i}" for i in range(len(raws))])
    assert [r.tobytes() for r in rows] == raws
    one = np.zeros(4096, np.uint8)
    Blosc("blosc").decode_into(memoryview(staging)[offsets[2]:offsets[2] + sizes[2]], one)
    assert one.tobytes() == raws[2]


@pytest.mark.parametrize("fault, message", [
    ("cbytes", "c3: blosc header says"), ("nbytes", "c3: blosc frame header says it decodes to 4098 bytes, the chunk needs 4096"),
    ("short", "c3: blosc frame of 10 bytes is shorter"), ("payload", "c3: cannot decode blosc frame"),
])
def test_decode_rows_names_the_bad_frame(fault, message):
    staging, offsets, sizes, raws = _frames()
    at = int(offsets[3])
    if fault == "cbytes":
        staging[at + 12] ^= 1
    elif fault == "nbytes":
        staging[at + 4:at + 8] = np.frombuffer((4098).to_bytes(4, "little"), np.uint8)
    elif fault == "short":
        sizes[3] = 10
    else:  # the first stream's compressed size made huge: c-blosc refuses the block
        bstart = int.from_bytes(staging[at + 16:at + 20].tobytes(), "little")
        staging[at + bstart:at + bstart + 4] = 0xFF
    rows = np.zeros((len(raws), 4096), np.uint8)
    with pytest.raises(CorruptDataError, match=message):
        Blosc("blosc").decode_rows(staging, offsets, sizes, rows, [f"c{i}" for i in range(len(raws))])


def test_a_full_read_is_placed_by_one_copy_per_task(tmp_path, monkeypatch):
    """4x4 whole chunks, two tasks of 8: two strided copies, no chunk placed on its own."""
    path = tmp_path / "a.zarr"
    z = zarr.create_array(str(path), shape=(16, 16), chunks=(4, 4), dtype="<u2", zarr_format=2,
                          compressors=numcodecs.Blosc("lz4"), fill_value=0)
    data = np.arange(256, dtype="<u2").reshape(16, 16)
    z[...] = data
    calls = {"block": 0, "each": 0}

    def counted(name, fn):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return wrapper
    monkeypatch.setattr(cpu, "place_block", counted("block", cpu.place_block))
    monkeypatch.setattr(cpu, "_decode_each_and_place", counted("each", cpu._decode_each_and_place))
    monkeypatch.setattr(cpu, "GROUP_BYTES", 8 * 32)
    with pooled_reads():
        np.testing.assert_array_equal(gpuzarr.open(str(path), device=CpuDevice(2))[...], data)
    assert calls == {"block": 2, "each": 0}


def _nan_payloads(dtype: np.dtype, n: int) -> np.ndarray:
    """Values whose bits a float conversion could change: quiet and signalling NaNs with
    payloads, -0.0, infinities, subnormals, then random bits."""
    bits = np.random.default_rng(7).integers(0, 256, n * dtype.itemsize, dtype=np.uint8)
    special = {2: [0x7C01, 0x7E55, 0xFC01, 0x8000, 0x7C00, 0x0001],
               4: [0x7F800001, 0x7FC12345, 0xFF800123, 0x80000000, 0x7F800000, 0x00000001],
               8: [0x7FF0000000000001, 0x7FF8DEADBEEF0001, 0xFFF0000000000123, 1 << 63, 0x7FF0 << 48, 1]}
    out = bits.view(f"<u{dtype.itemsize}").copy()
    out[:len(special[dtype.itemsize])] = special[dtype.itemsize]
    return out.view(f"<f{dtype.itemsize}")


@pytest.mark.parametrize("dtype", ["f2", "f4", "f8", "c8", "i2", "u8", "M8[ns]"])
@pytest.mark.parametrize("fmt", [2, 3])
def test_big_endian_chunks_are_swapped_by_the_placing_copy(tmp_path, monkeypatch, dtype, fmt):
    """Big-endian stored chunks are viewed as stored and swapped by the copy into the output, boxes
    included (Bytes.stored_view): every bit as zarr-python reads them, NaN payloads included,
    for full reads, windows and batches, inline and through the pool."""
    dt = np.dtype(dtype)
    base = _nan_payloads(np.dtype(f"f{dt.itemsize // 2}") if dt.kind == "c" else dt, 24 * 20 * (2 if dt.kind == "c" else 1))
    data = base.view(dt.newbyteorder("<")).reshape(24, 20)
    path = str(tmp_path / "a.zarr")
    if fmt == 2:
        z = zarr.create_array(path, shape=data.shape, chunks=(4, 5), dtype=dt.newbyteorder(">"), zarr_format=2,
                              compressors=numcodecs.Zstd(level=1), fill_value=None)
    else:
        z = zarr.create_array(path, shape=data.shape, chunks=(4, 5), shards=(8, 10), dtype=dt.newbyteorder("<"),
                              serializer=zarr.codecs.BytesCodec(endian="big"), compressors=zarr.codecs.ZstdCodec(),
                              fill_value=None)
    z[...] = data
    want = zarr.open_array(path, mode="r")[...]
    assert want.view(np.uint8).tobytes() == data.astype(want.dtype).view(np.uint8).tobytes()
    windows = [(slice(1, 9), slice(3, 17)), (slice(4, 12), slice(0, 14)), (slice(13, 21), slice(5, 19))]
    for split in (1.0, 0.0):  # inline, then through the pool's groups and boxes
        monkeypatch.setattr(cpu, "SPLIT_SECONDS", split)
        arr = gpuzarr.open(path, device=CpuDevice(2))
        got = arr[...]
        assert got.dtype == want.dtype
        assert got.view(np.uint8).tobytes() == want.view(np.uint8).tobytes()
        for w in windows:
            assert arr[w].view(np.uint8).tobytes() == want[w].view(np.uint8).tobytes()
        batch = arr.read_batch(windows)
        assert batch.dtype == want.dtype
        for i, w in enumerate(windows):  # np.stack would make them native-endian
            assert batch[i].view(np.uint8).tobytes() == want[w].view(np.uint8).tobytes()


def test_only_numpy_swappable_dtypes_are_viewed_as_stored():
    """stored_view: the stored order for NumPy's swapping casts; None for structs (swapped field
    by field by decode_raw) and ml_dtypes; the dtype itself where nothing is swapped."""
    from gpuzarr.codecs.array_to_bytes import Bytes
    big = Bytes("big")
    assert big.stored_view(np.dtype("<f4")) == np.dtype(">f4")
    assert big.stored_view(np.dtype(">f4")) == np.dtype(">f4")
    assert Bytes("little").stored_view(np.dtype("<u2")) == np.dtype("<u2")
    assert big.stored_view(np.dtype([("a", "<u2"), ("b", "<f4")])) is None
    ml_dtypes = pytest.importorskip("ml_dtypes", reason="ml_dtypes not installed")
    assert big.stored_view(np.dtype(ml_dtypes.bfloat16)) is None


@pytest.mark.parametrize("order, dtype, axis", [((2, 0, 1), "u1", 2), ((1, 2, 0), "<f4", 1), ((2, 1, 0), "<i2", 2),
                                               ((0, 2, 1), "<u8", None)])
def test_plane_assign_equals_one_copy(order, dtype, axis):
    """plane_assign places a chunk seen through any axis order, cropped or not, as one copy does;
    along src's outermost axis where that is short and not the output's (plane_axis)."""
    from gpuzarr.placement import plane_assign, plane_axis

    stored = np.random.default_rng(1).integers(0, 250, (16, 96, 80)).astype(dtype)
    chunk = stored.transpose(np.argsort(order))
    for crop in [(slice(None),) * 3, (slice(3, 90), slice(0, 73), slice(2, 14)), (slice(5, 6), slice(None), slice(None))]:
        src = chunk[crop]
        out, want = np.zeros((2, 100, 100, 100), dtype), np.zeros((2, 100, 100, 100), dtype)
        sel = (1,) + tuple(slice(3, 3 + n) for n in src.shape)
        want[sel] = src
        plane_assign(out, sel, src)
        np.testing.assert_array_equal(out, want)
    assert plane_axis(out[(1,) + tuple(slice(0, n) for n in chunk.shape)], chunk) == axis
    assert plane_axis(out[1, 0:1, 0:1, 0:2], chunk[0:1, 0:1, 0:2]) is None  # too small to pay a call a plane


@pytest.mark.parametrize("fmt", [2, 3])
def test_transposed_chunks_are_placed_plane_by_plane(tmp_path, monkeypatch, fmt):
    """A v3 transpose codec's chunks, and a v2 order-F array's, through NumPy's plane by plane
    copy where the host library is missing (where it is there, its scatter transposes them:
    test_host_lib): full reads, windows and batches as zarr-python reads them, and the planes
    path taken."""
    monkeypatch.setattr(host_lib, "_lib", [None])
    data = np.random.default_rng(2).integers(0, 1000, (96, 80, 24)).astype("<f4")
    path = str(tmp_path / "a.zarr")
    if fmt == 2:
        z = zarr.create_array(path, shape=data.shape, chunks=(32, 40, 24), dtype="<f4", zarr_format=2, order="F",
                              compressors=numcodecs.Zstd(level=1), fill_value=0)
    else:
        z = zarr.create_array(path, shape=data.shape, chunks=(32, 40, 24), dtype="<f4",
                              filters=[zarr.codecs.TransposeCodec(order=(2, 0, 1))], compressors=zarr.codecs.ZstdCodec(),
                              fill_value=0)
    z[...] = data
    from gpuzarr.placement import plane_axis

    planes = []
    real = cpu.plane_assign

    def spy(out, sel, src):
        planes.append((src.shape, plane_axis(out[sel], src)))
        return real(out, sel, src)
    monkeypatch.setattr(cpu, "plane_assign", spy)
    monkeypatch.setattr(small_read, "plane_assign", spy)  # (reads of up to LOCATE_ARRAYS chunks)
    windows = [(slice(3, 70), slice(7, 60), slice(0, 24)), (slice(20, 87), slice(0, 53), slice(0, 24))]
    for split in (1.0, 0.0):  # inline, then through the pool
        monkeypatch.setattr(cpu, "SPLIT_SECONDS", split)
        arr = gpuzarr.open(path, device=CpuDevice(2))
        np.testing.assert_array_equal(arr[...], data)
        for w in windows:
            np.testing.assert_array_equal(arr[w], data[w])
        np.testing.assert_array_equal(arr.read_batch(windows), np.stack([data[w] for w in windows]))
    assert ((32, 40, 24), 2) in planes  # whole chunks went plane by plane along their stored outer axis


@pytest.mark.parametrize("fmt", [2, 3])
def test_stored_chunks_are_placed_from_staging_and_their_size_checked(tmp_path, monkeypatch, fmt):
    """Uncompressed chunks are placed from where fetch put them (rows of staging, or one chunk's
    view), as zarr-python reads them; a chunk file of another size is refused, naming it."""
    data = np.arange(64 * 48, dtype="<u2").reshape(64, 48) * 3
    path = tmp_path / "a.zarr"
    z = zarr.create_array(str(path), shape=data.shape, chunks=(16, 16), dtype="<u2", zarr_format=fmt,
                          compressors=None, fill_value=0)
    z[...] = data
    views = []
    real = cpu._stored_rows

    def spy(chain, part, order):
        rows = real(chain, part, order)
        views.append(rows is not None and np.shares_memory(rows, part.staging))
        return rows
    monkeypatch.setattr(cpu, "_stored_rows", spy)
    windows = [(slice(3, 40), slice(5, 45)), (slice(16, 53), slice(0, 40))]
    for pooled in (False, True):  # inline (chunk views), then through the pool (rows of staging)
        with pooled_reads() if pooled else contextlib.nullcontext():
            arr = gpuzarr.open(str(path), device=CpuDevice(2))
            np.testing.assert_array_equal(arr[...], data)
            for w in windows:
                np.testing.assert_array_equal(arr[w], data[w])
            np.testing.assert_array_equal(arr.read_batch(windows), np.stack([data[w] for w in windows]))
    assert any(views)  # where chunks lie back to back in the order placed
    key = "1.2" if fmt == 2 else "c/1/2"
    (path / key).write_bytes((path / key).read_bytes()[:-2])
    for pooled in (False, True):
        with pooled_reads() if pooled else contextlib.nullcontext(), \
                pytest.raises(CorruptDataError, match=f"{key}: .*chunk is 510 bytes, expected 512"):
            gpuzarr.open(str(path), device=CpuDevice(2))[...]
