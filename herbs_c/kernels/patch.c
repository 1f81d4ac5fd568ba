#include <string.h>

#include "kernels/kernels.h"
#include "kernels/precision.h"

#define PATCH_PARALLEL(n) if ((double)(n) > 65536)

void FN(patch_embed_gather)(real *patches, const real *images, int B, int C, int H, int W, int p)
{
    const int gh = H / p, gw = W / p, K = C * p * p;
#pragma omp parallel for collapse(2) schedule(static) PATCH_PARALLEL((double)B * C * H * W)
    for (int b = 0; b < B; b++)
        for (int y = 0; y < gh; y++)
            for (int x = 0; x < gw; x++) {
                real *row = patches + (((size_t)b * gh + y) * gw + x) * K;
                for (int c = 0; c < C; c++)
                    for (int ky = 0; ky < p; ky++)
                        memcpy(row + (c * p + ky) * p, images + (((size_t)b * C + c) * H + y * p + ky) * W + x * p,
                               p * sizeof(real));
            }
}

void FN(patch_embed_scatter)(real *dimages, const real *dpatches, int B, int C, int H, int W, int p, int accumulate)
{
    const int gh = H / p, gw = W / p, K = C * p * p;
    /* one image row at a time: the patch row it lies in, column block by column block; pixels
       right of or below the last whole patch get no gradient */
#pragma omp parallel for collapse(3) schedule(static) PATCH_PARALLEL((double)B * C * H * W)
    for (int b = 0; b < B; b++)
        for (int c = 0; c < C; c++)
            for (int iy = 0; iy < H; iy++) {
                real *img = dimages + (((size_t)b * C + c) * H + iy) * W;
                const int y = iy / p, ky = iy % p, covered = y < gh ? gw * p : 0;
                for (int x = 0; x < covered / p; x++) {
                    const real *from = dpatches + (((size_t)b * gh + y) * gw + x) * K + (c * p + ky) * p;
                    real *to = img + x * p;
                    for (int kx = 0; kx < p; kx++)
                        to[kx] = accumulate ? to[kx] + from[kx] : from[kx];
                }
                for (int ix = covered; !accumulate && ix < W; ix++)
                    img[ix] = 0;
            }
}

/* The input token of output token (y, x), part q (0..3) in the order (0,0), (1,0), (0,1), (1,1). */
static size_t FN(merge_source)(int W, int y, int x, int q) { return (size_t)(2 * y + (q & 1)) * W + 2 * x + (q >> 1); }

void FN(patch_merge_forward)(real *out, const real *inp, int B, int H, int W, int C)
{
    const int oh = H / 2, ow = W / 2;
#pragma omp parallel for collapse(2) schedule(static) PATCH_PARALLEL((double)B * H * W * C)
    for (int b = 0; b < B; b++)
        for (int y = 0; y < oh; y++)
            for (int x = 0; x < ow; x++) {
                real *row = out + (((size_t)b * oh + y) * ow + x) * 4 * C;
                for (int q = 0; q < 4; q++)
                    memcpy(row + q * C, inp + ((size_t)b * H * W + FN(merge_source)(W, y, x, q)) * C, C * sizeof(real));
            }
}

void FN(patch_merge_backward)(real *dinp, const real *dout, int B, int H, int W, int C, int accumulate)
{
    const int oh = H / 2, ow = W / 2;
#pragma omp parallel for collapse(2) schedule(static) PATCH_PARALLEL((double)B * H * W * C)
    for (int b = 0; b < B; b++)
        for (int y = 0; y < oh; y++)
            for (int x = 0; x < ow; x++) {
                const real *row = dout + (((size_t)b * oh + y) * ow + x) * 4 * C;
                for (int q = 0; q < 4; q++) {
                    real *d = dinp + ((size_t)b * H * W + FN(merge_source)(W, y, x, q)) * C;
                    if (accumulate)
                        for (int c = 0; c < C; c++)
                            d[c] += row[q * C + c];
                    else
                        memcpy(d, row + q * C, C * sizeof(real));
                }
            }
}
