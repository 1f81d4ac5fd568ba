/* A network as the binding sees it: built by kind from a config, it owns a parameter table,
   an arena of activations, and names its outputs. Swin and ResNet alone (for tests and
   benchmarks) and the whole HERBS model are all herbs_nets. */
#ifndef HERBS_NN_NET_H
#define HERBS_NN_NET_H

#include <stdint.h>

#include "core/arena.h"
#include "nn/config.h"
#include "nn/params.h"

#define HERBS_MAX_OUTPUTS 24
#define HERBS_MAX_PROBES 4
#define HERBS_OUTPUT_NAME_MAX 32

/* The element type of an output's values. */
typedef enum {
    HERBS_FLOAT32 = 0,
    HERBS_INT64, /* whole numbers (token indices, say): no gradient */
} herbs_dtype;

/* An output of the last forward pass; `data` and `grad` live in the net's arena. `grad` (float32
   outputs only; NULL for int64) is zeroed by forward; the caller (or a loss) fills it before
   backward. */
typedef struct {
    char name[HERBS_OUTPUT_NAME_MAX];
    herbs_dtype dtype;
    int ndim;
    int64_t shape[HERBS_MAX_DIMS];
    void *data; /* shape values of `dtype` */
    float *grad;
} herbs_output;

#define HERBS_MAX_LOSS_TERMS 8
#define HERBS_LOSS_NAME_MAX 16

/* The terms of a training objective, by name ("total" first). */
typedef struct {
    int count;
    char name[HERBS_MAX_LOSS_TERMS][HERBS_LOSS_NAME_MAX];
    double value[HERBS_MAX_LOSS_TERMS];
} herbs_loss_terms;

/* What a training objective compares with, per image: a class index (labels [batch]), or a
   distribution over the classes (probs [batch, classes], row-major: label smoothing and mixup's
   mixed targets). Exactly one of the two is set. */
typedef struct {
    const int64_t *labels;
    const float *probs;
    int classes; /* the columns of probs */
} herbs_targets;

typedef struct herbs_net herbs_net;

/* What a kind implements: it only computes. net.c runs the lifecycle around it (checks, arena,
   outputs, step counter, one backward per forward) and calls these at most once per step. */
typedef struct {
    const char *kind;
    /* images [B, 3, H, W] (NCHW, as PyTorch) -> net->outputs (net_add_output) and probes. Called
       with a fresh arena and no outputs; net->step is the step of this pass. */
    herbs_status (*forward)(herbs_net *net, const float *images, int batch, int train);
    /* From the output gradients to the parameter gradients (accumulated); adds the image
       gradient [B, 3, H, W] into dimages unless it is NULL; fills each probe's grad when
       net->probe_backward is set. Goes back through the last forward (net->forward_batch images). */
    herbs_status (*backward)(herbs_net *net, float *dimages);
    void (*destroy)(herbs_net *net); /* frees what the kind added; net_free does the rest */
    /* Optional (NULL when the kind has no objective): the training objective of the last forward
       for `batch` targets (class indices or distributions) with kind-specific `options` (numbers;
       unknown keys are rejected). Fills `terms` and writes the outputs' gradients (zero on entry)
       with the objective's gradient, so that backward completes a training step. With check_only
       it only validates targets and options (batch is then the batch about to be forwarded) and
       changes nothing. */
    herbs_status (*loss)(herbs_net *net, const herbs_targets *targets, int batch, herbs_config *options,
                         int check_only, herbs_loss_terms *terms);
} herbs_net_ops;

struct herbs_net {
    const herbs_net_ops *ops;
    herbs_params params;
    herbs_arena arena;
    int in_channels, height, width; /* the image size this net takes */
    int n_outputs;
    herbs_output outputs[HERBS_MAX_OUTPUTS];
    /* Activations inside the net that a caller may inspect with their gradients (the backbone's
       taps, for heat maps): data from the last forward; grad set by a backward in probe mode. */
    int n_probes;
    herbs_output probes[HERBS_MAX_PROBES];
    /* The lifecycle's state, kept by net.c alone (kinds read it): */
    int probe_backward;    /* set for one backward: also keep the whole gradient at each probe */
    int forward_batch;     /* batch of the last forward; 0 when there is none to go back through */
    int image_level;       /* the last forward's image_level (net_forward), which the kinds read */
    int backward_done;     /* set by net_backward, cleared by net_forward */
    herbs_precision forward_precision; /* the last forward's: its backward computes at it, since what the
                                          forward saved is in that precision's types (bf16 activations) */
    int output_grads_zero; /* every output's gradient is still the forward's zeros (none written since) */
    uint64_t seed;         /* random streams (drop path, dropout) are keyed by (seed, step, layer) */
    uint64_t step;         /* counts forward passes in train mode (net_forward adds 1 after each) */
    void *impl;            /* the kind's own state */
};

/* Builds a net of `kind` (see registry.h) from `config`, parameters initialised from `seed`. */
herbs_status net_create(herbs_net **out, const char *kind, herbs_config *config, uint64_t seed);
void net_free(herbs_net *net);

/* Sets the state that keys the random streams (a checkpoint's `seed` and `step`, say): the next
   train-mode forward draws the dropout and drop-path masks of `step` under `seed`, as the net that
   saved them would have. The parameters, the last forward and its saved masks are unchanged. */
void net_set_random_state(herbs_net *net, uint64_t seed, uint64_t step);

/* --- the lifecycle: forward -> objective -> backward ------------------------------------------ */

/* images [batch, C, H, W] -> net->outputs and probes (valid until the next forward). Forgets the
   last forward (arena, outputs, gradients); in train mode the step counter then advances. With
   image_level (eval only), heads whose token logits only ever serve as their token mean in a
   prediction give that mean alone ([B, 1, classes]; herbs: FPN1_layer*); no objective or backward
   follows such a forward. */
herbs_status net_forward(herbs_net *net, const float *images, int batch, int train, int image_level);

/* Whether net_backward may run now (a forward to go back through, not yet gone back through;
   probes when probe_grads is set): HERBS_OK or the error net_backward would return. */
herbs_status net_backward_ready(const herbs_net *net, int probe_grads);

/* The gradient of output `name` for the caller to write before net_backward (float32 outputs
   only); the outputs not written keep theirs. */
herbs_status net_output_grad(herbs_net *net, const char *name, herbs_output **out);

/* One backward per forward: from the outputs' gradients to the parameter gradients (which
   accumulate), the image gradient added into dimages [batch, C, H, W] unless it is NULL; with
   probe_grads also each probe's whole gradient. It computes at the forward's precision (a precision
   set in between takes effect at the next forward). */
herbs_status net_backward(herbs_net *net, float *dimages, int probe_grads);

/* Whether net_loss may run now (the kind has an objective, a forward was made). */
herbs_status net_loss_ready(const herbs_net *net);

/* The kind's objective of the last forward for `batch` targets: fills `terms` and replaces the
   outputs' gradients with the objective's (nothing changes when targets or options are bad). */
herbs_status net_loss(herbs_net *net, const herbs_targets *targets, int batch, herbs_config *options,
                      herbs_loss_terms *terms);

/* A training step: targets and options checked before any work, then forward, objective, backward
   (parameter gradients accumulate). */
herbs_status net_train_step(herbs_net *net, const float *images, int batch, int train, const herbs_targets *targets,
                            herbs_config *options, herbs_loss_terms *terms);

/* --- for the kinds ------------------------------------------------------------------------------ */

/* Adds an output [shape] of `dtype` (float32 ones with a zeroed gradient from the arena); its
   data is `data` (memory that lives until the next forward, e.g. an activation the net keeps) or,
   when NULL, fresh arena memory for the caller to fill. Returns it. */
herbs_status net_add_output(herbs_net *net, const char *name, herbs_dtype dtype, int ndim, const int64_t *shape,
                            void *data, herbs_output **out);

#endif
