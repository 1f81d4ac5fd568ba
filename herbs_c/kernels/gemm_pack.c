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

/* dst[k][nr] <- B[0:cols, 0:k]ᵀ for one panel of cols <= nr rows of B (B holds op(B)
   transposed), the rest zero. */
static void pack_b_rows(int nr, int cols, int k, const float *B, long ldb, float *dst)
{
    for (int j = 0; j < cols; j++) {
        const float *src = B + (size_t)j * ldb;
        for (int kk = 0; kk < k; kk++)
            dst[(size_t)kk * nr + j] = src[kk];
    }
    if (cols < nr)
        for (int kk = 0; kk < k; kk++)
            memset(dst + (size_t)kk * nr + cols, 0, (nr - cols) * sizeof(float));
}

/* dst[ceil(n/nr)][k][nr] <- B[0:k, 0:n] (B row-major), row by row of B. */
static void pack_b_cols(int nr, int n, int k, const float *B, long ldb, float *dst)
{
    for (int kk = 0; kk < k; kk++) {
        const float *src = B + (size_t)kk * ldb;
        for (int j0 = 0; j0 < n; j0 += nr) {
            const int cols = n - j0 < nr ? n - j0 : nr;
            float *panel_row = dst + (size_t)j0 * k + (size_t)kk * nr;
            memcpy(panel_row, src + j0, cols * sizeof(float));
            memset(panel_row + cols, 0, (nr - cols) * sizeof(float));
        }
    }
}

void gemm_pack_b_generic(int nr, int trans, int n, int k, const float *B, long ldb, float *dst)
{
    if (!trans) {
        pack_b_cols(nr, n, k, B, ldb, dst);
        return;
    }
    for (int j0 = 0; j0 < n; j0 += nr, dst += (size_t)k * nr)
        pack_b_rows(nr, n - j0 < nr ? n - j0 : nr, k, B + (size_t)j0 * ldb, ldb, dst);
}
