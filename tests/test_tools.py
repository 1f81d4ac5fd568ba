"""timm's training tools in herbs (herbs.tools and the modules it drives), each against PyTorch's
formula: gradient clipping (torch.nn.utils.clip_grad_norm_ / clip_grad_value_), the EMA's update
(torch.lerp, timm's decay), label smoothing (torch's cross_entropy(label_smoothing=ε)); mixup/cutmix's
invariants; summary.csv, curves.png and the best-N checkpoints; and a whole run with every tool on,
resumed to the same bits. tests/test_timm_parity.py runs timm's own code against the same pieces."""
import csv
import json
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import herbs
from herbs import checkpoints, cli, clip, config, data, plot, summary, tools, train, weights
from herbs.cli import DEMO_BACKBONE, DEMO_SELECTS, parser
from herbs.ema import ModelEma, lerp_
from herbs.mixup import Mixup, mixup_target


def tiny_model(classes=4, seed=0):
    return herbs.Model(DEMO_BACKBONE, num_classes=classes, num_selects=DEMO_SELECTS, fpn_size=32, seed=seed)


# -- gradient clipping -------------------------------------------------------------------------------

@pytest.mark.parametrize("max_norm,norm_type", [(0.5, 2.0), (1e3, 2.0), (0.3, 1.0), (0.2, math.inf)])
def test_clip_grad_norm_matches_torch(max_norm, norm_type):
    rng = np.random.default_rng(0)
    sizes = (7, 130, 1, 4096)
    flat = rng.standard_normal(sum(sizes)).astype(np.float32) * 0.05
    tensors = [torch.nn.Parameter(torch.zeros(n)) for n in sizes]
    for t, g in zip(tensors, np.split(flat, np.cumsum(sizes)[:-1])):
        t.grad = torch.tensor(g)
    want = torch.nn.utils.clip_grad_norm_(tensors, max_norm, norm_type=norm_type)
    got = clip.clip_grad_norm_(flat, max_norm, norm_type)
    # float64 sums here, float32 in torch: the norms agree to float32 rounding
    assert got == pytest.approx(want.item(), rel=1e-6)
    np.testing.assert_allclose(flat, torch.cat([t.grad for t in tensors]).numpy(), rtol=2e-6, atol=1e-12)


def test_clip_grad_value_and_nonfinite_norms_as_torch():
    rng = np.random.default_rng(1)
    flat = rng.standard_normal(500).astype(np.float32)
    t = torch.nn.Parameter(torch.zeros(500))
    t.grad = torch.tensor(flat)
    torch.nn.utils.clip_grad_value_([t], 0.4)
    clip.clip_grad_value_(flat, 0.4)
    np.testing.assert_array_equal(flat, t.grad.numpy())
    for bad in (np.nan, np.inf):
        g = np.ones(5, np.float32)
        g[2] = bad
        t = torch.nn.Parameter(torch.zeros(5))
        t.grad = torch.tensor(g)
        torch.nn.utils.clip_grad_norm_([t], 1.0)
        clip.clip_grad_norm_(g, 1.0)
        np.testing.assert_array_equal(g, t.grad.numpy())  # NaN where torch has NaN, 0 where it has 0
    with pytest.raises(ValueError, match="clip_mode must be one of .* 'agc' is not implemented"):
        clip.dispatch_clip_grad(flat, 1.0, "agc")
    with pytest.raises(ValueError, match="max_norm must be > 0"):
        clip.clip_grad_norm_(flat, 0.0)


def test_sum_squares_in_c_on_every_thread_count():
    x = np.random.default_rng(6).standard_normal(1_000_003).astype(np.float32)
    want = float(np.dot(x.astype(np.float64), x.astype(np.float64)))
    before = herbs.get_num_threads()
    try:
        for threads in (1, 2, 3):
            herbs.set_num_threads(threads)
            assert herbs._C.sum_squares(x) == pytest.approx(want, rel=1e-13)  # double sums: no float32 error
            assert herbs._C.sum_squares(x) == herbs._C.sum_squares(x)  # a fixed order for a thread count
    finally:
        herbs.set_num_threads(before)
    assert herbs._C.sum_squares(np.zeros(0, np.float32)) == 0.0
    with pytest.raises(TypeError):
        herbs._C.sum_squares(x.astype(np.float64))
    with pytest.raises(ValueError, match="contiguous"):
        herbs._C.sum_squares(x[::2])
    with pytest.raises(ValueError, match="has 3 elements but"):
        herbs._C.ema_update(np.zeros(4, np.float32), np.zeros(3, np.float32), 0.1)
    with pytest.raises(ValueError, match="weight .1 - decay. must be in .0, 1., got 1.5"):
        herbs._C.ema_update(np.zeros(4, np.float32), np.zeros(4, np.float32), 1.5)


# -- EMA -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("weight", [0.0, 2e-4, 0.3, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("n", [3000, 200_001])  # one thread, and the parallel loop
def test_lerp_is_torch_lerp(weight, n):
    rng = np.random.default_rng(2)
    ema, value = rng.standard_normal((2, n)).astype(np.float32)
    want = torch.lerp(torch.tensor(ema), torch.tensor(value), weight).numpy()
    lerp_(ema, value, weight)
    # torch's vectorised lerp fuses the multiply-add (one rounding less): 1 ulp apart at most
    np.testing.assert_allclose(ema, want, rtol=2.5e-7, atol=1e-7)
    if weight == 1.0:
        np.testing.assert_array_equal(ema, value)


def test_ema_decay_is_timms():
    ema = ModelEma(tiny_model(), decay=0.9998)
    assert [ema.get_decay(s) for s in (None, 0, 1, 2, 500)] == [0.9998, 0.0, 0.0, 0.9998, 0.9998]
    warm = ModelEma(tiny_model(), decay=0.999, use_warmup=True, update_after_step=2, min_decay=0.1)
    # timm: s' = max(0, s - update_after_step - 1); 0 -> 0; else clip(1 - (1 + s'/γ)^-p, min_decay, decay)
    assert warm.get_decay(3) == 0.0
    assert warm.get_decay(4) == max(1 - 2 ** (-2 / 3), 0.1)
    assert warm.get_decay(10 ** 6) == 0.999


def test_ema_of_a_model_follows_torch_and_swaps_cleanly():
    model = tiny_model()
    ema = ModelEma(model, decay=0.9)
    rng = np.random.default_rng(3)
    want = {k: torch.tensor(v, dtype=torch.float64 if v.dtype == np.int64 else torch.float32)
            for k, v in model.state_dict().items()}
    for step in (1, 2, 3):
        params = model.flat_parameters()
        params += rng.standard_normal(params.size).astype(np.float32) * 0.1 * (params != 0)
        for name, value in model.named_buffers():
            counter = name.endswith("num_batches_tracked")
            value += 1.0 if counter else rng.uniform(0, 0.1, value.shape).astype(np.float32)
        ema.update(model, step=step)
        decay = ema.get_decay(step)
        for name, value in model.state_dict().items():  # timm: lerp floats by 1 - decay, copy integers
            want[name] = (torch.tensor(value, dtype=torch.float64) if value.dtype == np.int64 else
                          torch.lerp(want[name], torch.tensor(value), 1 - decay))
    own = model.state_dict()
    got = ema.state_dict(model)
    for name, value in got.items():
        np.testing.assert_allclose(value, want[name].numpy(), rtol=1e-6, atol=1e-7, err_msg=name)
    assert got["fpn_down.Proj_layer1.0.weight"].tolist() != own["fpn_down.Proj_layer1.0.weight"].tolist()
    for name, value in model.state_dict().items():  # the swap for state_dict left the model as it was
        np.testing.assert_array_equal(value, own[name])
    other = ModelEma(model)
    other.load_state_dict(model, got)
    for name, value in other.state_dict(model).items():
        np.testing.assert_array_equal(value, got[name])


# -- label smoothing and mixup ---------------------------------------------------------------------------

def test_label_smoothing_is_torch_cross_entropy_with_label_smoothing():
    """Every cross-entropy term of the objective with smoothed targets equals torch's
    F.cross_entropy(..., label_smoothing=ε) on the same outputs (an eval-mode step, so the forward
    repeats exactly)."""
    model = tiny_model(classes=5)
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((4, 3, 64, 64)).astype(np.float32), np.array([0, 3, 4, 3])
    out = {k: torch.tensor(v) for k, v in model.forward(x).items()}
    terms = model.train_step(x, mixup_target(y, 5, 1.0, 0.2), train=False, lambda_s=0.5)
    ce = lambda logits, labels: F.cross_entropy(logits, torch.tensor(labels), label_smoothing=0.2).item()  # noqa: E731
    assert terms["comb"] == pytest.approx(ce(out["comb_outs"], y), rel=1e-5)
    assert terms["layer"] == pytest.approx(0.3 * sum(ce(out[f"layer{i}"].mean(1), y) for i in range(1, 5)), rel=1e-5)
    select = 0.5 * sum(ce(out[f"select_layer{i}"].reshape(-1, 5), y.repeat(out[f"select_layer{i}"].shape[1]))
                       for i in range(1, 5))
    assert terms["select"] == pytest.approx(select, rel=1e-5)


def test_mixup_invariants():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((6, 3, 16, 20)).astype(np.float32)
    y = np.array([0, 1, 2, 3, 4, 0])
    mix = Mixup(mixup_alpha=0.8, label_smoothing=0.1, num_classes=5)
    mixed, t = mix(x, y, np.random.RandomState(0))
    lam = float(((mixed[0] - x[5]) / (x[0] - x[5])).mean())
    np.testing.assert_allclose(mixed, lam * x + (1 - lam) * x[::-1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(t, lam * mixup_target(y, 5, 1, 0.1) + (1 - lam) * mixup_target(y[::-1], 5, 1, 0.1),
                               atol=1e-5)
    np.testing.assert_allclose(t.sum(1), 1, rtol=1e-6)
    cut = Mixup(mixup_alpha=0, cutmix_alpha=1.0, label_smoothing=0, num_classes=5)
    mixed, t = cut(x, y, np.random.RandomState(2))
    changed = (mixed != x).any(axis=(0, 1))  # the box: the pixels taken from the reversed batch
    assert changed.any() and t[1, 1] == pytest.approx(1 - changed.mean(), abs=1e-6)  # λ = the kept area
    assert not (mixed != x).any(axis=1)[:, ~changed].any()
    off = Mixup(mixup_alpha=1.0, prob=0.0, label_smoothing=0.1, num_classes=5)
    mixed, t = off(x, y, np.random.RandomState(2))
    np.testing.assert_array_equal(mixed, x)
    np.testing.assert_array_equal(t, mixup_target(y, 5, 1.0, 0.1))
    with pytest.raises(ValueError, match="even batch"):
        mix(x[:5], y[:5], np.random.RandomState(0))
    with pytest.raises(ValueError, match="mode 'elem' is not supported"):
        Mixup(mode="elem")
    with pytest.raises(ValueError, match="mixup_alpha > 0 or cutmix_alpha > 0"):
        Mixup(mixup_alpha=0, cutmix_alpha=0)
    with pytest.raises(ValueError, match="even batch_size"):
        train.TrainConfig(mixup=0.8, batch_size=7).check()
    with pytest.raises(ValueError, match="smoothing must be in"):
        train.TrainConfig(smoothing=1.0).check()


# -- summary.csv, curves.png, the best N checkpoints ------------------------------------------------------

RECORDS = [{"epoch": e, "loss_total": 3.0 - e, "loss_comb": 1.0 / e, "lr": 0.01 * e, "val_count": 6,
            "val_ensemble": acc, "val_comb_outs": acc / 2, "val_ema_ensemble": acc + 0.1}
           for e, acc in ((1, 0.5), (2, 0.25), (3, 0.5), (4, 0.75))]


def test_summary_csv_has_timms_columns(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RECORDS) + '{"epoch": 5, "lo')
    summary.write_summary(str(tmp_path), summary.read_metrics(str(tmp_path)))
    with open(tmp_path / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["epoch", "train_loss", "train_loss_comb", "eval_top1", "eval_comb_outs_top1",
                             "eval_ema_top1", "lr"]
    assert [float(r["eval_top1"]) for r in rows] == [50.0, 25.0, 50.0, 75.0]  # percent, as timm's
    assert float(rows[3]["eval_ema_top1"]) == pytest.approx(85.0) and float(rows[1]["train_loss"]) == 1.0


def test_curves_png(tmp_path):
    path = plot.plot_curves(RECORDS, str(tmp_path / "curves.png"))
    image = Image.open(path)
    assert image.size == (3 * plot.PANEL_W, plot.PANEL_H)
    pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
    for colour in plot.COLOURS[:3]:  # a line of each series was drawn
        assert (pixels == colour).all(axis=1).sum() > 50
    plot.plot_curves(RECORDS[:1], str(tmp_path / "one.png"))  # one epoch: dots, no error
    assert plot.nice_ticks(0.2, 0.9) == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])


def test_keep_best_checkpoints(tmp_path):
    written = tmp_path / "last.pth"
    score = lambda r: r["val_ensemble"]  # noqa: E731
    for record in RECORDS:  # each epoch's file replaces the last, as atomic_write does
        (tmp_path / "new").write_text(f"epoch {record['epoch']}")
        os.replace(tmp_path / "new", written)
        kept = checkpoints.keep_best(str(tmp_path), RECORDS[:record["epoch"]], 2, str(written), record["epoch"], score)
    assert kept == [4, 1]  # 0.75, then the tie of 0.5 goes to the earlier epoch (timm's order)
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-1.pth", "checkpoint-4.pth"]
    assert (tmp_path / "checkpoint-1.pth").read_text() == "epoch 1"  # later writes replaced, not changed, it
    checkpoints.keep_best(str(tmp_path), RECORDS[:2], 2, str(written), 2, score)  # a resumed run cut to epoch 2
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-1.pth", "checkpoint-2.pth"]


# -- a whole run -----------------------------------------------------------------------------------------

TOOLS = dict(epochs=3, batch_size=4, max_lr=0.01, warmup_batches=2, update_freq=2, num_workers=0, smoothing=0.1,
             mixup=0.8, cutmix=1.0, mixup_switch_prob=0.5, model_ema=True, model_ema_decay=0.5, clip_grad=0.5,
             checkpoint_hist=2)


def datasets():
    return (data.SyntheticDataset(4, size=64, n_per_class=3, seed=1),
            data.SyntheticDataset(4, size=64, n_per_class=2, seed=2))


def test_a_run_with_every_tool_resumes_to_the_same_bits(tmp_path):
    config = train.TrainConfig(**TOOLS)
    whole = tiny_model()
    logged = []
    history = train.train(whole, *datasets(), config, out_dir=str(tmp_path / "a"), log=logged.append)
    assert all("val_ema_ensemble" in r and "lr" in r for r in history)
    assert sum(", EMA " in line and "(best " in line for line in logged) == 3  # each epoch's line
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files[:2] == ["best.pth", "checkpoint-%d.pth" % checkpoints.best_epochs(history, 2, herbs.tools.score)[0]]
    assert len([f for f in files if f.startswith("checkpoint-")]) == 2
    assert {"curves.png", "summary.csv", "metrics.jsonl", "last.pth"} <= set(files)
    last = weights.load_checkpoint(tmp_path / "a" / "last.pth")
    assert set(last["model_ema"]) == set(last["model"]) and last["config"]["model_ema"] is True

    part, first = tiny_model(), train.TrainConfig(**TOOLS)
    real_step = part.train_step

    def stop_in_epoch_3(*args, **kw):
        if part.training_state()["step"] == 2 * 3:  # 3 batches per epoch
            raise KeyboardInterrupt
        return real_step(*args, **kw)

    part.train_step = stop_in_epoch_3
    with pytest.raises(KeyboardInterrupt):
        train.train(part, *datasets(), first, out_dir=str(tmp_path / "b"), log=lambda s: None)
    resumed = tiny_model(seed=7)
    train.train(resumed, *datasets(), first, out_dir=str(tmp_path / "b"), resume=str(tmp_path / "b" / "last.pth"),
                log=lambda s: None)
    again = weights.load_checkpoint(tmp_path / "b" / "last.pth")
    for key in ("model", "model_ema"):
        for name, value in last[key].items():
            np.testing.assert_array_equal(again[key][name], value, err_msg=f"{key} {name}")
    timing = ("seconds", "images_per_second")
    lines = [[{k: v for k, v in json.loads(line).items() if k not in timing}
              for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()] for run in "ab"]
    assert lines[0] == lines[1]
    assert (tmp_path / "a" / "summary.csv").read_text().count("\n") == 4


class NaNImage(data.SyntheticDataset):
    """The training set of `datasets()`, with NaN pixels in sample `bad`."""

    def __init__(self, bad):
        super().__init__(4, size=64, n_per_class=3, seed=1)
        self.bad = bad

    def get(self, index, rng=None):
        image, label = super().get(index, rng)
        if index == self.bad:
            image[0, 5, 5] = np.nan
        return image, label


def test_a_nan_image_is_named_before_mixing():
    """Mixing would spread one image's NaN to its partner: the error names that image alone."""
    config = train.TrainConfig(**dict(TOOLS, epochs=1))
    bad = int(data.DataLoader(NaNImage(None), 4, shuffle=True, seed=config.seed, drop_last=True)._batches(0)[1][2])
    with pytest.raises(train.NonFiniteError, match=f"batch 2 has NaN or infinite pixels in sample {bad}\\. Nothing"):
        train.train(tiny_model(), NaNImage(bad), None, config, log=lambda s: None)


def test_cli_flags_and_config_keys_have_timms_names(tmp_path):
    argv = ["train", "data", "--smoothing", "0.1", "--mixup", "0.8", "--cutmix", "1.0", "--cutmix-minmax", "0.2", "0.8",
            "--mixup-prob", "0.5", "--mixup-switch-prob", "0.4", "--mixup-mode", "batch", "--mixup-off-epoch", "7",
            "--model-ema", "--model-ema-decay", "0.999", "--model-ema-warmup", "--clip-grad", "1.0", "--clip-mode",
            "value", "--checkpoint-hist", "3"]
    want = dict(smoothing=0.1, mixup=0.8, cutmix=1.0, cutmix_minmax=(0.2, 0.8), mixup_prob=0.5, mixup_switch_prob=0.4,
                mixup_mode="batch", mixup_off_epoch=7, model_ema=True, model_ema_decay=0.999, model_ema_warmup=True,
                clip_grad=1.0, clip_mode="value", checkpoint_hist=3)
    a, given = parser().parse_args(argv), cli._explicit(argv)
    settings = config.resolve({}, {key: getattr(a, dest) for dest, key in cli.TRAIN_OPTIONS.items() if dest in given})
    made = config.train_config(settings)
    made.check()
    assert {name: getattr(made, name) for name in tools.OPTIONS} == want
    assert not config.train_config(config.resolve()).mixup_active  # all off by default
    config.save(settings, str(tmp_path / "config.yaml"))  # a run's config.yaml holds them, and reads back
    again = config.resolve(config.load(str(tmp_path / "config.yaml")))
    assert {name: again[name] for name in tools.OPTIONS} == want
    assert config.resolve({"mixup": "5e-1"})["mixup"] == 0.5  # YAML 1.1 reads 5e-1 as text
    with pytest.raises(ValueError, match="model_ema must be true or false"):
        config.resolve({"model_ema": "yes"})
    with pytest.raises(ValueError, match=r"cutmix_minmax must be two numbers \[min, max\] or null"):
        config.resolve({"cutmix_minmax": 0.5})
