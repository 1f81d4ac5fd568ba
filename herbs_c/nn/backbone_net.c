/* A backbone as a network of its own, for tests and benchmarks: outputs "layer1".."layer4". */
#include <stdio.h>
#include <stdlib.h>

#include "core/threads.h"
#include "nn/registry.h"

typedef struct {
    herbs_backbone *bb;
    herbs_net_ops ops; /* the kind's name differs per backbone */
} backbone_net;

static herbs_status backbone_net_forward(herbs_net *net, const float *images, int batch, int train)
{
    backbone_net *impl = net->impl;
    herbs_backbone *bb = impl->bb;
    float *taps[HERBS_TAPS];
    HERBS_TRY(bb->ops->forward(bb, &net->params, &net->arena, images, batch, train, net->seed, net->step, taps));
    for (int i = 0; i < HERBS_TAPS; i++) {
        char name[16];
        snprintf(name, sizeof name, "layer%d", i + 1);
        herbs_output *o;
        const int64_t shape[3] = {batch, bb->tap_tokens[i], bb->tap_channels[i]};
        /* the tap itself, kept until the next forward */
        HERBS_TRY(net_add_output(net, name, HERBS_FLOAT32, 3, shape, taps[i], &o));
    }
    return HERBS_OK;
}

static herbs_status backbone_net_backward(herbs_net *net, float *dimages)
{
    backbone_net *impl = net->impl;
    const float *dtaps[HERBS_TAPS];
    for (int i = 0; i < HERBS_TAPS; i++)
        dtaps[i] = net->outputs[i].grad;
    return impl->bb->ops->backward(impl->bb, &net->params, &net->arena, dtaps, dimages, NULL);
}

void backbone_keep_tap_grad(const herbs_backbone *bb, float *tap_grads[HERBS_TAPS], int i, int batch, const float *grad)
{
    if (!tap_grads || !tap_grads[i])
        return;
    const size_t n = (size_t)batch * bb->tap_tokens[i] * bb->tap_channels[i];
    if (grad)
        herbs_copy_floats(tap_grads[i], grad, n);
    else
        herbs_zero_floats(tap_grads[i], n);
}

static void backbone_net_destroy(herbs_net *net)
{
    backbone_net *impl = net->impl;
    if (!impl)
        return;
    if (impl->bb)
        impl->bb->ops->destroy(impl->bb);
    free(impl);
}

herbs_status backbone_net_create(herbs_net *net, herbs_config *config, const backbone_spec *spec)
{
    const char *kind = spec->name;
    backbone_net *impl = calloc(1, sizeof *impl);
    if (!impl)
        return herbs_error(HERBS_ERR_NOMEM, "out of memory creating a %s net", kind);
    impl->ops = (herbs_net_ops){kind, backbone_net_forward, backbone_net_backward, backbone_net_destroy};
    net->impl = impl;
    net->ops = &impl->ops;
    HERBS_TRY(spec->create(&impl->bb, config, &net->params, ""));
    HERBS_TRY(config_check_all_used(config, kind));
    net->in_channels = impl->bb->in_channels;
    net->height = net->width = impl->bb->img_size;
    return HERBS_OK;
}
