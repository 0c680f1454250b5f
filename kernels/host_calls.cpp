// Loops over chunks that would otherwise be Python loops of ctypes calls: each such call drops
// and retakes the GIL, a context switch whenever another thread wants it (~20 us on a shared VM,
// more than decoding a small chunk). Here the whole loop is one call, the GIL released once.
// Part of gpuzarr._host_lib (setup.py), with host_scatter.cpp.
//
// The decoders are the ones numcodecs built and loaded (their addresses, from ctypes): the very
// functions gpuzarr calls one by one where this library is missing.

#include <stddef.h>

typedef long long gpz_i64;

extern "C" {

// blosc_decompress_ctx(src, dest, destsize, nthreads) on frames 0..n-1: frame i at address
// src[i] into the `nbytes` at dst[i]; got[i] its result (the decoded size, or <= 0).
typedef int (*gpz_blosc_fn)(const void* src, void* dest, size_t destsize, int nthreads);

void gpz_each_blosc(void* fn, const gpz_i64* src, const gpz_i64* dst, gpz_i64 n, gpz_i64 nbytes, int* got)
{
    const gpz_blosc_fn decode = (gpz_blosc_fn)fn;
    for (gpz_i64 i = 0; i < n; ++i) got[i] = decode((const void*)src[i], (void*)dst[i], (size_t)nbytes, 1);
}

// LZ4_decompress_safe(src, dst, compressed size, capacity) on blocks 0..n-1: block i of
// sizes[i] bytes at src[i] into the `capacity` at dst[i]; got[i] its result (decoded size, or < 0).
typedef int (*gpz_lz4_fn)(const char* src, char* dst, int compressed, int capacity);

void gpz_each_lz4(void* fn, const gpz_i64* src, const gpz_i64* sizes, const gpz_i64* dst, gpz_i64 n, int capacity,
                  int* got)
{
    const gpz_lz4_fn decode = (gpz_lz4_fn)fn;
    for (gpz_i64 i = 0; i < n; ++i) got[i] = decode((const char*)src[i], (char*)dst[i], (int)sizes[i], capacity);
}

// ZSTD_decompressDCtx(dctx, dst, capacity, src, size) on frames 0..n-1 with one context (the
// calling thread's): frame i of sizes[i] bytes at src[i] into the `capacity` at dst[i]; got[i] its
// result (the decoded size, or one of libzstd's error codes, which are above any size).
typedef size_t (*gpz_zstd_fn)(void* dctx, void* dst, size_t capacity, const void* src, size_t size);

void gpz_each_zstd(void* fn, void* dctx, const gpz_i64* src, const gpz_i64* sizes, const gpz_i64* dst, gpz_i64 n,
                   gpz_i64 capacity, unsigned long long* got)
{
    const gpz_zstd_fn decode = (gpz_zstd_fn)fn;
    for (gpz_i64 i = 0; i < n; ++i)
        got[i] = decode(dctx, (void*)dst[i], (size_t)capacity, (const void*)src[i], (size_t)sizes[i]);
}

}  // extern "C"
