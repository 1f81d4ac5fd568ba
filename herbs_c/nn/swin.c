/* The Swin Transformer backbone: tokens [B, H·W, C] row-major throughout, every kernel's
   activations in the owner's arena. What backward needs is saved lean: each block keeps its
   input, the LayerNorm statistics (not their outputs, which backward recomputes), qkv, the
   log-sum-exp of each attention row (not the probabilities), the attention output, the residual
   after attention, and the MLP's hidden pre-activation (not the GELU output). That is in train
   mode; an eval-mode forward keeps only each block's input and output and puts the rest in one
   set of buffers shared by all blocks, and a backward after it (heat maps) recomputes each
   block's forward into that set just before going back through the block. */
#include <string.h>

#include "core/threads.h"
#include "kernels/kernels.h"
#include "nn/swin_internal.h"

/* ------------------------------------------------------------------------------------------ */
/* Sizes */

static size_t stage_tokens(const swin_stage *st, int B) { return (size_t)B * st->res * st->res; }

/* The block_saved sizes of a block of stage st (keep_act_bf16: block_saved_sizes_of's). */
static block_saved_sizes saved_sizes_of(const swin_stage *st, int B, int keep_act_bf16)
{
    const size_t N = (size_t)st->window * st->window;
    return block_saved_sizes_of(stage_tokens(st, B), st->dim, st->heads, st->hidden, st->heads * N * N,
                                keep_act_bf16);
}

/* The largest of each over all stages: one block_saved that serves every block. */
static block_saved_sizes saved_sizes_max(const swin *s, int B)
{
    block_saved_sizes m = {0};
    for (int i = 0; i < SWIN_STAGES; i++)
        m = block_saved_sizes_max(m, saved_sizes_of(&s->stages[i], B, 0));
    return m;
}

/* Largest per-call scratch over the stages, for buffers shared by all of them. */
typedef struct {
    size_t tokens_dim, tokens_hidden, bias, attention_work;
} scratch_sizes;

static scratch_sizes scratch_needed(const swin *s, int B, int threads)
{
    scratch_sizes z = {0, 0, 0, 0};
    const int res0 = s->stages[0].res;
    z.tokens_dim = (size_t)B * res0 * res0 * s->embed_dim; /* the patch embedding's output */
    for (int i = 0; i < SWIN_STAGES; i++) {
        const swin_stage *st = &s->stages[i];
        const size_t M = stage_tokens(st, B), N = (size_t)st->window * st->window;
        if (M * st->dim > z.tokens_dim)
            z.tokens_dim = M * st->dim;
        if (M * st->hidden > z.tokens_hidden)
            z.tokens_hidden = M * st->hidden;
        if (st->heads * N * N > z.bias)
            z.bias = st->heads * N * N;
        size_t work = threads * window_attention_work(st->dim / st->heads, st->window, st->heads);
        if (work > z.attention_work)
            z.attention_work = work;
    }
    return z;
}

/* ------------------------------------------------------------------------------------------ */
/* The blocks: transformer blocks with shifted-window attention */

/* Swin's attention step: the relative position bias gathered from the block's table, then
   attention within (shifted) windows. */
typedef struct {
    block_attention step;
    const swin_block *block;
    const swin_stage *stage;
    int B, threads;
    float *work;  /* threads × window_attention_work */
    float *dbias; /* [heads, N, N]: the bias gradient (backward) */
} swin_attention;

static void windows_forward(const block_attention *self, const transformer_block *k, const herbs_params *t,
                            const block_saved *v)
{
    const swin_attention *a = (const swin_attention *)self;
    const swin_stage *st = a->stage;
    relative_bias_forward(v->bias, PARAM(t, a->block->table), st->heads, st->window);
    /* the backward of a bf16 forward recomputes the softmax in fp32 (window_attention.h): no lse */
    window_attention_forward_at(k->attention, v->att, k->attention == HERBS_BF16 ? (uint16_t *)v->att : NULL,
                                k->attention == HERBS_FP32 ? v->lse : NULL, a->work, v->qkv, v->bias, a->B, st->res,
                                st->res, st->dim, st->heads, st->window, a->block->shift, a->threads);
}

static void windows_backward(const block_attention *self, const transformer_block *k, herbs_params *t,
                             const block_saved *v, const float *datt, float *dqkv)
{
    const swin_attention *a = (const swin_attention *)self;
    const swin_stage *st = a->stage;
    /* bf16: the products in bf16, p recomputed from the logits (no lse) */
    window_attention_backward_at(k->attention, dqkv, a->dbias, a->work, datt, v->qkv, v->bias,
                                 k->attention == HERBS_FP32 ? v->lse : NULL, a->B, st->res, st->res, st->dim,
                                 st->heads, st->window, a->block->shift, a->threads, 0);
    relative_bias_backward(GRAD(t, a->block->table), a->dbias, st->heads, st->window);
}

static swin_attention attention_of(const swin *s, const swin_block *k, const swin_stage *st, int B, float *dbias)
{
    return (swin_attention){{windows_forward, windows_backward}, k, st, B, s->threads, s->work, dbias};
}

/* Stage st's blocks' frame on the backbone's scratch (dln, dact: backward's, NULL in a forward). */
static block_frame frame_of(const swin *s, const swin_stage *st, int B, float *dln, float *dact)
{
    return (block_frame){B, st->res * st->res, st->dim, st->hidden, SWIN_LN_EPS, s->ln, s->branch, s->act, dln, dact};
}

/* ------------------------------------------------------------------------------------------ */
/* Forward */

/* Patch merging at the end of stage st: x [B, res², C] -> tap [B, res²/4, 2C]. */
/* At bf16 (bf16_out) the norm's output, which only feeds the reduction, is stored in bf16 (as the
   transformer block's are); the backward recomputes it. */
static herbs_status merge_forward(swin_stage *st, const herbs_params *t, herbs_arena *arena, const float *x, int B,
                                  float *ln, int bf16_out)
{
    const int C = st->dim, M = (int)(stage_tokens(st, B) / 4);
    HERBS_TRY(herbs_arena_floats(arena, (size_t)M * 4 * C, 0, &st->merged));
    HERBS_TRY(herbs_arena_floats(arena, M, 0, &st->merge_mean));
    HERBS_TRY(herbs_arena_floats(arena, M, 0, &st->merge_rstd));
    HERBS_TRY(herbs_arena_floats(arena, (size_t)M * 2 * C, 0, &st->tap));
    patch_merge_forward(st->merged, x, B, st->res, st->res, C);
    transformer_norm_forward(t, st->merge_norm, ln, bf16_out, st->merge_mean, st->merge_rstd, st->merged, M, 4 * C,
                             SWIN_LN_EPS);
    return product_rows_forward_input(&st->merge_reduction, t, st->tap, ln, bf16_out, M);
}

herbs_status swin_forward(herbs_backbone *bb, const herbs_params *t, herbs_arena *arena, const float *images,
                                 int batch, int train, uint64_t seed, uint64_t step, float *taps[HERBS_TAPS])
{
    swin *s = (swin *)bb;
    const int B = batch, res0 = s->stages[0].res, D = s->embed_dim, M0 = B * res0 * res0;
    const int in = bb->in_channels, K = in * s->patch * s->patch;
    s->batch = 0;
    s->threads = herbs_num_threads();
    scratch_sizes need = scratch_needed(s, B, s->threads);
    HERBS_TRY(herbs_arena_floats(arena, need.tokens_dim, 0, &s->ln));
    HERBS_TRY(herbs_arena_floats(arena, need.tokens_dim, 0, &s->branch));
    HERBS_TRY(block_act_scratch(t, train, need.tokens_hidden, arena, &s->act));
    HERBS_TRY(herbs_arena_floats(arena, need.attention_work, 0, &s->work));
    s->kept = train;
    if (!train)
        HERBS_TRY(block_saved_alloc(&s->shared, saved_sizes_max(s, B), arena));

    float *x;
    HERBS_TRY(herbs_arena_floats(arena, (size_t)M0 * K, 0, &s->patches));
    HERBS_TRY(herbs_arena_floats(arena, (size_t)M0 * D, 0, &s->embedded));
    HERBS_TRY(herbs_arena_floats(arena, M0, 0, &s->embed_mean));
    HERBS_TRY(herbs_arena_floats(arena, M0, 0, &s->embed_rstd));
    HERBS_TRY(herbs_arena_floats(arena, (size_t)M0 * D, 0, &x));
    patch_embed_gather(s->patches, images, B, in, bb->img_size, bb->img_size, s->patch);
    product_rows_forward(&s->embed, t, t->precision, s->embedded, s->patches, M0, NULL, NULL, 0);
    layernorm_forward(x, s->embed_mean, s->embed_rstd, s->embedded, PARAM(t, s->embed_norm.weight),
                      PARAM(t, s->embed_norm.bias), M0, D, SWIN_LN_EPS);

    for (int i = 0; i < SWIN_STAGES; i++) {
        swin_stage *st = &s->stages[i];
        const block_frame frame = frame_of(s, st, B, NULL, NULL);
        for (int b = 0; b < st->depth; b++) {
            swin_block *sb = &st->blocks[b];
            transformer_block *k = &sb->block;
            const swin_attention attention = attention_of(s, sb, st, B, NULL);
            if (train)
                HERBS_TRY(block_saved_alloc(&k->saved, saved_sizes_of(st, B, block_keeps_act(t, train)), arena));
            HERBS_TRY(herbs_arena_floats(arena, stage_tokens(st, B) * st->dim, 0, &k->out));
            k->x = x;
            HERBS_TRY(transformer_block_forward(k, &frame, &attention.step, t, arena, x, k->out,
                                                train ? &k->saved : &s->shared, train, seed, step));
            x = k->out;
        }
        if (i < SWIN_STAGES - 1) {
            HERBS_TRY(merge_forward(st, t, arena, x, B, s->ln, t->precision == HERBS_BF16));
            x = st->tap;
        } else {
            st->tap = x;
        }
        taps[i] = st->tap;
    }
    s->batch = B;
    return HERBS_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* Backward */

/* dtap [B, res²/4, 2C] -> dx [B, res², C] (overwritten), on the blocks' scratch f. */
static void merge_backward(swin_stage *st, herbs_params *t, float *dx, const float *dtap, int B, const block_frame *f)
{
    const int C = st->dim, M = (int)(stage_tokens(st, B) / 4);
    layernorm_forward(f->ln, st->merge_mean, st->merge_rstd, st->merged, PARAM(t, st->merge_norm.weight),
                      PARAM(t, st->merge_norm.bias), M, 4 * C, SWIN_LN_EPS);
    product_rows_backward(&st->merge_reduction, t, t->precision, f->dln, dtap, f->ln, M, 0);
    float *dmerged = f->dact; /* free here, and at least res²·C floats */
    layernorm_backward(dmerged, GRAD(t, st->merge_norm.weight), GRAD(t, st->merge_norm.bias), f->dln, st->merged,
                       PARAM(t, st->merge_norm.weight), st->merge_mean, st->merge_rstd, M, 4 * C, 0);
    patch_merge_backward(dx, dmerged, B, st->res, st->res, C, 0);
}

herbs_status swin_backward(herbs_backbone *bb, herbs_params *t, herbs_arena *arena,
                                  const float *const dtaps[HERBS_TAPS], float *dimages, float *tap_grads[HERBS_TAPS])
{
    swin *s = (swin *)bb;
    const int B = s->batch;
    if (B == 0)
        return herbs_error(HERBS_ERR_STATE, "swin backward needs a forward pass before it (one backward per forward)");
    s->batch = 0; /* backward overwrites some of what the forward saved */
    int top = -1; /* the deepest tap with a gradient: nothing above it needs to run */
    for (int i = 0; i < HERBS_TAPS; i++)
        if (dtaps[i])
            top = i;
    for (int i = top + 1; i < HERBS_TAPS; i++)
        backbone_keep_tap_grad(bb, tap_grads, i, B, NULL);
    if (top < 0)
        return HERBS_OK;

    /* the forward's scratch is free again; the blocks' backward adds dln (= datt) and dact (= dqkv) */
    scratch_sizes need = scratch_needed(s, B, s->threads);
    const size_t wide = need.tokens_hidden > 3 * need.tokens_dim ? need.tokens_hidden : 3 * need.tokens_dim;
    float *d, *other, *dln, *dact, *dbias;
    HERBS_TRY(herbs_arena_floats(arena, need.tokens_dim, 0, &d));
    HERBS_TRY(herbs_arena_floats(arena, need.tokens_dim, 0, &other));
    HERBS_TRY(herbs_arena_floats(arena, need.tokens_dim, 0, &dln));
    HERBS_TRY(herbs_arena_floats(arena, wide, 0, &dact));
    HERBS_TRY(herbs_arena_floats(arena, need.bias, 0, &dbias));

    for (int i = top; i >= 0; i--) {
        swin_stage *st = &s->stages[i];
        const block_frame frame = frame_of(s, st, B, dln, dact);
        const size_t tap_size = (size_t)B * bb->tap_tokens[i] * bb->tap_channels[i];
        if (i == top)
            memcpy(d, dtaps[i], tap_size * sizeof(float));
        else if (dtaps[i])
            add_into(d, dtaps[i], tap_size);
        backbone_keep_tap_grad(bb, tap_grads, i, B, d);
        if (i < SWIN_STAGES - 1) {
            merge_backward(st, t, other, d, B, &frame);
            float *swap = d;
            d = other;
            other = swap;
        }
        for (int b = st->depth - 1; b >= 0; b--) {
            swin_block *sb = &st->blocks[b];
            transformer_block *k = &sb->block;
            const swin_attention attention = attention_of(s, sb, st, B, dbias);
            if (!s->kept) /* recompute into the shared buffers; the output goes to scratch */
                HERBS_TRY(transformer_block_forward(k, &frame, &attention.step, t, arena, k->x, s->branch, &s->shared,
                                                    0, 0, 0));
            transformer_block_backward(k, &frame, &attention.step, t, s->kept ? &k->saved : &s->shared, d);
        }
    }

    const int res0 = s->stages[0].res, D = s->embed_dim, M0 = B * res0 * res0, in = bb->in_channels;
    layernorm_backward(dln, GRAD(t, s->embed_norm.weight), GRAD(t, s->embed_norm.bias), d, s->embedded,
                       PARAM(t, s->embed_norm.weight), s->embed_mean, s->embed_rstd, M0, D, 0);
    float *image_work = NULL;
    if (dimages)
        HERBS_TRY(herbs_arena_floats(arena, (size_t)M0 * in * s->patch * s->patch, 0, &image_work));
    product_rows_backward(&s->embed, t, t->precision, image_work, dln, s->patches, M0, 0);
    if (dimages)
        patch_embed_scatter(dimages, image_work, B, in, bb->img_size, bb->img_size, s->patch, 1);
    return HERBS_OK;
}
