/* HERBS_CLONES before a kernel compiles it three times — AVX-512, AVX2 and baseline x86-64 — and
   lets the loader pick one for the CPU (function multi-versioning; OpenMP bodies are cloned
   with it). For memory-bound elementwise kernels, which the portable build flags would
   otherwise hold to SSE2 (measured 2-4x slower on BatchNorm). ISO C mode keeps FMA contraction
   off, so every clone computes the same values. Elsewhere it is empty. */
#ifndef HERBS_KERNELS_CLONES_H
#define HERBS_KERNELS_CLONES_H

#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__)
#define HERBS_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define HERBS_CLONES
#endif

#endif
