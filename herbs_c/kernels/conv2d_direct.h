/* Direct (implicit-GEMM) convolution for the float engine: each register tile of output pixels
   reads its input rows in place through row pointers (padding reads a row of zeros), so neither
   an im2col copy nor a transposing pack of the activations is needed; only the weight is packed,
   once per call, into the micro-kernel's B panels. Used by conv2d.c for float; the double build
   keeps the im2col path. Not a template (float only). */
#ifndef HERBS_KERNELS_CONV2D_DIRECT_H
#define HERBS_KERNELS_CONV2D_DIRECT_H

#include <stddef.h>

#include "kernels/kernels.h"

#define CONV_DIRECT_KC 256 /* channels per micro-kernel call (a B micro-panel stays in L1) */

/* c[14,32] (row stride ldc) = Σ_k rows[i][k]·b[k][j] + beta·c (beta 0: c is not read) */
typedef void (*conv_rows_kernel_fn)(int K, const float *const *rows, const float *b, float *c, long ldc,
                                    float beta);
extern const conv_rows_kernel_fn conv_rows_kernel_avx512; /* NULL where not built */

/* Floats of the packed weight of a conv with VOC outputs, VC inputs and `taps` kernel taps. */
size_t conv_direct_packed_floats(int VOC, int VC, int taps);

/* wpack <- the weight as B panels [ceil(VOC/nr)][taps][VC][nr]. With flip 0, w is OHWI
   [VOC][taps][VC]; with flip 1, w is the OHWI weight of the conv being differentiated,
   [VC][taps][VOC], read transposed and spatially flipped (the input gradient of a stride-1
   conv is the correlation of dout with that weight). wpack must be 64-byte aligned. */
void conv_direct_pack_weight(float *wpack, const float *w, int flip, int VOC, int VC, int taps);

/* out[B,OH,OW,OC] = conv(inp[B,H,W,C], wpack) + beta·out (beta 0: out is not read), then the per-channel
   scale, shift and ReLU of affine.h on each finished output tile (scale, shift NULL and relu 0: none). */
void conv_direct_forward(float *out, const float *inp, const float *wpack, float beta, int B, int H, int W, int C,
                         int OC, int KH, int KW, int stride, int pad, const float *scale, const float *shift, int relu);

#endif
