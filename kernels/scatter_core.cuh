// Block-level logic of the batched placement kernels in scatter.cu, shared with the CPU tests
// (compiled with g++, where __host__/__device__ are empty; see gpz_common.cuh for Block).
//
// A batch of N decoded chunks lies in one buffer; chunk c is a C-order array of `itemsize`-byte
// elements starting at byte rec[GPZ_REC_SRC] of that buffer. Each chunk has one record of
// GPZ_REC_LEN int64 values (a row of an (N, GPZ_REC_LEN) int64 table):
//   [GPZ_REC_SRC]          byte offset of the chunk in the batch buffer (scatter only)
//   [GPZ_REC_DST]          byte offset in the output of the window's first element
//   [GPZ_REC_SHAPE + d]    chunk shape (scatter only)
//   [GPZ_REC_START + d]    first source index along d, within the chunk (scatter only)
//   [GPZ_REC_STEP + d]     source step along d, >= 1 (scatter only)
//   [GPZ_REC_COUNT + d]    window length along d (0: nothing to do)
//   [GPZ_REC_DSTRIDE + d]  output stride along d in bytes (any sign)
// for d < ndim (ndim <= GPZ_MAX_NDIM, the same for the whole launch; slots d >= ndim are ignored).
// Element k (C order over the counts) of the window is copied from source index
// start + k_d * step along every d to output byte DST + sum(k_d * DSTRIDE_d).
//
// Contract (checked by the host before launch, never here): every window lies inside its chunk
// and the output; windows of different chunks do not overlap in the output. Any alignment works:
// the copy uses the widest words (up to 16 bytes) the addresses allow.
//
// How a window is copied: once per chunk, thread 0 reduces the record to a gpz_window in shared
// memory (dims of count 1 dropped, dims contiguous in source and output merged, the innermost
// contiguous bytes made one row); then every thread reads only that. Each row is a gpz_run
// (16-byte words where source and output agree modulo 16). Index arithmetic is 32-bit when the
// window's units and byte spans fit, else 64-bit.
#ifndef GPUZARR_SCATTER_CORE_CUH
#define GPUZARR_SCATTER_CORE_CUH

#include "gpz_common.cuh"

#define GPZ_MAX_NDIM 8
#define GPZ_REC_SRC 0
#define GPZ_REC_DST 1
#define GPZ_REC_SHAPE 2
#define GPZ_REC_START (GPZ_REC_SHAPE + GPZ_MAX_NDIM)
#define GPZ_REC_STEP (GPZ_REC_START + GPZ_MAX_NDIM)
#define GPZ_REC_COUNT (GPZ_REC_STEP + GPZ_MAX_NDIM)
#define GPZ_REC_DSTRIDE (GPZ_REC_COUNT + GPZ_MAX_NDIM)
#define GPZ_REC_LEN (GPZ_REC_DSTRIDE + GPZ_MAX_NDIM)

// One chunk's window as rows of `rowbytes` contiguous bytes (source and output), over `nd` outer
// dims, innermost first. Row r = sum(i_d * prod(count[<d])) starts at byte src + sum(i_d * sstride[d])
// of the source and dst + sum(i_d * dstride[d]) of the output.
struct alignas(16) gpz_window {
    gpz_u8 body[16];  // fill: byte x past a row's head is body[x % 16] (pat, rotated by run.head)
    gpz_u8 pat[16];   // fill: the pattern repeated; byte o of a row is pat[o % 16]
    gpz_i64 src, dst;
    gpz_i64 count[GPZ_MAX_NDIM], sstride[GPZ_MAX_NDIM], dstride[GPZ_MAX_NDIM];
    gpz_i64 rowbytes, rows, total;  // total = rows * run.units
    gpz_run run;
    int nd;
    int spans_fit32;  // every row's byte offsets fit in 31 bits
};

// Dims of the record, innermost first, merged into w's row and outer dims. fill: the source is
// the output itself (the record's source fields are not read).
__host__ __device__ inline void gpz_window_dims(gpz_window* w, const gpz_i64* rec, int ndim, gpz_i64 itemsize, bool fill)
{
    gpz_i64 cstride = itemsize;  // C-order byte stride of dim d in the chunk
    w->src = fill ? rec[GPZ_REC_DST] : rec[GPZ_REC_SRC];
    w->dst = rec[GPZ_REC_DST];
    w->rowbytes = itemsize;
    w->rows = 1;  // the product of the outer counts, 0 if any count is
    w->nd = 0;
    GPZ_DIM_LOOP
    for (int d = ndim - 1; d >= 0; --d) {
        const gpz_i64 c = rec[GPZ_REC_COUNT + d], ds = rec[GPZ_REC_DSTRIDE + d];
        const gpz_i64 ss = fill ? ds : rec[GPZ_REC_STEP + d] * cstride;
        if (!fill) {
            w->src += rec[GPZ_REC_START + d] * cstride;
            cstride *= rec[GPZ_REC_SHAPE + d];
        }
        if (c == 0) w->rows = 0;
        if (c == 1) continue;
        const int p = w->nd - 1;
        if (w->nd == 0 && ss == w->rowbytes && ds == w->rowbytes) {
            w->rowbytes *= c;
        } else if (w->nd > 0 && ss == w->count[p] * w->sstride[p] && ds == w->count[p] * w->dstride[p]) {
            w->count[p] *= c;
        } else {
            w->count[w->nd] = c;
            w->sstride[w->nd] = ss;
            w->dstride[w->nd] = ds;
            ++w->nd;
        }
    }
    for (int d = 0; d < w->nd; ++d) w->rows *= w->count[d];
}

// Reduce record `rec` to w (what thread 0 does per chunk). src_addr/dst_addr: the buffers'
// addresses (for alignment only); fill_lo/hi: the fill pattern's bytes 0..7 and 8..15.
__host__ __device__ inline void gpz_window_prepare(gpz_window* w, const gpz_i64* rec, int ndim, gpz_i64 itemsize,
                                                   bool fill, gpz_u64 src_addr, gpz_u64 dst_addr,
                                                   gpz_u64 fill_lo, gpz_u64 fill_hi)
{
    gpz_window_dims(w, rec, ndim, itemsize, fill);
    gpz_u64 strides = 0;
    gpz_i64 sspan = w->rowbytes, dspan = w->rowbytes;
    for (int d = 0; d < w->nd; ++d) {
        strides |= (gpz_u64)w->sstride[d] | (gpz_u64)w->dstride[d];
        sspan += (w->count[d] - 1) * w->sstride[d];
        dspan += (w->count[d] - 1) * (w->dstride[d] < 0 ? -w->dstride[d] : w->dstride[d]);
    }
    const gpz_u64 dst_first = dst_addr + (gpz_u64)w->dst;
    w->run = gpz_run_plan(fill ? dst_first : src_addr + (gpz_u64)w->src, dst_first, w->rowbytes, strides);
    w->total = w->rows * w->run.units;
    w->spans_fit32 = sspan <= GPZ_I32_MAX && dspan <= GPZ_I32_MAX;
    for (int b = 0; b < 16; ++b) {
        const int i = b % (int)itemsize;
        w->pat[b] = (gpz_u8)((i < 8 ? fill_lo : fill_hi) >> (8 * (i % 8)));
    }
    for (int b = 0; b < 16; ++b) w->body[b] = w->pat[(w->run.head + b) % 16];
}

// Whether a launch of nthreads threads per window may index w with 32-bit ints.
__host__ __device__ inline bool gpz_window_fits32(const gpz_window* w, gpz_i64 nthreads)
{
    return w->spans_fit32 && w->total + nthreads <= GPZ_I32_MAX;
}

// Byte offsets (source, output) of row r's first byte, relative to w->src and w->dst.
template <typename I>
__host__ __device__ inline void gpz_row_offsets(const gpz_window* w, I r, I* s, I* d)
{
    *s = 0;
    *d = 0;
    GPZ_DIM_LOOP
    for (int k = 0; k < w->nd; ++k) {
        const I c = (I)w->count[k];
        const I q = k + 1 < w->nd ? r / c : 0;  // the outermost dim takes what is left
        const I i = r - q * c;
        *s += i * (I)w->sstride[k];
        *d += i * (I)w->dstride[k];
        r = q;
    }
}

// One thread's share (units tid, tid + nthreads, ...) of a window; FILL writes the pattern.
template <bool FILL, int W, typename I>
__host__ __device__ inline void gpz_window_units(const gpz_window* w, const gpz_u8* src, gpz_u8* dst, gpz_i64 tid,
                                                 gpz_i64 nthreads)
{
    const I per_row = (I)w->run.units, head = (I)w->run.head, body = (I)w->run.body, total = (I)w->total;
    const gpz_u8* s0 = src + w->src;
    gpz_u8* d0 = dst + w->dst;
    for (I k = (I)tid; k < total; k += (I)nthreads) {
        const I r = k / per_row;
        I s, d;
        gpz_row_offsets<I>(w, r, &s, &d);
        bool word;
        const I o = gpz_run_offset<W, I>(k - r * per_row, head, body, &word);
        if (FILL)
            gpz_copy_unit<W>(d0 + d + o, word ? w->body + ((o - head) & 15) : w->pat + (o & 15), word);
        else
            gpz_copy_unit<W>(d0 + d + o, s0 + s + o, word);
    }
}

template <bool FILL, int W>
__host__ __device__ inline void gpz_window_width(const gpz_window* w, const gpz_u8* src, gpz_u8* dst, gpz_i64 tid,
                                                 gpz_i64 nthreads)
{
    if (gpz_window_fits32(w, nthreads))
        gpz_window_units<FILL, W, int>(w, src, dst, tid, nthreads);
    else
        gpz_window_units<FILL, W, gpz_i64>(w, src, dst, tid, nthreads);
}

template <bool FILL>
__host__ __device__ inline void gpz_window_copy(const gpz_window* w, const gpz_u8* src, gpz_u8* dst, gpz_i64 tid,
                                                gpz_i64 nthreads)
{
    switch (w->run.width) {
        case 16: gpz_window_width<FILL, 16>(w, src, dst, tid, nthreads); break;
        case 8: gpz_window_width<FILL, 8>(w, src, dst, tid, nthreads); break;
        case 4: gpz_window_width<FILL, 4>(w, src, dst, tid, nthreads); break;
        case 2: gpz_window_width<FILL, 2>(w, src, dst, tid, nthreads); break;
        default: gpz_window_width<FILL, 1>(w, src, dst, tid, nthreads); break;
    }
}

// What one CUDA block does in a batched scatter (FILL: fill): grid row `row` of `nrows` walks
// the chunks row, row + nrows, ...; in each window, block `bx` of the row's `gx` blocks takes
// units bx * T + t, stepping by gx * T. `w` is the block's shared gpz_window.
template <bool FILL, class Block>
__host__ __device__ inline void gpz_scatter_block(Block& blk, gpz_window* w, const gpz_u8* src, gpz_u8* dst,
                                                  const gpz_i64* recs, gpz_i64 nchunks, int ndim, gpz_i64 itemsize,
                                                  gpz_u64 fill_lo, gpz_u64 fill_hi, gpz_i64 row, gpz_i64 nrows,
                                                  gpz_i64 bx, gpz_i64 gx)
{
    const gpz_i64 nthreads = gx * blk.threads();
    for (gpz_i64 c = row; c < nchunks; c += nrows) {
        blk.phase([&](gpz_i64 t) {
            if (t == 0)
                gpz_window_prepare(w, recs + c * GPZ_REC_LEN, ndim, itemsize, FILL, (gpz_u64)src, (gpz_u64)dst,
                                   fill_lo, fill_hi);
        });
        blk.phase([&](gpz_i64 t) { gpz_window_copy<FILL>(w, src, dst, bx * blk.threads() + t, nthreads); });
    }
}

#endif  // GPUZARR_SCATTER_CORE_CUH
