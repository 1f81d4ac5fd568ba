"""herbs: HERBS fine-grained image classification with a C engine.

The engine (``herbs._C``) runs every forward and backward kernel in C with OpenMP;
this package wraps it with NumPy arrays.
"""
import os

# Threads that finish a parallel region spin briefly (GOMP_SPINCOUNT=1000 rounds of a pause)
# before they sleep, unless the user chose otherwise (OMP_WAIT_POLICY or GOMP_SPINCOUNT). A forward
# pass is hundreds of short parallel regions: sleeping at once (OMP_WAIT_POLICY=passive) cost
# 10% of a Swin-T batch-1 forward in wake-ups, while spinning long (libgomp's default, or
# active) burns the core a partner needs on a shared machine: measured on 2 cores, 1.9-9x slower
# with two processes at once. 1000 spins kept 90% of the gain and cost 2-8% beside other busy
# processes. OpenMP reads this once, when its runtime loads (with herbs._C, unless another
# library loaded it before); set OMP_WAIT_POLICY=passive on oversubscribed cores, active on a
# dedicated machine.
if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
    os.environ["GOMP_SPINCOUNT"] = "1000"

from herbs import optim  # noqa: E402
from herbs._C import cpu_info, get_num_threads, set_num_threads  # noqa: E402
from herbs.model import BACKBONES, Model  # noqa: E402

__version__ = "0.1.0"

__all__ = ["BACKBONES", "Model", "cpu_info", "get_num_threads", "optim", "set_num_threads", "__version__"]
