#include "nn/batchnorm_layer.h"

#include <stdio.h>
#include <string.h>

#include "kernels/kernels.h"

herbs_status batchnorm_layer_init(batchnorm_layer *bn, herbs_params *t, const char *prefix, const char *name,
                                  int channels)
{
    const herbs_init ones = {HERBS_INIT_CONSTANT, 1.0f}, zeros = {HERBS_INIT_ZEROS, 0};
    const struct {
        size_t *offset;
        const char *field;
        herbs_tensor_kind kind;
        herbs_init init;
        int ndim;
    } tensors[] = {
        {&bn->weight, "weight", HERBS_PARAMETER, ones, 1},
        {&bn->bias, "bias", HERBS_PARAMETER, zeros, 1},
        {&bn->running_mean, "running_mean", HERBS_BUFFER, zeros, 1},
        {&bn->running_var, "running_var", HERBS_BUFFER, ones, 1},
        {&bn->num_batches_tracked, "num_batches_tracked", HERBS_BUFFER_INT64, zeros, 0},
    };
    memset(bn, 0, sizeof *bn);
    bn->channels = channels;
    bn->eps = BN_EPS;
    bn->momentum = BN_MOMENTUM;
    for (size_t i = 0; i < sizeof tensors / sizeof tensors[0]; i++) {
        char key[HERBS_NAME_MAX];
        snprintf(key, sizeof key, "%s.%s", name, tensors[i].field);
        HERBS_TRY(params_add(t, tensors[i].offset, tensors[i].kind, tensors[i].init, prefix, key, tensors[i].ndim,
                             (int64_t)channels));
    }
    return HERBS_OK;
}

herbs_status batchnorm_layer_forward(batchnorm_layer *bn, const herbs_params *t, herbs_arena *arena, int train,
                                     const float *x, int rows, float *out, int relu)
{
    const int C = bn->channels;
    const float *w = PARAM(t, bn->weight), *b = PARAM(t, bn->bias);
    float *rm = BUFFER(t, bn->running_mean), *rv = BUFFER(t, bn->running_var);
    bn->train = train;
    if (!train) {
        if (relu)
            return herbs_error(HERBS_ERR_STATE, "eval-mode BatchNorm+ReLU is folded into the product before it "
                               "(batchnorm_layer_fold), not run by batchnorm_layer_forward");
        batchnorm_forward_eval(out, x, rm, rv, w, b, rows, C, bn->eps);
        return HERBS_OK;
    }
    if (rows < 2)
        return herbs_error(HERBS_ERR_VALUE, "BatchNorm in training needs more than 1 value per channel, got %d "
                           "(use a larger batch, or eval mode)", rows);
    HERBS_TRY(herbs_arena_floats(arena, C, 0, &bn->mean));
    HERBS_TRY(herbs_arena_floats(arena, C, 0, &bn->rstd));
    (relu ? batchnorm_relu_forward_train : batchnorm_forward_train)(out, bn->mean, bn->rstd, rm, rv, x, w, b, rows, C,
                                                                     bn->eps, bn->momentum);
    BUFFER(t, bn->num_batches_tracked)[0] += 1;
    return HERBS_OK;
}

herbs_status batchnorm_layer_fold(batchnorm_layer *bn, const herbs_params *t, herbs_arena *arena, const float *bias,
                                  float **scale, float **shift)
{
    const int C = bn->channels;
    HERBS_TRY(herbs_arena_floats(arena, C, 0, scale));
    HERBS_TRY(herbs_arena_floats(arena, C, 0, shift));
    batchnorm_eval_affine(*scale, *shift, BUFFER(t, bn->running_mean), BUFFER(t, bn->running_var),
                          PARAM(t, bn->weight), PARAM(t, bn->bias), C, bn->eps);
    for (int j = 0; bias && j < C; j++)
        (*shift)[j] += bias[j] * (*scale)[j];
    bn->train = 0;
    return HERBS_OK;
}

void batchnorm_layer_keep_input(const batchnorm_layer *bn, const float *x, int rows, uint16_t *kept)
{
    batchnorm_input_keep_bf16(kept, x, bn->mean, rows, bn->channels);
}

void batchnorm_layer_input_again(const batchnorm_layer *bn, const uint16_t *kept, int rows, float *x)
{
    batchnorm_input_again_bf16(x, kept, bn->mean, rows, bn->channels);
}

void batchnorm_layer_forward_again(const batchnorm_layer *bn, const herbs_params *t, const float *x, int rows,
                                   float *out, int relu)
{
    batchnorm_forward_saved(out, x, bn->mean, bn->rstd, PARAM(t, bn->weight), PARAM(t, bn->bias), rows, bn->channels,
                            relu);
}

void batchnorm_layer_relu_backward(const batchnorm_layer *bn, herbs_params *t, float *dx, const float *dout,
                                   const float *relu_out, const float *x, int rows, int accumulate)
{
    if (relu_out)
        batchnorm_layer_backward(bn, t, dx, dout, relu_out, x, rows, accumulate);
    else
        batchnorm_relu_backward_saved(dx, GRAD(t, bn->weight), GRAD(t, bn->bias), dout, x, PARAM(t, bn->weight),
                                      PARAM(t, bn->bias), bn->mean, bn->rstd, rows, bn->channels, accumulate);
}

void batchnorm_layer_backward(const batchnorm_layer *bn, herbs_params *t, float *dx, const float *dout,
                              const float *relu_out, const float *x, int rows, int accumulate)
{
    const int C = bn->channels;
    float *dw = GRAD(t, bn->weight), *db = GRAD(t, bn->bias);
    const float *w = PARAM(t, bn->weight);
    if (bn->train)
        batchnorm_backward(dx, dw, db, dout, relu_out, x, w, bn->mean, bn->rstd, rows, C, accumulate);
    else
        batchnorm_backward_eval(dx, dw, db, dout, relu_out, x, BUFFER(t, bn->running_mean),
                                BUFFER(t, bn->running_var), w, rows, C, bn->eps, accumulate);
}
