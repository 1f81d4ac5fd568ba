"""The linear kernel: finite differences in float64 and PyTorch parity in float32."""
import numpy as np
import pytest
import torch

from ckernels import call, numerical_grad


@pytest.mark.parametrize("N,C,OC", [(1, 1, 1), (3, 5, 7), (17, 31, 2)])
def test_linear_backward_matches_finite_differences(N, C, OC):
    rng = np.random.default_rng(0)
    x, w, b = rng.standard_normal((N, C)), rng.standard_normal((OC, C)), rng.standard_normal(OC)
    probe = rng.standard_normal((N, OC))  # loss = sum(out * probe), so dout = probe

    def loss():
        out = np.empty((N, OC))
        call("linear_forward", out, x, w, b, N, C, OC)
        return float((out * probe).sum())

    dx, dw, db = np.full_like(x, np.nan), np.zeros_like(w), np.zeros_like(b)  # dx written, not read
    call("linear_backward", 0, dx, dw, db, probe, x, w, N, C, OC, 0)
    for analytic, wrt in ((dx, x), (dw, w), (db, b)):
        np.testing.assert_allclose(analytic, numerical_grad(loss, wrt), rtol=1e-7, atol=1e-8)


@pytest.mark.parametrize("N,C,OC", [(1, 3, 2), (65, 129, 31), (200, 96, 288)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_linear_matches_torch(N, C, OC, with_bias):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((N, C), dtype=np.float32)
    w = rng.standard_normal((OC, C), dtype=np.float32)
    b = rng.standard_normal(OC, dtype=np.float32) if with_bias else None
    dout = rng.standard_normal((N, OC), dtype=np.float32)

    out = np.empty((N, OC), np.float32)
    call("linear_forward", out, x, w, b, N, C, OC, dtype=np.float32)
    dx = np.full((N, C), 0.5, np.float32)  # gradients accumulate onto what is there
    dw, db = np.zeros_like(w), np.zeros(OC, np.float32)
    call("linear_backward", 0, dx, dw, db if with_bias else None, dout, x, w, N, C, OC, 1, dtype=np.float32)

    tx, tw = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True)
    tb = torch.tensor(b, requires_grad=True) if with_bias else None
    tout = torch.nn.functional.linear(tx, tw, tb)
    tout.backward(torch.tensor(dout))
    # float32 sums of C (or N) products: errors ~ sqrt(C) * eps * |terms|, far below 1e-4 here
    np.testing.assert_allclose(out, tout.detach().numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dx - 0.5, tx.grad.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dw, tw.grad.numpy(), rtol=1e-4, atol=2e-4)
    if with_bias:
        np.testing.assert_allclose(db, tb.grad.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("precision", [0, 1])  # herbs_precision: fp32, bf16
def test_backward_input_gradient_over_the_input(precision):
    """dinp may be inp (the weight gradient reads inp first): the same bits as into its own buffer."""
    rng = np.random.default_rng(3)
    N, C, OC = 301, 40, 24
    x, w, dy = (rng.standard_normal(s).astype(np.float32) for s in ((N, C), (OC, C), (N, OC)))
    want_dx, want_dw, want_db = np.empty((N, C), np.float32), np.zeros((OC, C), np.float32), np.zeros(OC, np.float32)
    call("linear_backward", precision, want_dx, want_dw, want_db, dy, x, w, N, C, OC, 0, dtype=np.float32)
    over, dw, db = x.copy(), np.zeros((OC, C), np.float32), np.zeros(OC, np.float32)
    call("linear_backward", precision, over, dw, db, dy, over, w, N, C, OC, 0, dtype=np.float32)
    np.testing.assert_array_equal(over, want_dx)
    np.testing.assert_array_equal(dw, want_dw)
    np.testing.assert_array_equal(db, want_db)
