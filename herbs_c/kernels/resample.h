/* Resampling by two on NHWC maps, for the CNN feature pyramid: bilinear upsampling (PyTorch's
   interpolate(scale_factor=2, mode="bilinear", align_corners=False), edges clamped) and 2x2
   average pooling (avg_pool2d(kernel 2, stride 2), odd sizes floored). */

/* out[B,2H,2W,C] = (accumulate ? out : 0) + bilinear x2 upsampling of inp[B,H,W,C] */
void FN(upsample_bilinear2x_forward)(real *out, const real *inp, int B, int H, int W, int C, int accumulate);
/* dinp[B,H,W,C] += the transpose of the upsampling applied to dout[B,2H,2W,C] */
void FN(upsample_bilinear2x_backward)(real *dinp, const real *dout, int B, int H, int W, int C);

/* out[B,H/2,W/2,C] = (accumulate ? out : 0) + mean of each 2x2 block of inp[B,H,W,C] (a last odd
   row/column is dropped) */
void FN(avgpool2x2_forward)(real *out, const real *inp, int B, int H, int W, int C, int accumulate);
/* dinp[B,H,W,C] += dout[B,H/2,W/2,C] / 4 on each block's four pixels */
void FN(avgpool2x2_backward)(real *dinp, const real *dout, int B, int H, int W, int C);
