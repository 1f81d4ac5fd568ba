"""Exact resume on the real engine: the net's training state (the seed and step that key the dropout and
drop-path masks) round-trips through Model and checkpoints, and a training run stopped mid-way — by an
exception, or by SIGKILL at random moments and in the middle of writing a checkpoint (subprocesses of
tests/resume_child.py) — and resumed from last.pth ends with the same bits as an uninterrupted run:
every parameter and buffer, the optimiser, every metrics line. Dropout and drop path are on
throughout (with both at 0 a resumed net that replays the first masks goes unnoticed)."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import herbs
from herbs import _C, data, train, weights
from herbs.cli import DEMO_BACKBONE, DEMO_SELECTS

MODELS = {  # the demo's Swin with drop path, a tiny ResNet; the combiner's dropout 0.1 in both
    "swin": (dict(DEMO_BACKBONE, drop_path_rate=0.1), DEMO_SELECTS),
    "resnet": ({"backbone": "resnet", "img_size": 64, "depths": (1, 1, 1, 1), "width": 8}, (100, 24, 6, 2)),
}
CONFIG = train.TrainConfig(epochs=4, batch_size=4, max_lr=0.01, warmup_batches=2, update_freq=2, num_workers=0)
TIMING = ("seconds", "images_per_second")  # the only entries of a metrics line that may differ
CHILD = os.path.join(os.path.dirname(__file__), "resume_child.py")


def make(kind):
    backbone, selects = MODELS[kind]
    return herbs.Model(backbone, num_classes=3, num_selects=selects, fpn_size=32, dropout=0.1, seed=0)


def datasets():
    """(training set of 9 images: 2 batches per epoch, validation set of 6)"""
    return (data.SyntheticDataset(3, size=64, n_per_class=3, seed=1),
            data.SyntheticDataset(3, size=64, n_per_class=2, seed=2))


def run(model, out_dir, resume=None, stop_at_step=None):
    """train() into out_dir; with stop_at_step, stopped by an exception at that train_step call."""
    if stop_at_step is not None:
        real_step = model.train_step

        def train_step(*args, **kw):
            if model.training_state()["step"] == stop_at_step:
                raise KeyboardInterrupt
            return real_step(*args, **kw)

        model.train_step = train_step
    return train.train(model, *datasets(), CONFIG, out_dir=str(out_dir), resume=resume, log=lambda s: None)


def metrics(folder):
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in lines]


def assert_same_checkpoint(path, reference):
    a, b = weights.load_checkpoint(path), weights.load_checkpoint(reference)
    assert a.keys() == b.keys()
    for part in ("model", "optimizer") if "optimizer" in a else ("model",):  # best.pth holds no optimizer
        assert a[part].keys() == b[part].keys()
        for name in a[part]:
            np.testing.assert_array_equal(a[part][name], b[part][name], err_msg=f"{path}: {part} {name}")
    assert {k: v for k, v in a.items() if k not in ("model", "optimizer")} == \
        {k: v for k, v in b.items() if k not in ("model", "optimizer")}


def test_the_step_keys_the_masks():
    """train-mode passes count, eval ones do not; a net set to a step draws that step's masks."""
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    y = np.array([0, 2])
    a = make("swin")
    assert a.training_state() == {"seed": 0, "step": 0}
    first, second = a.train_step(x, y), a.train_step(x, y)  # same parameters (no optimiser step), new masks
    a.forward(x)
    a.forward(x, train=True)
    assert a.training_state() == {"seed": 0, "step": 3}
    assert first["total"] != second["total"]
    b = make("swin")
    b.load_training_state({"seed": 0, "step": 1})
    assert b.train_step(x, y) == second
    b.load_training_state({"seed": 5, "step": 1})
    assert b.train_step(x, y) != second and b.training_state() == {"seed": 5, "step": 2}
    a.load_training_state({"seed": np.uint64(2 ** 64 - 1), "step": np.int64(7)})
    assert a.training_state() == {"seed": 2 ** 64 - 1, "step": 7}


@pytest.mark.parametrize("state, message", [
    ({"seed": 0}, "keys 'seed' and 'step'"),
    ({"seed": 0, "step": 1, "epoch": 2}, "keys 'seed' and 'step'"),
    ([0, 1], "a mapping"),
    ({"seed": 0, "step": -1}, "'step' must be an integer"),
    ({"seed": 2 ** 64, "step": 0}, "'seed' must be an integer"),
    ({"seed": 0, "step": 1.0}, "'step' must be an integer"),
    ({"seed": True, "step": 0}, "'seed' must be an integer"),
])
def test_bad_training_states_are_refused(state, message):
    model = make("resnet")
    with pytest.raises(ValueError, match=message):
        model.load_training_state(state)
    assert model.training_state() == {"seed": 0, "step": 0}


def test_the_binding_checks_step_and_seed():
    net = _C.Net("herbs", {"backbone": "resnet", "img_size": 64, "depths": (1, 1, 1, 1), "width": 8,
                           "num_classes": 3, "num_selects": (100, 24, 6, 2)}, 3)
    assert (net.seed, net.step) == (3, 0)
    net.step = 2 ** 64 - 1
    assert (net.seed, net.step) == (3, 2 ** 64 - 1)
    for bad in (-1, 2 ** 64, 1.5, "1", None, False):
        with pytest.raises(ValueError, match="step must be an integer in"):
            net.step = bad
    with pytest.raises(TypeError, match="cannot delete"):
        del net.seed
    blank = _C.Net.__new__(_C.Net)
    with pytest.raises(RuntimeError, match="not initialised"):
        blank.step
    with pytest.raises(RuntimeError, match="not initialised"):
        blank.seed = 1


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """{kind: (folder, model)} of runs of CONFIG.epochs epochs from a fresh model."""
    runs = {}
    for kind in MODELS:
        folder = tmp_path_factory.mktemp(f"uninterrupted_{kind}")
        model = make(kind)
        run(model, folder)
        runs[kind] = folder, model
    return runs


@pytest.mark.parametrize("kind", MODELS)
def test_a_stopped_run_resumes_to_the_same_bits(kind, uninterrupted, tmp_path):
    reference, straight = uninterrupted[kind]
    with pytest.raises(KeyboardInterrupt):  # in epoch 3 of 4, after its first batch
        run(make(kind), tmp_path, stop_at_step=2 * 2 + 1)
    assert weights.load_checkpoint(tmp_path / "last.pth")["epoch"] == 2
    resumed = make(kind)
    history = run(resumed, tmp_path, resume=str(tmp_path / "last.pth"))
    assert [record["epoch"] for record in history] == [3, 4]
    assert resumed.training_state() == straight.training_state() == {"seed": 0, "step": 8}
    a, b = resumed.state_dict(), straight.state_dict()
    assert a.keys() == b.keys()
    for name in a:  # every parameter and BatchNorm buffer
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert metrics(tmp_path) == metrics(reference)
    assert_same_checkpoint(tmp_path / "last.pth", reference / "last.pth")
    assert_same_checkpoint(tmp_path / "best.pth", reference / "best.pth")


def test_a_checkpoint_without_training_state_resumes_with_a_warning(uninterrupted, tmp_path):
    """An older herbs' last.pth: the step is taken as that of a run from a fresh model (one pass per
    batch), which this run is, so it still ends with the same bits."""
    reference, straight = uninterrupted["swin"]
    with pytest.raises(KeyboardInterrupt):
        run(make("swin"), tmp_path, stop_at_step=2 * 2)
    old = weights.load_checkpoint(tmp_path / "last.pth")
    del old["training_state"]
    weights.save_file(old, tmp_path / "last.pth", format="torch")
    resumed = make("swin")
    with pytest.warns(UserWarning, match="has no training_state .* continue from step 4"):
        run(resumed, tmp_path, resume=str(tmp_path / "last.pth"))
    a, b = resumed.state_dict(), straight.state_dict()
    for name in b:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert metrics(tmp_path) == metrics(reference)


# --- SIGKILL: a few trials at random moments and in the middle of writing a checkpoint ---------------

def start_child(out, *kill):
    herbs_root = os.path.dirname(os.path.dirname(herbs.__file__))  # the herbs that this test imports
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([herbs_root, os.environ.get("PYTHONPATH", "")]))
    args = [sys.executable, CHILD, str(out), *map(str, kill)]
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish_child(child):
    """(return code, stderr) of a child after its end; a failure (not a kill) shows its stderr."""
    _, err = child.communicate(timeout=300)
    assert child.returncode in (0, -signal.SIGKILL), err
    return child.returncode, err


def run_child(out, *kill):
    """A child run to its end, or to the kill that `kill` (file, nth write, bytes) asks of it:
    (return code, its last line of output: the atomic writes per file name when it ended)."""
    child = start_child(out, *kill)
    lines = child.stdout.readlines()
    return finish_child(child)[0], lines[-1] if lines else ""


def run_child_killed_after(out, delay):
    """The return code of a child killed `delay` seconds after it started training (0 if it ended
    before), and how many seconds it trained."""
    child = start_child(out)
    if child.stdout.readline() != "ready\n":
        pytest.fail(finish_child(child)[1])
    started = time.perf_counter()
    time.sleep(delay)
    child.kill()
    child.stdout.read()
    return finish_child(child)[0], time.perf_counter() - started


def test_runs_killed_at_random_moments_resume_to_the_same_bits(tmp_path):
    reference = tmp_path / "reference"
    child = start_child(reference)
    assert child.stdout.readline() == "ready\n"
    started = time.perf_counter()
    writes = json.loads(child.stdout.readline())  # atomic writes per file: last.pth every epoch, best.pth when better
    duration = time.perf_counter() - started
    assert finish_child(child)[0] == 0
    size = os.path.getsize(reference / "last.pth")
    rng = np.random.default_rng(18)
    trials = [("last.pth", int(rng.integers(1, writes["last.pth"] + 1)), int(rng.integers(0, size * 0.9))),
              ("best.pth", int(rng.integers(1, writes["best.pth"] + 1)), int(rng.integers(0, size * 0.9))),
              float(rng.uniform(0, duration / 2)), float(rng.uniform(duration / 2, duration))]
    for i, trial in enumerate(trials):
        folder = tmp_path / f"trial{i}"
        if isinstance(trial, tuple):  # in the middle of a checkpoint: its temporary file is left behind
            assert run_child(folder, *trial)[0] == -signal.SIGKILL
            assert any(name.startswith(f".{trial[0]}.") for name in os.listdir(folder)), trial
        else:
            run_child_killed_after(folder, trial)
        left = {name: weights.load_checkpoint(folder / name)  # what a kill leaves loads
                for name in ("last.pth", "best.pth") if (folder / name).exists()}
        if isinstance(trial, tuple):  # the epoch's metrics line went out before its checkpoint
            epoch = left["last.pth"]["epoch"] if "last.pth" in left else 0
            assert len((folder / "metrics.jsonl").read_text().splitlines()) == epoch + 1
        assert run_child(folder)[0] == 0, trial  # resumes from last.pth (or starts again)
        run_files = ["best.pth", "curves.png", "last.pth", "metrics.jsonl", "summary.csv"]
        assert sorted(os.listdir(folder)) == run_files, trial
        assert metrics(folder) == metrics(reference), trial
        assert (folder / "summary.csv").read_bytes() == (reference / "summary.csv").read_bytes(), trial
        assert_same_checkpoint(folder / "last.pth", reference / "last.pth")
        assert_same_checkpoint(folder / "best.pth", reference / "best.pth")
