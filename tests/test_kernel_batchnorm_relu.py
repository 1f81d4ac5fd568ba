"""BatchNorm followed by ReLU in one pass (channels last), train and eval mode: finite
differences in float64 and float32 parity with PyTorch's relu(batch_norm(x)). Eval mode's forward
is BatchNorm then the ReLU (the engine folds the pair into the conv before it; see
test_kernel_conv2d.py); its backward is the one-pass kernel."""
import numpy as np
import pytest
import torch

from ckernels import call, numerical_grad

# these kernels are built per instruction set (kernels/isa.h): every test runs on each
pytestmark = pytest.mark.usefixtures("isa")


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("N,C", [(7, 17), (12, 3), (5, 33)])
def test_backward_matches_finite_differences(train, N, C):
    rng = np.random.default_rng(0)
    x, w, b = rng.standard_normal((N, C)), rng.standard_normal(C), rng.standard_normal(C)
    rm, rv = rng.standard_normal(C), rng.uniform(0.5, 2, C)
    probe = rng.standard_normal((N, C))

    def forward():
        out, mean, rstd = np.empty_like(x), np.empty(C), np.empty(C)
        if train:
            call("batchnorm_relu_forward_train", out, mean, rstd, None, None, x, w, b, N, C, 1e-5, 0.1)
        else:
            call("batchnorm_forward_eval", out, x, rm, rv, w, b, N, C, 1e-5)  # then the ReLU (exact)
            np.maximum(out, 0, out=out)
        return out, mean, rstd

    out, mean, rstd = forward()
    assert (out == 0).any() and (out > 0).any()
    dx, dw, db = np.full_like(x, np.nan), np.zeros(C), np.zeros(C)  # dx written, not read
    if train:
        call("batchnorm_backward", dx, dw, db, probe, out, x, w, mean, rstd, N, C, 0)
    else:
        call("batchnorm_backward_eval", dx, dw, db, probe, out, x, rm, rv, w, N, C, 1e-5, 0)
    loss = lambda: float((forward()[0] * probe).sum())
    for analytic, wrt in ((dx, x), (dw, w), (db, b)):
        np.testing.assert_allclose(analytic, numerical_grad(loss, wrt), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("B,C,H,W", [(2, 3, 5, 7), (4, 64, 14, 14), (2, 1100, 3, 1)])
def test_matches_torch(train, B, C, H, W):
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((B, C, H, W)) * 3 + 1).astype(np.float32)
    g = rng.standard_normal((B, C, H, W)).astype(np.float32)
    bn = torch.nn.BatchNorm2d(C).train(train)
    with torch.no_grad():
        for p, v in ((bn.weight, rng.standard_normal(C)), (bn.bias, rng.standard_normal(C)),
                     (bn.running_mean, rng.standard_normal(C)), (bn.running_var, rng.uniform(0.5, 2, C))):
            p.copy_(torch.tensor(v.astype(np.float32)))
    w, b = bn.weight.detach().numpy().copy(), bn.bias.detach().numpy().copy()
    rm, rv = bn.running_mean.numpy().copy(), bn.running_var.numpy().copy()
    nhwc = lambda a: np.ascontiguousarray(a.transpose(0, 2, 3, 1).reshape(-1, C))
    N = B * H * W
    tx = torch.tensor(x, requires_grad=True)
    ty = torch.relu(bn(tx))
    ty.backward(torch.tensor(g))
    out, dx = np.empty((N, C), np.float32), np.full((N, C), 0.5, np.float32)  # the gradient adds onto dx
    dw, db = np.zeros(C, np.float32), np.zeros(C, np.float32)
    if train:
        mean, rstd = np.empty(C, np.float32), np.empty(C, np.float32)
        call("batchnorm_relu_forward_train", out, mean, rstd, rm, rv, nhwc(x), w, b, N, C, 1e-5, 0.1,
             dtype=np.float32)
        call("batchnorm_backward", dx, dw, db, nhwc(g), out, nhwc(x), w, mean, rstd, N, C, 1, dtype=np.float32)
    else:
        call("batchnorm_forward_eval", out, nhwc(x), rm, rv, w, b, N, C, 1e-5, dtype=np.float32)
        np.maximum(out, 0, out=out)
        call("batchnorm_backward_eval", dx, dw, db, nhwc(g), out, nhwc(x), rm, rv, w, N, C, 1e-5, 1,
             dtype=np.float32)
    dx -= 0.5
    # as for BatchNorm alone (test_kernel_batchnorm.py): float32 statistics over N <= 784 rows, sums
    # in double on our side; the ReLU adds no rounding, and no input lies within rounding of its kink
    np.testing.assert_allclose(out, nhwc(ty.detach().numpy()), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(rm, bn.running_mean.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rv, bn.running_var.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dx, nhwc(tx.grad.numpy()), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dw, bn.weight.grad.numpy(), rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(db, bn.bias.grad.numpy(), rtol=1e-4, atol=1e-3)
