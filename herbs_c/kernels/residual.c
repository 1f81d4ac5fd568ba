/* Residual joins. The add+ReLU and the plain add are bodies over the elements [i0, i1), built per
   instruction set and run over contiguous ranges, one per thread (isa.h); the per-sample scaled
   add runs one parallel region for all samples (each thread takes the same share of every
   sample), so a batch costs one fork and one join. */
#include "kernels/kernels.h"
#include "kernels/precision.h"
#include "kernels/isa.h"

#define RESIDUAL_GRAIN 16384 /* elements a thread should get at least */
#define RESIDUAL_THREADS(n) herbs_threads_for((double)(n), RESIDUAL_GRAIN)

void FN(residual_add_forward)(real *out, const real *res, const real *branch, const real *scale, int B, long M)
{
    const int team = RESIDUAL_THREADS((double)B * M);
#pragma omp parallel num_threads(team) if (team > 1)
    for (int b = 0; b < B; b++) {
        const real s = scale ? scale[b] : 1;
        const size_t o = (size_t)b * M;
#pragma omp for simd schedule(static) nowait
        for (long i = 0; i < M; i++)
            out[o + i] = res[o + i] + s * branch[o + i];
    }
}

void FN(residual_add_backward)(real *dbranch, const real *dout, const real *scale, int B, long M, int accumulate)
{
    const int team = RESIDUAL_THREADS((double)B * M);
#pragma omp parallel num_threads(team) if (team > 1)
    for (int b = 0; b < B; b++) {
        const real s = scale ? scale[b] : 1;
        real *d = dbranch + (size_t)b * M;
        const real *g = dout + (size_t)b * M;
        if (accumulate && s == 0) /* a dropped sample adds nothing */
            continue;
        if (accumulate) {
#pragma omp for simd schedule(static) nowait
            for (long i = 0; i < M; i++)
                d[i] += s * g[i];
        } else if (s == 0) { /* written as zeros, whatever dout holds */
#pragma omp for simd schedule(static) nowait
            for (long i = 0; i < M; i++)
                d[i] = 0;
        } else {
#pragma omp for simd schedule(static) nowait
            for (long i = 0; i < M; i++)
                d[i] = s * g[i];
        }
    }
}

HERBS_INLINE void FN(add_relu_forward_span)(real *out, const real *a, const real *b, size_t i0, size_t i1)
{
#pragma omp simd
    for (size_t i = i0; i < i1; i++) {
        const real s = a[i] + b[i];
        out[i] = s < 0 ? 0 : s; /* relu_forward's: NaN stays */
    }
}
HERBS_ISA_VARIANTS(add_relu_forward_span, (real *out, const real *a, const real *b, size_t i0, size_t i1),
                   (out, a, b, i0, i1))

void FN(add_relu_forward)(real *out, const real *a, const real *b, size_t n)
{
    HERBS_ISA_PARALLEL(add_relu_forward_span, n, RESIDUAL_THREADS(n), out, a, b);
}

void FN(add_relu_backward)(real *da, real *db, const real *dout, const real *out, size_t n, int accumulate)
{
    /* both inputs of the add get the ReLU's gradient */
    if (da)
        FN(relu_backward)(da, dout, out, n, accumulate);
    if (db)
        FN(relu_backward)(db, dout, out, n, accumulate);
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

FN(add_into_span_fn) FN(add_into_span_current)(void) { return FN(add_into_span_isa)(); }
