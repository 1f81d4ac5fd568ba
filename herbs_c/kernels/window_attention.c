/* Window attention, one (sample, window, head) item at a time. The item's q, k, v (and dout)
   are gathered into the thread's work area, and the six products (q·kᵀ, p·v; dout·vᵀ,
   dlogits·k, dlogitsᵀ·q, pᵀ·dout) are N×N×d with N = 49 or 144 and d = 32: too small for the
   packed GEMM to pay for its packing, so they go through one register-blocked routine
   (wa_small_mm) written with GCC vector extensions and built per instruction set (isa.h); at
   bf16 precision, AVX512-BF16 items run them on bf16 pairs (the section at the end).
   Backward recomputes the probabilities from the saved log-sum-exp instead of storing them.
   Global attention (ViT's) is the same item code on one window of all S tokens, with no bias or
   mask: N = S (785 at 448 px), where the routine's register tiles still fit and the item's
   N×N logits (2.5 MB) stay in L2. */
#include <omp.h>
#include <string.h>

#include "kernels/bf16.h"
#include "kernels/kernels.h"
#include "kernels/precision.h"
#include "kernels/fastmath.h" /* after precision.h: it is a template over real */

#define WA_MASK ((real)-100)
#define WA_BYTES 64                         /* one vector of the routine below: a zmm */
#define WA_VL ((int)(WA_BYTES / sizeof(real))) /* its lanes */

typedef real FN(wa_vec) __attribute__((vector_size(WA_BYTES), aligned(sizeof(real)))); /* unaligned access */

/* out[r][v·VL : (v+1)·VL] = alpha · Σ_k a[r·ar + k·ak] · b[k·ldb + v·VL ...] for r < R, v < V: R·V
   vector accumulators in registers (R, V are constants once inlined into wa_small_mm). */
HERBS_INLINE void FN(wa_small_mm_block)(real *out, long ldo, const real *a, long ar, long ak, const real *b, long ldb,
                                     int K, real alpha, const int R, const int V)
{
    FN(wa_vec) acc[4][4];
    for (int r = 0; r < R; r++)
        for (int v = 0; v < V; v++)
            acc[r][v] = (FN(wa_vec)){0};
    for (int k = 0; k < K; k++) {
        FN(wa_vec) bv[4];
        for (int v = 0; v < V; v++)
            bv[v] = *(const FN(wa_vec) *)(b + (size_t)k * ldb + v * WA_VL);
        for (int r = 0; r < R; r++) {
            const real x = a[r * ar + k * ak];
            for (int v = 0; v < V; v++)
                acc[r][v] += x * bv[v];
        }
    }
    for (int r = 0; r < R; r++)
        for (int v = 0; v < V; v++)
            *(FN(wa_vec) *)(out + (size_t)r * ldo + v * WA_VL) = alpha * acc[r][v];
}

/* out[M][cols] (row stride ldo) = alpha · A[M][K] · B[K][cols]; A's element (r, k) is at
   a[r·ar + k·ak] (so Aᵀ is a matter of strides), B rows have stride ldb, cols is a multiple of
   the vector length. */
HERBS_INLINE void FN(wa_small_mm)(real *out, long ldo, const real *a, long ar, long ak, const real *b, long ldb, int M,
                               int K, int cols, real alpha)
{
    int r = 0;
    for (; r + 4 <= M; r += 4) {
        int c = 0;
        for (; c + 4 * WA_VL <= cols; c += 4 * WA_VL)
            FN(wa_small_mm_block)(out + (size_t)r * ldo + c, ldo, a + r * ar, ar, ak, b + c, ldb, K, alpha, 4, 4);
        for (; c < cols; c += WA_VL)
            FN(wa_small_mm_block)(out + (size_t)r * ldo + c, ldo, a + r * ar, ar, ak, b + c, ldb, K, alpha, 4, 1);
    }
    for (; r < M; r++) {
        int c = 0;
        for (; c + 4 * WA_VL <= cols; c += 4 * WA_VL)
            FN(wa_small_mm_block)(out + (size_t)r * ldo + c, ldo, a + r * ar, ar, ak, b + c, ldb, K, alpha, 1, 4);
        for (; c < cols; c += WA_VL)
            FN(wa_small_mm_block)(out + (size_t)r * ldo + c, ldo, a + r * ar, ar, ak, b + c, ldb, K, alpha, 1, 1);
    }
}

typedef struct {
    int H, W, C, heads, window, shift, d, N, nwx, nw;
    int global; /* one window of all H·W tokens (attention_*): no bias, no mask, no window order */
    int out_bf16; /* the output is stored rounded to bf16 (uint16 bit patterns), not in `real` */
    int Np, dp; /* N and d rounded up to the vector length: row strides of the work buffers */
    real scale;
} FN(wa_geometry);

static FN(wa_geometry) FN(wa_geometry_of)(int H, int W, int C, int heads, int window, int shift)
{
    FN(wa_geometry) g = {H, W, C, heads, window, shift, C / heads, window * window, W / window, 0, 0, 0, 0, 0, 0};
    g.nw = (H / window) * g.nwx;
    g.Np = (g.N + WA_VL - 1) / WA_VL * WA_VL;
    g.dp = (g.d + WA_VL - 1) / WA_VL * WA_VL;
    g.scale = 1 / sqrt((real)g.d);
    return g;
}

/* Global attention over S tokens: one window of them all, in token order. */
static FN(wa_geometry) FN(wa_geometry_global)(int S, int C, int heads)
{
    FN(wa_geometry) g = {1, S, C, heads, 0, 0, C / heads, S, 1, 1, 1, 0, 0, 0, 0};
    g.Np = (g.N + WA_VL - 1) / WA_VL * WA_VL;
    g.dp = (g.d + WA_VL - 1) / WA_VL * WA_VL;
    g.scale = 1 / sqrt((real)g.d);
    return g;
}

/* The bf16 items' operands, bf16 in pairs (32 bits: two neighbours along the products' depth),
   zero beyond d and N; dq2 = d rounded up to 32, halved; Nq2 = N rounded up to 32, halved;
   N16, d16 = N, d rounded up to 16. */
typedef struct {
    uint32_t *q, *k; /* [N][dq2]: q·scale and k, pairs along d (backward: k's buffer then holds v's) */
    uint32_t *kt;    /* [dq2][N16]: k transposed, the B of q·kᵀ */
    uint32_t *v;     /* [Nq2][d16]: rows 2i and 2i + 1 of v paired, the B of p·v (backward: of k, q, dout) */
    uint32_t *p;     /* [N][Nq2]: the probabilities, pairs along keys (backward: their gradient) */
    /* backward only */
    uint32_t *dy;    /* [N][dq2]: dout, pairs along d */
    uint32_t *vt;    /* [dq2][N16]: v transposed, the B of dout·vᵀ */
    uint32_t *rows;  /* [Nq2][N16]: rows 2i and 2i + 1 of p or its gradient paired, before transposing */
    uint32_t *cols;  /* [N16][Nq2]: the same transposed: pᵀ or its gradient's, pairs along queries */
} FN(wa_pairs);

/* 32-bit words of a wa_pairs for head_dim d and N tokens. */
static size_t FN(wa_pairs_words)(size_t d, size_t N)
{
    const size_t dq2 = (d + 31) / 32 * 16, Nq2 = (N + 31) / 32 * 16, N16 = (N + 15) / 16 * 16, d16 = (d + 15) / 16 * 16;
    return 3 * N * dq2 + 2 * dq2 * N16 + Nq2 * d16 + N * Nq2 + 2 * Nq2 * N16;
}

/* The work area of one thread. */
typedef struct {
    real *q, *k, *v, *dy, *o; /* [N][dp]: q (already scaled), k, v, dout, a product's result */
    real *kt, *vt;            /* [dp][Np]: k and v transposed */
    real *s, *ds;             /* [N][Np]: logits then probabilities; their gradient */
    real *dbias;              /* [heads][N][N]: this thread's share of the bias gradient (global: none) */
    int *tok, *label;         /* [N] */
    int *next_tok, *next_label; /* [N]: the next window's, for prefetching */
    FN(wa_pairs) pairs;       /* the bf16 forward's operands */
} FN(wa_work);

/* Floats of the bias gradient in a thread's work area. */
static size_t FN(wa_dbias_floats)(const FN(wa_geometry) *g) { return g->global ? 0 : (size_t)g->heads * g->N * g->N; }

static FN(wa_work) FN(wa_work_of)(real *base, const FN(wa_geometry) *g)
{
    const size_t Nd = (size_t)g->N * g->dp, dN = (size_t)g->dp * g->Np, NN = (size_t)g->N * g->Np;
    FN(wa_work) w;
    w.q = base;
    w.k = w.q + Nd;
    w.v = w.k + Nd;
    w.dy = w.v + Nd;
    w.o = w.dy + Nd;
    w.kt = w.o + Nd;
    w.vt = w.kt + dN;
    w.s = w.vt + dN;
    w.ds = w.s + NN;
    w.dbias = w.ds + NN;
    w.tok = (int *)(w.dbias + FN(wa_dbias_floats)(g));
    w.label = w.tok + g->N;
    w.next_tok = w.label + g->N;
    w.next_label = w.next_tok + g->N;
    const size_t dq2 = (g->d + 31) / 32 * 16, Nq2 = (g->N + 31) / 32 * 16, N16 = (g->N + 15) / 16 * 16;
    w.pairs.q = (uint32_t *)(w.next_label + g->N);
    w.pairs.k = w.pairs.q + (size_t)g->N * dq2;
    w.pairs.kt = w.pairs.k + (size_t)g->N * dq2;
    w.pairs.v = w.pairs.kt + dq2 * N16;
    w.pairs.p = w.pairs.v + Nq2 * ((g->d + 15) / 16 * 16);
    w.pairs.dy = w.pairs.p + (size_t)g->N * Nq2;
    w.pairs.vt = w.pairs.dy + (size_t)g->N * dq2;
    w.pairs.rows = w.pairs.vt + dq2 * N16;
    w.pairs.cols = w.pairs.rows + Nq2 * N16;
    return w;
}

/* Floats of one thread's work area (wa_work_of), with room to align it to a vector. */
static size_t FN(wa_work_floats)(const FN(wa_geometry) *g)
{
    const size_t N = g->N, Np = g->Np, dp = g->dp;
    return 5 * N * dp + 2 * dp * Np + 2 * N * Np + FN(wa_dbias_floats)(g) + 4 * N + 2 * (size_t)WA_VL +
           FN(wa_pairs_words)(g->d, N);
}

size_t FN(window_attention_work)(int head_dim, int window, int heads)
{
    const FN(wa_geometry) g = FN(wa_geometry_of)(window, window, head_dim * heads, heads, window, 0);
    return FN(wa_work_floats)(&g);
}

size_t FN(attention_work)(int head_dim, int tokens, int heads)
{
    const FN(wa_geometry) g = FN(wa_geometry_global)(tokens, head_dim * heads, heads);
    return FN(wa_work_floats)(&g);
}

/* An item's window: tok[n] = token index (in its sample) of window position n; with a shift,
   label[n] = pre-roll region (3·row region + column region). Returns whether the window holds
   several regions (only windows in the last row or column of windows do). */
static int FN(wa_window_tokens)(const FN(wa_geometry) *g, int w, int *tok, int *label)
{
    if (g->global) {
        for (int n = 0; n < g->N; n++)
            tok[n] = n, label[n] = 0;
        return 0;
    }
    const int wy = w / g->nwx, wx = w % g->nwx, H = g->H, W = g->W, win = g->window, s = g->shift;
    for (int i = 0; i < win; i++)
        for (int j = 0; j < win; j++) {
            const int r = wy * win + i, c = wx * win + j, n = i * win + j;
            tok[n] = ((r + s) % H) * W + (c + s) % W;
            label[n] = s ? 3 * (r < H - win ? 0 : r < H - s ? 1 : 2) + (c < W - win ? 0 : c < W - s ? 1 : 2) : 0;
        }
    return s && ((wy + 1) * win == H || (wx + 1) * win == W);
}

/* A thread's walk over its items, in order: the (sample, window) whose tokens are in w's tok and
   label, whether that window holds several regions, and whether the next window's are in next_tok
   and next_label. */
typedef struct {
    long window;
    int masked, has_next;
} FN(wa_walk);

/* Moves the walk to item `it` of `items`, finding a new window's tokens (and the next window's), and
   returns the tokens of the item after it, with its window and head, for prefetching (NULL: none).
   An item reads and writes a few lines of each of N rows scattered over the map, in an order no
   hardware prefetcher follows (at batch 8 the items waited on them): the next item's lines are asked
   for while the current one computes. Global attention fetches nothing: its window is a whole
   sample, read in order. */
static const int *FN(wa_walk_to)(FN(wa_walk) *walk, const FN(wa_geometry) *g, const FN(wa_work) *w, long it,
                                 long items, long *next_window, int *next_h)
{
    const int heads = g->heads;
    if (it / heads != walk->window) {
        walk->window = it / heads;
        walk->masked = FN(wa_window_tokens)(g, (int)(walk->window % g->nw), w->tok, w->label);
        walk->has_next = !g->global && walk->window + 1 < items / heads;
        if (walk->has_next)
            FN(wa_window_tokens)(g, (int)((walk->window + 1) % g->nw), w->next_tok, w->next_label);
    }
    *next_h = (int)((it + 1) % heads);
    *next_window = (it + 1) / heads;
    return g->global ? NULL : *next_h ? w->tok : walk->has_next ? w->next_tok : NULL;
}

/* ... and this asks for an item's part of a [B, H·W] map of rows of `sections` sections of C elements
   of elem bytes (with `write`, to be written): the d columns of head h in each section of the rows
   tok[n] of the sample of `window`. (Whole rows asked a window ahead were slower: Swin-L's stage 3
   asked for 1.3 MB at once, more than L2.) */
static void FN(wa_prefetch_item)(const FN(wa_geometry) *g, const int *tok, long window, int h, const void *map,
                                 size_t elem, int sections, int write)
{
    const size_t row_bytes = (size_t)sections * g->C * elem, bytes = (size_t)g->d * elem;
    const char *sample = (const char *)map + (size_t)(window / g->nw) * g->H * g->W * row_bytes;
    for (int n = 0; n < g->N; n++)
        for (int s = 0; s < sections; s++) {
            const char *row = sample + (size_t)tok[n] * row_bytes;
            const uintptr_t x = (uintptr_t)(row + ((size_t)s * g->C + (size_t)h * g->d) * elem);
            for (uintptr_t line = x & ~(uintptr_t)63; line < x + bytes; line += 64)
                if (write)
                    __builtin_prefetch((const void *)line, 1, 2);
                else
                    __builtin_prefetch((const void *)line, 0, 2);
        }
}

/* rows[N][dp] = scale · columns col..col+d of the rows tok[n] of src (row stride ld), zero-padded;
   with `transposed` non-NULL, also transposed[dp][Np] (zero-padded). */
static void FN(wa_gather)(real *rows, real *transposed, const real *src, long ld, int col, real scale, const int *tok,
                       const FN(wa_geometry) *g)
{
    const int N = g->N, d = g->d, dp = g->dp, Np = g->Np;
    for (int n = 0; n < N; n++) {
        const real *x = src + (size_t)tok[n] * ld + col;
        real *row = rows + (size_t)n * dp;
        for (int c = 0; c < d; c++)
            row[c] = scale * x[c];
        for (int c = d; c < dp; c++)
            row[c] = 0;
    }
    if (!transposed)
        return;
    memset(transposed, 0, (size_t)dp * Np * sizeof(real));
    for (int n = 0; n < N; n++)
        for (int c = 0; c < d; c++)
            transposed[(size_t)c * Np + n] = rows[(size_t)n * dp + c];
}

/* rows tok[n] of dst (row stride ld) from column col += (accumulate set) or = o[N][dp] (d columns) */
static void FN(wa_scatter)(real *dst, long ld, int col, const real *o, const int *tok, const FN(wa_geometry) *g,
                           int accumulate)
{
    for (int n = 0; n < g->N; n++) {
        real *row = dst + (size_t)tok[n] * ld + col;
        const real *src = o + (size_t)n * g->dp;
        if (accumulate)
            for (int c = 0; c < g->d; c++)
                row[c] += src[c];
        else
            memcpy(row, src, g->d * sizeof(real));
    }
}

/* s[N][Np] += bias (NULL: none) (+ the mask between different labels) */
HERBS_INLINE void FN(wa_add_bias_mask)(real *s, const real *bias, const int *label, int masked, const FN(wa_geometry) *g)
{
    const int N = g->N;
    for (int i = 0; bias && i < N; i++) {
        real *row = s + (size_t)i * g->Np;
        const real *b = bias + (size_t)i * N;
#pragma omp simd
        for (int j = 0; j < N; j++)
            row[j] += b[j];
    }
    for (int i = 0; masked && i < N; i++) {
        real *row = s + (size_t)i * g->Np;
        const int li = label[i];
#pragma omp simd
        for (int j = 0; j < N; j++)
            row[j] += label[j] != li ? WA_MASK : 0;
    }
}

/* s[N][Np] <- softmax of each row's first N logits; lse[N] <- each row's log-sum-exp (lse NULL: not
   kept) */
HERBS_INLINE void FN(wa_softmax_rows)(real *s, real *lse, const FN(wa_geometry) *g)
{
    const int N = g->N;
    for (int i = 0; i < N; i++) {
        real *row = s + (size_t)i * g->Np, m = row[0], sum = 0;
#pragma omp simd reduction(max : m)
        for (int j = 0; j < N; j++)
            m = row[j] > m ? row[j] : m;
#pragma omp simd reduction(+ : sum)
        for (int j = 0; j < N; j++) {
            row[j] = FN(exp_fast)(row[j] - m);
            sum += row[j];
        }
        if (lse)
            lse[i] = m + log(sum);
        const real inv = 1 / sum;
#pragma omp simd
        for (int j = 0; j < N; j++)
            row[j] *= inv;
    }
}

/* The item's output rows o[N][dp] (d columns) to columns h·d.. of the tokens' rows of y[·, C]
   (of bf16 with g->out_bf16, rounded as bf16.h does) */
HERBS_INLINE void FN(wa_put_rows)(real *y, const real *o, int h, const int *tok, const FN(wa_geometry) *g)
{
    for (int n = 0; n < g->N; n++) {
        const real *src = o + (size_t)n * g->dp;
        if (g->out_bf16) {
            uint16_t *row = (uint16_t *)y + (size_t)tok[n] * g->C + h * g->d;
            for (int c = 0; c < g->d; c++)
                row[c] = bf16_from_float((float)src[c]);
        } else {
            memcpy(y + (size_t)tok[n] * g->C + h * g->d, src, g->d * sizeof(real));
        }
    }
}

/* One item forward: logits, softmax (lse saved), p·v written to the tokens' rows of y. */
HERBS_INLINE void FN(wa_forward_item)(const FN(wa_geometry) *g, const FN(wa_work) *w, int masked, const real *x,
                                   const real *bias, int h, real *y, real *lse)
{
    const int N = g->N, Np = g->Np, dp = g->dp, d = g->d, C = g->C;
    FN(wa_gather)(w->q, NULL, x, 3 * C, h * d, g->scale, w->tok, g);
    FN(wa_gather)(w->k, w->kt, x, 3 * C, C + h * d, 1, w->tok, g);
    FN(wa_gather)(w->v, NULL, x, 3 * C, 2 * C + h * d, 1, w->tok, g);
    FN(wa_small_mm)(w->s, Np, w->q, dp, 1, w->kt, Np, N, d, Np, 1);
    FN(wa_add_bias_mask)(w->s, bias, w->label, masked, g);
    FN(wa_softmax_rows)(w->s, lse, g);
    FN(wa_small_mm)(w->o, dp, w->s, Np, 1, w->v, dp, N, N, dp, 1);
    FN(wa_put_rows)(y, w->o, h, w->tok, g);
}
HERBS_ISA_VARIANTS(wa_forward_item,
                   (const FN(wa_geometry) *g, const FN(wa_work) *w, int masked, const real *x, const real *bias, int h,
                    real *y, real *lse),
                   (g, w, masked, x, bias, h, y, lse))

/* One item backward: p recomputed from lse (NULL: as the softmax of the recomputed logits); dp =
   dout·vᵀ; dlogits = p·(dp - Σ_j p·dp);
   dbias += dlogits (dbias NULL: no bias); dq = scale·dlogits·k; dk = dlogitsᵀ·(scale·q); dv = pᵀ·dout. */
HERBS_INLINE void FN(wa_backward_item)(const FN(wa_geometry) *g, const FN(wa_work) *w, int masked, const real *x,
                                    const real *dy, const real *bias, const real *lse, int h, real *dx, real *dbias,
                                    int accumulate)
{
    const int N = g->N, Np = g->Np, dp = g->dp, d = g->d, C = g->C;
    FN(wa_gather)(w->q, NULL, x, 3 * C, h * d, g->scale, w->tok, g);
    FN(wa_gather)(w->k, w->kt, x, 3 * C, C + h * d, 1, w->tok, g);
    FN(wa_gather)(w->v, w->vt, x, 3 * C, 2 * C + h * d, 1, w->tok, g);
    FN(wa_gather)(w->dy, NULL, dy, C, h * d, 1, w->tok, g);
    FN(wa_small_mm)(w->s, Np, w->q, dp, 1, w->kt, Np, N, d, Np, 1);
    FN(wa_add_bias_mask)(w->s, bias, w->label, masked, g);
    FN(wa_small_mm)(w->ds, Np, w->dy, dp, 1, w->vt, Np, N, d, Np, 1);
    if (!lse)
        FN(wa_softmax_rows)(w->s, NULL, g);
    for (int i = 0; i < N; i++) {
        real *p = w->s + (size_t)i * Np, *gi = w->ds + (size_t)i * Np, dot = 0;
        if (lse) {
            const real l = lse[i];
#pragma omp simd
            for (int j = 0; j < N; j++)
                p[j] = FN(exp_fast)(p[j] - l);
        }
#pragma omp simd reduction(+ : dot)
        for (int j = 0; j < N; j++)
            dot += p[j] * gi[j];
#pragma omp simd
        for (int j = 0; j < N; j++)
            gi[j] = p[j] * (gi[j] - dot);
        if (dbias) {
            real *db = dbias + (size_t)i * N;
#pragma omp simd
            for (int j = 0; j < N; j++)
                db[j] += gi[j];
        }
    }
    FN(wa_small_mm)(w->o, dp, w->ds, Np, 1, w->k, dp, N, N, dp, g->scale);
    FN(wa_scatter)(dx, 3 * C, h * d, w->o, w->tok, g, accumulate);
    FN(wa_small_mm)(w->o, dp, w->ds, 1, Np, w->q, dp, N, N, dp, 1);
    FN(wa_scatter)(dx, 3 * C, C + h * d, w->o, w->tok, g, accumulate);
    FN(wa_small_mm)(w->o, dp, w->s, 1, Np, w->dy, dp, N, N, dp, 1);
    FN(wa_scatter)(dx, 3 * C, 2 * C + h * d, w->o, w->tok, g, accumulate);
}
HERBS_ISA_VARIANTS(wa_backward_item,
                   (const FN(wa_geometry) *g, const FN(wa_work) *w, int masked, const real *x, const real *dy,
                    const real *bias, const real *lse, int h, real *dx, real *dbias, int accumulate),
                   (g, w, masked, x, dy, bias, lse, h, dx, dbias, accumulate))

/* body for every (query, key) pair in order, with `pair` = query·N + key and `row` = the pair's
   row of the bias table; query (yi, xi), key (yj, xj): no divisions. */
#define WA_FOR_PAIRS(window, body)                                                                \
    for (int yi = 0, pair = 0; yi < (window); yi++)                                               \
        for (int xi = 0; xi < (window); xi++)                                                     \
            for (int yj = 0; yj < (window); yj++)                                                 \
                for (int xj = 0, row = ((yi - yj + (window)-1) * (2 * (window)-1) + xi + (window)-1); \
                     xj < (window); xj++, pair++, row--)                                          \
                    body

void FN(relative_bias_forward)(real *bias, const real *table, int heads, int window)
{
    const size_t nn = (size_t)window * window * window * window;
#pragma omp parallel for schedule(static) if (heads * nn > 65536)
    for (int h = 0; h < heads; h++) {
        real *b = bias + h * nn;
        WA_FOR_PAIRS(window, { b[pair] = table[(size_t)row * heads + h]; })
    }
}

void FN(relative_bias_backward)(real *dtable, const real *dbias, int heads, int window)
{
    const size_t nn = (size_t)window * window * window * window;
#pragma omp parallel for schedule(static) if (heads * nn > 65536)
    for (int h = 0; h < heads; h++) { /* each head owns a column of the table: no races */
        const real *d = dbias + h * nn;
        WA_FOR_PAIRS(window, { dtable[(size_t)row * heads + h] += d[pair]; })
    }
}

#define WA_PARALLEL(items, g) if ((items) > 1 && (double)(items) * (g).N * (g).N * (g).d > 1e5)

/* The thread's work area: aligned to a vector inside the caller's buffer. */
static real *FN(wa_thread_work)(real *work, size_t per_thread)
{
    real *base = work + per_thread * omp_get_thread_num();
    const size_t misalign = ((uintptr_t)base / sizeof(real)) % WA_VL;
    return misalign ? base + (WA_VL - misalign) : base;
}

typedef void (*FN(wa_forward_item_fn))(const FN(wa_geometry) *g, const FN(wa_work) *w, int masked, const real *x,
                                       const real *bias, int h, real *y, real *lse);

/* The forward of geometry g (bias NULL: none) with `item` computing each (sample, window, head) item */
static void FN(wa_forward)(FN(wa_forward_item_fn) item, real *out, real *lse, real *work, const real *qkv,
                           const real *bias, int B, FN(wa_geometry) g, int threads)
{
    const int H = g.H, W = g.W, C = g.C, heads = g.heads;
    const long items = (long)B * g.nw * heads;
    const size_t per_thread = FN(wa_work_floats)(&g), out_elem = g.out_bf16 ? sizeof(uint16_t) : sizeof(real);
#pragma omp parallel num_threads(threads) WA_PARALLEL(items, g)
    {
        const FN(wa_work) w = FN(wa_work_of)(FN(wa_thread_work)(work, per_thread), &g);
        FN(wa_walk) walk = {-1, 0, 0};
#pragma omp for schedule(static)
        for (long it = 0; it < items; it++) {
            const int h = (int)(it % heads), win = (int)(it / heads % g.nw), b = (int)(it / heads / g.nw);
            long next_window;
            int next_h;
            const int *next_tok = FN(wa_walk_to)(&walk, &g, &w, it, items, &next_window, &next_h);
            if (next_tok) {
                FN(wa_prefetch_item)(&g, next_tok, next_window, next_h, qkv, sizeof(real), 3, 0);
                FN(wa_prefetch_item)(&g, next_tok, next_window, next_h, out, out_elem, 1, 1);
            }
            real *y = (real *)((char *)out + (size_t)b * H * W * C * out_elem);
            item(&g, &w, walk.masked, qkv + (size_t)b * H * W * 3 * C, bias ? bias + (size_t)h * g.N * g.N : NULL,
                 h, y, lse ? lse + (((size_t)b * g.nw + win) * heads + h) * g.N : NULL);
        }
    }
}

void FN(window_attention_forward)(real *out, real *lse, real *work, const real *qkv, const real *bias, int B, int H,
                                  int W, int C, int heads, int window, int shift, int threads)
{
    FN(wa_forward)(FN(wa_forward_item_isa)(), out, lse, work, qkv, bias, B,
                   FN(wa_geometry_of)(H, W, C, heads, window, shift), threads);
}

void FN(attention_forward)(real *out, real *lse, real *work, const real *qkv, int B, int S, int C, int heads,
                           int threads)
{
    FN(wa_forward)(FN(wa_forward_item_isa)(), out, lse, work, qkv, NULL, B, FN(wa_geometry_global)(S, C, heads),
                   threads);
}

typedef void (*FN(wa_backward_item_fn))(const FN(wa_geometry) *g, const FN(wa_work) *w, int masked, const real *x,
                                        const real *dy, const real *bias, const real *lse, int h, real *dx,
                                        real *dbias, int accumulate);

/* The backward of geometry g (bias and dbias NULL: none) with `item_fn` computing each item */
static void FN(wa_backward)(FN(wa_backward_item_fn) item_fn, real *dqkv, real *dbias, real *work, const real *dout,
                            const real *qkv, const real *bias, const real *lse, int B, FN(wa_geometry) g, int threads,
                            int accumulate)
{
    const int H = g.H, W = g.W, C = g.C, heads = g.heads;
    const long items = (long)B * g.nw * heads;
    const size_t per_thread = FN(wa_work_floats)(&g), nn = (size_t)g.N * g.N;
#pragma omp parallel num_threads(threads) WA_PARALLEL(items, g)
    {
        const FN(wa_work) w = FN(wa_work_of)(FN(wa_thread_work)(work, per_thread), &g);
        const int nt = omp_get_num_threads();
        if (dbias)
            memset(w.dbias, 0, heads * nn * sizeof(real));
        FN(wa_walk) walk = {-1, 0, 0};
#pragma omp for schedule(static)
        for (long item = 0; item < items; item++) {
            const int h = (int)(item % heads), win = (int)(item / heads % g.nw), b = (int)(item / heads / g.nw);
            long next_window;
            int next_h;
            const int *next_tok = FN(wa_walk_to)(&walk, &g, &w, item, items, &next_window, &next_h);
            if (next_tok) {
                FN(wa_prefetch_item)(&g, next_tok, next_window, next_h, qkv, sizeof(real), 3, 0);
                FN(wa_prefetch_item)(&g, next_tok, next_window, next_h, dout, sizeof(real), 1, 0);
                FN(wa_prefetch_item)(&g, next_tok, next_window, next_h, dqkv, sizeof(real), 3, 1);
            }
            item_fn(&g, &w, walk.masked, qkv + (size_t)b * H * W * 3 * C, dout + (size_t)b * H * W * C,
                    bias ? bias + (size_t)h * nn : NULL,
                    lse ? lse + (((size_t)b * g.nw + win) * heads + h) * g.N : NULL, h,
                    dqkv + (size_t)b * H * W * 3 * C, dbias ? w.dbias + (size_t)h * nn : NULL, accumulate);
        }
        /* per-thread bias gradients, added in thread order: deterministic for a thread count (the
           first thread's written when not accumulating); none without a bias */
#pragma omp for ordered schedule(static, 1)
        for (int t = 0; t < (dbias ? nt : 0); t++) {
#pragma omp ordered
            if (accumulate || t > 0)
                for (size_t e = 0; e < heads * nn; e++)
                    dbias[e] += w.dbias[e];
            else
                memcpy(dbias, w.dbias, heads * nn * sizeof(real));
        }
    }
}

void FN(window_attention_backward)(real *dqkv, real *dbias, real *work, const real *dout, const real *qkv,
                                   const real *bias, const real *lse, int B, int H, int W, int C, int heads,
                                   int window, int shift, int threads, int accumulate)
{
    FN(wa_backward)(FN(wa_backward_item_isa)(), dqkv, dbias, work, dout, qkv, bias, lse, B,
                    FN(wa_geometry_of)(H, W, C, heads, window, shift), threads, accumulate);
}

void FN(attention_backward)(real *dqkv, real *work, const real *dout, const real *qkv, const real *lse, int B, int S,
                            int C, int heads, int threads, int accumulate)
{
    FN(wa_backward)(FN(wa_backward_item_isa)(), dqkv, NULL, work, dout, qkv, NULL, lse, B,
                    FN(wa_geometry_global)(S, C, heads), threads, accumulate);
}

/* --- bf16 items: the products on bf16 operands with fp32 accumulation (vdpbf16ps) ------------
   Where PyTorch's autocast puts bf16 in attention: forward q·kᵀ and p·v, backward dout·vᵀ, ds·k,
   dsᵀ·(q·scale) and pᵀ·dout; the logits, softmax, its gradient and the outputs stay fp32. q is
   scaled before rounding. Operands are 32-bit pairs of bf16 along each product's depth; a product
   over the rows of a matrix (pᵀ·, dsᵀ·) takes its rows interleaved in pairs and turned by 16x16
   register transposes. Runs where the CPU has AVX512-BF16 (herbs_bf16_isa_current() is not
   portable); elsewhere the items stay fp32. */
#if !defined(HERBS_F64) && defined(__x86_64__)
#include <immintrin.h>

#include "kernels/transpose_avx512.h"

#define WA_BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,prefer-vector-width=512")))

WA_BF16 static inline __mmask16 wa_lanes(int n)
{
    return n >= 16 ? (__mmask16)0xFFFF : n <= 0 ? (__mmask16)0 : (__mmask16)((1u << n) - 1);
}

/* scale · the first n (of 32) floats at x, zero beyond, as 16 pairs */
WA_BF16 static inline __m512i wa_pairs32(const float *x, int n, float scale)
{
    const __m512 s = _mm512_set1_ps(scale);
    return (__m512i)_mm512_cvtne2ps_pbh(_mm512_mul_ps(s, _mm512_maskz_loadu_ps(wa_lanes(n - 16), x + 16)),
                                        _mm512_mul_ps(s, _mm512_maskz_loadu_ps(wa_lanes(n), x)));
}

/* dst[Nq2] <- scale · the n floats of a row (zero beyond) as bf16 pairs along it */
WA_BF16 static inline void wa_row_pairs(uint32_t *dst, const float *row, int n, int Nq2, float scale)
{
    for (int j0 = 0; j0 < 2 * Nq2; j0 += 32)
        _mm512_storeu_si512(dst + j0 / 2, wa_pairs32(row + j0, n - j0, scale));
}

/* rows[N][dq2] <- scale · columns col..col+d of the rows tok[n] of src (row stride ld), as pairs */
WA_BF16 static void wa_gather_pairs(uint32_t *rows, int dq2, const float *src, long ld, int col, float scale,
                                    const int *tok, const wa_geometry *g)
{
    for (int n = 0; n < g->N; n++)
        for (int c0 = 0; c0 < 2 * dq2; c0 += 32)
            _mm512_storeu_si512(rows + (size_t)n * dq2 + c0 / 2,
                                wa_pairs32(src + (size_t)tok[n] * ld + col + c0, g->d - c0, scale));
}

/* kt[dq2][N16] <- k[N][dq2] transposed (zero beyond N): 16x16 blocks of pairs transposed in
   registers */
WA_BF16 static void wa_transpose_pairs(uint32_t *kt, const uint32_t *k, int N, int dq2, int N16)
{
    for (int n0 = 0; n0 < N16; n0 += 16)
        for (int p0 = 0; p0 < dq2; p0 += 16) {
            __m512 r[16];
#pragma GCC unroll 16
            for (int i = 0; i < 16; i++)
                r[i] = n0 + i < N ? _mm512_loadu_ps(k + (size_t)(n0 + i) * dq2 + p0) : _mm512_setzero_ps();
            transpose16(r);
#pragma GCC unroll 16
            for (int j = 0; j < 16; j++)
                _mm512_storeu_ps(kt + (size_t)(p0 + j) * N16 + n0, r[j]);
        }
}

/* out[pairs][w16] <- rows 2i and 2i + 1 of a matrix of n rows and `width` columns interleaved as
   scale · bf16 pairs, zero beyond n and width: row r at src + (tok ? tok[r] : r)·ld + col (the
   item's v from its tokens' rows, or the rows of p) */
WA_BF16 static void wa_pair_rows(uint32_t *out, int pairs, int w16, const float *src, long ld, int col, const int *tok,
                                 int n, int width, float scale)
{
    const __m512i interleave = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7,
                                                22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    const __m512 sc = _mm512_set1_ps(scale);
    for (int i = 0; i < pairs; i++) {
        const int n0 = 2 * i, n1 = n0 + 1;
        const float *x0 = src + (size_t)(n0 < n ? (tok ? tok[n0] : n0) : 0) * ld + col;
        const float *x1 = src + (size_t)(n1 < n ? (tok ? tok[n1] : n1) : 0) * ld + col;
        for (int c0 = 0; c0 < w16; c0 += 16) {
            const __mmask16 m = wa_lanes(width - c0);
            const __m512 a = _mm512_mul_ps(sc, _mm512_maskz_loadu_ps(n0 < n ? m : 0, x0 + c0));
            const __m512 b = _mm512_mul_ps(sc, _mm512_maskz_loadu_ps(n1 < n ? m : 0, x1 + c0));
            _mm512_storeu_si512(out + (size_t)i * w16 + c0,
                                _mm512_permutexvar_epi16(interleave, (__m512i)_mm512_cvtne2ps_pbh(b, a)));
        }
    }
}

/* out[r][v·16 ..] = alpha · Σ_p a[r·lda + p] · b[p·ldb + v·16 ..] over K2 pairs, r < R, v < V, with
   vdpbf16ps (R, V constants once inlined) */
WA_BF16 static inline __attribute__((always_inline)) void wa_mm_pairs_block(float *out, long ldo, const uint32_t *a,
                                                                          long lda, const uint32_t *b, long ldb, int K2,
                                                                          float alpha, const int R, const int V)
{
    __m512 acc[4][4];
    for (int r = 0; r < R; r++)
        for (int v = 0; v < V; v++)
            acc[r][v] = _mm512_setzero_ps();
    for (int p = 0; p < K2; p++) {
        __m512bh bv[4];
        for (int v = 0; v < V; v++)
            bv[v] = (__m512bh)_mm512_loadu_si512(b + (size_t)p * ldb + 16 * v);
        for (int r = 0; r < R; r++) {
            const __m512bh x = (__m512bh)_mm512_set1_epi32((int)a[(size_t)r * lda + p]);
            for (int v = 0; v < V; v++)
                acc[r][v] = _mm512_dpbf16_ps(acc[r][v], x, bv[v]);
        }
    }
    for (int r = 0; r < R; r++)
        for (int v = 0; v < V; v++)
            _mm512_storeu_ps(out + (size_t)r * ldo + 16 * v, _mm512_mul_ps(_mm512_set1_ps(alpha), acc[r][v]));
}

/* out[M][cols] (row stride ldo) = alpha · a[M][K2 pairs] · b[K2 pairs][cols], cols a multiple of 16, as
   wa_small_mm */
WA_BF16 static void wa_mm_pairs(float *out, long ldo, const uint32_t *a, long lda, const uint32_t *b, long ldb, int M,
                                int K2, int cols, float alpha)
{
    int r = 0;
    for (; r + 4 <= M; r += 4) {
        int c = 0;
        for (; c + 64 <= cols; c += 64)
            wa_mm_pairs_block(out + (size_t)r * ldo + c, ldo, a + (size_t)r * lda, lda, b + c, ldb, K2, alpha, 4, 4);
        for (; c + 32 <= cols; c += 32)
            wa_mm_pairs_block(out + (size_t)r * ldo + c, ldo, a + (size_t)r * lda, lda, b + c, ldb, K2, alpha, 4, 2);
        for (; c < cols; c += 16)
            wa_mm_pairs_block(out + (size_t)r * ldo + c, ldo, a + (size_t)r * lda, lda, b + c, ldb, K2, alpha, 4, 1);
    }
    for (; r < M; r++) {
        int c = 0;
        for (; c + 64 <= cols; c += 64)
            wa_mm_pairs_block(out + (size_t)r * ldo + c, ldo, a + (size_t)r * lda, lda, b + c, ldb, K2, alpha, 1, 4);
        for (; c < cols; c += 16)
            wa_mm_pairs_block(out + (size_t)r * ldo + c, ldo, a + (size_t)r * lda, lda, b + c, ldb, K2, alpha, 1, 1);
    }
}

/* The item's output rows o[N][dp] (d columns) to columns h·d.. of the tokens' rows of y[·, C], as
   wa_put_rows (bf16 with g->out_bf16: vcvtne2ps2bf16's rounding, as the GEMM's packing rounds) */
WA_BF16 static void wa_put_rows_bf16(float *y, const float *o, int h, const int *tok, const wa_geometry *g)
{
    if (!g->out_bf16) {
        wa_put_rows(y, o, h, tok, g);
        return;
    }
    for (int n = 0; n < g->N; n++) {
        uint16_t *row = (uint16_t *)y + (size_t)tok[n] * g->C + h * g->d;
        for (int c0 = 0; c0 < g->d; c0 += 32) {
            const int rest = g->d - c0;
            const __m512i v = wa_pairs32(o + (size_t)n * g->dp + c0, rest, 1.0f);
            if (rest >= 32) /* a masked store costs more than a plain one */
                _mm512_storeu_si512(row + c0, v);
            else
                _mm512_mask_storeu_epi16(row + c0, ((__mmask32)1 << rest) - 1, v);
        }
    }
}

/* e^x on 16 lanes: fastmath.h's exp_fast, its constants */
WA_BF16 static inline __m512 wa_exp16(__m512 x)
{
    const __m512 shifter = _mm512_set1_ps(EXP_SHIFTER);
    const __m512 k = _mm512_fmadd_ps(x, _mm512_set1_ps(EXP_LOG2E), shifter);
    const __m512 n = _mm512_sub_ps(k, shifter);
    const __m512i ni = _mm512_sub_epi32(_mm512_castps_si512(k), _mm512_castps_si512(shifter));
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(EXP_LN2_HI), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(EXP_LN2_LO), r);
    __m512 p = _mm512_set1_ps(EXP_P0);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_P1));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_P2));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_P3));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_P4));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_P5));
    const __m512 e = _mm512_add_ps(_mm512_fmadd_ps(_mm512_mul_ps(p, r), r, r), _mm512_set1_ps(1.0f));
    const __m512 scale = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(ni, _mm512_set1_epi32(127)), 23));
    return _mm512_maskz_mul_ps(_mm512_cmp_ps_mask(x, _mm512_set1_ps(EXP_UNDERFLOW), _CMP_GE_OQ), e, scale);
}

/* The logits s[N][Np] of q·kᵀ -> p[N][Nq2] pairs: per row, + bias (NULL: none) + the mask between
   different labels, softmax (lse[i] its log-sum-exp; lse NULL: not kept), rounded to bf16 pairs,
   zero beyond N; one pass of 16-lane vectors per step and one horizontal max and sum per row. s is
   overwritten; with p NULL it holds the probabilities in fp32 (zero beyond N) instead. */
WA_BF16 static void wa_softmax_pairs(float *s, const float *bias, const int *label, int masked, float *lse,
                                     uint32_t *p, int Nq2, const wa_geometry *g)
{
    const int N = g->N, Np = g->Np;
    for (int i = 0; i < N; i++) {
        float *row = s + (size_t)i * Np;
        const __m512i li = _mm512_set1_epi32(label[i]);
        __m512 top = _mm512_set1_ps(-INFINITY);
        for (int j = 0; j < N; j += 16) {
            const __mmask16 m = wa_lanes(N - j);
            __m512 x = _mm512_maskz_loadu_ps(m, row + j);
            if (bias)
                x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(m, bias + (size_t)i * N + j));
            if (masked) {
                const __mmask16 other = _mm512_mask_cmpneq_epi32_mask(m, _mm512_maskz_loadu_epi32(m, label + j), li);
                x = _mm512_mask_add_ps(x, other, x, _mm512_set1_ps(WA_MASK));
            }
            _mm512_storeu_ps(row + j, x);
            top = _mm512_mask_max_ps(top, m, top, x);
        }
        const float mx = _mm512_reduce_max_ps(top);
        __m512 sum = _mm512_setzero_ps();
        for (int j = 0; j < N; j += 16) {
            const __m512 e = _mm512_maskz_mov_ps(wa_lanes(N - j), wa_exp16(_mm512_sub_ps(_mm512_loadu_ps(row + j),
                                                                                         _mm512_set1_ps(mx))));
            _mm512_storeu_ps(row + j, e);
            sum = _mm512_add_ps(sum, e);
        }
        const float total = _mm512_reduce_add_ps(sum);
        if (lse)
            lse[i] = mx + logf(total);
        const __m512 inv = _mm512_set1_ps(1.0f / total);
        for (int j = 0; !p && j < Np; j += 16)
            _mm512_storeu_ps(row + j, _mm512_mul_ps(_mm512_loadu_ps(row + j), inv));
        if (p)
            wa_row_pairs(p + (size_t)i * Nq2, row, N, Nq2, 1.0f / total);
    }
}

/* One item forward as wa_forward_item, the two products in bf16 */
WA_BF16 static void wa_forward_item_bf16(const wa_geometry *g, const wa_work *w, int masked, const float *x,
                                         const float *bias, int h, float *y, float *lse)
{
    const int N = g->N, d = g->d, C = g->C, dq2 = (d + 31) / 32 * 16, Nq2 = (N + 31) / 32 * 16, keys2 = (N + 1) / 2;
    const wa_pairs *pr = &w->pairs;
    wa_gather_pairs(pr->q, dq2, x, 3 * C, h * d, g->scale, w->tok, g);
    wa_gather_pairs(pr->k, dq2, x, 3 * C, C + h * d, 1.0f, w->tok, g);
    wa_transpose_pairs(pr->kt, pr->k, N, dq2, g->Np);
    wa_pair_rows(pr->v, keys2, g->dp, x, 3 * C, 2 * C + h * d, w->tok, N, d, 1.0f);
    wa_mm_pairs(w->s, g->Np, pr->q, dq2, pr->kt, g->Np, N, dq2, g->Np, 1.0f);
    wa_softmax_pairs(w->s, bias, w->label, masked, lse, pr->p, Nq2, g);
    wa_mm_pairs(w->o, g->dp, pr->p, Nq2, pr->v, g->dp, N, keys2, g->dp, 1.0f); /* the pairs of the N keys only */
    wa_put_rows_bf16(y, w->o, h, w->tok, g);
}

/* ds[N][Np] <- p·(dp - Σ_j p·dp) per row (dp in ds, p in s, both fp32, zero beyond N), and dbias
   (NULL: none) += it */
WA_BF16 static void wa_softmax_backward_rows(float *ds, const float *s, float *dbias, const wa_geometry *g)
{
    const int N = g->N, Np = g->Np;
    for (int i = 0; i < N; i++) {
        const float *p = s + (size_t)i * Np;
        float *gi = ds + (size_t)i * Np;
        __m512 acc = _mm512_setzero_ps();
        for (int j = 0; j < Np; j += 16)
            acc = _mm512_fmadd_ps(_mm512_loadu_ps(p + j), _mm512_loadu_ps(gi + j), acc);
        const __m512 dot = _mm512_set1_ps(_mm512_reduce_add_ps(acc));
        for (int j = 0; j < Np; j += 16) {
            const __m512 v = _mm512_mul_ps(_mm512_loadu_ps(p + j), _mm512_sub_ps(_mm512_loadu_ps(gi + j), dot));
            _mm512_storeu_ps(gi + j, v);
            if (dbias) {
                float *db = dbias + (size_t)i * N + j;
                if (N - j >= 16)
                    _mm512_storeu_ps(db, _mm512_add_ps(_mm512_loadu_ps(db), v));
                else
                    _mm512_mask_storeu_ps(db, wa_lanes(N - j), _mm512_add_ps(_mm512_maskz_loadu_ps(wa_lanes(N - j), db), v));
            }
        }
    }
}

/* cols[N16][Nq2] <- the fp32 matrix m[N][Np] transposed, in bf16 pairs along its rows: the A of a
   product over m's rows (pᵀ·dout, dsᵀ·q) */
WA_BF16 static void wa_transposed_pairs(const wa_pairs *pr, const float *m, const wa_geometry *g)
{
    const int N = g->N, Nq2 = (N + 31) / 32 * 16, N16 = (N + 15) / 16 * 16;
    wa_pair_rows(pr->rows, Nq2, N16, m, g->Np, 0, NULL, N, N, 1.0f);
    wa_transpose_pairs(pr->cols, pr->rows, Nq2, N16, Nq2);
}

/* One item backward as wa_backward_item (lse not used: the probabilities are recomputed), its five
   products in bf16 as autocast runs them: q·kᵀ, dout·vᵀ, ds·k, dsᵀ·(q·scale), pᵀ·dout, the softmax
   and its gradient in fp32, the probabilities and their gradient rounded to bf16 for the products. */
WA_BF16 static void wa_backward_item_bf16(const wa_geometry *g, const wa_work *w, int masked, const float *x,
                                          const float *dy, const float *bias, const float *lse, int h, float *dx,
                                          float *dbias, int accumulate)
{
    const int N = g->N, d = g->d, C = g->C, Np = g->Np, dp = g->dp, dq2 = (d + 31) / 32 * 16;
    const int Nq2 = (N + 31) / 32 * 16, keys2 = (N + 1) / 2;
    const wa_pairs *pr = &w->pairs;
    wa_gather_pairs(pr->q, dq2, x, 3 * C, h * d, g->scale, w->tok, g);
    wa_gather_pairs(pr->k, dq2, x, 3 * C, C + h * d, 1.0f, w->tok, g);
    wa_transpose_pairs(pr->kt, pr->k, N, dq2, Np);
    wa_mm_pairs(w->s, Np, pr->q, dq2, pr->kt, Np, N, dq2, Np, 1.0f);    /* logits */
    wa_softmax_pairs(w->s, bias, w->label, masked, NULL, NULL, Nq2, g); /* p, fp32 */
    wa_gather_pairs(pr->dy, dq2, dy, C, h * d, 1.0f, w->tok, g);
    wa_gather_pairs(pr->k, dq2, x, 3 * C, 2 * C + h * d, 1.0f, w->tok, g); /* v */
    wa_transpose_pairs(pr->vt, pr->k, N, dq2, Np);
    wa_mm_pairs(w->ds, Np, pr->dy, dq2, pr->vt, Np, N, dq2, Np, 1.0f); /* dp = dout·vᵀ */
    wa_softmax_backward_rows(w->ds, w->s, dbias, g);

    /* dq = scale · ds·k */
    for (int i = 0; i < N; i++)
        wa_row_pairs(pr->p + (size_t)i * Nq2, w->ds + (size_t)i * Np, N, Nq2, 1.0f);
    wa_pair_rows(pr->v, keys2, dp, x, 3 * C, C + h * d, w->tok, N, d, 1.0f);
    wa_mm_pairs(w->o, dp, pr->p, Nq2, pr->v, dp, N, keys2, dp, g->scale);
    wa_scatter(dx, 3 * C, h * d, w->o, w->tok, g, accumulate);
    /* dk = dsᵀ·(q·scale) */
    wa_transposed_pairs(pr, w->ds, g);
    wa_pair_rows(pr->v, keys2, dp, x, 3 * C, h * d, w->tok, N, d, g->scale);
    wa_mm_pairs(w->o, dp, pr->cols, Nq2, pr->v, dp, N, keys2, dp, 1.0f);
    wa_scatter(dx, 3 * C, C + h * d, w->o, w->tok, g, accumulate);
    /* dv = pᵀ·dout */
    wa_transposed_pairs(pr, w->s, g);
    wa_pair_rows(pr->v, keys2, dp, dy, C, h * d, w->tok, N, d, 1.0f);
    wa_mm_pairs(w->o, dp, pr->cols, Nq2, pr->v, dp, N, keys2, dp, 1.0f);
    wa_scatter(dx, 3 * C, 2 * C + h * d, w->o, w->tok, g, accumulate);
}
#endif


#ifndef HERBS_F64
/* Whether precision p runs the bf16 items: bf16 products where the CPU has AVX512-BF16. */
static int wa_bf16_items(herbs_precision p)
{
#if defined(__x86_64__)
    return p == HERBS_BF16 && herbs_bf16_isa_current() != HERBS_BF16_ISA_PORTABLE;
#else
    return 0;
#endif
}

/* The forward item of precision p. */
static wa_forward_item_fn wa_forward_item_at(herbs_precision p)
{
#if defined(__x86_64__)
    if (wa_bf16_items(p))
        return wa_forward_item_bf16;
#endif
    return wa_forward_item_isa();
}

void window_attention_forward_at(herbs_precision p, float *out, uint16_t *out_bf16, float *lse, float *work,
                                 const float *qkv, const float *bias, int B, int H, int W, int C, int heads,
                                 int window, int shift, int threads)
{
    wa_geometry g = wa_geometry_of(H, W, C, heads, window, shift);
    g.out_bf16 = out_bf16 != NULL;
    wa_forward(wa_forward_item_at(p), out_bf16 ? (float *)out_bf16 : out, lse, work, qkv, bias, B, g, threads);
}

void attention_forward_at(herbs_precision p, float *out, uint16_t *out_bf16, float *lse, float *work,
                          const float *qkv, int B, int S, int C, int heads, int threads)
{
    wa_geometry g = wa_geometry_global(S, C, heads);
    g.out_bf16 = out_bf16 != NULL;
    wa_forward(wa_forward_item_at(p), out_bf16 ? (float *)out_bf16 : out, lse, work, qkv, NULL, B, g, threads);
}

/* The backward item of precision p. */
static wa_backward_item_fn wa_backward_item_at(herbs_precision p)
{
#if defined(__x86_64__)
    if (wa_bf16_items(p))
        return wa_backward_item_bf16;
#endif
    return wa_backward_item_isa();
}

void window_attention_backward_at(herbs_precision p, float *dqkv, float *dbias, float *work, const float *dout,
                                  const float *qkv, const float *bias, const float *lse, int B, int H, int W, int C,
                                  int heads, int window, int shift, int threads, int accumulate)
{
    wa_backward(wa_backward_item_at(p), dqkv, dbias, work, dout, qkv, bias, lse, B,
                wa_geometry_of(H, W, C, heads, window, shift), threads, accumulate);
}

void attention_backward_at(herbs_precision p, float *dqkv, float *work, const float *dout, const float *qkv,
                           const float *lse, int B, int S, int C, int heads, int threads, int accumulate)
{
    wa_backward(wa_backward_item_at(p), dqkv, NULL, work, dout, qkv, NULL, lse, B, wa_geometry_global(S, C, heads),
                threads, accumulate);
}
#endif
