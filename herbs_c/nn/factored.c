/* Products over factored rows (factored.h): the cost rule, the factored forward, the backward
   (through the factors, dx formed or handed on as a term) and the consumers of terms. */
#include <string.h>

#include "core/threads.h"
#include "kernels/kernels.h"
#include "nn/factored.h"
#include "nn/head.h"

/* --- the cost rule ------------------------------------------------------------------------------- */

/* Whether x·Aᵀ through x's factors takes fewer multiply-adds than the plain product, by a margin that
   pays for its extra passes. Per column of A: `passes` products over h (the forward: h·(A·W)ᵀ, A·W; a
   backward that hands dx on as a term also dy·(A·W), Aᵀ·(dyᵀ·h)), F·hidden + rows·hidden each, and
   one over the upper level, rows/4·F, against rows·F. */
static int factors_pay(const level_factors *xf, int batch, int rows, int F, int passes)
{
    const double upper_rows = (double)batch * xf->height * xf->width;
    const double factored = passes * ((double)F * xf->hidden + (double)rows * xf->hidden) + upper_rows * F;
    return factored < 0.8 * (double)rows * F;
}

int factored_pays(const head_ctx *c, const level_factors *xf, int rows, int F)
{
    return xf && factors_pay(xf, c->batch, rows, F, 1);
}

int factored_plan(factored_use *u, const head_ctx *c, const level_factors *xf, int rows, int F)
{
    *u = (factored_use){0};
    if (factored_pays(c, xf, rows, F))
        *u = (factored_use){.factored = 1, .term = factors_pay(xf, c->batch, rows, F, 2), .xf = *xf};
    return u->factored;
}

/* --- forward ------------------------------------------------------------------------------------- */

herbs_status factored_bias(const factored_use *u, head_ctx *c, herbs_weight *a, float **out)
{
    HERBS_TRY(head_alloc(c, a->out, 0, out));
    linear_forward(*out, PARAM(c->t, u->xf.w->bias), PARAM(c->t, a->weight), PARAM(c->t, a->bias), 1, a->in, a->out);
    return HERBS_OK;
}

/* C = op(A)·op(B) + beta·C, then the per-column affine, at the net's precision, where A or B (a_is_h,
   b_is_h) is a factor h: bf16 bit patterns at bf16 (level_factors), read as they are */
static void product_with_h(const herbs_params *t, int trans_a, int trans_b, int M, int N, int K, const void *A,
                           int a_is_h, long lda, const void *B, int b_is_h, long ldb, float beta, float *C, long ldc,
                           const float *scale, const float *shift, int relu)
{
    if (t->precision == HERBS_BF16)
        gemm_bf16_inputs(trans_a, trans_b, M, N, K, 1.0f, A, a_is_h, lda, B, b_is_h, ldb, beta, C, ldc, scale, shift,
                         relu);
    else
        gemm_affine_at(HERBS_FP32, trans_a, trans_b, M, N, K, 1.0f, A, lda, B, ldb, beta, C, ldc, scale, shift, relu);
}

/* out = up2x(upper·Aᵀ), then out += h·(A·W)ᵀ with the affine on each tile */
herbs_status factored_forward(factored_use *u, head_ctx *c, const herbs_weight *a, int rows, float *out,
                              const float *scale, const float *shift, int relu)
{
    const level_factors *xf = &u->xf;
    const herbs_precision p = c->t->precision;
    const int upper_rows = c->batch * xf->height * xf->width, N = a->out, F = a->in;
    const float *A = PARAM(c->t, a->weight);
    float *aw, *upper_a;
    HERBS_TRY(head_alloc(c, (size_t)N * xf->hidden, 0, &aw));
    HERBS_TRY(head_scratch(c, (size_t)upper_rows * N, 0, &upper_a));
    gemm(0, 0, N, xf->hidden, F, 1.0f, A, F, PARAM(c->t, xf->w->weight), xf->hidden, 0.0f, aw, xf->hidden);
    gemm_affine_at(p, 0, 1, upper_rows, N, F, 1.0f, xf->upper, F, A, F, 0.0f, upper_a, N, NULL, NULL, 0);
    upsample_bilinear2x_forward(out, upper_a, c->batch, xf->height, xf->width, N, 0);
    product_with_h(c->t, 0, 1, rows, N, xf->hidden, xf->h, 1, xf->hidden, aw, 0, xf->hidden, 1.0f, out, N, scale,
                   shift, relu);
    u->aw = aw;
    return HERBS_OK;
}

/* --- backward ------------------------------------------------------------------------------------ */

/* count floats that a term keeps (u->term: in the arena) or that only this call needs (the scratch) */
static herbs_status kept_by_term(const factored_use *u, head_ctx *c, size_t count, int zero, float **out)
{
    if (u->term && c->spent && count <= c->spent_floats && 2 * count > c->spent_floats) { /* fits, not wasted */
        *out = c->spent;
        c->spent = NULL;
        if (zero)
            herbs_zero_floats(*out, count);
        return HERBS_OK;
    }
    return u->term ? head_alloc(c, count, zero, out) : head_scratch(c, count, zero, out);
}

herbs_status factored_dy(const factored_use *u, head_ctx *c, size_t count, float **dy)
{
    return kept_by_term(u, c, count, 0, dy);
}

/* Through the factors, dA = (dyᵀ·h)·Wᵀ + (Σ dy)·bᵀ + up2x_backward(dy)ᵀ·upper; a term keeps the first
   two reductions of dy (arena), the third is made again by the cascade (a quarter level per term). */
herbs_status factored_backward(const factored_use *u, head_ctx *c, const float *dy, const float *x, herbs_weight *a,
                               int rows, level_grad *dx)
{
    herbs_params *t = c->t;
    float *dx_dense = NULL;
    int accumulate = 0;
    if (u->term && dx->count == LEVEL_TERMS)
        return herbs_error(HERBS_ERR_STATE, "a level gradient takes at most %d terms", LEVEL_TERMS);
    if (!u->term)
        HERBS_TRY(level_grad_dense(dx, c, &dx_dense, &accumulate));
    if (!u->factored) {
        product_rows_backward(a, t, t->precision, dx_dense, dy, x, rows, accumulate);
        return HERBS_OK;
    }
    const int N = a->out, F = a->in;
    const float *A = PARAM(t, a->weight), *W = PARAM(t, u->xf.w->weight);
    float *da = GRAD(t, a->weight);
    linear_backward(t->precision, dx_dense, NULL, GRAD(t, a->bias), dy, NULL, A, rows, F, N, accumulate);
    const level_factors *xf = &u->xf;
    const int upper_rows = c->batch * xf->height * xf->width;
    float *dy_h, *dy_sum, *dy_upper;
    HERBS_TRY(kept_by_term(u, c, (size_t)N * xf->hidden, 0, &dy_h));
    HERBS_TRY(kept_by_term(u, c, N, 1, &dy_sum));
    HERBS_TRY(head_scratch(c, (size_t)upper_rows * N, 1, &dy_upper));
    product_with_h(t, 1, 0, N, xf->hidden, rows, dy, 0, N, xf->h, 1, xf->hidden, 0.0f, dy_h, xf->hidden, NULL, NULL, 0);
    linear_backward(HERBS_FP32, NULL, NULL, dy_sum, dy, NULL, NULL, rows, F, N, 0); /* no product */
    upsample_bilinear2x_backward(dy_upper, dy, c->batch, xf->height, xf->width, N);
    gemm(0, 1, N, F, xf->hidden, 1.0f, dy_h, xf->hidden, W, xf->hidden, 1.0f, da, F);
    gemm(1, 0, N, F, 1, 1.0f, dy_sum, N, PARAM(t, xf->w->bias), F, 1.0f, da, F);
    gemm_at(t->precision, 1, 0, N, F, upper_rows, 1.0f, dy_upper, N, xf->upper, F, 1.0f, da, F);
    if (u->term)
        dx->terms[dx->count++] = (grad_term){dy, A, N, u->aw, dy_h, dy_sum};
    return HERBS_OK;
}

/* --- the gradient of a level ---------------------------------------------------------------------- */

herbs_status level_grad_dense(level_grad *g, head_ctx *c, float **dense, int *accumulate)
{
    if (!g->dense)
        HERBS_TRY(head_alloc(c, g->size, 0, &g->dense));
    *dense = g->dense;
    *accumulate = g->written;
    g->written = 1;
    return HERBS_OK;
}

herbs_status level_grad_dense_zeroed(level_grad *g, head_ctx *c, float **dense)
{
    int accumulate;
    HERBS_TRY(level_grad_dense(g, c, dense, &accumulate));
    if (!accumulate)
        memset(*dense, 0, g->size * sizeof **dense);
    return HERBS_OK;
}

/* dinp = dense·W + Σ dyⱼ·(Aⱼ·W), dW += denseᵀ·inp + Σ Aⱼᵀ·(dyⱼᵀ·h), db += Σ dense + Σ Aⱼᵀ·Σ dyⱼ */
void level_grad_linear_backward(const level_grad *g, head_ctx *c, float *dinp, herbs_weight *w, const void *inp,
                                int inp_bf16, int rows)
{
    const int in = w->in, out = w->out;
    float *dw = GRAD(c->t, w->weight), *db = GRAD(c->t, w->bias);
    if (g->written)
        product_rows_backward_input(w, c->t, dinp, g->dense, inp, inp_bf16, rows, 0);
    for (int j = 0; j < g->count; j++) {
        const grad_term *t = &g->terms[j];
        gemm_at(c->t->precision, 0, 0, rows, in, t->n, 1.0f, t->dy, t->n, t->aw, in, g->written || j > 0 ? 1.0f : 0.0f,
                dinp, in);
        gemm(1, 0, out, in, t->n, 1.0f, t->a, out, t->dy_h, in, 1.0f, dw, in);
        gemm(1, 0, out, 1, t->n, 1.0f, t->a, out, t->dy_sum, 1, 1.0f, db, 1);
    }
}

herbs_status level_grad_up2x_backward(const level_grad *g, head_ctx *c, int H, int W, int F, float *d_upper)
{
    const int upper_rows = c->batch * H * W;
    int n = 0;
    for (int j = 0; j < g->count; j++)
        n = g->terms[j].n > n ? g->terms[j].n : n;
    float *dy_upper; /* up2x_backward(dyⱼ), one term after the other */
    if (n)
        HERBS_TRY(head_scratch(c, (size_t)upper_rows * n, 0, &dy_upper));
    for (int j = 0; j < g->count; j++) {
        const grad_term *t = &g->terms[j];
        memset(dy_upper, 0, (size_t)upper_rows * t->n * sizeof *dy_upper);
        upsample_bilinear2x_backward(dy_upper, t->dy, c->batch, H, W, t->n);
        gemm_at(c->t->precision, 0, 0, upper_rows, F, t->n, 1.0f, dy_upper, t->n, t->a, F, 1.0f, d_upper, F);
    }
    return HERBS_OK;
}
