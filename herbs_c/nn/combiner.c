/* The GCN combiner (SPEC.md §3.6, the release's GCNCombiner). The release works on [B, F, nodes];
   here features stay [B, nodes, F] (channels last), so its Linear over nodes (param_pool0/1) is a
   token-axis Conv1d, its Conv1d over channels (conv1, conv_q1, conv_k1) a Linear on rows, and
   hs·A becomes Aᵀ·hs per sample:
     h0 = pool0(kept)                      [B, J, F]
     q = mean_o conv_q1(h0), k likewise    [B, J]
     A = adj1 + alpha1 · tanh(q_j - k_l)   [B, J, J]
     h1 = conv1(h0); h2_b = A_bᵀ h1_b       [B, J, F]
     h3 = batch_norm1(h2) (over B·J rows); h4 = pool1(h3) [B, F]; h5 = dropout(h4)
     out = classifier(h5)                  [B, classes] */
#include <string.h>

#include "kernels/kernels.h"
#include "nn/head.h"

herbs_status combiner_init(head_combiner *g, herbs_params *t, int nodes_in, int channels, int classes, float dropout)
{
    memset(g, 0, sizeof *g);
    g->nodes_in = nodes_in;
    g->nodes = nodes_in / 64;
    g->channels = channels;
    g->reduced = channels / 4;
    g->classes = classes;
    g->dropout = dropout;
    if (g->nodes < 1)
        return herbs_error(HERBS_ERR_VALUE, "the combiner needs at least 64 selected tokens in all (num_selects sum "
                           "to %d; its graph has sum // 64 nodes)", nodes_in);
    if (g->reduced < 1)
        return herbs_error(HERBS_ERR_VALUE, "the combiner needs fpn_size >= 4 (conv_q1 has fpn_size // 4 channels), "
                           "got %d", channels);
    const int J = g->nodes, F = channels;
    const char *p = "combiner.";
    /* PyTorch's state_dict order: the module's own parameters first, then its children */
    HERBS_TRY(params_add(t, &g->adj1, HERBS_PARAMETER, (herbs_init){HERBS_INIT_EYE_PLUS_ONE, 0.01f}, p, "adj1", 2,
                         (int64_t)J, (int64_t)J));
    HERBS_TRY(params_add(t, &g->alpha1, HERBS_PARAMETER, (herbs_init){HERBS_INIT_ZEROS, 0}, p, "alpha1", 1, (int64_t)1));
    HERBS_TRY(product_add(t, &g->pool0, p, "param_pool0", head_product_spec(J, nodes_in, 0)));
    HERBS_TRY(product_add(t, &g->conv1, p, "conv1", head_product_spec(F, F, 1)));
    HERBS_TRY(batchnorm_layer_init(&g->bn, t, p, "batch_norm1", F));
    HERBS_TRY(product_add(t, &g->conv_q, p, "conv_q1", head_product_spec(g->reduced, F, 1)));
    HERBS_TRY(product_add(t, &g->conv_k, p, "conv_k1", head_product_spec(g->reduced, F, 1)));
    HERBS_TRY(product_add(t, &g->pool1, p, "param_pool1", head_product_spec(1, J, 0)));
    return product_add(t, &g->cls, p, "classifier", head_product_spec(classes, F, 0));
}

/* summary[B·J] = mean over the R outputs of Linear(F -> R)(h0 rows), with the rows in `room` [B·J, R] */
static void node_summary(head_combiner *g, head_ctx *c, herbs_weight *w, float *room, float *summary)
{
    const int rows = c->batch * g->nodes;
    product_rows_forward(w, c->t, c->t->precision, room, g->h0, rows, NULL, NULL, 0);
    token_mean_forward(summary, room, rows, g->reduced, 1);
}

herbs_status combiner_forward(head_combiner *g, head_ctx *c, const float *kept, uint64_t seed, uint64_t stream,
                              float *out)
{
    const int B = c->batch, J = g->nodes, F = g->channels;
    const size_t nodes = (size_t)B * J * F;
    g->x = kept;
    HERBS_TRY(head_alloc(c, nodes, 0, &g->h0));
    HERBS_TRY(head_alloc(c, (size_t)B * J, 0, &g->q));
    HERBS_TRY(head_alloc(c, (size_t)B * J, 0, &g->k));
    HERBS_TRY(head_alloc(c, (size_t)B * J * J, 0, &g->adjacency));
    HERBS_TRY(head_alloc(c, nodes, 0, &g->h1));
    HERBS_TRY(head_alloc(c, nodes, 0, &g->h2));
    HERBS_TRY(head_alloc(c, nodes, 0, &g->h3));
    HERBS_TRY(head_alloc(c, (size_t)B * F, 0, &g->h5));
    float *room, *h4;
    HERBS_TRY(head_scratch_begin(c));
    HERBS_TRY(head_scratch(c, (size_t)B * J * g->reduced, 0, &room));
    HERBS_TRY(head_scratch(c, (size_t)B * F, 0, &h4));

    product_tokens_forward(&g->pool0, c->t, c->t->precision, g->h0, kept, B, F, 0);
    node_summary(g, c, &g->conv_q, room, g->q);
    node_summary(g, c, &g->conv_k, room, g->k);
    adjacency_forward(g->adjacency, g->q, g->k, PARAM(c->t, g->adj1), PARAM(c->t, g->alpha1), B, J);
    product_rows_forward(&g->conv1, c->t, c->t->precision, g->h1, g->h0, B * J, NULL, NULL, 0);
    gemm_batched(1, 0, J, F, J, 1, g->adjacency, J, (long)J * J, g->h1, F, (long)J * F, 0, g->h2, F, (long)J * F, B);
    HERBS_TRY(batchnorm_layer_forward(&g->bn, c->t, c->arena, c->train, g->h2, B * J, g->h3, 0));
    product_tokens_forward(&g->pool1, c->t, c->t->precision, h4, g->h3, B, F, 0);
    g->dropped = c->train && g->dropout > 0;
    g->dropout_seed = seed, g->dropout_stream = stream;
    if (g->dropped)
        dropout_forward(g->h5, h4, (size_t)B * F, g->dropout, seed, stream);
    else
        memcpy(g->h5, h4, (size_t)B * F * sizeof(float));
    product_rows_forward(&g->cls, c->t, c->t->precision, out, g->h5, B, NULL, NULL, 0);
    return HERBS_OK;
}

/* dh0 += the gradient through summary = mean_o Linear(h0) from dsummary [B·J] */
static void node_summary_backward(head_combiner *g, head_ctx *c, herbs_weight *w, const float *dsummary,
                                  float *room, float *dh0)
{
    const int rows = c->batch * g->nodes;
    memset(room, 0, (size_t)rows * g->reduced * sizeof(float));
    token_mean_backward(room, dsummary, rows, g->reduced, 1);
    product_rows_backward(w, c->t, c->t->precision, dh0, room, g->h0, rows, 1);
}

herbs_status combiner_backward(head_combiner *g, head_ctx *c, const float *dout, float *dkept)
{
    const int B = c->batch, J = g->nodes, F = g->channels;
    const size_t nodes = (size_t)B * J * F;
    float *dh5, *dh4, *dh3, *dh2, *dh1, *dh0, *dA, *dq, *dk, *room;
    HERBS_TRY(head_scratch_begin(c));
    HERBS_TRY(head_scratch(c, (size_t)B * F, 0, &dh5));
    HERBS_TRY(head_scratch(c, (size_t)B * F, 1, &dh4));
    HERBS_TRY(head_scratch(c, nodes, 0, &dh3));
    HERBS_TRY(head_scratch(c, nodes, 0, &dh2)); /* written by the BatchNorm's backward */
    HERBS_TRY(head_scratch(c, nodes, 0, &dh1));
    HERBS_TRY(head_scratch(c, nodes, 0, &dh0));
    HERBS_TRY(head_scratch(c, (size_t)B * J * J, 0, &dA));
    HERBS_TRY(head_scratch(c, (size_t)B * J, 1, &dq));
    HERBS_TRY(head_scratch(c, (size_t)B * J, 1, &dk));
    HERBS_TRY(head_scratch(c, (size_t)B * J * g->reduced, 0, &room));

    product_rows_backward(&g->cls, c->t, c->t->precision, dh5, dout, g->h5, B, 0);
    if (g->dropped)
        dropout_backward(dh4, dh5, (size_t)B * F, g->dropout, g->dropout_seed, g->dropout_stream);
    else
        memcpy(dh4, dh5, (size_t)B * F * sizeof(float));
    product_tokens_backward(&g->pool1, c->t, c->t->precision, dh3, dh4, g->h3, B, F, 0);
    batchnorm_layer_backward(&g->bn, c->t, dh2, dh3, NULL, g->h2, B * J, 0);
    /* h2_b = A_bᵀ h1_b: dh1_b = A_b dh2_b, dA_b = h1_b dh2_bᵀ */
    gemm_batched(0, 0, J, F, J, 1, g->adjacency, J, (long)J * J, dh2, F, (long)J * F, 0, dh1, F, (long)J * F, B);
    gemm_batched(0, 1, J, J, F, 1, g->h1, F, (long)J * F, dh2, F, (long)J * F, 0, dA, J, (long)J * J, B);
    adjacency_backward(dq, dk, GRAD(c->t, g->adj1), GRAD(c->t, g->alpha1), dA, g->q, g->k, PARAM(c->t, g->alpha1), B,
                       J);
    /* dh0's first part; the node summaries add theirs */
    product_rows_backward(&g->conv1, c->t, c->t->precision, dh0, dh1, g->h0, B * J, 0);
    node_summary_backward(g, c, &g->conv_q, dq, room, dh0);
    node_summary_backward(g, c, &g->conv_k, dk, room, dh0);
    product_tokens_backward(&g->pool0, c->t, c->t->precision, dkept, dh0, g->x, B, F, 1);
    return HERBS_OK;
}
