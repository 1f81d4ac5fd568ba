"""herbs' EfficientNet backbone against a torch.nn EfficientNet with torchvision's names
(reference_efficientnet.py): same weights loaded by name, then taps, running statistics,
num_batches_tracked, every parameter gradient and the image gradient, in train and eval mode, on
small odd-sized configs (every kernel size and stride, blocks with and without expansion and
residual, neighbouring taps on one grid), on every instruction set; drop path with the same
masks; names, shapes and initialisation of B7 as torchvision's; bad configs refused."""
import numpy as np
import pytest
import torch

from ckernels import call
from herbs import _C
from reference_efficientnet import B7_STAGES, EfficientNet, config_of
from reference_resnet import randomize
from test_resnet import check_close, load_state_dict, nhwc_tokens, run_pair, tensor_views

# (expand_ratio, kernel, stride, in, out, layers): no expansion in stage 1 (ratio 1) and in stage 5
# (ratio 1 at 16 channels), kernels 3 and 5 at strides 1 and 2, residual blocks in stages 2, 4, 6;
# at 37 px the taps are 3x3, 3x3, 2x2, 2x2: two pairs of neighbours on one grid
SMALL = [(1, 3, 1, 8, 8, 1), (3, 5, 2, 8, 16, 2), (2, 3, 2, 16, 16, 1), (6, 5, 2, 16, 24, 2),
         (1, 3, 1, 24, 24, 1), (4, 5, 2, 24, 32, 2), (6, 3, 1, 32, 40, 1)]
IMG = 37


def make_pair(stages=SMALL, img_size=IMG, seed=0, drop_path_rate=0.0):
    torch.manual_seed(seed)
    ref = randomize(EfficientNet(stages, drop_path_rate=drop_path_rate, num_classes=10), seed)
    net = _C.Net("efficientnet", config_of(stages, img_size, drop_path_rate=drop_path_rate), seed)
    load_state_dict(net, ref.state_dict())
    return net, ref


# the head (features.8, classifier) is torchvision's but not the backbone's
UNUSED = {"features.8.0.weight", "features.8.1.weight", "features.8.1.bias", "classifier.1.weight",
          "classifier.1.bias"}


def compare(net, ref, out, ttaps, dx, tdx, rel=1e-4, elem=1e-4, grad_rel=2e-4, grad_elem=5e-4):
    """The tolerances of tests/test_resnet.py's small net, for the same reasons (float32 on both
    sides in different orders, train-mode BN amplifying late-layer differences)."""
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
    # A project BN's bias whose block output reaches only train-mode BatchNorms through linear
    # layers (the next block's expand conv, the residual) has gradient 0: BN removes any constant
    # per channel. Both sides then hold rounding noise, ~1e-8 of the largest gradient.
    floor = 1e-6 * max(p.grad.abs().max().item() for p in params.values() if p.grad is not None)
    for name, (kind, value, grad) in views.items():
        if kind != "parameter":
            continue
        want = params[name].grad
        if want is None:  # above the highest tap with a gradient: nothing flows there
            assert not grad.any(), name
        elif np.abs(want.numpy()).max() < floor:
            assert np.abs(grad).max() < floor, name
        else:
            check_close(name + ".grad", grad, want.numpy(), grad_rel, grad_elem)
    assert set(params) - set(views) == UNUSED
    check_close("image grad", dx, tdx, grad_rel, grad_elem)


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("batch", [1, 3])
def test_small_efficientnet_matches_torch(train, batch):
    if train and batch == 1:
        batch = 2  # train-mode BN needs two values per channel (the last stage is 2x2: 4 with one image)
    net, ref = make_pair()
    out, ttaps, dx, tdx = run_pair(net, ref, batch, IMG, train)
    compare(net, ref, out, ttaps, dx, tdx)


def test_matches_torch_on_every_instruction_set(isa):
    net, ref = make_pair(img_size=42)
    compare(net, ref, *run_pair(net, ref, 2, 42, True))


def test_subset_of_tap_gradients():
    net, ref = make_pair()
    out, ttaps, dx, tdx = run_pair(net, ref, 2, IMG, True, tap_grads=(0, 2))
    compare(net, ref, out, ttaps, dx, tdx)
    assert not tensor_views(net)["features.7.0.block.3.0.weight"][2].any()


def test_gradients_accumulate():
    net, ref = make_pair()
    x = np.random.default_rng(4).standard_normal((2, 3, IMG, IMG)).astype(np.float32)
    grads = {k: np.ones_like(v) for k, v in net.forward(x, train=False).items()}
    net.backward(grads)
    once = net.grads.copy()
    net.forward(x, train=False)
    net.backward(grads)
    np.testing.assert_allclose(net.grads, 2 * once, rtol=1e-6, atol=1e-7)


def replay_masks(net_seed, rates):
    """The reference's drop path made to use herbs's masks: the same kernel, the same stream
    (EFFNET_DROP_STREAM: step << 16 + block)."""
    step = [0]

    def scales(block, batch):
        s = np.empty(batch, np.float32)
        call("drop_path_scales", s, batch, np.float32(1 - rates[block]), net_seed, (step[0] << 16) + block,
             dtype=np.float32)
        return torch.tensor(s)

    return scales, step


def test_drop_path_matches_reference_with_the_same_masks():
    seed, batch, rate = 7, 6, 0.6
    net, ref = make_pair(seed=seed, drop_path_rate=rate)
    total = sum(r[5] for r in SMALL)
    ref.drop_path_scales, step = replay_masks(seed, [rate * i / total for i in range(total)])
    x = np.random.default_rng(5).standard_normal((batch, 3, IMG, IMG)).astype(np.float32)
    dropped = 0
    for s in range(2):  # two steps: the masks change with the step
        step[0] = s
        ref.train()
        tx = torch.tensor(x, requires_grad=True)
        expected = ref(tx)
        out = net.forward(x, train=True)
        for i, e in enumerate(expected):
            check_close(f"layer{i + 1}", out[f"layer{i + 1}"], nhwc_tokens(e).detach().numpy(), 1e-4, 1e-4)
        sum(e.sum() for e in expected).backward()
        net.zero_grad()
        ref.zero_grad()
        dx = net.backward({k: np.ones_like(v) for k, v in out.items()}, input_grad=True)
        check_close("image grad", dx, tx.grad.numpy(), 2e-4, 5e-4)
        dropped += sum(int((ref.drop_path_scales(b, batch) == 0).sum()) for b in range(1, total))
    assert dropped > 0  # the masks did drop samples


def test_drop_path_masks_follow_seed_and_step():
    x = np.random.default_rng(6).standard_normal((8, 3, IMG, IMG)).astype(np.float32)
    a, _ = make_pair(seed=3, drop_path_rate=0.5)
    b, _ = make_pair(seed=3, drop_path_rate=0.5)
    first = a.forward(x, train=True)["layer4"]
    np.testing.assert_array_equal(first, b.forward(x, train=True)["layer4"])  # same seed, same step
    assert not np.array_equal(first, a.forward(x, train=True)["layer4"])  # next step, new masks
    c, ref = make_pair(seed=3, drop_path_rate=0.5)  # eval: no drop path
    check_close("layer4", c.forward(x)["layer4"], nhwc_tokens(ref.eval()(torch.tensor(x))[3]).detach().numpy(), 1e-4,
                1e-4)


@pytest.fixture(scope="module")
def b7():
    """EfficientNet-B7 at the release's 448 px (3 s to build)."""
    return _C.Net("efficientnet", {"img_size": 448}, 0)


def test_b7_names_shapes_and_init_are_torchvision(b7):
    ref = EfficientNet(B7_STAGES, num_classes=1000)
    net = b7
    table = {name: (kind, shape) for name, kind, shape, _, _ in net.tensors()}
    state = {k: tuple(v.shape) for k, v in ref.state_dict().items() if not k.startswith(("features.8.", "classifier."))}
    assert state == {k: s for k, (_, s) in table.items()}
    # torchvision's efficientnet_b7 has 66,347,960 parameters; features.8 and the classifier hold
    # 640·2560 + 2·2560 + 2560·1000 + 1000 of them
    assert sum(int(np.prod(s)) for kind, s in table.values() if kind == "parameter") == \
        66347960 - (640 * 2560 + 2 * 2560 + 2560 * 1000 + 1000)
    views = tensor_views(net)
    w = views["features.6.0.block.1.0.weight"][1]  # depthwise 5x5 of 1344 channels
    assert w.shape == (1344, 1, 5, 5)
    assert abs(w.std() / np.sqrt(2 / (1344 * 25)) - 1) < 0.02  # kaiming normal, fan_out
    assert (views["features.7.3.block.3.1.weight"][1] == 1).all() and not views["features.0.1.bias"][1].any()
    assert not views["features.3.2.block.2.fc1.bias"][1].any()


def test_b7_taps_at_448_are_the_issues(b7):
    out = b7.forward(np.zeros((1, 3, 448, 448), np.float32))
    assert {k: v.shape for k, v in out.items()} == {"layer1": (1, 784, 160), "layer2": (1, 784, 224), "layer3": (1, 196, 384),
                      "layer4": (1, 196, 640)}


def test_bn_eps_and_momentum_are_b7s():
    net, ref = make_pair()
    x = np.random.default_rng(7).standard_normal((2, 3, IMG, IMG)).astype(np.float32)
    net.forward(x, train=True)
    ref.train()(torch.tensor(x))
    views, state = tensor_views(net), ref.state_dict()
    # momentum 0.01: the running mean moves 1% of the way; eps 1e-3 shows in eval mode
    for name, (kind, value, _) in views.items():
        if kind == "buffer":
            np.testing.assert_allclose(value, state[name].numpy(), rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("config,words", [
    ({"depths": [1, 1, 1]}, "'depths' must have 7 integers"),
    ({"channels": [8] * 7}, "'channels' must have 8 integers"),
    ({"strides": [1, 2, 2, 3, 1, 2, 1]}, "'strides' = 3 is outside"),
    ({"kernels": [3, 3, 4, 3, 5, 5, 3]}, "'kernels' has 4 for stage 3"),
    ({"drop_path_rate": 1.0}, "'drop_path_rate' = 1 must be below 1"),
    ({"expand_ratios": 0}, "'expand_ratios' = 0 is outside"),
    ({"img_size": 0}, "'img_size' = 0 is outside"),
    ({"widht": 8}, "unknown config key 'widht'"),
])
def test_bad_config(config, words):
    with pytest.raises(ValueError, match=words):
        _C.Net("efficientnet", config)


def test_train_needs_two_values_per_channel():
    net = _C.Net("efficientnet", config_of(SMALL, 32))  # the last stage is 1x1
    with pytest.raises(ValueError, match="more than one value per channel"):
        net.forward(np.zeros((1, 3, 32, 32), np.float32), train=True)
    with pytest.raises(RuntimeError, match="forward pass before"):
        net.backward({})
    net.forward(np.zeros((1, 3, 32, 32), np.float32))  # eval mode is fine with one value
    net.forward(np.zeros((2, 3, 32, 32), np.float32), train=True)
