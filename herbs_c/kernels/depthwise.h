/* Depthwise 2-D convolution on NHWC activations: PyTorch's Conv2d with groups = C (one K×K filter
   per channel, no bias, dilation 1), square stride and zero padding pad, so
   OH = (H + 2·pad - K)/stride + 1 (likewise OW). The compute weight layout is [K, K, C]
   (tap-major, channels contiguous like the activations); PyTorch's [C, 1, K, K] is converted by
   the two repack kernels. */

/* out[K,K,C] = w[C,1,K,K] (PyTorch layout -> compute layout) */
void FN(depthwise_weight_to_kkc)(real *out, const real *w, int C, int K);
/* dw[C,1,K,K] += dw_kkc[K,K,C] (the gradient back to PyTorch's layout) */
void FN(depthwise_weight_grad_from_kkc)(real *dw, const real *dw_kkc, int C, int K);

/* out[B,OH,OW,C] = dwconv(inp[B,H,W,C], weight[K,K,C])·scale[C] + shift[C] (scale, shift NULL: 1, 0;
   an eval-mode BatchNorm folded in, as conv2d_forward's) */
void FN(depthwise_forward)(real *out, const real *inp, const real *weight, const real *scale, const real *shift, int B,
                           int H, int W, int C, int K, int stride, int pad);

/* dinp[B,H,W,C] += (accumulate set) or = (not read), dweight[K,K,C] += from dout[B,OH,OW,C];
   either gradient may be NULL (not wanted) */
void FN(depthwise_backward)(real *dinp, real *dweight, const real *dout, const real *inp, const real *weight, int B,
                            int H, int W, int C, int K, int stride, int pad, int accumulate);
