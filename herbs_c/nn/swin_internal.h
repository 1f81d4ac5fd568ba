/* The Swin backbone's structure, shared by its construction (swin_build.c) and its compute
   (swin.c). Private to those two files. */
#ifndef HERBS_NN_SWIN_INTERNAL_H
#define HERBS_NN_SWIN_INTERNAL_H

#include <stddef.h>

#include "nn/product.h"
#include "nn/swin.h"

#define SWIN_STAGES 4
#define SWIN_LN_EPS 1e-5f /* every LayerNorm of the backbone */

typedef struct {
    size_t weight, bias;
} norm_offsets;

/* What a block's backward needs from its forward, besides the block's input. */
typedef struct {
    float *mean1, *rstd1, *qkv, *bias, *lse, *att, *x1, *mean2, *rstd2, *hidden;
} block_saved;

typedef struct {
    int index;        /* over all blocks of all stages */
    int shift;        /* 0 or window/2 */
    float drop_prob;  /* stochastic depth rate of this block */
    norm_offsets norm1, norm2;
    size_t table;
    herbs_weight qkv, proj, fc1, fc2;
    /* the last forward */
    const float *x;
    float *out;
    float *scale1, *scale2; /* drop-path scales per sample, NULL when no drop path ran */
    block_saved saved;      /* train mode only */
} swin_block;

typedef struct {
    int depth, dim, heads, res, window, hidden; /* res: the map is res × res; window = min(window, res) */
    swin_block *blocks;
    norm_offsets merge_norm; /* stages 1–3 end with a patch merging */
    herbs_weight merge_reduction;
    float *merged, *merge_mean, *merge_rstd, *tap; /* saved */
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
    block_saved shared;
    float *patches, *embedded, *embed_mean, *embed_rstd;
    float *ln, *branch, *act, *work; /* its scratch, which backward reuses */
} swin;

herbs_status swin_forward(herbs_backbone *bb, const herbs_params *t, herbs_arena *arena, const float *images,
                          int batch, int train, uint64_t seed, uint64_t step, float *taps[HERBS_TAPS]);
herbs_status swin_backward(herbs_backbone *bb, herbs_params *t, herbs_arena *arena,
                           const float *const dtaps[HERBS_TAPS], float *dimages, float *tap_grads[HERBS_TAPS]);

#endif
