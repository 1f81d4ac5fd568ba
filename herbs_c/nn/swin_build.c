/* The Swin backbone's construction: config keys and their checks, stage geometry, and the
   tensors in timm's names, shapes, order and initialisation. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nn/swin_internal.h"

static void swin_destroy(herbs_backbone *bb)
{
    swin *s = (swin *)bb;
    for (int i = 0; i < SWIN_STAGES; i++)
        free(s->stages[i].blocks);
    free(s);
}

static const herbs_backbone_ops swin_ops = {swin_forward, swin_backward, swin_destroy};

typedef struct {
    const char *name;
    int embed_dim, depths[SWIN_STAGES], heads[SWIN_STAGES];
} swin_variant;

static const swin_variant variants[] = {
    {"tiny", 96, {2, 2, 6, 2}, {3, 6, 12, 24}},
    {"small", 96, {2, 2, 18, 2}, {3, 6, 12, 24}},
    {"base", 128, {2, 2, 18, 2}, {4, 8, 16, 32}},
    {"large", 192, {2, 2, 18, 2}, {6, 12, 24, 48}},
};

typedef struct {
    int img_size, patch, in_chans, embed_dim, depths[SWIN_STAGES], heads[SWIN_STAGES], window, qkv_bias;
    double mlp_ratio, drop_path_rate;
} swin_config;

static herbs_status read_config(herbs_config *config, swin_config *c)
{
    static const char *const names[] = {"tiny", "small", "base", "large", NULL};
    const char *name;
    HERBS_TRY(config_text(config, "variant", "tiny", names, &name));
    const swin_variant *v = &variants[0];
    for (size_t i = 0; i < sizeof variants / sizeof variants[0]; i++)
        if (strcmp(variants[i].name, name) == 0)
            v = &variants[i];
    HERBS_TRY(config_int(config, "img_size", 224, 1, 16384, &c->img_size));
    HERBS_TRY(config_int(config, "patch_size", 4, 1, 1024, &c->patch));
    HERBS_TRY(config_int(config, "in_chans", 3, 1, 1024, &c->in_chans));
    HERBS_TRY(config_int(config, "embed_dim", v->embed_dim, 1, 16384, &c->embed_dim));
    HERBS_TRY(config_ints(config, "depths", SWIN_STAGES, v->depths, 1, 256, c->depths));
    HERBS_TRY(config_ints(config, "num_heads", SWIN_STAGES, v->heads, 1, 4096, c->heads));
    HERBS_TRY(config_int(config, "window_size", c->img_size == 384 ? 12 : 7, 1, 1024, &c->window));
    HERBS_TRY(config_float(config, "mlp_ratio", 4.0, 1e-3, 64.0, &c->mlp_ratio));
    HERBS_TRY(config_int(config, "qkv_bias", 1, 0, 1, &c->qkv_bias));
    HERBS_TRY(config_float(config, "drop_path_rate", 0.1, 0.0, 1.0, &c->drop_path_rate));
    if (c->drop_path_rate >= 1.0)
        return herbs_error(HERBS_ERR_VALUE, "config 'drop_path_rate' = %g must be below 1 (1 drops every block)",
                           c->drop_path_rate);
    if (c->img_size % c->patch != 0)
        return herbs_error(HERBS_ERR_VALUE, "config 'img_size' = %d is not a multiple of 'patch_size' = %d",
                           c->img_size, c->patch);
    return HERBS_OK;
}

/* Fills the stage geometry and checks what the config implies. */
static herbs_status plan_stages(swin *s, const swin_config *c)
{
    int res = c->img_size / c->patch, dim = c->embed_dim;
    for (int i = 0; i < SWIN_STAGES; i++) {
        swin_stage *st = &s->stages[i];
        if (i < SWIN_STAGES - 1 && res % 2 != 0)
            return herbs_error(HERBS_ERR_VALUE,
                               "config 'img_size' = %d gives stage %d a %dx%d map, which patch merging cannot halve "
                               "(img_size / patch_size must be a multiple of 8)",
                               c->img_size, i + 1, res, res);
        if (res > c->window && res % c->window != 0)
            return herbs_error(HERBS_ERR_VALUE,
                               "config 'window_size' = %d does not divide stage %d's %dx%d map (img_size %d, patch_size "
                               "%d); a window must tile the map or cover all of it",
                               c->window, i + 1, res, res, c->img_size, c->patch);
        if (dim % c->heads[i] != 0)
            return herbs_error(HERBS_ERR_VALUE, "config 'num_heads' = %d for stage %d does not divide its dim %d",
                               c->heads[i], i + 1, dim);
        const double hidden = dim * c->mlp_ratio;
        if (hidden < 1 || hidden > 1 << 20)
            return herbs_error(HERBS_ERR_VALUE, "config 'mlp_ratio' = %g gives stage %d an MLP of %g units",
                               c->mlp_ratio, i + 1, hidden);
        st->depth = c->depths[i];
        st->dim = dim;
        st->heads = c->heads[i];
        st->res = res;
        st->window = res <= c->window ? res : c->window;
        st->hidden = (int)hidden;
        if (i < SWIN_STAGES - 1) {
            res /= 2;
            dim *= 2;
        }
    }
    return HERBS_OK;
}

static herbs_status register_tensors(swin *s, herbs_params *t, const char *prefix, const swin_config *c)
{
    const int fan_in = c->in_chans * c->patch * c->patch;
    const herbs_init conv_init = {HERBS_INIT_UNIFORM, 1.0f / sqrtf((float)fan_in)}; /* PyTorch's Conv2d default */
    HERBS_TRY(product_add(t, &s->embed, prefix, "patch_embed.proj",
                          (herbs_product_spec){.out = c->embed_dim, .in = c->in_chans, .kernel_dims = 2, .k = c->patch,
                                               .stride = c->patch, .patch_rows = 1, .bias = 1, .weight_init = conv_init,
                                               .bias_init = conv_init}));
    HERBS_TRY(transformer_norm_add(t, &s->embed_norm, prefix, "patch_embed.norm", c->embed_dim));
    int total = 0, index = 0;
    for (int i = 0; i < SWIN_STAGES; i++)
        total += c->depths[i];
    for (int i = 0; i < SWIN_STAGES; i++) {
        swin_stage *st = &s->stages[i];
        st->blocks = calloc(st->depth, sizeof *st->blocks);
        if (!st->blocks)
            return herbs_error(HERBS_ERR_NOMEM, "out of memory creating a swin backbone");
        for (int b = 0; b < st->depth; b++, index++) {
            swin_block *k = &st->blocks[b];
            char name[HERBS_NAME_MAX];
            snprintf(name, sizeof name, "layers.%d.blocks.%d", i, b);
            k->block.index = index;
            k->shift = b % 2 == 1 && st->res > c->window ? c->window / 2 : 0;
            /* torch.linspace(0, rate, total)[index] */
            k->block.drop_prob = total > 1 ? (float)(c->drop_path_rate * index / (total - 1)) : 0.0f;
            const int span = 2 * st->window - 1;
            HERBS_TRY(transformer_block_add(t, &k->block, prefix, name, st->dim, st->hidden, c->qkv_bias,
                                            (block_attention_tensor){"attn.relative_position_bias_table",
                                                                     (int64_t)span * span, st->heads, &k->table}));
        }
        if (i < SWIN_STAGES - 1) {
            char name[HERBS_NAME_MAX];
            snprintf(name, sizeof name, "layers.%d.downsample.reduction", i);
            HERBS_TRY(transformer_linear_add(t, &st->merge_reduction, prefix, name, 4 * st->dim, 2 * st->dim, 0));
            snprintf(name, sizeof name, "layers.%d.downsample.norm", i);
            HERBS_TRY(transformer_norm_add(t, &st->merge_norm, prefix, name, 4 * st->dim));
        }
    }
    return HERBS_OK;
}

herbs_status swin_backbone_create(herbs_backbone **out, herbs_config *config, herbs_params *t, const char *prefix)
{
    swin_config c;
    HERBS_TRY(read_config(config, &c));
    swin *s = calloc(1, sizeof *s);
    if (!s)
        return herbs_error(HERBS_ERR_NOMEM, "out of memory creating a swin backbone");
    *out = &s->base;
    s->base.ops = &swin_ops;
    s->base.in_channels = c.in_chans;
    s->base.img_size = c.img_size;
    s->patch = c.patch;
    s->embed_dim = c.embed_dim;
    HERBS_TRY(plan_stages(s, &c));
    for (int i = 0; i < SWIN_STAGES; i++) {
        const swin_stage *st = &s->stages[i];
        const int last = i == SWIN_STAGES - 1;
        s->base.tap_height[i] = s->base.tap_width[i] = last ? st->res : st->res / 2;
        s->base.tap_tokens[i] = s->base.tap_height[i] * s->base.tap_width[i];
        s->base.tap_channels[i] = last ? st->dim : 2 * st->dim;
    }
    return register_tensors(s, t, prefix, &c);
}
