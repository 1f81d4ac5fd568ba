/* 2-D convolution, NHWC, as GEMMs over im2col chunks: for output pixels [m0, m1) the chunk's
   rows are the receptive fields, cols[m - m0][(ki·KW + kj)·C + c], so a kernel row (KW taps of C
   channels) is one contiguous run of the input. Forward: out = cols · weightᵀ. Backward:
   dweight += doutᵀ · cols, and dcols = dout · weight scattered back by a gather over the input
   pixels (col2im), so threads never write the same element. */
#include <stdint.h>
#include <string.h>

#include "kernels/clones.h"
#include "kernels/kernels.h"
#include "kernels/precision.h"

#define CONV_PARALLEL(work) if ((double)(work) > 65536)

HERBS_CLONES void FN(conv2d_weight_to_ohwi)(real *out, const real *w, int OC, int C, int KH, int KW)
{
    const int taps = KH * KW;
#pragma omp parallel for schedule(static) CONV_PARALLEL((double)OC * C * taps)
    for (int o = 0; o < OC; o++)
        for (int c = 0; c < C; c++)
            for (int t = 0; t < taps; t++)
                out[((size_t)o * taps + t) * C + c] = w[((size_t)o * C + c) * taps + t];
}

HERBS_CLONES void FN(conv2d_weight_grad_from_ohwi)(real *dw, const real *dw_ohwi, int OC, int C, int KH, int KW)
{
    const int taps = KH * KW;
#pragma omp parallel for schedule(static) CONV_PARALLEL((double)OC * C * taps)
    for (int o = 0; o < OC; o++)
        for (int c = 0; c < C; c++)
            for (int t = 0; t < taps; t++)
                dw[((size_t)o * C + c) * taps + t] += dw_ohwi[((size_t)o * taps + t) * C + c];
}

/* cols[m - m0][K] <- the receptive fields of output pixels [m0, m1), zeros in the padding. */
HERBS_CLONES static void FN(conv_im2col)(real *cols, const real *inp, int m0, int m1, int H, int W, int C, int OH, int OW,
                            int KH, int KW, int stride, int pad)
{
    const size_t K = (size_t)KH * KW * C;
#pragma omp parallel for schedule(static) CONV_PARALLEL((double)(m1 - m0) * K)
    for (int m = m0; m < m1; m++) {
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

/* dinp += the columns dcols of output pixels [m0, m1) put back where they came from: each input
   pixel gathers the taps that read it, in order (ki, kj). */
HERBS_CLONES static void FN(conv_col2im_add)(real *dinp, const real *dcols, int m0, int m1, int H, int W, int C, int OH,
                                int OW, int KH, int KW, int stride, int pad)
{
    const size_t K = (size_t)KH * KW * C;
    /* input rows (b·H + ih) that the first and last output rows of the chunk read */
    const int r0 = m0 / OW, r1 = (m1 - 1) / OW;
    int q0 = (r0 / OH) * H + (r0 % OH) * stride - pad, q1 = (r1 / OH) * H + (r1 % OH) * stride - pad + KH - 1;
    if (q0 < (r0 / OH) * H)
        q0 = (r0 / OH) * H;
    if (q1 > (r1 / OH) * H + H - 1)
        q1 = (r1 / OH) * H + H - 1;
#pragma omp parallel for schedule(static) CONV_PARALLEL((double)(q1 - q0 + 1) * W * C * KH * KW / stride / stride)
    for (int q = q0; q <= q1; q++) {
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
    size_t need = cols > fwd ? cols : fwd;
    return (need > bwd ? need : bwd) + 16;
}
#endif

void FN(conv2d_forward)(real *out, const real *inp, const real *weight, const real *bias, real *scratch,
                        size_t scratch_floats, int B, int H, int W, int C, int OC, int KH, int KW, int stride,
                        int pad)
{
    const int OH = (H + 2 * pad - KH) / stride + 1, OW = (W + 2 * pad - KW) / stride + 1;
    const int M = B * OH * OW, K = KH * KW * C;
    if (bias) {
#pragma omp parallel for schedule(static) CONV_PARALLEL((double)M * OC)
        for (int m = 0; m < M; m++)
            memcpy(out + (size_t)m * OC, bias, OC * sizeof(real));
    }
    const real beta = bias ? 1 : 0;
#ifndef HERBS_F64
    if (C >= CONV_DIRECT_MIN_CHANNELS) {
        float *wpack = conv_aligned(scratch);
        conv_direct_pack_weight(wpack, weight, 0, OC, C, KH * KW);
        conv_direct_forward(out, inp, wpack, beta, B, H, W, C, OC, KH, KW, stride, pad);
        return;
    }
#endif
    if (FN(conv_is_pointwise)(KH, KW, stride, pad)) {
        FN(gemm)(0, 1, M, OC, C, 1, inp, C, weight, C, beta, out, OC);
        return;
    }
    const int rows = FN(conv_chunk_rows)(scratch_floats, K, M, CONV_CHUNK_ROWS, CONV_CHUNK_FLOATS);
    for (int m0 = 0; m0 < M; m0 += rows) {
        const int m1 = M - m0 < rows ? M : m0 + rows;
        FN(conv_im2col)(scratch, inp, m0, m1, H, W, C, OH, OW, KH, KW, stride, pad);
        FN(gemm)(0, 1, m1 - m0, OC, K, 1, scratch, K, weight, K, beta, out + (size_t)m0 * OC, OC);
    }
}

void FN(conv2d_backward)(real *dinp, real *dweight, real *dbias, const real *dout, const real *inp,
                         const real *weight, real *scratch, size_t scratch_floats, int B, int H, int W, int C,
                         int OC, int KH, int KW, int stride, int pad)
{
    const int OH = (H + 2 * pad - KH) / stride + 1, OW = (W + 2 * pad - KW) / stride + 1;
    const int M = B * OH * OW, K = KH * KW * C;
    if (dbias) {
#pragma omp parallel for schedule(static) CONV_PARALLEL((double)M * OC)
        for (int o = 0; o < OC; o++) {
            double sum = 0;
            for (int m = 0; m < M; m++)
                sum += dout[(size_t)m * OC + o];
            dbias[o] += (real)sum;
        }
    }
    const int pointwise = FN(conv_is_pointwise)(KH, KW, stride, pad);
    const int rows = FN(conv_chunk_rows)(scratch_floats, K, M, CONV_BACKWARD_CHUNK_ROWS, CONV_BACKWARD_CHUNK_FLOATS);
    if (dweight) { /* dweight += doutᵀ · cols */
        if (pointwise)
            FN(gemm)(1, 0, OC, C, M, 1, dout, OC, inp, C, 1, dweight, C);
        for (int m0 = 0; !pointwise && m0 < M; m0 += rows) {
            const int m1 = M - m0 < rows ? M : m0 + rows;
            FN(conv_im2col)(scratch, inp, m0, m1, H, W, C, OH, OW, KH, KW, stride, pad);
            FN(gemm)(1, 0, OC, K, m1 - m0, 1, dout + (size_t)m0 * OC, OC, scratch, K, 1, dweight, K);
        }
    }
    if (!dinp)
        return;
#ifndef HERBS_F64
    if (stride == 1 && KH == KW && pad < KH && OC >= CONV_DIRECT_MIN_CHANNELS) { /* a correlation of dout with the flipped weight */
        float *wpack = conv_aligned(scratch);
        conv_direct_pack_weight(wpack, weight, 1, C, OC, KH * KW);
        conv_direct_forward(dinp, dout, wpack, 1.0f, B, OH, OW, OC, C, KH, KW, 1, KH - 1 - pad);
        return;
    }
#endif
    if (pointwise) {
        FN(gemm)(0, 0, M, C, OC, 1, dout, OC, weight, C, 1, dinp, C);
        return;
    }
    for (int m0 = 0; m0 < M; m0 += rows) { /* dcols = dout · weight, put back by col2im */
        const int m1 = M - m0 < rows ? M : m0 + rows;
        FN(gemm)(0, 0, m1 - m0, K, OC, 1, dout + (size_t)m0 * OC, OC, weight, K, 0, scratch, K);
        FN(conv_col2im_add)(dinp, scratch, m0, m1, H, W, C, OH, OW, KH, KW, stride, pad);
    }
}
