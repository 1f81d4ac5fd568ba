/* Swin's patch embedding and patch merging: the data movement around a GEMM and a LayerNorm. */

/* A conv with kernel = stride = p is a patch matrix and a GEMM (nn/product.h):
   patches[B·L, C·p·p] (L = (H/p)·(W/p), columns in the weight's (c, ky, kx) order) <- images
   [B, C, H, W]; then out[B·L, D] = patches · weightᵀ + bias, weight [D, C, p, p]. */
void FN(patch_embed_gather)(real *patches, const real *images, int B, int C, int H, int W, int p);

/* dimages[B, C, H, W] += (accumulate set) or = (not read; pixels no patch covers: 0) dpatches[B·L, C·p·p]
   sent back to the pixels they came from. */
void FN(patch_embed_scatter)(real *dimages, const real *dpatches, int B, int C, int H, int W, int p, int accumulate);

/* out[B, (H/2)·(W/2), 4C] <- inp[B, H·W, C]: each 2×2 block's tokens (0,0), (1,0), (0,1), (1,1)
   (row offset first) concatenated on channels. */
void FN(patch_merge_forward)(real *out, const real *inp, int B, int H, int W, int C);

/* dinp[B, H·W, C] += (accumulate set) or = (not read) dout[B, (H/2)·(W/2), 4C] sent back to the
   tokens it came from (H and W even: every token is one's source). */
void FN(patch_merge_backward)(real *dinp, const real *dout, int B, int H, int W, int C, int accumulate);
