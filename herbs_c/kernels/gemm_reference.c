/* The plain GEMM: three loops, no packing, no memory. The float engine falls back to it when
   pack buffers cannot be allocated; in double it is the GEMM of the finite-difference tests. */
#include "kernels/kernels.h"
#include "kernels/precision.h"

void FN(gemm_reference)(int trans_a, int trans_b, int M, int N, int K, real alpha, const real *A, long lda,
                        const real *B, long ldb, real beta, real *C, long ldc)
{
#pragma omp parallel for schedule(static) if ((double)M * N * K > 1e6)
    for (int i = 0; i < M; i++) {
        for (int j = 0; j < N; j++) {
            real sum = 0;
            for (int k = 0; k < K; k++) {
                real a = trans_a ? A[(size_t)k * lda + i] : A[(size_t)i * lda + k];
                real b = trans_b ? B[(size_t)j * ldb + k] : B[(size_t)k * ldb + j];
                sum += a * b;
            }
            real *c = &C[(size_t)i * ldc + j];
            *c = beta == 0 ? alpha * sum : alpha * sum + beta * *c;
        }
    }
}
