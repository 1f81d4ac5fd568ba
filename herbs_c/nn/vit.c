/* The ViT backbone (vit.h): tokens [B, S, D] row-major throughout, every activation in the
   owner's arena. Its blocks save for backward what Swin's do (swin.c): each block's input, the
   LayerNorm statistics, qkv, each attention row's log-sum-exp, the attention output, the
   residual after attention and the MLP's pre-activation — in train mode. An eval-mode forward
   keeps each block's input and output only and shares one set of the rest among the blocks; a
   backward after it (heat maps) recomputes each block's forward into that set first. */
#include "nn/vit.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/threads.h"
#include "kernels/kernels.h"
#include "nn/product.h"

#define VIT_LN_EPS 1e-6f /* timm's ViT LayerNorm */

typedef struct {
    size_t weight, bias;
} norm_offsets;

/* What a block's backward needs from its forward besides its input, for M = B·S tokens of D
   channels, `heads` heads and an MLP of `hidden` channels. */
typedef struct {
    float *mean1, *rstd1; /* [M]: norm1's statistics (its output is recomputed) */
    float *qkv;           /* [M, 3D]: the qkv product's output */
    float *lse;           /* [B, heads, S]: each attention row's log-sum-exp */
    float *att;           /* [M, D]: the attention output, proj's input */
    float *x1;            /* [M, D]: the residual stream after the attention branch */
    float *mean2, *rstd2; /* [M]: norm2's statistics */
    float *hidden;        /* [M, hidden]: fc1's output, GELU's input (backward overwrites it) */
} vit_saved;

typedef struct {
    float drop_prob; /* stochastic depth rate of this block */
    norm_offsets norm1, norm2;
    herbs_weight qkv, proj, fc1, fc2;
    /* the last forward */
    const float *x;            /* [B, S, D]: the block's input */
    float *out;                /* [B, S, D]: its output */
    float *scale1, *scale2;    /* [B]: drop-path scales per sample, NULL when no drop path ran */
    herbs_precision attention; /* the attention's precision (bf16: its lse is of bf16 logits) */
    vit_saved saved;           /* train mode only */
} vit_block;

typedef struct {
    herbs_backbone base;
    int patch, grid, dim, depth, heads, hidden, tokens; /* tokens S = 1 + grid² */
    int tap_block[HERBS_TAPS], last;                    /* the block of each tap; the deepest (blocks > last are idle) */
    herbs_weight embed;                                 /* patch_embed.proj: a conv, kernel = stride = patch */
    size_t cls_token, pos_embed;
    vit_block *blocks;
    /* the last forward */
    int batch, threads, kept; /* kept: train mode, every block has its vit_saved; eval: `shared` serves all */
    int ready;                /* a forward completed and no backward has gone through it yet */
    vit_saved shared;
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

static herbs_status alloc_saved(vit_saved *s, const vit *v, herbs_arena *arena)
{
    const size_t M = block_tokens(v), D = v->dim;
    HERBS_TRY(herbs_arena_floats(arena, M, 0, &s->mean1));
    HERBS_TRY(herbs_arena_floats(arena, M, 0, &s->rstd1));
    HERBS_TRY(herbs_arena_floats(arena, 3 * M * D, 0, &s->qkv));
    HERBS_TRY(herbs_arena_floats(arena, M * v->heads, 0, &s->lse));
    HERBS_TRY(herbs_arena_floats(arena, M * D, 0, &s->att));
    HERBS_TRY(herbs_arena_floats(arena, M * D, 0, &s->x1));
    HERBS_TRY(herbs_arena_floats(arena, M, 0, &s->mean2));
    HERBS_TRY(herbs_arena_floats(arena, M, 0, &s->rstd2));
    return herbs_arena_floats(arena, M * v->hidden, 0, &s->hidden);
}

/* ------------------------------------------------------------------------------------------ */
/* Forward */

/* x [B, S, D] -> out [B, S, D] (out may be v->branch), keeping what backward needs in s when
   for_backward is set (else fc1's tiles go through GELU as they are finished and s->hidden is not
   written). Drop path in train mode, with its scales allocated here. */
static herbs_status block_forward(vit *v, int index, const herbs_params *t, herbs_arena *arena, const float *x,
                                  float *out, const vit_saved *s, int train, int for_backward, uint64_t seed,
                                  uint64_t step)
{
    vit_block *k = &v->blocks[index];
    const int B = v->batch, S = v->tokens, D = v->dim, M = B * S;
    k->scale1 = k->scale2 = NULL;
    if (train && k->drop_prob > 0) {
        HERBS_TRY(herbs_arena_floats(arena, B, 0, &k->scale1));
        HERBS_TRY(herbs_arena_floats(arena, B, 0, &k->scale2));
        drop_path_scales(k->scale1, B, 1 - k->drop_prob, seed, VIT_DROP_STREAM(step, index, 0));
        drop_path_scales(k->scale2, B, 1 - k->drop_prob, seed, VIT_DROP_STREAM(step, index, 1));
    }

    layernorm_forward(v->ln, s->mean1, s->rstd1, x, PARAM(t, k->norm1.weight), PARAM(t, k->norm1.bias), M, D, VIT_LN_EPS);
    product_rows_forward(&k->qkv, t, t->precision, s->qkv, v->ln, M, NULL, NULL, 0);
    k->attention = t->precision;
    attention_forward_at(k->attention, s->att, s->lse, v->work, s->qkv, B, S, D, v->heads, v->threads);
    product_rows_forward(&k->proj, t, t->precision, v->branch, s->att, M, NULL, NULL, 0);
    residual_add_forward(s->x1, x, v->branch, k->scale1, B, (long)S * D);

    layernorm_forward(v->ln, s->mean2, s->rstd2, s->x1, PARAM(t, k->norm2.weight), PARAM(t, k->norm2.bias), M, D,
                      VIT_LN_EPS);
    if (for_backward) {
        product_rows_forward(&k->fc1, t, t->precision, s->hidden, v->ln, M, NULL, NULL, HERBS_ACTIVATION_NONE);
        gelu_forward(v->act, s->hidden, (size_t)M * v->hidden);
    } else
        product_rows_forward(&k->fc1, t, t->precision, v->act, v->ln, M, NULL, NULL, HERBS_ACTIVATION_GELU);
    product_rows_forward(&k->fc2, t, t->precision, v->branch, v->act, M, NULL, NULL, 0);
    residual_add_forward(out, s->x1, v->branch, k->scale2, B, (long)S * D);
    return HERBS_OK;
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
    HERBS_TRY(herbs_arena_floats(arena, M * v->hidden, 0, &v->act));
    HERBS_TRY(herbs_arena_floats(arena, attention_floats(v), 0, &v->work));
    HERBS_TRY(herbs_arena_floats(arena, (size_t)B * L * K, 0, &v->patches));
    if (!train)
        HERBS_TRY(alloc_saved(&v->shared, v, arena));

    float *x;
    HERBS_TRY(herbs_arena_floats(arena, M * D, 0, &x));
    patch_embed_gather(v->patches, images, B, in, bb->img_size, bb->img_size, v->patch);
    product_rows_forward(&v->embed, t, t->precision, v->branch, v->patches, B * L, NULL, NULL, 0);
    tokens_forward(x, v->branch, PARAM(t, v->cls_token), PARAM(t, v->pos_embed), B, v->tokens, D);

    for (int b = 0; b <= v->last; b++) {
        vit_block *k = &v->blocks[b];
        if (train)
            HERBS_TRY(alloc_saved(&k->saved, v, arena));
        HERBS_TRY(herbs_arena_floats(arena, M * D, 0, &k->out));
        k->x = x;
        HERBS_TRY(block_forward(v, b, t, arena, x, k->out, train ? &k->saved : &v->shared, train, train, seed,
                                step));
        x = k->out;
    }
    for (int i = 0; i < HERBS_TAPS; i++)
        taps[i] = v->blocks[v->tap_block[i]].out;
    v->ready = 1;
    return HERBS_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* Backward */

typedef struct {
    float *dbranch, *dln, *datt, *dact, *dqkv;
} backward_scratch;

/* The gradient into a branch: d itself without drop path, else scale·d in `buffer`. */
static const float *branch_grad(float *buffer, const float *d, const float *scale, int B, long per_sample)
{
    if (!scale)
        return d;
    residual_add_backward(buffer, d, scale, B, per_sample, 0);
    return buffer;
}

/* d [B, S, D]: the gradient of the block's output on entry, of its input on return (swin.c's
   block_backward without the relative bias). */
static void block_backward(vit *v, vit_block *k, const vit_saved *s, herbs_params *t, float *d,
                           const backward_scratch *z)
{
    const int B = v->batch, S = v->tokens, D = v->dim, M = B * S, H = v->hidden;

    /* MLP branch: out = x1 + scale2 · fc2(gelu(fc1(norm2(x1)))) */
    const float *g = branch_grad(z->dbranch, d, k->scale2, B, (long)S * D);
    layernorm_forward(v->ln, s->mean2, s->rstd2, s->x1, PARAM(t, k->norm2.weight), PARAM(t, k->norm2.bias), M, D,
                      VIT_LN_EPS);
    gelu_forward_derivative(v->act, s->hidden, s->hidden, (size_t)M * H); /* the derivative replaces the saved input */
    product_rows_backward(&k->fc2, t, t->precision, z->dact, g, v->act, M, 0);
    activation_backward(v->act, z->dact, s->hidden, (size_t)M * H, 0);
    product_rows_backward(&k->fc1, t, t->precision, z->dln, v->act, v->ln, M, 0);
    layernorm_backward(d, GRAD(t, k->norm2.weight), GRAD(t, k->norm2.bias), z->dln, s->x1, PARAM(t, k->norm2.weight),
                       s->mean2, s->rstd2, M, D, 1);

    /* attention branch: x1 = x + scale1 · proj(attention(qkv(norm1(x)))) */
    g = branch_grad(z->dbranch, d, k->scale1, B, (long)S * D);
    product_rows_backward(&k->proj, t, t->precision, z->datt, g, s->att, M, 0);
    attention_backward(z->dqkv, v->work, z->datt, s->qkv, k->attention == HERBS_FP32 ? s->lse : NULL, B, S, D,
                       v->heads, v->threads, 0); /* bf16: p from fp32 logits, normalised */
    layernorm_forward(v->ln, s->mean1, s->rstd1, k->x, PARAM(t, k->norm1.weight), PARAM(t, k->norm1.bias), M, D,
                      VIT_LN_EPS);
    product_rows_backward(&k->qkv, t, t->precision, z->dln, z->dqkv, v->ln, M, 0);
    layernorm_backward(d, GRAD(t, k->norm1.weight), GRAD(t, k->norm1.bias), z->dln, k->x, PARAM(t, k->norm1.weight),
                       s->mean1, s->rstd1, M, D, 1);
}

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

    /* dln and datt share storage (datt dies in the attention's backward before dln is written), so
       do dact and dqkv (one per branch) */
    const size_t M = block_tokens(v), D = v->dim, L = (size_t)v->grid * v->grid;
    const size_t wide = M * v->hidden > 3 * M * D ? M * v->hidden : 3 * M * D;
    backward_scratch z = {.dbranch = v->branch};
    float *d;
    HERBS_TRY(herbs_arena_floats(arena, M * D, 0, &d));
    HERBS_TRY(herbs_arena_floats(arena, M * D, 0, &z.dln));
    z.datt = z.dln;
    HERBS_TRY(herbs_arena_floats(arena, wide, 0, &z.dact));
    z.dqkv = z.dact;
    float *image_work = NULL;
    if (dimages)
        HERBS_TRY(herbs_arena_floats(arena, B * L * bb->in_channels * v->patch * v->patch, 0, &image_work));

    int flowing = 0;
    for (int b = top; b >= 0; b--) {
        vit_block *k = &v->blocks[b];
        flowing = gather_tap_grads(v, b, d, flowing, dtaps, tap_grads);
        if (!v->kept) /* recompute into the shared buffers; the output goes to scratch */
            HERBS_TRY(block_forward(v, b, t, arena, k->x, v->branch, &v->shared, 0, 1, 0, 0));
        block_backward(v, k, v->kept ? &k->saved : &v->shared, t, d, &z);
    }

    tokens_backward(z.dln, GRAD(t, v->cls_token), GRAD(t, v->pos_embed), d, B, v->tokens, v->dim);
    product_rows_backward(&v->embed, t, t->precision, image_work, z.dln, v->patches, (int)(B * L), 0);
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

static const herbs_init ZEROS = {HERBS_INIT_ZEROS, 0}, ONES = {HERBS_INIT_CONSTANT, 1};
/* timm's trunc_normal_(std=.02) cuts at ±2 absolute, i.e. ±100σ: in effect a plain normal */
static const herbs_init LINEAR_INIT = {HERBS_INIT_NORMAL, 0.02f};

/* full = block + "." + name + suffix */
static herbs_status join(char full[HERBS_NAME_MAX], const char *block, const char *name, const char *suffix)
{
    if (snprintf(full, HERBS_NAME_MAX, "%s.%s%s", block, name, suffix) >= HERBS_NAME_MAX)
        return herbs_error(HERBS_ERR_VALUE, "tensor name '%s.%s%s' is too long", block, name, suffix);
    return HERBS_OK;
}

static herbs_status add_norm(herbs_params *t, norm_offsets *n, const char *prefix, const char *block,
                             const char *name, int dim)
{
    char full[HERBS_NAME_MAX];
    HERBS_TRY(join(full, block, name, ".weight"));
    HERBS_TRY(params_add(t, &n->weight, HERBS_PARAMETER, ONES, prefix, full, 1, (int64_t)dim));
    HERBS_TRY(join(full, block, name, ".bias"));
    return params_add(t, &n->bias, HERBS_PARAMETER, ZEROS, prefix, full, 1, (int64_t)dim);
}

static herbs_status add_linear(herbs_params *t, herbs_weight *w, const char *prefix, const char *block,
                               const char *name, int in, int out, int bias)
{
    char full[HERBS_NAME_MAX];
    HERBS_TRY(join(full, block, name, ""));
    return product_add(t, w, prefix, full,
                       (herbs_product_spec){.out = out, .in = in, .bias = bias, .weight_init = LINEAR_INIT,
                                            .bias_init = ZEROS});
}

/* Tensors in timm's state-dict order. */
static herbs_status register_tensors(vit *v, herbs_params *t, const char *prefix, const vit_config *c)
{
    const int fan_in = c->in_chans * c->patch * c->patch, D = c->dim;
    const herbs_init conv_init = {HERBS_INIT_UNIFORM, 1.0f / sqrtf((float)fan_in)}; /* PyTorch's Conv2d default */
    HERBS_TRY(params_add(t, &v->cls_token, HERBS_PARAMETER, (herbs_init){HERBS_INIT_NORMAL, 1e-6f}, prefix,
                         "cls_token", 3, (int64_t)1, (int64_t)1, (int64_t)D));
    HERBS_TRY(params_add(t, &v->pos_embed, HERBS_PARAMETER, LINEAR_INIT, prefix, "pos_embed", 3, (int64_t)1,
                         (int64_t)v->tokens, (int64_t)D));
    HERBS_TRY(product_add(t, &v->embed, prefix, "patch_embed.proj",
                          (herbs_product_spec){.out = D, .in = c->in_chans, .kernel_dims = 2, .k = c->patch,
                                               .stride = c->patch, .patch_rows = 1, .bias = 1, .weight_init = conv_init,
                                               .bias_init = conv_init}));
    v->blocks = calloc(c->depth, sizeof *v->blocks);
    if (!v->blocks)
        return herbs_error(HERBS_ERR_NOMEM, "out of memory creating a vit backbone");
    for (int b = 0; b < c->depth; b++) {
        vit_block *k = &v->blocks[b];
        char name[HERBS_NAME_MAX];
        snprintf(name, sizeof name, "blocks.%d", b);
        /* torch.linspace(0, rate, depth)[b] */
        k->drop_prob = c->depth > 1 ? (float)(c->drop_path_rate * b / (c->depth - 1)) : 0.0f;
        HERBS_TRY(add_norm(t, &k->norm1, prefix, name, "norm1", D));
        HERBS_TRY(add_linear(t, &k->qkv, prefix, name, "attn.qkv", D, 3 * D, c->qkv_bias));
        HERBS_TRY(add_linear(t, &k->proj, prefix, name, "attn.proj", D, D, 1));
        HERBS_TRY(add_norm(t, &k->norm2, prefix, name, "norm2", D));
        HERBS_TRY(add_linear(t, &k->fc1, prefix, name, "mlp.fc1", D, v->hidden, 1));
        HERBS_TRY(add_linear(t, &k->fc2, prefix, name, "mlp.fc2", v->hidden, D, 1));
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
