#include "kernels/kernels.h"
#include "kernels/precision.h"

#define LINEAR_BIAS_BLOCK 64 /* columns summed together by one thread */

void FN(linear_forward)(real *out, const real *inp, const real *weight, const real *bias, int N, int C, int OC)
{
    FN(linear_affine_forward)(out, inp, weight, NULL, bias, 0, N, C, OC);
}

void FN(linear_affine_forward)(real *out, const real *inp, const real *weight, const real *scale, const real *shift,
                               int relu, int N, int C, int OC)
{
    FN(gemm_affine)(0, 1, N, OC, C, 1, inp, C, weight, C, 0, out, OC, scale, shift, relu);
}

void FN(linear_backward)(herbs_precision p, real *dinp, real *dweight, real *dbias, const real *dout, const real *inp,
                         const real *weight, int N, int C, int OC, int accumulate)
{
    if (dinp)
        FN(gemm_at)(p, 0, 0, N, C, OC, 1, dout, OC, weight, C, accumulate ? 1 : 0, dinp, C);
    if (dweight)
        FN(gemm_at)(p, 1, 0, OC, C, N, 1, dout, OC, inp, C, 1, dweight, C);
    if (dbias) { /* blocks of columns, rows in order: contiguous, vectorisable, deterministic */
#pragma omp parallel for schedule(static) if ((double)N * OC > 1e5)
        for (int o0 = 0; o0 < OC; o0 += LINEAR_BIAS_BLOCK) {
            const int cols = OC - o0 < LINEAR_BIAS_BLOCK ? OC - o0 : LINEAR_BIAS_BLOCK;
            real sum[LINEAR_BIAS_BLOCK] = {0};
            for (int n = 0; n < N; n++) {
                const real *row = dout + (size_t)n * OC + o0;
                for (int j = 0; j < cols; j++)
                    sum[j] += row[j];
            }
            for (int j = 0; j < cols; j++)
                dbias[o0 + j] += sum[j];
        }
    }
}
