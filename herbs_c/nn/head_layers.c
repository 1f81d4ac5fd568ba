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

herbs_status head_token_mean_product(head_ctx *c, herbs_weight *w, const float *x, int S, int C, float **mean,
                                     float *out)
{
    HERBS_TRY(head_alloc(c, (size_t)c->batch * C, 0, mean));
    token_mean_forward(*mean, x, c->batch, S, C);
    product_rows_forward(w, c->t, c->t->precision, out, *mean, c->batch, NULL, NULL, 0);
    return HERBS_OK;
}

herbs_init head_default_init(int fan_in) { return (herbs_init){HERBS_INIT_UNIFORM, 1.0f / sqrtf((float)fan_in)}; }

herbs_product_spec head_product_spec(int out, int in, int ones)
{
    const herbs_init init = head_default_init(in);
    return (herbs_product_spec){.out = out, .in = in, .kernel_dims = ones, .k = 1, .stride = 1, .bias = 1,
                                .weight_init = init, .bias_init = init};
}

/* --- Linear–ReLU–Linear ---------------------------------------------------------------------- */

herbs_status mlp_init(head_mlp *m, herbs_params *t, const char *prefix, int in, int hidden, int out, int conv_shapes)
{
    memset(m, 0, sizeof *m);
    m->in = in, m->hidden = hidden, m->out = out;
    HERBS_TRY(product_add(t, &m->linear0, prefix, "0", head_product_spec(hidden, in, conv_shapes ? 2 : 0)));
    return product_add(t, &m->linear2, prefix, "2", head_product_spec(out, hidden, conv_shapes ? 2 : 0));
}

herbs_status mlp_forward(head_mlp *m, head_ctx *c, const float *x, const level_factors *xf, int rows, float *out)
{
    herbs_params *t = c->t;
    const int h_bf16 = t->precision == HERBS_BF16;
    const size_t n = (size_t)rows * m->hidden;
    float *h32; /* h's block */
    m->x = x;
    m->rows = rows;
    HERBS_TRY(head_scratch_begin(c));
    HERBS_TRY(head_alloc(c, h_bf16 ? (n + 1) / 2 : n, 0, &h32));
    m->h = h32;
    if (!factored_plan(&m->first, c, xf, rows, m->in) && !x)
        return herbs_error(HERBS_ERR_STATE, "an MLP's input was not formed and its factors do not pay");
    if (h_bf16 && !m->first.factored) { /* the ReLU in the product's stores: its fp32 output is not formed */
        HERBS_TRY(product_rows_forward_activation(&m->linear0, t, NULL, m->h, HERBS_BF16_RELU, x, 0, rows));
    } else { /* the first Linear's output: h itself (fp32), else fp32 rows in the scratch */
        float *z = h32;
        if (h_bf16)
            HERBS_TRY(head_scratch(c, n, 0, &z));
        if (m->first.factored) {
            float *shift; /* W0·b + b0 (b: x's bias) */
            HERBS_TRY(factored_bias(&m->first, c, &m->linear0, &shift));
            HERBS_TRY(factored_forward(&m->first, c, &m->linear0, rows, z, NULL, shift, !h_bf16));
        } else
            product_rows_forward(&m->linear0, t, t->precision, z, x, rows, NULL, NULL, 1);
        if (h_bf16)
            relu_forward_bf16(m->h, z, n);
    }
    return out ? product_rows_forward_input(&m->linear2, t, out, m->h, h_bf16, rows) : HERBS_OK;
}

herbs_status mlp_backward(head_mlp *m, head_ctx *c, const level_grad *dout, level_grad *dx)
{
    const int h_bf16 = c->t->precision == HERBS_BF16;
    const size_t n = (size_t)m->rows * m->hidden;
    float *dh;
    HERBS_TRY(head_scratch_begin(c));
    HERBS_TRY(factored_dy(&m->first, c, n, &dh));
    /* dh = dout · W2, then ReLU's mask in place */
    level_grad_linear_backward(dout, c, dh, &m->linear2, m->h, h_bf16, m->rows);
    if (h_bf16)
        relu_backward_bf16(dh, dh, m->h, n, 0);
    else
        relu_backward(dh, dh, m->h, n, 0);
    return factored_backward(&m->first, c, dh, m->x, &m->linear0, m->rows, dx);
}

/* --- token classifiers ----------------------------------------------------------------------- */

herbs_status classifier_init(head_classifier *k, herbs_params *t, const char *prefix, int channels, int classes)
{
    memset(k, 0, sizeof *k);
    k->channels = channels, k->classes = classes;
    HERBS_TRY(product_add(t, &k->conv0, prefix, "0", head_product_spec(channels, channels, 1)));
    HERBS_TRY(batchnorm_layer_init(&k->bn, t, prefix, "1", channels));
    return product_add(t, &k->conv3, prefix, "3", head_product_spec(classes, channels, 1));
}

herbs_status classifier_forward(head_classifier *k, head_ctx *c, const float *x, const level_factors *xf, int rows,
                                int image_level, float *logits)
{
    herbs_params *t = c->t;
    const size_t n = (size_t)rows * k->channels;
    const float *b0 = NULL; /* NULL: conv0's own bias */
    k->x = x;
    k->rows = rows;
    HERBS_TRY(head_scratch_begin(c));
    /* train mode keeps z, the BN input, and makes r again in the backward: r only feeds conv3 here */
    HERBS_TRY(c->train ? head_scratch(c, n, 0, &k->r) : head_alloc(c, n, 0, &k->r));
    if (!factored_plan(&k->first, c, xf, rows, k->channels) && !x)
        return herbs_error(HERBS_ERR_STATE, "a classifier's input was not formed and its factors do not pay");
    if (k->first.factored) { /* then b0 becomes W0·b + b0 (b: x's bias) */
        float *factored_b0;
        HERBS_TRY(factored_bias(&k->first, c, &k->conv0, &factored_b0));
        b0 = factored_b0;
    }
    float *scale = NULL, *shift = NULL;
    if (c->train) /* z = x·W0ᵀ + b0, then r = ReLU(BN(z)) */
        HERBS_TRY(head_alloc(c, n, 0, &k->z));
    else { /* r = ReLU(BN(x·W0ᵀ + b0)) = ReLU((x·W0ᵀ)·scale + shift) in the product's store; z is not kept */
        HERBS_TRY(batchnorm_layer_fold(&k->bn, t, c->arena, b0 ? b0 : PARAM(t, k->conv0.bias), &scale, &shift));
        k->z = NULL;
    }
    float *out = c->train ? k->z : k->r;
    const float *bias = c->train ? b0 : shift;
    if (k->first.factored)
        HERBS_TRY(factored_forward(&k->first, c, &k->conv0, rows, out, scale, bias, !c->train));
    else
        product_rows_forward(&k->conv0, t, t->precision, out, x, rows, scale, bias, !c->train);
    if (c->train)
        HERBS_TRY(batchnorm_layer_forward(&k->bn, t, c->arena, 1, k->z, rows, k->r, 1));
    if (image_level) { /* conv3 on the token mean of r, per sample */
        float *mean;
        return head_token_mean_product(c, &k->conv3, k->r, rows / c->batch, k->channels, &mean, logits);
    }
    product_rows_forward(&k->conv3, t, t->precision, logits, k->r, rows, NULL, NULL, 0);
    if (c->train)
        k->r = NULL; /* gone with the scratch */
    return HERBS_OK;
}

herbs_status classifier_backward(head_classifier *k, head_ctx *c, const float *dlogits, level_grad *dx)
{
    herbs_params *t = c->t;
    const size_t n = (size_t)k->rows * k->channels;
    float *r = k->r, *dr;
    if (!k->z) { /* after an eval-mode forward: the BN input, for its backward */
        HERBS_TRY(head_alloc(c, n, 0, &k->z));
        product_rows_forward(&k->conv0, t, t->precision, k->z, k->x, k->rows, NULL, NULL, 0);
    }
    HERBS_TRY(head_scratch_begin(c));
    HERBS_TRY(head_scratch(c, n, 0, &dr));
    if (!r) /* after a train-mode forward: r = ReLU(BN(z)) again (the forward's bits), in dr */
        batchnorm_layer_forward_again(&k->bn, t, k->z, k->rows, dr, 1);
    /* dr = dlogits · W3 (conv3's weight gradient taken first, over r, which may be dr) */
    product_rows_backward(&k->conv3, t, t->precision, dr, dlogits, r ? r : dr, k->rows, 0);
    /* The BN pass applies ReLU's mask (from the kept r, or made again from z) and writes dz over a
       buffer it reads element by element: over z when a term keeps dz past this call (z is spent
       then: one backward per forward), else over dr. */
    float *dz = k->first.term ? k->z : dr;
    batchnorm_layer_relu_backward(&k->bn, t, dz, dr, r, k->z, k->rows, 0);
    return factored_backward(&k->first, c, dz, k->x, &k->conv0, k->rows, dx);
}
