// The CPU's placement of decoded chunks: the very records the GPU's scatter kernel takes
// (scatter_core.cuh: one int64 row per placement), reduced to rows by the same gpz_window_dims,
// then copied row by row with memcpy, or with each unit's bytes reversed where the chunks hold
// another byte order than the output (a big-endian array read on a little-endian machine); and
// the fill value written into the windows of absent chunks (the fill kernel's records).
// Part of gpuzarr._host_lib (setup.py, with host_calls.cpp), called through ctypes, which releases the GIL for
// the call: a part's pieces are placed in one call, not one NumPy assignment each (each of which
// drops and retakes the GIL, a context switch when another thread wants it: ~20 us on a shared
// VM, more than the copy of a piece).
//
// Contract (as the kernel's, checked by the host before the call, never here): every window
// lies inside its chunk in `src` and inside `dst`; windows of different records do not overlap;
// with a swap, rows are whole units (the units divide the items).
#include <string.h>

#include "scatter_core.cuh"

// Walk the rows of window w from s and d, calling row(source, destination) for each: the
// innermost dim as a tight loop over locals (char writes may alias the window, so its fields
// would be reloaded per row), the outer dims by counters, innermost first.
template <class Row>
static inline void gpz_host_rows(const gpz_window* w, const gpz_u8* s, gpz_u8* d, Row row)
{
    if (w->rows == 0) return;
    const gpz_i64 n0 = w->nd ? w->count[0] : 1, ss0 = w->nd ? w->sstride[0] : 0, ds0 = w->nd ? w->dstride[0] : 0;
    gpz_i64 at[GPZ_MAX_NDIM] = {0};
    for (gpz_i64 r = 0; r < w->rows; r += n0) {
        const gpz_u8* a = s;
        gpz_u8* b = d;
        for (gpz_i64 j = 0; j < n0; ++j, a += ss0, b += ds0) row(a, b);
        for (int k = 1; k < w->nd; ++k) {
            s += w->sstride[k];
            d += w->dstride[k];
            if (++at[k] < w->count[k]) break;
            s -= w->count[k] * w->sstride[k];
            d -= w->count[k] * w->dstride[k];
            at[k] = 0;
        }
    }
}

// Rows of W bytes copied as they are (W known at compile time: the items of strided reads), or
// of w->rowbytes (W == 0).
template <int W>
static inline void gpz_host_copy(const gpz_window* w, const gpz_u8* s, gpz_u8* d)
{
    const size_t n = W ? (size_t)W : (size_t)w->rowbytes;
    gpz_host_rows(w, s, d, [n](const gpz_u8* a, gpz_u8* b) { memcpy(b, a, n); });
}

template <typename T> static inline T gpz_bswap(T v);
template <> inline unsigned short gpz_bswap(unsigned short v) { return (unsigned short)((v >> 8) | (v << 8)); }
template <> inline unsigned int gpz_bswap(unsigned int v) { return __builtin_bswap32(v); }
template <> inline gpz_u64 gpz_bswap(gpz_u64 v) { return __builtin_bswap64(v); }

// Rows copied unit by unit, each unit's bytes reversed (T: the unit's unsigned type).
template <typename T>
static inline void gpz_host_swap(const gpz_window* w, const gpz_u8* s, gpz_u8* d)
{
    const gpz_i64 units = w->rowbytes / (gpz_i64)sizeof(T);
    gpz_host_rows(w, s, d, [units](const gpz_u8* a, gpz_u8* b) {
        for (gpz_i64 u = 0; u < units; ++u) {
            T v;
            memcpy(&v, a + u * sizeof(T), sizeof(T));
            v = gpz_bswap(v);
            memcpy(b + u * sizeof(T), &v, sizeof(T));
        }
    });
}

// Rows shorter than a cache line walked with the output's nearest dim innermost (the dims sorted
// by their output stride): a transposed chunk (a transpose codec's, a v2 order-F array's) is
// walked in its stored order, so each element's write would land a whole output plane from the
// last, while strided reads cost less (no line to own). The pairs copied are the same in any order.
static inline void gpz_host_write_order(gpz_window* w)
{
    if (w->nd < 2 || w->rowbytes >= 64) return;
    for (int a = 1; a < w->nd; ++a)
        for (int b = a; b > 0; --b) {
            const gpz_i64 x = w->dstride[b - 1] < 0 ? -w->dstride[b - 1] : w->dstride[b - 1];
            const gpz_i64 y = w->dstride[b] < 0 ? -w->dstride[b] : w->dstride[b];
            if (x <= y) break;
            const gpz_i64 c = w->count[b], ss = w->sstride[b], ds = w->dstride[b];
            w->count[b] = w->count[b - 1], w->sstride[b] = w->sstride[b - 1], w->dstride[b] = w->dstride[b - 1];
            w->count[b - 1] = c, w->sstride[b - 1] = ss, w->dstride[b - 1] = ds;
        }
}

extern "C" {

// Place records 0..n-1 (n rows of GPZ_REC_LEN int64 values) from `src` into `dst`; `swap`: the
// size of the units whose bytes are reversed on the way (2, 4 or 8), or 0 for a plain copy.
// Returns 0, or -1 for a swap of another size (nothing placed).
int gpz_scatter_host(const gpz_u8* src, gpz_u8* dst, const gpz_i64* recs, gpz_i64 n, int ndim, gpz_i64 itemsize,
                     int swap)
{
    if (swap != 0 && swap != 2 && swap != 4 && swap != 8) return -1;
    gpz_window w;
    for (gpz_i64 c = 0; c < n; ++c) {
        gpz_window_dims(&w, recs + c * GPZ_REC_LEN, ndim, itemsize, false);
        gpz_host_write_order(&w);
        const gpz_u8* s = src + w.src;
        gpz_u8* d = dst + w.dst;
        if (swap == 2) {
            gpz_host_swap<unsigned short>(&w, s, d);
        } else if (swap == 4) {
            gpz_host_swap<unsigned int>(&w, s, d);
        } else if (swap == 8) {
            gpz_host_swap<gpz_u64>(&w, s, d);
        } else {
            switch (w.rowbytes) {
                case 1: gpz_host_copy<1>(&w, s, d); break;
                case 2: gpz_host_copy<2>(&w, s, d); break;
                case 4: gpz_host_copy<4>(&w, s, d); break;
                case 8: gpz_host_copy<8>(&w, s, d); break;
                case 16: gpz_host_copy<16>(&w, s, d); break;
                default: gpz_host_copy<0>(&w, s, d); break;
            }
        }
    }
    return 0;
}

// Fill records 0..n-1 (fill records: windows of the output `dst` itself, those of absent
// chunks) with the item `value` of `itemsize` bytes repeated: each window's first row is built by
// doubling copies of the item (a memset where the item's bytes are all one), the window's other
// rows are copies of it.
void gpz_fill_host(gpz_u8* dst, const gpz_i64* recs, gpz_i64 n, int ndim, gpz_i64 itemsize, const gpz_u8* value)
{
    bool one_byte = true;
    for (gpz_i64 b = 1; b < itemsize; ++b) one_byte = one_byte && value[b] == value[0];
    gpz_window w;
    for (gpz_i64 c = 0; c < n; ++c) {
        gpz_window_dims(&w, recs + c * GPZ_REC_LEN, ndim, itemsize, true);
        if (w.rows == 0) continue;
        gpz_u8* first = dst + w.dst;
        const size_t nbytes = (size_t)w.rowbytes;
        if (one_byte) {
            memset(first, value[0], nbytes);
        } else {
            memcpy(first, value, (size_t)itemsize);
            for (size_t done = (size_t)itemsize; done < nbytes; done *= 2)
                memcpy(first + done, first, done < nbytes - done ? done : nbytes - done);
        }
        gpz_host_rows(&w, first, first, [first, nbytes](const gpz_u8*, gpz_u8* b) {
            if (b != first) memcpy(b, first, nbytes);
        });
    }
}

// What this library was built as, for the loader to check against what it expects: the record
// layout, and the version of the library's functions and signatures (both source files).
gpz_i64 gpz_host_rec_len(void) { return GPZ_REC_LEN; }
int gpz_host_version(void) { return 10; }

}  // extern "C"
