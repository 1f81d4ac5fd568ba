/* Max pooling: bodies over output rows (forward) or (image, channel block) items (backward),
   built per instruction set and run over contiguous ranges, one per thread (isa.h). */
#include <math.h>

#include "kernels/kernels.h"
#include "kernels/precision.h"
#include "kernels/isa.h"

#define POOL_LANES 16
#define POOL_THREADS(work) herbs_threads_for((double)(work), 16384) /* a thread's work, at least */

/* output rows (image, oh) [r0, r1) */
HERBS_INLINE void FN(maxpool2d_forward_rows)(real *out, int *argmax, const real *inp, int H, int W, int C, int K,
                                             int stride, int pad, int OH, int OW, int r0, int r1)
{
    for (int r = r0; r < r1; r++) {
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
HERBS_ISA_VARIANTS(maxpool2d_forward_rows,
                   (real *out, int *argmax, const real *inp, int H, int W, int C, int K, int stride, int pad, int OH,
                    int OW, int r0, int r1),
                   (out, argmax, inp, H, W, C, K, stride, pad, OH, OW, r0, r1))

void FN(maxpool2d_forward)(real *out, int *argmax, const real *inp, int B, int H, int W, int C, int K, int stride,
                           int pad)
{
    const int OH = (H + 2 * pad - K) / stride + 1, OW = (W + 2 * pad - K) / stride + 1;
    HERBS_ISA_PARALLEL(maxpool2d_forward_rows, B * OH, POOL_THREADS((double)B * OH * OW * C * K * K), out, argmax,
                       inp, H, W, C, K, stride, pad, OH, OW);
}

/* items (image, channel block) [i0, i1): an item's writes touch no other item's */
HERBS_INLINE void FN(maxpool2d_backward_items)(real *dinp, const real *dout, const int *argmax, int H, int W, int C,
                                               int OH, int OW, int i0, int i1)
{
    const int blocks = (C + POOL_LANES - 1) / POOL_LANES;
    for (int item = i0; item < i1; item++) {
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
HERBS_ISA_VARIANTS(maxpool2d_backward_items,
                   (real *dinp, const real *dout, const int *argmax, int H, int W, int C, int OH, int OW, int i0,
                    int i1),
                   (dinp, dout, argmax, H, W, C, OH, OW, i0, i1))

void FN(maxpool2d_backward)(real *dinp, const real *dout, const int *argmax, int B, int H, int W, int C, int K,
                            int stride, int pad)
{
    const int OH = (H + 2 * pad - K) / stride + 1, OW = (W + 2 * pad - K) / stride + 1;
    const int blocks = (C + POOL_LANES - 1) / POOL_LANES;
    HERBS_ISA_PARALLEL(maxpool2d_backward_items, B * blocks, POOL_THREADS((double)B * OH * OW * C), dinp, dout,
                       argmax, H, W, C, OH, OW);
}
