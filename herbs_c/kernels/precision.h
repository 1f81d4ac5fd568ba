/* The precision template. A kernel file is written once over `real` and `FN(name)`; it is
   compiled as float (the engine, names as written) and, included again from f64.c with
   HERBS_F64 defined, as double (names suffixed _f64) for the finite-difference tests.
   No include guard: f64.c re-includes it for every kernel file. Math comes from <tgmath.h>,
   so exp(x) is expf for a float x; write constants as (real)0.5 to stay in precision. */
#include <tgmath.h>

#undef real
#undef FN
#ifdef HERBS_F64
#define real double
#define FN(name) name##_f64
#else
#define real float
#define FN(name) name
#endif
