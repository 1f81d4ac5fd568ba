"""2-D convolution (NHWC, im2col onto the GEMM): finite differences in float64 through the weight
repack, and float32 parity with torch.nn.functional.conv2d on odd sizes, strides, paddings and
kernels 1x1 / 3x3 / 7x7, with the im2col chunked into few-pixel pieces as well as whole."""
import ctypes

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ckernels import LIB, call, numerical_grad

LIB.conv2d_scratch_floats.restype = ctypes.c_size_t


def out_size(n, k, stride, pad):
    return (n + 2 * pad - k) // stride + 1


def conv(x, w_oihw, bias, stride, pad, scratch_rows=None, dtype=np.float64, scale=None, relu=0):
    """x [B,H,W,C], w in PyTorch's layout -> out [B,OH,OW,OC] = act(conv·scale + bias) through the kernel."""
    B, H, W, C = x.shape
    OC, _, KH, KW = w_oihw.shape
    w = np.empty((OC, KH, KW, C), dtype)
    call("conv2d_weight_to_ohwi", w, w_oihw, OC, C, KH, KW, dtype=dtype)
    OH, OW = out_size(H, KH, stride, pad), out_size(W, KW, stride, pad)
    K = KH * KW * C
    rows = scratch_rows or B * OH * OW
    # the double build needs only im2col rows (few rows: the chunking is exercised); the float
    # build's direct convolution also packs the weight there
    need = rows * K if dtype == np.float64 else max(rows * K, LIB.conv2d_scratch_floats(C, OC, KH, KW))
    scratch = np.empty(need, dtype)
    out = np.empty((B, OH, OW, OC), dtype)
    call("conv2d_forward", out, x, w, scale, bias, relu, scratch, scratch.size, B, H, W, C, OC, KH, KW, stride, pad,
         dtype=dtype)
    return out, w, scratch


def conv_backward(dout, x, w, scratch, shape, stride, pad, bias=True, dtype=np.float64, accumulate=0):
    """dx, dw, db; dx written over NaN (accumulate 0) or added to 0.5 and the 0.5 taken off again."""
    B, H, W, C = x.shape
    OC, KH, KW, _ = w.shape
    dx, dw_ohwi = np.full_like(x, 0.5 if accumulate else np.nan), np.zeros_like(w)
    dw = np.zeros((OC, C, KH, KW), dtype)
    db = np.zeros(OC, dtype) if bias else None
    call("conv2d_backward", 0, dx, dw_ohwi, db, dout, x, w, scratch, scratch.size, B, H, W, C, OC, KH, KW, stride,
         pad, accumulate, dtype=dtype)
    if accumulate:
        dx -= dtype(0.5)
    call("conv2d_weight_grad_from_ohwi", dw, dw_ohwi, OC, C, KH, KW, dtype=dtype)
    return dx, dw, db


# (B, H, W, C, OC, K, stride, pad, scratch rows): awkward sizes, chunked and whole im2col
FD_CASES = [
    (2, 5, 7, 3, 4, 3, 1, 1, 4),
    (1, 7, 6, 2, 3, 3, 2, 1, None),
    (2, 4, 5, 3, 2, 1, 1, 0, None),   # pointwise: one GEMM, no scratch
    (2, 5, 5, 3, 2, 1, 2, 0, 3),      # 1x1 stride 2: a strided gather
    (1, 9, 8, 2, 3, 7, 2, 3, 5),      # the stem's shape of kernel
    (1, 4, 3, 2, 2, 2, 3, 1, 1),      # stride larger than the kernel, one pixel per chunk
]


@pytest.mark.parametrize("B,H,W,C,OC,K,stride,pad,rows", FD_CASES)
def test_backward_matches_finite_differences(B, H, W, C, OC, K, stride, pad, rows):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((B, H, W, C))
    w = rng.standard_normal((OC, C, K, K))
    b = rng.standard_normal(OC)
    out, w_ohwi, scratch = conv(x, w, b, stride, pad, rows)
    probe = rng.standard_normal(out.shape)

    def loss():
        return float((conv(x, w, b, stride, pad, rows)[0] * probe).sum())

    dx, dw, db = conv_backward(probe, x, w_ohwi, scratch, out.shape, stride, pad)
    for analytic, wrt in ((dx, x), (dw, w), (db, b)):
        np.testing.assert_allclose(analytic, numerical_grad(loss, wrt), rtol=1e-6, atol=1e-8)


TORCH_CASES = [
    (3, 13, 11, 5, 7, 3, 1, 1, None),
    (2, 15, 17, 16, 33, 3, 2, 1, 37),
    (2, 9, 9, 19, 24, 1, 1, 0, None),
    (3, 11, 7, 17, 8, 1, 2, 0, 10),
    (2, 23, 21, 3, 16, 7, 2, 3, 100),
    (1, 1, 1, 4, 3, 3, 1, 1, None),
    (2, 6, 8, 64, 64, 3, 1, 1, 29),
]


@pytest.mark.parametrize("B,H,W,C,OC,K,stride,pad,rows", TORCH_CASES)
@pytest.mark.parametrize("bias", [False, True])
def test_matches_torch(B, H, W, C, OC, K, stride, pad, rows, bias):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((B, H, W, C), dtype=np.float32)
    w = (rng.standard_normal((OC, C, K, K)) / np.sqrt(C * K * K)).astype(np.float32)
    b = rng.standard_normal(OC, dtype=np.float32) if bias else None
    out, w_ohwi, scratch = conv(x, w, b, stride, pad, rows, dtype=np.float32)
    tx = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
    tw = torch.tensor(w, requires_grad=True)
    tb = torch.tensor(b, requires_grad=True) if bias else None
    ty = F.conv2d(tx, tw, tb, stride=stride, padding=pad)
    g = rng.standard_normal(ty.shape, dtype=np.float32)
    ty.backward(torch.tensor(g))
    dout = np.ascontiguousarray(g.transpose(0, 2, 3, 1))
    # dx written over NaN without a bias, added onto 0.5 with one: both modes on every path (direct,
    # pointwise, im2col)
    dx, dw, db = conv_backward(dout, x, w_ohwi, scratch, out.shape, stride, pad, bias, dtype=np.float32,
                               accumulate=int(bias))
    # float32 sums of up to K·K·C (forward, dx) or B·OH·OW (dw) terms of unit size: rounding
    # grows like sqrt(terms)·2^-24 relative to the sum of magnitudes, far below 1e-4 absolute
    # on outputs of size ~1 (dw sums up to ~600 products, so its scale is ~25: tolerance 1e-3).
    np.testing.assert_allclose(out, ty.detach().numpy().transpose(0, 2, 3, 1), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dx, tx.grad.numpy().transpose(0, 2, 3, 1), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dw, tw.grad.numpy(), rtol=1e-4, atol=1e-3)
    if bias:
        np.testing.assert_allclose(db, tb.grad.numpy(), rtol=1e-4, atol=1e-3)


def test_weight_repack_round_trip():
    rng = np.random.default_rng(2)
    w = rng.standard_normal((5, 3, 2, 7))
    ohwi = np.empty((5, 2, 7, 3))
    call("conv2d_weight_to_ohwi", ohwi, w, 5, 3, 2, 7)
    np.testing.assert_array_equal(ohwi, w.transpose(0, 2, 3, 1))
    back = np.ones_like(w)
    call("conv2d_weight_grad_from_ohwi", back, ohwi, 5, 3, 2, 7)
    np.testing.assert_array_equal(back, w + 1)  # accumulates


@pytest.mark.parametrize("B,H,W,C,OC,K,stride,pad", [
    (2, 9, 7, 17, 40, 3, 1, 1),  # direct path, edge tiles along pixels and channels
    (3, 11, 7, 33, 20, 1, 1, 0),  # direct path, 1x1
    (2, 8, 8, 3, 24, 7, 2, 3),  # im2col chunks (few input channels, like the stem), stride 2
    (2, 5, 6, 8, 10, 1, 1, 0),  # one GEMM (1x1 below the direct path's channel minimum)
])
@pytest.mark.parametrize("relu", [0, 1])
def test_folded_batchnorm_gives_the_bits_of_conv_then_batchnorm(isa, B, H, W, C, OC, K, stride, pad, relu):
    """An eval-mode BatchNorm (+ReLU) folded into the conv's store (scale and shift from
    batchnorm_eval_affine) equals the conv followed by the BatchNorm kernel exactly, on every
    path and instruction set; a scale alone and the ReLU alone as NumPy computes them."""
    rng = np.random.default_rng(5)
    f32 = np.float32
    x = rng.standard_normal((B, H, W, C)).astype(f32)
    w = (rng.standard_normal((OC, C, K, K)) * 0.3).astype(f32)
    mean, var = rng.standard_normal(OC).astype(f32), rng.uniform(0.2, 2, OC).astype(f32)
    gamma, beta = rng.standard_normal(OC).astype(f32), rng.standard_normal(OC).astype(f32)
    scale, shift = np.empty(OC, f32), np.empty(OC, f32)
    call("batchnorm_eval_affine", scale, shift, mean, var, gamma, beta, OC, 1e-5, dtype=f32)
    plain, _, _ = conv(x, w, None, stride, pad, dtype=f32)
    expected = np.empty_like(plain)
    call("batchnorm_forward_eval", expected, plain, mean, var, gamma, beta, plain.size // OC, OC, 1e-5, dtype=f32)
    if relu:
        np.maximum(expected, 0, out=expected)  # exact, as the conv's ReLU
    folded, _, _ = conv(x, w, shift, stride, pad, dtype=f32, scale=scale, relu=relu)
    np.testing.assert_array_equal(folded, expected)
    scaled, _, _ = conv(x, w, None, stride, pad, dtype=f32, scale=scale, relu=relu)
    np.testing.assert_array_equal(scaled, np.maximum(plain * scale, 0) if relu else plain * scale)
    assert relu == 0 or (folded == 0).any()  # the ReLU had something to clip


@pytest.mark.parametrize("threads", [1, 2])
def test_direct_path_on_every_isa_and_thread_count(isa, threads):
    """The float engine's direct convolution runs the current ISA's micro-kernel tile (a
    row-pointer kernel on AVX-512, a packed tile elsewhere): same results on each. The last two
    cases are large enough for the weight gradient to split its rows among two threads."""
    import herbs
    old_threads = herbs.get_num_threads()
    herbs.set_num_threads(threads)
    try:
        for case in [(2, 9, 7, 17, 40, 3, 1, 1, None), (3, 11, 7, 33, 20, 1, 1, 0, None), (2, 8, 8, 24, 16, 3, 2, 1, 7),
                     (3, 21, 21, 32, 40, 3, 1, 1, None), (3, 24, 24, 64, 48, 1, 1, 0, None)]:
            test_matches_torch(*case, bias=True)
    finally:
        herbs.set_num_threads(old_threads)
