/* Layer normalisation over rows of C values (PyTorch's LayerNorm on the last axis). */

/* out[N,C] = (inp - mean) · rstd · weight + bias per row; saves mean[N] and rstd[N] = 1/sqrt(var + eps)
   (biased var) for backward. out may alias inp. */
void FN(layernorm_forward)(real *out, real *mean, real *rstd, const real *inp, const real *weight, const real *bias,
                           int N, int C, real eps);

/* The same, out stored rounded to bf16 (bit patterns, bf16.h's rounding): for an output that only
   feeds bf16 products (gemm_prepacked_bf16_rows). Float engine only (declared for both, defined once). */
void layernorm_forward_bf16(uint16_t *out, float *mean, float *rstd, const float *inp, const float *weight,
                            const float *bias, int N, int C, float eps);

/* dinp[N,C] += (accumulate set) or = (not read) the input gradient; dweight[C] += Σ_rows dout·x̂;
   dbias[C] += Σ_rows dout, with x̂ = (inp - mean)·rstd. dinp, dweight, dbias may be NULL (not wanted). */
void FN(layernorm_backward)(real *dinp, real *dweight, real *dbias, const real *dout, const real *inp,
                            const real *weight, const real *mean, const real *rstd, int N, int C, int accumulate);
