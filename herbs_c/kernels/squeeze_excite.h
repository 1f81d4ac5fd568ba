/* Squeeze-and-excitation on NHWC activations, torchvision's SqueezeExcitation as EfficientNet
   builds it: pooled = the mean over the P positions of each image, hidden = pooled·W1ᵀ + b1,
   gate = σ(silu(hidden)·W2ᵀ + b2), out = inp·gate per (image, channel). W1 [S, C] and W2 [C, S]
   are the two 1×1 convolutions' weights ([S, C, 1, 1] and [C, S, 1, 1] in PyTorch: the same
   memory), b1 [S] and b2 [C] their biases. */

/* out[B,P,C] = SE(inp[B,P,C]), keeping pooled[B,C], hidden[B,S] (before the SiLU), act[B,S] (after
   it) and gate[B,C] for the backward; out may alias inp */
void FN(squeeze_excite_forward)(real *out, real *pooled, real *hidden, real *act, real *gate, const real *inp,
                                const real *w1, const real *b1, const real *w2, const real *b2, int B, int P, int C,
                                int S);

/* dinp[B,P,C] += (accumulate set) or = (not read) d(inp), and dw1, db1, dw2, db2 += from
   dout[B,P,C], through the forward's inp, pooled, hidden, act and gate; scratch holds B·(2·C + S)
   floats. dinp may not alias dout or inp. */
void FN(squeeze_excite_backward)(real *dinp, real *dw1, real *db1, real *dw2, real *db2, const real *dout,
                                 const real *inp, const real *pooled, const real *hidden, const real *act,
                                 const real *gate,
                                 const real *w1, const real *w2, real *scratch, int B, int P, int C, int S,
                                 int accumulate);
