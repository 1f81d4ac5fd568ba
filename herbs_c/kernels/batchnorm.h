/* Batch normalisation with channels last: rows of C channels, statistics per channel over the
   N rows. BatchNorm1d on tokens [B, S, C] is N = B·S; BatchNorm2d on NHWC is N = B·H·W.
   weight and bias may be NULL (no affine part); their gradients then must be NULL too. */

/* Train mode: out[N,C] = (inp - mean) · rstd · weight + bias with the batch's mean[C] and
   rstd[C] = 1/sqrt(var + eps) (biased var), saved for backward; running_mean/running_var[C]
   (may be NULL) move by momentum towards mean and the unbiased var. Needs N >= 2. */
void FN(batchnorm_forward_train)(real *out, real *mean, real *rstd, real *running_mean, real *running_var,
                                 const real *inp, const real *weight, const real *bias, int N, int C, real eps,
                                 real momentum);

/* scale[C], shift[C]: eval-mode BatchNorm as out = inp·scale + shift (weight, bias may be NULL),
   computed as batchnorm_forward_eval computes them (for folding into the store of the product before it:
   a conv's, a linear layer's) */
void FN(batchnorm_eval_affine)(real *scale, real *shift, const real *running_mean, const real *running_var,
                               const real *weight, const real *bias, int C, real eps);
/* Eval mode: out[N,C] = (inp - running_mean) / sqrt(running_var + eps) · weight + bias. */
void FN(batchnorm_forward_eval)(real *out, const real *inp, const real *running_mean, const real *running_var,
                                const real *weight, const real *bias, int N, int C, real eps);

/* Backward of train mode (the statistics depend on inp): dinp[N,C] += (accumulate set) or =
   (dinp not read) its gradient, dweight[C] += Σ g·x̂, dbias[C] += Σ g. Any gradient may be NULL.
   g is dout, or with relu_out (the output out[N,C] of a ReLU after the BN, as
   batchnorm_relu_forward_train returns it; NULL: none) dout where relu_out > 0 or NaN, else 0
   (relu_backward's mask). dinp may be dout or inp (each element is read before it is written). */
void FN(batchnorm_backward)(real *dinp, real *dweight, real *dbias, const real *dout, const real *relu_out,
                            const real *inp, const real *weight, const real *mean, const real *rstd, int N, int C,
                            int accumulate);

/* Backward of eval mode (a fixed affine map per channel): the same gradients. */
void FN(batchnorm_backward_eval)(real *dinp, real *dweight, real *dbias, const real *dout, const real *relu_out,
                                 const real *inp, const real *running_mean, const real *running_var,
                                 const real *weight, int N, int C, real eps, int accumulate);

/* BatchNorm followed by a ReLU in one pass (out = max(0, BN(inp)) as relu_forward: NaN stays); arguments as above; its
   backward is batchnorm_backward with relu_out = out. In eval mode the pair is folded into the
   conv before it (conv2d_forward with batchnorm_eval_affine). */
void FN(batchnorm_relu_forward_train)(real *out, real *mean, real *rstd, real *running_mean, real *running_var,
                                      const real *inp, const real *weight, const real *bias, int N, int C, real eps,
                                      real momentum);

/* out = BN(inp), through a ReLU when relu is set, again from the batch statistics (mean, rstd) a
   train-mode forward saved: the same bits as that forward's out, for a backward that did not keep it. */
void FN(batchnorm_forward_saved)(real *out, const real *inp, const real *mean, const real *rstd, const real *weight,
                                 const real *bias, int N, int C, int relu);

/* batchnorm_backward through the ReLU after a train-mode BN whose output was not kept: the mask from
   that output made again from inp, the statistics and the BN's bias (batchnorm_forward_saved's bits),
   the same gradients as with relu_out. dinp may be dout or inp. */
void FN(batchnorm_relu_backward_saved)(real *dinp, real *dweight, real *dbias, const real *dout, const real *inp,
                                       const real *weight, const real *bias, const real *mean, const real *rstd, int N,
                                       int C, int accumulate);

/* A train-mode BN's input kept for its backward in bf16: kept[N,C] = bf16(inp - mean) with the
   batch's mean, and inp[N,C] = kept + mean again. Centred, the rounding errs by 2^-8 of the
   deviation from the mean that the backward's x̂ is made of, not of inp (whose mean may dwarf it).
   Float engine only (declared for both, defined once). */
void batchnorm_input_keep_bf16(uint16_t *kept, const float *inp, const float *mean, int N, int C);
void batchnorm_input_again_bf16(float *inp, const uint16_t *kept, const float *mean, int N, int C);
