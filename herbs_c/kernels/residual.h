/* Residual joins: Swin's sum of the residual and a branch (scaled per sample by drop path), the
   sum of two branches through a ReLU of a bottleneck block, and the plain sum that joins
   gradients. */

/* out[B, M] = res + scale[b]·branch (scale NULL: 1). out may alias res or branch. */
void FN(residual_add_forward)(real *out, const real *res, const real *branch, const real *scale, int B, long M);
/* dbranch[B, M] += (accumulate set) or = (not read) scale[b]·dout (scale NULL: 1). The residual's
   gradient is dout itself. */
void FN(residual_add_backward)(real *dbranch, const real *dout, const real *scale, int B, long M, int accumulate);

/* out[n] = max(0, a + b) (relu_forward's: NaN stays); out may alias a or b */
void FN(add_relu_forward)(real *out, const real *a, const real *b, size_t n);
/* da[n] += relu_backward's masked dout (0 where out <= 0), db[n] += the same, from the forward's
   output; either may be NULL. Without accumulate they are written (not read) instead. */
void FN(add_relu_backward)(real *da, real *db, const real *dout, const real *out, size_t n, int accumulate);
/* dst[n] += src[n] */
void FN(add_into)(real *dst, const real *src, size_t n);
/* add_into's loop in the current instruction set's build, dst[i0:i1] += src[i0:i1] on the calling thread:
   for a caller that adds piece by piece inside its own threads (the GEMM's residual epilogue). */
typedef void (*FN(add_into_span_fn))(real *dst, const real *src, size_t i0, size_t i1);
FN(add_into_span_fn) FN(add_into_span_current)(void);
