"""Max pooling with argmax (NHWC): finite differences in float64 (inputs without ties), float32
parity with torch.nn.functional.max_pool2d, and PyTorch's tie rule (first maximum in scan order)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ckernels import call, numerical_grad

# these kernels are built per instruction set (kernels/isa.h): every test runs on each
pytestmark = pytest.mark.usefixtures("isa")


def pool(x, K, stride, pad, dtype=np.float64):
    B, H, W, C = x.shape
    OH, OW = (H + 2 * pad - K) // stride + 1, (W + 2 * pad - K) // stride + 1
    out = np.empty((B, OH, OW, C), dtype)
    argmax = np.empty((B, OH, OW, C), np.int32)
    call("maxpool2d_forward", out, argmax, x, B, H, W, C, K, stride, pad, dtype=dtype)
    return out, argmax


@pytest.mark.parametrize("B,H,W,C,K,stride,pad", [(2, 7, 5, 3, 3, 2, 1), (1, 6, 6, 17, 3, 2, 1), (2, 5, 4, 2, 2, 1, 0)])
def test_backward_matches_finite_differences(B, H, W, C, K, stride, pad):
    rng = np.random.default_rng(0)
    x = rng.permutation(B * H * W * C).reshape(B, H, W, C) * 0.01  # distinct values: no ties
    out, argmax = pool(x, K, stride, pad)
    probe = rng.standard_normal(out.shape)
    dx = np.zeros_like(x)
    call("maxpool2d_backward", dx, probe, argmax, B, H, W, C, K, stride, pad)
    np.testing.assert_allclose(dx, numerical_grad(lambda: float((pool(x, K, stride, pad)[0] * probe).sum()), x, 1e-4),
                               rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("B,H,W,C", [(2, 13, 11, 5), (3, 8, 9, 64), (1, 1, 1, 3), (2, 2, 3, 33)])
@pytest.mark.parametrize("ties", [False, True])
def test_matches_torch(B, H, W, C, ties):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((B, H, W, C)).astype(np.float32)
    if ties:  # few distinct values: many ties, and whole windows of zeros as after a ReLU
        x = np.maximum(np.round(x), 0).astype(np.float32)
    out, argmax = pool(x, 3, 2, 1, dtype=np.float32)
    tx = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
    ty, tidx = F.max_pool2d(tx, 3, 2, 1, return_indices=True)
    g = rng.standard_normal(ty.shape).astype(np.float32)
    ty.backward(torch.tensor(g))
    dx = np.zeros_like(x)
    call("maxpool2d_backward", dx, np.ascontiguousarray(g.transpose(0, 2, 3, 1)), argmax, B, H, W, C, 3, 2, 1,
         dtype=np.float32)
    # a max and its routing are exact: no rounding anywhere but in summing routed gradients
    np.testing.assert_array_equal(out, ty.detach().numpy().transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(argmax, tidx.numpy().transpose(0, 2, 3, 1))
    np.testing.assert_allclose(dx, tx.grad.numpy().transpose(0, 2, 3, 1), rtol=1e-6, atol=1e-6)


def test_nan_propagates_like_torch():
    x = np.zeros((1, 3, 3, 1), np.float32)
    x[0, 1, 1, 0] = np.nan
    x[0, 2, 2, 0] = 5
    out, argmax = pool(x, 3, 2, 1, dtype=np.float32)
    ty, tidx = F.max_pool2d(torch.tensor(x.transpose(0, 3, 1, 2)), 3, 2, 1, return_indices=True)
    np.testing.assert_array_equal(out, ty.numpy().transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(argmax, tidx.numpy().transpose(0, 2, 3, 1))
