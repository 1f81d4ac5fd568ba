/* Packing in plain C for any register tile: what the ISAs without their own packers use. */
#include <stdint.h>
#include <string.h>

#include "kernels/bf16.h"
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

/* Element i of a row that is fp32 (rounded here) or already bf16. */
static inline uint16_t bf16_at(const void *row, int is_bf16, int i)
{
    return is_bf16 ? ((const uint16_t *)row)[i] : bf16_from_float(((const float *)row)[i]);
}

/* bf16 panels [depth/ku][mr][ku] of op(A)[0:m, 0:k], depth = k rounded up to `unit` (a multiple
   of ku), zero beyond m and k, from A in fp32 (rounded to bf16, bf16.h) or in bf16 (is_bf16):
   each row of A's storage read once, in order (rows of op(A), or with trans its
   columns). */
static void pack_a_bf16_panels(int mr, int ku, int unit, int trans, int m, int k, const void *A, int is_bf16, long lda,
                               void *dst)
{
    uint16_t *out = dst;
    const size_t elem = is_bf16 ? sizeof(uint16_t) : sizeof(float);
    const int kpad = (k + unit - 1) / unit * unit, panels = (m + mr - 1) / mr;
    if (m % mr || k % unit)
        memset(out, 0, (size_t)panels * mr * kpad * sizeof *out);
    if (!trans) {
        for (int i = 0; i < m; i++) {
            const char *src = (const char *)A + (size_t)i * lda * elem;
            uint16_t *row = out + (size_t)(i / mr) * mr * kpad + (size_t)(i % mr) * ku;
            for (int k0 = 0; k0 < k; k0 += ku) {
                const int n = k - k0 < ku ? k - k0 : ku;
                for (int t = 0; t < n; t++)
                    row[(size_t)k0 * mr + t] = bf16_at(src, is_bf16, k0 + t);
            }
        }
        return;
    }
    for (int kk = 0; kk < k; kk++) {
        const char *src = (const char *)A + (size_t)kk * lda * elem;
        uint16_t *col = out + (size_t)(kk / ku) * ku * mr + kk % ku;
        for (int i = 0; i < m; i++)
            col[(size_t)(i / mr) * mr * kpad + (size_t)(i % mr) * ku] = bf16_at(src, is_bf16, i);
    }
}

void gemm_pack_a_bf16(int mr, int ku, int unit, int trans, int m, int k, const float *A, long lda, void *dst)
{
    pack_a_bf16_panels(mr, ku, unit, trans, m, k, A, 0, lda, dst);
}

void gemm_pack_a_from_bf16(int mr, int ku, int unit, int trans, int m, int k, const uint16_t *A, long lda, void *dst)
{
    pack_a_bf16_panels(mr, ku, unit, trans, m, k, A, 1, lda, dst);
}

void gemm_pack_b_bf16(int nr, int ku, int unit, int trans, int n, int k, const float *B, long ldb, void *dst)
{
    gemm_pack_a_bf16(nr, ku, unit, !trans, n, k, B, ldb, dst);
}

void gemm_pack_b_from_bf16(int nr, int ku, int unit, int trans, int n, int k, const uint16_t *B, long ldb, void *dst)
{
    gemm_pack_a_from_bf16(nr, ku, unit, !trans, n, k, B, ldb, dst);
}
