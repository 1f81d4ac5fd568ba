"""ReLU and exact GELU: finite differences in float64, PyTorch parity in float32, the input gradient
written (accumulate 0) or added (1)."""
import numpy as np
import pytest
import torch

from ckernels import call, grad_buffer, numerical_grad

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
