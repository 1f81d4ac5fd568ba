"""torchvision-named EfficientNet state dicts (from the torch.nn reference, which has torchvision's
names) saved as a torch.save .pth (plain and wrapped as a checkpoint), safetensors and .npz,
read without torch by herbs.weights and loaded by name into a herbs EfficientNet: every tensor
arrives (BN buffers and the int64 num_batches_tracked included), torchvision's head (features.8,
classifier) is skipped quietly, the taps match; Model.load_pretrained takes torchvision files and
HERBS release checkpoints (backbone.*); a wrong depth is refused by name."""
import numpy as np
import pytest
import torch

import herbs
from herbs import _C, state, weights
from herbs.backbones.efficientnet import EFFICIENTNET_UNUSED
from reference_efficientnet import EfficientNet, config_of
from reference_resnet import randomize
from test_efficientnet import SMALL, UNUSED
from test_resnet_weights import save

IMG = 37
CONFIG = config_of(SMALL, IMG)


@pytest.fixture(scope="module")
def reference():
    torch.manual_seed(0)
    return randomize(EfficientNet(SMALL, num_classes=7), seed=3).eval()


def taps_match(out, reference, x):
    with torch.no_grad():
        taps = reference(torch.tensor(x))
    for i, t in enumerate(taps):
        want = t.permute(0, 2, 3, 1).reshape(x.shape[0], -1, t.shape[1]).numpy()
        # eval mode, same weights: float32 rounding only (see test_efficientnet.py)
        np.testing.assert_allclose(out[f"layer{i + 1}"], want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


@pytest.mark.parametrize("fmt,suffix", [("pth", ".pth"), ("checkpoint", ".pth"), ("safetensors", ".safetensors"),
                                        ("npz", ".npz")])
def test_round_trip(reference, tmp_path, fmt, suffix):
    path = tmp_path / ("efficientnet" + suffix)
    save(reference, path, fmt)
    sd = weights.load_file(path)
    assert sd["features.1.0.block.0.1.num_batches_tracked"].dtype == np.int64
    net = _C.Net("efficientnet", CONFIG, 99)
    result = state.load_into(net.tensors(), {"params": net.params, "buffers": net.buffers}, sd,
                             skip=EFFICIENTNET_UNUSED)
    assert result == ([], [])  # nothing missing, the head dropped quietly
    back = state.state_dict_from(net)
    ref_sd = reference.state_dict()
    assert set(ref_sd) - set(back) == UNUSED | {"features.8.1.running_mean", "features.8.1.running_var",
                                                "features.8.1.num_batches_tracked"}
    for name, value in back.items():
        np.testing.assert_array_equal(value, ref_sd[name].numpy(), err_msg=name)  # bit for bit
    x = np.random.default_rng(0).standard_normal((2, 3, IMG, IMG)).astype(np.float32)
    taps_match(net.forward(x), reference, x)


def test_wrong_depth_is_refused_by_name(reference, tmp_path):
    path = tmp_path / "efficientnet.npz"
    save(reference, path, "npz")
    config = dict(CONFIG, depths=[1, 1, 1, 2, 1, 2, 1])
    net = _C.Net("efficientnet", config)
    with pytest.raises(state.StateDictError, match=r"features\.2\.1\.block\.0\.0\.weight"):
        state.load_into(net.tensors(), {"params": net.params, "buffers": net.buffers}, weights.load_file(path),
                        skip=EFFICIENTNET_UNUSED)


@pytest.mark.parametrize("layout", ["torchvision", "release"])
def test_model_load_pretrained(reference, tmp_path, layout):
    """A torchvision file (with its head), or the backbone part of a HERBS release checkpoint
    (``backbone.`` keys, no head: its feature extractor keeps features.0-7 only)."""
    sd = reference.state_dict()
    if layout == "release":
        sd = {"backbone." + k: v for k, v in sd.items() if not k.startswith(("features.8.", "classifier."))}
        sd["fpn_down.Proj_layer1.0.weight"] = torch.zeros(1)  # the head's keys are not the backbone's
    path = tmp_path / "weights.pth"
    torch.save(sd, path)
    # 64 px: taps 4x4, 4x4, 2x2, 2x2, as the pyramid wants them (each grid equal to or twice the next)
    model = herbs.Model(dict(backbone="efficientnet", **config_of(SMALL, 64)), num_classes=5, num_selects=(4, 4, 2, 2),
                        use_combiner=False)
    assert model.load_pretrained(str(path)) == ([], [])
    mine = model.state_dict()
    for name, value in reference.state_dict().items():
        if not name.startswith(("features.8.", "classifier.")):
            np.testing.assert_array_equal(mine["backbone." + name], value.numpy(), err_msg=name)
