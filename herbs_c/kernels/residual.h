/* The residual join of a bottleneck block (the sum of two branches through a ReLU), and the plain
   sum that joins gradients. */

/* out[n] = max(a + b, 0); out may alias a or b */
void FN(add_relu_forward)(real *out, const real *a, const real *b, size_t n);
/* da[n] += dout·(out > 0), db[n] += the same, from the forward's output; either may be NULL.
   Without accumulate they are written (not read) instead. */
void FN(add_relu_backward)(real *da, real *db, const real *dout, const real *out, size_t n, int accumulate);
/* dst[n] += src[n] */
void FN(add_into)(real *dst, const real *src, size_t n);
