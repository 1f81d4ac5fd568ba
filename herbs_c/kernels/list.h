/* The kernel headers, each a template over `real` and `FN` (see kernels.h): no include guards. */
#include "kernels/gemm.h"
#include "kernels/linear.h"
#include "kernels/activations.h"
#include "kernels/batchnorm.h"
#include "kernels/layernorm.h"
#include "kernels/window_attention.h"
#include "kernels/patch.h"
#include "kernels/drop_path.h"
