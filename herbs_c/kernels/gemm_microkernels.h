/* GEMM micro-kernels: one register tile per ISA over packed panels (float only).
   A packed A panel is [K][mr] (column of the tile per k), a packed B panel is [K][nr]. */
#ifndef HERBS_KERNELS_GEMM_MICROKERNELS_H
#define HERBS_KERNELS_GEMM_MICROKERNELS_H

/* c[mr,nr] (row stride ldc) = alpha * a·b + beta * c; beta == 0 never reads c. */
typedef void (*gemm_microkernel_fn)(int K, const float *a, const float *b, float *c, long ldc,
                                    float alpha, float beta);

typedef struct {
    const char *name;
    int mr, nr;     /* register tile */
    int kc, mc, nc; /* cache blocks: B micro-panel kc*nr in L1, A block mc*kc in L2, B block kc*nc in L3 */
    gemm_microkernel_fn run;
} gemm_microkernel;

extern const gemm_microkernel gemm_microkernel_avx512;
extern const gemm_microkernel gemm_microkernel_avx2;
extern const gemm_microkernel gemm_microkernel_portable;

/* The micro-kernel of the current ISA (herbs_isa_current). */
const gemm_microkernel *gemm_microkernel_current(void);

/* Largest blocks over all micro-kernels, for sizing pack buffers. */
#define GEMM_MAX_KC 512
#define GEMM_MAX_MC 1024
#define GEMM_MAX_NC 4096

#endif
