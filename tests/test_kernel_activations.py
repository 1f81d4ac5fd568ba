"""ReLU and exact GELU: finite differences in float64, PyTorch parity in float32, the input gradient
written (accumulate 0) or added (1); the ReLU whose output is stored in bf16."""
import ctypes

import numpy as np
import pytest
import torch

from ckernels import LIB, bf16_output, call, grad_buffer, numerical_grad

# these kernels are built per instruction set (kernels/isa.h): every test runs on each
pytestmark = pytest.mark.usefixtures("isa")

TORCH = {"relu": torch.relu, "gelu": torch.nn.functional.gelu}


@pytest.mark.parametrize("name", ["relu", "gelu"])
@pytest.mark.parametrize("accumulate", [0, 1])
def test_backward_matches_finite_differences(name, accumulate):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(37) * 3
    x[np.abs(x) < 1e-3] += 0.1  # keep ReLU's kink away from the difference step
    probe = rng.standard_normal(37)

    def loss():
        out = np.empty_like(x)
        call(f"{name}_forward", out, x, x.size)
        return float(out @ probe)

    saved = np.empty_like(x)
    call(f"{name}_forward", saved, x, x.size)
    dx, before = grad_buffer(x.shape, accumulate, rng)
    call(f"{name}_backward", dx, probe, saved if name == "relu" else x, x.size, accumulate)
    np.testing.assert_allclose(dx - before, numerical_grad(loss, x), rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("name", ["relu", "gelu"])
@pytest.mark.parametrize("n", [1, 17, 100003])
@pytest.mark.parametrize("accumulate", [0, 1])
def test_matches_torch(name, n, accumulate):
    rng = np.random.default_rng(1)
    x = (rng.standard_normal(n) * 4).astype(np.float32)
    g = rng.standard_normal(n).astype(np.float32)
    out = np.empty_like(x)
    call(f"{name}_forward", out, x, n, dtype=np.float32)
    dx, before = grad_buffer(x.shape, accumulate, rng, np.float32)
    call(f"{name}_backward", dx, g, out if name == "relu" else x, n, accumulate, dtype=np.float32)
    tx = torch.tensor(x, requires_grad=True)
    ty = TORCH[name](tx)
    ty.backward(torch.tensor(g))
    # PyTorch's float32 erf loses ~1e-6 absolute to cancellation for x << 0; herbs uses erfc
    np.testing.assert_allclose(out, ty.detach().numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx - before, tx.grad.numpy(), rtol=1e-5, atol=1e-5)
    if name == "gelu":  # and is within a few float32 ulps of a float64 truth
        truth = torch.nn.functional.gelu(torch.tensor(x, dtype=torch.float64)).numpy()
        np.testing.assert_allclose(out, truth, rtol=3e-6, atol=1e-12)


def test_relu_in_place():
    x = np.array([-1.0, 0.0, 2.0])
    call("relu_forward", x, x, 3)
    np.testing.assert_array_equal(x, [0.0, 0.0, 2.0])


def relu_backward_bf16(dinp, dout, bits, accumulate):
    fn = LIB.relu_backward_bf16
    fn.restype = None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn(dinp.ctypes.data, dout.ctypes.data, bits.ctypes.data, dinp.size, accumulate)


@pytest.mark.parametrize("n", [1, 17, 100003])
@pytest.mark.parametrize("accumulate", [0, 1])
def test_relu_bf16_is_torch_relu_rounded_and_its_mask(n, accumulate):
    """relu_forward_bf16 stores torch.relu rounded to bf16 (ties to even; -0 stays -0, a NaN stays a
    NaN, a positive value of at most 2^-134 becomes +0); relu_backward_bf16 masks with those bits:
    torch's ReLU gradient wherever the rounding kept the sign, zero where it made +0."""
    rng = np.random.default_rng(2)
    x = (rng.standard_normal(n) * 4).astype(np.float32)
    special = np.array([np.nan, -np.nan, np.inf, -np.inf, -0.0, 0.0, 1e-45, 1.5e-40, -1e-45, 3.0e38, 1 + 2**-8,
                        1 + 3 * 2**-8], np.float32)
    x[:min(n, special.size)] = special[:n]
    bits = bf16_output("relu_forward_bf16", x)
    tx = torch.tensor(x, requires_grad=True)
    ty = torch.relu(tx)
    want = ty.detach().to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    nan = np.isnan(x)
    np.testing.assert_array_equal(bits[~nan], want[~nan])
    assert ((bits[nan] & 0x7FFF) > 0x7F80).all()  # still NaN
    g = rng.standard_normal(n).astype(np.float32)
    dx, before = grad_buffer(x.shape, accumulate, rng, np.float32)
    relu_backward_bf16(dx, g, bits, accumulate)
    ty.backward(torch.tensor(g))
    kept = ~((x > 0) & (bits == 0))  # the values the rounding made +0
    np.testing.assert_array_equal(dx[kept], (before + tx.grad.numpy())[kept])
    np.testing.assert_array_equal(dx[~kept], before[~kept])
    assert n < len(special) or (~kept).sum() == 1  # 1e-45 only: 1.5e-40 is a bf16 subnormal
