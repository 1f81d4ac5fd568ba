/* The selector's ranking of tokens (SPEC.md §3.5), from token logits [B, S, C]. */

/* Per sample b: mean[b,:] = the token-mean logits; c* = argmax of softmax(mean[b]) (first maximum);
   score[b,t] = softmax(logits[b,t,:])[c*]; order[b,:] = the token indices by score descending,
   ties lower index first (a stable sort). NaN ranks as PyTorch's sort and argmax rank it: above
   every number, so tokens with a NaN score come first (by index), and a NaN in mean[b] makes
   c* = 0 (every probability is NaN; torch.argmax takes the first). order, scratch, score [B,S];
   mean [B,C]. */
void FN(select_rank)(int *order, int *scratch, real *score, real *mean, const real *logits, int B, int S, int C);
