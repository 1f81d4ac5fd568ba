#include "nn/net.h"

#include <stdlib.h>
#include <string.h>

#include "core/threads.h"
#include "nn/registry.h"

herbs_status net_create(herbs_net **out, const char *kind, herbs_config *config, uint64_t seed)
{
    herbs_net *net = calloc(1, sizeof *net);
    if (!net)
        return herbs_error(HERBS_ERR_NOMEM, "out of memory creating a network");
    params_init(&net->params);
    herbs_arena_init(&net->arena);
    net->seed = seed;
    herbs_status s = registry_create(net, kind, config);
    if (s == HERBS_OK)
        s = params_allocate(&net->params, seed);
    if (s != HERBS_OK) {
        net_free(net);
        return s;
    }
    *out = net;
    return HERBS_OK;
}

void net_free(herbs_net *net)
{
    if (!net)
        return;
    if (net->ops && net->ops->destroy)
        net->ops->destroy(net);
    params_free(&net->params);
    herbs_arena_free(&net->arena);
    free(net);
}

void net_set_random_state(herbs_net *net, uint64_t seed, uint64_t step)
{
    net->seed = seed;
    net->step = step;
}

static size_t output_size(const herbs_output *o)
{
    size_t size = 1;
    for (int d = 0; d < o->ndim; d++)
        size *= (size_t)o->shape[d];
    return size;
}

herbs_status net_forward(herbs_net *net, const float *images, int batch, int train, int image_level)
{
    if (batch < 1)
        return herbs_error(HERBS_ERR_VALUE, "batch must be at least 1, got %d", batch);
    if (train && image_level)
        return herbs_error(HERBS_ERR_VALUE, "image-level outputs are for eval mode: training needs token logits");
    net->forward_batch = 0;
    net->backward_done = 0;
    net->forward_precision = net->params.precision;
    net->output_grads_zero = 1; /* net_add_output's gradients start zeroed */
    net->n_outputs = 0;
    net->n_probes = 0;
    net->image_level = image_level;
    HERBS_TRY(herbs_arena_reset(&net->arena));
    HERBS_TRY(net->ops->forward(net, images, batch, train));
    if (train)
        net->step++;
    net->forward_batch = batch;
    return HERBS_OK;
}

herbs_status net_backward_ready(const herbs_net *net, int probe_grads)
{
    if (net->forward_batch == 0 || net->backward_done)
        return herbs_error(HERBS_ERR_STATE, "backward needs a forward pass before it (one backward per forward)");
    if (net->image_level)
        return herbs_error(HERBS_ERR_STATE, "backward cannot go back through an image-level forward");
    if (probe_grads && net->n_probes == 0)
        return herbs_error(HERBS_ERR_VALUE, "a '%s' network has no probes", net->ops->kind);
    return HERBS_OK;
}

herbs_status net_output_grad(herbs_net *net, const char *name, herbs_output **out)
{
    for (int i = 0; i < net->n_outputs; i++) {
        herbs_output *o = &net->outputs[i];
        if (strcmp(o->name, name) != 0)
            continue;
        if (o->dtype != HERBS_FLOAT32)
            return herbs_error(HERBS_ERR_VALUE, "output '%s' holds integers (indices) and has no gradient", name);
        net->output_grads_zero = 0;
        *out = o;
        return HERBS_OK;
    }
    return herbs_error(HERBS_ERR_VALUE, "grads names '%s', which is not an output of the last forward", name);
}

herbs_status net_backward(herbs_net *net, float *dimages, int probe_grads)
{
    HERBS_TRY(net_backward_ready(net, probe_grads));
    net->probe_backward = probe_grads;
    const herbs_precision now = net->params.precision; /* a precision set since the forward: from the next */
    net->params.precision = net->forward_precision;
    herbs_status s = net->ops->backward(net, dimages);
    net->params.precision = now;
    net->probe_backward = 0;
    net->backward_done = 1; /* also after a failure: the saved activations may be spent */
    return s;
}

herbs_status net_loss_ready(const herbs_net *net)
{
    if (!net->ops->loss)
        return herbs_error(HERBS_ERR_TYPE, "a '%s' net has no training objective", net->ops->kind);
    if (net->forward_batch == 0)
        return herbs_error(HERBS_ERR_STATE, "loss needs a forward pass before it");
    if (net->image_level)
        return herbs_error(HERBS_ERR_STATE, "loss needs token logits: the last forward was image-level");
    return HERBS_OK;
}

herbs_status net_loss(herbs_net *net, const herbs_targets *targets, int batch, herbs_config *options,
                      herbs_loss_terms *terms)
{
    HERBS_TRY(net_loss_ready(net));
    if (batch != net->forward_batch)
        return herbs_error(HERBS_ERR_VALUE, "got %d targets for a forward pass of %d images", batch, net->forward_batch);
    HERBS_TRY(net->ops->loss(net, targets, batch, options, 1, terms));
    /* the objective's gradient replaces any earlier one */
    for (int i = 0; !net->output_grads_zero && i < net->n_outputs; i++)
        if (net->outputs[i].grad)
            herbs_zero_floats(net->outputs[i].grad, output_size(&net->outputs[i]));
    net->output_grads_zero = 0;
    return net->ops->loss(net, targets, batch, options, 0, terms);
}

herbs_status net_train_step(herbs_net *net, const float *images, int batch, int train, const herbs_targets *targets,
                            herbs_config *options, herbs_loss_terms *terms)
{
    if (!net->ops->loss)
        return herbs_error(HERBS_ERR_TYPE, "a '%s' net has no training objective", net->ops->kind);
    HERBS_TRY(net->ops->loss(net, targets, batch, options, 1, terms)); /* bad targets or options: before any work */
    HERBS_TRY(net_forward(net, images, batch, train, 0));
    HERBS_TRY(net_loss(net, targets, batch, options, terms));
    return net_backward(net, NULL, 0);
}

herbs_status net_add_output(herbs_net *net, const char *name, herbs_dtype dtype, int ndim, const int64_t *shape,
                            void *data, herbs_output **out)
{
    if (net->n_outputs == HERBS_MAX_OUTPUTS)
        return herbs_error(HERBS_ERR_STATE, "more than %d outputs", HERBS_MAX_OUTPUTS);
    herbs_output *o = &net->outputs[net->n_outputs];
    memset(o, 0, sizeof *o);
    strncpy(o->name, name, HERBS_OUTPUT_NAME_MAX - 1);
    o->dtype = dtype;
    o->ndim = ndim;
    for (int d = 0; d < ndim; d++)
        o->shape[d] = shape[d];
    const size_t size = output_size(o);
    if (dtype == HERBS_FLOAT32) {
        float *values = data;
        if (!values)
            HERBS_TRY(herbs_arena_floats(&net->arena, size, 0, &values));
        o->data = values;
        HERBS_TRY(herbs_arena_floats(&net->arena, size, 1, &o->grad));
    } else {
        o->data = data ? data : herbs_arena_alloc(&net->arena, size * sizeof(int64_t));
        if (!o->data)
            return HERBS_ERR_NOMEM;
    }
    net->n_outputs++;
    *out = o;
    return HERBS_OK;
}
