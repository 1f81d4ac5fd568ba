"""The machinery every network shares (config, parameter table, views, forward/backward,
errors), through the smallest kind: a linear classifier on the flattened image."""
import numpy as np
import pytest

from herbs import _C


def make(img_size=4, classes=3, seed=0):
    return _C.Net("linear", {"img_size": img_size, "num_classes": classes}, seed)


def test_tensor_table_and_views():
    net = make()
    assert net.kind == "linear" and net.image_shape == (3, 4, 4)
    table = {name: (kind, shape, offset, size) for name, kind, shape, offset, size in net.tensors()}
    assert table["fc.weight"][:2] == ("parameter", (3, 48)) and table["fc.bias"][:2] == ("parameter", (3,))
    assert all(offset % 16 == 0 for _, _, offset, _ in table.values())  # 64-byte aligned
    params = net.params
    w = params[table["fc.weight"][2]:][:144].reshape(3, 48)
    bound = 1 / np.sqrt(48)
    assert np.all(np.abs(w) <= bound) and w.std() > bound / 3  # uniform(-1/sqrt(fan_in), ...) init
    params[:] = 0.25  # writing through the view reaches the engine
    out = net.forward(np.ones((2, 3, 4, 4), np.float32))["logits"]
    np.testing.assert_allclose(out, 0.25 * 48 + 0.25)


def test_same_seed_same_parameters():
    np.testing.assert_array_equal(make(seed=5).params, make(seed=5).params)
    assert not np.array_equal(make(seed=5).params, make(seed=6).params)


def test_forward_backward_match_numpy():
    net = make(img_size=5, classes=4)
    table = {name: (offset, size, shape) for name, _, shape, offset, size in net.tensors()}
    w = net.params[table["fc.weight"][0]:][:75 * 4].reshape(4, 75)
    b = net.params[table["fc.bias"][0]:][:4]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 3, 5, 5), dtype=np.float32)
    logits = net.forward(x)["logits"]
    np.testing.assert_allclose(logits, x.reshape(3, -1) @ w.T + b, rtol=1e-5, atol=1e-5)

    g = rng.standard_normal((3, 4), dtype=np.float32)
    dx = net.backward({"logits": g}, input_grad=True)
    np.testing.assert_allclose(dx.reshape(3, -1), g @ w, rtol=1e-5, atol=1e-5)
    dw = net.grads[table["fc.weight"][0]:][:300].reshape(4, 75)
    np.testing.assert_allclose(dw, g.T @ x.reshape(3, -1), rtol=1e-5, atol=1e-5)
    net.forward(x)
    net.backward({"logits": g})  # gradients accumulate
    np.testing.assert_allclose(dw, 2 * g.T @ x.reshape(3, -1), rtol=1e-5, atol=1e-5)
    net.zero_grad()
    assert not net.grads.any()


@pytest.mark.parametrize("config,exc,words", [
    ({"img_size": 4, "num_clases": 3}, ValueError, "unknown config key 'num_clases'"),
    ({"img_size": 0}, ValueError, "'img_size' = 0 is outside"),
    ({"img_size": 2.5}, ValueError, "must be an integer"),
    ({"img_size": "big"}, ValueError, "must be one integer"),
    ({"img_size": object()}, TypeError, "img_size"),
])
def test_bad_config(config, exc, words):
    with pytest.raises(exc) as info:
        _C.Net("linear", config)
    assert words in str(info.value)


def test_unknown_kind():
    with pytest.raises(ValueError, match="unknown network kind 'lenet'") as info:
        _C.Net("lenet", {})
    assert "(known: linear, herbs, swin, resnet, patches, vit, efficientnet)" in str(info.value)  # every backbone is a kind


def test_every_backbone_is_a_net_kind():
    """The registry's backbones are kinds of their own ("patches" included): outputs layer1..4 are the
    taps, here Conv2d(3, C_i, p_i, stride p_i) as tokens, against NumPy."""
    grid, channels = (4, 2, 2, 1), (3, 5, 7, 2)
    net = _C.Net("patches", {"img_size": 8, "patch_grid": grid, "patch_channels": channels}, 1)
    assert net.kind == "patches" and net.image_shape == (3, 8, 8)
    table = {name: (offset, size, shape) for name, _, shape, offset, size in net.tensors()}
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8), dtype=np.float32)
    out = net.forward(x)
    assert sorted(out) == ["layer1", "layer2", "layer3", "layer4"]
    for i, (g, c) in enumerate(zip(grid, channels)):
        p = 8 // g
        offset, size, shape = table[f"tap{i + 1}.weight"]
        w = net.params[offset:offset + size].reshape(shape)
        offset, size, _ = table[f"tap{i + 1}.bias"]
        b = net.params[offset:offset + size]
        rows = x.reshape(2, 3, g, p, g, p).transpose(0, 2, 4, 1, 3, 5).reshape(2, g * g, 3 * p * p)
        np.testing.assert_allclose(out[f"layer{i + 1}"], rows @ w.reshape(c, -1).T + b, rtol=1e-5, atol=1e-5)


def test_bad_calls():
    net = make()
    with pytest.raises(RuntimeError, match="forward pass before"):
        net.backward({})
    with pytest.raises(TypeError, match="float32"):
        net.forward(np.zeros((1, 3, 4, 4), np.float64))
    with pytest.raises(ValueError, match=r"expected \(batch, 3, 4, 4\)"):
        net.forward(np.zeros((1, 3, 5, 4), np.float32))
    with pytest.raises(ValueError, match="contiguous"):
        net.forward(np.zeros((1, 3, 4, 8), np.float32)[..., ::2])
    net.forward(np.zeros((2, 3, 4, 4), np.float32))
    with pytest.raises(ValueError, match="not an output"):
        net.backward({"probs": np.zeros((2, 3), np.float32)})
    with pytest.raises(ValueError, match=r"expected a C-contiguous \(2, 3\)"):
        net.backward({"logits": np.zeros((3, 2), np.float32)})
    net.backward({"logits": np.zeros((2, 3), np.float32)})
    with pytest.raises(RuntimeError, match="one backward per forward"):
        net.backward({})
