/* ResNet (torchvision's v1.5 bottleneck ResNet; ResNet-50 by default) as a herbs backbone:
   taps are the outputs of the four stages, NHWC inside, so a tap is already [B, H_i·W_i, C_i]. */
#ifndef HERBS_NN_RESNET_H
#define HERBS_NN_RESNET_H

#include "nn/backbone.h"

/* Config keys: img_size (224), in_chans (3), depths (4 ints, 3,4,6,3), width (64: the stem's
   channels and stage 1's bottleneck width; stage i has width·2^(i-1), outputs 4× that).
   Tensors are torchvision's: conv1.weight, bn1.*, layer{i}.{b}.conv{1,2,3}.weight, .bn{1,2,3}.*,
   layer{i}.0.downsample.{0,1}.*, under `prefix`. */
herbs_status resnet_backbone_create(herbs_backbone **out, herbs_config *config, herbs_params *t,
                                    const char *prefix);

#endif
