/* Squeeze-and-excitation: the per-channel sums over positions run over (image, channel block)
   items, the per-element passes over position rows, each built per instruction set and spread
   over threads (isa.h); the two small products are linear_forward/backward's, in fp32 (a row per
   image). */
#include "kernels/kernels.h"
#include "kernels/precision.h"
#include "kernels/fastmath.h" /* after precision.h: a template over real; includes isa.h */

#define SE_LANES 16
#define SE_THREADS(work) herbs_threads_for((double)(work), 16384)

/* items (image, channel block) [i0, i1): sum[b, c] = Σ_p a[b,p,c]·(b_ ? b_[b,p,c] : 1) / P */
HERBS_INLINE void FN(se_channel_means)(real *sum, const real *a, const real *b_, int P, int C, int i0, int i1)
{
    const int blocks = (C + SE_LANES - 1) / SE_LANES;
    for (int item = i0; item < i1; item++) {
        const int b = item / blocks, c0 = item % blocks * SE_LANES;
        const int lanes = C - c0 < SE_LANES ? C - c0 : SE_LANES;
        real acc[SE_LANES] = {0};
        for (size_t p = 0; p < (size_t)P; p++) {
            const size_t at = ((size_t)b * P + p) * C + c0;
            if (b_) {
#pragma omp simd
                for (int j = 0; j < lanes; j++)
                    acc[j] += a[at + j] * b_[at + j];
            } else {
#pragma omp simd
                for (int j = 0; j < lanes; j++)
                    acc[j] += a[at + j];
            }
        }
        for (int j = 0; j < lanes; j++)
            sum[(size_t)b * C + c0 + j] = acc[j] / P;
    }
}
HERBS_ISA_VARIANTS(se_channel_means, (real *sum, const real *a, const real *b_, int P, int C, int i0, int i1),
                   (sum, a, b_, P, C, i0, i1))

/* position rows (image, p) [r0, r1): out[b,p,c] = (accumulate ? out : 0) + x[b,p,c]·gate[b,c] + add[b,c] (add NULL: 0) */
HERBS_INLINE void FN(se_scale_rows)(real *out, const real *x, const real *gate, const real *add, int P, int C,
                                    int accumulate, int r0, int r1)
{
    for (int r = r0; r < r1; r++) {
        const real *g = gate + (size_t)(r / P) * C, *a = add ? add + (size_t)(r / P) * C : NULL;
        real *o = out + (size_t)r * C;
        const real *xr = x + (size_t)r * C;
#pragma omp simd
        for (int c = 0; c < C; c++) {
            const real v = xr[c] * g[c] + (a ? a[c] : 0);
            o[c] = accumulate ? o[c] + v : v;
        }
    }
}
HERBS_ISA_VARIANTS(se_scale_rows,
                   (real *out, const real *x, const real *gate, const real *add, int P, int C, int accumulate, int r0,
                    int r1),
                   (out, x, gate, add, P, C, accumulate, r0, r1))

void FN(squeeze_excite_forward)(real *out, real *pooled, real *hidden, real *act, real *gate, const real *inp,
                                const real *w1, const real *b1, const real *w2, const real *b2, int B, int P, int C,
                                int S)
{
    const double work = (double)B * P * C;
    HERBS_ISA_PARALLEL(se_channel_means, (long)B * ((C + SE_LANES - 1) / SE_LANES), SE_THREADS(work), pooled, inp,
                       NULL, P, C);
    FN(linear_forward)(hidden, pooled, w1, b1, B, C, S);
    FN(silu_forward)(act, hidden, (size_t)B * S);
    FN(linear_forward)(gate, act, w2, b2, B, S, C);
    for (size_t i = 0; i < (size_t)B * C; i++)
        gate[i] = FN(logistic)(gate[i]);
    HERBS_ISA_PARALLEL(se_scale_rows, (long)B * P, SE_THREADS(work), out, inp, gate, NULL, P, C, 0);
}

void FN(squeeze_excite_backward)(real *dinp, real *dw1, real *db1, real *dw2, real *db2, const real *dout,
                                 const real *inp, const real *pooled, const real *hidden, const real *act,
                                 const real *gate, const real *w1, const real *w2, real *scratch, int B, int P, int C, int S,
                                 int accumulate)
{
    real *dlogit = scratch, *dpooled = scratch + (size_t)B * C; /* [B, C] each */
    real *dact = dpooled + (size_t)B * C;                              /* [B, S] */
    const double work = (double)B * P * C;
    /* d(gate logit) = σ'·Σ_p dout·inp, from the mean times P */
    HERBS_ISA_PARALLEL(se_channel_means, (long)B * ((C + SE_LANES - 1) / SE_LANES), SE_THREADS(work), dlogit, dout,
                       inp, P, C);
    for (size_t i = 0; i < (size_t)B * C; i++)
        dlogit[i] *= P * gate[i] * (1 - gate[i]);
    FN(linear_backward)(HERBS_FP32, dact, dw2, db2, dlogit, act, w2, B, S, C, 0);
    FN(silu_backward)(dact, dact, hidden, (size_t)B * S, 0);
    FN(linear_backward)(HERBS_FP32, dpooled, dw1, db1, dact, pooled, w1, B, C, S, 0);
    for (size_t i = 0; i < (size_t)B * C; i++)
        dpooled[i] /= P;
    HERBS_ISA_PARALLEL(se_scale_rows, (long)B * P, SE_THREADS(work), dinp, dout, gate, dpooled, P, C, accumulate);
}
