/* The Vision Transformer backbone (Dosovitskiy et al. 2021) as timm's VisionTransformer builds
   it and the HERBS release uses it (vit_base_patch16_224_miil_in21k at 448 px): a patch
   embedding (Conv2d k = stride = patch), a class token in front, a learned position embedding
   added, then pre-norm blocks x = x + DropPath(Attn(LN1(x))); x = x + DropPath(MLP(LN2(x))) with
   global multi-head attention over all tokens and an exact-GELU MLP. LayerNorm eps is 1e-6
   (timm's ViT). The taps are the outputs of four blocks, every token included: [B, S, D] with
   S = 1 + (img_size / patch)², the class token first (what the release's feature extractor hands
   its pyramid and selector). Blocks after the deepest tap, the final norm and the classifier are
   not computed.

   Config keys (all optional; defaults are the release's ViT-B/16):
     img_size 448; patch_size 16; in_chans 3; embed_dim 768; depth 12; num_heads 12;
     mlp_ratio 4.0; qkv_bias 0 (the MIIL model has none; timm's other ViT-B/16 have one);
     drop_path_rate 0.0 (rises linearly over the blocks, torch.linspace(0, rate, depth));
     taps (4 block indices, 0-based, repeats allowed; default the last four, blocks.8..11 for
     depth 12, block 0 repeated when there are fewer).
   Tensors (timm's names): cls_token [1, 1, D], pos_embed [1, S, D], patch_embed.proj.weight
   [D, in_chans, p, p] and .bias, blocks.{i}.norm1, attn.qkv (.bias with qkv_bias), attn.proj,
   norm2, mlp.fc1, mlp.fc2. Each tap's grid is reported as 1 × S (the class token is no pixel).

   Drop path of block k, branch j (0 attention, 1 MLP) draws sample b's keep decision from
   herbs_rng_uniform(seed, TRANSFORMER_DROP_STREAM(step, k, j), b)
   (nn/transformer_block.h). */
#ifndef HERBS_NN_VIT_H
#define HERBS_NN_VIT_H

#include "nn/backbone.h"

herbs_status vit_backbone_create(herbs_backbone **out, herbs_config *config, herbs_params *t, const char *prefix);

#endif
