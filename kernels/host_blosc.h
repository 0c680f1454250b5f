// The blosc part of gpuzarr's host library (host_calls.cpp calls it, host_blosc.cpp has it):
// c-blosc's calls gpuzarr makes, and blosc frames of the zlib format decoded by libdeflate.
#ifndef GPUZARR_HOST_BLOSC_H
#define GPUZARR_HOST_BLOSC_H

#include <stddef.h>

#include "gpz_common.cuh"  // gpz_i64, gpz_u8

// The little-endian 32-bit word at p (blosc's and numcodecs' LZ4 headers).
static inline gpz_i64 gpz_le32(const unsigned char* p)
{
    return p[0] | (p[1] << 8) | (p[2] << 16) | ((gpz_i64)p[3] << 24);
}

// The table that a blosc decoder's `fn` points to (gpuzarr.codecs.bytes_to_bytes._blosc_calls):
// c-blosc's whole frame (blosc_decompress_ctx), and the items start..start+nitems-1 alone into
// `dest` (blosc_getitem: only the blocks that hold them decoded, each checked against the frame's
// stated size as blosc_decompress_ctx checks them; thread-safe, a context of its own; NULL where
// c-blosc does not export it: every frame is then decoded whole). Then libdeflate's (the
// `deflate` package's) decompressor and its zlib call, NULL where it is missing: frames of blosc's
// zlib format then go through c-blosc too, whose bundled zlib inflates them 1.7x slower
// (1.02 ms a 256 KiB chunk, against 0.60).
struct gpz_blosc_calls {
    int (*decompress)(const void* src, void* dest, size_t destsize, int nthreads);
    int (*getitem)(const void* src, int start, int nitems, void* dest);
    void* (*inflater_new)(void);         // libdeflate_alloc_decompressor
    void (*inflater_free)(void* inflater);  // libdeflate_free_decompressor
    // libdeflate_zlib_decompress_ex(d, in, in_nbytes, out, out_nbytes_avail, actual_in, actual_out):
    // called with both NULL, so the stream must decode to exactly out_nbytes_avail; 0 when it did
    int (*zlib)(void* inflater, const void* in, size_t in_nbytes, void* out, size_t out_nbytes_avail,
                size_t* actual_in, size_t* actual_out);
};

// What one call of the host library needs to decode blosc frames: the table, and made when a
// zlib frame first needs them, libdeflate's decompressor and a block's room (its streams before
// they are unshuffled, and the bit shuffle's middle step); freed with it.
struct gpz_blosc_work {
    const gpz_blosc_calls* calls;
    void* inflater = nullptr;
    gpz_u8* room = nullptr;
    gpz_i64 room_bytes = 0;

    explicit gpz_blosc_work(const gpz_blosc_calls* table) : calls(table) {}
    gpz_blosc_work(const gpz_blosc_work&) = delete;
    gpz_blosc_work& operator=(const gpz_blosc_work&) = delete;
    ~gpz_blosc_work();
};

// Bytes lo..hi-1 (at least; the whole frame where lo >= hi) of the blosc frame of `size` bytes
// at `src`, whose header the caller checked against `size` and `nbytes`, decoded into the same
// bytes of `dst`: a zlib-format frame by libdeflate, its blocks that hold them, where the table
// has libdeflate; every other frame by c-blosc (gpz_blosc_span). Returns `nbytes` when that
// worked, else what failed (c-blosc's result; for a zlib frame, < 0: corrupt, or a frame this
// path does not take, which the caller hands to c-blosc to decode or name).
gpz_i64 gpz_blosc_frame(gpz_blosc_work* work, const gpz_u8* src, gpz_i64 size, gpz_u8* dst, gpz_i64 nbytes,
                        gpz_i64 lo, gpz_i64 hi);

#endif  // GPUZARR_HOST_BLOSC_H
