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

/* An output of the last forward pass; `data` and `grad` live in the net's arena. `grad` is
   zeroed by forward; the caller (or a loss) fills it before backward. */
typedef struct {
    char name[HERBS_OUTPUT_NAME_MAX];
    int ndim;
    int64_t shape[HERBS_MAX_DIMS];
    float *data;
    float *grad;
    int integer; /* the values are whole numbers (token indices, say): returned as int64, no gradient */
} herbs_output;

#define HERBS_MAX_LOSS_TERMS 8
#define HERBS_LOSS_NAME_MAX 16

/* The terms of a training objective, by name ("total" first). */
typedef struct {
    int count;
    char name[HERBS_MAX_LOSS_TERMS][HERBS_LOSS_NAME_MAX];
    double value[HERBS_MAX_LOSS_TERMS];
} herbs_loss_terms;

typedef struct herbs_net herbs_net;

typedef struct {
    const char *kind;
    /* images [B, 3, H, W] (NCHW, as PyTorch); resets the arena, fills net->outputs. */
    herbs_status (*forward)(herbs_net *net, const float *images, int batch, int train);
    /* From the output gradients to the parameter gradients (accumulated); adds the image
       gradient [B, 3, H, W] into dimages unless it is NULL. Needs a forward in train mode
       or eval mode before it, and at most one backward per forward. */
    herbs_status (*backward)(herbs_net *net, float *dimages);
    void (*destroy)(herbs_net *net); /* frees what the kind added; net_free does the rest */
    /* Optional (NULL when the kind has no objective): the training objective of the last forward
       for labels [batch] (class indices) with kind-specific `options` (numbers; unknown keys are
       rejected). Fills `terms` and sets the outputs' gradients to the objective's gradient, so that
       backward completes a training step. With check_only it only validates labels and options
       (batch is then the batch about to be forwarded) and changes nothing. */
    herbs_status (*loss)(herbs_net *net, const int64_t *labels, int batch, herbs_config *options, int check_only,
                         herbs_loss_terms *terms);
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
    int probe_backward; /* set for one backward: also keep the whole gradient at each probe */
    int forward_batch;  /* batch of the last forward; 0 when there is none to go back through */
    int backward_done;  /* set by backward, cleared by forward */
    int output_grads_zero; /* every output's gradient is still the forward's zeros (none written since) */
    uint64_t seed;      /* random streams (drop path, dropout) are keyed by (seed, step, layer) */
    uint64_t step;      /* counts forward passes in train mode */
    void *impl;         /* the kind's own state */
};

/* Builds a net of `kind` (see registry.h) from `config`, parameters initialised from `seed`. */
herbs_status net_create(herbs_net **out, const char *kind, herbs_config *config, uint64_t seed);
void net_free(herbs_net *net);

/* Starts a forward pass: checks the batch, resets the arena, forgets old outputs. */
herbs_status net_begin_forward(herbs_net *net, int batch);

/* Adds an output [shape] with a zeroed gradient from the arena; its data is `data` (memory that
   lives until the next forward, e.g. an activation the net keeps) or, when NULL, fresh arena
   memory for the caller to fill. Returns it. */
herbs_status net_add_output(herbs_net *net, const char *name, int ndim, const int64_t *shape, float *data,
                            herbs_output **out);

#endif
