#include <math.h>

#include "kernels/clones.h"
#include "kernels/kernels.h"
#include "kernels/precision.h"

#define POOL_LANES 16
#define POOL_PARALLEL(work) if ((double)(work) > 32768)

HERBS_CLONES void FN(maxpool2d_forward)(real *out, int *argmax, const real *inp, int B, int H, int W, int C, int K, int stride,
                           int pad)
{
    const int OH = (H + 2 * pad - K) / stride + 1, OW = (W + 2 * pad - K) / stride + 1;
#pragma omp parallel for schedule(static) POOL_PARALLEL((double)B * OH * OW * C * K * K)
    for (int r = 0; r < B * OH; r++) {
        const int b = r / OH, oh = r % OH;
        const int ih0 = oh * stride - pad < 0 ? 0 : oh * stride - pad;
        const int ih1 = oh * stride - pad + K > H ? H : oh * stride - pad + K;
        for (int ow = 0; ow < OW; ow++) {
            const int iw0 = ow * stride - pad < 0 ? 0 : ow * stride - pad;
            const int iw1 = ow * stride - pad + K > W ? W : ow * stride - pad + K;
            const size_t o = ((size_t)r * OW + ow) * C;
            for (int c0 = 0; c0 < C; c0 += POOL_LANES) {
                const int lanes = C - c0 < POOL_LANES ? C - c0 : POOL_LANES;
                real best[POOL_LANES];
                int where[POOL_LANES];
                for (int j = 0; j < lanes; j++) {
                    best[j] = -INFINITY;
                    where[j] = ih0 * W + iw0;
                }
                for (int ih = ih0; ih < ih1; ih++)
                    for (int iw = iw0; iw < iw1; iw++) {
                        const real *x = inp + (((size_t)b * H + ih) * W + iw) * C + c0;
                        for (int j = 0; j < lanes; j++)
                            if (x[j] > best[j] || isnan(x[j])) {
                                best[j] = x[j];
                                where[j] = ih * W + iw;
                            }
                    }
                for (int j = 0; j < lanes; j++) {
                    out[o + c0 + j] = best[j];
                    argmax[o + c0 + j] = where[j];
                }
            }
        }
    }
}

HERBS_CLONES void FN(maxpool2d_backward)(real *dinp, const real *dout, const int *argmax, int B, int H, int W, int C, int K,
                            int stride, int pad)
{
    const int OH = (H + 2 * pad - K) / stride + 1, OW = (W + 2 * pad - K) / stride + 1;
    const int blocks = (C + POOL_LANES - 1) / POOL_LANES;
    /* one (image, channel block) per iteration: its writes touch no other iteration's */
#pragma omp parallel for schedule(static) POOL_PARALLEL((double)B * OH * OW * C)
    for (int item = 0; item < B * blocks; item++) {
        const int b = item / blocks, c0 = item % blocks * POOL_LANES;
        const int lanes = C - c0 < POOL_LANES ? C - c0 : POOL_LANES;
        real *d = dinp + (size_t)b * H * W * C + c0;
        for (size_t p = 0; p < (size_t)OH * OW; p++) {
            const size_t o = ((size_t)b * OH * OW + p) * C + c0;
            for (int j = 0; j < lanes; j++)
                d[(size_t)argmax[o + j] * C + j] += dout[o + j];
        }
    }
}
