"""Depthwise convolution (NHWC, PyTorch's Conv2d with groups = channels): finite differences in
float64 of both backward products, float32 parity with torch.nn.functional.conv2d on odd shapes
for every kernel size and stride EfficientNet uses (3 and 5, strides 1 and 2, 'same' padding
(K-1)/2 as torchvision's), the folded scale and shift, the accumulate rule, and the weight
repacks."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ckernels import call, grad_buffer, numerical_grad

# these kernels are built per instruction set (kernels/isa.h): every test runs on each
pytestmark = pytest.mark.usefixtures("isa")


def out_size(n, K, stride, pad):
    return (n + 2 * pad - K) // stride + 1


def to_kkc(w, dtype=np.float64):
    """[C, 1, K, K] (PyTorch) -> [K, K, C] through the repack kernel."""
    C, _, K, _ = w.shape
    out = np.empty((K, K, C), dtype)
    call("depthwise_weight_to_kkc", out, np.ascontiguousarray(w, dtype), C, K, dtype=dtype)
    return out


def forward(x, w_kkc, stride, pad, scale=None, shift=None, dtype=np.float64):
    B, H, W, C = x.shape
    K = w_kkc.shape[0]
    out = np.empty((B, out_size(H, K, stride, pad), out_size(W, K, stride, pad), C), dtype)
    call("depthwise_forward", out, x, w_kkc, scale, shift, B, H, W, C, K, stride, pad, dtype=dtype)
    return out


def torch_reference(x, w, stride, pad):
    """NHWC x, PyTorch weight [C, 1, K, K] -> NHWC output, by torch in float64."""
    tx = torch.tensor(x, dtype=torch.float64).permute(0, 3, 1, 2)
    y = F.conv2d(tx, torch.tensor(w, dtype=torch.float64), stride=stride, padding=pad, groups=x.shape[3])
    return y.permute(0, 2, 3, 1).numpy()


GEOMETRIES = [(3, 1), (3, 2), (5, 1), (5, 2)]  # (K, stride) of EfficientNet-B0..B7


@pytest.mark.parametrize("K,stride", GEOMETRIES)
@pytest.mark.parametrize("B,H,W,C", [(2, 7, 6, 3), (1, 5, 9, 17)])
def test_backward_matches_finite_differences(B, H, W, C, K, stride):
    rng = np.random.default_rng(0)
    pad = (K - 1) // 2
    x = rng.standard_normal((B, H, W, C))
    w = to_kkc(rng.standard_normal((C, 1, K, K)))
    probe = rng.standard_normal(forward(x, w, stride, pad).shape)
    dx, dw = np.full_like(x, np.nan), np.zeros_like(w)
    call("depthwise_backward", dx, dw, probe, x, w, B, H, W, C, K, stride, pad, 0)

    def loss():
        return float((forward(x, w, stride, pad) * probe).sum())

    # a sum of bilinear terms: central differences are exact up to rounding (~1e-9)
    np.testing.assert_allclose(dx, numerical_grad(loss, x), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(dw, numerical_grad(loss, w), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("K,stride", GEOMETRIES)
@pytest.mark.parametrize("B,H,W,C", [(2, 13, 11, 5), (1, 1, 1, 3), (3, 8, 9, 64), (2, 14, 7, 33), (1, 4, 3, 1)])
def test_float32_matches_torch(B, H, W, C, K, stride):
    rng = np.random.default_rng(1)
    pad = (K - 1) // 2
    x = rng.standard_normal((B, H, W, C)).astype(np.float32)
    w = rng.standard_normal((C, 1, K, K)).astype(np.float32)
    scale, shift = rng.standard_normal(C).astype(np.float32), rng.standard_normal(C).astype(np.float32)
    wk = to_kkc(w, np.float32)
    want = torch_reference(x.astype(np.float64), w.astype(np.float64), stride, pad)
    # a sum of at most 25 float32 products of O(1) values: a few float32 ulps of the largest term
    np.testing.assert_allclose(forward(x, wk, stride, pad, dtype=np.float32), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(forward(x, wk, stride, pad, scale, shift, dtype=np.float32), want * scale + shift,
                               rtol=1e-5, atol=2e-5)

    probe = rng.standard_normal(want.shape).astype(np.float32)
    tx = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    tw = torch.tensor(w, dtype=torch.float64, requires_grad=True)
    y = F.conv2d(tx.permute(0, 3, 1, 2), tw, stride=stride, padding=pad, groups=C).permute(0, 2, 3, 1)
    (y * torch.tensor(probe, dtype=torch.float64)).sum().backward()
    dx, dw_kkc = np.empty_like(x), np.zeros_like(wk)
    call("depthwise_backward", dx, dw_kkc, probe, x, wk, B, H, W, C, K, stride, pad, 0, dtype=np.float32)
    dw = np.zeros_like(w)
    call("depthwise_weight_grad_from_kkc", dw, dw_kkc, C, K, dtype=np.float32)
    # the weight gradient sums B·OH·OW products: its bound grows with them
    terms = B * y.shape[1] * y.shape[2]
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dw, tw.grad.numpy(), rtol=1e-5, atol=2e-6 * terms)


@pytest.mark.parametrize("accumulate", [0, 1])
def test_input_gradient_writes_or_adds_and_weight_gradient_adds(accumulate):
    rng = np.random.default_rng(2)
    B, H, W, C, K, stride, pad = 2, 6, 5, 7, 3, 2, 1
    x = rng.standard_normal((B, H, W, C))
    w = to_kkc(rng.standard_normal((C, 1, K, K)))
    probe = rng.standard_normal(forward(x, w, stride, pad).shape)
    want_dx, want_dw = np.zeros_like(x), np.zeros_like(w)
    call("depthwise_backward", want_dx, want_dw, probe, x, w, B, H, W, C, K, stride, pad, 1)
    dx, before = grad_buffer(x.shape, accumulate, rng)
    dw0 = rng.standard_normal(w.shape)
    dw = dw0.copy()
    call("depthwise_backward", dx, dw, probe, x, w, B, H, W, C, K, stride, pad, accumulate)
    np.testing.assert_allclose(dx, before + want_dx, rtol=1e-14, atol=1e-14)
    np.testing.assert_allclose(dw, dw0 + want_dw, rtol=1e-14, atol=1e-14)
    call("depthwise_backward", None, dw, probe, x, w, B, H, W, C, K, stride, pad, 0)  # input gradient not wanted
    np.testing.assert_allclose(dw, dw0 + 2 * want_dw, rtol=1e-14, atol=1e-14)


def test_weight_repacks_are_transposes():
    rng = np.random.default_rng(3)
    w = rng.standard_normal((11, 1, 5, 5))
    np.testing.assert_array_equal(to_kkc(w), w.reshape(11, 25).T.reshape(5, 5, 11))
    back = np.ones_like(w)
    call("depthwise_weight_grad_from_kkc", back, to_kkc(w), 11, 5)
    np.testing.assert_array_equal(back, w + 1)
