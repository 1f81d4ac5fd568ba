"""herbs: HERBS fine-grained image classification with a C engine.

The engine (``herbs._C``) runs every forward and backward kernel in C with OpenMP;
this package wraps it with NumPy arrays.
"""
from herbs._C import cpu_info, get_num_threads, set_num_threads
from herbs.model import Model

__version__ = "0.1.0"

__all__ = ["Model", "cpu_info", "get_num_threads", "set_num_threads", "__version__"]
