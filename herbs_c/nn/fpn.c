/* The two-way feature pyramid (SPEC.md §3.1, §3.3; §2 "FPN for a CNN"). Top-down: project every
   tap to F channels, then from layer4 down add the mixed/upsampled upper level into the lower.
   Bottom-up: project the top-down features again, then from layer1 up add the mixed/pooled lower
   level into the upper. Cascades run in place, as the release's dict updates do. */
#include <stdio.h>
#include <string.h>

#include "kernels/kernels.h"
#include "nn/head.h"

static size_t level_size(const head_fpn *f, int batch, int i) { return (size_t)batch * f->tokens[i] * f->size; }

/* The CNN path needs each level to be the same size as the next or twice it. */
static int doubles(const head_fpn *f, int lo, int hi)
{
    return f->height[lo] == 2 * f->height[hi] && f->width[lo] == 2 * f->width[hi];
}
static int same_grid(const head_fpn *f, int lo, int hi)
{
    return f->height[lo] == f->height[hi] && f->width[lo] == f->width[hi];
}

herbs_status fpn_down_init(head_fpn *f, herbs_params *t, const herbs_backbone *bb, fpn_type type, int size)
{
    memset(f, 0, sizeof *f);
    f->type = type;
    f->size = size;
    for (int i = 0; i < HERBS_TAPS; i++) {
        f->tokens[i] = bb->tap_tokens[i], f->channels[i] = bb->tap_channels[i];
        f->height[i] = bb->tap_height[i], f->width[i] = bb->tap_width[i];
    }
    for (int i = 1; type == FPN_CNN && i < HERBS_TAPS; i++)
        if (!doubles(f, i - 1, i) && !same_grid(f, i - 1, i))
            return herbs_error(HERBS_ERR_VALUE, "the CNN feature pyramid needs layer%d's grid (%dx%d) to be twice or "
                               "equal to layer%d's (%dx%d): choose an image size divisible by 32", i, f->height[i - 1],
                               f->width[i - 1], i + 1, f->height[i], f->width[i]);
    char prefix[HERBS_NAME_MAX];
    for (int i = 0; i < HERBS_TAPS; i++) {
        snprintf(prefix, sizeof prefix, "fpn_down.Proj_layer%d.", i + 1);
        HERBS_TRY(mlp_init(&f->down_proj[i], t, prefix, f->channels[i], f->channels[i], size, type == FPN_CNN));
        if (type == FPN_TOKENS && i > 0) {
            snprintf(prefix, sizeof prefix, "Up_layer%d", i + 1);
            HERBS_TRY(product_add(t, &f->up[i], "fpn_down.", prefix,
                                  head_product_spec(f->tokens[i - 1], f->tokens[i], 1)));
        }
    }
    return HERBS_OK;
}

herbs_status fpn_up_init(head_fpn *f, herbs_params *t)
{
    char prefix[HERBS_NAME_MAX];
    for (int i = 0; i < HERBS_TAPS; i++) {
        snprintf(prefix, sizeof prefix, "fpn_up.Proj_layer%d.", i + 1);
        HERBS_TRY(mlp_init(&f->up_proj[i], t, prefix, f->size, f->size, f->size, 0));
        if (f->type == FPN_TOKENS && i < HERBS_TAPS - 1) {
            snprintf(prefix, sizeof prefix, "Down_layer%d", i + 1);
            HERBS_TRY(product_add(t, &f->down[i], "fpn_up.", prefix,
                                  head_product_spec(f->tokens[i + 1], f->tokens[i], 1)));
        }
    }
    return HERBS_OK;
}

/* the resampling between neighbouring CNN levels, added onto out: [B,H,W,C] -> [B,2H,2W,C] or [B,H/2,W/2,C] */
typedef void (*resample_fn)(float *out, const float *inp, int B, int H, int W, int C, int accumulate);

/* dst (level `to`) += resample(src) (level `from`, the neighbour), or src itself on the same grid */
static void cnn_add_resampled(head_fpn *f, head_ctx *c, float *dst, int to, const float *src, int from,
                              resample_fn resample)
{
    if (same_grid(f, to, from))
        add_into(dst, src, level_size(f, c->batch, to));
    else
        resample(dst, src, c->batch, f->height[from], f->width[from], f->size, 1);
}

int fpn_top_down_factors(const head_fpn *f, int i, level_factors *xf)
{
    if (f->type != FPN_CNN || i == HERBS_TAPS - 1 || !doubles(f, i, i + 1))
        return 0;
    const head_mlp *proj = &f->down_proj[i];
    *xf = (level_factors){proj->h, &proj->linear2, proj->hidden, f->top_down[i + 1], f->height[i + 1],
                          f->width[i + 1]};
    return 1;
}

/* Whether the lowest top-down level goes unformed: in train mode its two readers (its up_proj and
   its classifier, of the same rows and F) take it through its factors by the cost rule, and no
   cascade reads it. An eval forward forms it: a backward after one (heat maps) makes the
   classifier's BN input from it. */
static int lowest_level_unformed(const head_fpn *f, const head_ctx *c)
{
    level_factors xf; /* its pointers are not read here */
    return c->train && fpn_top_down_factors(f, 0, &xf) && factored_pays(c, &xf, c->batch * f->tokens[0], f->size);
}

herbs_status fpn_forward(head_fpn *f, head_ctx *c, float *const taps[HERBS_TAPS])
{
    const int B = c->batch, F = f->size, unformed = lowest_level_unformed(f, c);
    for (int i = 0; i < HERBS_TAPS; i++) {
        f->top_down[i] = NULL;
        if (i > 0 || !unformed)
            HERBS_TRY(head_alloc(c, level_size(f, B, i), 0, &f->top_down[i]));
        HERBS_TRY(mlp_forward(&f->down_proj[i], c, taps[i], NULL, B * f->tokens[i], f->top_down[i]));
    }
    for (int i = HERBS_TAPS - 1; i > 0 && f->top_down[i - 1]; i--) {
        if (f->type == FPN_TOKENS)
            product_tokens_forward(&f->up[i], c->t, c->t->precision, f->top_down[i - 1], f->top_down[i], B, F, 1);
        else
            cnn_add_resampled(f, c, f->top_down[i - 1], i - 1, f->top_down[i], i, upsample_bilinear2x_forward);
    }
    for (int i = 0; i < HERBS_TAPS; i++) {
        HERBS_TRY(head_alloc(c, level_size(f, B, i), 0, &f->bottom_up[i]));
        level_factors xf;
        const int factored = fpn_top_down_factors(f, i, &xf);
        HERBS_TRY(mlp_forward(&f->up_proj[i], c, f->top_down[i], factored ? &xf : NULL, B * f->tokens[i],
                              f->bottom_up[i]));
    }
    for (int i = 0; i < HERBS_TAPS - 1; i++) {
        if (f->type == FPN_TOKENS)
            product_tokens_forward(&f->down[i], c->t, c->t->precision, f->bottom_up[i + 1], f->bottom_up[i], B, F, 1);
        else
            cnn_add_resampled(f, c, f->bottom_up[i + 1], i + 1, f->bottom_up[i], i, avgpool2x2_forward);
    }
    return HERBS_OK;
}

/* The backward of Up, top_down[i] += Up(top_down[i+1]): d_hi += Up's backward of d_lo, its dense part
   through the cascade's kernel, its terms through the factors (factored.h) */
static herbs_status up_backward(head_fpn *f, head_ctx *c, int i, const level_grad *d_lo, level_grad *d_hi)
{
    const int B = c->batch, F = f->size;
    float *d_upper;
    HERBS_TRY(level_grad_dense_zeroed(d_hi, c, &d_upper));
    if (d_lo->written) {
        if (f->type == FPN_TOKENS)
            product_tokens_backward(&f->up[i + 1], c->t, c->t->precision, d_upper, d_lo->dense, f->top_down[i + 1],
                                    B, F, 1);
        else if (same_grid(f, i, i + 1))
            add_into(d_upper, d_lo->dense, level_size(f, B, i));
        else
            upsample_bilinear2x_backward(d_upper, d_lo->dense, B, f->height[i + 1], f->width[i + 1], F);
    }
    HERBS_TRY(head_scratch_begin(c));
    return level_grad_up2x_backward(d_lo, c, f->height[i + 1], f->width[i + 1], F, d_upper);
}

herbs_status fpn_backward(head_fpn *f, head_ctx *c, level_grad d_top_down[HERBS_TAPS],
                          float *const d_bottom_up[HERBS_TAPS], float *const dtaps[HERBS_TAPS])
{
    const int B = c->batch, F = f->size;
    /* bottom-up cascade, read upwards: bottom_up[i] = proj_i(top_down[i]) + Down(bottom_up[i-1]) */
    for (int i = HERBS_TAPS - 1; i > 0; i--) {
        if (f->type == FPN_TOKENS)
            product_tokens_backward(&f->down[i - 1], c->t, c->t->precision, d_bottom_up[i - 1], d_bottom_up[i],
                                    f->bottom_up[i - 1], B, F, 1);
        else if (same_grid(f, i - 1, i))
            add_into(d_bottom_up[i - 1], d_bottom_up[i], level_size(f, B, i));
        else
            avgpool2x2_backward(d_bottom_up[i - 1], d_bottom_up[i], B, f->height[i - 1], f->width[i - 1], F);
    }
    for (int i = 0; i < HERBS_TAPS; i++) {
        const level_grad d_up = {.dense = d_bottom_up[i], .size = level_size(f, B, i), .written = 1};
        HERBS_TRY(mlp_backward(&f->up_proj[i], c, &d_up, &d_top_down[i]));
    }
    /* top-down cascade, read upwards: top_down[i] = proj_i(tap_i) + Up(top_down[i+1]); each level is
       whole before its projection's backward */
    for (int i = 0; i < HERBS_TAPS; i++) {
        if (i < HERBS_TAPS - 1)
            HERBS_TRY(up_backward(f, c, i, &d_top_down[i], &d_top_down[i + 1]));
        level_grad d_tap = {.dense = dtaps[i], .size = (size_t)B * f->tokens[i] * f->channels[i]};
        HERBS_TRY(mlp_backward(&f->down_proj[i], c, &d_top_down[i], &d_tap));
    }
    return HERBS_OK;
}
