/* Layer normalisation. Rows are split over threads; the weight and bias gradients are summed per
   thread in a stack buffer and added in thread order, so for a given thread count the result does
   not depend on timing. Rows wider than LN_STACK_C channels sum those gradients in a second pass
   over blocks of channels instead (no stack buffer). */
#include <omp.h>

#include "kernels/kernels.h"
#include "kernels/precision.h"

#define LN_STACK_C 4096
#define LN_PARALLEL(N, C) if ((double)(N) * (C) > 32768)

void FN(layernorm_forward)(real *out, real *mean, real *rstd, const real *inp, const real *weight, const real *bias,
                           int N, int C, real eps)
{
#pragma omp parallel for schedule(static) LN_PARALLEL(N, C)
    for (int n = 0; n < N; n++) {
        const real *x = inp + (size_t)n * C;
        real *y = out + (size_t)n * C;
        real sum = 0, sq = 0;
        for (int c = 0; c < C; c++)
            sum += x[c];
        const real m = sum / C;
        for (int c = 0; c < C; c++)
            sq += (x[c] - m) * (x[c] - m);
        const real r = 1 / sqrt(sq / C + eps);
        for (int c = 0; c < C; c++)
            y[c] = (x[c] - m) * r * weight[c] + bias[c];
        mean[n] = m;
        rstd[n] = r;
    }
}

/* One row's input gradient: dinp += r·(g - mean(g) - x̂·mean(g·x̂)) with g = dout·weight. */
static void FN(layernorm_row_backward)(real *dx, const real *dy, const real *x, const real *weight, real m, real r,
                                       int C)
{
    real sum_g = 0, sum_gx = 0;
    for (int c = 0; c < C; c++) {
        real g = dy[c] * weight[c];
        sum_g += g;
        sum_gx += g * (x[c] - m) * r;
    }
    const real mg = sum_g / C, mgx = sum_gx / C;
    for (int c = 0; c < C; c++)
        dx[c] += r * (dy[c] * weight[c] - mg - (x[c] - m) * r * mgx);
}

/* dweight and dbias over all rows, in blocks of 16 channels (one thread per block). */
static void FN(layernorm_param_grads_by_columns)(real *dweight, real *dbias, const real *dout, const real *inp,
                                                 const real *mean, const real *rstd, int N, int C)
{
#pragma omp parallel for schedule(static) LN_PARALLEL(N, C)
    for (int c0 = 0; c0 < C; c0 += 16) {
        const int lanes = C - c0 < 16 ? C - c0 : 16;
        real dw[16] = {0}, db[16] = {0};
        for (int n = 0; n < N; n++)
            for (int j = 0; j < lanes; j++) {
                const size_t i = (size_t)n * C + c0 + j;
                dw[j] += dout[i] * (inp[i] - mean[n]) * rstd[n];
                db[j] += dout[i];
            }
        for (int j = 0; j < lanes; j++) {
            if (dweight)
                dweight[c0 + j] += dw[j];
            if (dbias)
                dbias[c0 + j] += db[j];
        }
    }
}

void FN(layernorm_backward)(real *dinp, real *dweight, real *dbias, const real *dout, const real *inp,
                            const real *weight, const real *mean, const real *rstd, int N, int C)
{
    const int param_grads = dweight || dbias;
    if (C > LN_STACK_C || !param_grads) {
        if (dinp) {
#pragma omp parallel for schedule(static) LN_PARALLEL(N, C)
            for (int n = 0; n < N; n++)
                FN(layernorm_row_backward)(dinp + (size_t)n * C, dout + (size_t)n * C, inp + (size_t)n * C, weight,
                                           mean[n], rstd[n], C);
        }
        if (param_grads)
            FN(layernorm_param_grads_by_columns)(dweight, dbias, dout, inp, mean, rstd, N, C);
        return;
    }
#pragma omp parallel LN_PARALLEL(N, C)
    {
        real dw[C], db[C];
        for (int c = 0; c < C; c++)
            dw[c] = db[c] = 0;
        const int tid = omp_get_thread_num(), nt = omp_get_num_threads();
        const int n0 = (int)((long)N * tid / nt), n1 = (int)((long)N * (tid + 1) / nt);
        for (int n = n0; n < n1; n++) {
            const real *dy = dout + (size_t)n * C, *x = inp + (size_t)n * C;
            if (dinp)
                FN(layernorm_row_backward)(dinp + (size_t)n * C, dy, x, weight, mean[n], rstd[n], C);
            for (int c = 0; c < C; c++) {
                dw[c] += dy[c] * (x[c] - mean[n]) * rstd[n];
                db[c] += dy[c];
            }
        }
#pragma omp for ordered schedule(static, 1)
        for (int t = 0; t < nt; t++) {
#pragma omp ordered
            for (int c = 0; c < C; c++) {
                if (dweight)
                    dweight[c] += dw[c];
                if (dbias)
                    dbias[c] += db[c];
            }
        }
    }
}
