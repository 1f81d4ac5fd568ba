/* Residual connections with stochastic depth (drop path): a whole sample's branch is dropped or
   kept and scaled by 1/keep_prob, in train mode only. */

/* scale[B] = 1/keep_prob where sample b is kept, 0 where it is dropped; b is kept when
   herbs_rng_uniform(seed, stream, b) < keep_prob, so the mask is a function of (seed, stream, b). */
void FN(drop_path_scales)(real *scale, int B, real keep_prob, uint64_t seed, uint64_t stream);

/* out[B, M] = res + scale[b]·branch (scale NULL: 1). out may alias res or branch. */
void FN(residual_add_forward)(real *out, const real *res, const real *branch, const real *scale, int B, long M);

/* dbranch[B, M] += scale[b]·dout (scale NULL: 1). The residual's gradient is dout itself. */
void FN(residual_add_backward)(real *dbranch, const real *dout, const real *scale, int B, long M);
