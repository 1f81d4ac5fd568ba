/* The objective's losses over rows [N, C] of logits. Each kernel is a body over rows [n0, n1), built
   per instruction set and run over contiguous ranges of rows, one per thread (isa.h), with e^x and
   tanh from fastmath.h in vector form (libm's, one call per element, cost as much as the rest). */
#include "kernels/kernels.h"
#include "kernels/precision.h"
#include "kernels/fastmath.h" /* after precision.h: it is a template over real; includes isa.h */

#define LOSS_THREADS(N, C) herbs_threads_for((double)(N) * (C), 32768)

/* max and log Σ exp(x - max) of row[0..C) · inv_t */
HERBS_INLINE void FN(loss_lse)(const real *row, real inv_t, int C, real *top, real *lse)
{
    real sum;
    FN(softmax_row_sums)(row, inv_t, C, top, &sum);
    *lse = log(sum);
}

HERBS_INLINE void FN(ce_forward_rows)(real *loss, const real *logits, const int *labels, int rows_per_label, int C,
                                      size_t n0, size_t n1)
{
    for (size_t n = n0; n < n1; n++) {
        const real *row = logits + n * C;
        real top, lse;
        FN(loss_lse)(row, 1, C, &top, &lse);
        loss[n] = top + lse - row[labels[n / rows_per_label]];
    }
}
HERBS_ISA_VARIANTS(ce_forward_rows,
                   (real *loss, const real *logits, const int *labels, int rows_per_label, int C, size_t n0, size_t n1),
                   (loss, logits, labels, rows_per_label, C, n0, n1))

void FN(cross_entropy_forward)(real *loss, const real *logits, const int *labels, int rows_per_label, int N, int C)
{
    HERBS_ISA_PARALLEL(ce_forward_rows, N, LOSS_THREADS(N, C), loss, logits, labels, rows_per_label, C);
}

HERBS_INLINE void FN(ce_backward_rows)(real *dlogits, const real *logits, const int *labels, int rows_per_label,
                                       real scale, int C, size_t n0, size_t n1)
{
    for (size_t n = n0; n < n1; n++) {
        const real *row = logits + n * C;
        real *d = dlogits + n * C;
        real top, lse;
        FN(loss_lse)(row, 1, C, &top, &lse);
#pragma omp simd
        for (int c = 0; c < C; c++)
            d[c] += scale * FN(exp_fast)(row[c] - top - lse);
        d[labels[n / rows_per_label]] -= scale;
    }
}
HERBS_ISA_VARIANTS(ce_backward_rows,
                   (real *dlogits, const real *logits, const int *labels, int rows_per_label, real scale, int C,
                    size_t n0, size_t n1),
                   (dlogits, logits, labels, rows_per_label, scale, C, n0, n1))

void FN(cross_entropy_backward)(real *dlogits, const real *logits, const int *labels, int rows_per_label, real scale,
                                int N, int C)
{
    HERBS_ISA_PARALLEL(ce_backward_rows, N, LOSS_THREADS(N, C), dlogits, logits, labels, rows_per_label, scale, C);
}

HERBS_INLINE void FN(soft_ce_forward_rows)(real *loss, const real *logits, const real *targets, int rows_per_target,
                                           int C, size_t n0, size_t n1)
{
    for (size_t n = n0; n < n1; n++) {
        const real *row = logits + n * C, *t = targets + n / rows_per_target * C;
        real top, lse, sum = 0;
        FN(loss_lse)(row, 1, C, &top, &lse);
#pragma omp simd reduction(+ : sum)
        for (int c = 0; c < C; c++)
            sum += t[c] * (top + lse - row[c]);
        loss[n] = sum;
    }
}
HERBS_ISA_VARIANTS(soft_ce_forward_rows,
                   (real *loss, const real *logits, const real *targets, int rows_per_target, int C, size_t n0,
                    size_t n1),
                   (loss, logits, targets, rows_per_target, C, n0, n1))

void FN(soft_cross_entropy_forward)(real *loss, const real *logits, const real *targets, int rows_per_target, int N,
                                    int C)
{
    HERBS_ISA_PARALLEL(soft_ce_forward_rows, N, LOSS_THREADS(N, C), loss, logits, targets, rows_per_target, C);
}

HERBS_INLINE void FN(soft_ce_backward_rows)(real *dlogits, const real *logits, const real *targets, int rows_per_target,
                                            real scale, int C, size_t n0, size_t n1)
{
    for (size_t n = n0; n < n1; n++) {
        const real *row = logits + n * C, *t = targets + n / rows_per_target * C;
        real *d = dlogits + n * C;
        real top, lse, t_sum = 0;
        FN(loss_lse)(row, 1, C, &top, &lse);
#pragma omp simd reduction(+ : t_sum)
        for (int c = 0; c < C; c++)
            t_sum += t[c];
#pragma omp simd
        for (int c = 0; c < C; c++)
            d[c] += scale * (FN(exp_fast)(row[c] - top - lse) * t_sum - t[c]);
    }
}
HERBS_ISA_VARIANTS(soft_ce_backward_rows,
                   (real *dlogits, const real *logits, const real *targets, int rows_per_target, real scale, int C,
                    size_t n0, size_t n1),
                   (dlogits, logits, targets, rows_per_target, scale, C, n0, n1))

void FN(soft_cross_entropy_backward)(real *dlogits, const real *logits, const real *targets, int rows_per_target,
                                     real scale, int N, int C)
{
    HERBS_ISA_PARALLEL(soft_ce_backward_rows, N, LOSS_THREADS(N, C), dlogits, logits, targets, rows_per_target, scale,
                       C);
}

HERBS_INLINE void FN(tanh_mse_forward_rows)(real *loss, const real *x, real target, int C, size_t n0, size_t n1)
{
    for (size_t n = n0; n < n1; n++) {
        real sum = 0;
#pragma omp simd reduction(+ : sum)
        for (int c = 0; c < C; c++) {
            const real e = FN(tanh_fast)(x[n * C + c]) - target;
            sum += e * e;
        }
        loss[n] = sum;
    }
}
HERBS_ISA_VARIANTS(tanh_mse_forward_rows, (real *loss, const real *x, real target, int C, size_t n0, size_t n1),
                   (loss, x, target, C, n0, n1))

void FN(tanh_mse_forward)(real *loss, const real *x, real target, int N, int C)
{
    HERBS_ISA_PARALLEL(tanh_mse_forward_rows, N, LOSS_THREADS(N, C), loss, x, target, C);
}

HERBS_INLINE void FN(tanh_mse_backward_rows)(real *dx, const real *x, real target, real scale, int C, size_t n0,
                                             size_t n1)
{
#pragma omp simd
    for (size_t i = n0 * C; i < n1 * C; i++) {
        const real t = FN(tanh_fast)(x[i]);
        dx[i] += scale * 2 * (t - target) * (1 - t * t);
    }
}
HERBS_ISA_VARIANTS(tanh_mse_backward_rows, (real *dx, const real *x, real target, real scale, int C, size_t n0,
                                            size_t n1),
                   (dx, x, target, scale, C, n0, n1))

void FN(tanh_mse_backward)(real *dx, const real *x, real target, real scale, int N, int C)
{
    HERBS_ISA_PARALLEL(tanh_mse_backward_rows, N, LOSS_THREADS(N, C), dx, x, target, scale, C);
}

HERBS_INLINE void FN(kl_forward_rows)(real *loss, const real *student, const real *teacher, real inv_t, int C,
                                      size_t n0, size_t n1)
{
    for (size_t n = n0; n < n1; n++) {
        const real *s = student + n * C, *t = teacher + n * C;
        real s_top, s_lse, t_top, t_lse;
        FN(loss_lse)(s, inv_t, C, &s_top, &s_lse);
        FN(loss_lse)(t, inv_t, C, &t_top, &t_lse);
        real sum = 0;
#pragma omp simd reduction(+ : sum)
        for (int c = 0; c < C; c++) {
            const real log_p = t[c] * inv_t - t_top - t_lse, log_q = s[c] * inv_t - s_top - s_lse;
            sum += FN(exp_fast)(log_p) * (log_p - log_q);
        }
        loss[n] = sum;
    }
}
HERBS_ISA_VARIANTS(kl_forward_rows,
                   (real *loss, const real *student, const real *teacher, real inv_t, int C, size_t n0, size_t n1),
                   (loss, student, teacher, inv_t, C, n0, n1))

void FN(kl_softmax_forward)(real *loss, const real *student, const real *teacher, real T, int N, int C)
{
    HERBS_ISA_PARALLEL(kl_forward_rows, N, LOSS_THREADS(N, C), loss, student, teacher, 1 / T, C);
}

HERBS_INLINE void FN(kl_backward_rows)(real *dstudent, const real *student, const real *teacher, real inv_t,
                                       real scale, int C, size_t n0, size_t n1)
{
    for (size_t n = n0; n < n1; n++) {
        const real *s = student + n * C, *t = teacher + n * C;
        real *d = dstudent + n * C;
        real s_top, s_lse, t_top, t_lse;
        FN(loss_lse)(s, inv_t, C, &s_top, &s_lse);
        FN(loss_lse)(t, inv_t, C, &t_top, &t_lse);
        real p_sum = 0;
#pragma omp simd reduction(+ : p_sum)
        for (int c = 0; c < C; c++)
            p_sum += FN(exp_fast)(t[c] * inv_t - t_top - t_lse);
#pragma omp simd
        for (int c = 0; c < C; c++) {
            const real p = FN(exp_fast)(t[c] * inv_t - t_top - t_lse), q = FN(exp_fast)(s[c] * inv_t - s_top - s_lse);
            d[c] += scale * inv_t * (q * p_sum - p);
        }
    }
}
HERBS_ISA_VARIANTS(kl_backward_rows,
                   (real *dstudent, const real *student, const real *teacher, real inv_t, real scale, int C,
                    size_t n0, size_t n1),
                   (dstudent, student, teacher, inv_t, scale, C, n0, n1))

void FN(kl_softmax_backward)(real *dstudent, const real *student, const real *teacher, real T, real scale, int N,
                             int C)
{
    HERBS_ISA_PARALLEL(kl_backward_rows, N, LOSS_THREADS(N, C), dstudent, student, teacher, 1 / T, scale, C);
}
