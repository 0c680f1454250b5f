// Loops over chunks that would otherwise be Python loops of ctypes calls or syscalls: each drops
// and retakes the GIL, a context switch whenever another thread wants it (~20 us on a shared VM,
// more than decoding a small chunk). Here the whole loop is one call, the GIL released once.
// Part of gpuzarr._host_lib (setup.py), with host_scatter.cpp.
//
// The decoders are the ones numcodecs built and loaded (their addresses, from ctypes): the very
// functions gpuzarr calls one by one where this library is missing.

#ifndef _GNU_SOURCE
#define _GNU_SOURCE  // preadv2 and RWF_NOWAIT
#endif
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

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

// Whole chunk files, as gpuzarr.store.LocalStore.read_files_into reads them in Python where this
// library is missing (four syscalls a file, each dropping the GIL): open and size them all, read
// them all, close them all, one call each.

// A descriptor opened for random access, as gpuzarr's Python opens files: no readahead around
// the bytes read (a hint: its failure is ignored).
static int gpz_open_random(const char* path)
{
    const int fd = open(path, O_RDONLY | O_CLOEXEC);
#ifdef POSIX_FADV_RANDOM
    if (fd >= 0) (void)posix_fadvise(fd, 0, 0, POSIX_FADV_RANDOM);
#endif
    return fd;
}

// Open and size files 0..n-1: the first `keep` are held open (fds[i]) and sized on that
// descriptor, the others sized by their path (fds[i] = -1: opened when read). sizes[i]: the
// size of a regular file, -1 for anything else; err[i]: the errno of a failed open or stat, or 0.
void gpz_open_files(const char* const* paths, gpz_i64 n, gpz_i64 keep, int* fds, gpz_i64* sizes, int* err)
{
    for (gpz_i64 i = 0; i < n; ++i) {
        struct stat info;
        fds[i] = -1;
        sizes[i] = -1;
        err[i] = 0;
        if (i < keep) {
            const int fd = gpz_open_random(paths[i]);
            if (fd < 0 || fstat(fd, &info) != 0) {
                err[i] = errno;
                if (fd >= 0) close(fd);
                continue;
            }
            fds[i] = fd;
        } else if (stat(paths[i], &info) != 0) {
            err[i] = errno;
            continue;
        }
        if (S_ISREG(info.st_mode)) sizes[i] = (gpz_i64)info.st_size;
    }
}

// Read sizes[i] bytes of each file i with sizes[i] >= 0, from byte offsets[i] on (the whole file
// where it is sized so and offsets[i] is 0), into dst[i] (opening those not held open; fewer
// bytes only at the end of the file), then close it. counts[i]: the bytes read, or -1 with err[i]
// the errno of the failed open or read. With `flags` (RWF_NOWAIT), a file whose bytes are not
// all in the page cache gets err[i] = EAGAIN, and one whose filesystem cannot tell EOPNOTSUPP or
// EINVAL: both keep their descriptor (fds[i]) for the caller to read blocking.
void gpz_read_files(const char* const* paths, gpz_i64 n, int* fds, const gpz_i64* offsets, const gpz_i64* sizes,
                    const gpz_i64* dst, int flags, gpz_i64* counts, int* err)
{
    for (gpz_i64 i = 0; i < n; ++i) {
        counts[i] = -1;
        err[i] = 0;
        if (sizes[i] < 0) continue;
        if (fds[i] < 0 && (fds[i] = gpz_open_random(paths[i])) < 0) {
            err[i] = errno;
            continue;
        }
        char* const to = (char*)dst[i];
        gpz_i64 done = 0;
        while (done < sizes[i]) {
            ssize_t got;
#ifdef RWF_NOWAIT
            if (flags) {
                struct iovec iov = {to + done, (size_t)(sizes[i] - done)};
                got = preadv2(fds[i], &iov, 1, (off_t)(offsets[i] + done), flags);
            } else
#endif
                got = pread(fds[i], to + done, (size_t)(sizes[i] - done), (off_t)(offsets[i] + done));
            if (got < 0 && errno == EINTR) continue;
            if (got < 0) {
                err[i] = errno;
                break;
            }
            if (got == 0) break;  // the end of the file: shorter than its size said
            if (flags && got < sizes[i] - done) {
                err[i] = EAGAIN;  // in part from the disk: the caller reads it blocking
                break;
            }
            done += got;
        }
        if (err[i] == 0) counts[i] = done;
        if (!(flags && (err[i] == EAGAIN || err[i] == EOPNOTSUPP || err[i] == EINVAL))) {
            close(fds[i]);
            fds[i] = -1;
        }
    }
}

// Close the descriptors still held (fds[i] >= 0).
void gpz_close_files(int* fds, gpz_i64 n)
{
    for (gpz_i64 i = 0; i < n; ++i)
        if (fds[i] >= 0) {
            close(fds[i]);
            fds[i] = -1;
        }
}

}  // extern "C"
