// Per-thread logic of the batched placement kernels in scatter.cu, shared with the CPU tests
// (compiled with g++, where __host__/__device__ are empty).
//
// A batch of N decoded chunks lies in one buffer; chunk c is a C-order array of `itemsize`-byte
// elements starting at byte rec[GPZ_REC_SRC] of that buffer. Each chunk has one record of
// GPZ_REC_LEN int64 values (a row of an (N, GPZ_REC_LEN) int64 table):
//   [GPZ_REC_SRC]          byte offset of the chunk in the batch buffer (scatter only)
//   [GPZ_REC_DST]          byte offset in the output of the window's first element
//   [GPZ_REC_SHAPE + d]    chunk shape (scatter only)
//   [GPZ_REC_START + d]    first source index along d, within the chunk (scatter only)
//   [GPZ_REC_STEP + d]     source step along d, >= 1 (scatter only)
//   [GPZ_REC_COUNT + d]    window length along d (0: nothing to do)
//   [GPZ_REC_DSTRIDE + d]  output stride along d in bytes (any sign)
// for d < ndim (ndim <= GPZ_MAX_NDIM, the same for the whole launch; slots d >= ndim are ignored).
// Element k (C order over the counts) of the window is copied from source index
// start + k_d * step along every d to output byte DST + sum(k_d * DSTRIDE_d).
//
// Contract (checked by the host before launch, never here): every window lies inside its chunk
// and the output; windows of different chunks do not overlap in the output; addresses are
// multiples of min(itemsize, 8) (natural alignment of the copy type below).
#ifndef GPUZARR_SCATTER_CORE_CUH
#define GPUZARR_SCATTER_CORE_CUH

#include "gpz_common.cuh"

#define GPZ_MAX_NDIM 8
#define GPZ_REC_SRC 0
#define GPZ_REC_DST 1
#define GPZ_REC_SHAPE 2
#define GPZ_REC_START (GPZ_REC_SHAPE + GPZ_MAX_NDIM)
#define GPZ_REC_STEP (GPZ_REC_START + GPZ_MAX_NDIM)
#define GPZ_REC_COUNT (GPZ_REC_STEP + GPZ_MAX_NDIM)
#define GPZ_REC_DSTRIDE (GPZ_REC_COUNT + GPZ_MAX_NDIM)
#define GPZ_REC_LEN (GPZ_REC_DSTRIDE + GPZ_MAX_NDIM)

// The type one element is copied as, by size in bytes.
struct gpz_u128 {
    gpz_u64 lo, hi;
};
template <int N> struct gpz_elem;
template <> struct gpz_elem<1> { typedef unsigned char type; };
template <> struct gpz_elem<2> { typedef unsigned short type; };
template <> struct gpz_elem<4> { typedef unsigned int type; };
template <> struct gpz_elem<8> { typedef gpz_u64 type; };
template <> struct gpz_elem<16> { typedef gpz_u128 type; };

// The fill pattern's first N bytes as an element: lo holds bytes 0..7 and hi bytes 8..15 of the
// pattern, little-endian (as the device and every host gpuzarr supports are).
template <int N> __host__ __device__ inline typename gpz_elem<N>::type gpz_fill_value(gpz_u64 lo, gpz_u64 hi)
{
    (void)hi;
    return (typename gpz_elem<N>::type)lo;
}
template <> __host__ __device__ inline gpz_u128 gpz_fill_value<16>(gpz_u64 lo, gpz_u64 hi)
{
    gpz_u128 v;
    v.lo = lo;
    v.hi = hi;
    return v;
}

// Number of elements in a chunk's window.
__host__ __device__ inline gpz_i64 gpz_window_size(const gpz_i64* rec, int ndim)
{
    gpz_i64 n = 1;
    for (int d = 0; d < ndim; ++d) n *= rec[GPZ_REC_COUNT + d];
    return n;
}

// Byte offset in the output of window element k (C order over the counts).
__host__ __device__ inline gpz_i64 gpz_window_dst(const gpz_i64* rec, int ndim, gpz_i64 k)
{
    gpz_i64 dst = rec[GPZ_REC_DST];
    for (int d = ndim - 1; d >= 0; --d) {
        const gpz_i64 count = rec[GPZ_REC_COUNT + d];
        const gpz_i64 q = k / count;
        dst += (k - q * count) * rec[GPZ_REC_DSTRIDE + d];
        k = q;
    }
    return dst;
}

// Byte offsets, in the batch buffer and in the output, of window element k (C order over the counts).
__host__ __device__ inline void gpz_window_src_dst(const gpz_i64* rec, int ndim, gpz_i64 itemsize, gpz_i64 k,
                                                   gpz_i64* src_byte, gpz_i64* dst_byte)
{
    gpz_i64 src = 0;          // element offset in the chunk
    gpz_i64 src_stride = 1;   // C-order stride of dimension d, in elements
    gpz_i64 dst = rec[GPZ_REC_DST];
    for (int d = ndim - 1; d >= 0; --d) {
        const gpz_i64 count = rec[GPZ_REC_COUNT + d];
        const gpz_i64 q = k / count;
        const gpz_i64 i = k - q * count;
        k = q;
        src += (rec[GPZ_REC_START + d] + i * rec[GPZ_REC_STEP + d]) * src_stride;
        src_stride *= rec[GPZ_REC_SHAPE + d];
        dst += i * rec[GPZ_REC_DSTRIDE + d];
    }
    *src_byte = rec[GPZ_REC_SRC] + src * itemsize;
    *dst_byte = dst;
}

// What one CUDA thread does in a batched scatter: grid row `row` of `nrows` walks the chunks
// row, row + nrows, ...; inside each window, thread `tid` of `nthreads` (over the grid's x
// dimension) copies elements tid, tid + nthreads, ...
template <int N>
__host__ __device__ inline void gpz_scatter_thread(const gpz_u8* src, gpz_u8* dst, const gpz_i64* recs,
                                                   gpz_i64 nchunks, int ndim, gpz_i64 row, gpz_i64 nrows,
                                                   gpz_i64 tid, gpz_i64 nthreads)
{
    typedef typename gpz_elem<N>::type T;
    for (gpz_i64 c = row; c < nchunks; c += nrows) {
        const gpz_i64* rec = recs + c * GPZ_REC_LEN;
        const gpz_i64 n = gpz_window_size(rec, ndim);
        for (gpz_i64 k = tid; k < n; k += nthreads) {
            gpz_i64 s, d;
            gpz_window_src_dst(rec, ndim, N, k, &s, &d);
            *(T*)(dst + d) = *(const T*)(src + s);
        }
    }
}

// The same walk for the fill variant: every element of every window receives the fill pattern.
template <int N>
__host__ __device__ inline void gpz_fill_thread(gpz_u8* dst, const gpz_i64* recs, gpz_i64 nchunks, int ndim,
                                                gpz_u64 fill_lo, gpz_u64 fill_hi, gpz_i64 row, gpz_i64 nrows,
                                                gpz_i64 tid, gpz_i64 nthreads)
{
    typedef typename gpz_elem<N>::type T;
    const T value = gpz_fill_value<N>(fill_lo, fill_hi);
    for (gpz_i64 c = row; c < nchunks; c += nrows) {
        const gpz_i64* rec = recs + c * GPZ_REC_LEN;
        const gpz_i64 n = gpz_window_size(rec, ndim);
        for (gpz_i64 k = tid; k < n; k += nthreads) *(T*)(dst + gpz_window_dst(rec, ndim, k)) = value;
    }
}

#endif  // GPUZARR_SCATTER_CORE_CUH
