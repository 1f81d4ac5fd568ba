/* The "herbs" net kind: backbone -> two-way FPN and its classifiers -> selector -> GCN combiner
   (SPEC.md §3), forward and backward, with the release's switches and tensor names.
   Config: backbone (the backbone's own keys pass through to it), num_classes (200),
   use_fpn / use_selection / use_combiner (1), fpn_size (the last tap's channels), num_selects
   (4 ints; default floor(S_i · (1, 2, 4, 2)/9), which is the paper's (256, 128, 64, 32) at
   Swin-L 384 px), fpn_type ("tokens" or "cnn"; by default the backbone's), dropout (0.1). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kernels.h"
#include "nn/herbs_model.h"
#include "nn/registry.h"

/* The combiner's dropout stream for a step: the last of the step's 65536 streams, which the
   backbones' per-layer streams (from step << 16 upwards) never reach. */
#define COMBINER_DROPOUT_STREAM(step) (((uint64_t)(step) << 16) + 0xFFFF)

static herbs_status add_output(herbs_net *net, const char *name, int tap, herbs_dtype dtype, int ndim,
                               const int64_t *shape, int *index)
{
    char full[HERBS_OUTPUT_NAME_MAX];
    if (tap >= 0)
        snprintf(full, sizeof full, "%s%d", name, tap + 1);
    else
        snprintf(full, sizeof full, "%s", name);
    herbs_output *o;
    *index = net->n_outputs;
    return net_add_output(net, full, dtype, ndim, shape, NULL, &o);
}

static float *out_data(herbs_net *net, int index) { return index >= 0 ? net->outputs[index].data : NULL; }
static float *out_grad(herbs_net *net, int index) { return index >= 0 ? net->outputs[index].grad : NULL; }

/* Every output of this configuration, in a fixed order: FPN1_layer* (image_level: their token means,
   [B, 1, K]: only the prediction's ensemble reads them), layer*, select_layer*, drop_layer*,
   comb_outs or ori_out, rank_layer* (the selector's token order, int64). */
static herbs_status add_outputs(herbs_net *net, herbs_model *m, int B)
{
    const herbs_backbone *bb = m->bb;
    const int K = m->classes;
    for (int i = 0; i < HERBS_TAPS; i++)
        m->out_fpn1[i] = m->out_layer[i] = m->out_select[i] = m->out_drop[i] = m->out_rank[i] = -1;
    m->out_comb = m->out_ori = -1;
    const herbs_dtype f32 = HERBS_FLOAT32;
    for (int i = 0; m->use_fpn && i < HERBS_TAPS; i++)
        HERBS_TRY(add_output(net, "FPN1_layer", i, f32, 3,
                             (int64_t[]){B, net->image_level ? 1 : bb->tap_tokens[i], K}, &m->out_fpn1[i]));
    for (int i = 0; (m->use_fpn || m->use_selection) && i < HERBS_TAPS; i++)
        HERBS_TRY(add_output(net, "layer", i, f32, 3, (int64_t[]){B, bb->tap_tokens[i], K}, &m->out_layer[i]));
    for (int i = 0; m->use_selection && i < HERBS_TAPS; i++)
        HERBS_TRY(add_output(net, "select_layer", i, f32, 3, (int64_t[]){B, m->selector.keep[i], K}, &m->out_select[i]));
    for (int i = 0; m->use_selection && i < HERBS_TAPS; i++)
        HERBS_TRY(add_output(net, "drop_layer", i, f32, 3, (int64_t[]){B, bb->tap_tokens[i] - m->selector.keep[i], K},
                             &m->out_drop[i]));
    if (m->use_combiner)
        HERBS_TRY(add_output(net, "comb_outs", -1, f32, 2, (int64_t[]){B, K}, &m->out_comb));
    if (!m->use_fpn && !m->use_selection)
        HERBS_TRY(add_output(net, "ori_out", -1, f32, 2, (int64_t[]){B, K}, &m->out_ori));
    for (int i = 0; m->use_selection && i < HERBS_TAPS; i++)
        HERBS_TRY(add_output(net, "rank_layer", i, HERBS_INT64, 2, (int64_t[]){B, bb->tap_tokens[i]}, &m->out_rank[i]));
    return HERBS_OK;
}

/* The backbone's taps as probes "backbone.layer1".."backbone.layer4" [B, S_i, C_i]. */
static void add_tap_probes(herbs_net *net, const herbs_model *m, int B)
{
    for (int i = 0; i < HERBS_TAPS; i++) {
        herbs_output *p = &net->probes[i];
        snprintf(p->name, sizeof p->name, "backbone.layer%d", i + 1);
        p->dtype = HERBS_FLOAT32;
        p->ndim = 3;
        p->shape[0] = B, p->shape[1] = m->bb->tap_tokens[i], p->shape[2] = m->bb->tap_channels[i];
        p->data = m->taps[i];
        p->grad = NULL;
    }
    net->n_probes = HERBS_TAPS;
}

static herbs_status herbs_forward(herbs_net *net, const float *images, int batch, int train)
{
    herbs_model *m = net->impl;
    const herbs_backbone *bb = m->bb;
    head_ctx c = {&net->params, &net->arena, &m->scratch, batch, train};
    m->train = train;
    HERBS_TRY(m->bb->ops->forward(m->bb, &net->params, &net->arena, images, batch, train, net->seed, net->step, m->taps));
    HERBS_TRY(add_outputs(net, m, batch));
    add_tap_probes(net, m, batch);

    float *logits[HERBS_TAPS], *features[HERBS_TAPS] = {NULL}, *selected[HERBS_TAPS], *dropped[HERBS_TAPS];
    for (int i = 0; i < HERBS_TAPS; i++) {
        logits[i] = out_data(net, m->out_layer[i]);
        selected[i] = out_data(net, m->out_select[i]);
        dropped[i] = out_data(net, m->out_drop[i]);
    }
    if (m->use_fpn) {
        HERBS_TRY(fpn_forward(&m->fpn, &c, m->taps));
        for (int i = 0; i < HERBS_TAPS; i++) {
            level_factors xf;
            const int factored = fpn_top_down_factors(&m->fpn, i, &xf);
            HERBS_TRY(classifier_forward(&m->down_cls[i], &c, m->fpn.top_down[i], factored ? &xf : NULL,
                                         batch * bb->tap_tokens[i], net->image_level, out_data(net, m->out_fpn1[i])));
        }
        for (int i = 0; i < HERBS_TAPS; i++) {
            HERBS_TRY(classifier_forward(&m->up_cls[i], &c, m->fpn.bottom_up[i], NULL, batch * bb->tap_tokens[i], 0,
                                         logits[i]));
            features[i] = m->fpn.bottom_up[i];
        }
    } else if (m->use_selection) {
        for (int i = 0; i < HERBS_TAPS; i++)
            product_rows_forward(&m->plain[i], &net->params, net->params.precision, logits[i], m->taps[i],
                                 batch * bb->tap_tokens[i], NULL, NULL, 0);
    }
    if (m->use_selection) {
        HERBS_TRY(selector_forward(&m->selector, &c, logits, features, selected, dropped));
        for (int i = 0; i < HERBS_TAPS; i++) {
            int64_t *rank = net->outputs[m->out_rank[i]].data;
            for (size_t j = 0; j < (size_t)batch * bb->tap_tokens[i]; j++)
                rank[j] = m->selector.order[i][j];
        }
    }
    if (m->use_combiner)
        HERBS_TRY(combiner_forward(&m->combiner, &c, m->selector.kept, net->seed,
                                   COMBINER_DROPOUT_STREAM(net->step), out_data(net, m->out_comb)));
    if (m->out_ori >= 0) {
        const int S = bb->tap_tokens[HERBS_TAPS - 1], C = bb->tap_channels[HERBS_TAPS - 1];
        HERBS_TRY(head_token_mean_product(&c, &m->ori, m->taps[HERBS_TAPS - 1], S, C, &m->ori_mean,
                                          out_data(net, m->out_ori)));
    }
    return HERBS_OK;
}

static herbs_status herbs_backward(herbs_net *net, float *dimages)
{
    herbs_model *m = net->impl;
    const herbs_backbone *bb = m->bb;
    const int B = net->forward_batch;
    head_ctx c = {&net->params, &net->arena, &m->scratch, B, m->train};
    float *dtaps[HERBS_TAPS] = {NULL}, *d_bottom_up[HERBS_TAPS] = {NULL};
    level_grad d_top_down[HERBS_TAPS]; /* dense parts allocated by their first contribution */
    float *dkept = NULL;
    /* Each gradient buffer is written by its first contributor and added to by the others; zeroed
       only where all of them add: the taps' when only ori_out's mean reaches them, the bottom-up
       features' when the selector scatters the combiner's gradient into them first. */
    const int taps_written = m->use_fpn || m->use_selection, kept_scattered = m->use_combiner;
    for (int i = 0; i < HERBS_TAPS; i++) {
        const size_t tokens = (size_t)B * bb->tap_tokens[i];
        if (taps_written || i == HERBS_TAPS - 1)
            HERBS_TRY(head_alloc(&c, tokens * bb->tap_channels[i], !taps_written, &dtaps[i]));
        d_top_down[i] = (level_grad){.size = tokens * m->fpn_size};
        if (m->use_fpn)
            HERBS_TRY(head_alloc(&c, tokens * m->fpn_size, kept_scattered, &d_bottom_up[i]));
    }
    if (m->use_combiner) {
        HERBS_TRY(head_alloc(&c, (size_t)B * m->selector.kept_total * m->fpn_size, 1, &dkept));
        HERBS_TRY(combiner_backward(&m->combiner, &c, out_grad(net, m->out_comb), dkept));
    }
    float *dlogits[HERBS_TAPS], *dselected[HERBS_TAPS], *ddropped[HERBS_TAPS];
    for (int i = 0; i < HERBS_TAPS; i++) {
        dlogits[i] = out_grad(net, m->out_layer[i]);
        dselected[i] = out_grad(net, m->out_select[i]);
        ddropped[i] = out_grad(net, m->out_drop[i]);
    }
    if (m->use_selection) /* into the layer logits' gradients, which the classifiers below read */
        HERBS_TRY(selector_backward(&m->selector, &c, dselected, ddropped, dkept, dlogits, d_bottom_up));
    if (m->use_fpn) {
        for (int i = 0; i < HERBS_TAPS; i++) {
            level_grad d_up = {.dense = d_bottom_up[i], .size = d_top_down[i].size, .written = kept_scattered};
            HERBS_TRY(classifier_backward(&m->up_cls[i], &c, dlogits[i], &d_up));
            HERBS_TRY(classifier_backward(&m->down_cls[i], &c, out_grad(net, m->out_fpn1[i]), &d_top_down[i]));
        }
        if (!m->up_cls[0].first.term) { /* its BN input is spent (its dz went elsewhere): the size of
                                           layer1's projection terms */
            c.spent = m->up_cls[0].z;
            c.spent_floats = (size_t)B * bb->tap_tokens[0] * m->fpn_size;
        }
        HERBS_TRY(fpn_backward(&m->fpn, &c, d_top_down, d_bottom_up, dtaps));
    } else if (m->use_selection) {
        for (int i = 0; i < HERBS_TAPS; i++)
            product_rows_backward(&m->plain[i], &net->params, net->params.precision, dtaps[i], dlogits[i], m->taps[i],
                                  B * bb->tap_tokens[i], 0);
    }
    if (m->out_ori >= 0) {
        const int S = bb->tap_tokens[HERBS_TAPS - 1], C = bb->tap_channels[HERBS_TAPS - 1];
        float *dmean;
        HERBS_TRY(head_alloc(&c, (size_t)B * C, 0, &dmean));
        product_rows_backward(&m->ori, &net->params, net->params.precision, dmean, out_grad(net, m->out_ori),
                              m->ori_mean, B, 0);
        token_mean_backward(dtaps[HERBS_TAPS - 1], dmean, B, S, C);
    }
    float *tap_grads[HERBS_TAPS] = {NULL};
    for (int i = 0; net->probe_backward && i < HERBS_TAPS; i++) {
        HERBS_TRY(head_alloc(&c, (size_t)B * bb->tap_tokens[i] * bb->tap_channels[i], 0, &tap_grads[i]));
        net->probes[i].grad = tap_grads[i];
    }
    /* the backbone's backward scratch comes from the head's, free again by now and resident to its
       high-water mark already */
    HERBS_TRY(head_scratch_begin(&c));
    return m->bb->ops->backward(m->bb, &net->params, &m->scratch, (const float *const *)dtaps, dimages,
                                net->probe_backward ? tap_grads : NULL);
}

static void herbs_destroy(herbs_net *net)
{
    herbs_model *m = net->impl;
    if (!m)
        return;
    if (m->bb)
        m->bb->ops->destroy(m->bb);
    herbs_arena_free(&m->scratch);
    free(m);
}

static const herbs_net_ops herbs_ops = {"herbs", herbs_forward, herbs_backward, herbs_destroy, herbs_model_loss};

/* num_selects: given, or floor(S_i · (1, 2, 4, 2) / 9) (at least 1); each 1 <= K_i < S_i */
static herbs_status read_num_selects(herbs_config *config, const herbs_backbone *bb, int keep[HERBS_TAPS])
{
    static const int ninths[HERBS_TAPS] = {1, 2, 4, 2};
    int deflt[HERBS_TAPS];
    for (int i = 0; i < HERBS_TAPS; i++) {
        deflt[i] = (int)((int64_t)bb->tap_tokens[i] * ninths[i] / 9);
        deflt[i] = deflt[i] < 1 ? 1 : deflt[i];
    }
    HERBS_TRY(config_ints(config, "num_selects", HERBS_TAPS, deflt, 1, 1 << 30, keep));
    for (int i = 0; i < HERBS_TAPS; i++)
        if (keep[i] >= bb->tap_tokens[i])
            return herbs_error(HERBS_ERR_VALUE, "num_selects[%d] = %d must be smaller than layer%d's %d tokens", i,
                               keep[i], i + 1, bb->tap_tokens[i]);
    return HERBS_OK;
}

static herbs_status read_switches(herbs_config *config, herbs_model *m)
{
    HERBS_TRY(config_int(config, "use_fpn", 1, 0, 1, &m->use_fpn));
    HERBS_TRY(config_int(config, "use_selection", 1, 0, 1, &m->use_selection));
    HERBS_TRY(config_int(config, "use_combiner", 1, 0, 1, &m->use_combiner));
    if (m->use_combiner && !m->use_selection)
        return herbs_error(HERBS_ERR_VALUE, "use_combiner needs use_selection (the combiner reads the selected tokens)");
    if (m->use_combiner && !m->use_fpn)
        return herbs_error(HERBS_ERR_VALUE, "use_combiner needs use_fpn: the release's combiner without a feature "
                           "pyramid cannot be built (its projection branch fails), so there is nothing to match");
    return HERBS_OK;
}

/* Registers the head in the release's order (PyTorch's state_dict order follows it). */
static herbs_status build_head(herbs_model *m, herbs_params *t, fpn_type pyramid, const int keep[HERBS_TAPS],
                               float dropout)
{
    const herbs_backbone *bb = m->bb;
    char prefix[HERBS_NAME_MAX], name[HERBS_NAME_MAX];
    if (!m->use_fpn && !m->use_selection)
        HERBS_TRY(product_add(t, &m->ori, "", "classifier",
                              head_product_spec(m->classes, bb->tap_channels[HERBS_TAPS - 1], 0)));
    if (m->use_fpn) {
        HERBS_TRY(fpn_down_init(&m->fpn, t, bb, pyramid, m->fpn_size));
        for (int i = 0; i < HERBS_TAPS; i++) {
            snprintf(prefix, sizeof prefix, "fpn_classifier_down_layer%d.", i + 1);
            HERBS_TRY(classifier_init(&m->down_cls[i], t, prefix, m->fpn_size, m->classes));
        }
        HERBS_TRY(fpn_up_init(&m->fpn, t));
        for (int i = 0; i < HERBS_TAPS; i++) {
            snprintf(prefix, sizeof prefix, "fpn_classifier_up_layer%d.", i + 1);
            HERBS_TRY(classifier_init(&m->up_cls[i], t, prefix, m->fpn_size, m->classes));
        }
    } else if (m->use_selection) {
        for (int i = 0; i < HERBS_TAPS; i++) {
            snprintf(name, sizeof name, "classifier_l_layer%d", i + 1);
            HERBS_TRY(product_add(t, &m->plain[i], "selector.", name,
                                  head_product_spec(m->classes, bb->tap_channels[i], 0)));
        }
    }
    if (m->use_selection)
        selector_init(&m->selector, bb->tap_tokens, keep, m->classes, m->use_fpn ? m->fpn_size : 0);
    if (m->use_combiner)
        HERBS_TRY(combiner_init(&m->combiner, t, m->selector.kept_total, m->fpn_size, m->classes, dropout));
    return HERBS_OK;
}

herbs_status herbs_net_create(herbs_net *net, herbs_config *config)
{
    herbs_model *m = calloc(1, sizeof *m);
    if (!m)
        return herbs_error(HERBS_ERR_NOMEM, "out of memory creating a herbs net");
    net->impl = m;
    net->ops = &herbs_ops;
    herbs_arena_init(&m->scratch);

    const backbone_spec *spec;
    HERBS_TRY(registry_backbone(config, "backbone", &spec));
    HERBS_TRY(spec->create(&m->bb, config, &net->params, "backbone."));
    const herbs_backbone *bb = m->bb;
    net->in_channels = bb->in_channels;
    net->height = net->width = bb->img_size;

    int keep[HERBS_TAPS];
    double dropout;
    const char *pyramid;
    static const char *const pyramids[] = {"tokens", "cnn", NULL};
    HERBS_TRY(config_int(config, "num_classes", 200, 1, 1000000, &m->classes));
    HERBS_TRY(read_switches(config, m));
    HERBS_TRY(config_int(config, "fpn_size", bb->tap_channels[HERBS_TAPS - 1], 1, 65536, &m->fpn_size));
    HERBS_TRY(config_text(config, "fpn_type", pyramids[spec->pyramid], pyramids, &pyramid));
    HERBS_TRY(read_num_selects(config, bb, keep));
    HERBS_TRY(config_float(config, "dropout", 0.1, 0.0, 0.999999, &dropout));
    char what[96];
    snprintf(what, sizeof what, "a herbs net with backbone '%s'", spec->name);
    HERBS_TRY(config_check_all_used(config, what));
    return build_head(m, &net->params, strcmp(pyramid, "cnn") == 0 ? FPN_CNN : FPN_TOKENS, keep, (float)dropout);
}
