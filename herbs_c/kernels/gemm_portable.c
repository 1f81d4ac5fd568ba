/* Portable micro-kernel in plain C: a 4x16 tile the compiler vectorises for whatever the
   baseline of the build is (SSE2 on x86-64, NEON on arm64). Packing is gemm_pack.c's. */
#include "kernels/gemm_microkernels.h"

#define MR 4
#define NR 16

/* c[rows, cols] = alpha * acc + beta * c. */
static void store_tile(float acc[MR][NR], float *c, long ldc, float alpha, float beta, int rows, int cols)
{
    for (int i = 0; i < rows; i++)
        for (int j = 0; j < cols; j++)
            c[i * ldc + j] = beta == 0.0f ? alpha * acc[i][j] : alpha * acc[i][j] + beta * c[i * ldc + j];
}

/* c[rows, cols] = alpha * (a·b) + beta * c: the 4x16 tile, A element (i, k) at a[i * a_row + k * a_step]. */
static void tile_4x16(int K, const float *a, long a_row, long a_step, const float *b, long b_step, float *c,
                      long ldc, float alpha, float beta, int rows, int cols)
{
    float acc[MR][NR] = {{0}};
    for (int k = 0; k < K; k++, a += a_step, b += b_step)
        for (int i = 0; i < MR; i++)
            for (int j = 0; j < NR; j++)
                acc[i][j] += a[i * a_row] * b[j];
    store_tile(acc, c, ldc, alpha, beta, rows, cols);
}

static void kernel_4x16(int K, const float *a, long a_step, const float *b, long b_step, float *c, long ldc,
                        float alpha, float beta, int rows, int cols)
{
    tile_4x16(K, a, 1, a_step, b, b_step, c, ldc, alpha, beta, rows, cols);
}

static void kernel_4x16_rows(int K, const float *a, long lda, const float *b, long b_step, float *c, long ldc,
                             float alpha, float beta, int cols)
{
    tile_4x16(K, a, lda, 1, b, b_step, c, ldc, alpha, beta, MR, cols);
}

static void pack_a(int trans, int m, int k, const float *A, long lda, float *dst)
{
    gemm_pack_a_generic(MR, trans, m, k, A, lda, dst);
}

static void pack_b(int trans, int n, int k, const float *B, long ldb, float *dst)
{
    gemm_pack_b_generic(NR, trans, n, k, B, ldb, dst);
}

const gemm_microkernel gemm_microkernel_portable = {"portable 4x16", MR, NR, 256, 256, 1024,
                                                    kernel_4x16, kernel_4x16_rows, pack_a, pack_b};
