/* Every network kind net_create can build and every backbone, by name, in one place (registry.c).
   The kinds are "linear" and "herbs", each with code of its own, and every backbone alone
   ("swin", "resnet", "patches", "vit": a net whose outputs layer1..layer4 are the backbone's taps,
   backbone_net.c). The HERBS model's `backbone` is chosen from the same list, the first being
   its default.

   Adding a backbone in C (ConvNeXt, say):
   1. One file, nn/convnext.c, and its header nn/convnext.h: a herbs_backbone (nn/backbone.h) —
      forward from images to the four taps [B, S_i, C_i], backward from the taps' gradients,
      destroy — and its create function
          herbs_status convnext_backbone_create(herbs_backbone **out, herbs_config *config,
                                                herbs_params *t, const char *prefix);
      which reads its own config keys (leaving the others for its owner to accept or reject),
      sets in_channels, img_size and each tap's tokens, channels, height and width, and registers
      its tensors in `t` under `prefix` by the PyTorch names of the model it ports (timm's or
      torchvision's, so that their checkpoints load by name). Kernels it needs and the engine
      lacks go to kernels/, each with its own tests.
   2. One line in backbones[] (registry.c): {"convnext", convnext_backbone_create, FPN_CNN}, with
      the pyramid that suits its taps (FPN_CNN for 2-D feature maps, FPN_TOKENS for token
      sequences). Net("convnext", config) and Net("herbs", {"backbone": "convnext", ...}) then
      exist; setup.py compiles every .c under herbs_c/, so the build needs no change.
   3. Tests: the backbone alone against its PyTorch model, outputs and every gradient
      (tests/test_resnet.py and tests/test_swin.py are the pattern, with a reference in
      tests/reference_*.py), and the HERBS model over it (tests/test_herbs_backbones.py).
   The Python side (a spec in python/herbs/backbones/: names, settings, unused checkpoint keys,
   conversion) and the whole walk-through are in docs/BACKBONES.md. */
#ifndef HERBS_NN_REGISTRY_H
#define HERBS_NN_REGISTRY_H

#include "nn/backbone.h"
#include "nn/head.h"
#include "nn/net.h"

typedef struct {
    const char *name;                /* of the net kind and of the HERBS model's `backbone` choice */
    herbs_backbone_create_fn create; /* see backbone.h */
    fpn_type pyramid;                /* the feature pyramid that suits its taps: the HERBS model's default */
} backbone_spec;

/* Fills a fresh net of `kind` (its ops, image size, impl and tensors in net->params, which
   net_create then allocates); an error naming the known kinds when there is no such kind. */
herbs_status registry_create(herbs_net *net, const char *kind, herbs_config *config);

/* The backbone that config `key` names (the first backbone when it is not given); an error
   naming the known backbones when there is no such backbone. */
herbs_status registry_backbone(herbs_config *config, const char *key, const backbone_spec **out);

/* The constructors of the kinds, each in its own file. */
herbs_status linear_net_create(herbs_net *net, herbs_config *config);
herbs_status herbs_net_create(herbs_net *net, herbs_config *config);
herbs_status backbone_net_create(herbs_net *net, herbs_config *config, const backbone_spec *spec);

#endif
