"""Config files: the HERBS release's configs/config.yaml read with the release's meaning, checked,
resolved and written back; `herbs train --config` end to end with the release's learning-rate
schedule and loss weights, written here from the release's formulas (SPEC.md §4-5)."""
import json
import math
import sys
import types

import numpy as np
import pytest

yaml = pytest.importorskip("yaml", reason="config files need PyYAML (pip install 'herbs[config]')")

import herbs  # noqa: E402
from herbs import cli, config, data, optim, weights  # noqa: E402

# The release's configs/config.yaml, key for key and value for value.
RELEASE_CONFIG = """\
project_name: FGVC-HERBS
notes: 'no inverse'
exp_name: basline
use_wandb: True
wandb_entity: poyung
train_root: ./CUB200-2011/train/
val_root: ./CUB200-2011/test/
data_size: 384
num_workers: 2
batch_size: 8
model_name: swin-t
pretrained: ~
optimizer: SGD
max_lr: 0.0005
wdecay: 0.0003
max_epochs: 80
warmup_batchs: 1500
use_amp: True
use_fpn: True
fpn_size: 1536
use_selection: True
num_classes: 200
num_selects:
  layer1: 256
  layer2: 128
  layer3: 64
  layer4: 32
use_combiner: True
lambda_b0: 1.375
lambda_b: 0.3
lambda_s: 0.0
lambda_n: 5.0
lambda_c: 1.0
update_freq: 4
log_freq: 100
eval_freq: 10
temperature: 64
"""

SMALL = {"backbone": "swin", "img_size": 32, "patch_size": 2, "embed_dim": 8, "depths": [1, 1, 1, 1],
         "num_heads": [1, 1, 2, 2], "window_size": 2, "drop_path_rate": 0.0}


def release_schedule(max_lr, batches_per_epoch, epochs, warmup):
    """The release's learning rate per batch: linear warm-up from 1e-9, then a cosine counted from the
    end of warm-up over the whole run's length, from max_lr down to 1e-12."""
    total = epochs * batches_per_epoch
    rates = [1e-9 + (max_lr - 1e-9) * i / (warmup - 1) for i in range(warmup)] if warmup > 1 else [1e-9] * warmup
    return rates + [1e-12 + 0.5 * (max_lr - 1e-12) * (1 + math.cos(math.pi * t / total)) for t in range(total - warmup)]


def test_the_release_config_means_what_it_means_there(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(RELEASE_CONFIG)
    given = config.load(str(path))
    settings = config.resolve(given)
    assert config.model_args(settings, num_classes=4) == {
        "backbone": "swin_large_patch4_window12_384", "num_classes": 200, "seed": 0, "use_fpn": True,
        "use_selection": True, "use_combiner": True, "img_size": 384, "fpn_size": 1536,
        "num_selects": [256, 128, 64, 32]}
    train_config = config.train_config(settings)
    assert (train_config.epochs, train_config.batch_size, train_config.max_lr, train_config.warmup_batches,
            train_config.update_freq, train_config.optimizer, train_config.weight_decay, train_config.temperature,
            train_config.num_workers, train_config.eval_freq) == (80, 8, 5e-4, 1500, 4, "sgd", 3e-4, 64, 2, 10)
    assert config.loss_options(settings) == {"lambda_r": 1.375, "lambda_b": 0.3, "lambda_s": 0.0, "lambda_n": 5.0,
                                             "lambda_c": 1.0}
    assert config.run_folder(settings, "runs/herbs") == "records/FGVC-HERBS/basline"
    notes = config.notices(settings, given)
    ignored = [n for n in notes if "do not apply" in n]
    assert len(ignored) == 1 and "log_freq" in ignored[0] and "eval_freq" not in ignored[0]
    assert train_config.precision == "bf16" and not any("use_amp" in n for n in notes)  # use_amp: True
    assert any("pretrained is not set" in n for n in notes)


def test_bad_files_and_values_are_errors_that_name_them(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(RELEASE_CONFIG + "lr_scheduler: step\nsched: cosine\n")  # (mixup is herbs' key: timm's tool)
    with pytest.raises(ValueError, match=r"c.yaml: unknown key\(s\) lr_scheduler, sched"):
        config.load(str(path))
    path.write_text("- a list\n")
    with pytest.raises(ValueError, match="one mapping"):
        config.load(str(path))
    with pytest.raises(ValueError, match="max_lr must be a number > 0"):
        config.resolve({"max_lr": -1})
    with pytest.raises(ValueError, match="use_amp must be true or false"):
        config.resolve({"use_amp": "yes"})
    with pytest.raises(ValueError, match="unknown backbone 'convnext'"):
        config.resolve({"model_name": "convnext"})
    with pytest.raises(ValueError, match="num_selects as a mapping needs the keys layer1..layer4"):
        config.resolve({"num_selects": {"layer1": 2}})
    # YAML 1.1 reads 5e-4 as text: it is a number here, as the user meant
    assert config.resolve({"max_lr": "5e-4", "optimizer": "adamw"})["max_lr"] == 5e-4


def test_a_saved_config_reads_back_to_the_same_settings(tmp_path):
    settings = config.resolve({"model_name": SMALL, "max_lr": 1e-9, "wdecay": 0.0, "notes": 'a "quoted" é',
                               "num_selects": [8, 4, 2, 2], "use_amp": True, "train_root": "x"})
    config.save(settings, str(tmp_path / "config.yaml"))
    assert config.resolve(config.load(str(tmp_path / "config.yaml"))) == settings
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["max_lr"] == 1e-9  # a float in YAML 1.1 too


def test_the_loss_is_the_release_sum_of_weighted_terms():
    """total = lambda_b0·refinement + lambda_s·selected + lambda_n·dropped + lambda_b·layers + lambda_c·combiner,
    with the weights of a config file (none of them the defaults)."""
    settings = config.resolve({"model_name": SMALL, "lambda_b0": 2.0, "lambda_b": 0.7, "lambda_s": 0.5,
                               "lambda_n": 3.0, "lambda_c": 1.5, "num_selects": [48, 12, 2, 2]})
    model = herbs.Model(**config.model_args(settings, num_classes=3))
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    y = np.array([0, 2])
    unit = model.train_step(x, y, train=False, lambda_r=1, lambda_b=1, lambda_s=1, lambda_n=1, lambda_c=1)
    model.zero_grad()
    weighted = model.train_step(x, y, train=False, **config.loss_options(settings))
    expected = (2.0 * unit["refine"] + 0.5 * unit["select"] + 3.0 * unit["drop"] + 0.7 * unit["layer"]
                + 1.5 * unit["comb"])
    assert weighted["total"] == pytest.approx(expected, rel=1e-6)


def synthetic_folder(root, n_per_class, seed):
    dataset = data.SyntheticDataset(3, size=40, n_per_class=n_per_class, seed=seed)
    for i in range(len(dataset)):
        folder = root / dataset.classes[int(dataset.labels[i])]
        folder.mkdir(parents=True, exist_ok=True)
        dataset.load_image(i).save(folder / f"{i}.png")
    return root


def test_train_with_a_config_file_follows_the_release_schedule(tmp_path, monkeypatch, capsys):
    """A small release-style file: the learning rate of every optimiser step is the release's for
    the group's last batch, command-line options override the file, the run writes its resolved
    config.yaml, and evaluate and predict then need only the run folder."""
    train_root = synthetic_folder(tmp_path / "train", 4, seed=1)
    val_root = synthetic_folder(tmp_path / "val", 1, seed=2)
    small = dict(yaml.safe_load(RELEASE_CONFIG), train_root=str(train_root), val_root=str(val_root), data_size=32,
                 model_name=SMALL, num_classes=None, fpn_size=None, use_amp=False, use_wandb=False,
                 num_selects={"layer1": 48, "layer2": 12, "layer3": 2, "layer4": 2}, batch_size=4, max_epochs=5,
                 warmup_batchs=2, update_freq=2, max_lr=0.01, num_workers=0, project_name="p", exp_name="e")
    (tmp_path / "small.yaml").write_text(yaml.safe_dump(small))
    rates = []
    monkeypatch.setattr(optim.SGD, "step", lambda self, lr=None: rates.append(lr))  # the schedule, not the update
    monkeypatch.chdir(tmp_path)
    cli.main(["train", "--config", "small.yaml", "--epochs", "2", "--seed", "3"])
    out = capsys.readouterr()

    batches = 12 // 4  # 3 per epoch, optimiser steps after batches 2 and 3 of each
    schedule = release_schedule(0.01, batches, 2, 2)
    assert rates == pytest.approx([schedule[e * batches + i] for e in range(2) for i in (1, 2)], rel=1e-6)
    run = tmp_path / "records" / "p" / "e"
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["max_epochs"] == 2 and saved["seed"] == 3 and saved["warmup_batchs"] == 2  # options over the file
    assert saved["num_classes"] == 3 and saved["model_name"] == SMALL and saved["train_root"] == str(train_root)
    assert "epoch 2/2: loss" in out.out and "val top-1" in out.out and "ETA 0:" in out.out  # epoch 1's line
    assert "batch/s" in out.err
    assert out.err.count("do not apply") == 1 and "warm-up" not in out.out

    cli.main(["evaluate", str(run), "--workers", "0"])
    assert capsys.readouterr().out.startswith("3 images, 3 classes")  # the run's val_root
    cli.main(["predict", str(run), str(val_root), "--format", "json", "--top", "2"])
    results = json.loads(capsys.readouterr().out)
    assert len(results) == 3 and all(len(r["top"]) == 2 for r in results)
    assert {r["top"][0]["class"] for r in results} <= set(data.SyntheticDataset(3).classes)


def test_use_wandb_logs_each_epoch_or_says_it_cannot(tmp_path, monkeypatch, capsys):
    train_root = synthetic_folder(tmp_path / "train", 2, seed=1)
    args = ["train", str(train_root), "--backbone", json.dumps(SMALL), "--num-selects", "48", "12", "2", "2",
            "--img-size", "32", "--epochs", "2", "--batch-size", "3", "--warmup", "1", "--workers", "0",
            "--config", str(tmp_path / "w.yaml"), "--out", str(tmp_path / "run")]
    (tmp_path / "w.yaml").write_text("use_wandb: true\nproject_name: p\nexp_name: e\nwandb_entity: me\n")
    calls = []

    class Run:
        def log(self, metrics, step):
            calls.append(("log", step, metrics["epoch"]))

        def finish(self):
            calls.append(("finish",))

    def init(**kw):
        calls.append(("init", kw["entity"], kw["project"], kw["name"]))
        return Run()

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))
    cli.main(args)
    assert calls == [("init", "me", "p", "e"), ("log", 1, 1), ("log", 2, 2), ("finish",)]
    monkeypatch.setitem(sys.modules, "wandb", None)  # not installed: import fails
    cli.main(args)
    assert "wandb is not installed" in capsys.readouterr().out


def test_pretrained_is_a_whole_checkpoint_or_a_backbone(tmp_path):
    """The release's pretrained is a whole model's checkpoint ({"model": ...}); a backbone's file loads the
    backbone alone, leaving the head as it was."""
    settings = config.resolve({"model_name": SMALL, "num_selects": [48, 12, 2, 2]})
    trained, fresh = (herbs.Model(**dict(config.model_args(settings, 3), seed=s)) for s in (1, 2))
    state = trained.state_dict()
    weights.save_file({"model": state, "optimizer": {}, "epoch": 3}, str(tmp_path / "release.pth"))
    assert config.load_start_weights(fresh, str(tmp_path / "release.pth")).startswith("the whole model")
    assert all(np.array_equal(v, state[k]) for k, v in fresh.state_dict().items())

    fresh = herbs.Model(**dict(config.model_args(settings, 3), seed=2))
    head_before = {k: v for k, v in fresh.state_dict().items() if not k.startswith("backbone.")}
    weights.save_file({k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")},
                      str(tmp_path / "backbone.npz"))
    assert config.load_start_weights(fresh, str(tmp_path / "backbone.npz")) == "the backbone's weights"
    after = fresh.state_dict()
    assert all(np.array_equal(after[k], v) for k, v in state.items() if k.startswith("backbone."))
    assert all(np.array_equal(after[k], v) for k, v in head_before.items())


def test_the_release_file_unchanged_is_accepted_up_to_its_data(tmp_path, monkeypatch, capsys):
    """Run where the release's checkout would be, without its CUB folders: the file itself passes, the
    warnings come once each, and what stops the run is the missing data, named."""
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "config.yaml").write_text(RELEASE_CONFIG)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(SystemExit):
        cli.main(["train", "--config", "configs/config.yaml"])
    err = capsys.readouterr().err
    assert err.count("warning: ") == 2  # log_freq; pretrained unset
    assert "herbs train: " in err and "CUB200-2011/train" in err


def test_use_amp_is_bf16_training_unless_precision_says_otherwise():
    """use_amp trains in bf16 (TrainConfig.precision), unsaid; herbs' precision key wins over it;
    neither: None (a resumed run's precision, else fp32)."""
    settings = config.resolve({"use_amp": True})
    assert config.train_config(settings).precision == "bf16"
    assert config.train_config(config.resolve({"use_amp": True, "precision": "fp32"})).precision == "fp32"
    assert config.train_config(config.resolve({"precision": "bf16"})).precision == "bf16"
    assert config.train_config(config.resolve({"use_amp": False})).precision is None
    assert not any("use_amp" in n for n in config.notices(settings, {"use_amp": True}))
    with pytest.raises(ValueError, match="precision must be fp32, bf16 or null"):
        config.resolve({"precision": "fp16"})


def test_every_release_model_name_is_a_herbs_backbone():
    """The release's MODEL_GETTER names (models/builder.py): swin-t, resnet50, vit, efficient."""
    import herbs
    assert set(config.RELEASE_MODELS) == {"swin-t", "resnet50", "vit", "efficient"}
    for name in config.RELEASE_MODELS:
        assert config.backbone(config.resolve({"model_name": name})) in herbs.BACKBONES
