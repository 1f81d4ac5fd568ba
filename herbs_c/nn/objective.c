/* The HERBS training objective (SPEC.md §4, the release's main.py): every term, weight and the
   temperature are options; the gradient of total / accumulation_steps goes into the outputs'
   gradients, ready for backward. Means are over every element, as PyTorch's default reductions.
   The targets are class indices or, for label smoothing and mixup, distributions over the classes
   (timm's soft targets): the cross-entropy terms read them; background suppression and refinement
   do not depend on them. */
#include <math.h>
#include <stdio.h>

#include "core/threads.h"
#include "kernels/kernels.h"
#include "nn/herbs_model.h"

typedef struct {
    double temperature, lambda_c, lambda_b, lambda_n, lambda_s, lambda_r;
    int accumulation_steps;
} objective_options;

static herbs_status read_options(herbs_config *config, objective_options *o)
{
    HERBS_TRY(config_float(config, "temperature", 64.0, 1e-6, 1e12, &o->temperature));
    HERBS_TRY(config_float(config, "lambda_c", 1.0, 0.0, 1e12, &o->lambda_c));
    HERBS_TRY(config_float(config, "lambda_b", 0.3, 0.0, 1e12, &o->lambda_b));
    HERBS_TRY(config_float(config, "lambda_n", 5.0, 0.0, 1e12, &o->lambda_n));
    HERBS_TRY(config_float(config, "lambda_s", 0.0, 0.0, 1e12, &o->lambda_s));
    HERBS_TRY(config_float(config, "lambda_r", 1.375, 0.0, 1e12, &o->lambda_r));
    HERBS_TRY(config_int(config, "accumulation_steps", 1, 1, 1 << 30, &o->accumulation_steps));
    return config_check_all_used(config, "the HERBS objective (known: temperature, lambda_c, lambda_b, lambda_n, "
                                 "lambda_s, lambda_r, accumulation_steps)");
}

static void add_term(herbs_loss_terms *terms, const char *name, double value)
{
    snprintf(terms->name[terms->count], HERBS_LOSS_NAME_MAX, "%s", name);
    terms->value[terms->count++] = value;
}

static double sum_rows(const float *rows, size_t n)
{
    double s = 0;
    for (size_t i = 0; i < n; i++)
        s += rows[i];
    return s;
}

/* Everything a term needs: the model's outputs, the targets (labels, or distributions when probs
   is set), the room for per-row values. */
typedef struct {
    herbs_net *net;
    herbs_model *m;
    const int *labels;
    const float *probs; /* [B, K] or NULL */
    int B, K;
    double scale; /* 1 / accumulation_steps */
    float *rows;  /* room for one value per row of the largest output */
} objective_ctx;

/* λ · mean CE(logits [n, K], target of row r = that of image r / per_label), gradient into grad */
static double cross_entropy_term(objective_ctx *o, const float *logits, float *grad, int n, int per_label, double lambda)
{
    const float scale = (float)(lambda * o->scale / n);
    if (o->probs) {
        soft_cross_entropy_forward(o->rows, logits, o->probs, per_label, n, o->K);
        soft_cross_entropy_backward(grad, logits, o->probs, per_label, scale, n, o->K);
    } else {
        cross_entropy_forward(o->rows, logits, o->labels, per_label, n, o->K);
        cross_entropy_backward(grad, logits, o->labels, per_label, scale, n, o->K);
    }
    return lambda * sum_rows(o->rows, n) / n;
}

/* λ_b · Σ_i CE(token mean of layer{i}, y) */
static herbs_status layer_term(objective_ctx *o, head_ctx *c, double lambda, double *value)
{
    *value = 0;
    for (int i = 0; i < HERBS_TAPS; i++) {
        const herbs_output *layer = &o->net->outputs[o->m->out_layer[i]];
        const int S = (int)layer->shape[1];
        float *mean, *dmean;
        HERBS_TRY(head_scratch_begin(c));
        HERBS_TRY(head_scratch(c, (size_t)o->B * o->K, 0, &mean));
        HERBS_TRY(head_scratch(c, (size_t)o->B * o->K, 1, &dmean));
        token_mean_forward(mean, layer->data, o->B, S, o->K);
        *value += cross_entropy_term(o, mean, dmean, o->B, 1, lambda);
        token_mean_backward(layer->grad, dmean, o->B, S, o->K);
    }
    return HERBS_OK;
}

/* λ_n · Σ_i mean (tanh(drop_layer{i}) + 1)² */
static double drop_term(objective_ctx *o, double lambda)
{
    double value = 0;
    for (int i = 0; i < HERBS_TAPS; i++) {
        herbs_output *drop = &o->net->outputs[o->m->out_drop[i]];
        const int n = o->B * (int)drop->shape[1];
        const double elements = (double)n * o->K;
        tanh_mse_forward(o->rows, drop->data, -1.0f, n, o->K);
        tanh_mse_backward(drop->grad, drop->data, -1.0f, (float)(lambda * o->scale / elements), n, o->K);
        value += lambda * sum_rows(o->rows, n) / elements;
    }
    return value;
}

/* λ_s · Σ_i mean CE over every kept token with its image's label */
static double select_term(objective_ctx *o, double lambda)
{
    double value = 0;
    for (int i = 0; i < HERBS_TAPS; i++) {
        herbs_output *sel = &o->net->outputs[o->m->out_select[i]];
        const int kept = (int)sel->shape[1];
        value += cross_entropy_term(o, sel->data, sel->grad, o->B * kept, kept, lambda);
    }
    return value;
}

/* λ_r · Σ_i KLDivLoss(log_softmax(FPN1_layer{i}/T), softmax(layer{i}/T)), mean over B·S·K; the
   target (layer{i}) gets no gradient from this term */
static double refine_term(objective_ctx *o, double lambda, double T)
{
    double value = 0;
    for (int i = 0; i < HERBS_TAPS; i++) {
        herbs_output *student = &o->net->outputs[o->m->out_fpn1[i]];
        const herbs_output *teacher = &o->net->outputs[o->m->out_layer[i]];
        const int n = o->B * (int)student->shape[1];
        const double elements = (double)n * o->K;
        kl_softmax_forward(o->rows, student->data, teacher->data, (float)T, n, o->K);
        kl_softmax_backward(student->grad, student->data, teacher->data, (float)T, (float)(lambda * o->scale / elements),
                            n, o->K);
        value += lambda * sum_rows(o->rows, n) / elements;
    }
    return value;
}

static herbs_status check_targets(const herbs_model *m, const herbs_targets *t, int batch)
{
    if (!t->probs) {
        for (int b = 0; b < batch; b++)
            if (t->labels[b] < 0 || t->labels[b] >= m->classes)
                return herbs_error(HERBS_ERR_VALUE,
                                   "labels[%d] = %lld is not a class index in [0, %d) (num_classes = %d)", b,
                                   (long long)t->labels[b], m->classes, m->classes);
        return HERBS_OK;
    }
    if (t->classes != m->classes)
        return herbs_error(HERBS_ERR_VALUE, "targets have %d columns, expected one per class (num_classes = %d)",
                           t->classes, m->classes);
    for (size_t i = 0; i < (size_t)batch * m->classes; i++)
        if (!(t->probs[i] >= 0 && t->probs[i] < INFINITY)) /* false for NaN too */
            return herbs_error(HERBS_ERR_VALUE, "targets[%d, %d] = %g: target probabilities must be finite and >= 0",
                               (int)(i / m->classes), (int)(i % m->classes), (double)t->probs[i]);
    return HERBS_OK;
}

herbs_status herbs_model_loss(herbs_net *net, const herbs_targets *targets, int batch, herbs_config *options,
                              int check_only, herbs_loss_terms *terms)
{
    herbs_model *m = net->impl;
    objective_options opt;
    HERBS_TRY(read_options(options, &opt));
    HERBS_TRY(check_targets(m, targets, batch));
    if (check_only)
        return HERBS_OK;

    head_ctx c = {&net->params, &net->arena, &m->scratch, batch, m->train};
    size_t most_rows = (size_t)batch;
    for (int i = 0; i < net->n_outputs; i++) {
        const herbs_output *o = &net->outputs[i];
        if (o->ndim == 3 && (size_t)(o->shape[0] * o->shape[1]) > most_rows)
            most_rows = (size_t)(o->shape[0] * o->shape[1]);
    }
    int *label_ints = herbs_arena_alloc(&net->arena, (size_t)batch * sizeof(int));
    float *rows;
    HERBS_TRY(head_alloc(&c, most_rows, 0, &rows));
    if (!label_ints)
        return HERBS_ERR_NOMEM;
    for (int b = 0; !targets->probs && b < batch; b++)
        label_ints[b] = (int)targets->labels[b];
    objective_ctx o = {net, m, label_ints, targets->probs, batch, m->classes, 1.0 / opt.accumulation_steps, rows};

    double comb = 0, layer = 0, drop = 0, select = 0, refine = 0, ori = 0;
    if (m->use_combiner && opt.lambda_c != 0)
        comb = cross_entropy_term(&o, net->outputs[m->out_comb].data, net->outputs[m->out_comb].grad, batch, 1,
                                  opt.lambda_c);
    if ((m->use_fpn || m->use_selection) && opt.lambda_b != 0)
        HERBS_TRY(layer_term(&o, &c, opt.lambda_b, &layer));
    if (m->use_selection && opt.lambda_n != 0)
        drop = drop_term(&o, opt.lambda_n);
    if (m->use_selection && opt.lambda_s != 0)
        select = select_term(&o, opt.lambda_s);
    if (m->use_fpn && opt.lambda_r != 0)
        refine = refine_term(&o, opt.lambda_r, opt.temperature);
    if (m->out_ori >= 0)
        ori = cross_entropy_term(&o, net->outputs[m->out_ori].data, net->outputs[m->out_ori].grad, batch, 1, 1.0);

    terms->count = 0;
    add_term(terms, "total", comb + layer + drop + select + refine + ori);
    if (m->use_combiner)
        add_term(terms, "comb", comb);
    if (m->use_fpn || m->use_selection)
        add_term(terms, "layer", layer);
    if (m->use_selection) {
        add_term(terms, "drop", drop);
        add_term(terms, "select", select);
    }
    if (m->use_fpn)
        add_term(terms, "refine", refine);
    if (m->out_ori >= 0)
        add_term(terms, "ori", ori);
    return HERBS_OK;
}
