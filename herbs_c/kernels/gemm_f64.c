/* The double GEMM, for kernels compiled in double: the reference loops, batch by batch. */
#include "kernels/kernels.h"

void gemm_f64(int trans_a, int trans_b, int M, int N, int K, double alpha, const double *A, long lda,
              const double *B, long ldb, double beta, double *C, long ldc)
{
    gemm_reference_f64(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

void gemm_affine_f64(int trans_a, int trans_b, int M, int N, int K, double alpha, const double *A, long lda,
                     const double *B, long ldb, double beta, double *C, long ldc, const double *scale,
                     const double *shift, int relu)
{
    gemm_reference_f64(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    affine_rows_f64(C, ldc, scale, shift, relu, M, N);
}

void gemm_batched_f64(int trans_a, int trans_b, int M, int N, int K, double alpha, const double *A, long lda,
                      long stride_a, const double *B, long ldb, long stride_b, double beta, double *C,
                      long ldc, long stride_c, int batch)
{
    for (int b = 0; b < batch; b++)
        gemm_reference_f64(trans_a, trans_b, M, N, K, alpha, A + b * stride_a, lda, B + b * stride_b, ldb,
                           beta, C + b * stride_c, ldc);
}

void gemm_at_f64(herbs_precision p, int trans_a, int trans_b, int M, int N, int K, double alpha, const double *A,
                 long lda, const double *B, long ldb, double beta, double *C, long ldc)
{
    (void)p;
    gemm_reference_f64(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

void gemm_batched_at_f64(herbs_precision p, int trans_a, int trans_b, int M, int N, int K, double alpha,
                         const double *A, long lda, long stride_a, const double *B, long ldb, long stride_b,
                         double beta, double *C, long ldc, long stride_c, int batch)
{
    (void)p;
    gemm_batched_f64(trans_a, trans_b, M, N, K, alpha, A, lda, stride_a, B, ldb, stride_b, beta, C, ldc, stride_c,
                     batch);
}
