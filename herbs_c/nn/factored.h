/* Products over factored rows: the CNN pyramid's top-down levels (README, Performance).
   A top-down CNN level on twice its upper neighbour's grid is the sum it was made of,
       x[rows, F] = h·Wᵀ + b + up2x(upper),
   h [rows, hidden] and W, b the level's projection's hidden rows and second Linear (fpn.c's
   fpn_top_down_factors). A product x·Aᵀ (A [N, F]) is then h·(A·W)ᵀ + up2x(upper·Aᵀ) + A·b: products
   over `hidden` channels and over the upper level's four times fewer rows instead of one over
   rows x F, fewer multiply-adds when hidden is small next to F (ResNet-50's layer1: 256 channels,
   F = 2048). Its backward goes through the same factors: dA += (dyᵀ·h)·Wᵀ + (Σ dy)·bᵀ +
   up2x_backward(dy)ᵀ·upper, and where that pays more, dx = dy·A is never formed but handed on as a
   term (grad_term) to those that read dx: the level's projection (dy·(A·W), Aᵀ·(dyᵀ·h), Aᵀ·Σ dy)
   and the cascade into the upper level (up2x_backward(dy)·A). The same values up to float rounding.

   The pieces: level_factors (what x is made of); factored_use (one product's plan, decided once per
   forward by factored_plan, and what its backward needs); level_grad (the gradient of a level: a
   dense part and terms) with the two consumers of terms.

   Memory (head_ctx: the arena lives until the next forward, the scratch holds one call's temporaries):
   - in the arena, kept from the forward for the backward: A·W (factored_forward), A·b + bias
     (factored_bias); made in the backward and read later in it: a level gradient's dense part
     (allocated by its first dense contribution, level_grad_dense / level_grad_dense_zeroed), and a
     term: its dy (where factored_dy puts it when the plan hands dx on), dyᵀ·h and Σ dy.
   - in the scratch: upper·Aᵀ in the forward; dy when it is not handed on; dyᵀ·h, Σ dy and
     up2x_backward(dy) of a backward that forms dx; up2x_backward(dy) in level_grad_up2x_backward.
   - The unit never resets the scratch. Its callers do, on entry, before their own scratch
     allocations: the layers' forward and backward (head_layers.c), the FPN's cascade before
     level_grad_up2x_backward. So a dy that a layer put in the scratch outlives the unit's calls.
   - Aliasing: a level_factors points into the arena (h, upper: the last forward's) and at a weight
     handle (W, b); nothing the unit writes aliases what it reads; a term's dy is its own buffer (dx is
     never formed); a level_grad's dense part is its own or a buffer its owner gave it.
   - Lifetime: a factored_use holds from its layer's forward to the next forward; a term from the
     backward that hands it on to the end of the net's backward (its two consumers run within it). */
#ifndef HERBS_NN_FACTORED_H
#define HERBS_NN_FACTORED_H

#include <stddef.h>

#include "core/error.h"
#include "nn/product.h"

typedef struct head_ctx head_ctx; /* nn/head.h */

/* x[rows, F] = h·Wᵀ + b + up2x(upper) */
typedef struct {
    const void *h;          /* [rows, hidden]: bf16 bit patterns at bf16, else fp32 (head_mlp's h) */
    const herbs_weight *w;  /* W [F, hidden] and b [F] */
    int hidden;
    const float *upper; /* [batch, height, width, F], x2 bilinear to x's grid */
    int height, width;
} level_factors;

/* One product x·Aᵀ of a layer whose input may be a factored level: its plan for the last forward. */
typedef struct {
    int factored;     /* the forward and the weight gradient go through x's factors */
    int term;         /* and the backward hands dx on as a term (factored only) */
    level_factors xf; /* when factored: x's factors */
    const float *aw;  /* and A·W [N, hidden] (arena), from the forward */
} factored_use;

/* A gradient with respect to rows x[rows, F] kept as the product dy·A (dy [rows, n], A [n, F]),
   with what the level's projection needs of it, made once: A·W and dyᵀ·h [n, hidden], Σ dy [n]. */
typedef struct {
    const float *dy, *a;
    int n;
    const float *aw, *dy_h, *dy_sum;
} grad_term;

#define LEVEL_TERMS 2 /* a top-down level's readers: the bottom-up projection and the top-down classifier */

/* The gradient of rows [rows, F] (a pyramid level, a tap): a dense part, written by its first
   contribution and added to by the others, plus the terms the products that read the rows handed on. */
typedef struct {
    float *dense;  /* [rows, F]: the owner's, or NULL until the first dense contribution allocates it (arena) */
    size_t size;   /* rows x F */
    int written;   /* dense holds a contribution (the owner's buffer may come written) */
    int count;     /* terms */
    grad_term terms[LEVEL_TERMS];
} level_grad;

/* --- the cost rule ------------------------------------------------------------------------------- */

/* Plans x·Aᵀ (x [rows, F]) for this forward, once, from xf (NULL: x is not such a sum): through the
   factors when that takes fewer multiply-adds by a margin, and then also the backward's dx as a term
   when that is cheaper still. Returns u->factored. */
int factored_plan(factored_use *u, const head_ctx *c, const level_factors *xf, int rows, int F);

/* Whether factored_plan takes the factors for such a product (what it returns, without a plan). */
int factored_pays(const head_ctx *c, const level_factors *xf, int rows, int F);

/* --- forward (u->factored) ----------------------------------------------------------------------- */

/* *out[N] = A·b + bias (a: A [N, F] and bias), in the arena: the bias of x·Aᵀ + bias through x's factors */
herbs_status factored_bias(const factored_use *u, head_ctx *c, herbs_weight *a, float **out);
/* out[rows, N] = (h·(A·W)ᵀ + up2x(upper·Aᵀ))·scale + shift, then ReLU with relu (scale NULL: none):
   x·Aᵀ but for its constant part A·b, which shift carries as it would carry a bias (factored_bias,
   then through an eval-mode BatchNorm's folding); keeps A·W in u (arena). The products run at the
   net's precision (A·W, of two weights, in fp32). */
herbs_status factored_forward(factored_use *u, head_ctx *c, const herbs_weight *a, int rows, float *out,
                              const float *scale, const float *shift, int relu);

/* --- backward ------------------------------------------------------------------------------------ */

/* *dy = count floats for the gradient of the product's output, to be filled by the layer before
   factored_backward: in the arena when u hands dx on (the term keeps dy), else in the scratch. */
herbs_status factored_dy(const factored_use *u, head_ctx *c, size_t count, float **dy);
/* The backward of x·Aᵀ + bias (x [rows, F], a: A [N, F] and bias) from dy [rows, N], as u's plan says:
   dA += dyᵀ·x, dbias += Σ dy into the gradient block and dx += dy·A, on x itself (not factored:
   product_rows_backward) or through x's factors, where dx is formed (level_grad_dense) or handed on
   as the term dy·A (u->term). The products over rows run at the net's precision, those of weights
   with weights in fp32, as in the forward. */
herbs_status factored_backward(const factored_use *u, head_ctx *c, const float *dy, const float *x, herbs_weight *a,
                               int rows, level_grad *dx);

/* --- the gradient of a level ---------------------------------------------------------------------- */

/* *dense = g's dense part for a contribution that writes it (*accumulate 0) or adds to it (1) */
herbs_status level_grad_dense(level_grad *g, head_ctx *c, float **dense, int *accumulate);
/* *dense = g's dense part for a contribution that only adds (zero-filled if nothing is written yet) */
herbs_status level_grad_dense_zeroed(level_grad *g, head_ctx *c, float **dense);

/* The consumers of terms. The product that made the level, out = inp·Wᵀ + b (inp [rows, in],
   w: W [out, in] and b), whose output's gradient is g (inp and W are the terms' factors h and W):
   dinp = g·W (written, not read), dW += gᵀ·inp, db += Σ g; g holds a contribution at least; inp fp32
   or, with inp_bf16 (at bf16), bf16 bit patterns */
void level_grad_linear_backward(const level_grad *g, head_ctx *c, float *dinp, herbs_weight *w, const void *inp,
                                int inp_bf16, int rows);
/* The cascade from the upper level [batch, H, W, F]: d_upper += up2x_backward(dyⱼ)·Aⱼ over g's terms
   (the dense part goes through the cascade's own backward, fpn.c) */
herbs_status level_grad_up2x_backward(const level_grad *g, head_ctx *c, int H, int W, int F, float *d_upper);

#endif
