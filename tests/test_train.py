"""The training loop's bookkeeping with a stand-in model: accumulation groups, learning rate
per batch, temperature per epoch, checkpoints that torch.load reads, resuming to the same
numbers, and the run folder a killed run leaves. (The real model's training step is tested
against PyTorch elsewhere; resuming it exactly in tests/test_resume.py.)"""
import json

import numpy as np
import pytest
import torch

from herbs import data, train, weights


class QuadraticModel:
    """loss = ½|p − target|² per batch; records what the loop hands it."""

    def __init__(self, n=6):
        self.params = np.linspace(-1, 1, n).astype(np.float32)
        self.grads = np.zeros(n, np.float32)
        self.calls = []
        self.step = 0  # stands for the engine's count of training passes
        self.precision = "fp32"  # set by the loop for its run (TrainConfig.precision)

    def flat_parameters(self):
        return self.params

    def flat_gradients(self):
        return self.grads

    def train_step(self, images, labels, temperature, accumulation_steps):
        loss_scale = 1.0 / accumulation_steps
        target = labels.mean() * np.ones_like(self.params)
        self.calls.append({"temperature": temperature, "scale": loss_scale, "params": self.params.copy(),
                           "images": images.copy()})
        self.grads += loss_scale * (self.params - target)
        self.step += 1
        return {"total": float(0.5 * ((self.params - target) ** 2).sum()), "comb": 0.0}

    def zero_grad(self):
        self.grads[:] = 0

    def forward(self, images, train=False):
        logits = np.zeros((len(images), 3), np.float32)
        logits[:, 0] = 1
        return {"comb_outs": logits}

    def state_dict(self):
        return {"p": self.params.copy()}

    def load_state_dict(self, sd):
        self.params[:] = sd["p"]

    def training_state(self):
        return {"seed": 0, "step": self.step}

    def load_training_state(self, state):
        self.step = state["step"]


def dataset(n=10):
    return data.SyntheticDataset(num_classes=3, size=8, n_per_class=n // 3 + 1, seed=1)


def config(**kw):
    base = dict(epochs=2, batch_size=2, max_lr=0.1, warmup_batches=3, update_freq=3, num_workers=0, seed=4)
    return train.TrainConfig(**{**base, **kw})


def test_resume_refuses_other_settings(tmp_path):
    """A resumed run must continue the checkpoint's run: other settings (the config, the saved
    checkpoint_extra entries such as how the model was built) are refused by name; num_workers may
    change, and more epochs are said, not refused."""
    extra = {"model_args": {"backbone": "tiny", "num_selects": (4, 2)}}
    train.train(QuadraticModel(), dataset(), config=config(epochs=1), out_dir=str(tmp_path), log=lambda s: None,
                checkpoint_extra=extra)
    last = str(tmp_path / "last.pth")
    for changed, words in [({"seed": 1}, "seed 4 in the checkpoint, 1 now"),
                           ({"max_lr": 0.5}, "max_lr"), ({"batch_size": 3}, "batch_size")]:
        with pytest.raises(ValueError, match=words):
            train.train(QuadraticModel(), dataset(), config=config(epochs=2, **changed), out_dir=str(tmp_path),
                        resume=last, log=lambda s: None, checkpoint_extra=extra)
    with pytest.raises(ValueError, match="model_args"):
        train.train(QuadraticModel(), dataset(), config=config(epochs=2), out_dir=str(tmp_path), resume=last,
                    log=lambda s: None, checkpoint_extra={"model_args": {"backbone": "other", "num_selects": (4, 2)}})
    said = []
    train.train(QuadraticModel(), dataset(), config=config(epochs=2, num_workers=1), out_dir=str(tmp_path),
                resume=last, log=said.append, checkpoint_extra=extra)  # tuples saved as lists still match
    assert any("1 epochs, now 2" in line for line in said)


def test_accumulation_groups_and_schedules():
    model = QuadraticModel()
    cfg = config(epochs=21, warmup_batches=0)
    history = train.train(model, dataset(), config=cfg, log=lambda s: None)
    batches = len(dataset()) // 2  # drop_last
    assert len(model.calls) == 21 * batches and len(history) == 21
    per_epoch = [model.calls[e * batches:(e + 1) * batches] for e in range(21)]
    assert [c[0]["temperature"] for c in per_epoch][::10] == [64.0, 32.0, 16.0]
    scales = [c["scale"] for c in per_epoch[0]]
    # groups of update_freq=3; the epoch's last group has what is left (6 batches -> 3+3, 4 -> 3+1)
    groups = [3] * (batches // 3) + ([batches % 3] if batches % 3 else [])
    assert scales == pytest.approx([1 / g for g in groups for _ in range(g)])
    # parameters move only after a group's last batch
    moved = [not np.array_equal(a["params"], b["params"]) for a, b in zip(model.calls, model.calls[1:])]
    ends = np.cumsum(groups) - 1
    assert [i for i, m in enumerate(moved[:batches - 1]) if m] == list(ends[:-1])


def test_checkpoints_resume_to_the_same_numbers(tmp_path):
    straight = QuadraticModel()
    train.train(straight, dataset(), config=config(epochs=3), out_dir=str(tmp_path / "a"), log=lambda s: None)

    class Crash(Exception):
        pass

    crashing = QuadraticModel()
    batches = len(dataset()) // 2
    original_step = crashing.train_step

    def step_then_crash(*args, **kw):  # dies in the middle of epoch 2, after epoch 1's checkpoint
        if len(crashing.calls) == batches + 2:
            raise Crash()
        return original_step(*args, **kw)

    crashing.train_step = step_then_crash
    with pytest.raises(Crash):
        train.train(crashing, dataset(), config=config(epochs=3), out_dir=str(tmp_path / "b"), log=lambda s: None)
    resumed = QuadraticModel()
    train.train(resumed, dataset(), config=config(epochs=3), out_dir=str(tmp_path / "b"),
                resume=str(tmp_path / "b" / "last.pth"), log=lambda s: None)
    np.testing.assert_array_equal(resumed.params, straight.params)
    np.testing.assert_array_equal(resumed.calls[-1]["images"], straight.calls[-1]["images"])
    assert resumed.step == straight.step == 3 * batches

    saved = torch.load(tmp_path / "a" / "last.pth", weights_only=True)  # the release's format, and ours
    assert saved["epoch"] == 3 and sorted(saved) == ["best", "class_names", "config", "epoch", "model", "optimizer",
                                                     "training_state"]
    assert saved["class_names"] == dataset().classes
    assert saved["training_state"] == {"seed": 0, "step": 3 * batches}
    np.testing.assert_array_equal(saved["model"]["p"].numpy(), straight.params)
    lines = (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]
    best = torch.load(tmp_path / "a" / "best.pth", weights_only=True)  # the model without the optimizer's state
    assert "optimizer" not in best and sorted(best) == sorted(set(saved) - {"optimizer"})
    with pytest.raises(ValueError, match="no optimizer state.*last.pth"):
        train.train(QuadraticModel(), dataset(), config=config(epochs=3), resume=str(tmp_path / "a" / "best.pth"),
                    log=lambda s: None)


def test_a_run_cleans_what_a_killed_run_left(tmp_path):
    """Temporary files of half-written checkpoints go, and metrics.jsonl keeps one line per epoch up to
    the checkpoint's: not the line of an epoch whose checkpoint was never written, nor a line cut short."""
    train.train(QuadraticModel(), dataset(), config=config(epochs=2), out_dir=str(tmp_path), log=lambda s: None)
    metrics = tmp_path / "metrics.jsonl"
    lines = metrics.read_text().splitlines(keepends=True)
    left = [".last.pth.0123abcd.tmp", ".best.pth.89abcdef.tmp", ".metrics.jsonl.00000000.tmp"]
    kept = [".other.pth.0123abcd.tmp", "notes.txt"]
    for name in left + kept:
        (tmp_path / name).write_bytes(b"x")
    third = lines[1].replace('"epoch": 2', '"epoch": 3')  # an epoch past the checkpoint's
    second_again = lines[1].replace('"epoch": 2', '"epoch": 2, "x": 1')  # an epoch twice: the later line counts
    metrics.write_text(lines[0] + lines[1] + third + second_again + '{"epoch": 4, "loss')  # and a line cut short
    messages = []
    resumed = QuadraticModel()
    train.train(resumed, dataset(), config=config(epochs=3), out_dir=str(tmp_path), resume=str(tmp_path / "last.pth"),
                log=messages.append)
    run_files = ["best.pth", "last.pth", "metrics.jsonl", "summary.csv", "curves.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept + run_files)
    assert [json.loads(line)["epoch"] for line in metrics.read_text().splitlines()] == [1, 2, 3]
    assert metrics.read_text().splitlines(keepends=True)[:2] == [lines[0], second_again]
    assert any("removed 3 temporary file(s)" in m for m in messages)
    assert any("3 line(s) removed, 2 kept (epochs up to 2)" in m for m in messages)

    train.train(QuadraticModel(), dataset(), config=config(epochs=1), out_dir=str(tmp_path), log=lambda s: None)
    assert [json.loads(line)["epoch"] for line in metrics.read_text().splitlines()] == [1]  # a new run starts anew
    assert weights.load_checkpoint(tmp_path / "last.pth")["epoch"] == 1


def test_validation_metrics_are_recorded():
    history = train.train(QuadraticModel(), dataset(), dataset(), config=config(epochs=1), log=lambda s: None)
    assert history[0]["val_count"] == len(dataset()) and "val_ensemble" in history[0]


def test_bad_configuration():
    with pytest.raises(ValueError, match="update_freq"):
        train.train(QuadraticModel(), dataset(), config=config(update_freq=0))
    with pytest.raises(ValueError, match="optimizer"):
        train.train(QuadraticModel(), dataset(), config=config(optimizer="lamb"))
    with pytest.raises(ValueError, match="fewer than one batch"):
        train.train(QuadraticModel(), dataset(), config=config(batch_size=100))


def test_non_finite_loss_stops_with_a_clear_error():
    model = QuadraticModel()
    model.params[0] = np.inf
    with pytest.raises(train.NonFiniteError, match="optimiser step 1 \\(epoch 1, batches 1-3 of 6, samples .*"
                                                   "batch 1's loss is inf") as caught:
        train.train(model, dataset(), config=config(), log=lambda s: None)
    assert len(caught.value.indices) == 6 and model.params[0] == np.inf and np.isfinite(model.params[1:]).all()


def release_evaluates(epochs, eval_freq):
    """The epochs (from 0) after which the release's main.py evaluates: its eval_freq_schedule sets
    args.eval_freq to 2 from 80% of the run and to 1 from 90% (95%), before the test of each epoch."""
    done = []
    for epoch in range(epochs):
        if epoch >= epochs * 0.95 or epoch >= epochs * 0.9:
            eval_freq = 1
        elif epoch >= epochs * 0.8:
            eval_freq = 2
        if epoch == 0 or (epoch + 1) % eval_freq == 0:
            done.append(epoch)
    return done


@pytest.mark.parametrize("epochs, eval_freq", [(80, 10), (50, 3), (7, 4), (1, 5)])
def test_evaluation_follows_the_release_eval_freq(epochs, eval_freq):
    assert [e for e in range(epochs) if train.evaluates_after(e, epochs, eval_freq)] == \
        release_evaluates(epochs, eval_freq)
    assert all(train.evaluates_after(e, epochs, 1) for e in range(epochs))  # herbs' default: every epoch


def test_epochs_without_evaluation_never_become_best(tmp_path):
    history = train.train(QuadraticModel(), dataset(), dataset(4), config=config(epochs=4, eval_freq=3),
                          out_dir=str(tmp_path), log=lambda s: None)
    assert ["val_ensemble" in h for h in history] == [True, False, True, False]
    best = torch.load(tmp_path / "best.pth", weights_only=True)
    assert best["epoch"] in (1, 3)


def test_a_long_warmup_is_said_and_each_epoch_is_one_line(tmp_path):
    said = []
    train.train(QuadraticModel(), dataset(), config=config(epochs=2, warmup_batches=7), log=said.append)
    assert said[0].startswith("warning: warmup_batches 7 is 58% of this run's 12 batches: the learning rate reaches max_lr at batch 7")
    assert said[1].startswith("epoch 1/2: loss ") and ", ETA 0:" in said[1]
    assert said[2].startswith("epoch 2/2: loss ") and "ETA" not in said[2]
