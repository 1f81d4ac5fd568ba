"""herbs.Model, the Python API: construction from names and dicts, forward/predict/train_step,
gradient accumulation, state dicts (round trip, release checkpoints, the PyTorch reference),
pretrained backbone files, input validation and thread safety."""
import threading
import time

import numpy as np
import pytest
import torch

import herbs
import reference_swin
from herbs.evaluate import ensemble_probabilities
from herbs.state import StateDictError, swin_original_to_timm
from herbs.weights import save_file
from reference_herbs import HERBS

SWIN = {"backbone": "swin", "img_size": 64, "patch_size": 2, "embed_dim": 16, "depths": (2, 2, 2, 2),
        "num_heads": (2, 2, 4, 4), "window_size": 4}
TOKENS, CHANNELS, KEEP, CLASSES = (256, 64, 16, 16), (32, 64, 128, 128), (100, 24, 6, 4), 10
OUTPUTS = ([f"FPN1_layer{i}" for i in range(1, 5)] + [f"layer{i}" for i in range(1, 5)]
           + [f"select_layer{i}" for i in range(1, 5)] + [f"drop_layer{i}" for i in range(1, 5)] + ["comb_outs"])


def small(seed=0, **kw):
    args = dict(num_classes=CLASSES, num_selects=KEEP, seed=seed)
    args.update(kw)
    return herbs.Model(SWIN, **args)


def data(B=2, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((B, 3, 64, 64)).astype(np.float32), rng.integers(0, CLASSES, B)


def test_names_and_defaults():
    m = herbs.Model("swin_tiny_patch4_window7_224", num_classes=200)
    assert m.img_size == 224 and m.config["variant"] == "tiny" and m.config["window_size"] == 7
    shapes = dict((n, a.shape) for n, a in m.named_parameters())
    assert shapes["fpn_down.Proj_layer4.2.weight"] == (768, 768)  # fpn_size = C_4
    assert shapes["combiner.param_pool0.weight"] == (2, 87 + 43 + 21 + 10)  # default num_selects at 224 px
    assert "herbs.Model(backbone='swin_tiny_patch4_window7_224'" in repr(m)
    m = herbs.Model("swin_tiny_patch4_window7_224.ms_in1k", num_classes=3)  # timm tags are ignored
    assert m.config["img_size"] == 224
    with pytest.raises(ValueError, match="unknown backbone 'vit_base'.*swin_large_patch4_window12_384"):
        herbs.Model("vit_base", num_classes=3)
    with pytest.raises(ValueError, match="a backbone dict needs 'backbone'"):
        herbs.Model({"variant": "tiny"}, num_classes=3)
    with pytest.raises(ValueError, match="num_classes must be a positive integer"):
        herbs.Model(SWIN, num_classes=0)
    with pytest.raises(ValueError, match="drop_path_rate applies to Swin, ViT and EfficientNet backbones only"):
        herbs.Model({"backbone": "resnet", "img_size": 64}, num_classes=3, drop_path_rate=0.1)
    with pytest.raises(ValueError, match=r"num_selects\[2\] = 16 must be smaller than layer3's 16 tokens"):
        small(num_selects=(100, 24, 16, 4))
    with pytest.raises(ValueError, match="num_selects must be 4 integers"):
        small(num_selects=(100, 24, 6))
    with pytest.raises(ValueError, match="unknown config key 'windw_size'"):
        herbs.Model(dict(SWIN, windw_size=4), num_classes=3)


def test_release_names_and_resnet():
    m = herbs.Model("resnet50", num_classes=5, img_size=224, num_selects={"layer1": 32, "layer2": 32,
                                                                          "layer3": 32, "layer4": 32})
    names = [n for n, _ in m.named_parameters()]
    assert "backbone.layer4.2.conv3.weight" in names and "fpn_down.Proj_layer1.0.weight" in names
    assert dict(m.named_parameters())["fpn_down.Proj_layer1.0.weight"].shape == (256, 256, 1, 1)
    assert not any("Up_layer" in n or "Down_layer" in n for n in names)  # the CNN pyramid resamples


def test_forward_predict_and_modes():
    m = small()
    x, _ = data()
    out = m.forward(x)
    assert list(out) == OUTPUTS
    assert out["select_layer1"].shape == (2, 100, CLASSES) and out["drop_layer1"].shape == (2, 156, CLASSES)
    ranks = m.forward(x, return_ranks=True)["rank_layer2"]
    assert ranks.dtype == np.int64 and sorted(ranks[0]) == list(range(64))
    p = m.predict(x)
    scores = [out[n].mean(1) for n in OUTPUTS[:8]] + [out["comb_outs"]]
    want = sum(np.exp(s) / np.exp(s).sum(1, keepdims=True) for s in scores) / 9
    np.testing.assert_allclose(p, want, rtol=1e-5)
    np.testing.assert_allclose(p.sum(1), 1, rtol=1e-6)
    # eval by default: BatchNorm buffers do not move; train mode moves them
    before = m.state_dict()
    m.forward(x)
    after = m.state_dict()
    assert all(np.array_equal(before[k], after[k]) for k in before)
    m.train()
    m.forward(x)
    assert m.state_dict()["combiner.batch_norm1.num_batches_tracked"] == 1
    m.eval()
    assert not m.training


@pytest.mark.parametrize("backbone,precision", [("swin", "fp32"), ("swin", "bf16"), ("resnet", "fp32")])
def test_image_level_forward_is_the_token_mean(backbone, precision):
    """forward(image_level=True), what predict runs: FPN1_layer{i} is [B, 1, classes], the token mean
    of the token forward's (its last product on the mean of its input: equal up to rounding, bf16's
    with bf16 products; ResNet's top-down classifiers read factored inputs), every other output is
    the same bit for bit, and predict is the ensemble of it. Training, the objective and a backward
    after it are refused."""
    if backbone == "swin":
        m, (x, y) = small(precision=precision), data()
    else:
        m = herbs.Model({"backbone": "resnet", "img_size": 64}, num_classes=CLASSES, num_selects=(64, 16, 8, 2),
                        seed=0, precision=precision)
        x, y = data()
    tokens = m.forward(x)
    image = m.forward(x, image_level=True)
    assert list(image) == list(tokens)
    tolerance = 2e-2 if precision == "bf16" else 1e-5
    for name in tokens:
        if name.startswith("FPN1_layer"):
            want = tokens[name].mean(1, keepdims=True, dtype=np.float64)
            assert image[name].shape == (2, 1, CLASSES)
            np.testing.assert_allclose(image[name], want, rtol=0, atol=tolerance * np.abs(want).max(), err_msg=name)
        else:
            np.testing.assert_array_equal(image[name], tokens[name], err_msg=name)
    np.testing.assert_array_equal(m.predict(x), ensemble_probabilities(image).astype(np.float32))
    with pytest.raises(ValueError, match="image-level outputs are for eval mode"):
        m.forward(x, train=True, image_level=True)
    with m._claim() as net:
        net.forward(x, image_level=True)
        with pytest.raises(RuntimeError, match="loss needs token logits"):
            net.loss(y)
        with pytest.raises(RuntimeError, match="backward cannot go back through an image-level forward"):
            net.backward({})


def test_ablation_outputs_and_predict():
    m = small(use_fpn=False, use_selection=False, use_combiner=False)
    x, _ = data()
    out = m.forward(x)
    assert list(out) == ["ori_out"]
    e = np.exp(out["ori_out"] - out["ori_out"].max(1, keepdims=True))
    np.testing.assert_allclose(m.predict(x), e / e.sum(1, keepdims=True), rtol=1e-5)
    assert set(m.train_step(x, [0, 1])) == {"total", "ori"}
    with pytest.raises(ValueError, match="use_combiner needs use_fpn"):
        small(use_fpn=False)


def test_train_step_accumulates_and_zero_grad():
    x, y = data(B=3, seed=1)
    m = small()
    first = m.train_step(x, y, train=False)
    assert set(first) == {"total", "comb", "layer", "drop", "select", "refine"}
    assert first["total"] == pytest.approx(sum(v for k, v in first.items() if k != "total"))
    once = {k: v.copy() for k, v in m.grads().items()}
    m.train_step(x, y, train=False)
    for name, g in m.grads().items():  # eval mode: the same gradient again, added
        np.testing.assert_allclose(g, 2 * once[name], rtol=1e-5, atol=1e-7 * np.abs(once[name]).max())
    m.zero_grad()
    assert not m.flat_gradients().any()
    m.train_step(x, y, train=False, accumulation_steps=4)
    for name, g in m.grads().items():
        np.testing.assert_allclose(g, once[name] / 4, rtol=1e-5, atol=1e-7 * np.abs(once[name]).max())


def test_state_dict_round_trip_and_reference():
    a, b = small(seed=1), small(seed=2)
    x, y = data()
    a.train_step(x, y)  # moves BatchNorm statistics
    sd = a.state_dict()
    assert sd["combiner.batch_norm1.num_batches_tracked"].dtype == np.int64
    assert sd["combiner.batch_norm1.num_batches_tracked"] == 1
    assert all(v.dtype == np.float32 for k, v in sd.items() if not k.endswith("num_batches_tracked"))
    assert list(sd) == [n for n, *_ in a._table]
    b.load_state_dict(sd)
    for k, v in a.forward(x).items():
        np.testing.assert_array_equal(v, b.forward(x)[k])

    # the PyTorch reference (release names) takes it, apart from the Swin buffers it recomputes,
    # and gives back a state dict herbs.Model loads strictly (DataParallel prefix and all)
    backbone = reference_swin.swin(**{k: v for k, v in SWIN.items() if k != "backbone"}, num_classes=7)
    ref = HERBS(backbone, CHANNELS, TOKENS, CLASSES, list(KEEP))
    missing, unexpected = ref.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=False)
    assert not unexpected
    assert {k.rsplit(".", 1)[-1] for k in missing} <= {"attn_mask", "relative_position_index", "weight", "bias"}
    assert all(k.startswith(("backbone.head.", "backbone.norm.")) or k.endswith(("attn_mask", "relative_position_index"))
               for k in missing)
    release_like = {"module." + k: v for k, v in ref.state_dict().items()}
    c = small(seed=3)
    result = c.load_state_dict(release_like)
    assert not result.missing_keys and not result.unexpected_keys
    np.testing.assert_array_equal(c.forward(x)["comb_outs"], a.forward(x)["comb_outs"])


def test_load_state_dict_errors():
    m = small()
    sd = m.state_dict()
    before = m.flat_parameters().copy()
    bad = dict(sd)
    bad["combiner.adj1"] = np.zeros((3, 3), np.float32)
    bad["fpn_up.Proj_layer1.0.bias"] = bad["fpn_up.Proj_layer1.0.bias"] + 1
    with pytest.raises(StateDictError, match=r"'combiner.adj1': the state dict has shape \(3, 3\), the network \(2, 2\)"):
        m.load_state_dict(bad)
    np.testing.assert_array_equal(m.flat_parameters(), before)  # nothing was copied
    partial = {k: v for k, v in sd.items() if not k.startswith("combiner.")}
    with pytest.raises(StateDictError, match="missing keys: 'combiner.adj1'"):
        m.load_state_dict(partial)
    assert "combiner.adj1" in m.load_state_dict(partial, strict=False).missing_keys
    with pytest.raises(StateDictError, match="unexpected keys: 'selector.classifier_l_layer1.weight'"):
        m.load_state_dict(dict(sd, **{"selector.classifier_l_layer1.weight": np.zeros((2, 2))}))
    with pytest.raises(TypeError, match="mapping"):
        m.load_state_dict([("a", 1)])


@pytest.mark.parametrize("layout,fmt", [("original", "pth"), ("timm", "safetensors"), ("release", "npz")])
def test_load_pretrained(tmp_path, layout, fmt):
    backbone = reference_swin.swin(**{k: v for k, v in SWIN.items() if k != "backbone"}, num_classes=7)
    sd = {k: v.numpy() for k, v in backbone.state_dict().items()}
    if layout == "timm":
        sd = swin_original_to_timm(sd)
    if layout == "release":
        sd = {"backbone." + k: v for k, v in sd.items()}
        sd["fpn_down.Proj_layer1.0.bias"] = np.ones(32, np.float32)
    path = tmp_path / f"weights.{fmt}"
    if fmt == "pth":
        torch.save({"model": {k: torch.from_numpy(v) for k, v in sd.items()}}, path)
    else:
        save_file(sd, str(path))
    m = small()
    head_before = dict(m.named_parameters())["fpn_down.Proj_layer1.0.bias"].copy()
    result = m.load_pretrained(str(path))
    assert not result.missing_keys and not result.unexpected_keys
    params = dict(m.named_parameters())
    for name, value in backbone.state_dict().items():
        if "backbone." + name in params:
            np.testing.assert_array_equal(params["backbone." + name], value.numpy())
    np.testing.assert_array_equal(params["fpn_down.Proj_layer1.0.bias"], head_before)  # the head is untouched

    missing = {k: v for k, v in sd.items() if "layers.1.blocks.0.mlp" not in k}
    save_file(missing, str(tmp_path / "partial.npz"))
    with pytest.raises(StateDictError, match="missing keys: 'layers.1.blocks.0.mlp"):
        m.load_pretrained(str(tmp_path / "partial.npz"))


def test_release_checkpoint_with_a_timm_backbone():
    a, b = small(seed=1), small(seed=2)
    sd = a.state_dict()
    backbone = swin_original_to_timm({k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")})
    mixed = {k: v for k, v in sd.items() if not k.startswith("backbone.")}
    mixed.update({"backbone." + k: v for k, v in backbone.items()})
    assert "backbone.layers.1.downsample.norm.weight" in mixed and "backbone.layers.0.downsample.norm.weight" not in mixed
    result = b.load_state_dict(mixed)
    assert not result.missing_keys and not result.unexpected_keys
    np.testing.assert_array_equal(b.flat_parameters(), a.flat_parameters())


def test_tap_gradients():
    m = small()
    x, _ = data()
    seen = []

    def gradients(scale):
        def of(outputs):
            seen.append(sorted(outputs))
            return {"comb_outs": np.full(outputs["comb_outs"].shape, scale, np.float32),
                    "layer2": np.full(outputs["layer2"].shape, -scale, np.float32)}
        return of

    outputs, taps = m.tap_gradients(x, gradients(1.0))
    assert seen[0] == sorted(OUTPUTS)  # the outputs of forward, without ranks
    for name, value in m.forward(x, train=False).items():
        np.testing.assert_array_equal(outputs[name], value)
    assert sorted(taps) == [f"backbone.layer{i}" for i in range(1, 5)]
    for i, name in enumerate(sorted(taps)):
        activation, gradient = taps[name]
        assert activation.shape == gradient.shape == (2, TOKENS[i], CHANNELS[i])
        assert activation.dtype == gradient.dtype == np.float32 and np.abs(gradient).max() > 0
    assert np.abs(m.flat_gradients()).max() > 0  # the backward added into the parameter gradients
    m.zero_grad()
    _, doubled = m.tap_gradients(x, gradients(2.0))
    for name, (activation, gradient) in doubled.items():  # linear in the output gradient
        np.testing.assert_array_equal(activation, taps[name][0])
        np.testing.assert_allclose(gradient, 2 * taps[name][1], rtol=1e-5, atol=1e-6 * np.abs(gradient).max())
    _, none = m.tap_gradients(x, lambda outputs: {})
    assert not any(np.any(g) for _, g in none.values())
    m.zero_grad()


def test_input_validation():
    m = small()
    x, y = data()
    want = m.forward(x)["comb_outs"]
    np.testing.assert_array_equal(m.forward(x.astype(np.float64))["comb_outs"], want)  # converted
    wide = np.zeros((2, 3, 64, 128), np.float32)
    wide[..., ::2] = x
    np.testing.assert_array_equal(m.forward(wide[..., ::2])["comb_outs"], want)  # made contiguous
    np.testing.assert_array_equal(m.forward(np.asfortranarray(x))["comb_outs"], want)
    with pytest.raises(TypeError, match="images must be floating point.*got dtype int64"):
        m.forward(x.astype(np.int64))
    with pytest.raises(ValueError, match=r"images have shape \(2, 3, 32, 32\), expected \(batch, 3, 64, 64\)"):
        m.forward(np.zeros((2, 3, 32, 32), np.float32))
    with pytest.raises(ValueError, match=r"images have shape \(3, 64, 64\)"):
        m.forward(x[0])
    with pytest.raises(ValueError, match=r"labels\[1\] = 10 is not a class index in \[0, 10\)"):
        m.train_step(x, [1, 10])
    with pytest.raises(ValueError, match=r"labels\[0\] = -1"):
        m.train_step(x, np.array([-1, 0]))
    with pytest.raises(ValueError, match=r"labels have shape \(3,\), expected \(2,\)"):
        m.train_step(x, [0, 1, 2])
    with pytest.raises(ValueError, match=r"targets have shape \(2,\), expected \(2, 10\): one distribution"):
        m.train_step(x, [0.0, 1.0])
    with pytest.raises(TypeError, match="labels must be integer class indices .B. or float .*got dtype complex128"):
        m.train_step(x, [0j, 1j])
    with pytest.raises(TypeError, match="got dtype bool"):
        m.train_step(x, [True, False])
    with pytest.raises(ValueError, match="'temperature' = -1 is outside"):
        m.train_step(x, y, temperature=-1)
    assert not m.flat_gradients().any()  # every refusal came before any work


def test_two_threads_get_an_error_not_a_race():
    m = herbs.Model({"backbone": "swin", "img_size": 128, "patch_size": 2, "embed_dim": 32, "depths": (2, 2, 2, 2),
                     "num_heads": (2, 2, 4, 4), "window_size": 4}, num_classes=CLASSES, num_selects=(300, 60, 12, 8))
    x, y = np.zeros((4, 3, 128, 128), np.float32), np.arange(4)
    errors, done = [], threading.Event()

    def step():
        try:
            m.train_step(x, y)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)
        done.set()

    worker = threading.Thread(target=step)
    worker.start()
    deadline = time.time() + 30
    while not m._lock.locked() and not done.is_set() and time.time() < deadline:
        time.sleep(0.001)
    raised = []
    for call in (lambda: m.forward(x), lambda: m.state_dict(), lambda: m.zero_grad()):
        try:
            call()
        except RuntimeError as e:
            raised.append(str(e))
    worker.join()
    assert not errors
    assert raised, "the step finished before the other calls (machine too fast for this test's model)"
    assert all("busy in another thread" in r for r in raised)
    # the engine object refuses on its own too (the GIL is released while it computes)
    worker = threading.Thread(target=lambda: m._net.train_step(x, y))
    worker.start()
    while worker.is_alive():
        try:
            m._net.forward(x)
        except RuntimeError as e:
            assert "busy in another thread" in str(e)
            break
    worker.join()
