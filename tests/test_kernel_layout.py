"""The NCHW -> NHWC move at the stem: exact against NumPy (the residual add + ReLU and the plain add
are in test_kernel_residual.py)."""
import numpy as np
import pytest

from ckernels import call

# these kernels are built per instruction set (kernels/isa.h): every test runs on each
pytestmark = pytest.mark.usefixtures("isa")


def test_nchw_to_nhwc_and_back():
    rng = np.random.default_rng(0)
    B, C, H, W = 2, 3, 5, 7
    x = rng.standard_normal((B, C, H, W))
    out = np.empty((B, H, W, C))
    call("nchw_to_nhwc_forward", out, x, B, C, H, W)
    np.testing.assert_array_equal(out, x.transpose(0, 2, 3, 1))
    g = rng.standard_normal((B, H, W, C))
    dx = np.ones_like(x)
    call("nchw_to_nhwc_backward", dx, g, B, C, H, W)
    np.testing.assert_array_equal(dx, g.transpose(0, 3, 1, 2) + 1)  # accumulates
