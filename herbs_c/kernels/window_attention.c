/* Window attention, one (sample, window, head) item at a time: the item's q, k, v rows are copied
   into the thread's work area, the small products go through gemm (serial inside the parallel
   region), and the softmax probabilities are recomputed in backward from the saved log-sum-exp
   rather than stored. */
#include <omp.h>
#include <string.h>

#include "kernels/kernels.h"
#include "kernels/precision.h"

#define WA_MASK ((real)-100)

/* The item's tokens: tok[n] = token index (in the sample) of window position n, and, with a
   shift, label[n] = the pre-roll region (3·row region + column region) of that position. */
static void FN(window_tokens)(int *tok, int *label, int H, int W, int window, int shift, int wy, int wx)
{
    for (int i = 0; i < window; i++)
        for (int j = 0; j < window; j++) {
            const int r = wy * window + i, c = wx * window + j, n = i * window + j;
            tok[n] = ((r + shift) % H) * W + (c + shift) % W;
            if (shift) {
                int lr = r < H - window ? 0 : r < H - shift ? 1 : 2;
                int lc = c < W - window ? 0 : c < W - shift ? 1 : 2;
                label[n] = 3 * lr + lc;
            }
        }
}

/* Whether a window holds more than one region (only the last row and column of windows do). */
static int FN(window_masked)(int H, int W, int window, int shift, int wy, int wx)
{
    return shift && ((wy + 1) * window == H || (wx + 1) * window == W);
}

/* dst[N, d] <- rows tok[n] of src (row stride ld), starting at column col. */
static void FN(gather_rows)(real *dst, const real *src, long ld, int col, const int *tok, int N, int d)
{
    for (int n = 0; n < N; n++)
        memcpy(dst + (size_t)n * d, src + (size_t)tok[n] * ld + col, d * sizeof(real));
}

/* rows tok[n] of dst (row stride ld) from column col += src[N, d] */
static void FN(scatter_add_rows)(real *dst, long ld, int col, const real *src, const int *tok, int N, int d)
{
    for (int n = 0; n < N; n++) {
        real *row = dst + (size_t)tok[n] * ld + col;
        for (int c = 0; c < d; c++)
            row[c] += src[(size_t)n * d + c];
    }
}

/* s[N, N] (scaled logits) += bias + mask, row by row. */
static void FN(add_bias_mask)(real *s, const real *bias, const int *label, int masked, int N)
{
    for (int i = 0; i < N; i++) {
        real *row = s + (size_t)i * N;
        const real *b = bias + (size_t)i * N;
        for (int j = 0; j < N; j++)
            row[j] += b[j];
        if (masked)
            for (int j = 0; j < N; j++)
                row[j] += label[j] != label[i] ? WA_MASK : 0;
    }
}

void FN(relative_bias_forward)(real *bias, const real *table, int heads, int window)
{
    const int N = window * window, span = 2 * window - 1;
    for (int h = 0; h < heads; h++)
        for (int i = 0; i < N; i++)
            for (int j = 0; j < N; j++) {
                const int dy = i / window - j / window, dx = i % window - j % window;
                bias[((size_t)h * N + i) * N + j] = table[((dy + window - 1) * span + dx + window - 1) * heads + h];
            }
}

void FN(relative_bias_backward)(real *dtable, const real *dbias, int heads, int window)
{
    const int N = window * window, span = 2 * window - 1;
    for (int h = 0; h < heads; h++)
        for (int i = 0; i < N; i++)
            for (int j = 0; j < N; j++) {
                const int dy = i / window - j / window, dx = i % window - j % window;
                dtable[((dy + window - 1) * span + dx + window - 1) * heads + h] += dbias[((size_t)h * N + i) * N + j];
            }
}

size_t FN(window_attention_work)(int head_dim, int window, int heads)
{
    const size_t N = (size_t)window * window;
    /* backward: q, k, v, dout, dq, dk, dv [N, d]; p, dp [N, N]; its own dbias [heads, N, N];
       tokens and labels as ints (counted as floats, 2N) */
    return 7 * N * head_dim + 2 * N * N + (size_t)heads * N * N + 2 * N;
}

void FN(window_attention_forward)(real *out, real *lse, real *work, const real *qkv, const real *bias, int B, int H,
                                  int W, int C, int heads, int window, int shift, int threads)
{
    const int N = window * window, d = C / heads, nwx = W / window, nw = (H / window) * nwx;
    const long items = (long)B * nw * heads;
    const real scale = 1 / sqrt((real)d);
    const size_t per_thread = FN(window_attention_work)(d, window, heads);
#pragma omp parallel num_threads(threads) if (items > 1 && (double)items * N * N * d > 1e5)
    {
        real *q = work + per_thread * omp_get_thread_num(), *k = q + (size_t)N * d, *v = k + (size_t)N * d;
        real *o = v + (size_t)N * d, *s = o + (size_t)N * d;
        int *tok = (int *)(s + (size_t)N * N), *label = tok + N;
#pragma omp for schedule(static)
        for (long item = 0; item < items; item++) {
            const int h = (int)(item % heads), w = (int)(item / heads % nw), b = (int)(item / heads / nw);
            const int wy = w / nwx, wx = w % nwx, masked = FN(window_masked)(H, W, window, shift, wy, wx);
            const real *x = qkv + (size_t)b * H * W * 3 * C;
            FN(window_tokens)(tok, label, H, W, window, shift, wy, wx);
            FN(gather_rows)(q, x, 3 * C, h * d, tok, N, d);
            FN(gather_rows)(k, x, 3 * C, C + h * d, tok, N, d);
            FN(gather_rows)(v, x, 3 * C, 2 * C + h * d, tok, N, d);
            FN(gemm)(0, 1, N, N, d, scale, q, d, k, d, 0, s, N);
            FN(add_bias_mask)(s, bias + (size_t)h * N * N, label, masked, N);
            real *row_lse = lse + (((size_t)b * nw + w) * heads + h) * N;
            for (int i = 0; i < N; i++) {
                real *row = s + (size_t)i * N, m = row[0], sum = 0;
                for (int j = 1; j < N; j++)
                    m = row[j] > m ? row[j] : m;
                for (int j = 0; j < N; j++) {
                    row[j] = exp(row[j] - m);
                    sum += row[j];
                }
                for (int j = 0; j < N; j++)
                    row[j] /= sum;
                row_lse[i] = m + log(sum);
            }
            FN(gemm)(0, 0, N, d, N, 1, s, N, v, d, 0, o, d);
            real *y = out + (size_t)b * H * W * C;
            for (int n = 0; n < N; n++)
                memcpy(y + (size_t)tok[n] * C + h * d, o + (size_t)n * d, d * sizeof(real));
        }
    }
}

void FN(window_attention_backward)(real *dqkv, real *dbias, real *work, const real *dout, const real *qkv,
                                   const real *bias, const real *lse, int B, int H, int W, int C, int heads,
                                   int window, int shift, int threads)
{
    const int N = window * window, d = C / heads, nwx = W / window, nw = (H / window) * nwx;
    const long items = (long)B * nw * heads;
    const real scale = 1 / sqrt((real)d);
    const size_t per_thread = FN(window_attention_work)(d, window, heads), nd = (size_t)N * d, nn = (size_t)N * N;
#pragma omp parallel num_threads(threads) if (items > 1 && (double)items * N * N * d > 1e5)
    {
        real *q = work + per_thread * omp_get_thread_num(), *k = q + nd, *v = k + nd, *dy = v + nd;
        real *dq = dy + nd, *dk = dq + nd, *dv = dk + nd, *p = dv + nd, *dp = p + nn, *my_dbias = dp + nn;
        int *tok = (int *)(my_dbias + heads * nn), *label = tok + N;
        memset(my_dbias, 0, heads * nn * sizeof(real));
        const int nt = omp_get_num_threads();
#pragma omp for schedule(static)
        for (long item = 0; item < items; item++) {
            const int h = (int)(item % heads), w = (int)(item / heads % nw), b = (int)(item / heads / nw);
            const int wy = w / nwx, wx = w % nwx, masked = FN(window_masked)(H, W, window, shift, wy, wx);
            const real *x = qkv + (size_t)b * H * W * 3 * C;
            FN(window_tokens)(tok, label, H, W, window, shift, wy, wx);
            FN(gather_rows)(q, x, 3 * C, h * d, tok, N, d);
            FN(gather_rows)(k, x, 3 * C, C + h * d, tok, N, d);
            FN(gather_rows)(v, x, 3 * C, 2 * C + h * d, tok, N, d);
            FN(gather_rows)(dy, dout + (size_t)b * H * W * C, C, h * d, tok, N, d);
            FN(gemm)(0, 1, N, N, d, scale, q, d, k, d, 0, p, N);
            FN(add_bias_mask)(p, bias + (size_t)h * nn, label, masked, N);
            const real *row_lse = lse + (((size_t)b * nw + w) * heads + h) * N;
            for (int i = 0; i < N; i++)
                for (int j = 0; j < N; j++)
                    p[(size_t)i * N + j] = exp(p[(size_t)i * N + j] - row_lse[i]);
            FN(gemm)(1, 0, N, d, N, 1, p, N, dy, d, 0, dv, d);  /* dv = pᵀ·dout */
            FN(gemm)(0, 1, N, N, d, 1, dy, d, v, d, 0, dp, N);  /* dp = dout·vᵀ */
            real *db = my_dbias + (size_t)h * nn;
            for (int i = 0; i < N; i++) { /* dlogits = p·(dp - Σ_j p·dp), kept in dp */
                real *pi = p + (size_t)i * N, *gi = dp + (size_t)i * N, dot = 0;
                for (int j = 0; j < N; j++)
                    dot += pi[j] * gi[j];
                for (int j = 0; j < N; j++) {
                    gi[j] = pi[j] * (gi[j] - dot);
                    db[(size_t)i * N + j] += gi[j];
                }
            }
            FN(gemm)(0, 0, N, d, N, scale, dp, N, k, d, 0, dq, d); /* dq = scale·dlogits·k */
            FN(gemm)(1, 0, N, d, N, scale, dp, N, q, d, 0, dk, d); /* dk = scale·dlogitsᵀ·q */
            real *dx = dqkv + (size_t)b * H * W * 3 * C;
            FN(scatter_add_rows)(dx, 3 * C, h * d, dq, tok, N, d);
            FN(scatter_add_rows)(dx, 3 * C, C + h * d, dk, tok, N, d);
            FN(scatter_add_rows)(dx, 3 * C, 2 * C + h * d, dv, tok, N, d);
        }
#pragma omp for ordered schedule(static, 1)
        for (int t = 0; t < nt; t++) {
#pragma omp ordered
            for (size_t e = 0; e < heads * nn; e++)
                dbias[e] += my_dbias[e];
        }
    }
}
