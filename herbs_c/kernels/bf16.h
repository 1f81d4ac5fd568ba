/* bf16 (the upper 16 bits of an fp32) from and to fp32, in plain C. */
#ifndef HERBS_KERNELS_BF16_H
#define HERBS_KERNELS_BF16_H

#include <stdint.h>
#include <string.h>

/* x rounded to the nearest bf16, ties to even; a NaN stays a NaN (quieted, as the hardware's
   vcvtneps2bf16 does: truncating 0x7f800001 would make an infinity). */
static inline uint16_t bf16_from_float(float x)
{
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((u >> 16) | 0x0040u);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

static inline float bf16_to_float(uint16_t h)
{
    const uint32_t u = (uint32_t)h << 16;
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
}

#endif
