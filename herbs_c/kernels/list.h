/* The kernel headers, each a template over `real` and `FN` (see kernels.h): no include guards. */
#include "kernels/gemm.h"
#include "kernels/linear.h"
#include "kernels/activations.h"
#include "kernels/batchnorm.h"
#include "kernels/optim.h"
