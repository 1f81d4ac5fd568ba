/* Batch normalisation, channels last. Each kernel walks blocks of BN_LANES channels (one
   thread per block, rows in order, double accumulators), so results do not depend on the thread
   count and long columns keep their precision. A block is one 64-byte line of a float row. */
#include "kernels/kernels.h"
#include "kernels/precision.h"

#define BN_LANES 16
#define BN_PARALLEL(N, C) if ((double)(N) * (C) > 65536)

void FN(batchnorm_forward_train)(real *out, real *mean, real *rstd, real *running_mean, real *running_var,
                                 const real *inp, const real *weight, const real *bias, int N, int C, real eps,
                                 real momentum)
{
#pragma omp parallel for schedule(static) BN_PARALLEL(N, C)
    for (int c0 = 0; c0 < C; c0 += BN_LANES) {
        const int lanes = C - c0 < BN_LANES ? C - c0 : BN_LANES;
        double sum[BN_LANES] = {0}, sq[BN_LANES] = {0};
        real scale[BN_LANES], shift[BN_LANES];
        for (int n = 0; n < N; n++)
            for (int j = 0; j < lanes; j++)
                sum[j] += inp[(size_t)n * C + c0 + j];
        for (int j = 0; j < lanes; j++)
            mean[c0 + j] = (real)(sum[j] / N);
        for (int n = 0; n < N; n++)
            for (int j = 0; j < lanes; j++) {
                double d = inp[(size_t)n * C + c0 + j] - mean[c0 + j];
                sq[j] += d * d;
            }
        for (int j = 0; j < lanes; j++) {
            const int c = c0 + j;
            double var = sq[j] / N;
            rstd[c] = (real)(1 / sqrt(var + eps));
            scale[j] = rstd[c] * (weight ? weight[c] : 1);
            shift[j] = (bias ? bias[c] : 0) - mean[c] * scale[j];
            if (running_mean)
                running_mean[c] = (1 - momentum) * running_mean[c] + momentum * mean[c];
            if (running_var)
                running_var[c] = (1 - momentum) * running_var[c] + momentum * (real)(sq[j] / (N - 1));
        }
        for (int n = 0; n < N; n++)
            for (int j = 0; j < lanes; j++)
                out[(size_t)n * C + c0 + j] = inp[(size_t)n * C + c0 + j] * scale[j] + shift[j];
    }
}

void FN(batchnorm_forward_eval)(real *out, const real *inp, const real *running_mean, const real *running_var,
                                const real *weight, const real *bias, int N, int C, real eps)
{
#pragma omp parallel for schedule(static) BN_PARALLEL(N, C)
    for (int c0 = 0; c0 < C; c0 += BN_LANES) {
        const int lanes = C - c0 < BN_LANES ? C - c0 : BN_LANES;
        real scale[BN_LANES], shift[BN_LANES];
        for (int j = 0; j < lanes; j++) {
            const int c = c0 + j;
            scale[j] = (weight ? weight[c] : 1) / sqrt(running_var[c] + eps);
            shift[j] = (bias ? bias[c] : 0) - running_mean[c] * scale[j];
        }
        for (int n = 0; n < N; n++)
            for (int j = 0; j < lanes; j++)
                out[(size_t)n * C + c0 + j] = inp[(size_t)n * C + c0 + j] * scale[j] + shift[j];
    }
}

/* Both backward passes for a block: with x̂ = (x - center)·r, dweight += Σ g·x̂, dbias += Σ g,
   and dinp += w·r·(g - batch_stats·(mean(g) + x̂·mean(g·x̂))) — batch_stats is 0 in eval mode,
   where the statistics do not depend on the input. */
static void FN(bn_backward_block)(real *dinp, real *dweight, real *dbias, const real *dout, const real *inp,
                                  const real *weight, const real *center, const real *r, int batch_stats, int N,
                                  int C, int c0, int lanes)
{
    double sum_g[BN_LANES] = {0}, sum_gx[BN_LANES] = {0};
    for (int n = 0; n < N; n++)
        for (int j = 0; j < lanes; j++) {
            size_t i = (size_t)n * C + c0 + j;
            sum_g[j] += dout[i];
            sum_gx[j] += dout[i] * (double)(inp[i] - center[j]);
        }
    real a[BN_LANES], b[BN_LANES], k[BN_LANES];
    for (int j = 0; j < lanes; j++) {
        const int c = c0 + j;
        if (dweight)
            dweight[c] += (real)(sum_gx[j] * r[j]);
        if (dbias)
            dbias[c] += (real)sum_g[j];
        real w = weight ? weight[c] : 1;
        a[j] = w * r[j];
        b[j] = batch_stats ? (real)(-w * r[j] * r[j] * r[j] * sum_gx[j] / N) : 0;
        k[j] = batch_stats ? (real)(-w * r[j] * sum_g[j] / N) : 0;
    }
    if (!dinp)
        return;
    for (int n = 0; n < N; n++)
        for (int j = 0; j < lanes; j++) {
            size_t i = (size_t)n * C + c0 + j;
            dinp[i] += dout[i] * a[j] + (inp[i] - center[j]) * b[j] + k[j];
        }
}

void FN(batchnorm_backward)(real *dinp, real *dweight, real *dbias, const real *dout, const real *inp,
                            const real *weight, const real *mean, const real *rstd, int N, int C)
{
#pragma omp parallel for schedule(static) BN_PARALLEL(N, C)
    for (int c0 = 0; c0 < C; c0 += BN_LANES) {
        const int lanes = C - c0 < BN_LANES ? C - c0 : BN_LANES;
        FN(bn_backward_block)(dinp, dweight, dbias, dout, inp, weight, mean + c0, rstd + c0, 1, N, C, c0, lanes);
    }
}

void FN(batchnorm_backward_eval)(real *dinp, real *dweight, real *dbias, const real *dout, const real *inp,
                                 const real *running_mean, const real *running_var, const real *weight, int N,
                                 int C, real eps)
{
#pragma omp parallel for schedule(static) BN_PARALLEL(N, C)
    for (int c0 = 0; c0 < C; c0 += BN_LANES) {
        const int lanes = C - c0 < BN_LANES ? C - c0 : BN_LANES;
        real r[BN_LANES];
        for (int j = 0; j < lanes; j++)
            r[j] = 1 / sqrt(running_var[c0 + j] + eps);
        FN(bn_backward_block)(dinp, dweight, dbias, dout, inp, weight, running_mean + c0, r, 0, N, C, c0, lanes);
    }
}
