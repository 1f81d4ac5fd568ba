"""Non-finite values cannot hide (issue 18): NaN and infinity go through every kernel that could
drop them — ReLU wherever it is computed, max pooling, the losses, the selector's ranking — as
PyTorch takes them; images holding them are refused at the API; a NaN parameter makes the outputs
NaN, as in the PyTorch reference; the optimiser refuses non-finite gradients and the training loop
stops at them (or skips and counts them)."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import herbs
from ckernels import call
from herbs import _C, data, optim, train, weights
from herbs.cli import parser
from herbs.model import NonFiniteImageError
from herbs_compare import grads_of, load_reference, run_reference
from test_herbs_backbones import SWIN, SWIN_KEEP, data as herbs_data, perturb_running_stats, resnet_pair, swin_pair
from test_kernel_conv2d import conv

NAN, INF = np.float32(np.nan), np.float32(np.inf)
SPECIALS = np.array([np.nan, np.inf, -np.inf, -0.0, 0.0, -1.5, 2.5], np.float32)


def specials(n, seed):
    """n float32 values with NaN, ±inf and ±0 scattered among normal ones."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n).astype(np.float32)
    x[rng.integers(0, n, max(n // 5, len(SPECIALS)))] = rng.choice(SPECIALS, max(n // 5, len(SPECIALS)))
    return x


def assert_same_floats(mine, theirs, what=""):
    """Equal as floats, NaN where the other is NaN (np.testing treats NaN as equal to NaN)."""
    np.testing.assert_array_equal(mine, theirs, err_msg=what)


# --- kernels ------------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [7, 100003])
def test_relu_keeps_nan_and_passes_its_gradient(isa, n):
    """relu(NaN) = NaN, relu(±inf) = inf / 0, relu(-0) = -0 as torch.relu; the backward masks
    where the output is <= 0 and passes the gradient where it is NaN (torch's threshold_backward)."""
    x, g = specials(n, 1), specials(n, 2)
    out = np.empty_like(x)
    call("relu_forward", out, x, n, dtype=np.float32)
    want = torch.relu(torch.tensor(x)).numpy()
    assert_same_floats(out, want)
    np.testing.assert_array_equal(np.signbit(out), np.signbit(want))  # -0 stays -0
    dx = np.full_like(x, np.nan)
    call("relu_backward", dx, g, out, n, 0, dtype=np.float32)
    assert_same_floats(dx, torch.ops.aten.threshold_backward(torch.tensor(g), torch.tensor(want), 0).numpy())
    added = np.ones_like(x)
    call("relu_backward", added, g, out, n, 1, dtype=np.float32)
    assert_same_floats(added, 1 + dx)


def test_add_relu_keeps_nan(isa):
    a, b, g = specials(1001, 3), specials(1001, 4), specials(1001, 5)
    out, da, db = np.empty_like(a), np.full_like(a, np.nan), np.full_like(a, np.nan)
    call("add_relu_forward", out, a, b, a.size, dtype=np.float32)
    call("add_relu_backward", da, db, g, out, a.size, 0, dtype=np.float32)
    want = torch.relu(torch.tensor(a) + torch.tensor(b))
    assert_same_floats(out, want.numpy())
    assert_same_floats(da, torch.ops.aten.threshold_backward(torch.tensor(g), want, 0).numpy())
    assert_same_floats(db, da)


def test_batchnorm_relu_keeps_nan(isa):
    """A NaN in one channel makes that channel's statistics, output and gradients NaN and leaves
    the other channels alone, in the fused BN+ReLU forward (train) and its backward."""
    N, C = 50, 20
    rng = np.random.default_rng(6)
    x = rng.standard_normal((N, C)).astype(np.float32)
    x[7, 3] = NAN
    w, b, g = rng.standard_normal(C).astype(np.float32), rng.standard_normal(C).astype(np.float32), \
        rng.standard_normal((N, C)).astype(np.float32)
    out, mean, rstd, rm, rv = np.empty_like(x), *(np.zeros(C, np.float32) for _ in range(4))
    call("batchnorm_relu_forward_train", out, mean, rstd, rm, rv, x, w, b, N, C, 1e-5, 0.1, dtype=np.float32)
    dx, dw, db = np.full_like(x, np.nan), np.zeros(C, np.float32), np.zeros(C, np.float32)
    call("batchnorm_backward", dx, dw, db, g, out, x, w, mean, rstd, N, C, 0, dtype=np.float32)
    tx = torch.tensor(x, requires_grad=True)
    tw, tb = torch.tensor(w, requires_grad=True), torch.tensor(b, requires_grad=True)
    ty = torch.relu(F.batch_norm(tx, torch.zeros(C), torch.ones(C), tw, tb, True, 0.1, 1e-5))
    ty.backward(torch.tensor(g))
    pairs = [(out, ty.detach(), "out"), (dx, tx.grad, "dx"), (dw, tw.grad, "dw"), (db, tb.grad, "db")]
    for mine, theirs, what in pairs:
        np.testing.assert_array_equal(np.isnan(mine), np.isnan(theirs.numpy()), err_msg=what)
        np.testing.assert_allclose(mine, theirs.numpy(), rtol=1e-4, atol=1e-4, err_msg=what)
    # channel 3 is NaN in the output and every gradient but the bias's: Σ dout over a NaN output
    # that the ReLU passes
    assert np.isnan(out[:, 3]).all() and np.isnan(dx[:, 3]).all() and np.isnan(dw[3]) and np.isfinite(db).all()


@pytest.mark.parametrize("m,n,k", [(5, 7, 3), (45, 70, 33), (129, 100, 300)])
def test_gemm_relu_epilogue_keeps_nan(isa, m, n, k):
    """The ReLU applied to the GEMM's tiles as they are stored (the AVX-512 micro-kernel's own;
    affine_rows on the other paths): a NaN row of A (or column of B) stays NaN, ±inf products go
    through ReLU as torch.relu takes them."""
    rng = np.random.default_rng(m)
    a, b = rng.uniform(-1, 1, (m, k)).astype(np.float32), rng.uniform(-1, 1, (k, n)).astype(np.float32)
    a[m // 2, k // 3] = NAN
    b[k - 1, n // 2] = NAN
    a[m - 1, 0] = INF
    shift = rng.uniform(-1, 1, n).astype(np.float32)
    want = torch.relu(torch.tensor(a) @ torch.tensor(b) + torch.tensor(shift)).numpy()
    for relu_args in (dict(relu=True), dict(shift=shift, relu=True)):
        c = _C.gemm(a, b, **relu_args)
        ref = want if "shift" in relu_args else torch.relu(torch.tensor(a) @ torch.tensor(b)).numpy()
        np.testing.assert_array_equal(np.isnan(c), np.isnan(ref))
        np.testing.assert_array_equal(np.isinf(c), np.isinf(ref))
        assert np.isnan(c).sum() == m + n - 1  # the row and the column
        finite = np.isfinite(ref)
        np.testing.assert_allclose(c[finite], ref[finite], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("bf16_isa", [herbs.cpu_info()["best_bf16_isa"], "portable"])
def test_bf16_gemm_relu_epilogue_keeps_nan(bf16_isa):
    before = herbs.cpu_info()["bf16_isa"]
    _C._set_bf16_isa(bf16_isa)
    try:
        rng = np.random.default_rng(8)
        a, b = rng.uniform(-1, 1, (45, 33)).astype(np.float32), rng.uniform(-1, 1, (33, 70)).astype(np.float32)
        a[20, 5] = NAN
        c = _C.gemm_bf16(a, b, shift=np.ones(70, np.float32), relu=True)
    finally:
        _C._set_bf16_isa(before)
    nan = np.zeros(c.shape, bool)
    nan[20] = True
    np.testing.assert_array_equal(np.isnan(c), nan)


@pytest.mark.parametrize("K,C", [(3, 8), (1, 40)])  # the direct convolution and a pointwise one
def test_conv_relu_epilogue_keeps_nan(isa, K, C):
    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 9, 7, C)).astype(np.float32)
    x[1, 4, 3, 2] = NAN
    w = rng.standard_normal((16, C, K, K)).astype(np.float32)
    bias = rng.standard_normal(16).astype(np.float32)
    out, _, _ = conv(x, w, bias, 1, K // 2, dtype=np.float32, relu=1)
    want = torch.relu(F.conv2d(torch.tensor(x.transpose(0, 3, 1, 2)), torch.tensor(w), torch.tensor(bias),
                               padding=K // 2)).numpy().transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(np.isnan(out), np.isnan(want))
    assert np.isnan(out).sum() == 16 * K * K


def test_maxpool_with_nans_matches_torch(isa):
    """A NaN beats every number in its window, the last NaN in scan order is the argmax (PyTorch's
    rule), and the backward routes there."""
    rng = np.random.default_rng(10)
    B, H, W, C = 2, 9, 8, 5
    x = rng.standard_normal((B, H, W, C)).astype(np.float32)
    x.reshape(-1)[rng.integers(0, x.size, 25)] = NAN
    x.reshape(-1)[rng.integers(0, x.size, 5)] = INF
    OH, OW = (H + 2 - 3) // 2 + 1, (W + 2 - 3) // 2 + 1
    out, argmax = np.empty((B, OH, OW, C), np.float32), np.empty((B, OH, OW, C), np.int32)
    call("maxpool2d_forward", out, argmax, x, B, H, W, C, 3, 2, 1, dtype=np.float32)
    g = rng.standard_normal(out.shape).astype(np.float32)
    dx = np.zeros_like(x)
    call("maxpool2d_backward", dx, g, argmax, B, H, W, C, 3, 2, 1, dtype=np.float32)
    tx = torch.tensor(x.transpose(0, 3, 1, 2)).contiguous(memory_format=torch.channels_last).requires_grad_()
    ty, tidx = F.max_pool2d(tx, 3, 2, 1, return_indices=True)
    ty.backward(torch.tensor(g.transpose(0, 3, 1, 2)))
    assert np.isnan(out).sum() > 10
    assert_same_floats(out, ty.detach().numpy().transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(argmax, tidx.numpy().transpose(0, 2, 3, 1))
    np.testing.assert_allclose(dx, tx.grad.numpy().transpose(0, 2, 3, 1), rtol=1e-6, atol=1e-6)


def test_losses_of_a_nan_logit_are_nan():
    """Cross-entropy, tanh-MSE and the refinement KL of a row with one NaN logit are NaN (as
    torch's), and only that row's."""
    x = np.random.default_rng(11).standard_normal((3, 5)).astype(np.float32)
    x[1, 2] = NAN
    labels = np.array([0, 1, 4], np.int32)
    loss = np.empty(3, np.float32)
    call("cross_entropy_forward", loss, x, labels, 1, 3, 5, dtype=np.float32)
    np.testing.assert_array_equal(np.isnan(loss), [False, True, False])
    want = F.cross_entropy(torch.tensor(x), torch.tensor(labels).long(), reduction="none").numpy()
    np.testing.assert_array_equal(np.isnan(want), np.isnan(loss))
    call("tanh_mse_forward", loss, x, -1.0, 3, 5, dtype=np.float32)
    np.testing.assert_array_equal(np.isnan(loss), [False, True, False])
    for student, teacher in ((x, np.zeros_like(x)), (np.zeros_like(x), x)):
        call("kl_softmax_forward", loss, student, teacher, 4.0, 3, 5, dtype=np.float32)
        np.testing.assert_array_equal(np.isnan(loss), [False, True, False])
    dx = np.zeros_like(x)
    call("cross_entropy_backward", dx, x, labels, 1, 1.0, 3, 5, dtype=np.float32)
    np.testing.assert_array_equal(np.isnan(dx).any(axis=1), [False, True, False])


def rank(logits):
    B, S, C = logits.shape
    order, scratch = np.empty((B, S), np.int32), np.empty((B, S), np.int32)
    score, mean = np.empty((B, S), np.float32), np.empty((B, C), np.float32)
    call("select_rank", order, scratch, score, mean, logits, B, S, C, dtype=np.float32)
    return order, score


def test_selector_ranks_nan_first_as_torch_sort():
    """Tokens whose score is NaN rank above every number, among themselves by index — where
    torch.sort(descending=True, stable=True) puts them; ±inf logits make NaN scores too (softmax
    of inf); a NaN in the token mean makes every class probability NaN, and c* is class 0, as
    torch.argmax picks the first NaN."""
    rng = np.random.default_rng(12)
    B, S, C = 3, 40, 6
    logits = rng.standard_normal((B, S, C)).astype(np.float32)
    logits[0, [5, 17, 30], 1] = NAN  # three NaN tokens; c* becomes 0 (the mean of class 1 is NaN)
    logits[1, 9, :] = INF
    logits[2, [3, 4], :] = logits[2, 3]  # ties stay in index order
    order, score = rank(logits)
    t = torch.tensor(logits)
    top = torch.softmax(t.mean(1), -1).argmax(-1)
    assert top[0] == 0 and top[1] == 0
    want_score = torch.softmax(t, -1)[torch.arange(B), :, top]
    np.testing.assert_array_equal(np.isnan(score), np.isnan(want_score.numpy()))
    for b in range(B):
        want = torch.sort(torch.tensor(score[b]), descending=True, stable=True)[1].numpy()
        np.testing.assert_array_equal(order[b], want)
    np.testing.assert_array_equal(order[0, :3], [5, 17, 30])
    np.testing.assert_array_equal(order[1, :1], [9])


# --- the gradient check and the optimiser --------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [0, 1, 15, 65537, 1000003])
def test_count_nonfinite(isa, dtype, n):
    x = specials(n, n).astype(dtype) if n else np.empty(0, dtype)
    assert _C.count_nonfinite(x) == int((~np.isfinite(x)).sum())
    assert _C.count_nonfinite(np.full((3, 4), np.finfo(dtype).max, dtype)) == 0  # 2-D, the largest finite


def test_count_nonfinite_refuses_other_arrays():
    with pytest.raises(TypeError, match="float32 or float64"):
        _C.count_nonfinite(np.zeros(3, np.int32))
    with pytest.raises(TypeError, match="NumPy array"):
        _C.count_nonfinite([1.0, 2.0])
    with pytest.raises(ValueError, match="C-contiguous"):
        _C.count_nonfinite(np.zeros((4, 4), np.float32)[:, 1])


@pytest.mark.parametrize("make", [optim.SGD, optim.AdamW])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_the_optimiser_refuses_non_finite_gradients(make, bad):
    rng = np.random.default_rng(13)
    params, grads = rng.standard_normal(1000).astype(np.float32), rng.standard_normal(1000).astype(np.float32)
    opt = make(params, grads, lr=0.1)
    opt.step()
    saved, state = params.copy(), opt.state_dict()
    grads[321] = bad
    with pytest.raises(optim.NonFiniteGradientError, match="1 of 1000 gradient values are NaN or infinite"):
        opt.step(lr=0.5)
    np.testing.assert_array_equal(params, saved)
    after = opt.state_dict()
    assert after["lr"] == 0.1 and after.get("step_count") == state.get("step_count")
    for name in opt.state:
        np.testing.assert_array_equal(after[name], state[name])
    grads[321] = 0
    opt.step()
    assert np.isfinite(params).all() and not np.array_equal(params, saved)


def test_the_optimiser_refuses_non_finite_settings_and_state():
    p, g = np.zeros(4, np.float32), np.zeros(4, np.float32)
    for bad in (dict(lr=np.nan), dict(lr=np.inf), dict(weight_decay=np.nan), dict(momentum=np.inf)):
        with pytest.raises(ValueError, match="finite"):
            optim.SGD(p, g, **bad)
    with pytest.raises(ValueError, match="finite"):
        optim.AdamW(p, g, eps=np.nan)
    with pytest.raises(ValueError, match="lr must be finite"):
        optim.SGD(p, g).step(lr=np.nan)
    state = optim.SGD(p, g).state_dict()
    state["momentum_buffer"][2] = np.nan
    with pytest.raises(ValueError, match="'momentum_buffer' holds NaN"):
        optim.SGD(p, g).load_state_dict(state)


# --- the model -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model():
    return herbs.Model({"backbone": "swin", **SWIN, "drop_path_rate": 0.0}, num_classes=3, num_selects=SWIN_KEEP)


def images(B=2, seed=0):
    return np.random.default_rng(seed).standard_normal((B, 3, 64, 64)).astype(np.float32)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_images_are_refused_at_every_call(model, bad):
    x = images(3)
    x[1, 2, 10, 20] = bad
    model.zero_grad()
    calls = {"forward": lambda: model.forward(x), "predict": lambda: model.predict(x),
             "train_step": lambda: model.train_step(x, np.zeros(3, np.int64)),
             "tap_gradients": lambda: model.tap_gradients(x, lambda out: {"comb_outs": np.ones_like(out["comb_outs"])})}
    for name, run in calls.items():
        with pytest.raises(NonFiniteImageError, match=r"images \[1\] of the batch hold 1 NaN or infinite.*"
                                                      r"at \[1, 2, 10, 20\]") as caught:
            run()
        assert caught.value.images == [1], name
    assert not model.flat_gradients().any()  # refused before any compute
    # a float64 value that overflows float32 is refused as well, and so is float16's infinity
    with pytest.raises(NonFiniteImageError, match=r"images \[0\]"):
        model.predict(np.where(np.arange(64) == 3, 1e39, images(1).astype(np.float64)))
    with pytest.raises(NonFiniteImageError):
        model.predict(np.full((1, 3, 64, 64), np.inf, np.float16))
    assert np.isfinite(model.predict(x[[0, 2]])).all()


def test_a_nan_parameter_makes_the_outputs_nan(model):
    """A NaN written into any parameter tensor (its first element, through named_parameters)
    reaches the prediction; the model is intact again once it is put back."""
    x = images()
    reached = []
    for name, p in model.named_parameters():
        flat = p.reshape(-1)
        old, flat[0] = flat[0], NAN
        reached.append(np.isnan(model.predict(x)).all())
        flat[0] = old
        assert reached[-1], name
    assert len(reached) > 50 and np.isfinite(model.predict(x)).all()


def test_a_nan_parameter_makes_the_loss_and_gradients_nan(model):
    x, y = images(), np.array([0, 2])
    for name, p in list(model.named_parameters())[::40]:
        model.zero_grad()
        flat = p.reshape(-1)
        old, flat[0] = flat[0], NAN
        losses = model.train_step(x, y)
        flat[0] = old
        assert np.isnan(losses["total"]), name
        assert _C.count_nonfinite(model.flat_gradients()) > 0, name
    model.zero_grad()


@pytest.mark.parametrize("train_mode", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("pair", [swin_pair, resnet_pair], ids=["swin", "resnet"])
@pytest.mark.parametrize("where", ["pixel", "parameter"])
def test_nan_spreads_as_in_the_pytorch_reference(pair, train_mode, where):
    """The engine (behind the API's image check) against the reference with the same weights, one
    NaN in an image or in a parameter: the same outputs NaN, element by element, the same rankings,
    the same loss terms NaN; every gradient tensor NaN in the reference is NaN here (element-wise
    the engine may have more: its im2col multiplies padding zeros by NaN gradients where the
    reference skips the padding)."""
    net, ref = pair()
    perturb_running_stats(net)
    x, y = herbs_data()
    if where == "pixel":
        x[0, 1, 20, 30] = NAN
    else:
        tensors = [t for t in net.tensors() if t[1] == "parameter"]
        net.params[tensors[len(tensors) // 3][3] + 3] = NAN
    options = dict(lambda_s=0.5)  # every term computed on both sides (a term with λ = 0 is 0 here)
    load_reference(ref, net)
    net.zero_grad()
    out = net.forward(x, train=train_mode)
    terms = net.loss(y, **options)
    net.backward({})
    out32, ranks, terms32, grads32 = run_reference(ref, x, y, train_mode, options, torch.float32)
    for name, value in out32.items():
        np.testing.assert_array_equal(np.isnan(out[name]), np.isnan(value), err_msg=name)
    assert any(np.isnan(v).any() for v in out32.values())
    for i, r in enumerate(ranks or [], 1):
        np.testing.assert_array_equal(out[f"rank_layer{i}"], r.numpy(), err_msg=f"rank_layer{i}")
    assert {k: np.isnan(v) for k, v in terms.items()} == {k: np.isnan(v) for k, v in terms32.items()}
    assert np.isnan(terms["total"])
    for name, g in grads_of(net).items():
        theirs = np.isnan(grads32[name])
        assert np.isnan(g).any() == theirs.any(), name
        assert np.isnan(g)[theirs].all(), name


# --- the training loop -------------------------------------------------------------------------

class NaNAt:
    """A herbs.Model whose `at`-th train_step (counted from 1) meets a NaN: in a parameter
    (written before the step, and left there) or in the gradients (after the step, once)."""

    def __init__(self, model, at, where):
        self.model, self.at, self.where, self.calls = model, at, where, 0

    def __getattr__(self, name):
        return getattr(self.model, name)

    def train_step(self, *args, **kw):
        self.calls += 1
        if self.calls == self.at and self.where == "parameter":
            self.model.named_parameters()[5][1].reshape(-1)[0] = NAN
        losses = self.model.train_step(*args, **kw)
        if self.calls == self.at and self.where == "gradient":
            self.model.flat_gradients()[1234] = NAN
        return losses


class NaNImage(data.SyntheticDataset):
    """Synthetic images, with NaN pixels in sample `bad`."""

    def __init__(self, bad):
        super().__init__(num_classes=3, size=64, n_per_class=3, seed=1)
        self.bad = bad

    def get(self, index, rng=None):
        image, label = super().get(index, rng)
        if index == self.bad:
            image[0, 5, 5] = np.nan
        return image, label


def loop_model():
    return herbs.Model({"backbone": "swin", **SWIN, "drop_path_rate": 0.0}, num_classes=3, num_selects=SWIN_KEEP,
                       seed=3)


def loop_config(**kw):
    # 9 images, batches of 2 (the last image dropped): 4 batches, 2 optimiser steps per epoch
    return train.TrainConfig(**{**dict(epochs=2, batch_size=2, update_freq=2, max_lr=1e-3, warmup_batches=1,
                                       num_workers=0, seed=5), **kw})


def group_samples(config, epoch, first_batch, batches):
    loader = data.DataLoader(NaNImage(None), config.batch_size, shuffle=True, seed=config.seed, drop_last=True)
    return np.concatenate(loader._batches(epoch)[first_batch:first_batch + batches]).tolist()


def test_training_stops_at_a_nan_keeping_the_last_good_checkpoint(tmp_path):
    """A NaN parameter from the 6th batch on (epoch 2, batch 2): the loop stops at optimiser step 3
    (epoch 2's first group) naming its samples; nothing was updated with it — the parameters hold
    only the NaN that was written — and last.pth is still epoch 1's, finite."""
    model = NaNAt(loop_model(), 6, "parameter")
    config = loop_config()
    with pytest.raises(train.NonFiniteError, match=r"optimiser step 3 \(epoch 2, batches 1-2 of 4, samples") as caught:
        train.train(model, NaNImage(None), config=config, out_dir=str(tmp_path), log=lambda s: None)
    error = caught.value
    assert (error.step, error.epoch) == (3, 2) and error.indices == group_samples(config, 1, 0, 2)
    assert "loss is nan" in str(error) and "last.pth holds the last good epoch" in str(error)
    assert _C.count_nonfinite(model.flat_parameters()) == 1
    saved = weights.load_checkpoint(str(tmp_path / "last.pth"))
    assert saved["epoch"] == 1 and all(np.isfinite(v).all() for v in saved["model"].values())
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 1


def test_training_skips_and_counts_a_nan_gradient(tmp_path):
    model = NaNAt(loop_model(), 3, "gradient")  # epoch 1's second group (batches 3-4)
    logged = []
    history = train.train(model, NaNImage(None), config=loop_config(skip_nonfinite=True), out_dir=str(tmp_path),
                          log=logged.append)
    assert [h["skipped_batches"] for h in history] == [2, 0]
    assert sum("skipped optimiser step 2 (epoch 1, batches 3-4" in line for line in logged) == 1
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped_batches"] for r in records] == [2, 0] and np.isfinite(records[0]["loss_total"])
    assert _C.count_nonfinite(model.flat_parameters()) == 0


def test_training_names_the_file_of_a_nan_image_or_skips_it():
    config = loop_config(epochs=1)
    bad = group_samples(config, 0, 1, 1)[0]  # a sample of the second batch
    with pytest.raises(train.NonFiniteError, match=f"batch 2 has NaN or infinite pixels in sample {bad}") as caught:
        train.train(loop_model(), NaNImage(bad), config=config, log=lambda s: None)
    assert caught.value.step == 1 and bad in caught.value.indices
    history = train.train(loop_model(), NaNImage(bad), config=loop_config(epochs=1, skip_nonfinite=True),
                          log=lambda s: None)
    assert history[0]["skipped_batches"] == 2


def test_an_epoch_of_skipped_updates_stops_the_training():
    model = NaNAt(loop_model(), 1, "parameter")
    with pytest.raises(train.NonFiniteError, match="every update of epoch 1 was skipped"):
        train.train(model, NaNImage(None), config=loop_config(skip_nonfinite=True), log=lambda s: None)


def test_the_cli_has_the_skip_switch():
    assert parser().parse_args(["train", "data", "--skip-nonfinite"]).skip_nonfinite is True
    assert parser().parse_args(["train", "data"]).skip_nonfinite is False
