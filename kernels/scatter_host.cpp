// The CPU's placement of decoded chunks: the very records the GPU's scatter kernel takes
// (scatter_core.cuh: one int64 row per placement), reduced to rows by the same gpz_window_dims,
// then copied row by row with memcpy. Built as gpuzarr._scatter_host (setup.py) and called
// through ctypes, which releases the GIL for the call: a part's pieces are placed in one call,
// not one NumPy assignment each (each of which drops and retakes the GIL, a context switch when
// another thread wants it: ~20 us on a shared VM, more than the copy of a piece).
//
// Contract (as the kernel's, checked by the host before the call, never here): every window
// lies inside its chunk in `src` and inside `dst`; windows of different records do not overlap.
#include <string.h>

#include "scatter_core.cuh"

// Rows of W bytes (W known at compile time: element-wise copies of strided reads), or of
// w->rowbytes (W == 0). The outer dims are walked by counters, innermost first.
template <int W>
static inline void gpz_host_rows(const gpz_window* w, const gpz_u8* s, gpz_u8* d)
{
    gpz_i64 at[GPZ_MAX_NDIM] = {0};
    const size_t rowbytes = W ? (size_t)W : (size_t)w->rowbytes;
    for (gpz_i64 r = 0; r < w->rows; ++r) {
        memcpy(d, s, W ? (size_t)W : rowbytes);
        for (int k = 0; k < w->nd; ++k) {
            s += w->sstride[k];
            d += w->dstride[k];
            if (++at[k] < w->count[k]) break;
            s -= w->count[k] * w->sstride[k];
            d -= w->count[k] * w->dstride[k];
            at[k] = 0;
        }
    }
}

extern "C" {

// Place records 0..n-1 (n rows of GPZ_REC_LEN int64 values) from `src` into `dst`.
void gpz_scatter_host(const gpz_u8* src, gpz_u8* dst, const gpz_i64* recs, gpz_i64 n, int ndim, gpz_i64 itemsize)
{
    gpz_window w;
    for (gpz_i64 c = 0; c < n; ++c) {
        gpz_window_dims(&w, recs + c * GPZ_REC_LEN, ndim, itemsize, false);
        const gpz_u8* s = src + w.src;
        gpz_u8* d = dst + w.dst;
        switch (w.rowbytes) {
            case 1: gpz_host_rows<1>(&w, s, d); break;
            case 2: gpz_host_rows<2>(&w, s, d); break;
            case 4: gpz_host_rows<4>(&w, s, d); break;
            case 8: gpz_host_rows<8>(&w, s, d); break;
            case 16: gpz_host_rows<16>(&w, s, d); break;
            default: gpz_host_rows<0>(&w, s, d); break;
        }
    }
}

// The record layout this library was built with, for the loader to check against its own.
gpz_i64 gpz_scatter_host_rec_len(void) { return GPZ_REC_LEN; }

}  // extern "C"
