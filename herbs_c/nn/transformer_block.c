/* The pre-norm transformer block (transformer_block.h). */
#include "nn/transformer_block.h"

#include "kernels/kernels.h"

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

    layernorm_forward(f->ln, v->mean1, v->rstd1, x, PARAM(t, k->norm1.weight), PARAM(t, k->norm1.bias), M, C, f->eps);
    product_rows_forward(&k->qkv, t, t->precision, v->qkv, f->ln, M, NULL, NULL, 0);
    k->attention = t->precision;
    attention->forward(attention, k, t, v);
    product_rows_forward(&k->proj, t, t->precision, f->branch, v->att, M, NULL, NULL, 0);
    residual_add_forward(v->x1, x, f->branch, k->scale1, B, per_sample);

    layernorm_forward(f->ln, v->mean2, v->rstd2, v->x1, PARAM(t, k->norm2.weight), PARAM(t, k->norm2.bias), M, C,
                      f->eps);
    product_rows_forward(&k->fc1, t, t->precision, v->hidden, f->ln, M, NULL, NULL, 0);
    gelu_forward(f->act, v->hidden, (size_t)M * f->hidden);
    product_rows_forward(&k->fc2, t, t->precision, f->branch, f->act, M, NULL, NULL, 0);
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
    float *dln = f->dln, *datt = f->dln, *dact = f->dact, *dqkv = f->dact;

    /* MLP branch: out = x1 + scale2 · fc2(gelu(fc1(norm2(x1)))) */
    const float *g = branch_grad(f->branch, d, k->scale2, B, per_sample);
    layernorm_forward(f->ln, v->mean2, v->rstd2, v->x1, PARAM(t, k->norm2.weight), PARAM(t, k->norm2.bias), M, C,
                      f->eps);
    /* the GELU output again, and its derivative in place of the saved pre-activation */
    gelu_forward_derivative(f->act, v->hidden, v->hidden, (size_t)M * H);
    product_rows_backward(&k->fc2, t, t->precision, dact, g, f->act, M, 0);
    activation_backward(f->act, dact, v->hidden, (size_t)M * H, 0); /* the pre-activation's gradient */
    product_rows_backward(&k->fc1, t, t->precision, dln, f->act, f->ln, M, 0);
    layernorm_backward(d, GRAD(t, k->norm2.weight), GRAD(t, k->norm2.bias), dln, v->x1, PARAM(t, k->norm2.weight),
                       v->mean2, v->rstd2, M, C, 1);

    /* attention branch: x1 = x + scale1 · proj(attention(qkv(norm1(x)))) */
    g = branch_grad(f->branch, d, k->scale1, B, per_sample);
    product_rows_backward(&k->proj, t, t->precision, datt, g, v->att, M, 0);
    attention->backward(attention, k, t, v, datt, dqkv);
    layernorm_forward(f->ln, v->mean1, v->rstd1, k->x, PARAM(t, k->norm1.weight), PARAM(t, k->norm1.bias), M, C,
                      f->eps);
    product_rows_backward(&k->qkv, t, t->precision, dln, dqkv, f->ln, M, 0);
    layernorm_backward(d, GRAD(t, k->norm1.weight), GRAD(t, k->norm1.bias), dln, k->x, PARAM(t, k->norm1.weight),
                       v->mean1, v->rstd1, M, C, 1);
}
