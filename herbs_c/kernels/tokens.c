#include "kernels/kernels.h"
#include "kernels/precision.h"

#define TOKENS_PARALLEL_MIN 65536 /* elements below which a second thread does not pay */

/* out[b] = (accumulate ? out[b] : 0) + bias; returns the GEMM's beta for adding the product onto it */
static real FN(token_bias_rows)(real *out, const real *bias, int B, int S_out, int C, int accumulate)
{
    const size_t rows = (size_t)B * S_out;
    if (bias) {
#pragma omp parallel for schedule(static) if (rows * C > TOKENS_PARALLEL_MIN)
        for (size_t r = 0; r < rows; r++) {
            const real v = bias[r % S_out];
            real *o = out + r * C;
            for (int c = 0; c < C; c++)
                o[c] = accumulate ? o[c] + v : v;
        }
    }
    return bias || accumulate ? 1 : 0;
}

void FN(token_linear_forward)(real *out, const real *inp, const real *weight, const real *bias, int B, int S_in,
                              int S_out, int C, int accumulate)
{
    const real beta = FN(token_bias_rows)(out, bias, B, S_out, C, accumulate);
    FN(gemm_batched)(0, 0, S_out, C, S_in, 1, weight, S_in, 0, inp, C, (long)S_in * C, beta, out, C,
                     (long)S_out * C, B);
}

#ifndef HERBS_F64
void token_linear_forward_at(herbs_precision p, float *out, const float *inp, const float *weight, const float *bias,
                             int B, int S_in, int S_out, int C, int accumulate)
{
    const float beta = token_bias_rows(out, bias, B, S_out, C, accumulate);
    gemm_batched_at(p, 0, 0, S_out, C, S_in, 1, weight, S_in, 0, inp, C, (long)S_in * C, beta, out, C,
                    (long)S_out * C, B);
}
#endif

void FN(token_linear_backward)(herbs_precision p, real *dinp, real *dweight, real *dbias, const real *dout,
                               const real *inp, const real *weight, int B, int S_in, int S_out, int C, int accumulate)
{
    if (dinp)
        FN(gemm_batched_at)(p, 1, 0, S_in, C, S_out, 1, weight, S_in, 0, dout, C, (long)S_out * C, accumulate ? 1 : 0,
                            dinp, C, (long)S_in * C, B);
    if (dweight)
        for (int b = 0; b < B; b++) /* one product per sample, summed in a fixed order */
            FN(gemm_at)(p, 0, 1, S_out, S_in, C, 1, dout + (size_t)b * S_out * C, C, inp + (size_t)b * S_in * C, C,
                        1, dweight, S_in);
    if (dbias) {
#pragma omp parallel for schedule(static) if ((size_t)B * S_out * C > TOKENS_PARALLEL_MIN)
        for (int o = 0; o < S_out; o++) {
            double sum = 0;
            for (int b = 0; b < B; b++) {
                const real *g = dout + ((size_t)b * S_out + o) * C;
                for (int c = 0; c < C; c++)
                    sum += g[c];
            }
            dbias[o] += (real)sum;
        }
    }
}

void FN(token_mean_forward)(real *out, const real *inp, int B, int S, int C)
{
#pragma omp parallel for schedule(static) if ((size_t)B * S * C > TOKENS_PARALLEL_MIN)
    for (int b = 0; b < B; b++) {
        real *o = out + (size_t)b * C;
        for (int c = 0; c < C; c++)
            o[c] = 0;
        for (int s = 0; s < S; s++) {
            const real *x = inp + ((size_t)b * S + s) * C;
            for (int c = 0; c < C; c++)
                o[c] += x[c];
        }
        for (int c = 0; c < C; c++)
            o[c] /= S;
    }
}

void FN(token_mean_backward)(real *dinp, const real *dout, int B, int S, int C)
{
    const real inv = (real)1 / S;
#pragma omp parallel for schedule(static) if ((size_t)B * S * C > TOKENS_PARALLEL_MIN)
    for (size_t r = 0; r < (size_t)B * S; r++) {
        const real *g = dout + (r / S) * C;
        real *d = dinp + r * C;
        for (int c = 0; c < C; c++)
            d[c] += g[c] * inv;
    }
}

void FN(gather_tokens)(real *out, long out_stride, const real *inp, const int *index, int index_stride, int B, int S,
                     int n, int C)
{
#pragma omp parallel for schedule(static) if ((size_t)B * n * C > TOKENS_PARALLEL_MIN)
    for (size_t r = 0; r < (size_t)B * n; r++) {
        const size_t b = r / n, j = r % n;
        const real *x = inp + ((size_t)b * S + index[b * index_stride + j]) * C;
        real *o = out + b * out_stride + j * C;
        for (int c = 0; c < C; c++)
            o[c] = x[c];
    }
}

void FN(scatter_tokens_add)(real *dinp, const real *dout, long dout_stride, const int *index, int index_stride, int B,
                          int S, int n, int C)
{
    /* within a sample the indices are distinct (a ranking), so rows never collide across threads
       when each thread takes whole samples */
#pragma omp parallel for schedule(static) if ((size_t)B * n * C > TOKENS_PARALLEL_MIN)
    for (int b = 0; b < B; b++)
        for (int j = 0; j < n; j++) {
            real *d = dinp + ((size_t)b * S + index[(size_t)b * index_stride + j]) * C;
            const real *g = dout + b * dout_stride + (size_t)j * C;
            for (int c = 0; c < C; c++)
                d[c] += g[c];
        }
}
