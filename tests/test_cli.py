"""The herbs command end to end on built-in synthetic data: demo (which writes a checkpoint),
then evaluate, predict and heatmap from that checkpoint, and clear errors for bad input."""
import contextlib
import csv
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import herbs
from herbs import cli, data, synthetic


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


def test_demo_draws_on_rank_0_alone(tmp_path, monkeypatch):
    """Under mpiexec every rank trains; only rank 0 evaluates, draws and writes the summary (the
    others would redo the same work into the same files)."""
    from herbs import demo

    class OtherRank:
        is_main = False
    trained = []
    monkeypatch.setattr(demo.distributed, "world", OtherRank)
    monkeypatch.setattr(demo, "train_model", lambda *args, **kwargs: trained.append(args))
    assert demo.run(demo.DemoConfig(), str(tmp_path), print_=lambda line: None) == {}
    assert len(trained) == 1 and list(tmp_path.iterdir()) == []


def test_evaluate_predict_heatmap_from_the_checkpoint(run_dir, tmp_path, capsys):
    synthetic.write_image_folder(str(tmp_path / "birds"), 3, n_train=1, n_val=2, seed=5)  # the demo's classes
    folder = tmp_path / "birds" / "val"
    classes = sorted(p.name for p in folder.iterdir())
    image = sorted((folder / classes[0]).iterdir())[0]
    capsys.readouterr()

    report = tmp_path / "report"
    cli.main(["evaluate", str(run_dir / "last.pth"), str(folder), "--batch-size", "4", "--workers", "0",
              "--out", str(report)])
    printed = capsys.readouterr().out
    assert printed.startswith("6 images, 3 classes") and all(h in printed for h in ("ensemble", "comb_outs", "FPN1_layer4"))
    predictions = (report / "predictions.csv").read_text().splitlines()
    assert len(predictions) == 7 and predictions[1].startswith(f"{image},{classes[0]},")
    assert Image.open(report / "confusion_matrix.png").mode == "RGB"

    cli.main(["predict", str(run_dir / "last.pth"), str(image), "--top", "2"])
    line = capsys.readouterr().out
    assert line.startswith(str(image)) and line.count(",") == 1  # two classes, by name

    out = tmp_path / "heat.png"
    cli.main(["heatmap", str(run_dir / "last.pth"), str(image), "--out", str(out)])
    assert "probability" in capsys.readouterr().out
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
    assert "broken.png" in capsys.readouterr().err and "1 of 1 images could not be read" in str(stop.value.code)
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


def test_predict_takes_folders_and_goes_on_past_unreadable_files(run_dir, tmp_path, capsys):
    """The demo's checkpoint comes from train() called from Python: it describes its model itself."""
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    dataset = data.SyntheticDataset(3, size=64, n_per_class=1, seed=5)
    for i in range(len(dataset)):
        dataset.load_image(i).save(folder / ("sub" if i else "") / f"{i}.png")
    (folder / "bad.jpg").write_bytes(b"not an image")
    (folder / "notes.txt").write_text("not an image either, and not taken for one")
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        cli.main(["predict", str(run_dir), str(folder), "--top", "10", "--format", "csv"])
    out, err = capsys.readouterr()
    assert "1 of 4 images could not be read" in str(stop.value.code)
    assert "bad.jpg" in err and "--top 10, but the model has 3 classes: showing 3" in err
    rows = list(csv.reader(io.StringIO(out)))
    assert rows[0] == ["file", "class_1", "probability_1", "class_2", "probability_2", "class_3", "probability_3"]
    assert [r[0] for r in rows[1:]] == [str(folder / "0.png"), str(folder / "sub" / "1.png"),
                                        str(folder / "sub" / "2.png")]
    for row in rows[1:]:
        assert set(row[1::2]) == set(synthetic.splits(3, 1, 1)[0].classes)  # the demo's
        assert sum(float(p) for p in row[2::2]) == pytest.approx(1, abs=1e-5)


def test_help_shows_defaults_and_version(capsys):
    for argv in (["train", "-h"], ["predict", "-h"], ["--version"]):
        with pytest.raises(SystemExit):
            cli.main(argv)
    out = " ".join(capsys.readouterr().out.split())  # as wrapped to any terminal's width
    assert "(default: 80)" in out and "(default: 1500)" in out and "(default: fp32)" in out
    assert out.rstrip().endswith(f"herbs {herbs.__version__}")


def test_the_cli_trains_a_small_dict_backbone(tmp_path, capsys):
    """--backbone takes a JSON object of settings, --num-selects what the combiner of a small model needs."""
    folder = tmp_path / "train"
    dataset = data.SyntheticDataset(3, size=40, n_per_class=2, seed=5)
    for i in range(len(dataset)):
        (folder / dataset.classes[int(dataset.labels[i])]).mkdir(parents=True, exist_ok=True)
        dataset.load_image(i).save(folder / dataset.classes[int(dataset.labels[i])] / f"{i}.png")
    small = {"backbone": "swin", "img_size": 32, "patch_size": 2, "embed_dim": 8, "depths": [1, 1, 1, 1],
             "num_heads": [1, 1, 2, 2], "window_size": 2}
    cli.main(["train", str(folder), "--backbone", json.dumps(small), "--num-selects", "48", "12", "2", "2",
              "--epochs", "1", "--batch-size", "3", "--workers", "0", "--out", str(tmp_path / "run")])
    out = capsys.readouterr().out
    assert "epoch 1/1: loss" in out and "warning: warmup_batches 1500 is" in out
    assert (tmp_path / "run" / "config.yaml").exists() and (tmp_path / "run" / "best.pth").exists()


def test_the_readme_dict_backbone_example_builds():
    """README's small-model example, as written there (it spans lines)."""
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    example = " ".join(re.search(r"`(herbs\.Model\(\{\"backbone\": \"swin\".*?\))`", readme, re.S).group(1).split())
    model = eval(example, {"herbs": herbs})
    assert model.num_classes == 4 and herbs.Model(**model.model_args).num_parameters == model.num_parameters

def test_train_and_demo_in_bf16(tmp_path, monkeypatch):
    """--precision bf16 trains in mixed precision (the demo's checkpoint says so); herbs train passes
    it on, and without it leaves the choice to TrainConfig (a resumed run's precision, else fp32:
    tests/test_precision_training.py)."""
    from herbs import weights
    demo = tmp_path / "demo"
    cli.main(["demo", "--epochs", "1", "--per-class", "4", "--val-per-class", "2", "--classes", "3", "--heatmaps", "3",
              "--precision", "bf16", "--out", str(demo)])
    assert weights.load_checkpoint(str(demo / "last.pth"))["config"]["precision"] == "bf16"
    configs = []
    monkeypatch.setattr(cli, "train", lambda model, train_set, val_set, config, **kw: configs.append(config))
    folder = tmp_path / "images"
    dataset = data.SyntheticDataset(2, size=64, n_per_class=1, seed=5)
    for i in range(len(dataset)):
        (folder / dataset.classes[int(dataset.labels[i])]).mkdir(parents=True, exist_ok=True)
        dataset.load_image(i).save(folder / dataset.classes[int(dataset.labels[i])] / f"{i}.png")
    for flags, want in (([], None), (["--precision", "bf16"], "bf16"), (["--precision", "fp32"], "fp32")):
        cli.main(["train", str(folder), "--backbone", "resnet50", "--img-size", "128", "--out", str(tmp_path / "run"),
                  *flags])
        assert configs[-1].precision == want
