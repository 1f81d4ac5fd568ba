"""herbs: HERBS fine-grained image classification with a C engine.

The engine (``herbs._C``) runs every forward and backward kernel in C with OpenMP;
this package wraps it with NumPy arrays.
"""
import os

# Threads that wait at the end of a parallel region sleep instead of spinning, unless the user
# chose otherwise. On a machine whose cores are shared (other processes, other thread pools), a
# spinning thread burns the core its partner needs to reach the barrier: measured 3-8x slower
# training steps on 2 busy cores. OpenMP reads this once, when its runtime loads (with herbs._C,
# unless another library loaded it before); set OMP_WAIT_POLICY=active on a dedicated machine.
if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
    os.environ["OMP_WAIT_POLICY"] = "passive"

from herbs import optim  # noqa: E402
from herbs._C import cpu_info, get_num_threads, set_num_threads  # noqa: E402
from herbs.model import BACKBONES, Model  # noqa: E402

__version__ = "0.1.0"

__all__ = ["BACKBONES", "Model", "cpu_info", "get_num_threads", "optim", "set_num_threads", "__version__"]
