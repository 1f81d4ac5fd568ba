/* exp and the normal CDF in forms the compiler can vectorise (no libm calls, no branches), for the
   float kernels; the double build (finite-difference tests) uses libm. Template over `real`
   like the kernels, guarded once per precision. */
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

/* e^(a + b) for a + b in float range, where a may be large and b small: the Cody–Waite
   reduction subtracts n·ln2 from a before adding b, so when a is exact (as -x²/2 from a split x
   is) the result keeps float accuracy even for large arguments. 0 below e^-87.3. Cephes's
   degree-6 polynomial for e^r on |r| <= ln2/2 (about 1 ulp). */
HERBS_INLINE float exp_sum(float a, float b)
{
    const float s = a + b;
    const float shifter = 12582912.0f; /* 1.5·2^23: adding it rounds to an integer */
    const float k = s * 1.44269504088896341f + shifter;
    const float n = k - shifter;
    const int32_t ni = bits_from_float(k) - bits_from_float(shifter);
    const float r = ((a - n * 0.693359375f) + b) - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    const float e = (p * r * r + r + 1.0f) * float_from_bits((ni + 127) << 23);
    return s < -87.3f ? 0.0f : e;
}

HERBS_INLINE float exp_fast(float x) { return exp_sum(x, 0.0f); }

/* the logistic sigmoid 1/(1 + e^-x), through e^-|x| so that no exponent leaves float range */
HERBS_INLINE float logistic(float x)
{
    const float e = exp_fast(x < 0 ? x : -x), r = 1.0f / (1.0f + e);
    return x < 0 ? e * r : r;
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
