// Per-thread logic of blosc 1.x byte- and bit-unshuffle, shared by the CUDA kernels in
// bitshuffle.cu and by the CPU tests (compiled with gcc, where __host__/__device__ are empty).
//
// Contract (checked by the host before launch, never here):
//   - src and dst do not overlap; dst has room for nbytes bytes of every block;
//   - nbytes >= 0 and 1 <= typesize <= 255 for every block.
// Semantics are those of c-blosc 1.21 (the blosc numcodecs bundles), blosc_d() + shuffle.c:
//   byte shuffle: only when typesize > 1; n = nbytes / typesize elements are unshuffled,
//                 the nbytes % typesize trailing bytes are copied as they are;
//   bit shuffle:  only when nbytes >= typesize AND n = nbytes / typesize is a multiple of 8;
//                 otherwise the WHOLE block was stored unshuffled and is copied. When it applies,
//                 the nbytes % typesize trailing bytes are copied as they are.
//                 (c-blosc2 shuffles the first n - n % 8 elements instead, but only in its
//                 format versions >= 3; blosc 1.x frames are format version 2.)
#ifndef GPUZARR_BITSHUFFLE_CORE_CUH
#define GPUZARR_BITSHUFFLE_CORE_CUH

#include "gpz_common.cuh"

// Shuffle kinds, as recorded per block by gpuzarr.blosc_frames.
#define GPZ_SHUFFLE_NONE 0
#define GPZ_SHUFFLE_BYTE 1
#define GPZ_SHUFFLE_BIT 2

// Number of leading elements of a block that blosc byte-shuffled (0: the block is a plain copy).
__host__ __device__ inline gpz_i64 gpz_byteshuffled_elems(gpz_i64 nbytes, gpz_i64 typesize)
{
    return typesize > 1 ? nbytes / typesize : 0;
}

// Number of leading elements of a block that blosc bit-shuffled (0: the block is a plain copy).
__host__ __device__ inline gpz_i64 gpz_bitshuffled_elems(gpz_i64 nbytes, gpz_i64 typesize)
{
    if (typesize < 1 || nbytes < typesize) return 0;
    const gpz_i64 n = nbytes / typesize;
    return (n % 8 == 0) ? n : 0;
}

// Transpose an 8x8 bit matrix held in a 64-bit word, byte r = row r, bit c (LSB first) = column c:
// bit c of byte r moves to bit r of byte c. Three rounds of delta swaps (2x2, 4x4, 8x8 sub-blocks).
__host__ __device__ inline gpz_u64 gpz_transpose_8x8_bits(gpz_u64 x)
{
    gpz_u64 t;
    t = (x ^ (x >> 7)) & 0x00AA00AA00AA00AAULL;  // row even, column odd  <->  row + 1, column - 1
    x = x ^ t ^ (t << 7);
    t = (x ^ (x >> 14)) & 0x0000CCCC0000CCCCULL; // 2x2 tiles within 4x4 tiles
    x = x ^ t ^ (t << 14);
    t = (x ^ (x >> 28)) & 0x00000000F0F0F0F0ULL; // 4x4 tiles within the 8x8 matrix
    x = x ^ t ^ (t << 28);
    return x;
}

// Bit-unshuffle one work unit: 8 consecutive elements (group g) x one byte position j.
// Shuffled layout of n elements (n % 8 == 0): for byte position j, for bit k, a row of n bits
// (n / 8 bytes, element i at bit i % 8 of byte i / 8). Units are numbered u = j * (n / 8) + g,
// so neighbouring threads read neighbouring bytes of each bit row.
__host__ __device__ inline void gpz_bitunshuffle_unit(const gpz_u8* src, gpz_u8* dst, gpz_i64 n,
                                                      gpz_i64 typesize, gpz_i64 u)
{
    const gpz_i64 n8 = n >> 3;
    const gpz_i64 j = u / n8;
    const gpz_i64 g = u - j * n8;
    const gpz_u8* rows = src + j * 8 * n8 + g;  // bit row k of byte position j starts at (8j + k) * n8
    gpz_u64 x = 0;
    for (int k = 0; k < 8; ++k) x |= (gpz_u64)rows[k * n8] << (8 * k);
    x = gpz_transpose_8x8_bits(x);  // byte m now holds the 8 bits of byte j of element 8g + m
    gpz_u8* out = dst + g * 8 * typesize + j;
    for (int m = 0; m < 8; ++m) out[m * typesize] = (gpz_u8)(x >> (8 * m));
}

// One thread's share of bit-unshuffling one block: thread tid of nthreads takes every nthreads-th
// unit, then every nthreads-th byte of what is copied unchanged.
__host__ __device__ inline void gpz_bitunshuffle_block(const gpz_u8* src, gpz_u8* dst, gpz_i64 nbytes,
                                                       gpz_i64 typesize, gpz_i64 tid, gpz_i64 nthreads)
{
    const gpz_i64 n = gpz_bitshuffled_elems(nbytes, typesize);
    const gpz_i64 units = (n >> 3) * typesize;
    for (gpz_i64 u = tid; u < units; u += nthreads) gpz_bitunshuffle_unit(src, dst, n, typesize, u);
    for (gpz_i64 b = n * typesize + tid; b < nbytes; b += nthreads) dst[b] = src[b];
}

// One thread's share of byte-unshuffling one block: output byte b = i * typesize + j comes from
// src[j * n + i]; the trailing nbytes % typesize bytes (or the whole block) are copied.
__host__ __device__ inline void gpz_byteunshuffle_block(const gpz_u8* src, gpz_u8* dst, gpz_i64 nbytes,
                                                        gpz_i64 typesize, gpz_i64 tid, gpz_i64 nthreads)
{
    const gpz_i64 n = gpz_byteshuffled_elems(nbytes, typesize);
    const gpz_i64 shuffled = n * typesize;
    for (gpz_i64 b = tid; b < shuffled; b += nthreads) {
        const gpz_i64 i = b / typesize;
        const gpz_i64 j = b - i * typesize;
        dst[b] = src[j * n + i];
    }
    for (gpz_i64 b = shuffled + tid; b < nbytes; b += nthreads) dst[b] = src[b];
}

// What one CUDA thread does in a batched launch: CUDA block `block` of `nblocks_grid` walks the
// blosc blocks block, block + nblocks_grid, ...; inside each, thread `tid` of `nthreads` strides.
// Per blosc block i: src + src_offsets[i] -> dst + dst_offsets[i], nbytes[i] bytes, typesizes[i].
__host__ __device__ inline void gpz_unshuffle_batch_thread(int bit, const gpz_u8* src, gpz_u8* dst,
                                                           const gpz_i64* src_offsets,
                                                           const gpz_i64* dst_offsets,
                                                           const gpz_i64* nbytes,
                                                           const gpz_i64* typesizes, gpz_i64 nblocks,
                                                           gpz_i64 block, gpz_i64 nblocks_grid,
                                                           gpz_i64 tid, gpz_i64 nthreads)
{
    for (gpz_i64 i = block; i < nblocks; i += nblocks_grid) {
        if (bit)
            gpz_bitunshuffle_block(src + src_offsets[i], dst + dst_offsets[i], nbytes[i], typesizes[i],
                                   tid, nthreads);
        else
            gpz_byteunshuffle_block(src + src_offsets[i], dst + dst_offsets[i], nbytes[i], typesizes[i],
                                    tid, nthreads);
    }
}

#endif  // GPUZARR_BITSHUFFLE_CORE_CUH
