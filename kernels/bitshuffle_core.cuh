// Block-level logic of blosc 1.x byte- and bit-unshuffle, shared by the CUDA kernels in
// bitshuffle.cu and by the CPU tests (compiled with g++, where __host__/__device__ are empty;
// see gpz_common.cuh for Block).
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
//
// A block is unshuffled a tile of elements at a time, through shared memory: the threads read
// the tile's part of every shuffled row (consecutive threads, consecutive bytes), write it to the
// tile in output order, and after a barrier copy the tile out as one contiguous run. Indices
// inside a tile are 32-bit.
#ifndef GPUZARR_BITSHUFFLE_CORE_CUH
#define GPUZARR_BITSHUFFLE_CORE_CUH

#include "gpz_common.cuh"

// Shuffle kinds, as recorded per block by gpuzarr.blosc_frames.
#define GPZ_SHUFFLE_NONE 0
#define GPZ_SHUFFLE_BYTE 1
#define GPZ_SHUFFLE_BIT 2

// Bytes of the shared tile of one CUDA block (16-byte aligned): 8 elements of the largest
// typesize fit, and 256 threads move 16 bytes each per phase.
#define GPZ_TILE_BYTES 4096

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

// Elements per tile: as many as fit, a multiple of 8 for the bit shuffle (whole 8x8 bit groups).
__host__ __device__ inline int gpz_tile_elems(int bit, int typesize)
{
    const int e = GPZ_TILE_BYTES / typesize;
    return bit ? e & ~7 : e;
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

// Byte shuffle, one thread's share of loading elements i0..i0+e-1 of n into the tile (output
// order): byte j of element i0 + k was stored at src[j * n + i0 + k].
__host__ __device__ inline void gpz_byte_tile_load(const gpz_u8* src, gpz_u8* tile, gpz_i64 n, int typesize,
                                                   gpz_i64 i0, int e, int tid, int nthreads)
{
    for (int u = tid; u < typesize * e; u += nthreads) {
        const int j = u / e, k = u - j * e;
        tile[k * typesize + j] = src[j * n + i0 + k];
    }
}

// Bit shuffle, the same: for byte position j, bit row b holds bit b of byte j of every element
// (element i at bit i % 8 of byte i / 8 of the row); a unit is 8 elements x one byte position.
__host__ __device__ inline void gpz_bit_tile_load(const gpz_u8* src, gpz_u8* tile, gpz_i64 n, int typesize,
                                                  gpz_i64 i0, int e, int tid, int nthreads)
{
    const gpz_i64 n8 = n >> 3;
    const int groups = e >> 3;
    for (int u = tid; u < typesize * groups; u += nthreads) {
        const int j = u / groups, g = u - j * groups;
        const gpz_u8* rows = src + j * 8 * n8 + (i0 >> 3) + g;  // bit row b of byte j: (8j + b) * n8
        gpz_u64 x = 0;
        for (int b = 0; b < 8; ++b) x |= (gpz_u64)rows[b * n8] << (8 * b);
        x = gpz_transpose_8x8_bits(x);  // byte m now holds byte j of element 8g + m
        for (int m = 0; m < 8; ++m) tile[(g * 8 + m) * typesize + j] = (gpz_u8)(x >> (8 * m));
    }
}

// What the threads of a block do to unshuffle one blosc block (bit: bit shuffle, else byte),
// using `tile` (GPZ_TILE_BYTES of shared memory, 16-byte aligned).
template <class Block>
__host__ __device__ inline void gpz_unshuffle_block(Block& blk, gpz_u8* tile, int bit, const gpz_u8* src,
                                                    gpz_u8* dst, gpz_i64 nbytes, int typesize)
{
    const gpz_i64 n = bit ? gpz_bitshuffled_elems(nbytes, typesize) : gpz_byteshuffled_elems(nbytes, typesize);
    const int nt = (int)blk.threads();
    const int per_tile = gpz_tile_elems(bit, typesize);
    for (gpz_i64 i0 = 0; i0 < n; i0 += per_tile) {
        const int e = (int)(n - i0 < per_tile ? n - i0 : per_tile);
        blk.phase([&](gpz_i64 t) {
            if (bit)
                gpz_bit_tile_load(src, tile, n, typesize, i0, e, (int)t, nt);
            else
                gpz_byte_tile_load(src, tile, n, typesize, i0, e, (int)t, nt);
        });
        blk.phase([&](gpz_i64 t) { gpz_copy_bytes(dst + i0 * typesize, tile, (gpz_i64)e * typesize, t, nt); });
    }
    const gpz_i64 done = n * typesize;  // the rest was stored as it is
    blk.phase([&](gpz_i64 t) { gpz_copy_bytes(dst + done, src + done, nbytes - done, t, nt); });
}

// What one CUDA block does in a batched launch: block `block` of `nblocks_grid` walks the blosc
// blocks block, block + nblocks_grid, ...: src + src_offsets[i] -> dst + dst_offsets[i],
// nbytes[i] bytes of typesize typesizes[i].
template <class Block>
__host__ __device__ inline void gpz_unshuffle_batch_block(Block& blk, gpz_u8* tile, int bit, const gpz_u8* src,
                                                          gpz_u8* dst, const gpz_i64* src_offsets,
                                                          const gpz_i64* dst_offsets, const gpz_i64* nbytes,
                                                          const gpz_i64* typesizes, gpz_i64 nblocks,
                                                          gpz_i64 block, gpz_i64 nblocks_grid)
{
    for (gpz_i64 i = block; i < nblocks; i += nblocks_grid)
        gpz_unshuffle_block(blk, tile, bit, src + src_offsets[i], dst + dst_offsets[i], nbytes[i], (int)typesizes[i]);
}

#endif  // GPUZARR_BITSHUFFLE_CORE_CUH
