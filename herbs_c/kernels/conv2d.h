/* 2-D convolution on NHWC activations, lowered onto the GEMM (im2col in chunks of output
   pixels). Dilation 1, one group, square stride and padding. The compute weight layout is
   OHWI [OC, KH, KW, C]; PyTorch's OIHW [OC, C, KH, KW] is converted by the two repack kernels
   (for 1x1 kernels both layouts are the same memory). K = KH·KW·C below. */

/* out[OC,KH,KW,C] = w[OC,C,KH,KW] (PyTorch layout -> compute layout) */
void FN(conv2d_weight_to_ohwi)(real *out, const real *w, int OC, int C, int KH, int KW);
/* dw[OC,C,KH,KW] += dw_ohwi[OC,KH,KW,C] (the gradient back to PyTorch's layout) */
void FN(conv2d_weight_grad_from_ohwi)(real *dw, const real *dw_ohwi, int OC, int C, int KH, int KW);

/* Scratch floats a conv needs at full speed in the float engine (packed weights or im2col
   chunks); declared for both precisions, defined once (the double build needs only K). */
size_t conv2d_scratch_floats(int C, int OC, int KH, int KW);

/* out[B,OH,OW,OC] = conv(inp[B,H,W,C], weight[OC,KH,KW,C])·scale[OC] + shift[OC], through a ReLU
   when relu is set (scale and shift may be NULL: 1 and 0; shift alone is a bias), with
   OH = (H + 2·pad - KH)/stride + 1 (likewise OW). The scale, shift and ReLU are applied to each
   output tile while it is in cache: an eval-mode BatchNorm folded in this way (scale and shift from
   batchnorm_eval_affine) gives the same bits as the two run apart. scratch holds
   scratch_floats >= conv2d_scratch_floats(...) floats (the double build needs only K). */
void FN(conv2d_forward)(real *out, const real *inp, const real *weight, const real *scale, const real *shift, int relu,
                        real *scratch, size_t scratch_floats, int B, int H, int W, int C, int OC, int KH, int KW,
                        int stride, int pad);

/* conv2d_forward with the weight packed once for the GEMM (gemm_prepack_b of the OHWI weight as
   op(B) = Wᵀ [KH·KW·C, OC]), in the pack's precision (fp32 or bf16): im2col chunks, or the input
   itself when pointwise, times the pack. Float engine only (declared for both, defined once);
   0, or -1 when the GEMM had no memory for packing its A (out unspecified). */
int conv2d_forward_prepacked(float *out, const float *inp, const void *packed, const float *scale, const float *shift,
                             int relu, float *scratch, size_t scratch_floats, int B, int H, int W, int C, int OC,
                             int KH, int KW, int stride, int pad);

/* dinp[B,H,W,C] += (accumulate set) or = (not read), dweight[OC,KH,KW,C] +=, dbias[OC] += from
   dout[B,OH,OW,OC]; any gradient may be NULL. scratch as for the forward. The products at precision p
   (gemm_at; fp32 runs a strided-1 input gradient as a direct convolution). */
void FN(conv2d_backward)(herbs_precision p, real *dinp, real *dweight, real *dbias, const real *dout, const real *inp,
                         const real *weight, real *scratch, size_t scratch_floats, int B, int H, int W, int C,
                         int OC, int KH, int KW, int stride, int pad, int accumulate);
