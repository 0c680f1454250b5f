// Batched blosc 1.x unshuffle: one launch undoes the shuffle of many blocks of many chunks.
// Launch: grid (G, 1, 1), block (T, 1, 1), any G >= 1 and T >= 1 (e.g. G = min(nblocks, 65535),
// T = 256); CUDA block b handles blosc blocks b, b + G, ..., through a static shared tile of
// GPZ_TILE_BYTES.
// Arguments (device pointers; every per-block array is int64 of length nblocks):
//   src, dst       decoded-but-shuffled bytes, and where the unshuffled bytes go (must not overlap)
//   src_offsets    byte offset of each blosc block in src
//   dst_offsets    byte offset of each blosc block in dst
//   nbytes         size of each blosc block in bytes
//   typesizes      blosc typesize of each block (1..255)
//   nblocks        number of blosc blocks
// The semantics (which bytes are shuffled, which are copied) are documented in bitshuffle_core.cuh.
#include "bitshuffle_core.cuh"

// One entry point per shuffle kind (bit = 1: bit shuffle, 0: byte shuffle).
#define GPZ_UNSHUFFLE_ENTRY(NAME, BIT)                                                                  \
    extern "C" __global__ void NAME(const gpz_u8* __restrict__ src, gpz_u8* __restrict__ dst,         \
                                    const gpz_i64* __restrict__ src_offsets,                          \
                                    const gpz_i64* __restrict__ dst_offsets,                          \
                                    const gpz_i64* __restrict__ nbytes,                               \
                                    const gpz_i64* __restrict__ typesizes, gpz_i64 nblocks)            \
    {                                                                                                 \
        __shared__ alignas(16) gpz_u8 tile[GPZ_TILE_BYTES];                                           \
        gpz_cuda_block blk;                                                                           \
        gpz_unshuffle_batch_block(blk, tile, BIT, src, dst, src_offsets, dst_offsets, nbytes, typesizes, \
                                  nblocks, blockIdx.x, gridDim.x);                                    \
    }

GPZ_UNSHUFFLE_ENTRY(gpz_bitunshuffle_batch, 1)
GPZ_UNSHUFFLE_ENTRY(gpz_byteunshuffle_batch, 0)
