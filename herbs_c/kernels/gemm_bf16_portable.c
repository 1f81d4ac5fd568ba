/* The portable bf16 micro-kernel in plain C: a 4x16 tile on VNNI panels of bf16 (k pairs,
   gemm_pack.c's packers round while packing), the pair's two exact products added in fp32 and
   then accumulated in fp32, as vdpbf16ps adds them. And the bf16 reference loops. */
#include <stdint.h>

#include "kernels/bf16.h"
#include "kernels/gemm_microkernels.h"

#define MR 4
#define NR 16

/* c[rows, cols] = alpha * (a·b) + beta * c, a [K/2][4][2] and b [K/2][16][2] bf16 panels. */
static void kernel_4x16(int K, const void *a_panel, long a_step, const void *b_panel, long b_step, float *c,
                        long ldc, float alpha, float beta, int rows, int cols, const gemm_tile_step *step)
{
    const uint16_t *a = a_panel, *b = b_panel;
    float acc[MR][NR] = {{0}};
    for (int p = 0; p < (K + 1) / 2; p++, a += 2 * MR, b += 2 * NR) {
        float b0[NR], b1[NR];
        for (int j = 0; j < NR; j++) {
            b0[j] = bf16_to_float(b[2 * j]);
            b1[j] = bf16_to_float(b[2 * j + 1]);
        }
        for (int i = 0; i < MR; i++) {
            const float a0 = bf16_to_float(a[2 * i]), a1 = bf16_to_float(a[2 * i + 1]);
            for (int j = 0; j < NR; j++)
                acc[i][j] += a0 * b0[j] + a1 * b1[j];
        }
    }
    for (int i = 0; i < rows; i++)
        for (int j = 0; j < cols; j++)
            c[i * ldc + j] = beta == 0.0f ? alpha * acc[i][j] : alpha * acc[i][j] + beta * c[i * ldc + j];
    gemm_tile_step_apply(step, c, ldc, 0, rows, cols);
}

static void pack_a(int trans, int m, int k, const float *A, long lda, void *dst)
{
    gemm_pack_a_bf16(MR, 2, 2, trans, m, k, A, lda, dst);
}

static void pack_b(int trans, int n, int k, const float *B, long ldb, void *dst)
{
    gemm_pack_b_bf16(NR, 2, 2, trans, n, k, B, ldb, dst);
}

static void pack_a_from_bf16(int trans, int m, int k, const uint16_t *A, long lda, void *dst)
{
    gemm_pack_a_from_bf16(MR, 2, 2, trans, m, k, A, lda, dst);
}

static void pack_b_from_bf16(int trans, int n, int k, const uint16_t *B, long ldb, void *dst)
{
    gemm_pack_b_from_bf16(NR, 2, 2, trans, n, k, B, ldb, dst);
}

const gemm_microkernel gemm_microkernel_portable_bf16 = {
    .name = "portable 4x16", .mr = MR, .nr = NR, .kc = 256, .nc = 1024, .elem = sizeof(uint16_t), .ku = 2,
    .run = kernel_4x16, .pack_a = pack_a, .pack_b = pack_b, .pack_a_from_bf16 = pack_a_from_bf16,
    .pack_b_from_bf16 = pack_b_from_bf16, .reference = gemm_reference_bf16};

/* Element (i, j) of op(X) (trans: X is stored transposed), from fp32 rounded to bf16 or from bf16. */
static float bf16_operand_at(const void *X, int is_bf16, long ld, int trans, int i, int j)
{
    const size_t at = trans ? (size_t)j * ld + i : (size_t)i * ld + j;
    return bf16_to_float(is_bf16 ? ((const uint16_t *)X)[at] : bf16_from_float(((const float *)X)[at]));
}

/* C = alpha * bf16(op(A)) · bf16(op(B)) + beta * C by three loops, no memory. */
void gemm_reference_bf16_inputs(int trans_a, int trans_b, int M, int N, int K, float alpha, const void *A, int a_bf16,
                                long lda, const void *B, int b_bf16, long ldb, float beta, float *C, long ldc)
{
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            float sum = 0;
            for (int k = 0; k < K; k++)
                sum += bf16_operand_at(A, a_bf16, lda, trans_a, i, k) * bf16_operand_at(B, b_bf16, ldb, trans_b, k, j);
            float *c = &C[(size_t)i * ldc + j];
            *c = beta == 0 ? alpha * sum : alpha * sum + beta * *c;
        }
}

void gemm_reference_bf16(int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A, long lda,
                         const float *B, long ldb, float beta, float *C, long ldc)
{
    gemm_reference_bf16_inputs(trans_a, trans_b, M, N, K, alpha, A, 0, lda, B, 0, ldb, beta, C, ldc);
}
