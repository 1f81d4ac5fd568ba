"""The whole HERBS model on its real backbones against the PyTorch reference (tests/reference_herbs
with tests/reference_swin, tests/reference_resnet, tests/reference_vit and tests/reference_efficientnet),
in small configurations: all 17 outputs, the selector's rankings, every loss term, every parameter
gradient (backbone included) and the BatchNorm buffers after a step, in train mode (drop path and
dropout 0) and eval mode.

Tolerances (see herbs_compare.compare_step): 2e-5 of each output's scale, 1e-4 of each gradient's
scale. The backbones alone match to ~1e-6 (their own tests); the head adds ~8 float32 layers."""
import numpy as np
import pytest

import reference_efficientnet
import reference_resnet
import reference_swin
import reference_vit
from herbs import _C
from herbs_compare import OUTPUT_NAMES, compare_step
from reference_herbs import HERBS

CLASSES = 10
# patch 2 on 64 px: taps 16x16x32, 8x8x64, 4x4x128, 4x4x128; shifted windows in stages 1-3, and
# stage 4's map is exactly one window (no shift)
SWIN = dict(img_size=64, patch_size=2, embed_dim=16, depths=(2, 2, 2, 2), num_heads=(2, 2, 4, 4), window_size=4)
SWIN_TOKENS, SWIN_CHANNELS = (256, 64, 16, 16), (32, 64, 128, 128)
SWIN_KEEP = (100, 24, 6, 4)  # ΣK = 134: two graph nodes
# one bottleneck per stage, width 8 on 64 px: taps 16x16x32, 8x8x64, 4x4x128, 2x2x256
RESNET = dict(img_size=64, depths=(1, 1, 1, 1), width=8)
RESNET_TOKENS, RESNET_CHANNELS = (256, 64, 16, 4), (32, 64, 128, 256)
RESNET_KEEP = (100, 24, 6, 2)
# patches of 8 on 64 px: four taps of 1 + 8x8 tokens (the class token first) x 24 channels, as the
# release's ViT feeds its pyramid (Up_/Down_ layers 65 -> 65 tokens); a pyramid narrower than the
# taps (the release: 512 for 768)
VIT = dict(img_size=64, patch_size=8, embed_dim=24, depth=5, num_heads=3, mlp_ratio=2.0)
VIT_TOKENS, VIT_CHANNELS, VIT_FPN = (65,) * 4, (24,) * 4, 16
VIT_KEEP = (32, 16, 16, 16)  # ΣK = 80: one graph node
# tests/test_efficientnet.py's seven small stages on 128 px: taps 8x8x24, 8x8x24, 4x4x32, 4x4x40 —
# two pairs of neighbours on one grid, which the pyramid joins without resampling
EFFNET_STAGES = [(1, 3, 1, 8, 8, 1), (3, 5, 2, 8, 16, 2), (2, 3, 2, 16, 16, 1), (6, 5, 2, 16, 24, 2),
                 (1, 3, 1, 24, 24, 1), (4, 5, 2, 24, 32, 2), (6, 3, 1, 32, 40, 1)]
EFFNET = reference_efficientnet.config_of(EFFNET_STAGES, 128, drop_path_rate=0.0)
EFFNET_TOKENS, EFFNET_CHANNELS = (64, 64, 16, 16), (24, 24, 32, 40)
EFFNET_KEEP = (32, 24, 6, 4)


def swin_pair(**switches):
    net = _C.Net("herbs", {"backbone": "swin", **SWIN, "drop_path_rate": 0.0, "num_classes": CLASSES,
                           "num_selects": SWIN_KEEP, "dropout": 0.0, **switches}, 11)
    backbone = reference_swin.swin(**SWIN, drop_path_rate=0.0)
    ref = HERBS(backbone, SWIN_CHANNELS, SWIN_TOKENS, CLASSES, list(SWIN_KEEP), dropout=0.0, **switches)
    return net, ref


def resnet_pair(**switches):
    net = _C.Net("herbs", {"backbone": "resnet", **RESNET, "num_classes": CLASSES, "num_selects": RESNET_KEEP,
                           "dropout": 0.0, **switches}, 12)
    backbone = reference_resnet.ResNet(RESNET["depths"], RESNET["width"])
    ref = HERBS(backbone, RESNET_CHANNELS, RESNET_TOKENS, CLASSES, list(RESNET_KEEP), cnn=True, dropout=0.0,
                **switches)
    return net, ref


def vit_pair(**switches):
    net = _C.Net("herbs", {"backbone": "vit", **VIT, "num_classes": CLASSES, "num_selects": VIT_KEEP,
                           "fpn_size": VIT_FPN, "dropout": 0.0, **switches}, 13)
    ref = HERBS(reference_vit.vit(**VIT), VIT_CHANNELS, VIT_TOKENS, CLASSES, list(VIT_KEEP), fpn_size=VIT_FPN,
                dropout=0.0, **switches)
    return net, ref


def efficientnet_pair(**switches):
    """With running statistics from a train-mode pass (BN momentum 1): at torchvision's
    initialisation an unnormalised signal shrinks ~C/2-fold in each depthwise conv (fan-out init
    over C·k·k for a fan-in of k·k), so on the initial statistics eval-mode tokens end up equal to
    float32 rounding, and their ranking is a coin toss on either side."""
    net = _C.Net("herbs", {"backbone": "efficientnet", **EFFNET, "bn_momentum": 1.0, "num_classes": CLASSES,
                           "num_selects": EFFNET_KEEP, "dropout": 0.0, **switches}, 13)
    net.forward(data(B=4, size=128, seed=9)[0], train=True)
    backbone = reference_efficientnet.EfficientNet(EFFNET_STAGES, drop_path_rate=0.0, momentum=1.0)
    ref = HERBS(backbone, EFFNET_CHANNELS, EFFNET_TOKENS, CLASSES, list(EFFNET_KEEP), cnn=True, dropout=0.0,
                **switches)
    return net, ref


KEEP = {swin_pair: SWIN_KEEP, resnet_pair: RESNET_KEEP, vit_pair: VIT_KEEP, efficientnet_pair: EFFNET_KEEP}
SIZE = {swin_pair: 64, resnet_pair: 64, vit_pair: 64, efficientnet_pair: 128}
PAIRS = dict(argvalues=[swin_pair, resnet_pair, vit_pair, efficientnet_pair],
             ids=["swin", "resnet", "vit", "efficientnet"])


def perturb_running_stats(net, seed=3):
    """Moves every running mean by N(0, 0.2²) and scales every running variance by U(0.5, 2)."""
    rng = np.random.default_rng(seed)
    for name, kind, shape, offset, size in net.tensors():
        if name.endswith("running_mean"):
            net.buffers[offset:offset + size] += rng.standard_normal(size) * 0.2
        elif name.endswith("running_var"):
            net.buffers[offset:offset + size] *= rng.uniform(0.5, 2.0, size)


def data(B=2, size=64, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((B, 3, size, size)).astype(np.float32), rng.integers(0, CLASSES, B).astype(np.int64)


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("pair", **PAIRS)
def test_full_model_matches_reference(pair, train):
    net, ref = pair()
    perturb_running_stats(net)
    x, y = data(size=SIZE[pair])
    out, terms = compare_step(net, ref, x, y, train)
    assert set(OUTPUT_NAMES) <= set(out)
    for i, keep in enumerate(KEEP[pair], 1):
        assert out[f"select_layer{i}"].shape == (2, keep, CLASSES)


@pytest.mark.parametrize("pair", **PAIRS)
def test_second_step_and_options(pair):
    """A second step from the updated BN statistics, with other λs and temperature."""
    net, ref = pair()
    # images 1 give EfficientNet two layer1 tokens within one float32 ulp of confidence (a tie
    # either side may break either way); images 3 have gaps of 1e-5 or more
    x, y = data(B=3, size=SIZE[pair], seed=3 if pair is efficientnet_pair else 1)
    net.train_step(x, y)
    compare_step(net, ref, x[::-1].copy(), y[::-1].copy(), True,
                 options=dict(temperature=4.0, lambda_s=0.5, lambda_r=2.0, lambda_n=1.0))


@pytest.mark.parametrize("switches", [dict(use_combiner=False), dict(use_fpn=False, use_selection=False,
                                                                         use_combiner=False)])
def test_swin_ablations(switches):
    net, ref = swin_pair(**switches)
    x, y = data()
    compare_step(net, ref, x, y, True)


@pytest.mark.parametrize("pair", **PAIRS)
def test_accumulation_over_halves_equals_the_whole_batch(pair):
    """Two half batches with accumulation_steps=2 give the whole batch's gradient where the maths
    says so: with BatchNorm on running statistics (train=False), which also turns off drop path
    and dropout. In train mode BatchNorm normalises each call's batch by its own statistics."""
    (whole, _), (halves, _) = pair(), pair()
    perturb_running_stats(whole)
    halves.buffers[:] = whole.buffers
    x, y = data(B=4, size=SIZE[pair], seed=2)
    total = whole.train_step(x, y, train=False)["total"]
    parts = [halves.train_step(x[i:i + 2], y[i:i + 2], train=False, accumulation_steps=2)["total"] for i in (0, 2)]
    assert total == pytest.approx(sum(parts) / 2, rel=1e-5)
    scale = np.abs(whole.grads).max()
    # the same products summed in other groupings: float32 rounding of the largest gradients
    assert np.abs(whole.grads - halves.grads).max() <= 1e-5 * scale
