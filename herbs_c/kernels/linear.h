/* A fully connected layer, PyTorch's Linear: weight [OC, C], bias [OC] (NULL for none). */

/* out[N,OC] = inp[N,C] · weightᵀ + bias */
void FN(linear_forward)(real *out, const real *inp, const real *weight, const real *bias, int N, int C, int OC);

/* out[N,OC] = (inp[N,C] · weightᵀ)·scale + shift per output channel, then max(·, 0) when relu is
   set (scale or shift NULL: none): a bias, a following eval-mode BatchNorm and ReLU done as the
   product stores each tile (affine.h). */
void FN(linear_affine_forward)(real *out, const real *inp, const real *weight, const real *scale, const real *shift,
                               int relu, int N, int C, int OC);

/* dinp[N,C] += (accumulate set) or = (not read) dout[N,OC] · weight; dweight[OC,C] += doutᵀ · inp;
   dbias[OC] += Σ_n dout. Any of dinp, dweight, dbias may be NULL (not wanted); dinp may be inp (the
   weight gradient reads it first). The two products at precision p (gemm_at). */
void FN(linear_backward)(herbs_precision p, real *dinp, real *dweight, real *dbias, const real *dout, const real *inp,
                         const real *weight, int N, int C, int OC, int accumulate);

/* linear_backward at HERBS_BF16 with inp fp32 or (inp_bf16) bf16 bit patterns [N, C]: dout is rounded
   to bf16 once, in the pass that sums the bias gradient, and both products read it in half the
   bytes. The same bits as linear_backward on the fp32 inp of those values. With gelu_input [N, OC]
   (not NULL), the layer's output y = gelu_input feeds a GELU and dout is the gradient of GELU's
   output: the same pass forms the layer's output gradient dout·GELU'(y) (gelu_backward_table, within
   1e-6·|dout| of the exact one, which the rounding to bf16 dwarfs) and rounds that, so it is never
   stored in fp32 (gelu_input is overwritten by it when there is no memory to round into). Float
   engine only (declared for both, defined once). */
void linear_backward_bf16(float *dinp, float *dweight, float *dbias, const float *dout, float *gelu_input,
                          const void *inp, int inp_bf16, const float *weight, int N, int C, int OC, int accumulate);
