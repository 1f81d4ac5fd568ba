/* Depthwise convolution: the forward's body runs over output rows (image, oh), the backward's over
   channel blocks (each block's input and weight gradients are its own, summed over the batch in a
   fixed order), built per instruction set and run over contiguous ranges, one per thread (isa.h). */
#include "kernels/kernels.h"
#include "kernels/precision.h"
#include "kernels/isa.h"

#define DW_LANES 16 /* channels of one block: one vector register of floats */
#define DW_THREADS(work) herbs_threads_for((double)(work), 16384)

void FN(depthwise_weight_to_kkc)(real *out, const real *w, int C, int K)
{
    for (int c = 0; c < C; c++)
        for (int t = 0; t < K * K; t++)
            out[(size_t)t * C + c] = w[(size_t)c * K * K + t];
}

void FN(depthwise_weight_grad_from_kkc)(real *dw, const real *dw_kkc, int C, int K)
{
    for (int c = 0; c < C; c++)
        for (int t = 0; t < K * K; t++)
            dw[(size_t)c * K * K + t] += dw_kkc[(size_t)t * C + c];
}

/* the window of output position o along an axis of n inputs: taps [k0, k1) lie inside */
HERBS_INLINE void FN(depthwise_taps)(int o, int stride, int pad, int K, int n, int *k0, int *k1)
{
    const int i = o * stride - pad;
    *k0 = i < 0 ? -i : 0;
    *k1 = i + K > n ? n - i : K;
}

/* output rows (image, oh) [r0, r1) */
HERBS_INLINE void FN(depthwise_forward_rows)(real *out, const real *inp, const real *weight, const real *scale,
                                             const real *shift, int H, int W, int C, int K, int stride, int pad,
                                             int OH, int OW, int r0, int r1)
{
    for (int r = r0; r < r1; r++) {
        const int b = r / OH, oh = r % OH;
        int ky0, ky1;
        FN(depthwise_taps)(oh, stride, pad, K, H, &ky0, &ky1);
        for (int ow = 0; ow < OW; ow++) {
            int kx0, kx1;
            FN(depthwise_taps)(ow, stride, pad, K, W, &kx0, &kx1);
            real *o = out + ((size_t)r * OW + ow) * C;
            for (int c0 = 0; c0 < C; c0 += DW_LANES) {
                const int lanes = C - c0 < DW_LANES ? C - c0 : DW_LANES;
                real acc[DW_LANES] = {0};
                for (int ky = ky0; ky < ky1; ky++)
                    for (int kx = kx0; kx < kx1; kx++) {
                        const int ih = oh * stride - pad + ky, iw = ow * stride - pad + kx;
                        const real *x = inp + (((size_t)b * H + ih) * W + iw) * C + c0;
                        const real *w = weight + (size_t)(ky * K + kx) * C + c0;
#pragma omp simd
                        for (int j = 0; j < lanes; j++)
                            acc[j] += x[j] * w[j];
                    }
                for (int j = 0; j < lanes; j++)
                    o[c0 + j] = acc[j] * (scale ? scale[c0 + j] : 1) + (shift ? shift[c0 + j] : 0);
            }
        }
    }
}
HERBS_ISA_VARIANTS(depthwise_forward_rows,
                   (real *out, const real *inp, const real *weight, const real *scale, const real *shift, int H,
                    int W, int C, int K, int stride, int pad, int OH, int OW, int r0, int r1),
                   (out, inp, weight, scale, shift, H, W, C, K, stride, pad, OH, OW, r0, r1))

void FN(depthwise_forward)(real *out, const real *inp, const real *weight, const real *scale, const real *shift, int B,
                           int H, int W, int C, int K, int stride, int pad)
{
    const int OH = (H + 2 * pad - K) / stride + 1, OW = (W + 2 * pad - K) / stride + 1;
    HERBS_ISA_PARALLEL(depthwise_forward_rows, B * OH, DW_THREADS((double)B * OH * OW * C * K * K), out, inp, weight,
                       scale, shift, H, W, C, K, stride, pad, OH, OW);
}

/* channel blocks [i0, i1): each block's slices of dinp and dweight are written by it alone */
HERBS_INLINE void FN(depthwise_backward_blocks)(real *dinp, real *dweight, const real *dout, const real *inp,
                                                const real *weight, int B, int H, int W, int C, int K, int stride,
                                                int pad, int OH, int OW, int accumulate, int i0, int i1)
{
    for (int item = i0; item < i1; item++) {
        const int c0 = item * DW_LANES, lanes = C - c0 < DW_LANES ? C - c0 : DW_LANES;
        if (dinp && !accumulate)
            for (size_t p = 0; p < (size_t)B * H * W; p++)
                for (int j = 0; j < lanes; j++)
                    dinp[p * C + c0 + j] = 0;
        for (int b = 0; b < B; b++)
            for (int oh = 0; oh < OH; oh++) {
                int ky0, ky1;
                FN(depthwise_taps)(oh, stride, pad, K, H, &ky0, &ky1);
                for (int ow = 0; ow < OW; ow++) {
                    int kx0, kx1;
                    FN(depthwise_taps)(ow, stride, pad, K, W, &kx0, &kx1);
                    const real *g = dout + (((size_t)b * OH + oh) * OW + ow) * C + c0;
                    for (int ky = ky0; ky < ky1; ky++)
                        for (int kx = kx0; kx < kx1; kx++) {
                            const size_t at = (((size_t)b * H + oh * stride - pad + ky) * W + ow * stride - pad + kx) * C + c0;
                            const size_t t = (size_t)(ky * K + kx) * C + c0;
                            if (dweight) {
#pragma omp simd
                                for (int j = 0; j < lanes; j++)
                                    dweight[t + j] += g[j] * inp[at + j];
                            }
                            if (dinp) {
#pragma omp simd
                                for (int j = 0; j < lanes; j++)
                                    dinp[at + j] += g[j] * weight[t + j];
                            }
                        }
                }
            }
    }
}
HERBS_ISA_VARIANTS(depthwise_backward_blocks,
                   (real *dinp, real *dweight, const real *dout, const real *inp, const real *weight, int B, int H,
                    int W, int C, int K, int stride, int pad, int OH, int OW, int accumulate, int i0, int i1),
                   (dinp, dweight, dout, inp, weight, B, H, W, C, K, stride, pad, OH, OW, accumulate, i0, i1))

void FN(depthwise_backward)(real *dinp, real *dweight, const real *dout, const real *inp, const real *weight, int B,
                            int H, int W, int C, int K, int stride, int pad, int accumulate)
{
    const int OH = (H + 2 * pad - K) / stride + 1, OW = (W + 2 * pad - K) / stride + 1;
    const int blocks = (C + DW_LANES - 1) / DW_LANES;
    HERBS_ISA_PARALLEL(depthwise_backward_blocks, blocks, DW_THREADS((double)B * OH * OW * C * K * K * 2), dinp,
                       dweight, dout, inp, weight, B, H, W, C, K, stride, pad, OH, OW, accumulate);
}
