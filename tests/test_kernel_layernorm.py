"""LayerNorm over rows: finite differences in float64, PyTorch parity in float32 (both code paths
for the weight gradients: per-thread sums for rows up to 4096 channels, column blocks beyond), the
input gradient written (accumulate 0) or added (1)."""
import ctypes

import numpy as np
import pytest
import torch

from ckernels import LIB, call, grad_buffer, numerical_grad

# these kernels are built per instruction set (kernels/isa.h): every test runs on each
pytestmark = pytest.mark.usefixtures("isa")


def ln_forward(x, w, b, eps=1e-5, dtype=np.float64):
    N, C = x.shape
    out, mean, rstd = np.empty_like(x), np.empty(N, dtype), np.empty(N, dtype)
    call("layernorm_forward", out, mean, rstd, x, w, b, N, C, eps, dtype=dtype)
    return out, mean, rstd


@pytest.mark.parametrize("N,C", [(1, 2), (3, 7), (5, 33)])
@pytest.mark.parametrize("accumulate", [0, 1])
def test_backward_matches_finite_differences(N, C, accumulate):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, C)) * 2 + 0.5
    w, b = rng.standard_normal(C), rng.standard_normal(C)
    probe = rng.standard_normal((N, C))

    def loss():
        return float((ln_forward(x, w, b)[0] * probe).sum())

    _, mean, rstd = ln_forward(x, w, b)
    dx, before = grad_buffer((N, C), accumulate, rng)
    dw, db = np.full(C, 0.25), np.full(C, -1.0)  # parameter gradients accumulate
    call("layernorm_backward", dx, dw, db, probe, x, w, mean, rstd, N, C, accumulate)
    np.testing.assert_allclose(dx - before, numerical_grad(loss, x), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(dw - 0.25, numerical_grad(loss, w), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(db + 1.0, numerical_grad(loss, b), rtol=1e-6, atol=1e-8)


def test_optional_gradients():
    rng = np.random.default_rng(3)
    N, C = 6, 5
    x, w, b, g = (rng.standard_normal(s) for s in ((N, C), C, C, (N, C)))
    _, mean, rstd = ln_forward(x, w, b)
    dx, dw, db = np.zeros((N, C)), np.zeros(C), np.zeros(C)
    call("layernorm_backward", dx, dw, db, g, x, w, mean, rstd, N, C, 1)
    only_dx, only_dw = np.full((N, C), np.nan), np.zeros(C)
    call("layernorm_backward", only_dx, None, None, g, x, w, mean, rstd, N, C, 0)
    call("layernorm_backward", None, only_dw, None, g, x, w, mean, rstd, N, C, 0)
    np.testing.assert_array_equal(only_dx, dx)
    np.testing.assert_allclose(only_dw, dw, rtol=1e-12)


@pytest.mark.parametrize("N,C", [(1, 1), (7, 97), (1003, 96), (9, 4100)])
@pytest.mark.parametrize("accumulate", [0, 1])
def test_matches_torch(N, C, accumulate):
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((N, C)) * 3 + 1).astype(np.float32)
    w, b = (rng.standard_normal(C).astype(np.float32) for _ in range(2))
    g = rng.standard_normal((N, C)).astype(np.float32)
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    ty = torch.nn.functional.layer_norm(tx, (C,), tw, tb, 1e-5)
    ty.backward(torch.tensor(g))
    out, mean, rstd = ln_forward(x, w, b, dtype=np.float32)
    dx, before = grad_buffer((N, C), accumulate, rng, np.float32)
    dw, db = np.zeros_like(w), np.zeros_like(b)
    call("layernorm_backward", dx, dw, db, g, x, w, mean, rstd, N, C, accumulate, dtype=np.float32)
    # outputs are O(|w|·3 + |b|): a few float32 ulps of that; dw and db are sums over N rows of
    # O(1) products, so their rounding grows like sqrt(N)·ulp, hence the looser atol
    np.testing.assert_allclose(out, ty.detach().numpy(), rtol=1e-5, atol=2e-5)
    np.testing.assert_allclose(dx - before, tx.grad.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dw, tw.grad.numpy(), rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(db, tb.grad.numpy(), rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("N,C", [(1, 1), (7, 96), (33, 37), (5, 1000), (1003, 96)])
def test_bf16_output_is_the_output_rounded(N, C):
    """layernorm_forward_bf16 stores the float32 forward's values rounded to bf16 (nearest even) and
    the same statistics, bit for bit."""
    from test_gemm_bf16 import bf16_bits

    rng = np.random.default_rng(8)
    x = (rng.standard_normal((N, C)) * 3 + 1).astype(np.float32)
    w, b = rng.standard_normal(C).astype(np.float32), rng.standard_normal(C).astype(np.float32)
    out, mean, rstd = np.empty((N, C), np.float32), np.empty(N, np.float32), np.empty(N, np.float32)
    call("layernorm_forward", out, mean, rstd, x, w, b, N, C, 1e-5, dtype=np.float32)
    bits, mean2, rstd2 = np.empty((N, C), np.uint16), np.empty(N, np.float32), np.empty(N, np.float32)
    fn = LIB.layernorm_forward_bf16
    fn.restype = None
    fn.argtypes = [ctypes.c_void_p] * 6 + [ctypes.c_int, ctypes.c_int, ctypes.c_float]
    fn(*(a.ctypes.data for a in (bits, mean2, rstd2, x, w, b)), N, C, 1e-5)
    np.testing.assert_array_equal(bits, bf16_bits(out))
    np.testing.assert_array_equal(mean2, mean)
    np.testing.assert_array_equal(rstd2, rstd)
