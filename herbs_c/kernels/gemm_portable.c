/* Portable micro-kernel in plain C: a 4x16 tile the compiler vectorises for whatever the
   baseline of the build is (SSE2 on x86-64, NEON on arm64). Packing is gemm_pack.c's. */
#include "kernels/gemm_microkernels.h"
#include "kernels/kernels.h"

#define MR 4
#define NR 16
#define CHUNK 64 /* columns of an in-place A tile copied at a time */

/* acc[4][16] += a·b over K, column k of the A tile at a + k*a_step, row k of B at b + k*b_step. */
static void accumulate(float acc[MR][NR], int K, const float *a, long a_step, const float *b, long b_step)
{
    for (int k = 0; k < K; k++, a += a_step, b += b_step) {
#pragma GCC unroll 4
        for (int i = 0; i < MR; i++) {
            const float ai = a[i];
#pragma GCC unroll 16
            for (int j = 0; j < NR; j++)
                acc[i][j] += ai * b[j];
        }
    }
}

/* c[first:rows, 0:cols] = alpha * acc + beta * c. */
static void store_tile(float acc[MR][NR], float *c, long ldc, float alpha, float beta, int first, int rows, int cols)
{
    for (int i = first; i < rows; i++)
        for (int j = 0; j < cols; j++)
            c[i * ldc + j] = beta == 0.0f ? alpha * acc[i][j] : alpha * acc[i][j] + beta * c[i * ldc + j];
}

/* c[rows, cols] = alpha * (a·b) + beta * c: the 4x16 tile, A by columns, B by rows. */
static void kernel_4x16(int K, const void *a, long a_step, const void *b, long b_step, float *c, long ldc,
                        float alpha, float beta, int rows, int cols, const gemm_tile_step *step)
{
    float acc[MR][NR] = {{0}};
    accumulate(acc, K, a, a_step, b, b_step);
    store_tile(acc, c, ldc, alpha, beta, 0, rows, cols);
    gemm_tile_step_apply(step, c, ldc, 0, rows, cols);
}

/* c[first:4, cols] = alpha * (a·b) + beta * c with the 4 rows of A in place at a + i*lda:
   copied by columns in chunks, so that the compiler sees the same loop as above. */
static void kernel_4x16_rows(int K, const float *a, long lda, const void *b_panel, long b_step, float *c, long ldc,
                             float alpha, float beta, int first, int cols, const gemm_tile_step *step)
{
    const float *b = b_panel;
    float acc[MR][NR] = {{0}}, chunk[CHUNK][MR];
    for (int k0 = 0; k0 < K; k0 += CHUNK) {
        const int kn = K - k0 < CHUNK ? K - k0 : CHUNK;
        for (int k = 0; k < kn; k++)
            for (int i = 0; i < MR; i++)
                chunk[k][i] = a[i * lda + k0 + k];
        accumulate(acc, kn, chunk[0], MR, b + k0 * b_step, b_step);
    }
    store_tile(acc, c, ldc, alpha, beta, first, MR, cols);
    gemm_tile_step_apply(step, c, ldc, first, MR, cols);
}

static void pack_a(int trans, int m, int k, const float *A, long lda, void *dst)
{
    gemm_pack_a_generic(MR, trans, m, k, A, lda, dst);
}

static void pack_b(int trans, int n, int k, const float *B, long ldb, void *dst)
{
    gemm_pack_b_generic(NR, trans, n, k, B, ldb, dst);
}

const gemm_microkernel gemm_microkernel_portable = {
    .name = "portable 4x16", .mr = MR, .nr = NR, .kc = 256, .nc = 1024, .elem = sizeof(float), .ku = 1,
    .run = kernel_4x16, .run_rows = kernel_4x16_rows, .pack_a = pack_a, .pack_b = pack_b,
    .reference = gemm_reference};
