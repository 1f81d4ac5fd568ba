#include "kernels/kernels.h"
#include "kernels/precision.h"

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
