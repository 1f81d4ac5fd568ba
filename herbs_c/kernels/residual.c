#include "kernels/clones.h"
#include "kernels/kernels.h"
#include "kernels/precision.h"

#define RESIDUAL_PARALLEL(n) if ((n) > 32768)

HERBS_CLONES void FN(add_relu_forward)(real *out, const real *a, const real *b, size_t n)
{
#pragma omp parallel for simd schedule(static) RESIDUAL_PARALLEL(n)
    for (size_t i = 0; i < n; i++) {
        const real s = a[i] + b[i];
        out[i] = s > 0 ? s : 0;
    }
}

HERBS_CLONES void FN(add_relu_backward)(real *da, real *db, const real *dout, const real *out, size_t n)
{
    /* one loop per case, values loaded before the select: each vectorises as a blend */
    for (int pass = 0; pass < 2; pass++) {
        real *d = pass ? db : da;
        if (!d)
            continue;
#pragma omp parallel for simd schedule(static) RESIDUAL_PARALLEL(n)
        for (size_t i = 0; i < n; i++) {
            const real g = dout[i], o = out[i];
            d[i] += o > 0 ? g : 0;
        }
    }
}
