/* The HERBS head (SPEC.md §3): the layers between a backbone's four taps and the 17 outputs.
   Each part keeps what its backward needs from the last forward (pointers into the owner's
   arena); tensors live in the owner's parameter table under the release's names.
   Token features travel as [B, S, C] rows; a CNN tap's [B, H, W, C] (NHWC) is the same memory. */
#ifndef HERBS_NN_HEAD_H
#define HERBS_NN_HEAD_H

#include <stdint.h>

#include "core/arena.h"
#include "nn/backbone.h"
#include "nn/batchnorm_layer.h"
#include "nn/factored.h"
#include "nn/params.h"
#include "nn/product.h"

/* The arguments every head layer's forward and backward share. */
typedef struct head_ctx {
    herbs_params *t;
    herbs_arena *arena;   /* what must outlive the call: activations kept for backward */
    herbs_arena *scratch; /* temporaries of one layer call, which resets it on entry (factored.h) */
    int batch;
    int train; /* batch statistics and dropout (forward); which BatchNorm backward (backward) */
    float *spent; /* backward: NULL, or an arena block of spent_floats whose contents are spent; the
                     next term kept in the arena that fits it takes it instead of new memory */
    size_t spent_floats;
} head_ctx;

/* --- building blocks (head_layers.c) -------------------------------------------------------- */

/* Linear–ReLU–Linear on rows: the release's Proj_ layers, nn.Sequential(Linear, ReLU, Linear)
   or, with conv_shapes, nn.Sequential(Conv2d 1x1, ReLU, Conv2d 1x1) (weights [out, in, 1, 1]). */
typedef struct {
    herbs_weight linear0, linear2; /* {prefix}0 [hidden, in] and {prefix}2 [out, hidden] */
    int in, hidden, out;
    const float *x; /* last forward: input rows [rows, in] */
    void *h;        /* and post-ReLU hidden rows [rows, hidden]: bf16 bit patterns at bf16 (they only feed
                       products and the ReLU's mask, exactly as their fp32 values would), else fp32 */
    int rows;
    factored_use first; /* the first Linear's plan (factored.h) */
} head_mlp;

herbs_status mlp_init(head_mlp *m, herbs_params *t, const char *prefix, int in, int hidden, int out, int conv_shapes);
/* out[rows, out] = Linear2(ReLU(Linear0(x[rows, in]))); xf: x's factors, when x is such a sum
   (NULL: it is not), which the first Linear reads where factored_plan says so (x NULL: only they
   are there); out NULL: not formed, only its factors (h, Linear2) kept */
herbs_status mlp_forward(head_mlp *m, head_ctx *c, const float *x, const level_factors *xf, int rows, float *out);
/* dx (the input's gradient, level_grad) += from dout (the output's); parameter gradients accumulate */
herbs_status mlp_backward(head_mlp *m, head_ctx *c, const level_grad *dout, level_grad *dx);

/* A token classifier (the paper's k1/k2, the release's fpn_classifier_{down,up}_layer{i}):
   Conv1d(F, F, 1) – BatchNorm1d(F) – ReLU – Conv1d(F, classes, 1), per token. */
typedef struct {
    herbs_weight conv0, conv3; /* {prefix}0 [F, F, 1] and {prefix}3 [classes, F, 1] */
    batchnorm_layer bn;
    int channels, classes;
    const float *x; /* last forward: input rows, first conv's output (BN input; eval: NULL), post-ReLU rows
                       (train: NULL, made again from z by the backward) */
    float *z, *r;
    int rows;
    factored_use first; /* the first conv's plan (factored.h) */
} head_classifier;

herbs_status classifier_init(head_classifier *k, herbs_params *t, const char *prefix, int channels, int classes);
/* logits[rows, classes] from x[rows, F]; xf as in mlp_forward. With image_level (eval only), the
   logits' token mean per sample instead, logits[B, classes] for rows = B·tokens: the last conv is
   linear, so it runs on the token mean of its input (the same values up to rounding, 1/tokens of
   its work). */
herbs_status classifier_forward(head_classifier *k, head_ctx *c, const float *x, const level_factors *xf, int rows,
                                int image_level, float *logits);
/* dx (the input's gradient, level_grad) += from dlogits; parameter gradients accumulate */
herbs_status classifier_backward(head_classifier *k, head_ctx *c, const float *dlogits, level_grad *dx);

/* --- the two-way feature pyramid (fpn.c) ----------------------------------------------------- */

typedef enum {
    FPN_TOKENS = 0, /* Swin: Linear projections, token-axis Conv1d up (Up_layer) and down (Down_layer) */
    FPN_CNN,        /* ResNet: 1x1-conv projections, bilinear x2 up, 2x2 average-pool down */
} fpn_type;

typedef struct {
    fpn_type type;
    int size; /* F */
    int tokens[HERBS_TAPS], channels[HERBS_TAPS], height[HERBS_TAPS], width[HERBS_TAPS];
    head_mlp down_proj[HERBS_TAPS], up_proj[HERBS_TAPS];
    /* tap i (0-based) is layer{i+1}; tokens only: [i] holds Up_layer{i+1} = Conv1d(S_i -> S_{i-1}) for
       i >= 1 and Down_layer{i+1} = Conv1d(S_i -> S_{i+1}) for i <= 2, over the token axis */
    herbs_weight up[HERBS_TAPS], down[HERBS_TAPS];
    float *top_down[HERBS_TAPS];  /* last forward: FPN1 features [B, S_i, F] (the lowest NULL when only
                                     its factors are read: fpn.c) */
    float *bottom_up[HERBS_TAPS]; /* last forward: bottom-up features [B, S_i, F] */
} head_fpn;

/* Registers fpn_down.* for a backbone's taps (checks the CNN path's x2 geometry), then, in a
   second call (the release's order: the top-down classifiers come between), fpn_up.*. */
herbs_status fpn_down_init(head_fpn *f, herbs_params *t, const herbs_backbone *bb, fpn_type type, int size);
herbs_status fpn_up_init(head_fpn *f, herbs_params *t);
/* taps [B, S_i, C_i] -> f->top_down, f->bottom_up */
herbs_status fpn_forward(head_fpn *f, head_ctx *c, float *const taps[HERBS_TAPS]);
/* Once the top-down cascade has run: top-down level i as its factors (level_factors), or 0 where it is
   not such a sum (the token pyramid, the top level, a level on its upper neighbour's grid). */
int fpn_top_down_factors(const head_fpn *f, int i, level_factors *xf);
/* From the gradients from outside the pyramid, d_top_down (the top-down classifiers' contributions,
   terms among them) and d_bottom_up [B, S_i, F], which the cascades complete in place ->
   dtaps = [B, S_i, C_i] (written, not read). */
herbs_status fpn_backward(head_fpn *f, head_ctx *c, level_grad d_top_down[HERBS_TAPS],
                          float *const d_bottom_up[HERBS_TAPS], float *const dtaps[HERBS_TAPS]);

/* --- the selector (selector.c) --------------------------------------------------------------- */

typedef struct {
    int tokens[HERBS_TAPS], keep[HERBS_TAPS], classes, channels; /* channels: of the kept features (0: none) */
    int kept_total;  /* Σ keep */
    int *order[HERBS_TAPS]; /* last forward: token ranking [B, S_i], the first keep[i] are kept */
    float *kept;            /* last forward: kept features [B, Σ keep, channels], taps in order */
} head_selector;

void selector_init(head_selector *s, const int tokens[HERBS_TAPS], const int keep[HERBS_TAPS], int classes,
                   int channels);
/* From logits [B, S_i, classes] and features [B, S_i, channels] (NULL when channels is 0):
   selected [B, K_i, classes], dropped [B, S_i - K_i, classes], s->order, s->kept. */
herbs_status selector_forward(head_selector *s, head_ctx *c, float *const logits[HERBS_TAPS],
                              float *const features[HERBS_TAPS], float *const selected[HERBS_TAPS],
                              float *const dropped[HERBS_TAPS]);
/* dlogits += the scatter of dselected/ddropped; dfeatures += the scatter of dkept (NULLs allowed). */
herbs_status selector_backward(head_selector *s, head_ctx *c, float *const dselected[HERBS_TAPS],
                               float *const ddropped[HERBS_TAPS], const float *dkept,
                               float *const dlogits[HERBS_TAPS], float *const dfeatures[HERBS_TAPS]);

/* --- the GCN combiner (combiner.c) ----------------------------------------------------------- */

typedef struct {
    int nodes_in, nodes, channels, reduced, classes; /* ΣK, J = ΣK // 64, F, F // 4, classes */
    float dropout;
    size_t adj1, alpha1;
    herbs_weight pool0, conv1, conv_q, conv_k, pool1, cls;
    batchnorm_layer bn;
    uint64_t dropout_seed, dropout_stream; /* of the last forward */
    /* last forward */
    const float *x;
    float *h0, *q, *k, *adjacency, *h1, *h2, *h3, *h5;
    int dropped; /* dropout was applied */
} head_combiner;

herbs_status combiner_init(head_combiner *g, herbs_params *t, int nodes_in, int channels, int classes, float dropout);
/* kept [B, ΣK, F] -> out [B, classes]; dropout (train mode) keyed by (seed, stream) */
herbs_status combiner_forward(head_combiner *g, head_ctx *c, const float *kept, uint64_t seed, uint64_t stream,
                              float *out);
/* dkept [B, ΣK, F] += from dout [B, classes] */
herbs_status combiner_backward(head_combiner *g, head_ctx *c, const float *dout, float *dkept);

/* --- helpers ---------------------------------------------------------------------------------- */

/* count floats from the arena, zeroed when asked; HERBS_ERR_NOMEM (message set) when memory runs out */
herbs_status head_alloc(head_ctx *c, size_t count, int zero, float **out);
/* The same from the scratch arena, which holds one layer call's temporaries: the layers' forward and
   backward (and the FPN's cascade) empty it with head_scratch_begin on entry; the units they call
   (factored.h) allocate from it and never empty it. */
herbs_status head_scratch_begin(head_ctx *c);
herbs_status head_scratch(head_ctx *c, size_t count, int zero, float **out);

/* out[B, classes] = the product w on the token mean of x [B, S, C] (c->batch samples), the mean kept
   in *mean from the arena: an image-level head (the baseline's ori_out, an image-level classifier). */
herbs_status head_token_mean_product(head_ctx *c, herbs_weight *w, const float *x, int S, int C, float **mean,
                                     float *out);

/* A head product's weight [out, in] followed by `ones` (0, 1 or 2) dimensions of size 1 (Linear,
   Conv1d or Conv2d with kernel 1) and its bias [out], PyTorch's default init (for product_add). */
herbs_product_spec head_product_spec(int out, int in, int ones);

/* PyTorch's default initialiser of Linear/Conv weights and biases: U(-1/sqrt(fan_in), 1/sqrt(fan_in)). */
herbs_init head_default_init(int fan_in);

#endif
