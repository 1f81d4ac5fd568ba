/* The GEMM driver of fp32 and bf16, in the BLIS structure. One thread's product (gemm_serial): for each
   nc-wide block of columns and kc-deep slice of K, the B block is packed into nr-wide panels
   that stay in L2; then for each stripe of mr rows of C, the stripe's A panel is packed (it
   stays in L1) and the ISA's micro-kernel runs along the B panels. Small products read A and
   B in place instead of packing them. Threads (gemm) split C into a grid of
   independent sub-products over rows, columns or depth, chosen by a cost model; each thread
   packs what it needs itself, so the only rendezvous is the end (and, when K is split, one
   barrier before the partial sums are added). On a shared machine every barrier waits for
   the slowest thread's time slice, so fewer is faster. gemm_affine's per-column step runs on
   each tile right after its last slice of K, while the tile is in L1. The micro-kernel (of
   either precision) says how it packs: the element size of its panels and the unit of depth
   they are padded to; a B packed once (gemm_prepack_b) replaces the packing of B blocks, and
   operands already in bf16 (gemm_bf16_inputs, gemm_prepacked_bf16_rows) are packed without
   rounding, rows of such an A read in place where the kernel can. An output that only feeds an
   activation into bf16 (gemm_prepacked_bf16_activation) goes through it stripe by stripe, its fp32
   tiles kept in C or in a stripe buffer of the thread's; so does the residual a product's output is
   added to (gemm_prepacked_residual). */
#include <limits.h>
#include <omp.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "core/cpu.h"
#include "core/scratch.h"
#include "core/threads.h"
#include "kernels/gemm_microkernels.h"
#include "kernels/kernels.h"

#define FLOPS_PER_THREAD 4.0e6     /* below this a second thread costs more than it gives */
#define PACK_COST 64.0             /* packing one element costs about as much as 64 flops */
#define ADD_COST 64.0              /* so does adding one element of a partial sum */
#define SMALL_A_FLOATS 65536       /* with one block of B and an A this small, both are read in place */
#define PREFETCH_BYTES (256 << 10) /* batch items with operands this small fetch the next item's */
#define TRANSPOSED_A_ROWS 512      /* rows of a transposed A packed at once (512 x kc floats in L2) */
#define A_ONCE_BYTES (4u << 20)    /* the most panels of A packed once for all column blocks of a slice */
#define PREPACK_ELEMENTS_PER_THREAD 65536 /* a B packed once is split among threads from this size */

/* Every micro-kernel, with the precision and ISA (herbs_isa or herbs_bf16_isa) it serves. */
static const struct {
    herbs_precision precision;
    int isa;
    const gemm_microkernel *uk;
} registry[] = {
    {HERBS_FP32, HERBS_ISA_AVX512, &gemm_microkernel_avx512},
    {HERBS_FP32, HERBS_ISA_AVX2, &gemm_microkernel_avx2},
    {HERBS_FP32, HERBS_ISA_PORTABLE, &gemm_microkernel_portable},
    {HERBS_BF16, HERBS_BF16_ISA_AMX, &gemm_microkernel_amx_bf16},
    {HERBS_BF16, HERBS_BF16_ISA_AVX512, &gemm_microkernel_avx512_bf16},
    {HERBS_BF16, HERBS_BF16_ISA_PORTABLE, &gemm_microkernel_portable_bf16},
};
#define KERNELS (int)(sizeof registry / sizeof registry[0])

/* The registry's index of the current kernel of `precision`. */
static int kernel_index(herbs_precision precision)
{
    const int isa = precision == HERBS_BF16 ? (int)herbs_bf16_isa_current() : (int)herbs_isa_current();
    int i = 0;
    while (i < KERNELS - 1 && !(registry[i].precision == precision && registry[i].isa == isa))
        i++;
    return i;
}

const gemm_microkernel *gemm_microkernel_for(herbs_precision precision) { return registry[kernel_index(precision)].uk; }

const gemm_microkernel *gemm_microkernel_current(void) { return gemm_microkernel_for(HERBS_FP32); }

/* --- cache blocks ---------------------------------------------------------------------------- */

/* A kernel's cache blocks where a microarchitecture wants other ones than its own (kc, nc, tuned on
   Sapphire Rapids: 48 KiB L1d, 2 MiB L2 per core), as BLIS keeps a configuration per
   microarchitecture. Zen 4 (32 KiB L1d, 1 MiB L2), fp32, measured at 2 threads (best of 5, B packed
   once): kc 384 makes one slice of the K = 384 products (Swin-T's fc2 at batch 8: 161 -> 175-178
   GF/s; ResNet's 3x3 as im2col 195 -> 200), nc 512 keeps the 384 x 512 B block in L2; other model
   shapes within 2%. bf16 (the B prefetch of gemm_avx512.c in, two builds alternated in one process,
   2 threads): deep slices pay there, as fewer passes over C — kc 1536 against the kernel's 512 made
   Swin-L's 576 x 768 x 3072 1.19x, 2304 x 1536 x 1536 1.09x, 144 x 1536 x 1536 1.13x and ResNet's
   49 x 512 x 4608 1.18x faster, with nc 256 so that a block stays 768 KiB (kc 768 / nc 384 gave
   about half of it, 3072 / 128 and 1536 / 384 the same). */
static const struct {
    herbs_cpu_family family;
    const gemm_microkernel *uk;
    int kc, nc;
} blocking[] = {
    {HERBS_CPU_ZEN4, &gemm_microkernel_avx512, 384, 512},
    {HERBS_CPU_ZEN4, &gemm_microkernel_avx512_bf16, 1536, 256},
};

void gemm_cache_blocks(const gemm_microkernel *uk, int *kc, int *nc)
{
    const herbs_cpu_family family = herbs_cpu_family_current();
    *kc = uk->kc;
    *nc = uk->nc;
    for (size_t i = 0; i < sizeof blocking / sizeof blocking[0]; i++)
        if (blocking[i].family == family && blocking[i].uk == uk) {
            *kc = blocking[i].kc;
            *nc = blocking[i].nc;
        }
}

static int kc_of(const gemm_microkernel *uk)
{
    int kc, nc;
    gemm_cache_blocks(uk, &kc, &nc);
    return kc;
}

static int nc_of(const gemm_microkernel *uk)
{
    int kc, nc;
    gemm_cache_blocks(uk, &kc, &nc);
    return nc;
}

/* --- one thread's product ------------------------------------------------------------------ */

static int min_int(int a, int b) { return a < b ? a : b; }
static int round_up(int n, int unit) { return (n + unit - 1) / unit * unit; }

/* The size, a multiple of `unit`, of equal blocks covering n with blocks of at most `most`. */
static int block_size(int n, int most, int unit)
{
    const int blocks = (n + most - 1) / most;
    return round_up((n + blocks - 1) / blocks, unit);
}

/* Bytes of a packed panel of `width` rows or columns and depth k. */
static size_t panel_bytes(const gemm_microkernel *uk, int k, int width)
{
    return (size_t)round_up(k, uk->ku) * width * uk->elem;
}

/* The depth of the K slices of a product of depth K: the same for its B packed once. */
static int slice_depth(const gemm_microkernel *uk, int K) { return block_size(K, kc_of(uk), uk->ku > 16 ? uk->ku : 16); }

/* The widest B block of a product of depth K: nc columns, or for slices shallower than kc as many
   more as keep the block at kc·nc elements (the share of L2 it was sized for), so that a shallow
   product does not re-read all of A once per narrow block. */
static int block_width(const gemm_microkernel *uk, int K)
{
    const long wide = (long)nc_of(uk) * kc_of(uk) / slice_depth(uk, K);
    return wide > INT_MAX ? INT_MAX : (int)wide;
}

/* An operand as stored: op(X) = X or (trans) Xᵀ, of fp32 or (bf16, for a bf16 kernel) of bf16 bit
   patterns, with row stride ld. */
typedef struct {
    const void *data;
    long ld;
    int trans, bf16;
} operand;

/* The operand from op(X)[row, col] on. */
static operand operand_from(operand x, int row, int col)
{
    const size_t at = x.trans ? (size_t)col * x.ld + row : (size_t)row * x.ld + col;
    x.data = (const char *)x.data + at * (x.bf16 ? sizeof(uint16_t) : sizeof(float));
    return x;
}

/* The panels of op(A)[0:m, 0:k] (pack_a) or op(B)[0:k, 0:n] (pack_b) into dst: rounded to the
   kernel's element, or copied from bf16. */
static void pack_a(const gemm_microkernel *uk, const operand *a, int m, int k, void *dst)
{
    if (a->bf16)
        uk->pack_a_from_bf16(a->trans, m, k, a->data, a->ld, dst);
    else
        uk->pack_a(a->trans, m, k, a->data, a->ld, dst);
}

static void pack_b(const gemm_microkernel *uk, const operand *b, int n, int k, void *dst)
{
    if (b->bf16)
        uk->pack_b_from_bf16(b->trans, n, k, b->data, b->ld, dst);
    else
        uk->pack_b(b->trans, n, k, b->data, b->ld, dst);
}

/* Whether rows `ld` elements of `elem` bytes apart can be read in place: rows 4 KiB apart (or a
   multiple) all fall into one set of the L1 cache, which holds fewer than a tile's rows. */
static int readable_in_place(long ld, size_t elem) { return ld * elem % 4096 != 0; }

/* The B panels of one kc x nc block: the first `in_place` columns read where they are (row
   stride ldb), the others packed. */
typedef struct {
    const float *B;
    const char *pack;
    long ldb;
    int in_place;
} b_block;

/* Panel j0 of a block of depth k, and the stride between its rows. */
static const void *b_panel(const gemm_microkernel *uk, const b_block *bb, int j0, int k, long *step)
{
    if (j0 < bb->in_place) {
        *step = bb->ldb;
        return bb->B + j0;
    }
    *step = uk->nr;
    return bb->pack + panel_bytes(uk, k, j0 - bb->in_place);
}

/* A B packed once (gemm_prepack_b): the K slices one after the other, each of the panels of
   all `cols` columns (rounded up to nr); a thread's product starts at column col0. */
typedef struct {
    const char *data;
    int cols, col0;
} b_packed;

/* The step of gemm_affine for the product's columns from `col` on. */
static gemm_tile_step step_from(const gemm_tile_step *step, int col)
{
    return (gemm_tile_step){step->scale ? step->scale + col : NULL, step->shift ? step->shift + col : NULL,
                            step->relu};
}

void gemm_tile_step_apply(const gemm_tile_step *step, float *c, long ldc, int first, int rows, int cols)
{
    if (step)
        affine_rows_current()(c, ldc, step->scale, step->shift, step->relu, cols, first, rows);
}

/* Asks for the n floats at p to be brought into the L2 cache. */
static void prefetch_span(const float *p, long n)
{
    for (long j = 0; j < n; j += 16)
        __builtin_prefetch(p + j, 0, 2);
    __builtin_prefetch(p + n - 1, 0, 2);
}

/* The same for the rows x cols floats at X with row stride ld. */
static void prefetch_matrix(const float *X, long ld, int rows, int cols)
{
    if (ld == cols) {
        prefetch_span(X, (long)rows * cols);
        return;
    }
    for (int i = 0; i < rows; i++)
        prefetch_span(X + (size_t)i * ld, cols);
}

/* What becomes of each stripe's rows as soon as its tiles of their last K slice are stored, while
   they are in cache: R's rows (row stride ldr) added to them by `add` (gemm_prepacked_residual; R
   NULL: none), or the rows sent through `span` into h (row stride ldh; gemm_prepacked_bf16_activation). */
typedef struct {
    const float *r;
    long ldr;
    add_into_span_fn add;
    bf16_activation_span_fn span;
    uint16_t *h;
    long ldh;
} stripe_epilogue;

/* The epilogue of the rows from (row, col) on. */
static stripe_epilogue epilogue_from(const stripe_epilogue *e, int row, int col)
{
    stripe_epilogue at = *e;
    if (at.r)
        at.r += (size_t)row * at.ldr + col;
    if (at.h)
        at.h += (size_t)row * at.ldh + col;
    return at;
}

/* The epilogue on row i of a stripe (at c, n columns). */
static void stripe_row_epilogue(const stripe_epilogue *e, int i, float *c, int n)
{
    if (e->r)
        e->add(c, e->r + (size_t)i * e->ldr, 0, n);
    if (e->span)
        e->span(e->h + (size_t)i * e->ldh, c, 0, n);
}

/* Rows of A packed at once: one stripe, or for a transposed A (whose packing reads rows of A,
   better streamed whole) the stripes of about TRANSPOSED_A_ROWS rows. */
static int rows_packed_at_once(const gemm_microkernel *uk, int trans_a)
{
    return trans_a ? TRANSPOSED_A_ROWS / uk->mr * uk->mr : uk->mr;
}

/* C[0:m, 0:n] = alpha * op(A)[0:m, 0:k] · (B block) + beta * C, a stripe of mr rows of C at a
   time: the stripe's A panel (read in place or packed) stays in L1 while the B panels stream
   from L2, and C is written in the order of its memory, which the hardware prefetcher follows.
   A not read in place is packed `group` rows at a time into apack, unless a_packed says apack
   already holds all m rows' panels. The kernel applies ep (NULL: none) to each tile as it stores it,
   then out (NULL: none) takes the stripe's rows; with c_stripe, C holds one stripe (every stripe's
   rows go to its first rows). */
static void stripes(const gemm_microkernel *uk, int a_in_place, int group, int a_packed, int m, int n, int k,
                    float alpha, operand A, const b_block *bb, float beta, float *C, long ldc, int c_stripe,
                    char *apack, const gemm_tile_step *ep, const stripe_epilogue *out)
{
    const int mr = uk->mr, nr = uk->nr;
    const long lda = A.ld;
    for (int i0 = 0; i0 < m; i0 += mr) {
        const int rows = min_int(mr, m - i0);
        /* in place: a full stripe, any stripe of a bf16 A (whose kernel takes a row count), or for
           rows of an fp32 A the last mr rows, storing the stripe's own */
        const int in_place = a_in_place && (rows == mr || A.bf16 || (!A.trans && m >= mr));
        const int shift = in_place && !A.bf16 ? mr - rows : 0;
        const operand stripe = operand_from(A, i0 - shift, 0);
        const void *a = stripe.data;
        if (!in_place && !a_packed && i0 % group == 0)
            pack_a(uk, &stripe, min_int(group, m - i0), k, apack);
        const char *a_panel = apack + panel_bytes(uk, k, i0 % group);
        float *c_rows = c_stripe ? C : C + (size_t)i0 * ldc; /* the stripe's own first row */
        for (int j0 = 0; j0 < n; j0 += nr) {
            long b_step;
            const void *b = b_panel(uk, bb, j0, k, &b_step);
            float *c = c_rows - (ptrdiff_t)shift * ldc + j0;
            const int cols = min_int(nr, n - j0);
            if (out && out->r && i0 + mr < m) /* the next stripe's residual, a tile's columns at a time */
                prefetch_matrix(out->r + (size_t)(i0 + mr) * out->ldr + j0, out->ldr, min_int(mr, m - i0 - mr), cols);
            const gemm_tile_step at = ep ? step_from(ep, j0) : (gemm_tile_step){0};
            const gemm_tile_step *step = ep ? &at : NULL;
            if (!in_place)
                uk->run(k, a_panel, mr, b, b_step, c, ldc, alpha, beta, rows, cols, step);
            else if (A.bf16)
                uk->run_rows_bf16(k, a, lda, b, c, ldc, alpha, beta, rows, cols, step);
            else if (A.trans)
                uk->run(k, a, lda, b, b_step, c, ldc, alpha, beta, rows, cols, step);
            else /* an edge stripe read in place stores (and steps) its own rows shift.. */
                uk->run_rows(k, a, lda, b, b_step, c, ldc, alpha, beta, shift, cols, step);
        }
        for (int r = 0; out && r < rows; r++)
            stripe_row_epilogue(out, i0 + r, c_rows + (size_t)r * ldc, n);
    }
}

/* C[0:M, 0:N] = alpha * op(A) · op(B) + beta * C with op(A) M x K, op(B) K x N, on the
   calling thread alone. For each nc-wide block of columns and kc-deep slice of K (blocks outer,
   or slices outer when A is packed once per slice), the B block is packed (a product of one small
   block reads its full panels in place), then stripes() runs; with `packed` (B's data NULL), the
   blocks of B packed once are read instead. A is read in place when its rows and the kernel allow
   (a bf16 A whenever the kernel reads one in place, its rows are not transposed and K is whole
   pairs); a bf16 B is always packed. ep (NULL: none) is applied to each tile after its last slice
   of K, then out (NULL: none; only with a packed B) to each stripe's rows; C NULL (with an out that
   has a span): the fp32 result is not kept, its tiles go to a buffer of one stripe (of all rows when K is in
   several slices). Returns 0, or -1 when pack memory ran out with a packed B (without one, the
   plain loops run). */
static int gemm_serial(const gemm_microkernel *uk, int M, int N, int K, float alpha, operand A, operand B,
                       const b_packed *packed, float beta, float *C, long ldc, const gemm_tile_step *ep,
                       const stripe_epilogue *out)
{
    const int kc = slice_depth(uk, K), nc = block_size(N, block_width(uk, K), uk->nr);
    const int small = K <= kc_of(uk) && N <= nc_of(uk) && (size_t)M * K <= SMALL_A_FLOATS && uk->run_rows;
    const int a_in_place = A.bf16 ? uk->run_rows_bf16 && !A.trans && K % 2 == 0 &&
                                        readable_in_place(A.ld, sizeof(uint16_t))
                                  : small && readable_in_place(A.ld, sizeof(float));
    const int b_in_place = small && !packed && !B.trans && !B.bf16 && readable_in_place(B.ld, sizeof(float));
    const int blocks = (N + nc - 1) / nc, slices = (K + kc - 1) / kc;
    /* an A packed for several column blocks is packed once per slice, all its rows (the blocks then
       run slice by slice), where those panels fit A_ONCE_BYTES */
    const int a_once = !a_in_place && blocks > 1 && panel_bytes(uk, kc, round_up(M, uk->mr)) <= A_ONCE_BYTES;
    const int group = a_in_place ? uk->mr : a_once ? round_up(M, uk->mr) : rows_packed_at_once(uk, A.trans);
    const size_t b_bytes = packed ? 0 : panel_bytes(uk, kc, nc), a_bytes = panel_bytes(uk, kc, group);
    const int c_stripe = !C && slices == 1; /* else C NULL: a buffer of all rows */
    if (!C)
        ldc = c_stripe ? nc : N;
    const size_t c_bytes = C ? 0 : (size_t)(c_stripe ? uk->mr : M) * ldc * sizeof(float);
    char *bpack = herbs_scratch(HERBS_SCRATCH_GEMM_PACK, b_bytes + a_bytes + c_bytes);
    if (!bpack && packed)
        return -1;
    if (!bpack) { /* out of memory for packing: the plain loops need none */
        if (A.bf16 || B.bf16)
            gemm_reference_bf16_inputs(A.trans, B.trans, M, N, K, alpha, A.data, A.bf16, A.ld, B.data, B.bf16, B.ld,
                                       beta, C, ldc);
        else
            uk->reference(A.trans, B.trans, M, N, K, alpha, A.data, A.ld, B.data, B.ld, beta, C, ldc);
        gemm_tile_step_apply(ep, C, ldc, 0, M, N);
        return 0;
    }
    char *apack = bpack + b_bytes;
    if (!C)
        C = (float *)(apack + a_bytes);
    for (int step = 0; step < blocks * slices; step++) {
        const int column = a_once ? step % blocks : step / slices, slice = a_once ? step / blocks : step % slices;
        const int jc = column * nc, n = min_int(nc, N - jc), pc = slice * kc, k = min_int(kc, K - pc);
        b_block bb = {NULL, bpack, B.ld, 0};
        if (packed) {
            bb.pack = packed->data + panel_bytes(uk, pc, round_up(packed->cols, uk->nr)) +
                      panel_bytes(uk, k, packed->col0 + jc);
        } else {
            const int in_place = b_in_place ? n / uk->nr * uk->nr : 0;
            const operand block = operand_from(B, pc, jc), rest = operand_from(block, 0, in_place);
            bb.B = block.data;
            bb.in_place = in_place;
            if (in_place < n)
                pack_b(uk, &rest, n - bb.in_place, k, bpack);
        }
        const gemm_tile_step at = ep ? step_from(ep, jc) : (gemm_tile_step){0};
        const stripe_epilogue out_at = out ? epilogue_from(out, 0, jc) : (stripe_epilogue){0};
        stripes(uk, a_in_place, group, a_once && column > 0, M, n, k, alpha, operand_from(A, 0, pc), &bb,
                pc == 0 ? beta : 1.0f, c_stripe ? C : C + jc, ldc, c_stripe, apack, ep && pc + k == K ? &at : NULL,
                out && pc + k == K ? &out_at : NULL);
    }
    return 0;
}

/* --- threads ------------------------------------------------------------------------------- */

/* Threads along rows (m), columns (n) and depth (k) of the product: m * n * k of them. */
typedef struct {
    int m, n, k;
} thread_grid;

/* The rows of A (and C) are shared among threads in units of this: whole stripes, or for a kernel
   whose edge tiles cost their rows, single rows (equal shares, each ending in its own edge stripe). */
static int row_unit(const gemm_microkernel *uk) { return uk->edge_rows ? 1 : uk->mr; }

/* The work of the largest share of a grid in flop-equivalents: its multiply-adds (edge tiles
   padded unless the kernel has edge_rows), its packing (its B columns once, its A rows once per
   column block) and its part of the sum of partial products when K is split. */
static double grid_cost(const gemm_microkernel *uk, int M, int N, int K, thread_grid g)
{
    const int rows = round_up(M, row_unit(uk) * g.m) / g.m, cols = round_up(N, uk->nr * g.n) / g.n;
    const int depth = (K + g.k - 1) / g.k, width = block_width(uk, depth);
    const int column_blocks = (cols + width - 1) / width;
    const double adds = (double)M * N * (g.k - 1) / (g.m * g.n * g.k);
    return 2.0 * rows * cols * depth + PACK_COST * depth * ((double)rows * column_blocks + cols) + ADD_COST * adds;
}

/* The cheapest grid of nt threads; depth is split only when allowed and deep enough. */
static thread_grid choose_grid(const gemm_microkernel *uk, int M, int N, int K, int nt, int split_k)
{
    thread_grid best = {nt, 1, 1};
    double best_cost = grid_cost(uk, M, N, K, best);
    for (int tk = 1; tk <= (split_k ? nt : 1); tk++) {
        if (nt % tk || (tk > 1 && K < tk * kc_of(uk)))
            continue;
        for (int tm = 1; tm <= nt / tk; tm++) {
            if ((nt / tk) % tm)
                continue;
            thread_grid g = {tm, nt / tk / tm, tk};
            double cost = grid_cost(uk, M, N, K, g);
            if (cost < best_cost) {
                best = g;
                best_cost = cost;
            }
        }
    }
    return best;
}

/* Start of share `i` of `parts` over `units` units of `unit` elements, clipped to n. */
static int share(int i, int parts, int n, int unit)
{
    const int units = (n + unit - 1) / unit;
    return min_int(n, (int)((long)units * i / parts) * unit);
}

/* C[rows r0..r1) += the `count` partial products of M x N stored one after the other. */
static void add_partials(int r0, int r1, int M, int N, const float *partial, int count, float *C, long ldc)
{
    for (int p = 0; p < count; p++)
        for (int i = r0; i < r1; i++) {
            const float *src = partial + ((size_t)p * M + i) * N;
            float *dst = C + (size_t)i * ldc;
            for (int j = 0; j < N; j++)
                dst[j] += src[j];
        }
}

static void scale_c(int M, int N, float beta, float *C, long ldc)
{
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++)
            C[(size_t)i * ldc + j] = beta == 0.0f ? 0.0f : beta * C[(size_t)i * ldc + j];
}

/* The kernel's preparation of the calling thread (AMX: its tile configuration), and its end. */
static void thread_begin(const gemm_microkernel *uk)
{
    if (uk->begin)
        uk->begin();
}

static void thread_end(const gemm_microkernel *uk)
{
    if (uk->end)
        uk->end();
}

/* gemm_affine with the micro-kernel uk on operands A and B, or with B's pack `packed` (B's data
   NULL), and out (NULL: none; K >= 1 and a packed B) as gemm_serial's; -1 as gemm_serial. */
static int product_run(const gemm_microkernel *uk, int M, int N, int K, float alpha, operand A, operand B,
                       const char *packed, float beta, float *C, long ldc, const float *scale, const float *shift,
                       int relu, const stripe_epilogue *out)
{
    if (M <= 0 || N <= 0)
        return 0;
    const gemm_tile_step epilogue = {scale, shift, relu};
    const gemm_tile_step *ep = scale || shift || relu ? &epilogue : NULL;
    if (K <= 0 || alpha == 0.0f) {
        scale_c(M, N, beta, C, ldc);
        affine_rows(C, ldc, scale, shift, relu, M, N);
        return 0;
    }
    const int nt = herbs_threads_for(2.0 * M * N * K, FLOPS_PER_THREAD);
    if (nt == 1) {
        const b_packed pb = {packed, N, 0};
        thread_begin(uk);
        const int status = gemm_serial(uk, M, N, K, alpha, A, B, packed ? &pb : NULL, beta, C, ldc, ep, out);
        thread_end(uk);
        return status;
    }
    /* a B packed once is in slices of the whole depth: K is not split */
    thread_grid g = choose_grid(uk, M, N, K, nt, !packed);
    float *partial = NULL; /* K split: the products of depth shares 1.. go here, share 0 into C */
    if (g.k > 1 && !(partial = herbs_scratch(HERBS_SCRATCH_GEMM_PARTIAL, (size_t)(g.k - 1) * M * N * sizeof(float))))
        g = choose_grid(uk, M, N, K, nt, 0);
    int status = 0;

#pragma omp parallel num_threads(nt) reduction(min : status)
    {
        const int t = omp_get_thread_num();
        const int ti = t % g.m, tj = t / g.m % g.n, tk = t / (g.m * g.n);
        const int m0 = share(ti, g.m, M, row_unit(uk)), m1 = share(ti + 1, g.m, M, row_unit(uk));
        const int n0 = share(tj, g.n, N, uk->nr), n1 = share(tj + 1, g.n, N, uk->nr);
        const int k0 = share(tk, g.k, K, 1), k1 = share(tk + 1, g.k, K, 1);
        float *c = tk > 0 ? partial + ((size_t)(tk - 1) * M + m0) * N + n0 : C ? C + (size_t)m0 * ldc + n0 : NULL;
        const gemm_tile_step at = ep ? step_from(ep, n0) : (gemm_tile_step){0};
        const stripe_epilogue out_at = out ? epilogue_from(out, m0, n0) : (stripe_epilogue){0};
        const b_packed pb = {packed, N, n0};
        if (m1 > m0 && n1 > n0) {
            thread_begin(uk);
            status = gemm_serial(uk, m1 - m0, n1 - n0, k1 - k0, alpha, operand_from(A, m0, k0),
                                 packed ? B : operand_from(B, k0, n0), packed ? &pb : NULL, tk == 0 ? beta : 0.0f, c,
                                 tk == 0 ? ldc : N, ep && g.k == 1 ? &at : NULL, out ? &out_at : NULL);
            thread_end(uk);
        }
        if (g.k > 1) { /* the sums are whole only now: the epilogue follows the adding */
            const int r0 = share(t, nt, M, 1), r1 = share(t + 1, nt, M, 1);
#pragma omp barrier
            add_partials(r0, r1, M, N, partial, g.k - 1, C, ldc);
            gemm_tile_step_apply(ep, C, ldc, r0, r1, N);
        }
    }
    return status;
}

/* --- profile (gemm_bf16.h) ------------------------------------------------------------------ */

static atomic_int profiling; /* read by every product, of any thread */
static gemm_profile_entry profile[GEMM_PROFILE_SHAPES];
static int profile_count;

void gemm_profile_start(void)
{
#pragma omp critical(gemm_profile)
    {
        profile_count = 0;
        profiling = 1;
    }
}

void gemm_profile_stop(void) { profiling = 0; }

int gemm_profile_entries(gemm_profile_entry out[GEMM_PROFILE_SHAPES])
{
    int count;
#pragma omp critical(gemm_profile)
    {
        count = profile_count;
        memcpy(out, profile, (size_t)count * sizeof *out);
    }
    return count;
}

/* One call of `seconds` onto the entry of its shape (e's fields but calls and seconds). */
static void profile_add(gemm_profile_entry e, double seconds)
{
#pragma omp critical(gemm_profile)
    {
        int i = 0;
        while (i < profile_count && !(profile[i].M == e.M && profile[i].N == e.N && profile[i].K == e.K &&
                                      profile[i].trans_a == e.trans_a && profile[i].trans_b == e.trans_b &&
                                      profile[i].a_bf16 == e.a_bf16 && profile[i].b_bf16 == e.b_bf16 &&
                                      profile[i].packed == e.packed && profile[i].bf16 == e.bf16))
            i++;
        if (i == profile_count && profile_count < GEMM_PROFILE_SHAPES)
            profile[profile_count++] = e;
        if (i < profile_count) {
            profile[i].calls++;
            profile[i].seconds += seconds;
        }
    }
}

/* product_run, its wall time kept while profiling (top-level products only: the time of one
   run inside a parallel region is not the product's) */
static int product(const gemm_microkernel *uk, int M, int N, int K, float alpha, operand A, operand B,
                   const char *packed, float beta, float *C, long ldc, const float *scale, const float *shift, int relu,
                   const stripe_epilogue *out)
{
    if (!profiling || omp_in_parallel())
        return product_run(uk, M, N, K, alpha, A, B, packed, beta, C, ldc, scale, shift, relu, out);
    const double t0 = omp_get_wtime();
    const int status = product_run(uk, M, N, K, alpha, A, B, packed, beta, C, ldc, scale, shift, relu, out);
    profile_add((gemm_profile_entry){M, N, K, A.trans, B.trans, A.bf16, B.bf16, packed != NULL, uk->elem == 2, 0, 0},
                omp_get_wtime() - t0);
    return status;
}

void gemm_affine_at(herbs_precision p, int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A,
                    long lda, const float *B, long ldb, float beta, float *C, long ldc, const float *scale,
                    const float *shift, int relu)
{
    product(gemm_microkernel_for(p), M, N, K, alpha, (operand){A, lda, trans_a, 0}, (operand){B, ldb, trans_b, 0},
            NULL, beta, C, ldc, scale, shift, relu, NULL);
}

void gemm_bf16_inputs(int trans_a, int trans_b, int M, int N, int K, float alpha, const void *A, int a_bf16, long lda,
                      const void *B, int b_bf16, long ldb, float beta, float *C, long ldc, const float *scale,
                      const float *shift, int relu)
{
    product(gemm_microkernel_for(HERBS_BF16), M, N, K, alpha, (operand){A, lda, trans_a, a_bf16},
            (operand){B, ldb, trans_b, b_bf16}, NULL, beta, C, ldc, scale, shift, relu, NULL);
}

void gemm_affine(int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A, long lda,
                 const float *B, long ldb, float beta, float *C, long ldc, const float *scale, const float *shift,
                 int relu)
{
    gemm_affine_at(HERBS_FP32, trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, scale, shift, relu);
}

void gemm_at(herbs_precision p, int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A, long lda,
             const float *B, long ldb, float beta, float *C, long ldc)
{
    gemm_affine_at(p, trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, NULL, NULL, 0);
}

void gemm(int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A, long lda,
          const float *B, long ldb, float beta, float *C, long ldc)
{
    gemm_affine(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, NULL, NULL, 0);
}

/* --- B packed once ------------------------------------------------------------------------- */

#define PACK_MAGIC 0x68726273u /* "hrbs" */

/* What a pack starts with; its slices follow at offset PACK_HEADER (alignment of the panels). */
typedef struct {
    unsigned magic;
    int kernel; /* index in the registry */
    int N, K;
} pack_header;
#define PACK_HEADER 64

/* Bytes of the panels of a K x N op(B) for uk: the slices of depth slice_depth, all columns. */
static size_t packed_bytes(const gemm_microkernel *uk, int N, int K)
{
    const int kc = slice_depth(uk, K);
    return (size_t)K / kc * panel_bytes(uk, kc, round_up(N, uk->nr)) + panel_bytes(uk, K % kc, round_up(N, uk->nr));
}

size_t gemm_prepack_b_size(herbs_precision precision, int N, int K)
{
    return PACK_HEADER + packed_bytes(gemm_microkernel_for(precision), N, K);
}

void gemm_prepack_b(herbs_precision precision, int trans_b, int N, int K, const float *B, long ldb, void *dst)
{
    const int kernel = kernel_index(precision);
    const gemm_microkernel *uk = registry[kernel].uk;
    const pack_header header = {PACK_MAGIC, kernel, N, K};
    memcpy(dst, &header, sizeof header);
    const int kc = slice_depth(uk, K), nt = herbs_threads_for((double)N * K, PREPACK_ELEMENTS_PER_THREAD);
#pragma omp parallel num_threads(nt) if (nt > 1)
    { /* each thread its share of every slice's panels */
        const int t = omp_get_thread_num(), n = omp_get_num_threads();
        const int j0 = share(t, n, N, uk->nr), j1 = share(t + 1, n, N, uk->nr);
        char *slice = (char *)dst + PACK_HEADER;
        for (int pc = 0; pc < K && j1 > j0; pc += kc) {
            const int k = min_int(kc, K - pc);
            const operand block = operand_from((operand){B, ldb, trans_b, 0}, pc, j0);
            pack_b(uk, &block, j1 - j0, k, slice + panel_bytes(uk, k, j0));
            slice += panel_bytes(uk, k, round_up(N, uk->nr));
        }
    }
}

int gemm_prepack_b_matches(const void *packed, size_t bytes, int N, int K)
{
    pack_header h;
    if (bytes < PACK_HEADER)
        return 0;
    memcpy(&h, packed, sizeof h);
    return h.magic == PACK_MAGIC && h.kernel >= 0 && h.kernel < KERNELS && h.N == N && h.K == K &&
           bytes == PACK_HEADER + packed_bytes(registry[h.kernel].uk, N, K);
}

size_t gemm_prepack_b_size_any(herbs_precision precision, int N, int K)
{
    size_t most = 0;
    for (int i = 0; i < KERNELS; i++)
        if (registry[i].precision == precision && packed_bytes(registry[i].uk, N, K) > most)
            most = packed_bytes(registry[i].uk, N, K);
    return PACK_HEADER + most;
}

int gemm_prepack_b_is_current(const void *packed)
{
    pack_header h;
    memcpy(&h, packed, sizeof h);
    return h.magic == PACK_MAGIC && h.kernel >= 0 && h.kernel < KERNELS &&
           h.kernel == kernel_index(registry[h.kernel].precision);
}

/* The precision of a pack of gemm_prepack_b. */
static herbs_precision pack_precision(const void *packed)
{
    pack_header h;
    memcpy(&h, packed, sizeof h);
    return registry[h.kernel].precision;
}

/* product() with op(B) a pack of gemm_prepack_b, on the kernel that made it, and the stripe epilogue out
   (NULL: none); `what` names the caller in the errors: a bf16 A with a pack that is not bf16, no
   memory for packing A. */
static herbs_status product_prepacked(const char *what, int M, int N, int K, float alpha, operand A, const void *packed,
                                      float beta, float *C, long ldc, const float *scale, const float *shift, int relu,
                                      const stripe_epilogue *out)
{
    pack_header h;
    memcpy(&h, packed, sizeof h);
    if (A.bf16 && registry[h.kernel].precision != HERBS_BF16)
        return herbs_error(HERBS_ERR_VALUE, "%s: a bf16 A needs a bf16 pack of B", what);
    if (product(registry[h.kernel].uk, M, N, K, alpha, A, (operand){0}, (const char *)packed + PACK_HEADER, beta, C,
                ldc, scale, shift, relu, out) < 0)
        return herbs_error(HERBS_ERR_NOMEM, "%s: no memory for packing A", what);
    return HERBS_OK;
}

herbs_status gemm_prepacked(int trans_a, int M, int N, int K, float alpha, const float *A, long lda,
                            const void *packed, float beta, float *C, long ldc, const float *scale,
                            const float *shift, int relu)
{
    return product_prepacked("gemm_prepacked", M, N, K, alpha, (operand){A, lda, trans_a, 0}, packed, beta, C, ldc,
                             scale, shift, relu, NULL);
}

herbs_status gemm_prepacked_bf16_rows(int M, int N, int K, float alpha, const uint16_t *A, long lda,
                                      const void *packed, float beta, float *C, long ldc, const float *scale,
                                      const float *shift, int relu)
{
    return product_prepacked("gemm_prepacked_bf16_rows", M, N, K, alpha, (operand){A, lda, 0, 1}, packed, beta, C,
                             ldc, scale, shift, relu, NULL);
}

herbs_status gemm_prepacked_bf16_activation(int M, int N, int K, const void *A, int a_bf16, long lda,
                                            const void *packed, float *C, long ldc, const float *shift,
                                            herbs_bf16_activation act, uint16_t *H, long ldh)
{
    if (pack_precision(packed) != HERBS_BF16 || K < 1)
        return herbs_error(HERBS_ERR_VALUE, "gemm_prepacked_bf16_activation: needs a bf16 pack of B and K >= 1");
    const stripe_epilogue out = {.span = bf16_activation_span(act), .h = H, .ldh = ldh};
    return product_prepacked("gemm_prepacked_bf16_activation", M, N, K, 1.0f, (operand){A, lda, 0, a_bf16}, packed,
                             0.0f, C, ldc, NULL, shift, 0, &out);
}

herbs_status gemm_prepacked_residual(int M, int N, int K, const void *A, int a_bf16, long lda, const void *packed,
                                     float *C, long ldc, const float *shift, const float *R, long ldr)
{
    if (K < 1)
        return herbs_error(HERBS_ERR_VALUE, "gemm_prepacked_residual: needs K >= 1, got %d", K);
    const stripe_epilogue out = {.r = R, .ldr = ldr, .add = add_into_span_current()};
    return product_prepacked("gemm_prepacked_residual", M, N, K, 1.0f, (operand){A, lda, 0, a_bf16}, packed, 0.0f, C,
                             ldc, NULL, shift, 0, &out);
}

/* --- batches ------------------------------------------------------------------------------- */

/* Items b0..b1 of a batch, one after the other on the calling thread. Small items are too
   short for the hardware prefetcher to find their rows: the next one's operands are fetched
   while one is computed. */
static void batch_serial(const gemm_microkernel *uk, int trans_a, int trans_b, int M, int N, int K, float alpha,
                         const float *A, long lda, long stride_a, const float *B, long ldb, long stride_b, float beta,
                         float *C, long ldc, long stride_c, int b0, int b1)
{
    const int fetch_next = ((double)M * K + (double)K * N) * sizeof(float) <= PREFETCH_BYTES;
    thread_begin(uk);
    for (int b = b0; b < b1; b++) {
        if (fetch_next && b + 1 < b1) {
            prefetch_matrix(A + (b + 1) * stride_a, lda, trans_a ? K : M, trans_a ? M : K);
            prefetch_matrix(B + (b + 1) * stride_b, ldb, trans_b ? N : K, trans_b ? K : N);
        }
        gemm_serial(uk, M, N, K, alpha, (operand){A + b * stride_a, lda, trans_a, 0},
                    (operand){B + b * stride_b, ldb, trans_b, 0}, NULL, beta, C + b * stride_c, ldc, NULL, NULL);
    }
    thread_end(uk);
}

/* gemm_batched with the micro-kernel uk. */
static void batched(const gemm_microkernel *uk, int trans_a, int trans_b, int M, int N, int K, float alpha,
                    const float *A, long lda, long stride_a, const float *B, long ldb, long stride_b, float beta,
                    float *C, long ldc, long stride_c, int batch)
{
    const double flops = 2.0 * M * N * K;
    const int nt = herbs_threads_for(flops * batch, FLOPS_PER_THREAD);
    const int whole_items = batch >= 8 * nt || batch % nt == 0 || flops < FLOPS_PER_THREAD;
    if (M <= 0 || N <= 0 || K <= 0 || alpha == 0.0f || !whole_items) { /* trivial, or few big items */
        for (int b = 0; b < batch; b++)
            product(uk, M, N, K, alpha, (operand){A + b * stride_a, lda, trans_a, 0},
                    (operand){B + b * stride_b, ldb, trans_b, 0}, NULL, beta, C + b * stride_c, ldc, NULL, NULL, 0,
                    NULL);
        return;
    }
    /* whole items per thread, handed out in chunks so that a thread slowed down by another
       process on its core does not hold the others up */
    const int chunk = batch / (8 * nt) > 1 ? batch / (8 * nt) : 1;
    if (nt == 1) {
        batch_serial(uk, trans_a, trans_b, M, N, K, alpha, A, lda, stride_a, B, ldb, stride_b, beta, C, ldc, stride_c,
                     0, batch);
        return;
    }
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
    for (int b0 = 0; b0 < batch; b0 += chunk)
        batch_serial(uk, trans_a, trans_b, M, N, K, alpha, A, lda, stride_a, B, ldb, stride_b, beta, C, ldc, stride_c,
                     b0, min_int(b0 + chunk, batch));
}

void gemm_batched_at(herbs_precision p, int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A,
                     long lda, long stride_a, const float *B, long ldb, long stride_b, float beta, float *C, long ldc,
                     long stride_c, int batch)
{
    batched(gemm_microkernel_for(p), trans_a, trans_b, M, N, K, alpha, A, lda, stride_a, B, ldb, stride_b, beta, C,
            ldc, stride_c, batch);
}

void gemm_batched(int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A, long lda,
                  long stride_a, const float *B, long ldb, long stride_b, float beta, float *C, long ldc,
                  long stride_c, int batch)
{
    gemm_batched_at(HERBS_FP32, trans_a, trans_b, M, N, K, alpha, A, lda, stride_a, B, ldb, stride_b, beta, C, ldc,
                    stride_c, batch);
}
