/* Shifted-window multi-head self-attention of Swin (SPEC.md §2) on a map of H×W tokens, fused per
   (sample, window, head): the windows are gathered from all tokens by index, with the cyclic shift
   (roll by -shift) applied by the index, and the results go back to the tokens they came from.
   Windows are window×window = N tokens; window divides H and W; shift is 0 or less than window.
   With a shift, logits between tokens of different pre-roll regions get -100 (old timm's mask). */

/* bias[heads, N, N] <- table[(2w-1)², heads] through the relative-position index
   (dy + w - 1)·(2w - 1) + (dx + w - 1) of each (query, key) pair, w = window. */
void FN(relative_bias_forward)(real *bias, const real *table, int heads, int window);

/* dtable[(2w-1)², heads] += dbias[heads, N, N] summed back through the same index. */
void FN(relative_bias_backward)(real *dtable, const real *dbias, int heads, int window);

/* Floats of `work` per thread that window_attention_forward/backward need. */
size_t FN(window_attention_work)(int head_dim, int window, int heads);

/* qkv[B, H·W, 3C] (q | k | v per token, heads contiguous inside each, C = heads·head_dim) ->
   out[B, H·W, C] = softmax(q·kᵀ/√head_dim + bias + mask)·v per window and head; lse[B, nW, heads, N]
   (log-sum-exp of every logit row, nW = H·W/N windows) is saved for backward (lse NULL: not). work holds
   threads × window_attention_work(...) floats; at most `threads` threads run. */
void FN(window_attention_forward)(real *out, real *lse, real *work, const real *qkv, const real *bias, int B, int H,
                                  int W, int C, int heads, int window, int shift, int threads);

/* The same at precision p: HERBS_BF16 multiplies q·kᵀ and p·v with bf16 operands (q scaled first,
   the probabilities rounded after the fp32 softmax) and fp32 accumulation where the CPU has
   AVX512-BF16, and stays fp32 elsewhere. With out_bf16 (not NULL) the output goes there rounded
   to bf16 (bit patterns; out is not written): for an output that only feeds a bf16 product, in the
   rounding that product's packing would give it. Float engine only (declared for both, defined once). */
void window_attention_forward_at(herbs_precision p, float *out, uint16_t *out_bf16, float *lse, float *work,
                                 const float *qkv, const float *bias, int B, int H, int W, int C, int heads,
                                 int window, int shift, int threads);

/* dout[B, H·W, C] -> dqkv[B, H·W, 3C] and dbias[heads, N, N] (summed over samples and windows in a
   fixed order for a given thread count), from the forward's qkv and lse: both added onto when
   accumulate is set, written (not read) when it is 0. lse NULL: the probabilities are the softmax
   of the logits recomputed here in fp32 (a forward at bf16 saved the log-sum-exp of its bf16
   logits, with which these would not sum to 1). */
void FN(window_attention_backward)(real *dqkv, real *dbias, real *work, const real *dout, const real *qkv,
                                   const real *bias, const real *lse, int B, int H, int W, int C, int heads,
                                   int window, int shift, int threads, int accumulate);

/* The same at precision p: HERBS_BF16 runs the five products (q·kᵀ, dout·vᵀ, ds·k, dsᵀ·(q·scale),
   pᵀ·dout) with bf16 operands and fp32 accumulation where the CPU has AVX512-BF16 (the softmax
   and its gradient fp32, the probabilities and their gradient rounded to bf16 for the products:
   autocast's recipe), ignoring lse (the probabilities recomputed); fp32 elsewhere. Float engine only. */
void window_attention_backward_at(herbs_precision p, float *dqkv, float *dbias, float *work, const float *dout,
                                  const float *qkv, const float *bias, const float *lse, int B, int H, int W, int C,
                                  int heads, int window, int shift, int threads, int accumulate);

/* Global multi-head self-attention (ViT): every token attends to all S tokens of its sample, no
   bias and no mask — window attention with one window of the whole sequence.
   Floats of `work` per thread that attention_forward/backward need. */
size_t FN(attention_work)(int head_dim, int tokens, int heads);

/* qkv[B, S, 3C] (q | k | v per token, heads contiguous inside each, C = heads·head_dim) ->
   out[B, S, C] = softmax(q·kᵀ/√head_dim)·v per head; lse[B, heads, S] saved for backward (NULL: not). work holds
   threads × attention_work(...) floats; at most `threads` threads run. */
void FN(attention_forward)(real *out, real *lse, real *work, const real *qkv, int B, int S, int C, int heads,
                           int threads);

/* The same at precision p, as window_attention_forward_at. Float engine only. */
void attention_forward_at(herbs_precision p, float *out, uint16_t *out_bf16, float *lse, float *work,
                          const float *qkv, int B, int S, int C, int heads, int threads);

/* dout[B, S, C] -> dqkv[B, S, 3C] (added onto when accumulate is set, else written), from the
   forward's qkv and lse (NULL: the probabilities recomputed in fp32, as window_attention_backward). */
void FN(attention_backward)(real *dqkv, real *work, const real *dout, const real *qkv, const real *lse, int B, int S,
                            int C, int heads, int threads, int accumulate);

/* The same at precision p, as window_attention_backward_at. Float engine only. */
void attention_backward_at(herbs_precision p, float *dqkv, float *work, const float *dout, const float *qkv,
                           const float *lse, int B, int S, int C, int heads, int threads, int accumulate);
