/* The pre-norm transformer block (transformer_block.h). */
#include "nn/transformer_block.h"

#include <omp.h>
#include <stdio.h>

#include "core/threads.h"
#include "kernels/kernels.h"

const herbs_init TRANSFORMER_ZEROS = {HERBS_INIT_ZEROS, 0}, TRANSFORMER_ONES = {HERBS_INIT_CONSTANT, 1},
                 TRANSFORMER_NORMAL = {HERBS_INIT_NORMAL, 0.02f};

/* full = name + "." + suffix */
static herbs_status join(char full[HERBS_NAME_MAX], const char *name, const char *suffix)
{
    if (snprintf(full, HERBS_NAME_MAX, "%s.%s", name, suffix) >= HERBS_NAME_MAX)
        return herbs_error(HERBS_ERR_VALUE, "tensor name '%s.%s' is too long", name, suffix);
    return HERBS_OK;
}

herbs_status transformer_norm_add(herbs_params *t, norm_offsets *n, const char *prefix, const char *name, int dim)
{
    char full[HERBS_NAME_MAX];
    HERBS_TRY(join(full, name, "weight"));
    HERBS_TRY(params_add(t, &n->weight, HERBS_PARAMETER, TRANSFORMER_ONES, prefix, full, 1, (int64_t)dim));
    HERBS_TRY(join(full, name, "bias"));
    return params_add(t, &n->bias, HERBS_PARAMETER, TRANSFORMER_ZEROS, prefix, full, 1, (int64_t)dim);
}

herbs_status transformer_linear_add(herbs_params *t, herbs_weight *w, const char *prefix, const char *name, int in,
                                    int out, int bias)
{
    return product_add(t, w, prefix, name,
                       (herbs_product_spec){.out = out, .in = in, .bias = bias, .weight_init = TRANSFORMER_NORMAL,
                                            .bias_init = TRANSFORMER_ZEROS});
}

herbs_status transformer_block_add(herbs_params *t, transformer_block *k, const char *prefix, const char *name, int C,
                                   int hidden, int qkv_bias, block_attention_tensor attention)
{
    char n[HERBS_NAME_MAX];
    HERBS_TRY(join(n, name, "norm1"));
    HERBS_TRY(transformer_norm_add(t, &k->norm1, prefix, n, C));
    if (attention.name) {
        HERBS_TRY(join(n, name, attention.name));
        HERBS_TRY(params_add(t, attention.offset, HERBS_PARAMETER, TRANSFORMER_NORMAL, prefix, n, 2, attention.rows,
                             attention.cols));
    }
    HERBS_TRY(join(n, name, "attn.qkv"));
    HERBS_TRY(transformer_linear_add(t, &k->qkv, prefix, n, C, 3 * C, qkv_bias));
    HERBS_TRY(join(n, name, "attn.proj"));
    HERBS_TRY(transformer_linear_add(t, &k->proj, prefix, n, C, C, 1));
    HERBS_TRY(join(n, name, "norm2"));
    HERBS_TRY(transformer_norm_add(t, &k->norm2, prefix, n, C));
    HERBS_TRY(join(n, name, "mlp.fc1"));
    HERBS_TRY(transformer_linear_add(t, &k->fc1, prefix, n, C, hidden, 1));
    HERBS_TRY(join(n, name, "mlp.fc2"));
    return transformer_linear_add(t, &k->fc2, prefix, n, hidden, C, 1);
}

void transformer_norm_forward(const herbs_params *t, norm_offsets n, float *out, int out_bf16, float *mean, float *rstd,
                              const float *x, int M, int C, float eps)
{
    if (out_bf16)
        layernorm_forward_bf16((uint16_t *)out, mean, rstd, x, PARAM(t, n.weight), PARAM(t, n.bias), M, C, eps);
    else
        layernorm_forward(out, mean, rstd, x, PARAM(t, n.weight), PARAM(t, n.bias), M, C, eps);
}

block_saved_sizes block_saved_sizes_of(size_t M, int C, int heads, int hidden, size_t bias, int keep_act_bf16)
{
    return (block_saved_sizes){.stats = M, .qkv = 3 * M * C, .bias = bias, .lse = M * heads, .tokens = M * C,
                               .hidden = M * hidden, .act = keep_act_bf16 ? (M * hidden + 1) / 2 : 0};
}

int block_keeps_act(const herbs_params *t, int train) { return train && t->precision == HERBS_BF16; }

herbs_status block_act_scratch(const herbs_params *t, int train, size_t floats, herbs_arena *arena, float **act)
{
    *act = NULL;
    return block_keeps_act(t, train) ? HERBS_OK : herbs_arena_floats(arena, floats, 0, act);
}

block_saved_sizes block_saved_sizes_max(block_saved_sizes a, block_saved_sizes b)
{
#define WIDER(f) (a.f > b.f ? a.f : b.f)
    return (block_saved_sizes){WIDER(stats),  WIDER(qkv),    WIDER(bias), WIDER(lse),
                               WIDER(tokens), WIDER(hidden), WIDER(act)};
#undef WIDER
}

herbs_status block_saved_alloc(block_saved *v, block_saved_sizes n, herbs_arena *arena)
{
    v->bias = NULL;
    v->act = NULL;
    if (n.act)
        HERBS_TRY(herbs_arena_floats(arena, n.act, 0, (float **)&v->act));
    HERBS_TRY(herbs_arena_floats(arena, n.stats, 0, &v->mean1));
    HERBS_TRY(herbs_arena_floats(arena, n.stats, 0, &v->rstd1));
    HERBS_TRY(herbs_arena_floats(arena, n.qkv, 0, &v->qkv));
    if (n.bias)
        HERBS_TRY(herbs_arena_floats(arena, n.bias, 0, &v->bias));
    HERBS_TRY(herbs_arena_floats(arena, n.lse, 0, &v->lse));
    HERBS_TRY(herbs_arena_floats(arena, n.tokens, 0, &v->att));
    HERBS_TRY(herbs_arena_floats(arena, n.tokens, 0, &v->x1));
    HERBS_TRY(herbs_arena_floats(arena, n.stats, 0, &v->mean2));
    HERBS_TRY(herbs_arena_floats(arena, n.stats, 0, &v->rstd2));
    return herbs_arena_floats(arena, n.hidden, 0, &v->hidden);
}

#define CHUNK_HIDDEN_BYTES (160 << 10) /* a chunk's GELU output, in L2 beside the two weights */
#define CHUNK_WEIGHT_BYTES (384 << 10) /* the two weights at most (re-read from L2 for every chunk) */
#define CHUNK_ROW_UNIT 14              /* whole micro-kernel stripes */

/* Rows per chunk of the MLP, or 0 to run it whole. */
static int mlp_chunk_rows(const transformer_block *k, const herbs_params *t, int M, int threads)
{
    const int hidden = k->fc1.out, in = k->fc1.in;
    const size_t weight_bytes = 2 * (size_t)hidden * in * (t->precision == HERBS_BF16 ? 2 : 4);
    const int rows = CHUNK_HIDDEN_BYTES / (hidden * (int)sizeof(float)) / CHUNK_ROW_UNIT * CHUNK_ROW_UNIT;
    if (weight_bytes > CHUNK_WEIGHT_BYTES || rows < CHUNK_ROW_UNIT || M < 4 * threads * rows)
        return 0;
    return rows;
}

/* f->branch[r0 : r0 + n] = fc2(GELU(fc1(norm2 output rows r0..))), or with res, out[r0 : r0 + n] = res +
   that (added in fc2's stores); fc1's output into v->hidden (at bf16 only with keep_hidden), the GELU
   output where v keeps it (v->act), else into act (n rows); with bf16_acts the norm2 output (f->ln)
   and the GELU output are bf16, the GELU applied in fc1's stores. */
static herbs_status mlp_rows(transformer_block *k, const block_frame *f, const herbs_params *t, const block_saved *v,
                             int bf16_acts, int keep_hidden, const float *res, float *out, float *act, int r0, int n)
{
    if (v->act)
        act = (float *)(v->act + (size_t)r0 * f->hidden);
    const int C = f->C, H = f->hidden;
    const size_t elem = bf16_acts ? sizeof(uint16_t) : sizeof(float);
    float *hidden = v->hidden + (size_t)r0 * H;
    const char *x = (const char *)f->ln + (size_t)r0 * C * elem;
    if (bf16_acts) {
        HERBS_TRY(product_rows_forward_activation(&k->fc1, t, keep_hidden ? hidden : NULL, (uint16_t *)act,
                                                  HERBS_BF16_GELU, x, 1, n));
    } else {
        HERBS_TRY(product_rows_forward_input(&k->fc1, t, hidden, x, 0, n));
        gelu_forward(act, hidden, (size_t)n * H);
    }
    const size_t at = (size_t)r0 * C;
    return res ? product_rows_forward_residual(&k->fc2, t, out + at, res + at, act, bf16_acts, n)
               : product_rows_forward_input(&k->fc2, t, f->branch + at, act, bf16_acts, n);
}

/* f->branch [M, C] = fc2(GELU(fc1(f->ln))), or with res, out = res + that, as mlp_rows. Where the weights are small
   (Swin's first stage), by chunks of rows, each thread running both products on its chunks alone
   with the chunk's GELU output in a buffer of its own that stays in L2. */
static herbs_status mlp_forward(transformer_block *k, const block_frame *f, const herbs_params *t,
                                const block_saved *v, int bf16_acts, int keep_hidden, const float *res, float *out,
                                int M)
{
    const int H = f->hidden, threads = herbs_num_threads(), rows = mlp_chunk_rows(k, t, M, threads);
    if (!rows)
        return mlp_rows(k, f, t, v, bf16_acts, keep_hidden, res, out, f->act, 0, M);
    product_rows_prepare(&k->fc1, t, t->precision); /* packed before the threads share them */
    product_rows_prepare(&k->fc2, t, t->precision);
    const int chunks = (M + rows - 1) / rows;
    herbs_status status = HERBS_OK; /* an error (non-zero) wins; its message is set on this thread below */
#pragma omp parallel num_threads(threads) reduction(max : status)
    {
        /* reused chunk after chunk, unless v keeps the output */
        float *act = v->act ? NULL : f->act + (size_t)omp_get_thread_num() * rows * H;
#pragma omp for schedule(static)
        for (int c = 0; c < chunks; c++) {
            const int r0 = c * rows, n = M - r0 < rows ? M - r0 : rows;
            const herbs_status s = mlp_rows(k, f, t, v, bf16_acts, keep_hidden, res, out, act, r0, n);
            status = s > status ? s : status;
        }
    }
    return status ? herbs_error(status, "transformer MLP: no memory for packing its rows") : HERBS_OK;
}

herbs_status transformer_block_forward(transformer_block *k, const block_frame *f, const block_attention *attention,
                                       const herbs_params *t, herbs_arena *arena, const float *x, float *out,
                                       const block_saved *v, int train, uint64_t seed, uint64_t step)
{
    const int B = f->B, C = f->C, M = B * f->L;
    const long per_sample = (long)f->L * C;
    k->scale1 = k->scale2 = NULL;
    if (train && k->drop_prob > 0) {
        HERBS_TRY(herbs_arena_floats(arena, B, 0, &k->scale1));
        HERBS_TRY(herbs_arena_floats(arena, B, 0, &k->scale2));
        drop_path_scales(k->scale1, B, 1 - k->drop_prob, seed, TRANSFORMER_DROP_STREAM(step, k->index, 0));
        drop_path_scales(k->scale2, B, 1 - k->drop_prob, seed, TRANSFORMER_DROP_STREAM(step, k->index, 1));
    }

    /* at bf16, the outputs that only feed products (the norms', GELU's, the attention's) are stored
       in bf16: the same products from half the bytes */
    const int bf16_acts = t->precision == HERBS_BF16;
    transformer_norm_forward(t, k->norm1, f->ln, bf16_acts, v->mean1, v->rstd1, x, M, C, f->eps);
    HERBS_TRY(product_rows_forward_input(&k->qkv, t, v->qkv, f->ln, bf16_acts, M));
    k->attention = t->precision;
    attention->forward(attention, k, t, v);
    /* each residual join x + branch in the branch's last product (its stores), or after it where drop
       path scales the branch */
    if (k->scale1) {
        HERBS_TRY(product_rows_forward_input(&k->proj, t, f->branch, v->att, bf16_acts, M));
        residual_add_forward(v->x1, x, f->branch, k->scale1, B, per_sample);
    } else
        HERBS_TRY(product_rows_forward_residual(&k->proj, t, v->x1, x, v->att, bf16_acts, M));

    transformer_norm_forward(t, k->norm2, f->ln, bf16_acts, v->mean2, v->rstd2, v->x1, M, C, f->eps);
    /* GELU's input is for a backward only: training's, or the one that runs this forward again */
    HERBS_TRY(mlp_forward(k, f, t, v, bf16_acts, train || f->dln, k->scale2 ? NULL : v->x1, out, M));
    if (k->scale2)
        residual_add_forward(out, v->x1, f->branch, k->scale2, B, per_sample);
    return HERBS_OK;
}

/* The gradient into a branch: d itself without drop path, else scale·d in `buffer`. */
static const float *branch_grad(float *buffer, const float *d, const float *scale, int B, long per_sample)
{
    if (!scale)
        return d;
    residual_add_backward(buffer, d, scale, B, per_sample, 0);
    return buffer;
}

/* Every backward writes (accumulate 0) the fresh buffer it is the first writer of, and the
   LayerNorms add their input gradient onto d (the residual's). */
void transformer_block_backward(transformer_block *k, const block_frame *f, const block_attention *attention,
                                herbs_params *t, const block_saved *v, float *d)
{
    const int B = f->B, C = f->C, M = B * f->L, H = f->hidden;
    const long per_sample = (long)f->L * C;
    const int bf16_acts = t->precision == HERBS_BF16; /* the forward's: norm and GELU outputs in bf16 */
    float *dln = f->dln, *datt = f->dln, *dact = f->dact, *dqkv = f->dact;

    /* MLP branch: out = x1 + scale2 · fc2(gelu(fc1(norm2(x1)))) */
    const float *g = branch_grad(f->branch, d, k->scale2, B, per_sample);
    transformer_norm_forward(t, k->norm2, f->ln, bf16_acts, v->mean2, v->rstd2, v->x1, M, C, f->eps);
    /* the GELU output (kept, or made again), and at fp32 its derivative in place of the saved
       pre-activation */
    if (bf16_acts) {
        const uint16_t *act = v->act;
        if (!act) { /* not kept: eval mode (a heat map's backward) */
            gelu_forward_bf16((uint16_t *)f->act, v->hidden, (size_t)M * H);
            act = (const uint16_t *)f->act;
        }
        product_rows_backward_input(&k->fc2, t, dact, g, act, 1, M, 0);
        product_rows_backward_through_gelu(&k->fc1, t, dln, dact, v->hidden, f->ln, M);
    } else {
        gelu_forward_derivative(f->act, v->hidden, v->hidden, (size_t)M * H);
        product_rows_backward_input(&k->fc2, t, dact, g, f->act, 0, M, 0);
        activation_backward(f->act, dact, v->hidden, (size_t)M * H, 0); /* the pre-activation's gradient */
        product_rows_backward_input(&k->fc1, t, dln, f->act, f->ln, 0, M, 0);
    }
    layernorm_backward(d, GRAD(t, k->norm2.weight), GRAD(t, k->norm2.bias), dln, v->x1, PARAM(t, k->norm2.weight),
                       v->mean2, v->rstd2, M, C, 1);

    /* attention branch: x1 = x + scale1 · proj(attention(qkv(norm1(x)))) */
    g = branch_grad(f->branch, d, k->scale1, B, per_sample);
    product_rows_backward_input(&k->proj, t, datt, g, v->att, bf16_acts, M, 0);
    attention->backward(attention, k, t, v, datt, dqkv);
    transformer_norm_forward(t, k->norm1, f->ln, bf16_acts, v->mean1, v->rstd1, k->x, M, C, f->eps);
    product_rows_backward_input(&k->qkv, t, dln, dqkv, f->ln, bf16_acts, M, 0);
    layernorm_backward(d, GRAD(t, k->norm1.weight), GRAD(t, k->norm1.bias), dln, k->x, PARAM(t, k->norm1.weight),
                       v->mean1, v->rstd1, M, C, 1);
}
