"""torchvision-named ResNet state dicts (from the torch.nn reference) saved as a torch.save .pth
(plain and wrapped as a checkpoint), safetensors and .npz, read without torch by herbs.weights and
loaded by name into a herbs ResNet: every tensor arrives (BN buffers and the int64
num_batches_tracked included), the classifier fc.* is skipped quietly, and the taps match."""
import numpy as np
import pytest
import torch

from herbs import _C, state, weights
from reference_resnet import ResNet, randomize

CONFIG = {"img_size": 37, "depths": [1, 2, 1, 1], "width": 8}


@pytest.fixture(scope="module")
def reference():
    torch.manual_seed(0)
    return randomize(ResNet(tuple(CONFIG["depths"]), CONFIG["width"], num_classes=7), seed=3).eval()


def save(ref, path, fmt):
    sd = ref.state_dict()
    if fmt == "pth":
        torch.save(sd, path)
    elif fmt == "checkpoint":  # as training scripts save it
        torch.save({"model": sd, "epoch": 4, "optimizer": {"lr": 0.1}}, path)
    elif fmt == "safetensors":
        try:
            from safetensors.torch import save_file  # the reference writer, where installed
            save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
        except ImportError:
            weights.save_file({k: v.numpy() for k, v in sd.items()}, path, format="safetensors")
    else:
        np.savez(path, **{k: v.numpy() for k, v in sd.items()})


@pytest.mark.parametrize("fmt,suffix", [("pth", ".pth"), ("checkpoint", ".pth"), ("safetensors", ".safetensors"),
                                        ("npz", ".npz")])
def test_round_trip(reference, tmp_path, fmt, suffix):
    path = tmp_path / ("resnet" + suffix)
    save(reference, path, fmt)
    sd = weights.load_file(path)
    assert sd["layer1.0.bn1.num_batches_tracked"].dtype == np.int64
    net = _C.Net("resnet", CONFIG, 99)
    result = state.load_into(net.tensors(), {"params": net.params, "buffers": net.buffers}, sd,
                             skip=state.RESNET_UNUSED)
    assert result == ([], [])  # nothing missing, fc.* dropped quietly
    back = state.state_dict_from(net)
    ref_sd = reference.state_dict()
    assert set(back) == set(ref_sd) - {"fc.weight", "fc.bias"}
    for name, value in back.items():
        np.testing.assert_array_equal(value, ref_sd[name].numpy(), err_msg=name)  # bit for bit
    assert back["bn1.num_batches_tracked"].dtype == np.int64

    x = np.random.default_rng(0).standard_normal((2, 3, 37, 37)).astype(np.float32)
    out = net.forward(x)
    with torch.no_grad():
        taps = reference(torch.tensor(x))
    for i, t in enumerate(taps):
        want = t.permute(0, 2, 3, 1).reshape(2, -1, t.shape[1]).numpy()
        # eval mode, same weights: float32 rounding only (see test_resnet.py)
        np.testing.assert_allclose(out[f"layer{i + 1}"], want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_wrong_depth_is_refused_by_name(reference, tmp_path):
    path = tmp_path / "resnet.npz"
    save(reference, path, "npz")
    net = _C.Net("resnet", dict(CONFIG, depths=[1, 1, 1, 1]))
    with pytest.raises(state.StateDictError, match="layer2.1.conv1.weight"):
        state.load_into(net.tensors(), {"params": net.params, "buffers": net.buffers}, weights.load_file(path),
                        skip=state.RESNET_UNUSED)
