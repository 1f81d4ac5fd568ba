"""The herbs command end to end on built-in synthetic data: demo (which writes a checkpoint),
then evaluate, predict and heatmap from that checkpoint, and clear errors for bad input."""
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from herbs import cli, data


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    cli.main(["--threads", "2", "demo", "--epochs", "1", "--per-class", "4", "--classes", "3", "--out", str(out)])
    return out


def test_demo_writes_metrics_and_checkpoints(run_dir, capsys):
    record = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["epoch"] == 1 and np.isfinite(record["loss_total"]) and 0 <= record["val_ensemble"] <= 1
    assert (run_dir / "last.pth").exists() and (run_dir / "best.pth").exists()


def test_evaluate_predict_heatmap_from_the_checkpoint(run_dir, tmp_path, capsys):
    folder = tmp_path / "images"
    dataset = data.SyntheticDataset(3, size=64, n_per_class=2, seed=5)
    for i in range(len(dataset)):
        (folder / dataset.classes[int(dataset.labels[i])]).mkdir(parents=True, exist_ok=True)
        dataset.load_image(i).save(folder / dataset.classes[int(dataset.labels[i])] / f"{i}.png")
    image = folder / dataset.classes[0] / "0.png"
    capsys.readouterr()

    cli.main(["evaluate", str(run_dir / "last.pth"), str(folder), "--batch-size", "4", "--workers", "0"])
    report = json.loads(capsys.readouterr().out)
    assert report["count"] == 6 and set(report) >= {"ensemble", "comb_outs", "layer1", "FPN1_layer4"}

    cli.main(["predict", str(run_dir / "last.pth"), str(image), "--top", "2"])
    line = capsys.readouterr().out
    assert line.startswith(str(image)) and line.count(",") == 1  # two classes, by name

    out = tmp_path / "heat.png"
    cli.main(["heatmap", str(run_dir / "last.pth"), str(image), "--out", str(out)])
    assert "heat map written" in capsys.readouterr().out
    assert Image.open(out).size == (64, 64)


def test_bad_input_is_a_clear_error(run_dir, tmp_path, capsys):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    with pytest.raises(SystemExit) as stop:
        cli.main(["predict", str(run_dir / "last.pth"), str(broken)])
    assert stop.value.code == 2 and "broken.png" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["train", str(tmp_path), "--backbone", "vgg16"])
    assert "unknown backbone 'vgg16'" in capsys.readouterr().err


def test_output_into_a_closed_pipe_is_not_an_error():
    """`herbs info | head -1`: the reader going away ends the command quietly, exit status 0."""
    proc = subprocess.Popen([sys.executable, "-m", "herbs", "info"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()
    assert err == b""



def test_train_and_demo_in_bf16(tmp_path, monkeypatch):
    """--precision bf16 trains in mixed precision (the demo's checkpoint says so); herbs train passes
    it on, and without it leaves the choice to TrainConfig (a resumed run's precision, else fp32:
    tests/test_precision_training.py)."""
    from herbs import weights
    demo = tmp_path / "demo"
    cli.main(["demo", "--epochs", "1", "--per-class", "4", "--classes", "3", "--precision", "bf16", "--out", str(demo)])
    assert weights.load_checkpoint(str(demo / "last.pth"))["config"]["precision"] == "bf16"
    configs = []
    monkeypatch.setattr(cli, "train", lambda model, train_set, val_set, config, **kw: configs.append(config))
    folder = tmp_path / "images"
    dataset = data.SyntheticDataset(2, size=64, n_per_class=1, seed=5)
    for i in range(len(dataset)):
        (folder / dataset.classes[int(dataset.labels[i])]).mkdir(parents=True, exist_ok=True)
        dataset.load_image(i).save(folder / dataset.classes[int(dataset.labels[i])] / f"{i}.png")
    for flags, want in (([], None), (["--precision", "bf16"], "bf16"), (["--precision", "fp32"], "fp32")):
        cli.main(["train", str(folder), "--backbone", "resnet50", "--img-size", "128", *flags])
        assert configs[-1].precision == want
