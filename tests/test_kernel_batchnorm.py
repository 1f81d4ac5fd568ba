"""Batch normalisation (channels last): finite differences in float64, PyTorch parity in
float32 for train mode (batch statistics, running-stat update) and eval mode; the input kept in
bf16 for the backward."""
import ctypes

import numpy as np
import pytest
import torch

from ckernels import LIB, call, numerical_grad

# these kernels are built per instruction set (kernels/isa.h): every test runs on each
pytestmark = pytest.mark.usefixtures("isa")


def bn_train(x, w, b, rm, rv, eps=1e-5, momentum=0.1, dtype=np.float64):
    N, C = x.shape
    out, mean, rstd = np.empty_like(x), np.empty(C, dtype), np.empty(C, dtype)
    call("batchnorm_forward_train", out, mean, rstd, rm, rv, x, w, b, N, C, eps, momentum, dtype=dtype)
    return out, mean, rstd


@pytest.mark.parametrize("N,C", [(2, 1), (7, 17), (31, 3)])
@pytest.mark.parametrize("affine", [True, False])
def test_train_backward_matches_finite_differences(N, C, affine):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, C)) * 2 + 1
    w = rng.standard_normal(C) if affine else None
    b = rng.standard_normal(C) if affine else None
    probe = rng.standard_normal((N, C))

    def loss():
        return float((bn_train(x, w, b, None, None)[0] * probe).sum())

    _, mean, rstd = bn_train(x, w, b, None, None)
    dx = np.full_like(x, np.nan)  # written, not read
    dw, db = (np.zeros(C), np.zeros(C)) if affine else (None, None)
    call("batchnorm_backward", dx, dw, db, probe, None, x, w, mean, rstd, N, C, 0)
    np.testing.assert_allclose(dx, numerical_grad(loss, x), rtol=1e-6, atol=1e-8)
    if affine:
        np.testing.assert_allclose(dw, numerical_grad(loss, w), rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(db, numerical_grad(loss, b), rtol=1e-6, atol=1e-8)


def test_eval_backward_matches_finite_differences():
    rng = np.random.default_rng(1)
    N, C = 9, 5
    x, w, b = rng.standard_normal((N, C)), rng.standard_normal(C), rng.standard_normal(C)
    rm, rv = rng.standard_normal(C), rng.uniform(0.5, 2, C)
    probe = rng.standard_normal((N, C))

    def loss():
        out = np.empty_like(x)
        call("batchnorm_forward_eval", out, x, rm, rv, w, b, N, C, 1e-5)
        return float((out * probe).sum())

    dx, dw, db = np.full_like(x, np.nan), np.zeros(C), np.zeros(C)  # dx written, not read
    call("batchnorm_backward_eval", dx, dw, db, probe, None, x, rm, rv, w, N, C, 1e-5, 0)
    for analytic, wrt in ((dx, x), (dw, w), (db, b)):
        np.testing.assert_allclose(analytic, numerical_grad(loss, wrt), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("B,C,H,W", [(2, 3, 5, 7), (4, 64, 14, 14), (3, 33, 1, 1)])
def test_matches_torch_batchnorm2d(B, C, H, W):
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((B, C, H, W)) * 3 + 2).astype(np.float32)
    g = rng.standard_normal((B, C, H, W)).astype(np.float32)
    bn = torch.nn.BatchNorm2d(C)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor(rng.standard_normal(C).astype(np.float32)))
        bn.bias.copy_(torch.tensor(rng.standard_normal(C).astype(np.float32)))
        bn.running_mean.copy_(torch.tensor(rng.standard_normal(C).astype(np.float32)))
        bn.running_var.copy_(torch.tensor(rng.uniform(0.5, 2, C).astype(np.float32)))
    w, b = bn.weight.detach().numpy().copy(), bn.bias.detach().numpy().copy()
    rm, rv = bn.running_mean.numpy().copy(), bn.running_var.numpy().copy()
    nhwc = lambda a: np.ascontiguousarray(a.transpose(0, 2, 3, 1).reshape(-1, C))
    N = B * H * W

    # eval mode, before the running statistics move
    out = np.empty((N, C), np.float32)
    call("batchnorm_forward_eval", out, nhwc(x), rm, rv, w, b, N, C, 1e-5, dtype=np.float32)
    bn.eval()
    np.testing.assert_allclose(out, nhwc(bn(torch.tensor(x)).detach().numpy()), rtol=1e-5, atol=1e-5)

    # train mode
    bn.train()
    tx = torch.tensor(x, requires_grad=True)
    ty = bn(tx)
    ty.backward(torch.tensor(g))
    out, mean, rstd = bn_train(nhwc(x), w, b, rm, rv, dtype=np.float32)
    dx, dw, db = np.full((N, C), 0.5, np.float32), np.zeros(C, np.float32), np.zeros(C, np.float32)
    call("batchnorm_backward", dx, dw, db, nhwc(g), None, nhwc(x), w, mean, rstd, N, C, 1, dtype=np.float32)
    dx -= 0.5  # accumulated onto what was there
    np.testing.assert_allclose(out, nhwc(ty.detach().numpy()), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(rm, bn.running_mean.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rv, bn.running_var.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dx, nhwc(tx.grad.numpy()), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dw, bn.weight.grad.numpy(), rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(db, bn.bias.grad.numpy(), rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("N,C", [(1, 3), (7, 17), (300, 1100), (64, 2048)])
@pytest.mark.parametrize("relu", [0, 1])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_forward_saved_is_the_train_forward_bit_for_bit(N, C, relu, dtype):
    """batchnorm_forward_saved (a backward that did not keep the output makes it again) gives the
    train-mode forward's output bit for bit from the statistics it saved, with and without the ReLU
    and the affine parameters, on every instruction set; blocks of 1024 channels and more included."""
    rng = np.random.default_rng(N * C + relu)
    x = (rng.standard_normal((N, C)) * 3 + 1).astype(dtype)
    for w, b in [(rng.uniform(-2, 2, C).astype(dtype), rng.standard_normal(C).astype(dtype)), (None, None)]:
        out, mean, rstd = np.empty((N, C), dtype), np.empty(C, dtype), np.empty(C, dtype)
        forward = "batchnorm_relu_forward_train" if relu else "batchnorm_forward_train"
        call(forward, out, mean, rstd, None, None, x, w, b, N, C, 1e-5, 0.1, dtype=dtype)
        again = np.full((N, C), np.nan, dtype)
        call("batchnorm_forward_saved", again, x, mean, rstd, w, b, N, C, relu, dtype=dtype)
        np.testing.assert_array_equal(again, out)


@pytest.mark.parametrize("relu", [False, True])
def test_backward_in_place(relu):
    """batchnorm_backward may write dinp over dout or over inp: the same bits as into its own buffer."""
    rng = np.random.default_rng(21)
    N, C = 301, 70
    x, g = rng.standard_normal((N, C)).astype(np.float32), rng.standard_normal((N, C)).astype(np.float32)
    w = rng.uniform(-2, 2, C).astype(np.float32)
    out, mean, rstd = np.empty((N, C), np.float32), np.empty(C, np.float32), np.empty(C, np.float32)
    call("batchnorm_relu_forward_train", out, mean, rstd, None, None, x, w, None, N, C, 1e-5, 0.1, dtype=np.float32)
    mask = out if relu else None
    want = np.empty((N, C), np.float32)
    call("batchnorm_backward", want, None, None, g, mask, x, w, mean, rstd, N, C, 0, dtype=np.float32)
    over_dout, over_inp = g.copy(), x.copy()
    call("batchnorm_backward", over_dout, None, None, over_dout, mask, x, w, mean, rstd, N, C, 0, dtype=np.float32)
    call("batchnorm_backward", over_inp, None, None, g, mask, over_inp, w, mean, rstd, N, C, 0, dtype=np.float32)
    np.testing.assert_array_equal(over_dout, want)
    np.testing.assert_array_equal(over_inp, want)


@pytest.mark.parametrize("N,C", [(1, 3), (7, 17), (300, 1100)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_backward_saved_is_the_backward_through_the_kept_output(N, C, dtype):
    """batchnorm_relu_backward_saved (the ReLU's output not kept: its mask made again from the input)
    gives batchnorm_backward's gradients with relu_out, bit for bit, written, accumulated and in place
    over dout; zeros among the inputs put outputs exactly on the ReLU's edge."""
    rng = np.random.default_rng(N + C)
    x = (rng.standard_normal((N, C)) * 2).astype(dtype)
    x[::3, ::2] = 0
    g = rng.standard_normal((N, C)).astype(dtype)
    for w, b in [(rng.uniform(-2, 2, C).astype(dtype), np.zeros(C, dtype)),
                 (rng.uniform(-2, 2, C).astype(dtype), rng.standard_normal(C).astype(dtype)), (None, None)]:
        out, mean, rstd = np.empty((N, C), dtype), np.empty(C, dtype), np.empty(C, dtype)
        call("batchnorm_relu_forward_train", out, mean, rstd, None, None, x, w, b, N, C, 1e-5, 0.1, dtype=dtype)
        for accumulate in (0, 1):
            start = rng.standard_normal((N, C)).astype(dtype)
            want, dw, db = start.copy(), np.zeros(C, dtype), np.zeros(C, dtype)
            call("batchnorm_backward", want, dw, db, g, out, x, w, mean, rstd, N, C, accumulate, dtype=dtype)
            got, gw, gb = start.copy(), np.zeros(C, dtype), np.zeros(C, dtype)
            call("batchnorm_relu_backward_saved", got, gw, gb, g, x, w, b, mean, rstd, N, C, accumulate, dtype=dtype)
            np.testing.assert_array_equal(got, want)
            if w is not None:
                np.testing.assert_array_equal(gw, dw)
            np.testing.assert_array_equal(gb, db)
        over_dout = g.copy()
        call("batchnorm_relu_backward_saved", over_dout, None, None, over_dout, x, w, b, mean, rstd, N, C, 0,
             dtype=dtype)
        want = np.empty((N, C), dtype)
        call("batchnorm_backward", want, None, None, g, out, x, w, mean, rstd, N, C, 0, dtype=dtype)
        np.testing.assert_array_equal(over_dout, want)


@pytest.mark.parametrize("N,C", [(1, 1), (3, 17), (1000, 64), (37, 1030)])
def test_input_kept_in_bf16_centred_on_the_mean(N, C):
    """batchnorm_input_keep_bf16 stores bf16(inp - mean) (torch's rounding of the float32
    difference), batchnorm_input_again_bf16 gives those values + mean in float32; so the input comes
    back within 2^-8 (half a bf16 ulp) of its deviation from the mean, however far the mean is from
    zero (rounding inp itself would err by 2^-8 of inp: here 100x more)."""
    rng = np.random.default_rng(3)
    mean = (rng.standard_normal(C) * 100).astype(np.float32)
    x = (mean + rng.standard_normal((N, C))).astype(np.float32)
    x.flat[::11] = mean[np.arange(0, x.size, 11) % C]  # deviations of exactly 0
    kept, again = np.empty((N, C), np.uint16), np.empty((N, C), np.float32)
    P = ctypes.c_void_p
    keep, back = LIB.batchnorm_input_keep_bf16, LIB.batchnorm_input_again_bf16
    keep.restype = back.restype = None
    keep.argtypes = back.argtypes = [P, P, P, ctypes.c_int, ctypes.c_int]
    keep(kept.ctypes.data, x.ctypes.data, mean.ctypes.data, N, C)
    back(again.ctypes.data, kept.ctypes.data, mean.ctypes.data, N, C)
    want = torch.from_numpy(x - mean).to(torch.bfloat16)
    np.testing.assert_array_equal(kept, want.view(torch.int16).numpy().view(np.uint16))
    np.testing.assert_array_equal(again, want.float().numpy() + mean)
    deviation = np.abs(x.astype(np.float64) - mean)
    error = np.abs(again.astype(np.float64) - x)
    assert (error <= 2.0 ** -8 * deviation + np.spacing(np.abs(x))).all()
