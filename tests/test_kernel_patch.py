"""Patch embedding (conv k = stride = p as patchify + GEMM) and patch merging's 2×2 gather:
finite differences in float64, PyTorch parity in float32, input gradients written (accumulate 0)
or added (1)."""
import numpy as np
import pytest
import torch

from ckernels import call, grad_buffer, numerical_grad


def embed(images, w, b, p, dtype=np.float64):
    B, C, H, W = images.shape
    D, L = w.shape[0], (H // p) * (W // p)
    out, patches = np.empty((B * L, D), dtype), np.empty((B * L, C * p * p), dtype)
    call("patch_embed_gather", patches, images, B, C, H, W, p, dtype=dtype)
    call("linear_forward", out, patches, w, b, B * L, C * p * p, D, dtype=dtype)
    return out, patches


def embed_backward(images, w, patches, g, p, accumulate, rng, dtype=np.float64):
    """The gradients, with the image's less what its buffer held before"""
    B, C, H, W = images.shape
    D = w.shape[0]
    dimg, before = grad_buffer(images.shape, accumulate, rng, dtype)
    dw, db = np.zeros_like(w), np.zeros(D, dtype)
    work = np.empty(patches.shape, dtype)
    call("linear_backward", 0, work, dw, db, g, patches, w, patches.shape[0], patches.shape[1], D, 0, dtype=dtype)
    call("patch_embed_scatter", dimg, work, B, C, H, W, p, accumulate, dtype=dtype)
    return dimg - before, dw, db


@pytest.mark.parametrize("accumulate", [0, 1])
def test_embed_backward_matches_finite_differences(accumulate):
    rng = np.random.default_rng(0)
    B, C, H, W, p, D = 2, 3, 6, 9, 3, 5
    x, w, b = rng.standard_normal((B, C, H, W)), rng.standard_normal((D, C, p, p)), rng.standard_normal(D)
    probe = rng.standard_normal((B * (H // p) * (W // p), D))

    def loss():
        return float((embed(x, w, b, p)[0] * probe).sum())

    _, patches = embed(x, w, b, p)
    dimg, dw, db = embed_backward(x, w, patches, probe, p, accumulate, rng)
    for analytic, wrt in ((dimg, x), (dw, w), (db, b)):
        # central differences carry ~1e-16·|loss|/1e-6 ≈ 1e-9 of rounding
        np.testing.assert_allclose(analytic, numerical_grad(loss, wrt), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("B,C,H,W,p,D", [(1, 3, 4, 4, 4, 1), (3, 3, 28, 20, 4, 96), (2, 5, 14, 21, 7, 17),
                                         (1, 2, 7, 11, 3, 4)])  # the last leaves pixels out of every patch
@pytest.mark.parametrize("accumulate", [0, 1])
def test_embed_matches_torch_conv(B, C, H, W, p, D, accumulate):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((B, C, H, W)).astype(np.float32)
    w = (rng.standard_normal((D, C, p, p)) * 0.2).astype(np.float32)
    b = rng.standard_normal(D).astype(np.float32)
    L = (H // p) * (W // p)
    g = rng.standard_normal((B, L, D)).astype(np.float32)
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    ty = torch.nn.functional.conv2d(tx, tw, tb, stride=p).flatten(2).transpose(1, 2)  # [B, L, D]
    ty.backward(torch.tensor(g))
    out, patches = embed(x, w, b, p, dtype=np.float32)
    dimg, dw, db = embed_backward(x, w, patches, g.reshape(B * L, D), p, accumulate, rng, dtype=np.float32)
    # sums of C·p·p (forward, image grad) or B·L (weight grad) O(1) products: float32 rounding
    # relative to the sums' magnitude
    np.testing.assert_allclose(out, ty.detach().numpy().reshape(B * L, D), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dimg, tx.grad.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dw, tw.grad.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(db, tb.grad.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("B,H,W,C", [(1, 2, 2, 1), (2, 6, 4, 5), (3, 14, 14, 96)])
@pytest.mark.parametrize("accumulate", [0, 1])
def test_merge_matches_torch_gather(B, H, W, C, accumulate):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((B, H * W, C)).astype(np.float32)
    t = torch.tensor(x).view(B, H, W, C)
    expect = torch.cat([t[:, 0::2, 0::2], t[:, 1::2, 0::2], t[:, 0::2, 1::2], t[:, 1::2, 1::2]], -1)
    out = np.empty((B, H * W // 4, 4 * C), np.float32)
    call("patch_merge_forward", out, x, B, H, W, C, dtype=np.float32)
    np.testing.assert_array_equal(out, expect.reshape(B, -1, 4 * C).numpy())
    # backward is the adjoint of the gather (a permutation): <gather(x), g> = <x, scatter(g)>
    g = rng.standard_normal(out.shape).astype(np.float32)
    dx, before = grad_buffer(x.shape, accumulate, rng, np.float32)
    call("patch_merge_backward", dx, g, B, H, W, C, accumulate, dtype=np.float32)
    back = torch.zeros(B, H, W, C)
    gt = torch.tensor(g).view(B, H // 2, W // 2, 4, C)
    for q, (dy, dx_) in enumerate([(0, 0), (1, 0), (0, 1), (1, 1)]):
        back[:, dy::2, dx_::2] = gt[:, :, :, q]
    np.testing.assert_array_equal(dx, before + back.reshape(B, H * W, C).numpy())
