/* EfficientNet (torchvision's layout): stem conv 3x3/2 - BN - SiLU, then seven stages of MBConv
   blocks: [expand 1x1 - BN - SiLU] - depthwise kxk (stride here) - BN - SiLU - squeeze-excitation
   - project 1x1 - BN, plus the block input (through stochastic depth in train mode) when the
   stride is 1 and the widths agree. Activations are NHWC rows; BatchNorm2d is the channels-last
   kernel over N = B·H·W rows. The 1x1 and stem convs are products (nn/product.h); the depthwise
   conv and squeeze-excitation are kernels of their own (depthwise.h, squeeze_excite.h), in fp32 at
   every precision.

   Saved for backward, per block: its input, each conv's output (the BN input, train only: eval
   mode folds the BN into the conv and a backward after it computes the output again), each BN
   output (the SiLU input), each SiLU output (the next layer's input), what squeeze-excitation
   keeps, its output (the project conv's input), the block output and the drop-path scales.
   Backward walks the blocks upwards with five gradient buffers of the largest activation. */
#include "nn/efficientnet.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/threads.h"
#include "kernels/kernels.h"
#include "nn/batchnorm_layer.h"
#include "nn/product.h"

#define TAP_STAGE0 3 /* the taps are stages 4..7 (0-based 3..6) */

typedef struct {
    herbs_weight weight; /* [out_c, in_c, k, k], no bias */
    int in_c, out_c, k, stride, H, W, OH, OW;
} conv_layer;

typedef struct {
    size_t weight; /* [C, 1, k, k] */
    int C, k, stride, pad, H, W, OH, OW;
} depthwise_layer;

typedef struct {
    size_t w1, b1, w2, b2; /* fc1 [S, C, 1, 1] and [S], fc2 [C, S, 1, 1] and [C] */
    int C, S;
} se_layer;

typedef struct {
    conv_layer expand, project; /* expand: only when has_expand */
    depthwise_layer dw;
    se_layer se;
    batchnorm_layer bn0, bn1, bn2; /* after expand, depthwise, project */
    int has_expand, residual, index;
    float drop_prob;
    /* the last forward, NHWC rows in the owner's arena: P = B·H·W input and Q = B·OH·OW output
       positions, E = dw.C expanded channels, S = se.S squeeze channels */
    const float *x;                      /* [P, in]: the block input */
    float *y0, *z0, *a0;                 /* [P, E]: expand conv output (train only), BN output, SiLU output */
    float *w_kkc;                        /* [k, k, E]: the depthwise weight in the compute layout */
    float *y1, *z1, *a1;                 /* [Q, E]: the same for the depthwise conv */
    float *pooled, *hidden, *act, *gate; /* [B, E], [B, S], [B, S], [B, E]: squeeze-excitation's */
    float *s;                            /* [Q, E]: squeeze-excitation's output */
    float *y2;                           /* [Q, out]: project conv output (train only) */
    float *out;                          /* [Q, out]: BN output, plus the input when residual */
    float *scale;                        /* [B]: drop-path scales (NULL: none, all kept) */
} mbconv;

typedef struct {
    herbs_backbone base;
    conv_layer stem;
    batchnorm_layer stem_bn;
    int n_blocks;
    mbconv *blocks;
    int stage_last[EFFNET_STAGES]; /* index of each stage's last block */
    /* the last forward */
    int batch, train;
    float *x0;              /* [B, img, img, in]: the NHWC image */
    float *y0, *z0, *a0;    /* [B, S, S, C0] (S = stem output size): conv output (train only), BN, SiLU */
    float *scratch;         /* the convolutions' scratch (packed weights, im2col chunks) */
    size_t scratch_floats;
} effnet;

/* --- building ---------------------------------------------------------------------------- */

/* torchvision's _make_divisible(v, divisor) with min_value = divisor */
static int make_divisible(double v, int divisor)
{
    int n = (int)(v + divisor / 2.0) / divisor * divisor;
    if (n < divisor)
        n = divisor;
    if (n < 0.9 * v)
        n += divisor;
    return n;
}

static int out_size(int n, int k, int stride) { return (n + 2 * ((k - 1) / 2) - k) / stride + 1; }

/* kaiming_normal_(mode="fan_out"), torchvision's init of every EfficientNet conv */
static herbs_init fan_out_init(int out_c, int k) { return (herbs_init){HERBS_INIT_NORMAL, sqrtf(2.0f / ((float)out_c * k * k))}; }

static herbs_status conv_init(conv_layer *c, herbs_params *t, const char *prefix, const char *name, int in_c,
                              int out_c, int k, int stride, int H, int W)
{
    *c = (conv_layer){.in_c = in_c, .out_c = out_c, .k = k, .stride = stride, .H = H, .W = W,
                      .OH = out_size(H, k, stride), .OW = out_size(W, k, stride)};
    return product_add(t, &c->weight, prefix, name,
                       (herbs_product_spec){.out = out_c, .in = in_c, .kernel_dims = 2, .k = k, .stride = stride,
                                            .pad = (k - 1) / 2, .weight_init = fan_out_init(out_c, k)});
}

static herbs_status bn_init(batchnorm_layer *bn, herbs_params *t, const char *prefix, const char *name, int channels,
                            float eps, float momentum)
{
    HERBS_TRY(batchnorm_layer_init(bn, t, prefix, name, channels));
    bn->eps = eps;
    bn->momentum = momentum;
    return HERBS_OK;
}

typedef struct {
    float eps, momentum;
} bn_settings;

/* block `index` (b-th of stage s) from in_c to out_c channels on an H x W input */
static herbs_status block_init(mbconv *blk, herbs_params *t, const char *prefix, int s, int b, int index, int in_c,
                               int out_c, int expand_ratio, int k, int stride, int H, int W, bn_settings bs)
{
    char name[HERBS_NAME_MAX];
    const int E = make_divisible((double)in_c * expand_ratio, 8), S = in_c / 4 > 1 ? in_c / 4 : 1;
    int part = 0;
    memset(blk, 0, sizeof *blk);
    blk->index = index;
    blk->has_expand = E != in_c;
    blk->residual = stride == 1 && in_c == out_c;
#define PART_NAME(fmt) (snprintf(name, sizeof name, "features.%d.%d.block.%d" fmt, s + 1, b, part), name)
    if (blk->has_expand) {
        HERBS_TRY(conv_init(&blk->expand, t, prefix, PART_NAME(".0"), in_c, E, 1, 1, H, W));
        HERBS_TRY(bn_init(&blk->bn0, t, prefix, PART_NAME(".1"), E, bs.eps, bs.momentum));
        part++;
    }
    depthwise_layer *d = &blk->dw;
    *d = (depthwise_layer){.C = E, .k = k, .stride = stride, .pad = (k - 1) / 2, .H = H, .W = W,
                           .OH = out_size(H, k, stride), .OW = out_size(W, k, stride)};
    HERBS_TRY(params_add(t, &d->weight, HERBS_PARAMETER, fan_out_init(E, k), prefix, PART_NAME(".0.weight"), 4,
                         (int64_t)E, (int64_t)1, (int64_t)k, (int64_t)k));
    HERBS_TRY(bn_init(&blk->bn1, t, prefix, PART_NAME(".1"), E, bs.eps, bs.momentum));
    part++;
    se_layer *se = &blk->se;
    const herbs_init zeros = {HERBS_INIT_ZEROS, 0};
    se->C = E;
    se->S = S;
    HERBS_TRY(params_add(t, &se->w1, HERBS_PARAMETER, fan_out_init(S, 1), prefix, PART_NAME(".fc1.weight"), 4,
                         (int64_t)S, (int64_t)E, (int64_t)1, (int64_t)1));
    HERBS_TRY(params_add(t, &se->b1, HERBS_PARAMETER, zeros, prefix, PART_NAME(".fc1.bias"), 1, (int64_t)S));
    HERBS_TRY(params_add(t, &se->w2, HERBS_PARAMETER, fan_out_init(E, 1), prefix, PART_NAME(".fc2.weight"), 4,
                         (int64_t)E, (int64_t)S, (int64_t)1, (int64_t)1));
    HERBS_TRY(params_add(t, &se->b2, HERBS_PARAMETER, zeros, prefix, PART_NAME(".fc2.bias"), 1, (int64_t)E));
    part++;
    HERBS_TRY(conv_init(&blk->project, t, prefix, PART_NAME(".0"), E, out_c, 1, 1, d->OH, d->OW));
    HERBS_TRY(bn_init(&blk->bn2, t, prefix, PART_NAME(".1"), out_c, bs.eps, bs.momentum));
#undef PART_NAME
    return HERBS_OK;
}

/* --- layer passes -------------------------------------------------------------------------- */

static size_t conv_out_floats(const conv_layer *c, int batch) { return (size_t)batch * c->OH * c->OW * c->out_c; }
static size_t dw_out_floats(const depthwise_layer *d, int batch) { return (size_t)batch * d->OH * d->OW * d->C; }

/* out = conv(inp), with `fold` (eval mode) BN(conv(inp)) in one pass */
static herbs_status conv_pass(effnet *e, conv_layer *c, const herbs_params *t, herbs_arena *arena, const float *inp,
                              batchnorm_layer *fold, float **out)
{
    float *scale = NULL, *shift = NULL;
    if (fold)
        HERBS_TRY(batchnorm_layer_fold(fold, t, arena, NULL, &scale, &shift));
    HERBS_TRY(herbs_arena_floats(arena, conv_out_floats(c, e->batch), 0, out));
    product_conv_forward(&c->weight, t, t->precision, *out, inp, e->batch, c->H, c->W, scale, shift, 0, e->scratch,
                         e->scratch_floats);
    return HERBS_OK;
}

/* *z = BN(conv(inp)); train mode keeps *y = conv(inp), eval mode folds the BN and keeps none */
static herbs_status conv_bn_forward(effnet *e, conv_layer *c, batchnorm_layer *bn, const herbs_params *t,
                                    herbs_arena *arena, const float *inp, float **y, float **z)
{
    *y = NULL;
    if (!e->train)
        return conv_pass(e, c, t, arena, inp, bn, z);
    HERBS_TRY(conv_pass(e, c, t, arena, inp, NULL, y));
    HERBS_TRY(herbs_arena_floats(arena, conv_out_floats(c, e->batch), 0, z));
    return batchnorm_layer_forward(bn, t, arena, 1, *y, e->batch * c->OH * c->OW, *z, 0);
}

/* the conv's output before its BN, computed again after an eval-mode forward (heat maps) */
static herbs_status conv_output(effnet *e, conv_layer *c, const herbs_params *t, herbs_arena *arena,
                                const float *inp, float **y)
{
    return *y ? HERBS_OK : conv_pass(e, c, t, arena, inp, NULL, y);
}

/* dinp (NULL: not wanted) += (accumulate set) or = d(inp), the weight gradient += from dout */
static void conv_backward(effnet *e, conv_layer *c, herbs_params *t, float *dw_work, float *dinp, const float *dout,
                          const float *inp, int accumulate)
{
    product_conv_backward(&c->weight, t, t->precision, dinp, dout, inp, e->batch, c->H, c->W, e->scratch,
                          e->scratch_floats, dw_work, accumulate);
}

static herbs_status silu_out(effnet *e, herbs_arena *arena, const float *z, size_t n, float **a)
{
    HERBS_TRY(herbs_arena_floats(arena, n, 0, a));
    silu_forward(*a, z, n);
    return HERBS_OK;
}

/* the depthwise conv's output before its BN (eval mode: computed again, as conv_output) */
static herbs_status dw_output(effnet *e, mbconv *blk, herbs_arena *arena, const float *inp)
{
    const depthwise_layer *d = &blk->dw;
    if (blk->y1)
        return HERBS_OK;
    HERBS_TRY(herbs_arena_floats(arena, dw_out_floats(d, e->batch), 0, &blk->y1));
    depthwise_forward(blk->y1, inp, blk->w_kkc, NULL, NULL, e->batch, d->H, d->W, d->C, d->k, d->stride, d->pad);
    return HERBS_OK;
}

/* z1 = BN(depthwise(inp)), keeping y1 in train mode; eval mode folds the BN into the conv */
static herbs_status dw_bn_forward(effnet *e, mbconv *blk, const herbs_params *t, herbs_arena *arena, const float *inp)
{
    const depthwise_layer *d = &blk->dw;
    HERBS_TRY(herbs_arena_floats(arena, (size_t)d->C * d->k * d->k, 0, &blk->w_kkc));
    depthwise_weight_to_kkc(blk->w_kkc, PARAM(t, d->weight), d->C, d->k);
    blk->y1 = NULL;
    HERBS_TRY(herbs_arena_floats(arena, dw_out_floats(d, e->batch), 0, &blk->z1));
    if (!e->train) {
        float *scale, *shift;
        HERBS_TRY(batchnorm_layer_fold(&blk->bn1, t, arena, NULL, &scale, &shift));
        depthwise_forward(blk->z1, inp, blk->w_kkc, scale, shift, e->batch, d->H, d->W, d->C, d->k, d->stride, d->pad);
        return HERBS_OK;
    }
    HERBS_TRY(dw_output(e, blk, arena, inp));
    return batchnorm_layer_forward(&blk->bn1, t, arena, 1, blk->y1, e->batch * d->OH * d->OW, blk->z1, 0);
}

static herbs_status se_forward(effnet *e, mbconv *blk, const herbs_params *t, herbs_arena *arena)
{
    const se_layer *se = &blk->se;
    const int B = e->batch;
    HERBS_TRY(herbs_arena_floats(arena, (size_t)B * se->C, 0, &blk->pooled));
    HERBS_TRY(herbs_arena_floats(arena, (size_t)B * se->S, 0, &blk->hidden));
    HERBS_TRY(herbs_arena_floats(arena, (size_t)B * se->S, 0, &blk->act));
    HERBS_TRY(herbs_arena_floats(arena, (size_t)B * se->C, 0, &blk->gate));
    HERBS_TRY(herbs_arena_floats(arena, dw_out_floats(&blk->dw, B), 0, &blk->s));
    squeeze_excite_forward(blk->s, blk->pooled, blk->hidden, blk->act, blk->gate, blk->a1, PARAM(t, se->w1),
                           PARAM(t, se->b1), PARAM(t, se->w2), PARAM(t, se->b2), B, blk->dw.OH * blk->dw.OW, se->C,
                           se->S);
    return HERBS_OK;
}

static herbs_status block_forward(effnet *e, mbconv *blk, const herbs_params *t, herbs_arena *arena, const float *x,
                                  uint64_t seed, uint64_t step)
{
    const int B = e->batch;
    blk->x = x;
    const float *h = x;
    if (blk->has_expand) {
        HERBS_TRY(conv_bn_forward(e, &blk->expand, &blk->bn0, t, arena, x, &blk->y0, &blk->z0));
        HERBS_TRY(silu_out(e, arena, blk->z0, conv_out_floats(&blk->expand, B), &blk->a0));
        h = blk->a0;
    }
    HERBS_TRY(dw_bn_forward(e, blk, t, arena, h));
    HERBS_TRY(silu_out(e, arena, blk->z1, dw_out_floats(&blk->dw, B), &blk->a1));
    HERBS_TRY(se_forward(e, blk, t, arena));
    HERBS_TRY(conv_bn_forward(e, &blk->project, &blk->bn2, t, arena, blk->s, &blk->y2, &blk->out));
    blk->scale = NULL;
    if (!blk->residual)
        return HERBS_OK;
    if (e->train && blk->drop_prob > 0) {
        HERBS_TRY(herbs_arena_floats(arena, B, 0, &blk->scale));
        drop_path_scales(blk->scale, B, 1 - blk->drop_prob, seed, EFFNET_DROP_STREAM(step, blk->index));
    }
    const conv_layer *p = &blk->project;
    residual_add_forward(blk->out, x, blk->out, blk->scale, B, (long)p->OH * p->OW * p->out_c);
    return HERBS_OK;
}

/* --- the backbone ------------------------------------------------------------------------ */

static size_t image_floats(const effnet *e, int batch)
{
    return (size_t)batch * e->base.in_channels * e->base.img_size * e->base.img_size;
}

/* the largest conv scratch (forward: packed weights, im2col chunks) */
static size_t conv_scratch(const effnet *e)
{
    size_t most = conv2d_scratch_floats(e->stem.in_c, e->stem.out_c, e->stem.k, e->stem.k);
    for (int i = 0; i < e->n_blocks; i++) {
        const conv_layer *cs[2] = {&e->blocks[i].expand, &e->blocks[i].project};
        for (int j = e->blocks[i].has_expand ? 0 : 1; j < 2; j++) {
            const size_t need = conv2d_scratch_floats(cs[j]->in_c, cs[j]->out_c, 1, 1);
            most = need > most ? need : most;
        }
    }
    return most;
}

static herbs_status effnet_forward(herbs_backbone *bb, const herbs_params *t, herbs_arena *arena, const float *images,
                                   int batch, int train, uint64_t seed, uint64_t step, float *taps[HERBS_TAPS])
{
    effnet *e = (effnet *)bb;
    e->batch = 0; /* nothing to go back through until this forward succeeds */
    const int last_positions = bb->tap_tokens[HERBS_TAPS - 1];
    if (train && (long)batch * last_positions < 2)
        return herbs_error(HERBS_ERR_VALUE,
                           "EfficientNet batch norm in train mode needs more than one value per channel, but the last "
                           "stage has batch %d x %d position(s); use a batch >= 2, larger images, or eval mode",
                           batch, last_positions);
    if ((double)batch * e->stem.OH * e->stem.OW > 2147483647.0) /* pixel rows are counted in int */
        return herbs_error(HERBS_ERR_VALUE, "batch %d of %d px images has more than 2^31 positions after the "
                           "EfficientNet stem; use a smaller batch", batch, bb->img_size);
    e->batch = batch;
    e->train = train;
    e->scratch_floats = conv_scratch(e);
    HERBS_TRY(herbs_arena_floats(arena, e->scratch_floats, 0, &e->scratch));
    HERBS_TRY(herbs_arena_floats(arena, image_floats(e, batch), 0, &e->x0));
    nchw_to_nhwc_forward(e->x0, images, batch, bb->in_channels, bb->img_size, bb->img_size);

    HERBS_TRY(conv_bn_forward(e, &e->stem, &e->stem_bn, t, arena, e->x0, &e->y0, &e->z0));
    HERBS_TRY(silu_out(e, arena, e->z0, conv_out_floats(&e->stem, batch), &e->a0));
    const float *x = e->a0;
    for (int i = 0; i < e->n_blocks; i++) {
        HERBS_TRY(block_forward(e, &e->blocks[i], t, arena, x, seed, step));
        x = e->blocks[i].out;
    }
    for (int i = 0; i < HERBS_TAPS; i++)
        taps[i] = e->blocks[e->stage_last[TAP_STAGE0 + i]].out;
    return HERBS_OK;
}

/* gradient buffers of the backward pass */
typedef struct {
    float *cur, *prev; /* of the current block's output and input (the largest activation each) */
    float *a, *b, *c;  /* scratch of one block (the largest activation each) */
    float *dw;         /* the largest weight gradient in a compute layout (depthwise, stem) */
    float *se;         /* squeeze-excitation's scratch */
} grad_buffers;

/* d(block input) from gb->cur = d(block output): into gb->prev, or with a residual added onto gb->cur
   itself (the input's gradient is the output's plus the branch's; cur is read before it is added to) */
static herbs_status block_backward(effnet *e, mbconv *blk, herbs_params *t, herbs_arena *arena, grad_buffers *gb)
{
    const int B = e->batch;
    const depthwise_layer *d = &blk->dw;
    const se_layer *se = &blk->se;
    const conv_layer *p = &blk->project;
    const int Q = B * d->OH * d->OW, P = B * d->H * d->W;
    const float *h = blk->has_expand ? blk->a0 : blk->x;
    if (blk->has_expand)
        HERBS_TRY(conv_output(e, &blk->expand, t, arena, blk->x, &blk->y0));
    HERBS_TRY(dw_output(e, blk, arena, h));
    HERBS_TRY(conv_output(e, &blk->project, t, arena, blk->s, &blk->y2));

    /* the residual: the input takes cur as it is, the branch cur·scale */
    const float *dbranch = gb->cur;
    float *dinput = blk->residual ? gb->cur : gb->prev;
    if (blk->residual && blk->scale) {
        const size_t n = conv_out_floats(p, B);
        residual_add_backward(gb->a, gb->cur, blk->scale, B, (long)(n / B), 0);
        dbranch = gb->a;
    }
    batchnorm_layer_backward(&blk->bn2, t, gb->b, dbranch, NULL, blk->y2, Q, 0);          /* d y2 */
    conv_backward(e, &blk->project, t, gb->dw, gb->c, gb->b, blk->s, 0);                 /* d s */
    squeeze_excite_backward(gb->a, GRAD(t, se->w1), GRAD(t, se->b1), GRAD(t, se->w2), GRAD(t, se->b2), gb->c, blk->a1,
                            blk->pooled, blk->hidden, blk->act, blk->gate, PARAM(t, se->w1), PARAM(t, se->w2), gb->se,
                            B, d->OH * d->OW, se->C, se->S, 0);                          /* d a1 */
    silu_backward(gb->a, gb->a, blk->z1, (size_t)Q * d->C, 0);                           /* d z1 */
    batchnorm_layer_backward(&blk->bn1, t, gb->b, gb->a, NULL, blk->y1, Q, 0);          /* d y1 */
    float *dh = blk->has_expand ? gb->c : dinput;
    const int add = !blk->has_expand && blk->residual;
    depthwise_backward(dh, herbs_zero_floats(gb->dw, (size_t)d->C * d->k * d->k), gb->b, h, blk->w_kkc, B, d->H,
                       d->W, d->C, d->k, d->stride, d->pad, add);
    depthwise_weight_grad_from_kkc(GRAD(t, d->weight), gb->dw, d->C, d->k);
    if (blk->has_expand) {
        silu_backward(gb->c, gb->c, blk->z0, (size_t)P * d->C, 0);                       /* d z0 */
        batchnorm_layer_backward(&blk->bn0, t, gb->a, gb->c, NULL, blk->y0, P, 0);       /* d y0 */
        conv_backward(e, &blk->expand, t, gb->dw, dinput, gb->a, blk->x, blk->residual);
    }
    return HERBS_OK;
}

/* the sizes of grad_buffers' parts */
static void backward_sizes(const effnet *e, size_t *act, size_t *dw, size_t *se)
{
    const int B = e->batch;
    *act = image_floats(e, B);
    *dw = (size_t)e->stem.out_c * e->stem.in_c * e->stem.k * e->stem.k;
    *se = 0;
    const size_t stem = conv_out_floats(&e->stem, B);
    *act = stem > *act ? stem : *act;
    for (int i = 0; i < e->n_blocks; i++) {
        const mbconv *blk = &e->blocks[i];
        const depthwise_layer *d = &blk->dw;
        const size_t sizes[3] = {(size_t)B * d->H * d->W * d->C, dw_out_floats(d, B), conv_out_floats(&blk->project, B)};
        for (int j = 0; j < 3; j++)
            *act = sizes[j] > *act ? sizes[j] : *act;
        const size_t w = (size_t)d->C * d->k * d->k, s = (size_t)B * (2 * blk->se.C + blk->se.S);
        *dw = w > *dw ? w : *dw;
        *se = s > *se ? s : *se;
    }
}

static herbs_status effnet_backward(herbs_backbone *bb, herbs_params *t, herbs_arena *arena,
                                    const float *const dtaps[HERBS_TAPS], float *dimages, float *tap_grads[HERBS_TAPS])
{
    effnet *e = (effnet *)bb;
    if (e->batch == 0)
        return herbs_error(HERBS_ERR_STATE, "EfficientNet backward needs a successful forward before it");
    int top = HERBS_TAPS - 1;
    while (top >= 0 && !dtaps[top])
        top--;
    for (int i = top + 1; i < HERBS_TAPS; i++)
        backbone_keep_tap_grad(bb, tap_grads, i, e->batch, NULL);
    if (top < 0)
        return HERBS_OK; /* no gradient flows */

    size_t act, dwmax, semax;
    backward_sizes(e, &act, &dwmax, &semax);
    grad_buffers gb;
    float **bufs[5] = {&gb.cur, &gb.prev, &gb.a, &gb.b, &gb.c};
    for (int i = 0; i < 5; i++)
        HERBS_TRY(herbs_arena_floats(arena, act, 0, bufs[i]));
    HERBS_TRY(herbs_arena_floats(arena, dwmax, 0, &gb.dw));
    HERBS_TRY(herbs_arena_floats(arena, semax, 0, &gb.se));

    const int first = e->stage_last[TAP_STAGE0 + top];
    herbs_zero_floats(gb.cur, conv_out_floats(&e->blocks[first].project, e->batch));
    for (int i = first; i >= 0; i--) {
        mbconv *blk = &e->blocks[i];
        for (int j = 0; j <= top; j++) {
            if (i != e->stage_last[TAP_STAGE0 + j])
                continue;
            if (dtaps[j])
                add_into(gb.cur, dtaps[j], conv_out_floats(&blk->project, e->batch));
            backbone_keep_tap_grad(bb, tap_grads, j, e->batch, gb.cur);
        }
        HERBS_TRY(block_backward(e, blk, t, arena, &gb));
        if (!blk->residual) { /* the input's gradient is in prev */
            float *swap = gb.cur;
            gb.cur = gb.prev;
            gb.prev = swap;
        }
    }

    /* the stem: SiLU, BN, conv, layout */
    conv_layer *stem = &e->stem;
    const int rows = e->batch * stem->OH * stem->OW;
    HERBS_TRY(conv_output(e, stem, t, arena, e->x0, &e->y0));
    silu_backward(gb.a, gb.cur, e->z0, (size_t)rows * stem->out_c, 0);
    batchnorm_layer_backward(&e->stem_bn, t, gb.b, gb.a, NULL, e->y0, rows, 0);
    float *dx = dimages ? gb.c : NULL;
    conv_backward(e, stem, t, gb.dw, dx, gb.b, e->x0, 0);
    if (dimages)
        nchw_to_nhwc_backward(dimages, dx, e->batch, bb->in_channels, bb->img_size, bb->img_size);
    return HERBS_OK;
}

static void effnet_destroy(herbs_backbone *bb)
{
    effnet *e = (effnet *)bb;
    free(e->blocks);
    free(e);
}

static const herbs_backbone_ops effnet_ops = {effnet_forward, effnet_backward, effnet_destroy};

typedef struct {
    int img_size, in_chans;
    int depths[EFFNET_STAGES], channels[EFFNET_STAGES + 1], kernels[EFFNET_STAGES], strides[EFFNET_STAGES],
        expand_ratios[EFFNET_STAGES];
    double drop_path_rate, bn_eps, bn_momentum;
} effnet_config;

static herbs_status read_config(herbs_config *config, effnet_config *c)
{
    static const int depths[EFFNET_STAGES] = {4, 7, 7, 10, 10, 13, 4};
    static const int channels[EFFNET_STAGES + 1] = {64, 32, 48, 80, 160, 224, 384, 640};
    static const int kernels[EFFNET_STAGES] = {3, 3, 5, 3, 5, 5, 3};
    static const int strides[EFFNET_STAGES] = {1, 2, 2, 2, 1, 2, 1};
    static const int ratios[EFFNET_STAGES] = {1, 6, 6, 6, 6, 6, 6};
    HERBS_TRY(config_int(config, "img_size", 224, 1, 8192, &c->img_size));
    HERBS_TRY(config_int(config, "in_chans", 3, 1, 4096, &c->in_chans));
    HERBS_TRY(config_ints(config, "depths", EFFNET_STAGES, depths, 1, 256, c->depths));
    HERBS_TRY(config_ints(config, "channels", EFFNET_STAGES + 1, channels, 1, 8192, c->channels));
    HERBS_TRY(config_ints(config, "kernels", EFFNET_STAGES, kernels, 1, 15, c->kernels));
    HERBS_TRY(config_ints(config, "strides", EFFNET_STAGES, strides, 1, 2, c->strides));
    HERBS_TRY(config_ints(config, "expand_ratios", EFFNET_STAGES, ratios, 1, 16, c->expand_ratios));
    HERBS_TRY(config_float(config, "drop_path_rate", 0.2, 0.0, 1.0, &c->drop_path_rate));
    HERBS_TRY(config_float(config, "bn_eps", 1e-3, 1e-12, 1.0, &c->bn_eps));
    HERBS_TRY(config_float(config, "bn_momentum", 0.01, 0.0, 1.0, &c->bn_momentum));
    if (c->drop_path_rate >= 1.0)
        return herbs_error(HERBS_ERR_VALUE, "config 'drop_path_rate' = %g must be below 1 (1 drops every block)",
                           c->drop_path_rate);
    for (int s = 0; s < EFFNET_STAGES; s++)
        if (c->kernels[s] % 2 == 0)
            return herbs_error(HERBS_ERR_VALUE, "config 'kernels' has %d for stage %d: EfficientNet's depthwise "
                               "kernels are odd ('same' padding)", c->kernels[s], s + 1);
    return HERBS_OK;
}

herbs_status efficientnet_backbone_create(herbs_backbone **out, herbs_config *config, herbs_params *t,
                                          const char *prefix)
{
    effnet_config c;
    HERBS_TRY(read_config(config, &c));
    int n_blocks = 0;
    for (int s = 0; s < EFFNET_STAGES; s++)
        n_blocks += c.depths[s];
    effnet *e = calloc(1, sizeof *e);
    mbconv *blocks = calloc(n_blocks, sizeof *blocks);
    if (!e || !blocks) {
        free(e);
        free(blocks);
        return herbs_error(HERBS_ERR_NOMEM, "out of memory creating an EfficientNet");
    }
    e->base.ops = &effnet_ops;
    e->blocks = blocks;
    e->n_blocks = n_blocks;
    *out = &e->base; /* owned by the caller from here, also on failure */
    e->base.in_channels = c.in_chans;
    e->base.img_size = c.img_size;
    const bn_settings bs = {(float)c.bn_eps, (float)c.bn_momentum};

    HERBS_TRY(conv_init(&e->stem, t, prefix, "features.0.0", c.in_chans, c.channels[0], 3, 2, c.img_size, c.img_size));
    HERBS_TRY(bn_init(&e->stem_bn, t, prefix, "features.0.1", c.channels[0], bs.eps, bs.momentum));
    int H = e->stem.OH, W = e->stem.OW, in_c = c.channels[0], i = 0;
    for (int s = 0; s < EFFNET_STAGES; s++) {
        for (int b = 0; b < c.depths[s]; b++, i++) {
            const int stride = b == 0 ? c.strides[s] : 1;
            HERBS_TRY(block_init(&blocks[i], t, prefix, s, b, i, in_c, c.channels[s + 1], c.expand_ratios[s],
                                 c.kernels[s], stride, H, W, bs));
            blocks[i].drop_prob = (float)(c.drop_path_rate * i / n_blocks); /* torchvision's rule */
            in_c = c.channels[s + 1];
            H = blocks[i].project.OH;
            W = blocks[i].project.OW;
        }
        e->stage_last[s] = i - 1;
        if (s >= TAP_STAGE0) {
            const int tap = s - TAP_STAGE0;
            e->base.tap_height[tap] = H;
            e->base.tap_width[tap] = W;
            e->base.tap_tokens[tap] = H * W;
            e->base.tap_channels[tap] = in_c;
        }
    }
    return HERBS_OK;
}
