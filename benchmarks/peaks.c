/* The machine's multiply-add peaks, for benchmarks to quote fractions of: fp32 FMA (vfmadd231ps
   zmm) and bf16 dot products (vdpbf16ps zmm), 16 independent accumulator chains per thread so that
   latency never limits. Compiled by benchmarks/peaks.py with `cc -O3 -fopenmp -shared`; not part
   of herbs. Each function returns GFLOP/s over `threads` threads for `seconds` of work (a
   multiply-add is 2 flops; a vdpbf16ps lane does 2 of them). */
#include <immintrin.h>
#include <omp.h>

#define CHAINS 16
#define STEPS 4096 /* iterations between clock reads */

typedef float (*inner_fn)(long iterations);

__attribute__((target("avx512f"))) static float fp32_loop(long iterations)
{
    __m512 acc[CHAINS];
    const __m512 a = _mm512_set1_ps(0.999f), b = _mm512_set1_ps(1e-3f);
    for (int c = 0; c < CHAINS; c++)
        acc[c] = _mm512_set1_ps((float)c);
    for (long i = 0; i < iterations; i++)
        for (int c = 0; c < CHAINS; c++)
            acc[c] = _mm512_fmadd_ps(acc[c], a, b);
    __m512 sum = acc[0];
    for (int c = 1; c < CHAINS; c++)
        sum = _mm512_add_ps(sum, acc[c]);
    return _mm512_reduce_add_ps(sum);
}

__attribute__((target("avx512f,avx512bf16"))) static float bf16_loop(long iterations)
{
    __m512 acc[CHAINS];
    const __m512bh a = (__m512bh)_mm512_set1_epi16(0x3f80), b = (__m512bh)_mm512_set1_epi16(0x3a83);
    for (int c = 0; c < CHAINS; c++)
        acc[c] = _mm512_set1_ps((float)c);
    for (long i = 0; i < iterations; i++)
        for (int c = 0; c < CHAINS; c++)
            acc[c] = _mm512_dpbf16_ps(acc[c], a, b);
    __m512 sum = acc[0];
    for (int c = 1; c < CHAINS; c++)
        sum = _mm512_add_ps(sum, acc[c]);
    return _mm512_reduce_add_ps(sum);
}

static double run(inner_fn inner, double flops_per_iteration, int threads, double seconds)
{
    double total = 0;
    volatile float sink = 0;
#pragma omp parallel num_threads(threads) reduction(+ : total)
    {
        long iterations = 0;
        const double t0 = omp_get_wtime();
        while (omp_get_wtime() - t0 < seconds) {
            sink += inner(STEPS);
            iterations += STEPS;
        }
        total = iterations * flops_per_iteration / (omp_get_wtime() - t0);
    }
    return total / 1e9;
}

/* 16 lanes x 2 flops per chain and iteration */
double peak_fp32(int threads, double seconds) { return run(fp32_loop, CHAINS * 16 * 2.0, threads, seconds); }

/* 16 lanes x 2 products x 2 flops per chain and iteration; 0 where the CPU lacks AVX512-BF16 */
double peak_bf16(int threads, double seconds)
{
    if (!__builtin_cpu_supports("avx512bf16"))
        return 0;
    return run(bf16_loop, CHAINS * 16 * 4.0, threads, seconds);
}
