"""A transformer backbone (Swin, ViT) of the engine against its PyTorch reference with the same
weights: the four taps, then the image gradient and every parameter gradient after backward from
random tap gradients (tests/test_swin.py, tests/test_vit.py)."""
import numpy as np
import pytest
import torch

TAPS = ["layer1", "layer2", "layer3", "layer4"]
# of each tensor's largest magnitude: taps are LayerNorm-scale activations passed through a few
# Linear layers, float32 sums of up to a few hundred terms in another order differ by ~1e-6 of the
# values' scale (observed at most 7e-7), so 3e-5 leaves room for other thread counts and GEMM
# blockings; gradients go back through every layer (LayerNorm, softmax, GELU) and sum over all
# tokens: observed at most 1.3e-6 of each tensor's own magnitude, 1e-4 bounds it with margin
TAP_TOL, GRAD_TOL = 3e-5, 1e-4


def images(config, batch, seed=1):
    rng = np.random.default_rng(seed)
    size = config["img_size"]
    return rng.standard_normal((batch, config.get("in_chans", 3), size, size)).astype(np.float32)


def assert_close(actual, expected, tol, what):
    """Every element within tol of the tensor's largest magnitude (float32 rounding scales with
    the values summed, not with each small result), and the norm-wise error below tol/10."""
    expected = np.asarray(expected, np.float64)
    scale = max(np.abs(expected).max(), 1e-30)
    err = np.abs(actual - expected).max() / scale
    normwise = np.linalg.norm(actual - expected) / max(np.linalg.norm(expected), 1e-30)
    assert err < tol and normwise < tol / 10, f"{what}: max error {err:.2e}, norm-wise {normwise:.2e} (tol {tol})"


def grads_by_name(net):
    return {name: net.grads[offset:offset + size].reshape(shape)
            for name, _, shape, offset, size in net.tensors()}


def check_parity(net, ref, x, train, taps=TAPS):
    """net's taps on images x against ref's, then backward from random gradients at `taps`: the
    image gradient and every parameter's (zero for those above the deepest tap with a gradient)."""
    ref.train(train)
    tx = torch.tensor(x, requires_grad=True)
    expected = ref(tx)
    out = net.forward(x, train=train)
    for name, e in zip(TAPS, expected):
        assert out[name].shape == tuple(e.shape)
        assert_close(out[name], e.detach().numpy(), TAP_TOL, name)

    rng = np.random.default_rng(2)
    grads = {name: rng.standard_normal(out[name].shape).astype(np.float32) for name in taps}
    loss = sum((e * torch.tensor(grads[name])).sum() for name, e in zip(TAPS, expected) if name in grads)
    loss.backward()
    dx = net.backward(grads, input_grad=True)
    assert_close(dx, tx.grad.numpy(), GRAD_TOL, "image gradient")
    named = dict(ref.named_parameters())
    for name, g in grads_by_name(net).items():
        expected_grad = named[name].grad
        if expected_grad is None:
            assert not g.any(), name
            continue
        assert_close(g, expected_grad.numpy(), GRAD_TOL, name)


def check_gradients_accumulate(net, x):
    """Two forward+backward rounds give twice the parameter gradients and the same image gradient;
    a second backward after one forward is refused."""
    out = net.forward(x)
    g = {name: np.ones_like(v) for name, v in out.items()}
    dx1 = net.backward(g, input_grad=True)
    once = net.grads.copy()
    net.forward(x)
    dx2 = net.backward(g, input_grad=True)
    np.testing.assert_allclose(net.grads, 2 * once, rtol=1e-5, atol=1e-6 * np.abs(once).max())
    np.testing.assert_array_equal(dx1, dx2)
    with pytest.raises(RuntimeError, match="one backward per forward"):
        net.backward(g)
