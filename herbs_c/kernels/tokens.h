/* Operations along the token axis of token features [B, S, C] (row-major: a row of C channels
   per token). The HERBS head mixes tokens with Conv1d(S_in, S_out, kernel 1) over the token
   axis (the release's Up_/Down_ layers and the combiner's pools), averages over tokens, and
   gathers the tokens the selector keeps. */

/* out[b] = (accumulate ? out[b] : 0) + weight[S_out,S_in] · inp[b][S_in,C] + bias[S_out] (bias NULL: none):
   PyTorch's Conv1d(S_in, S_out, 1) on [B, S_in, C], tokens as channels; out [B,S_out,C] */
void FN(token_linear_forward)(real *out, const real *inp, const real *weight, const real *bias, int B, int S_in,
                              int S_out, int C, int accumulate);

/* The same at precision p (kernels/gemm_bf16.h). Float engine only (declared for both, defined once). */
void token_linear_forward_at(herbs_precision p, float *out, const float *inp, const float *weight, const float *bias,
                             int B, int S_in, int S_out, int C, int accumulate);

/* dinp[B,S_in,C] += (accumulate set) or = (not read) weightᵀ · dout[b]; dweight[S_out,S_in] += Σ_b dout[b] · inp[b]ᵀ;
   dbias[S_out] += Σ_{b,c} dout. Any of dinp, dweight, dbias may be NULL. Products at precision p. */
void FN(token_linear_backward)(herbs_precision p, real *dinp, real *dweight, real *dbias, const real *dout,
                               const real *inp, const real *weight, int B, int S_in, int S_out, int C, int accumulate);

/* out[B,C] = mean over the S tokens of inp[B,S,C] */
void FN(token_mean_forward)(real *out, const real *inp, int B, int S, int C);
/* dinp[B,S,C] += dout[B,C] / S */
void FN(token_mean_backward)(real *dinp, const real *dout, int B, int S, int C);

/* out[b*out_stride + j*C + c] = inp[b,index[b*index_stride+j],c] for j < n: n rows of inp [B,S,C] per sample
   (out_stride: elements from one sample's rows to the next, >= n*C) */
void FN(gather_tokens)(real *out, long out_stride, const real *inp, const int *index, int index_stride, int B, int S,
                     int n, int C);
/* dinp[b,index[b*index_stride+j],:] += dout[b*dout_stride + j*C + :]: the backward of gather_tokens; dinp [B,S,C] */
void FN(scatter_tokens_add)(real *dinp, const real *dout, long dout_stride, const int *index, int index_stride, int B,
                          int S, int n, int C);
