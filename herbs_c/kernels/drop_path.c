#include "core/rng.h"
#include "kernels/kernels.h"
#include "kernels/precision.h"

void FN(drop_path_scales)(real *scale, int B, real keep_prob, uint64_t seed, uint64_t stream)
{
    for (int b = 0; b < B; b++)
        scale[b] = herbs_rng_uniform(seed, stream, (uint64_t)b) < keep_prob ? 1 / keep_prob : 0;
}
