/* The AMX-BF16 micro-kernel: a 32x32 tile of C in four 16x16 fp32 accumulator tiles (tmm0-3);
   per 32 of k, two A tiles of 16 rows x 32 bf16 (tmm4-5) and two B tiles of 16 k pairs x 16
   columns x 2 (tmm6-7, the VNNI layout) feed four tdpbf16ps, each 16x16x32 multiply-adds.
   A panels are [K/32][32][32] (rows of the A tiles), B panels [K/2][32][2] (a B tile is half of
   each 128-byte row of 16 k pairs); both are padded with zeros to a depth of a multiple of 32.

   The tile configuration (shapes of the eight tiles) is state of each thread, not of the
   process: the driver calls begin() on every thread before its first kernel of a product (each
   OpenMP thread of the team, whichever it is, loads the configuration itself), and end() after
   its last, which releases the tiles (TILERELEASE: the thread's state goes back to its initial
   form, so context switches and later AVX-512 code do not carry the 8 KB of tile data, and
   another library's tile configuration on the same thread cannot be assumed either way).
   Linux lets a process use the tile data only once asked (core/cpu.c asks once, at selection);
   where it refuses, this kernel is never chosen. Tile loads and stores are written as inline
   assembly with a memory clobber, so that the compiler orders them with the C around them. */
#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#include "kernels/gemm_microkernels.h"

#if defined(__x86_64__)
#define MR 32
#define NR 32
#define KB 32 /* k per tile dot product */
#define TARGET __attribute__((target("amx-tile,amx-bf16,avx512f,avx512bw,avx512bf16")))

#define TILE_LOAD(t, base, stride) \
    __asm__ volatile("tileloadd (%0,%1,1), %%tmm" #t ::"r"(base), "r"((long)(stride)) : "memory")
#define TILE_STORE(t, base, stride) \
    __asm__ volatile("tilestored %%tmm" #t ", (%0,%1,1)" ::"r"(base), "r"((long)(stride)) : "memory")
#define TILE_ZERO(t) __asm__ volatile("tilezero %%tmm" #t ::)
/* tmm c += tmm a (16 rows x 32 bf16) · tmm b (16 k pairs x 16 columns x 2) */
#define TILE_DOT(c, a, b) __asm__ volatile("tdpbf16ps %%tmm" #b ", %%tmm" #a ", %%tmm" #c ::)

/* The layout of ldtilecfg's 64-byte operand (palette 1). */
typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16]; /* bytes per row of each tile */
    uint8_t rows[16];
} __attribute__((aligned(64))) tile_config;

/* Loads this thread's tile configuration: eight tiles of 16 rows of 64 bytes. */
TARGET static void tiles_begin(void)
{
    tile_config cfg = {.palette = 1};
    for (int t = 0; t < 8; t++) {
        cfg.colsb[t] = 64;
        cfg.rows[t] = 16;
    }
    __asm__ volatile("ldtilecfg %0" ::"m"(cfg) : "memory");
}

TARGET static void tiles_end(void) { __asm__ volatile("tilerelease" ::: "memory"); }

/* c[rows, cols] = alpha * (a·b) + beta * c for the 32x32 tile (a: [K/32][32][32] bf16,
   b: [K/2][32][2] bf16; the steps are not used). A full tile with alpha 1 and beta 0 or 1 goes
   straight between C and the accumulators; any other through a buffer. */
TARGET static void kernel_32x32(int K, const void *a_panel, long a_step, const void *b_panel, long b_step,
                                float *c, long ldc, float alpha, float beta, int rows, int cols,
                                const gemm_tile_step *step)
{
    const char *a = a_panel, *b = b_panel;
    const int direct = rows == MR && cols == NR && alpha == 1.0f && (beta == 0.0f || beta == 1.0f);
    const long ldc_bytes = ldc * (long)sizeof(float);
    if (direct && beta == 1.0f) {
        TILE_LOAD(0, c, ldc_bytes);
        TILE_LOAD(1, c + 16, ldc_bytes);
        TILE_LOAD(2, c + 16 * ldc, ldc_bytes);
        TILE_LOAD(3, c + 16 * ldc + 16, ldc_bytes);
    } else {
        TILE_ZERO(0);
        TILE_ZERO(1);
        TILE_ZERO(2);
        TILE_ZERO(3);
    }
    for (int k = 0; k < K; k += KB, a += MR * KB * 2, b += NR * KB * 2) {
        TILE_LOAD(4, a, 64);
        TILE_LOAD(5, a + 16 * 64, 64);
        TILE_LOAD(6, b, 128);
        TILE_LOAD(7, b + 64, 128);
        TILE_DOT(0, 4, 6);
        TILE_DOT(1, 4, 7);
        TILE_DOT(2, 5, 6);
        TILE_DOT(3, 5, 7);
    }
    if (direct) {
        TILE_STORE(0, c, ldc_bytes);
        TILE_STORE(1, c + 16, ldc_bytes);
        TILE_STORE(2, c + 16 * ldc, ldc_bytes);
        TILE_STORE(3, c + 16 * ldc + 16, ldc_bytes);
        gemm_tile_step_apply(step, c, ldc, 0, rows, cols);
        return;
    }
    float acc[MR][NR] __attribute__((aligned(64)));
    TILE_STORE(0, &acc[0][0], NR * sizeof(float));
    TILE_STORE(1, &acc[0][16], NR * sizeof(float));
    TILE_STORE(2, &acc[16][0], NR * sizeof(float));
    TILE_STORE(3, &acc[16][16], NR * sizeof(float));
    for (int i = 0; i < rows; i++)
        for (int j = 0; j < cols; j++)
            c[i * ldc + j] = beta == 0.0f ? alpha * acc[i][j] : alpha * acc[i][j] + beta * c[i * ldc + j];
    gemm_tile_step_apply(step, c, ldc, 0, rows, cols);
}

/* A [m, k] (not transposed) -> the A panels [K/32][32][32] bf16: 32 floats of a row become one
   64-byte store (vcvtne2ps2bf16: round to nearest even, as bf16_from_float, but denormals to zero
   as tdpbf16ps reads them anyway); the depth is padded with zeros, and so are missing rows.
   Transposed: the generic packing. */
TARGET static void pack_a(int trans, int m, int k, const float *A, long lda, void *dst)
{
    if (trans) {
        gemm_pack_a_bf16(MR, KB, KB, trans, m, k, A, lda, dst);
        return;
    }
    const int kpad = (k + KB - 1) / KB * KB, panels = (m + MR - 1) / MR;
    uint16_t *out = dst;
    if (m % MR)
        memset(out, 0, (size_t)panels * MR * kpad * sizeof *out);
    for (int i = 0; i < m; i++) {
        const float *src = A + (size_t)i * lda;
        uint16_t *row = out + (size_t)(i / MR) * MR * kpad + (size_t)(i % MR) * KB;
        for (int k0 = 0; k0 < k; k0 += KB) {
            const int rest = k - k0;
            const __mmask16 lo = rest >= 16 ? 0xffff : (__mmask16)((1u << rest) - 1);
            const __mmask16 hi = rest >= 32 ? 0xffff : rest > 16 ? (__mmask16)((1u << (rest - 16)) - 1) : 0;
            const __m512bh v = _mm512_cvtne2ps_pbh(_mm512_maskz_loadu_ps(hi, src + k0 + 16),
                                                   _mm512_maskz_loadu_ps(lo, src + k0));
            _mm512_storeu_si512(row + (size_t)k0 * MR, (__m512i)v);
        }
    }
}

static void pack_b(int trans, int n, int k, const float *B, long ldb, void *dst)
{
    gemm_pack_b_bf16_avx512(KB, trans, n, k, B, 0, ldb, dst);
}

/* Operands already bf16: A's 32-element pieces copied into the A tiles' rows, B paired. */
static void pack_a_from_bf16(int trans, int m, int k, const uint16_t *A, long lda, void *dst)
{
    gemm_pack_a_from_bf16(MR, KB, KB, trans, m, k, A, lda, dst);
}

static void pack_b_from_bf16(int trans, int n, int k, const uint16_t *B, long ldb, void *dst)
{
    gemm_pack_b_bf16_avx512(KB, trans, n, k, B, 1, ldb, dst);
}

const gemm_microkernel gemm_microkernel_amx_bf16 = {
    .name = "amx 32x32", .mr = MR, .nr = NR, .kc = 512, .nc = 1024, .elem = sizeof(uint16_t), .ku = KB,
    .run = kernel_32x32, .pack_a = pack_a, .pack_b = pack_b, .pack_a_from_bf16 = pack_a_from_bf16,
    .pack_b_from_bf16 = pack_b_from_bf16,
    .reference = gemm_reference_bf16,
    .begin = tiles_begin, .end = tiles_end};

#else
const gemm_microkernel gemm_microkernel_amx_bf16 = {0};
#endif
