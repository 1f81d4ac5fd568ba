#include "nn/patches.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "kernels/kernels.h"
#include "nn/product.h"

typedef struct {
    herbs_backbone base;
    int patch[HERBS_TAPS];
    herbs_weight embed[HERBS_TAPS]; /* tap{i}.weight [C_i, 3, p, p], tap{i}.bias: convs with kernel = stride = p */
    float *cols[HERBS_TAPS]; /* last forward: the image's patches per tap [B·grid², 3·p·p] */
    int batch;
} patches_backbone;

static herbs_status patches_forward(herbs_backbone *base, const herbs_params *t, herbs_arena *arena,
                                    const float *images, int batch, int train, uint64_t seed, uint64_t step,
                                    float *taps[HERBS_TAPS])
{
    patches_backbone *pb = (patches_backbone *)base;
    pb->batch = batch;
    for (int i = 0; i < HERBS_TAPS; i++) {
        const int p = pb->patch[i], rows = batch * base->tap_tokens[i], C = base->tap_channels[i];
        const int row = base->in_channels * p * p;
        HERBS_TRY(herbs_arena_floats(arena, (size_t)rows * row, 0, &pb->cols[i]));
        HERBS_TRY(herbs_arena_floats(arena, (size_t)rows * C, 0, &taps[i]));
        patch_embed_gather(pb->cols[i], images, batch, base->in_channels, base->img_size, base->img_size, p);
        product_rows_forward(&pb->embed[i], t, t->precision, taps[i], pb->cols[i], rows, NULL, NULL, 0);
    }
    return HERBS_OK;
}

static herbs_status patches_backward(herbs_backbone *base, herbs_params *t, herbs_arena *arena,
                                     const float *const dtaps[HERBS_TAPS], float *dimages,
                                     float *tap_grads[HERBS_TAPS])
{
    patches_backbone *pb = (patches_backbone *)base;
    for (int i = 0; i < HERBS_TAPS; i++) {
        backbone_keep_tap_grad(base, tap_grads, i, pb->batch, dtaps[i]); /* no tap feeds another */
        if (!dtaps[i])
            continue;
        const int p = pb->patch[i], rows = pb->batch * base->tap_tokens[i];
        const int row = base->in_channels * p * p;
        float *work = NULL;
        if (dimages)
            HERBS_TRY(herbs_arena_floats(arena, (size_t)rows * row, 0, &work));
        product_rows_backward(&pb->embed[i], t, t->precision, work, dtaps[i], pb->cols[i], rows, 0);
        if (dimages)
            patch_embed_scatter(dimages, work, pb->batch, base->in_channels, base->img_size, base->img_size, p, 1);
    }
    return HERBS_OK;
}

static void patches_destroy(herbs_backbone *base) { free(base); }

static const herbs_backbone_ops patches_ops = {patches_forward, patches_backward, patches_destroy};

herbs_status patches_backbone_create(herbs_backbone **out, herbs_config *config, herbs_params *t, const char *prefix)
{
    static const int default_grid[HERBS_TAPS] = {8, 4, 2, 2}, default_channels[HERBS_TAPS] = {8, 16, 32, 32};
    int size, grid[HERBS_TAPS], channels[HERBS_TAPS];
    HERBS_TRY(config_int(config, "img_size", 32, 1, 4096, &size));
    HERBS_TRY(config_ints(config, "patch_grid", HERBS_TAPS, default_grid, 1, 4096, grid));
    HERBS_TRY(config_ints(config, "patch_channels", HERBS_TAPS, default_channels, 1, 65536, channels));
    patches_backbone *pb = calloc(1, sizeof *pb);
    if (!pb)
        return herbs_error(HERBS_ERR_NOMEM, "out of memory creating a patches backbone");
    *out = &pb->base;
    pb->base.ops = &patches_ops;
    pb->base.in_channels = 3;
    pb->base.img_size = size;
    for (int i = 0; i < HERBS_TAPS; i++) {
        if (size % grid[i] != 0)
            return herbs_error(HERBS_ERR_VALUE, "patch_grid[%d] = %d does not divide img_size = %d", i, grid[i], size);
        const int p = size / grid[i];
        pb->patch[i] = p;
        pb->base.tap_height[i] = pb->base.tap_width[i] = grid[i];
        pb->base.tap_tokens[i] = grid[i] * grid[i];
        pb->base.tap_channels[i] = channels[i];
        char name[32];
        herbs_init init = {HERBS_INIT_UNIFORM, 1.0f / sqrtf(3.0f * p * p)};
        snprintf(name, sizeof name, "tap%d", i + 1);
        const herbs_product_spec spec = {.out = channels[i], .in = 3, .kernel_dims = 2, .k = p, .stride = p,
                                         .patch_rows = 1, .bias = 1, .weight_init = init, .bias_init = init};
        HERBS_TRY(product_add(t, &pb->embed[i], prefix, name, spec));
    }
    return HERBS_OK;
}
