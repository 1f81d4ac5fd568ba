/* Declarations of every kernel, twice: float (the engine) and double (suffix _f64).
   Kernels are pure math on raw buffers: shapes are arguments, gradients accumulate (+=). Where a
   kernel takes an `accumulate` argument (input gradients, and a few forward outputs), it adds onto
   its output when set and writes it (not read) when 0. */
#ifndef HERBS_KERNELS_H
#define HERBS_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/gemm_bf16.h" /* herbs_precision, the GEMM at a precision */

#define real float
#define FN(name) name
#include "kernels/list.h"
#undef real
#undef FN

#define real double
#define FN(name) name##_f64
#include "kernels/list.h"
#undef real
#undef FN

#endif
