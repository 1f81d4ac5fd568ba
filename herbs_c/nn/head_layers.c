/* The head's building blocks: Linear–ReLU–Linear projections and the per-token classifiers
   (their BatchNorm is batchnorm_layer.h's). */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "kernels/kernels.h"
#include "nn/head.h"

herbs_status head_alloc(head_ctx *c, size_t count, int zero, float **out)
{
    return herbs_arena_floats(c->arena, count, zero, out);
}

herbs_status head_scratch_begin(head_ctx *c) { return herbs_arena_reset(c->scratch); }

herbs_status head_scratch(head_ctx *c, size_t count, int zero, float **out)
{
    return herbs_arena_floats(c->scratch, count, zero, out);
}

herbs_init head_default_init(int fan_in) { return (herbs_init){HERBS_INIT_UNIFORM, 1.0f / sqrtf((float)fan_in)}; }

herbs_product_spec head_product_spec(int out, int in, int ones)
{
    const herbs_init init = head_default_init(in);
    return (herbs_product_spec){.out = out, .in = in, .kernel_dims = ones, .k = 1, .stride = 1, .bias = 1,
                                .weight_init = init, .bias_init = init};
}

herbs_status head_add_weight_bias(herbs_params *t, size_t *w, size_t *b, const char *prefix, const char *name,
                                  int out, int in, int ones)
{
    herbs_weight handle;
    HERBS_TRY(product_add(t, &handle, prefix, name, head_product_spec(out, in, ones)));
    *w = handle.weight;
    *b = handle.bias;
    return HERBS_OK;
}

/* --- products over factored rows (level_factors) --------------------------------------------- */

/* Whether a product x·Aᵀ through x's factors takes fewer multiply-adds than the plain one, by a
   margin that pays for its extra passes. Per column of A: `passes` products over h (forward: h·(A·W)ᵀ,
   A·W; a backward that hands dx on as a term also dy·(A·W), Aᵀ·(dyᵀ·h)), F·hidden + rows·hidden each,
   and one over the upper level, rows/4·F, against rows·F. */
static int factors_pay(const level_factors *xf, int batch, int rows, int F, int passes)
{
    const double upper_rows = (double)batch * xf->height * xf->width;
    const double factored = passes * ((double)F * xf->hidden + (double)rows * xf->hidden) + upper_rows * F;
    return factored < 0.8 * (double)rows * F;
}

/* *out[N] = A·b + bias (bias NULL: none), the constant part of x·Aᵀ + bias, in the arena */
static herbs_status factored_bias(head_ctx *c, const level_factors *xf, const float *a, const float *bias, int N,
                                  int F, float **out)
{
    HERBS_TRY(head_alloc(c, N, 0, out));
    linear_forward(*out, xf->b, a, bias, 1, F, N);
    return HERBS_OK;
}

/* out[rows, N] = (x·Aᵀ)·scale + shift (then ReLU with relu) from x's factors xf, A [N, F], with A·b in
   shift (factored_bias): out = up2x(upper·Aᵀ), then out += h·(A·W)ᵀ with the affine on each tile.
   Records the use in *use, with A·W kept in the arena for the backward. */
static herbs_status factored_product(head_ctx *c, const level_factors *xf, const float *a, int N, int F, int rows,
                                     float *out, const float *scale, const float *shift, int relu, factored_use *use)
{
    const int upper_rows = c->batch * xf->height * xf->width;
    float *aw, *upper_a;
    HERBS_TRY(head_alloc(c, (size_t)N * xf->hidden, 0, &aw));
    HERBS_TRY(head_scratch_begin(c));
    HERBS_TRY(head_scratch(c, (size_t)upper_rows * N, 0, &upper_a));
    gemm(0, 0, N, xf->hidden, F, 1.0f, a, F, xf->w, xf->hidden, 0.0f, aw, xf->hidden);
    linear_forward(upper_a, xf->upper, a, NULL, upper_rows, F, N);
    upsample_bilinear2x_forward(out, upper_a, c->batch, xf->height, xf->width, N, 0);
    gemm_affine(0, 1, rows, N, xf->hidden, 1.0f, xf->h, xf->hidden, aw, xf->hidden, 1.0f, out, N, scale, shift, relu);
    *use = (factored_use){1, *xf, aw};
    return HERBS_OK;
}

/* The backward of the product x·Aᵀ + bias (A [N, F]) from dy [rows, N]: dA += dyᵀ·x, dbias += Σ dy, and
   dx[rows, F] (+)= dy·A — or, with defer (after a forward through x's factors only), *defer = the term
   dy·A (dy must outlive the call) and dx is not touched. After a forward through the factors, dA is
   (dyᵀ·h)·Wᵀ + (Σ dy)·bᵀ + up2x_backward(dy)ᵀ·upper; a term keeps the first two reductions of dy (in
   the arena; the rest goes to the scratch, which is not reset: dy may live there). */
static herbs_status product_backward(head_ctx *c, const factored_use *use, float *dx, float *da, float *dbias,
                                     const float *dy, const float *x, const float *a, int rows, int F, int N,
                                     int accumulate, grad_term *defer)
{
    linear_backward(defer ? NULL : dx, use->used ? NULL : da, dbias, dy, x, a, rows, F, N, accumulate);
    if (!use->used)
        return HERBS_OK;
    const level_factors *xf = &use->xf;
    const int upper_rows = c->batch * xf->height * xf->width;
    herbs_status (*keep)(head_ctx *, size_t, int, float **) = defer ? head_alloc : head_scratch;
    float *dy_h, *dy_sum, *dy_upper;
    HERBS_TRY(keep(c, (size_t)N * xf->hidden, 0, &dy_h));
    HERBS_TRY(keep(c, N, 1, &dy_sum));
    HERBS_TRY(head_scratch(c, (size_t)upper_rows * N, 1, &dy_upper)); /* a quarter level: made again if needed */
    gemm(1, 0, N, xf->hidden, rows, 1.0f, dy, N, xf->h, xf->hidden, 0.0f, dy_h, xf->hidden);
    linear_backward(NULL, NULL, dy_sum, dy, NULL, NULL, rows, F, N, 0);
    upsample_bilinear2x_backward(dy_upper, dy, c->batch, xf->height, xf->width, N);
    gemm(0, 1, N, F, xf->hidden, 1.0f, dy_h, xf->hidden, xf->w, xf->hidden, 1.0f, da, F);
    gemm(1, 0, N, F, 1, 1.0f, dy_sum, N, xf->b, F, 1.0f, da, F);
    gemm(1, 0, N, F, upper_rows, 1.0f, dy_upper, N, xf->upper, F, 1.0f, da, F);
    if (defer)
        *defer = (grad_term){dy, a, N, use->aw, dy_h, dy_sum};
    return HERBS_OK;
}

/* The backward of a linear layer out = inp·Wᵀ + b (W [out, in]) whose output gradient is dout (NULL:
   none) plus `count` terms dyⱼ·Aⱼ of the level this layer's output makes (inp and W are the terms'
   factors h and W): dinp[rows, in] = dout·W + Σ dyⱼ·(Aⱼ·W) (written, not read),
   dW += doutᵀ·inp + Σ Aⱼᵀ·(dyⱼᵀ·h), db += Σ dout + Σ Aⱼᵀ·Σ dyⱼ. */
static void linear_backward_terms(float *dinp, float *dw, float *db, const float *dout, const grad_term *terms,
                                  int count, const float *inp, const float *w, int rows, int in, int out)
{
    if (dout)
        linear_backward(dinp, dw, db, dout, inp, w, rows, in, out, 0);
    for (int j = 0; j < count; j++) {
        const grad_term *t = &terms[j];
        gemm(0, 0, rows, in, t->n, 1.0f, t->dy, t->n, t->aw, in, dout || j > 0 ? 1.0f : 0.0f, dinp, in);
        gemm(1, 0, out, in, t->n, 1.0f, t->a, out, t->dy_h, in, 1.0f, dw, in);
        gemm(1, 0, out, 1, t->n, 1.0f, t->a, out, t->dy_sum, 1, 1.0f, db, 1);
    }
}

/* --- Linear–ReLU–Linear ---------------------------------------------------------------------- */

herbs_status mlp_init(head_mlp *m, herbs_params *t, const char *prefix, int in, int hidden, int out, int conv_shapes)
{
    memset(m, 0, sizeof *m);
    m->in = in, m->hidden = hidden, m->out = out;
    HERBS_TRY(head_add_weight_bias(t, &m->w0, &m->b0, prefix, "0", hidden, in, conv_shapes ? 2 : 0));
    return head_add_weight_bias(t, &m->w2, &m->b2, prefix, "2", out, hidden, conv_shapes ? 2 : 0);
}

herbs_status mlp_forward(head_mlp *m, head_ctx *c, const float *x, const level_factors *xf, int rows, float *out)
{
    const float *w0 = PARAM(c->t, m->w0), *b0 = PARAM(c->t, m->b0);
    m->x = x;
    m->rows = rows;
    m->factored.used = 0;
    HERBS_TRY(head_alloc(c, (size_t)rows * m->hidden, 0, &m->h));
    if (xf && factors_pay(xf, c->batch, rows, m->in, 1)) {
        float *shift;
        HERBS_TRY(factored_bias(c, xf, w0, b0, m->hidden, m->in, &shift));
        HERBS_TRY(factored_product(c, xf, w0, m->hidden, m->in, rows, m->h, NULL, shift, 1, &m->factored));
    } else
        linear_affine_forward(m->h, x, w0, NULL, b0, 1, rows, m->in, m->hidden);
    linear_forward(out, m->h, PARAM(c->t, m->w2), PARAM(c->t, m->b2), rows, m->hidden, m->out);
    return HERBS_OK;
}

int mlp_defers(const head_mlp *m, const head_ctx *c)
{
    return m->factored.used && factors_pay(&m->factored.xf, c->batch, m->rows, m->in, 2);
}

herbs_status mlp_backward(head_mlp *m, head_ctx *c, const float *dout, const grad_term *terms, int count, float *dx,
                          int accumulate, grad_term *defer)
{
    const size_t n = (size_t)m->rows * m->hidden;
    const int deferring = defer && mlp_defers(m, c);
    float *dh;
    if (defer)
        defer->dy = NULL;
    HERBS_TRY(head_scratch_begin(c));
    HERBS_TRY(deferring ? head_alloc(c, n, 0, &dh) : head_scratch(c, n, 0, &dh)); /* a term outlives the call */
    /* dh = dout · W2 (and the terms'), then ReLU's mask in place */
    linear_backward_terms(dh, GRAD(c->t, m->w2), GRAD(c->t, m->b2), dout, terms, count, m->h, PARAM(c->t, m->w2),
                          m->rows, m->hidden, m->out);
    relu_backward(dh, dh, m->h, n, 0);
    return product_backward(c, &m->factored, dx, GRAD(c->t, m->w0), GRAD(c->t, m->b0), dh, m->x, PARAM(c->t, m->w0),
                            m->rows, m->in, m->hidden, accumulate, deferring ? defer : NULL);
}

/* --- token classifiers ----------------------------------------------------------------------- */

herbs_status classifier_init(head_classifier *k, herbs_params *t, const char *prefix, int channels, int classes)
{
    memset(k, 0, sizeof *k);
    k->channels = channels, k->classes = classes;
    HERBS_TRY(head_add_weight_bias(t, &k->w0, &k->b0, prefix, "0", channels, channels, 1));
    HERBS_TRY(batchnorm_layer_init(&k->bn, t, prefix, "1", channels));
    return head_add_weight_bias(t, &k->w3, &k->b3, prefix, "3", classes, channels, 1);
}

herbs_status classifier_forward(head_classifier *k, head_ctx *c, const float *x, const level_factors *xf, int rows,
                                float *logits)
{
    const int F = k->channels;
    const size_t n = (size_t)rows * F;
    const float *w0 = PARAM(c->t, k->w0), *b0 = PARAM(c->t, k->b0);
    float *factored_b0 = NULL; /* with factors: W0·b + b0, the bias of x's other terms through W0 */
    k->x = x;
    k->rows = rows;
    HERBS_TRY(head_alloc(c, n, 0, &k->r));
    const int factored = xf && factors_pay(xf, c->batch, rows, F, 1);
    k->factored.used = 0;
    if (factored)
        HERBS_TRY(factored_bias(c, xf, w0, b0, F, F, &factored_b0));
    const float *bias = factored ? factored_b0 : b0;
    if (c->train) {
        HERBS_TRY(head_alloc(c, n, 0, &k->z));
        if (factored)
            HERBS_TRY(factored_product(c, xf, w0, F, F, rows, k->z, NULL, bias, 0, &k->factored));
        else
            linear_forward(k->z, x, w0, b0, rows, F, F);
        HERBS_TRY(batchnorm_layer_forward(&k->bn, c->t, c->arena, 1, k->z, rows, k->r, 1));
    } else { /* r = ReLU(BN(x·W0ᵀ + b0)) in the product's store; z is not kept */
        float *scale, *shift;
        HERBS_TRY(batchnorm_layer_fold(&k->bn, c->t, c->arena, bias, &scale, &shift));
        if (factored)
            HERBS_TRY(factored_product(c, xf, w0, F, F, rows, k->r, scale, shift, 1, &k->factored));
        else
            linear_affine_forward(k->r, x, w0, scale, shift, 1, rows, F, F);
        k->z = NULL;
    }
    linear_forward(logits, k->r, PARAM(c->t, k->w3), PARAM(c->t, k->b3), rows, F, k->classes);
    return HERBS_OK;
}

herbs_status classifier_backward(head_classifier *k, head_ctx *c, const float *dlogits, float *dx, int accumulate,
                                 grad_term *defer)
{
    const size_t n = (size_t)k->rows * k->channels;
    const int deferring = defer && !accumulate && k->factored.used &&
                          factors_pay(&k->factored.xf, c->batch, k->rows, k->channels, 2);
    float *dr, *dz;
    if (defer)
        defer->dy = NULL;
    if (!k->z) { /* after an eval-mode forward: the BN input, for its backward */
        HERBS_TRY(head_alloc(c, n, 0, &k->z));
        linear_forward(k->z, k->x, PARAM(c->t, k->w0), PARAM(c->t, k->b0), k->rows, k->channels, k->channels);
    }
    HERBS_TRY(head_scratch_begin(c));
    HERBS_TRY(head_scratch(c, n, 0, &dr));
    if (deferring) /* the term's dy, [rows, F] as dx, in dx's memory (dx is not formed) */
        dz = dx;
    else
        HERBS_TRY(head_scratch(c, n, 0, &dz));
    /* dr = dlogits · W3; the BN pass applies ReLU's mask */
    linear_backward(dr, GRAD(c->t, k->w3), GRAD(c->t, k->b3), dlogits, k->r, PARAM(c->t, k->w3), k->rows,
                    k->channels, k->classes, 0);
    batchnorm_layer_backward(&k->bn, c->t, dz, dr, k->r, k->z, k->rows, 0);
    return product_backward(c, &k->factored, dx, GRAD(c->t, k->w0), GRAD(c->t, k->b0), dz, k->x, PARAM(c->t, k->w0),
                            k->rows, k->channels, k->channels, accumulate, deferring ? defer : NULL);
}
