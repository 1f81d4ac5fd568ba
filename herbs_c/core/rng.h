/* A counter-based random number generator: each number is a pure function of
   (seed, stream, counter), so dropout and drop-path masks do not depend on thread timing.
   A layer takes its own stream (for example step * 1024 + layer index) and counts elements. */
#ifndef HERBS_CORE_RNG_H
#define HERBS_CORE_RNG_H

#include <stdint.h>

static inline uint64_t herbs_mix64(uint64_t z) /* splitmix64's finaliser: a bijection */
{
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* 64 random bits for (seed, stream, counter). */
static inline uint64_t herbs_rng_bits(uint64_t seed, uint64_t stream, uint64_t counter)
{
    const uint64_t golden = 0x9E3779B97F4A7C15ull;
    uint64_t z = herbs_mix64(seed + golden);
    z = herbs_mix64(z ^ (stream + 2 * golden));
    return herbs_mix64(z ^ (counter + 3 * golden));
}

/* A uniform float in [0, 1) for (seed, stream, counter), 24 bits of resolution. */
static inline float herbs_rng_uniform(uint64_t seed, uint64_t stream, uint64_t counter)
{
    return (float)(herbs_rng_bits(seed, stream, counter) >> 40) * (1.0f / 16777216.0f);
}

#endif
