/* A fully connected layer, PyTorch's Linear: weight [OC, C], bias [OC] (NULL for none). */

/* out[N,OC] = inp[N,C] · weightᵀ + bias */
void FN(linear_forward)(real *out, const real *inp, const real *weight, const real *bias, int N, int C, int OC);

/* out[N,OC] = (inp[N,C] · weightᵀ)·scale + shift per output channel, then max(·, 0) when relu is
   set (scale or shift NULL: none): a bias, a following eval-mode BatchNorm and ReLU done as the
   product stores each tile (affine.h). */
void FN(linear_affine_forward)(real *out, const real *inp, const real *weight, const real *scale, const real *shift,
                               int relu, int N, int C, int OC);

/* dinp[N,C] += (accumulate set) or = (not read) dout[N,OC] · weight; dweight[OC,C] += doutᵀ · inp;
   dbias[OC] += Σ_n dout. Any of dinp, dweight, dbias may be NULL (not wanted). The two products at
   precision p (gemm_at). */
void FN(linear_backward)(herbs_precision p, real *dinp, real *dweight, real *dbias, const real *dout, const real *inp,
                         const real *weight, int N, int C, int OC, int accumulate);
