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


@pytest.mark.parametrize("heads,window", [(3, 4), (2, 7), (6, 12)])  # (6, 12): heads split among threads
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_relative_bias_gathers_and_scatters_through_the_index(heads, window, dtype):
    """The bias [heads, N, N] is the table gathered through the index, exactly; its backward adds
    the gradient of every pair to its table row (onto what the table gradient holds)."""
    rng = np.random.default_rng(window)
    table = rng.standard_normal(((2 * window - 1) ** 2, heads)).astype(dtype)
    bias = expand_bias(table, heads, window, dtype)
    index = relative_position_index(window).numpy()
    np.testing.assert_array_equal(bias, table[index].transpose(2, 0, 1))
    g = rng.standard_normal(bias.shape).astype(dtype)
    before = rng.standard_normal(table.shape).astype(dtype)
    dtable = before.copy()
    call("relative_bias_backward", dtable, g, heads, window, dtype=dtype)
    expect = np.zeros(table.shape)
    np.add.at(expect, index, g.transpose(1, 2, 0).astype(np.float64))
    tolerance = 1e-12 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(dtable, before + expect, rtol=tolerance, atol=tolerance * window ** 2)


@pytest.mark.parametrize("B,H,W,heads,d,window,shift", [
    (1, 4, 4, 2, 2, 2, 1),   # four windows, every one touched by the shift
    (2, 6, 3, 1, 3, 3, 1),   # odd window, non-square map
    (1, 3, 3, 2, 2, 3, 0),   # one window, no shift
])
@pytest.mark.parametrize("accumulate", [0, 1])
@pytest.mark.parametrize("saved_lse", [True, False], ids=["saved lse", "lse recomputed"])
def test_backward_matches_finite_differences(B, H, W, heads, d, window, shift, accumulate, saved_lse):
    rng = np.random.default_rng(1)
    C, N = heads * d, window * window
    qkv = rng.standard_normal((B, H * W, 3 * C))
    bias = rng.standard_normal((heads, N, N))
    probe = rng.standard_normal((B, H * W, C))

    def loss():
        return float((attention(qkv, bias, H, W, heads, window, shift)[0] * probe).sum())

    _, lse = attention(qkv, bias, H, W, heads, window, shift)
    dqkv, dbias = attention_backward(probe, qkv, bias, lse if saved_lse else None, H, W, heads, window, shift,
                                     accumulate=accumulate)
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


def attention_at(precision, qkv, bias, H, W, heads, window, shift, threads=2, out_bf16=False, keep_lse=True):
    """window_attention_forward_at (float32) with precision 0 (fp32) or 1 (bf16); with out_bf16 the
    output as bf16 bit patterns (uint16); without keep_lse, lse NULL (returned as None)"""
    B, L, C3 = qkv.shape
    C, N = C3 // 3, window * window
    out = np.empty((B, L, C), np.uint16 if out_bf16 else np.float32)
    lse = np.empty((B, L // N, heads, N), np.float32)
    work = np.empty(work_floats(C // heads, window, heads, np.float32, threads), np.float32)
    fn = LIB.window_attention_forward_at
    fn.restype, fn.argtypes = None, [ctypes.c_int] + [ctypes.c_void_p] * 6 + [ctypes.c_int] * 8
    fp32_out, bf16_out = (None, out.ctypes.data) if out_bf16 else (out.ctypes.data, None)
    fn(precision, fp32_out, bf16_out, lse.ctypes.data if keep_lse else None,
       *(a.ctypes.data for a in (work, qkv, bias)), B, H, W, C, heads, window, shift, threads)
    return out, lse if keep_lse else None


def bf16_attention_float64(qkv, bias, H, W, heads, window, shift):
    """The bf16 forward's products done exactly: q·scale (in float32), k and v rounded to bf16, the
    logits and softmax in float64, the probabilities rounded to bf16, p·v in float64. Also
    p·|v| (the scale of each output) and the probabilities' row sums."""
    from test_gemm_bf16 import bf16_round
    from reference_swin import shifted_window_mask

    B, L, C3 = qkv.shape
    C, N, d = C3 // 3, window * window, C3 // 3 // heads
    x = qkv.reshape(B, H, W, C3)
    if shift:
        x = np.roll(x, (-shift, -shift), axis=(1, 2))
    win = x.reshape(B, H // window, window, W // window, window, 3, heads, d).transpose(0, 1, 3, 5, 6, 2, 4, 7)
    win = win.reshape(B, -1, 3, heads, N, d)  # [B, nW, q|k|v, heads, N, d]
    q = bf16_round(win[:, :, 0] * (np.float32(1) / np.sqrt(np.float32(d)))).astype(np.float64)
    k, v = (bf16_round(win[:, :, i]).astype(np.float64) for i in (1, 2))
    logits = q @ k.swapaxes(-1, -2) + bias[None, None]
    if shift:
        logits += shifted_window_mask(H, W, window, shift).numpy()[None, :, None].astype(np.float64)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    pb = bf16_round(p.astype(np.float32)).astype(np.float64)

    def unpartition(o):  # [B, nW, heads, N, d] -> [B, L, C], rolled back
        o = o.reshape(B, H // window, W // window, heads, window, window, d).transpose(0, 1, 4, 2, 5, 3, 6)
        o = o.reshape(B, H, W, C)
        return (np.roll(o, (shift, shift), axis=(1, 2)) if shift else o).reshape(B, L, C)

    return unpartition(pb @ v), unpartition(pb @ np.abs(v))


@pytest.mark.parametrize("B,H,W,heads,d,window,shift", [
    (2, 14, 14, 3, 32, 7, 3),   # Swin-T stage 1 (window 7, shifted)
    (1, 12, 8, 3, 5, 4, 2),     # odd head dim, non-square map
    (3, 5, 5, 2, 7, 5, 0),      # a stage whose map is one window
    (1, 24, 24, 2, 32, 12, 6),  # window 12 (384 px models): N = 144, 160 keys in pairs
    (1, 8, 8, 1, 40, 8, 0),     # head dim over 32: two vectors of d pairs
])
@pytest.mark.parametrize("threads", [1, 2])
def test_bf16_forward_is_the_bf16_products(B, H, W, heads, d, window, shift, threads):
    """Precision bf16: q·scale, k, v and the probabilities rounded to bf16, products accumulated in
    fp32. Against the float64 product of the same roundings, the error is at most one bf16
    rounding of each probability that lands the other side of a rounding tie (2^-8 of p·|v|), plus
    fp32 accumulation; and it is visibly not the fp32 attention. fp32 (precision 0) is
    window_attention_forward itself, bit for bit. Where the CPU lacks AVX512-BF16 the bf16 request
    runs fp32 (tested there as that)."""
    import herbs

    rng = np.random.default_rng(4)
    C = heads * d
    qkv = rng.standard_normal((B, H * W, 3 * C)).astype(np.float32)
    bias = (rng.standard_normal((heads, window ** 2, window ** 2)) * 0.5).astype(np.float32)
    fp32, lse32 = attention(qkv, bias, H, W, heads, window, shift, threads, np.float32)
    at32, _ = attention_at(0, qkv, bias, H, W, heads, window, shift, threads)
    np.testing.assert_array_equal(at32, fp32)
    out, lse = attention_at(1, qkv, bias, H, W, heads, window, shift, threads)
    if herbs.cpu_info()["bf16_isa"] == "portable":
        np.testing.assert_array_equal(out, fp32)
        return
    want, scale = bf16_attention_float64(qkv.astype(np.float64), bias.astype(np.float64), H, W, heads, window, shift)
    err = np.abs(out - want)
    assert (err <= 2.0 ** -8 * scale + 1e-5 * scale + 1e-6).all(), f"max error {err.max():.3g}"
    assert np.abs(out - fp32).max() > 1e-3, "no bf16 rounding seen"
    np.testing.assert_allclose(lse, lse32, rtol=0, atol=0.05)  # logits of bf16 operands: close to fp32's


@pytest.mark.parametrize("B,H,W,heads,d,window,shift", [(2, 14, 14, 3, 32, 7, 3), (1, 12, 8, 3, 5, 4, 2),
                                                        (1, 8, 8, 1, 40, 8, 0)])
@pytest.mark.parametrize("precision", [0, 1])
def test_output_in_bf16_is_the_output_rounded(B, H, W, heads, d, window, shift, precision):
    """With out_bf16 the output is stored as bf16: the fp32 output rounded to nearest even, bit for
    bit (what a bf16 product's packing would make of it), and the log-sum-exp unchanged; without a
    log-sum-exp buffer (NULL) the output is the same."""
    from test_gemm_bf16 import bf16_bits

    rng = np.random.default_rng(5)
    C = heads * d
    qkv = rng.standard_normal((B, H * W, 3 * C)).astype(np.float32)
    bias = (rng.standard_normal((heads, window ** 2, window ** 2)) * 0.5).astype(np.float32)
    out, lse = attention_at(precision, qkv, bias, H, W, heads, window, shift)
    bits, lse_bits = attention_at(precision, qkv, bias, H, W, heads, window, shift, out_bf16=True)
    np.testing.assert_array_equal(bits, bf16_bits(out))
    np.testing.assert_array_equal(lse_bits, lse)
    no_lse, _ = attention_at(precision, qkv, bias, H, W, heads, window, shift, out_bf16=True, keep_lse=False)
    np.testing.assert_array_equal(no_lse, bits)


def test_backward_after_a_bf16_forward_recomputes_the_softmax():
    """A bf16 forward saves the log-sum-exp of its bf16 logits; the backward, which recomputes the
    logits in fp32, normalises them itself (lse NULL) and so gives the gradient of the fp32
    attention at the same inputs: what an fp32 forward's lse gives, to float32 rounding. With the
    bf16 forward's lse instead, the probabilities would not sum to 1 and the gradient would be off
    by the logits' bf16 error."""
    import herbs

    if herbs.cpu_info()["bf16_isa"] == "portable":
        pytest.skip("no AVX512-BF16 here: a bf16 forward is fp32 and saves the fp32 lse")
    rng = np.random.default_rng(5)
    B, H, W, heads, d, window, shift = 2, 14, 14, 3, 32, 7, 3
    qkv = rng.standard_normal((B, H * W, 3 * heads * d)).astype(np.float32)
    bias = (rng.standard_normal((heads, window ** 2, window ** 2)) * 0.5).astype(np.float32)
    g = rng.standard_normal((B, H * W, heads * d)).astype(np.float32)
    _, lse32 = attention_at(0, qkv, bias, H, W, heads, window, shift)
    _, lse16 = attention_at(1, qkv, bias, H, W, heads, window, shift)
    want = attention_backward(g, qkv, bias, lse32, H, W, heads, window, shift, dtype=np.float32)
    fresh = attention_backward(g, qkv, bias, None, H, W, heads, window, shift, dtype=np.float32)
    stale = attention_backward(g, qkv, bias, lse16, H, W, heads, window, shift, dtype=np.float32)
    for w, f, s in zip(want, fresh, stale):
        scale = np.abs(w).max()
        assert np.abs(f - w).max() <= 1e-5 * scale
        assert np.abs(s - w).max() > 100 * np.abs(f - w).max(), "the bf16 lse would have been as good"


def attention_backward_at(precision, dout, qkv, bias, H, W, heads, window, shift, threads=2, accumulate=0):
    """window_attention_backward_at (float32, lse NULL): dqkv and dbias, less what their buffers held
    before (random values when accumulating)"""
    B, L, C3 = qkv.shape
    C = C3 // 3
    rng = np.random.default_rng(8)
    (dqkv, qkv_before), (dbias, bias_before) = (grad_buffer(a.shape, accumulate, rng, np.float32) for a in (qkv, bias))
    work = np.empty(work_floats(C // heads, window, heads, np.float32, threads), np.float32)
    fn = LIB.window_attention_backward_at
    fn.restype, fn.argtypes = None, [ctypes.c_int] + [ctypes.c_void_p] * 7 + [ctypes.c_int] * 9
    fn(precision, *(a.ctypes.data for a in (dqkv, dbias, work, dout, qkv, bias)), None, B, H, W, C, heads, window,
       shift, threads, accumulate)
    return dqkv - qkv_before, dbias - bias_before


def bf16_backward_float64(dout, qkv, bias, H, W, heads, window, shift):
    """The bf16 backward's products done exactly, as autocast rounds them: q·scale, k, v and dout
    rounded to bf16; logits, softmax, dp = dout·vᵀ and ds = p·(dp - Σ p·dp) in float64; ds and p
    rounded to bf16 for dq = scale·ds·k, dk = dsᵀ·(q·scale), dv = pᵀ·dout. Returns (dqkv, dbias) and
    the magnitudes |A|·|B| of each gradient's product (dqkv's layout) for the error bound."""
    from test_gemm_bf16 import bf16_round
    from reference_swin import shifted_window_mask

    B, L, C3 = qkv.shape
    C, N, d = C3 // 3, window * window, C3 // 3 // heads
    scale = np.float32(1) / np.sqrt(np.float32(d))

    def partition(t, parts):  # [B, L, parts·C] -> [B, nW, parts, heads, N, d]
        x = t.reshape(B, H, W, parts * C)
        if shift:
            x = np.roll(x, (-shift, -shift), axis=(1, 2))
        x = x.reshape(B, H // window, window, W // window, window, parts, heads, d).transpose(0, 1, 3, 5, 6, 2, 4, 7)
        return x.reshape(B, -1, parts, heads, N, d)

    def unpartition(o):  # [B, nW, heads, N, d] -> [B, L, C], rolled back
        o = o.reshape(B, H // window, W // window, heads, window, window, d).transpose(0, 1, 4, 2, 5, 3, 6)
        o = o.reshape(B, H, W, C)
        return (np.roll(o, (shift, shift), axis=(1, 2)) if shift else o).reshape(B, L, C)

    win, g = partition(qkv, 3), partition(dout, 1)[:, :, 0]
    r = lambda t: bf16_round(t.astype(np.float32)).astype(np.float64)  # noqa: E731
    q, k, v, dy = r(win[:, :, 0] * scale), r(win[:, :, 1]), r(win[:, :, 2]), r(g)
    logits = q @ k.swapaxes(-1, -2) + bias[None, None]
    if shift:
        logits += shifted_window_mask(H, W, window, shift).numpy()[None, :, None].astype(np.float64)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    dp = dy @ v.swapaxes(-1, -2)
    ds = p * (dp - (p * dp).sum(-1, keepdims=True))
    dsb, pb = r(ds), r(p)
    grads = (scale * dsb @ k, dsb.swapaxes(-1, -2) @ q, pb.swapaxes(-1, -2) @ dy)
    sizes = (scale * np.abs(dsb) @ np.abs(k), np.abs(dsb).swapaxes(-1, -2) @ np.abs(q),
             np.abs(pb).swapaxes(-1, -2) @ np.abs(dy))
    join = lambda parts: np.concatenate([unpartition(t) for t in parts], axis=-1)  # noqa: E731
    return join(grads), ds.sum(axis=(0, 1)), join(sizes)


@pytest.mark.parametrize("B,H,W,heads,d,window,shift", [
    (2, 14, 14, 3, 32, 7, 3),   # Swin-T stage 1 (window 7, shifted)
    (1, 12, 8, 3, 5, 4, 2),     # odd head dim, non-square map
    (3, 5, 5, 2, 7, 5, 0),      # a stage whose map is one window
    (1, 24, 24, 2, 32, 12, 6),  # window 12: N = 144
    (1, 6, 6, 1, 40, 3, 1),     # head dim over 32, N = 9 (fewer keys than a vector's pairs)
])
@pytest.mark.parametrize("accumulate", [0, 1])
def test_bf16_backward_is_the_bf16_products(B, H, W, heads, d, window, shift, accumulate):
    """Precision bf16: the five products with bf16 operands as autocast rounds them, the softmax and
    its gradient in fp32. Against the float64 products of the same roundings, each gradient errs by
    at most the bf16 rounding of an element of p or ds that lands the other side of a rounding tie
    (2^-8 of |A|·|B|) plus fp32 accumulation; the bias gradient (fp32 throughout) to fp32 rounding;
    and the result is visibly not the fp32 backward's. Where the CPU lacks AVX512-BF16 the bf16
    request runs fp32, bit for bit."""
    import herbs

    rng = np.random.default_rng(9)
    C = heads * d
    qkv = rng.standard_normal((B, H * W, 3 * C)).astype(np.float32)
    bias = (rng.standard_normal((heads, window ** 2, window ** 2)) * 0.5).astype(np.float32)
    dout = rng.standard_normal((B, H * W, C)).astype(np.float32)
    fp32 = attention_backward_at(0, dout, qkv, bias, H, W, heads, window, shift, accumulate=accumulate)
    got = attention_backward_at(1, dout, qkv, bias, H, W, heads, window, shift, accumulate=accumulate)
    if herbs.cpu_info()["bf16_isa"] == "portable":
        for a, b in zip(got, fp32):
            np.testing.assert_array_equal(a, b)
        return
    want, dbias, size = bf16_backward_float64(dout.astype(np.float64), qkv.astype(np.float64),
                                              bias.astype(np.float64), H, W, heads, window, shift)
    err = np.abs(got[0] - want)
    bound = 2.0 ** -8 * size + 1e-5 * size.max() + 1e-6
    assert (err <= bound).all(), f"max error {err.max():.3g} (bound there {bound.flat[np.argmax(err - bound)]:.3g})"
    np.testing.assert_allclose(got[1], dbias, rtol=0, atol=1e-4 * np.abs(dbias).max())
    assert np.abs(got[0] - fp32[0]).max() > 1e-3 * np.abs(fp32[0]).max(), "no bf16 rounding seen"
