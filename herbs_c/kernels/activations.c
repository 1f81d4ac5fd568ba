#include "kernels/clones.h"
#include "kernels/kernels.h"
#include "kernels/precision.h"

#define PARALLEL_MIN 32768 /* elements below which a second thread does not pay */

HERBS_CLONES void FN(relu_forward)(real *out, const real *inp, size_t n)
{
#pragma omp parallel for simd schedule(static) if (n > PARALLEL_MIN)
    for (size_t i = 0; i < n; i++)
        out[i] = inp[i] > 0 ? inp[i] : 0;
}

HERBS_CLONES void FN(relu_backward)(real *dinp, const real *dout, const real *out, size_t n)
{
#pragma omp parallel for simd schedule(static) if (n > PARALLEL_MIN)
    for (size_t i = 0; i < n; i++) {
        const real g = dout[i], o = out[i]; /* both loaded: the select vectorises as a blend */
        dinp[i] += o > 0 ? g : 0;
    }
}

void FN(gelu_forward)(real *out, const real *inp, size_t n)
{
    const real inv_sqrt2 = (real)0.70710678118654752440;
#pragma omp parallel for schedule(static) if (n > PARALLEL_MIN)
    for (size_t i = 0; i < n; i++) {
        real x = inp[i];
        out[i] = (real)0.5 * x * erfc(-x * inv_sqrt2); /* erfc: no cancellation for x << 0 */
    }
}

void FN(gelu_backward)(real *dinp, const real *dout, const real *inp, size_t n)
{
    const real inv_sqrt2 = (real)0.70710678118654752440, inv_sqrt2pi = (real)0.39894228040143267794;
#pragma omp parallel for schedule(static) if (n > PARALLEL_MIN)
    for (size_t i = 0; i < n; i++) {
        real x = inp[i];
        real cdf = (real)0.5 * erfc(-x * inv_sqrt2);
        real pdf = inv_sqrt2pi * exp((real)-0.5 * x * x);
        dinp[i] += dout[i] * (cdf + x * pdf);
    }
}

void FN(relu_mask)(real *d, const real *out, size_t n)
{
#pragma omp parallel for simd schedule(static) if (n > PARALLEL_MIN)
    for (size_t i = 0; i < n; i++)
        d[i] = out[i] > 0 ? d[i] : 0;
}
