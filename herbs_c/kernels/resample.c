#include "kernels/clones.h"
#include "kernels/kernels.h"
#include "kernels/precision.h"

#define RESAMPLE_PARALLEL(work) if ((double)(work) > 32768)

/* PyTorch's source coordinate of output index o when upsampling n -> 2n (align_corners False):
   src = max((o + 0.5)/2 - 0.5, 0); it reads i0 = floor(src) with weight l0 and i1 with l1. */
static void FN(up2x_source)(int o, int n, int *i0, int *i1, real *l0, real *l1)
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
static real FN(up2x_weight)(int o, int i, int n)
{
    int i0, i1;
    real l0, l1;
    FN(up2x_source)(o, n, &i0, &i1, &l0, &l1);
    return (i0 == i ? l0 : 0) + (i1 == i ? l1 : 0);
}

HERBS_CLONES void FN(upsample_bilinear2x_forward)(real *out, const real *inp, int B, int H, int W, int C)
{
    const int OH = 2 * H, OW = 2 * W;
#pragma omp parallel for schedule(static) RESAMPLE_PARALLEL((double)B * OH * OW * C)
    for (int r = 0; r < B * OH; r++) {
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
                y[c] = a0 * (b0 * x00[c] + b1 * x01[c]) + a1 * (b0 * x10[c] + b1 * x11[c]);
        }
    }
}

HERBS_CLONES void FN(upsample_bilinear2x_backward)(real *dinp, const real *dout, int B, int H, int W, int C)
{
    const int OH = 2 * H, OW = 2 * W;
    /* a gather: input index i is read only by outputs 2i-2 .. 2i+3 */
#pragma omp parallel for schedule(static) RESAMPLE_PARALLEL((double)B * OH * OW * C)
    for (int r = 0; r < B * H; r++) {
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

HERBS_CLONES void FN(avgpool2x2_forward)(real *out, const real *inp, int B, int H, int W, int C)
{
    const int OH = H / 2, OW = W / 2;
#pragma omp parallel for schedule(static) RESAMPLE_PARALLEL((double)B * OH * OW * C * 4)
    for (int r = 0; r < B * OH; r++) {
        const int b = r / OH, oh = r % OH;
        const real *row0 = inp + ((size_t)b * H + 2 * oh) * W * C, *row1 = row0 + (size_t)W * C;
        for (int ow = 0; ow < OW; ow++) {
            real *y = out + ((size_t)r * OW + ow) * C;
            const size_t i = (size_t)2 * ow * C;
#pragma omp simd
            for (int c = 0; c < C; c++)
                y[c] = (row0[i + c] + row0[i + C + c] + row1[i + c] + row1[i + C + c]) / 4;
        }
    }
}

HERBS_CLONES void FN(avgpool2x2_backward)(real *dinp, const real *dout, int B, int H, int W, int C)
{
    const int OH = H / 2, OW = W / 2;
#pragma omp parallel for schedule(static) RESAMPLE_PARALLEL((double)B * OH * OW * C * 4)
    for (int r = 0; r < B * OH; r++) {
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
