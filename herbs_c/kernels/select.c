#include "kernels/kernels.h"
#include "kernels/precision.h"
#include "kernels/fastmath.h" /* after precision.h: it is a template over real; includes isa.h */

#define SELECT_GRAIN 65536 /* logits a thread should get at least */

/* a ranks before b: a is larger, or a is NaN and b is not (torch.sort(descending=True) and
   torch.argmax count NaN as larger than every number) */
static int FN(select_before)(real a, real b) { return a > b || (isnan(a) && !isnan(b)); }

/* The class whose softmax of the token-mean logits mean[C] is largest (the first of equals; the
   first NaN, if any: a NaN mean makes every probability NaN, so that is class 0). */
static int FN(select_top_class)(const real *mean, int C)
{
    real top = -INFINITY;
    for (int c = 0; c < C; c++)
        top = mean[c] > top ? mean[c] : top;
    real sum = 0;
    for (int c = 0; c < C; c++)
        sum += exp(mean[c] - top);
    int best = 0;
    real best_p = exp(mean[0] - top) / sum;
    for (int c = 1; c < C; c++) { /* compared as probabilities, as the release does */
        real p = exp(mean[c] - top) / sum;
        if (FN(select_before)(p, best_p)) {
            best_p = p;
            best = c;
        }
    }
    return best;
}

/* score[i] = softmax(logits row i)[c*] for the tokens i0..i1 of [B·S] rows of C, c* of token i's
   sample at top[(i / S)·S] */
HERBS_INLINE void FN(select_scores_span)(real *score, const real *logits, const int *top, int S, int C, size_t i0,
                                         size_t i1)
{
    for (size_t i = i0; i < i1; i++) {
        const real *row = logits + i * C;
        real high, sum;
        FN(softmax_row_sums)(row, 1, C, &high, &sum);
        score[i] = FN(exp_fast)(row[top[i / S * S]] - high) / sum;
    }
}
HERBS_ISA_VARIANTS(select_scores_span,
                   (real *score, const real *logits, const int *top, int S, int C, size_t i0, size_t i1),
                   (score, logits, top, S, C, i0, i1))

/* Sorts idx[0..n) by key descending, NaN first, stably, with tmp[n] as room: a bottom-up merge sort. */
static void FN(select_sort)(int *idx, int *tmp, const real *key, int n)
{
    int *src = idx, *dst = tmp;
    for (int width = 1; width < n; width *= 2) {
        for (int lo = 0; lo < n; lo += 2 * width) {
            int mid = lo + width < n ? lo + width : n, hi = lo + 2 * width < n ? lo + 2 * width : n;
            int i = lo, j = mid, o = lo;
            while (i < mid && j < hi)
                dst[o++] = FN(select_before)(key[src[j]], key[src[i]]) ? src[j++] : src[i++]; /* equal: the left */
            while (i < mid)
                dst[o++] = src[i++];
            while (j < hi)
                dst[o++] = src[j++];
        }
        int *t = src;
        src = dst;
        dst = t;
    }
    if (src != idx)
        for (int i = 0; i < n; i++)
            idx[i] = src[i];
}

void FN(select_rank)(int *order, int *scratch, real *score, real *mean, const real *logits, int B, int S, int C)
{
    FN(token_mean_forward)(mean, logits, B, S, C);
    for (int b = 0; b < B; b++) /* c* of sample b in scratch[b·S] until the sort takes it */
        scratch[(size_t)b * S] = FN(select_top_class)(mean + (size_t)b * C, C);
    const size_t tokens = (size_t)B * S;
    HERBS_ISA_PARALLEL(select_scores_span, tokens, herbs_threads_for((double)tokens * C, SELECT_GRAIN), score, logits,
                       scratch, S, C);
#pragma omp parallel for schedule(dynamic, 1) if (B > 1 && (double)tokens * C > SELECT_GRAIN)
    for (int b = 0; b < B; b++) {
        int *ob = order + (size_t)b * S;
        for (int s = 0; s < S; s++)
            ob[s] = s;
        FN(select_sort)(ob, scratch + (size_t)b * S, score + (size_t)b * S, S);
    }
}
