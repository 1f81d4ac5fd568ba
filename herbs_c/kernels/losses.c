#include "kernels/kernels.h"
#include "kernels/precision.h"

#define LOSS_PARALLEL(N, C) if ((double)(N) * (C) > 32768)

/* max and log Σ exp(x - max) of row[0..C) · inv_t */
static void FN(loss_lse)(const real *row, real inv_t, int C, real *top, real *lse)
{
    real m = row[0] * inv_t;
    for (int c = 1; c < C; c++)
        m = row[c] * inv_t > m ? row[c] * inv_t : m;
    real sum = 0;
    for (int c = 0; c < C; c++)
        sum += exp(row[c] * inv_t - m);
    *top = m;
    *lse = log(sum);
}

void FN(cross_entropy_forward)(real *loss, const real *logits, const int *labels, int rows_per_label, int N, int C)
{
#pragma omp parallel for schedule(static) LOSS_PARALLEL(N, C)
    for (int n = 0; n < N; n++) {
        const real *row = logits + (size_t)n * C;
        real top, lse;
        FN(loss_lse)(row, 1, C, &top, &lse);
        loss[n] = top + lse - row[labels[n / rows_per_label]];
    }
}

void FN(cross_entropy_backward)(real *dlogits, const real *logits, const int *labels, int rows_per_label, real scale,
                                int N, int C)
{
#pragma omp parallel for schedule(static) LOSS_PARALLEL(N, C)
    for (int n = 0; n < N; n++) {
        const real *row = logits + (size_t)n * C;
        real *d = dlogits + (size_t)n * C;
        real top, lse;
        FN(loss_lse)(row, 1, C, &top, &lse);
        for (int c = 0; c < C; c++)
            d[c] += scale * exp(row[c] - top - lse);
        d[labels[n / rows_per_label]] -= scale;
    }
}

void FN(soft_cross_entropy_forward)(real *loss, const real *logits, const real *targets, int rows_per_target, int N,
                                    int C)
{
#pragma omp parallel for schedule(static) LOSS_PARALLEL(N, C)
    for (int n = 0; n < N; n++) {
        const real *row = logits + (size_t)n * C, *t = targets + (size_t)(n / rows_per_target) * C;
        real top, lse, sum = 0;
        FN(loss_lse)(row, 1, C, &top, &lse);
        for (int c = 0; c < C; c++)
            sum += t[c] * (top + lse - row[c]);
        loss[n] = sum;
    }
}

void FN(soft_cross_entropy_backward)(real *dlogits, const real *logits, const real *targets, int rows_per_target,
                                     real scale, int N, int C)
{
#pragma omp parallel for schedule(static) LOSS_PARALLEL(N, C)
    for (int n = 0; n < N; n++) {
        const real *row = logits + (size_t)n * C, *t = targets + (size_t)(n / rows_per_target) * C;
        real *d = dlogits + (size_t)n * C;
        real top, lse, t_sum = 0;
        FN(loss_lse)(row, 1, C, &top, &lse);
        for (int c = 0; c < C; c++)
            t_sum += t[c];
        for (int c = 0; c < C; c++)
            d[c] += scale * (exp(row[c] - top - lse) * t_sum - t[c]);
    }
}

void FN(tanh_mse_forward)(real *loss, const real *x, real target, int N, int C)
{
#pragma omp parallel for schedule(static) LOSS_PARALLEL(N, C)
    for (int n = 0; n < N; n++) {
        real sum = 0;
        for (int c = 0; c < C; c++) {
            real e = tanh(x[(size_t)n * C + c]) - target;
            sum += e * e;
        }
        loss[n] = sum;
    }
}

void FN(tanh_mse_backward)(real *dx, const real *x, real target, real scale, int N, int C)
{
#pragma omp parallel for schedule(static) LOSS_PARALLEL(N, C)
    for (int n = 0; n < N; n++)
        for (int c = 0; c < C; c++) {
            size_t i = (size_t)n * C + c;
            real t = tanh(x[i]);
            dx[i] += scale * 2 * (t - target) * (1 - t * t);
        }
}

void FN(kl_softmax_forward)(real *loss, const real *student, const real *teacher, real T, int N, int C)
{
    const real inv_t = 1 / T;
#pragma omp parallel for schedule(static) LOSS_PARALLEL(N, C)
    for (int n = 0; n < N; n++) {
        const real *s = student + (size_t)n * C, *t = teacher + (size_t)n * C;
        real s_top, s_lse, t_top, t_lse;
        FN(loss_lse)(s, inv_t, C, &s_top, &s_lse);
        FN(loss_lse)(t, inv_t, C, &t_top, &t_lse);
        real sum = 0;
        for (int c = 0; c < C; c++) {
            real log_p = t[c] * inv_t - t_top - t_lse, log_q = s[c] * inv_t - s_top - s_lse;
            sum += exp(log_p) * (log_p - log_q);
        }
        loss[n] = sum;
    }
}

void FN(kl_softmax_backward)(real *dstudent, const real *student, const real *teacher, real T, real scale, int N,
                             int C)
{
    const real inv_t = 1 / T;
#pragma omp parallel for schedule(static) LOSS_PARALLEL(N, C)
    for (int n = 0; n < N; n++) {
        const real *s = student + (size_t)n * C, *t = teacher + (size_t)n * C;
        real *d = dstudent + (size_t)n * C;
        real s_top, s_lse, t_top, t_lse;
        FN(loss_lse)(s, inv_t, C, &s_top, &s_lse);
        FN(loss_lse)(t, inv_t, C, &t_top, &t_lse);
        real p_sum = 0;
        for (int c = 0; c < C; c++)
            p_sum += exp(t[c] * inv_t - t_top - t_lse);
        for (int c = 0; c < C; c++) {
            real p = exp(t[c] * inv_t - t_top - t_lse), q = exp(s[c] * inv_t - s_top - s_lse);
            d[c] += scale * inv_t * (q * p_sum - p);
        }
    }
}
