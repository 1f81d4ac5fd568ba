/* 2-D convolution, NHWC, as GEMMs over im2col chunks: for output pixels [m0, m1) the chunk's
   rows are the receptive fields, cols[m - m0][(ki·KW + kj)·C + c], so a kernel row (KW taps of C
   channels) is one contiguous run of the input. Forward: out = cols · weightᵀ. Backward:
   dweight += doutᵀ · cols, and dcols = dout · weight scattered back by a gather over the input
   pixels (col2im), so threads never write the same element. */
#include <omp.h>
#include <stdint.h>
#include <string.h>

#include "core/threads.h"
#include "kernels/kernels.h"
#include "kernels/precision.h"
#include "kernels/isa.h"

/* The data movement around the GEMMs (weight repacks, im2col, col2im) is built per instruction
   set: bodies over a range of rows, run over contiguous ranges, one per thread (isa.h). */
#define CONV_THREADS(work) herbs_threads_for((double)(work), 32768) /* a thread's elements, at least */
/* weight repacks: a thread per 64K elements (a team from 128K) */
#define REPACK_THREADS(work) herbs_threads_for((double)(work), 1 << 16)

/* output channels [o0, o1) */
HERBS_INLINE void FN(conv_weight_to_ohwi_rows)(real *out, const real *w, int C, int taps, int o0, int o1)
{
    for (int o = o0; o < o1; o++) /* writes in order; an output channel's w (taps·C floats) stays in L1 */
        for (int t = 0; t < taps; t++)
            for (int c = 0; c < C; c++)
                out[((size_t)o * taps + t) * C + c] = w[((size_t)o * C + c) * taps + t];
}
HERBS_ISA_VARIANTS(conv_weight_to_ohwi_rows, (real *out, const real *w, int C, int taps, int o0, int o1),
                   (out, w, C, taps, o0, o1))

void FN(conv2d_weight_to_ohwi)(real *out, const real *w, int OC, int C, int KH, int KW)
{
    HERBS_ISA_PARALLEL(conv_weight_to_ohwi_rows, OC, REPACK_THREADS((double)OC * C * KH * KW), out, w, C, KH * KW);
}

/* output channels [o0, o1) */
HERBS_INLINE void FN(conv_weight_grad_from_ohwi_rows)(real *dw, const real *dw_ohwi, int C, int taps, int o0, int o1)
{
    for (int o = o0; o < o1; o++)
        for (int c = 0; c < C; c++)
            for (int t = 0; t < taps; t++)
                dw[((size_t)o * C + c) * taps + t] += dw_ohwi[((size_t)o * taps + t) * C + c];
}
HERBS_ISA_VARIANTS(conv_weight_grad_from_ohwi_rows, (real *dw, const real *dw_ohwi, int C, int taps, int o0, int o1),
                   (dw, dw_ohwi, C, taps, o0, o1))

void FN(conv2d_weight_grad_from_ohwi)(real *dw, const real *dw_ohwi, int OC, int C, int KH, int KW)
{
    HERBS_ISA_PARALLEL(conv_weight_grad_from_ohwi_rows, OC, REPACK_THREADS((double)OC * C * KH * KW), dw, dw_ohwi,
                       C, KH * KW);
}

/* The im2col rows of output pixels m0 + [i0, i1) into cols[m - m0][K], zeros in the padding. */
HERBS_INLINE void FN(conv_im2col_rows)(real *cols, const real *inp, int m0, int H, int W, int C, int OH, int OW,
                                       int KH, int KW, int stride, int pad, int i0, int i1)
{
    const size_t K = (size_t)KH * KW * C;
    for (int m = m0 + i0; m < m0 + i1; m++) {
        const int ow = m % OW, oh = (m / OW) % OH, b = m / OW / OH;
        const int ih0 = oh * stride - pad, iw0 = ow * stride - pad;
        const int kj0 = iw0 < 0 ? -iw0 : 0, kj1 = W - iw0 < KW ? W - iw0 : KW; /* valid taps [kj0, kj1) */
        real *row = cols + (size_t)(m - m0) * K;
        for (int ki = 0; ki < KH; ki++) {
            real *dst = row + (size_t)ki * KW * C;
            const int ih = ih0 + ki;
            if (ih < 0 || ih >= H || kj1 <= kj0) {
                memset(dst, 0, (size_t)KW * C * sizeof(real));
                continue;
            }
            if (kj0 > 0)
                memset(dst, 0, (size_t)kj0 * C * sizeof(real));
            memcpy(dst + (size_t)kj0 * C, inp + (((size_t)b * H + ih) * W + iw0 + kj0) * C,
                   (size_t)(kj1 - kj0) * C * sizeof(real));
            if (kj1 < KW)
                memset(dst + (size_t)kj1 * C, 0, (size_t)(KW - kj1) * C * sizeof(real));
        }
    }
}
HERBS_ISA_VARIANTS(conv_im2col_rows,
                   (real *cols, const real *inp, int m0, int H, int W, int C, int OH, int OW, int KH, int KW,
                    int stride, int pad, int i0, int i1),
                   (cols, inp, m0, H, W, C, OH, OW, KH, KW, stride, pad, i0, i1))

/* cols[m - m0][K] <- the receptive fields of output pixels [m0, m1), zeros in the padding. */
static void FN(conv_im2col)(real *cols, const real *inp, int m0, int m1, int H, int W, int C, int OH, int OW, int KH,
                            int KW, int stride, int pad)
{
    HERBS_ISA_PARALLEL(conv_im2col_rows, m1 - m0, CONV_THREADS((double)(m1 - m0) * KH * KW * C), cols, inp, m0, H, W,
                       C, OH, OW, KH, KW, stride, pad);
}

/* Input rows q0 + [i0, i1) (q = b·H + ih) of conv_col2im_add. */
HERBS_INLINE void FN(conv_col2im_rows)(real *dinp, const real *dcols, int m0, int m1, int q0, int H, int W, int C,
                                       int OH, int OW, int KH, int KW, int stride, int pad, int i0, int i1)
{
    const size_t K = (size_t)KH * KW * C;
    for (int q = q0 + i0; q < q0 + i1; q++) {
        const int b = q / H, ih = q % H;
        for (int iw = 0; iw < W; iw++) {
            real *dst = dinp + ((size_t)q * W + iw) * C;
            for (int ki = 0; ki < KH; ki++) {
                const int th = ih + pad - ki;
                if (th < 0 || th % stride || th / stride >= OH)
                    continue;
                const int oh = th / stride;
                for (int kj = 0; kj < KW; kj++) {
                    const int tw = iw + pad - kj;
                    if (tw < 0 || tw % stride || tw / stride >= OW)
                        continue;
                    const long m = ((long)b * OH + oh) * OW + tw / stride;
                    if (m < m0 || m >= m1)
                        continue;
                    const real *src = dcols + (size_t)(m - m0) * K + (size_t)(ki * KW + kj) * C;
#pragma omp simd
                    for (int c = 0; c < C; c++)
                        dst[c] += src[c];
                }
            }
        }
    }
}
HERBS_ISA_VARIANTS(conv_col2im_rows,
                   (real *dinp, const real *dcols, int m0, int m1, int q0, int H, int W, int C, int OH, int OW,
                    int KH, int KW, int stride, int pad, int i0, int i1),
                   (dinp, dcols, m0, m1, q0, H, W, C, OH, OW, KH, KW, stride, pad, i0, i1))

/* dinp += the columns dcols of output pixels [m0, m1) put back where they came from: each input
   pixel gathers the taps that read it, in order (ki, kj). */
static void FN(conv_col2im_add)(real *dinp, const real *dcols, int m0, int m1, int H, int W, int C, int OH, int OW,
                                int KH, int KW, int stride, int pad)
{
    /* input rows (b·H + ih) that the first and last output rows of the chunk read */
    const int r0 = m0 / OW, r1 = (m1 - 1) / OW;
    int q0 = (r0 / OH) * H + (r0 % OH) * stride - pad, q1 = (r1 / OH) * H + (r1 % OH) * stride - pad + KH - 1;
    if (q0 < (r0 / OH) * H)
        q0 = (r0 / OH) * H;
    if (q1 > (r1 / OH) * H + H - 1)
        q1 = (r1 / OH) * H + H - 1;
    HERBS_ISA_PARALLEL(conv_col2im_rows, q1 - q0 + 1,
                       CONV_THREADS((double)(q1 - q0 + 1) * W * C * KH * KW / stride / stride), dinp, dcols, m0, m1,
                       q0, H, W, C, OH, OW, KH, KW, stride, pad);
}

static int FN(conv_is_pointwise)(int KH, int KW, int stride, int pad) { return KH == 1 && KW == 1 && stride == 1 && pad == 0; }

/* output pixels per im2col chunk: as many as the scratch holds, at most max(rows, floats / K).
   Measured on ResNet-50's 3x3 and 7x7 convs (one core, AVX-512): the forward GEMM is best with
   ~900-1800 rows (10-40% over whole-batch im2col), the weight gradient's with ~220-450 (5-15%
   over 900), as its reduction then runs over rows still in L2. Narrow rows (the stem's K = 147)
   take more of them per chunk: fewer chunks, fewer parallel regions, which matters on a busy
   machine where every region waits for its slowest thread. */
#define CONV_CHUNK_ROWS 896
#define CONV_CHUNK_FLOATS ((size_t)1 << 19)
#define CONV_BACKWARD_CHUNK_ROWS 224
#define CONV_BACKWARD_CHUNK_FLOATS ((size_t)1 << 18)
static int FN(conv_chunk_rows)(size_t scratch_floats, size_t K, int M, size_t rows_cap, size_t floats_cap)
{
    size_t cap = floats_cap / K > rows_cap ? floats_cap / K : rows_cap;
    size_t rows = scratch_floats / K;
    rows = rows > cap ? cap : rows;
    return rows < 1 ? 1 : rows > (size_t)M ? M : (int)rows;
}

/* Floats of one thread's share of the weight-gradient scratch: a private partial dweight
   (64-byte multiple) and, unless the conv is pointwise, one im2col chunk. */
static size_t FN(conv_wgrad_share)(size_t K, int OC, int pointwise)
{
    const size_t chunk = K * CONV_BACKWARD_CHUNK_ROWS > CONV_BACKWARD_CHUNK_FLOATS ? K * CONV_BACKWARD_CHUNK_ROWS
                                                                                   : CONV_BACKWARD_CHUNK_FLOATS;
    return ((size_t)OC * K + 15) / 16 * 16 + (pointwise ? 0 : (chunk + 15) / 16 * 16);
}

/* dweight[OC,K] += doutᵀ · cols over the output pixels [m0, m1), one thread, im2col in chunks
   of `cols` (NULL for a pointwise conv, whose columns are its input rows); beta 0 overwrites. */
static void FN(conv_wgrad_rows)(herbs_precision p, real *dweight, real beta, const real *dout, const real *inp,
                                real *cols, size_t cols_floats, int m0, int m1, int H, int W, int C, int OC, int OH,
                                int OW, int KH, int KW, int stride, int pad)
{
    const int K = KH * KW * C;
    if (!cols) {
        FN(gemm_at)(p, 1, 0, OC, C, m1 - m0, 1, dout + (size_t)m0 * OC, OC, inp + (size_t)m0 * C, C, beta, dweight, C);
        return;
    }
    const int rows = FN(conv_chunk_rows)(cols_floats, K, m1 - m0, CONV_BACKWARD_CHUNK_ROWS,
                                         CONV_BACKWARD_CHUNK_FLOATS);
    for (int a = m0; a < m1; a += rows, beta = 1) {
        const int b = m1 - a < rows ? m1 : a + rows;
        FN(conv_im2col)(cols, inp, a, b, H, W, C, OH, OW, KH, KW, stride, pad);
        FN(gemm_at)(p, 1, 0, OC, K, b - a, 1, dout + (size_t)a * OC, OC, cols, K, beta, dweight, K);
    }
}

/* The weight gradient with the output pixels split among threads: each reduces its rows into a
   private partial with a one-thread GEMM (no team barrier per slice of the reduction, which on a
   busy machine costs a wait for the slowest thread each time), then the partials are added to
   dweight in thread order, so the result is fixed for a thread count. As many threads as the
   scratch has shares for; with one, straight into dweight. */
static void FN(conv_weight_grad)(herbs_precision p, real *dweight, const real *dout, const real *inp, real *scratch,
                                 size_t scratch_floats, int M, int H, int W, int C, int OC, int OH, int OW, int KH,
                                 int KW, int stride, int pad, int pointwise)
{
    const size_t K = (size_t)KH * KW * C, wsize = (size_t)OC * K;
    const size_t share = FN(conv_wgrad_share)(K, OC, pointwise), wpart = (wsize + 15) / 16 * 16;
    int nt = herbs_threads_for(2.0 * M * wsize, 4.0e6);
    if ((size_t)nt > scratch_floats / share)
        nt = (int)(scratch_floats / share);
    if (nt < 2) {
        FN(conv_wgrad_rows)(p, dweight, 1, dout, inp, pointwise ? NULL : scratch, scratch_floats, 0, M, H, W, C, OC, OH,
                            OW, KH, KW, stride, pad);
        return;
    }
#pragma omp parallel num_threads(nt)
    {
        const int t = omp_get_thread_num(), m0 = (int)((long)M * t / nt), m1 = (int)((long)M * (t + 1) / nt);
        real *part = scratch + (size_t)t * share;
        if (m1 > m0)
            FN(conv_wgrad_rows)(p, part, 0, dout, inp, pointwise ? NULL : part + wpart, share - wpart, m0, m1, H, W, C,
                                OC, OH, OW, KH, KW, stride, pad);
        else
            memset(part, 0, wsize * sizeof(real));
#pragma omp barrier
#pragma omp for schedule(static)
        for (size_t i = 0; i < wsize; i++) {
            real sum = dweight[i];
            for (int j = 0; j < nt; j++)
                sum += scratch[(size_t)j * share + i];
            dweight[i] = sum;
        }
    }
}

#ifndef HERBS_F64
/* The float engine runs the direct convolution (conv2d_direct.h) where it applies: the weight is
   packed into the 64-byte aligned start of the scratch. */
#include "kernels/conv2d_direct.h"

/* below this many input channels a micro-kernel call is too short (the stem's 3 channels run
   faster as im2col + GEMM: measured 80 vs 40 GF/s) */
#define CONV_DIRECT_MIN_CHANNELS 16

static float *conv_aligned(float *scratch) { return (float *)(((uintptr_t)scratch + 63) & ~(uintptr_t)63); }

size_t conv2d_scratch_floats(int C, int OC, int KH, int KW)
{
    const size_t K = (size_t)KH * KW * C;
    const size_t cols = K * CONV_CHUNK_ROWS > CONV_CHUNK_FLOATS ? K * CONV_CHUNK_ROWS : CONV_CHUNK_FLOATS;
    const size_t fwd = conv_direct_packed_floats(OC, C, KH * KW), bwd = conv_direct_packed_floats(C, OC, KH * KW);
    const size_t wgrad = (size_t)herbs_num_threads() * FN(conv_wgrad_share)(K, OC, 0);
    size_t need = cols > fwd ? cols : fwd;
    need = need > wgrad ? need : wgrad;
    return (need > bwd ? need : bwd) + 16;
}
#endif

void FN(conv2d_forward)(real *out, const real *inp, const real *weight, const real *scale, const real *shift, int relu,
                        real *scratch, size_t scratch_floats, int B, int H, int W, int C, int OC, int KH, int KW,
                        int stride, int pad)
{
    const int OH = (H + 2 * pad - KH) / stride + 1, OW = (W + 2 * pad - KW) / stride + 1;
    const int M = B * OH * OW, K = KH * KW * C;
#ifndef HERBS_F64
    if (C >= CONV_DIRECT_MIN_CHANNELS) {
        float *wpack = conv_aligned(scratch);
        conv_direct_pack_weight(wpack, weight, 0, OC, C, KH * KW);
        conv_direct_forward(out, inp, wpack, 0.0f, B, H, W, C, OC, KH, KW, stride, pad, scale, shift, relu);
        return;
    }
#endif
    if (FN(conv_is_pointwise)(KH, KW, stride, pad)) {
        FN(gemm_affine)(0, 1, M, OC, C, 1, inp, C, weight, C, 0, out, OC, scale, shift, relu);
        return;
    }
    const int rows = FN(conv_chunk_rows)(scratch_floats, K, M, CONV_CHUNK_ROWS, CONV_CHUNK_FLOATS);
    for (int m0 = 0; m0 < M; m0 += rows) {
        const int m1 = M - m0 < rows ? M : m0 + rows;
        FN(conv_im2col)(scratch, inp, m0, m1, H, W, C, OH, OW, KH, KW, stride, pad);
        FN(gemm_affine)(0, 1, m1 - m0, OC, K, 1, scratch, K, weight, K, 0, out + (size_t)m0 * OC, OC, scale, shift,
                        relu);
    }
}

#ifndef HERBS_F64
int conv2d_forward_prepacked(float *out, const float *inp, const void *packed, const float *scale, const float *shift,
                             int relu, float *scratch, size_t scratch_floats, int B, int H, int W, int C, int OC,
                             int KH, int KW, int stride, int pad)
{
    const int OH = (H + 2 * pad - KH) / stride + 1, OW = (W + 2 * pad - KW) / stride + 1;
    const int M = B * OH * OW, K = KH * KW * C;
    if (conv_is_pointwise(KH, KW, stride, pad))
        return gemm_prepacked(0, M, OC, C, 1, inp, C, packed, 0, out, OC, scale, shift, relu) == HERBS_OK ? 0 : -1;
    const int rows = conv_chunk_rows(scratch_floats, K, M, CONV_CHUNK_ROWS, CONV_CHUNK_FLOATS);
    for (int m0 = 0; m0 < M; m0 += rows) {
        const int m1 = M - m0 < rows ? M : m0 + rows;
        conv_im2col(scratch, inp, m0, m1, H, W, C, OH, OW, KH, KW, stride, pad);
        if (gemm_prepacked(0, m1 - m0, OC, K, 1, scratch, K, packed, 0, out + (size_t)m0 * OC, OC, scale, shift,
                           relu) != HERBS_OK)
            return -1;
    }
    return 0;
}
#endif

/* p[0:n] = 0, split among threads in the float engine */
static void FN(conv_zero)(real *p, size_t n)
{
#ifdef HERBS_F64
    memset(p, 0, n * sizeof(real));
#else
    herbs_zero_floats(p, n);
#endif
}

void FN(conv2d_backward)(herbs_precision p, real *dinp, real *dweight, real *dbias, const real *dout, const real *inp,
                         const real *weight, real *scratch, size_t scratch_floats, int B, int H, int W, int C,
                         int OC, int KH, int KW, int stride, int pad, int accumulate)
{
    const int OH = (H + 2 * pad - KH) / stride + 1, OW = (W + 2 * pad - KW) / stride + 1;
    const int M = B * OH * OW, K = KH * KW * C;
    if (dbias) {
#pragma omp parallel for schedule(static) num_threads(CONV_THREADS((double)M * OC))
        for (int o = 0; o < OC; o++) {
            double sum = 0;
            for (int m = 0; m < M; m++)
                sum += dout[(size_t)m * OC + o];
            dbias[o] += (real)sum;
        }
    }
    const int pointwise = FN(conv_is_pointwise)(KH, KW, stride, pad);
    const int rows = FN(conv_chunk_rows)(scratch_floats, K, M, CONV_BACKWARD_CHUNK_ROWS, CONV_BACKWARD_CHUNK_FLOATS);
    if (dweight)
        FN(conv_weight_grad)(p, dweight, dout, inp, scratch, scratch_floats, M, H, W, C, OC, OH, OW, KH, KW, stride,
                             pad, pointwise);
    if (!dinp)
        return;
#ifndef HERBS_F64
    /* fp32: a correlation of dout with the flipped weight */
    if (p == HERBS_FP32 && stride == 1 && KH == KW && pad < KH && OC >= CONV_DIRECT_MIN_CHANNELS) {
        float *wpack = conv_aligned(scratch);
        conv_direct_pack_weight(wpack, weight, 1, C, OC, KH * KW);
        conv_direct_forward(dinp, dout, wpack, accumulate ? 1.0f : 0.0f, B, OH, OW, OC, C, KH, KW, 1, KH - 1 - pad,
                            NULL, NULL, 0);
        return;
    }
#endif
    if (pointwise) {
        FN(gemm_at)(p, 0, 0, M, C, OC, 1, dout, OC, weight, C, accumulate ? 1 : 0, dinp, C);
        return;
    }
    if (!accumulate) /* col2im adds the columns' overlapping windows up */
        FN(conv_zero)(dinp, (size_t)B * H * W * C);
    for (int m0 = 0; m0 < M; m0 += rows) { /* dcols = dout · weight, put back by col2im */
        const int m1 = M - m0 < rows ? M : m0 + rows;
        FN(gemm_at)(p, 0, 0, m1 - m0, K, OC, 1, dout + (size_t)m0 * OC, OC, weight, K, 0, scratch, K);
        FN(conv_col2im_add)(dinp, scratch, m0, m1, H, W, C, OH, OW, KH, KW, stride, pad);
    }
}
