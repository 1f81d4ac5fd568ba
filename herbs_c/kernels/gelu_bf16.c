/* GELU with its output stored in bf16: for an output that only feeds bf16 products (the MLP hidden
   layer of a transformer at bf16), where the rounding to 8 bits of precision dwarfs any error of
   the normal CDF below ~1e-6. Φ is then taken from a table of polynomials instead of erfc and exp:
   a third of the instructions. The fp32 GELU (activations.c) stays exact to float rounding. */
#include <math.h>

#include "kernels/bf16.h"
#include "kernels/kernels.h"
#include "kernels/precision.h"
#include "kernels/isa.h"

#define GELU_GRAIN 16384 /* elements a thread should get at least */

/* Φ(x) on [-GELU_BOUND, GELU_BOUND] in GELU_PIECES equal pieces: on piece i, u = x·S + 16 in
   [i, i + 1], Φ(x) = Σ_k normal_cdf_pieces[k][i] · (u - i)^k, the degree-5 Chebyshev interpolant
   of Φ rounded to float (tests/test_kernel_gelu.py's normal_cdf_pieces() makes this table).
   Evaluated in float, |Φ - the table's| <= 1.8e-7 everywhere; beyond the bound Φ is taken as 0
   and 1 (Φ(-6) = 9.9e-10). */
#define GELU_PIECES 32
#define GELU_DEGREE 5
#define GELU_BOUND 6.0f
#define GELU_SCALE (GELU_PIECES / (2 * GELU_BOUND))
#define GELU_CENTRE (GELU_PIECES / 2.0f)
static const float normal_cdf_pieces[GELU_DEGREE + 1][GELU_PIECES] __attribute__((aligned(64))) = {
    {
        9.86439819e-10f, 9.27456867e-09f, 7.60457226e-08f, 5.4402733e-07f, 3.39762664e-06f, 1.85366262e-05f,
        8.84171022e-05f, 0.000369078334f, 0.0013498984f, 0.00433245022f, 0.0122244768f, 0.0303963665f,
        0.0668072104f, 0.130294517f, 0.22662735f, 0.353830248f, 0.5f, 0.646169782f,
        0.77337265f, 0.869705498f, 0.93319279f, 0.969603658f, 0.987775505f, 0.995667577f,
        0.998650074f, 0.999630928f, 0.999911606f, 0.999981463f, 0.999996603f, 0.999999464f,
        0.99999994f, 1.0f,
    },
    {
        2.28914776e-09f, 2.02098533e-08f, 1.55101262e-07f, 1.03458274e-06f, 5.99739815e-06f, 3.02113986e-05f,
        0.00013223954f, 0.000502937881f, 0.00166194153f, 0.004771512f, 0.0119022494f, 0.0257947333f,
        0.0485691093f, 0.0794539601f, 0.112926848f, 0.139445826f, 0.149603233f, 0.13944535f,
        0.112926297f, 0.0794537067f, 0.0485692099f, 0.0257949829f, 0.0119024375f, 0.00477157673f,
        0.00166192651f, 0.000502902665f, 0.000132213696f, 3.01986256e-05f, 5.99258192e-06f, 1.03312891e-06f,
        1.54741343e-07f, 2.01357242e-08f,
    },
    {
        2.44067122e-09f, 2.05599662e-08f, 1.49137392e-07f, 9.31946772e-07f, 5.01703653e-06f, 2.32589937e-05f,
        9.27825095e-05f, 0.000318041799f, 0.00093486195f, 0.00234915991f, 0.00502272742f, 0.00906992983f,
        0.0136599792f, 0.0167572983f, 0.0158766732f, 0.00980282761f, 1.42536669e-06f, -0.0098012276f,
        -0.0158774741f, -0.0167593099f, -0.0136613455f, -0.00907000154f, -0.00502210204f, -0.00234860322f,
        -0.00093464565f, -0.000318054226f, -9.2855058e-05f, -2.33120409e-05f, -5.04169975e-06f, -9.40513928e-07f,
        -1.51491008e-07f, -2.10859135e-08f,
    },
    {
        2.37387154e-09f, 1.73270465e-08f, 1.09899517e-07f, 6.04332001e-07f, 2.87269086e-06f, 1.17605559e-05f,
        4.12712579e-05f, 0.000123385587f, 0.000311570853f, 0.000656052958f, 0.00112730055f, 0.00151472073f,
        0.00142306462f, 0.000505001226f, -0.00114248926f, -0.00280010584f, -0.00351211033f, -0.00282370113f,
        -0.00117013219f, 0.000492449733f, 0.00142831693f, 0.00152728939f, 0.00113672554f, 0.000659230922f,
        0.000310783216f, 0.000121618446f, 3.99840719e-05f, 1.11283925e-05f, 2.63562697e-06f, 5.33146874e-07f,
        9.23659655e-08f, 1.37338692e-08f,
    },
    {
        8.18100657e-11f, 1.95546157e-09f, 1.92153191e-08f, 1.32731003e-07f, 7.10615495e-07f, 3.04543914e-06f,
        1.05553754e-05f, 2.95247337e-05f, 6.56843404e-05f, 0.000112055241f, 0.000132691886f, 6.68284993e-05f,
        -0.00011962463f, -0.000359847181f, -0.000483382697f, -0.000345965702f, 1.00365814e-05f, 0.000357223267f,
        0.000477719528f, 0.000345682813f, 0.000110030422f, -6.73025497e-05f, -0.000128281055f, -0.000108145679f,
        -6.41740844e-05f, -2.96182207e-05f, -1.10663195e-05f, -3.41723512e-06f, -8.82916368e-07f, -1.92408365e-07f,
        -3.55639393e-08f, -5.59816726e-09f,
    },
    {
        1.1032748e-09f, 6.72171607e-09f, 3.46386031e-08f, 1.5003711e-07f, 5.41323971e-07f, 1.60417608e-06f,
        3.81256905e-06f, 6.92986941e-06f, 8.49226763e-06f, 3.24516395e-06f, -1.30778662e-05f, -3.53717842e-05f,
        -4.52116401e-05f, -2.35744683e-05f, 2.52318896e-05f, 6.71858215e-05f, 6.71858215e-05f, 2.52318896e-05f,
        -2.35744683e-05f, -4.52116401e-05f, -3.53717842e-05f, -1.30778662e-05f, 3.24516395e-06f, 8.49226763e-06f,
        6.92986941e-06f, 3.81256905e-06f, 1.60417596e-06f, 5.41323914e-07f, 1.50037039e-07f, 3.46386066e-08f,
        6.72167255e-09f, 1.10326059e-09f,
    },
};


/* The piece of x, and *t, x's place in it in [0, 1]. The clamp sends a NaN to the first piece. */
HERBS_INLINE int gelu_piece(float x, float *t)
{
    const float u = fmaf(fminf(fmaxf(x, -GELU_BOUND), GELU_BOUND), GELU_SCALE, GELU_CENTRE);
    const int i = (int)u < GELU_PIECES - 1 ? (int)u : GELU_PIECES - 1;
    *t = u - (float)i;
    return i;
}

/* x·Φ(x) from the table; x·Φ keeps a NaN NaN. */
HERBS_INLINE float gelu_pieces(float x)
{
    float t;
    const int i = gelu_piece(x, &t);
    float p = normal_cdf_pieces[GELU_DEGREE][i];
    for (int k = GELU_DEGREE - 1; k >= 0; k--)
        p = fmaf(p, t, normal_cdf_pieces[k][i]);
    return x * (x >= -GELU_BOUND ? p : 0.0f);
}

/* GELU'(x) = Φ(x) + x·Φ'(x) from the table: Φ' is the derivative of the piece's polynomial
   (Horner's rule on it alongside), zero beyond the bound. Within 1e-6 of the truth everywhere
   (tests/test_kernel_gelu.py): for a gradient that is rounded to bf16 next. A NaN stays NaN. */
HERBS_INLINE float gelu_derivative_pieces(float x)
{
    float t;
    const int i = gelu_piece(x, &t);
    float p = normal_cdf_pieces[GELU_DEGREE][i], dp = 0.0f;
    for (int k = GELU_DEGREE - 1; k >= 0; k--) {
        dp = fmaf(dp, t, p);
        p = fmaf(p, t, normal_cdf_pieces[k][i]);
    }
    const float slope = x >= -GELU_BOUND && x <= GELU_BOUND ? dp * GELU_SCALE : 0.0f;
    return fmaf(x, slope, x >= -GELU_BOUND ? p : 0.0f);
}

/* out[i0:i1] = bf16(x·Φ(x)), in plain C */
HERBS_INLINE void gelu_bf16_body(uint16_t *out, const float *inp, size_t i0, size_t i1)
{
    for (size_t i = i0; i < i1; i++)
        out[i] = bf16_from_float(gelu_pieces(inp[i]));
}

static void gelu_bf16_span_portable(uint16_t *out, const float *inp, size_t i0, size_t i1)
{
    gelu_bf16_body(out, inp, i0, i1);
}

HERBS_TARGET_AVX2 static void gelu_bf16_span_avx2(uint16_t *out, const float *inp, size_t i0, size_t i1)
{
    gelu_bf16_body(out, inp, i0, i1);
}

/* g[0:n] = dout·GELU'(x) with gelu_derivative_pieces, in plain C */
HERBS_INLINE void gelu_backward_table_body(float *g, const float *dout, const float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        g[i] = dout[i] * gelu_derivative_pieces(x[i]);
}

static void gelu_backward_table_portable(float *g, const float *dout, const float *x, size_t n)
{
    gelu_backward_table_body(g, dout, x, n);
}

HERBS_TARGET_AVX2 static void gelu_backward_table_avx2(float *g, const float *dout, const float *x, size_t n)
{
    gelu_backward_table_body(g, dout, x, n);
}

#if defined(__x86_64__)
#include <immintrin.h>

/* The table in registers: coefficient k of the 32 pieces in lo[k] (pieces 0..15) and hi[k]. */
typedef struct {
    __m512 lo[GELU_DEGREE + 1], hi[GELU_DEGREE + 1];
} gelu_table_registers;

HERBS_TARGET_AVX512 static inline gelu_table_registers gelu_table_load(void)
{
    gelu_table_registers r;
    for (int k = 0; k <= GELU_DEGREE; k++) {
        r.lo[k] = _mm512_load_ps(normal_cdf_pieces[k]);
        r.hi[k] = _mm512_load_ps(normal_cdf_pieces[k] + 16);
    }
    return r;
}

/* gelu_piece for 16 lanes */
HERBS_TARGET_AVX512 static inline __m512i gelu_piece16(__m512 x, __m512 *t)
{
    const __m512 clamped = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-GELU_BOUND)), _mm512_set1_ps(GELU_BOUND));
    const __m512 u = _mm512_fmadd_ps(clamped, _mm512_set1_ps(GELU_SCALE), _mm512_set1_ps(GELU_CENTRE));
    const __m512i piece = _mm512_min_epi32(_mm512_cvttps_epi32(u), _mm512_set1_epi32(GELU_PIECES - 1));
    *t = _mm512_sub_ps(u, _mm512_cvtepi32_ps(piece));
    return piece;
}

/* Coefficient k of each lane's piece, picked by vpermt2ps from the two registers */
HERBS_TARGET_AVX512 static inline __m512 gelu_coefficient(const gelu_table_registers *r, int k, __m512i piece)
{
    return _mm512_permutex2var_ps(r->lo[k], piece, r->hi[k]);
}

/* gelu_bf16_body for 16 lanes: the same operations in the same order, so the same bits. */
HERBS_TARGET_AVX512 static void gelu_bf16_span_avx512(uint16_t *out, const float *inp, size_t i0, size_t i1)
{
    const gelu_table_registers table = gelu_table_load();
    const __m512 low = _mm512_set1_ps(-GELU_BOUND);
    const __m512i round = _mm512_set1_epi32(0x7fff), one = _mm512_set1_epi32(1), quiet = _mm512_set1_epi32(0x40);
    for (size_t i = i0; i < i1; i += 16) {
        const __mmask16 m = i1 - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (i1 - i)) - 1);
        const __m512 x = _mm512_maskz_loadu_ps(m, inp + i);
        __m512 t;
        const __m512i piece = gelu_piece16(x, &t);
        __m512 p = gelu_coefficient(&table, GELU_DEGREE, piece);
        for (int k = GELU_DEGREE - 1; k >= 0; k--)
            p = _mm512_fmadd_ps(p, t, gelu_coefficient(&table, k, piece));
        const __m512 y = _mm512_mul_ps(x, _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(x, low, _CMP_GE_OQ), p));
        /* bf16_from_float: nearest even, a NaN quieted */
        const __m512i bits = _mm512_castps_si512(y), high = _mm512_srli_epi32(bits, 16);
        __m512i h = _mm512_srli_epi32(_mm512_add_epi32(bits, _mm512_add_epi32(round, _mm512_and_si512(high, one))), 16);
        h = _mm512_mask_or_epi32(h, _mm512_cmp_ps_mask(y, y, _CMP_UNORD_Q), high, quiet);
        _mm256_mask_storeu_epi16(out + i, m, _mm512_cvtepi32_epi16(h));
    }
}

/* gelu_backward_table_body for 16 lanes: the same operations in the same order, so the same bits */
HERBS_TARGET_AVX512 static void gelu_backward_table_avx512(float *g, const float *dout, const float *x, size_t n)
{
    const gelu_table_registers table = gelu_table_load();
    const __m512 bound = _mm512_set1_ps(GELU_BOUND), low = _mm512_set1_ps(-GELU_BOUND);
    const __m512 scale = _mm512_set1_ps(GELU_SCALE);
    for (size_t i = 0; i < n; i += 16) {
        const __mmask16 m = n - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - i)) - 1);
        const __m512 v = _mm512_maskz_loadu_ps(m, x + i);
        __m512 t;
        const __m512i piece = gelu_piece16(v, &t);
        __m512 p = gelu_coefficient(&table, GELU_DEGREE, piece), dp = _mm512_setzero_ps();
        for (int k = GELU_DEGREE - 1; k >= 0; k--) {
            dp = _mm512_fmadd_ps(dp, t, p);
            p = _mm512_fmadd_ps(p, t, gelu_coefficient(&table, k, piece));
        }
        const __mmask16 above_low = _mm512_cmp_ps_mask(v, low, _CMP_GE_OQ);
        const __mmask16 inside = _mm512_mask_cmp_ps_mask(above_low, v, bound, _CMP_LE_OQ);
        const __m512 slope = _mm512_maskz_mov_ps(inside, _mm512_mul_ps(dp, scale));
        const __m512 derivative = _mm512_fmadd_ps(v, slope, _mm512_maskz_mov_ps(above_low, p));
        _mm512_mask_storeu_ps(g + i, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, dout + i), derivative));
    }
}
#endif

gelu_backward_table_fn gelu_backward_table_isa(void)
{
    const herbs_isa isa = herbs_isa_current();
#if defined(__x86_64__)
    if (isa == HERBS_ISA_AVX512)
        return gelu_backward_table_avx512;
#endif
    return isa == HERBS_ISA_AVX2 ? gelu_backward_table_avx2 : gelu_backward_table_portable;
}

void gelu_backward_table(float *g, const float *dout, const float *x, size_t n)
{
    gelu_backward_table_isa()(g, dout, x, n);
}

bf16_activation_span_fn gelu_bf16_span_isa(void)
{
    const herbs_isa isa = herbs_isa_current();
#if defined(__x86_64__)
    if (isa == HERBS_ISA_AVX512)
        return gelu_bf16_span_avx512;
#endif
    return isa == HERBS_ISA_AVX2 ? gelu_bf16_span_avx2 : gelu_bf16_span_portable;
}

void gelu_forward_bf16(uint16_t *out, const float *inp, size_t n)
{
    HERBS_ISA_PARALLEL(gelu_bf16_span, n, herbs_threads_for((double)n, GELU_GRAIN), out, inp);
}
