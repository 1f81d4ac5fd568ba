/* The HERBS model as a net kind ("herbs"): a backbone and the head of SPEC.md §3, with the
   release's switches. Shared by the net (herbs_net.c) and its objective (objective.c). */
#ifndef HERBS_NN_HERBS_MODEL_H
#define HERBS_NN_HERBS_MODEL_H

#include "nn/head.h"
#include "nn/net.h"

typedef struct {
    herbs_backbone *bb;
    int use_fpn, use_selection, use_combiner;
    int classes, fpn_size;
    head_fpn fpn;
    head_classifier down_cls[HERBS_TAPS], up_cls[HERBS_TAPS];
    herbs_weight plain[HERBS_TAPS]; /* selector.classifier_l_layer{i}: selection without FPN */
    herbs_weight ori;               /* classifier: the plain backbone (no switch on) */
    head_selector selector;
    head_combiner combiner;
    herbs_arena scratch;
    /* the last forward */
    float *taps[HERBS_TAPS];
    float *ori_mean; /* [B, C_4]: layer4's token mean, the baseline's features */
    int train;
    /* indices into net->outputs, -1 when the configuration has no such output */
    int out_fpn1[HERBS_TAPS], out_layer[HERBS_TAPS], out_select[HERBS_TAPS], out_drop[HERBS_TAPS];
    int out_rank[HERBS_TAPS], out_comb, out_ori;
} herbs_model;

/* The objective of SPEC.md §4 (the herbs_net_ops loss). Options: temperature (64), lambda_c (1),
   lambda_b (0.3), lambda_n (5), lambda_s (0), lambda_r (1.375), accumulation_steps (1: the
   gradient is that of total / accumulation_steps). Terms: total, then those the configuration has
   among comb, layer, drop, select, refine, ori — each already weighted by its λ, undivided.
   Distributions as targets go to the cross-entropy terms (comb, layer, select, ori); drop and
   refine do not read the targets. */
herbs_status herbs_model_loss(herbs_net *net, const herbs_targets *targets, int batch, herbs_config *options,
                              int check_only, herbs_loss_terms *terms);

#endif
