/* Max pooling on NHWC activations (PyTorch's max_pool2d, ceil_mode False, dilation 1): square
   window K, stride, padding pad (< K/2 + 1, so no window lies in the padding alone). The argmax
   is the input position ih·W + iw of each output element, ties and NaN as PyTorch: the first
   maximum in scan order (rows, then columns) wins, and a NaN beats every number (the last NaN
   in scan order, as PyTorch's `val > max || isnan(val)`), so a window with a NaN gives NaN.
   OH = (H + 2·pad - K)/stride + 1. */

/* out[B,OH,OW,C], argmax[B,OH,OW,C] = max pool of inp[B,H,W,C] */
void FN(maxpool2d_forward)(real *out, int *argmax, const real *inp, int B, int H, int W, int C, int K, int stride,
                           int pad);
/* dinp[B,H,W,C] += dout[B,OH,OW,C] routed to the argmax positions */
void FN(maxpool2d_backward)(real *dinp, const real *dout, const int *argmax, int B, int H, int W, int C, int K,
                            int stride, int pad);
