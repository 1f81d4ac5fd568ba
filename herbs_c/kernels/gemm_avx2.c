/* AVX2+FMA micro-kernel: a 6x16 tile in 12 ymm accumulators; per k, two B vectors and 6
   broadcasts of A feed 12 FMAs. Packing is the plain C of gemm_pack.c. */
#include "kernels/gemm_microkernels.h"
#include "kernels/kernels.h"

#if defined(__x86_64__)
#include <immintrin.h>

#define MR 6
#define NR 16
#define TARGET __attribute__((target("avx2,fma")))

/* Lanes [0, n) of 8 set, as a maskload/maskstore mask. */
TARGET static inline __m256i lanes8(int n)
{
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/* c[0:n] = alpha * acc + beta * c for n <= 8 (beta == 0: c not read). */
TARGET static inline void store8(float *c, __m256 acc, __m256 va, float beta, int n)
{
    __m256 v = _mm256_mul_ps(va, acc);
    if (n >= 8) {
        if (beta != 0.0f)
            v = _mm256_fmadd_ps(_mm256_set1_ps(beta), _mm256_loadu_ps(c), v);
        _mm256_storeu_ps(c, v);
    } else if (n > 0) {
        const __m256i mask = lanes8(n);
        if (beta != 0.0f)
            v = _mm256_fmadd_ps(_mm256_set1_ps(beta), _mm256_maskload_ps(c, mask), v);
        _mm256_maskstore_ps(c, mask, v);
    }
}

/* c[first:rows, 0:cols] = alpha * acc + beta * c. */
TARGET static inline void store_tile(__m256 acc[MR][2], float *c, long ldc, float alpha, float beta, int first,
                                     int rows, int cols)
{
    const __m256 va = _mm256_set1_ps(alpha);
#pragma GCC unroll 6
    for (int i = 0; i < MR; i++) {
        if (i >= first && i < rows) {
            store8(c + i * ldc, acc[i][0], va, beta, cols);
            store8(c + i * ldc + 8, acc[i][1], va, beta, cols - 8);
        }
    }
}

/* acc[6][16] += a[i] * b row by row of B: 2 B vectors and 6 broadcasts make 12 FMAs. */
#define RANK1_UPDATE(acc, b, a_of_i)                                                                             \
    do {                                                                                                         \
        __m256 b0_ = _mm256_loadu_ps(b), b1_ = _mm256_loadu_ps((b) + 8);                                        \
        _Pragma("GCC unroll 6") for (int i = 0; i < MR; i++)                                                    \
        {                                                                                                        \
            __m256 ai_ = _mm256_broadcast_ss(&(a_of_i));                                                         \
            acc[i][0] = _mm256_fmadd_ps(ai_, b0_, acc[i][0]);                                                    \
            acc[i][1] = _mm256_fmadd_ps(ai_, b1_, acc[i][1]);                                                    \
        }                                                                                                        \
    } while (0)

/* c[rows, cols] = alpha * (a·b) + beta * c: the 6x16 tile, A by columns, B by rows. */
TARGET static void kernel_6x16(int K, const void *a_tile, long a_step, const void *b_panel, long b_step, float *c,
                               long ldc, float alpha, float beta, int rows, int cols, const gemm_tile_step *step)
{
    const float *a = a_tile, *b = b_panel;
    for (int i = 0; i < rows; i++)
        __builtin_prefetch(c + i * ldc, 1, 3);
    __m256 acc[MR][2];
#pragma GCC unroll 6
    for (int i = 0; i < MR; i++)
        acc[i][0] = acc[i][1] = _mm256_setzero_ps();
    for (int k = 0; k < K; k++, a += a_step, b += b_step)
        RANK1_UPDATE(acc, b, a[i]);
    store_tile(acc, c, ldc, alpha, beta, 0, rows, cols);
    gemm_tile_step_apply(step, c, ldc, 0, rows, cols);
}

/* c[first:6, cols] = alpha * (a·b) + beta * c with the 6 rows of A in place at a + i*lda. */
TARGET static void kernel_6x16_rows(int K, const float *a, long lda, const void *b_panel, long b_step, float *c,
                                    long ldc, float alpha, float beta, int first, int cols,
                                    const gemm_tile_step *step)
{
    const float *b = b_panel;
    __m256 acc[MR][2];
#pragma GCC unroll 6
    for (int i = 0; i < MR; i++)
        acc[i][0] = acc[i][1] = _mm256_setzero_ps();
    const long l3 = 3 * lda, l5 = 5 * lda;
    for (int k = 0; k < K; k++, a++, b += b_step) {
        const float *row[MR] = {a, a + lda, a + 2 * lda, a + l3, a + 4 * lda, a + l5};
        RANK1_UPDATE(acc, b, *row[i]);
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

const gemm_microkernel gemm_microkernel_avx2 = {
    .name = "avx2 6x16", .mr = MR, .nr = NR, .kc = 256, .nc = 1024, .elem = sizeof(float), .ku = 1,
    .run = kernel_6x16, .run_rows = kernel_6x16_rows, .pack_a = pack_a, .pack_b = pack_b,
    .reference = gemm_reference};

#else
const gemm_microkernel gemm_microkernel_avx2 = {0};
#endif
