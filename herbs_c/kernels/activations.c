/* Elementwise activations: each loop is a body over the elements [i0, i1), built per instruction
   set and run over contiguous ranges, one per thread (isa.h). */
#include "kernels/bf16.h"
#include "kernels/kernels.h"
#include "kernels/precision.h"
#include "kernels/fastmath.h" /* after precision.h: it is a template over real; includes isa.h */

#define ACT_GRAIN 16384 /* elements a thread should get at least: on fewer a second thread does not pay */
#define ACT_THREADS(n) herbs_threads_for((double)(n), ACT_GRAIN)

HERBS_INLINE void FN(relu_forward_span)(real *out, const real *inp, size_t i0, size_t i1)
{
#pragma omp simd
    for (size_t i = i0; i < i1; i++)
        out[i] = inp[i] < 0 ? 0 : inp[i]; /* max(0, x): NaN and -0 stay, as in PyTorch */
}
HERBS_ISA_VARIANTS(relu_forward_span, (real *out, const real *inp, size_t i0, size_t i1), (out, inp, i0, i1))

void FN(relu_forward)(real *out, const real *inp, size_t n)
{
    HERBS_ISA_PARALLEL(relu_forward_span, n, ACT_THREADS(n), out, inp);
}

HERBS_INLINE void FN(relu_backward_span)(real *dinp, const real *dout, const real *out, int accumulate, size_t i0,
                                         size_t i1)
{
    if (accumulate) {
#pragma omp simd
        for (size_t i = i0; i < i1; i++) {
            const real g = dout[i], o = out[i]; /* both loaded: the select vectorises as a blend */
            dinp[i] += o <= 0 ? 0 : g; /* a NaN output passes g, as torch's threshold_backward */
        }
    } else {
#pragma omp simd
        for (size_t i = i0; i < i1; i++) {
            const real g = dout[i], o = out[i];
            dinp[i] = o <= 0 ? 0 : g;
        }
    }
}
HERBS_ISA_VARIANTS(relu_backward_span,
                   (real *dinp, const real *dout, const real *out, int accumulate, size_t i0, size_t i1),
                   (dinp, dout, out, accumulate, i0, i1))

void FN(relu_backward)(real *dinp, const real *dout, const real *out, size_t n, int accumulate)
{
    HERBS_ISA_PARALLEL(relu_backward_span, n, ACT_THREADS(n), dinp, dout, out, accumulate);
}

#ifndef HERBS_F64
HERBS_INLINE void relu_forward_bf16_span(uint16_t *out, const float *inp, size_t i0, size_t i1)
{
#pragma omp simd
    for (size_t i = i0; i < i1; i++)
        out[i] = bf16_from_float(inp[i] < 0 ? 0 : inp[i]);
}
HERBS_ISA_VARIANTS(relu_forward_bf16_span, (uint16_t *out, const float *inp, size_t i0, size_t i1), (out, inp, i0, i1))

void relu_forward_bf16(uint16_t *out, const float *inp, size_t n)
{
    HERBS_ISA_PARALLEL(relu_forward_bf16_span, n, ACT_THREADS(n), out, inp);
}

HERBS_INLINE void relu_backward_bf16_span(float *dinp, const float *dout, const uint16_t *out, int accumulate,
                                          size_t i0, size_t i1)
{
    if (accumulate) {
#pragma omp simd
        for (size_t i = i0; i < i1; i++) {
            const float g = dout[i], o = bf16_to_float(out[i]);
            dinp[i] += o <= 0 ? 0 : g;
        }
    } else {
#pragma omp simd
        for (size_t i = i0; i < i1; i++) {
            const float g = dout[i], o = bf16_to_float(out[i]);
            dinp[i] = o <= 0 ? 0 : g;
        }
    }
}
HERBS_ISA_VARIANTS(relu_backward_bf16_span,
                   (float *dinp, const float *dout, const uint16_t *out, int accumulate, size_t i0, size_t i1),
                   (dinp, dout, out, accumulate, i0, i1))

void relu_backward_bf16(float *dinp, const float *dout, const uint16_t *out, size_t n, int accumulate)
{
    HERBS_ISA_PARALLEL(relu_backward_bf16_span, n, ACT_THREADS(n), dinp, dout, out, accumulate);
}

bf16_activation_span_fn bf16_activation_span(herbs_bf16_activation act)
{
    return act == HERBS_BF16_GELU ? gelu_bf16_span_isa() : relu_forward_bf16_span_isa();
}
#endif

/* GELU, vectorised through fastmath.h */
HERBS_INLINE void FN(gelu_forward_span)(real *out, const real *inp, size_t i0, size_t i1)
{
#pragma omp simd
    for (size_t i = i0; i < i1; i++)
        out[i] = inp[i] * FN(normal_cdf)(inp[i]);
}
HERBS_ISA_VARIANTS(gelu_forward_span, (real *out, const real *inp, size_t i0, size_t i1), (out, inp, i0, i1))

void FN(gelu_forward)(real *out, const real *inp, size_t n)
{
    HERBS_ISA_PARALLEL(gelu_forward_span, n, ACT_THREADS(n), out, inp);
}


HERBS_INLINE void FN(gelu_backward_span)(real *dinp, const real *dout, const real *inp, int accumulate, size_t i0,
                                         size_t i1)
{
    if (accumulate) {
#pragma omp simd
        for (size_t i = i0; i < i1; i++)
            dinp[i] += dout[i] * (FN(normal_cdf)(inp[i]) + inp[i] * FN(normal_pdf)(inp[i]));
    } else {
#pragma omp simd
        for (size_t i = i0; i < i1; i++)
            dinp[i] = dout[i] * (FN(normal_cdf)(inp[i]) + inp[i] * FN(normal_pdf)(inp[i]));
    }
}
HERBS_ISA_VARIANTS(gelu_backward_span,
                   (real *dinp, const real *dout, const real *inp, int accumulate, size_t i0, size_t i1),
                   (dinp, dout, inp, accumulate, i0, i1))

void FN(gelu_backward)(real *dinp, const real *dout, const real *inp, size_t n, int accumulate)
{
    HERBS_ISA_PARALLEL(gelu_backward_span, n, ACT_THREADS(n), dinp, dout, inp, accumulate);
}

HERBS_INLINE void FN(gelu_forward_derivative_span)(real *out, real *deriv, const real *inp, size_t i0, size_t i1)
{
#pragma omp simd
    for (size_t i = i0; i < i1; i++) {
        const real x = inp[i], cdf = FN(normal_cdf)(x);
        out[i] = x * cdf;
        deriv[i] = cdf + x * FN(normal_pdf)(x);
    }
}
HERBS_ISA_VARIANTS(gelu_forward_derivative_span, (real *out, real *deriv, const real *inp, size_t i0, size_t i1),
                   (out, deriv, inp, i0, i1))

void FN(gelu_forward_derivative)(real *out, real *deriv, const real *inp, size_t n)
{
    HERBS_ISA_PARALLEL(gelu_forward_derivative_span, n, ACT_THREADS(n), out, deriv, inp);
}


HERBS_INLINE void FN(activation_backward_span)(real *dinp, const real *dout, const real *deriv, int accumulate,
                                               size_t i0, size_t i1)
{
    if (accumulate) {
#pragma omp simd
        for (size_t i = i0; i < i1; i++)
            dinp[i] += dout[i] * deriv[i];
    } else {
#pragma omp simd
        for (size_t i = i0; i < i1; i++)
            dinp[i] = dout[i] * deriv[i];
    }
}
HERBS_ISA_VARIANTS(activation_backward_span,
                   (real *dinp, const real *dout, const real *deriv, int accumulate, size_t i0, size_t i1),
                   (dinp, dout, deriv, accumulate, i0, i1))

void FN(activation_backward)(real *dinp, const real *dout, const real *deriv, size_t n, int accumulate)
{
    HERBS_ISA_PARALLEL(activation_backward_span, n, ACT_THREADS(n), dinp, dout, deriv, accumulate);
}

/* SiLU, vectorised through fastmath.h's logistic */
HERBS_INLINE void FN(silu_forward_span)(real *out, const real *inp, size_t i0, size_t i1)
{
#pragma omp simd
    for (size_t i = i0; i < i1; i++)
        out[i] = inp[i] * FN(logistic)(inp[i]);
}
HERBS_ISA_VARIANTS(silu_forward_span, (real *out, const real *inp, size_t i0, size_t i1), (out, inp, i0, i1))

void FN(silu_forward)(real *out, const real *inp, size_t n)
{
    HERBS_ISA_PARALLEL(silu_forward_span, n, ACT_THREADS(n), out, inp);
}

HERBS_INLINE void FN(silu_backward_span)(real *dinp, const real *dout, const real *inp, int accumulate, size_t i0,
                                         size_t i1)
{
#pragma omp simd
    for (size_t i = i0; i < i1; i++) {
        const real x = inp[i], s = FN(logistic)(x), g = dout[i] * s * (1 + x * (1 - s));
        dinp[i] = accumulate ? dinp[i] + g : g;
    }
}
HERBS_ISA_VARIANTS(silu_backward_span,
                   (real *dinp, const real *dout, const real *inp, int accumulate, size_t i0, size_t i1),
                   (dinp, dout, inp, accumulate, i0, i1))

void FN(silu_backward)(real *dinp, const real *dout, const real *inp, size_t n, int accumulate)
{
    HERBS_ISA_PARALLEL(silu_backward_span, n, ACT_THREADS(n), dinp, dout, inp, accumulate);
}
