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

    report = tmp_path / "report"
    cli.main(["evaluate", str(run_dir / "last.pth"), str(folder), "--batch-size", "4", "--workers", "0",
              "--out", str(report)])
    printed = capsys.readouterr().out
    assert printed.startswith("6 images, 3 classes") and all(h in printed for h in ("ensemble", "comb_outs", "FPN1_layer4"))
    predictions = (report / "predictions.csv").read_text().splitlines()
    assert len(predictions) == 7 and predictions[1].startswith(f"{folder / dataset.classes[0] / '0.png'},{dataset.classes[0]},")
    assert Image.open(report / "confusion_matrix.png").mode == "RGB"

    cli.main(["predict", str(run_dir / "last.pth"), str(image), "--top", "2"])
    line = capsys.readouterr().out
    assert line.startswith(str(image)) and line.count(",") == 1  # two classes, by name

    out = tmp_path / "heat.png"
    cli.main(["heatmap", str(run_dir / "last.pth"), str(image), "--out", str(out)])
    assert "heat map written" in capsys.readouterr().out
    assert Image.open(out).size == (64, 64)


def test_evaluate_refuses_other_classes(run_dir, tmp_path, capsys):
    """A folder whose classes the checkpoint does not know cannot be evaluated."""
    image = data.SyntheticDataset(3, size=64, n_per_class=1).load_image(0)
    for name in ("ant", "bee", "cat"):
        (tmp_path / name).mkdir()
        image.save(tmp_path / name / "0.png")
    with pytest.raises(SystemExit) as stop:
        cli.main(["evaluate", str(run_dir / "last.pth"), str(tmp_path), "--workers", "0"])
    assert stop.value.code == 2 and "the data's classes 'ant', 'bee', 'cat' are not among the model's 3 classes" \
        in capsys.readouterr().err


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
