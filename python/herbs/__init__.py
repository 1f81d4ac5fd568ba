"""herbs: HERBS fine-grained image classification with a C engine.

The engine (``herbs._C``) runs every forward and backward kernel in C with OpenMP;
this package wraps it with NumPy arrays.
"""
from herbs import optim
from herbs._C import cpu_info, get_num_threads, set_num_threads

__version__ = "0.1.0"

__all__ = ["cpu_info", "get_num_threads", "optim", "set_num_threads", "__version__"]
