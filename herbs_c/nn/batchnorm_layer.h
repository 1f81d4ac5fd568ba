/* BatchNorm as a layer, PyTorch's BatchNorm1d/2d over the rows of [rows, C] (channels last: a
   [B, H, W, C] map or [B, L, C] tokens is rows = B·H·W or B·L): its tensors in the parameter
   table, the train-mode forward, the eval-mode fold into the product before it, and the backward
   of either. The head (classifiers, combiner) and ResNet use it. */
#ifndef HERBS_NN_BATCHNORM_LAYER_H
#define HERBS_NN_BATCHNORM_LAYER_H

#include <stdint.h>

#include "core/arena.h"
#include "nn/params.h"

#define BN_EPS 1e-5f      /* PyTorch's defaults, which a BatchNorm has unless its owner sets eps and */
#define BN_MOMENTUM 0.1f  /* momentum after init (EfficientNet-B5..B7: 1e-3 and 0.01, as torchvision) */

typedef struct {
    size_t weight, bias, running_mean, running_var, num_batches_tracked;
    int channels;
    float eps, momentum; /* BN_EPS and BN_MOMENTUM from init */
    /* the last forward */
    int train;          /* batch statistics (1), or the running ones folded into a product (0) */
    float *mean, *rstd; /* [channels]: train mode's batch statistics, in the arena */
} batchnorm_layer;

/* Registers {prefix}{name}.weight, .bias, .running_mean, .running_var, .num_batches_tracked. */
herbs_status batchnorm_layer_init(batchnorm_layer *bn, herbs_params *t, const char *prefix, const char *name,
                                  int channels);

/* out[rows, C] = BN(x[rows, C]), through a ReLU when relu is set. Train mode: batch statistics
   (kept for the backward), running statistics and num_batches_tracked updated. Eval mode: the
   running statistics, without ReLU (a BN+ReLU in eval mode is folded: batchnorm_layer_fold). */
herbs_status batchnorm_layer_forward(batchnorm_layer *bn, const herbs_params *t, herbs_arena *arena, int train,
                                     const float *x, int rows, float *out, int relu);

/* Eval mode, folded into the product y before it: BN(y + bias) = y·scale + shift, with scale[C],
   shift[C] from the running statistics and `bias` (y's, NULL: none), in the arena; the product
   applies them (and a ReLU) as it stores. Records an eval-mode forward for the backward. */
herbs_status batchnorm_layer_fold(batchnorm_layer *bn, const herbs_params *t, herbs_arena *arena, const float *bias,
                                  float **scale, float **shift);

/* The last train-mode forward's input x[rows, C] kept in bf16 (kept[rows, C], centred on the batch
   mean: batchnorm_input_keep_bf16), and made fp32 again for the backward (within 2^-8 of each
   value's deviation from the mean). */
void batchnorm_layer_keep_input(const batchnorm_layer *bn, const float *x, int rows, uint16_t *kept);
void batchnorm_layer_input_again(const batchnorm_layer *bn, const uint16_t *kept, int rows, float *x);

/* The last train-mode forward's out again (its batch statistics, bits and ReLU: the same bits when x
   is the forward's), into out[rows, C]. */
void batchnorm_layer_forward_again(const batchnorm_layer *bn, const herbs_params *t, const float *x, int rows,
                                   float *out, int relu);

/* batchnorm_layer_backward through the BN's own ReLU (relu set in the forward): the mask from
   relu_out, its output, when it was kept; else (relu_out NULL, after a train-mode forward) from that
   output made again from x. dx may be dout or x. */
void batchnorm_layer_relu_backward(const batchnorm_layer *bn, herbs_params *t, float *dx, const float *dout,
                                   const float *relu_out, const float *x, int rows, int accumulate);

/* The backward of the last forward (or fold): dx[rows, C] += (accumulate set) or = (not read) d(x)
   from dout, with x the BN input; relu_out, when not NULL, is the output of a ReLU downstream of
   the BN (its own, or after a residual add) whose mask is applied to dout on the fly. Weight and
   bias gradients accumulate. dx may be dout or x. */
void batchnorm_layer_backward(const batchnorm_layer *bn, herbs_params *t, float *dx, const float *dout,
                              const float *relu_out, const float *x, int rows, int accumulate);

#endif
