"""The herbs command end to end on built-in synthetic data: demo (which writes a checkpoint),
then evaluate, predict and heatmap from that checkpoint, and clear errors for bad input."""
import contextlib
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from herbs import cli, data


DEMO_FILES = ["metrics.jsonl", "last.pth", "best.pth", "samples.png", "curves.png", "confusion.png", "heatmaps.png",
              "summary.json"]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """A shortened demo (2 epochs of 12 images) run from an empty current directory without --out:
    (its run folder, what it printed)."""
    cwd = tmp_path_factory.mktemp("demo")
    printed, before = io.StringIO(), os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(printed):
            cli.main(["--threads", "2", "demo", "--epochs", "2", "--per-class", "4", "--val-per-class", "2",
                      "--classes", "3", "--heatmaps", "3"])
    finally:
        os.chdir(before)
    folders = list((cwd / "runs").iterdir())
    assert len(folders) == 1 and folders[0].name.startswith("demo-")
    return folders[0], printed.getvalue()


@pytest.fixture(scope="module")
def run_dir(demo_run):
    return demo_run[0]


def test_demo_writes_every_file_it_promises(demo_run):
    folder, printed = demo_run
    lines = printed.splitlines()
    assert lines[0] == f"herbs demo: run folder {folder}" and lines[-1] == lines[0]  # said at the start and the end
    for name in DEMO_FILES:
        assert (folder / name).stat().st_size > 0, name
        assert str(folder / name) in printed or name == "last.pth", f"{name} is not announced"
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2] and np.isfinite(records[-1]["loss_total"])
    summary = json.loads((folder / "summary.json").read_text())
    heads = {f"FPN1_layer{i}" for i in range(1, 5)} | {f"layer{i}" for i in range(1, 5)} | {"comb_outs", "ensemble"}
    assert set(summary["val_top1"]) == heads and all(0 <= v <= 1 for v in summary["val_top1"].values())
    assert "validation top-1" in printed and "chance 33.3%" in printed
    for name in DEMO_FILES:
        if name.endswith(".png"):
            with Image.open(folder / name) as picture:
                assert picture.format == "PNG" and min(picture.size) >= 100
    with Image.open(folder / "heatmaps.png") as picture:  # three pairs of (image, heat map) of 3x64 px
        assert picture.size[0] >= 3 * 2 * 3 * 64


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
