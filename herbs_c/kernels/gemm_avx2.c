/* AVX2+FMA micro-kernel: a 6x16 tile in 12 ymm accumulators; per k, two B vectors and 6
   broadcasts of A feed 12 FMAs. Packing is the plain C of gemm_pack.c. */
#include "kernels/gemm_microkernels.h"

#if defined(__x86_64__)
#include <immintrin.h>

#define MR 6
#define NR 16
#define TARGET __attribute__((target("avx2,fma")))

/* c[0:8] = alpha * acc + beta * c (beta == 0: c not read); only the lanes of `mask` when partial. */
TARGET static inline void store8(float *c, __m256 acc, __m256 va, float beta, int partial, __m256i mask)
{
    if (!partial) {
        __m256 v = _mm256_mul_ps(va, acc);
        if (beta != 0.0f)
            v = _mm256_fmadd_ps(_mm256_set1_ps(beta), _mm256_loadu_ps(c), v);
        _mm256_storeu_ps(c, v);
        return;
    }
    __m256 v = _mm256_mul_ps(va, acc);
    if (beta != 0.0f)
        v = _mm256_fmadd_ps(_mm256_set1_ps(beta), _mm256_maskload_ps(c, mask), v);
    _mm256_maskstore_ps(c, mask, v);
}

/* Lanes [0, n) of 8 set, as a maskload/maskstore mask. */
TARGET static inline __m256i lanes8(int n)
{
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/* c[rows, cols] = alpha * (a[K][6] · b[K][16]) + beta * c: the 6x16 register tile. */
TARGET static void kernel_6x16(int K, const float *a, const float *b, float *c, long ldc, float alpha,
                               float beta, int rows, int cols)
{
    for (int i = 0; i < rows; i++)
        __builtin_prefetch(c + i * ldc, 1, 3);
    __m256 acc[MR][2];
#pragma GCC unroll 6
    for (int i = 0; i < MR; i++)
        acc[i][0] = acc[i][1] = _mm256_setzero_ps();
    for (int k = 0; k < K; k++) {
        __m256 b0 = _mm256_load_ps(b), b1 = _mm256_load_ps(b + 8);
#pragma GCC unroll 6
        for (int i = 0; i < MR; i++) {
            __m256 ai = _mm256_broadcast_ss(a + i);
            acc[i][0] = _mm256_fmadd_ps(ai, b0, acc[i][0]);
            acc[i][1] = _mm256_fmadd_ps(ai, b1, acc[i][1]);
        }
        a += MR;
        b += NR;
    }
    const __m256 va = _mm256_set1_ps(alpha);
    const int p0 = cols < 8, p1 = cols < 16;
    const __m256i m0 = lanes8(cols), m1 = lanes8(cols - 8);
#pragma GCC unroll 6
    for (int i = 0; i < MR; i++) {
        if (i < rows) {
            store8(c + i * ldc, acc[i][0], va, beta, p0, m0);
            if (cols > 8)
                store8(c + i * ldc + 8, acc[i][1], va, beta, p1, m1);
        }
    }
}

static void pack_a(int trans, int m, int k, const float *A, long lda, float *dst)
{
    gemm_pack_a_generic(MR, trans, m, k, A, lda, dst);
}

static void pack_b(int trans, int n, int k, const float *B, long ldb, float *dst)
{
    gemm_pack_b_generic(NR, trans, n, k, B, ldb, dst);
}

const gemm_microkernel gemm_microkernel_avx2 = {"avx2 6x16", MR, NR, 256, 240, 4096, kernel_6x16, pack_a, pack_b};

#else
const gemm_microkernel gemm_microkernel_avx2 = {0};
#endif
