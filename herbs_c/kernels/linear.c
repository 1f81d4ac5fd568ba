#include "kernels/kernels.h"
#include "kernels/precision.h"

void FN(linear_forward)(real *out, const real *inp, const real *weight, const real *bias, int N, int C, int OC)
{
    if (bias) {
#pragma omp parallel for schedule(static) if ((double)N * OC > 1e5)
        for (int n = 0; n < N; n++)
            for (int o = 0; o < OC; o++)
                out[(size_t)n * OC + o] = bias[o];
    }
    FN(gemm)(0, 1, N, OC, C, 1, inp, C, weight, C, bias ? 1 : 0, out, OC);
}

void FN(linear_backward)(real *dinp, real *dweight, real *dbias, const real *dout, const real *inp,
                         const real *weight, int N, int C, int OC)
{
    if (dinp)
        FN(gemm)(0, 0, N, C, OC, 1, dout, OC, weight, C, 1, dinp, C);
    if (dweight)
        FN(gemm)(1, 0, OC, C, N, 1, dout, OC, inp, C, 1, dweight, C);
    if (dbias) {
        /* column blocks of 16 (one 64-byte line of a float row), all rows each: every line of dout
           is read once, and each block sums in a fixed order whatever the thread count */
#pragma omp parallel for schedule(static) if ((double)N * OC > 1e5)
        for (int o0 = 0; o0 < OC; o0 += 16) {
            const int lanes = OC - o0 < 16 ? OC - o0 : 16;
            double sum[16] = {0};
            for (int n = 0; n < N; n++)
                for (int j = 0; j < lanes; j++)
                    sum[j] += dout[(size_t)n * OC + o0 + j];
            for (int j = 0; j < lanes; j++)
                dbias[o0 + j] += (real)sum[j];
        }
    }
}
