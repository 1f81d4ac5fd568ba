/* Builds of a kernel's inner loop for each instruction set, chosen at run time by
   herbs_isa_current() (so HERBS_ISA=avx2 forces them down with the GEMM): the loop is written
   once as an always-inline body over `real`, and the compiler vectorises it again in each build.
   The AVX builds may contract a*b+c into one FMA (the build's ISO C mode turns that off
   elsewhere); the portable build, which has no FMA, computes as written. */
#ifndef HERBS_KERNELS_ISA_H
#define HERBS_KERNELS_ISA_H

#include <omp.h>

#include "core/cpu.h"
#include "core/threads.h"

#if defined(__x86_64__)
#define HERBS_TARGET_AVX512                                                                    \
    __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,prefer-vector-width=512"), \
                   optimize("fp-contract=fast")))
#define HERBS_TARGET_AVX2 __attribute__((target("avx2,fma"), optimize("fp-contract=fast")))
#else
#define HERBS_TARGET_AVX512
#define HERBS_TARGET_AVX2
#endif

#define HERBS_INLINE static inline __attribute__((always_inline))

/* For a body `HERBS_INLINE void FN(name) params`, defines FN(name##_isa)(), which returns the
   build of the body for the current instruction set (call it once per kernel call). */
#define HERBS_ISA_VARIANTS(name, params, args)                                                    \
    HERBS_TARGET_AVX512 static void FN(name##_avx512) params { FN(name) args; }                   \
    HERBS_TARGET_AVX2 static void FN(name##_avx2) params { FN(name) args; }                       \
    static void FN(name##_portable) params { FN(name) args; }                                     \
    static void (*FN(name##_isa)(void)) params                                                    \
    {                                                                                             \
        const herbs_isa isa = herbs_isa_current();                                                \
        return isa == HERBS_ISA_AVX512 ? FN(name##_avx512)                                        \
               : isa == HERBS_ISA_AVX2 ? FN(name##_avx2)                                          \
                                       : FN(name##_portable);                                     \
    }

#define HERBS_PRAGMA(text) _Pragma(#text)

/* The usual driver of such a body: runs the current instruction set's build of FN(name), whose
   last two parameters are a range [i0, i1) of items, as FN(name)(args..., i0, i1) over items
   [0, n), one contiguous range per thread of a team of `threads` (the caller's choice, e.g.
   herbs_threads_for(work, grain); 1 runs it on the calling thread alone). Items must write
   disjoint outputs. */
#define HERBS_ISA_PARALLEL(name, n, threads, ...)                                                 \
    do {                                                                                          \
        __typeof__(FN(name##_isa)()) herbs_body_ = FN(name##_isa)();                              \
        const long herbs_items_ = (long)(n);                                                      \
        const int herbs_team_ = (threads);                                                        \
        HERBS_PRAGMA(omp parallel num_threads(herbs_team_) if (herbs_team_ > 1))                  \
        {                                                                                         \
            const long herbs_t_ = omp_get_thread_num(), herbs_nt_ = omp_get_num_threads();        \
            herbs_body_(__VA_ARGS__, herbs_items_ * herbs_t_ / herbs_nt_,                         \
                        herbs_items_ * (herbs_t_ + 1) / herbs_nt_);                               \
        }                                                                                         \
    } while (0)

#endif
