/* The float GEMM driver, in the BLIS structure: for each NC-wide block of columns and KC-deep
   slice of K, the B block is packed into NR-wide panels (shared by the team); each thread packs
   MC-row blocks of A into MR-row panels and runs the macro-kernel, which walks the tiles and
   calls the ISA's micro-kernel. Work items are (A block, range of B panels), so short-and-wide
   products split over columns and tall ones over rows. */
#include <omp.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "core/arena.h"
#include "core/cpu.h"
#include "core/threads.h"
#include "kernels/gemm_microkernels.h"
#include "kernels/kernels.h"

#define FLOPS_PER_THREAD 4.0e6 /* below this a second thread costs more than it gives */

const gemm_microkernel *gemm_microkernel_current(void)
{
    switch (herbs_isa_current()) {
    case HERBS_ISA_AVX512: return &gemm_microkernel_avx512;
    case HERBS_ISA_AVX2: return &gemm_microkernel_avx2;
    default: return &gemm_microkernel_portable;
    }
}

/* --- per-OS-thread pack buffers, freed when the thread ends ------------------------------ */

typedef struct {
    float *data;
    size_t capacity; /* floats */
} workspace;

static pthread_key_t workspace_key;
static pthread_once_t workspace_once = PTHREAD_ONCE_INIT;

static void workspace_destroy(void *p)
{
    workspace *ws = p;
    herbs_free(ws->data);
    free(ws);
}

static void workspace_key_create(void) { pthread_key_create(&workspace_key, workspace_destroy); }

/* This thread's buffer of at least `floats` floats, or NULL when memory runs out. */
static float *workspace_get(size_t floats)
{
    pthread_once(&workspace_once, workspace_key_create);
    workspace *ws = pthread_getspecific(workspace_key);
    if (!ws) {
        ws = calloc(1, sizeof *ws);
        if (!ws || pthread_setspecific(workspace_key, ws) != 0) {
            free(ws);
            return NULL;
        }
    }
    if (ws->capacity < floats) {
        herbs_free(ws->data);
        ws->capacity = 0;
        ws->data = herbs_aligned_alloc(floats * sizeof(float));
        if (!ws->data)
            return NULL;
        ws->capacity = floats;
    }
    return ws->data;
}

/* --- packing ------------------------------------------------------------------------------ */

/* dst [ceil(m/mr)][k][mr] <- op(A)[0:m, 0:k] (rows beyond m are zero). */
static void pack_a(int trans, int m, int k, const float *A, long lda, int mr, float *dst)
{
    for (int p0 = 0; p0 < m; p0 += mr, dst += (size_t)k * mr) {
        int rows = m - p0 < mr ? m - p0 : mr;
        if (!trans) {
            for (int i = 0; i < rows; i++) {
                const float *src = A + (size_t)(p0 + i) * lda;
                for (int kk = 0; kk < k; kk++)
                    dst[(size_t)kk * mr + i] = src[kk];
            }
        } else {
            for (int kk = 0; kk < k; kk++)
                memcpy(dst + (size_t)kk * mr, A + (size_t)kk * lda + p0, rows * sizeof(float));
        }
        if (rows < mr)
            for (int kk = 0; kk < k; kk++)
                memset(dst + (size_t)kk * mr + rows, 0, (mr - rows) * sizeof(float));
    }
}

/* dst [k][nr] <- op(B)[0:k, j0:j0+nr] for one panel (columns beyond n are zero). */
static void pack_b_panel(int trans, int n, int k, const float *B, long ldb, int nr, int j0, float *dst)
{
    int cols = n - j0 < nr ? n - j0 : nr;
    if (!trans) {
        for (int kk = 0; kk < k; kk++) {
            memcpy(dst + (size_t)kk * nr, B + (size_t)kk * ldb + j0, cols * sizeof(float));
            if (cols < nr)
                memset(dst + (size_t)kk * nr + cols, 0, (nr - cols) * sizeof(float));
        }
    } else {
        for (int j = 0; j < cols; j++) {
            const float *src = B + (size_t)(j0 + j) * ldb;
            for (int kk = 0; kk < k; kk++)
                dst[(size_t)kk * nr + j] = src[kk];
        }
        for (int j = cols; j < nr; j++)
            for (int kk = 0; kk < k; kk++)
                dst[(size_t)kk * nr + j] = 0.0f;
    }
}

/* --- macro-kernel --------------------------------------------------------------------------- */

/* C[0:m, panels p0..p1) = alpha * Apack · Bpack + beta * C, tile by tile. */
static void macro_kernel(const gemm_microkernel *uk, int m, int n, int k, int p0, int p1, float alpha,
                         const float *apack, const float *bpack, float beta, float *C, long ldc)
{
    const int mr = uk->mr, nr = uk->nr;
    float edge[32 * 32] __attribute__((aligned(64))); /* holds one tile: mr*nr <= 32*32 */
    for (int p = p0; p < p1; p++) {
        int j0 = p * nr, cols = n - j0 < nr ? n - j0 : nr;
        const float *b = bpack + (size_t)p * k * nr;
        for (int i0 = 0; i0 < m; i0 += mr) {
            int rows = m - i0 < mr ? m - i0 : mr;
            const float *a = apack + (size_t)i0 * k;
            float *c = C + (size_t)i0 * ldc + j0;
            if (rows == mr && cols == nr) {
                uk->run(k, a, b, c, ldc, alpha, beta);
                continue;
            }
            uk->run(k, a, b, edge, nr, 1.0f, 0.0f);
            for (int i = 0; i < rows; i++)
                for (int j = 0; j < cols; j++)
                    c[(size_t)i * ldc + j] = beta == 0.0f ? alpha * edge[i * nr + j]
                                                          : alpha * edge[i * nr + j] + beta * c[(size_t)i * ldc + j];
        }
    }
}

static void scale_c(int M, int N, float beta, float *C, long ldc)
{
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++)
            C[(size_t)i * ldc + j] = beta == 0.0f ? 0.0f : beta * C[(size_t)i * ldc + j];
}

void gemm(int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A, long lda,
          const float *B, long ldb, float beta, float *C, long ldc)
{
    if (M <= 0 || N <= 0)
        return;
    if (K <= 0 || alpha == 0.0f) {
        scale_c(M, N, beta, C, ldc);
        return;
    }
    const gemm_microkernel *uk = gemm_microkernel_current();
    const int mr = uk->mr, nr = uk->nr;
    const int nt = herbs_threads_for(2.0 * M * N * K, FLOPS_PER_THREAD);
    const int kc_max = K < uk->kc ? K : uk->kc;
    const int nc_max = N < uk->nc ? (N + nr - 1) / nr * nr : uk->nc;

    /* A blocks: at most mc rows, and enough blocks that every thread has one when M allows. */
    int mc = uk->mc;
    int rows_per_thread = (M + nt - 1) / nt;
    if (rows_per_thread < mc)
        mc = (rows_per_thread + mr - 1) / mr * mr;
    const size_t a_floats = (size_t)mc * kc_max, b_floats = (size_t)kc_max * nc_max;

    float *work = workspace_get(b_floats + (size_t)nt * a_floats);
    if (!work) { /* out of memory for packing: the plain loops need none */
        gemm_reference(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
        return;
    }
    float *bpack = work;

#pragma omp parallel num_threads(nt)
    {
        const int tid = omp_get_thread_num();
        float *apack = work + b_floats + (size_t)tid * a_floats;
        for (int jc = 0; jc < N; jc += uk->nc) {
            const int nc = N - jc < uk->nc ? N - jc : uk->nc;
            const int panels = (nc + nr - 1) / nr;
            const float *Bj = trans_b ? B + (size_t)jc * ldb : B + jc;
            for (int pc = 0; pc < K; pc += uk->kc) {
                const int kc = K - pc < uk->kc ? K - pc : uk->kc;
                const float beta_p = pc == 0 ? beta : 1.0f;
                const float *Bp = trans_b ? Bj + pc : Bj + (size_t)pc * ldb;
                const float *Ap = trans_a ? A + (size_t)pc * lda : A + pc;
#pragma omp for schedule(static)
                for (int p = 0; p < panels; p++)
                    pack_b_panel(trans_b, nc, kc, Bp, ldb, nr, p * nr, bpack + (size_t)p * kc * nr);

                const int blocks = (M + mc - 1) / mc;
                int chunks = blocks >= nt ? 1 : (nt + blocks - 1) / blocks;
                if (chunks > panels)
                    chunks = panels;
                int packed_block = -1;
#pragma omp for schedule(static)
                for (int item = 0; item < blocks * chunks; item++) {
                    const int blk = item / chunks, chunk = item % chunks;
                    const int ic = blk * mc, m = M - ic < mc ? M - ic : mc;
                    if (blk != packed_block) {
                        const float *Ai = trans_a ? Ap + ic : Ap + (size_t)ic * lda;
                        pack_a(trans_a, m, kc, Ai, lda, mr, apack);
                        packed_block = blk;
                    }
                    const int p0 = panels * chunk / chunks, p1 = panels * (chunk + 1) / chunks;
                    macro_kernel(uk, m, nc, kc, p0, p1, alpha, apack, bpack, beta_p,
                                 C + (size_t)ic * ldc + jc, ldc);
                }
            }
        }
    }
}

void gemm_batched(int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A, long lda,
                  long stride_a, const float *B, long ldb, long stride_b, float beta, float *C, long ldc,
                  long stride_c, int batch)
{
    const double flops = 2.0 * M * N * K;
    const int nt = herbs_threads_for(flops * batch, FLOPS_PER_THREAD);
    if (nt > 1 && batch >= 2 * nt && flops < 64.0 * FLOPS_PER_THREAD) {
        /* many small products: one thread per product */
#pragma omp parallel for num_threads(nt) schedule(static)
        for (int b = 0; b < batch; b++)
            gemm(trans_a, trans_b, M, N, K, alpha, A + b * stride_a, lda, B + b * stride_b, ldb, beta,
                 C + b * stride_c, ldc);
        return;
    }
    for (int b = 0; b < batch; b++)
        gemm(trans_a, trans_b, M, N, K, alpha, A + b * stride_a, lda, B + b * stride_b, ldb, beta,
             C + b * stride_c, ldc);
}
