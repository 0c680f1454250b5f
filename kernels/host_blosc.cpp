// Blosc frames in gpuzarr's host library: through c-blosc, except those of blosc's zlib format,
// whose streams libdeflate inflates (c-blosc's bundled zlib: 1.02 ms a 256 KiB chunk; libdeflate
// 0.60), then unshuffled here as c-blosc 1.21's blosc_d does. Part of gpuzarr._host_lib (setup.py).
//
// A blosc 1.x frame (gpuzarr/blosc_frames.py says it at length): a 16-byte header (version 2,
// versionlz 1, flags, typesize; int32 LE nbytes, blocksize, cbytes), one int32 LE start a block,
// then the blocks; a block holds `nsplits` streams (typesize of them where the "don't split" flag
// is clear, typesize <= 16, blocksize / typesize >= 128 and the block is not the shorter last one;
// else 1), each an int32 LE size then that many bytes: a stream as long as its decoded bytes is
// stored as it is, else (zlib format) one zlib stream (c-blosc's compress2). A memcpyed frame
// (flag 0x2) is the header and the bytes as they are. A block's streams, concatenated, are the
// block shuffled (flag 0x1: bytes, where typesize > 1; else flag 0x4: bits, where the block holds
// one item at least); each block is unshuffled on its own.
//
// Anything this path does not take as c-blosc would (a reserved flag, a block start outside the
// frame, an empty stream...) it refuses without writing past what it was given: the caller then
// has c-blosc decode the frame, or name what is wrong.
#include "host_blosc.h"

#include <stdlib.h>
#include <string.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "bitshuffle_core.cuh"  // gpz_byteshuffled_elems, gpz_bitshuffled_elems, gpz_transpose_8x8_bits

#define GPZ_BLOSC_ZLIB_FORMAT 3  // flags bits 5-7
#define GPZ_BLOSC_REFUSED -1     // a zlib frame this path does not take (c-blosc may)
#define GPZ_BLOSC_CORRUPT -2     // a zlib stream that does not inflate to its block's bytes

gpz_blosc_work::~gpz_blosc_work()
{
    if (inflater != nullptr) calls->inflater_free(inflater);
    free(room);
}

// c-blosc's path for a frame: the blocks that hold bytes lo..hi-1, through getitem by whole items
// of the frame's typesize, where that skips a block; else the whole frame (which getitem would
// decode into a buffer of its own, then copy). Returns `nbytes` when that worked, else what
// c-blosc returned.
static gpz_i64 gpz_blosc_span(const gpz_blosc_calls* blosc, const gpz_u8* src, gpz_u8* dst, gpz_i64 nbytes,
                              gpz_i64 lo, gpz_i64 hi)
{
    const gpz_i64 typesize = src[3], blocksize = gpz_le32(src + 8);
    const bool skips =
        blocksize > 0 && lo < hi && (lo / blocksize > 0 || (hi - 1) / blocksize < (nbytes - 1) / blocksize);
    if (blosc->getitem != NULL && typesize > 0 && skips && nbytes <= 0x7fffffff) {
        const gpz_i64 start = lo / typesize, stop = (hi + typesize - 1) / typesize;
        if (stop * typesize <= nbytes) {  // (getitem prints its refusal of items past the end)
            const gpz_i64 got = blosc->getitem(src, (int)start, (int)(stop - start), dst + start * typesize);
            if (got == (stop - start) * typesize) return nbytes;
        }
    }  // (a frame getitem refuses, of another format version say, is decoded whole)
    return blosc->decompress(src, dst, (size_t)nbytes, 1);
}

// Byte unshuffle: `count` items of T bytes whose byte j was stored in row j (row j at src + j *
// stride) written item after item to dst: byte i of row j to dst[i * T + j]. 16 items at a time
// in registers where SSE2 is there (T a power of two up to 16): log2(T) rounds of interleaving
// row k with row k + T/2 transpose the T x 16 bytes; the rest byte by byte.
#if defined(__SSE2__)
template <int T>
static inline void gpz_interleave_regs(__m128i* r)
{
    __m128i t[T];
    for (int round = 1; round < T; round *= 2) {
        for (int k = 0; k < T / 2; ++k) {
            t[2 * k] = _mm_unpacklo_epi8(r[k], r[k + T / 2]);
            t[2 * k + 1] = _mm_unpackhi_epi8(r[k], r[k + T / 2]);
        }
        for (int k = 0; k < T; ++k) r[k] = t[k];
    }
}
#endif

template <int T>
static void gpz_interleave(const gpz_u8* src, gpz_i64 stride, gpz_u8* dst, gpz_i64 count)
{
    gpz_i64 i = 0;
#if defined(__SSE2__)
    for (; i + 16 <= count; i += 16) {
        __m128i r[T];
        for (int j = 0; j < T; ++j) r[j] = _mm_loadu_si128((const __m128i*)(src + j * stride + i));
        gpz_interleave_regs<T>(r);
        for (int j = 0; j < T; ++j) _mm_storeu_si128((__m128i*)(dst + i * T + 16 * j), r[j]);
    }
#endif
    for (; i < count; ++i)
        for (int j = 0; j < T; ++j) dst[i * T + j] = src[j * stride + i];
}

static void gpz_interleave_any(const gpz_u8* src, gpz_i64 stride, gpz_u8* dst, gpz_i64 count, int typesize)
{
    switch (typesize) {
        case 2: gpz_interleave<2>(src, stride, dst, count); return;
        case 4: gpz_interleave<4>(src, stride, dst, count); return;
        case 8: gpz_interleave<8>(src, stride, dst, count); return;
        case 16: gpz_interleave<16>(src, stride, dst, count); return;
        default:
            for (int j = 0; j < typesize; ++j)
                for (gpz_i64 i = 0; i < count; ++i) dst[i * typesize + j] = src[j * stride + i];
    }
}

// c-blosc's unshuffle of one block of `nbytes` (the items it holds whole; the bytes after them
// were stored as they are).
static void gpz_byte_unshuffle(const gpz_u8* src, gpz_u8* dst, gpz_i64 nbytes, int typesize)
{
    const gpz_i64 n = gpz_byteshuffled_elems(nbytes, typesize);
    gpz_interleave_any(src, n, dst, n, typesize);
    memcpy(dst + n * typesize, src + n * typesize, (size_t)(nbytes - n * typesize));
}

// 8-byte words whose byte b is bit row b's byte, each turned into the 8 items' bytes (the 8x8
// bit transpose of gpz_transpose_8x8_bits), in the 64-bit lanes of a register.
#if defined(__SSE2__)
static inline __m128i gpz_transpose_8x8_bits2(__m128i x)
{
    const __m128i m1 = _mm_set1_epi64x(0x00AA00AA00AA00AALL), m2 = _mm_set1_epi64x(0x0000CCCC0000CCCCLL),
                  m3 = _mm_set1_epi64x(0x00000000F0F0F0F0LL);
    __m128i t = _mm_and_si128(_mm_xor_si128(x, _mm_srli_epi64(x, 7)), m1);
    x = _mm_xor_si128(_mm_xor_si128(x, t), _mm_slli_epi64(t, 7));
    t = _mm_and_si128(_mm_xor_si128(x, _mm_srli_epi64(x, 14)), m2);
    x = _mm_xor_si128(_mm_xor_si128(x, t), _mm_slli_epi64(t, 14));
    t = _mm_and_si128(_mm_xor_si128(x, _mm_srli_epi64(x, 28)), m3);
    return _mm_xor_si128(_mm_xor_si128(x, t), _mm_slli_epi64(t, 28));
}
#endif

// One byte position's 8 bit rows (row b at rows + b * n8: bit b of that byte of item i at bit i % 8
// of byte i / 8) turned into that byte of items 0..8*n8-1, one after another at `out`.
static void gpz_bit_rows(const gpz_u8* rows, gpz_i64 n8, gpz_u8* out)
{
    gpz_i64 g = 0;
#if defined(__SSE2__)
    for (; g + 16 <= n8; g += 16) {  // 16 groups of 8 items: the 8 rows' bytes of each, then its bits
        __m128i r[8];
        for (int b = 0; b < 8; ++b) r[b] = _mm_loadu_si128((const __m128i*)(rows + b * n8 + g));
        gpz_interleave_regs<8>(r);
        for (int q = 0; q < 8; ++q) _mm_storeu_si128((__m128i*)(out + 8 * g + 16 * q), gpz_transpose_8x8_bits2(r[q]));
    }
#endif
    for (; g < n8; ++g) {
        gpz_u64 x = 0;
        for (int b = 0; b < 8; ++b) x |= (gpz_u64)rows[b * n8 + g] << (8 * b);
        x = gpz_transpose_8x8_bits(x);
        for (int m = 0; m < 8; ++m) out[8 * g + m] = (gpz_u8)(x >> (8 * m));
    }
}

// c-blosc's bit unshuffle of one block of `nbytes` (where it holds a multiple of 8 items; else,
// or with fewer bytes than an item, it was stored as it is): each byte position's bit rows become
// that byte of every item (into `middle`, nbytes of room, where typesize > 1), then those rows are
// byte-unshuffled.
static void gpz_bit_unshuffle(const gpz_u8* src, gpz_u8* dst, gpz_i64 nbytes, int typesize, gpz_u8* middle)
{
    const gpz_i64 n = gpz_bitshuffled_elems(nbytes, typesize);
    gpz_u8* const bytes = typesize == 1 ? dst : middle;
    for (int j = 0; j < typesize && n; ++j) gpz_bit_rows(src + j * n, n / 8, bytes + j * n);
    if (typesize > 1 && n) gpz_interleave_any(middle, n, dst, n, typesize);
    memcpy(dst + n * typesize, src + n * typesize, (size_t)(nbytes - n * typesize));
}

// Bytes lo..hi-1 (whole blocks; all where lo >= hi) of a zlib-format frame; see gpz_blosc_frame.
static gpz_i64 gpz_blosc_zlib(gpz_blosc_work* w, const gpz_u8* src, gpz_i64 size, gpz_u8* dst, gpz_i64 nbytes,
                              gpz_i64 lo, gpz_i64 hi)
{
    const int flags = src[2], typesize = src[3];
    if (size < 16 || src[0] != 2 || (flags & 0x08) || typesize == 0 || nbytes <= 0 || gpz_le32(src + 4) != nbytes ||
        gpz_le32(src + 12) != size)
        return GPZ_BLOSC_REFUSED;
    if (lo >= hi) lo = 0, hi = nbytes;
    if (flags & 0x02) {  // memcpyed
        if (size != nbytes + 16) return GPZ_BLOSC_REFUSED;
        memcpy(dst + lo, src + 16 + lo, (size_t)(hi - lo));
        return nbytes;
    }
    const gpz_i64 blocksize = gpz_le32(src + 8);
    if (src[1] != 1 || blocksize <= 0 || blocksize > nbytes) return GPZ_BLOSC_REFUSED;
    const gpz_i64 nblocks = (nbytes + blocksize - 1) / blocksize, leftover = nbytes % blocksize;
    const gpz_i64 table_end = 16 + 4 * nblocks;
    const bool split = !(flags & 0x10) && typesize <= 16 && blocksize / typesize >= 128;
    if (table_end > size || (split && blocksize % typesize)) return GPZ_BLOSC_REFUSED;
    const bool byte = (flags & 0x01) && typesize > 1, bit = !byte && (flags & 0x04);  // as c-blosc tests them
    if (byte || bit) {  // the block's streams go to the room first, then unshuffled into dst
        const gpz_i64 want = (bit && typesize > 1 ? 2 : 1) * blocksize;
        if (w->room_bytes < want) {
            free(w->room);
            w->room = (gpz_u8*)malloc((size_t)want);
            w->room_bytes = w->room == nullptr ? 0 : want;
            if (w->room == nullptr) return GPZ_BLOSC_REFUSED;
        }
    }
    if (w->inflater == nullptr && (w->inflater = w->calls->inflater_new()) == nullptr) return GPZ_BLOSC_REFUSED;
    for (gpz_i64 b = lo / blocksize; b <= (hi - 1) / blocksize; ++b) {
        const bool last = b == nblocks - 1 && leftover;
        const gpz_i64 bsize = last ? leftover : blocksize, nsplits = split && !last ? typesize : 1;
        const gpz_i64 neblock = bsize / nsplits;
        const bool shuffled = byte || (bit && bsize >= typesize);
        gpz_u8* const block = dst + b * blocksize;
        gpz_u8* into = shuffled ? w->room : block;
        gpz_i64 pos = gpz_le32(src + 16 + 4 * b);
        if (pos < table_end) return GPZ_BLOSC_REFUSED;
        for (gpz_i64 j = 0; j < nsplits; ++j, into += neblock) {
            if (pos > size - 4) return GPZ_BLOSC_REFUSED;
            const gpz_i64 csize = gpz_le32(src + pos);
            pos += 4;
            if (csize <= 0 || csize > size - pos) return GPZ_BLOSC_REFUSED;
            if (csize == neblock) {
                memcpy(into, src + pos, (size_t)neblock);
            } else {
                // libdeflate is given the rest of the frame, not the stream alone: it decodes a
                // stream in its fast loop only up to its last ~60 input bytes, so a stream smaller
                // than that (64 KiB of a float64's sign and exponent bytes, shuffled: 84 bytes)
                // went byte by byte (float64 shuffle chunk: 484 -> 306 us). A stream is as long as
                // zlib says; its stated size may hold more (c-blosc's zlib stops at the stream's
                // end too), not less
                size_t used = 0;
                if (w->calls->zlib(w->inflater, src + pos, (size_t)(size - pos), into, (size_t)neblock, &used,
                                   NULL) != 0 ||
                    (gpz_i64)used > csize)
                    return GPZ_BLOSC_CORRUPT;
            }
            pos += csize;
        }
        if (byte)
            gpz_byte_unshuffle(w->room, block, bsize, typesize);
        else if (shuffled)
            gpz_bit_unshuffle(w->room, block, bsize, typesize, w->room + blocksize);
    }
    return nbytes;
}

gpz_i64 gpz_blosc_frame(gpz_blosc_work* work, const gpz_u8* src, gpz_i64 size, gpz_u8* dst, gpz_i64 nbytes,
                        gpz_i64 lo, gpz_i64 hi)
{
    if ((src[2] >> 5) == GPZ_BLOSC_ZLIB_FORMAT && work->calls->zlib != NULL)
        return gpz_blosc_zlib(work, src, size, dst, nbytes, lo, hi);
    return gpz_blosc_span(work->calls, src, dst, nbytes, lo, hi);
}
