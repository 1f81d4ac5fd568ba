/* Layout moves: bodies over rows (image, h) [r0, r1), built per instruction set and run over
   contiguous ranges of rows, one per thread (isa.h). */
#include "kernels/kernels.h"
#include "kernels/precision.h"
#include "kernels/isa.h"

#define LAYOUT_THREADS(work) herbs_threads_for((double)(work), 32768) /* a thread's elements, at least */

HERBS_INLINE void FN(nchw_to_nhwc_forward_rows)(real *out, const real *inp, int C, int H, int W, int r0, int r1)
{
    const size_t plane = (size_t)H * W;
    for (int r = r0; r < r1; r++) {
        const int b = r / H;
        const size_t p0 = (size_t)(r % H) * W;
        for (int w = 0; w < W; w++)
            for (int c = 0; c < C; c++)
                out[((size_t)r * W + w) * C + c] = inp[((size_t)b * C + c) * plane + p0 + w];
    }
}
HERBS_ISA_VARIANTS(nchw_to_nhwc_forward_rows, (real *out, const real *inp, int C, int H, int W, int r0, int r1),
                   (out, inp, C, H, W, r0, r1))

void FN(nchw_to_nhwc_forward)(real *out, const real *inp, int B, int C, int H, int W)
{
    HERBS_ISA_PARALLEL(nchw_to_nhwc_forward_rows, B * H, LAYOUT_THREADS((double)B * C * H * W), out, inp, C, H, W);
}

HERBS_INLINE void FN(nchw_to_nhwc_backward_rows)(real *dinp, const real *dout, int C, int H, int W, int r0, int r1)
{
    const size_t plane = (size_t)H * W;
    for (int r = r0; r < r1; r++) {
        const int b = r / H;
        const size_t p0 = (size_t)(r % H) * W;
        for (int c = 0; c < C; c++)
            for (int w = 0; w < W; w++)
                dinp[((size_t)b * C + c) * plane + p0 + w] += dout[((size_t)r * W + w) * C + c];
    }
}
HERBS_ISA_VARIANTS(nchw_to_nhwc_backward_rows, (real *dinp, const real *dout, int C, int H, int W, int r0, int r1),
                   (dinp, dout, C, H, W, r0, r1))

void FN(nchw_to_nhwc_backward)(real *dinp, const real *dout, int B, int C, int H, int W)
{
    HERBS_ISA_PARALLEL(nchw_to_nhwc_backward_rows, B * H, LAYOUT_THREADS((double)B * C * H * W), dinp, dout, C, H, W);
}
