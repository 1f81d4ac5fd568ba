"""Dropout with a counter-based mask, the GCN combiner's adaptive adjacency, and ReLU's in-place mask."""
import numpy as np
import pytest
import torch

from ckernels import call, numerical_grad


def test_dropout_mask_is_deterministic_and_scaled():
    n, p = 100_000, 0.1
    x = np.ones(n, np.float32)
    out = np.empty_like(x)
    call("dropout_forward", out, x, n, p, 7, 3, dtype=np.float32)
    kept = out != 0
    assert abs(kept.mean() - (1 - p)) < 0.005  # 100k Bernoulli draws: std of the mean ~ 1e-3
    np.testing.assert_allclose(out[kept], 1 / (1 - p), rtol=1e-6)
    again = np.empty_like(x)
    call("dropout_forward", again, x, n, p, 7, 3, dtype=np.float32)
    np.testing.assert_array_equal(out, again)  # same (seed, stream): same mask
    call("dropout_forward", again, x, n, p, 7, 4, dtype=np.float32)
    assert not np.array_equal(out, again)  # another stream: another mask

    g = np.random.default_rng(0).standard_normal(n).astype(np.float32)
    dx = np.zeros_like(x)
    call("dropout_backward", dx, g, n, p, 7, 3, dtype=np.float32)
    np.testing.assert_array_equal(dx, g * out)  # the same mask and scale


@pytest.mark.parametrize("p", [0.0, 1.0])
def test_dropout_edges(p):
    x = np.arange(1, 9, dtype=np.float64)
    out = np.empty_like(x)
    call("dropout_forward", out, x, 8, p, 1, 1)
    np.testing.assert_array_equal(out, x if p == 0 else 0 * x)


@pytest.mark.parametrize("B,J", [(1, 1), (2, 3), (3, 5)])
def test_adjacency_matches_finite_differences(B, J):
    rng = np.random.default_rng(1)
    q, k = rng.standard_normal((B, J)), rng.standard_normal((B, J))
    adj, alpha = rng.standard_normal((J, J)), np.array([0.7])
    probe = rng.standard_normal((B, J, J))

    def adjacency():
        A = np.empty((B, J, J))
        call("adjacency_forward", A, q, k, adj, alpha, B, J)
        return A

    np.testing.assert_allclose(adjacency(), adj + alpha * np.tanh(q[:, :, None] - k[:, None, :]), rtol=1e-14)
    grads = [np.zeros_like(a) for a in (q, k, adj, alpha)]
    call("adjacency_backward", *grads, probe, q, k, alpha, B, J)
    for analytic, wrt in zip(grads, (q, k, adj, alpha)):
        np.testing.assert_allclose(analytic, numerical_grad(lambda: float((adjacency() * probe).sum()), wrt),
                                   rtol=1e-7, atol=1e-9)


def test_adjacency_matches_torch():
    rng = np.random.default_rng(2)
    B, J = 4, 7
    q, k = (rng.standard_normal((B, J), dtype=np.float32) for _ in range(2))
    adj, alpha = rng.standard_normal((J, J), dtype=np.float32), np.array([0.3], np.float32)
    g = rng.standard_normal((B, J, J), dtype=np.float32)
    A = np.empty((B, J, J), np.float32)
    call("adjacency_forward", A, q, k, adj, alpha, B, J, dtype=np.float32)
    grads = [np.zeros_like(a) for a in (q, k, adj, alpha)]
    call("adjacency_backward", *grads, g, q, k, alpha, B, J, dtype=np.float32)

    tq, tk, tadj, talpha = (torch.tensor(a, requires_grad=True) for a in (q, k, adj, alpha))
    # the release: A1 = tanh(q1.unsqueeze(-1) - k1.unsqueeze(1)); A1 = adj1 + A1 * alpha1
    tA = tadj + torch.tanh(tq.unsqueeze(-1) - tk.unsqueeze(1)) * talpha
    tA.backward(torch.tensor(g))
    # elementwise float32 tanh and sums of at most B*J*J = 196 terms
    np.testing.assert_allclose(A, tA.detach().numpy(), rtol=1e-6, atol=1e-6)
    for mine, theirs in zip(grads, (tq, tk, tadj, talpha)):
        np.testing.assert_allclose(mine, theirs.grad.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_relu_backward_in_place_is_relu_backward_onto_zeros(dtype):
    rng = np.random.default_rng(3)
    out = np.maximum(rng.standard_normal(1001), 0).astype(dtype)  # a ReLU's output, zeros included
    g = rng.standard_normal(1001).astype(dtype)
    want = np.zeros_like(g)
    call("relu_backward", want, g, out, 1001, 1, dtype=dtype)
    call("relu_backward", g, g, out, 1001, 0, dtype=dtype)
    np.testing.assert_array_equal(g, want)
