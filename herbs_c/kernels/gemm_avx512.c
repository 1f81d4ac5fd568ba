/* AVX-512 micro-kernels, fp32 and bf16, and the fp32 packing. The tile is 14x32 in 28 zmm
   accumulators: per k, two B vectors and 14 broadcasts of A feed 28 FMAs (a broadcast from
   memory is a load-port uop only, so one broadcast feeding two FMAs beats FMAs with an embedded
   {1to16} operand, which would load every A element twice: on Zen 4 the embedded form was 2-7%
   faster with A and B in L1, 0-2% slower in the model's products). fp32 packing transposes 16x16
   blocks in registers. The bf16 kernel (AVX512-BF16) is the same tile over pairs of k: per pair,
   two B vectors of 16 column pairs and 14 broadcast 32-bit A pairs feed 28 vdpbf16ps. */
#include "kernels/gemm_microkernels.h"
#include "kernels/kernels.h"

#if defined(__x86_64__)
#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#include "kernels/transpose_avx512.h"

#define MR 14
#define NR 32
/* k steps (pairs, in bf16) ahead of the FMAs at which the B panel's two lines of a step are asked for:
   the hardware prefetcher alone left the model's products 1-3% slower on Zen 4 (24 and 48 measured
   alike, 8 half as good) */
#define B_AHEAD 24
#define TARGET __attribute__((target("avx512f,prfchw")))
#define TARGET_BF16 __attribute__((target("avx512f,avx512bw,avx512bf16,prfchw")))

/* The first n lanes of 16 (n may be <= 0 or >= 16). */
TARGET static inline __mmask16 lanes(int n)
{
    return n >= 16 ? (__mmask16)0xFFFF : n <= 0 ? (__mmask16)0 : (__mmask16)((1u << n) - 1);
}

/* The part of a tile step done in registers as the tile is stored: a shift (a bias) and the ReLU,
   which round as affine_rows does in every build (one add, one max). A step with a scale (a
   folded BatchNorm) runs as affine_rows after the store instead, so that y·scale + shift rounds
   as BatchNorm's eval pass does whether or not the build contracts it into an fma. */
typedef struct {
    int shift, relu; /* which parts apply */
    __m512 t[2];     /* the shift of columns 0..15 and 16..31 */
} step_vectors;

TARGET static inline step_vectors step_vectors_of(const gemm_tile_step *step, __mmask16 m0, __mmask16 m1)
{
    step_vectors v = {0};
    if (!step || step->scale)
        return v;
    v.shift = step->shift != NULL, v.relu = step->relu;
    if (v.shift) {
        v.t[0] = _mm512_maskz_loadu_ps(m0, step->shift);
        v.t[1] = _mm512_maskz_loadu_ps(m1, step->shift + 16);
    }
    return v;
}

/* y + shift, then ReLU: max(0, y) with y second, as MAXPS returns its second operand when either
   is NaN, so NaN stays. */
TARGET static inline __m512 step_apply(__m512 y, const step_vectors *v, int half)
{
    if (v->shift)
        y = _mm512_add_ps(y, v->t[half]);
    return v->relu ? _mm512_max_ps(_mm512_setzero_ps(), y) : y;
}

/* c[i, 0:32] = alpha * acc + beta * c (beta == 0: c not read), then the step, columns masked by
   m0, m1. */
TARGET static inline void store_row(float *c, __m512 acc0, __m512 acc1, __mmask16 m0, __mmask16 m1,
                                    __m512 va, float beta, const step_vectors *step)
{
    __m512 y0 = _mm512_mul_ps(va, acc0), y1 = _mm512_mul_ps(va, acc1);
    if (beta != 0.0f) {
        __m512 vb = _mm512_set1_ps(beta);
        __m512 c0 = _mm512_maskz_loadu_ps(m0, c), c1 = _mm512_maskz_loadu_ps(m1, c + 16);
        y0 = _mm512_fmadd_ps(va, acc0, _mm512_mul_ps(vb, c0));
        y1 = _mm512_fmadd_ps(va, acc1, _mm512_mul_ps(vb, c1));
    }
    _mm512_mask_storeu_ps(c, m0, step_apply(y0, step, 0));
    _mm512_mask_storeu_ps(c + 16, m1, step_apply(y1, step, 1));
}

/* The two lines of a k step of a B panel (32 floats or 32 bf16 pairs), B_AHEAD steps ahead. */
TARGET static inline void prefetch_b_step(const void *b)
{
    _mm_prefetch((const char *)b, _MM_HINT_T0);
    _mm_prefetch((const char *)b + 64, _MM_HINT_T0);
}

/* The tile of C is needed at the end of the kernel: fetch it while the FMAs run. */
TARGET static inline void prefetch_tile(const float *c, long ldc, int rows)
{
    for (int i = 0; i < rows; i++) {
        __builtin_prefetch(c + i * ldc, 1, 3);
        __builtin_prefetch(c + i * ldc + NR - 1, 1, 3);
    }
}

/* c[first:rows, 0:cols] = alpha * acc + beta * c, then the step (NULL: none): a bias and ReLU
   in registers, a scale by affine_rows after the store. */
TARGET static inline void store_tile(__m512 acc[MR][2], float *c, long ldc, float alpha, float beta, int first,
                                     int rows, int cols, const gemm_tile_step *step)
{
    const __m512 va = _mm512_set1_ps(alpha);
    const __mmask16 m0 = lanes(cols), m1 = lanes(cols - 16);
    const step_vectors sv = step_vectors_of(step, m0, m1);
#pragma GCC unroll 14
    for (int i = 0; i < MR; i++)
        if (i >= first && i < rows)
            store_row(c + i * ldc, acc[i][0], acc[i][1], m0, m1, va, beta, &sv);
    if (step && step->scale)
        gemm_tile_step_apply(step, c, ldc, first, rows, cols);
}

/* acc[0:R][32] += a[i] * b row by row of B: 2 B vectors and R broadcasts make 2R FMAs. */
#define RANK1_UPDATE(acc, b, a_of_i, R)                                                                          \
    do {                                                                                                         \
        __m512 b0_ = _mm512_loadu_ps(b), b1_ = _mm512_loadu_ps((b) + 16);                                       \
        _Pragma("GCC unroll 14") for (int i = 0; i < (R); i++)                                                  \
        {                                                                                                        \
            __m512 ai_ = _mm512_set1_ps(a_of_i);                                                                 \
            acc[i][0] = _mm512_fmadd_ps(ai_, b0_, acc[i][0]);                                                    \
            acc[i][1] = _mm512_fmadd_ps(ai_, b1_, acc[i][1]);                                                    \
        }                                                                                                        \
    } while (0)

/* body(R) for the rows of a tile, R constant in each instantiation: all 14 at once, or an edge tile of
   fewer in one pass of that many rows, so that the edge stripe of a product whose M is not a multiple
   of 14 costs about its rows and streams its B panel once. */
#define BY_ROW_TILES(rows, body)                                                                                 \
    do {                                                                                                         \
        switch (rows) {                                                                                          \
        case 14: body(14); break; case 13: body(13); break; case 12: body(12); break; case 11: body(11); break; \
        case 10: body(10); break; case 9: body(9); break;   case 8: body(8); break;   case 7: body(7); break;   \
        case 6: body(6); break;   case 5: body(5); break;   case 4: body(4); break;   case 3: body(3); break;   \
        case 2: body(2); break;   default: body(1); break;                                                      \
        }                                                                                                        \
    } while (0)

/* c[0:R, cols] = alpha * (a·b) + beta * c for the first R rows of the tile, A by columns (packed:
   a_step = 14), B by rows (packed: b_step = 32); R constant. */
TARGET static inline __attribute__((always_inline)) void tile_rows(int K, const float *a, long a_step, const float *b,
                                                                   long b_step, float *c, long ldc, float alpha,
                                                                   float beta, int cols, const gemm_tile_step *step,
                                                                   const int R)
{
    prefetch_tile(c, ldc, R);
    __m512 acc[MR][2];
#pragma GCC unroll 14
    for (int i = 0; i < R; i++)
        acc[i][0] = acc[i][1] = _mm512_setzero_ps();
#pragma GCC unroll 2
    for (int k = 0; k < K; k++, a += a_step, b += b_step) {
        prefetch_b_step(b + B_AHEAD * b_step);
        RANK1_UPDATE(acc, b, a[i], R);
    }
    store_tile(acc, c, ldc, alpha, beta, 0, R, cols, step);
}

/* c[rows, cols] = alpha * (a·b) + beta * c: the 14x32 register tile (rows of it), A by columns
   (packed: a_step = 14), B by rows (packed: b_step = 32). */
TARGET static void kernel_14x32(int K, const void *a_tile, long a_step, const void *b_panel, long b_step, float *c,
                                long ldc, float alpha, float beta, int rows, int cols, const gemm_tile_step *step)
{
#define TILE_ROWS(R) tile_rows(K, a_tile, a_step, b_panel, b_step, c, ldc, alpha, beta, cols, step, R)
    BY_ROW_TILES(rows, TILE_ROWS);
#undef TILE_ROWS
}

/* c[first:14, cols] = alpha * (a·b) + beta * c with the 14 rows of A in place at a + i*lda.
   Rows are addressed from two bases and offsets lda * {0, 1, 2, 3, 4, 5, 6}, so that nothing spills. */
TARGET static void kernel_14x32_rows(int K, const float *a, long lda, const void *b_panel, long b_step, float *c,
                                     long ldc, float alpha, float beta, int first, int cols,
                                     const gemm_tile_step *step)
{
    const float *b = b_panel;
    prefetch_tile(c + first * ldc, ldc, MR - first);
    __m512 acc[MR][2];
#pragma GCC unroll 14
    for (int i = 0; i < MR; i++)
        acc[i][0] = acc[i][1] = _mm512_setzero_ps();
    const float *p0 = a, *p7 = a + 7 * lda;
    const long l3 = 3 * lda, l5 = 5 * lda;
    for (int k = 0; k < K; k++, p0++, p7++, b += b_step) {
        const float *row[MR] = {p0, p0 + lda, p0 + 2 * lda, p0 + l3, p0 + 4 * lda, p0 + l5, p0 + 2 * l3,
                                p7, p7 + lda, p7 + 2 * lda, p7 + l3, p7 + 4 * lda, p7 + l5, p7 + 2 * l3};
        prefetch_b_step(b + B_AHEAD * b_step);
        RANK1_UPDATE(acc, b, *row[i], MR);
    }
    store_tile(acc, c, ldc, alpha, beta, first, MR, cols, step);
}

/* r[0:16] <- rows src + i*ld, 16 floats from column 0 (masked by kmask), rows >= rows zero. */
TARGET static inline void load_rows16(const float *src, long ld, int rows, __mmask16 kmask, __m512 r[16])
{
#pragma GCC unroll 16
    for (int i = 0; i < 16; i++)
        r[i] = i < rows ? _mm512_maskz_loadu_ps(kmask, src + i * ld) : _mm512_setzero_ps();
}

/* dst[k][14] <- A[0:rows, 0:k]ᵀ (A row-major, rows <= 14): 16x16 transposes, 14 lanes stored. */
TARGET static void pack_a_rows(int rows, int k, const float *A, long lda, float *dst)
{
    for (int k0 = 0; k0 < k; k0 += 16) {
        __m512 r[16];
        load_rows16(A + k0, lda, rows, lanes(k - k0), r);
        transpose16(r);
#pragma GCC unroll 16
        for (int kk = 0; kk < 16; kk++)
            if (k0 + kk < k)
                _mm512_mask_storeu_ps(dst + (size_t)(k0 + kk) * MR, lanes(MR), r[kk]);
    }
}

/* dst[ceil(m/14)][k][14] <- rows of A[0:k, 0:m] (A holds op(A) transposed): row by row of A,
   which the hardware prefetcher streams, each row cut into the panels. */
TARGET static void pack_a_cols(int m, int k, const float *A, long lda, float *dst)
{
    for (int kk = 0; kk < k; kk++) {
        const float *src = A + (size_t)kk * lda;
        for (int i0 = 0; i0 < m; i0 += MR)
            _mm512_mask_storeu_ps(dst + (size_t)i0 * k + (size_t)kk * MR, lanes(MR),
                                  _mm512_maskz_loadu_ps(lanes(m - i0), src + i0));
    }
}

TARGET static void pack_a(int trans, int m, int k, const float *A, long lda, void *panels)
{
    float *dst = panels;
    if (trans) {
        pack_a_cols(m, k, A, lda, dst);
        return;
    }
    for (int i0 = 0; i0 < m; i0 += MR, dst += (size_t)k * MR)
        pack_a_rows(m - i0 < MR ? m - i0 : MR, k, A + (size_t)i0 * lda, lda, dst);
}

/* dst[k][32] <- B[0:cols, 0:k]ᵀ (B holds op(B) transposed, cols <= 32): two 16-row halves. */
TARGET static void pack_b_rows(int cols, int k, const float *B, long ldb, float *dst)
{
    for (int half = 0; half < 2; half++) {
        const float *src = B + (size_t)16 * half * ldb;
        for (int k0 = 0; k0 < k; k0 += 16) {
            __m512 r[16];
            load_rows16(src + k0, ldb, cols - 16 * half, lanes(k - k0), r);
            transpose16(r);
#pragma GCC unroll 16
            for (int kk = 0; kk < 16; kk++)
                if (k0 + kk < k)
                    _mm512_storeu_ps(dst + (size_t)(k0 + kk) * NR + 16 * half, r[kk]);
        }
    }
}

/* dst[ceil(n/32)][k][32] <- B[0:k, 0:n] (B row-major), zero beyond n: row by row of B, which
   the hardware prefetcher streams, each row cut into the panels. */
TARGET static void pack_b_cols(int n, int k, const float *B, long ldb, float *dst)
{
    for (int kk = 0; kk < k; kk++) {
        const float *src = B + (size_t)kk * ldb;
        for (int j0 = 0; j0 < n; j0 += NR) {
            float *panel_row = dst + (size_t)j0 * k + (size_t)kk * NR;
            _mm512_storeu_ps(panel_row, _mm512_maskz_loadu_ps(lanes(n - j0), src + j0));
            _mm512_storeu_ps(panel_row + 16, _mm512_maskz_loadu_ps(lanes(n - j0 - 16), src + j0 + 16));
        }
    }
}

TARGET static void pack_b(int trans, int n, int k, const float *B, long ldb, void *panels)
{
    float *dst = panels;
    if (!trans) {
        pack_b_cols(n, k, B, ldb, dst);
        return;
    }
    for (int j0 = 0; j0 < n; j0 += NR, dst += (size_t)k * NR)
        pack_b_rows(n - j0 < NR ? n - j0 : NR, k, B + (size_t)j0 * ldb, ldb, dst);
}

const gemm_microkernel gemm_microkernel_avx512 = {
    .name = "avx512 14x32", .mr = MR, .nr = NR, .kc = 256, .nc = 1024, .elem = sizeof(float), .ku = 1,
    .edge_rows = 1,
    .run = kernel_14x32, .run_rows = kernel_14x32_rows, .pack_a = pack_a, .pack_b = pack_b,
    .reference = gemm_reference};

typedef int32_t bf16_pair __attribute__((may_alias)); /* two bf16 of one row, k and k + 1 */

/* acc[0:R][32] += the pair of row i of A (a_of_i, 32 bits) times the B pair row at b: 2 B vectors
   and R broadcasts make 2R vdpbf16ps. */
#define PAIR_UPDATE(acc, b, a_of_i, R)                                                                           \
    do {                                                                                                         \
        const __m512bh b0_ = (__m512bh)_mm512_loadu_si512(b), b1_ = (__m512bh)_mm512_loadu_si512((b) + NR);     \
        _Pragma("GCC unroll 14") for (int i = 0; i < (R); i++)                                                  \
        {                                                                                                        \
            const __m512bh ai_ = (__m512bh)_mm512_set1_epi32(a_of_i);                                            \
            acc[i][0] = _mm512_dpbf16_ps(acc[i][0], ai_, b0_);                                                   \
            acc[i][1] = _mm512_dpbf16_ps(acc[i][1], ai_, b1_);                                                   \
        }                                                                                                        \
    } while (0)

/* c[0:R, cols] = alpha * (a·b) + beta * c for the first R rows of the tile on bf16 panels,
   a [K/2][14][2], b [K/2][32][2]; R constant. */
TARGET_BF16 static inline __attribute__((always_inline)) void bf16_tile_rows(int K, const bf16_pair *a,
                                                                             const uint16_t *b, float *c, long ldc,
                                                                             float alpha, float beta, int cols,
                                                                             const gemm_tile_step *step, const int R)
{
    prefetch_tile(c, ldc, R);
    __m512 acc[MR][2];
#pragma GCC unroll 14
    for (int i = 0; i < R; i++)
        acc[i][0] = acc[i][1] = _mm512_setzero_ps();
#pragma GCC unroll 2
    for (int p = 0; p < (K + 1) / 2; p++, a += MR, b += 2 * NR) {
        prefetch_b_step(b + 2 * NR * B_AHEAD);
        PAIR_UPDATE(acc, b, a[i], R);
    }
    store_tile(acc, c, ldc, alpha, beta, 0, R, cols, step);
}

/* c[rows, cols] = alpha * (a·b) + beta * c: the 14x32 tile (rows of it) on bf16 panels, a
   [K/2][14][2], b [K/2][32][2] (the steps are not used: bf16 operands are always packed). */
TARGET_BF16 static void kernel_bf16_14x32(int K, const void *a_panel, long a_step, const void *b_panel, long b_step,
                                          float *c, long ldc, float alpha, float beta, int rows, int cols,
                                          const gemm_tile_step *step)
{
#define TILE_ROWS(R) bf16_tile_rows(K, a_panel, b_panel, c, ldc, alpha, beta, cols, step, R)
    BY_ROW_TILES(rows, TILE_ROWS);
#undef TILE_ROWS
}

/* c[0:R, cols] = alpha * (a·b) + beta * c with R rows of a bf16 A in place at a + i*lda (K even),
   addressed from two bases and offsets lda * {0, 1, 2, 3, 4, 5, 6} (nothing spills); b a packed
   panel [K/2][32][2]; R constant. */
TARGET_BF16 static inline __attribute__((always_inline)) void bf16_rows_in_place(int K, const uint16_t *a, long lda,
                                                                                 const uint16_t *b, float *c, long ldc,
                                                                                 float alpha, float beta, int cols,
                                                                                 const gemm_tile_step *step,
                                                                                 const int R)
{
    prefetch_tile(c, ldc, R);
    __m512 acc[MR][2];
#pragma GCC unroll 14
    for (int i = 0; i < R; i++)
        acc[i][0] = acc[i][1] = _mm512_setzero_ps();
    const uint16_t *p0 = a, *p7 = a + 7 * lda;
    const long l3 = 3 * lda, l5 = 5 * lda;
    for (int p = 0; p < K / 2; p++, p0 += 2, p7 += 2, b += 2 * NR) {
        const uint16_t *row[MR] = {p0, p0 + lda, p0 + 2 * lda, p0 + l3, p0 + 4 * lda, p0 + l5, p0 + 2 * l3,
                                   p7, p7 + lda, p7 + 2 * lda, p7 + l3, p7 + 4 * lda, p7 + l5, p7 + 2 * l3};
        prefetch_b_step(b + 2 * NR * B_AHEAD);
        PAIR_UPDATE(acc, b, *(const bf16_pair *)row[i], R);
    }
    store_tile(acc, c, ldc, alpha, beta, 0, R, cols, step);
}

/* c[0:rows, cols] = alpha * (a·b) + beta * c with rows <= 14 rows of a bf16 A in place (row i at
   a + i*lda, K even); b a packed panel [K/2][32][2]. */
TARGET_BF16 static void kernel_bf16_14x32_rows(int K, const uint16_t *a, long lda, const void *b_panel, float *c,
                                               long ldc, float alpha, float beta, int rows, int cols,
                                               const gemm_tile_step *step)
{
#define TILE_ROWS(R) bf16_rows_in_place(K, a, lda, b_panel, c, ldc, alpha, beta, cols, step, R)
    BY_ROW_TILES(rows, TILE_ROWS);
#undef TILE_ROWS
}

/* --- bf16 packing: VNNI panels [K/2][width][2] of k pairs (gemm_microkernels.h) ------------
   vcvtne2ps2bf16 rounds to nearest even like bf16_from_float, but reads fp32 denormals as zero
   (vdpbf16ps and tdpbf16ps read bf16 denormals as zero anyway). */

/* The 32 floats at x (lanes beyond `width` zero) as 32 bf16. */
TARGET_BF16 static inline __m512i bf16_row32(const float *x, int width)
{
    return (__m512i)_mm512_cvtne2ps_pbh(_mm512_maskz_loadu_ps(lanes(width - 16), x + 16),
                                        _mm512_maskz_loadu_ps(lanes(width), x));
}

/* The same from a row of X that is fp32 or (is_bf16) already bf16: element j at X + j. */
TARGET_BF16 static inline __m512i bf16_row32_of(const void *X, int is_bf16, size_t j, int width)
{
    if (!is_bf16)
        return bf16_row32((const float *)X + j, width);
    const __mmask32 m = width >= 32 ? ~(__mmask32)0 : width <= 0 ? 0 : (((__mmask32)1 << width) - 1);
    return _mm512_maskz_loadu_epi16(m, (const uint16_t *)X + j);
}

/* dst pair rows [kpairs][stride] (32-bit pairs) <- 16 rows of X (fp32, or bf16 with is_bf16; row
   stride ldx, k contiguous, rows >= rows zero), `store` lanes of each pair row: every 32 of k
   become 16 pairs per row, and a 16x16 transpose of pairs makes each pair's 16 rows one vector.
   Pairs beyond k are zero up to a multiple of 16 of them, and none is stored at or beyond kpairs. */
TARGET_BF16 static void pairs_from_rows(int rows, int k, const void *X, int is_bf16, long ldx, uint32_t *dst,
                                        int stride, int store, int kpairs)
{
    for (int k0 = 0; k0 < k; k0 += 32) {
        __m512 r[16];
#pragma GCC unroll 16
        for (int i = 0; i < 16; i++)
            r[i] = i < rows ? _mm512_castsi512_ps(bf16_row32_of(X, is_bf16, (size_t)i * ldx + k0, k - k0))
                            : _mm512_setzero_ps();
        transpose16(r);
#pragma GCC unroll 16
        for (int p = 0; p < 16; p++)
            if (k0 / 2 + p < kpairs)
                _mm512_mask_storeu_ps(dst + (size_t)(k0 / 2 + p) * stride, lanes(store), r[p]);
    }
}

/* The pairs (x[j], y[j]) of two rows of `width` elements, fp32 or (is_bf16) bf16 (y NULL: zeros),
   columns 0..15 in *lo and 16..31 in *hi. */
TARGET_BF16 static inline void pairs_of_two_rows(const void *x, const void *y, int is_bf16, int width, __m512i *lo,
                                                 __m512i *hi)
{
    const __m512i interleave_lo = _mm512_set_epi16(47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9, 40, 8, 39,
                                                   7, 38, 6, 37, 5, 36, 4, 35, 3, 34, 2, 33, 1, 32, 0);
    const __m512i interleave_hi = _mm512_add_epi16(interleave_lo, _mm512_set1_epi16(16));
    const __m512i bx = bf16_row32_of(x, is_bf16, 0, width);
    const __m512i by = y ? bf16_row32_of(y, is_bf16, 0, width) : _mm512_setzero_si512();
    *lo = _mm512_permutex2var_epi16(bx, interleave_lo, by);
    *hi = _mm512_permutex2var_epi16(bx, interleave_hi, by);
}

/* Panels [kpairs][width][2] of `width` <= 32 columns from the rows of X (fp32, or bf16 with
   is_bf16; row stride ldx): pair p is rows 2p and 2p + 1 (zero beyond k), columns col0.. . Panels
   of successive column blocks are width·kpairs pairs apart; rows are read in order, which the
   hardware prefetcher streams. */
TARGET_BF16 static void pairs_from_columns(int n, int k, const void *X, int is_bf16, long ldx, uint32_t *dst,
                                           int width, int kpairs)
{
    const size_t elem = is_bf16 ? sizeof(uint16_t) : sizeof(float);
    for (int p = 0; p < kpairs; p++) {
        const char *x = 2 * p < k ? (const char *)X + (size_t)2 * p * ldx * elem : NULL;
        const char *y = 2 * p + 1 < k ? x + ldx * elem : NULL;
        for (int j0 = 0; j0 < n; j0 += width) {
            uint32_t *row = dst + (size_t)j0 * kpairs + (size_t)p * width;
            __m512i lo = _mm512_setzero_si512(), hi = lo;
            if (x)
                pairs_of_two_rows(x + j0 * elem, y ? y + j0 * elem : NULL, is_bf16, n - j0 < width ? n - j0 : width,
                                  &lo, &hi);
            _mm512_mask_storeu_epi32(row, lanes(width), lo);
            if (width > 16)
                _mm512_mask_storeu_epi32(row + 16, lanes(width - 16), hi);
        }
    }
}

/* op(A)[m, k], A fp32 or (is_bf16) bf16 -> the A panels [K/2][14][2]; the depth is padded to
   pairs with zeros, and so are missing rows. A plain A: 14 rows at a time, transposed in pairs; a
   transposed A (op(A)'s columns are A's rows): pairs of A's rows interleaved. */
TARGET_BF16 static void pack_a_panels(int trans, int m, int k, const void *A, int is_bf16, long lda, void *dst)
{
    const int kpairs = (k + 1) / 2;
    const size_t elem = is_bf16 ? sizeof(uint16_t) : sizeof(float);
    uint32_t *out = dst;
    if (trans) {
        pairs_from_columns(m, k, A, is_bf16, lda, out, MR, kpairs);
        return;
    }
    for (int i0 = 0; i0 < m; i0 += MR, out += (size_t)MR * kpairs)
        pairs_from_rows(m - i0 < MR ? m - i0 : MR, k, (const char *)A + (size_t)i0 * lda * elem, is_bf16, lda, out, MR,
                        MR, kpairs);
}

static void pack_a_bf16(int trans, int m, int k, const float *A, long lda, void *dst)
{
    pack_a_panels(trans, m, k, A, 0, lda, dst);
}

static void pack_a_from_bf16(int trans, int m, int k, const uint16_t *A, long lda, void *dst)
{
    pack_a_panels(trans, m, k, A, 1, lda, dst);
}

void gemm_pack_b_bf16_avx512(int unit, int trans, int n, int k, const void *B, int B_bf16, long ldb, void *dst)
{
    const int kpairs = (k + unit - 1) / unit * unit / 2;
    const size_t elem = B_bf16 ? sizeof(uint16_t) : sizeof(float);
    uint32_t *out = dst;
    if (!trans) {
        pairs_from_columns(n, k, B, B_bf16, ldb, out, 32, kpairs);
        return;
    }
    for (int j0 = 0; j0 < n; j0 += 32, out += (size_t)32 * kpairs)
        for (int half = 0; half < 2; half++) { /* columns beyond n: zero rows */
            const int cols = n - j0 - 16 * half;
            pairs_from_rows(cols < 0 ? 0 : cols < 16 ? cols : 16, k,
                            (const char *)B + (size_t)(j0 + 16 * half) * ldb * elem, B_bf16, ldb, out + 16 * half, 32,
                            16, kpairs);
        }
}

static void pack_b_bf16(int trans, int n, int k, const float *B, long ldb, void *dst)
{
    gemm_pack_b_bf16_avx512(2, trans, n, k, B, 0, ldb, dst);
}

static void pack_b_from_bf16(int trans, int n, int k, const uint16_t *B, long ldb, void *dst)
{
    gemm_pack_b_bf16_avx512(2, trans, n, k, B, 1, ldb, dst);
}

const gemm_microkernel gemm_microkernel_avx512_bf16 = {
    .name = "avx512_bf16 14x32", .mr = MR, .nr = NR, .kc = 512, .nc = 1024, .elem = sizeof(uint16_t), .ku = 2,
    .edge_rows = 1,
    .run = kernel_bf16_14x32, .pack_a = pack_a_bf16, .pack_b = pack_b_bf16, .pack_a_from_bf16 = pack_a_from_bf16,
    .pack_b_from_bf16 = pack_b_from_bf16, .run_rows_bf16 = kernel_bf16_14x32_rows,
    .reference = gemm_reference_bf16};

#else
const gemm_microkernel gemm_microkernel_avx512 = {0};
const gemm_microkernel gemm_microkernel_avx512_bf16 = {0};
#endif
