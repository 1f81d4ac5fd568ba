"""herbs.state: copying state dicts into the engine's blocks and out again (with PyTorch's
load_state_dict semantics), prefixes, and the Swin layout conversion for timm >= 0.9 files."""
import numpy as np
import pytest
import torch

from herbs import _C, state, weights
from herbs.state import StateDictError


def linear_net(seed=0):
    return _C.Net("linear", {"img_size": 4, "num_classes": 3}, seed)


def net_blocks(net):
    return {"params": net.params, "buffers": net.buffers}


def test_round_trip_through_the_engine():
    src, dst = linear_net(1), linear_net(2)
    sd = state.state_dict_from(src)
    assert list(sd) == ["fc.weight", "fc.bias"] and sd["fc.weight"].shape == (3, 48)
    assert sd["fc.weight"].dtype == np.float32
    result = state.load_into(dst.tensors(), net_blocks(dst), sd)
    assert result == ([], []) and result.missing_keys == [] and result.unexpected_keys == []
    np.testing.assert_array_equal(dst.params, src.params)
    sd["fc.bias"][:] = 7  # copies, not views
    assert not np.any(src.params == 7)


def test_engine_weights_run_in_torch(tmp_path):
    """Engine -> torch.save file (written without torch) -> torch.nn.Linear: same logits."""
    net = linear_net(3)
    path = tmp_path / "linear.pth"
    weights.save_file({"model": state.state_dict_from(net), "epoch": 0}, path)
    fc = torch.nn.Linear(48, 3)
    fc.load_state_dict({k[len("fc."):]: v for k, v in torch.load(path, weights_only=True)["model"].items()})
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 4), dtype=np.float32)
    want = fc(torch.from_numpy(x).reshape(2, -1)).detach().numpy()
    np.testing.assert_allclose(net.forward(x)["logits"], want, rtol=1e-5, atol=1e-5)


def test_strict_missing_unexpected_and_skip():
    net = linear_net()
    before = net.params.copy()
    sd = state.state_dict_from(linear_net(5))
    partial = {"fc.weight": sd["fc.weight"], "head.weight": np.zeros(2, np.float32),
               "layers.0.blocks.0.attn.relative_position_index": np.zeros((4, 4), np.int64)}
    with pytest.raises(StateDictError) as info:
        state.load_into(net.tensors(), net_blocks(net), partial)
    message = str(info.value)
    assert "missing keys: 'fc.bias'" in message and "'head.weight'" in message
    assert "nothing was loaded" in message
    np.testing.assert_array_equal(net.params, before)

    missing, unexpected = state.load_into(net.tensors(), net_blocks(net), partial, strict=False,
                                          skip=state.SWIN_UNUSED)
    assert missing == ["fc.bias"] and unexpected == []
    w = net.params[:144].reshape(3, 48)
    np.testing.assert_array_equal(w, sd["fc.weight"])
    state.load_into(net.tensors(), net_blocks(net), dict(partial, **{"fc.bias": sd["fc.bias"]}),
                    skip=state.SWIN_UNUSED)  # strict passes once only skipped keys are extra


def test_skip_never_hides_a_key_the_network_has():
    net = linear_net()
    sd = state.state_dict_from(linear_net(4))
    state.load_into(net.tensors(), net_blocks(net), sd, skip=["fc.*"])
    np.testing.assert_array_equal(state.state_dict_from(net)["fc.bias"], sd["fc.bias"])


def test_shape_mismatch_names_key_and_shapes_and_loads_nothing():
    net = linear_net()
    before = net.params.copy()
    sd = state.state_dict_from(linear_net(5))
    sd["fc.weight"] = sd["fc.weight"].T.copy()
    for strict in (True, False):
        with pytest.raises(StateDictError, match=r"'fc.weight': the state dict has shape \(48, 3\), the network \(3, 48\)"):
            state.load_into(net.tensors(), net_blocks(net), sd, strict=strict)
        np.testing.assert_array_equal(net.params, before)


def test_dtypes():
    net = linear_net()
    sd = state.state_dict_from(linear_net(6))
    halves = {k: v.astype(np.float16) for k, v in sd.items()}
    state.load_into(net.tensors(), net_blocks(net), halves)
    np.testing.assert_array_equal(state.state_dict_from(net)["fc.weight"], halves["fc.weight"].astype(np.float32))
    doubles = {k: v.astype(np.float64) for k, v in sd.items()}
    state.load_into(net.tensors(), net_blocks(net), doubles)
    np.testing.assert_array_equal(state.state_dict_from(net)["fc.bias"], sd["fc.bias"])
    ints = dict(sd, **{"fc.bias": np.array([1, 2, 3])})
    with pytest.raises(StateDictError, match="'fc.bias': expected a floating-point array, got dtype int64"):
        state.load_into(net.tensors(), net_blocks(net), ints)


class FakeNet:
    """The engine's interface (tensors(), params, buffers) over NumPy blocks, with the
    buffer kinds the linear net lacks."""

    def __init__(self):
        self.params = np.zeros(32, np.float32)
        self.buffers = np.zeros(48, np.float32)

    def tensors(self):
        return [("bn.weight", "parameter", (3,), 0, 3),
                ("bn.running_mean", "buffer", (3,), 0, 3),
                ("bn.num_batches_tracked", "buffer_int64", (), 16, 1)]


def test_int64_buffers():
    net = FakeNet()
    bn = torch.nn.BatchNorm1d(3)
    for _ in range(3):
        bn(torch.randn(4, 3))
    sd = {"bn." + k: v.numpy() for k, v in bn.state_dict().items()}
    missing, unexpected = state.load_into(net.tensors(), net_blocks(net), sd, strict=False)
    assert missing == [] and sorted(unexpected) == ["bn.bias", "bn.running_var"]
    assert net.buffers[16] == 3.0
    out = state.state_dict_from(net)
    assert out["bn.num_batches_tracked"].dtype == np.int64 and out["bn.num_batches_tracked"].shape == ()
    assert out["bn.num_batches_tracked"] == 3
    np.testing.assert_array_equal(out["bn.running_mean"], sd["bn.running_mean"])

    table, blocks = net.tensors(), net_blocks(net)
    for bad, words in [(np.array(2.5), "non-integer"), (np.array(2 ** 30), "2\\*\\*24"),
                       (np.array([1.0]), r"shape \(1,\)")]:
        with pytest.raises(StateDictError, match=words):
            state.load_into(table, blocks, dict(sd, **{"bn.num_batches_tracked": bad}), strict=False)
    state.load_into(table, blocks, dict(sd, **{"bn.num_batches_tracked": np.array(9.0)}), strict=False)
    assert state.state_dict_from(net)["bn.num_batches_tracked"] == 9


def test_bad_tables():
    with pytest.raises(ValueError, match="unknown tensor kind 'gradient'"):
        state.load_into([("x", "gradient", (1,), 0, 1)], {"params": np.zeros(1, np.float32)}, {})
    with pytest.raises(ValueError, match="block_views lacks 'buffers'"):
        state.load_into([("x", "buffer", (1,), 0, 1)], {"params": np.zeros(1, np.float32)}, {})


def test_prefixes():
    sd = {"layers.0.x": np.zeros(1), "head.weight": np.ones(1)}
    release = state.add_prefix(sd, "backbone.")
    release["fpn_down.Proj_layer1.0.weight"] = np.zeros(2)
    assert list(release)[:2] == ["backbone.layers.0.x", "backbone.head.weight"]
    assert state.strip_prefix(release, "backbone.") == sd
    assert state.strip_prefix(state.add_prefix(sd, "module."), "module.") == sd


# ---- Swin layouts, built from each layout's documented module structure --------------

def swin_original(dim=4, depths=(2, 2, 1), heads=(1, 2, 4), window=2, grid=8, classes=5, seed=0):
    """A state dict in the original layout (Microsoft / timm < 0.9 / HERBS release), with
    the buffers such files carry."""
    rng = np.random.default_rng(seed)
    r = lambda *shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    sd = {"patch_embed.proj.weight": r(dim, 3, 4, 4), "patch_embed.proj.bias": r(dim),
          "patch_embed.norm.weight": r(dim), "patch_embed.norm.bias": r(dim)}
    for s, (depth, h) in enumerate(zip(depths, heads)):
        c, res = dim * 2 ** s, grid // 2 ** s
        w = min(window, res)
        for b in range(depth):
            p = f"layers.{s}.blocks.{b}."
            sd.update({p + "norm1.weight": r(c), p + "norm1.bias": r(c),
                       p + "attn.relative_position_bias_table": r((2 * w - 1) ** 2, h),
                       p + "attn.relative_position_index": rng.integers(0, 9, (w * w, w * w)),
                       p + "attn.qkv.weight": r(3 * c, c), p + "attn.qkv.bias": r(3 * c),
                       p + "attn.proj.weight": r(c, c), p + "attn.proj.bias": r(c),
                       p + "norm2.weight": r(c), p + "norm2.bias": r(c),
                       p + "mlp.fc1.weight": r(4 * c, c), p + "mlp.fc1.bias": r(4 * c),
                       p + "mlp.fc2.weight": r(c, 4 * c), p + "mlp.fc2.bias": r(c)})
            if b % 2 == 1 and res > window:
                sd[p + "attn_mask"] = r((res // w) ** 2, w * w, w * w)
        if s < len(depths) - 1:  # the merging at the end of stage s: C -> 2C
            sd.update({f"layers.{s}.downsample.norm.weight": r(4 * c), f"layers.{s}.downsample.norm.bias": r(4 * c),
                       f"layers.{s}.downsample.reduction.weight": r(2 * c, 4 * c)})
    c = dim * 2 ** (len(depths) - 1)
    sd.update({"norm.weight": r(c), "norm.bias": r(c), "head.weight": r(classes, c), "head.bias": r(classes)})
    return sd


def timm_module_shapes(dim=4, depths=(2, 2, 1), heads=(1, 2, 4), window=2, grid=8, classes=5):
    """Names and shapes of timm >= 0.9's SwinTransformer state dict: stage s > 0 begins
    with PatchMerging(in_dim = dim·2^(s-1) -> out_dim = dim·2^s), holding norm(4·in_dim) and
    reduction [out_dim, 4·in_dim]; attn_mask and relative_position_index are not saved;
    the classifier is ClassifierHead's fc."""
    shapes = {"patch_embed.proj.weight": (dim, 3, 4, 4), "patch_embed.proj.bias": (dim,),
              "patch_embed.norm.weight": (dim,), "patch_embed.norm.bias": (dim,)}
    for s, (depth, h) in enumerate(zip(depths, heads)):
        out_dim, res = dim * 2 ** s, grid // 2 ** s
        if s > 0:
            in_dim = out_dim // 2
            shapes.update({f"layers.{s}.downsample.norm.weight": (4 * in_dim,),
                           f"layers.{s}.downsample.norm.bias": (4 * in_dim,),
                           f"layers.{s}.downsample.reduction.weight": (out_dim, 4 * in_dim)})
        w, c = min(window, res), out_dim
        for b in range(depth):
            p = f"layers.{s}.blocks.{b}."
            shapes.update({p + "norm1.weight": (c,), p + "norm1.bias": (c,),
                           p + "attn.relative_position_bias_table": ((2 * w - 1) ** 2, h),
                           p + "attn.qkv.weight": (3 * c, c), p + "attn.qkv.bias": (3 * c,),
                           p + "attn.proj.weight": (c, c), p + "attn.proj.bias": (c,),
                           p + "norm2.weight": (c,), p + "norm2.bias": (c,),
                           p + "mlp.fc1.weight": (4 * c, c), p + "mlp.fc1.bias": (4 * c,),
                           p + "mlp.fc2.weight": (c, 4 * c), p + "mlp.fc2.bias": (c,)})
    c = dim * 2 ** (len(depths) - 1)
    shapes.update({"norm.weight": (c,), "norm.bias": (c,), "head.fc.weight": (classes, c), "head.fc.bias": (classes,)})
    return shapes


def merge_original(x, norm_w, norm_b, reduction):
    """Original PatchMerging on x [B, H, W, C]: concat x[0::2,0::2], x[1::2,0::2],
    x[0::2,1::2], x[1::2,1::2], LayerNorm(4C), Linear without bias."""
    x = np.concatenate([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], axis=-1)
    return layer_norm(x, norm_w, norm_b) @ reduction.T


def merge_timm(x, norm_w, norm_b, reduction):
    """timm >= 0.9's PatchMerging: reshape to [B, H/2, 2, W/2, 2, C], permute to
    [B, H/2, W/2, 2(w), 2(h), C], flatten the last three, LayerNorm(4C), Linear."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 4, 2, 5).reshape(b, h // 2, w // 2, 4 * c)
    return layer_norm(x, norm_w, norm_b) @ reduction.T


def layer_norm(x, w, b, eps=1e-5):
    mean = x.mean(-1, keepdims=True)
    var = x.var(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * w + b


def test_timm_merging_gathers_in_the_original_order():
    x = np.random.default_rng(1).standard_normal((2, 6, 4, 3))
    ones, zeros, eye = np.ones(12), np.zeros(12), np.eye(12)
    gathered_original = merge_original(x, ones, zeros, eye)
    gathered_timm = merge_timm(x, ones, zeros, eye)
    np.testing.assert_allclose(gathered_timm, gathered_original, atol=1e-12)


def as_timm(original):
    """The arrays of an original-layout dict placed where timm >= 0.9 keeps them (the
    merging ending stage s is the module opening stage s+1), checked against timm's shapes."""
    shapes = timm_module_shapes()
    out = {}
    for name, shape in shapes.items():
        parts = name.split(".")
        if parts[0] == "layers" and parts[2] == "downsample":
            source = ".".join(["layers", str(int(parts[1]) - 1)] + parts[2:])
        elif name.startswith("head.fc."):
            source = "head." + parts[2]
        else:
            source = name
        assert original[source].shape == shape, name
        out[name] = original[source]
    return out


def test_timm_to_original_conversion():
    original = swin_original()
    timm = as_timm(original)
    assert state.detect_swin_layout(original) == "original"
    assert state.detect_swin_layout(timm) == "timm"

    converted = state.swin_timm_to_original(timm)
    wanted = {k: v for k, v in original.items() if not k.endswith(("attn_mask", "relative_position_index"))}
    assert sorted(converted) == sorted(wanted)
    assert all(converted[k] is wanted[k] for k in wanted)
    assert state.swin_to_original(timm).keys() == converted.keys()
    assert state.swin_to_original(original) == original

    assert state.swin_original_to_timm(original) == timm  # and back, dropping the buffers

    # the merging ending stage 0 computes the same thing in both layouts
    x = np.random.default_rng(2).standard_normal((1, 8, 8, 4)).astype(np.float32)
    via_timm = merge_timm(x, timm["layers.1.downsample.norm.weight"], timm["layers.1.downsample.norm.bias"],
                          timm["layers.1.downsample.reduction.weight"])
    via_original = merge_original(x, converted["layers.0.downsample.norm.weight"],
                                  converted["layers.0.downsample.norm.bias"],
                                  converted["layers.0.downsample.reduction.weight"])
    np.testing.assert_allclose(via_original, via_timm, rtol=1e-6, atol=1e-6)


def test_layout_detection_edge_cases():
    release = state.add_prefix(swin_original(), "backbone.")
    with pytest.raises(ValueError, match="strip any prefix first"):
        state.detect_swin_layout(release)
    assert state.detect_swin_layout(state.strip_prefix(release, "backbone.")) == "original"
    one_stage = {"layers.0.blocks.0.norm1.weight": np.zeros(1)}
    assert state.detect_swin_layout(one_stage) == "original"
    assert state.detect_swin_layout(dict(one_stage, **{"head.fc.weight": np.zeros(1)})) == "timm"
    odd = {"layers.0.downsample.norm.weight": np.zeros(1), "layers.2.downsample.norm.weight": np.zeros(1),
           "layers.2.blocks.0.norm1.weight": np.zeros(1)}
    with pytest.raises(ValueError, match=r"patch merging found in stages \[0, 2\]"):
        state.detect_swin_layout(odd)
    with pytest.raises(ValueError, match="stage 0 has no patch merging"):
        state.swin_timm_to_original({"layers.0.downsample.reduction.weight": np.zeros(1)})
