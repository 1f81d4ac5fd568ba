/* The per-column affine map and ReLU on finished rows of a product (see affine.h). */
#include "kernels/isa.h"
#include "kernels/kernels.h"
#include "kernels/precision.h"

#define AFFINE_GRAIN 32768 /* a thread's elements, at least */

/* written as BatchNorm's eval pass writes it, so the two round alike in every build */
HERBS_INLINE void FN(affine_rows_body)(real *y, long ldy, const real *scale, const real *shift, int relu, int cols,
                                       int m0, int m1)
{
    for (int m = m0; m < m1; m++) {
        real *row = y + (size_t)m * ldy;
        if (scale && shift) {
#pragma omp simd
            for (int j = 0; j < cols; j++)
                row[j] = row[j] * scale[j] + shift[j];
        } else if (scale) {
#pragma omp simd
            for (int j = 0; j < cols; j++)
                row[j] = row[j] * scale[j];
        } else if (shift) {
#pragma omp simd
            for (int j = 0; j < cols; j++)
                row[j] = row[j] + shift[j];
        }
        if (relu) {
#pragma omp simd
            for (int j = 0; j < cols; j++)
                row[j] = row[j] < 0 ? 0 : row[j]; /* relu_forward's: NaN stays */
        }
    }
}
HERBS_ISA_VARIANTS(affine_rows_body,
                   (real *y, long ldy, const real *scale, const real *shift, int relu, int cols, int m0, int m1),
                   (y, ldy, scale, shift, relu, cols, m0, m1))

FN(affine_rows_fn) FN(affine_rows_current)(void) { return FN(affine_rows_body_isa)(); }

void FN(affine_rows)(real *y, long ldy, const real *scale, const real *shift, int relu, int M, int cols)
{
    if (scale || shift || relu)
        HERBS_ISA_PARALLEL(affine_rows_body, M, herbs_threads_for((double)M * cols, AFFINE_GRAIN), y, ldy, scale,
                           shift, relu, cols);
}
