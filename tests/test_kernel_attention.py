"""Global multi-head attention (ViT's: every token attends to all S tokens of its sample, no bias,
no mask), the window attention kernel on one window of the whole sequence: finite differences in
float64, PyTorch's scaled_dot_product_attention in float32 (the ViT sizes: 1 + 14² and 1 + 28²
tokens of 64 channels per head), the input gradient written (accumulate 0) or added (1), and the
bf16 forward."""
import ctypes

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ckernels import LIB, call, grad_buffer, numerical_grad


def work_floats(head_dim, tokens, heads, dtype, threads):
    fn = LIB.attention_work_f64 if dtype == np.float64 else LIB.attention_work
    fn.restype, fn.argtypes = ctypes.c_size_t, [ctypes.c_int] * 3
    return threads * fn(head_dim, tokens, heads)


def attention(qkv, heads, threads=2, dtype=np.float64):
    B, S, C3 = qkv.shape
    C = C3 // 3
    out, lse = np.empty((B, S, C), dtype), np.empty((B, heads, S), dtype)
    work = np.empty(work_floats(C // heads, S, heads, dtype, threads), dtype)
    call("attention_forward", out, lse, work, qkv, B, S, C, heads, threads, dtype=dtype)
    return out, lse


def attention_backward(dout, qkv, lse, heads, threads=2, dtype=np.float64, accumulate=0):
    """dqkv, less what its buffer held before (random values when accumulating)"""
    B, S, C3 = qkv.shape
    C = C3 // 3
    dqkv, before = grad_buffer(qkv.shape, accumulate, np.random.default_rng(7), dtype)
    work = np.empty(work_floats(C // heads, S, heads, dtype, threads), dtype)
    call("attention_backward", dqkv, work, dout, qkv, lse, B, S, C, heads, threads, accumulate, dtype=dtype)
    return dqkv - before


def torch_attention(qkv, heads):
    """PyTorch's: timm's Attention between its qkv and proj layers."""
    B, S, C3 = qkv.shape
    C = C3 // 3
    q, k, v = qkv.reshape(B, S, 3, heads, C // heads).permute(2, 0, 3, 1, 4).unbind(0)
    return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, S, C)


@pytest.mark.parametrize("B,S,heads,d", [(1, 1, 1, 2), (2, 7, 2, 3), (1, 17, 3, 5)])
@pytest.mark.parametrize("accumulate", [0, 1])
@pytest.mark.parametrize("saved_lse", [True, False], ids=["saved lse", "lse recomputed"])
def test_backward_matches_finite_differences(B, S, heads, d, accumulate, saved_lse):
    rng = np.random.default_rng(1)
    qkv = rng.standard_normal((B, S, 3 * heads * d))
    probe = rng.standard_normal((B, S, heads * d))

    def loss():
        return float((attention(qkv, heads)[0] * probe).sum())

    _, lse = attention(qkv, heads)
    dqkv = attention_backward(probe, qkv, lse if saved_lse else None, heads, accumulate=accumulate)
    np.testing.assert_allclose(dqkv, numerical_grad(loss, qkv), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("B,S,heads,d", [
    (2, 197, 2, 64),  # ViT-B/16 at 224 px (two of its twelve heads)
    (1, 785, 1, 64),  # at 448 px, the release's size
    (3, 50, 3, 24),   # a small config: S and d off the vector length
])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("accumulate", [0, 1])
def test_matches_torch(B, S, heads, d, threads, accumulate):
    rng = np.random.default_rng(2)
    qkv = rng.standard_normal((B, S, 3 * heads * d)).astype(np.float32)
    g = rng.standard_normal((B, S, heads * d)).astype(np.float32)
    tq = torch.tensor(qkv, requires_grad=True)
    ty = torch_attention(tq, heads)
    ty.backward(torch.tensor(g))
    out, lse = attention(qkv, heads, threads, np.float32)
    dqkv = attention_backward(g, qkv, lse, heads, threads, np.float32, accumulate)
    # outputs are convex combinations of O(1) values: float32 rounding of d-term dot products and
    # an S-term softmax; the input gradient sums S terms per element
    np.testing.assert_allclose(out, ty.detach().numpy(), rtol=1e-4, atol=2e-5)
    np.testing.assert_allclose(dqkv, tq.grad.numpy(), rtol=1e-4, atol=1e-4)


def test_deterministic():
    rng = np.random.default_rng(3)
    qkv = rng.standard_normal((2, 40, 3 * 16)).astype(np.float32)
    g = rng.standard_normal((2, 40, 16)).astype(np.float32)
    runs = []
    for _ in range(2):
        out, lse = attention(qkv, 2, 2, np.float32)
        runs.append((out, attention_backward(g, qkv, lse, 2, 2, np.float32)))
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)


def attention_at(qkv, heads, out_bf16=False):
    """attention_forward_at with precision 1, the output fp32 or (out_bf16) bf16 bit patterns."""
    B, S, C3 = qkv.shape
    d = C3 // 3 // heads
    out = np.empty((B, S, heads * d), np.uint16 if out_bf16 else np.float32)
    lse = np.empty((B, heads, S), np.float32)
    work = np.empty(work_floats(d, S, heads, np.float32, 2), np.float32)
    fn = LIB.attention_forward_at
    fn.restype = None
    fn.argtypes = [ctypes.c_int] + [ctypes.c_void_p] * 5 + [ctypes.c_int] * 5
    fp32_out, bf16_out = (None, out.ctypes.data) if out_bf16 else (out.ctypes.data, None)
    fn(1, fp32_out, bf16_out, lse.ctypes.data, work.ctypes.data, qkv.ctypes.data, B, S, heads * d, heads, 2)
    return out, lse


def test_bf16_forward_is_close_to_fp32():
    """attention_forward_at with precision 1 (bf16 products where the CPU has AVX512-BF16, fp32
    elsewhere): within bf16 rounding (8 bits of mantissa) of the fp32 result; its output stored in
    bf16 is that result rounded, bit for bit."""
    from test_gemm_bf16 import bf16_bits

    rng = np.random.default_rng(4)
    B, S, heads, d = 2, 65, 2, 32
    qkv = rng.standard_normal((B, S, 3 * heads * d)).astype(np.float32)
    want, _ = attention(qkv, heads, 2, np.float32)
    out, lse = attention_at(qkv, heads)
    np.testing.assert_allclose(out, want, rtol=0, atol=3e-2)
    bits, lse_bits = attention_at(qkv, heads, out_bf16=True)
    np.testing.assert_array_equal(bits, bf16_bits(out))
    np.testing.assert_array_equal(lse_bits, lse)


def test_bf16_backward_is_close_to_fp32():
    """attention_backward_at with precision 1 (bf16 products where the CPU has AVX512-BF16, fp32
    elsewhere, bit for bit): within bf16 rounding of the fp32 gradient, and not equal to it. (The
    window kernel's test checks the same code against the float64 products of the same roundings.)"""
    import herbs

    rng = np.random.default_rng(6)
    B, S, heads, d = 2, 65, 2, 32
    qkv = rng.standard_normal((B, S, 3 * heads * d)).astype(np.float32)
    dout = rng.standard_normal((B, S, heads * d)).astype(np.float32)
    want = attention_backward(dout, qkv, None, heads, 2, np.float32)
    got = np.zeros_like(qkv)
    work = np.empty(work_floats(d, S, heads, np.float32, 2), np.float32)
    fn = LIB.attention_backward_at
    fn.restype = None
    fn.argtypes = [ctypes.c_int] + [ctypes.c_void_p] * 5 + [ctypes.c_int] * 6
    fn(1, got.ctypes.data, work.ctypes.data, dout.ctypes.data, qkv.ctypes.data, None, B, S, heads * d, heads, 2, 0)
    if herbs.cpu_info()["bf16_isa"] == "portable":
        np.testing.assert_array_equal(got, want)
        return
    scale = np.abs(want).max()
    assert np.abs(got - want).max() <= 3e-2 * scale
    assert np.abs(got - want).max() > 1e-4 * scale, "no bf16 rounding seen"
