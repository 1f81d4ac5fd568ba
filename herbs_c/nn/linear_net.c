/* The smallest network: a linear classifier on the flattened image, logits [B, classes].
   It exists to exercise the machinery every net shares (config, parameter table, outputs,
   backward, the binding) without a backbone in the way. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kernels.h"
#include "nn/registry.h"
#include "nn/product.h"

typedef struct {
    int classes;
    herbs_weight fc; /* fc.weight [classes, 3HW] and fc.bias [classes] */
    const float *images; /* the input of the last forward */
} linear_net;

static herbs_status linear_forward_pass(herbs_net *net, const float *images, int batch, int train)
{
    linear_net *ln = net->impl;
    herbs_output *logits;
    HERBS_TRY(net_add_output(net, "logits", HERBS_FLOAT32, 2, (int64_t[]){batch, ln->classes}, NULL, &logits));
    int features = net->in_channels * net->height * net->width;
    float *copy;
    HERBS_TRY(herbs_arena_floats(&net->arena, (size_t)batch * features, 0, &copy));
    memcpy(copy, images, (size_t)batch * features * sizeof(float));
    ln->images = copy;
    product_rows_forward(&ln->fc, &net->params, net->params.precision, logits->data, copy, batch, NULL, NULL, 0);
    return HERBS_OK;
}

static herbs_status linear_backward_pass(herbs_net *net, float *dimages)
{
    linear_net *ln = net->impl;
    product_rows_backward(&ln->fc, &net->params, net->params.precision, dimages, net->outputs[0].grad, ln->images,
                          net->forward_batch, 1);
    return HERBS_OK;
}

static void linear_destroy(herbs_net *net) { free(net->impl); }

static const herbs_net_ops linear_ops = {"linear", linear_forward_pass, linear_backward_pass, linear_destroy};

herbs_status linear_net_create(herbs_net *net, herbs_config *config)
{
    int img_size, classes;
    HERBS_TRY(config_int(config, "img_size", 32, 1, 4096, &img_size));
    HERBS_TRY(config_int(config, "num_classes", 10, 1, 1000000, &classes));
    HERBS_TRY(config_check_all_used(config, "a linear net"));
    linear_net *ln = calloc(1, sizeof *ln);
    if (!ln)
        return herbs_error(HERBS_ERR_NOMEM, "out of memory creating a linear net");
    net->impl = ln;
    net->ops = &linear_ops;
    net->in_channels = 3;
    net->height = net->width = img_size;
    ln->classes = classes;
    int64_t features = 3 * (int64_t)img_size * img_size;
    herbs_init init = {HERBS_INIT_UNIFORM, 1.0f / sqrtf((float)features)};
    return product_add(&net->params, &ln->fc, "", "fc",
                       (herbs_product_spec){.out = classes, .in = (int)features, .bias = 1, .weight_init = init,
                                            .bias_init = init});
}
