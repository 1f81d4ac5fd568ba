/* Weight-bearing products through handles. A layer names each product's weight (and bias) by a
   herbs_weight: offsets into the parameter table, the product's shape as a GEMM operand, and
   the packed forms made from the weight, each tagged with the table version it was made from.
   Layers call product_* with a precision (herbs_precision, params.h: the net's is t->precision);
   they never see a packed form, so a precision changes this file, the table and the GEMM, not
   the layers.

   Staleness rule: a packed form is used only while its tag equals t->version, and every write
   path bumps the version (params_written): initialisation, the optimiser steps, state-dict and
   pretrained loads, and — because C cannot see writes through NumPy views of the parameter
   block — the binding before a call that computes (forward, train_step) when a view of the
   block was handed out since the last such call or is alive now (py/net.c). So no stale pack
   can be observed through the public API, and with no view held the packs serve call after
   call. A backward computes with the weights its forward saw:
   writing parameters between a forward and its backward is not part of the contract (as in
   PyTorch, which refuses to differentiate through a tensor modified in place).

   The packed forms live in the table's packed block (params.h: mapped lazily, so a form takes
   memory only once it is made; freed with the table, i.e. with the net). */
#ifndef HERBS_NN_PRODUCT_H
#define HERBS_NN_PRODUCT_H

#include <stdint.h>

#include "nn/params.h"

#define HERBS_NO_TENSOR ((size_t)-1) /* an absent tensor's offset (no bias, no packed form) */

/* A product's weight and bias as PyTorch registers them: {name}.weight [out, in] (Linear),
   [out, in, k] (Conv1d) or [out, in, k, k] (Conv2d), and {name}.bias [out] when bias is set. */
typedef struct {
    int out, in;
    int kernel_dims;    /* 0 Linear, 1 Conv1d, 2 Conv2d */
    int k, stride, pad; /* a convolution's geometry (k 0: a Linear's, 1, 1, 0) */
    int patch_rows;     /* a Conv2d whose input comes as its patch matrix in PyTorch's (c, ky, kx)
                           order (product_rows_forward), not as NHWC images: the weight is used as it is */
    int bias;
    herbs_init weight_init, bias_init;
} herbs_product_spec;

/* A packed form of a weight: `floats` floats at `offset` in the table's packed block. */
typedef struct {
    size_t offset, floats;
    uint64_t version; /* the table version it was made from; 0: never made */
} herbs_packed_form;

typedef struct {
    size_t weight, bias;         /* offsets into the parameter block; bias HERBS_NO_TENSOR: none */
    int out, in, k, stride, pad; /* the GEMM operand is [out, k·k·in] */
    herbs_packed_form ohwi;      /* a k×k conv's weight in the compute layout OHWI (k > 1 only) */
    herbs_packed_form gemm[HERBS_PRECISIONS]; /* op(B) = Wᵀ [k·k·in, out] (compute layout) packed for the
                                                 GEMM of each precision (gemm_prepack_b; made by the rows and
                                                 k×k products, reserved for every weight: mapped lazily) */
} herbs_weight;

/* Registers {prefix}{name}.weight (and .bias) with spec's shapes and initialisers, reserves
   the packed forms the product will use, and fills w. */
herbs_status product_add(herbs_params *t, herbs_weight *w, const char *prefix, const char *name,
                         herbs_product_spec spec);

/* --- rows: x [rows, in·k·k] (a Linear; a conv's patch matrix in the weight's order) ------- */

/* out[rows, out] = x·Wᵀ + bias, then per output column ·scale + shift and ReLU when relu is set
   (scale NULL: 1). A shift replaces the bias (a folded BatchNorm folds the bias into it). */
void product_rows_forward(herbs_weight *w, const herbs_params *t, herbs_precision p, float *out, const float *x,
                          int rows, const float *scale, const float *shift, int relu);

/* Makes the packed form product_rows_forward at precision p reads, if it is not current: after
   this, threads may call product_rows_forward on the weight at once (the form is only read). */
void product_rows_prepare(herbs_weight *w, const herbs_params *t, herbs_precision p);

/* out[rows, out] = x·Wᵀ + bias at t->precision, x fp32 or, with x_bf16 (at bf16), already rounded to
   bf16 (bit patterns): the same bits as on the fp32 x of those values, from half the bytes. For
   inputs that only feed products (transformer_block.h). HERBS_ERR_NOMEM (out unspecified) when no
   memory for packing a bf16 x could be had. */
herbs_status product_rows_forward_input(herbs_weight *w, const herbs_params *t, float *out, const void *x, int x_bf16,
                                        int rows);

/* product_rows_forward_input at bf16 (t->precision) for an output that only feeds `act` and then bf16
   products: act_out[rows, out] = bf16(act(x·Wᵀ + bias)), the bits of the fp32 output's bf16 activation
   pass (activations.h), and out (NULL: not kept) the fp32 x·Wᵀ + bias; with neither the pass over out
   nor, when it is not kept, its stores (gemm_prepacked_bf16_activation). HERBS_ERR_NOMEM as
   product_rows_forward_input's. */
herbs_status product_rows_forward_activation(herbs_weight *w, const herbs_params *t, float *out, uint16_t *act_out,
                                             herbs_bf16_activation act, const void *x, int x_bf16, int rows);

/* product_rows_forward_input's output added to a residual: out[rows, out] = (x·Wᵀ + bias) + res (res
   [rows, out], not out), the bits of the product and residual_add_forward after it, each stripe added
   in the product's stores (gemm_prepacked_residual). HERBS_ERR_NOMEM as product_rows_forward_input's. */
herbs_status product_rows_forward_residual(herbs_weight *w, const herbs_params *t, float *out, const float *res,
                                           const void *x, int x_bf16, int rows);

/* dx[rows, in] += (accumulate set) or = (not read) dy·W (dx NULL: not wanted); dW += dyᵀ·x,
   db += Σ_rows dy into the gradient block; dx may be x (linear_backward). */
void product_rows_backward(herbs_weight *w, herbs_params *t, herbs_precision p, float *dx, const float *dy,
                           const float *x, int rows, int accumulate);

/* product_rows_backward at t->precision with x fp32 or, with x_bf16 (at bf16), already rounded to bf16
   (bit patterns): the same bits as on the fp32 x of those values, from half the bytes. */
void product_rows_backward_input(herbs_weight *w, herbs_params *t, float *dx, const float *dy, const void *x,
                                 int x_bf16, int rows, int accumulate);

/* product_rows_backward_input at bf16 on x in bf16 for a product whose output y = pre [rows, out]
   feeds a GELU, given dact, the gradient of GELU's output: dy = dact·GELU'(y) is formed in the
   pass that rounds it for the products (linear_backward_bf16), never stored in fp32; pre may be
   overwritten. */
void product_rows_backward_through_gelu(herbs_weight *w, herbs_params *t, float *dx, const float *dact, float *pre,
                                        const void *x, int rows);

/* --- k×k convolution: x [B, H, W, in] NHWC -> [B, OH, OW, out] (kernels/conv2d.h) ------------ */

/* out = conv(x, W) + bias, with scale, shift and relu as product_rows_forward's. scratch: conv2d_scratch_floats(in, out, k, k) floats. */
void product_conv_forward(herbs_weight *w, const herbs_params *t, herbs_precision p, float *out, const float *x, int B,
                          int H, int W, const float *scale, const float *shift, int relu, float *scratch,
                          size_t scratch_floats);

/* dx[B, H, W, in] += (accumulate set) or = (dx NULL: not wanted), dW +=, db += from
   dy[B, OH, OW, out]. scratch as for the forward; dw_work holds out·k·k·in floats when k > 1
   (the weight gradient in the compute layout). */
void product_conv_backward(herbs_weight *w, herbs_params *t, herbs_precision p, float *dx, const float *dy,
                           const float *x, int B, int H, int W, float *scratch, size_t scratch_floats, float *dw_work,
                           int accumulate);

/* --- along the token axis: x [B, in, C] -> [B, out, C] (Conv1d over tokens, kernels/tokens.h) */

/* out[b] = (accumulate ? out[b] : 0) + W · x[b] + bias */
void product_tokens_forward(herbs_weight *w, const herbs_params *t, herbs_precision p, float *out, const float *x,
                            int B, int C, int accumulate);

/* dx[B, in, C] += (accumulate set) or = (not read) Wᵀ · dy[b] (dx NULL: not wanted); dW +=, db += into
   the gradient block */
void product_tokens_backward(herbs_weight *w, herbs_params *t, herbs_precision p, float *dx, const float *dy,
                             const float *x, int B, int C, int accumulate);

#endif
