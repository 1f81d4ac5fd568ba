"""Squeeze-and-excitation (torchvision's SqueezeExcitation with SiLU, as EfficientNet builds it):
every gradient of the backward against finite differences in float64, the float32 forward and
backward against PyTorch on odd shapes (one position, one squeeze channel, primes), the
accumulate rule, and the forward in place."""
import numpy as np
import pytest
import torch

from ckernels import call, grad_buffer, numerical_grad

# these kernels are built per instruction set (kernels/isa.h): every test runs on each
pytestmark = pytest.mark.usefixtures("isa")


class Params:
    def __init__(self, C, S, rng, dtype=np.float64):
        self.w1 = rng.standard_normal((S, C)).astype(dtype)
        self.b1 = rng.standard_normal(S).astype(dtype)
        self.w2 = rng.standard_normal((C, S)).astype(dtype)
        self.b2 = rng.standard_normal(C).astype(dtype)


def forward(x, p, dtype=np.float64):
    """x [B, P, C] -> out and the saved (pooled, hidden, act, gate)."""
    B, P, C = x.shape
    S = p.b1.size
    out = np.empty_like(x)
    saved = (np.empty((B, C), dtype), np.empty((B, S), dtype), np.empty((B, S), dtype), np.empty((B, C), dtype))
    call("squeeze_excite_forward", out, *saved, x, p.w1, p.b1, p.w2, p.b2, B, P, C, S, dtype=dtype)
    return out, saved


def backward(dx, grads, dout, x, p, saved, accumulate, dtype=np.float64):
    B, P, C = x.shape
    S = p.b1.size
    scratch = np.full(B * (2 * C + S), np.nan, dtype)
    call("squeeze_excite_backward", dx, *grads, dout, x, *saved, p.w1, p.w2, scratch, B, P, C, S, accumulate,
         dtype=dtype)


def torch_se(x, p):
    """The reference on [B, P, C] as torchvision computes it on [B, C, H, W]."""
    t = {k: torch.tensor(getattr(p, k), dtype=torch.float64, requires_grad=True) for k in ("w1", "b1", "w2", "b2")}
    tx = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    nchw = tx.permute(0, 2, 1).unsqueeze(-1)  # [B, C, P, 1]
    s = torch.nn.functional.adaptive_avg_pool2d(nchw, 1)
    s = torch.nn.functional.conv2d(s, t["w1"][:, :, None, None], t["b1"])
    s = torch.nn.functional.conv2d(torch.nn.functional.silu(s), t["w2"][:, :, None, None], t["b2"])
    out = (torch.sigmoid(s) * nchw).squeeze(-1).permute(0, 2, 1)
    return out, tx, t


@pytest.mark.parametrize("B,P,C,S", [(2, 5, 7, 3), (1, 1, 4, 1), (3, 6, 2, 2)])
def test_backward_matches_finite_differences(B, P, C, S):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((B, P, C))
    p = Params(C, S, rng)
    out, saved = forward(x, p)
    probe = rng.standard_normal(out.shape)
    dx = np.full_like(x, np.nan)
    grads = [np.zeros_like(a) for a in (p.w1, p.b1, p.w2, p.b2)]
    backward(dx, grads, probe, x, p, saved, 0)

    def loss():
        return float((forward(x, p)[0] * probe).sum())

    for got, arr in zip([dx] + grads, [x, p.w1, p.b1, p.w2, p.b2]):
        np.testing.assert_allclose(got, numerical_grad(loss, arr), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("B,P,C,S", [(2, 49, 17, 5), (1, 1, 3, 1), (3, 31, 64, 16), (2, 9, 130, 37)])
def test_float32_matches_torch(B, P, C, S):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((B, P, C)).astype(np.float32)
    p = Params(C, S, rng, np.float32)
    p.w1 /= np.sqrt(C)  # keep the gate's logits O(1), as trained weights do
    p.w2 /= np.sqrt(S)
    out, saved = forward(x, p, np.float32)
    want, tx, t = torch_se(x.astype(np.float64), p)
    np.testing.assert_allclose(out, want.detach().numpy(), rtol=1e-5, atol=1e-5)
    probe = rng.standard_normal(x.shape).astype(np.float32)
    (want * torch.tensor(probe, dtype=torch.float64)).sum().backward()
    dx = np.empty_like(x)
    grads = [np.zeros_like(a) for a in (p.w1, p.b1, p.w2, p.b2)]
    backward(dx, grads, probe, x, p, saved, 0, np.float32)
    # sums over B·P terms of O(1) products: float32 rounding grows with their count
    atol = 2e-6 * np.sqrt(B * P * C)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-4, atol=atol)
    for got, name in zip(grads, ("w1", "b1", "w2", "b2")):
        np.testing.assert_allclose(got, t[name].grad.numpy(), rtol=1e-4, atol=atol, err_msg=name)


@pytest.mark.parametrize("accumulate", [0, 1])
def test_input_gradient_writes_or_adds_parameter_gradients_add(accumulate):
    rng = np.random.default_rng(2)
    B, P, C, S = 2, 7, 6, 2
    x = rng.standard_normal((B, P, C))
    p = Params(C, S, rng)
    out, saved = forward(x, p)
    probe = rng.standard_normal(x.shape)
    want_dx = np.zeros_like(x)
    want = [np.zeros_like(a) for a in (p.w1, p.b1, p.w2, p.b2)]
    backward(want_dx, want, probe, x, p, saved, 1)
    dx, before = grad_buffer(x.shape, accumulate, rng)
    base = [rng.standard_normal(a.shape) for a in want]
    grads = [b.copy() for b in base]
    backward(dx, grads, probe, x, p, saved, accumulate)
    np.testing.assert_allclose(dx, before + want_dx, rtol=1e-13, atol=1e-13)
    for g, b, w in zip(grads, base, want):
        np.testing.assert_allclose(g, b + w, rtol=1e-13, atol=1e-13)
    in_place = x.copy()
    call("squeeze_excite_forward", in_place, *[np.empty_like(a) for a in saved], in_place, p.w1, p.b1, p.w2, p.b2,
         B, P, C, S)
    np.testing.assert_array_equal(in_place, out)  # out may alias inp
