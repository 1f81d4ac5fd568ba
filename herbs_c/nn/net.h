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
#define HERBS_OUTPUT_NAME_MAX 32

/* An output of the last forward pass; `data` and `grad` live in the net's arena. `grad` is
   zeroed by forward; the caller (or a loss) fills it before backward. */
typedef struct {
    char name[HERBS_OUTPUT_NAME_MAX];
    int ndim;
    int64_t shape[HERBS_MAX_DIMS];
    float *data;
    float *grad;
} herbs_output;

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
} herbs_net_ops;

struct herbs_net {
    const herbs_net_ops *ops;
    herbs_params params;
    herbs_arena arena;
    int in_channels, height, width; /* the image size this net takes */
    int n_outputs;
    herbs_output outputs[HERBS_MAX_OUTPUTS];
    int forward_batch;  /* batch of the last forward; 0 when there is none to go back through */
    int backward_done;  /* set by backward, cleared by forward */
    uint64_t seed;      /* random streams (drop path, dropout) are keyed by (seed, step, layer) */
    uint64_t step;      /* counts forward passes in train mode */
    void *impl;         /* the kind's own state */
};

/* Builds a net of `kind` ("swin", "resnet", "herbs", ...) from `config`, parameters
   initialised from `seed`. */
herbs_status net_create(herbs_net **out, const char *kind, herbs_config *config, uint64_t seed);
void net_free(herbs_net *net);

/* Starts a forward pass: checks the batch, resets the arena, forgets old outputs. */
herbs_status net_begin_forward(herbs_net *net, int batch);

/* Adds an output [shape] with data and a zeroed gradient from the arena; returns it. */
herbs_status net_add_output(herbs_net *net, const char *name, int ndim, const int64_t *shape, herbs_output **out);

/* The kinds, each in its own file: `create` fills a net whose params/arena are initialised. */
typedef herbs_status (*herbs_net_create_fn)(herbs_net *net, herbs_config *config);

#endif
