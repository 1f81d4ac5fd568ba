#include "core/rng.h"
#include "kernels/kernels.h"
#include "kernels/precision.h"

/* 1/(1-p) for a kept element, 0 for a dropped one */
static real FN(dropout_factor)(size_t i, real p, uint64_t seed, uint64_t stream)
{
    if (p >= 1)
        return 0;
    return herbs_rng_uniform(seed, stream, i) >= p ? 1 / (1 - p) : 0;
}

void FN(dropout_forward)(real *out, const real *inp, size_t n, real p, uint64_t seed, uint64_t stream)
{
#pragma omp parallel for schedule(static) if (n > 65536)
    for (size_t i = 0; i < n; i++)
        out[i] = inp[i] * FN(dropout_factor)(i, p, seed, stream);
}

void FN(dropout_backward)(real *dinp, const real *dout, size_t n, real p, uint64_t seed, uint64_t stream)
{
#pragma omp parallel for schedule(static) if (n > 65536)
    for (size_t i = 0; i < n; i++)
        dinp[i] += dout[i] * FN(dropout_factor)(i, p, seed, stream);
}
