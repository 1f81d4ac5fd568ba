"""herbs' training tools against timm's own code (timm 1.0.31): Mixup/cutmix with the same random
stream, ModelEmaV3 on a PyTorch copy of a herbs model, LabelSmoothingCrossEntropy and
SoftTargetCrossEntropy on the objective's terms, and update_summary's columns.

timm's package imports torchvision, whose wheels need another PyTorch than the tests' 2.13 CPU build,
so timm is installed without its dependencies (.ci/run: ``pip install --no-deps timm==1.0.31``) and the
four modules used here, which import only torch and numpy, are loaded from their files."""
import csv
import importlib.util
import pathlib

import numpy as np
import pytest
import torch

import herbs
from herbs import summary
from herbs.cli import DEMO_BACKBONE, DEMO_SELECTS
from herbs.ema import ModelEma
from herbs.mixup import Mixup, mixup_target

TIMM_SPEC = importlib.util.find_spec("timm")
if TIMM_SPEC is None:
    pytest.skip("timm is not installed (pip install --no-deps timm==1.0.31; .ci/run does)", allow_module_level=True)
TIMM_ROOT = pathlib.Path(TIMM_SPEC.submodule_search_locations[0])


def timm_module(path):
    """A module of timm loaded from its file, without timm's package __init__ (which needs torchvision)."""
    spec = importlib.util.spec_from_file_location("timm_" + path.replace("/", "_")[:-3], TIMM_ROOT / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


timm_mixup, timm_ema = timm_module("data/mixup.py"), timm_module("utils/model_ema.py")
timm_loss, timm_summary = timm_module("loss/cross_entropy.py"), timm_module("utils/summary.py")
CLASSES = 5


@pytest.mark.parametrize("settings", [
    dict(mixup_alpha=0.8),
    dict(mixup_alpha=0.0, cutmix_alpha=1.0),
    dict(mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5, prob=0.7),
    dict(mixup_alpha=0.0, cutmix_minmax=(0.2, 0.8), correct_lam=False),
    dict(mixup_alpha=1.0, cutmix_alpha=0.3, switch_prob=0.9, correct_lam=False),
], ids=["mixup", "cutmix", "both", "minmax", "uncorrected"])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_mixup_matches_timm(settings, smoothing):
    rng = np.random.default_rng(0)
    for seed in range(12):
        x = rng.standard_normal((6, 3, 13, 17)).astype(np.float32)
        y = rng.integers(0, CLASSES, 6)
        mine = Mixup(label_smoothing=smoothing, num_classes=CLASSES, **settings)
        got_x, got_t = mine(x, y, np.random.RandomState(seed))
        theirs = timm_mixup.Mixup(label_smoothing=smoothing, num_classes=CLASSES, **settings)
        np.random.seed(seed)  # timm draws from NumPy's global stream
        want_x, want_t = theirs(torch.tensor(x), torch.tensor(y))
        np.testing.assert_array_equal(got_x, want_x.numpy(), err_msg=f"images, seed {seed}")
        np.testing.assert_allclose(got_t, want_t.numpy(), rtol=1e-6, atol=1e-7, err_msg=f"targets, seed {seed}")


def test_smoothed_and_mixed_targets_give_timms_losses():
    """The objective's combiner term with herbs' targets equals timm's LabelSmoothingCrossEntropy
    (smoothing alone) and SoftTargetCrossEntropy (mixup's targets) on the same logits."""
    model = herbs.Model(DEMO_BACKBONE, num_classes=CLASSES, num_selects=DEMO_SELECTS, fpn_size=32)
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((4, 3, 64, 64)).astype(np.float32), np.array([1, 4, 0, 4])
    logits = torch.tensor(model.forward(x)["comb_outs"])
    smooth = model.train_step(x, mixup_target(y, CLASSES, 1.0, 0.1), train=False)["comb"]
    want = timm_loss.LabelSmoothingCrossEntropy(smoothing=0.1)(logits, torch.tensor(y)).item()
    assert smooth == pytest.approx(want, rel=1e-5)
    _, targets = Mixup(mixup_alpha=0.8, label_smoothing=0.1, num_classes=CLASSES)(x, y, np.random.RandomState(3))
    mixed = model.train_step(x, targets, train=False)["comb"]  # the images as given: the same logits
    want = timm_loss.SoftTargetCrossEntropy()(logits, torch.tensor(targets)).item()
    assert mixed == pytest.approx(want, rel=1e-5)


class Mirror(torch.nn.Module):
    """A PyTorch module holding a herbs model's state dict (names with '.' as '__')."""

    def __init__(self, state):
        super().__init__()
        for name, value in state.items():
            if name.endswith(("running_mean", "running_var", "num_batches_tracked")):
                self.register_buffer(name.replace(".", "__"), torch.tensor(value))
            else:
                self.register_parameter(name.replace(".", "__"), torch.nn.Parameter(torch.tensor(value)))

    def load(self, state):
        with torch.no_grad():
            for name, value in self.state_dict().items():
                value.copy_(torch.tensor(state[name.replace("__", ".")]))


@pytest.mark.parametrize("warmup", [False, True])
def test_ema_matches_timm_model_ema_v3(warmup):
    model = herbs.Model(DEMO_BACKBONE, num_classes=CLASSES, num_selects=DEMO_SELECTS, fpn_size=32)
    mirror = Mirror(model.state_dict())
    theirs = timm_ema.ModelEmaV3(mirror, decay=0.99, use_warmup=warmup)
    mine = ModelEma(model, decay=0.99, use_warmup=warmup)
    rng = np.random.default_rng(2)
    for step in range(1, 7):
        params = model.flat_parameters()
        params += rng.standard_normal(params.size).astype(np.float32) * 0.05 * (params != 0)
        for name, value in model.named_buffers():
            counter = name.endswith("num_batches_tracked")
            value += 1.0 if counter else rng.uniform(0, 0.1, value.shape).astype(np.float32)
        mirror.load(model.state_dict())
        theirs.update(mirror, step=step)
        mine.update(model, step=step)
        assert mine.get_decay(step) == theirs.get_decay(step)
    want = {name.replace("__", "."): value.numpy() for name, value in theirs.module.state_dict().items()}
    got = mine.state_dict(model)
    assert set(got) == set(want)
    for name, value in got.items():
        assert value.dtype == want[name].dtype, name
        # torch's lerp fuses its multiply-add: float32 rounding apart, ~1 ulp per update
        np.testing.assert_allclose(value, want[name], rtol=1e-6, atol=1e-7, err_msg=name)


def test_summary_columns_are_timms(tmp_path):
    """timm's update_summary on the numbers timm's train.py would log, and herbs' summary.csv row of
    the same epoch: the same columns (epoch, train_loss, eval_top1, lr) with the same values."""
    record = {"epoch": 3, "loss_total": 1.25, "val_ensemble": 0.8125, "lr": 0.002, "val_count": 16}
    timm_summary.update_summary(3, {"loss": 1.25}, {"top1": 81.25}, str(tmp_path / "timm.csv"), lr=0.002)
    with open(tmp_path / "timm.csv", newline="") as f:
        theirs = next(csv.DictReader(f))
    ours = {k: str(v) for k, v in summary.summary_row(record).items()}
    assert ours == theirs
