"""The ViT backbone against the PyTorch reference (tests/reference_vit.py, timm's VisionTransformer
written with torch.nn, equal to timm 1.0's vit_base_patch16_224_miil_in21k to the bit in float64)
with the same weights: the four taps, then every parameter gradient and the image gradient after
backward from random tap gradients; drop path replayed mask for mask; names, shapes,
initialisation, the release's size and bad configs."""
import numpy as np
import pytest
import torch

import reference_vit
from backbone_parity import (GRAD_TOL, TAP_TOL, TAPS, assert_close, check_gradients_accumulate, check_parity,
                             images)
from ckernels import call
from herbs import _C

# 40 px in patches of 8: 1 + 5x5 = 26 tokens (the class token first), 3 heads of 8, qkv bias as
# timm's usual ViT; the taps are the last four of five blocks
SMALL = dict(img_size=40, patch_size=8, embed_dim=24, depth=5, num_heads=3, mlp_ratio=2.0, qkv_bias=1)
# odd: 1 + 7x7 = 50 tokens, head dim 5, one input channel, no qkv bias (the MIIL model's), a
# fractional MLP ratio, repeated and out-of-order taps, a block after the deepest tap
ODD = dict(img_size=21, patch_size=3, in_chans=1, embed_dim=10, depth=4, num_heads=2, mlp_ratio=2.5, qkv_bias=0,
           taps=(1, 0, 2, 2))


def build(config, seed=0, **extra):
    config = {**config, **extra}
    net = _C.Net("vit", config, seed)
    return net, reference_vit.load_from_herbs(reference_vit.vit(**config), net)


def run_parity(config, batch, train, taps=TAPS, **extra):
    net, ref = build(config, **extra)
    check_parity(net, ref, images(config, batch), train, taps)


@pytest.mark.parametrize("config,batch", [(SMALL, 2), (ODD, 3)], ids=["small", "odd"])
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_matches_reference(config, batch, train):
    # train mode with drop path 0 (drop path is tested on its own below); eval ignores it
    run_parity(config, batch, train, drop_path_rate=0.0 if train else 0.3)


def test_batch_one_and_every_instruction_set(isa):
    run_parity(SMALL, 1, True)
    run_parity(ODD, 3, False)


@pytest.mark.parametrize("taps", [["layer2"], ["layer1", "layer3"], ["layer4"]])
def test_backward_from_some_taps(taps):
    run_parity(SMALL, 2, True, taps=taps)
    run_parity(ODD, 2, False, taps=taps)


def test_gradients_accumulate_and_backward_needs_forward():
    check_gradients_accumulate(build(SMALL)[0], images(SMALL, 2))


def replay_masks(net_seed, rates):
    """The reference's drop path made to use herbs's masks: the same kernel, the same stream."""
    step = [0]

    def scales(block, branch, batch):
        s = np.empty(batch, np.float32)
        call("drop_path_scales", s, batch, np.float32(1 - rates[block]), net_seed, (step[0] << 16) + 2 * block + branch,
             dtype=np.float32)
        return torch.tensor(s)

    return scales, step


def test_drop_path_matches_reference_with_the_same_masks():
    config = {**SMALL, "drop_path_rate": 0.6}
    seed, batch = 7, 6
    net, _ = build(config, seed=seed)
    scales, step = replay_masks(seed, torch.linspace(0, 0.6, config["depth"]).tolist())
    ref = reference_vit.load_from_herbs(reference_vit.vit(**config, drop_path_scales=scales), net)
    ref.train()
    x = images(config, batch)
    dropped = 0
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
        dropped += sum(int((scales(4, j, batch) == 0).sum()) for j in (0, 1))
    assert dropped > 0  # the test saw masks at work


def test_names_shapes_and_initialisation():
    net, ref = build(SMALL)
    params = {name: shape for name, kind, shape, _, _ in net.tensors()}
    expected = {name: tuple(p.shape) for name, p in ref.named_parameters()}
    assert params == expected
    assert list(params) == list(expected)  # in timm's order too
    assert params["pos_embed"] == (1, 26, 24) and params["cls_token"] == (1, 1, 24)
    no_bias = {name for name, *_ in _C.Net("vit", ODD).tensors()}
    assert "blocks.0.attn.qkv.bias" not in no_bias and "blocks.0.attn.proj.bias" in no_bias
    tensors = {name: net.params[o:o + n] for name, _, _, o, n in net.tensors()}
    assert np.all(tensors["blocks.1.norm1.weight"] == 1) and not tensors["blocks.1.norm2.bias"].any()
    assert not tensors["blocks.0.attn.qkv.bias"].any()
    assert np.abs(tensors["cls_token"]).max() < 1e-5  # normal(std=1e-6)
    big = _C.Net("vit", {"img_size": 64, "embed_dim": 256, "depth": 1, "num_heads": 4})
    w = {name: big.params[o:o + n] for name, _, _, o, n in big.tensors()}
    for name in ("blocks.0.mlp.fc1.weight", "pos_embed"):
        assert abs(w[name].std() - 0.02) < 0.001 and abs(w[name].mean()) < 0.001, name


def test_default_is_the_release_vit_b16_at_448():
    net = _C.Net("vit", {})
    assert net.image_shape == (3, 448, 448)
    shapes = {name: shape for name, _, shape, _, _ in net.tensors()}
    assert shapes["pos_embed"] == (1, 785, 768)
    assert "blocks.11.mlp.fc2.bias" in shapes and "blocks.12.norm1.weight" not in shapes
    n = sum(size for _, kind, _, _, size in net.tensors())
    # timm's vit_base_patch16_224_miil_in21k without its final norm and 11221-class head, counted
    # by layer (patch embedding, cls_token, pos_embed, 12 blocks without qkv bias), has 197
    # position rows at 224 px; at 448 px it has 785
    timm_224 = 3 * 768 * 16 * 16 + 768 + 768 + 197 * 768 + 12 * (4 * 768 + 768 * 2304 + 768 * 768 + 768
                                                               + 768 * 3072 + 3072 + 3072 * 768 + 768)
    assert n == timm_224 + (785 - 197) * 768


def test_taps_are_the_release_blocks_8_to_11():
    """With the default taps, layer1..4 are blocks 8..11's outputs: the same net with taps given
    explicitly, and one with other taps, differ only where they should."""
    config = dict(img_size=32, patch_size=16, embed_dim=8, depth=12, num_heads=2)
    x = images(config, 1)
    default = _C.Net("vit", config, 3).forward(x)
    explicit = _C.Net("vit", {**config, "taps": (8, 9, 10, 11)}, 3).forward(x)
    shifted = _C.Net("vit", {**config, "taps": (7, 8, 9, 10)}, 3).forward(x)
    for name in TAPS:
        np.testing.assert_array_equal(default[name], explicit[name])
    np.testing.assert_array_equal(shifted["layer2"], default["layer1"])
    assert not np.array_equal(shifted["layer1"], default["layer1"])


@pytest.mark.parametrize("config,words", [
    ({"img_size": 65}, "'img_size' = 65 is not a multiple of 'patch_size' = 16"),
    ({"num_heads": 5}, "'num_heads' = 5 does not divide 'embed_dim' = 768"),
    ({"taps": (8, 9, 10)}, "'taps' must have 4 integers"),
    ({"taps": (8, 9, 10, 12)}, "'taps'"),
    ({"drop_path_rate": 1.0}, "'drop_path_rate' = 1 must be below 1"),
    ({"mlp_ratio": 0}, "'mlp_ratio' = 0 is outside"),
    ({"qkv_bias": 2}, "'qkv_bias' = 2 is outside"),
    ({"embed_dim": 96, "windw_size": 7}, "unknown config key 'windw_size' for vit"),
])
def test_bad_config(config, words):
    with pytest.raises(ValueError) as info:
        _C.Net("vit", config)
    assert words in str(info.value)
