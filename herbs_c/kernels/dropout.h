/* Dropout with a counter-based mask (core/rng.h): element i is kept when
   herbs_rng_uniform(seed, stream, i) >= p and then scaled by 1/(1-p); with p >= 1 nothing is kept.
   The backward recomputes the same mask from (seed, stream). */

/* out[n] = inp · keep(i) / (1-p); out may alias inp */
void FN(dropout_forward)(real *out, const real *inp, size_t n, real p, uint64_t seed, uint64_t stream);
/* dinp[n] += dout · keep(i) / (1-p) */
void FN(dropout_backward)(real *dinp, const real *dout, size_t n, real p, uint64_t seed, uint64_t stream);
