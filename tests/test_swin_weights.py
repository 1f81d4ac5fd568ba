"""Swin weights from files into the herbs backbone without PyTorch at load time: a state dict of the
PyTorch reference written with torch.save (plain, and Microsoft's {"model": ...}), safetensors in
timm >= 0.9's layout, and .npz, read with herbs.weights and loaded by name with herbs.state ->
the same taps as the reference. A truncated file and a wrong shape fail clearly and load nothing."""
import numpy as np
import pytest
import safetensors.numpy
import torch

import reference_swin
from herbs import _C, state, weights
from test_swin import SHIFTED, TAP_TOL, TAPS, assert_close


def reference(seed=0):
    torch.manual_seed(seed)
    model = reference_swin.swin(**SHIFTED, num_classes=5)  # with timm's final norm and head
    return model.eval()


def numpy_state_dict(model):
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def load_swin(net, path):
    """What a user does: read the file, bring it to the original layout, copy by name."""
    sd = state.swin_to_original(weights.load_file(path))
    return state.load_into(net.tensors(), {"params": net.params, "buffers": net.buffers}, sd, strict=True,
                           skip=state.SWIN_UNUSED)


def write(kind, sd, path):
    if kind == "pth":
        torch.save({k: torch.from_numpy(v) for k, v in sd.items()}, path)
    elif kind == "pth-microsoft":
        torch.save({"model": {k: torch.from_numpy(v) for k, v in sd.items()}, "epoch": 3}, path)
    elif kind == "safetensors-timm":
        timm_sd = state.swin_original_to_timm(sd)
        assert "layers.1.downsample.reduction.weight" in timm_sd and "layers.0.downsample.norm.weight" not in timm_sd
        safetensors.numpy.save_file({k: np.ascontiguousarray(v) for k, v in timm_sd.items()}, str(path))
    elif kind == "npz":
        np.savez(path, **sd)


@pytest.mark.parametrize("kind", ["pth", "pth-microsoft", "safetensors-timm", "npz"])
def test_round_trip_gives_the_reference_taps(kind, tmp_path):
    model = reference()
    sd = numpy_state_dict(model)
    assert any(k.endswith("attn_mask") for k in sd) and "head.weight" in sd  # like a real checkpoint
    path = tmp_path / f"swin.{kind}"
    write(kind, sd, path)
    net = _C.Net("swin", SHIFTED, 123)  # another initialisation, overwritten by the file
    result = load_swin(net, str(path))
    assert result.missing_keys == [] and result.unexpected_keys == []
    for name, _, shape, offset, size in net.tensors():
        np.testing.assert_array_equal(net.params[offset:offset + size].reshape(shape), sd[name], err_msg=name)
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    out = net.forward(x)
    with torch.no_grad():
        expected = model(torch.from_numpy(x))
    for name, e in zip(TAPS, expected):
        assert_close(out[name], e.numpy(), TAP_TOL, name)


@pytest.mark.parametrize("kind", ["pth", "safetensors-timm", "npz"])
def test_truncated_file_fails_and_loads_nothing(kind, tmp_path):
    path = tmp_path / f"swin.{kind}"
    write(kind, numpy_state_dict(reference()), path)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) * 2 // 3])
    net = _C.Net("swin", SHIFTED, 123)
    before = net.params.copy()
    with pytest.raises(weights.WeightsFormatError) as info:
        load_swin(net, str(path))
    assert str(path) in str(info.value) and "truncated" in str(info.value)
    np.testing.assert_array_equal(net.params, before)


def test_wrong_shape_fails_naming_key_and_shapes_and_loads_nothing(tmp_path):
    sd = numpy_state_dict(reference())
    key = "layers.0.blocks.1.attn.relative_position_bias_table"
    sd[key] = np.zeros((169, 2), np.float32)  # a window-7 model's table (13² rows); window 4 has 7² = 49
    path = tmp_path / "swin.npz"
    np.savez(path, **sd)
    net = _C.Net("swin", SHIFTED, 123)
    before = net.params.copy()
    with pytest.raises(state.StateDictError) as info:
        load_swin(net, str(path))
    message = str(info.value)
    assert key in message and "(169, 2)" in message and "(49, 2)" in message and "nothing was loaded" in message
    np.testing.assert_array_equal(net.params, before)


def test_missing_key_fails_strictly_and_loads_nothing(tmp_path):
    sd = numpy_state_dict(reference())
    del sd["layers.2.downsample.reduction.weight"]
    path = tmp_path / "swin.npz"
    np.savez(path, **sd)
    net = _C.Net("swin", SHIFTED, 123)
    before = net.params.copy()
    with pytest.raises(state.StateDictError, match="missing keys: 'layers.2.downsample.reduction.weight'"):
        load_swin(net, str(path))
    np.testing.assert_array_equal(net.params, before)
