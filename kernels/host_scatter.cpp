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

#include <type_traits>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

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

#if defined(__SSE2__)
// SSE2's interleave of the low (or high) halves of two registers, by units of B bytes.
template <int B, bool HIGH>
static inline __m128i gpz_unpack(__m128i a, __m128i b)
{
    if constexpr (B == 1) return HIGH ? _mm_unpackhi_epi8(a, b) : _mm_unpacklo_epi8(a, b);
    if constexpr (B == 2) return HIGH ? _mm_unpackhi_epi16(a, b) : _mm_unpacklo_epi16(a, b);
    if constexpr (B == 4) return HIGH ? _mm_unpackhi_epi32(a, b) : _mm_unpacklo_epi32(a, b);
    if constexpr (B == 8) return HIGH ? _mm_unpackhi_epi64(a, b) : _mm_unpacklo_epi64(a, b);
}

// One tile of N x N items of B bytes (N = 16 / B: a register a row): source row r (16 bytes at
// s + r * ss) becomes destination column r (row c: 16 bytes at d + c * ds). log2(N) rounds of
// interleaving row i with row i + N/2 transpose the tile.
template <int B>
static inline void gpz_tile(const gpz_u8* s, gpz_i64 ss, gpz_u8* d, gpz_i64 ds)
{
    constexpr int N = 16 / B, H = N / 2;
    __m128i r[N], t[N];
    for (int i = 0; i < N; ++i) r[i] = _mm_loadu_si128((const __m128i*)(s + i * ss));
    for (int round = 1; round < N; round *= 2) {
        for (int i = 0; i < H; ++i) {
            t[2 * i] = gpz_unpack<B, false>(r[i], r[i + H]);
            t[2 * i + 1] = gpz_unpack<B, true>(r[i], r[i + H]);
        }
        for (int i = 0; i < N; ++i) r[i] = t[i];
    }
    for (int c = 0; c < N; ++c) _mm_storeu_si128((__m128i*)(d + c * ds), r[c]);
}
#endif

// Items (i, j), i < n0, j < nk, of B bytes from s + i * ss + j * B to d + i * B + j * ds: a 2-D
// transpose, by tiles of registers where SSE2 is there, the rest item by item.
template <int B>
static void gpz_transpose(const gpz_u8* s, gpz_i64 ss, gpz_u8* d, gpz_i64 ds, gpz_i64 n0, gpz_i64 nk)
{
    gpz_i64 i = 0;
#if defined(__SSE2__)
    constexpr gpz_i64 N = 16 / B;
    for (; i + N <= n0; i += N) {
        gpz_i64 j = 0;
        for (; j + N <= nk; j += N) gpz_tile<B>(s + i * ss + j * B, ss, d + i * B + j * ds, ds);
        for (; j < nk; ++j)
            for (gpz_i64 k = i; k < i + N; ++k) memcpy(d + k * B + j * ds, s + k * ss + j * B, B);
    }
#endif
    for (; i < n0; ++i)
        for (gpz_i64 j = 0; j < nk; ++j) memcpy(d + i * B + j * ds, s + i * ss + j * B, B);
}

// A window of single items whose output is contiguous along one dim (the nearest, after
// gpz_host_write_order) and its source along another (a transposed chunk: a transpose codec's,
// 16 channels last stored first say, or a v2 order-F array's) placed as 2-D transposes, one per
// position of its other dims (uint8, 16 channels stored first and read last: 3.4 GB/s, against
// 1.3 item by item). False where the window is not one (nothing placed).
static bool gpz_host_transpose(const gpz_window* w, const gpz_u8* s, gpz_u8* d, gpz_i64 itemsize)
{
    if (w->rowbytes != itemsize || w->nd < 2 || w->dstride[0] != itemsize ||
        (itemsize != 1 && itemsize != 2 && itemsize != 4 && itemsize != 8))
        return false;
    int k = 1;
    while (k < w->nd && w->sstride[k] != itemsize) ++k;
    if (k == w->nd || w->count[0] < 16 / itemsize || w->count[k] < 16 / itemsize) return false;
    gpz_window o;  // the other dims: a row of theirs is one 2-D transpose
    o.nd = 0;
    o.rows = 1;
    for (int j = 1; j < w->nd; ++j) {
        if (j == k) continue;
        o.count[o.nd] = w->count[j];
        o.sstride[o.nd] = w->sstride[j];
        o.dstride[o.nd] = w->dstride[j];
        o.rows *= w->count[j];
        ++o.nd;
    }
    const gpz_i64 n0 = w->count[0], nk = w->count[k], ss = w->sstride[0], ds = w->dstride[k];
    auto each = [&](auto items) {  // items: the item size, as a type
        constexpr int B = decltype(items)::value;
        gpz_host_rows(&o, s, d, [=](const gpz_u8* a, gpz_u8* b) { gpz_transpose<B>(a, ss, b, ds, n0, nk); });
    };
    switch (itemsize) {
        case 1: each(std::integral_constant<int, 1>()); break;
        case 2: each(std::integral_constant<int, 2>()); break;
        case 4: each(std::integral_constant<int, 4>()); break;
        default: each(std::integral_constant<int, 8>()); break;
    }
    return true;
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
        } else if (!gpz_host_transpose(&w, s, d, itemsize)) {
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
int gpz_host_version(void) { return 16; }

}  // extern "C"
