"""The Swin backbone against the PyTorch reference (tests/reference_swin.py) with the same weights:
the four taps, then every parameter gradient and the image gradient after backward from random
tap gradients; drop path replayed mask for mask; names, shapes, initialisation and bad configs."""
import numpy as np
import pytest
import torch

import reference_swin
from backbone_parity import (GRAD_TOL, TAP_TOL, TAPS, assert_close, check_gradients_accumulate, check_parity,
                             images)
from ckernels import call
from herbs import _C

# Shifted windows in stages 1-2, stage 3's map is exactly one window, stage 4's (2x2) is smaller
# than the window (timm then shrinks the window to the map: a 3x3 bias table).
SHIFTED = dict(img_size=64, patch_size=4, embed_dim=16, depths=(2, 2, 2, 2), num_heads=(2, 2, 4, 4), window_size=4)
# Odd window (3, shift 1) in stages 1-3, one window in stage 4, odd depths, patch 2, one input
# channel, a fractional MLP ratio (hidden = int(dim·2.5)), no qkv bias.
ODD = dict(img_size=48, patch_size=2, in_chans=1, embed_dim=12, depths=(1, 3, 2, 1), num_heads=(2, 3, 4, 6),
           window_size=3, mlp_ratio=2.5, qkv_bias=0)
# Stage 1 large enough (2 x 4096 tokens, hidden 64) for its MLP to go in chunks of 630 rows per
# thread (transformer_block.c), the last chunk 2 rows.
CHUNKED = dict(img_size=256, patch_size=4, embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4), window_size=4)


def build(config, seed=0, **extra):
    config = {**config, **extra}
    net = _C.Net("swin", config, seed)
    ref_config = {**config}
    if "qkv_bias" in ref_config:
        ref_config["qkv_bias"] = bool(ref_config["qkv_bias"])
    ref = reference_swin.load_from_herbs(reference_swin.swin(**ref_config), net)
    return net, ref


def run_parity(config, batch, train, taps=TAPS, **extra):
    net, ref = build(config, **extra)
    check_parity(net, ref, images(config, batch), train, taps)


@pytest.mark.parametrize("config,batch", [(SHIFTED, 2), (ODD, 3), (CHUNKED, 2)], ids=["shifted", "odd", "chunked"])
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_matches_reference(config, batch, train):
    # train mode with drop path 0 (drop path is tested on its own below); eval ignores it
    run_parity(config, batch, train, drop_path_rate=0.0 if train else 0.3)


def test_matches_reference_on_every_instruction_set(isa):
    # the vectorised loops (attention, LayerNorm, GELU) and the GEMM are built once per ISA
    run_parity(SHIFTED, 2, True, drop_path_rate=0.0)
    run_parity(ODD, 3, False)


@pytest.mark.parametrize("taps", [["layer2"], ["layer1", "layer3"], ["layer4"]])
def test_backward_from_some_taps(taps):
    run_parity(SHIFTED, 2, True, taps=taps, drop_path_rate=0.0)


def test_gradients_accumulate_and_backward_needs_forward():
    check_gradients_accumulate(build(SHIFTED)[0], images(SHIFTED, 2))


def replay_masks(net_seed):
    """The reference's drop path made to use herbs's masks: the same kernel, the same stream."""
    step = [0]

    def scales(block, branch, batch):
        s = np.empty(batch, np.float32)
        prob = replay_masks.rates[block]
        call("drop_path_scales", s, batch, np.float32(1 - prob), net_seed, (step[0] << 16) + 2 * block + branch,
             dtype=np.float32)
        return torch.tensor(s)

    return scales, step


def test_drop_path_matches_reference_with_the_same_masks():
    config = {**SHIFTED, "drop_path_rate": 0.6}
    seed, batch = 7, 6
    net, ref = build(config, seed=seed)
    replay_masks.rates = torch.linspace(0, 0.6, sum(config["depths"])).tolist()
    ref.drop_path_scales, step = replay_masks(seed)
    ref.train()
    x = images(config, batch)
    for s in range(2):  # two steps: the masks change with the step
        step[0] = s
        tx = torch.tensor(x, requires_grad=True)
        expected = ref(tx)
        out = net.forward(x, train=True)
        for name, e in zip(TAPS, expected):
            assert_close(out[name], e.detach().numpy(), TAP_TOL, name)
        g = {name: np.ones_like(v) for name, v in out.items()}
        sum(e.sum() for e in expected).backward()
        net.zero_grad()
        ref.zero_grad()
        dx = net.backward(g, input_grad=True)
        assert_close(dx, tx.grad.numpy(), GRAD_TOL, "image gradient")


def test_drop_path_masks_follow_seed_and_step():
    config = {**SHIFTED, "drop_path_rate": 0.5}
    x = images(config, 8)
    a, _ = build(config, seed=3)
    b, _ = build(config, seed=3)
    first = a.forward(x, train=True)["layer4"]
    np.testing.assert_array_equal(first, b.forward(x, train=True)["layer4"])  # same seed, same step
    assert not np.array_equal(first, a.forward(x, train=True)["layer4"])  # next step, new masks
    np.testing.assert_array_equal(a.forward(x)["layer4"], b.forward(x)["layer4"])  # eval: no drop path


def test_names_shapes_and_initialisation():
    net, _ = build(SHIFTED)
    ref = reference_swin.swin(**SHIFTED)
    params = {name: shape for name, kind, shape, _, _ in net.tensors()}
    expected = {name: tuple(p.shape) for name, p in ref.named_parameters()}
    assert params == expected
    assert list(params) == list(expected)  # in timm's order too
    assert params["layers.3.blocks.0.attn.relative_position_bias_table"] == (9, 4)  # window shrunk to the 2x2 map
    assert "layers.3.downsample.reduction.weight" not in params
    tensors = {name: net.params[o:o + n] for name, _, _, o, n in net.tensors()}
    assert np.all(tensors["layers.1.blocks.0.norm1.weight"] == 1) and not tensors["layers.1.blocks.0.norm1.bias"].any()
    assert not tensors["layers.0.blocks.1.attn.qkv.bias"].any()
    big = _C.Net("swin", {"img_size": 64, "embed_dim": 64, "window_size": 4, "depths": 1, "num_heads": 4})
    w = {name: big.params[o:o + n] for name, _, _, o, n in big.tensors()}["layers.2.blocks.0.mlp.fc1.weight"]
    assert abs(w.std() - 0.02) < 0.001 and abs(w.mean()) < 0.001


def resident_mb():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/status"), reason="needs Linux's /proc")
def test_gradients_take_memory_only_once_written():
    before = resident_mb()
    net = _C.Net("swin", {"drop_path_rate": 0.0})  # Swin-T: 105 MB of parameters
    size_mb = net.params.nbytes / 2**20
    built = resident_mb()
    assert built - before < 1.5 * size_mb  # parameters only (eager gradients would make it 2x)
    assert not net.grads.any()  # and yet the gradients read as zero
    net.zero_grad()
    assert resident_mb() - built > 0.8 * size_mb  # writing them makes them resident


def test_default_is_swin_tiny_224():
    net = _C.Net("swin", {})
    assert net.image_shape == (3, 224, 224)
    n = sum(size for _, kind, _, _, size in net.tensors())
    # timm's swin_tiny_patch4_window7_224 has 28,288,354 parameters; without its final norm
    # (768·2) and head (768·1000 + 1000) that leaves 27,517,818
    assert n == 27_517_818


@pytest.mark.parametrize("config,words", [
    ({"img_size": 65}, "'img_size' = 65 is not a multiple of 'patch_size' = 4"),
    ({"img_size": 72, "window_size": 3}, "'img_size' = 72 gives stage 2 a 9x9 map"),
    ({"img_size": 64, "window_size": 3}, "'window_size' = 3 does not divide stage 1's 16x16 map"),
    ({"num_heads": (3, 6, 12, 5)}, "'num_heads' = 5 for stage 4 does not divide its dim 768"),
    ({"depths": (2, 2, 6)}, "'depths' must have 4 integers"),
    ({"drop_path_rate": 1.0}, "'drop_path_rate' = 1 must be below 1"),
    ({"variant": "huge"}, "'variant' = 'huge' is not one of: tiny, small, base, large"),
    ({"mlp_ratio": 0}, "'mlp_ratio' = 0 is outside"),
    ({"embed_dim": 96, "windw_size": 7}, "unknown config key 'windw_size' for swin"),
])
def test_bad_config(config, words):
    with pytest.raises(ValueError) as info:
        _C.Net("swin", config)
    assert words in str(info.value)
