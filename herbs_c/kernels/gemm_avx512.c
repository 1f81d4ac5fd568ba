/* AVX-512 micro-kernels, fp32 and bf16, and the fp32 packing. The tile is 14x32 in 28 zmm
   accumulators: per k, two B vectors and 14 broadcasts of A feed 28 FMAs (a broadcast from
   memory is a load-port uop only, so one broadcast feeding two FMAs beats FMAs with an embedded
   {1to16} operand, which would load every A element twice). fp32 packing transposes 16x16
   blocks in registers. The bf16 kernel (AVX512-BF16) is the same tile over pairs of k: per pair,
   two B vectors of 16 column pairs and 14 broadcast 32-bit A pairs feed 28 vdpbf16ps. */
#include "kernels/gemm_microkernels.h"
#include "kernels/kernels.h"

#if defined(__x86_64__)
#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#define MR 14
#define NR 32
#define TARGET __attribute__((target("avx512f,prfchw")))
#define TARGET_BF16 __attribute__((target("avx512f,avx512bw,avx512bf16,prfchw")))

/* The first n lanes of 16 (n may be <= 0 or >= 16). */
TARGET static inline __mmask16 lanes(int n)
{
    return n >= 16 ? (__mmask16)0xFFFF : n <= 0 ? (__mmask16)0 : (__mmask16)((1u << n) - 1);
}

/* c[i, 0:32] = alpha * acc + beta * c (beta == 0: c not read), columns masked by m0, m1. */
TARGET static inline void store_row(float *c, __m512 acc0, __m512 acc1, __mmask16 m0, __mmask16 m1,
                                    __m512 va, float beta)
{
    if (beta == 0.0f) {
        _mm512_mask_storeu_ps(c, m0, _mm512_mul_ps(va, acc0));
        _mm512_mask_storeu_ps(c + 16, m1, _mm512_mul_ps(va, acc1));
    } else {
        __m512 vb = _mm512_set1_ps(beta);
        __m512 c0 = _mm512_maskz_loadu_ps(m0, c), c1 = _mm512_maskz_loadu_ps(m1, c + 16);
        _mm512_mask_storeu_ps(c, m0, _mm512_fmadd_ps(va, acc0, _mm512_mul_ps(vb, c0)));
        _mm512_mask_storeu_ps(c + 16, m1, _mm512_fmadd_ps(va, acc1, _mm512_mul_ps(vb, c1)));
    }
}

/* The tile of C is needed at the end of the kernel: fetch it while the FMAs run. */
TARGET static inline void prefetch_tile(const float *c, long ldc, int rows)
{
    for (int i = 0; i < rows; i++) {
        __builtin_prefetch(c + i * ldc, 1, 3);
        __builtin_prefetch(c + i * ldc + NR - 1, 1, 3);
    }
}

/* c[first:rows, 0:cols] = alpha * acc + beta * c. */
TARGET static inline void store_tile(__m512 acc[MR][2], float *c, long ldc, float alpha, float beta, int first,
                                     int rows, int cols)
{
    const __m512 va = _mm512_set1_ps(alpha);
    const __mmask16 m0 = lanes(cols), m1 = lanes(cols - 16);
#pragma GCC unroll 14
    for (int i = 0; i < MR; i++)
        if (i >= first && i < rows)
            store_row(c + i * ldc, acc[i][0], acc[i][1], m0, m1, va, beta);
}

/* acc[14][32] += a[i] * b row by row of B: 2 B vectors and 14 broadcasts make 28 FMAs. */
#define RANK1_UPDATE(acc, b, a_of_i)                                                                             \
    do {                                                                                                         \
        __m512 b0_ = _mm512_loadu_ps(b), b1_ = _mm512_loadu_ps((b) + 16);                                       \
        _Pragma("GCC unroll 14") for (int i = 0; i < MR; i++)                                                   \
        {                                                                                                        \
            __m512 ai_ = _mm512_set1_ps(a_of_i);                                                                 \
            acc[i][0] = _mm512_fmadd_ps(ai_, b0_, acc[i][0]);                                                    \
            acc[i][1] = _mm512_fmadd_ps(ai_, b1_, acc[i][1]);                                                    \
        }                                                                                                        \
    } while (0)

/* c[rows, cols] = alpha * (a·b) + beta * c: the 14x32 register tile, A by columns (packed:
   a_step = 14), B by rows (packed: b_step = 32). */
TARGET static void kernel_14x32(int K, const void *a_tile, long a_step, const void *b_panel, long b_step, float *c,
                                long ldc, float alpha, float beta, int rows, int cols)
{
    const float *a = a_tile, *b = b_panel;
    prefetch_tile(c, ldc, rows);
    __m512 acc[MR][2];
#pragma GCC unroll 14
    for (int i = 0; i < MR; i++)
        acc[i][0] = acc[i][1] = _mm512_setzero_ps();
#pragma GCC unroll 2
    for (int k = 0; k < K; k++, a += a_step, b += b_step)
        RANK1_UPDATE(acc, b, a[i]);
    store_tile(acc, c, ldc, alpha, beta, 0, rows, cols);
}

/* c[first:14, cols] = alpha * (a·b) + beta * c with the 14 rows of A in place at a + i*lda.
   Rows are addressed from two bases and offsets lda * {0, 1, 2, 3, 4, 5, 6}, so that nothing spills. */
TARGET static void kernel_14x32_rows(int K, const float *a, long lda, const void *b_panel, long b_step, float *c,
                                     long ldc, float alpha, float beta, int first, int cols)
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
        RANK1_UPDATE(acc, b, *row[i]);
    }
    store_tile(acc, c, ldc, alpha, beta, first, MR, cols);
}

/* r[0:16] <- its transpose, r being 16 rows of 16 floats. */
TARGET static inline void transpose16(__m512 r[16])
{
    __m512 t[16];
#pragma GCC unroll 8
    for (int i = 0; i < 16; i += 2) { /* pairs of rows interleaved */
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
#pragma GCC unroll 4
    for (int i = 0; i < 16; i += 4) { /* r[i + c], lane L: column 4L + c of rows i..i+3 */
        __m512d t0 = _mm512_castps_pd(t[i]), t1 = _mm512_castps_pd(t[i + 1]);
        __m512d t2 = _mm512_castps_pd(t[i + 2]), t3 = _mm512_castps_pd(t[i + 3]);
        r[i] = _mm512_castpd_ps(_mm512_unpacklo_pd(t0, t2));
        r[i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(t0, t2));
        r[i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(t1, t3));
        r[i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(t1, t3));
    }
#pragma GCC unroll 4
    for (int c = 0; c < 4; c++) { /* gather lane L of r[c], r[4 + c], r[8 + c], r[12 + c] */
        __m512 u0 = _mm512_shuffle_f32x4(r[c], r[4 + c], 0x44), u1 = _mm512_shuffle_f32x4(r[c], r[4 + c], 0xEE);
        __m512 v0 = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0x44), v1 = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0xEE);
        t[c] = _mm512_shuffle_f32x4(u0, v0, 0x88);
        t[4 + c] = _mm512_shuffle_f32x4(u0, v0, 0xDD);
        t[8 + c] = _mm512_shuffle_f32x4(u1, v1, 0x88);
        t[12 + c] = _mm512_shuffle_f32x4(u1, v1, 0xDD);
    }
#pragma GCC unroll 16
    for (int i = 0; i < 16; i++)
        r[i] = t[i];
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
    .run = kernel_14x32, .run_rows = kernel_14x32_rows, .pack_a = pack_a, .pack_b = pack_b,
    .reference = gemm_reference};

typedef int32_t bf16_pair __attribute__((may_alias)); /* two bf16 of one row, k and k + 1 */

/* c[rows, cols] = alpha * (a·b) + beta * c: the 14x32 tile on bf16 panels, a [K/2][14][2],
   b [K/2][32][2] (the steps are not used: bf16 operands are always packed). */
TARGET_BF16 static void kernel_bf16_14x32(int K, const void *a_panel, long a_step, const void *b_panel, long b_step,
                                          float *c, long ldc, float alpha, float beta, int rows, int cols)
{
    const bf16_pair *a = a_panel;
    const uint16_t *b = b_panel;
    prefetch_tile(c, ldc, rows);
    __m512 acc[MR][2];
#pragma GCC unroll 14
    for (int i = 0; i < MR; i++)
        acc[i][0] = acc[i][1] = _mm512_setzero_ps();
#pragma GCC unroll 2
    for (int p = 0; p < (K + 1) / 2; p++, a += MR, b += 2 * NR) {
        const __m512bh b0 = (__m512bh)_mm512_loadu_si512(b), b1 = (__m512bh)_mm512_loadu_si512(b + NR);
#pragma GCC unroll 14
        for (int i = 0; i < MR; i++) {
            const __m512bh ai = (__m512bh)_mm512_set1_epi32(a[i]);
            acc[i][0] = _mm512_dpbf16_ps(acc[i][0], ai, b0);
            acc[i][1] = _mm512_dpbf16_ps(acc[i][1], ai, b1);
        }
    }
    store_tile(acc, c, ldc, alpha, beta, 0, rows, cols);
}

/* A [m, k] (not transposed) -> the A panels [K/2][MR][2] bf16: 32 floats of a row become 16 k
   pairs (vcvtne2ps2bf16: round to nearest even, denormals to zero as vdpbf16ps reads them anyway),
   scattered MR pairs apart; the depth is padded with zeros, and so are missing rows. Transposed:
   the generic packing. */
TARGET_BF16 static void pack_a_bf16(int trans, int m, int k, const float *A, long lda, void *dst)
{
    if (trans) {
        gemm_pack_a_bf16(MR, 2, 2, trans, m, k, A, lda, dst);
        return;
    }
    const int kpad = (k + 1) / 2 * 2, panels = (m + MR - 1) / MR;
    uint32_t *out = dst; /* k pairs */
    if (m % MR)
        memset(out, 0, (size_t)panels * MR * kpad / 2 * sizeof *out);
    const __m512i pairs_apart = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2,
                                                                    1, 0), _mm512_set1_epi32(MR));
    for (int i = 0; i < m; i++) {
        const float *src = A + (size_t)i * lda;
        uint32_t *row = out + (size_t)(i / MR) * MR * kpad / 2 + i % MR;
        for (int k0 = 0; k0 < k; k0 += 32) {
            const int rest = k - k0;
            const __mmask16 lo = rest >= 16 ? 0xffff : (__mmask16)((1u << rest) - 1);
            const __mmask16 hi = rest >= 32 ? 0xffff : rest > 16 ? (__mmask16)((1u << (rest - 16)) - 1) : 0;
            const int npairs = rest >= 32 ? 16 : (rest + 1) / 2;
            const __m512bh v = _mm512_cvtne2ps_pbh(_mm512_maskz_loadu_ps(hi, src + k0 + 16),
                                                   _mm512_maskz_loadu_ps(lo, src + k0));
            _mm512_mask_i32scatter_epi32(row + (size_t)k0 / 2 * MR, (__mmask16)((1u << npairs) - 1), pairs_apart,
                                         (__m512i)v, 4);
        }
    }
}

static void pack_b_bf16(int trans, int n, int k, const float *B, long ldb, void *dst)
{
    gemm_pack_b_bf16(NR, 2, 2, trans, n, k, B, ldb, dst);
}

const gemm_microkernel gemm_microkernel_avx512_bf16 = {
    .name = "avx512_bf16 14x32", .mr = MR, .nr = NR, .kc = 512, .nc = 1024, .elem = sizeof(uint16_t), .ku = 2,
    .run = kernel_bf16_14x32, .pack_a = pack_a_bf16, .pack_b = pack_b_bf16, .reference = gemm_reference_bf16};

#else
const gemm_microkernel gemm_microkernel_avx512 = {0};
const gemm_microkernel gemm_microkernel_avx512_bf16 = {0};
#endif
