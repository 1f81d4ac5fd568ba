/* ResNet v1.5 (torchvision's layout): stem conv 7x7/2 - BN - ReLU - max-pool 3x3/2, then four
   stages of bottleneck blocks (1x1 - 3x3 (stride here, v1.5) - 1x1, BN after each, ReLU after
   the first two and after the residual add). Activations are NHWC rows; BatchNorm2d is the
   channels-last kernel over N = B·H·W rows.

   Saved for backward, per block: its input (the previous block's output), each conv's output
   (the BN input, which BN backward needs; at bf16 in bf16, centred on the batch mean:
   batchnorm_layer_keep_input) and the block output; the post-ReLU activations are made again from
   the conv outputs. Nothing is saved twice.
   Backward walks the blocks upwards with four gradient buffers of the largest activation. */
#include "nn/resnet.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/threads.h"
#include "kernels/kernels.h"
#include "nn/batchnorm_layer.h"
#include "nn/product.h"

#define EXPANSION 4
#define STAGES 4

typedef struct {
    herbs_weight weight; /* [OC, C, k, k], no bias */
    int in_c, out_c, k, stride, pad;
    int H, W, OH, OW; /* input and output sizes (fixed by img_size) */
} conv_layer;

typedef struct {
    conv_layer conv1, conv2, conv3, down_conv;
    batchnorm_layer bn1, bn2, bn3, down_bn;
    int has_down;
    /* the last forward, NHWC rows in the owner's arena: P = B·H·W input and Q = B·OH·OW output
       positions, `planes` inner channels, 4·planes out */
    const float *x;  /* [P, in_c]: the block input (the previous block's output) */
    void *y1;        /* [P, planes]: conv1's output (bn1's input; train only; resnet.y_work says its type) */
    float *a1;       /* [P, planes]: after bn1+ReLU (eval only: train mode makes it again from y1) */
    void *y2;        /* [Q, planes]: the same for conv2 (stride here) */
    float *a2;
    void *y3;        /* [Q, 4·planes]: conv3's output (bn3's input; train only) */
    void *yd;        /* [Q, 4·planes]: the downsample conv's output (train only; NULL without one) */
    float *out;      /* [Q, 4·planes]: ReLU(bn3 + shortcut), also the ReLU mask of the backward */
} bottleneck;

typedef struct {
    herbs_backbone base;
    conv_layer stem_conv;
    batchnorm_layer stem_bn;
    int n_blocks;
    bottleneck *blocks;
    int stage_last[STAGES]; /* index of each stage's last block */
    /* the last forward */
    int batch, train;
    float *x0;      /* [B, img, img, 3]: the NHWC image */
    void *y0;       /* [B, S, S, width] (S = img/2): the stem conv's output (train only) */
    float *a0;      /* the same after BN+ReLU (train: NULL after the max-pool when it was made in the scratch) */
    float *y_work;  /* [the largest conv output] fp32 when the kept conv outputs (y0 and the blocks' y) are bf16
                       bit patterns (train mode at bf16), where a conv's output is made before its bf16 form
                       is kept and where the backward makes one fp32 again; NULL: they are fp32 */
    float *p0;      /* [B, S/2, S/2, width]: after the 3x3/2 max-pool */
    int *argmax;    /* [B, S/2, S/2, width]: where each max came from, for its backward */
    float *scratch; /* the convolutions' scratch (packed weights, im2col chunks) */
    size_t scratch_floats;
    float *inner; /* train: [the largest a1 or a2], where each block's a1 and then its a2 are made (a1 is
                     spent once conv2 ran) */
} resnet;

/* --- building ---------------------------------------------------------------------------- */

static herbs_status conv_init(conv_layer *c, herbs_params *t, const char *prefix, const char *name, int in_c,
                              int out_c, int k, int stride, int H, int W)
{
    memset(c, 0, sizeof *c);
    c->in_c = in_c;
    c->out_c = out_c;
    c->k = k;
    c->stride = stride;
    c->pad = k / 2;
    c->H = H;
    c->W = W;
    c->OH = (H + 2 * c->pad - k) / stride + 1;
    c->OW = (W + 2 * c->pad - k) / stride + 1;
    /* kaiming_normal_(mode="fan_out", nonlinearity="relu"), torchvision's init */
    herbs_init init = {HERBS_INIT_NORMAL, sqrtf(2.0f / ((float)out_c * k * k))};
    return product_add(t, &c->weight, prefix, name,
                       (herbs_product_spec){.out = out_c, .in = in_c, .kernel_dims = 2, .k = k, .stride = stride,
                                            .pad = c->pad, .weight_init = init});
}

static herbs_status block_init(bottleneck *blk, herbs_params *t, const char *prefix, int stage, int index,
                               int in_c, int planes, int stride, int H, int W)
{
    char name[HERBS_NAME_MAX];
    memset(blk, 0, sizeof *blk);
#define BLOCK_NAME(part) (snprintf(name, sizeof name, "layer%d.%d.%s", stage + 1, index, part), name)
    HERBS_TRY(conv_init(&blk->conv1, t, prefix, BLOCK_NAME("conv1"), in_c, planes, 1, 1, H, W));
    HERBS_TRY(batchnorm_layer_init(&blk->bn1, t, prefix, BLOCK_NAME("bn1"), planes));
    HERBS_TRY(conv_init(&blk->conv2, t, prefix, BLOCK_NAME("conv2"), planes, planes, 3, stride, H, W));
    HERBS_TRY(batchnorm_layer_init(&blk->bn2, t, prefix, BLOCK_NAME("bn2"), planes));
    const int OH = blk->conv2.OH, OW = blk->conv2.OW;
    HERBS_TRY(conv_init(&blk->conv3, t, prefix, BLOCK_NAME("conv3"), planes, planes * EXPANSION, 1, 1, OH, OW));
    HERBS_TRY(batchnorm_layer_init(&blk->bn3, t, prefix, BLOCK_NAME("bn3"), planes * EXPANSION));
    blk->has_down = stride != 1 || in_c != planes * EXPANSION;
    if (blk->has_down) {
        HERBS_TRY(conv_init(&blk->down_conv, t, prefix, BLOCK_NAME("downsample.0"), in_c, planes * EXPANSION,
                            1, stride, H, W));
        HERBS_TRY(batchnorm_layer_init(&blk->down_bn, t, prefix, BLOCK_NAME("downsample.1"), planes * EXPANSION));
    }
#undef BLOCK_NAME
    return HERBS_OK;
}

/* --- layer passes -------------------------------------------------------------------------- */

static size_t conv_out_floats(const conv_layer *c, int batch) { return (size_t)batch * c->OH * c->OW * c->out_c; }

/* out = conv(inp), or with `fold` (eval mode) ReLU?(BN(conv(inp))) in one pass: the eval-mode
   BatchNorm `fold` is applied to each output tile as the conv stores it (relu: and a ReLU);
   *out NULL: from the arena */
static herbs_status conv_forward_pass(resnet *r, conv_layer *c, const herbs_params *t, herbs_arena *arena,
                                      const float *inp, batchnorm_layer *fold, int relu, float **out)
{
    float *scale = NULL, *shift = NULL;
    if (fold)
        HERBS_TRY(batchnorm_layer_fold(fold, t, arena, NULL, &scale, &shift));
    if (!*out)
        HERBS_TRY(herbs_arena_floats(arena, conv_out_floats(c, r->batch), 0, out));
    product_conv_forward(&c->weight, t, t->precision, *out, inp, r->batch, c->H, c->W, scale, shift, relu, r->scratch,
                         r->scratch_floats);
    return HERBS_OK;
}

/* *rows = the conv's output before its BatchNorm b as fp32 rows, for the backward: *y as a
   train-mode forward kept it (fp32, or bf16 made fp32 again in r->y_work), or, after an eval-mode
   forward (which folds the BatchNorm into the conv and keeps none: heat maps), computed again into
   the arena and kept in *y */
static herbs_status conv_output(resnet *r, conv_layer *c, const batchnorm_layer *b, const herbs_params *t,
                                herbs_arena *arena, const float *inp, void **y, const float **rows)
{
    if (*y && r->y_work) {
        batchnorm_layer_input_again(b, *y, r->batch * c->OH * c->OW, r->y_work);
        *rows = r->y_work;
        return HERBS_OK;
    }
    if (!*y) {
        float *again = NULL;
        HERBS_TRY(conv_forward_pass(r, c, t, arena, inp, NULL, 0, &again));
        *y = again;
    }
    *rows = *y;
    return HERBS_OK;
}

/* dinp (may be NULL) += (accumulate set) or = d(inp), and the weight gradient += from dout;
   dw_scratch holds the largest repacked weight gradient */
static void conv_backward_pass(resnet *r, conv_layer *c, herbs_params *t, float *dw_scratch, float *dinp,
                               const float *dout, const float *inp, int accumulate)
{
    product_conv_backward(&c->weight, t, t->precision, dinp, dout, inp, r->batch, c->H, c->W, r->scratch,
                          r->scratch_floats, dw_scratch, accumulate);
}

/* out = BN(conv(inp)), through a ReLU when relu is set; train mode keeps y = conv(inp) for the
   backward (in bf16 when r->y_work is set, made there; out into `into` when not NULL, else the arena),
   eval mode folds the BN into the conv and keeps no y */
static herbs_status conv_bn_forward(resnet *r, conv_layer *c, batchnorm_layer *b, int relu, const herbs_params *t,
                                    herbs_arena *arena, const float *inp, float *into, void **y, float **out)
{
    const size_t n = conv_out_floats(c, r->batch);
    *y = NULL;
    *out = NULL;
    if (!r->train)
        return conv_forward_pass(r, c, t, arena, inp, b, relu, out);
    const int rows = r->batch * c->OH * c->OW;
    float *y32 = r->y_work;
    HERBS_TRY(conv_forward_pass(r, c, t, arena, inp, NULL, 0, &y32));
    *out = into;
    if (!into)
        HERBS_TRY(herbs_arena_floats(arena, n, 0, out));
    HERBS_TRY(batchnorm_layer_forward(b, t, arena, 1, y32, rows, *out, relu));
    *y = y32;
    if (r->y_work) {
        if (!(*y = herbs_arena_alloc(arena, n * sizeof(uint16_t))))
            return HERBS_ERR_NOMEM;
        batchnorm_layer_keep_input(b, y32, rows, *y);
    }
    return HERBS_OK;
}

/* Train mode: the conv scratch as the home of c's BN output, which only feeds the next step (made after
   c's conv, read before any other conv), when it fits; else NULL (the arena). */
static float *in_conv_scratch(const resnet *r, const conv_layer *c)
{
    return r->train && conv_out_floats(c, r->batch) <= r->scratch_floats ? r->scratch : NULL;
}

static herbs_status block_forward(resnet *r, bottleneck *blk, const herbs_params *t, herbs_arena *arena,
                                  const float *x)
{
    blk->x = x;
    HERBS_TRY(conv_bn_forward(r, &blk->conv1, &blk->bn1, 1, t, arena, x, r->inner, &blk->y1, &blk->a1));
    HERBS_TRY(conv_bn_forward(r, &blk->conv2, &blk->bn2, 1, t, arena, blk->a1, r->inner, &blk->y2, &blk->a2));
    HERBS_TRY(conv_bn_forward(r, &blk->conv3, &blk->bn3, 0, t, arena, blk->a2, NULL, &blk->y3, &blk->out));
    const float *identity = x;
    if (blk->has_down) { /* the downsample's BN output only feeds the add: in the conv scratch, free
                            after the conv, when it fits */
        float *z;
        HERBS_TRY(conv_bn_forward(r, &blk->down_conv, &blk->down_bn, 0, t, arena, x,
                                  in_conv_scratch(r, &blk->down_conv), &blk->yd, &z));
        identity = z;
    }
    add_relu_forward(blk->out, blk->out, identity, conv_out_floats(&blk->conv3, r->batch));
    if (r->train) /* the next block makes its own there; the backward makes these again */
        blk->a1 = blk->a2 = NULL;
    return HERBS_OK;
}

/* --- the backbone ------------------------------------------------------------------------ */

static size_t image_floats(const resnet *r, int batch)
{
    return (size_t)batch * r->base.in_channels * r->base.img_size * r->base.img_size;
}

/* Floats of the largest output of any conv (a downsample's is its block's conv3's); *weight: of the
   largest weight. */
static size_t largest_conv(const resnet *r, int batch, size_t *weight)
{
    size_t most = conv_out_floats(&r->stem_conv, batch);
    *weight = (size_t)r->stem_conv.out_c * r->stem_conv.in_c * r->stem_conv.k * r->stem_conv.k;
    for (int i = 0; i < r->n_blocks; i++) {
        const conv_layer *cs[3] = {&r->blocks[i].conv1, &r->blocks[i].conv2, &r->blocks[i].conv3};
        for (int j = 0; j < 3; j++) {
            const size_t a = conv_out_floats(cs[j], batch);
            const size_t w = (size_t)cs[j]->out_c * cs[j]->in_c * cs[j]->k * cs[j]->k;
            most = a > most ? a : most;
            *weight = w > *weight ? w : *weight;
        }
    }
    return most;
}

/* Floats of the largest a1 or a2 of any block (their inner planes). */
static size_t inner_floats(const resnet *r, int batch)
{
    size_t most = 0;
    for (int i = 0; i < r->n_blocks; i++) {
        const size_t a1 = conv_out_floats(&r->blocks[i].conv1, batch), a2 = conv_out_floats(&r->blocks[i].conv2, batch);
        most = a1 > most ? a1 : most;
        most = a2 > most ? a2 : most;
    }
    return most;
}

static herbs_status resnet_forward(herbs_backbone *bb, const herbs_params *t, herbs_arena *arena,
                                   const float *images, int batch, int train, uint64_t seed, uint64_t step,
                                   float *taps[HERBS_TAPS])
{
    resnet *r = (resnet *)bb;
    r->batch = 0; /* nothing to go back through until this forward succeeds */
    const int last_positions = bb->tap_tokens[STAGES - 1];
    if (train && (long)batch * last_positions < 2)
        return herbs_error(HERBS_ERR_VALUE,
                           "ResNet batch norm in train mode needs more than one value per channel, but layer4 has "
                           "batch %d x %d position(s); use a batch >= 2, larger images, or eval mode",
                           batch, last_positions);
    const conv_layer *stem = &r->stem_conv;
    if ((double)batch * stem->OH * stem->OW > 2147483647.0) /* pixel rows are counted in int */
        return herbs_error(HERBS_ERR_VALUE, "batch %d of %d px images has more than 2^31 positions after the "
                           "ResNet stem; use a smaller batch", batch, bb->img_size);
    r->batch = batch;
    r->train = train;
    /* one scratch (packed weights, im2col chunks) for every conv */
    r->scratch_floats = 0;
    for (int i = -1; i < r->n_blocks; i++) {
        const conv_layer *cs[4] = {&r->stem_conv};
        if (i >= 0) {
            cs[0] = &r->blocks[i].conv1;
            cs[1] = &r->blocks[i].conv2;
            cs[2] = &r->blocks[i].conv3;
            cs[3] = &r->blocks[i].down_conv;
        }
        for (int j = 0; j < (i < 0 ? 1 : r->blocks[i].has_down ? 4 : 3); j++) {
            size_t need = conv2d_scratch_floats(cs[j]->in_c, cs[j]->out_c, cs[j]->k, cs[j]->k);
            r->scratch_floats = need > r->scratch_floats ? need : r->scratch_floats;
        }
    }
    HERBS_TRY(herbs_arena_floats(arena, r->scratch_floats, 0, &r->scratch));
    r->inner = r->y_work = NULL;
    if (train)
        HERBS_TRY(herbs_arena_floats(arena, inner_floats(r, batch), 0, &r->inner));
    if (train && t->precision == HERBS_BF16) {
        size_t weight;
        HERBS_TRY(herbs_arena_floats(arena, largest_conv(r, batch, &weight), 0, &r->y_work));
    }
    HERBS_TRY(herbs_arena_floats(arena, image_floats(r, batch), 0, &r->x0));
    nchw_to_nhwc_forward(r->x0, images, batch, bb->in_channels, bb->img_size, bb->img_size);

    float *a0_home = in_conv_scratch(r, stem); /* a0 only feeds the max-pool */
    HERBS_TRY(conv_bn_forward(r, &r->stem_conv, &r->stem_bn, 1, t, arena, r->x0, a0_home, &r->y0, &r->a0));
    const conv_layer *first = &r->blocks[0].conv1;
    const size_t pooled = (size_t)batch * first->H * first->W * first->in_c;
    HERBS_TRY(herbs_arena_floats(arena, pooled, 0, &r->p0));
    if (!(r->argmax = herbs_arena_alloc(arena, pooled * sizeof(int))))
        return HERBS_ERR_NOMEM;
    maxpool2d_forward(r->p0, r->argmax, r->a0, batch, stem->OH, stem->OW, stem->out_c, 3, 2, 1);
    if (a0_home) /* the backward takes the ReLU's mask from y0 */
        r->a0 = NULL;

    const float *x = r->p0;
    for (int i = 0; i < r->n_blocks; i++) {
        HERBS_TRY(block_forward(r, &r->blocks[i], t, arena, x));
        x = r->blocks[i].out;
    }
    for (int s = 0; s < STAGES; s++)
        taps[s] = r->blocks[r->stage_last[s]].out;
    return HERBS_OK;
}

/* gradient buffers of the backward pass, each of the largest activation */
typedef struct {
    float *cur, *prev; /* gradients of the current block's output and input */
    float *g, *d;      /* scratch of one block */
    float *dw;         /* the largest repacked weight gradient */
    float *inner;      /* the largest a1 or a2, made again from y after a train-mode forward */
} grad_buffers;

/* An inner activation a = ReLU(BN(y)) [rows, planes] for a conv's weight gradient: the one kept (eval),
   or made again from y into gb->inner (train: the forward's bits). */
static const float *inner_again(const batchnorm_layer *bn, const herbs_params *t, const float *a, const float *y,
                                int rows, grad_buffers *gb)
{
    if (a)
        return a;
    batchnorm_layer_forward_again(bn, t, y, rows, gb->inner, 1);
    return gb->inner;
}

/* gb->prev = d(block input), from gb->cur = d(block output) */
static herbs_status block_backward(resnet *r, bottleneck *blk, herbs_params *t, herbs_arena *arena,
                                   grad_buffers *gb)
{
    const size_t n_out = conv_out_floats(&blk->conv3, r->batch);
    const int N1 = r->batch * blk->conv1.OH * blk->conv1.OW, N3 = r->batch * blk->conv3.OH * blk->conv3.OW;
    const float *y; /* each conv's output as fp32 rows, one after the other (conv_output) */
    /* the add and its ReLU: both branches get cur masked by out > 0 — the BN passes apply the
       mask on the fly, the identity takes it straight. Each pass writes its gradient; only the
       last adds, conv1's d(x) onto the identity's (or the downsample's) */
    if (!blk->has_down)
        add_relu_backward(NULL, gb->prev, gb->cur, blk->out, n_out, 0);
    if (blk->has_down) {
        HERBS_TRY(conv_output(r, &blk->down_conv, &blk->down_bn, t, arena, blk->x, &blk->yd, &y));
        batchnorm_layer_backward(&blk->down_bn, t, gb->d, gb->cur, blk->out, y, N3, 0);
        conv_backward_pass(r, &blk->down_conv, t, gb->dw, gb->prev, gb->d, blk->x, 0);
    }
    HERBS_TRY(conv_output(r, &blk->conv3, &blk->bn3, t, arena, blk->a2, &blk->y3, &y));
    batchnorm_layer_backward(&blk->bn3, t, gb->d, gb->cur, blk->out, y, N3, 0);
    HERBS_TRY(conv_output(r, &blk->conv2, &blk->bn2, t, arena, blk->a1, &blk->y2, &y));
    conv_backward_pass(r, &blk->conv3, t, gb->dw, gb->g, gb->d, inner_again(&blk->bn2, t, blk->a2, y, N3, gb),
                       0);                                                   /* d a2 */
    batchnorm_layer_relu_backward(&blk->bn2, t, gb->d, gb->g, blk->a2, y, N3, 0); /* d y2 */
    HERBS_TRY(conv_output(r, &blk->conv1, &blk->bn1, t, arena, blk->x, &blk->y1, &y));
    conv_backward_pass(r, &blk->conv2, t, gb->dw, gb->g, gb->d, inner_again(&blk->bn1, t, blk->a1, y, N1, gb),
                       0);                                                   /* d a1 */
    batchnorm_layer_relu_backward(&blk->bn1, t, gb->d, gb->g, blk->a1, y, N1, 0); /* d y1 */
    conv_backward_pass(r, &blk->conv1, t, gb->dw, gb->prev, gb->d, blk->x, 1);
    return HERBS_OK;
}

static herbs_status resnet_backward(herbs_backbone *bb, herbs_params *t, herbs_arena *arena,
                                    const float *const dtaps[HERBS_TAPS], float *dimages,
                                    float *tap_grads[HERBS_TAPS])
{
    resnet *r = (resnet *)bb;
    if (r->batch == 0)
        return herbs_error(HERBS_ERR_STATE, "ResNet backward needs a successful forward before it");
    int top = STAGES - 1;
    while (top >= 0 && !dtaps[top])
        top--;
    for (int i = top + 1; i < STAGES; i++)
        backbone_keep_tap_grad(bb, tap_grads, i, r->batch, NULL);
    if (top < 0)
        return HERBS_OK; /* no gradient flows */

    size_t wmax, act = largest_conv(r, r->batch, &wmax);
    act = image_floats(r, r->batch) > act ? image_floats(r, r->batch) : act;
    grad_buffers gb;
    HERBS_TRY(herbs_arena_floats(arena, act, 0, &gb.cur));
    HERBS_TRY(herbs_arena_floats(arena, act, 0, &gb.prev));
    HERBS_TRY(herbs_arena_floats(arena, act, 0, &gb.g));
    HERBS_TRY(herbs_arena_floats(arena, act, 0, &gb.d));
    HERBS_TRY(herbs_arena_floats(arena, wmax, 0, &gb.dw));
    HERBS_TRY(herbs_arena_floats(arena, inner_floats(r, r->batch), 0, &gb.inner));

    herbs_zero_floats(gb.cur, conv_out_floats(&r->blocks[r->stage_last[top]].conv3, r->batch));
    for (int i = r->stage_last[top], s = top; i >= 0; i--) {
        bottleneck *blk = &r->blocks[i];
        while (s > 0 && i <= r->stage_last[s - 1])
            s--;
        if (i == r->stage_last[s] && dtaps[s])
            add_into(gb.cur, dtaps[s], conv_out_floats(&blk->conv3, r->batch));
        if (i == r->stage_last[s])
            backbone_keep_tap_grad(bb, tap_grads, s, r->batch, gb.cur);
        HERBS_TRY(block_backward(r, blk, t, arena, &gb));
        float *swap = gb.cur;
        gb.cur = gb.prev;
        gb.prev = swap;
    }

    /* the stem: max-pool, ReLU, BN, conv, layout */
    conv_layer *stem = &r->stem_conv;
    const size_t n0 = conv_out_floats(stem, r->batch);
    const float *y0;
    HERBS_TRY(conv_output(r, stem, &r->stem_bn, t, arena, r->x0, &r->y0, &y0));
    maxpool2d_backward(herbs_zero_floats(gb.g, n0), gb.cur, r->argmax, r->batch, stem->OH, stem->OW, stem->out_c, 3,
                       2, 1);
    batchnorm_layer_relu_backward(&r->stem_bn, t, gb.d, gb.g, r->a0, y0, r->batch * stem->OH * stem->OW, 0);
    float *dx = dimages ? gb.g : NULL;
    conv_backward_pass(r, stem, t, gb.dw, dx, gb.d, r->x0, 0);
    if (dimages)
        nchw_to_nhwc_backward(dimages, dx, r->batch, bb->in_channels, bb->img_size, bb->img_size);
    return HERBS_OK;
}

static void resnet_destroy(herbs_backbone *bb)
{
    resnet *r = (resnet *)bb;
    free(r->blocks);
    free(r);
}

static const herbs_backbone_ops resnet_ops = {resnet_forward, resnet_backward, resnet_destroy};

herbs_status resnet_backbone_create(herbs_backbone **out, herbs_config *config, herbs_params *t,
                                    const char *prefix)
{
    int img_size, in_chans, width, depths[STAGES];
    const int default_depths[STAGES] = {3, 4, 6, 3};
    HERBS_TRY(config_int(config, "img_size", 224, 1, 8192, &img_size));
    HERBS_TRY(config_int(config, "in_chans", 3, 1, 4096, &in_chans));
    HERBS_TRY(config_ints(config, "depths", STAGES, default_depths, 1, 256, depths));
    HERBS_TRY(config_int(config, "width", 64, 1, 4096, &width));

    resnet *r = calloc(1, sizeof *r);
    int n_blocks = depths[0] + depths[1] + depths[2] + depths[3];
    bottleneck *blocks = calloc(n_blocks, sizeof *blocks);
    if (!r || !blocks) {
        free(r);
        free(blocks);
        return herbs_error(HERBS_ERR_NOMEM, "out of memory creating a ResNet");
    }
    r->base.ops = &resnet_ops;
    r->blocks = blocks;
    r->n_blocks = n_blocks;
    *out = &r->base; /* owned by the caller from here, also on failure */
    r->base.in_channels = in_chans;
    r->base.img_size = img_size;

    HERBS_TRY(conv_init(&r->stem_conv, t, prefix, "conv1", in_chans, width, 7, 2, img_size, img_size));
    HERBS_TRY(batchnorm_layer_init(&r->stem_bn, t, prefix, "bn1", width));
    int H = (r->stem_conv.OH + 2 - 3) / 2 + 1, W = (r->stem_conv.OW + 2 - 3) / 2 + 1; /* after the max-pool */
    int in_c = width, i = 0;
    for (int s = 0; s < STAGES; s++) {
        const int planes = width << s;
        for (int b = 0; b < depths[s]; b++, i++) {
            const int stride = s > 0 && b == 0 ? 2 : 1;
            HERBS_TRY(block_init(&blocks[i], t, prefix, s, b, in_c, planes, stride, H, W));
            in_c = planes * EXPANSION;
            H = blocks[i].conv3.OH;
            W = blocks[i].conv3.OW;
        }
        r->stage_last[s] = i - 1;
        r->base.tap_height[s] = H;
        r->base.tap_width[s] = W;
        r->base.tap_tokens[s] = H * W;
        r->base.tap_channels[s] = in_c;
    }
    return HERBS_OK;
}
