/* A backbone: images in, four taps out, and back again (SPEC.md §1–2). Swin and ResNet
   implement it; the HERBS model and the standalone backbone nets drive it. Its tensors live in
   the owner's parameter table under a prefix ("backbone." inside the HERBS model), its saved
   activations and scratch in the owner's arena. */
#ifndef HERBS_NN_BACKBONE_H
#define HERBS_NN_BACKBONE_H

#include <stdint.h>

#include "core/arena.h"
#include "nn/config.h"
#include "nn/net.h"
#include "nn/params.h"

#define HERBS_TAPS 4

typedef struct herbs_backbone herbs_backbone;

typedef struct {
    /* images [B, in_channels, img_size, img_size] (NCHW, as the user gives them) ->
       taps[i] [B, tap_tokens[i], tap_channels[i]] (row-major, token = row-major position on the
       tap's tap_height x tap_width grid), allocated from `arena`. Train mode uses batch
       statistics and drop path keyed by (seed, step). */
    herbs_status (*forward)(herbs_backbone *bb, const herbs_params *t, herbs_arena *arena, const float *images,
                            int batch, int train, uint64_t seed, uint64_t step, float *taps[HERBS_TAPS]);
    /* dtaps[i] [B, S_i, C_i], or NULL for a tap without gradient -> parameter gradients
       accumulated into t->grads; the image gradient [B, in_channels, H, W] added into dimages
       unless it is NULL. tap_grads (NULL, or entries NULL for taps not wanted) receives the whole
       gradient at each tap: its dtaps plus what flows back from the stages above (heat maps).
       Goes back through the last forward; scratch comes from `arena`. */
    herbs_status (*backward)(herbs_backbone *bb, herbs_params *t, herbs_arena *arena,
                             const float *const dtaps[HERBS_TAPS], float *dimages, float *tap_grads[HERBS_TAPS]);
    void (*destroy)(herbs_backbone *bb); /* frees bb and what it owns */
} herbs_backbone_ops;

struct herbs_backbone {
    const herbs_backbone_ops *ops;
    int in_channels, img_size;
    int tap_tokens[HERBS_TAPS], tap_channels[HERBS_TAPS];
    int tap_height[HERBS_TAPS], tap_width[HERBS_TAPS];
};

/* Copies the whole gradient at tap i into tap_grads[i] if it is wanted (zeros when `grad` is
   NULL): the backbones' shared step for the tap_grads of backward. */
void backbone_keep_tap_grad(const herbs_backbone *bb, float *tap_grads[HERBS_TAPS], int i, int batch, const float *grad);

/* Constructors (one per backbone, listed in registry.c): read the backbone's keys from `config`
   (leaving unknown keys for the caller to reject), register tensors in `t` under `prefix`. */
typedef herbs_status (*herbs_backbone_create_fn)(herbs_backbone **out, herbs_config *config, herbs_params *t,
                                                 const char *prefix);

#endif
