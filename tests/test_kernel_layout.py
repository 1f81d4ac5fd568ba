"""The NCHW -> NHWC move at the stem, the residual add + ReLU and the plain add that joins gradients:
exact against NumPy, and finite differences in float64 for the backward passes."""
import numpy as np
import pytest

from ckernels import call, numerical_grad

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


def test_add_relu():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal(37), rng.standard_normal(37)
    out = np.empty(37)
    call("add_relu_forward", out, a, b, 37)
    np.testing.assert_array_equal(out, np.maximum(a + b, 0))
    probe = rng.standard_normal(37)
    da, db = np.full(37, np.nan), np.full(37, np.nan)
    call("add_relu_backward", da, db, probe, out, 37, 0)  # written, not read

    def loss():
        y = np.empty(37)
        call("add_relu_forward", y, a, b, 37)
        return float((y * probe).sum())

    np.testing.assert_allclose(da, numerical_grad(loss, a), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(db, numerical_grad(loss, b), rtol=1e-6, atol=1e-8)
    call("add_relu_backward", None, db, probe, out, 37, 1)  # either gradient may be NULL; this one adds
    np.testing.assert_allclose(db, 2 * da)


@pytest.mark.parametrize("n", [1, 37, 100003])  # the last is split among threads
def test_add_into(n):
    rng = np.random.default_rng(3)
    dst, src = rng.standard_normal(n).astype(np.float32), rng.standard_normal(n).astype(np.float32)
    want = dst + src
    call("add_into", dst, src, n, dtype=np.float32)
    np.testing.assert_array_equal(dst, want)
