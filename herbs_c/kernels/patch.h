/* Swin's patch embedding and patch merging: the data movement around a GEMM and a LayerNorm. */

/* A conv with kernel = stride = p and bias, as a patch matrix and a GEMM: patches[B·L, C·p·p]
   (L = (H/p)·(W/p), columns in the weight's (c, ky, kx) order; saved for backward) <- images
   [B, C, H, W]; out[B·L, D] = patches · weightᵀ + bias, weight [D, C, p, p]. */
void FN(patch_embed_forward)(real *out, real *patches, const real *images, const real *weight, const real *bias, int B,
                             int C, int H, int W, int p, int D);

/* dweight[D, C·p·p] += doutᵀ·patches, dbias[D] += Σ dout, and, unless dimages is NULL,
   dimages[B, C, H, W] += (accumulate set) or = (not read) the image gradient (work holds B·L·C·p·p
   floats for it). */
void FN(patch_embed_backward)(real *dimages, real *dweight, real *dbias, real *work, const real *dout,
                              const real *patches, const real *weight, int B, int C, int H, int W, int p, int D,
                              int accumulate);

/* out[B, (H/2)·(W/2), 4C] <- inp[B, H·W, C]: each 2×2 block's tokens (0,0), (1,0), (0,1), (1,1)
   (row offset first) concatenated on channels. */
void FN(patch_merge_forward)(real *out, const real *inp, int B, int H, int W, int C);

/* dinp[B, H·W, C] += (accumulate set) or = (not read) dout[B, (H/2)·(W/2), 4C] sent back to the
   tokens it came from (H and W even: every token is one's source). */
void FN(patch_merge_backward)(real *dinp, const real *dout, int B, int H, int W, int C, int accumulate);
