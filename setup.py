"""Build of herbs: the C engine in herbs_c/ becomes the extension herbs._C."""
import glob
import os

import numpy
from setuptools import Extension, setup

# Every .c under herbs_c/ is one translation unit, except the files that kernels/f64.c
# includes a second time in double precision (they are compiled once on their own too).
sources = sorted(glob.glob(os.path.join("herbs_c", "**", "*.c"), recursive=True))

extra_compile_args = [
    "-std=c11", "-O3", "-fopenmp", "-fno-math-errno",
    "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-missing-field-initializers",
]
if os.environ.get("HERBS_SANITIZE"):
    extra_compile_args += ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-O1", "-g"]
if os.environ.get("HERBS_DEBUG"):
    extra_compile_args += ["-O0", "-g"]

setup(
    ext_modules=[
        Extension(
            "herbs._C",
            sources=sources,
            include_dirs=["herbs_c", numpy.get_include()],
            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_20_API_VERSION")],
            extra_compile_args=extra_compile_args,
            extra_link_args=["-fopenmp"],
        )
    ],
)
