/* Batch normalisation, channels last. Each kernel splits the channels into contiguous blocks
   (rows in order, double accumulators), so results do not depend on the thread count and long
   columns keep their precision. The work of a range of blocks is a body built per instruction
   set, run over contiguous ranges of blocks, one per thread (isa.h). */
#include "core/threads.h"
#include "kernels/bf16.h"
#include "kernels/kernels.h"
#include "kernels/precision.h"
#include "kernels/isa.h"

#define BN_MAX_BLOCK 1024 /* channels per block, for the per-channel accumulators on the stack */

/* The channel blocks [c_begin, c_end): as many as threads (or more for wide rows), 16-channel
   aligned. A block walks every row in order, so each channel's sums have one fixed order. Whole
   contiguous runs of each row per block keep the reads streaming (blocks of one 64-byte line,
   striding over long rows, ran at under 1 GB/s). */
static int FN(bn_blocks)(int N, int C, int *threads)
{
    const int lines = (C + 15) / 16, wide = (C + BN_MAX_BLOCK - 1) / BN_MAX_BLOCK;
    int nt = herbs_threads_for((double)N * C, 65536);
    nt = nt > lines ? lines : nt;
    *threads = nt;
    return nt < wide ? wide : nt;
}

static void FN(bn_block_range)(int C, int nb, int b, int *c_begin, int *c_end)
{
    const int lines = (C + 15) / 16;
    *c_begin = lines * b / nb * 16;
    *c_end = b == nb - 1 ? C : lines * (b + 1) / nb * 16;
}

/* out = inp·scale + shift on the block's channels [c0, c0 + w), through a ReLU when relu is set */
HERBS_INLINE void FN(bn_apply)(real *out, const real *inp, const real *scale, const real *shift, int N, int C, int c0,
                               int w, int relu)
{
    for (int n = 0; n < N; n++) {
        const real *x = inp + (size_t)n * C + c0;
        real *y = out + (size_t)n * C + c0;
        if (relu) {
#pragma omp simd
            for (int j = 0; j < w; j++) {
                real v = x[j] * scale[j] + shift[j];
                y[j] = v < 0 ? 0 : v; /* relu_forward's: NaN stays */
            }
        } else {
#pragma omp simd
            for (int j = 0; j < w; j++)
                y[j] = x[j] * scale[j] + shift[j];
        }
    }
}

/* The train-mode output's out = x·scale + offset on a block's channels [c0, c0 + w) from its
   statistics: one expression for the forward and its recomputation (the same bits). */
HERBS_INLINE void FN(bn_train_affine)(real *scale, real *offset, const real *mean, const real *rstd, const real *weight,
                                      const real *bias, int c0, int w)
{
    for (int j = 0; j < w; j++) {
        const int c = c0 + j;
        scale[j] = rstd[c] * (weight ? weight[c] : 1);
        offset[j] = (bias ? bias[c] : 0) - mean[c] * scale[j];
    }
}

/* Train mode, optionally followed by a ReLU (relu = 1) in the same pass: blocks [b0, b1) of nb. */
HERBS_INLINE void FN(bn_train_blocks)(real *out, real *mean, real *rstd, real *running_mean, real *running_var,
                                      const real *inp, const real *weight, const real *bias, int N, int C, real eps,
                                      real momentum, int relu, int nb, int b0, int b1)
{
    for (int b = b0; b < b1; b++) {
        int c0, c1;
        FN(bn_block_range)(C, nb, b, &c0, &c1);
        const int w = c1 - c0;
        /* one pass: sums of (x - shift) and its square in double, shifted by the first row so
           the variance does not cancel */
        double s1[BN_MAX_BLOCK], s2[BN_MAX_BLOCK], shift[BN_MAX_BLOCK];
        real scale[BN_MAX_BLOCK], offset[BN_MAX_BLOCK];
        for (int j = 0; j < w; j++) {
            s1[j] = s2[j] = 0;
            shift[j] = inp[c0 + j];
        }
        for (int n = 0; n < N; n++) {
            const real *x = inp + (size_t)n * C + c0;
#pragma omp simd
            for (int j = 0; j < w; j++) {
                double d = (double)x[j] - shift[j];
                s1[j] += d;
                s2[j] += d * d;
            }
        }
        for (int j = 0; j < w; j++) {
            const int c = c0 + j;
            double m = s1[j] / N, sq = s2[j] - s1[j] * m; /* Σ (x - mean)² */
            sq = sq < 0 ? 0 : sq; /* rounding below 0 clamped; NaN stays */
            mean[c] = (real)(shift[j] + m);
            rstd[c] = (real)(1 / sqrt(sq / N + eps));
            if (running_mean)
                running_mean[c] = (1 - momentum) * running_mean[c] + momentum * mean[c];
            if (running_var)
                running_var[c] = (1 - momentum) * running_var[c] + momentum * (real)(sq / (N - 1));
        }
        FN(bn_train_affine)(scale, offset, mean, rstd, weight, bias, c0, w);
        FN(bn_apply)(out, inp, scale, offset, N, C, c0, w, relu);
    }
}
HERBS_ISA_VARIANTS(bn_train_blocks,
                   (real *out, real *mean, real *rstd, real *running_mean, real *running_var, const real *inp,
                    const real *weight, const real *bias, int N, int C, real eps, real momentum, int relu, int nb,
                    int b0, int b1),
                   (out, mean, rstd, running_mean, running_var, inp, weight, bias, N, C, eps, momentum, relu, nb, b0,
                    b1))

static void FN(bn_train)(real *out, real *mean, real *rstd, real *running_mean, real *running_var, const real *inp,
                         const real *weight, const real *bias, int N, int C, real eps, real momentum, int relu)
{
    int nt;
    const int nb = FN(bn_blocks)(N, C, &nt);
    HERBS_ISA_PARALLEL(bn_train_blocks, nb, nt, out, mean, rstd, running_mean, running_var, inp, weight, bias, N, C,
                       eps, momentum, relu, nb);
}

void FN(batchnorm_forward_train)(real *out, real *mean, real *rstd, real *running_mean, real *running_var,
                                 const real *inp, const real *weight, const real *bias, int N, int C, real eps,
                                 real momentum)
{
    FN(bn_train)(out, mean, rstd, running_mean, running_var, inp, weight, bias, N, C, eps, momentum, 0);
}

void FN(batchnorm_relu_forward_train)(real *out, real *mean, real *rstd, real *running_mean, real *running_var,
                                      const real *inp, const real *weight, const real *bias, int N, int C, real eps,
                                      real momentum)
{
    FN(bn_train)(out, mean, rstd, running_mean, running_var, inp, weight, bias, N, C, eps, momentum, 1);
}

/* The train-mode output again from saved statistics: blocks [b0, b1) of nb. */
HERBS_INLINE void FN(bn_saved_blocks)(real *out, const real *inp, const real *mean, const real *rstd,
                                      const real *weight, const real *bias, int N, int C, int relu, int nb, int b0,
                                      int b1)
{
    for (int b = b0; b < b1; b++) {
        int c0, c1;
        FN(bn_block_range)(C, nb, b, &c0, &c1);
        real scale[BN_MAX_BLOCK], offset[BN_MAX_BLOCK];
        FN(bn_train_affine)(scale, offset, mean, rstd, weight, bias, c0, c1 - c0);
        FN(bn_apply)(out, inp, scale, offset, N, C, c0, c1 - c0, relu);
    }
}
HERBS_ISA_VARIANTS(bn_saved_blocks,
                   (real *out, const real *inp, const real *mean, const real *rstd, const real *weight,
                    const real *bias, int N, int C, int relu, int nb, int b0, int b1),
                   (out, inp, mean, rstd, weight, bias, N, C, relu, nb, b0, b1))

void FN(batchnorm_forward_saved)(real *out, const real *inp, const real *mean, const real *rstd, const real *weight,
                                 const real *bias, int N, int C, int relu)
{
    int nt;
    const int nb = FN(bn_blocks)(N, C, &nt);
    HERBS_ISA_PARALLEL(bn_saved_blocks, nb, nt, out, inp, mean, rstd, weight, bias, N, C, relu, nb);
}

void FN(batchnorm_eval_affine)(real *scale, real *shift, const real *running_mean, const real *running_var,
                               const real *weight, const real *bias, int C, real eps)
{
    for (int c = 0; c < C; c++) {
        scale[c] = (weight ? weight[c] : 1) / sqrt(running_var[c] + eps);
        shift[c] = (bias ? bias[c] : 0) - running_mean[c] * scale[c];
    }
}

/* Eval mode: blocks [b0, b1) of nb. */
HERBS_INLINE void FN(bn_eval_blocks)(real *out, const real *inp, const real *running_mean, const real *running_var,
                                     const real *weight, const real *bias, int N, int C, real eps, int nb, int b0,
                                     int b1)
{
    for (int b = b0; b < b1; b++) {
        int c0, c1;
        FN(bn_block_range)(C, nb, b, &c0, &c1);
        const int w = c1 - c0;
        real scale[BN_MAX_BLOCK], shift[BN_MAX_BLOCK];
        FN(batchnorm_eval_affine)(scale, shift, running_mean + c0, running_var + c0, weight ? weight + c0 : NULL,
                                  bias ? bias + c0 : NULL, w, eps);
        FN(bn_apply)(out, inp, scale, shift, N, C, c0, w, 0);
    }
}
HERBS_ISA_VARIANTS(bn_eval_blocks,
                   (real *out, const real *inp, const real *running_mean, const real *running_var, const real *weight,
                    const real *bias, int N, int C, real eps, int nb, int b0, int b1),
                   (out, inp, running_mean, running_var, weight, bias, N, C, eps, nb, b0, b1))

void FN(batchnorm_forward_eval)(real *out, const real *inp, const real *running_mean, const real *running_var,
                                const real *weight, const real *bias, int N, int C, real eps)
{
    int nt;
    const int nb = FN(bn_blocks)(N, C, &nt);
    HERBS_ISA_PARALLEL(bn_eval_blocks, nb, nt, out, inp, running_mean, running_var, weight, bias, N, C, eps, nb);
}

/* g of a block's row: dout where the ReLU after the BN passed, else 0 (relu_backward's mask), the
   ReLU's output read from relu_out, or (relu_out NULL) made again as x·scale + shift, the BN's
   output by the forward's expression (bn_apply: the same bits, so the same mask). */
HERBS_INLINE void FN(bn_masked_row)(real *masked, const real *g, const real *x, const real *relu_out,
                                    const real *scale, const real *shift, int w)
{
    if (relu_out) {
#pragma omp simd
        for (int j = 0; j < w; j++) {
            const real gv = g[j], mv = relu_out[j];
            masked[j] = mv <= 0 ? 0 : gv;
        }
        return;
    }
#pragma omp simd
    for (int j = 0; j < w; j++) {
        const real gv = g[j], mv = x[j] * scale[j] + shift[j];
        masked[j] = mv <= 0 ? 0 : gv;
    }
}

/* Both backward passes for a block: with x̂ = (x - center)·r, dweight += Σ g·x̂, dbias += Σ g,
   and dinp (+)= w·r·(g - batch_stats·(mean(g) + x̂·mean(g·x̂))) — batch_stats is 0 in eval mode,
   where the statistics do not depend on the input; dinp is added to when `accumulate` is set,
   else written. center and r are the block's [w] values.
   With `relu_out` (the output of a ReLU after the BN), g is dout where relu_out > 0 or NaN, else 0;
   with mask_scale and mask_shift instead (the block's [w] affine of the BN's output), the same
   mask from that output made again. */
HERBS_INLINE void FN(bn_backward_block)(real *dinp, real *dweight, real *dbias, const real *dout, const real *relu_out,
                                        const real *mask_scale, const real *mask_shift, const real *inp,
                                        const real *weight, const real *center, const real *r, int batch_stats, int N,
                                        int C, int c0, int w, int accumulate)
{
    double sum_g[BN_MAX_BLOCK], sum_gx[BN_MAX_BLOCK];
    real a[BN_MAX_BLOCK], b[BN_MAX_BLOCK], k[BN_MAX_BLOCK], masked[BN_MAX_BLOCK];
    const int relu = relu_out || mask_scale;
    for (int j = 0; j < w; j++)
        sum_g[j] = sum_gx[j] = 0;
    for (int n = 0; n < N; n++) {
        const real *g = dout + (size_t)n * C + c0, *x = inp + (size_t)n * C + c0;
        if (relu) { /* the masked row first (a vector blend), then the sums: one loop of both does
                       not vectorise */
            FN(bn_masked_row)(masked, g, x, relu_out ? relu_out + (size_t)n * C + c0 : NULL, mask_scale, mask_shift,
                              w);
            g = masked;
        }
#pragma omp simd
        for (int j = 0; j < w; j++) {
            sum_g[j] += g[j];
            sum_gx[j] += g[j] * (double)(x[j] - center[j]);
        }
    }
    for (int j = 0; j < w; j++) {
        const int c = c0 + j;
        if (dweight)
            dweight[c] += (real)(sum_gx[j] * r[j]);
        if (dbias)
            dbias[c] += (real)sum_g[j];
        real wc = weight ? weight[c] : 1;
        a[j] = wc * r[j];
        b[j] = batch_stats ? (real)(-wc * r[j] * r[j] * r[j] * sum_gx[j] / N) : 0;
        k[j] = batch_stats ? (real)(-wc * r[j] * sum_g[j] / N) : 0;
    }
    if (!dinp)
        return;
    for (int n = 0; n < N; n++) {
        const real *g = dout + (size_t)n * C + c0, *x = inp + (size_t)n * C + c0;
        real *d = dinp + (size_t)n * C + c0;
        if (relu) {
            FN(bn_masked_row)(masked, g, x, relu_out ? relu_out + (size_t)n * C + c0 : NULL, mask_scale, mask_shift,
                              w);
            g = masked;
        }
#pragma omp simd
        for (int j = 0; j < w; j++)
            d[j] = (accumulate ? d[j] : 0) + (g[j] * a[j] + (x[j] - center[j]) * b[j] + k[j]);
    }
}

/* Backward of train mode: blocks [b0, b1) of nb. */
HERBS_INLINE void FN(bn_backward_blocks)(real *dinp, real *dweight, real *dbias, const real *dout,
                                         const real *relu_out, const real *inp, const real *weight, const real *mean,
                                         const real *rstd, int N, int C, int accumulate, int nb, int b0, int b1)
{
    for (int b = b0; b < b1; b++) {
        int c0, c1;
        FN(bn_block_range)(C, nb, b, &c0, &c1);
        FN(bn_backward_block)(dinp, dweight, dbias, dout, relu_out, NULL, NULL, inp, weight, mean + c0, rstd + c0, 1,
                              N, C, c0, c1 - c0, accumulate);
    }
}
HERBS_ISA_VARIANTS(bn_backward_blocks,
                   (real *dinp, real *dweight, real *dbias, const real *dout, const real *relu_out, const real *inp,
                    const real *weight, const real *mean, const real *rstd, int N, int C, int accumulate, int nb,
                    int b0, int b1),
                   (dinp, dweight, dbias, dout, relu_out, inp, weight, mean, rstd, N, C, accumulate, nb, b0, b1))

void FN(batchnorm_backward)(real *dinp, real *dweight, real *dbias, const real *dout, const real *relu_out,
                            const real *inp, const real *weight, const real *mean, const real *rstd, int N, int C,
                            int accumulate)
{
    int nt;
    const int nb = FN(bn_blocks)(N, C, &nt);
    HERBS_ISA_PARALLEL(bn_backward_blocks, nb, nt, dinp, dweight, dbias, dout, relu_out, inp, weight, mean, rstd, N, C,
                       accumulate, nb);
}

/* Backward of train mode through a ReLU whose output was not kept: blocks [b0, b1) of nb. */
HERBS_INLINE void FN(bn_relu_backward_saved_blocks)(real *dinp, real *dweight, real *dbias, const real *dout,
                                                    const real *inp, const real *weight, const real *bias,
                                                    const real *mean, const real *rstd, int N, int C, int accumulate,
                                                    int nb, int b0, int b1)
{
    for (int b = b0; b < b1; b++) {
        int c0, c1;
        FN(bn_block_range)(C, nb, b, &c0, &c1);
        real scale[BN_MAX_BLOCK], shift[BN_MAX_BLOCK];
        FN(bn_train_affine)(scale, shift, mean, rstd, weight, bias, c0, c1 - c0);
        FN(bn_backward_block)(dinp, dweight, dbias, dout, NULL, scale, shift, inp, weight, mean + c0, rstd + c0, 1, N,
                              C, c0, c1 - c0, accumulate);
    }
}
HERBS_ISA_VARIANTS(bn_relu_backward_saved_blocks,
                   (real *dinp, real *dweight, real *dbias, const real *dout, const real *inp, const real *weight,
                    const real *bias, const real *mean, const real *rstd, int N, int C, int accumulate, int nb, int b0,
                    int b1),
                   (dinp, dweight, dbias, dout, inp, weight, bias, mean, rstd, N, C, accumulate, nb, b0, b1))

void FN(batchnorm_relu_backward_saved)(real *dinp, real *dweight, real *dbias, const real *dout, const real *inp,
                                       const real *weight, const real *bias, const real *mean, const real *rstd, int N,
                                       int C, int accumulate)
{
    int nt;
    const int nb = FN(bn_blocks)(N, C, &nt);
    HERBS_ISA_PARALLEL(bn_relu_backward_saved_blocks, nb, nt, dinp, dweight, dbias, dout, inp, weight, bias, mean,
                       rstd, N, C, accumulate, nb);
}

/* Backward of eval mode: blocks [b0, b1) of nb. */
HERBS_INLINE void FN(bn_backward_eval_blocks)(real *dinp, real *dweight, real *dbias, const real *dout,
                                              const real *relu_out, const real *inp, const real *running_mean,
                                              const real *running_var, const real *weight, int N, int C, real eps,
                                              int accumulate, int nb, int b0, int b1)
{
    for (int b = b0; b < b1; b++) {
        int c0, c1;
        FN(bn_block_range)(C, nb, b, &c0, &c1);
        real r[BN_MAX_BLOCK];
        for (int j = 0; j < c1 - c0; j++)
            r[j] = 1 / sqrt(running_var[c0 + j] + eps);
        FN(bn_backward_block)(dinp, dweight, dbias, dout, relu_out, NULL, NULL, inp, weight, running_mean + c0, r, 0,
                              N, C, c0, c1 - c0, accumulate);
    }
}
HERBS_ISA_VARIANTS(bn_backward_eval_blocks,
                   (real *dinp, real *dweight, real *dbias, const real *dout, const real *relu_out, const real *inp,
                    const real *running_mean, const real *running_var, const real *weight, int N, int C, real eps,
                    int accumulate, int nb, int b0, int b1),
                   (dinp, dweight, dbias, dout, relu_out, inp, running_mean, running_var, weight, N, C, eps, accumulate,
                    nb, b0, b1))

void FN(batchnorm_backward_eval)(real *dinp, real *dweight, real *dbias, const real *dout, const real *relu_out,
                                 const real *inp, const real *running_mean, const real *running_var,
                                 const real *weight, int N, int C, real eps, int accumulate)
{
    int nt;
    const int nb = FN(bn_blocks)(N, C, &nt);
    HERBS_ISA_PARALLEL(bn_backward_eval_blocks, nb, nt, dinp, dweight, dbias, dout, relu_out, inp, running_mean,
                       running_var, weight, N, C, eps, accumulate, nb);
}

#ifndef HERBS_F64
/* rows [n0, n1) of batchnorm_input_keep_bf16 and batchnorm_input_again_bf16 */
HERBS_INLINE void bn_keep_rows(uint16_t *kept, const float *inp, const float *mean, int C, size_t n0, size_t n1)
{
    for (size_t n = n0; n < n1; n++) {
        const float *x = inp + n * C;
        uint16_t *k = kept + n * C;
#pragma omp simd
        for (int c = 0; c < C; c++)
            k[c] = bf16_from_float(x[c] - mean[c]);
    }
}
HERBS_ISA_VARIANTS(bn_keep_rows, (uint16_t *kept, const float *inp, const float *mean, int C, size_t n0, size_t n1),
                   (kept, inp, mean, C, n0, n1))

HERBS_INLINE void bn_again_rows(float *inp, const uint16_t *kept, const float *mean, int C, size_t n0, size_t n1)
{
    for (size_t n = n0; n < n1; n++) {
        float *x = inp + n * C;
        const uint16_t *k = kept + n * C;
#pragma omp simd
        for (int c = 0; c < C; c++)
            x[c] = bf16_to_float(k[c]) + mean[c];
    }
}
HERBS_ISA_VARIANTS(bn_again_rows, (float *inp, const uint16_t *kept, const float *mean, int C, size_t n0, size_t n1),
                   (inp, kept, mean, C, n0, n1))

#define BN_KEEP_THREADS(N, C) herbs_threads_for((double)(N) * (C), 65536)

void batchnorm_input_keep_bf16(uint16_t *kept, const float *inp, const float *mean, int N, int C)
{
    HERBS_ISA_PARALLEL(bn_keep_rows, N, BN_KEEP_THREADS(N, C), kept, inp, mean, C);
}

void batchnorm_input_again_bf16(float *inp, const uint16_t *kept, const float *mean, int N, int C)
{
    HERBS_ISA_PARALLEL(bn_again_rows, N, BN_KEEP_THREADS(N, C), inp, kept, mean, C);
}
#endif
