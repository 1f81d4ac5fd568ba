"""Token-axis kernels: Conv1d(S_in, S_out, 1) over tokens, the token mean, and the selector's
gather/scatter of rows. Finite differences in float64, PyTorch parity in float32; the token linear's
input gradient written (accumulate 0) or added (1)."""
import numpy as np
import pytest
import torch

from ckernels import call, grad_buffer, numerical_grad


def token_linear(x, w, b, accumulate_onto=None, dtype=np.float64):
    B, S_in, C = x.shape
    S_out = w.shape[0]
    out = np.zeros((B, S_out, C), dtype) if accumulate_onto is None else accumulate_onto.copy()
    call("token_linear_forward", out, x, w, b, B, S_in, S_out, C, int(accumulate_onto is not None), dtype=dtype)
    return out


@pytest.mark.parametrize("B,S_in,S_out,C", [(1, 1, 1, 1), (2, 5, 3, 7), (3, 4, 9, 2)])
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("accumulate", [0, 1])
def test_token_linear_backward_matches_finite_differences(B, S_in, S_out, C, with_bias, accumulate):
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((B, S_in, C)), rng.standard_normal((S_out, S_in))
    b = rng.standard_normal(S_out) if with_bias else None
    probe = rng.standard_normal((B, S_out, C))

    def loss():
        return float((token_linear(x, w, b) * probe).sum())

    dx, before = grad_buffer(x.shape, accumulate, rng)
    dw = np.zeros_like(w)
    db = np.zeros(S_out) if with_bias else None
    call("token_linear_backward", 0, dx, dw, db, probe, x, w, B, S_in, S_out, C, accumulate)
    for analytic, wrt in ((dx - before, x), (dw, w)) + (((db, b),) if with_bias else ()):
        np.testing.assert_allclose(analytic, numerical_grad(loss, wrt), rtol=1e-7, atol=1e-8)


def test_token_linear_accumulates_onto_out():
    rng = np.random.default_rng(1)
    x, w, b = rng.standard_normal((2, 3, 4)), rng.standard_normal((5, 3)), rng.standard_normal(5)
    base = rng.standard_normal((2, 5, 4))
    for bias in (b, None):
        np.testing.assert_allclose(token_linear(x, w, bias, accumulate_onto=base), base + token_linear(x, w, bias),
                                   rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("B,S_in,S_out,C", [(1, 7, 3, 1), (2, 49, 196, 33), (3, 131, 67, 96)])
@pytest.mark.parametrize("accumulate", [0, 1])
def test_token_linear_matches_torch_conv1d(B, S_in, S_out, C, accumulate):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((B, S_in, C), dtype=np.float32)
    w = rng.standard_normal((S_out, S_in), dtype=np.float32)
    b = rng.standard_normal(S_out, dtype=np.float32)
    g = rng.standard_normal((B, S_out, C), dtype=np.float32)
    out = token_linear(x, w, b, dtype=np.float32)
    dx, before = grad_buffer(x.shape, accumulate, rng, np.float32)
    dw, db = np.zeros_like(w), np.zeros_like(b)  # parameter gradients accumulate
    call("token_linear_backward", 0, dx, dw, db, g, x, w, B, S_in, S_out, C, accumulate, dtype=np.float32)

    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w[:, :, None], b))
    tout = torch.nn.functional.conv1d(tx, tw, tb)  # the release's Up_/Down_ layers: tokens are channels
    tout.backward(torch.tensor(g))
    # float32 sums of up to S_in (forward), S_out (dx) or B*C (dw) products of unit normals:
    # rounding ~ sqrt(terms) * 6e-8 * |terms| stays below 1e-4 relative to sums of size ~sqrt(terms)
    np.testing.assert_allclose(out, tout.detach().numpy(), rtol=1e-4, atol=2e-4)
    np.testing.assert_allclose(dx - before, tx.grad.numpy(), rtol=1e-4, atol=2e-4)
    np.testing.assert_allclose(dw, tw.grad.numpy()[:, :, 0], rtol=1e-4, atol=5e-4)
    np.testing.assert_allclose(db, tb.grad.numpy(), rtol=1e-4, atol=5e-4)


@pytest.mark.parametrize("B,S,C", [(1, 1, 1), (2, 7, 3), (3, 2, 11)])
def test_token_mean_backward_matches_finite_differences(B, S, C):
    rng = np.random.default_rng(3)
    x, probe = rng.standard_normal((B, S, C)), rng.standard_normal((B, C))

    def mean():
        out = np.empty((B, C))
        call("token_mean_forward", out, x, B, S, C)
        return out

    np.testing.assert_allclose(mean(), x.mean(1), rtol=1e-13)
    dx = np.zeros_like(x)
    call("token_mean_backward", dx, probe, B, S, C)
    np.testing.assert_allclose(dx, numerical_grad(lambda: float((mean() * probe).sum()), x), rtol=1e-7, atol=1e-9)


def test_token_mean_matches_torch():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 197, 200), dtype=np.float32)
    out = np.empty((3, 200), np.float32)
    call("token_mean_forward", out, x, 3, 197, 200, dtype=np.float32)
    # a float32 sum of 197 unit normals then a division: error ~ 197 * 6e-8 relative to the sum
    np.testing.assert_allclose(out, torch.tensor(x).mean(1).numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_gather_and_scatter_rows(dtype):
    rng = np.random.default_rng(5)
    B, S, C, n = 3, 11, 5, 4
    x = rng.standard_normal((B, S, C)).astype(dtype)
    index = np.stack([rng.permutation(S) for _ in range(B)]).astype(np.int32)  # [B, S]: a ranking per sample
    stride = 2 * n * C  # rows land in a wider buffer, as the selector's concatenation does
    out = np.full((B, stride), 7, dtype)
    call("gather_tokens", out, stride, x, index[:, 1:].copy(), S - 1, B, S, n, C, dtype=dtype)
    np.testing.assert_array_equal(out[:, :n * C].reshape(B, n, C), x[np.arange(B)[:, None], index[:, 1:1 + n]])
    assert np.all(out[:, n * C:] == 7)

    g = rng.standard_normal((B, stride)).astype(dtype)
    dx = np.ones_like(x)
    call("scatter_tokens_add", dx, g, stride, index[:, 1:].copy(), S - 1, B, S, n, C, dtype=dtype)
    want = np.ones_like(x)
    for b in range(B):
        for j in range(n):
            want[b, index[b, 1 + j]] += g[b, j * C:(j + 1) * C]
    np.testing.assert_array_equal(dx, want)
