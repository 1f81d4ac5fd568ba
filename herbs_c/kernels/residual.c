/* The residual join: bodies over the elements [i0, i1), built per instruction set and run over
   contiguous ranges, one per thread (isa.h). */
#include "kernels/kernels.h"
#include "kernels/precision.h"
#include "kernels/isa.h"

#define RESIDUAL_GRAIN 16384 /* elements a thread should get at least */
#define RESIDUAL_THREADS(n) herbs_threads_for((double)(n), RESIDUAL_GRAIN)

HERBS_INLINE void FN(add_relu_forward_span)(real *out, const real *a, const real *b, size_t i0, size_t i1)
{
#pragma omp simd
    for (size_t i = i0; i < i1; i++) {
        const real s = a[i] + b[i];
        out[i] = s > 0 ? s : 0;
    }
}
HERBS_ISA_VARIANTS(add_relu_forward_span, (real *out, const real *a, const real *b, size_t i0, size_t i1),
                   (out, a, b, i0, i1))

void FN(add_relu_forward)(real *out, const real *a, const real *b, size_t n)
{
    HERBS_ISA_PARALLEL(add_relu_forward_span, n, RESIDUAL_THREADS(n), out, a, b);
}

/* d[i] += dout where out > 0, for each of da and db given: one loop per gradient, the values
   loaded before the select, so each vectorises as a blend */
HERBS_INLINE void FN(add_relu_backward_span)(real *da, real *db, const real *dout, const real *out, int accumulate,
                                             size_t i0, size_t i1)
{
    for (int pass = 0; pass < 2; pass++) {
        real *d = pass ? db : da;
        if (!d)
            continue;
        if (accumulate) {
#pragma omp simd
            for (size_t i = i0; i < i1; i++) {
                const real g = dout[i], o = out[i];
                d[i] += o > 0 ? g : 0;
            }
        } else {
#pragma omp simd
            for (size_t i = i0; i < i1; i++) {
                const real g = dout[i], o = out[i];
                d[i] = o > 0 ? g : 0;
            }
        }
    }
}
HERBS_ISA_VARIANTS(add_relu_backward_span,
                   (real *da, real *db, const real *dout, const real *out, int accumulate, size_t i0, size_t i1),
                   (da, db, dout, out, accumulate, i0, i1))

void FN(add_relu_backward)(real *da, real *db, const real *dout, const real *out, size_t n, int accumulate)
{
    HERBS_ISA_PARALLEL(add_relu_backward_span, n, RESIDUAL_THREADS(n), da, db, dout, out, accumulate);
}

HERBS_INLINE void FN(add_into_span)(real *dst, const real *src, size_t i0, size_t i1)
{
#pragma omp simd
    for (size_t i = i0; i < i1; i++)
        dst[i] += src[i];
}
HERBS_ISA_VARIANTS(add_into_span, (real *dst, const real *src, size_t i0, size_t i1), (dst, src, i0, i1))

void FN(add_into)(real *dst, const real *src, size_t n)
{
    HERBS_ISA_PARALLEL(add_into_span, n, RESIDUAL_THREADS(n), dst, src);
}
