/* EfficientNet (torchvision's EfficientNet-B family, B7 by default) as a herbs backbone: a stem
   conv 3x3/2 - BN - SiLU, then seven stages of MBConv blocks (features.1..7); the taps are the
   outputs of stages 4..7 (features.4..features.7, as the release taps them), NHWC inside, so a
   tap is already [B, H_i·W_i, C_i]. The head conv (features.8) and classifier are not built. */
#ifndef HERBS_NN_EFFICIENTNET_H
#define HERBS_NN_EFFICIENTNET_H

#include "nn/backbone.h"

#define EFFNET_STAGES 7

/* Drop path's random stream of block `block` (its index over the whole net) at `step`. */
#define EFFNET_DROP_STREAM(step, block) (((uint64_t)(step) << 16) + (uint64_t)(block))

/* Config keys (defaults: EfficientNet-B7's, torchvision's table with width 2.0 and depth 3.1):
   img_size (224), in_chans (3), depths (7 ints: 4,7,7,10,10,13,4), channels (8 ints: the stem's
   then each stage's output, 64,32,48,80,160,224,384,640), kernels (7: 3,3,5,3,5,5,3), strides
   (7, each 1 or 2: 1,2,2,2,1,2,1), expand_ratios (7: 1,6,6,6,6,6,6), drop_path_rate (0.2: block
   i of n drops with 0.2·i/n, as torchvision's stochastic depth), bn_eps (1e-3) and bn_momentum
   (0.01: B5..B7's; B0..B4 use PyTorch's 1e-5 and 0.1).
   A block's expanded width is torchvision's _make_divisible(in·ratio, 8) (no expand conv when it
   equals in) and its squeeze width max(1, in/4). Tensors are torchvision's under `prefix`:
   features.0.{0,1}.*, features.{s}.{b}.block.{i}.{0,1}.* (expand, depthwise, project: conv and
   BN) and .block.{i}.fc{1,2}.{weight,bias} (squeeze-excitation). */
herbs_status efficientnet_backbone_create(herbs_backbone **out, herbs_config *config, herbs_params *t,
                                          const char *prefix);

#endif
