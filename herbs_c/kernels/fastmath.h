/* exp, tanh and the normal CDF in forms the compiler can vectorise (no libm calls, no branches),
   for the float kernels; the double build (finite-difference tests) uses libm. Template over
   `real` like the kernels, guarded once per precision. Last, softmax's reductions over a row. */
#include <stdint.h>
#include <string.h>

#include "kernels/isa.h"

#if defined(HERBS_F64) && !defined(HERBS_FASTMATH_F64)
#define HERBS_FASTMATH_F64

/* e^(a + b), and e^x */
HERBS_INLINE double exp_sum_f64(double a, double b) { return exp(a + b); }
HERBS_INLINE double exp_fast_f64(double x) { return exp(x); }

/* the logistic sigmoid 1/(1 + e^-x) */
HERBS_INLINE double logistic_f64(double x) { return 1 / (1 + exp(-x)); }

/* tanh(x) */
HERBS_INLINE double tanh_fast_f64(double x) { return tanh(x); }

/* Φ(x) of the standard normal, and its density φ(x) */
HERBS_INLINE double normal_cdf_f64(double x) { return 0.5 * erfc(-x * 0.70710678118654752440); }
HERBS_INLINE double normal_pdf_f64(double x) { return 0.39894228040143267794 * exp(-0.5 * x * x); }

#elif !defined(HERBS_F64) && !defined(HERBS_FASTMATH_F32)
#define HERBS_FASTMATH_F32

HERBS_INLINE float float_from_bits(int32_t i)
{
    float f;
    memcpy(&f, &i, sizeof f);
    return f;
}

HERBS_INLINE int32_t bits_from_float(float f)
{
    int32_t i;
    memcpy(&i, &f, sizeof i);
    return i;
}

/* exp's constants, shared with the vector forms written with intrinsics (window_attention.c) */
#define EXP_SHIFTER 12582912.0f /* 1.5·2^23: adding it rounds to an integer */
#define EXP_LOG2E 1.44269504088896341f
#define EXP_LN2_HI 0.693359375f /* ln2 = hi + lo, hi exact in few bits */
#define EXP_LN2_LO -2.12194440e-4f
#define EXP_UNDERFLOW -87.3f /* below: 0 */
#define EXP_P0 1.9875691500e-4f /* Cephes's degree-6 polynomial, highest term first */
#define EXP_P1 1.3981999507e-3f
#define EXP_P2 8.3334519073e-3f
#define EXP_P3 4.1665795894e-2f
#define EXP_P4 1.6666665459e-1f
#define EXP_P5 5.0000001201e-1f

/* e^(a + b) for a + b in float range, where a may be large and b small: the Cody–Waite
   reduction subtracts n·ln2 from a before adding b, so when a is exact (as -x²/2 from a split x
   is) the result keeps float accuracy even for large arguments. 0 below e^-87.3. Cephes's
   degree-6 polynomial for e^r on |r| <= ln2/2 (about 1 ulp). */
HERBS_INLINE float exp_sum(float a, float b)
{
    const float s = a + b;
    const float k = s * EXP_LOG2E + EXP_SHIFTER;
    const float n = k - EXP_SHIFTER;
    const int32_t ni = bits_from_float(k) - bits_from_float(EXP_SHIFTER);
    const float r = ((a - n * EXP_LN2_HI) + b) - n * EXP_LN2_LO;
    float p = EXP_P0;
    p = p * r + EXP_P1;
    p = p * r + EXP_P2;
    p = p * r + EXP_P3;
    p = p * r + EXP_P4;
    p = p * r + EXP_P5;
    const float e = (p * r * r + r + 1.0f) * float_from_bits((ni + 127) << 23);
    return s < EXP_UNDERFLOW ? 0.0f : e;
}

HERBS_INLINE float exp_fast(float x) { return exp_sum(x, 0.0f); }

/* the logistic sigmoid 1/(1 + e^-x), through e^-|x| so that no exponent leaves float range */
HERBS_INLINE float logistic(float x)
{
    const float e = exp_fast(x < 0 ? x : -x), r = 1.0f / (1.0f + e);
    return x < 0 ? e * r : r;
}

/* tanh(x) = sign(x)·(1 - e)/(1 + e), e = e^-2|x|: within 1.2e-7 of the truth absolutely (not
   relatively near 0, where 1 - e cancels), for losses of tanh's output; NaN stays NaN */
HERBS_INLINE float tanh_fast(float x)
{
    const float e = exp_fast(x < 0 ? 2.0f * x : -2.0f * x), t = (1.0f - e) / (1.0f + e);
    return x < 0 ? -t : x > 0 ? t : x;
}

/* Φ(-|x|) = erfc(|x|/√2)/2 by the Chebyshev-fitted erfc of Numerical Recipes (fractional error
   < 1.2e-7 everywhere), with -x²/2 formed exactly from x split into 12 high bits and the rest. */
HERBS_INLINE float normal_tail(float ax, float *half_x2_rest)
{
    const float t = 1.0f / (1.0f + 0.35355339059327376f * ax); /* 1/(1 + |x|/(2√2)) */
    float p = 0.17087277f;
    p = p * t - 0.82215223f;
    p = p * t + 1.48851587f;
    p = p * t - 1.13520398f;
    p = p * t + 0.27886807f;
    p = p * t - 0.18628806f;
    p = p * t + 0.09678418f;
    p = p * t + 0.37409196f;
    p = p * t + 1.00002368f;
    p = p * t - 1.26551223f;
    const float hi = float_from_bits(bits_from_float(ax) & (int32_t)0xFFFFF000);
    *half_x2_rest = 0.5f * (hi - ax) * (hi + ax); /* -x²/2 = -hi²/2 + this */
    return 0.5f * t * exp_sum(-0.5f * hi * hi, *half_x2_rest + p);
}

HERBS_INLINE float normal_cdf(float x)
{
    float rest;
    const float q = normal_tail(x < 0 ? -x : x, &rest);
    return x < 0 ? q : 1.0f - q;
}

HERBS_INLINE float normal_pdf(float x)
{
    const float ax = x < 0 ? -x : x, hi = float_from_bits(bits_from_float(ax) & (int32_t)0xFFFFF000);
    return 0.39894228040143267794f * exp_sum(-0.5f * hi * hi, 0.5f * (hi - ax) * (hi + ax));
}

#endif

/* --- over a row, in either precision ------------------------------------------------------------- */
#if (defined(HERBS_F64) && !defined(HERBS_FASTMATH_ROW_F64)) || \
    (!defined(HERBS_F64) && !defined(HERBS_FASTMATH_ROW_F32))
#ifdef HERBS_F64
#define HERBS_FASTMATH_ROW_F64
#else
#define HERBS_FASTMATH_ROW_F32
#endif

/* softmax's two reductions over row[0..C) · scale: *top its largest value, *sum Σ e^(value - top),
   both as vector reductions (softmax(row·scale)[c] = e^(row[c]·scale - top) / sum) */
HERBS_INLINE void FN(softmax_row_sums)(const real *row, real scale, int C, real *top, real *sum)
{
    real m = row[0] * scale;
#pragma omp simd reduction(max : m)
    for (int c = 1; c < C; c++)
        m = row[c] * scale > m ? row[c] * scale : m;
    real s = 0;
#pragma omp simd reduction(+ : s)
    for (int c = 0; c < C; c++)
        s += FN(exp_fast)(row[c] * scale - m);
    *top = m;
    *sum = s;
}

#endif
