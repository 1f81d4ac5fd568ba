/* GEMM micro-kernels and packing routines, one set per ISA (float only).
   A packed A panel is [K][mr] (one column of the tile per k), a packed B panel is [K][nr].
   The kernels also read unpacked operands whose layout allows it: column k of the A tile at
   a + k*a_step, row k of the B panel at b + k*b_step (packed: a_step = mr, b_step = nr). */
#ifndef HERBS_KERNELS_GEMM_MICROKERNELS_H
#define HERBS_KERNELS_GEMM_MICROKERNELS_H

/* c[0:rows, 0:cols] (row stride ldc) = alpha * (a·b)[0:rows, 0:cols] + beta * c for one
   mr x nr tile, rows <= mr, cols <= nr; beta == 0 never reads c, nothing outside is touched.
   The mr values of column k of a are a[k*a_step + 0:mr], the nr of row k of b b[k*b_step + 0:nr]. */
typedef void (*gemm_microkernel_fn)(int K, const float *a, long a_step, const float *b, long b_step, float *c,
                                    long ldc, float alpha, float beta, int rows, int cols);

/* The same for mr rows of A read in place, row i at a + i*lda (k contiguous), of which rows
   first..mr-1 of c are stored (an edge stripe reads the last mr rows of A and stores its own). */
typedef void (*gemm_microkernel_rows_fn)(int K, const float *a, long lda, const float *b, long b_step, float *c,
                                         long ldc, float alpha, float beta, int first, int cols);

/* dst[ceil(m/mr)][k][mr] <- op(A)[0:m, 0:k], op(A) = trans ? Aᵀ : A; rows beyond m are zero. */
typedef void (*gemm_pack_a_fn)(int trans, int m, int k, const float *A, long lda, float *dst);

/* dst[ceil(n/nr)][k][nr] <- op(B)[0:k, 0:n], op(B) = trans ? Bᵀ : B; columns beyond n are zero. */
typedef void (*gemm_pack_b_fn)(int trans, int n, int k, const float *B, long ldb, float *dst);

typedef struct {
    const char *name;
    int mr, nr;     /* register tile */
    int kc, nc;     /* largest cache blocks: B block kc*nc in L2, A panel kc*mr in L1 */
    gemm_microkernel_fn run;
    gemm_microkernel_rows_fn run_rows;
    gemm_pack_a_fn pack_a;
    gemm_pack_b_fn pack_b;
} gemm_microkernel;

extern const gemm_microkernel gemm_microkernel_avx512;
extern const gemm_microkernel gemm_microkernel_avx2;
extern const gemm_microkernel gemm_microkernel_portable;

/* The micro-kernel of the current ISA (herbs_isa_current). */
const gemm_microkernel *gemm_microkernel_current(void);

/* Packing in plain C for any tile (gemm_pack.c), for the ISAs without their own. */
void gemm_pack_a_generic(int mr, int trans, int m, int k, const float *A, long lda, float *dst);
void gemm_pack_b_generic(int nr, int trans, int n, int k, const float *B, long ldb, float *dst);

#endif
