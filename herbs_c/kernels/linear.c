#include <omp.h>
#include <stdint.h>

#include "core/scratch.h"
#include "core/threads.h"
#include "kernels/bf16.h"
#include "kernels/isa.h"
#include "kernels/kernels.h"
#include "kernels/precision.h"

#define LINEAR_BIAS_BLOCK 1024                /* columns summed at once (a stack buffer) */
#define LINEAR_BIAS_ELEMENTS_PER_THREAD 65536 /* of dout, for a second thread to pay */

void FN(linear_forward)(real *out, const real *inp, const real *weight, const real *bias, int N, int C, int OC)
{
    FN(linear_affine_forward)(out, inp, weight, NULL, bias, 0, N, C, OC);
}

void FN(linear_affine_forward)(real *out, const real *inp, const real *weight, const real *scale, const real *shift,
                               int relu, int N, int C, int OC)
{
    FN(gemm_affine)(0, 1, N, OC, C, 1, inp, C, weight, C, 0, out, OC, scale, shift, relu);
}

/* A row's output gradient from the gradient dout that reaches a function after the layer and the
   function's input x (the layer's output): g[n] = dout·f'(x). */
typedef void (*FN(through_fn))(real *g, const real *dout, const real *x, size_t n);

/* sum[0:cols] += Σ rows r0..r1 of g[:, o0:o0+cols] (row stride OC), in row order, where g = dout,
   or with through (not NULL) g = through(dout, x) row by row; with rounded (not NULL) also
   rounded[r, o0:o0+cols] = bf16(g[r, o0:o0+cols]) (bf16.h's rounding). */
HERBS_INLINE void FN(linear_bias_rows)(real *sum, uint16_t *rounded, const real *dout, FN(through_fn) through,
                                       const real *x, int OC, int o0, int cols, int r0, int r1)
{
    real g[LINEAR_BIAS_BLOCK];
    for (int r = r0; r < r1; r++) {
        const real *row = dout + (size_t)r * OC + o0;
        uint16_t *out = rounded ? rounded + (size_t)r * OC + o0 : NULL;
        if (through) {
            through(g, row, x + (size_t)r * OC + o0, (size_t)cols);
            row = g;
        }
#pragma omp simd
        for (int j = 0; j < cols; j++)
            sum[j] += row[j];
        if (out) {
#pragma omp simd
            for (int j = 0; j < cols; j++)
                out[j] = bf16_from_float((float)row[j]);
        }
    }
}
HERBS_ISA_VARIANTS(linear_bias_rows, (real *sum, uint16_t *rounded, const real *dout, FN(through_fn) through,
                                      const real *x, int OC, int o0, int cols, int r0, int r1),
                   (sum, rounded, dout, through, x, OC, o0, cols, r0, r1))

/* dbias[OC] += Σ_n g (dbias NULL: not wanted), and with rounded (not NULL) rounded[N, OC] = bf16(g):
   one pass over dout, where g = dout, or through(dout, x) (linear_bias_rows). Each thread sums its
   share of the rows, whole rows in order, then the threads' sums are added in thread order:
   deterministic for a thread count. */
static void FN(linear_bias_backward)(real *dbias, uint16_t *rounded, const real *dout, FN(through_fn) through,
                                     const real *x, int N, int OC)
{
    const int nt = herbs_threads_for((double)N * OC, LINEAR_BIAS_ELEMENTS_PER_THREAD);
    __typeof__(FN(linear_bias_rows_isa)()) rows = FN(linear_bias_rows_isa)();
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
        const int t = omp_get_thread_num(), n = omp_get_num_threads();
        const int r0 = (int)((long)N * t / n), r1 = (int)((long)N * (t + 1) / n);
        for (int o0 = 0; o0 < OC; o0 += LINEAR_BIAS_BLOCK) {
            const int cols = OC - o0 < LINEAR_BIAS_BLOCK ? OC - o0 : LINEAR_BIAS_BLOCK;
            real sum[LINEAR_BIAS_BLOCK] = {0};
            rows(sum, rounded, dout, through, x, OC, o0, cols, r0, r1);
            if (!dbias) /* the same for every thread: no thread meets the loop below */
                continue;
#pragma omp for ordered schedule(static, 1)
            for (int u = 0; u < n; u++) {
#pragma omp ordered
                for (int j = 0; j < cols; j++)
                    dbias[o0 + j] += sum[j];
            }
        }
    }
}

void FN(linear_backward)(herbs_precision p, real *dinp, real *dweight, real *dbias, const real *dout, const real *inp,
                         const real *weight, int N, int C, int OC, int accumulate)
{
#ifndef HERBS_F64
    if (p == HERBS_BF16) {
        linear_backward_bf16(dinp, dweight, dbias, dout, NULL, inp, 0, weight, N, C, OC, accumulate);
        return;
    }
#endif
    if (dweight) /* first: dinp may be inp */
        FN(gemm_at)(p, 1, 0, OC, C, N, 1, dout, OC, inp, C, 1, dweight, C);
    if (dinp)
        FN(gemm_at)(p, 0, 0, N, C, OC, 1, dout, OC, weight, C, accumulate ? 1 : 0, dinp, C);
    if (dbias)
        FN(linear_bias_backward)(dbias, NULL, dout, NULL, NULL, N, OC);
}

#ifndef HERBS_F64
void linear_backward_bf16(float *dinp, float *dweight, float *dbias, const float *dout, float *gelu_input,
                          const void *inp, int inp_bf16, const float *weight, int N, int C, int OC, int accumulate)
{
    /* dout rounded once for both products (without the memory, each packing rounds it: same bits) */
    const int products = (dinp != NULL) + (dweight != NULL);
    uint16_t *rounded = products ? herbs_scratch(HERBS_SCRATCH_BF16_OPERAND, (size_t)N * OC * sizeof(uint16_t)) : NULL;
    if (gelu_input && !rounded) { /* no memory to round into: the output gradient over GELU's input */
        gelu_backward_table(gelu_input, dout, gelu_input, (size_t)N * OC);
        dout = gelu_input;
        gelu_input = NULL;
    }
    if (dbias || rounded)
        linear_bias_backward(dbias, rounded, dout, gelu_input ? gelu_backward_table_isa() : NULL, gelu_input, N, OC);
    const void *dy = rounded ? (const void *)rounded : dout;
    if (dweight) /* first: dinp may be inp */
        gemm_bf16_inputs(1, 0, OC, C, N, 1, dy, rounded != NULL, OC, inp, inp_bf16, C, 1, dweight, C, NULL, NULL, 0);
    if (dinp)
        gemm_bf16_inputs(0, 0, N, C, OC, 1, dy, rounded != NULL, OC, weight, 0, C, accumulate ? 1 : 0, dinp, C, NULL,
                         NULL, 0);
}
#endif
