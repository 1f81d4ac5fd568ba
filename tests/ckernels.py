"""Direct access to the engine's kernels for tests, through ctypes on the extension itself.

Every kernel is compiled twice (float, and double with the suffix ``_f64``; see
herbs_c/kernels/precision.h). Tests call the double versions for finite-difference checks and
the float versions for comparisons with PyTorch. ``call`` passes NumPy arrays as pointers and
Python ints and floats by the C types of the kernel's prototype (read from the kernel headers); it
checks that every array is C-contiguous and of the kernel's precision, but the shapes are the
test's responsibility, as they are the C caller's.
"""
import ctypes
import pathlib
import re

import numpy as np

import herbs._C

LIB = ctypes.CDLL(herbs._C.__file__)

KERNEL_HEADERS = pathlib.Path(__file__).resolve().parent.parent / "herbs_c" / "kernels"
# C parameter type -> argument kind: "p" real pointer (None for NULL), "P" int32 pointer,
# "i" int (and the enum herbs_precision: 0 fp32, 1 bf16), "l" long, "z" size_t, "u" uint64_t, "r" real
C_TYPES = {"real*": "p", "int*": "P", "int32_t*": "P", "int": "i", "herbs_precision": "i", "long": "l", "size_t": "z",
           "uint64_t": "u", "real": "r"}


def _signatures():
    """Kernel name -> argument kinds, read from the templated prototypes `void FN(name)(...)`."""
    signatures = {}
    for header in sorted(KERNEL_HEADERS.glob("*.h")):
        text = re.sub(r"/\*.*?\*/", "", header.read_text(), flags=re.S)
        for name, params in re.findall(r"void\s+FN\((\w+)\)\s*\(([^)]*)\)\s*;", text):
            kinds = ""
            for param in params.split(","):
                words = param.replace("*", " * ").split()
                words = [w for w in words if w != "const"][:-1]  # drop qualifiers and the name
                kinds += C_TYPES["".join(words)]
            signatures[name] = kinds
    return signatures


SIGNATURES = _signatures()


def _ctype(kind, real):
    return {
        "p": ctypes.c_void_p,
        "P": ctypes.c_void_p,
        "i": ctypes.c_int,
        "l": ctypes.c_long,
        "z": ctypes.c_size_t,
        "u": ctypes.c_uint64,
        "r": ctypes.c_double if real == np.float64 else ctypes.c_float,
    }[kind]


def call(name, *args, dtype=np.float64):
    """Calls kernel `name` in the precision of `dtype` with NumPy arrays and numbers."""
    sig = SIGNATURES[name]
    if len(args) != len(sig):
        raise TypeError(f"{name} takes {len(sig)} arguments, got {len(args)}")
    fn = getattr(LIB, name + ("_f64" if dtype == np.float64 else ""))
    fn.restype = None
    fn.argtypes = [_ctype(k, dtype) for k in sig]
    converted = []
    for kind, arg in zip(sig, args):
        if kind in "pP":
            if arg is None:
                converted.append(None)
                continue
            want = np.int32 if kind == "P" else dtype
            if arg.dtype != want or not arg.flags.c_contiguous:
                raise TypeError(f"{name}: array argument must be C-contiguous {np.dtype(want).name}")
            converted.append(arg.ctypes.data)
        else:
            converted.append(arg)
    fn(*converted)


def bf16_output(name, x):
    """The bf16 bit patterns (uint16) a float-engine kernel `name`(out, inp, n) stores from float32 x."""
    bits = np.empty(x.size, np.uint16)
    fn = getattr(LIB, name)
    fn.restype, fn.argtypes = None, [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
    fn(bits.ctypes.data, np.ascontiguousarray(x, np.float32).ctypes.data, x.size)
    return bits


def grad_buffer(shape, accumulate, rng, dtype=np.float64):
    """An input-gradient buffer for a backward kernel called with `accumulate`, and what it holds
    that is not the gradient: for 0, NaN everywhere (the kernel must store, never read) and zeros;
    for 1, random values (the kernel must add onto them) and a copy of them."""
    if accumulate:
        base = rng.standard_normal(shape).astype(dtype)
        return base.copy(), base
    return np.full(shape, np.nan, dtype), np.zeros(shape, dtype)


def numerical_grad(f, x, eps=1e-6):
    """Central differences of the scalar function f() with respect to the array x, in place."""
    grad = np.zeros_like(x)
    flat, g = x.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        up = f()
        flat[i] = old - eps
        down = f()
        flat[i] = old
        g[i] = (up - down) / (2 * eps)
    return grad
