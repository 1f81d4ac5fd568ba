/* Packing in plain C for any register tile: what the ISAs without their own packers use. */
#include <string.h>

#include "kernels/gemm_microkernels.h"

/* dst[k][mr] <- A[0:rows, 0:k] for one panel of rows <= mr rows of a row-major A, the rest zero. */
static void pack_a_rows(int mr, int rows, int k, const float *A, long lda, float *dst)
{
    for (int i = 0; i < rows; i++) {
        const float *src = A + (size_t)i * lda;
        for (int kk = 0; kk < k; kk++)
            dst[(size_t)kk * mr + i] = src[kk];
    }
    if (rows < mr)
        for (int kk = 0; kk < k; kk++)
            memset(dst + (size_t)kk * mr + rows, 0, (mr - rows) * sizeof(float));
}

/* dst[ceil(m/mr)][k][mr] <- rows of A[0:k, 0:m] (A holds op(A) transposed), row by row of A. */
static void pack_a_cols(int mr, int m, int k, const float *A, long lda, float *dst)
{
    for (int kk = 0; kk < k; kk++) {
        const float *src = A + (size_t)kk * lda;
        for (int i0 = 0; i0 < m; i0 += mr) {
            const int rows = m - i0 < mr ? m - i0 : mr;
            float *panel_row = dst + (size_t)i0 * k + (size_t)kk * mr;
            memcpy(panel_row, src + i0, rows * sizeof(float));
            memset(panel_row + rows, 0, (mr - rows) * sizeof(float));
        }
    }
}

void gemm_pack_a_generic(int mr, int trans, int m, int k, const float *A, long lda, float *dst)
{
    if (trans) {
        pack_a_cols(mr, m, k, A, lda, dst);
        return;
    }
    for (int i0 = 0; i0 < m; i0 += mr, dst += (size_t)k * mr)
        pack_a_rows(mr, m - i0 < mr ? m - i0 : mr, k, A + (size_t)i0 * lda, lda, dst);
}

/* The column panels of op(B) are the row panels of op(B)ᵀ, whose storage B is with the transpose
   flag flipped: packing B is packing that A. */
void gemm_pack_b_generic(int nr, int trans, int n, int k, const float *B, long ldb, float *dst)
{
    gemm_pack_a_generic(nr, !trans, n, k, B, ldb, dst);
}
