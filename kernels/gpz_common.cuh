// Definitions shared by the kernel cores: they compile under NVRTC and, for the CPU tests, g++.
//
// Block-level code (a loop every thread of a CUDA block runs in step, with barriers) is written
// against a Block type: `blk.threads()` is the block's thread count and `blk.phase(f)` runs
// f(thread) on every thread of the block, then a barrier. On the device that is gpz_cuda_block
// (below); the CPU tests pass a block that calls f for each thread in turn, so a whole block,
// shared memory included, runs on one CPU thread, phase by phase.
#ifndef GPUZARR_COMMON_CUH
#define GPUZARR_COMMON_CUH

#ifndef __CUDACC__
#ifndef __host__
#define __host__
#endif
#ifndef __device__
#define __device__
#endif
#endif

// No <stdint.h>: NVRTC compiles without the host's C headers.
typedef unsigned char gpz_u8;
typedef long long gpz_i64;
typedef unsigned long long gpz_u64;

#define GPZ_I32_MAX 2147483647LL

// The unsigned type of each power-of-two width up to 16 bytes; 16 is one vector access
// (ld/st.global.v2.u64) because the type is 16-byte aligned.
struct alignas(16) gpz_u128 {
    gpz_u64 lo, hi;
};
template <int W> struct gpz_word;
template <> struct gpz_word<1> { typedef gpz_u8 type; };
template <> struct gpz_word<2> { typedef unsigned short type; };
template <> struct gpz_word<4> { typedef unsigned int type; };
template <> struct gpz_word<8> { typedef gpz_u64 type; };
template <> struct gpz_word<16> { typedef gpz_u128 type; };

// Called before every copy of one unit (a byte or a W-byte word); the CPU tests define it to
// count accesses per width and catch misaligned words. Empty everywhere else.
#ifndef GPZ_NOTE_ACCESS
#define GPZ_NOTE_ACCESS(dst, src, width)
#endif

// Loops over dims stay loops on the device: unrolled for every instantiation they would bloat
// the module (and its load time) for no gain, their trip count being known only at run time.
#ifdef __CUDACC__
#define GPZ_DIM_LOOP _Pragma("unroll 1")
#else
#define GPZ_DIM_LOOP
#endif

#ifdef __CUDACC__
struct gpz_cuda_block {
    __device__ gpz_i64 threads() const { return blockDim.x; }
    template <class F> __device__ void phase(F f)
    {
        f((gpz_i64)threadIdx.x);
        __syncthreads();
    }
};
#endif

// A run of bytes copied as `head` single bytes, then `body` words of `width` bytes (aligned in
// source and destination), then the remaining single bytes: units 0..units-1, in that order.
struct gpz_run {
    gpz_i64 head, body, units;
    int width;
};

// The run of `nbytes` from src_addr to dst_addr with the fewest units, using words of width W
// only where W divides `strides` (every stride between runs that share the plan, 0 for one run)
// and src_addr - dst_addr, so that every run sharing the plan has the same aligned head.
__host__ __device__ inline gpz_run gpz_run_plan(gpz_u64 src_addr, gpz_u64 dst_addr, gpz_i64 nbytes, gpz_u64 strides)
{
    const gpz_u64 apart = (src_addr - dst_addr) | strides;
    gpz_run best = {nbytes, 0, nbytes, 1};
    for (int w = 16; w > 1; w >>= 1) {
        if ((apart & (gpz_u64)(w - 1)) != 0 || w > nbytes) continue;
        const gpz_i64 head = (gpz_i64)((w - (dst_addr & (gpz_u64)(w - 1))) & (gpz_u64)(w - 1));
        const gpz_i64 body = (nbytes - head) / w;
        const gpz_i64 units = nbytes - body * (w - 1);
        if (units < best.units) {
            best.head = head;
            best.body = body;
            best.units = units;
            best.width = w;
        }
    }
    return best;
}

// Byte offset of unit u in a run; *word says whether it is a W-byte word (else a single byte).
template <int W, typename I>
__host__ __device__ inline I gpz_run_offset(I u, I head, I body, bool* word)
{
    *word = u >= head && u < head + body;
    if (u < head) return u;
    if (*word) return head + (u - head) * W;
    return u + body * (W - 1);
}

// Copy one unit: a W-byte word or one byte.
template <int W>
__host__ __device__ inline void gpz_copy_unit(gpz_u8* dst, const gpz_u8* src, bool word)
{
    typedef typename gpz_word<W>::type V;
    if (word) {
        GPZ_NOTE_ACCESS(dst, src, W);
        *(V*)dst = *(const V*)src;
    } else {
        GPZ_NOTE_ACCESS(dst, src, 1);
        *dst = *src;
    }
}

// One thread's share (units tid, tid + nthreads, ...) of copying a planned run.
template <int W>
__host__ __device__ inline void gpz_copy_run_units(gpz_u8* dst, const gpz_u8* src, gpz_run r, gpz_i64 tid,
                                                   gpz_i64 nthreads)
{
    for (gpz_i64 u = tid; u < r.units; u += nthreads) {
        bool word;
        const gpz_i64 o = gpz_run_offset<W>(u, r.head, r.body, &word);
        gpz_copy_unit<W>(dst + o, src + o, word);
    }
}

// One thread's share of copying nbytes from src to dst (not overlapping), in the widest words
// their alignment allows.
__host__ __device__ inline void gpz_copy_bytes(gpz_u8* dst, const gpz_u8* src, gpz_i64 nbytes, gpz_i64 tid,
                                               gpz_i64 nthreads)
{
    const gpz_run r = gpz_run_plan((gpz_u64)src, (gpz_u64)dst, nbytes, 0);
    switch (r.width) {
        case 16: gpz_copy_run_units<16>(dst, src, r, tid, nthreads); break;
        case 8: gpz_copy_run_units<8>(dst, src, r, tid, nthreads); break;
        case 4: gpz_copy_run_units<4>(dst, src, r, tid, nthreads); break;
        case 2: gpz_copy_run_units<2>(dst, src, r, tid, nthreads); break;
        default: gpz_copy_run_units<1>(dst, src, r, tid, nthreads); break;
    }
}

#endif
