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
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include "host_blosc.h"    // gpz_blosc_frame, gpz_le32
#include "scatter_core.cuh"  // GPZ_REC_LEN

// The decoder `kind` of a chunk stored without a bytes->bytes codec: its bytes are the chunk's
#define GPZ_STORED 3

extern "C" {

// Blosc frames 0..n-1 decoded whole (gpz_blosc_frame; `fn` a gpz_blosc_calls): frame i at address
// src[i], its header checked by the caller, into the `nbytes` at dst[i]; got[i] its result (the
// decoded size, or what failed).
void gpz_each_blosc(void* fn, const gpz_i64* src, const gpz_i64* dst, gpz_i64 n, gpz_i64 nbytes, gpz_i64* got)
{
    gpz_blosc_work work((const gpz_blosc_calls*)fn);
    for (gpz_i64 i = 0; i < n; ++i) {
        const unsigned char* frame = (const unsigned char*)src[i];
        got[i] = gpz_blosc_frame(&work, frame, gpz_le32(frame + 12), (unsigned char*)dst[i], nbytes, 0, nbytes);
    }
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

int gpz_scatter_host(const unsigned char* src, unsigned char* dst, const gpz_i64* recs, gpz_i64 n, int ndim,
                     gpz_i64 itemsize, int swap);

// libzstd's calls gpuzarr makes, in the table that a zstd decoder's `fn` points to: the one-call
// ZSTD_decompressDCtx, and the buffer-less streaming API (zstd.h, ZSTD_STATIC_LINKING_ONLY: the
// same three calls since v1.0) that decodes a frame block by block into one contiguous buffer.
// begin is NULL where the library does not export them: every frame is then decoded whole.
struct gpz_zstd_calls {
    size_t (*decompress)(void* dctx, void* dst, size_t capacity, const void* src, size_t size);
    size_t (*begin)(void* dctx);
    size_t (*next_size)(void* dctx);
    size_t (*next)(void* dctx, void* dst, size_t capacity, const void* src, size_t size);
};

// The first `need` bytes (at least) of the zstd frame of `size` bytes at `src` decoded into
// `dst` (`nbytes`, the frame's stated content size): its blocks in turn, stopping at the block
// that reaches `need` (a block holds at most 128 KiB: a window needing the first rows of a
// 512 KiB chunk decodes a quarter to three quarters of it). Returns `nbytes` when that worked
// (the rest of `dst` is not written), else libzstd's error code or what was decoded. A frame
// with a content checksum is decoded whole, so that its checksum is checked as before.
static gpz_i64 gpz_zstd_prefix(const gpz_zstd_calls* zstd, void* dctx, const unsigned char* src, gpz_i64 size,
                               unsigned char* dst, gpz_i64 nbytes, gpz_i64 need)
{
    if (zstd->begin == NULL || need <= 0 || need >= nbytes || size < 5 || (src[4] & 4))
        return (gpz_i64)zstd->decompress(dctx, dst, (size_t)nbytes, src, (size_t)size);
    if (zstd->begin(dctx) != 0) return -1;  // 0, or an error code
    gpz_i64 used = 0, made = 0;
    while (made < need) {
        const size_t step = zstd->next_size(dctx);
        if (step == 0 || used + (gpz_i64)step > size) return made;  // the frame ended short of `need`
        const size_t got = zstd->next(dctx, dst + made, (size_t)(nbytes - made), src + used, step);
        if (got > (size_t)(nbytes - made)) return (gpz_i64)got;  // an error code
        used += (gpz_i64)step;
        made += (gpz_i64)got;
    }
    return nbytes;
}

// The bytes of a decoded chunk that its scatter records `recs` (n of them) read, as
// gpz_window_dims addresses them: from *lo (the nearest's first byte) to one past the last byte
// of the furthest, returned (0 and 0 where there is none).
static gpz_i64 gpz_records_span(const gpz_i64* recs, gpz_i64 n, int ndim, gpz_i64 itemsize, gpz_i64* lo)
{
    gpz_i64 need = 0;
    *lo = 0;
    for (gpz_i64 r = 0; r < n; ++r) {
        const gpz_i64* rec = recs + r * GPZ_REC_LEN;
        gpz_i64 cstride = itemsize, first = rec[GPZ_REC_SRC], last = first;
        bool empty = false;
        for (int d = ndim - 1; d >= 0; --d) {
            const gpz_i64 count = rec[GPZ_REC_COUNT + d];
            empty = empty || count == 0;
            first += rec[GPZ_REC_START + d] * cstride;
            last += (rec[GPZ_REC_START + d] + (count - 1) * rec[GPZ_REC_STEP + d]) * cstride;
            cstride *= rec[GPZ_REC_SHAPE + d];
        }
        if (empty) continue;
        if (need == 0 || first < *lo) *lo = first;
        if (last + itemsize > need) need = last + itemsize;
    }
    return need;
}

// The decoders gpuzarr calls directly, by `kind`, on at least bytes lo..hi-1 of the chunk:
// libzstd (0; `fn` a gpz_zstd_calls, `ctx` the thread's context) up to the block that holds the
// last (gpz_zstd_prefix), blosc (1; `ctx` the call's gpz_blosc_work, made by each entry point
// from `fn`, a gpz_blosc_calls) on the blocks that hold them (gpz_blosc_frame: c-blosc, or
// libdeflate for zlib-format frames), LZ4_decompress_safe on the block after numcodecs' 4-byte size prefix (2,
// whole), a stored chunk (GPZ_STORED: no codec; bytes lo..hi-1 copied, its size `nbytes` or it is
// refused). Returns the decoded size (`nbytes` for a part of a frame), or what the decoder returned.
static gpz_i64 gpz_decode_part(int kind, void* fn, void* ctx, const unsigned char* src, gpz_i64 size,
                               unsigned char* dst, gpz_i64 nbytes, gpz_i64 lo, gpz_i64 hi)
{
    if (kind == 0) return gpz_zstd_prefix((const gpz_zstd_calls*)fn, ctx, src, size, dst, nbytes, hi);
    if (kind == 1) return gpz_blosc_frame((gpz_blosc_work*)ctx, src, size, dst, nbytes, lo, hi);
    if (kind == GPZ_STORED) {
        if (size != nbytes) return size;
        if (hi > lo) memcpy(dst + lo, src + lo, (size_t)(hi - lo));
        return nbytes;
    }
    return ((gpz_lz4_fn)fn)((const char*)src, (char*)dst, (int)size, (int)nbytes);
}

// gpz_decode_part on the bytes that the scatter records `recs` (n of them) read.
static gpz_i64 gpz_decode_one(int kind, void* fn, void* ctx, const unsigned char* src, gpz_i64 size,
                              unsigned char* dst, gpz_i64 nbytes, const gpz_i64* recs, gpz_i64 n, int ndim,
                              gpz_i64 itemsize)
{
    gpz_i64 lo = 0;
    const gpz_i64 hi = gpz_records_span(recs, n, ndim, itemsize, &lo);
    return gpz_decode_part(kind, fn, ctx, src, size, dst, nbytes, lo, hi);
}

// Decode frames 0..n-1 one by one into `scratch` (`nbytes`, one chunk: it stays in cache) and
// place each at once by its records, recs[rec_lo[i]..rec_lo[i+1]) (scatter records whose source
// offsets are within the chunk), through gpz_scatter_host with `swap`: what gpuzarr's CPU device
// does chunk by chunk in Python for chunks too large to decode a part of them first, here with
// the GIL released once for the part. `kind`, `fn`, `ctx`: the decoder (gpz_decode_one; src[i]
// past numcodecs' LZ4 size prefix); a zstd or blosc frame only as far as its records read. The
// caller checked every frame's header against `nbytes` and its segment. Returns -1 when every
// frame decoded to exactly `nbytes` (its stated size, for part of a frame) and was placed; else the
// first frame that did not (nothing placed from it on), got[0] its decoder's result.
gpz_i64 gpz_decode_scatter(int kind, void* fn, void* ctx, const gpz_i64* src, const gpz_i64* sizes, gpz_i64 n,
                           gpz_i64 nbytes, unsigned char* scratch, unsigned char* dst, const gpz_i64* recs,
                           const gpz_i64* rec_lo, int ndim, gpz_i64 itemsize, int swap, gpz_i64* got)
{
    gpz_blosc_work blosc((const gpz_blosc_calls*)fn);  // (its table read only for kind 1)
    if (kind == 1) ctx = &blosc;
    for (gpz_i64 i = 0; i < n; ++i) {
        const gpz_i64* own = recs + rec_lo[i] * GPZ_REC_LEN;
        const gpz_i64 count = rec_lo[i + 1] - rec_lo[i];
        const unsigned char* frame = (const unsigned char*)src[i];
        if (kind == GPZ_STORED) {  // placed from where it is: no copy into scratch
            if (sizes[i] != nbytes || gpz_scatter_host(frame, dst, own, count, ndim, itemsize, swap)) {
                got[0] = sizes[i];
                return i;
            }
            continue;
        }
        const gpz_i64 size = gpz_decode_one(kind, fn, ctx, frame, sizes[i], scratch, nbytes, own, count, ndim,
                                            itemsize);
        if (size != nbytes || gpz_scatter_host(scratch, dst, own, count, ndim, itemsize, swap)) {
            got[0] = size;
            return i;
        }
    }
    return -1;
}

// Whether every segment i (sizes[i] bytes at base + offsets[i], inside the caller's buffer) is one
// whole zstd frame (RFC 8878 section 3.1.1) that states a Frame_Content_Size of `nbytes`: a good
// magic number, the header inside the segment, and its blocks (at most max_blocks, none of the
// reserved type) ending exactly at the segment's end, or 4 bytes before it with a checksum. The
// checks that gpuzarr's check_zstd_frames and zstd_single_frames make with NumPy, in one call for
// a part: 1 when every frame passes; 0 otherwise, and the caller runs those, which say which frame
// fails and why (or decode it another way). Where every frame passes, bounds[i] (unless bounds is
// NULL) is the most bytes frame i's blocks can decode to, as gpuzarr's zstd_write_bounds says.
int gpz_zstd_whole_frames(const unsigned char* base, const gpz_i64* offsets, const gpz_i64* sizes, gpz_i64 n,
                          gpz_i64 nbytes, int max_blocks, gpz_i64* bounds)
{
    static const int dict_bytes[4] = {0, 1, 2, 4}, fcs_bytes[4] = {0, 2, 4, 8};
    for (gpz_i64 i = 0; i < n; ++i) {
        const unsigned char* const frame = base + offsets[i];
        const gpz_i64 size = sizes[i];
        if (size < 5 || frame[0] != 0x28 || frame[1] != 0xb5 || frame[2] != 0x2f || frame[3] != 0xfd) return 0;
        const unsigned fhd = frame[4], single = (fhd >> 5) & 1;
        const gpz_i64 at = 6 - single + dict_bytes[fhd & 3];  // where Frame_Content_Size starts
        const int width = (fhd >> 6) == 0 ? (int)single : fcs_bytes[fhd >> 6];
        if (width == 0 || size < at + width) return 0;  // no content size stated, or a truncated header
        unsigned long long value = 0;
        for (int b = width - 1; b >= 0; --b) value = (value << 8) | frame[at + b];
        if (width == 2) value += 256;
        if (value != (unsigned long long)nbytes) return 0;
        gpz_i64 pos = at + width;  // the first block header
        // Block_Maximum_Size: min(Window_Size, 128 KiB); a single segment's window is its content size
        unsigned long long window = value;
        if (!single) {
            const unsigned wd = frame[5], log = 10 + (wd >> 3);
            window = log > 41 ? (1ull << 41) : (1ull << log);
            window += (window >> 3) * (wd & 7);
        }
        const gpz_i64 block_max = window < (1ull << 17) ? (gpz_i64)window : (gpz_i64)1 << 17;
        gpz_i64 bound = 0;
        int last = 0;
        for (int step = 0; step < max_blocks && !last; ++step) {
            if (pos + 3 > size) return 0;
            const unsigned head = frame[pos] | (frame[pos + 1] << 8) | ((unsigned)frame[pos + 2] << 16);
            const unsigned kind = (head >> 1) & 3;
            if (kind == 3) return 0;  // reserved
            bound += kind == 2 ? block_max : (gpz_i64)(head >> 3);
            pos += 3 + (kind == 1 ? 1 : (gpz_i64)(head >> 3));  // an RLE block stores one byte
            last = head & 1;
        }
        if (!last || pos + 4 * ((fhd >> 2) & 1) != size) return 0;
        if (bounds) bounds[i] = bound;
    }
    return 1;
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
// the errno of the failed open or read. A file opened here whose size is no longer sized[i] (what
// gpz_open_files found by its path) was replaced since (zarr-python writes a file as a new one
// renamed over the old): err[i] = ESTALE, nothing read, since its offsets and sizes were the old
// file's. With `flags` (RWF_NOWAIT), a file whose bytes are not all in the page cache gets
// err[i] = EAGAIN, and one whose filesystem cannot tell EOPNOTSUPP or EINVAL: both keep their
// descriptor (fds[i]) for the caller to read blocking.
void gpz_read_files(const char* const* paths, gpz_i64 n, int* fds, const gpz_i64* offsets, const gpz_i64* sizes,
                    const gpz_i64* sized, const gpz_i64* dst, int flags, gpz_i64* counts, int* err)
{
    for (gpz_i64 i = 0; i < n; ++i) {
        counts[i] = -1;
        err[i] = 0;
        if (sizes[i] < 0) continue;
        if (fds[i] < 0) {
            struct stat info;
            if ((fds[i] = gpz_open_random(paths[i])) < 0) {
                err[i] = errno;
                continue;
            }
            const int bad = fstat(fds[i], &info) != 0 ? errno : (gpz_i64)info.st_size != sized[i] ? ESTALE : 0;
            if (bad) {
                err[i] = bad;
                close(fds[i]);
                fds[i] = -1;
                continue;
            }
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

// Whether a frame of `size` bytes at `frame` is one the decoder `kind` takes as gpuzarr's checks
// would let it (Zstd.direct, Blosc._check_rows, Lz4._check_rows): one whole zstd frame stating
// `nbytes`, of at most max_blocks blocks; a blosc header stating `nbytes` and this frame's size,
// within max_expansion of it; an LZ4 size prefix of `nbytes`, the frame at most max_frame bytes.

static bool gpz_frame_ok(int kind, const unsigned char* frame, gpz_i64 size, gpz_i64 nbytes, int max_blocks,
                         gpz_i64 max_expansion, gpz_i64 max_frame)
{
    if (kind == 0) {
        const gpz_i64 at = 0;
        return gpz_zstd_whole_frames(frame, &at, &size, 1, nbytes, max_blocks, NULL) == 1;
    }
    if (kind == 1) {
        if (size < 16) return false;
        const gpz_i64 stated = gpz_le32(frame + 4), cbytes = gpz_le32(frame + 12);
        return cbytes == size && stated == nbytes && stated <= max_expansion * cbytes;
    }
    if (kind == GPZ_STORED) return size == nbytes;
    return size >= 4 && size <= max_frame && gpz_le32(frame) == nbytes;
}

// One frame of `size` bytes at `src` (a small read's chunk, decoded alone on the calling thread)
// checked as gpz_read_decode_scatter checks its frames (gpz_frame_ok), then decoded into `dst`
// (`nbytes`) as far as its bytes lo..hi-1 need (gpz_decode_part). Returns `nbytes` when so; else
// -2 where the checks refuse the frame, or the decoder's result.
gpz_i64 gpz_decode_span(int kind, void* fn, void* ctx, const unsigned char* src, gpz_i64 size, unsigned char* dst,
                        gpz_i64 nbytes, gpz_i64 lo, gpz_i64 hi, int max_blocks, gpz_i64 max_expansion,
                        gpz_i64 max_frame)
{
    if (!gpz_frame_ok(kind, src, size, nbytes, max_blocks, max_expansion, max_frame)) return -2;
    gpz_blosc_work blosc((const gpz_blosc_calls*)fn);
    if (kind == 1) ctx = &blosc;
    const gpz_i64 skip = kind == 2 ? 4 : 0;
    return gpz_decode_part(kind, fn, ctx, src + skip, size - skip, dst, nbytes, lo, hi);
}

// One CPU task's part of a read of local files, in one call: chunk i (of n; absent where
// file_of[i] < 0) is sizes[i] bytes at offsets[i] of the file paths[file_of[i]] (a shard's), or
// that whole file where sizes[i] < 0 (a chunk file: sized on its descriptor; one that is not
// there, or not a regular file, is gone: lengths[i] = -1, for the caller to fill). Each run of
// chunks that lie back to back in one file is read by one pread into `staging` (chunks back to
// back, `capacity` bytes); lengths[i] is each chunk's size as read. Then each chunk's frame is
// checked (gpz_frame_ok), decoded into `scratch` (zstd, blosc: what its records read) and placed
// by its records (as gpz_decode_scatter: recs[rec_lo[i]..rec_lo[i+1])). io[0], io[1]: the reads
// made and the bytes read. Returns 0 when every chunk was read (or is gone), decoded and placed;
// else 1 (a file that cannot be read, or is shorter than said, or more than `capacity` in all),
// 2 (a frame its checks refuse) or 3 (a frame that does not decode to `nbytes`): the caller then
// reads and decodes the part as before, which says what is wrong. Chunks placed before a failure
// are placed again then, to the same values. With `flags` (RWF_NOWAIT), bytes not all in the page
// cache end the call before any decoding: 4, for the caller to read the part its own way (with
// many reads in flight); a filesystem that cannot tell is read blocking.
int gpz_read_decode_scatter(const char* const* paths, const gpz_i64* file_of, const gpz_i64* offsets,
                            const gpz_i64* sizes, gpz_i64 n, unsigned char* staging, gpz_i64 capacity, int kind,
                            void* fn, void* ctx, gpz_i64 nbytes, unsigned char* scratch, unsigned char* dst,
                            const gpz_i64* recs, const gpz_i64* rec_lo, int ndim, gpz_i64 itemsize, int swap,
                            int max_blocks, gpz_i64 max_expansion, gpz_i64 max_frame, int flags, gpz_i64* lengths,
                            gpz_i64* io)
{
    (void)flags;  // where RWF_NOWAIT is not defined
    io[0] = io[1] = 0;
    gpz_i64 pos = 0;
    int fd = -1;
    gpz_i64 open_file = -1;
    int failed = 0;
    for (gpz_i64 i = 0; i < n && !failed;) {
        lengths[i] = -1;
        if (file_of[i] < 0) {
            ++i;
            continue;
        }
        if (file_of[i] != open_file) {
            if (fd >= 0) close(fd);
            open_file = file_of[i];
            fd = gpz_open_random(paths[open_file]);
        }
        gpz_i64 j = i + 1, start = offsets[i], want = sizes[i];
        if (want < 0) {  // a whole chunk file
            struct stat info;
            if (fd < 0 ? errno != ENOENT && errno != ENOTDIR : fstat(fd, &info) != 0) {
                failed = 1;
                break;
            }
            if (fd < 0 || !S_ISREG(info.st_mode)) {  // gone: lengths[i] stays -1
                ++i;
                continue;
            }
            start = 0;
            want = (gpz_i64)info.st_size;
        } else {
            if (fd < 0) {
                failed = 1;
                break;
            }
            for (gpz_i64 end = start + want; j < n && file_of[j] == file_of[i] && sizes[j] >= 0 && offsets[j] == end;
                 end += sizes[j++])
                want += sizes[j];
        }
        if (pos + want > capacity) {
            failed = 1;
            break;
        }
        gpz_i64 done = 0;
        while (done < want) {
            ssize_t got;
#ifdef RWF_NOWAIT
            if (flags) {
                struct iovec iov = {staging + pos + done, (size_t)(want - done)};
                got = preadv2(fd, &iov, 1, (off_t)(start + done), flags);
                if (got < 0 && (errno == EOPNOTSUPP || errno == EINVAL)) {
                    flags = 0;  // this filesystem cannot say what is cached
                    continue;
                }
                if ((got < 0 && errno == EAGAIN) || (got > 0 && got < want - done)) {
                    failed = 4;  // in part from the disk (or shorter than said: the caller finds out)
                    break;
                }
            } else
#endif
                got = pread(fd, staging + pos + done, (size_t)(want - done), (off_t)(start + done));
            if (got < 0 && errno == EINTR) continue;
            if (got <= 0) break;
            done += got;
        }
        if (failed) break;
        io[0] += want > 0;
        io[1] += done;
        if (done != want) {
            failed = 1;
            break;
        }
        if (sizes[i] < 0) lengths[i] = want;
        for (gpz_i64 k = i; k < j && sizes[i] >= 0; ++k) lengths[k] = sizes[k];
        pos += want;
        i = j;
    }
    if (fd >= 0) close(fd);
    if (failed) return failed;
    gpz_blosc_work blosc((const gpz_blosc_calls*)fn);
    if (kind == 1) ctx = &blosc;
    pos = 0;
    for (gpz_i64 i = 0; i < n; ++i) {
        if (lengths[i] < 0) continue;
        const unsigned char* frame = staging + pos;
        const gpz_i64 size = lengths[i];
        pos += size;
        if (!gpz_frame_ok(kind, frame, size, nbytes, max_blocks, max_expansion, max_frame)) return 2;
        const gpz_i64 skip = kind == 2 ? 4 : 0;
        const gpz_i64* own = recs + rec_lo[i] * GPZ_REC_LEN;
        const gpz_i64 count = rec_lo[i + 1] - rec_lo[i];
        if (kind == GPZ_STORED) {  // placed from staging: no copy into scratch
            gpz_scatter_host(frame, dst, own, count, ndim, itemsize, swap);
            continue;
        }
        if (gpz_decode_one(kind, fn, ctx, frame + skip, size - skip, scratch, nbytes, own, count, ndim, itemsize) !=
            nbytes)
            return 3;
        gpz_scatter_host(scratch, dst, own, count, ndim, itemsize, swap);
    }
    return 0;
}

}  // extern "C"
