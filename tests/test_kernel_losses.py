"""The objective's terms row by row: cross entropy, tanh-MSE background suppression and the
high-temperature KL refinement. Finite differences in float64, PyTorch parity in float32, and the
float32 build's accuracy (its e^x and tanh are fastmath.h's)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ckernels import call, numerical_grad
from test_gemm_bf16 import threads  # noqa: F401 (fixture: 1 and 2 threads)

# these kernels are built per instruction set (kernels/isa.h): every test runs on each
pytestmark = pytest.mark.usefixtures("isa")


def rows(name, *args, N, dtype=np.float64):
    out = np.empty(N, dtype)
    call(name, out, *args, dtype=dtype)
    return out


@pytest.mark.parametrize("N,C,per", [(1, 1, 1), (6, 5, 3), (4, 9, 1)])
def test_cross_entropy_matches_finite_differences(N, C, per):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, C)) * 3
    labels = rng.integers(0, C, N // per).astype(np.int32)

    def loss():
        return float(rows("cross_entropy_forward", x, labels, per, N, C, N=N).sum())

    dx = np.zeros_like(x)
    call("cross_entropy_backward", dx, x, labels, per, 1.0, N, C)
    # central differences of a sum of size ~30 with step 1e-6: rounding ~ 30 * 1e-16 / 1e-6 = 3e-9
    np.testing.assert_allclose(dx, numerical_grad(loss, x), rtol=1e-7, atol=2e-8)


@pytest.mark.parametrize("N,C", [(1, 1), (4, 3), (5, 7)])
def test_tanh_mse_matches_finite_differences(N, C):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((N, C)) * 2

    def loss():
        return float(rows("tanh_mse_forward", x, -1.0, N, C, N=N).sum())

    dx = np.zeros_like(x)
    call("tanh_mse_backward", dx, x, -1.0, 1.0, N, C)
    # central differences of a sum of size ~N*C*4 with step 1e-6: rounding ~ 1e-8
    np.testing.assert_allclose(dx, numerical_grad(loss, x), rtol=1e-7, atol=2e-8)


@pytest.mark.parametrize("N,C,T", [(1, 1, 1.0), (3, 4, 0.5), (5, 7, 64.0)])
def test_kl_matches_finite_differences(N, C, T):
    rng = np.random.default_rng(2)
    s, t = rng.standard_normal((N, C)) * 4, rng.standard_normal((N, C)) * 4

    def loss():
        return float(rows("kl_softmax_forward", s, t, T, N, C, N=N).sum())

    ds = np.zeros_like(s)
    call("kl_softmax_backward", ds, s, t, T, 1.0, N, C)
    # scale the FD step with T: the loss varies on the scale of T
    np.testing.assert_allclose(ds, numerical_grad(loss, s, eps=1e-6 * max(T, 1)), rtol=1e-6, atol=1e-10)


@pytest.mark.parametrize("N,C", [(1, 2), (37, 200), (130, 13)])
def test_losses_match_torch(N, C):
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((N, C)) * 5).astype(np.float32)
    y = (rng.standard_normal((N, C)) * 5).astype(np.float32)
    labels = rng.integers(0, C, N)
    scale = np.float32(0.7)

    tx = torch.tensor(x, requires_grad=True)
    ce = F.cross_entropy(tx, torch.tensor(labels), reduction="sum")
    ce.backward()
    got = rows("cross_entropy_forward", x, labels.astype(np.int32), 1, N, C, N=N, dtype=np.float32)
    dx = np.zeros_like(x)
    call("cross_entropy_backward", dx, x, labels.astype(np.int32), 1, scale, N, C, dtype=np.float32)
    # float32 logsumexp of C terms: relative error ~ 1e-6 of values up to ~20
    np.testing.assert_allclose(got.sum(), ce.item(), rtol=1e-5)
    np.testing.assert_allclose(dx, scale * tx.grad.numpy(), rtol=1e-5, atol=1e-6)

    tx = torch.tensor(x, requires_grad=True)
    mse = F.mse_loss(torch.tanh(tx), -torch.ones(N, C), reduction="sum")
    mse.backward()
    got = rows("tanh_mse_forward", x, -1.0, N, C, N=N, dtype=np.float32)
    dx = np.zeros_like(x)
    call("tanh_mse_backward", dx, x, -1.0, scale, N, C, dtype=np.float32)
    np.testing.assert_allclose(got.sum(), mse.item(), rtol=1e-5)
    np.testing.assert_allclose(dx, scale * tx.grad.numpy(), rtol=1e-5, atol=1e-6)

    for T in (1.0, 4.0, 64.0):
        tx, ty = torch.tensor(x, requires_grad=True), torch.tensor(y, requires_grad=True)
        kl = torch.nn.KLDivLoss(reduction="sum")(F.log_softmax(tx / T, -1), F.softmax(ty.detach() / T, -1))
        kl.backward()
        got = rows("kl_softmax_forward", x, y, T, N, C, N=N, dtype=np.float32)
        dx = np.zeros_like(x)
        call("kl_softmax_backward", dx, x, y, T, scale, N, C, dtype=np.float32)
        # at T = 64 the row KL is ~1e-3 of its terms (p·log p ~ 1e-2 each): compare with an absolute
        # tolerance of float32 rounding of those terms (C · 1e-2 · 6e-8 · a few)
        np.testing.assert_allclose(got.sum(), kl.item(), rtol=1e-4, atol=N * C * 1e-8)
        np.testing.assert_allclose(dx, scale * tx.grad.numpy(), rtol=1e-4, atol=1e-7)


def test_kl_is_stable_for_huge_logits():
    x = np.array([[1e4, -1e4, 0.0]], np.float32)
    y = np.array([[-1e4, 1e4, 0.0]], np.float32)
    got = rows("kl_softmax_forward", x, y, 1.0, 1, 3, N=1, dtype=np.float32)
    dx = np.zeros_like(x)
    call("kl_softmax_backward", dx, x, y, 1.0, 1.0, 1, 3, dtype=np.float32)
    assert np.isfinite(got).all() and np.isfinite(dx).all()
    np.testing.assert_allclose(got[0], 2e4, rtol=1e-6)  # p = e_1, log p_1 - log q_1 = 0 - (-2e4)


def test_float32_losses_are_accurate_over_a_dense_range(threads):  # noqa: F811 (the fixture)
    """The float32 build takes e^x and tanh from fastmath.h in vector form (no libm calls): tanh_mse's
    (tanh(x) - target)² is within what an absolute error of 1.2e-7 in tanh and two roundings allow,
    tails, zeros and tiny values included; cross entropy over wide logits, of rows as long as a
    vector and not (C 16 and 1000), within 2e-6 relatively; on one thread and split across two."""
    x = np.linspace(-10, 10, 200004).astype(np.float32)
    x = np.concatenate([x, np.float32([1e-30, -1e-30, 1e-6, 0.0, -0.0, 40.0, -40.0])]).reshape(-1, 7)
    loss = rows("tanh_mse_forward", x, 0.5, x.shape[0], 7, N=x.shape[0], dtype=np.float32)
    t = np.tanh(x.astype(np.float64))
    want = ((t - 0.5) ** 2).sum(1)
    bound = (2 * np.abs(t - 0.5) * 1.2e-7).sum(1) + 8 * np.spacing(want.astype(np.float32))
    assert (np.abs(loss - want) <= bound).all()
    rng = np.random.default_rng(5)
    for C in (16, 1000):
        logits = (rng.standard_normal((64, C)) * 30).astype(np.float32)
        labels = rng.integers(0, C, 64).astype(np.int32)
        got = rows("cross_entropy_forward", logits, labels, 1, 64, C, N=64, dtype=np.float32)
        l64 = logits.astype(np.float64)
        top = l64.max(1)
        want = top + np.log(np.exp(l64 - top[:, None]).sum(1)) - l64[np.arange(64), labels]
        np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-6)
