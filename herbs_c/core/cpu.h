/* Which instruction sets the CPU has, and which one the engine's hand-written kernels use. */
#ifndef HERBS_CORE_CPU_H
#define HERBS_CORE_CPU_H

#include "core/error.h"

typedef enum { HERBS_ISA_PORTABLE = 0, HERBS_ISA_AVX2 = 1, HERBS_ISA_AVX512 = 2 } herbs_isa;

/* The best ISA this CPU supports. */
herbs_isa herbs_isa_best(void);

/* The ISA in use: the best one, unless herbs_isa_select chose a lower one. */
herbs_isa herbs_isa_current(void);

/* Chooses by name ("avx512", "avx2", "portable"); fails if unknown or not supported here. */
herbs_status herbs_isa_select(const char *name);

const char *herbs_isa_name(herbs_isa isa);

/* The same for the bf16 GEMM's kernels, chosen on their own (HERBS_BF16_ISA): AVX512-BF16
   (vdpbf16ps), AMX-BF16 (tile dot products, with Linux's permission for the tile data asked
   once per process; refused: no AMX), or portable C. */
typedef enum { HERBS_BF16_ISA_PORTABLE = 0, HERBS_BF16_ISA_AVX512 = 1, HERBS_BF16_ISA_AMX = 2 } herbs_bf16_isa;

herbs_bf16_isa herbs_bf16_isa_best(void);
herbs_bf16_isa herbs_bf16_isa_current(void);

/* Chooses by name ("amx", "avx512_bf16", "portable"); fails if unknown or not supported here. */
herbs_status herbs_bf16_isa_select(const char *name);

const char *herbs_bf16_isa_name(herbs_bf16_isa isa);

/* The CPU's microarchitecture where a kernel's tuning depends on it (the GEMM's cache blocks, as
   BLIS keeps one configuration per microarchitecture); GENERIC for every other. */
typedef enum { HERBS_CPU_GENERIC = 0, HERBS_CPU_ZEN4 = 1 } herbs_cpu_family;

herbs_cpu_family herbs_cpu_family_current(void);

const char *herbs_cpu_family_name(herbs_cpu_family family);

#endif
