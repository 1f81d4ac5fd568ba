/* Elementwise activations over n values. Backward kernels add onto dinp when `accumulate` is set
   and write it (not read) when it is 0. */

/* out[n] = max(0, inp) as PyTorch's relu: NaN stays NaN (and -0 stays -0); out may alias inp */
void FN(relu_forward)(real *out, const real *inp, size_t n);
/* dinp[n] += (accumulate set) or = (out <= 0 ? 0 : dout), from the forward's output — a NaN output
   passes dout, as torch's threshold_backward; dinp may alias dout when it is written (the mask
   applied in place) */
void FN(relu_backward)(real *dinp, const real *dout, const real *out, size_t n, int accumulate);
/* relu_forward stored in bf16 (bit patterns, bf16.h's rounding), and relu_backward with that output
   as the mask: for a ReLU whose output only feeds bf16 products (the rounding keeps every sign, so
   the mask is the fp32 one but where a positive value of at most 2^-134 rounds to +0). Float engine
   only (declared for both, defined once). */
void relu_forward_bf16(uint16_t *out, const float *inp, size_t n);
void relu_backward_bf16(float *dinp, const float *dout, const uint16_t *out, size_t n, int accumulate);

/* out[n] = x · Φ(x) = x/2 · (1 + erf(x/√2)), the exact GELU; out may alias inp */
void FN(gelu_forward)(real *out, const real *inp, size_t n);
/* x · Φ(x) stored in bf16 (bit patterns, bf16.h's rounding), Φ from a table of polynomials within
   1.8e-7 of the truth: for an output that only feeds bf16 products (gelu_bf16.c). Float engine
   only (declared for both, defined once). */
void gelu_forward_bf16(uint16_t *out, const float *inp, size_t n);
/* The current instruction set's span of relu_forward_bf16 or gelu_forward_bf16 (gemm_bf16.h), for a
   caller that runs it piece by piece on its own thread (the GEMM's bf16 activation output); the
   second is gelu_bf16.c's. Float engine only. */
bf16_activation_span_fn bf16_activation_span(herbs_bf16_activation act);
bf16_activation_span_fn gelu_bf16_span_isa(void);
/* g[n] = dout · GELU'(x) with Φ and its derivative from gelu_forward_bf16's table, within 1e-6 of
   the exact derivative: for a gradient rounded to bf16 next (linear_backward_bf16 through GELU).
   On the calling thread. Float engine only. */
void gelu_backward_table(float *g, const float *dout, const float *x, size_t n);
/* Its build for the current instruction set, chosen once by a caller that runs it row by row. */
typedef void (*gelu_backward_table_fn)(float *g, const float *dout, const float *x, size_t n);
gelu_backward_table_fn gelu_backward_table_isa(void);
/* dinp[n] += (accumulate set) or = dout · (Φ(x) + x·φ(x)), from the forward's input */
void FN(gelu_backward)(real *dinp, const real *dout, const real *inp, size_t n, int accumulate);

/* out[n] = gelu(x) and deriv[n] = gelu'(x) in one pass, for a backward that needs both (the
   output for a weight gradient, the derivative for the input gradient); deriv may alias inp */
void FN(gelu_forward_derivative)(real *out, real *deriv, const real *inp, size_t n);

/* dinp[n] += (accumulate set) or = dout · deriv: the backward of an elementwise activation, given
   its derivative; dinp may alias dout or deriv when it is written */
void FN(activation_backward)(real *dinp, const real *dout, const real *deriv, size_t n, int accumulate);

/* out[n] = x · σ(x), SiLU (swish) with the logistic σ; out may alias inp */
void FN(silu_forward)(real *out, const real *inp, size_t n);
/* dinp[n] += (accumulate set) or = dout · σ(x)·(1 + x·(1 - σ(x))), from the forward's input; dinp
   may alias dout when it is written */
void FN(silu_backward)(real *dinp, const real *dout, const real *inp, size_t n, int accumulate);
