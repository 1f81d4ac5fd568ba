/* The direct convolution's driver (see conv2d_direct.h). Work items are (block of pixel tiles,
   panel of output channels): a block's input rows and a panel's packed weight stay in L2 while
   the tiles of the block run through the whole reduction (taps x channel slices) in registers. */
#include "kernels/conv2d_direct.h"

#include <string.h>

#include "core/cpu.h"
#include "core/threads.h"
#include "kernels/gemm_microkernels.h"

#define TILES_PER_BLOCK 4
#define MAX_TILE 32 /* mr, nr <= 32 for every micro-kernel */

static const float zero_row[CONV_DIRECT_KC] __attribute__((aligned(64)));

size_t conv_direct_packed_floats(int VOC, int VC, int taps)
{
    const int nr = gemm_microkernel_current()->nr;
    return (size_t)(VOC + nr - 1) / nr * nr * taps * VC;
}

void conv_direct_pack_weight(float *wpack, const float *w, int flip, int VOC, int VC, int taps)
{
    const gemm_microkernel *uk = gemm_microkernel_current();
    const int nr = uk->nr, panels = (VOC + nr - 1) / nr;
    /* one (panel, tap) per iteration: a [VC][nr] block, which is the GEMM's packing of the tap's
       [VOC][VC] slice of w (rows taps*VC apart) transposed, or with flip of its [VC][VOC] slice */
#pragma omp parallel for schedule(static) if ((double)panels * nr * taps * VC > (1 << 17)) /* as conv2d.c's repacks */
    for (int item = 0; item < panels * taps; item++) {
        const int p = item / taps, t = item % taps, cols = VOC - p * nr < nr ? VOC - p * nr : nr;
        float *dst = wpack + (size_t)item * VC * nr;
        if (!flip)
            uk->pack_b(1, cols, VC, w + ((size_t)p * nr * taps + t) * VC, (long)taps * VC, dst);
        else
            uk->pack_b(0, cols, VC, w + (size_t)(taps - 1 - t) * VOC + p * nr, (long)taps * VOC, dst);
    }
}

/* Any ISA: the rows' slice packed as the micro-kernel's A panel, then its tile product. */
static void rows_through_packed_kernel(const gemm_microkernel *uk, int K, const float *const *rows, const float *b,
                                       float *c, long ldc, float beta)
{
    float apack[CONV_DIRECT_KC * MAX_TILE] __attribute__((aligned(64)));
    for (int k = 0; k < K; k++)
        for (int i = 0; i < uk->mr; i++)
            apack[k * uk->mr + i] = rows[i][k];
    uk->run(K, apack, uk->mr, b, uk->nr, c, ldc, 1.0f, beta, uk->mr, uk->nr, NULL); /* packed A and B, a full tile */
}

void conv_direct_forward(float *out, const float *inp, const float *wpack, float beta, int B, int H, int W, int C,
                         int OC, int KH, int KW, int stride, int pad, const float *scale, const float *shift, int relu)
{
    const affine_rows_fn epilogue = scale || shift || relu ? affine_rows_current() : NULL;
    const gemm_microkernel *uk = gemm_microkernel_current();
    const int mr = uk->mr, nr = uk->nr;
    const conv_rows_kernel_fn fast =
        herbs_isa_current() == HERBS_ISA_AVX512 && mr == 14 && nr == 32 ? conv_rows_kernel_avx512 : NULL;
    const int OH = (H + 2 * pad - KH) / stride + 1, OW = (W + 2 * pad - KW) / stride + 1;
    const int M = B * OH * OW, taps = KH * KW;
    const int panels = (OC + nr - 1) / nr, tiles = (M + mr - 1) / mr;
    const int blocks = (tiles + TILES_PER_BLOCK - 1) / TILES_PER_BLOCK;
    const int nt = herbs_threads_for(2.0 * M * OC * taps * C, 4.0e6);

    /* dynamic, a whole block of tiles per grab (its input rows stay in one core's L2): on a shared
       machine a thread whose core is busy takes fewer blocks; results do not depend on which
       thread runs an item (each computes its whole reduction) */
#pragma omp parallel for num_threads(nt) schedule(dynamic, panels)
    for (int item = 0; item < blocks * panels; item++) {
        const int blk = item / panels, p = item % panels;
        const int cols = OC - p * nr < nr ? OC - p * nr : nr;
        float edge[MAX_TILE * MAX_TILE] __attribute__((aligned(64)));
        const float *rows[MAX_TILE];
        int pix_b[MAX_TILE], pix_h[MAX_TILE], pix_w[MAX_TILE]; /* top-left input pixel; b < 0: none */
        for (int tile = blk * TILES_PER_BLOCK; tile < tiles && tile < (blk + 1) * TILES_PER_BLOCK; tile++) {
            const int m0 = tile * mr, valid = M - m0 < mr ? M - m0 : mr;
            for (int i = 0; i < mr; i++) {
                const int m = m0 + i;
                pix_b[i] = i < valid ? m / (OH * OW) : -1;
                pix_h[i] = (m / OW) % OH * stride - pad;
                pix_w[i] = m % OW * stride - pad;
            }
            const int full = valid == mr && cols == nr;
            float *c = full ? out + (size_t)m0 * OC + p * nr : edge;
            const long ldc = full ? OC : nr;
            float first_beta = beta;
            if (!full) { /* the tile's valid part through a private buffer */
                memset(edge, 0, sizeof(float) * mr * nr);
                if (beta != 0.0f)
                    for (int i = 0; i < valid; i++)
                        for (int j = 0; j < cols; j++)
                            edge[i * nr + j] = beta * out[(size_t)(m0 + i) * OC + p * nr + j];
                first_beta = 1.0f;
            }
            int first = 1;
            for (int t = 0; t < taps; t++) {
                const int ki = t / KW, kj = t % KW;
                const float *base[MAX_TILE];
                for (int i = 0; i < mr; i++) {
                    const int ih = pix_h[i] + ki, iw = pix_w[i] + kj;
                    base[i] = pix_b[i] >= 0 && ih >= 0 && ih < H && iw >= 0 && iw < W
                                  ? inp + (((size_t)pix_b[i] * H + ih) * W + iw) * C
                                  : NULL;
                }
                for (int c0 = 0; c0 < C; c0 += CONV_DIRECT_KC) {
                    const int kc = C - c0 < CONV_DIRECT_KC ? C - c0 : CONV_DIRECT_KC;
                    for (int i = 0; i < mr; i++)
                        rows[i] = base[i] ? base[i] + c0 : zero_row;
                    const float *b = wpack + (((size_t)p * taps + t) * C + c0) * nr;
                    const float bt = first ? first_beta : 1.0f;
                    if (fast)
                        fast(kc, rows, b, c, ldc, bt);
                    else
                        rows_through_packed_kernel(uk, kc, rows, b, c, ldc, bt);
                    first = 0;
                }
            }
            if (!full)
                for (int i = 0; i < valid; i++)
                    memcpy(out + (size_t)(m0 + i) * OC + p * nr, edge + i * nr, cols * sizeof(float));
            if (epilogue)
                epilogue(out + (size_t)m0 * OC + p * nr, OC, scale ? scale + p * nr : NULL,
                         shift ? shift + p * nr : NULL, relu, cols, 0, valid);
        }
    }
}
