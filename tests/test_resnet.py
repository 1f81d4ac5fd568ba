"""herbs' ResNet backbone against a torch.nn ResNet with torchvision's names (reference_resnet.py):
same weights loaded by name, then taps, running statistics, num_batches_tracked, every parameter
gradient and the image gradient, in train and eval mode, on a small odd-sized config and on a real
ResNet-50 at 64 px."""
import numpy as np
import pytest
import torch

from herbs import _C
from reference_resnet import ResNet, randomize


def make_pair(depths, width, img_size, seed=0):
    torch.manual_seed(seed)
    ref = randomize(ResNet(depths, width, num_classes=10), seed)
    net = _C.Net("resnet", {"img_size": img_size, "depths": list(depths), "width": width}, seed)
    load_state_dict(net, ref.state_dict())
    return net, ref


def tensor_views(net):
    """name -> (kind, NumPy view of the value, view of the gradient or None)."""
    views = {}
    for name, kind, shape, offset, size in net.tensors():
        block = net.params if kind == "parameter" else net.buffers
        grad = net.grads[offset:offset + size].reshape(shape) if kind == "parameter" else None
        views[name] = (kind, block[offset:offset + size].reshape(shape), grad)
    return views


def load_state_dict(net, state):
    for name, (kind, value, _) in tensor_views(net).items():
        value[...] = state[name].numpy()


def nhwc_tokens(t):
    """[B, C, H, W] -> [B, H·W, C], herbs' tap layout."""
    return t.permute(0, 2, 3, 1).reshape(t.shape[0], -1, t.shape[1])


def rel_err(a, b):
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def check_close(name, got, want, rel, elem):
    """A relative-norm bound for the tensor as a whole, and an elementwise bound scaled by the
    tensor's largest magnitude (so near-zero entries are not judged relatively)."""
    want = np.asarray(want, np.float64)
    assert rel_err(got, want) < rel, f"{name}: relative error {rel_err(got, want):.2e} >= {rel}"
    np.testing.assert_allclose(got, want, rtol=elem, atol=elem * np.abs(want).max(), err_msg=name)


def run_pair(net, ref, batch, img_size, train, tap_grads=(0, 1, 2, 3), seed=1):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, 3, img_size, img_size)).astype(np.float32)
    ref.train(train)
    tx = torch.tensor(x, requires_grad=True)
    ttaps = ref(tx)
    out = net.forward(x, train=train)
    grads = {}
    loss = 0
    for i in tap_grads:
        g = rng.standard_normal(out[f"layer{i + 1}"].shape).astype(np.float32)
        grads[f"layer{i + 1}"] = g
        loss = loss + (nhwc_tokens(ttaps[i]) * torch.tensor(g)).sum()
    loss.backward()
    dx = net.backward(grads, input_grad=True)
    return out, ttaps, dx, tx.grad.numpy()


# float32 through a deep net: both sides round ~1e-7 per operation, but in different orders
# (oneDNN's convolutions block their sums differently), and train-mode BN divides by batch
# standard deviations, which amplifies differences in late layers. Measured relative-norm errors
# are ~1e-6 (small net) and ~1e-5 (ResNet-50); the bounds leave a 10-50x margin.
SMALL = dict(depths=(1, 2, 1, 2), width=8, img_size=45, batch=3)


@pytest.mark.parametrize("train", [True, False])
def test_small_resnet_matches_torch(train):
    net, ref = make_pair(SMALL["depths"], SMALL["width"], SMALL["img_size"])
    out, ttaps, dx, tdx = run_pair(net, ref, SMALL["batch"], SMALL["img_size"], train)
    compare(net, ref, out, ttaps, dx, tdx, rel=1e-4, elem=1e-4, grad_rel=2e-4, grad_elem=5e-4)


def compare(net, ref, out, ttaps, dx, tdx, rel, elem, grad_rel, grad_elem, tap_grads=(0, 1, 2, 3)):
    for i in range(4):
        check_close(f"layer{i + 1}", out[f"layer{i + 1}"], nhwc_tokens(ttaps[i]).detach().numpy(), rel, elem)
    state = ref.state_dict()
    views = tensor_views(net)
    for name, (kind, value, grad) in views.items():
        if kind == "buffer_int64":
            assert value == state[name].item(), name
        elif kind == "buffer":
            check_close(name, value, state[name].numpy(), rel, elem)
    params = dict(ref.named_parameters())
    for name, (kind, value, grad) in views.items():
        if kind != "parameter":
            continue
        want = params[name].grad
        if want is None:  # above the highest tap with a gradient: nothing flows there
            assert not grad.any(), name
            continue
        check_close(name + ".grad", grad, want.numpy(), grad_rel, grad_elem)
    assert set(params) - set(views) == {"fc.weight", "fc.bias"}
    check_close("image grad", dx, tdx, grad_rel, grad_elem)


def test_small_resnet_subset_of_tap_gradients():
    net, ref = make_pair(SMALL["depths"], SMALL["width"], SMALL["img_size"])
    out, ttaps, dx, tdx = run_pair(net, ref, 2, SMALL["img_size"], True, tap_grads=(0, 2))
    compare(net, ref, out, ttaps, dx, tdx, rel=1e-4, elem=1e-4, grad_rel=2e-4, grad_elem=5e-4)
    assert not tensor_views(net)["layer4.1.conv3.weight"][2].any()


def test_train_step_updates_running_stats_twice():
    net, ref = make_pair((1, 1, 1, 1), 4, 33)
    rng = np.random.default_rng(3)
    for _ in range(2):
        x = rng.standard_normal((2, 3, 33, 33)).astype(np.float32)
        net.forward(x, train=True)
        ref.train()(torch.tensor(x))
    net.forward(x, train=False)  # eval never moves them
    views, state = tensor_views(net), ref.state_dict()
    for name, (kind, value, _) in views.items():
        if kind.startswith("buffer"):
            np.testing.assert_allclose(value, state[name].numpy(), rtol=1e-5, atol=1e-6, err_msg=name)


def torch_pass(model, x, grads, train, dtype):
    """taps [B, S, C], parameter gradients, image gradient of `model` in `dtype`."""
    model = model.to(dtype).train(train)
    tx = torch.tensor(x, dtype=dtype, requires_grad=True)
    taps = model(tx)
    loss = sum((nhwc_tokens(taps[i]) * torch.tensor(g, dtype=dtype)).sum()
               for i, g in enumerate(grads))
    loss.backward()
    return ([nhwc_tokens(t).detach().double().numpy() for t in taps],
            {k: p.grad.double().numpy() for k, p in model.named_parameters() if p.grad is not None},
            tx.grad.double().numpy())


@pytest.mark.parametrize("train", [True, False])
def test_resnet50_as_accurate_as_torch_float32(train):
    """ResNet-50 at 64 px, batch 2. Here float32 parity cannot be tight: a ReLU input within
    rounding of 0 flips its mask on one side and not the other (it happens a few times among
    ~10^5 activations), and train-mode BN backward over N = 8 values per channel (layer4 is
    2x2) amplifies such a flip to ~1e-2 relative in every gradient below it — on either side,
    by luck. So both float32 results are judged against a float64 run of the same reference:
    herbs must be as close to it as PyTorch float32 is (taps within 2x of PyTorch's error plus
    a rounding floor; gradients: median error within 2x of PyTorch's median, and no tensor off
    by more than 5e-2 or twice PyTorch's worst, whichever is larger — a real bug is off by far
    more). Over input seeds 1-10 the worst parameter gradient is off by up to 6.4e-2 in PyTorch
    float32 and by up to 4.3x PyTorch's worst in herbs (portable kernels; 2.4e-2 against
    5.5e-3), so neither bound alone holds by more than luck; together they hold for all ten on
    every ISA."""
    import copy
    net, ref = make_pair((3, 4, 6, 3), 64, 64)
    ref64 = copy.deepcopy(ref)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 64, 64)).astype(np.float32)
    out = net.forward(x, train=train)
    grads = [rng.standard_normal(out[f"layer{i + 1}"].shape).astype(np.float32) for i in range(4)]
    dx = net.backward({f"layer{i + 1}": g for i, g in enumerate(grads)}, input_grad=True)
    taps32, grads32, dx32 = torch_pass(ref, x, grads, train, torch.float32)
    taps64, grads64, dx64 = torch_pass(ref64, x, grads, train, torch.float64)
    for i in range(4):
        mine, theirs = rel_err(out[f"layer{i + 1}"], taps64[i]), rel_err(taps32[i], taps64[i])
        assert mine < 2 * theirs + 1e-6, f"layer{i + 1}: {mine:.2e} vs PyTorch float32 {theirs:.2e}"
    views = tensor_views(net)
    state64 = ref64.state_dict()
    for name, (kind, value, _) in views.items():
        if kind == "buffer_int64":
            assert value == state64[name].item(), name
        elif kind == "buffer":  # running statistics: sums over a batch, well conditioned
            check_close(name, value, state64[name].numpy(), 1e-4, 1e-4)
    mine = {n: rel_err(g, grads64[n]) for n, (kind, _, g) in views.items() if kind == "parameter"}
    theirs = {n: rel_err(grads32[n], grads64[n]) for n in mine}
    mine["image"], theirs["image"] = rel_err(dx, dx64), rel_err(dx32, dx64)
    worst = max(mine, key=mine.get)
    bound = max(5e-2, 2 * max(theirs.values()))
    assert mine[worst] < bound, f"{worst}: {mine[worst]:.2e} > {bound:.2e} (PyTorch float32 here: {theirs[worst]:.2e})"
    assert np.median(list(mine.values())) < 2 * np.median(list(theirs.values())) + 1e-5


def test_names_shapes_and_init_are_torchvision():
    ref = ResNet((3, 4, 6, 3), 64, num_classes=1000)
    net = _C.Net("resnet", {}, 0)
    assert net.image_shape == (3, 224, 224)
    table = {name: (kind, shape) for name, kind, shape, _, _ in net.tensors()}
    state = {k: v for k, v in ref.state_dict().items() if not k.startswith("fc.")}
    assert {k: tuple(v.shape) for k, v in state.items()} == {k: s for k, (_, s) in table.items()}
    assert table["layer1.0.bn1.num_batches_tracked"][0] == "buffer_int64"
    assert sum(int(np.prod(s)) for k, (kind, s) in table.items() if kind == "parameter") == 23508032
    views = tensor_views(net)
    w = views["layer3.0.conv2.weight"][1]
    assert abs(w.std() / np.sqrt(2 / (256 * 9)) - 1) < 0.02  # kaiming normal, fan_out
    assert (views["layer4.2.bn3.weight"][1] == 1).all()  # no zero-init of the last BN (torchvision default)
    assert (views["bn1.running_var"][1] == 1).all() and not views["bn1.running_mean"][1].any()
    out = net.forward(np.zeros((1, 3, 224, 224), np.float32))
    assert [o.shape for o in out.values()] == [(1, 3136, 256), (1, 784, 512), (1, 196, 1024), (1, 49, 2048)]


@pytest.mark.parametrize("config,words", [
    ({"depths": [3, 4, 6]}, "'depths' must have 4 integers"),
    ({"depths": [3, 0, 6, 3]}, "'depths' = 0 is outside"),
    ({"width": 0}, "'width' = 0 is outside"),
    ({"img_size": 0}, "'img_size' = 0 is outside"),
    ({"in_chans": 0}, "'in_chans' = 0 is outside"),
    ({"widht": 8}, "unknown config key 'widht'"),
])
def test_bad_config(config, words):
    with pytest.raises(ValueError, match=words):
        _C.Net("resnet", config)


def test_train_needs_two_values_per_channel():
    net = _C.Net("resnet", {"img_size": 32, "depths": 1, "width": 4})  # layer4 is 1x1
    with pytest.raises(ValueError, match="more than one value per channel"):
        net.forward(np.zeros((1, 3, 32, 32), np.float32), train=True)
    with pytest.raises(RuntimeError, match="forward pass before"):
        net.backward({})
    net.forward(np.zeros((1, 3, 32, 32), np.float32))  # eval mode is fine with one value
    net.forward(np.zeros((2, 3, 32, 32), np.float32), train=True)
