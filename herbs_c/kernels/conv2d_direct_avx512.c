/* AVX-512 row-pointer micro-kernel of the direct convolution: a 14x32 tile in 28 zmm
   accumulators; per k, two weight vectors and 14 broadcasts straight from the input rows. */
#include "kernels/conv2d_direct.h"

#if defined(__x86_64__)
#include <immintrin.h>

#define MR 14

__attribute__((target("avx512f"))) static void
rows_kernel_14x32(int K, const float *const *rows, const float *b, float *c, long ldc, float beta)
{
    __m512 acc[MR][2];
    const float *r[MR];
#pragma GCC unroll 14
    for (int i = 0; i < MR; i++) {
        acc[i][0] = acc[i][1] = _mm512_setzero_ps();
        r[i] = rows[i];
    }
    for (int k = 0; k < K; k++) {
        __m512 b0 = _mm512_loadu_ps(b), b1 = _mm512_loadu_ps(b + 16);
#pragma GCC unroll 14
        for (int i = 0; i < MR; i++) {
            __m512 ai = _mm512_set1_ps(r[i][k]);
            acc[i][0] = _mm512_fmadd_ps(ai, b0, acc[i][0]);
            acc[i][1] = _mm512_fmadd_ps(ai, b1, acc[i][1]);
        }
        b += 32;
    }
    if (beta == 0.0f) {
#pragma GCC unroll 14
        for (int i = 0; i < MR; i++) {
            _mm512_storeu_ps(c + i * ldc, acc[i][0]);
            _mm512_storeu_ps(c + i * ldc + 16, acc[i][1]);
        }
    } else {
        __m512 vb = _mm512_set1_ps(beta);
#pragma GCC unroll 14
        for (int i = 0; i < MR; i++) {
            float *ci = c + i * ldc;
            _mm512_storeu_ps(ci, _mm512_fmadd_ps(vb, _mm512_loadu_ps(ci), acc[i][0]));
            _mm512_storeu_ps(ci + 16, _mm512_fmadd_ps(vb, _mm512_loadu_ps(ci + 16), acc[i][1]));
        }
    }
}

const conv_rows_kernel_fn conv_rows_kernel_avx512 = rows_kernel_14x32;
#else
const conv_rows_kernel_fn conv_rows_kernel_avx512 = 0;
#endif
