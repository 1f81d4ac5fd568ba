/* The pre-norm transformer block of Swin and ViT (timm's SwinTransformerBlock and Block):
     x1  = x  + s1 · proj(attention(qkv(norm1(x))))
     out = x1 + s2 · fc2(GELU(fc1(norm2(x1))))
   on M = B·L tokens [B, L, C] row-major, s1 and s2 the drop-path scales of each sample (1 without
   drop path). The owner gives the attention between qkv and proj (Swin's shifted windows with a
   relative position bias, ViT's global attention) as a step with a forward and a backward, and its
   LayerNorms' epsilon. What backward needs is saved lean (block_saved): the LayerNorm statistics,
   not their outputs, which backward recomputes; the log-sum-exp of each attention row, not the
   probabilities; the MLP's pre-activation, not the GELU output. Where the MLP's weights are small
   next to the L2 cache (Swin's first stage), its rows go in chunks, each thread running fc1, GELU
   and fc2 on a chunk alone with the GELU output in a buffer that stays in its L2.

   Drop path of block k, branch j (0 attention, 1 MLP) draws sample b's keep decision from
   herbs_rng_uniform(seed, TRANSFORMER_DROP_STREAM(step, k, j), b). */
#ifndef HERBS_NN_TRANSFORMER_BLOCK_H
#define HERBS_NN_TRANSFORMER_BLOCK_H

#include <stdint.h>

#include "core/arena.h"
#include "nn/product.h"

#define TRANSFORMER_DROP_STREAM(step, block, branch) (((uint64_t)(step) << 16) + 2 * (uint64_t)(block) + (branch))

typedef struct {
    size_t weight, bias;
} norm_offsets;

/* What a block's backward needs from its forward besides the block's input, for M tokens of C
   channels, `heads` heads and an MLP of `hidden` channels; in the owner's arena. */
typedef struct {
    float *mean1, *rstd1; /* [M]: norm1's statistics */
    float *qkv;           /* [M, 3C]: the qkv product's output */
    float *bias;          /* Swin: [heads, N, N], the relative position bias gathered from its table; ViT: unused */
    float *lse;           /* [M·heads]: each attention row's log-sum-exp, in the attention's order */
    float *att;           /* [M, C]: the attention output, proj's input */
    float *x1;            /* [M, C]: the residual stream after the attention branch */
    float *mean2, *rstd2; /* [M]: norm2's statistics */
    float *hidden;        /* [M, hidden]: fc1's output, GELU's input (backward overwrites it); at bf16 written
                             only for a backward (not by an eval forward that none recomputes) */
    uint16_t *act;        /* [M, hidden] bf16: GELU's output, for fc2's weight gradient (training at bf16;
                             otherwise NULL, and the backward makes it again) */
} block_saved;

/* Floats of each block_saved buffer: stats (mean1, rstd1, mean2, rstd2), qkv, bias (0: none), lse,
   tokens (att, x1), hidden, act (0: none). */
typedef struct {
    size_t stats, qkv, bias, lse, tokens, hidden, act;
} block_saved_sizes;

/* Those of a block of M tokens of C channels, `heads` heads, an MLP of `hidden` and `bias` floats
   of attention bias; with keep_act_bf16, room for GELU's output in bf16 (block_keeps_act). */
block_saved_sizes block_saved_sizes_of(size_t M, int C, int heads, int hidden, size_t bias, int keep_act_bf16);

/* Whether a forward (train mode or not) keeps GELU's output in block_saved: in training at bf16,
   2 bytes per hidden element, so that the backward need not make it again. Where it does, the
   frame's act scratch is not used and its owner need not allocate it. */
int block_keeps_act(const herbs_params *t, int train);

/* *act = the frame's act scratch of `floats` from the arena, or NULL where block_keeps_act. */
herbs_status block_act_scratch(const herbs_params *t, int train, size_t floats, herbs_arena *arena, float **act);

/* The larger of a and b, buffer by buffer: a set that serves blocks of either size. */
block_saved_sizes block_saved_sizes_max(block_saved_sizes a, block_saved_sizes b);

/* v's buffers from the arena (v->bias NULL when n.bias is 0, v->act when n.act is). */
herbs_status block_saved_alloc(block_saved *v, block_saved_sizes n, herbs_arena *arena);

typedef struct {
    int index;       /* over all blocks of the backbone: its drop-path streams */
    float drop_prob; /* stochastic depth rate */
    norm_offsets norm1, norm2;
    herbs_weight qkv, proj, fc1, fc2;
    /* the last forward */
    const float *x;            /* [B, L, C]: the block's input */
    float *out;                /* [B, L, C]: its output */
    float *scale1, *scale2;    /* [B]: drop-path scales per sample, NULL when no drop path ran */
    herbs_precision attention; /* the attention's precision (bf16: no lse; its output v->att is stored
                                  in bf16, as it only feeds proj's products) */
    block_saved saved;         /* train mode only */
} transformer_block;

/* A block's shape and the scratch that all blocks of a backbone share: forward and backward use
   ln and branch [M, C] and act [M, hidden] (NULL where block_keeps_act); backward also dln (= datt)
   [M, C] and dact (= dqkv) [M, max(hidden, 3C)], buffers whose uses never overlap (NULL in a forward
   pass: an eval-mode forward given them is a backward's recompute, and keeps what that backward reads). */
typedef struct {
    int B, L, C, hidden;
    float eps; /* the LayerNorms' */
    float *ln, *branch, *act;
    float *dln, *dact;
} block_frame;

/* The attention between qkv and proj, given by the block's owner. */
typedef struct block_attention {
    /* v->att (bf16 bit patterns at bf16), and v->lse (and what else its backward needs), from
       v->qkv at k->attention's precision */
    void (*forward)(const struct block_attention *self, const transformer_block *k, const herbs_params *t,
                    const block_saved *v);
    /* dqkv [M, 3C] (written) from datt [M, C]; its parameters' gradients accumulate */
    void (*backward)(const struct block_attention *self, const transformer_block *k, herbs_params *t,
                     const block_saved *v, const float *datt, float *dqkv);
} block_attention;

/* timm's initialisers of a transformer: LayerNorm weight ones, biases zeros, Linear weights (and
   position embeddings, bias tables) N(0, 0.02²) — trunc_normal_(std=.02) cuts at ±2 absolute,
   ±100σ: in effect a plain normal. */
extern const herbs_init TRANSFORMER_ZEROS, TRANSFORMER_ONES, TRANSFORMER_NORMAL;

/* A LayerNorm's "{name}.weight" and "{name}.bias" [dim], and a Linear's "{name}.weight" [out, in]
   and, with bias, "{name}.bias" [out], with timm's initialisers. */
herbs_status transformer_norm_add(herbs_params *t, norm_offsets *n, const char *prefix, const char *name, int dim);

/* The LayerNorm n of x [M, C] into out, for the products that read it (product_rows_forward_input):
   fp32, or with out_bf16 bf16 bit patterns in out's first half; mean and rstd [M] kept. */
void transformer_norm_forward(const herbs_params *t, norm_offsets n, float *out, int out_bf16, float *mean, float *rstd,
                              const float *x, int M, int C, float eps);
herbs_status transformer_linear_add(herbs_params *t, herbs_weight *w, const char *prefix, const char *name, int in,
                                    int out, int bias);

/* A tensor of the owner's attention, registered between norm1 and attn.qkv as timm orders them
   (Swin's relative position bias table): "{block}.{name}" [rows, cols], N(0, 0.02²), its offset
   into *offset; name NULL: none. */
typedef struct {
    const char *name;
    int64_t rows, cols;
    size_t *offset;
} block_attention_tensor;

/* Registers block k's tensors in timm's state-dict order, named "{name}.": norm1, the attention's
   tensor, attn.qkv (its bias with qkv_bias), attn.proj, norm2, mlp.fc1, mlp.fc2, for C channels
   and an MLP of `hidden`. */
herbs_status transformer_block_add(herbs_params *t, transformer_block *k, const char *prefix, const char *name, int C,
                                   int hidden, int qkv_bias, block_attention_tensor attention);

/* x [B, L, C] -> out [B, L, C] (out may be f->branch), keeping what backward needs in v. Drop
   path in train mode, with its scales allocated here. */
herbs_status transformer_block_forward(transformer_block *k, const block_frame *f, const block_attention *attention,
                                       const herbs_params *t, herbs_arena *arena, const float *x, float *out,
                                       const block_saved *v, int train, uint64_t seed, uint64_t step);

/* d [B, L, C]: the gradient of the block's output on entry, of its input on return. Parameter
   gradients accumulate; v->hidden is overwritten (one backward per forward). */
void transformer_block_backward(transformer_block *k, const block_frame *f, const block_attention *attention,
                                herbs_params *t, const block_saved *v, float *d);

#endif
