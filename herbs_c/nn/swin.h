/* The Swin Transformer backbone (SPEC.md §1–2) in the old timm / Microsoft layout: patch merging
   at the end of stages 1–3, taps after each stage's merging (stage 4: its last block).

   Config keys (all optional; defaults are Swin-T at 224 px):
     variant        "tiny" | "small" | "base" | "large": embed_dim, depths, num_heads of SPEC.md §2
     img_size       224; patch_size 4; in_chans 3
     embed_dim      96; depths (2, 2, 6, 2); num_heads (3, 6, 12, 24)
     window_size    7 (12 when img_size is 384)
     mlp_ratio      4.0; qkv_bias 1; drop_path_rate 0.1 (rises linearly over all blocks)
   LayerNorm eps is 1e-5. A stage whose map is no larger than the window uses one window of the
   whole map and no shift (its bias table is then [(2r-1)², heads] for map size r, as in timm).

   Drop path of block k (counted over all stages from 0), branch j (0 attention, 1 MLP) draws
   sample b's keep decision from herbs_rng_uniform(seed, TRANSFORMER_DROP_STREAM(step, k, j), b)
   (nn/transformer_block.h). */
#ifndef HERBS_NN_SWIN_H
#define HERBS_NN_SWIN_H

#include "nn/backbone.h"

herbs_status swin_backbone_create(herbs_backbone **out, herbs_config *config, herbs_params *t, const char *prefix);

#endif
