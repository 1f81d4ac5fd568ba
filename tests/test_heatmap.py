"""Heat maps against the release's recipe run on the PyTorch reference with autograd: the same
score, back-propagated to the backbone's taps, the same maps."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import herbs
import reference_resnet
import reference_swin
import reference_vit
from herbs import heatmap as hm
from herbs_compare import load_reference, torch_threads
from reference_herbs import HERBS

CLASSES = 5
SWIN = dict(img_size=64, patch_size=2, embed_dim=16, depths=(2, 2, 2, 2), num_heads=(2, 2, 4, 4), window_size=4)
KEEP = (100, 24, 6, 4)
RESNET = dict(img_size=64, depths=(1, 1, 1, 1), width=8)
VIT = dict(img_size=64, patch_size=8, embed_dim=24, depth=5, num_heads=3, mlp_ratio=2.0)  # taps of 1 + 8x8 tokens


@pytest.fixture(scope="module", params=["swin", "resnet", "vit"])
def pair(request):
    if request.param == "swin":
        model = herbs.Model({"backbone": "swin", **SWIN, "drop_path_rate": 0.0}, num_classes=CLASSES,
                            num_selects=KEEP, dropout=0.0, seed=3)
        ref = HERBS(reference_swin.swin(**SWIN, drop_path_rate=0.0), (32, 64, 128, 128), (256, 64, 16, 16), CLASSES,
                    list(KEEP), dropout=0.0)
    elif request.param == "vit":
        model = herbs.Model({"backbone": "vit", **VIT}, num_classes=CLASSES, num_selects=(32, 16, 16, 16), fpn_size=16,
                            dropout=0.0, seed=3)
        ref = HERBS(reference_vit.vit(**VIT), (24,) * 4, (65,) * 4, CLASSES, [32, 16, 16, 16], fpn_size=16, dropout=0.0)
    else:
        model = herbs.Model({"backbone": "resnet", **RESNET}, num_classes=CLASSES, num_selects=(100, 24, 6, 2),
                            dropout=0.0, seed=3)
        ref = HERBS(reference_resnet.ResNet(RESNET["depths"], RESNET["width"]), (32, 64, 128, 256),
                    (256, 64, 16, 4), CLASSES, [100, 24, 6, 2], cnn=True, dropout=0.0)
    load_reference(ref, model._net)
    return model, ref.double().eval()  # float64: the arbiter (PyTorch float32 is itself ~2e-4 off here)


def reference_heatmap(ref, x, rectify):
    """The release's visualiser, written out with autograd on the reference."""
    taps = []
    original = ref.backbone.forward

    def keep_taps(images):
        out = original(images)
        for t in out:
            t.retain_grad()
        taps.extend(out)
        return out

    ref.backbone.forward = keep_taps
    with torch_threads(1):
        out, _ = ref(torch.from_numpy(x).double())
    ref.backbone.forward = original
    heads = [out[f"FPN1_layer{i}"].mean(1) for i in range(1, 5)] + [out[f"layer{i}"].mean(1) for i in range(1, 5)]
    total = sum(torch.softmax(s, -1) for s in heads + [out["comb_outs"]])
    cls = int(total[0].argmax())
    total[0, cls].backward()
    heat = torch.ones(64, 64, dtype=torch.float64)
    for t in taps:
        act, grad = t[0].detach().double(), t.grad[0].double()
        if act.ndim == 3:  # a CNN map [C, H, W] -> tokens [H·W, C]
            act, grad = act.flatten(1).T, grad.flatten(1).T
        weighted = act * grad.mean(0)
        cam = F.relu(weighted).sum(1) if rectify == "each" else F.relu(weighted.sum(1))
        side = int(cam.numel() ** 0.5)
        if side * side + 1 == cam.numel():  # a ViT tap: the class token first, no pixel
            cam = cam[1:]
        cam = (cam / cam.max()).reshape(1, 1, side, side)
        heat *= F.interpolate(cam, size=(64, 64), mode="bilinear", align_corners=False)[0, 0]
    return (heat / heat.max()).numpy(), cls


def total_score(ref, x):
    """The release's summed score of the 9 heads (the value its visualiser back-propagates)."""
    with torch.no_grad(), torch_threads(1):
        out, _ = ref(torch.from_numpy(x).double())
    heads = [out[f"FPN1_layer{i}"].mean(1) for i in range(1, 5)] + [out[f"layer{i}"].mean(1) for i in range(1, 5)]
    return sum(torch.softmax(s, -1) for s in heads + [out["comb_outs"]])[0].numpy()


@pytest.mark.parametrize("rectify", ["each", "sum"])
def test_heatmap_matches_the_release_recipe(pair, rectify):
    model, ref = pair
    # The map goes through the head's ReLUs, whose inputs come within float32 rounding of 0 for some
    # images: the sign then follows the rounding (seed 0 had one at 2e-7 of its tensor's peak, and
    # flipped with the upsampling's FMA, moving the map by 2e-5 to 1e-4). With this image every
    # head ReLU input is at least 2e-6 of its peak away from 0, for both backbones.
    x = np.random.default_rng(4).standard_normal((1, 3, 64, 64)).astype(np.float32)
    result = hm.heatmap(model, x[0], rectify=rectify)
    expected, cls = reference_heatmap(ref, x, rectify)
    assert result["class"] == cls  # and the probability is predict's, the summed score over its 9 heads:
    assert result["probability"] == pytest.approx(float(model.predict(x)[0, cls]), abs=1e-6)
    assert result["probability"] == pytest.approx(float(total_score(ref, x)[cls]) / 9, abs=1e-5)
    assert result["heatmap"].shape == (64, 64) and result["heatmap"].max() == pytest.approx(1.0)
    # float32 against float64: each tap's map agrees to ~3e-7, their product to ~5e-7 of the peak
    np.testing.assert_allclose(result["heatmap"], expected, atol=1e-5)
    assert not model.flat_gradients().any()  # the backward's gradients are cleared


def test_resize_bilinear_matches_torch():
    grid = np.random.default_rng(1).random((5, 5))
    ours = hm.resize_bilinear(grid, 23)
    theirs = F.interpolate(torch.from_numpy(grid)[None, None], size=(23, 23), mode="bilinear", align_corners=False)
    np.testing.assert_allclose(ours, theirs[0, 0].numpy(), rtol=1e-12)


def test_bad_arguments(pair):
    model, _ = pair
    x = np.zeros((3, 64, 64), np.float32)
    with pytest.raises(ValueError, match="one image"):
        hm.heatmap(model, np.zeros((2, 3, 64, 64), np.float32))
    with pytest.raises(ValueError, match="target class 7"):
        hm.heatmap(model, x, target=7)
    with pytest.raises(ValueError, match="rectify"):
        hm.heatmap(model, x, rectify="max")
    linear = herbs._C.Net("linear", {"img_size": 4})
    linear.forward(np.zeros((1, 3, 4, 4), np.float32))
    with pytest.raises(ValueError, match="'linear' network has no probes"):
        linear.backward({}, probe_grads=True)


def test_overlay():
    rgb = np.full((4, 4, 3), 100, np.uint8)
    heat = np.zeros((4, 4), np.float32)
    heat[0, 0] = 1
    out = hm.overlay(rgb, heat)
    assert out.dtype == np.uint8 and out[0, 0, 0] > out[0, 0, 2] and out[1, 1, 2] > out[1, 1, 0]  # red hot, blue cold
    with pytest.raises(ValueError, match="differ in size"):
        hm.overlay(rgb, np.zeros((3, 3)))


def test_overlay_covers_the_region_the_model_sees():
    """The heat map goes over the original image where eval_transform's centre crop came from, the
    rest of the image unchanged: 384 px crops of 510 px resizes leave 63/510 of each side outside."""
    from PIL import Image
    image = Image.new("RGB", (1020, 510), (10, 200, 30))
    left, top, right, bottom = hm.crop_box(1020, 510, 384)
    assert (left, top, right, bottom) == pytest.approx((126, 63, 894, 447))
    out = hm.overlay_on_image(image, np.ones((384, 384), np.float32))
    assert out.shape == (510, 1020, 3)
    outside = np.ones(out.shape[:2], bool)
    outside[63:447, 126:894] = False
    assert (out[outside] == (10, 200, 30)).all() and (out[~outside] != (10, 200, 30)).any(axis=1).all()


def test_heatmap_in_bf16_is_close_to_the_release_recipe(pair):
    """At bf16 the heat map's forward and backward run the bf16 products (eval mode: the head's hidden
    rows and the transformer's norm and GELU outputs stored in bf16 and read back by the backward): the
    same class and a map near the float64 reference's (measured on Zen 4: max error 0.013 (Swin), 0.027
    (ResNet), 0.010 (ViT) of the peak)."""
    model, ref = pair
    x = np.random.default_rng(4).standard_normal((1, 3, 64, 64)).astype(np.float32)
    expected, cls = reference_heatmap(ref, x, "each")
    model.precision = "bf16"
    try:
        result = hm.heatmap(model, x[0], rectify="each")
    finally:
        model.precision = "fp32"
    assert result["class"] == cls
    assert 0 < np.abs(result["heatmap"] - expected).max() < 0.05


def test_bf16_tap_gradients_read_only_their_own_passes(pair):
    """An eval-mode backward at bf16 (a heat map's) reads only what its forward and its recompute wrote
    (GELU's input, say, is written by the backward's recompute alone): after fp32 forwards of two other
    images, which leave different values in the buffers, its tap gradients agree bit for bit."""
    model, _ = pair
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1, 3, 64, 64)).astype(np.float32)
    taps = []
    for _ in range(2):
        model.forward(rng.standard_normal((2, 3, 64, 64)).astype(np.float32))
        model.precision = "bf16"
        try:
            _, got = model.tap_gradients(x, lambda outputs: {k: np.ones_like(v) for k, v in outputs.items()
                                                             if v.dtype == np.float32})
        finally:
            model.precision = "fp32"
            model.zero_grad()
        taps.append(got)
    for name in taps[0]:
        np.testing.assert_array_equal(taps[0][name][1], taps[1][name][1], err_msg=name)
