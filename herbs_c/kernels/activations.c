#include "kernels/clones.h"
#include "kernels/kernels.h"
#include "kernels/precision.h"
#include "kernels/fastmath.h" /* after precision.h: it is a template over real */

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

/* GELU over a span, vectorised (fastmath.h) in each instruction set's build. */
HERBS_INLINE void FN(gelu_forward_span)(real *out, const real *inp, size_t n)
{
#pragma omp simd
    for (size_t i = 0; i < n; i++)
        out[i] = inp[i] * FN(normal_cdf)(inp[i]);
}
HERBS_ISA_VARIANTS(gelu_forward_span, (real *out, const real *inp, size_t n), (out, inp, n))

HERBS_INLINE void FN(gelu_backward_span)(real *dinp, const real *dout, const real *inp, size_t n)
{
#pragma omp simd
    for (size_t i = 0; i < n; i++)
        dinp[i] += dout[i] * (FN(normal_cdf)(inp[i]) + inp[i] * FN(normal_pdf)(inp[i]));
}
HERBS_ISA_VARIANTS(gelu_backward_span, (real *dinp, const real *dout, const real *inp, size_t n),
                   (dinp, dout, inp, n))

void FN(gelu_forward)(real *out, const real *inp, size_t n)
{
    void (*span)(real *, const real *, size_t) = FN(gelu_forward_span_isa)();
#pragma omp parallel for schedule(static) if (n > PARALLEL_MIN)
    for (size_t i0 = 0; i0 < n; i0 += PARALLEL_MIN)
        span(out + i0, inp + i0, n - i0 < PARALLEL_MIN ? n - i0 : PARALLEL_MIN);
}

void FN(gelu_backward)(real *dinp, const real *dout, const real *inp, size_t n)
{
    void (*span)(real *, const real *, const real *, size_t) = FN(gelu_backward_span_isa)();
#pragma omp parallel for schedule(static) if (n > PARALLEL_MIN)
    for (size_t i0 = 0; i0 < n; i0 += PARALLEL_MIN)
        span(dinp + i0, dout + i0, inp + i0, n - i0 < PARALLEL_MIN ? n - i0 : PARALLEL_MIN);
}

void FN(relu_mask)(real *d, const real *out, size_t n)
{
#pragma omp parallel for simd schedule(static) if (n > PARALLEL_MIN)
    for (size_t i = 0; i < n; i++)
        d[i] = out[i] > 0 ? d[i] : 0;
}

HERBS_INLINE void FN(gelu_forward_derivative_span)(real *out, real *deriv, const real *inp, size_t n)
{
#pragma omp simd
    for (size_t i = 0; i < n; i++) {
        const real x = inp[i], cdf = FN(normal_cdf)(x);
        out[i] = x * cdf;
        deriv[i] = cdf + x * FN(normal_pdf)(x);
    }
}
HERBS_ISA_VARIANTS(gelu_forward_derivative_span, (real *out, real *deriv, const real *inp, size_t n),
                   (out, deriv, inp, n))

void FN(gelu_forward_derivative)(real *out, real *deriv, const real *inp, size_t n)
{
    void (*span)(real *, real *, const real *, size_t) = FN(gelu_forward_derivative_span_isa)();
#pragma omp parallel for schedule(static) if (n > PARALLEL_MIN)
    for (size_t i0 = 0; i0 < n; i0 += PARALLEL_MIN)
        span(out + i0, deriv + i0, inp + i0, n - i0 < PARALLEL_MIN ? n - i0 : PARALLEL_MIN);
}

void FN(activation_backward)(real *dinp, const real *dout, const real *deriv, size_t n)
{
#pragma omp parallel for simd schedule(static) if (n > PARALLEL_MIN)
    for (size_t i = 0; i < n; i++)
        dinp[i] += dout[i] * deriv[i];
}
