"""The per-thread code of the CUDA kernels, compiled with g++ and run on the CPU.

The kernels in kernels/*.cu are one-line wrappers around functions of kernels/*_core.cuh that take
the thread's coordinates (block, grid size, thread, thread count). Here a small C++ file calls those
very functions for every coordinate of a simulated launch, so the index arithmetic, the grid-stride
loops and the blosc semantics are tested without a GPU, against the NumPy references
(gpuzarr.blosc_frames) and against NumPy slice assignment.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess

import numpy as np
import pytest

from gpuzarr import blosc_frames
from gpuzarr.devices import kernels as K

WRAPPER = r"""
#include "bitshuffle_core.cuh"
#include "scatter_core.cuh"

extern "C" {

// Every (block, thread) of a launch with `grid` blocks of `threads` threads, one after another.
void cpu_unshuffle_batch(int bit, const gpz_u8* src, gpz_u8* dst, const gpz_i64* src_offsets,
                         const gpz_i64* dst_offsets, const gpz_i64* nbytes, const gpz_i64* typesizes,
                         gpz_i64 nblocks, gpz_i64 grid, gpz_i64 threads)
{
    for (gpz_i64 b = 0; b < grid; ++b)
        for (gpz_i64 t = 0; t < threads; ++t)
            gpz_unshuffle_batch_thread(bit, src, dst, src_offsets, dst_offsets, nbytes, typesizes,
                                       nblocks, b, grid, t, threads);
}

// Every (grid row, thread of the row) of a launch with `rows` grid rows of `threads` threads.
int cpu_scatter(int itemsize, const gpz_u8* src, gpz_u8* dst, const gpz_i64* recs, gpz_i64 nchunks,
                int ndim, gpz_i64 rows, gpz_i64 threads)
{
    for (gpz_i64 r = 0; r < rows; ++r)
        for (gpz_i64 t = 0; t < threads; ++t) {
            switch (itemsize) {
                case 1: gpz_scatter_thread<1>(src, dst, recs, nchunks, ndim, r, rows, t, threads); break;
                case 2: gpz_scatter_thread<2>(src, dst, recs, nchunks, ndim, r, rows, t, threads); break;
                case 4: gpz_scatter_thread<4>(src, dst, recs, nchunks, ndim, r, rows, t, threads); break;
                case 8: gpz_scatter_thread<8>(src, dst, recs, nchunks, ndim, r, rows, t, threads); break;
                case 16: gpz_scatter_thread<16>(src, dst, recs, nchunks, ndim, r, rows, t, threads); break;
                default: return -1;
            }
        }
    return 0;
}

int cpu_fill(int itemsize, gpz_u8* dst, const gpz_i64* recs, gpz_i64 nchunks, int ndim,
             gpz_u64 lo, gpz_u64 hi, gpz_i64 rows, gpz_i64 threads)
{
    for (gpz_i64 r = 0; r < rows; ++r)
        for (gpz_i64 t = 0; t < threads; ++t) {
            switch (itemsize) {
                case 1: gpz_fill_thread<1>(dst, recs, nchunks, ndim, lo, hi, r, rows, t, threads); break;
                case 2: gpz_fill_thread<2>(dst, recs, nchunks, ndim, lo, hi, r, rows, t, threads); break;
                case 4: gpz_fill_thread<4>(dst, recs, nchunks, ndim, lo, hi, r, rows, t, threads); break;
                case 8: gpz_fill_thread<8>(dst, recs, nchunks, ndim, lo, hi, r, rows, t, threads); break;
                case 16: gpz_fill_thread<16>(dst, recs, nchunks, ndim, lo, hi, r, rows, t, threads); break;
                default: return -1;
            }
        }
    return 0;
}

gpz_u64 cpu_transpose_8x8_bits(gpz_u64 x) { return gpz_transpose_8x8_bits(x); }

// The record layout as the kernels see it, for comparison with gpuzarr.devices.kernels.
void cpu_scatter_layout(gpz_i64* out)
{
    const gpz_i64 v[9] = {GPZ_MAX_NDIM, GPZ_REC_SRC, GPZ_REC_DST, GPZ_REC_SHAPE, GPZ_REC_START,
                          GPZ_REC_STEP, GPZ_REC_COUNT, GPZ_REC_DSTRIDE, GPZ_REC_LEN};
    for (int i = 0; i < 9; ++i) out[i] = v[i];
}

}  // extern "C"
"""

P = ctypes.c_void_p
I64 = ctypes.c_int64


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    gxx = shutil.which("g++")
    if gxx is None:
        pytest.skip("g++ is not installed: the kernels' C++ cores cannot be compiled for the CPU")
    d = tmp_path_factory.mktemp("kernels_cpu")
    for name in (p.name for p in K.kernels_dir().iterdir() if p.name.endswith(".cuh")):
        (d / name).write_text(K._read(name))
    (d / "wrapper.cpp").write_text(WRAPPER)
    so = d / "libkernels_cpu.so"
    cmd = [gxx, "-std=c++17", "-O2", "-fno-strict-aliasing", "-Wall", "-Wextra", "-Werror",
           "-shared", "-fPIC", f"-I{d}", str(d / "wrapper.cpp"), "-o", str(so)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, f"g++ failed (warnings are errors):\n{res.stderr}"
    lib = ctypes.CDLL(str(so))
    lib.cpu_unshuffle_batch.argtypes = [ctypes.c_int, P, P, P, P, P, P, I64, I64, I64]
    lib.cpu_unshuffle_batch.restype = None
    lib.cpu_scatter.argtypes = [ctypes.c_int, P, P, P, I64, ctypes.c_int, I64, I64]
    lib.cpu_scatter.restype = ctypes.c_int
    lib.cpu_fill.argtypes = [ctypes.c_int, P, P, I64, ctypes.c_int, ctypes.c_uint64, ctypes.c_uint64, I64, I64]
    lib.cpu_fill.restype = ctypes.c_int
    lib.cpu_transpose_8x8_bits.argtypes = [ctypes.c_uint64]
    lib.cpu_transpose_8x8_bits.restype = ctypes.c_uint64
    lib.cpu_scatter_layout.argtypes = [P]
    lib.cpu_scatter_layout.restype = None
    return lib


def ptr(a: np.ndarray) -> int:
    assert a.flags.c_contiguous
    return a.ctypes.data


# --------------------------------------------------------------------------------------------
# unshuffle


def test_transpose_8x8_bits(lib):
    rng = np.random.default_rng(0)
    for x in [0, 1, 2**64 - 1, 0x0102040810204080, *rng.integers(0, 2**63, 50, dtype=np.uint64).tolist()]:
        m = np.unpackbits(np.array([x], "<u8").view(np.uint8), bitorder="little").reshape(8, 8)
        want = int(np.packbits(m.T, axis=1, bitorder="little").reshape(-1).view("<u8")[0])
        assert lib.cpu_transpose_8x8_bits(x) == want


BLOCK_SIZES = [0, 1, 2, 3, 7, 8, 9, 15, 16, 17, 24, 31, 63, 64, 65, 96, 127, 128, 129, 255, 256, 1000, 1024, 3000, 4099]
TYPESIZES = [1, 2, 3, 4, 5, 8, 12, 16, 33, 255]


def _run_unshuffle(lib, bit: bool, blocks: list[tuple[np.ndarray, int]], grid: int, threads: int, rng):
    """Lay the blocks out with random gaps in src and dst, run the kernel body, return per-block outputs."""
    src_off, dst_off, pos_s, pos_d = [], [], 0, 0
    for data, _ in blocks:
        pos_s += int(rng.integers(0, 9))
        pos_d += int(rng.integers(0, 9))
        src_off.append(pos_s)
        dst_off.append(pos_d)
        pos_s += data.size
        pos_d += data.size
    src = rng.integers(0, 256, pos_s + 8, dtype=np.uint8)
    for (data, _), o in zip(blocks, src_off):
        src[o : o + data.size] = data
    sentinel = np.uint8(0xA5)
    dst = np.full(pos_d + 8, sentinel, dtype=np.uint8)
    a = lambda v: np.array(v, dtype=np.int64)  # noqa: E731
    so, do = a(src_off), a(dst_off)
    nb, ts = a([d.size for d, _ in blocks]), a([t for _, t in blocks])
    lib.cpu_unshuffle_batch(int(bit), ptr(src), ptr(dst), ptr(so), ptr(do), ptr(nb), ptr(ts), len(blocks), grid, threads)
    outs = [dst[o : o + d.size].copy() for (d, _), o in zip(blocks, dst_off)]
    touched = np.zeros(dst.size, dtype=bool)
    for (d, _), o in zip(blocks, dst_off):
        touched[o : o + d.size] = True
    assert (dst[~touched] == sentinel).all(), "the kernel wrote outside its blocks"
    return outs


@pytest.mark.parametrize("bit", [False, True], ids=["byte", "bit"])
@pytest.mark.parametrize("grid,threads", [(1, 1), (3, 7), (16, 32)])
def test_unshuffle_batch_matches_numpy(lib, bit, grid, threads):
    rng = np.random.default_rng(7 + grid + bit)
    ref = blosc_frames.bit_unshuffle if bit else blosc_frames.byte_unshuffle
    blocks = []
    for t in TYPESIZES:
        # the fixed sizes, plus whole groups of 8 elements with and without trailing bytes
        sizes = [n for n in BLOCK_SIZES if n <= 1024 or t in (1, 4, 12)] + [8 * t, 8 * t + t - 1, 24 * t, 24 * t + 1]
        blocks += [(rng.integers(0, 256, n, dtype=np.uint8), t) for n in sizes]
    bit_shuffled = sum(d.size >= t and (d.size // t) % 8 == 0 for d, t in blocks)
    assert bit_shuffled >= 3 * len(TYPESIZES)  # every typesize has blocks that really are bit-shuffled
    order = rng.permutation(len(blocks))  # mixed typesizes and sizes in one launch
    blocks = [blocks[i] for i in order]
    outs = _run_unshuffle(lib, bit, blocks, grid, threads, rng)
    for (data, t), out in zip(blocks, outs):
        np.testing.assert_array_equal(out, ref(data, t), err_msg=f"nbytes={data.size} typesize={t}")


def test_unshuffle_empty_batch(lib):
    """No blocks (or only empty ones): nothing is read or written."""
    z = np.zeros(2, dtype=np.int64)
    src = np.arange(16, dtype=np.uint8)
    dst = np.full(16, 0xA5, dtype=np.uint8)
    ts = np.array([4, 4], dtype=np.int64)
    for bit in (0, 1):
        lib.cpu_unshuffle_batch(bit, ptr(src), ptr(dst), ptr(z), ptr(z), ptr(z), ptr(ts), 0, 4, 4)
        lib.cpu_unshuffle_batch(bit, ptr(src), ptr(dst), ptr(z), ptr(z), ptr(z), ptr(ts), 2, 4, 4)  # nbytes 0
        assert (dst == 0xA5).all()


def test_references_undo_a_plain_shuffle():
    """The NumPy references against the shuffles written out longhand (blosc itself: test_blosc_frames)."""
    rng = np.random.default_rng(3)
    for t in (1, 2, 3, 4, 8, 16):
        for n_el in (0, 1, 7, 8, 16, 40, 41):
            elems = rng.integers(0, 256, (n_el, t), dtype=np.uint8)
            tail = rng.integers(0, 256, int(rng.integers(0, t)), dtype=np.uint8)
            plain = np.concatenate([elems.reshape(-1), tail])
            byte_sh = np.concatenate([elems.T.reshape(-1), tail]) if t > 1 else plain
            assert (blosc_frames.byte_unshuffle(byte_sh, t) == plain).all()
            if n_el % 8 == 0 and n_el > 0:
                bits = np.unpackbits(elems, axis=1, bitorder="little").reshape(n_el, t, 8)
                rows = bits.transpose(1, 2, 0).reshape(t * 8, n_el)  # byte position, bit, element
                bit_sh = np.concatenate([np.packbits(rows, axis=1, bitorder="little").reshape(-1), tail])
            else:
                bit_sh = plain  # blosc 1.x stores such blocks unshuffled
            assert (blosc_frames.bit_unshuffle(bit_sh, t) == plain).all()


# --------------------------------------------------------------------------------------------
# scatter / fill

DTYPES = {1: np.dtype("u1"), 2: np.dtype("<u2"), 4: np.dtype("<u4"), 8: np.dtype("<u8"), 16: np.dtype("V16")}
MAX_SIDE = {0: 1, 1: 40, 2: 9, 3: 6, 5: 3, 8: 2}


def _random_window(rng, shape):
    """start, step, count per dim, every index inside the shape; now and then an empty window."""
    start, step, count = [], [], []
    for n in shape:
        s = int(rng.integers(0, n))
        st = int(rng.integers(1, 4))
        c = int(rng.integers(0 if rng.random() < 0.05 else 1, (n - 1 - s) // st + 2))
        start.append(s)
        step.append(st)
        count.append(c)
    return start, step, count


class Case:
    """A batch of chunks (same ndim, varying shapes), one window per chunk, and where each window
    goes: slot c (along axis 0) of an output that lives at byte 16 of a larger buffer `base`, at a
    random strided position, optionally with a negative stride along some dims."""

    def __init__(self, seed, ndim, itemsize, nchunks=7, reverse_dims=()):
        rng = np.random.default_rng(seed)
        self.ndim, self.itemsize, self.nchunks, self.dt = ndim, itemsize, nchunks, DTYPES[itemsize]
        self.chunks, self.windows = [], []
        for _ in range(nchunks):
            shape = tuple(int(v) for v in rng.integers(1, MAX_SIDE[ndim] + 1, ndim))
            raw = rng.integers(0, 256, int(np.prod(shape)) * itemsize, dtype=np.uint8)
            self.chunks.append(raw.view(self.dt).reshape(shape))
            self.windows.append(_random_window(rng, shape))
        dst_steps = [[int(rng.integers(1, 3)) for _ in range(ndim)] for _ in range(nchunks)]
        self.slot = tuple(
            max(1 + (w[2][d] - 1) * dst_steps[c][d] if w[2][d] else 1 for c, w in enumerate(self.windows)) + 2
            for d in range(ndim)
        )
        self.base = rng.integers(0, 256, 16 + nchunks * int(np.prod(self.slot)) * itemsize + 16, dtype=np.uint8)
        self.dst_slices = []
        for c, (_, _, count) in enumerate(self.windows):
            sl = []
            for d, n in enumerate(count):
                first, st = int(rng.integers(0, 2)), dst_steps[c][d]
                if d in reverse_dims and n > 0:
                    last = first + (n - 1) * st
                    sl.append(slice(last, first - 1 if first > 0 else None, -st))
                else:
                    sl.append(slice(first, first + n * st, st))
                assert len(range(*sl[-1].indices(self.slot[d]))) == n
            self.dst_slices.append(tuple(sl))
        self.batch = np.concatenate([ch.reshape(-1).view(np.uint8) for ch in self.chunks])
        self.src_offsets = np.cumsum([0] + [ch.nbytes for ch in self.chunks[:-1]]).astype(np.int64)

    def out(self, buf):
        n = self.nchunks * int(np.prod(self.slot)) * self.itemsize
        return buf[16 : 16 + n].view(self.dt).reshape(self.nchunks, *self.slot)

    def dst_view(self, buf, c):
        o = self.out(buf)
        return o[c, ...] if self.ndim == 0 else o[c][self.dst_slices[c]]

    def src_window(self, c):
        start, step, count = self.windows[c]
        return self.chunks[c][tuple(slice(s, s + n * st, st) for s, st, n in zip(start, step, count))]

    def records(self, garbage_src=False):
        rng = np.random.default_rng(1)
        recs = np.zeros((self.nchunks, K.SCATTER_REC_LEN), dtype=np.int64)
        if garbage_src:  # fill ignores these fields and unused dims: make them nonsense
            recs[:] = rng.integers(-(2**40), 2**40, recs.shape)
        for c, (chunk, (start, step, count)) in enumerate(zip(self.chunks, self.windows)):
            view = self.dst_view(self.base, c)
            nd = self.ndim
            if not garbage_src:
                recs[c, K.SCATTER_REC_SRC] = self.src_offsets[c]
                recs[c, K.SCATTER_REC_SHAPE : K.SCATTER_REC_SHAPE + nd] = chunk.shape
                recs[c, K.SCATTER_REC_START : K.SCATTER_REC_START + nd] = start
                recs[c, K.SCATTER_REC_STEP : K.SCATTER_REC_STEP + nd] = step
            recs[c, K.SCATTER_REC_DST] = view.__array_interface__["data"][0] - self.base.ctypes.data
            recs[c, K.SCATTER_REC_COUNT : K.SCATTER_REC_COUNT + nd] = count
            recs[c, K.SCATTER_REC_DSTRIDE : K.SCATTER_REC_DSTRIDE + nd] = view.strides
        return recs


def test_record_layout_matches_python(lib):
    got = np.zeros(9, dtype=np.int64)
    lib.cpu_scatter_layout(ptr(got))
    names = ["MAX_NDIM", "REC_SRC", "REC_DST", "REC_SHAPE", "REC_START", "REC_STEP", "REC_COUNT",
             "REC_DSTRIDE", "REC_LEN"]
    assert dict(zip(names, got.tolist())) == {n: getattr(K, f"SCATTER_{n}") for n in names}


LAUNCHES = [(1, 1), (3, 5), (8, 64)]  # (grid rows, threads per row)


@pytest.mark.parametrize("itemsize", [1, 2, 4, 8, 16])
@pytest.mark.parametrize("ndim", [0, 1, 2, 3, 5, 8])
def test_scatter_matches_numpy(lib, itemsize, ndim):
    case = Case(100 * itemsize + ndim, ndim, itemsize)
    expected = case.base.copy()
    for c in range(case.nchunks):
        case.dst_view(expected, c)[...] = case.src_window(c)
    assert (expected != case.base).any(), "the case writes nothing: it would test nothing"
    recs = case.records()
    for rows, threads in LAUNCHES:
        got = case.base.copy()  # the records hold offsets, so any buffer with base's layout works
        rc = lib.cpu_scatter(itemsize, ptr(case.batch), ptr(got), ptr(recs), case.nchunks, ndim, rows, threads)
        assert rc == 0
        np.testing.assert_array_equal(got, expected, err_msg=f"rows={rows} threads={threads}")


@pytest.mark.parametrize("itemsize", [1, 2, 4, 8, 16])
def test_scatter_negative_destination_strides(lib, itemsize):
    """Not needed by the reader today (its outputs are C order), but the kernel takes signed strides."""
    case = Case(7 + itemsize, 3, itemsize, reverse_dims=(0, 2))
    expected = case.base.copy()
    for c in range(case.nchunks):
        case.dst_view(expected, c)[...] = case.src_window(c)
    got = case.base.copy()
    recs = case.records()
    assert (recs[:, K.SCATTER_REC_DSTRIDE] < 0).any()
    assert lib.cpu_scatter(itemsize, ptr(case.batch), ptr(got), ptr(recs), case.nchunks, 3, 3, 5) == 0
    np.testing.assert_array_equal(got, expected)


def test_scatter_whole_chunks_into_c_order_output(lib):
    """The common case: a 3-d array read whole, chunk by chunk, edge chunks partially."""
    rng = np.random.default_rng(5)
    arr = rng.integers(0, 2**16, (10, 7, 9), dtype=np.uint16)
    cs = (4, 3, 5)
    grid = [range(0, n, c) for n, c in zip(arr.shape, cs)]
    chunks, recs = [], []
    out = np.zeros_like(arr)
    for i in grid[0]:
        for j in grid[1]:
            for k in grid[2]:
                chunk = np.zeros(cs, dtype=arr.dtype)  # stored chunks are full size, edge ones padded
                part = arr[i : i + cs[0], j : j + cs[1], k : k + cs[2]]
                chunk[tuple(slice(0, n) for n in part.shape)] = part
                rec = np.zeros(K.SCATTER_REC_LEN, dtype=np.int64)
                rec[K.SCATTER_REC_SRC] = len(chunks) * chunk.nbytes
                rec[K.SCATTER_REC_DST] = int(np.dot((i, j, k), out.strides))
                rec[K.SCATTER_REC_SHAPE : K.SCATTER_REC_SHAPE + 3] = cs
                rec[K.SCATTER_REC_STEP : K.SCATTER_REC_STEP + 3] = 1
                rec[K.SCATTER_REC_COUNT : K.SCATTER_REC_COUNT + 3] = part.shape
                rec[K.SCATTER_REC_DSTRIDE : K.SCATTER_REC_DSTRIDE + 3] = out.strides
                chunks.append(chunk)
                recs.append(rec)
    batch = np.concatenate([c.reshape(-1) for c in chunks]).view(np.uint8)
    table = np.stack(recs)
    assert lib.cpu_scatter(2, ptr(batch), ptr(out), ptr(table), len(chunks), 3, 4, 16) == 0
    np.testing.assert_array_equal(out, arr)


@pytest.mark.parametrize("itemsize", [1, 2, 4, 8, 16])
@pytest.mark.parametrize("ndim", [0, 1, 3, 8])
def test_fill_matches_numpy(lib, itemsize, ndim):
    case = Case(500 + 10 * itemsize + ndim, ndim, itemsize)
    rng = np.random.default_rng(itemsize)
    pattern = rng.integers(0, 256, itemsize, dtype=np.uint8)
    padded = np.zeros(16, dtype=np.uint8)
    padded[:itemsize] = pattern
    lo, hi = (int(v) for v in padded.view("<u8"))
    value = pattern.view(case.dt)[0]
    expected = case.base.copy()
    for c in range(case.nchunks):
        case.dst_view(expected, c)[...] = value
    recs = case.records(garbage_src=True)
    for rows, threads in LAUNCHES:
        got = case.base.copy()
        assert lib.cpu_fill(itemsize, ptr(got), ptr(recs), case.nchunks, ndim, lo, hi, rows, threads) == 0
        np.testing.assert_array_equal(got, expected, err_msg=f"rows={rows} threads={threads}")
