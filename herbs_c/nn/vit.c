/* The ViT backbone (vit.h): tokens [B, S, D] row-major throughout, every activation in the
   owner's arena. Its blocks are transformer blocks (transformer_block.h) with global attention;
   in train mode each keeps its block_saved. An eval-mode forward keeps each block's input and
   output only and shares one set of the rest among the blocks; a backward after it (heat maps)
   recomputes each block's forward into that set first. */
#include "nn/vit.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/threads.h"
#include "kernels/kernels.h"
#include "nn/transformer_block.h"

#define VIT_LN_EPS 1e-6f /* timm's ViT LayerNorm */

typedef struct {
    herbs_backbone base;
    int patch, grid, dim, depth, heads, hidden, tokens; /* tokens S = 1 + grid² */
    int tap_block[HERBS_TAPS], last;                    /* the block of each tap; the deepest (blocks > last are idle) */
    herbs_weight embed;                                 /* patch_embed.proj: a conv, kernel = stride = patch */
    size_t cls_token, pos_embed;
    transformer_block *blocks;
    /* the last forward */
    int batch, threads, kept; /* kept: train mode, every block has its block_saved; eval: `shared` serves all */
    int ready;                /* a forward completed and no backward has gone through it yet */
    block_saved shared;
    float *patches;                  /* [B·grid², in·patch²]: the images as patch rows */
    float *ln, *branch, *act, *work; /* scratch (forward and backward): [M, D], [M, D], [M, hidden], attention */
} vit;

/* ------------------------------------------------------------------------------------------ */
/* The class token and the position embedding */

/* x[B, S, D] = [cls; emb[b]] + pos, emb [B, S-1, D], cls [D], pos [S, D] */
static void tokens_forward(float *x, const float *emb, const float *cls, const float *pos, int B, int S, int D)
{
    for (int b = 0; b < B; b++) {
        float *xb = x + (size_t)b * S * D;
        for (int c = 0; c < D; c++)
            xb[c] = cls[c] + pos[c];
        const float *e = emb + (size_t)b * (S - 1) * D, *p = pos + D;
        for (size_t i = 0; i < (size_t)(S - 1) * D; i++)
            xb[D + i] = e[i] + p[i];
    }
}

/* demb[B, S-1, D] = dx[b, 1:]; dcls[D] += Σ_b dx[b, 0]; dpos[S, D] += Σ_b dx[b] */
static void tokens_backward(float *demb, float *dcls, float *dpos, const float *dx, int B, int S, int D)
{
    for (int b = 0; b < B; b++) {
        const float *d = dx + (size_t)b * S * D;
        memcpy(demb + (size_t)b * (S - 1) * D, d + D, (size_t)(S - 1) * D * sizeof(float));
        add_into(dcls, d, D);
        add_into(dpos, d, (size_t)S * D);
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Sizes and buffers */

static size_t block_tokens(const vit *v) { return (size_t)v->batch * v->tokens; }

static size_t attention_floats(const vit *v) { return v->threads * attention_work(v->dim / v->heads, v->tokens, v->heads); }

/* The block_saved sizes of every block (all the same size; keep_act_bf16: block_saved_sizes_of's). */
static block_saved_sizes saved_sizes(const vit *v, int keep_act_bf16)
{
    return block_saved_sizes_of(block_tokens(v), v->dim, v->heads, v->hidden, 0, keep_act_bf16);
}

/* ------------------------------------------------------------------------------------------ */
/* Forward */

/* ViT's attention step: global attention over each sample's tokens. */
typedef struct {
    block_attention step;
    const vit *v;
} vit_attention;

static void global_forward(const block_attention *self, const transformer_block *k, const herbs_params *t,
                           const block_saved *s)
{
    const vit *v = ((const vit_attention *)self)->v;
    /* the backward of a bf16 forward recomputes the softmax in fp32 (window_attention.h): no lse */
    attention_forward_at(k->attention, s->att, k->attention == HERBS_BF16 ? (uint16_t *)s->att : NULL,
                         k->attention == HERBS_FP32 ? s->lse : NULL, v->work, s->qkv, v->batch, v->tokens, v->dim,
                         v->heads, v->threads);
}

static void global_backward(const block_attention *self, const transformer_block *k, herbs_params *t,
                            const block_saved *s, const float *datt, float *dqkv)
{
    const vit *v = ((const vit_attention *)self)->v;
    /* bf16: the products in bf16, p recomputed from the logits (no lse) */
    attention_backward_at(k->attention, dqkv, v->work, datt, s->qkv, k->attention == HERBS_FP32 ? s->lse : NULL,
                          v->batch, v->tokens, v->dim, v->heads, v->threads, 0);
}

/* The blocks' frame on the backbone's scratch (dln, dact: backward's, NULL in a forward). */
static block_frame frame_of(const vit *v, float *dln, float *dact)
{
    return (block_frame){v->batch, v->tokens, v->dim, v->hidden, VIT_LN_EPS, v->ln, v->branch, v->act, dln, dact};
}

static herbs_status vit_forward(herbs_backbone *bb, const herbs_params *t, herbs_arena *arena, const float *images,
                                int batch, int train, uint64_t seed, uint64_t step, float *taps[HERBS_TAPS])
{
    vit *v = (vit *)bb;
    const int B = batch, D = v->dim, L = v->grid * v->grid, in = bb->in_channels, K = in * v->patch * v->patch;
    v->ready = 0;
    v->batch = B;
    v->threads = herbs_num_threads();
    v->kept = train;
    const size_t M = block_tokens(v);
    HERBS_TRY(herbs_arena_floats(arena, M * D, 0, &v->ln));
    HERBS_TRY(herbs_arena_floats(arena, M * D, 0, &v->branch));
    HERBS_TRY(block_act_scratch(t, train, M * v->hidden, arena, &v->act));
    HERBS_TRY(herbs_arena_floats(arena, attention_floats(v), 0, &v->work));
    HERBS_TRY(herbs_arena_floats(arena, (size_t)B * L * K, 0, &v->patches));
    if (!train)
        HERBS_TRY(block_saved_alloc(&v->shared, saved_sizes(v, 0), arena));

    float *x;
    HERBS_TRY(herbs_arena_floats(arena, M * D, 0, &x));
    patch_embed_gather(v->patches, images, B, in, bb->img_size, bb->img_size, v->patch);
    product_rows_forward(&v->embed, t, t->precision, v->branch, v->patches, B * L, NULL, NULL, 0);
    tokens_forward(x, v->branch, PARAM(t, v->cls_token), PARAM(t, v->pos_embed), B, v->tokens, D);

    const block_frame frame = frame_of(v, NULL, NULL);
    const vit_attention attention = {{global_forward, global_backward}, v};
    for (int b = 0; b <= v->last; b++) {
        transformer_block *k = &v->blocks[b];
        if (train)
            HERBS_TRY(block_saved_alloc(&k->saved, saved_sizes(v, block_keeps_act(t, train)), arena));
        HERBS_TRY(herbs_arena_floats(arena, M * D, 0, &k->out));
        k->x = x;
        HERBS_TRY(transformer_block_forward(k, &frame, &attention.step, t, arena, x, k->out,
                                            train ? &k->saved : &v->shared, train, seed, step));
        x = k->out;
    }
    for (int i = 0; i < HERBS_TAPS; i++)
        taps[i] = v->blocks[v->tap_block[i]].out;
    v->ready = 1;
    return HERBS_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* Backward */

/* The deepest block whose output has a tap gradient, or -1. */
static int top_block(const vit *v, const float *const dtaps[HERBS_TAPS])
{
    int top = -1;
    for (int i = 0; i < HERBS_TAPS; i++)
        if (dtaps[i] && v->tap_block[i] > top)
            top = v->tap_block[i];
    return top;
}

/* d [B, S, D] = the gradient at block b's output from the taps there (with_flow: added to the
   gradient flowing back from above); tap_grads of those taps receive it. Returns whether d holds
   a gradient now. */
static int gather_tap_grads(vit *v, int b, float *d, int with_flow, const float *const dtaps[HERBS_TAPS],
                            float *tap_grads[HERBS_TAPS])
{
    const size_t size = block_tokens(v) * v->dim;
    for (int i = 0; i < HERBS_TAPS; i++)
        if (v->tap_block[i] == b && dtaps[i]) {
            if (with_flow)
                add_into(d, dtaps[i], size);
            else
                memcpy(d, dtaps[i], size * sizeof(float));
            with_flow = 1;
        }
    for (int i = 0; i < HERBS_TAPS; i++)
        if (v->tap_block[i] == b)
            backbone_keep_tap_grad(&v->base, tap_grads, i, v->batch, d);
    return with_flow;
}

static herbs_status vit_backward(herbs_backbone *bb, herbs_params *t, herbs_arena *arena,
                                 const float *const dtaps[HERBS_TAPS], float *dimages, float *tap_grads[HERBS_TAPS])
{
    vit *v = (vit *)bb;
    const int B = v->batch;
    if (!v->ready)
        return herbs_error(HERBS_ERR_STATE, "vit backward needs a forward pass before it (one backward per forward)");
    v->ready = 0; /* backward overwrites some of what the forward saved */
    const int top = top_block(v, dtaps);
    for (int i = 0; i < HERBS_TAPS; i++)
        if (v->tap_block[i] > top)
            backbone_keep_tap_grad(bb, tap_grads, i, B, NULL);
    if (top < 0)
        return HERBS_OK;

    /* the blocks' backward adds dln (= datt) and dact (= dqkv) to the forward's scratch */
    const size_t M = block_tokens(v), D = v->dim, L = (size_t)v->grid * v->grid;
    const size_t wide = M * v->hidden > 3 * M * D ? M * v->hidden : 3 * M * D;
    float *d, *dln, *dact;
    HERBS_TRY(herbs_arena_floats(arena, M * D, 0, &d));
    HERBS_TRY(herbs_arena_floats(arena, M * D, 0, &dln));
    HERBS_TRY(herbs_arena_floats(arena, wide, 0, &dact));
    float *image_work = NULL;
    if (dimages)
        HERBS_TRY(herbs_arena_floats(arena, B * L * bb->in_channels * v->patch * v->patch, 0, &image_work));

    const block_frame frame = frame_of(v, dln, dact);
    const vit_attention attention = {{global_forward, global_backward}, v};
    int flowing = 0;
    for (int b = top; b >= 0; b--) {
        transformer_block *k = &v->blocks[b];
        flowing = gather_tap_grads(v, b, d, flowing, dtaps, tap_grads);
        if (!v->kept) /* recompute into the shared buffers; the output goes to scratch */
            HERBS_TRY(transformer_block_forward(k, &frame, &attention.step, t, arena, k->x, v->branch, &v->shared, 0,
                                                0, 0));
        transformer_block_backward(k, &frame, &attention.step, t, v->kept ? &k->saved : &v->shared, d);
    }

    tokens_backward(dln, GRAD(t, v->cls_token), GRAD(t, v->pos_embed), d, B, v->tokens, v->dim);
    product_rows_backward(&v->embed, t, t->precision, image_work, dln, v->patches, (int)(B * L), 0);
    if (dimages)
        patch_embed_scatter(dimages, image_work, B, bb->in_channels, bb->img_size, bb->img_size, v->patch, 1);
    return HERBS_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* Construction */

static void vit_destroy(herbs_backbone *bb)
{
    vit *v = (vit *)bb;
    free(v->blocks);
    free(v);
}

static const herbs_backbone_ops vit_ops = {vit_forward, vit_backward, vit_destroy};

typedef struct {
    int img_size, patch, in_chans, dim, depth, heads, qkv_bias, taps[HERBS_TAPS];
    double mlp_ratio, drop_path_rate;
} vit_config;

static herbs_status read_config(herbs_config *config, vit_config *c)
{
    HERBS_TRY(config_int(config, "img_size", 448, 1, 16384, &c->img_size));
    HERBS_TRY(config_int(config, "patch_size", 16, 1, 1024, &c->patch));
    HERBS_TRY(config_int(config, "in_chans", 3, 1, 1024, &c->in_chans));
    HERBS_TRY(config_int(config, "embed_dim", 768, 1, 16384, &c->dim));
    HERBS_TRY(config_int(config, "depth", 12, 1, 1024, &c->depth));
    HERBS_TRY(config_int(config, "num_heads", 12, 1, 4096, &c->heads));
    HERBS_TRY(config_float(config, "mlp_ratio", 4.0, 1e-3, 64.0, &c->mlp_ratio));
    HERBS_TRY(config_int(config, "qkv_bias", 0, 0, 1, &c->qkv_bias));
    HERBS_TRY(config_float(config, "drop_path_rate", 0.0, 0.0, 1.0, &c->drop_path_rate));
    int last_four[HERBS_TAPS]; /* fewer than 4 blocks: the first repeated */
    for (int i = 0; i < HERBS_TAPS; i++)
        last_four[i] = c->depth - HERBS_TAPS + i > 0 ? c->depth - HERBS_TAPS + i : 0;
    HERBS_TRY(config_ints(config, "taps", HERBS_TAPS, last_four, 0, c->depth - 1, c->taps));
    if (c->drop_path_rate >= 1.0)
        return herbs_error(HERBS_ERR_VALUE, "config 'drop_path_rate' = %g must be below 1 (1 drops every block)",
                           c->drop_path_rate);
    if (c->img_size % c->patch != 0)
        return herbs_error(HERBS_ERR_VALUE, "config 'img_size' = %d is not a multiple of 'patch_size' = %d",
                           c->img_size, c->patch);
    if (c->dim % c->heads != 0)
        return herbs_error(HERBS_ERR_VALUE, "config 'num_heads' = %d does not divide 'embed_dim' = %d", c->heads,
                           c->dim);
    const double hidden = c->dim * c->mlp_ratio, grid = (double)c->img_size / c->patch;
    if (hidden < 1 || hidden > 1 << 20)
        return herbs_error(HERBS_ERR_VALUE, "config 'mlp_ratio' = %g gives an MLP of %g units", c->mlp_ratio, hidden);
    if (1 + grid * grid > 1 << 20)
        return herbs_error(HERBS_ERR_VALUE, "config 'img_size' = %d with 'patch_size' = %d gives %g tokens (at most "
                           "2^20)", c->img_size, c->patch, 1 + grid * grid);
    return HERBS_OK;
}

/* Tensors in timm's state-dict order. */
static herbs_status register_tensors(vit *v, herbs_params *t, const char *prefix, const vit_config *c)
{
    const int fan_in = c->in_chans * c->patch * c->patch, D = c->dim;
    const herbs_init conv_init = {HERBS_INIT_UNIFORM, 1.0f / sqrtf((float)fan_in)}; /* PyTorch's Conv2d default */
    HERBS_TRY(params_add(t, &v->cls_token, HERBS_PARAMETER, (herbs_init){HERBS_INIT_NORMAL, 1e-6f}, prefix,
                         "cls_token", 3, (int64_t)1, (int64_t)1, (int64_t)D));
    HERBS_TRY(params_add(t, &v->pos_embed, HERBS_PARAMETER, TRANSFORMER_NORMAL, prefix, "pos_embed", 3, (int64_t)1,
                         (int64_t)v->tokens, (int64_t)D));
    HERBS_TRY(product_add(t, &v->embed, prefix, "patch_embed.proj",
                          (herbs_product_spec){.out = D, .in = c->in_chans, .kernel_dims = 2, .k = c->patch,
                                               .stride = c->patch, .patch_rows = 1, .bias = 1, .weight_init = conv_init,
                                               .bias_init = conv_init}));
    v->blocks = calloc(c->depth, sizeof *v->blocks);
    if (!v->blocks)
        return herbs_error(HERBS_ERR_NOMEM, "out of memory creating a vit backbone");
    for (int b = 0; b < c->depth; b++) {
        transformer_block *k = &v->blocks[b];
        char name[HERBS_NAME_MAX];
        snprintf(name, sizeof name, "blocks.%d", b);
        k->index = b;
        /* torch.linspace(0, rate, depth)[b] */
        k->drop_prob = c->depth > 1 ? (float)(c->drop_path_rate * b / (c->depth - 1)) : 0.0f;
        HERBS_TRY(transformer_block_add(t, k, prefix, name, D, v->hidden, c->qkv_bias, (block_attention_tensor){0}));
    }
    return HERBS_OK;
}

herbs_status vit_backbone_create(herbs_backbone **out, herbs_config *config, herbs_params *t, const char *prefix)
{
    vit_config c;
    HERBS_TRY(read_config(config, &c));
    vit *v = calloc(1, sizeof *v);
    if (!v)
        return herbs_error(HERBS_ERR_NOMEM, "out of memory creating a vit backbone");
    *out = &v->base;
    v->base.ops = &vit_ops;
    v->base.in_channels = c.in_chans;
    v->base.img_size = c.img_size;
    v->patch = c.patch;
    v->grid = c.img_size / c.patch;
    v->tokens = 1 + v->grid * v->grid;
    v->dim = c.dim;
    v->depth = c.depth;
    v->heads = c.heads;
    v->hidden = (int)(c.dim * c.mlp_ratio);
    v->last = 0;
    for (int i = 0; i < HERBS_TAPS; i++) {
        v->tap_block[i] = c.taps[i];
        v->last = c.taps[i] > v->last ? c.taps[i] : v->last;
        v->base.tap_tokens[i] = v->base.tap_width[i] = v->tokens;
        v->base.tap_height[i] = 1;
        v->base.tap_channels[i] = c.dim;
    }
    return register_tensors(v, t, prefix, &c);
}
