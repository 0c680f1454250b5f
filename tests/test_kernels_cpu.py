"""The block-level code of the CUDA kernels, compiled with g++ and run on the CPU.

The kernels in kernels/*.cu are one-line wrappers around functions of kernels/*_core.cuh that take
a Block (gpz_common.cuh): `blk.phase(f)` runs f on every thread of the block, then a barrier.
Here a small C++ file passes those very functions a block that runs the threads of a phase one
after another (in either order), so a whole CUDA block, shared memory included, runs on one CPU
thread. The index arithmetic, the grid-stride loops, the shared-memory tiles, the choice of word
width and of 32- or 64-bit indices and the blosc semantics are tested without a GPU, against the
NumPy references (gpuzarr.blosc_frames), NumPy slice assignment and the host's copy records
(gpuzarr.devices.gpu_layout). Every word access is counted by width and checked for alignment.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess

import numpy as np
import pytest

from gpuzarr import blosc_frames
from gpuzarr import host_lib
from gpuzarr.devices import kernels as K
from gpuzarr.devices.gpu_layout import copy_records

WRAPPER = r"""
#include <stdint.h>
#include <string.h>

// Word accesses by width (index 1..16) and misaligned ones, noted by gpz_copy_unit.
static long long g_access[17];
static long long g_misaligned;
static void cpu_note_access(const void* dst, const void* src, int width)
{
    g_access[width]++;
    if (((uintptr_t)dst | (uintptr_t)src) % (uintptr_t)width) g_misaligned++;
}
#define GPZ_NOTE_ACCESS(dst, src, width) cpu_note_access((const void*)(dst), (const void*)(src), (width))

#include "bitshuffle_core.cuh"
#include "scatter_core.cuh"

// A CUDA block on one CPU thread: each phase runs every thread in turn (backwards if `reverse`,
// so no thread may depend on another within a phase). With `wide` set, the window's 32-bit
// flag is cleared after every phase, so the 64-bit path runs on windows that would fit 32 bits.
struct cpu_block {
    gpz_i64 n;
    int reverse;
    gpz_window* wide;
    gpz_i64 threads() const { return n; }
    template <class F> void phase(F f)
    {
        for (gpz_i64 i = 0; i < n; ++i) f(reverse ? n - 1 - i : i);
        if (wide) wide->spans_fit32 = 0;
    }
};

extern "C" {

// Every block of a launch with `grid` blocks of `threads` threads, one after another; each block
// gets a fresh tile full of garbage.
void cpu_unshuffle_batch(int bit, const gpz_u8* src, gpz_u8* dst, const gpz_i64* src_offsets,
                         const gpz_i64* dst_offsets, const gpz_i64* nbytes, const gpz_i64* typesizes,
                         gpz_i64 nblocks, gpz_i64 grid, gpz_i64 threads, int reverse)
{
    alignas(16) gpz_u8 tile[GPZ_TILE_BYTES];
    for (gpz_i64 b = 0; b < grid; ++b) {
        memset(tile, 0xA5, sizeof tile);
        cpu_block blk = {threads, reverse, 0};
        gpz_unshuffle_batch_block(blk, tile, bit, src, dst, src_offsets, dst_offsets, nbytes, typesizes, nblocks,
                                  b, grid);
    }
}

// Every block (grid row y, block x of the row) of a scatter (fill = 0) or fill launch of grid
// (gx, rows) and `threads` threads; each block gets a fresh window full of garbage.
void cpu_scatter(int fill, gpz_i64 itemsize, const gpz_u8* src, gpz_u8* dst, const gpz_i64* recs,
                 gpz_i64 nchunks, int ndim, gpz_u64 lo, gpz_u64 hi, gpz_i64 rows, gpz_i64 gx, gpz_i64 threads,
                 int reverse, int wide)
{
    for (gpz_i64 y = 0; y < rows; ++y)
        for (gpz_i64 x = 0; x < gx; ++x) {
            gpz_window w;
            memset((void*)&w, 0xA5, sizeof w);
            cpu_block blk = {threads, reverse, wide ? &w : 0};
            if (fill)
                gpz_scatter_block<true>(blk, &w, dst, dst, recs, nchunks, ndim, itemsize, lo, hi, y, rows, x, gx);
            else
                gpz_scatter_block<false>(blk, &w, src, dst, recs, nchunks, ndim, itemsize, lo, hi, y, rows, x, gx);
        }
}

// What thread 0 makes of one record, for buffers at the given addresses (never dereferenced).
void cpu_window_prepare(const gpz_i64* rec, int ndim, gpz_i64 itemsize, int fill, gpz_u64 src_addr,
                        gpz_u64 dst_addr, gpz_i64 nthreads, gpz_i64* out)
{
    gpz_window w;
    gpz_window_prepare(&w, rec, ndim, itemsize, fill, src_addr, dst_addr, 0, 0);
    const gpz_i64 v[13] = {w.src, w.dst, w.rowbytes, w.rows, w.nd, w.run.width, w.run.head, w.run.body,
                           w.run.units, w.total, w.spans_fit32, gpz_window_fits32(&w, nthreads),
                           w.nd ? w.count[w.nd - 1] : 0};
    for (int i = 0; i < 13; ++i) out[i] = v[i];
}

// Word accesses since the last call: out[w] for widths 1, 2, 4, 8, 16; out[0] the misaligned ones.
void cpu_take_accesses(gpz_i64* out)
{
    for (int w = 0; w < 17; ++w) {
        out[w] = g_access[w];
        g_access[w] = 0;
    }
    out[0] = g_misaligned;
    g_misaligned = 0;
}

gpz_u64 cpu_transpose_8x8_bits(gpz_u64 x) { return gpz_transpose_8x8_bits(x); }

gpz_i64 cpu_tile_bytes(void) { return GPZ_TILE_BYTES; }

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
U64 = ctypes.c_uint64
INT = ctypes.c_int
PREPARED = ("src", "dst", "rowbytes", "rows", "nd", "width", "head", "body", "units", "total", "spans_fit32",
            "fits32", "outer_count")


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
    lib.cpu_unshuffle_batch.argtypes = [INT, P, P, P, P, P, P, I64, I64, I64, INT]
    lib.cpu_unshuffle_batch.restype = None
    lib.cpu_scatter.argtypes = [INT, I64, P, P, P, I64, INT, U64, U64, I64, I64, I64, INT, INT]
    lib.cpu_scatter.restype = None
    lib.cpu_window_prepare.argtypes = [P, INT, I64, INT, U64, U64, I64, P]
    lib.cpu_window_prepare.restype = None
    lib.cpu_take_accesses.argtypes = [P]
    lib.cpu_take_accesses.restype = None
    lib.cpu_transpose_8x8_bits.argtypes = [U64]
    lib.cpu_transpose_8x8_bits.restype = U64
    lib.cpu_tile_bytes.argtypes = []
    lib.cpu_tile_bytes.restype = I64
    lib.cpu_scatter_layout.argtypes = [P]
    lib.cpu_scatter_layout.restype = None
    return lib


def ptr(a: np.ndarray) -> int:
    assert a.flags.c_contiguous
    return a.ctypes.data


def accesses(lib) -> dict[int, int]:
    """Word accesses by width since the last call, after checking none was misaligned."""
    out = np.zeros(17, dtype=np.int64)
    lib.cpu_take_accesses(ptr(out))
    assert out[0] == 0, f"{out[0]} misaligned word accesses"
    return {w: int(out[w]) for w in (1, 2, 4, 8, 16)}


def at_phase(data: np.ndarray, phase: int) -> np.ndarray:
    """A copy of uint8 `data` whose first byte lies at an address equal to `phase` modulo 16."""
    buf = np.empty(data.size + 32, dtype=np.uint8)
    k = (phase - buf.ctypes.data) % 16
    view = buf[k:k + data.size]
    view[:] = data
    return view


# --------------------------------------------------------------------------------------------
# unshuffle


def test_transpose_8x8_bits(lib):
    rng = np.random.default_rng(0)
    for x in [0, 1, 2**64 - 1, 0x0102040810204080, *rng.integers(0, 2**63, 50, dtype=np.uint64).tolist()]:
        m = np.unpackbits(np.array([x], "<u8").view(np.uint8), bitorder="little").reshape(8, 8)
        want = int(np.packbits(m.T, axis=1, bitorder="little").reshape(-1).view("<u8")[0])
        assert lib.cpu_transpose_8x8_bits(x) == want


BLOCK_SIZES = [0, 1, 2, 3, 7, 8, 9, 15, 16, 17, 24, 31, 63, 64, 65, 96, 127, 128, 129, 255, 256, 1000, 1024, 3000, 4099]
TYPESIZES = [*range(1, 17), 33, 255]


def _block_sizes(t: int, tile: int) -> list[int]:
    """The fixed sizes; whole groups of 8 elements with and without trailing bytes; blocks of
    several tiles (of either shuffle) ending in a partial tile."""
    per_tile = (tile // t) & ~7
    many = [(2 * per_tile + 8) * t, (2 * per_tile + 8) * t + t - 1, (tile // t) * t * 2 + t]
    return [n for n in BLOCK_SIZES if n <= 1024 or t in (1, 4, 12)] + [8 * t, 8 * t + t - 1, 24 * t, 24 * t + 1,
                                                                       *many]


def _run_unshuffle(lib, bit: bool, blocks: list[tuple[np.ndarray, int]], grid: int, threads: int, reverse: bool,
                   rng, gaps: bool = True):
    """Lay the blocks out (with random gaps in src and dst), run the kernel's blocks, return
    per-block outputs."""
    src_off, dst_off, pos_s, pos_d = [], [], 0, 0
    for data, _ in blocks:
        pos_s += int(rng.integers(0, 9)) if gaps else 0
        pos_d += int(rng.integers(0, 9)) if gaps else 0
        src_off.append(pos_s)
        dst_off.append(pos_d)
        pos_s += data.size
        pos_d += data.size
    src = rng.integers(0, 256, pos_s + 8, dtype=np.uint8)
    for (data, _), o in zip(blocks, src_off):
        src[o : o + data.size] = data
    sentinel = np.uint8(0xA5)
    dst = at_phase(np.full(pos_d + 8, sentinel, dtype=np.uint8), 0)
    a = lambda v: np.array(v, dtype=np.int64)  # noqa: E731
    so, do = a(src_off), a(dst_off)
    nb, ts = a([d.size for d, _ in blocks]), a([t for _, t in blocks])
    lib.cpu_unshuffle_batch(int(bit), ptr(src), ptr(dst), ptr(so), ptr(do), ptr(nb), ptr(ts), len(blocks), grid,
                            threads, int(reverse))
    outs = [dst[o : o + d.size].copy() for (d, _), o in zip(blocks, dst_off)]
    touched = np.zeros(dst.size, dtype=bool)
    for (d, _), o in zip(blocks, dst_off):
        touched[o : o + d.size] = True
    assert (dst[~touched] == sentinel).all(), "the kernel wrote outside its blocks"
    return outs


@pytest.mark.parametrize("bit", [False, True], ids=["byte", "bit"])
@pytest.mark.parametrize("grid,threads,reverse", [(1, 1, False), (3, 7, True), (16, 32, False), (2, 256, True)])
def test_unshuffle_batch_matches_numpy(lib, bit, grid, threads, reverse):
    rng = np.random.default_rng(7 + grid + bit)
    ref = blosc_frames.bit_unshuffle if bit else blosc_frames.byte_unshuffle
    tile = lib.cpu_tile_bytes()
    blocks = [(rng.integers(0, 256, n, dtype=np.uint8), t) for t in TYPESIZES for n in _block_sizes(t, tile)]
    bit_shuffled = sum(d.size >= t and (d.size // t) % 8 == 0 for d, t in blocks)
    assert bit_shuffled >= 3 * len(TYPESIZES)  # every typesize has blocks that really are bit-shuffled
    assert sum(d.size // t > 2 * (tile // t) for d, t in blocks) >= len(TYPESIZES)  # and blocks of 3+ tiles
    order = rng.permutation(len(blocks))  # mixed typesizes and sizes in one launch
    blocks = [blocks[i] for i in order]
    outs = _run_unshuffle(lib, bit, blocks, grid, threads, reverse, rng)
    accesses(lib)  # none misaligned
    for (data, t), out in zip(blocks, outs):
        np.testing.assert_array_equal(out, ref(data, t), err_msg=f"nbytes={data.size} typesize={t}")


@pytest.mark.parametrize("bit", [False, True], ids=["byte", "bit"])
@pytest.mark.parametrize("typesize", [2, 4, 8, 16])
def test_unshuffle_writes_16_byte_words(lib, bit, typesize):
    """Aligned blocks of whole tiles leave the tile as 16-byte words only (and read as many from shared)."""
    rng = np.random.default_rng(typesize)
    nbytes = 3 * lib.cpu_tile_bytes()
    data = rng.integers(0, 256, nbytes, dtype=np.uint8)
    accesses(lib)
    (out,) = _run_unshuffle(lib, bit, [(data, typesize)], 1, 64, False, rng, gaps=False)
    ref = blosc_frames.bit_unshuffle if bit else blosc_frames.byte_unshuffle
    np.testing.assert_array_equal(out, ref(data, typesize))
    assert accesses(lib) == {1: 0, 2: 0, 4: 0, 8: 0, 16: nbytes // 16}


def test_unshuffle_empty_batch(lib):
    """No blocks (or only empty ones): nothing is read or written."""
    z = np.zeros(2, dtype=np.int64)
    src = np.arange(16, dtype=np.uint8)
    dst = np.full(16, 0xA5, dtype=np.uint8)
    ts = np.array([4, 4], dtype=np.int64)
    for bit in (0, 1):
        lib.cpu_unshuffle_batch(bit, ptr(src), ptr(dst), ptr(z), ptr(z), ptr(z), ptr(ts), 0, 4, 4, 0)
        lib.cpu_unshuffle_batch(bit, ptr(src), ptr(dst), ptr(z), ptr(z), ptr(z), ptr(ts), 2, 4, 4, 0)  # nbytes 0
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
MAX_SIDE = {0: 1, 1: 40, 2: 9, 3: 6, 4: 4, 5: 3, 6: 3, 7: 2, 8: 2}


def _random_window(rng, shape, contiguous):
    """start, step, count per dim, every index inside the shape; now and then an empty window;
    with `contiguous`, steps of 1 (rows the kernel copies in words)."""
    start, step, count = [], [], []
    for n in shape:
        s = int(rng.integers(0, n))
        st = 1 if contiguous else int(rng.integers(1, 4))
        c = int(rng.integers(0 if rng.random() < 0.05 else 1, (n - 1 - s) // st + 2))
        start.append(s)
        step.append(st)
        count.append(c)
    return start, step, count


class Case:
    """A batch of chunks (same ndim, varying shapes), one window per chunk, and where each window
    goes: slot c (along axis 0) of an output that lives at byte 16 of a larger buffer `base`, at a
    random strided position, optionally with a negative stride along some dims."""

    def __init__(self, seed, ndim, itemsize, nchunks=7, reverse_dims=(), contiguous=False):
        rng = np.random.default_rng(seed)
        self.ndim, self.itemsize, self.nchunks = ndim, itemsize, nchunks
        self.dt = DTYPES.get(itemsize, np.dtype(f"V{itemsize}"))
        self.chunks, self.windows = [], []
        for _ in range(nchunks):
            shape = tuple(int(v) for v in rng.integers(1, MAX_SIDE[ndim] + 1, ndim))
            raw = rng.integers(0, 256, int(np.prod(shape)) * itemsize, dtype=np.uint8)
            self.chunks.append(raw.view(self.dt).reshape(shape))
            self.windows.append(_random_window(rng, shape, contiguous))
        dst_steps = [[1 if contiguous else int(rng.integers(1, 3)) for _ in range(ndim)] for _ in range(nchunks)]
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

    def expected(self, value=None):
        out = self.base.copy()
        for c in range(self.nchunks):
            self.dst_view(out, c)[...] = self.src_window(c) if value is None else value
        assert (out != self.base).any(), "the case writes nothing: it would test nothing"
        return out


def scatter(lib, src, dst, recs, itemsize, ndim, launch, fill=None):
    """Run every block of a launch (rows, blocks per row, threads, reverse, wide) of gpz_scatter
    (or gpz_fill with the bytes `fill`) on the CPU."""
    lo, hi = (int(v) for v in np.frombuffer(bytes(fill or b"").ljust(16, b"\0"), "<u8"))
    rows, gx, threads, reverse, wide = launch
    lib.cpu_scatter(fill is not None, itemsize, ptr(src) if fill is None else None, ptr(dst), ptr(recs), len(recs),
                    ndim, lo, hi, rows, gx, threads, int(reverse), int(wide))


def test_record_layout_matches_python(lib):
    got = np.zeros(9, dtype=np.int64)
    lib.cpu_scatter_layout(ptr(got))
    names = ["MAX_NDIM", "REC_SRC", "REC_DST", "REC_SHAPE", "REC_START", "REC_STEP", "REC_COUNT",
             "REC_DSTRIDE", "REC_LEN"]
    assert dict(zip(names, got.tolist())) == {n: getattr(K, f"SCATTER_{n}") for n in names}


# (grid rows, blocks per row, threads, threads backwards, 64-bit indices)
LAUNCHES = [(1, 1, 1, False, False), (3, 2, 5, True, False), (8, 1, 64, False, True), (2, 3, 32, True, True)]
# phases modulo 16 of the (source, output) buffers: aligned, equally misaligned, differently
PHASES = [(0, 0), (3, 3), (8, 4), (1, 15)]


@pytest.mark.parametrize("itemsize", [1, 2, 4, 8, 16])
@pytest.mark.parametrize("ndim", range(9))
def test_scatter_matches_numpy(lib, itemsize, ndim):
    for contiguous in (False, True):
        case = Case(100 * itemsize + ndim + contiguous, ndim, itemsize, contiguous=contiguous)
        expected, recs = case.expected(), case.records()
        for launch in LAUNCHES:
            for ps, pd in PHASES:
                got = at_phase(case.base, pd)  # the records hold offsets: any buffer with base's bytes works
                scatter(lib, at_phase(case.batch, ps), got, recs, itemsize, ndim, launch)
                np.testing.assert_array_equal(got, expected, err_msg=f"launch={launch} phases={ps, pd}")
        accesses(lib)  # none misaligned


@pytest.mark.parametrize("itemsize", [1, 2, 4, 8, 16])
def test_scatter_negative_destination_strides(lib, itemsize):
    """Not needed by the reader today (its outputs are C order), but the kernel takes signed strides."""
    case = Case(7 + itemsize, 3, itemsize, reverse_dims=(0, 2))
    recs = case.records()
    assert (recs[:, K.SCATTER_REC_DSTRIDE] < 0).any()
    for launch in LAUNCHES:
        got = case.base.copy()
        scatter(lib, case.batch, got, recs, itemsize, 3, launch)
        np.testing.assert_array_equal(got, case.expected())


def _whole_chunk_records(arr, cs, out):
    """A C-order array read whole, chunk by chunk (edge chunks partially): (batch, records)."""
    chunks, recs = [], []
    for corner in np.ndindex(*(-(-n // c) for n, c in zip(arr.shape, cs))):
        origin = tuple(i * c for i, c in zip(corner, cs))
        chunk = np.zeros(cs, dtype=arr.dtype)  # stored chunks are full size, edge ones padded
        part = arr[tuple(slice(o, o + c) for o, c in zip(origin, cs))]
        chunk[tuple(slice(0, n) for n in part.shape)] = part
        rec = np.zeros(K.SCATTER_REC_LEN, dtype=np.int64)
        rec[K.SCATTER_REC_SRC] = len(chunks) * chunk.nbytes
        rec[K.SCATTER_REC_DST] = int(np.dot(origin, out.strides))
        rec[K.SCATTER_REC_SHAPE : K.SCATTER_REC_SHAPE + arr.ndim] = cs
        rec[K.SCATTER_REC_STEP : K.SCATTER_REC_STEP + arr.ndim] = 1
        rec[K.SCATTER_REC_COUNT : K.SCATTER_REC_COUNT + arr.ndim] = part.shape
        rec[K.SCATTER_REC_DSTRIDE : K.SCATTER_REC_DSTRIDE + arr.ndim] = out.strides
        chunks.append(chunk)
        recs.append(rec)
    return np.concatenate([c.reshape(-1) for c in chunks]).view(np.uint8), np.stack(recs)


def test_scatter_whole_chunks_into_c_order_output(lib):
    """The common case: a 3-d array read whole, chunk by chunk, edge chunks partially."""
    rng = np.random.default_rng(5)
    arr = rng.integers(0, 2**16, (10, 7, 9), dtype=np.uint16)
    out = np.zeros_like(arr)
    batch, recs = _whole_chunk_records(arr, (4, 3, 5), out)
    scatter(lib, batch, out, recs, 2, 3, (4, 2, 16, False, False))
    np.testing.assert_array_equal(out, arr)
    accesses(lib)


def test_scatter_aligned_rows_move_in_16_byte_words(lib):
    """Chunk rows of 64 bytes into a C-order output: every byte moves in a 16-byte word; a chunk
    as wide as the output is one contiguous run."""
    rng = np.random.default_rng(6)
    for shape, cs in [((16, 64), (4, 32)), ((8, 32), (2, 32))]:
        arr = rng.integers(0, 2**16, shape, dtype=np.uint16)
        out = at_phase(np.zeros(arr.nbytes, np.uint8), 0).view(np.uint16).reshape(shape)
        batch, recs = _whole_chunk_records(arr, cs, out)
        accesses(lib)
        scatter(lib, at_phase(batch, 0), out, recs, 2, 2, (2, 1, 8, False, False))
        np.testing.assert_array_equal(out, arr)
        assert accesses(lib) == {1: 0, 2: 0, 4: 0, 8: 0, 16: arr.nbytes // 16}


# The CPU's placement (kernels/host_scatter.cpp, as built by setup.py and loaded by
# gpuzarr.host_lib): the same records, the same gpz_window_dims, rows by memcpy.


def _host_scatter():
    if host_lib.built():
        return host_lib
    if shutil.which("c++") or shutil.which("g++"):
        pytest.fail("gpuzarr._host_lib is not built on a machine with a C++ compiler: reinstall (pip install -e .)")
    pytest.skip("no C++ compiler here: gpuzarr._host_lib is not built; the CPU places through NumPy")


@pytest.mark.parametrize("itemsize", [1, 2, 4, 8, 16])
@pytest.mark.parametrize("ndim", range(9))
def test_host_scatter_matches_numpy(itemsize, ndim):
    hs = _host_scatter()
    for contiguous in (False, True):
        for reverse in ((), tuple(range(0, ndim, 2))):  # negative output strides on every other dim
            case = Case(900 + 10 * itemsize + ndim + contiguous, ndim, itemsize, contiguous=contiguous,
                        reverse_dims=reverse)
            got = case.base.copy()
            hs.scatter(case.batch, got, case.records(), ndim, itemsize)
            np.testing.assert_array_equal(got, case.expected(), err_msg=f"contiguous={contiguous} reverse={reverse}")


def _swapped(a: np.ndarray, unit: int) -> np.ndarray:
    """`a` with the bytes of each `unit`-byte unit of its items reversed."""
    items = np.ascontiguousarray(a).view(np.uint8).reshape(a.shape + (a.itemsize // unit, unit))
    return np.ascontiguousarray(items[..., ::-1]).reshape(a.shape + (a.itemsize,)).view(a.dtype)[..., 0]


@pytest.mark.parametrize("itemsize,unit", [(2, 2), (4, 4), (8, 8), (8, 4), (16, 8)])
@pytest.mark.parametrize("ndim", [0, 1, 2, 3, 5])
def test_host_scatter_swaps_units(itemsize, unit, ndim):
    """A big-endian array on a little-endian machine: each unit's bytes reversed on the way
    (8-byte items of 4-byte units: complex64; 16 of 8: complex128)."""
    hs = _host_scatter()
    case = Case(300 + 10 * itemsize + ndim + unit, ndim, itemsize, reverse_dims=(0,) if ndim else ())
    expected = case.base.copy()
    for c in range(case.nchunks):
        case.dst_view(expected, c)[...] = _swapped(case.src_window(c), unit)
    got = case.base.copy()
    hs.scatter(case.batch, got, case.records(), ndim, itemsize, unit)
    np.testing.assert_array_equal(got, expected)
    with pytest.raises(ValueError, match="not 3"):
        hs.scatter(case.batch, got, case.records(), ndim, itemsize, 3)


def test_host_scatter_whole_chunks_and_empty_records():
    hs = _host_scatter()
    rng = np.random.default_rng(15)
    arr = rng.integers(0, 2**16, (10, 7, 9), dtype=np.uint16)
    out = np.zeros_like(arr)
    batch, recs = _whole_chunk_records(arr, (4, 3, 5), out)
    hs.scatter(batch, out, recs, 3, 2)
    np.testing.assert_array_equal(out, arr)
    hs.scatter(batch, out, recs[:0], 3, 2)  # no records: nothing touched, no call
    recs[:, K.SCATTER_REC_COUNT] = 0  # windows of no element: nothing written
    untouched = np.zeros_like(arr)
    hs.scatter(batch, untouched, recs, 3, 2)
    assert not untouched.any()


@pytest.mark.parametrize("itemsize", [1, 2, 4, 8, 16])
@pytest.mark.parametrize("ndim", [0, 1, 2, 3, 4, 8])
def test_fill_matches_numpy(lib, itemsize, ndim):
    for contiguous in (False, True):
        case = Case(500 + 10 * itemsize + ndim + contiguous, ndim, itemsize, contiguous=contiguous)
        pattern = np.random.default_rng(itemsize).integers(0, 256, itemsize, dtype=np.uint8)
        expected = case.expected(pattern.view(case.dt)[0])
        recs = case.records(garbage_src=True)
        for launch in LAUNCHES:
            for phase in (0, 5, 8):
                got = at_phase(case.base, phase)
                scatter(lib, None, got, recs, itemsize, ndim, launch, fill=pattern.tobytes())
                np.testing.assert_array_equal(got, expected, err_msg=f"launch={launch} phase={phase}")
        accesses(lib)


@pytest.mark.parametrize("itemsize", [1, 2, 3, 4, 8, 16, 24])
@pytest.mark.parametrize("ndim", [0, 1, 2, 3, 5])
def test_host_fill_matches_numpy(itemsize, ndim):
    """The host's fill of the fill kernel's records: items of any size (structured, fixed-length
    strings), a pattern of distinct bytes or of one byte (memset), negative output strides."""
    hs = _host_scatter()
    for contiguous in (False, True):
        case = Case(700 + 10 * itemsize + ndim + contiguous, ndim, itemsize, contiguous=contiguous,
                    reverse_dims=(0,) if ndim else ())
        recs = case.records(garbage_src=True)
        for pattern in (np.random.default_rng(itemsize).integers(0, 256, itemsize, dtype=np.uint8),
                        np.full(itemsize, 0xA5, dtype=np.uint8)):
            got = case.base.copy()
            hs.fill(got[: got.size // itemsize * itemsize].view(case.dt), recs, pattern.tobytes(), ndim)
            np.testing.assert_array_equal(got, case.expected(pattern.view(case.dt)[0]),
                                          err_msg=f"contiguous={contiguous} pattern={pattern}")
    with pytest.raises(ValueError, match="takes 2 bytes"):
        hs.fill(np.zeros(4, np.uint16), recs, b"\0", ndim)


# --------------------------------------------------------------------------------------------
# plain copies: the copy tables of gpu_layout, run as 1-d windows of gpz_scatter_1


def _copy_table(rng, n, max_size):
    """n copies of random sizes (and 0, 1 and 4096 bytes) between random, unaligned, disjoint places."""
    sizes = rng.integers(0, max_size, n)
    sizes[:3] = [0, 1, 4096]
    src = np.cumsum(sizes + rng.integers(0, 20, n)) - sizes
    dst = np.cumsum(sizes + rng.integers(0, 20, n)) - sizes
    return {"src": src.astype(np.int64), "dst": dst.astype(np.int64), "size": sizes.astype(np.int64)}


@pytest.mark.parametrize("ps,pd", PHASES)
def test_copies_match_numpy(lib, ps, pd):
    rng = np.random.default_rng(ps * 16 + pd)
    table = _copy_table(rng, 40, 300)
    src = at_phase(rng.integers(0, 256, int((table["src"] + table["size"]).max()) + 8, dtype=np.uint8), ps)
    base = rng.integers(0, 256, int((table["dst"] + table["size"]).max()) + 8, dtype=np.uint8)
    expected = base.copy()
    for s, d, n in zip(table["src"], table["dst"], table["size"]):
        expected[d:d + n] = src[s:s + n]
    for launch in LAUNCHES:
        got = at_phase(base, pd)
        scatter(lib, src, got, copy_records(table), 1, 1, launch)
        np.testing.assert_array_equal(got, expected, err_msg=f"launch={launch}")
    apart = (ps - pd) % 16
    assert accesses(lib)[apart & -apart or 16] > 0  # words as wide as src and dst agree modulo 16


def test_copy_words_follow_mutual_alignment(lib):
    """One 4096-byte copy: 16-byte words when source and destination agree modulo 16 (with a
    byte head and tail when both are off by the same amount), narrower words when they agree
    modulo 8 or 4 only, bytes otherwise."""
    table = {"src": np.array([0]), "dst": np.array([0]), "size": np.array([4096])}
    data = np.arange(4096 + 64, dtype=np.uint8)
    for (ps, pd), want in {(0, 0): {16: 256}, (3, 3): {1: 16, 16: 255}, (8, 0): {8: 512}, (4, 8): {4: 1024},
                           (1, 2): {1: 4096}}.items():
        src, dst = at_phase(data, ps), at_phase(np.zeros(4096, np.uint8), pd)
        scatter(lib, src, dst, copy_records(table), 1, 1, (1, 1, 32, False, False))
        np.testing.assert_array_equal(dst, src[:4096])
        assert {w: n for w, n in accesses(lib).items() if n} == want, (ps, pd)


# --------------------------------------------------------------------------------------------
# what thread 0 makes of a record: merged dims, word width, 32- or 64-bit indices


def record(count, dstride, shape=None, start=None, step=None, src=0, dst=0):
    ndim = len(count)
    rec = np.zeros(K.SCATTER_REC_LEN, dtype=np.int64)
    rec[K.SCATTER_REC_SRC], rec[K.SCATTER_REC_DST] = src, dst
    rec[K.SCATTER_REC_SHAPE:K.SCATTER_REC_SHAPE + ndim] = count if shape is None else shape
    rec[K.SCATTER_REC_START:K.SCATTER_REC_START + ndim] = 0 if start is None else start
    rec[K.SCATTER_REC_STEP:K.SCATTER_REC_STEP + ndim] = 1 if step is None else step
    rec[K.SCATTER_REC_COUNT:K.SCATTER_REC_COUNT + ndim] = count
    rec[K.SCATTER_REC_DSTRIDE:K.SCATTER_REC_DSTRIDE + ndim] = dstride
    return rec


def prepare(lib, rec, itemsize, fill=False, src_addr=1 << 20, dst_addr=1 << 30, nthreads=256):
    out = np.zeros(len(PREPARED), dtype=np.int64)
    ndim = int(np.count_nonzero(rec[K.SCATTER_REC_COUNT:K.SCATTER_REC_COUNT + K.SCATTER_MAX_NDIM]))
    lib.cpu_window_prepare(ptr(rec), ndim, itemsize, int(fill), src_addr, dst_addr, nthreads, ptr(out))
    return dict(zip(PREPARED, out.tolist()))


def test_prepare_merges_dims_into_rows(lib):
    # a (4, 32) uint16 chunk into a (16, 64) C-order output: rows of 64 bytes, one outer dim
    w = prepare(lib, record((4, 32), (128, 2)), 2)
    assert (w["rowbytes"], w["nd"], w["rows"], w["width"], w["units"], w["total"]) == (64, 1, 4, 16, 4, 16)
    # as wide as the output, with a dim of count 1 in front: one run of the whole chunk
    w = prepare(lib, record((1, 4, 32), (8192, 64, 2)), 2)
    assert (w["rowbytes"], w["nd"], w["rows"], w["total"]) == (256, 0, 1, 16)
    # a step along the last axis: rows of one element, both dims merged into one outer dim
    w = prepare(lib, record((3, 5), (40, 8), shape=(3, 10), step=(1, 2)), 4)
    assert (w["rowbytes"], w["nd"], w["outer_count"], w["rows"], w["width"], w["units"]) == (4, 1, 15, 15, 4, 1)
    w = prepare(lib, record((3, 5), (20, 4), shape=(3, 5), step=(1, 1)), 4)  # contiguous everywhere
    assert (w["rowbytes"], w["nd"]) == (60, 0)
    w = prepare(lib, record((2, 0, 3), (48, 24, 8)), 8)  # an empty window
    assert (w["rows"], w["total"]) == (0, 0)


def test_prepare_source_offset(lib):
    w = prepare(lib, record((2, 3), (100, 4), shape=(5, 7), start=(1, 2), src=1000), 4)
    assert w["src"] == 1000 + (1 * 7 + 2) * 4


def test_prepare_widths(lib):
    """The fewest accesses per row: 8-byte rows 4 bytes off 16 go as two 4-byte words, not a
    byte head and tail around one 8-byte word."""
    rows8 = record((4, 2), (64, 4), shape=(4, 2))  # rows of 8 bytes (two uint32), 8 and 64 bytes apart
    assert prepare(lib, rows8, 4, src_addr=4, dst_addr=4)["width"] == 4
    assert prepare(lib, rows8, 4, src_addr=0, dst_addr=0)["width"] == 8
    assert prepare(lib, rows8, 4, src_addr=0, dst_addr=2)["width"] == 2
    wide = record((4, 256), (1024, 1))  # rows of 256 bytes
    w = prepare(lib, wide, 1, src_addr=3, dst_addr=19)
    assert (w["width"], w["head"], w["body"], w["units"]) == (16, 13, 15, 13 + 15 + 3)
    short = prepare(lib, record((4, 64), (1024, 1)), 1, src_addr=3, dst_addr=19)  # 64 bytes: 8 beats 16
    assert (short["width"], short["head"], short["body"], short["units"]) == (8, 5, 7, 5 + 7 + 3)
    odd_stride = record((4, 256), (1000, 1))  # output rows 1000 bytes apart: 8-byte words at most
    assert prepare(lib, odd_stride, 1, src_addr=0, dst_addr=0)["width"] == 8
    # fill: only the output counts
    assert prepare(lib, wide, 1, fill=True, src_addr=3, dst_addr=0)["width"] == 16


def test_32_bit_indices_only_when_the_window_fits(lib):
    """32-bit index arithmetic needs the window's units (plus the launch's threads) and both
    byte spans below 2**31; records describing 2**31 elements and more are only prepared, never run."""
    big = prepare(lib, record((1 << 16, 1 << 16), (1 << 16, 1), shape=(1 << 16, 1 << 17), step=(1, 2)), 1)
    assert big["total"] == 1 << 32 and not big["fits32"]
    fits = prepare(lib, record((1 << 15, 1 << 15), (1 << 16, 1), shape=(1 << 15, 1 << 15)), 1)
    assert fits["rowbytes"] == 1 << 15 and fits["total"] == 1 << 26 and fits["fits32"]  # 2**30 bytes in words
    edge = record((1 << 16, (1 << 15) - 1), (1 << 15, 1), shape=(1 << 16, 1 << 15), step=(1, 1))
    w = prepare(lib, edge, 1, src_addr=0, dst_addr=1)  # byte copies: 2**31 - 2**16 units
    assert w["width"] == 1 and w["total"] == (1 << 31) - (1 << 16) and w["spans_fit32"]
    assert prepare(lib, edge, 1, src_addr=0, dst_addr=1, nthreads=(1 << 16) - 1)["fits32"]
    assert not prepare(lib, edge, 1, src_addr=0, dst_addr=1, nthreads=(1 << 16))["fits32"]  # k + nthreads
    far = prepare(lib, record((2, 16), (1 << 31, 1)), 1)  # 32 bytes, rows 2 GiB apart in the output
    assert far["total"] == 2 and not far["spans_fit32"] and not far["fits32"]
    back = prepare(lib, record((2, 16), (-(1 << 31), 1), shape=(2, 16)), 1)  # the same, backwards
    assert not back["fits32"]
    src_far = prepare(lib, record((2, 16), (16, 1), shape=(1 << 28, 16), step=(1 << 27, 1)), 1)
    assert not src_far["spans_fit32"]  # source rows 2**31 bytes apart
    near = prepare(lib, record((2, 16), (16, 1), shape=(1 << 27, 16), step=(1 << 26, 1)), 1)
    assert near["spans_fit32"] and near["fits32"]  # 2**30 bytes apart
