/* The double-precision build of the templated kernels (names suffixed _f64), which the
   finite-difference tests call. Each kernel file listed here is also compiled on its own as
   float. A kernel's static helpers must have names unique across these files. */
#define HERBS_F64
#include "kernels/gemm_reference.c"
#include "kernels/affine.c"
#include "kernels/linear.c"
#include "kernels/activations.c"
#include "kernels/batchnorm.c"
#include "kernels/optim.c"
#include "kernels/tokens.c"
#include "kernels/select.c"
#include "kernels/losses.c"
#include "kernels/dropout.c"
#include "kernels/graph.c"
#include "kernels/conv2d.c"
#include "kernels/pool.c"
#include "kernels/resample.c"
#include "kernels/layout.c"
#include "kernels/residual.c"
#include "kernels/layernorm.c"
#include "kernels/window_attention.c"
#include "kernels/patch.c"
#include "kernels/drop_path.c"
