/* Optimiser updates: one flat loop over a parameter block, as PyTorch's torch.optim does per
   tensor (same formulas, same order of operations). */

/* SGD, PyTorch semantics with dampening 0: g = grad + weight_decay·p;
   buf = momentum·buf + g; p -= lr · (nesterov ? g + momentum·buf : buf). All [n]. */
void FN(sgd_update)(real *params, const real *grads, real *momentum_buf, size_t n, real lr, real momentum,
                    real weight_decay, int nesterov);

/* AdamW, PyTorch semantics: p *= 1 - lr·weight_decay; m += (1-β1)·(g - m); v = β2·v + (1-β2)·g²;
   p -= lr/(1-β1^step) · m / (sqrt(v)/sqrt(1-β2^step) + eps), step counted from 1. All [n]. */
void FN(adamw_update)(real *params, const real *grads, real *exp_avg, real *exp_avg_sq, size_t n, real lr,
                      real beta1, real beta2, real eps, real weight_decay, int step);

/* The number of values of x[n] that are NaN or ±infinity, in one pass: the check of a gradient
   block before an optimiser step (and of images at the API). */
size_t FN(count_nonfinite)(const real *x, size_t n);

/* ema = torch.lerp(ema, value, weight): ema + weight·(value - ema) for weight < 0.5, else
   value - (value - ema)·(1 - weight) (exact at weight 1): the EMA of a parameter block. All [n]. */
void FN(ema_update)(real *ema, const real *value, size_t n, real weight);

/* Σ x[i]², accumulated in double, in one pass over x[n]: the squared 2-norm of a gradient block
   (gradient clipping). The order of the sums is fixed for a thread count and instruction set. */
double FN(sum_squares)(const real *x, size_t n);
