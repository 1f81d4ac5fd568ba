/* The smallest backbone: each tap is a strided patch convolution of the image,
   Conv2d(3, C_i, p_i, stride p_i) with p_i = img_size / grid_i, as tokens [B, grid_i², C_i].
   It lets the HERBS head be tested and timed on its own, against a two-line PyTorch reference.
   Config: img_size (32), patch_grid (4 ints, (8, 4, 2, 2)), patch_channels (4 ints, (8, 16, 32, 32)).
   Tensors: {prefix}tap{1..4}.weight [C_i, 3, p_i, p_i] and .bias [C_i]. */
#ifndef HERBS_NN_PATCHES_H
#define HERBS_NN_PATCHES_H

#include "nn/backbone.h"

herbs_status patches_backbone_create(herbs_backbone **out, herbs_config *config, herbs_params *t, const char *prefix);

#endif
