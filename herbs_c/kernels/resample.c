/* Resampling by two: bodies over rows [r0, r1) of the output (or, for the upsampling's backward,
   of the input gradient), built per instruction set and run over contiguous ranges of rows, one
   per thread (isa.h). */
#include "kernels/kernels.h"
#include "kernels/precision.h"
#include "kernels/isa.h"

#define RESAMPLE_THREADS(work) herbs_threads_for((double)(work), 16384) /* a thread's work, at least */

/* PyTorch's source coordinate of output index o when upsampling n -> 2n (align_corners False):
   src = max((o + 0.5)/2 - 0.5, 0); it reads i0 = floor(src) with weight l0 and i1 with l1. */
HERBS_INLINE void FN(up2x_source)(int o, int n, int *i0, int *i1, real *l0, real *l1)
{
    real src = (real)0.5 * ((real)o + (real)0.5) - (real)0.5;
    if (src < 0)
        src = 0;
    *i0 = (int)src;
    *i1 = *i0 + (*i0 < n - 1);
    *l1 = src - (real)*i0;
    *l0 = 1 - *l1;
}

/* The weight with which output index o reads input index i (0 when it does not). */
HERBS_INLINE real FN(up2x_weight)(int o, int i, int n)
{
    int i0, i1;
    real l0, l1;
    FN(up2x_source)(o, n, &i0, &i1, &l0, &l1);
    return (i0 == i ? l0 : 0) + (i1 == i ? l1 : 0);
}

/* output rows (image, oh) [r0, r1) */
HERBS_INLINE void FN(upsample_bilinear2x_forward_rows)(real *out, const real *inp, int H, int W, int C,
                                                       int accumulate, int r0, int r1)
{
    const int OH = 2 * H, OW = 2 * W;
    for (int r = r0; r < r1; r++) {
        const int b = r / OH, oh = r % OH;
        int h0, h1;
        real a0, a1;
        FN(up2x_source)(oh, H, &h0, &h1, &a0, &a1);
        const real *row0 = inp + ((size_t)b * H + h0) * W * C, *row1 = inp + ((size_t)b * H + h1) * W * C;
        for (int ow = 0; ow < OW; ow++) {
            int w0, w1;
            real b0, b1;
            FN(up2x_source)(ow, W, &w0, &w1, &b0, &b1);
            real *y = out + ((size_t)r * OW + ow) * C;
            const real *x00 = row0 + (size_t)w0 * C, *x01 = row0 + (size_t)w1 * C;
            const real *x10 = row1 + (size_t)w0 * C, *x11 = row1 + (size_t)w1 * C;
#pragma omp simd
            for (int c = 0; c < C; c++)
                y[c] = (accumulate ? y[c] : 0) + (a0 * (b0 * x00[c] + b1 * x01[c]) + a1 * (b0 * x10[c] + b1 * x11[c]));
        }
    }
}
HERBS_ISA_VARIANTS(upsample_bilinear2x_forward_rows,
                   (real *out, const real *inp, int H, int W, int C, int accumulate, int r0, int r1),
                   (out, inp, H, W, C, accumulate, r0, r1))

void FN(upsample_bilinear2x_forward)(real *out, const real *inp, int B, int H, int W, int C, int accumulate)
{
    HERBS_ISA_PARALLEL(upsample_bilinear2x_forward_rows, B * 2 * H, RESAMPLE_THREADS((double)B * 4 * H * W * C), out,
                       inp, H, W, C, accumulate);
}

/* input rows (image, h) [r0, r1), each a gather: input index i is read only by outputs 2i-2 .. 2i+3 */
HERBS_INLINE void FN(upsample_bilinear2x_backward_rows)(real *dinp, const real *dout, int H, int W, int C, int r0,
                                                        int r1)
{
    const int OH = 2 * H, OW = 2 * W;
    for (int r = r0; r < r1; r++) {
        const int b = r / H, h = r % H;
        for (int w = 0; w < W; w++) {
            real *d = dinp + ((size_t)r * W + w) * C;
            for (int oh = 2 * h - 2; oh <= 2 * h + 3; oh++) {
                if (oh < 0 || oh >= OH)
                    continue;
                const real wh = FN(up2x_weight)(oh, h, H);
                if (wh == 0)
                    continue;
                for (int ow = 2 * w - 2; ow <= 2 * w + 3; ow++) {
                    if (ow < 0 || ow >= OW)
                        continue;
                    const real ww = FN(up2x_weight)(ow, w, W);
                    if (ww == 0)
                        continue;
                    const real k = wh * ww;
                    const real *g = dout + (((size_t)b * OH + oh) * OW + ow) * C;
#pragma omp simd
                    for (int c = 0; c < C; c++)
                        d[c] += k * g[c];
                }
            }
        }
    }
}
HERBS_ISA_VARIANTS(upsample_bilinear2x_backward_rows,
                   (real *dinp, const real *dout, int H, int W, int C, int r0, int r1), (dinp, dout, H, W, C, r0, r1))

void FN(upsample_bilinear2x_backward)(real *dinp, const real *dout, int B, int H, int W, int C)
{
    HERBS_ISA_PARALLEL(upsample_bilinear2x_backward_rows, B * H, RESAMPLE_THREADS((double)B * 4 * H * W * C), dinp,
                       dout, H, W, C);
}

/* output rows (image, oh) [r0, r1) */
HERBS_INLINE void FN(avgpool2x2_forward_rows)(real *out, const real *inp, int H, int W, int C, int accumulate,
                                              int r0, int r1)
{
    const int OH = H / 2, OW = W / 2;
    for (int r = r0; r < r1; r++) {
        const int b = r / OH, oh = r % OH;
        const real *row0 = inp + ((size_t)b * H + 2 * oh) * W * C, *row1 = row0 + (size_t)W * C;
        for (int ow = 0; ow < OW; ow++) {
            real *y = out + ((size_t)r * OW + ow) * C;
            const size_t i = (size_t)2 * ow * C;
#pragma omp simd
            for (int c = 0; c < C; c++)
                y[c] = (accumulate ? y[c] : 0) + (row0[i + c] + row0[i + C + c] + row1[i + c] + row1[i + C + c]) / 4;
        }
    }
}
HERBS_ISA_VARIANTS(avgpool2x2_forward_rows,
                   (real *out, const real *inp, int H, int W, int C, int accumulate, int r0, int r1),
                   (out, inp, H, W, C, accumulate, r0, r1))

void FN(avgpool2x2_forward)(real *out, const real *inp, int B, int H, int W, int C, int accumulate)
{
    HERBS_ISA_PARALLEL(avgpool2x2_forward_rows, B * (H / 2), RESAMPLE_THREADS((double)B * (H / 2) * (W / 2) * C * 4),
                       out, inp, H, W, C, accumulate);
}

/* output-gradient rows (image, oh) [r0, r1): each writes its own two input rows */
HERBS_INLINE void FN(avgpool2x2_backward_rows)(real *dinp, const real *dout, int H, int W, int C, int r0, int r1)
{
    const int OH = H / 2, OW = W / 2;
    for (int r = r0; r < r1; r++) {
        const int b = r / OH, oh = r % OH;
        real *row0 = dinp + ((size_t)b * H + 2 * oh) * W * C, *row1 = row0 + (size_t)W * C;
        for (int ow = 0; ow < OW; ow++) {
            const real *g = dout + ((size_t)r * OW + ow) * C;
            const size_t i = (size_t)2 * ow * C;
#pragma omp simd
            for (int c = 0; c < C; c++) {
                const real q = g[c] / 4;
                row0[i + c] += q;
                row0[i + C + c] += q;
                row1[i + c] += q;
                row1[i + C + c] += q;
            }
        }
    }
}
HERBS_ISA_VARIANTS(avgpool2x2_backward_rows, (real *dinp, const real *dout, int H, int W, int C, int r0, int r1),
                   (dinp, dout, H, W, C, r0, r1))

void FN(avgpool2x2_backward)(real *dinp, const real *dout, int B, int H, int W, int C)
{
    HERBS_ISA_PARALLEL(avgpool2x2_backward_rows, B * (H / 2), RESAMPLE_THREADS((double)B * (H / 2) * (W / 2) * C * 4),
                       dinp, dout, H, W, C);
}
