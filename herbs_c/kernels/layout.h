/* Layout moves at the engine's boundary: images arrive NCHW (as PyTorch), convolutions run NHWC. */

/* out[B,H,W,C] = inp[B,C,H,W] */
void FN(nchw_to_nhwc_forward)(real *out, const real *inp, int B, int C, int H, int W);
/* dinp[B,C,H,W] += dout[B,H,W,C] */
void FN(nchw_to_nhwc_backward)(real *dinp, const real *dout, int B, int C, int H, int W);
