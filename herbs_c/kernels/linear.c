#include <omp.h>

#include "core/threads.h"
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

void FN(linear_backward)(herbs_precision p, real *dinp, real *dweight, real *dbias, const real *dout, const real *inp,
                         const real *weight, int N, int C, int OC, int accumulate)
{
    if (dinp)
        FN(gemm_at)(p, 0, 0, N, C, OC, 1, dout, OC, weight, C, accumulate ? 1 : 0, dinp, C);
    if (dweight)
        FN(gemm_at)(p, 1, 0, OC, C, N, 1, dout, OC, inp, C, 1, dweight, C);
    if (dbias) { /* each thread sums its share of the rows, whole rows in order (one pass over dout),
                    then the threads' sums are added in thread order: deterministic for a thread count */
        const int nt = herbs_threads_for((double)N * OC, LINEAR_BIAS_ELEMENTS_PER_THREAD);
#pragma omp parallel num_threads(nt) if (nt > 1)
        {
            const int t = omp_get_thread_num(), n = omp_get_num_threads();
            const int r0 = (int)((long)N * t / n), r1 = (int)((long)N * (t + 1) / n);
            for (int o0 = 0; o0 < OC; o0 += LINEAR_BIAS_BLOCK) {
                const int cols = OC - o0 < LINEAR_BIAS_BLOCK ? OC - o0 : LINEAR_BIAS_BLOCK;
                real sum[LINEAR_BIAS_BLOCK] = {0};
                for (int r = r0; r < r1; r++) {
                    const real *row = dout + (size_t)r * OC + o0;
#pragma omp simd
                    for (int j = 0; j < cols; j++)
                        sum[j] += row[j];
                }
#pragma omp for ordered schedule(static, 1)
                for (int u = 0; u < n; u++) {
#pragma omp ordered
                    for (int j = 0; j < cols; j++)
                        dbias[o0 + j] += sum[j];
                }
            }
        }
    }
}
