/* The weakly supervised selector (SPEC.md §3.5): per tap and sample, rank the tokens by their
   probability of the sample's top class and keep the first K_i (a NaN probability ranks first,
   as in PyTorch's sort: select.h). It has no parameters; its
   backward scatters gradients back to the rows they were gathered from. */
#include <string.h>

#include "kernels/kernels.h"
#include "nn/head.h"

void selector_init(head_selector *s, const int tokens[HERBS_TAPS], const int keep[HERBS_TAPS], int classes,
                   int channels)
{
    memset(s, 0, sizeof *s);
    s->classes = classes;
    s->channels = channels;
    for (int i = 0; i < HERBS_TAPS; i++) {
        s->tokens[i] = tokens[i];
        s->keep[i] = keep[i];
        s->kept_total += keep[i];
    }
}

herbs_status selector_forward(head_selector *s, head_ctx *c, float *const logits[HERBS_TAPS],
                              float *const features[HERBS_TAPS], float *const selected[HERBS_TAPS],
                              float *const dropped[HERBS_TAPS])
{
    const int B = c->batch, K = s->classes;
    if (s->channels)
        HERBS_TRY(head_alloc(c, (size_t)B * s->kept_total * s->channels, 0, &s->kept));
    int offset = 0; /* token offset of this tap's rows in the concatenation */
    for (int i = 0; i < HERBS_TAPS; i++) {
        const int S = s->tokens[i], n = s->keep[i];
        HERBS_TRY(head_scratch_begin(c));
        s->order[i] = herbs_arena_alloc(c->arena, (size_t)B * S * sizeof(int));
        int *scratch = herbs_arena_alloc(c->scratch, (size_t)B * S * sizeof(int));
        float *score, *mean;
        HERBS_TRY(head_scratch(c, (size_t)B * S, 0, &score));
        HERBS_TRY(head_scratch(c, (size_t)B * K, 0, &mean));
        if (!s->order[i] || !scratch)
            return HERBS_ERR_NOMEM;
        select_rank(s->order[i], scratch, score, mean, logits[i], B, S, K);
        gather_tokens(selected[i], (long)n * K, logits[i], s->order[i], S, B, S, n, K);
        gather_tokens(dropped[i], (long)(S - n) * K, logits[i], s->order[i] + n, S, B, S, S - n, K);
        if (s->channels)
            gather_tokens(s->kept + (size_t)offset * s->channels, (long)s->kept_total * s->channels, features[i],
                        s->order[i], S, B, S, n, s->channels);
        offset += n;
    }
    return HERBS_OK;
}

herbs_status selector_backward(head_selector *s, head_ctx *c, float *const dselected[HERBS_TAPS],
                               float *const ddropped[HERBS_TAPS], const float *dkept,
                               float *const dlogits[HERBS_TAPS], float *const dfeatures[HERBS_TAPS])
{
    const int B = c->batch, K = s->classes;
    int offset = 0;
    for (int i = 0; i < HERBS_TAPS; i++) {
        const int S = s->tokens[i], n = s->keep[i];
        if (dselected[i])
            scatter_tokens_add(dlogits[i], dselected[i], (long)n * K, s->order[i], S, B, S, n, K);
        if (ddropped[i])
            scatter_tokens_add(dlogits[i], ddropped[i], (long)(S - n) * K, s->order[i] + n, S, B, S, S - n, K);
        if (dkept && dfeatures[i])
            scatter_tokens_add(dfeatures[i], dkept + (size_t)offset * s->channels, (long)s->kept_total * s->channels,
                             s->order[i], S, B, S, n, s->channels);
        offset += n;
    }
    return HERBS_OK;
}
