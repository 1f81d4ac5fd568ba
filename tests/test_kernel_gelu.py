"""GELU's fused output+derivative kernel, the activation backward from a derivative, and the
accuracy of the float32 GELU (vectorised erfc and exp of kernels/fastmath.h) over a dense range."""
import ctypes
import math

import numpy as np
import pytest
import torch

from ckernels import LIB, call, grad_buffer, numerical_grad

# these kernels are built per instruction set (kernels/isa.h): every test runs on each
pytestmark = pytest.mark.usefixtures("isa")


def test_derivative_matches_finite_differences_and_output_matches_gelu_forward():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(41) * 3
    out, deriv = np.empty_like(x), np.empty_like(x)
    call("gelu_forward_derivative", out, deriv, x, x.size)
    plain = np.empty_like(x)
    call("gelu_forward", plain, x, x.size)
    np.testing.assert_array_equal(out, plain)
    probe = rng.standard_normal(41)

    def loss():
        y = np.empty_like(x)
        call("gelu_forward", y, x, x.size)
        return float(y @ probe)

    # central differences of a 41-term sum carry ~1e-9 of rounding
    np.testing.assert_allclose(deriv * probe, numerical_grad(loss, x), rtol=1e-6, atol=1e-8)
    in_place = x.copy()
    call("gelu_forward_derivative", out, in_place, in_place, x.size)  # deriv may alias the input
    np.testing.assert_array_equal(in_place, deriv)


@pytest.mark.parametrize("accumulate", [0, 1])
def test_activation_backward_writes_or_adds(accumulate):
    rng = np.random.default_rng(1)
    g, d = rng.standard_normal(33), rng.standard_normal(33)
    dx, before = grad_buffer(33, accumulate, rng)
    call("activation_backward", dx, g, d, 33, accumulate)
    # one rounding of the product and the sum, or one fused (the AVX builds contract into an FMA)
    np.testing.assert_allclose(dx, before + g * d, rtol=1e-15, atol=1e-14)
    in_place = g.copy()
    call("activation_backward", in_place, in_place, d, 33, 0)  # written, dinp may alias dout
    np.testing.assert_array_equal(in_place, g * d)


def test_float32_derivative_matches_torch():
    rng = np.random.default_rng(2)
    x = (rng.standard_normal(100003) * 4).astype(np.float32)
    out, deriv = np.empty_like(x), np.empty_like(x)
    call("gelu_forward_derivative", out, deriv, x, x.size, dtype=np.float32)
    tx = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    torch.nn.functional.gelu(tx).sum().backward()
    # the derivative is O(1) (between -0.17 and 1.13): float32 rounding of Φ + x·φ
    np.testing.assert_allclose(deriv, tx.grad.numpy(), rtol=1e-5, atol=2e-7)


def test_float32_gelu_is_accurate_over_a_dense_range():
    x = np.linspace(-20, 20, 400001).astype(np.float32)
    out = np.empty_like(x)
    call("gelu_forward", out, x, x.size, dtype=np.float32)
    # the truth from erfc in double (PyTorch's float64 GELU forms 1 + erf, which cancels for
    # x < -6: it is off by up to 2x in [-8.4, -6.9] and cannot serve as the reference there)
    truth = np.array([0.5 * v * math.erfc(-v / math.sqrt(2)) for v in x.astype(np.float64)])
    nonzero = np.abs(truth) > 1e-30
    relative = np.abs(out[nonzero] - truth[nonzero]) / np.abs(truth[nonzero])
    assert relative.max() < 1e-6, relative.max()  # a few float32 ulps everywhere, tails included


@pytest.mark.parametrize("n", [1, 17, 40000])
def test_bf16_output_is_the_output_rounded(n):
    """gelu_forward_bf16 stores the float32 GELU rounded to bf16 (nearest even), bit for bit, for
    values across the range (tails, ties of the rounding included by their sheer number)."""
    from test_gemm_bf16 import bf16_bits

    x = (np.random.default_rng(9).standard_normal(n) * 4).astype(np.float32)
    out = np.empty(n, np.float32)
    call("gelu_forward", out, x, n, dtype=np.float32)
    bits = np.empty(n, np.uint16)
    fn = LIB.gelu_forward_bf16
    fn.restype, fn.argtypes = None, [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
    fn(bits.ctypes.data, x.ctypes.data, n)
    np.testing.assert_array_equal(bits, bf16_bits(out))


@pytest.mark.parametrize("n", [1, 17, 40000])
def test_bf16_forward_derivative_is_the_fp32_ones(n):
    """gelu_forward_derivative_bf16 (the backward's recomputation at bf16) stores gelu_forward_derivative's
    output rounded to bf16 and the same derivative, bit for bit; the derivative may alias the input."""
    from test_gemm_bf16 import bf16_bits

    x = (np.random.default_rng(10).standard_normal(n) * 4).astype(np.float32)
    out, deriv = np.empty(n, np.float32), np.empty(n, np.float32)
    call("gelu_forward_derivative", out, deriv, x, n, dtype=np.float32)
    bits, in_place = np.empty(n, np.uint16), x.copy()
    fn = LIB.gelu_forward_derivative_bf16
    fn.restype, fn.argtypes = None, [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
    fn(bits.ctypes.data, in_place.ctypes.data, in_place.ctypes.data, n)
    np.testing.assert_array_equal(bits, bf16_bits(out))
    np.testing.assert_array_equal(in_place, deriv)
