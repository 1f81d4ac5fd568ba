#include "kernels/kernels.h"
#include "kernels/precision.h"
#include "kernels/isa.h"

#define OPTIM_PARALLEL_MIN 65536

void FN(sgd_update)(real *params, const real *grads, real *momentum_buf, size_t n, real lr, real momentum,
                    real weight_decay, int nesterov)
{
#pragma omp parallel for simd schedule(static) if (n > OPTIM_PARALLEL_MIN)
    for (size_t i = 0; i < n; i++) {
        real g = grads[i] + weight_decay * params[i];
        real buf = momentum * momentum_buf[i] + g;
        momentum_buf[i] = buf;
        params[i] -= lr * (nesterov ? g + momentum * buf : buf);
    }
}

void FN(adamw_update)(real *params, const real *grads, real *exp_avg, real *exp_avg_sq, size_t n, real lr,
                      real beta1, real beta2, real eps, real weight_decay, int step)
{
    const real step_size = (real)(lr / (1 - pow((double)beta1, step)));
    const real sqrt_bc2 = (real)sqrt(1 - pow((double)beta2, step));
    const real decay = 1 - lr * weight_decay;
#pragma omp parallel for simd schedule(static) if (n > OPTIM_PARALLEL_MIN)
    for (size_t i = 0; i < n; i++) {
        real g = grads[i];
        real m = exp_avg[i] + (1 - beta1) * (g - exp_avg[i]);
        real v = beta2 * exp_avg_sq[i] + (1 - beta2) * g * g;
        exp_avg[i] = m;
        exp_avg_sq[i] = v;
        params[i] = params[i] * decay - step_size * m / (sqrt(v) / sqrt_bc2 + eps);
    }
}

/* counts[0] += the non-finite values of x[i0, i1), over blocks short enough for a 32-bit count in
   the vector lanes */
HERBS_INLINE void FN(count_nonfinite_span)(size_t *counts, const real *x, size_t i0, size_t i1)
{
    for (size_t b0 = i0; b0 < i1; b0 += 1u << 30) {
        const size_t b1 = i1 - b0 > (1u << 30) ? b0 + (1u << 30) : i1;
        unsigned count = 0;
#pragma omp simd reduction(+ : count)
        for (size_t i = b0; i < b1; i++)
            count += !isfinite(x[i]);
        counts[0] += count;
    }
}
HERBS_ISA_VARIANTS(count_nonfinite_span, (size_t *counts, const real *x, size_t i0, size_t i1), (counts, x, i0, i1))

size_t FN(count_nonfinite)(const real *x, size_t n)
{
    void (*body)(size_t *, const real *, size_t, size_t) = FN(count_nonfinite_span_isa)();
    const int team = herbs_threads_for((double)n, OPTIM_PARALLEL_MIN);
    size_t count = 0;
#pragma omp parallel num_threads(team) if (team > 1) reduction(+ : count)
    {
        const size_t t = omp_get_thread_num(), nt = omp_get_num_threads();
        body(&count, x, n * t / nt, n * (t + 1) / nt);
    }
    return count;
}

void FN(ema_update)(real *ema, const real *value, size_t n, real weight)
{
    const real rest = 1 - weight;
    if (weight < (real)0.5) {
#pragma omp parallel for simd schedule(static) if (n > OPTIM_PARALLEL_MIN)
        for (size_t i = 0; i < n; i++)
            ema[i] += weight * (value[i] - ema[i]);
    } else {
#pragma omp parallel for simd schedule(static) if (n > OPTIM_PARALLEL_MIN)
        for (size_t i = 0; i < n; i++)
            ema[i] = value[i] - (value[i] - ema[i]) * rest;
    }
}

/* sums[0] += Σ x[i]² over [i0, i1), in double */
HERBS_INLINE void FN(sum_squares_span)(double *sums, const real *x, size_t i0, size_t i1)
{
    double s = 0;
#pragma omp simd reduction(+ : s)
    for (size_t i = i0; i < i1; i++)
        s += (double)x[i] * (double)x[i];
    sums[0] += s;
}
HERBS_ISA_VARIANTS(sum_squares_span, (double *sums, const real *x, size_t i0, size_t i1), (sums, x, i0, i1))

#define SUM_SQUARES_MAX_TEAM 64

double FN(sum_squares)(const real *x, size_t n)
{
    void (*body)(double *, const real *, size_t, size_t) = FN(sum_squares_span_isa)();
    int team = herbs_threads_for((double)n, OPTIM_PARALLEL_MIN);
    team = team < SUM_SQUARES_MAX_TEAM ? team : SUM_SQUARES_MAX_TEAM;
    double partial[SUM_SQUARES_MAX_TEAM] = {0};
    int used = 1;
#pragma omp parallel num_threads(team) if (team > 1)
    {
        const size_t t = omp_get_thread_num(), nt = omp_get_num_threads();
        body(&partial[t], x, n * t / nt, n * (t + 1) / nt);
        if (t == 0)
            used = (int)nt;
    }
    double sum = 0;
    for (int t = 0; t < used; t++) /* in thread order: the same sum for the same team */
        sum += partial[t];
    return sum;
}
