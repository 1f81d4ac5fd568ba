/* The Swin backbone's structure, shared by its construction (swin_build.c) and its compute
   (swin.c). Private to those two files. */
#ifndef HERBS_NN_SWIN_INTERNAL_H
#define HERBS_NN_SWIN_INTERNAL_H

#include <stddef.h>

#include "nn/swin.h"
#include "nn/transformer_block.h"

#define SWIN_STAGES 4
#define SWIN_LN_EPS 1e-5f /* every LayerNorm of the backbone */

/* A block: the transformer block (its norms, products, drop path and saved activations) with
   Swin's attention, shifted windows with a relative position bias. */
typedef struct {
    transformer_block block; /* block.index counts over all blocks of all stages */
    int shift;               /* 0 or window/2 */
    size_t table;            /* the relative position bias table [(2w-1)², heads] */
} swin_block;

typedef struct {
    int depth, dim, heads, res, window, hidden; /* res: the map is res × res; window = min(window, res) */
    swin_block *blocks;
    norm_offsets merge_norm; /* stages 1–3 end with a patch merging */
    herbs_weight merge_reduction;
    /* saved by the last forward, for a map of M = B·res² tokens of `dim` channels */
    float *merged;                 /* [M/4, 4·dim]: the patch merging's concatenation, its norm's input */
    float *merge_mean, *merge_rstd; /* [M/4]: that norm's statistics */
    float *tap;                    /* the stage's tap: [B, res²/4, 2·dim] after the merging (stages 1–3),
                                      the last block's output [B, res², dim] (stage 4) */
} swin_stage;

typedef struct {
    herbs_backbone base;
    int patch, embed_dim;
    herbs_weight embed; /* the patch embedding's conv, kernel = stride = patch */
    norm_offsets embed_norm;
    swin_stage stages[SWIN_STAGES];
    /* the last forward */
    int batch, threads;
    int kept;              /* train mode: every block kept its block_saved; eval: `shared` serves all */
    block_saved shared;    /* eval: sized for the largest stage, recomputed per block by a backward */
    /* M0 = B·(img/patch)² tokens of embed_dim D channels; K = 3·patch² */
    float *patches;                 /* [M0, K]: the images as patch rows, the embedding's input */
    float *embedded;                /* [M0, D]: the embedding's output, its norm's input */
    float *embed_mean, *embed_rstd; /* [M0]: that norm's statistics */
    /* its scratch, which backward reuses: sized by scratch_needed (the largest stage) */
    float *ln, *branch, *act, *work; /* a LayerNorm output, a branch output, the GELU output, attention work */
} swin;

herbs_status swin_forward(herbs_backbone *bb, const herbs_params *t, herbs_arena *arena, const float *images,
                          int batch, int train, uint64_t seed, uint64_t step, float *taps[HERBS_TAPS]);
herbs_status swin_backward(herbs_backbone *bb, herbs_params *t, herbs_arena *arena,
                           const float *const dtaps[HERBS_TAPS], float *dimages, float *tap_grads[HERBS_TAPS]);

#endif
