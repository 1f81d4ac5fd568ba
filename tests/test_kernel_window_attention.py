"""Shifted-window attention (gather by index with the cyclic shift, relative-position bias, -100
mask, softmax, ·v, written back to the tokens): finite differences in float64, PyTorch parity in
float32 against the reference's roll / partition / reverse path; the input gradients written
(accumulate 0) or added (1)."""
import ctypes

import numpy as np
import pytest
import torch

from ckernels import LIB, call, grad_buffer, numerical_grad
from reference_swin import relative_position_index, shifted_window_attention


def work_floats(head_dim, window, heads, dtype, threads):
    fn = LIB.window_attention_work_f64 if dtype == np.float64 else LIB.window_attention_work
    fn.restype, fn.argtypes = ctypes.c_size_t, [ctypes.c_int] * 3
    return threads * fn(head_dim, window, heads)


def expand_bias(table, heads, window, dtype):
    N = window * window
    bias = np.empty((heads, N, N), dtype)
    call("relative_bias_forward", bias, table, heads, window, dtype=dtype)
    return bias


def attention(qkv, bias, H, W, heads, window, shift, threads=2, dtype=np.float64):
    B, L, C3 = qkv.shape
    C, N = C3 // 3, window * window
    out, lse = np.empty((B, L, C), dtype), np.empty((B, L // N, heads, N), dtype)
    work = np.empty(work_floats(C // heads, window, heads, dtype, threads), dtype)
    call("window_attention_forward", out, lse, work, qkv, bias, B, H, W, C, heads, window, shift, threads, dtype=dtype)
    return out, lse


def attention_backward(dout, qkv, bias, lse, H, W, heads, window, shift, threads=2, dtype=np.float64, accumulate=0,
                       rng=None):
    """dqkv and dbias, less what their buffers held before (random values when accumulating)"""
    B, L, C3 = qkv.shape
    C = C3 // 3
    rng = rng or np.random.default_rng(7)
    (dqkv, qkv_before), (dbias, bias_before) = (grad_buffer(a.shape, accumulate, rng, dtype) for a in (qkv, bias))
    work = np.empty(work_floats(C // heads, window, heads, dtype, threads), dtype)
    call("window_attention_backward", dqkv, dbias, work, dout, qkv, bias, lse, B, H, W, C, heads, window, shift,
         threads, accumulate, dtype=dtype)
    return dqkv - qkv_before, dbias - bias_before


def test_relative_bias_gathers_and_scatters_through_the_index():
    rng = np.random.default_rng(0)
    heads, window = 3, 4
    table = rng.standard_normal(((2 * window - 1) ** 2, heads))
    bias = expand_bias(table, heads, window, np.float64)
    index = relative_position_index(window).numpy()
    np.testing.assert_array_equal(bias, table[index].transpose(2, 0, 1))
    g = rng.standard_normal(bias.shape)
    dtable = np.zeros_like(table)
    call("relative_bias_backward", dtable, g, heads, window)
    expect = np.zeros_like(table)
    np.add.at(expect, index, g.transpose(1, 2, 0))
    np.testing.assert_allclose(dtable, expect, rtol=1e-12)


@pytest.mark.parametrize("B,H,W,heads,d,window,shift", [
    (1, 4, 4, 2, 2, 2, 1),   # four windows, every one touched by the shift
    (2, 6, 3, 1, 3, 3, 1),   # odd window, non-square map
    (1, 3, 3, 2, 2, 3, 0),   # one window, no shift
])
@pytest.mark.parametrize("accumulate", [0, 1])
def test_backward_matches_finite_differences(B, H, W, heads, d, window, shift, accumulate):
    rng = np.random.default_rng(1)
    C, N = heads * d, window * window
    qkv = rng.standard_normal((B, H * W, 3 * C))
    bias = rng.standard_normal((heads, N, N))
    probe = rng.standard_normal((B, H * W, C))

    def loss():
        return float((attention(qkv, bias, H, W, heads, window, shift)[0] * probe).sum())

    _, lse = attention(qkv, bias, H, W, heads, window, shift)
    dqkv, dbias = attention_backward(probe, qkv, bias, lse, H, W, heads, window, shift, accumulate=accumulate)
    np.testing.assert_allclose(dqkv, numerical_grad(loss, qkv), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(dbias, numerical_grad(loss, bias), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("B,H,W,heads,d,window,shift", [
    (2, 14, 14, 3, 32, 7, 3),   # Swin-T stage 1 shape (window 7, shifted)
    (1, 12, 8, 3, 5, 4, 2),     # odd head dim, non-square map
    (3, 5, 5, 2, 7, 5, 0),      # a stage whose map is one window
    (1, 24, 24, 2, 32, 12, 6),  # window 12 (384 px models)
])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("accumulate", [0, 1])
def test_matches_torch(B, H, W, heads, d, window, shift, threads, accumulate):
    rng = np.random.default_rng(2)
    C = heads * d
    qkv = rng.standard_normal((B, H * W, 3 * C)).astype(np.float32)
    table = (rng.standard_normal(((2 * window - 1) ** 2, heads)) * 0.5).astype(np.float32)
    g = rng.standard_normal((B, H * W, C)).astype(np.float32)
    tq, tt = torch.tensor(qkv, requires_grad=True), torch.tensor(table, requires_grad=True)
    ty = shifted_window_attention(tq, tt, H, W, heads, window, shift)
    ty.backward(torch.tensor(g))

    bias = expand_bias(table, heads, window, np.float32)
    out, lse = attention(qkv, bias, H, W, heads, window, shift, threads, np.float32)
    dqkv, dbias = attention_backward(g, qkv, bias, lse, H, W, heads, window, shift, threads, np.float32, accumulate)
    dtable = np.zeros_like(table)
    call("relative_bias_backward", dtable, dbias, heads, window, dtype=np.float32)
    # outputs are convex combinations of O(1) values: float32 rounding of d-term dot products and
    # an N-term softmax; the table gradient sums B·nW·N²/(2w-1)² logit gradients per entry
    np.testing.assert_allclose(out, ty.detach().numpy(), rtol=1e-4, atol=2e-5)
    np.testing.assert_allclose(dqkv, tq.grad.numpy(), rtol=1e-4, atol=5e-5)
    np.testing.assert_allclose(dtable, tt.grad.numpy(), rtol=1e-4, atol=2e-4)


def test_deterministic():
    rng = np.random.default_rng(3)
    B, H, W, heads, d, window, shift = 2, 8, 8, 2, 4, 4, 2
    C = heads * d
    qkv = rng.standard_normal((B, H * W, 3 * C)).astype(np.float32)
    bias = rng.standard_normal((heads, 16, 16)).astype(np.float32)
    g = rng.standard_normal((B, H * W, C)).astype(np.float32)
    runs = []
    for _ in range(2):
        out, lse = attention(qkv, bias, H, W, heads, window, shift, 2, np.float32)
        runs.append((out,) + attention_backward(g, qkv, bias, lse, H, W, heads, window, shift, 2, np.float32))
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)
