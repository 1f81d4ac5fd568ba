"""Bilinear x2 upsampling (align_corners=False) and 2x2 average pooling on NHWC maps: finite
differences in float64 and float32 parity with torch.nn.functional on odd sizes."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ckernels import call, numerical_grad

# these kernels are built per instruction set (kernels/isa.h): every test runs on each
pytestmark = pytest.mark.usefixtures("isa")


def upsample(x, dtype=np.float64, onto=None):
    """The upsampling of x, written over NaN, or added onto a copy of `onto`."""
    B, H, W, C = x.shape
    out = np.full((B, 2 * H, 2 * W, C), np.nan, dtype) if onto is None else onto.astype(dtype)
    call("upsample_bilinear2x_forward", out, x, B, H, W, C, int(onto is not None), dtype=dtype)
    return out


def avgpool(x, dtype=np.float64, onto=None):
    B, H, W, C = x.shape
    out = np.full((B, H // 2, W // 2, C), np.nan, dtype) if onto is None else onto.astype(dtype)
    call("avgpool2x2_forward", out, x, B, H, W, C, int(onto is not None), dtype=dtype)
    return out


@pytest.mark.parametrize("forward", [upsample, avgpool])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_forward_adds_onto_out(forward, dtype):
    """accumulate: out + the resampling, the sum rounded once, as adding the written result."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 6, 5, 7)).astype(dtype)
    written = forward(x, dtype)
    onto = rng.standard_normal(written.shape).astype(dtype)
    np.testing.assert_array_equal(forward(x, dtype, onto), onto + written)


@pytest.mark.parametrize("op,shape", [("upsample_bilinear2x", (2, 3, 5, 2)), ("upsample_bilinear2x", (1, 1, 2, 3)),
                                      ("avgpool2x2", (2, 5, 4, 3)), ("avgpool2x2", (1, 3, 7, 2))])
def test_backward_matches_finite_differences(op, shape):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape)
    forward = upsample if op.startswith("upsample") else avgpool
    probe = rng.standard_normal(forward(x).shape)
    dx = np.zeros_like(x)
    call(op + "_backward", dx, probe, *shape)
    np.testing.assert_allclose(dx, numerical_grad(lambda: float((forward(x) * probe).sum()), x), rtol=1e-6, atol=1e-8)


SHAPES = [(2, 7, 5, 3), (1, 1, 1, 17), (3, 4, 9, 33), (2, 12, 12, 64), (1, 2, 1, 5)]


@pytest.mark.parametrize("shape", SHAPES)
def test_upsample_matches_torch(shape):
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape).astype(np.float32)
    tx = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
    ty = F.interpolate(tx, scale_factor=2, mode="bilinear", align_corners=False)
    g = rng.standard_normal(ty.shape).astype(np.float32)
    ty.backward(torch.tensor(g))
    dx = np.zeros_like(x)
    call("upsample_bilinear2x_backward", dx, np.ascontiguousarray(g.transpose(0, 2, 3, 1)), *shape, dtype=np.float32)
    # weights are 1, 3/4, 1/4 and their products: each output is at most 4 rounded products and
    # each input gradient at most 16, so a few ulps of values of size ~1-4
    np.testing.assert_allclose(upsample(x, np.float32), ty.detach().numpy().transpose(0, 2, 3, 1), rtol=1e-6,
                               atol=1e-6)
    np.testing.assert_allclose(dx, tx.grad.numpy().transpose(0, 2, 3, 1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [s for s in SHAPES if s[1] >= 2 and s[2] >= 2])
def test_avgpool_matches_torch(shape):
    rng = np.random.default_rng(2)
    x = rng.standard_normal(shape).astype(np.float32)
    tx = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
    ty = F.avg_pool2d(tx, 2)
    g = rng.standard_normal(ty.shape).astype(np.float32)
    ty.backward(torch.tensor(g))
    dx = np.zeros_like(x)
    call("avgpool2x2_backward", dx, np.ascontiguousarray(g.transpose(0, 2, 3, 1)), *shape, dtype=np.float32)
    # a sum of 4 values then /4 (exact): at most 3 roundings; the backward is an exact scaling
    np.testing.assert_allclose(avgpool(x, np.float32), ty.detach().numpy().transpose(0, 2, 3, 1), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(dx, tx.grad.numpy().transpose(0, 2, 3, 1))
