"""The HERBS head in the engine against the PyTorch reference, on the patch-convolution backbone
(tests/reference_herbs.Patches), so every part of the head is checked quickly and on its own:
outputs, selector rankings, loss terms, parameter gradients and BatchNorm buffers, in train and
eval mode, on the token and the CNN pyramid, with the ablation switches, temperatures and λs.

Tolerances: outputs pass through ~8 float32 layers (GEMMs of at most a few hundred terms, two
BatchNorms), so they agree to ~1e-6 relative; 2e-5 of each tensor's scale leaves room. Gradients
add a backward pass and sums over the batch and tokens: 1e-4 of each gradient's scale."""
import numpy as np
import pytest
import torch

from herbs import _C
from herbs_compare import OUTPUT_NAMES, compare_step, grads_of
from reference_herbs import HERBS, Patches

IMG, GRID, CHANNELS, CLASSES = 32, (8, 4, 2, 2), (8, 16, 24, 32), 7
TOKENS = [g * g for g in GRID]
KEEP = (50, 10, 2, 2)  # ΣK = 64: one graph node (J = ΣK // 64 = 1)


def engine(keep=KEEP, **config):
    base = {"backbone": "patches", "img_size": IMG, "patch_grid": GRID, "patch_channels": CHANNELS,
            "num_classes": CLASSES, "num_selects": keep, "dropout": 0.0}
    base.update(config)
    return _C.Net("herbs", base, 3)


def reference(keep=KEEP, cnn=False, **switches):
    backbone = Patches(IMG, GRID, CHANNELS, maps=cnn)
    return HERBS(backbone, CHANNELS, TOKENS, CLASSES, list(keep), cnn=cnn, dropout=0.0, **switches)


def batch(B=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((B, 3, IMG, IMG)).astype(np.float32), rng.integers(0, CLASSES, B).astype(np.int64)


def perturb_buffers(net):
    """Non-trivial BatchNorm running statistics, so eval mode is not the identity."""
    rng = np.random.default_rng(9)
    buffers = net.buffers
    for name, kind, shape, offset, size in net.tensors():
        if name.endswith("running_mean"):
            buffers[offset:offset + size] = rng.standard_normal(size) * 0.3
        elif name.endswith("running_var"):
            buffers[offset:offset + size] = rng.uniform(0.5, 2.0, size)


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("cnn", [False, True])
def test_full_model_matches_reference(train, cnn):
    net = engine(fpn_type="cnn" if cnn else "tokens")
    perturb_buffers(net)
    x, y = batch()
    out, terms = compare_step(net, reference(cnn=cnn), x, y, train)
    assert set(OUTPUT_NAMES) <= set(out)
    assert set(terms) == {"total", "comb", "layer", "drop", "select", "refine"}


@pytest.mark.parametrize("train", [True, False])
def test_cnn_pyramid_through_level_factors(train):
    """A top-down CNN level is h·Wᵀ + b + up2x(upper), and the engine computes the products that read
    it (and their backward) through those factors where that takes fewer multiply-adds. At
    fpn_size 96 and batch 12 it does for layer1 and layer2 in the forward, the weight gradients and
    the input gradients (handed on as terms, so layer2's gradient is the cascade from layer1 plus
    terms only), and not for layer3 (on layer4's grid); the fpn_size-32 model of
    test_full_model_matches_reference takes the factored forward and weight gradients at layer1
    only. Must match the reference as the plain products do."""
    net = engine(fpn_type="cnn", fpn_size=96)
    perturb_buffers(net)
    x, y = batch(B=12)
    compare_step(net, reference(cnn=True, fpn_size=96), x, y, train)


def test_two_graph_nodes_and_trained_adjacency():
    """J = 2 nodes and a non-zero alpha1 (it starts at 0), so the adaptive adjacency matters."""
    keep = (110, 20, 3, 3)  # ΣK = 136 -> J = 2 graph nodes; 48 px images give layer1 144 tokens
    net = _C.Net("herbs", {"backbone": "patches", "img_size": 48, "patch_grid": (12, 6, 2, 2),
                           "patch_channels": CHANNELS, "num_classes": CLASSES, "num_selects": keep, "dropout": 0.0}, 5)
    table = {name: (offset, size) for name, _, _, offset, size in net.tensors()}
    offset, _ = table["combiner.alpha1"]
    net.params[offset] = 0.7
    assert table["combiner.adj1"][1] == 4
    ref = HERBS(Patches(48, (12, 6, 2, 2), CHANNELS), CHANNELS, [144, 36, 4, 4], CLASSES, list(keep), dropout=0.0)
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((2, 3, 48, 48)).astype(np.float32), np.array([3, 0])
    compare_step(net, ref, x, y, train=True)


@pytest.mark.parametrize("switches", [
    dict(use_fpn=True, use_selection=True, use_combiner=False),
    dict(use_fpn=True, use_selection=False, use_combiner=False),
    dict(use_fpn=False, use_selection=True, use_combiner=False),
    dict(use_fpn=False, use_selection=False, use_combiner=False),
])
def test_ablation_switches(switches):
    net = engine(**switches)
    x, y = batch(B=2, seed=1)
    out, terms = compare_step(net, reference(**switches), x, y, train=True)
    if not switches["use_fpn"] and not switches["use_selection"]:
        assert set(out) == {"ori_out"} and set(terms) == {"total", "ori"}
        assert {n for n, *_ in net.tensors() if not n.startswith("backbone.")} == {"classifier.weight", "classifier.bias"}


def test_temperature_and_lambdas():
    net = engine()
    x, y = batch(seed=2)
    options = dict(temperature=2.5, lambda_c=0.7, lambda_b=1.1, lambda_n=0.25, lambda_s=0.9, lambda_r=3.0,
                   accumulation_steps=3)
    out, terms = compare_step(net, reference(), x, y, train=True, options=options)
    assert terms["select"] > 0
    # each λ scales its term exactly: compare with the terms at λ = 1
    net.forward(x, train=False)
    plain = net.loss(y, temperature=2.5, lambda_c=1, lambda_b=1, lambda_n=1, lambda_s=1, lambda_r=1)
    scaled = net.loss(y, **options)
    for term, lam in (("comb", 0.7), ("layer", 1.1), ("drop", 0.25), ("select", 0.9), ("refine", 3.0)):
        assert scaled[term] == pytest.approx(lam * plain[term], rel=1e-6)


def test_zero_lambda_terms_are_skipped():
    net = engine()
    x, y = batch()
    net.forward(x, train=True)
    terms = net.loss(y, lambda_c=0, lambda_b=0, lambda_n=0, lambda_s=0, lambda_r=0)
    assert all(v == 0 for v in terms.values())
    net.backward({})
    assert not grads_of(net)["combiner.classifier.weight"].any()


def test_refinement_target_is_detached():
    """Only the refinement term: no gradient may reach the bottom-up classifiers (the target side)."""
    net = engine()
    x, y = batch()
    net.forward(x, train=True)
    net.loss(y, lambda_c=0, lambda_b=0, lambda_n=0, lambda_r=1.0)
    net.backward({})
    grads = grads_of(net)
    assert not any(grads[n].any() for n in grads if n.startswith(("fpn_classifier_up", "fpn_up.", "combiner.")))
    assert grads["fpn_classifier_down_layer1.3.weight"].any()


def test_train_step_equals_forward_loss_backward():
    x, y = batch(seed=4)
    a, b = engine(), engine()
    terms = a.train_step(x, y, temperature=8.0)
    b.forward(x, train=True)
    want = b.loss(y, temperature=8.0)
    b.backward({})
    assert terms == want
    np.testing.assert_array_equal(a.grads, b.grads)
    np.testing.assert_array_equal(a.buffers, b.buffers)


def test_gradients_accumulate_over_calls_like_one_concatenated_batch():
    """Every term is a mean over samples, so two half batches with accumulation_steps=2 give the
    gradient of the whole batch. BatchNorm in train mode mixes the samples of a batch (and its
    statistics differ between halves), so this holds in eval mode (running statistics), which
    train_step(train=False) runs; dropout is off there too."""
    x, y = batch(B=4, seed=5)
    whole, halves = engine(), engine()
    perturb_buffers(whole)
    halves.buffers[:] = whole.buffers
    full = whole.train_step(x, y, train=False)
    first = halves.train_step(x[:2], y[:2], train=False, accumulation_steps=2)
    second = halves.train_step(x[2:], y[2:], train=False, accumulation_steps=2)
    assert full["total"] == pytest.approx((first["total"] + second["total"]) / 2, rel=1e-5)
    # float32: the two sides sum the same products in different groupings
    ga, gb = grads_of(whole), grads_of(halves)
    for name in ga:
        scale = np.abs(ga[name]).max()
        assert np.abs(ga[name] - gb[name]).max() <= 1e-5 * scale + 1e-8, name


def test_dropout_masks_are_deterministic_and_change_per_step():
    x, _ = batch()
    a, b = engine(dropout=0.5), engine(dropout=0.5)
    first = a.forward(x, train=True)["comb_outs"]
    np.testing.assert_array_equal(first, b.forward(x, train=True)["comb_outs"])  # same seed, same step
    assert not np.allclose(first, a.forward(x, train=True)["comb_outs"])  # the next step draws another mask


def test_the_step_counter_advances_once_per_train_mode_forward():
    """net.c counts the steps that key the dropout stream: one per forward in train mode, by forward
    or train_step, none in eval mode; so the n-th train-mode pass draws the n-th mask whatever ran
    between. (Train mode normalises with batch statistics, so the running ones that train_step
    updates do not change these outputs.)"""
    x, y = batch()
    counted = engine(dropout=0.5)
    masks = [counted.forward(x, train=True)["comb_outs"] for _ in range(3)]  # steps 0, 1, 2
    assert not np.allclose(masks[1], masks[2])
    mixed = engine(dropout=0.5)
    mixed.forward(x, train=False)
    mixed.train_step(x, y, train=False)
    np.testing.assert_array_equal(mixed.forward(x, train=True)["comb_outs"], masks[0])  # eval counted no step
    mixed.train_step(x, y)  # step 1
    np.testing.assert_array_equal(mixed.forward(x, train=True)["comb_outs"], masks[2])


def test_ranks_are_int64_and_the_selectors_order():
    """rank_layer{i} is the selector's token order as int64 (no float round trip): a permutation of
    each image's tokens by which select_layer{i} (the first K_i) and drop_layer{i} (the rest) are
    gathered from layer{i}. Float outputs carry gradients; a rank has none."""
    x, _ = batch()
    net = engine()
    out = net.forward(x)
    for i in range(4):
        rank = out[f"rank_layer{i + 1}"]
        assert rank.dtype == np.int64 and rank.shape == (3, TOKENS[i])
        np.testing.assert_array_equal(np.sort(rank, axis=1), np.broadcast_to(np.arange(TOKENS[i]), rank.shape))
        gathered = np.take_along_axis(out[f"layer{i + 1}"], rank[:, :, None], axis=1)
        np.testing.assert_array_equal(gathered[:, :KEEP[i]], out[f"select_layer{i + 1}"])
        np.testing.assert_array_equal(gathered[:, KEEP[i]:], out[f"drop_layer{i + 1}"])
        assert out[f"layer{i + 1}"].dtype == np.float32
    with pytest.raises(ValueError, match="'rank_layer4' holds integers .* no gradient"):
        net.backward({"rank_layer4": np.zeros((3, TOKENS[3]), np.float32)})


def test_one_backward_per_forward():
    x, y = batch()
    net = engine()
    net.train_step(x, y)
    with pytest.raises(RuntimeError, match="one backward per forward"):
        net.backward({})  # train_step went back through its forward already
    net.forward(x, train=True)
    net.loss(y)
    net.backward({}, probe_grads=True)
    grads = net.grads.copy()
    for probe_grads in (False, True):
        with pytest.raises(RuntimeError, match="one backward per forward"):
            net.backward({}, probe_grads=probe_grads)
    np.testing.assert_array_equal(net.grads, grads)  # refused before any work
    net.forward(x)
    net.backward({"comb_outs": np.ones((3, CLASSES), np.float32)})  # a new forward can be gone back through
    assert not np.array_equal(net.grads, grads)


def test_release_state_dict_keys():
    """Every head key and shape of the reference (written with the release's module names), plus
    a few spelled out here."""
    net = engine()
    mine = {name: shape for name, _, shape, _, _ in net.tensors()}
    theirs = {name: tuple(v.shape) for name, v in reference().state_dict().items()}
    assert mine == theirs
    S, F = TOKENS, CHANNELS[-1]
    for key, shape in {
        "fpn_down.Proj_layer1.0.weight": (CHANNELS[0], CHANNELS[0]),
        "fpn_down.Proj_layer1.2.weight": (F, CHANNELS[0]),
        "fpn_down.Up_layer4.weight": (S[2], S[3], 1),
        "fpn_down.Up_layer2.bias": (S[0],),
        "fpn_classifier_down_layer1.0.weight": (F, F, 1),
        "fpn_classifier_down_layer1.1.running_var": (F,),
        "fpn_classifier_down_layer1.1.num_batches_tracked": (),
        "fpn_classifier_up_layer4.3.weight": (CLASSES, F, 1),
        "fpn_up.Proj_layer3.2.bias": (F,),
        "fpn_up.Down_layer1.weight": (S[1], S[0], 1),
        "combiner.param_pool0.weight": (1, sum(KEEP)),
        "combiner.adj1": (1, 1),
        "combiner.alpha1": (1,),
        "combiner.conv1.weight": (F, F, 1),
        "combiner.conv_q1.weight": (F // 4, F, 1),
        "combiner.conv_k1.bias": (F // 4,),
        "combiner.batch_norm1.running_mean": (F,),
        "combiner.param_pool1.weight": (1, 1),
        "combiner.classifier.weight": (CLASSES, F),
    }.items():
        assert mine[key] == shape, key
    assert "fpn_up.Down_layer4.weight" not in mine and "fpn_down.Up_layer1.weight" not in mine
    cnn = {name: shape for name, _, shape, _, _ in engine(fpn_type="cnn").tensors()}
    assert cnn["fpn_down.Proj_layer2.0.weight"] == (CHANNELS[1], CHANNELS[1], 1, 1)  # Conv2d 1x1 in the CNN path
    assert cnn["fpn_up.Proj_layer2.0.weight"] == (F, F)
    assert not any("Up_layer" in n or "Down_layer" in n for n in cnn)


def test_initial_values_follow_pytorch():
    net = engine()
    table = {name: (kind, shape, offset, size) for name, kind, shape, offset, size in net.tensors()}

    def value(name):
        kind, shape, offset, size = table[name]
        block = net.params if kind == "parameter" else net.buffers
        return block[offset:offset + size].reshape(shape)

    np.testing.assert_array_equal(value("combiner.adj1"), (np.eye(1) / 100 + 1 / 100).astype(np.float32))
    assert value("combiner.alpha1")[0] == 0
    np.testing.assert_array_equal(value("combiner.batch_norm1.weight"), 1)
    np.testing.assert_array_equal(value("fpn_classifier_up_layer2.1.running_var"), 1)
    w = value("fpn_down.Up_layer2.weight")
    assert np.abs(w).max() <= 1 / np.sqrt(TOKENS[1]) and w.std() > 0.2 / np.sqrt(TOKENS[1])
    big = _C.Net("herbs", {"backbone": "patches", "img_size": 48, "patch_grid": (12, 6, 2, 2),
                           "num_selects": (120, 20, 2, 2)})
    table = {name: (offset, size, shape) for name, _, shape, offset, size in big.tensors()}
    offset, size, shape = table["combiner.adj1"]
    np.testing.assert_array_equal(big.params[offset:offset + size].reshape(shape),
                                  (torch.eye(2) / 100 + 1 / 100).numpy())


def test_default_num_selects_and_fpn_size():
    net = _C.Net("herbs", {"backbone": "patches", "img_size": 48, "patch_grid": (24, 12, 6, 6),
                           "patch_channels": (4, 8, 12, 20)})
    shapes = {name: shape for name, _, shape, _, _ in net.tensors()}
    # floor(S · (1, 2, 4, 2) / 9) for S = (576, 144, 36, 36): (64, 32, 16, 8), ΣK = 120 -> J = 1
    assert shapes["combiner.param_pool0.weight"] == (1, 120)
    assert shapes["fpn_down.Proj_layer4.2.weight"] == (20, 20)  # fpn_size = C_4
    out = net.forward(np.zeros((1, 3, 48, 48), np.float32))
    assert [out[f"select_layer{i}"].shape[1] for i in range(1, 5)] == [64, 32, 16, 8]


@pytest.mark.parametrize("config,words", [
    ({"num_selects": (64, 10, 2, 2)}, "num_selects[0] = 64 must be smaller than layer1's 64 tokens"),
    ({"num_selects": (30, 10, 2, 2)}, "at least 64 selected tokens"),
    ({"use_combiner": 1, "use_selection": 0}, "use_combiner needs use_selection"),
    ({"use_fpn": 0}, "use_combiner needs use_fpn"),
    ({"backbone": "vgg16"}, "'backbone' = 'vgg16' is not one of: swin, resnet, patches"),  # the registry's list
    ({"fpn_type": "conv"}, "'fpn_type' = 'conv' is not one of"),
    ({"num_clases": 3}, "unknown config key 'num_clases' for a herbs net with backbone 'patches'"),
    ({"dropout": 1.0}, "'dropout' = 1 is outside"),
    ({"fpn_size": 3}, "fpn_size >= 4"),
])
def test_bad_configs(config, words):
    with pytest.raises(ValueError) as info:
        engine(**config)
    assert words in str(info.value)


def test_cnn_pyramid_needs_doubling_grids():
    with pytest.raises(ValueError, match="twice or equal"):
        _C.Net("herbs", {"backbone": "patches", "img_size": 48, "patch_grid": (12, 4, 2, 2), "fpn_type": "cnn",
                         "num_selects": (100, 10, 2, 2)})


def test_bad_labels_and_options():
    net = engine()
    x, y = batch()
    with pytest.raises(ValueError, match=r"labels\[1\] = 7 is not a class index in \[0, 7\)"):
        net.train_step(x, np.array([0, 7, 1]))
    with pytest.raises(ValueError, match=r"labels\[0\] = -1"):
        net.train_step(x, np.array([-1, 0, 1]))
    with pytest.raises(ValueError, match=r"labels have shape \(2,\), expected \(3,\)"):
        net.train_step(x, np.array([0, 1]))
    with pytest.raises(ValueError, match=r"targets have shape \(3,\), expected \(3, classes\)"):
        net.train_step(x, np.array([0.0, 1.0, 2.0]))
    with pytest.raises(TypeError, match="integer class indices"):
        net.train_step(x, np.array(["a", "b", "c"]))
    with pytest.raises(ValueError, match="unknown config key 'temprature' for the HERBS objective"):
        net.train_step(x, y, temprature=2.0)
    with pytest.raises(ValueError, match="'temperature' = 0 is outside"):
        net.train_step(x, y, temperature=0.0)
    with pytest.raises(ValueError, match="'accumulation_steps' = 0 is outside"):
        net.train_step(x, y, accumulation_steps=0)
    assert not net.grads.any()  # nothing ran
    with pytest.raises(RuntimeError, match="forward pass before"):
        engine().loss(y)
    net.forward(x)
    with pytest.raises(ValueError, match="no gradient"):
        net.backward({"rank_layer1": np.zeros((3, 64), np.float32)})
    with pytest.raises(TypeError, match="no training objective"):
        _C.Net("linear", {}).train_step(np.zeros((1, 3, 32, 32), np.float32), np.array([0]))


def test_batch_of_one_trains_bn_over_tokens_and_needs_two_rows_in_the_combiner():
    x, y = batch(B=1)
    net = engine()
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        net.train_step(x, y)  # the combiner's BatchNorm sees B·J = 1 row
    assert net.train_step(x, y, train=False)["total"] > 0
    compare_step(engine(use_combiner=False), reference(use_combiner=False), x, y, train=True)
