// Batched placement: one launch copies a strided window of every decoded chunk of a batch into
// the output array (gpz_scatter_<itemsize>), or writes the fill value into the windows of chunks
// that are missing (gpz_fill_<itemsize>), however many chunks the batch holds. Plain byte copies
// are 1-d windows of gpz_scatter_1: a batched memcpy in 16-byte words where alignment allows.
// Launch: grid (GX, GY, 1), block (T, 1, 1), any GX, GY, T >= 1; grid row y handles chunks
// y, y + GY, ... (GY = min(nchunks, 65535)), and the GX * T threads of a row stride over the
// window's units (GX about ceil(largest window / T), capped by the caller).
// Arguments (device pointers):
//   src      the batch of decoded chunks (scatter only)
//   dst      the output array's first byte
//   recs     (nchunks, GPZ_REC_LEN) int64 table, one record per chunk; layout in scatter_core.cuh
//   nchunks  number of records
//   ndim     number of dimensions of every chunk, 0..GPZ_MAX_NDIM
//   fill_lo, fill_hi  (fill only) the fill value's bytes 0..7 and 8..15, little-endian
#include "scatter_core.cuh"

#define GPZ_SCATTER_ENTRY(N)                                                                          \
    extern "C" __global__ void gpz_scatter_##N(const gpz_u8* __restrict__ src, gpz_u8* __restrict__ dst, \
                                               const gpz_i64* __restrict__ recs, gpz_i64 nchunks,       \
                                               int ndim)                                                \
    {                                                                                                 \
        __shared__ gpz_window w;                                                                      \
        gpz_cuda_block blk;                                                                           \
        gpz_scatter_block<false>(blk, &w, src, dst, recs, nchunks, ndim, N, 0, 0, blockIdx.y, gridDim.y, \
                                 blockIdx.x, gridDim.x);                                              \
    }                                                                                                 \
    extern "C" __global__ void gpz_fill_##N(gpz_u8* __restrict__ dst, const gpz_i64* __restrict__ recs,  \
                                            gpz_i64 nchunks, int ndim, gpz_u64 fill_lo, gpz_u64 fill_hi) \
    {                                                                                                 \
        __shared__ gpz_window w;                                                                      \
        gpz_cuda_block blk;                                                                           \
        gpz_scatter_block<true>(blk, &w, dst, dst, recs, nchunks, ndim, N, fill_lo, fill_hi, blockIdx.y, \
                                gridDim.y, blockIdx.x, gridDim.x);                                    \
    }

GPZ_SCATTER_ENTRY(1)
GPZ_SCATTER_ENTRY(2)
GPZ_SCATTER_ENTRY(4)
GPZ_SCATTER_ENTRY(8)
GPZ_SCATTER_ENTRY(16)
