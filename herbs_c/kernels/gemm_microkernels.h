/* GEMM micro-kernels and packing routines, one set per ISA and precision (fp32 or bf16), all
   run by the one driver of gemm.c. Operands are fp32 in memory; a kernel's packers turn them
   into its panels of `elem`-byte elements (fp32, or bf16 rounded while packing), with K
   rounded up to the kernel's k unit `ku` (zeros beyond K):
     fp32 (ku 1):             A panel [K][mr], B panel [K][nr];
     bf16 VNNI (ku 2):        A panel [K/2][mr][2], B panel [K/2][nr][2] (pairs of k);
     bf16 AMX (ku 32):        A panel [K/32][mr][32] (rows of 16x32 A tiles), B panel VNNI.
   The fp32 kernels also read unpacked operands whose layout allows it: column k of the A tile
   at a + k*a_step, row k of the B panel at b + k*b_step (packed: a_step = mr, b_step = nr);
   the bf16 kernels read packed panels only (run_rows NULL). A bf16 kernel also takes operands
   already in bf16 (uint16 bit patterns), packed without rounding (pack_a_from_bf16,
   pack_b_from_bf16), and rows of such an A read in place by a kernel that can (run_rows_bf16). */
#ifndef HERBS_KERNELS_GEMM_MICROKERNELS_H
#define HERBS_KERNELS_GEMM_MICROKERNELS_H

#include <stdint.h>

#include "kernels/gemm_bf16.h"

/* gemm_affine's per-column step on a finished tile (affine.h): y·scale[j] + shift[j], then ReLU;
   scale and shift start at the tile's first column (NULL: none). */
typedef struct {
    const float *scale, *shift;
    int relu;
} gemm_tile_step;

/* c[0:rows, 0:cols] (row stride ldc) = alpha * (a·b)[0:rows, 0:cols] + beta * c for one
   mr x nr tile, rows <= mr, cols <= nr, then the step on what was stored (step NULL: none);
   beta == 0 never reads c, nothing outside is touched. The mr values of column k of a are
   a[k*a_step + 0:mr], the nr of row k of b b[k*b_step + 0:nr] (fp32; a bf16 kernel reads its
   packed panels of depth K, ignoring the steps). */
typedef void (*gemm_microkernel_fn)(int K, const void *a, long a_step, const void *b, long b_step, float *c,
                                    long ldc, float alpha, float beta, int rows, int cols, const gemm_tile_step *step);

/* The same for mr rows of A read in place, row i at a + i*lda (k contiguous), of which rows
   first..mr-1 of c are stored (an edge stripe reads the last mr rows of A and stores its own). */
typedef void (*gemm_microkernel_rows_fn)(int K, const float *a, long lda, const void *b, long b_step, float *c,
                                         long ldc, float alpha, float beta, int first, int cols,
                                         const gemm_tile_step *step);

/* The same for rows <= mr rows of a bf16 A read in place (row i at a + i*lda, K even: pairs of k),
   all of them stored: no row of A outside the tile is read. */
typedef void (*gemm_microkernel_rows_bf16_fn)(int K, const uint16_t *a, long lda, const void *b, float *c, long ldc,
                                              float alpha, float beta, int rows, int cols,
                                              const gemm_tile_step *step);

/* The step (NULL: none) on rows first..rows-1, cols columns of a stored tile: for kernels that
   do not fuse it into their stores. */
void gemm_tile_step_apply(const gemm_tile_step *step, float *c, long ldc, int first, int rows, int cols);

/* dst[ceil(m/mr)] panels <- op(A)[0:m, 0:k], op(A) = trans ? Aᵀ : A; rows beyond m are zero. */
typedef void (*gemm_pack_a_fn)(int trans, int m, int k, const float *A, long lda, void *dst);


/* dst[ceil(n/nr)] panels <- op(B)[0:k, 0:n], op(B) = trans ? Bᵀ : B; columns beyond n are zero. */
typedef void (*gemm_pack_b_fn)(int trans, int n, int k, const float *B, long ldb, void *dst);

/* The same two from an operand already in bf16 (uint16 bit patterns): copied, not rounded. */
typedef void (*gemm_pack_from_bf16_fn)(int trans, int m_or_n, int k, const uint16_t *X, long ldx, void *dst);

/* The pack-free product of the kernel's precision, for when pack buffers cannot be had. */
typedef void (*gemm_reference_fn)(int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A,
                                  long lda, const float *B, long ldb, float beta, float *C, long ldc);

typedef struct {
    const char *name;
    int mr, nr;     /* register tile */
    int kc, nc;     /* largest cache blocks: B block kc*nc in L2, A panel kc*mr in L1 */
    int elem, ku;   /* bytes of a packed element; packed depths are multiples of ku */
    int edge_rows;  /* 1: a tile of rows < mr (packed A, or a bf16 A in place) costs about its rows, so
                       threads may share rows anywhere */
    gemm_microkernel_fn run;
    gemm_microkernel_rows_fn run_rows; /* NULL: operands are always packed */
    gemm_pack_a_fn pack_a;
    gemm_pack_b_fn pack_b;
    gemm_pack_from_bf16_fn pack_a_from_bf16, pack_b_from_bf16; /* bf16 kernels (else NULL) */
    gemm_microkernel_rows_bf16_fn run_rows_bf16; /* NULL: a bf16 A is packed */
    gemm_reference_fn reference;
    void (*begin)(void), (*end)(void); /* NULL or run by each thread before and after its kernels */
} gemm_microkernel;

extern const gemm_microkernel gemm_microkernel_avx512;
extern const gemm_microkernel gemm_microkernel_avx2;
extern const gemm_microkernel gemm_microkernel_portable;
extern const gemm_microkernel gemm_microkernel_amx_bf16;
extern const gemm_microkernel gemm_microkernel_avx512_bf16;
extern const gemm_microkernel gemm_microkernel_portable_bf16;

/* The cache blocks (kc, nc) the driver uses with uk on this CPU: its own, or its
   microarchitecture's (gemm.c). */
void gemm_cache_blocks(const gemm_microkernel *uk, int *kc, int *nc);

/* The micro-kernel of the current ISA of `precision` (herbs_isa_current, herbs_bf16_isa_current). */
const gemm_microkernel *gemm_microkernel_for(herbs_precision precision);

/* The fp32 one. */
const gemm_microkernel *gemm_microkernel_current(void);

/* Packing in plain C for any tile (gemm_pack.c), for the ISAs without their own: fp32 panels,
   and bf16 panels [depth/ku][mr][ku], depth = k rounded up to `unit` (ku 2: the VNNI layout
   of k pairs; the AMX kernel's A has ku 32, its B ku 2, both unit 32). */
void gemm_pack_a_generic(int mr, int trans, int m, int k, const float *A, long lda, float *dst);
void gemm_pack_b_generic(int nr, int trans, int n, int k, const float *B, long ldb, float *dst);
void gemm_pack_a_bf16(int mr, int ku, int unit, int trans, int m, int k, const float *A, long lda, void *dst);
void gemm_pack_b_bf16(int nr, int ku, int unit, int trans, int n, int k, const float *B, long ldb, void *dst);
/* The same panels from operands already in bf16: copied, not rounded. */
void gemm_pack_a_from_bf16(int mr, int ku, int unit, int trans, int m, int k, const uint16_t *A, long lda, void *dst);
void gemm_pack_b_from_bf16(int nr, int ku, int unit, int trans, int n, int k, const uint16_t *B, long ldb, void *dst);

/* gemm_pack_b_bf16 and gemm_pack_b_from_bf16 (B_bf16) for 32-column panels (nr 32, ku 2) with
   AVX512-BF16 instructions: the B packing of the AVX512-BF16 and AMX kernels. Only where the CPU
   has AVX512-BF16. */
void gemm_pack_b_bf16_avx512(int unit, int trans, int n, int k, const void *B, int B_bf16, long ldb, void *dst);

/* The bf16 product by plain loops on rounded operands (the bf16 kernels' reference), and the
   same on operands that may be bf16 already (a_bf16, b_bf16: uint16 bit patterns). */
void gemm_reference_bf16(int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A, long lda,
                         const float *B, long ldb, float beta, float *C, long ldc);
void gemm_reference_bf16_inputs(int trans_a, int trans_b, int M, int N, int K, float alpha, const void *A, int a_bf16,
                                long lda, const void *B, int b_bf16, long ldb, float beta, float *C, long ldc);

#endif
