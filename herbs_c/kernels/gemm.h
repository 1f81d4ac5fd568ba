/* Matrix multiply, row-major: C[M,N] = alpha * op(A)[M,K] · op(B)[K,N] + beta * C, where
   op(X) is X (trans 0) or Xᵀ (trans 1); lda, ldb, ldc are row strides in elements.
   beta == 0 never reads C (it may hold garbage). Threads: herbs_num_threads(), or 1 when
   called from inside a parallel region. The float version packs and dispatches to the
   micro-kernel of the current ISA; the double version is a plain reference for tests. */
void FN(gemm)(int trans_a, int trans_b, int M, int N, int K, real alpha,
              const real *A, long lda, const real *B, long ldb, real beta, real *C, long ldc);

/* The same, then per column j of C: C[:, j] = C[:, j]·scale[j] + shift[j] and, with relu, max(0, ·)
   (relu_forward's: NaN stays; affine.h; scale or shift NULL: none), applied to each tile as it is finished. */
void FN(gemm_affine)(int trans_a, int trans_b, int M, int N, int K, real alpha, const real *A, long lda,
                     const real *B, long ldb, real beta, real *C, long ldc, const real *scale, const real *shift,
                     int relu);

/* gemm at precision p (gemm_bf16.h: bf16 operands with fp32 accumulation, or fp32); the double
   build ignores p, so a kernel written over `real` takes its products' precision as an argument. */
void FN(gemm_at)(herbs_precision p, int trans_a, int trans_b, int M, int N, int K, real alpha, const real *A, long lda,
                 const real *B, long ldb, real beta, real *C, long ldc);

/* `batch` independent products: item b uses A + b*stride_a, B + b*stride_b, C + b*stride_c. */
void FN(gemm_batched)(int trans_a, int trans_b, int M, int N, int K, real alpha,
                      const real *A, long lda, long stride_a, const real *B, long ldb, long stride_b,
                      real beta, real *C, long ldc, long stride_c, int batch);

/* gemm_batched at precision p, as gemm_at. */
void FN(gemm_batched_at)(herbs_precision p, int trans_a, int trans_b, int M, int N, int K, real alpha, const real *A,
                         long lda, long stride_a, const real *B, long ldb, long stride_b, real beta, real *C, long ldc,
                         long stride_c, int batch);

/* The same product by three plain loops, no packing and no memory: the fallback, and the
   double GEMM. */
void FN(gemm_reference)(int trans_a, int trans_b, int M, int N, int K, real alpha,
                        const real *A, long lda, const real *B, long ldb, real beta, real *C, long ldc);
