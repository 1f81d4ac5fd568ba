/* Products through weight handles (product.h): the layer-level wrapper of the linear, conv2d
   and token kernels, which choose the weight's form for the precision. The forward runs at the
   precision asked, against the weight packed once per table version for the GEMM of that
   precision (in fp32 too: on AMD Zen 4, 2 threads, packing per call was 9% of a Swin-T batch-1
   forward); the backward's products (dx = dy·W, dW += dyᵀ·x) at the precision asked too, as autocast
   runs them: bf16 operands, fp32 accumulation into the fp32 gradients. */
#include "nn/product.h"

#include <stdio.h>

#include "core/threads.h"
#include "kernels/kernels.h"

herbs_status product_add(herbs_params *t, herbs_weight *w, const char *prefix, const char *name,
                         herbs_product_spec spec)
{
    char key[HERBS_NAME_MAX];
    if (spec.k < 1) /* a Linear's */
        spec.k = spec.stride = 1;
    const int64_t out = spec.out, in = spec.in, k = spec.k;
    *w = (herbs_weight){.weight = HERBS_NO_TENSOR, .bias = HERBS_NO_TENSOR, .out = spec.out, .in = spec.in,
                        .k = spec.k, .stride = spec.stride, .pad = spec.pad, .ohwi = {.offset = HERBS_NO_TENSOR}};
    for (int p = 0; p < HERBS_PRECISIONS; p++)
        w->gemm[p].offset = HERBS_NO_TENSOR;
    if (snprintf(key, sizeof key, "%s.weight", name) >= (int)sizeof key)
        return herbs_error(HERBS_ERR_VALUE, "tensor name '%s%s.weight' is too long", prefix ? prefix : "", name);
    if (spec.kernel_dims == 0)
        HERBS_TRY(params_add(t, &w->weight, HERBS_PARAMETER, spec.weight_init, prefix, key, 2, out, in));
    else if (spec.kernel_dims == 1)
        HERBS_TRY(params_add(t, &w->weight, HERBS_PARAMETER, spec.weight_init, prefix, key, 3, out, in, k));
    else
        HERBS_TRY(params_add(t, &w->weight, HERBS_PARAMETER, spec.weight_init, prefix, key, 4, out, in, k, k));
    if (spec.kernel_dims == 2 && spec.k > 1 && !spec.patch_rows) { /* OIHW and OHWI differ: the compute layout is a packed form */
        w->ohwi.floats = (size_t)out * in * k * k;
        HERBS_TRY(params_reserve_packed(t, &w->ohwi.offset, w->ohwi.floats));
    }
    for (int p = 0; p < HERBS_PRECISIONS; p++) { /* room for a GEMM pack of each precision (rows, k×k) */
        w->gemm[p].floats = (gemm_prepack_b_size_any(p, spec.out, spec.in * spec.k * spec.k) + 3) / 4;
        HERBS_TRY(params_reserve_packed(t, &w->gemm[p].offset, w->gemm[p].floats));
    }
    if (!spec.bias)
        return HERBS_OK;
    snprintf(key, sizeof key, "%s.bias", name);
    return params_add(t, &w->bias, HERBS_PARAMETER, spec.bias_init, prefix, key, 1, out);
}

static const float *bias_of(const herbs_weight *w, const herbs_params *t)
{
    return w->bias == HERBS_NO_TENSOR ? NULL : PARAM(t, w->bias);
}

static float *bias_grad_of(const herbs_weight *w, herbs_params *t)
{
    return w->bias == HERBS_NO_TENSOR ? NULL : GRAD(t, w->bias);
}

/* The weight in the compute layout [out, k, k, in]: a k×k conv's OHWI form, made from the
   parameters once per table version; otherwise the parameters themselves. */
static const float *compute_weight(herbs_weight *w, const herbs_params *t)
{
    if (w->ohwi.offset == HERBS_NO_TENSOR)
        return PARAM(t, w->weight);
    if (w->ohwi.version != t->version) {
        conv2d_weight_to_ohwi(PACKED(t, w->ohwi.offset), PARAM(t, w->weight), w->out, w->in, w->k, w->k);
        w->ohwi.version = t->version;
    }
    return PACKED(t, w->ohwi.offset);
}

/* The compute-layout weight as op(B) = Wᵀ packed for the GEMM at precision p, made once per table
   version by the current micro-kernel of p. */
static const void *gemm_pack(herbs_weight *w, const herbs_params *t, herbs_precision p)
{
    herbs_packed_form *f = &w->gemm[p];
    void *pack = PACKED(t, f->offset);
    const int K = w->in * w->k * w->k;
    if (f->version != t->version || !gemm_prepack_b_is_current(pack)) {
        gemm_prepack_b(p, 1, w->out, K, compute_weight(w, t), K, pack);
        f->version = t->version;
    }
    return pack;
}

void product_rows_forward(herbs_weight *w, const herbs_params *t, herbs_precision p, float *out, const float *x,
                          int rows, const float *scale, const float *shift, int relu)
{
    const int K = w->in * w->k * w->k;
    shift = shift ? shift : bias_of(w, t);
    if (gemm_prepacked(0, rows, w->out, K, 1.0f, x, K, gemm_pack(w, t, p), 0.0f, out, w->out, scale, shift, relu))
        gemm_affine_at(p, 0, 1, rows, w->out, K, 1.0f, x, K, compute_weight(w, t), K, 0.0f, out, w->out, scale, shift,
                       relu);
}

void product_rows_prepare(herbs_weight *w, const herbs_params *t, herbs_precision p) { gemm_pack(w, t, p); }

herbs_status product_rows_forward_input(herbs_weight *w, const herbs_params *t, float *out, const void *x, int x_bf16,
                                        int rows)
{
    const int K = w->in * w->k * w->k;
    if (!x_bf16) {
        product_rows_forward(w, t, t->precision, out, x, rows, NULL, NULL, 0);
        return HERBS_OK;
    }
    return gemm_prepacked_bf16_rows(rows, w->out, K, 1.0f, x, K, gemm_pack(w, t, HERBS_BF16), 0.0f, out, w->out, NULL,
                                    bias_of(w, t), 0);
}

herbs_status product_rows_forward_activation(herbs_weight *w, const herbs_params *t, float *out, uint16_t *act_out,
                                             herbs_bf16_activation act, const void *x, int x_bf16, int rows)
{
    const int K = w->in * w->k * w->k;
    return gemm_prepacked_bf16_activation(rows, w->out, K, x, x_bf16, K, gemm_pack(w, t, HERBS_BF16), out, w->out,
                                          bias_of(w, t), act, act_out, w->out);
}

herbs_status product_rows_forward_residual(herbs_weight *w, const herbs_params *t, float *out, const float *res,
                                           const void *x, int x_bf16, int rows)
{
    const int K = w->in * w->k * w->k;
    return gemm_prepacked_residual(rows, w->out, K, x, x_bf16, K, gemm_pack(w, t, t->precision), out, w->out,
                                   bias_of(w, t), res, w->out);
}

void product_rows_backward(herbs_weight *w, herbs_params *t, herbs_precision p, float *dx, const float *dy,
                           const float *x, int rows, int accumulate)
{
    linear_backward(p, dx, GRAD(t, w->weight), bias_grad_of(w, t), dy, x, compute_weight(w, t), rows,
                    w->in * w->k * w->k, w->out, accumulate);
}

void product_rows_backward_input(herbs_weight *w, herbs_params *t, float *dx, const float *dy, const void *x,
                                 int x_bf16, int rows, int accumulate)
{
    if (!x_bf16) {
        product_rows_backward(w, t, t->precision, dx, dy, x, rows, accumulate);
        return;
    }
    linear_backward_bf16(dx, GRAD(t, w->weight), bias_grad_of(w, t), dy, NULL, x, 1, compute_weight(w, t), rows,
                         w->in * w->k * w->k, w->out, accumulate);
}

void product_rows_backward_through_gelu(herbs_weight *w, herbs_params *t, float *dx, const float *dact, float *pre,
                                        const void *x, int rows)
{
    linear_backward_bf16(dx, GRAD(t, w->weight), bias_grad_of(w, t), dact, pre, x, 1, compute_weight(w, t), rows,
                         w->in * w->k * w->k, w->out, 0);
}

void product_conv_forward(herbs_weight *w, const herbs_params *t, herbs_precision p, float *out, const float *x, int B,
                          int H, int W, const float *scale, const float *shift, int relu, float *scratch,
                          size_t scratch_floats)
{
    shift = shift ? shift : bias_of(w, t);
    if (conv2d_forward_prepacked(out, x, gemm_pack(w, t, p), scale, shift, relu, scratch, scratch_floats, B, H, W,
                                 w->in, w->out, w->k, w->k, w->stride, w->pad)) /* no memory to pack A: fp32 */
        conv2d_forward(out, x, compute_weight(w, t), scale, shift, relu, scratch, scratch_floats, B, H, W, w->in,
                       w->out, w->k, w->k, w->stride, w->pad);
}

void product_conv_backward(herbs_weight *w, herbs_params *t, herbs_precision p, float *dx, const float *dy,
                           const float *x, int B, int H, int W, float *scratch, size_t scratch_floats, float *dw_work,
                           int accumulate)
{
    const int repacked = w->ohwi.offset != HERBS_NO_TENSOR; /* the gradient comes in the compute layout */
    float *dw = repacked ? herbs_zero_floats(dw_work, w->ohwi.floats) : GRAD(t, w->weight);
    conv2d_backward(p, dx, dw, bias_grad_of(w, t), dy, x, compute_weight(w, t), scratch, scratch_floats, B, H, W,
                    w->in, w->out, w->k, w->k, w->stride, w->pad, accumulate);
    if (repacked)
        conv2d_weight_grad_from_ohwi(GRAD(t, w->weight), dw, w->out, w->in, w->k, w->k);
}

void product_tokens_forward(herbs_weight *w, const herbs_params *t, herbs_precision p, float *out, const float *x,
                            int B, int C, int accumulate)
{
    token_linear_forward_at(p, out, x, PARAM(t, w->weight), bias_of(w, t), B, w->in, w->out, C, accumulate);
}

void product_tokens_backward(herbs_weight *w, herbs_params *t, herbs_precision p, float *dx, const float *dy,
                             const float *x, int B, int C, int accumulate)
{
    token_linear_backward(p, dx, GRAD(t, w->weight), bias_grad_of(w, t), dy, x, PARAM(t, w->weight), B, w->in, w->out,
                          C, accumulate);
}
