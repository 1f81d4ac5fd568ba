#include "kernels/clones.h"
#include "kernels/kernels.h"
#include "kernels/precision.h"

#define LAYOUT_PARALLEL(work) if ((double)(work) > 65536)

HERBS_CLONES void FN(nchw_to_nhwc_forward)(real *out, const real *inp, int B, int C, int H, int W)
{
    const size_t plane = (size_t)H * W;
#pragma omp parallel for schedule(static) LAYOUT_PARALLEL((double)B * C * plane)
    for (int r = 0; r < B * H; r++) {
        const int b = r / H;
        const size_t p0 = (size_t)(r % H) * W;
        for (int w = 0; w < W; w++)
            for (int c = 0; c < C; c++)
                out[((size_t)r * W + w) * C + c] = inp[((size_t)b * C + c) * plane + p0 + w];
    }
}

HERBS_CLONES void FN(nchw_to_nhwc_backward)(real *dinp, const real *dout, int B, int C, int H, int W)
{
    const size_t plane = (size_t)H * W;
#pragma omp parallel for schedule(static) LAYOUT_PARALLEL((double)B * C * plane)
    for (int r = 0; r < B * H; r++) {
        const int b = r / H;
        const size_t p0 = (size_t)(r % H) * W;
        for (int c = 0; c < C; c++)
            for (int w = 0; w < W; w++)
                dinp[((size_t)b * C + c) * plane + p0 + w] += dout[((size_t)r * W + w) * C + c];
    }
}
