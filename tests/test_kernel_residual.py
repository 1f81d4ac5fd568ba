"""Residual joins: Swin's per-sample scaled residual add, the residual add + ReLU and the plain add
that joins gradients: exact against NumPy, finite differences in float64 for the backward passes,
input gradients written (accumulate 0) or added (1)."""
import numpy as np
import pytest

from ckernels import call, grad_buffer, numerical_grad

# these kernels are built per instruction set (kernels/isa.h): every test runs on each
pytestmark = pytest.mark.usefixtures("isa")


@pytest.mark.parametrize("B,M", [(3, 11), (2, 40013)])  # the second runs on several threads
@pytest.mark.parametrize("accumulate", [0, 1])
def test_residual_add_forward_backward(B, M, accumulate):
    rng = np.random.default_rng(0)
    res, branch, dout = (rng.standard_normal((B, M)) for _ in range(3))
    scale = np.array([2.0, 0.0, 1.25][:B])  # a dropped sample among them
    out = np.empty((B, M))
    call("residual_add_forward", out, res, branch, scale, B, M)
    np.testing.assert_allclose(out, res + scale[:, None] * branch, rtol=1e-15)
    call("residual_add_forward", out, res, branch, None, B, M)
    np.testing.assert_allclose(out, res + branch, rtol=1e-15)
    for s in (scale, None):
        dbranch, before = grad_buffer((B, M), accumulate, rng)
        call("residual_add_backward", dbranch, dout, s, B, M, accumulate)
        np.testing.assert_allclose(dbranch, before + (1 if s is None else s[:, None]) * dout, rtol=1e-15,
                                   atol=1e-15)


def test_residual_add_backward_matches_finite_differences():
    rng = np.random.default_rng(4)
    B, M = 3, 5
    res, branch, probe = (rng.standard_normal((B, M)) for _ in range(3))
    scale = np.array([1.5, 0.0, 0.75])

    def loss():
        out = np.empty((B, M))
        call("residual_add_forward", out, res, branch, scale, B, M)
        return float((out * probe).sum())

    dbranch = np.full((B, M), np.nan)
    call("residual_add_backward", dbranch, probe, scale, B, M, 0)
    np.testing.assert_allclose(dbranch, numerical_grad(loss, branch), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(probe, numerical_grad(loss, res), rtol=1e-6, atol=1e-8)  # the residual's is dout


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
