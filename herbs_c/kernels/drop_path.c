#include "core/rng.h"
#include "kernels/kernels.h"
#include "kernels/precision.h"

#undef RESIDUAL_PARALLEL /* residual.c, compiled into the same f64.c, has its own */
#define RESIDUAL_PARALLEL(n) if ((double)(n) > 65536)

void FN(drop_path_scales)(real *scale, int B, real keep_prob, uint64_t seed, uint64_t stream)
{
    for (int b = 0; b < B; b++)
        scale[b] = herbs_rng_uniform(seed, stream, (uint64_t)b) < keep_prob ? 1 / keep_prob : 0;
}

/* One parallel region for all samples (each thread takes the same share of every sample), so
   a batch costs one fork and one join. */
void FN(residual_add_forward)(real *out, const real *res, const real *branch, const real *scale, int B, long M)
{
#pragma omp parallel RESIDUAL_PARALLEL((double)B * M)
    for (int b = 0; b < B; b++) {
        const real s = scale ? scale[b] : 1;
        const size_t o = (size_t)b * M;
#pragma omp for simd schedule(static) nowait
        for (long i = 0; i < M; i++)
            out[o + i] = res[o + i] + s * branch[o + i];
    }
}

void FN(residual_add_backward)(real *dbranch, const real *dout, const real *scale, int B, long M)
{
#pragma omp parallel RESIDUAL_PARALLEL((double)B * M)
    for (int b = 0; b < B; b++) {
        const real s = scale ? scale[b] : 1;
        const size_t o = (size_t)b * M;
        if (s == 0)
            continue;
#pragma omp for simd schedule(static) nowait
        for (long i = 0; i < M; i++)
            dbranch[o + i] += s * dout[o + i];
    }
}
