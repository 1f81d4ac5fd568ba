/* Stochastic depth (drop path): a whole sample's branch is dropped or kept and scaled by
   1/keep_prob, in train mode only; residual_add_forward/backward (residual.h) apply the scales. */

/* scale[B] = 1/keep_prob where sample b is kept, 0 where it is dropped; b is kept when
   herbs_rng_uniform(seed, stream, b) < keep_prob, so the mask is a function of (seed, stream, b). */
void FN(drop_path_scales)(real *scale, int B, real keep_prob, uint64_t seed, uint64_t stream);
