#include "nn/net.h"

#include <stdlib.h>
#include <string.h>

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

herbs_status net_begin_forward(herbs_net *net, int batch)
{
    if (batch < 1)
        return herbs_error(HERBS_ERR_VALUE, "batch must be at least 1, got %d", batch);
    net->forward_batch = 0;
    net->backward_done = 0;
    net->output_grads_zero = 1; /* net_add_output's gradients start zeroed */
    net->n_outputs = 0;
    net->n_probes = 0;
    return herbs_arena_reset(&net->arena);
}

herbs_status net_add_output(herbs_net *net, const char *name, int ndim, const int64_t *shape, float *data,
                            herbs_output **out)
{
    if (net->n_outputs == HERBS_MAX_OUTPUTS)
        return herbs_error(HERBS_ERR_STATE, "more than %d outputs", HERBS_MAX_OUTPUTS);
    herbs_output *o = &net->outputs[net->n_outputs];
    memset(o, 0, sizeof *o);
    strncpy(o->name, name, HERBS_OUTPUT_NAME_MAX - 1);
    o->ndim = ndim;
    size_t size = 1;
    for (int d = 0; d < ndim; d++) {
        o->shape[d] = shape[d];
        size *= (size_t)shape[d];
    }
    o->data = data ? data : herbs_arena_floats(&net->arena, size, 0);
    o->grad = herbs_arena_floats(&net->arena, size, 1);
    if (!o->data || !o->grad)
        return HERBS_ERR_NOMEM;
    net->n_outputs++;
    *out = o;
    return HERBS_OK;
}
