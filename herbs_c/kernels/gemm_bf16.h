/* The GEMM at a precision, and weights packed once. Operands are fp32 in memory; packing rounds them to
   bf16 (round to nearest even, NaN stays NaN) and the micro-kernel multiplies in bf16 with fp32
   accumulation into the fp32 C. The micro-kernel of the current bf16 ISA (herbs_bf16_isa_current:
   AMX, AVX512-BF16, or portable C emulating the rounding) runs in the fp32 GEMM's driver.
   Not templated: there is no double twin. */
#ifndef HERBS_KERNELS_GEMM_BF16_H
#define HERBS_KERNELS_GEMM_BF16_H

#include <stddef.h>
#include <stdint.h>

#include "core/error.h"

/* How a product computes: fp32 throughout, or bf16 operands with fp32 accumulation. */
typedef enum { HERBS_FP32 = 0, HERBS_BF16 = 1 } herbs_precision;
#define HERBS_PRECISIONS 2

/* gemm_affine (gemm.h) at precision p: HERBS_FP32 is gemm_affine itself; HERBS_BF16 computes
   alpha * bf16(op(A)) · bf16(op(B)) with fp32 accumulation, then beta·C and the per-column step. */
void gemm_affine_at(herbs_precision p, int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A,
                    long lda, const float *B, long ldb, float beta, float *C, long ldc, const float *scale,
                    const float *shift, int relu);

/* gemm_at and gemm_batched_at, the products at a precision, are in gemm.h (double twins too). */

/* gemm_affine_at(HERBS_BF16) with either operand already in bf16: A (a_bf16) or B (b_bf16) of bf16
   bit patterns (uint16), transposed or not, row strides in elements. The same bits as on the fp32
   operands holding those values, from half the bytes and without rounding again: an operand
   rounded once serves several products (a gradient dY serves dX = dY·W and dW = dYᵀ·X). */
void gemm_bf16_inputs(int trans_a, int trans_b, int M, int N, int K, float alpha, const void *A, int a_bf16, long lda,
                      const void *B, int b_bf16, long ldb, float beta, float *C, long ldc, const float *scale,
                      const float *shift, int relu);

/* --- B packed once (a weight): op(B)[K,N] in the current micro-kernel's panels ------------- */


/* Bytes of the pack of a K x N op(B) for the current micro-kernel of `precision`. */
size_t gemm_prepack_b_size(herbs_precision precision, int N, int K);

/* dst (gemm_prepack_b_size bytes, any alignment) <- op(B)[0:K, 0:N], op(B) = trans_b ? Bᵀ : B,
   rounded to bf16 for HERBS_BF16. The pack records the micro-kernel that made it, which
   gemm_prepacked then uses (a pack stays valid when the ISA selection changes). */
void gemm_prepack_b(herbs_precision precision, int trans_b, int N, int K, const float *B, long ldb, void *dst);

/* Whether `bytes` bytes at `packed` are a pack of gemm_prepack_b for this N and K. */
int gemm_prepack_b_matches(const void *packed, size_t bytes, int N, int K);

/* The most bytes gemm_prepack_b_size gives for `precision` under any of its kernels (room for a
   pack whichever kernel is current when it is made). */
size_t gemm_prepack_b_size_any(herbs_precision precision, int N, int K);

/* Whether a pack (gemm_prepack_b) was made by the current kernel of its precision. */
int gemm_prepack_b_is_current(const void *packed);

/* gemm_affine_at (in the precision of the pack) with op(B) the packed one;
   HERBS_ERR_NOMEM (C unspecified) when no memory for packing A could be had. */
herbs_status gemm_prepacked(int trans_a, int M, int N, int K, float alpha, const float *A, long lda,
                            const void *packed, float beta, float *C, long ldc, const float *scale,
                            const float *shift, int relu);

/* gemm_prepacked on an A already in bf16: A [M, K] rows of bf16 bit patterns (row stride lda), the
   pack a HERBS_BF16 one (else HERBS_ERR_VALUE). The same bits as gemm_prepacked on the fp32 A
   whose values these are: an activation that only feeds products can be stored in half the bytes
   and skips the rounding of the A packing (a kernel that can reads it in place, unpacked). */
herbs_status gemm_prepacked_bf16_rows(int M, int N, int K, float alpha, const uint16_t *A, long lda,
                                      const void *packed, float beta, float *C, long ldc, const float *scale,
                                      const float *shift, int relu);

/* The activation a product's bf16 output goes through (gemm_prepacked_bf16_activation), and a span of
   it: out[i0:i1] = bf16(act(inp[i0:i1])) on the calling thread (activations.h's bf16_activation_span). */
typedef enum { HERBS_BF16_RELU, HERBS_BF16_GELU } herbs_bf16_activation;
typedef void (*bf16_activation_span_fn)(uint16_t *out, const float *inp, size_t i0, size_t i1);

/* gemm_prepacked at bf16 (the pack a HERBS_BF16 one, else HERBS_ERR_VALUE; K >= 1) on A fp32 or (a_bf16)
   rows of bf16, for an output that only feeds an activation and then bf16 products: H[M, N] (row stride
   ldh) = bf16(act(op(A)·B + shift)), the bits of relu_forward_bf16 or gelu_forward_bf16 on the fp32
   output, and C (NULL: not kept) that fp32 output. Each stripe of rows goes through the activation as
   soon as its tiles are stored, while they are in cache: no pass over C in memory, and with C NULL
   none of its stores either. HERBS_ERR_NOMEM (H unspecified) when no memory for packing could be had. */
herbs_status gemm_prepacked_bf16_activation(int M, int N, int K, const void *A, int a_bf16, long lda,
                                            const void *packed, float *C, long ldc, const float *shift,
                                            herbs_bf16_activation act, uint16_t *H, long ldh);

/* gemm_prepacked (in the precision of the pack; K >= 1) on A fp32 or (a_bf16, with a bf16 pack) rows of
   bf16, its output added to a residual: C[M, N] = (op(A)·B + shift) + R, R [M, N] (row stride ldr, not
   C), the bits of the product into C and residual_add_forward after it, each stripe of rows added as
   soon as its tiles are stored (no pass over C in memory). HERBS_ERR_NOMEM as gemm_prepacked's. */
herbs_status gemm_prepacked_residual(int M, int N, int K, const void *A, int a_bf16, long lda, const void *packed,
                                     float *C, long ldc, const float *shift, const float *R, long ldr);

/* The wall time of the products of each shape, for finding which ones run below the peak inside a
   model's steps (benchmarks/profile_gemms.py): between gemm_profile_start (which forgets what was
   kept) and gemm_profile_stop, every product that starts outside a parallel region adds its seconds
   to its shape's entry, for the first GEMM_PROFILE_SHAPES shapes; not kept: the products a parallel
   region runs on each thread (batch items handed out whole, Swin's first-stage MLP by row chunks). */
typedef struct {
    int M, N, K, trans_a, trans_b;
    int a_bf16, b_bf16; /* an operand given in bf16 */
    int packed;         /* B packed once (a weight) */
    int bf16;           /* the bf16 micro-kernel (else the fp32 one) */
    long calls;
    double seconds;
} gemm_profile_entry;
#define GEMM_PROFILE_SHAPES 1024

void gemm_profile_start(void);
void gemm_profile_stop(void);
/* Copies the entries kept into out; returns their number. */
int gemm_profile_entries(gemm_profile_entry out[GEMM_PROFILE_SHAPES]);

#endif
