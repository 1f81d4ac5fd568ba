"""SiLU (x·σ(x), EfficientNet's activation): the backward against finite differences in float64,
the float32 forward and backward against PyTorch over a dense range (the vectorised exp of
kernels/fastmath.h, tails included), the accumulate rule, in place, and NaN passing through."""
import numpy as np
import pytest
import torch

from ckernels import call, grad_buffer, numerical_grad

# these kernels are built per instruction set (kernels/isa.h): every test runs on each
pytestmark = pytest.mark.usefixtures("isa")


def test_backward_matches_finite_differences():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(41) * 4
    probe = rng.standard_normal(41)
    dx = np.full_like(x, np.nan)
    call("silu_backward", dx, probe, x, x.size, 0)

    def loss():
        y = np.empty_like(x)
        call("silu_forward", y, x, x.size)
        return float(y @ probe)

    np.testing.assert_allclose(dx, numerical_grad(loss, x), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("n", [1, 17, 100003])
def test_float32_matches_torch(n):
    x = np.linspace(-100, 100, n).astype(np.float32) if n > 1 else np.array([-3.5], np.float32)
    out = np.empty_like(x)
    call("silu_forward", out, x, x.size, dtype=np.float32)
    tx = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    y = torch.nn.functional.silu(tx)
    probe = np.random.default_rng(1).standard_normal(n).astype(np.float32)
    (y * torch.tensor(probe, dtype=torch.float64)).sum().backward()
    # a few float32 ulps of the output, and of |x|·σ' for the derivative, whose terms reach |x|/4
    np.testing.assert_allclose(out, y.detach().numpy(), rtol=2e-6, atol=1e-30)
    dx = np.empty_like(x)
    call("silu_backward", dx, probe, x, x.size, 0, dtype=np.float32)
    want = tx.grad.numpy()
    bound = 1e-5 * np.abs(want) + 1e-6 * np.abs(probe) * (1 + np.abs(x))
    assert np.all(np.abs(dx - want) <= bound), np.max(np.abs(dx - want) / bound)


@pytest.mark.parametrize("accumulate", [0, 1])
def test_backward_writes_or_adds_and_works_in_place(accumulate):
    rng = np.random.default_rng(2)
    x, g = rng.standard_normal(33), rng.standard_normal(33)
    want = np.empty_like(x)
    call("silu_backward", want, g, x, 33, 0)
    dx, before = grad_buffer(33, accumulate, rng)
    call("silu_backward", dx, g, x, 33, accumulate)
    np.testing.assert_allclose(dx, before + want, rtol=1e-15, atol=1e-15)
    in_place = g.copy()
    call("silu_backward", in_place, in_place, x, 33, 0)  # written: dinp may alias dout
    np.testing.assert_array_equal(in_place, want)
    y = x.copy()
    call("silu_forward", y, y, 33)  # out may alias inp
    np.testing.assert_allclose(y, x / (1 + np.exp(-x)), rtol=1e-15)


def test_nan_and_infinities():
    x = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0], np.float32)
    out = np.empty_like(x)
    call("silu_forward", out, x, x.size, dtype=np.float32)
    want = torch.nn.functional.silu(torch.tensor(x)).numpy()
    np.testing.assert_array_equal(np.isnan(out), np.isnan(want))
    np.testing.assert_array_equal(out[1:2], want[1:2])
